//! TLS for the customer listener: loads every configured certificate and picks one per
//! handshake by SNI (the first certificate valid for the requested name; the first one
//! when the client sends no SNI or none matches).

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::{ConfigError, TlsFiles};

/// Picks a certificate per handshake; the set can be swapped on reload (new handshakes use
/// the new certificates, established connections keep theirs).
#[derive(Debug)]
pub struct SniResolver {
    certs: std::sync::RwLock<Vec<Arc<CertifiedKey>>>,
}

impl SniResolver {
    /// Loads the configured files and replaces the served certificates; on error the old
    /// ones stay.
    pub fn reload(&self, key: &str, files: &[TlsFiles]) -> Result<(), ConfigError> {
        let certs = load(key, files)?;
        *self.certs.write().unwrap_or_else(|e| e.into_inner()) = certs;
        Ok(())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.read().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = hello.server_name() {
            if let Some(ck) = certs.iter().find(|ck| valid_for(ck, name)) {
                return Some(ck.clone());
            }
        }
        certs.first().cloned()
    }
}

fn valid_for(ck: &CertifiedKey, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    let Some(der) = ck.cert.first() else {
        return false;
    };
    webpki::EndEntityCert::try_from(der)
        .map(|ee| ee.verify_is_valid_for_subject_name(&server_name).is_ok())
        .unwrap_or(false)
}

/// Builds the rustls server config (HTTP/2 and HTTP/1.1 by ALPN) and the resolver that
/// reloads certificates.
/// `key`: the config key the files came from (`server.tls`, `server.webhook_tls`), named
/// in errors.
pub fn server_config(
    key: &str,
    files: &[TlsFiles],
) -> Result<(Arc<rustls::ServerConfig>, Arc<SniResolver>), ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Arc::new(SniResolver {
        certs: std::sync::RwLock::new(load(key, files)?),
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError {
            key: key.into(),
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), resolver))
}

fn load(key: &str, files: &[TlsFiles]) -> Result<Vec<Arc<CertifiedKey>>, ConfigError> {
    let provider = rustls::crypto::ring::default_provider();
    let mut certs = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let key_name = |field: &str| format!("{key}[{i}].{field}");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&f.cert)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| ConfigError {
                key: key_name("cert"),
                message: format!("cannot read certificates from {}: {e}", f.cert.display()),
            })?;
        if chain.is_empty() {
            return Err(ConfigError {
                key: key_name("cert"),
                message: format!("no certificate in {}", f.cert.display()),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&f.key).map_err(|e| ConfigError {
            key: key_name("key"),
            message: format!("cannot read a private key from {}: {e}", f.key.display()),
        })?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| ConfigError {
                key: key_name("key"),
                message: format!("unsupported private key: {e}"),
            })?;
        let ck = CertifiedKey::new(chain, signing);
        ck.keys_match().map_err(|e| ConfigError {
            key: key_name("key"),
            message: format!("the key does not belong to the certificate: {e}"),
        })?;
        certs.push(Arc::new(ck));
    }
    Ok(certs)
}

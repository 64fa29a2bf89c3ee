//! The one HTTP client that drives every system: hyper HTTP/1.1, one keep-alive connection
//! per client, optional rustls, bodies counted and dropped frame by frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where and how to send requests. Cloned into every client task.
#[derive(Clone)]
pub struct Target {
    pub name: &'static str,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Full `Authorization` header value, if the system wants one.
    pub auth: Option<String>,
}

/// The client trusts only the harness CA and offers one cipher suite, so every server
/// does the same record-layer work (left to themselves, OpenSSL would pick AES-256 and
/// Go AES-128).
pub fn tls_config(ca_der: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(ca_der.to_vec()))
        .expect("add bench CA");
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with ring")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // HTTP/1.1 only: the comparison is about serving bytes, not about h2 framing.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    target: Target,
}

pub async fn connect(t: &Target) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(("127.0.0.1", t.port))
        .await
        .with_context(|| format!("{}: connect 127.0.0.1:{}", t.name, t.port))?;
    tcp.set_nodelay(true)?;
    let sender = match &t.tls {
        None => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            sender
        }
        Some(cfg) => {
            let name =
                rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(cfg))
                .connect(name, tcp)
                .await
                .with_context(|| format!("{}: TLS handshake", t.name))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    Ok(Conn {
        sender,
        target: t.clone(),
    })
}

pub struct Fetched {
    pub status: u16,
    pub bytes: u64,
    /// From sending the request to the first body byte.
    pub ttfb: Duration,
    pub total: Duration,
}

impl Conn {
    pub async fn get(&mut self, path: &str, accept: Option<&str>) -> anyhow::Result<Fetched> {
        self.send(path, accept, None, None).await
    }

    /// A GET with this `Authorization` instead of the target's; the body is appended to
    /// `keep` when given (a token answer is read, a manifest only counted).
    pub async fn get_as(
        &mut self,
        path: &str,
        accept: Option<&str>,
        auth: &str,
        keep: Option<&mut Vec<u8>>,
    ) -> anyhow::Result<Fetched> {
        self.send(path, accept, Some(auth), keep).await
    }

    async fn send(
        &mut self,
        path: &str,
        accept: Option<&str>,
        auth: Option<&str>,
        mut keep: Option<&mut Vec<u8>>,
    ) -> anyhow::Result<Fetched> {
        let mut req = Request::get(path).header("host", format!("127.0.0.1:{}", self.target.port));
        if let Some(a) = auth.or(self.target.auth.as_deref()) {
            req = req.header("authorization", a);
        }
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let req = req.body(Empty::new())?;
        self.sender.ready().await?;
        let start = Instant::now();
        let resp = self
            .sender
            .send_request(req)
            .await
            .with_context(|| format!("{}: GET {path}", self.target.name))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut bytes = 0u64;
        let mut ttfb = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.with_context(|| format!("{}: body of {path}", self.target.name))?;
            if let Some(data) = frame.data_ref() {
                if ttfb.is_none() && !data.is_empty() {
                    ttfb = Some(start.elapsed());
                }
                bytes += data.len() as u64;
                if let Some(k) = keep.as_deref_mut() {
                    k.extend_from_slice(data);
                }
            }
        }
        let total = start.elapsed();
        Ok(Fetched {
            status,
            bytes,
            ttfb: ttfb.unwrap_or(total),
            total,
        })
    }

    /// A GET that must answer 200 with exactly `want` body bytes; anything else fails the bench.
    pub async fn get_exact(
        &mut self,
        path: &str,
        accept: Option<&str>,
        want: u64,
    ) -> anyhow::Result<Fetched> {
        let f = self.get(path, accept).await?;
        if f.status != 200 || f.bytes != want {
            bail!(
                "{}: GET {path} answered {} with {} bytes, want 200 with {want}",
                self.target.name,
                f.status,
                f.bytes
            );
        }
        Ok(f)
    }
}

/// `clients` connections each GET `path` `gets` times in a row; returns the body bytes and
/// the wall time from the first connect to the last byte.
pub async fn blob_load(
    t: &Target,
    path: &str,
    clients: usize,
    gets: usize,
    want: u64,
) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let t = t.clone();
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&t).await?;
            let mut n = 0u64;
            for _ in 0..gets {
                n += c.get_exact(&path, None, want).await?.bytes;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((total, start.elapsed()))
}

/// Closed-loop request rate: `conns` connections each send the next request as soon as the
/// previous answer is read, for `dur` after every connection has done one warm-up request.
pub async fn rps_load(
    t: &Target,
    path: &str,
    accept: &str,
    conns: usize,
    dur: Duration,
    want: u64,
) -> anyhow::Result<f64> {
    let mut warm = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut c = connect(t).await?;
        c.get_exact(path, Some(accept), want).await?;
        warm.push(c);
    }
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::with_capacity(conns);
    for mut c in warm {
        let done = Arc::clone(&done);
        let path = path.to_string();
        let accept = accept.to_string();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                c.get_exact(&path, Some(&accept), want).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

//! berth: a license-gated pull-through caching registry proxy and image rewriter.
#![forbid(unsafe_code)]

pub mod airgap;
pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod oci;
pub mod registry;
pub mod rewrite;
pub mod server;
pub mod upstream;

use std::sync::Arc;

use config::{Config, ConfigError};

/// Why `berth serve` could not start; each names the config key or resource at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("server.listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] cache::OpenError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the proxy until SIGTERM or ctrl-c. SIGHUP reloads the config file: licenses,
/// upstreams and credentials change for new requests; pulls in flight keep their snapshot.
pub async fn run(config: Config) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};

    let tls = if config.server.tls.is_empty() {
        None
    } else {
        Some(server::tls::server_config(&config.server.tls)?)
    };
    let addr = config.server.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let grace = config.server.shutdown_timeout;
    let api = Arc::new(api::Api::new(config)?);
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
    tracing::info!(
        listen = %addr,
        hostname = %api.config.current().server.hostname,
        tls = tls.is_some(),
        "berth serving"
    );
    let reloader = {
        let api = api.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reload(&api);
            }
        })
    };
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
        }
    };
    server::serve(api, listener, tls, grace, shutdown).await;
    reloader.abort();
    Ok(())
}

/// Re-reads the config file; an invalid file is refused and the old config keeps serving.
fn reload(api: &api::Api) {
    let current = api.config.current();
    let Some(path) = current.source.clone() else {
        return;
    };
    match Config::load(&path) {
        Ok(new) => {
            if new.cache.dir != current.cache.dir {
                tracing::warn!("cache.dir changed: takes effect after a restart");
            }
            if new.server.listen != current.server.listen {
                tracing::warn!("server.listen changed: takes effect after a restart");
            }
            api.config.replace(new);
            // Stored credentials may have changed: tokens obtained with the old ones go.
            api.registry.upstream_client().forget_credentials();
            tracing::info!(config = %path.display(), "configuration reloaded");
        }
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "reload refused; keeping the running configuration")
        }
    }
}

//! Listeners: accepts TCP connections, terminates TLS when configured, serves HTTP/1.1 and
//! HTTP/2 (hyper over TLS, berth's own HTTP/1.1 loop with sendfile on plain TCP), and shuts
//! down gracefully (stop accepting, let pulls in flight finish up to a deadline).

pub mod admin;
pub mod plain;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::api::Api;

/// Time a client gets to finish the TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` resolves, then waits up to `grace` for open
/// connections to finish their requests.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Tells berth's own plain-HTTP connections that shutdown began; their hyper watcher
    // (held until they end) is what `graceful.shutdown()` waits for.
    let (closing, _) = tokio::sync::watch::channel(false);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        let closing = closing.subscribe();
        let timeouts = {
            let c = api.config.current();
            plain::Timeouts {
                idle: c.server.idle_timeout,
                head: c.server.header_timeout,
            }
        };
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let rest = plain::serve(api.clone(), stream, remote, closing, timeouts).await;
                    if let Some(rest) = rest {
                        serve_conn(api, TokioIo::new(rest), remote, watcher, timeouts).await
                    }
                }
                Some(acc) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acc.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            serve_conn(api, TokioIo::new(tls), remote, watcher, timeouts).await
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    closing.send_replace(true);
    tracing::info!("shutting down: waiting for requests in flight");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown deadline passed; closing remaining connections"),
    }
}

async fn serve_conn<I>(
    api: Arc<Api>,
    io: TokioIo<I>,
    remote: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
    timeouts: plain::Timeouts,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, std::convert::Infallible>(api.handle(req, remote).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The same slow-loris limit as the plain loop: a head begun must arrive in time.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeouts.head);
    let conn = builder.serve_connection(io, service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

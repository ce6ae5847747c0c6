//! The HTTP server: hyper over tokio, one task per connection, bounded bodies and header read
//! time, graceful drain on shutdown. Routing and handlers live in `routes`; errors become
//! responses only in `error`.

mod delegations;
mod error;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::bundle::BundleStore;

pub use error::ApiError;
pub use routes::now;

/// Limits and settings of the HTTP API.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most items in one batch request.
    pub max_batch: usize,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// Most connections served at once; more wait in the accept queue.
    pub max_connections: usize,
}

/// Shared state of the server.
pub struct AppState {
    pub store: Arc<BundleStore>,
    pub live: Arc<crate::snapshot::Live>,
    /// Delegation, when the sidecar keeps state (not with `--authorize-only`).
    pub delegation: Option<Arc<crate::delegation::Delegation>>,
    pub config: HttpConfig,
    /// Metrics and the decision log.
    pub obs: Arc<crate::telemetry::Observability>,
}

/// Serves on `listener` until `shutdown` resolves, then drains open connections for up to
/// `drain` before returning.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>, drain: Duration) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(state.config.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let header_timeout = state.config.header_read_timeout;
        let state = Arc::clone(&state);
        let service = service_fn(move |req| routes::handle(Arc::clone(&state), peer, req));
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => tracing::warn!("drain timed out; closing remaining connections"),
    }
}

/// Binds `addr`; a port of 0 picks a free one (tests use `127.0.0.1:0`).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

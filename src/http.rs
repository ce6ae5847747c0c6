//! The HTTP server: hyper over tokio, one task per connection, bounded bodies and header read
//! time, graceful drain on shutdown. Routing and handlers live in `routes`; errors become
//! responses only in `error`.

mod delegations;
mod error;
mod mcp;
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

/// Limits and settings of the HTTP API.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most items in one batch request.
    pub max_batch: usize,
    /// Deepest nesting of arrays and objects accepted in a JSON body.
    pub max_json_depth: usize,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// Most connections served at once; more are answered `503 overloaded` and closed.
    pub max_connections: usize,
}

/// Shared state of the server.
pub struct AppState {
    pub store: Arc<BundleStore>,
    pub live: Arc<crate::snapshot::Live>,
    pub delegation: DelegationState,
    pub config: HttpConfig,
    /// Metrics and the decision log.
    pub obs: Arc<crate::telemetry::Observability>,
    /// The shadow bundle compared against the serving one (`--shadow`).
    pub shadow: Option<Arc<crate::authorize::shadow::Shadow>>,
    /// The MCP servers served at `/mcp/<server>`.
    pub mcp: Arc<crate::mcp::Gateway>,
}

/// Whether this sidecar delegates.
pub enum DelegationState {
    /// It serves with `--authorize-only`: no agents of its own, no state.
    Off,
    /// Its delegation state is open.
    Open(Arc<crate::delegation::Delegation>),
    /// Its state could not be opened (the reason): every agent decision and delegation call
    /// fails closed until it is repaired.
    Unavailable(String),
}

impl DelegationState {
    pub fn open(&self) -> Option<&Arc<crate::delegation::Delegation>> {
        match self {
            DelegationState::Open(d) => Some(d),
            _ => None,
        }
    }
}

/// A listening socket: TCP (the default, loopback) or a Unix domain socket.
pub enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

/// An accepted connection of either kind.
enum Conn {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(Conn, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Conn::Tcp(s), peer.to_string()))
            }
            #[cfg(unix)]
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Conn::Unix(s), "unix".to_owned()))
            }
        }
    }
}

/// The answer to a connection beyond `--max-connections`: refused at once, not queued.
const OVERLOADED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n\
content-length: 79\r\n\r\n{\"code\":\"overloaded\",\"message\":\"too many open connections; retry with backoff\"}";

/// Serves on `listener` until `shutdown` resolves, then drains open connections for up to
/// `drain` before returning.
pub async fn serve(listener: Listener, state: Arc<AppState>, shutdown: impl Future<Output = ()>, drain: Duration) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(state.config.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let (conn, peer) = tokio::select! {
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
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tokio::spawn(refuse(conn));
            continue;
        };
        let header_timeout = state.config.header_read_timeout;
        let state = Arc::clone(&state);
        let service = service_fn(move |req| routes::handle(Arc::clone(&state), req));
        let builder = {
            let mut b = http1::Builder::new();
            // A decision answer is ~100 bytes: copying it behind the headers and writing once
            // is cheaper than a vectored write.
            b.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .writev(false);
            b
        };
        let done = match conn {
            Conn::Tcp(s) => {
                let c = graceful.watch(builder.serve_connection(TokioIo::new(s), service));
                Box::pin(c) as std::pin::Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>
            }
            #[cfg(unix)]
            Conn::Unix(s) => {
                let c = graceful.watch(builder.serve_connection(TokioIo::new(s), service));
                Box::pin(c)
            }
        };
        tokio::spawn(async move {
            if let Err(e) = done.await {
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

async fn refuse(conn: Conn) {
    tracing::warn!("connection limit reached; refusing a connection with 503");
    match conn {
        Conn::Tcp(s) => answer_and_close(s).await,
        #[cfg(unix)]
        Conn::Unix(s) => answer_and_close(s).await,
    }
}

/// Writes the 503, then reads what the client sent for a moment before closing, so the close
/// does not reset the connection before the client has read the answer.
async fn answer_and_close<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if s.write_all(OVERLOADED).await.is_err() {
        return;
    }
    let _ = s.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Binds `addr`; a port of 0 picks a free one (tests use `127.0.0.1:0`).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

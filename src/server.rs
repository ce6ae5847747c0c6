//! Assembling the sidecar: load the bundle, start the watcher, bind, serve. Used by
//! `deputy serve` and by the tests, which start real servers on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::bundle::{spawn_watcher, BundleStore, LoadOptions, WatchOptions};
use crate::delegation::Delegation;
use crate::http::{self, AppState, DelegationState, HttpConfig};
use crate::snapshot::Live;
use crate::telemetry::Observability;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub bundle: PathBuf,
    pub listen: SocketAddr,
    pub load: LoadOptions,
    pub http: HttpConfig,
    pub watch: Option<WatchOptions>,
    pub drain: Duration,
    /// Where delegation state lives; `None` disables delegation (authorize only).
    pub state: Option<PathBuf>,
    /// The admin credential, for creating root agents and reading the audit trail.
    pub admin_token: Option<String>,
    /// Limits on delegation (grant size, children, pending requests, state size).
    pub limits: crate::delegation::Limits,
    /// Also serve on this Unix domain socket.
    pub listen_unix: Option<PathBuf>,
    /// Credentials of agents the bundle declares, by agent id.
    pub agent_tokens: std::collections::HashMap<String, String>,
    /// Metrics and the decision log.
    pub observe: crate::telemetry::ObserveConfig,
    /// A shadow bundle decided beside the serving one and compared (`--shadow`).
    pub shadow: Option<PathBuf>,
    /// Upstream MCP servers, each served at `/mcp/<name>` (docs/MCP.md).
    pub mcp_servers: Vec<crate::mcp::ServerConfig>,
}

impl ServeConfig {
    /// What `deputy serve --bundle DIR` runs with: loopback on the default port, state in
    /// `.deputy-state`, the bundle watched, the default limits; no admin credential.
    pub fn new(bundle: PathBuf) -> ServeConfig {
        use crate::config::*;
        ServeConfig {
            bundle,
            listen: DEFAULT_LISTEN_ADDR,
            load: LoadOptions::default(),
            http: HttpConfig {
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_batch: DEFAULT_MAX_BATCH,
                max_json_depth: DEFAULT_MAX_JSON_DEPTH,
                header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
                max_connections: DEFAULT_MAX_CONNECTIONS,
            },
            watch: Some(WatchOptions {
                debounce: DEFAULT_RELOAD_DEBOUNCE,
                poll_interval: DEFAULT_POLL_INTERVAL,
            }),
            drain: DEFAULT_DRAIN,
            state: Some(PathBuf::from(DEFAULT_STATE)),
            admin_token: None,
            limits: crate::delegation::Limits::default(),
            listen_unix: None,
            agent_tokens: std::collections::HashMap::new(),
            observe: crate::telemetry::ObserveConfig::default(),
            shadow: None,
            mcp_servers: Vec::new(),
        }
    }
}

/// The sidecar, for running inside another Rust program: the same server `deputy serve` runs.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let running = deputy::Sidecar::new("policies/")
///     .listen("127.0.0.1:0".parse().unwrap())
///     .state_dir("/var/lib/deputy")
///     .admin_token(std::env::var("DEPUTY_ADMIN_TOKEN").unwrap_or_default())
///     .start()
///     .await?;
/// println!("deciding on http://{}", running.addr());
/// running.wait().await;
/// # Ok(()) }
/// ```
pub struct Sidecar {
    config: ServeConfig,
}

impl Sidecar {
    /// A sidecar serving the bundle in `bundle_dir`, with `deputy serve`'s defaults.
    pub fn new(bundle_dir: impl Into<PathBuf>) -> Sidecar {
        Sidecar {
            config: ServeConfig::new(bundle_dir.into()),
        }
    }

    /// Where to listen for HTTP (default `127.0.0.1:8180`; port 0 picks a free one).
    pub fn listen(mut self, addr: SocketAddr) -> Sidecar {
        self.config.listen = addr;
        self
    }

    /// Also serve on this Unix domain socket.
    pub fn listen_unix(mut self, path: impl Into<PathBuf>) -> Sidecar {
        self.config.listen_unix = Some(path.into());
        self
    }

    /// Where delegation state lives (default `.deputy-state`).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Sidecar {
        self.config.state = Some(dir.into());
        self
    }

    /// Decide only: no agents of deputy's own, no state, no agent model required of the bundle.
    pub fn authorize_only(mut self) -> Sidecar {
        self.config.state = None;
        self.config.load.require_agent_model = false;
        self
    }

    /// The admin credential (creating root agents, the audit trail, human approvals).
    pub fn admin_token(mut self, token: impl Into<String>) -> Sidecar {
        self.config.admin_token = Some(token.into()).filter(|t| !t.is_empty());
        self
    }

    /// The credential of an agent the bundle declares (`grants/<id>.cedar`).
    pub fn agent_credential(mut self, id: impl Into<String>, token: impl Into<String>) -> Sidecar {
        self.config.agent_tokens.insert(id.into(), token.into());
        self
    }

    /// Also decide every request against the bundle at `dir` and compare (see
    /// `deputy serve --shadow`); it never changes an answer.
    pub fn shadow(mut self, dir: impl Into<PathBuf>) -> Sidecar {
        self.config.shadow = Some(dir.into());
        self
    }

    /// Serve the MCP server `name`, started as `command` (program first, no shell), at
    /// `/mcp/<name>` (docs/MCP.md). A name that is not valid (lowercase letters, digits, `_`,
    /// `-`; not `deputy`) or taken fails [`Sidecar::start`].
    pub fn mcp_server<S: Into<String>>(mut self, name: impl Into<String>, command: impl IntoIterator<Item = S>) -> Sidecar {
        self.config.mcp_servers.push(crate::mcp::ServerConfig {
            name: name.into(),
            command: command.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// Do not watch the bundle directory (reload with [`Running::reload`] instead).
    pub fn no_watch(mut self) -> Sidecar {
        self.config.watch = None;
        self
    }

    /// Loads the bundle, opens the state, binds and starts serving on the current Tokio
    /// runtime. An invalid bundle does not fail the start: the sidecar answers `503 no_bundle`
    /// until a valid one appears (as `deputy serve` does).
    pub async fn start(self) -> std::io::Result<Running> {
        start(self.config).await
    }
}

/// A running sidecar.
pub struct Running {
    addr: SocketAddr,
    store: Arc<BundleStore>,
    /// The shadow bundle's loader, when one is compared.
    shadow: Option<Arc<BundleStore>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The TCP address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Loads the bundle (and the shadow bundle, if any) again now (what SIGHUP does).
    /// Blocking: call it from a blocking thread. An invalid bundle is reported and the last
    /// good one keeps serving; the result is the serving bundle's.
    ///
    /// INVARIANT: the serving bundle is loaded (and serves) before the shadow's, so a candidate,
    /// however large, never holds back what serves.
    pub fn reload(&self) -> Result<crate::bundle::ReloadOutcome, crate::bundle::BundleError> {
        let served = self.store.reload();
        if let Some(shadow) = &self.shadow {
            if let Err(e) = shadow.reload() {
                tracing::error!(error = %e, "the shadow bundle is invalid; the last good one is still compared");
            }
        }
        served
    }

    /// Whether the shadow bundle's first load attempt is done (`true` without a shadow).
    #[doc(hidden)]
    pub fn shadow_attempted(&self) -> bool {
        self.shadow.as_ref().is_none_or(|s| s.last_reload().is_some())
    }

    /// The bundle stores a reload loads: the serving one, then the shadow's.
    pub(crate) fn stores(&self) -> Vec<Arc<BundleStore>> {
        std::iter::once(Arc::clone(&self.store)).chain(self.shadow.clone()).collect()
    }

    /// Stops accepting, drains open connections, and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops by itself (it does not, unless the runtime shuts down).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Loads the bundle (an invalid one is reported and the server starts not ready, waiting for a
/// fix), binds the listener and starts serving.
pub async fn start(config: ServeConfig) -> std::io::Result<Running> {
    let mcp = Arc::new(
        crate::mcp::Gateway::new(&config.mcp_servers, crate::config::DEFAULT_MCP_CALL_TIMEOUT)
            .map_err(std::io::Error::other)?,
    );
    let store = Arc::new(BundleStore::new(config.bundle.clone(), config.load.clone()));
    let live = Arc::new(Live::default());
    let serving = Arc::new(Serving {
        store: Arc::clone(&store),
        live: Arc::clone(&live),
    });
    let obs = Arc::new(Observability::new(&config.observe, serving)?);
    // The delegation state opens before the first bundle loads, so that the bundle is
    // installed against the agents deputy manages (and refused if it does not fit them).
    let mut state_error = None;
    let delegation = match &config.state {
        Some(dir) if config.load.require_agent_model => {
            let (dir, l, token) = (dir.clone(), Arc::clone(&live), config.admin_token.clone());
            let (agent_tokens, limits) = (config.agent_tokens.clone(), config.limits.clone());
            let opened = tokio::task::spawn_blocking(move || Delegation::open(&dir, l, token, &agent_tokens, limits))
                .await
                .map_err(std::io::Error::other)?;
            match opened {
                Ok(d) => Some(Arc::new(d.with_metrics(Arc::clone(&obs.metrics)))),
                Err(e) => {
                    // Keep serving what does not depend on the state; every agent decision
                    // and delegation call fails closed until the state is repaired.
                    tracing::error!(error = %e, "cannot open the delegation state; agent decisions fail closed");
                    let l = Arc::clone(&live);
                    tokio::task::spawn_blocking(move || l.agents_unknown())
                        .await
                        .map_err(std::io::Error::other)?;
                    state_error = Some(e);
                    None
                }
            }
        }
        _ => None,
    };
    match &delegation {
        Some(d) => {
            // Live grants are re-proved against every bundle installed, on a worker of their
            // own: the reload (and the watcher) never wait for proofs.
            let reprove = spawn_reprover(Arc::clone(d))?;
            let publisher = Arc::clone(d);
            store.set_publisher(move |bundle| {
                publisher.install_bundle(bundle, crate::clock::now())?;
                let _ = reprove.send(());
                Ok(())
            });
        }
        None => {
            let l = Arc::clone(&live);
            store.set_publisher(move |bundle| l.install_bundle(bundle));
        }
    }
    let s = Arc::clone(&store);
    match tokio::task::spawn_blocking(move || s.reload()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the bundle is invalid; serving not-ready until it is fixed"),
        Err(e) => tracing::error!(error = %e, "bundle load task failed"),
    }
    if let Some(d) = &delegation {
        tokio::spawn(sweep_expired(Arc::clone(d), Arc::clone(&live)));
    }
    let watcher = config.watch.clone().map(|w| spawn_watcher(Arc::clone(&store), w));
    let shadow = match &config.shadow {
        Some(dir) => Some(start_shadow(dir, &config, &obs)?),
        None => None,
    };
    let shadow_watcher = shadow
        .as_ref()
        .zip(config.watch.clone())
        .map(|(s, w)| spawn_watcher(Arc::clone(s.store()), w));
    let listener = http::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let unix = match &config.listen_unix {
        #[cfg(unix)]
        Some(path) => {
            // A stale socket file from an earlier run would make bind fail.
            let _ = std::fs::remove_file(path);
            let l = tokio::net::UnixListener::bind(path)?;
            tracing::info!(path = %path.display(), "deputy listening on a unix socket");
            Some(http::Listener::Unix(l))
        }
        _ => None,
    };
    tracing::info!(%addr, bundle = %config.bundle.display(), "deputy listening");
    let delegation = match (delegation, state_error) {
        (Some(d), _) => DelegationState::Open(d),
        (None, Some(e)) => DelegationState::Unavailable(e),
        (None, None) => DelegationState::Off,
    };
    let shadow_store = shadow.as_ref().map(|s| Arc::clone(s.store()));
    let state = Arc::new(AppState {
        store: Arc::clone(&store),
        live: Arc::clone(&live),
        delegation,
        config: config.http.clone(),
        obs,
        shadow,
        mcp: Arc::clone(&mcp),
    });
    let (tx, rx) = oneshot::channel::<()>();
    let drain = config.drain;
    let task = tokio::spawn(async move {
        let _watchers = (watcher, shadow_watcher);
        let (stop_unix, unix_stopped) = tokio::sync::watch::channel(false);
        let unix_task = unix.map(|l| {
            let (state, mut stopped) = (Arc::clone(&state), unix_stopped.clone());
            tokio::spawn(async move {
                let stop = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                http::serve(l, state, stop, drain).await;
            })
        });
        let stop = async {
            let _ = rx.await;
        };
        http::serve(http::Listener::Tcp(listener), state, stop, drain).await;
        let _ = stop_unix.send(true);
        if let Some(t) = unix_task {
            let _ = t.await;
        }
        mcp.stop().await;
    });
    Ok(Running {
        addr,
        store,
        shadow: shadow_store,
        shutdown: Some(tx),
        task,
    })
}

/// Loads the shadow bundle (an invalid one is reported in `GET /v1/shadow` and compared once
/// it is fixed) and hands the decision path its comparison.
fn start_shadow(
    dir: &std::path::Path,
    config: &ServeConfig,
    obs: &Arc<Observability>,
) -> std::io::Result<Arc<crate::authorize::shadow::Shadow>> {
    let shadow = crate::authorize::shadow::Shadow::start(dir.to_path_buf(), config.load.clone(), Arc::clone(&obs.metrics))?;
    // Loaded beside the start, not before it: a candidate, however large, never holds back
    // what serves (until it is loaded, a comparison counts `error`: no valid shadow bundle).
    let s = Arc::clone(shadow.store());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = s.reload() {
            tracing::error!(error = %e, "the shadow bundle is invalid; nothing is compared until it is fixed");
        }
    });
    let sink: Arc<dyn crate::telemetry::ShadowSink> = shadow.clone();
    let _ = obs.shadow.set(sink);
    Ok(shadow)
}

/// Starts the thread that re-proves live grants after each bundle install. Installs that arrive
/// while it works are coalesced: it then proves once more, against the snapshot serving then.
/// It stops when the sender (held by the bundle store's publisher) is dropped.
fn spawn_reprover(delegation: Arc<Delegation>) -> std::io::Result<std::sync::mpsc::Sender<()>> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("deputy-reprove".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {}
                delegation.reprove_all(crate::clock::now());
            }
        })?;
    Ok(tx)
}

/// How often expired agents are recorded and revoked. Expired agents are denied at once
/// regardless; the sweep writes the audit record and cascades.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

async fn sweep_expired(delegation: Arc<Delegation>, live: Arc<Live>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(snap) = live.current() else { continue };
        let d = Arc::clone(&delegation);
        let now = crate::clock::now();
        let _ = tokio::task::spawn_blocking(move || d.sweep_expired(&snap, now)).await;
    }
}

/// What the metrics read at scrape time: the bundle store's reloads and version, and the live
/// agents of the serving snapshot.
struct Serving {
    store: Arc<BundleStore>,
    live: Arc<Live>,
}

impl crate::telemetry::ServingState for Serving {
    fn reload_counts(&self) -> (u64, u64) {
        self.store.reload_counts()
    }

    fn bundle_version(&self) -> Option<String> {
        self.live.current().map(|s| s.bundle.version.clone())
    }

    fn live_agents(&self) -> usize {
        let now = crate::clock::now();
        self.live
            .current()
            .map_or(0, |s| s.agents.iter().filter(|a| a.is_live(now)).count())
    }
}

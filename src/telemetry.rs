//! Telemetry: logs through `tracing-subscriber`, traces over OTLP when the standard `OTEL_*`
//! variables ask for them, Prometheus metrics, and the decision log. See docs/OBSERVABILITY.md.
//!
//! The HTTP layer opens one span per request (joined to the caller's `traceparent`) and sets a
//! per-request scope; the decision path, delegation and reloads add child spans and feed the
//! metrics and the decision log held by `Observability`, which lives in the server's state.

mod decision;
mod decision_log;
mod metrics;
mod otel;

use std::sync::Arc;

use tracing_subscriber::filter::{filter_fn, FilterExt, LevelFilter};
use tracing_subscriber::layer::Identity;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::ENV_LOG;

pub use decision::{
    carry, decision_done, decision_span, delegation_done, delegation_span, log_pending, prove_observed, reload_done,
    reload_span, request_id, scoped, shadow_sink, Api, ChainHop, DecisionEvent,
};
pub use decision_log::{DecisionLog, DecisionLogConfig, DecisionLogTarget};
pub use metrics::{Metrics, ServingState, METRICS_CONTENT_TYPE};
pub use otel::{http_done, http_span, Telemetry};

/// The target of spans that exist for traces only (one per decision, delegation, proof and
/// reload): never logged, and not even created unless traces are exported, so a decision pays
/// nothing for them by default.
const TRACE_ONLY: &str = "deputy::trace";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber: logs to stderr (so stdout stays free for command output),
/// filtered by `DEPUTY_LOG` (e.g. `deputy=debug`, default `info`), and, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, deputy's
/// spans exported over OTLP/HTTP. The trace filter is separate from the log filter, so quieter
/// logs do not thin out traces. Keep the returned guard alive: dropping it flushes the spans.
pub fn init(format: LogFormat) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = otel::provider_from_env()?;
    let logged = filter.and(filter_fn(|m| m.target() != TRACE_ONLY));
    let registry = tracing_subscriber::registry().with(fmt.with_filter(logged));
    // Not an `Option` layer: a `None` layer counts as enabling everything, so the trace-only
    // spans would be created (and dropped unseen) on every decision.
    let traces = match provider.as_ref() {
        Some(p) => otel::layer(p).boxed(),
        None => Identity::new().with_filter(LevelFilter::OFF).boxed(),
    };
    let _ = registry.with(traces).try_init();
    Ok(Telemetry::new(provider))
}

/// What to observe beyond logs and traces: where decisions are logged.
#[derive(Debug, Clone, Default)]
pub struct ObserveConfig {
    pub decision_log: Option<DecisionLogConfig>,
}

/// The server's telemetry state: its metrics and, when configured, the decision log and the
/// shadow bundle's comparison.
pub struct Observability {
    pub metrics: Arc<Metrics>,
    pub decision_log: Option<DecisionLog>,
    /// Where decisions go to be compared against a shadow bundle (`--shadow`), set once at start.
    pub shadow: std::sync::OnceLock<Arc<dyn ShadowSink>>,
}

/// Takes decisions to compare against a shadow bundle. The job's type belongs to the decision
/// path (a layer above this one); the sink downcasts it. Must not block: a full queue drops.
pub trait ShadowSink: Send + Sync {
    /// Whether the queue has room for one more decision; when it has not, the decision is
    /// counted as dropped and `offer` is not called for it.
    fn admit(&self) -> bool;

    /// One decision, as the decision path packed it.
    fn offer(&self, job: Box<dyn std::any::Any + Send>);
}

impl Observability {
    /// Sets up metrics over the serving state, and opens the decision log.
    pub fn new(config: &ObserveConfig, serving: Arc<dyn ServingState>) -> std::io::Result<Self> {
        let metrics = Arc::new(Metrics::new(Some(serving)));
        let decision_log = config
            .decision_log
            .as_ref()
            .map(|c| DecisionLog::open(c, &metrics))
            .transpose()?;
        Ok(Self {
            metrics,
            decision_log,
            shadow: std::sync::OnceLock::new(),
        })
    }
}

//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format. Counters and
//! histograms are updated on the decision, delegation and proof paths; the bundle's reloads
//! and version and the live agents are read from the live state at scrape time.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::Api;
use std::sync::Arc as SharedState;

/// The `Content-Type` of `GET /metrics`.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the decision latency buckets, in seconds: 10µs to 1s.
const DECISION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Upper bounds of the proof duration buckets, in seconds: 1ms to 30s.
const PROOF_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The outcomes a decision is counted under.
pub const OUTCOMES: [&str; 3] = ["allow", "deny", "error"];

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type HistogramFamily = Family<Labels1, Histogram, fn() -> Histogram>;

/// Every metric deputy keeps, in one registry.
pub struct Metrics {
    registry: Registry,
    /// The decision series, created up front and indexed by [`Api`] and outcome, so the
    /// decision path neither locks nor hashes a label set.
    decided: [([Counter; 3], Histogram); 3],
    delegations: Family<Labels1, Counter>,
    invocations: Family<Labels1, Counter>,
    revocations: Family<Labels1, Counter>,
    permission_requests: Family<Labels1, Counter>,
    proofs: Family<Labels1, Counter>,
    proof_seconds: Histogram,
    long_polls: Gauge,
    pub(super) log_dropped: Counter,
    pub(super) log_errors: Counter,
    pub(super) log_queued: Gauge,
    proofs_running: Gauge,
    state_writes: Gauge,
    shadow: Family<Labels1, Counter>,
}

fn decision_histogram() -> Histogram {
    Histogram::new(DECISION_BUCKETS.iter().copied())
}

impl Metrics {
    /// The metrics, reading reloads, the bundle version and live agents from `serving` (when
    /// given) at each scrape.
    pub fn new(serving: Option<SharedState<dyn ServingState>>) -> Self {
        let mut registry = Registry::default();
        let decisions = Family::<Labels2, Counter>::default();
        registry.register(
            "deputy_decisions",
            "Authorization decisions by API (authorize, authzen, mcp) and outcome (allow, deny, error)",
            decisions.clone(),
        );
        let decision_seconds: HistogramFamily = Family::new_with_constructor(decision_histogram);
        registry.register_with_unit(
            "deputy_decision_duration",
            "Time to decide one request against the serving bundle, by API",
            Unit::Seconds,
            decision_seconds.clone(),
        );
        let delegations = Family::<Labels1, Counter>::default();
        registry.register(
            "deputy_delegations",
            "Delegation (agent creation) requests by outcome (applied, pending, rejected, error)",
            delegations.clone(),
        );
        let invocations = Family::<Labels1, Counter>::default();
        registry.register(
            "deputy_invocations",
            "Invocations by outcome (started, rejected, error) and sessions claimed (accepted)",
            invocations.clone(),
        );
        let revocations = Family::<Labels1, Counter>::default();
        registry.register(
            "deputy_revocations",
            "Agents revoked, cascades included, by reason (revoked, completed, expired)",
            revocations.clone(),
        );
        let permission_requests = Family::<Labels1, Counter>::default();
        registry.register(
            "deputy_permission_requests",
            "Permission requests by event (opened, approved, denied, escalated, withdrawn)",
            permission_requests.clone(),
        );
        let proofs = Family::<Labels1, Counter>::default();
        registry.register(
            "deputy_proofs",
            "Containment proofs by verdict (within, exceeds, inconclusive, error)",
            proofs.clone(),
        );
        let proof_seconds = Histogram::new(PROOF_BUCKETS.iter().copied());
        registry.register_with_unit(
            "deputy_proof_duration",
            "Time to prove a child grant within its parent's",
            Unit::Seconds,
            proof_seconds.clone(),
        );
        let long_polls = Gauge::default();
        registry.register(
            "deputy_long_polls_waiting",
            "Long polls on permission requests waiting for a change now",
            long_polls.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "deputy_decision_log_dropped",
            "Decision log lines dropped because the writer's queue was full",
            log_dropped.clone(),
        );
        let log_errors = Counter::default();
        registry.register(
            "deputy_decision_log_write_errors",
            "Decision log lines that could not be written",
            log_errors.clone(),
        );
        let proofs_running = Gauge::default();
        registry.register(
            "deputy_proofs_running",
            "Containment proofs running now",
            proofs_running.clone(),
        );
        let state_writes = Gauge::default();
        registry.register(
            "deputy_state_writes",
            "Writes to the delegation state waiting for the writer or being written now (a group commit included)",
            state_writes.clone(),
        );
        let log_queued = Gauge::default();
        registry.register(
            "deputy_decision_log_queued",
            "Decision log lines queued and not yet written and flushed",
            log_queued.clone(),
        );
        let shadow = Family::<Labels1, Counter>::default();
        registry.register(
            "deputy_shadow_decisions",
            "Decisions also made against the shadow bundle (--shadow), by outcome (same, differs, error, dropped)",
            shadow.clone(),
        );
        if let Some(serving) = serving {
            registry.register_collector(Box::new(Serving(serving)));
        }
        let decided = [Api::Authorize, Api::AuthZen, Api::Mcp].map(|api| {
            let counters = OUTCOMES.map(|outcome| {
                decisions
                    .get_or_create(&[("api", api.as_str()), ("outcome", outcome)])
                    .clone()
            });
            (
                counters,
                decision_seconds.get_or_create(&[("api", api.as_str())]).clone(),
            )
        });
        Self {
            registry,
            decided,
            delegations,
            invocations,
            revocations,
            permission_requests,
            proofs,
            proof_seconds,
            long_polls,
            log_dropped,
            log_errors,
            log_queued,
            proofs_running,
            state_writes,
            shadow,
        }
    }

    /// The exposition, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// Counts one decision; `outcome` is one of [`OUTCOMES`].
    pub fn decided(&self, api: Api, outcome: &'static str, took: Duration) {
        let (counters, seconds) = &self.decided[api as usize];
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            counters[i].inc();
        }
        seconds.observe(took.as_secs_f64());
    }

    /// Counts one decision compared against the shadow bundle: `same`, `differs`, `error` (the
    /// shadow could not decide it) or `dropped` (its queue was full).
    pub fn shadowed(&self, outcome: &'static str) {
        self.shadow.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn delegated(&self, outcome: &'static str) {
        self.delegations.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn invoked(&self, outcome: &'static str) {
        self.invocations.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn revoked(&self, reason: &'static str, agents: usize) {
        self.revocations
            .get_or_create(&[("reason", reason)])
            .inc_by(u64::try_from(agents).unwrap_or(u64::MAX));
    }

    pub fn permission_request(&self, event: &'static str) {
        self.permission_requests.get_or_create(&[("event", event)]).inc();
    }

    pub fn proved(&self, verdict: &'static str, took: Duration) {
        self.proofs.get_or_create(&[("verdict", verdict)]).inc();
        self.proof_seconds.observe(took.as_secs_f64());
    }

    /// Counts a long poll as waiting for a change until the guard is dropped.
    pub fn long_poll_waiting(&self) -> Held {
        self.long_polls.inc();
        Held(self.long_polls.clone())
    }

    /// Counts a write to the state as in progress (waiting for the writer, written, or waiting
    /// for its group to commit) until the guard is dropped.
    pub fn state_writing(&self) -> Held {
        self.state_writes.inc();
        Held(self.state_writes.clone())
    }

    /// Counts a proof as running until the guard is dropped.
    pub fn proof_running(&self) -> Held {
        self.proofs_running.inc();
        Held(self.proofs_running.clone())
    }
}

/// Something counted in a gauge while it is held (a long poll waiting, a proof running).
pub struct Held(Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the metrics read from the serving state at scrape time (the server provides it).
pub trait ServingState: Send + Sync {
    /// Bundle load attempts: (ok, failed).
    fn reload_counts(&self) -> (u64, u64);
    /// The serving bundle's version, if one is serving.
    fn bundle_version(&self) -> Option<String>;
    /// Agents neither revoked nor expired.
    fn live_agents(&self) -> usize;
}

/// The serving state, as a collector.
struct Serving(SharedState<dyn ServingState>);

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving").finish_non_exhaustive()
    }
}

impl Collector for Serving {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (ok, failed) = self.0.reload_counts();
        let mut reloads = encoder.encode_descriptor(
            "deputy_bundle_reloads",
            "Bundle load attempts by outcome (ok: loaded or unchanged; failed: rejected, the last good bundle keeps serving)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(ok).encode(reloads.encode_family(&[("outcome", "ok")])?)?;
        ConstCounter::new(failed).encode(reloads.encode_family(&[("outcome", "failed")])?)?;

        let version = self.0.bundle_version();
        let ready = ConstGauge::new(i64::from(version.is_some()));
        ready.encode(encoder.encode_descriptor(
            "deputy_bundle_ready",
            "1 when a valid bundle is serving",
            None,
            ready.metric_type(),
        )?)?;
        if let Some(version) = version {
            let mut info = encoder.encode_descriptor(
                "deputy_bundle_info",
                "The serving bundle; its version is the `version` label",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1).encode(info.encode_family(&[("version", version.as_str())])?)?;
        }

        let live = self.0.live_agents();
        let agents = ConstGauge::new(i64::try_from(live).unwrap_or(i64::MAX));
        agents.encode(encoder.encode_descriptor(
            "deputy_agents_live",
            "Agents neither revoked nor expired",
            None,
            agents.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new(None);
        m.decided(Api::Authorize, "allow", Duration::from_micros(30));
        m.delegated("applied");
        m.proved("within", Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains(r#"deputy_decisions_total{api="authorize",outcome="allow"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"deputy_delegations_total{outcome="applied"} 1"#),
            "{text}"
        );
        assert!(text.contains("deputy_proof_duration_seconds_count 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}

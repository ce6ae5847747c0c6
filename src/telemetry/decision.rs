//! Observing the work as typed events: decisions (span, metrics, decision log), delegations,
//! proofs and reloads. The HTTP layer runs each request inside `scoped`, which makes the
//! server's `Observability` and the request's trace id reachable from where events are recorded
//! without threading them through every signature. Telemetry knows nothing of the modules that
//! record events: they hand it plain values.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tracing::field::Empty;
use tracing::Span;

use super::{Observability, TRACE_ONLY};
use crate::error::ErrorCode;
use crate::eval::PolicyError;
use crate::prover::Verdict;

/// Which API a decision was asked through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/authorize` and `/v1/authorize/batch`.
    Authorize = 0,
    /// `/access/v1/evaluation(s)`.
    AuthZen = 1,
    /// A `tools/call` through the MCP gateway (`/mcp/<server>`).
    Mcp = 2,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Authorize => "authorize",
            Api::AuthZen => "authzen",
            Api::Mcp => "mcp",
        }
    }
}

#[derive(Clone)]
struct RequestScope {
    obs: Arc<Observability>,
    trace_id: Option<Arc<str>>,
    request_id: Arc<str>,
}

tokio::task_local! {
    static REQUEST: RequestScope;
}

/// Runs one request's handling with the server's observability and the request's trace id and
/// `x-request-id` in reach of `decide`.
pub async fn scoped<F: Future>(
    obs: &Arc<Observability>,
    trace_id: Option<String>,
    request_id: &str,
    fut: F,
) -> F::Output {
    let scope = RequestScope {
        obs: Arc::clone(obs),
        trace_id: trace_id.map(Arc::from),
        request_id: Arc::from(request_id),
    };
    REQUEST.scope(scope, fut).await
}

/// The `x-request-id` of the request being handled, for log lines written on the decision
/// path (which has no request span unless traces are exported).
pub fn request_id() -> Option<Arc<str>> {
    REQUEST.try_with(|s| Arc::clone(&s.request_id)).ok()
}

/// Wraps `f` to run elsewhere (on the blocking pool) inside the current request's scope and
/// span, so decisions made there are counted, logged and traced like the others.
pub fn carry<T>(f: impl FnOnce() -> T + Send) -> impl FnOnce() -> T + Send {
    let scope = REQUEST.try_with(Clone::clone).ok();
    let span = Span::current();
    move || {
        span.in_scope(|| match scope {
            Some(scope) => REQUEST.sync_scope(scope, f),
            None => f(),
        })
    }
}

/// The shadow bundle's comparison of this request's server, when it has one and its queue has
/// room for this decision (a decision it has no room for is counted as dropped, and costs the
/// decision path nothing more).
pub fn shadow_sink() -> Option<Arc<dyn crate::telemetry::ShadowSink>> {
    REQUEST
        .try_with(|s| s.obs.shadow.get().cloned())
        .ok()
        .flatten()
        .filter(|sink| sink.admit())
}

/// The span of one decision (trace-only: created only when traces are exported, so its fields
/// are evaluated only then).
pub fn decision_span(
    api: Api,
    principal: &dyn std::fmt::Display,
    action: &dyn std::fmt::Display,
    resource_type: &dyn std::fmt::Display,
    policy_version: &str,
) -> Span {
    tracing::info_span!(
        target: TRACE_ONLY,
        "authorize",
        deputy.api = api.as_str(),
        deputy.principal = %principal,
        deputy.action = %action,
        "deputy.resource.type" = %resource_type,
        deputy.policy_version = policy_version,
        deputy.decision = Empty,
        deputy.chain_depth = Empty,
        deputy.denied_by = Empty,
        deputy.decision_id = Empty,
        deputy.error = Empty,
    )
}

/// What the decision log keeps of a request, taken before the request is decided.
pub struct LogPending {
    principal: String,
    action: String,
    resource: String,
    context: Option<Value>,
}

/// Takes what the decision log will need (the context masked); `None` unless this request's
/// server writes a decision log.
pub fn log_pending(
    principal: &dyn std::fmt::Display,
    action: &dyn std::fmt::Display,
    resource: &dyn std::fmt::Display,
    context: Option<&Value>,
) -> Option<LogPending> {
    REQUEST
        .try_with(|s| {
            s.obs.decision_log.as_ref().map(|l| LogPending {
                principal: principal.to_string(),
                action: action.to_string(),
                resource: resource.to_string(),
                context: l.masked(context),
            })
        })
        .ok()
        .flatten()
}

/// One hop of a decided agent's chain, as the decision log shows it.
#[derive(Serialize)]
pub struct ChainHop<'a> {
    pub agent: &'a str,
    pub grant_digest: &'a str,
}

/// A decision, as telemetry records it: the span's fields, the metrics and a log line.
pub struct DecisionEvent<'a, D: Serialize> {
    pub api: Api,
    /// `allow`, `deny` or `error`.
    pub outcome: &'static str,
    pub took: Duration,
    pub reasons: &'a [String],
    pub errors: &'a [PolicyError],
    /// The acting agent's chain, for a managed agent, when a decision log line may be written
    /// (nothing else reads it).
    pub chain: Option<Vec<ChainHop<'a>>>,
    pub chain_depth: Option<i64>,
    /// The bound that denied (serialised as is) and its name.
    pub denied_by: Option<(&'a D, &'static str)>,
    pub error: Option<(ErrorCode, &'a str)>,
    pub policy_version: &'a str,
}

/// Records a decision: the span's fields, the decision metrics and, when configured (and not
/// an allow the log drops), one decision log line.
pub fn decision_done<D: Serialize>(span: &Span, pending: Option<LogPending>, event: DecisionEvent<'_, D>) {
    span.record("deputy.decision", event.outcome);
    if let Some(depth) = event.chain_depth {
        span.record("deputy.chain_depth", depth);
    }
    if let Some((_, bound)) = event.denied_by {
        span.record("deputy.denied_by", bound);
    }
    if let Some((code, _)) = event.error {
        span.record("deputy.error", code.as_str());
    }
    let Ok(scope) = REQUEST.try_with(Clone::clone) else {
        return;
    };
    scope.obs.metrics.decided(event.api, event.outcome, event.took);
    let (Some(log), Some(logged)) = (scope.obs.decision_log.as_ref(), pending) else {
        return;
    };
    if log.drops_allows() && event.outcome == "allow" {
        return;
    }
    let id = uuid::Uuid::new_v4().to_string();
    span.record("deputy.decision_id", id.as_str());
    let line = Line {
        decision_id: &id,
        time: crate::clock::now_rfc3339(),
        trace_id: scope.trace_id.as_deref(),
        request_id: &scope.request_id,
        api: event.api.as_str(),
        principal: &logged.principal,
        chain: event.chain,
        action: &logged.action,
        resource: &logged.resource,
        context: logged.context,
        decision: event.outcome,
        reasons: event.reasons,
        errors: event.errors,
        denied_by: event.denied_by.map(|(d, _)| d),
        error: event.error.map(|(code, message)| LineError {
            code: code.as_str(),
            message,
        }),
        policy_version: event.policy_version,
        took_us: u64::try_from(event.took.as_micros()).unwrap_or(u64::MAX),
    };
    match serde_json::to_string(&line) {
        Ok(s) => log.send(s),
        Err(e) => tracing::error!(error = %e, request_id = %scope.request_id, "cannot encode a decision log line"),
    }
}

/// One decision log line (docs/OBSERVABILITY.md).
#[derive(Serialize)]
struct Line<'a, D: Serialize> {
    decision_id: &'a str,
    time: String,
    trace_id: Option<&'a str>,
    request_id: &'a str,
    api: &'static str,
    principal: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    chain: Option<Vec<ChainHop<'a>>>,
    action: &'a str,
    resource: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<Value>,
    decision: &'static str,
    reasons: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [PolicyError],
    #[serde(skip_serializing_if = "Option::is_none")]
    denied_by: Option<&'a D>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<LineError<'a>>,
    policy_version: &'a str,
    took_us: u64,
}

#[derive(Serialize)]
struct LineError<'a> {
    code: &'static str,
    message: &'a str,
}

/// The span of one delegation request; the proof's span nests under it.
pub fn delegation_span() -> Span {
    tracing::info_span!(
        target: TRACE_ONLY,
        "delegation",
        deputy.delegation.outcome = Empty,
        deputy.proof.verdict = Empty,
        deputy.error = Empty,
    )
}

/// Records what a delegation request came to: `applied`, `pending` (a permission request),
/// `rejected` (by the admin's rules or the proof) or `error` (bad input, authentication,
/// state), with the proof's verdict and the error's code when there are.
pub fn delegation_done(
    obs: &Observability,
    span: &Span,
    outcome: &'static str,
    verdict: Option<&str>,
    error: Option<ErrorCode>,
) {
    span.record("deputy.delegation.outcome", outcome);
    if let Some(verdict) = verdict {
        span.record("deputy.proof.verdict", verdict);
    }
    if let Some(code) = error {
        span.record("deputy.error", code.as_str());
    }
    obs.metrics.delegated(outcome);
}

/// Runs a containment proof in a `proof` span, recording its verdict and duration.
pub fn prove_observed<E>(
    metrics: Option<&super::Metrics>,
    prove: impl FnOnce() -> Result<Verdict, E>,
) -> Result<Verdict, E> {
    let span = tracing::info_span!(target: TRACE_ONLY, "proof", deputy.proof.verdict = Empty, deputy.proof.duration_ms = Empty);
    let _entered = span.enter();
    let running = metrics.map(super::Metrics::proof_running);
    let started = Instant::now();
    let result = prove();
    drop(running);
    let took: Duration = started.elapsed();
    let verdict = result.as_ref().map_or("error", Verdict::name);
    span.record("deputy.proof.verdict", verdict);
    span.record("deputy.proof.duration_ms", took.as_secs_f64() * 1000.0);
    if let Some(m) = metrics {
        m.proved(verdict, took);
    }
    result
}

/// The span of one bundle load attempt.
pub fn reload_span() -> Span {
    tracing::info_span!(target: TRACE_ONLY, "reload", deputy.reload.outcome = Empty, deputy.policy_version = Empty)
}

/// Records a load attempt's outcome (`loaded`, `unchanged`, `failed`) and the version it
/// produced or that keeps serving.
pub fn reload_done(span: &Span, outcome: &'static str, version: Option<&str>) {
    span.record("deputy.reload.outcome", outcome);
    if let Some(v) = version {
        span.record("deputy.policy_version", v);
    }
}

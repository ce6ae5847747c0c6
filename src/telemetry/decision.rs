//! Observing the work: the decision path (span, metrics, decision log), delegation, proofs and
//! reloads. The HTTP layer runs each request inside `scoped`, which makes the server's
//! `Observability` and the request's trace id reachable from the decision path without
//! threading them through every signature.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tracing::field::Empty;
use tracing::Span;

use super::{Observability, TRACE_ONLY};
use crate::authorize::{self, Outcome, Parts, PolicyError, RequestError};
use crate::bundle::{ReloadOutcome, ReloadStatus};
use crate::delegation::{DeniedBy, SpawnOutcome};
use crate::error::ErrorCode;
use crate::http::ApiError;
use crate::prover::Verdict;
use crate::snapshot::Snapshot;

/// Which API a decision was asked through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/authorize` and `/v1/authorize/batch`.
    Authorize = 0,
    /// `/access/v1/evaluation(s)`.
    AuthZen = 1,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Authorize => "authorize",
            Api::AuthZen => "authzen",
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

/// `authorize::decide`, observed: an `authorize` span with the decision's attributes, the
/// decision metrics and, when configured, a decision log line.
pub fn decide(snap: &Snapshot, parts: Parts, now: i64, api: Api) -> Result<Outcome, RequestError> {
    // Field values are only evaluated when the span is enabled (traces are exported).
    let span = tracing::info_span!(
        target: TRACE_ONLY,
        "authorize",
        deputy.api = api.as_str(),
        deputy.principal = %parts.principal.uid,
        deputy.action = %parts.action.uid,
        "deputy.resource.type" = %parts.resource.uid.type_name(),
        deputy.policy_version = snap.bundle.version.as_str(),
        deputy.decision = Empty,
        deputy.chain_depth = Empty,
        deputy.denied_by = Empty,
        deputy.decision_id = Empty,
        deputy.error = Empty,
    );
    let _entered = span.enter();
    let scope = REQUEST.try_with(Clone::clone).ok();
    let log = scope.as_ref().and_then(|s| s.obs.decision_log.as_ref());
    let logged = log.map(|l| Logged {
        principal: parts.principal.uid.to_string(),
        action: parts.action.uid.to_string(),
        resource: parts.resource.uid.to_string(),
        context: l.masked(parts.context.as_ref()),
    });

    let started = Instant::now();
    let result = authorize::decide(snap, parts, now);
    let took = started.elapsed();

    let outcome = match &result {
        Ok(o) if o.decision.allow => "allow",
        Ok(_) => "deny",
        Err(_) => "error",
    };
    span.record("deputy.decision", outcome);
    match &result {
        Ok(o) => {
            if let Some(agent) = &o.agent {
                span.record("deputy.chain_depth", agent.row.depth);
            }
            if let Some(d) = &o.denied_by {
                span.record("deputy.denied_by", bound(d));
            }
        }
        Err(e) => {
            span.record("deputy.error", e.code.as_str());
        }
    }
    let Some(scope) = &scope else { return result };
    scope.obs.metrics.decided(api, outcome, took);
    if let (Some(log), Some(logged)) = (log, logged) {
        if !(log.drops_allows() && outcome == "allow") {
            let id = uuid::Uuid::new_v4().to_string();
            span.record("deputy.decision_id", id.as_str());
            let line = Line {
                decision_id: &id,
                time: now_rfc3339(),
                trace_id: scope.trace_id.as_deref(),
                request_id: &scope.request_id,
                api: api.as_str(),
                principal: &logged.principal,
                chain: result.as_ref().ok().and_then(|o| chain(snap, o)),
                action: &logged.action,
                resource: &logged.resource,
                context: logged.context,
                decision: outcome,
                reasons: result.as_ref().map_or(&[][..], |o| &o.decision.reasons[..]),
                errors: result.as_ref().map_or(&[][..], |o| &o.decision.errors[..]),
                denied_by: result.as_ref().ok().and_then(|o| o.denied_by.as_ref()),
                error: result.as_ref().err().map(|e| LineError {
                    code: e.code.as_str(),
                    message: &e.message,
                }),
                policy_version: &snap.bundle.version,
                took_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            };
            match serde_json::to_string(&line) {
                Ok(s) => log.send(s),
                Err(e) => {
                    tracing::error!(error = %e, request_id = %scope.request_id, "cannot encode a decision log line")
                }
            }
        }
    }
    result
}

/// What the decision log needs from the request, taken before it is consumed.
struct Logged {
    principal: String,
    action: String,
    resource: String,
    context: Option<Value>,
}

/// One decision log line (docs/OBSERVABILITY.md).
#[derive(Serialize)]
struct Line<'a> {
    decision_id: &'a str,
    time: String,
    trace_id: Option<&'a str>,
    request_id: &'a str,
    api: &'static str,
    principal: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    chain: Option<Vec<Hop<'a>>>,
    action: &'a str,
    resource: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<Value>,
    decision: &'static str,
    reasons: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [PolicyError],
    #[serde(skip_serializing_if = "Option::is_none")]
    denied_by: Option<&'a DeniedBy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<LineError<'a>>,
    policy_version: &'a str,
    took_us: u64,
}

#[derive(Serialize)]
struct Hop<'a> {
    agent: &'a str,
    grant_digest: &'a str,
}

#[derive(Serialize)]
struct LineError<'a> {
    code: &'static str,
    message: &'a str,
}

/// The acting agent's chain, root first, each hop with its grant's digest.
fn chain<'a>(snap: &'a Snapshot, outcome: &Outcome) -> Option<Vec<Hop<'a>>> {
    let agent = outcome.agent.as_ref()?;
    Some(
        agent
            .chain
            .iter()
            .filter_map(|id| snap.agents.get(id))
            .map(|a| Hop {
                agent: &a.row.id,
                grant_digest: &a.row.grant_digest,
            })
            .collect(),
    )
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

fn bound(d: &DeniedBy) -> &'static str {
    match d {
        DeniedBy::Admin { .. } => "admin",
        DeniedBy::Grant { .. } => "grant",
        DeniedBy::Ceiling { .. } => "ceiling",
        DeniedBy::Taint { .. } => "taint",
        DeniedBy::Revoked => "revoked",
        DeniedBy::Expired => "expired",
        DeniedBy::StateUnavailable => "state_unavailable",
        DeniedBy::UnknownAgent => "unknown_agent",
    }
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

/// Records what a delegation request came to: applied, pending (a permission request),
/// rejected (by the admin's rules or the proof) or error (bad input, authentication, state).
pub fn delegation_done(obs: &Observability, span: &Span, result: &Result<SpawnOutcome, ApiError>) {
    let (outcome, proof) = match result {
        Ok(SpawnOutcome::Applied { proof, .. }) => ("applied", Some(proof)),
        Ok(SpawnOutcome::Pending { proof, .. }) => ("pending", Some(proof)),
        Err(e) if matches!(e.code, ErrorCode::DelegationForbidden | ErrorCode::GrantExceedsParent) => {
            ("rejected", e.details.get("proof"))
        }
        Err(_) => ("error", None),
    };
    span.record("deputy.delegation.outcome", outcome);
    if let Some(verdict) = proof.and_then(|p| p.get("verdict")).and_then(Value::as_str) {
        span.record("deputy.proof.verdict", verdict);
    }
    if let Err(e) = result {
        span.record("deputy.error", e.code.as_str());
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
    let started = Instant::now();
    let result = prove();
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

/// Records a load attempt's outcome and the version it produced or that keeps serving.
pub fn reload_done(span: &Span, status: &ReloadStatus) {
    let outcome = match status.outcome {
        ReloadOutcome::Loaded => "loaded",
        ReloadOutcome::Unchanged => "unchanged",
        ReloadOutcome::Failed => "failed",
    };
    span.record("deputy.reload.outcome", outcome);
    if let Some(v) = &status.version {
        span.record("deputy.policy_version", v.as_str());
    }
}

//! The decision path, observed: `decide` inside an `authorize` span, recorded as a telemetry
//! decision event (span fields, decision metrics, a decision log line when configured).

use std::time::Instant;

use super::{decide, DeniedBy, Outcome, Parts, RequestError};
use crate::snapshot::Snapshot;
use crate::telemetry::{self, Api, ChainHop, DecisionEvent};

/// `decide`, observed.
pub fn decide_observed(snap: &Snapshot, parts: Parts, now: i64, api: Api) -> Result<Outcome, RequestError> {
    let span = telemetry::decision_span(
        api,
        &parts.principal.uid,
        &parts.action.uid,
        parts.resource.uid.type_name(),
        &snap.bundle.version,
    );
    let _entered = span.enter();
    let pending = telemetry::log_pending(
        &parts.principal.uid,
        &parts.action.uid,
        &parts.resource.uid,
        parts.context.as_ref(),
    );
    // Copied only when a shadow bundle is compared (`--shadow`).
    let shadow = telemetry::shadow_sink().map(|sink| (sink, parts.clone()));
    let started = Instant::now();
    let result = decide(snap, parts, now);
    let took = started.elapsed();
    if let Some((sink, parts)) = shadow {
        sink.offer(Box::new(super::shadow::Job::new(snap, parts, now, &result)));
    }
    let event = match &result {
        Ok(o) => DecisionEvent {
            api,
            outcome: if o.decision.allow { "allow" } else { "deny" },
            took,
            reasons: &o.decision.reasons,
            errors: &o.decision.errors,
            // Only the decision log shows the chain: not built per decision otherwise.
            chain: o.agent.as_ref().filter(|_| pending.is_some()).map(|agent| {
                // A session is decided as its callee: the log shows the callee's chain, then
                // the session.
                let served = agent
                    .session
                    .as_ref()
                    .and_then(|s| snap.agents.get(&s.callee))
                    .map(|c| c.chain.as_slice())
                    .unwrap_or_default();
                served
                    .iter()
                    .chain(agent.chain.iter())
                    .filter_map(|id| snap.agents.get(id))
                    .map(|a| ChainHop {
                        agent: &a.row.id,
                        grant_digest: &a.row.grant_digest,
                    })
                    .collect()
            }),
            chain_depth: o.agent.as_ref().map(|a| a.row.depth),
            denied_by: o.denied_by.as_ref().map(|d| (d, bound(d))),
            error: None,
            policy_version: &snap.bundle.version,
        },
        Err(e) => DecisionEvent {
            api,
            outcome: "error",
            took,
            reasons: &[],
            errors: &[],
            chain: None,
            chain_depth: None,
            denied_by: None::<(&DeniedBy, &'static str)>,
            error: Some((e.code, &e.message)),
            policy_version: &snap.bundle.version,
        },
    };
    telemetry::decision_done(&span, pending, event);
    result
}

/// The name of the bound that denied, as spans and metrics label it.
pub fn bound(d: &DeniedBy) -> &'static str {
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

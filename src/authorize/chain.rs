//! Run-time authority of an agent: the admin policies AND every grant along its chain, each
//! linked to the acting agent. A deny says which bound denied it.

use cedar_policy::{Entities, Request};
use serde::Serialize;

use crate::agents::LiveAgent;
use crate::bundle::TaintRole;
use crate::eval::{Asked, Decision, Indexed};

/// Which bound denied a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "bound", rename_all = "snake_case")]
pub enum DeniedBy {
    /// The admin maximum (the bundle's policies): forbidden by `policies`, or nothing permits.
    /// `agent` names the ancestor the admin policies deny it to, when it is not the acting agent
    /// itself: no agent does what the admin forbids any agent above it.
    Admin {
        policies: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    /// A grant along the chain: `agent`'s grant (the acting agent's own when `own`).
    Grant {
        agent: String,
        own: bool,
        policies: Vec<String>,
    },
    /// The resource is classified above the agent's ceiling (a taint source or sink action).
    Ceiling { classification: i64, ceiling: i64 },
    /// A sink classified below what the agent has read: no writing down. For a session,
    /// `inherited_from` names the caller whose taint the session inherited, when that taint
    /// alone denies the write.
    Taint {
        classification: i64,
        taint: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        inherited_from: Option<String>,
    },
    /// The agent, or an ancestor, was revoked (or its task completed).
    Revoked,
    /// The agent's lifetime, or an ancestor's, ended.
    Expired,
    /// The principal is an `Agent` the bundle does not declare and deputy does not manage
    /// (never created, or lost with its state): it has no authority at all.
    UnknownAgent,
    /// deputy's delegation state could not be loaded, so no agent can be decided.
    StateUnavailable,
}

/// A decision for an agent, with the bound that denied it.
#[derive(Debug, Clone, Serialize)]
pub struct ChainDecision {
    #[serde(flatten)]
    pub decision: Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<DeniedBy>,
}

/// What deputy checks itself for an action the schema marks as a taint source or sink.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    pub role: Option<TaintRole>,
    /// The resource's `classification`, when it has one.
    pub classification: Option<i64>,
}

/// What deputy bounds a decision by itself, before any policy: the lowest ceiling on the chain
/// and the session's taint.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub ceiling: i64,
    pub taint: i64,
    /// For a session: the taint it inherited from its caller, and the caller.
    pub inherited: Option<(i64, String)>,
}

impl Bounds {
    /// An agent's own bounds.
    pub fn of(agent: &LiveAgent) -> Bounds {
        Bounds {
            ceiling: agent.chain_ceiling,
            taint: agent.taint(),
            inherited: None,
        }
    }

    /// Ceiling, then no writing down: the bound that denies, if one does.
    fn check(&self, guard: Guard) -> Option<DeniedBy> {
        let (Some(role), Some(classification)) = (guard.role, guard.classification) else {
            return None;
        };
        if classification > self.ceiling {
            return Some(DeniedBy::Ceiling {
                classification,
                ceiling: self.ceiling,
            });
        }
        if role == TaintRole::Sink && classification < self.taint {
            let inherited_from = self
                .inherited
                .as_ref()
                .filter(|(level, _)| classification < *level)
                .map(|(_, caller)| caller.clone());
            return Some(DeniedBy::Taint {
                classification,
                taint: self.taint,
                inherited_from,
            });
        }
        None
    }
}

/// Decides `request` for a deputy-managed agent: lifetime (its own, then every ancestor's),
/// then ceiling (the lowest on the chain) and taint, then the admin policies — for the agent,
/// then for each ancestor, root first, with the same action, resource and context — then each
/// hop root to leaf (each ancestor's delegable view, then its own grant); the first bound that
/// denies answers.
///
/// INVARIANT (child ≤ parent): the admin maximum is asked about every agent on the chain, so an
/// admin rule that binds an agent through its entity (its groups, its attributes, its id) binds
/// every descendant too, whatever the descendant's own entity says.
pub fn decide(
    admin: Indexed<'_>,
    entities: &Entities,
    agent: &LiveAgent,
    request: &Request,
    guard: Guard,
    now: i64,
) -> ChainDecision {
    decide_bounded(admin, entities, agent, request, guard, now, &Bounds::of(agent))
}

/// `decide` with deputy's own bounds given (a session's taint and ceiling, deciding as its
/// callee): bounds can only deny more than the agent's own would.
pub fn decide_bounded(
    admin: Indexed<'_>,
    entities: &Entities,
    agent: &LiveAgent,
    request: &Request,
    guard: Guard,
    now: i64,
    bounds: &Bounds,
) -> ChainDecision {
    if agent.is_revoked() {
        return denied(DeniedBy::Revoked);
    }
    if agent.is_expired(now) {
        return denied(DeniedBy::Expired);
    }
    // Revocation and expiry cascade to descendants when recorded; this holds in between.
    if let Some(hop) = agent.hops.iter().find(|h| !h.is_live(now)) {
        return denied(if hop.is_revoked() {
            DeniedBy::Revoked
        } else {
            DeniedBy::Expired
        });
    }
    if let Some(by) = bounds.check(guard) {
        return denied(by);
    }
    let asked = Asked::new(entities, request);
    // The action's and resource's side of the admin index, looked up once for the agent and
    // every ancestor.
    let prepared = admin.prepare(&asked);
    let admin_decision = admin.verdict_prepared(&asked, &prepared).decision();
    if !admin_decision.allow {
        return ChainDecision {
            denied_by: Some(DeniedBy::Admin {
                policies: admin_decision.reasons.clone(),
                agent: None,
            }),
            decision: admin_decision,
        };
    }
    let ancestors = agent.hops.split_last().map_or(&[][..], |(_, rest)| rest);
    for hop in ancestors {
        // The request as the ancestor's: only its principal is looked up, and a Cedar request
        // is built only if Cedar's evaluator must run; the reasons of an allow are not rendered.
        let Some(as_ancestor) = asked.as_principal(&hop.uid) else {
            return denied(DeniedBy::Admin {
                policies: Vec::new(),
                agent: Some(hop.agent.clone()),
            });
        };
        let verdict = admin.verdict_prepared(&as_ancestor, &prepared);
        if !verdict.allow() {
            let d = verdict.decision();
            return ChainDecision {
                denied_by: Some(DeniedBy::Admin {
                    policies: d.reasons.clone(),
                    agent: Some(hop.agent.clone()),
                }),
                decision: Decision {
                    allow: false,
                    reasons: d.reasons,
                    errors: d.errors,
                },
            };
        }
    }
    let mut allowed = admin_decision;
    for hop in &agent.hops {
        let d = asked.evaluate(&hop.policies, &hop.index);
        if !d.allow {
            let mut errors = allowed.errors;
            errors.extend(d.errors.iter().cloned());
            return ChainDecision {
                denied_by: Some(DeniedBy::Grant {
                    agent: hop.agent.clone(),
                    own: hop.agent == agent.row.id,
                    policies: d.reasons.clone(),
                }),
                decision: Decision {
                    allow: false,
                    reasons: d.reasons,
                    errors,
                },
            };
        }
        allowed.reasons.extend(d.reasons);
        allowed.errors.extend(d.errors);
    }
    ChainDecision {
        decision: allowed,
        denied_by: None,
    }
}

/// Decides `request` for a principal the admin policies alone bound (an agent the bundle
/// declares without a grant, serving a session), under deputy's own `bounds` first.
pub fn decide_admin_only(admin: Indexed<'_>, entities: &Entities, request: &Request, guard: Guard, bounds: &Bounds) -> ChainDecision {
    if let Some(by) = bounds.check(guard) {
        return denied(by);
    }
    let d = admin.evaluate(entities, request);
    ChainDecision {
        denied_by: (!d.allow).then(|| DeniedBy::Admin {
            policies: d.reasons.clone(),
            agent: None,
        }),
        decision: d,
    }
}

pub(crate) fn denied(by: DeniedBy) -> ChainDecision {
    ChainDecision {
        decision: Decision {
            allow: false,
            reasons: Vec::new(),
            errors: Vec::new(),
        },
        denied_by: Some(by),
    }
}

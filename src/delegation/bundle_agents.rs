//! Installing a bundle: the agents it declares with a grant (`grants/<id>.cedar`) are root agents
//! whose grant, attributes and existence come from the bundle; every live child is re-proved
//! against its parent under the new bundle, and what no longer proves is reported as drift.
//!
//! INVARIANT (the bundle is the source of truth for bundle agents): on every install their
//! grants and attributes are re-read and recorded, their descendants re-linked (a lowered
//! ceiling bounds the whole subtree), and an agent the bundle no longer declares is revoked
//! with its subtree — all in one transaction with the install, or not at all.
//!
//! INVARIANT (one identity namespace): a bundle that declares an `Agent` id an agent deputy
//! created holds is refused with `agent_id_conflict`; a bundle under which deputy's agents
//! cannot be put in the entity store is refused too. The last good bundle keeps serving.

use crate::error::ProblemCode;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use super::audit::{AuditEvent, AuditKind};
use super::service::Delegation;
use super::store::{AgentRow, StateError};
use crate::agents::{agent_uid, BUNDLE_CREATOR};
use crate::bundle::{Bundle, Problem};
use crate::prover::{self, Grant, ProveOptions, Verdict};
use crate::snapshot::Prepared;

/// Bundle-declared agents live as long as the bundle declares them.
const BUNDLE_AGENT_EXPIRY: i64 = i64::MAX / 2;

/// A live grant the current bundle no longer proves within its parent's delegable view. The
/// run-time chain still bounds it by every ancestor's delegable view; this is a report.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub agent: String,
    pub parent: String,
    pub policy_version: String,
    /// `exceeds`, `inconclusive` or `invalid` (the grant no longer validates).
    pub verdict: String,
    pub detail: Value,
}

/// What the last re-proof found, and against which bundle version it ran.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DriftReport {
    /// The bundle version the live grants were last re-proved against; `None` before the first.
    pub policy_version: Option<String>,
    pub agents: Vec<Drift>,
}

/// Why an install was refused.
enum Refused {
    State(StateError),
    Problems(Vec<Problem>),
}

impl From<StateError> for Refused {
    fn from(e: StateError) -> Self {
        Refused::State(e)
    }
}

/// The attributes the bundle gives an agent it declares (fail closed on anything missing).
fn bundle_attributes(bundle: &Bundle, id: &str) -> (bool, i64, i64) {
    let attr = |name: &str| -> Option<cedar_policy::EvalResult> {
        let uid = agent_uid(id).ok()?;
        bundle.entities.get(&uid)?.attr(name)?.ok()
    };
    let long = |name: &str| match attr(name) {
        Some(cedar_policy::EvalResult::Long(l)) => l,
        _ => 0,
    };
    let can_delegate = matches!(attr("can_delegate"), Some(cedar_policy::EvalResult::Bool(true)));
    (can_delegate, long("ceiling"), long("depth"))
}

/// The agent the bundle declares with the grant it ships (`grants/<id>.cedar`), as it is first
/// installed: a root, untainted, never expiring, its attributes from the bundle's entity.
pub fn shipped_agent(bundle: &Bundle, id: &str, grant: &str, now: i64) -> AgentRow {
    let (can_delegate, ceiling, depth) = bundle_attributes(bundle, id);
    AgentRow {
        id: id.to_owned(),
        parent: None,
        depth,
        can_delegate,
        ceiling,
        taint: 0,
        grant: grant.to_owned(),
        grant_digest: Grant::parse(grant).map(|g| g.digest()).unwrap_or_default(),
        credential_hash: String::new(),
        task: "declared in the bundle".to_owned(),
        reason: String::new(),
        created_by: BUNDLE_CREATOR.to_owned(),
        created_at: now,
        expires_at: BUNDLE_AGENT_EXPIRY,
        revoked_at: None,
        revoked_reason: None,
        bundle_version: bundle.version.clone(),
        proof: json!({"verdict": "not_required", "reason": "shipped in the bundle by the admin"}),
    }
}

impl Delegation {
    /// Installs a newly loaded bundle: checks it against the identities deputy manages, brings
    /// the bundle's own agents in line with it, and publishes the snapshot — in one transaction
    /// under the writer lock. Refused (with problems) when it does not fit; nothing changes then.
    pub fn install_bundle(&self, bundle: Arc<Bundle>, now: i64) -> Result<(), Vec<Problem>> {
        let mut w = self
            .writer()
            .map_err(|e| vec![Problem::new(ProblemCode::Internal, e.message)])?;
        let conflicts: Vec<Problem> = w
            .registry()
            .iter()
            .filter(|a| !a.is_bundle_agent())
            .filter_map(|a| {
                let file = bundle.agent_names.declared.get(&a.row.id)?;
                Some(
                    Problem::new(
                        ProblemCode::AgentIdConflict,
                        format!(
                            "`Agent::\"{}\"` is declared here, but deputy already manages an agent with that id \
                             (created by {}); a bundle cannot take over an identity",
                            a.row.id, a.row.created_by
                        ),
                    )
                    .in_file(file)
                    .with_help("rename the bundle's agent: an id deputy gave out stays taken, even after revocation"),
                )
            })
            .collect();
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        let installed = self.store.write(|tx| -> Result<(Prepared, Vec<String>), Refused> {
            let registry = w.registry();
            let mut added = Vec::new();
            let mut changed = Vec::new();
            for (id, grant) in &bundle.grants {
                let digest = Grant::parse(grant).map(|g| g.digest()).unwrap_or_default();
                let (can_delegate, ceiling, depth) = bundle_attributes(&bundle, id);
                match registry.get(id) {
                    // Not a bundle agent: refused above (a shipped grant needs a declaration).
                    Some(a) if !a.is_bundle_agent() => {}
                    // Revoked earlier (removed from a previous bundle): it stays revoked.
                    Some(a) if a.is_revoked() => {}
                    Some(a) => {
                        let mut row = a.row.clone();
                        if row.grant != *grant {
                            tx.swap_grant(id, &row.grant_digest, grant, &digest)?;
                            tx.audit(
                                now,
                                AuditEvent {
                                    kind: AuditKind::GrantReplaced,
                                    actor: BUNDLE_CREATOR.to_owned(),
                                    agent: Some(id.clone()),
                                    details: json!({"grant_digest": digest, "policy_version": bundle.version}),
                                },
                            )?;
                            row.grant = grant.clone();
                            row.grant_digest = digest.clone();
                        }
                        if (row.can_delegate, row.ceiling, row.depth) != (can_delegate, ceiling, depth) {
                            tx.update_attributes(id, can_delegate, ceiling, depth)?;
                            tx.audit(
                                now,
                                AuditEvent {
                                    kind: AuditKind::AttributesReplaced,
                                    actor: BUNDLE_CREATOR.to_owned(),
                                    agent: Some(id.clone()),
                                    details: json!({
                                        "can_delegate": can_delegate, "ceiling": ceiling, "depth": depth,
                                        "was": {"can_delegate": row.can_delegate, "ceiling": row.ceiling, "depth": row.depth},
                                        "policy_version": bundle.version,
                                    }),
                                },
                            )?;
                            row.can_delegate = can_delegate;
                            row.ceiling = ceiling;
                            row.depth = depth;
                        }
                        if row.grant != a.row.grant || row.ceiling != a.row.ceiling || row.can_delegate != a.row.can_delegate || row.depth != a.row.depth {
                            changed.push(row);
                        }
                    }
                    None => {
                        let row = shipped_agent(&bundle, id, grant, now);
                        tx.insert_agent(&row)?;
                        tx.audit(
                            now,
                            AuditEvent {
                                kind: AuditKind::Applied,
                                actor: BUNDLE_CREATOR.to_owned(),
                                agent: Some(id.clone()),
                                details: json!({"grant_digest": digest, "policy_version": bundle.version, "source": "grants/"}),
                            },
                        )?;
                        added.push(row);
                    }
                }
            }
            let removed: Vec<String> = registry
                .iter()
                .filter(|a| a.is_bundle_agent() && !a.is_revoked() && !bundle.grants.contains_key(&a.row.id))
                .map(|a| a.row.id.clone())
                .collect();
            let mut revoked = Vec::new();
            for id in removed {
                revoked.extend(self.end_subtree(tx, &id, now, AuditKind::Revoked, "removed from the bundle", BUNDLE_CREATOR)?);
            }
            // A session of an agent only the bundle declared ends when the bundle no longer does
            // (it would deny everything meanwhile; recorded, it stays ended if the agent returns).
            let orphaned: Vec<String> = registry
                .iter()
                .filter(|a| !a.is_revoked())
                .filter(|a| {
                    a.session
                        .as_ref()
                        .is_some_and(|s| registry.get(&s.callee).is_none() && !bundle.agent_names.declares(&s.callee))
                })
                .map(|a| a.row.id.clone())
                .collect();
            for id in orphaned {
                revoked.extend(self.end_subtree(
                    tx,
                    &id,
                    now,
                    AuditKind::Revoked,
                    "its callee is no longer declared by the bundle",
                    BUNDLE_CREATOR,
                )?);
            }
            let mut next = registry.with_rows(changed).map_err(|e| Refused::Problems(vec![Problem::new(ProblemCode::Internal, e.to_string())]))?;
            for row in added {
                next = next
                    .with(row)
                    .map_err(|e| Refused::Problems(vec![Problem::new(ProblemCode::GrantInvalid, e.to_string())]))?;
            }
            let prepared = w.prepare_with(Arc::clone(&bundle), next).map_err(|e| {
                Refused::Problems(vec![Problem::new(ProblemCode::SchemaLacksAgentModel,
                    format!("the agents deputy manages cannot be served under this bundle: {e}"),
                )
                .in_file("schema")
                .with_help("the last good bundle keeps serving; make the bundle fit deputy's agent model")])
            })?;
            Ok((prepared, revoked))
        });
        match installed {
            Ok((prepared, revoked)) => {
                // Committed: the revoked ones are marked before the new bundle serves.
                w.registry().mark_revoked(&revoked);
                w.install(prepared);
                drop(w);
                if !revoked.is_empty() {
                    self.requests_changed.notify_waiters();
                }
                Ok(())
            }
            Err(Refused::Problems(p)) => Err(p),
            Err(Refused::State(e)) => {
                tracing::error!(error = %e, "cannot record the bundle's agents; the bundle is not installed");
                Err(vec![Problem::new(
                    ProblemCode::StateUnavailable,
                    format!("the delegation state store failed while installing the bundle: {e}"),
                )])
            }
        }
    }

    /// Re-proves every live child's grant against its parent's under the serving bundle and
    /// reports the ones that no longer fit (log, audit, `/v1/status`). Blocking; runs when a
    /// bundle loads.
    pub fn reprove_all(&self, now: i64) {
        let Some(snap) = self.live.current() else { return };
        let mut found = Vec::new();
        for agent in snap.agents.iter().filter(|a| a.is_live(now)) {
            let Some(parent) = agent.row.parent.as_ref().and_then(|p| snap.agents.get(p)) else {
                continue;
            };
            let result = Grant::parse(&agent.row.grant).and_then(|child| {
                let parent_grant = Grant::parse(&parent.row.grant)?;
                let opts = ProveOptions {
                    child_principal: Some(agent.uid.clone()),
                    ..ProveOptions::default()
                };
                prover::prove(&child, &parent_grant, &snap.bundle.schema, snap.entities(), &opts)
            });
            let (verdict, detail) = match result {
                Ok(Verdict::Within(_)) => continue,
                Ok(v) => (v.name().to_owned(), serde_json::to_value(&v).unwrap_or(Value::Null)),
                Err(e) => ("invalid".to_owned(), json!(e.to_string())),
            };
            found.push(Drift {
                agent: agent.row.id.clone(),
                parent: parent.row.id.clone(),
                policy_version: snap.bundle.version.clone(),
                verdict,
                detail,
            });
        }
        for d in &found {
            tracing::warn!(agent = %d.agent, parent = %d.parent, verdict = %d.verdict, version = %d.policy_version,
                "a live grant no longer proves within its parent's under the new bundle; every ancestor's delegable view still bounds it");
            let audit = AuditEvent {
                kind: AuditKind::Drift,
                actor: "deputy".to_owned(),
                agent: Some(d.agent.clone()),
                details: json!({"parent": d.parent, "verdict": d.verdict, "policy_version": d.policy_version}),
            };
            if let Err(e) = self.store.audit(now, audit) {
                tracing::error!(error = %e, "cannot record drift");
            }
        }
        if let Ok(mut drift) = self.drift.lock() {
            *drift = DriftReport {
                policy_version: Some(snap.bundle.version.clone()),
                agents: found,
            };
        }
    }
}

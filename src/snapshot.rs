//! What a request is decided against: one bundle, the live agents, and the entity store that
//! joins them. Rebuilt (off the async threads) when the bundle reloads or an agent changes,
//! then swapped atomically.
//!
//! INVARIANT: a request loads one `Arc<Snapshot>` and uses only it, so it never sees a mix of
//! two bundles or two agent registries.
//!
//! INVARIANT (one writer): every change to what is served — a bundle install, an agent created,
//! revoked or re-granted — happens while holding the one [`WriteGuard`], which covers the
//! check against the latest state, the durable write and the publish. So writes are
//! linearizable: a write that returned is visible to every later request and is checked against
//! by every later write, and no two writes interleave between their checks and their commits.

use crate::error::ProblemCode;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwapOption;
use cedar_policy::Entities;
use cedar_policy_core::entities::{Dereference, TCComputation};
use cedar_policy_core::tpe::entities::{PartialEntities, PartialEntity};

use crate::agents::Registry;
use crate::bundle::Bundle;

pub struct Snapshot {
    pub bundle: Arc<Bundle>,
    pub agents: Registry,
    /// The bundle's entities plus the managed agents'; `None` when deputy manages none (then
    /// the bundle's own store is used, and nothing is copied).
    combined: Option<Entities>,
    /// The delegation state could not be loaded: which agents exist and what they were granted
    /// is unknown, so every decision for an `Agent` principal fails closed.
    pub agents_unknown: bool,
    /// Answers computed from this snapshot alone (discovery), kept while it serves: a reload or
    /// an agent change builds a new snapshot, so nothing here is ever stale.
    pub memo: Memo,
}

/// What discovery computes once per snapshot: the entity store as Cedar's partial evaluator
/// takes it and what else depends on the store alone (`StoreMemo`), and answers keyed by the
/// caller (an agent with its taint and liveness).
#[derive(Default)]
pub struct Memo {
    /// Shared with the next snapshot when its entity store is this one's (`Snapshot::build`).
    store: Arc<StoreMemo>,
    answers: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

/// What depends on the bundle and the entity store alone, not on the agents' registry.
#[derive(Default)]
struct StoreMemo {
    partial: OnceLock<Result<Arc<PartialEntities>, String>>,
    answers: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

/// Answers kept per snapshot at most; beyond, the memo starts over (a snapshot lives until the
/// next change, and an answer costs one computation to rebuild).
const MEMO_CAPACITY: usize = 4096;

impl Memo {
    /// The snapshot's entities for partial evaluation, built on first use: the bundle's, as
    /// converted once for every snapshot of it, plus the entities of the agents deputy manages
    /// (`managed`) when there are any (`combined`).
    ///
    /// INVARIANT: `combined` is the bundle's store with exactly the managed agents' entities
    /// added, none of them with parents (`agents::agent_entity`), so no bundle entity's ancestors
    /// change: converting it whole equals the bundle's conversion plus the added entities'.
    /// Anything else seen here (a count that differs, an added entity with parents or missing)
    /// converts the whole store instead.
    fn partial_entities<'a>(
        &self,
        bundle: &Bundle,
        combined: Option<&Entities>,
        managed: impl Iterator<Item = &'a cedar_policy::EntityUid>,
    ) -> Result<Arc<PartialEntities>, String> {
        self.store
            .partial
            .get_or_init(|| {
                let base = bundle.partial_entities()?;
                let Some(combined) = combined else {
                    return Ok(base);
                };
                let whole = || {
                    PartialEntities::from_concrete(combined.as_ref().clone(), bundle.schema.as_ref())
                        .map(Arc::new)
                        .map_err(|e| e.to_string())
                };
                let (held, all): (&cedar_policy_core::entities::Entities, &cedar_policy_core::entities::Entities) =
                    (bundle.entities.as_ref(), combined.as_ref());
                // The added entities are the managed agents' (looked up by uid, not found by
                // scanning the whole store).
                let mut added = Vec::new();
                for uid in managed {
                    let core = match all.entity(uid.as_ref()) {
                        Dereference::Data(core) if !matches!(held.entity(uid.as_ref()), Dereference::Data(_)) => core,
                        _ => return whole(),
                    };
                    if core.ancestors().next().is_some() {
                        return whole();
                    }
                    let partial = PartialEntity::try_from(core.clone()).map_err(|e| e.to_string())?;
                    added.push((core.uid().clone(), partial));
                }
                if held.len() + added.len() != all.len() {
                    return whole();
                }
                let mut partial = (*base).clone();
                partial
                    .add_entities(added.into_iter(), bundle.schema.as_ref(), TCComputation::AssumeAlreadyComputed)
                    .map_err(|e| e.to_string())?;
                Ok(Arc::new(partial))
            })
            .clone()
    }

    /// A new snapshot's memo: nothing kept but, when its entity store is `same_store`'s, what
    /// depends on the store alone.
    fn after(same_store: Option<&Memo>) -> Memo {
        Memo {
            store: same_store.map(|m| Arc::clone(&m.store)).unwrap_or_default(),
            answers: Mutex::default(),
        }
    }

    /// The answer kept under `key`, or `compute`'s, kept. Two callers that miss at once both
    /// compute; both answers are equal, the last is kept.
    pub fn get_or_insert<T: Any + Send + Sync>(&self, key: &str, compute: impl FnOnce() -> T) -> Arc<T> {
        crate::bundle::memo::get_or_insert(&self.answers, key, compute, MEMO_CAPACITY)
    }

    /// As `get_or_insert`, for an answer that depends on the bundle and the entity store alone
    /// (nothing about the agents but their entities): kept for the next snapshots with the same
    /// store.
    pub fn get_or_insert_for_store<T: Any + Send + Sync>(&self, key: &str, compute: impl FnOnce() -> T) -> Arc<T> {
        crate::bundle::memo::get_or_insert(&self.store.answers, key, compute, MEMO_CAPACITY)
    }
}

impl Snapshot {
    /// The joint store when deputy manages agents (`entities` is then this), else `None`.
    pub fn combined(&self) -> Option<&Entities> {
        self.combined.as_ref()
    }

    pub fn entities(&self) -> &Entities {
        self.combined.as_ref().unwrap_or(&self.bundle.entities)
    }

    /// The snapshot's entity store as Cedar's partial evaluator takes it, converted on first
    /// use (`Memo::partial_entities`) and kept while the store is the same.
    pub fn partial_entities(&self) -> Result<Arc<PartialEntities>, String> {
        let managed = self.agents.iter().filter(|a| !a.is_bundle_agent()).map(|a| &a.uid);
        self.memo.partial_entities(&self.bundle, self.combined(), managed)
    }

    /// A snapshot of `bundle` alone: no agents of deputy's own (an embedded decision path).
    pub fn of_bundle(bundle: Arc<Bundle>) -> Snapshot {
        Snapshot {
            bundle,
            agents: Registry::default(),
            combined: None,
            agents_unknown: false,
            memo: Memo::default(),
        }
    }

    /// Builds the snapshot for `bundle` and `agents`; an error when the agents cannot be
    /// represented in the bundle's entity store (its schema no longer fits them, or an id
    /// collides), in which case nothing may be served from it.
    ///
    /// When `prev` served the same bundle and `agents` only adds agents to its registry (a
    /// spawn), the store is `prev`'s plus the new agents' entities: the cost of a spawn does not
    /// grow with the number of live agents' entities to rebuild.
    /// The snapshot a shadow bundle decides with: `bundle` and the agents of a serving snapshot
    /// (`prev`: the last one built for a shadow, extended when only agents were added).
    pub fn for_shadow(bundle: Arc<Bundle>, agents: Registry, agents_unknown: bool, prev: Option<&Snapshot>) -> Result<Snapshot, String> {
        Self::build(bundle, agents, agents_unknown, prev)
    }

    fn build(bundle: Arc<Bundle>, agents: Registry, agents_unknown: bool, prev: Option<&Snapshot>) -> Result<Snapshot, String> {
        let extended = prev
            .filter(|p| Arc::ptr_eq(&p.bundle, &bundle))
            .and_then(|p| Some((p.combined.as_ref()?, agents.added_to(&p.agents)?)));
        // Nothing added to `prev`'s store (no agent, or only bundle agents, which add no
        // entity): the store is `prev`'s, and so is what discovery computed from it alone.
        let same_store = match (&extended, prev) {
            (Some((_, added)), Some(p)) if added.iter().all(|a| a.is_bundle_agent()) => Some(&p.memo),
            _ => None,
        };
        let combined = if let Some((store, added)) = extended {
            Some(Registry::extend_entities(store, &added, &bundle.schema)?)
        } else if agents.iter().any(|a| !a.is_bundle_agent()) {
            Some(agents.combined_entities(&bundle.entities, &bundle.schema)?)
        } else {
            None
        };
        Ok(Snapshot {
            bundle,
            agents,
            combined,
            agents_unknown,
            memo: Memo::after(same_store),
        })
    }
}

/// The serving snapshot, and the state its one writer extends.
#[derive(Default)]
pub struct Live {
    current: ArcSwapOption<Snapshot>,
    writer: Mutex<Writer>,
    agents_unknown: AtomicBool,
}

/// What the writer holds: the latest registry and bundle, which the serving snapshot was built
/// from.
#[derive(Default)]
struct Writer {
    registry: Registry,
    bundle: Option<Arc<Bundle>>,
    /// Writes prepared but not yet durable (a group commit in progress): what they would serve,
    /// and what was served before them (restored when they roll back).
    staged: Option<Staged>,
}

/// What was served before the staged writes (restored when they roll back).
struct Staged {
    registry: Registry,
    bundle: Option<Arc<Bundle>>,
}

/// Exclusive right to change what is served. Blocking work (SQLite, proofs) may run under it;
/// it is never held across an `.await`.
pub struct WriteGuard<'a> {
    live: &'a Live,
    w: MutexGuard<'a, Writer>,
    /// Snapshots this guard replaced: dropped after `w` (fields drop in order), so freeing a
    /// large entity store happens after the writer lock is released, not while writers queue.
    retired: Vec<Arc<Snapshot>>,
}

impl Live {
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Takes the one writer's lock. Blocking.
    pub fn write(&self) -> Result<WriteGuard<'_>, String> {
        let w = self
            .writer
            .lock()
            .map_err(|_| "the writer lock is poisoned".to_owned())?;
        Ok(WriteGuard {
            live: self,
            w,
            retired: Vec::new(),
        })
    }

    /// Marks the agent state as unavailable (it failed to load) and republishes.
    pub fn agents_unknown(&self) {
        self.agents_unknown.store(true, Ordering::Release);
        if let Ok(mut w) = self.write() {
            let registry = w.registry().clone();
            if let Err(e) = w.publish(registry) {
                tracing::error!(error = %e, "cannot republish after the state failed to load");
            }
        }
    }

    /// Installs a bundle with the agents as they are (deputy keeps no delegation state, or it
    /// could not be opened). Refused when the agents cannot be put in its store.
    pub fn install_bundle(&self, bundle: Arc<Bundle>) -> Result<(), Vec<crate::bundle::Problem>> {
        let problem = |e: String| vec![crate::bundle::Problem::new(ProblemCode::Internal, e)];
        let mut w = self.write().map_err(problem)?;
        let registry = w.registry().clone();
        let prepared = w.prepare_with(bundle, registry).map_err(problem)?;
        w.install(prepared);
        Ok(())
    }

    /// Marks agents revoked in every snapshot that holds them (their state is shared): called
    /// once their revocation committed, before it is answered.
    pub fn mark_revoked(&self, ids: &[String]) {
        if let Ok(w) = self.writer.lock() {
            w.registry.mark_revoked(ids);
        }
    }
}

/// A snapshot built and checked while a write is still uncommitted, installed once it commits:
/// a write whose result cannot be served is rolled back instead.
pub struct Prepared {
    registry: Registry,
    bundle: Option<Arc<Bundle>>,
    snapshot: Option<Snapshot>,
}

impl WriteGuard<'_> {
    /// The latest registry: writes check against this, never against an older snapshot.
    pub fn registry(&self) -> &Registry {
        &self.w.registry
    }

    /// The latest bundle installed, if any.
    pub fn bundle(&self) -> Option<&Arc<Bundle>> {
        self.w.bundle.as_ref()
    }

    /// Builds what serving `registry` with the latest bundle would be. An error (the agents do
    /// not fit the bundle's store) means it must not be served.
    pub fn prepare(&self, registry: Registry) -> Result<Prepared, String> {
        match self.w.bundle.clone() {
            Some(bundle) => self.prepare_with(bundle, registry),
            None => Ok(Prepared {
                registry,
                bundle: None,
                snapshot: None,
            }),
        }
    }

    /// Builds what serving `bundle` with `registry` would be.
    pub fn prepare_with(&self, bundle: Arc<Bundle>, registry: Registry) -> Result<Prepared, String> {
        let unknown = self.live.agents_unknown.load(Ordering::Acquire);
        let prev = self.live.current();
        let snapshot = Snapshot::build(Arc::clone(&bundle), registry.clone(), unknown, prev.as_deref())?;
        Ok(Prepared {
            registry,
            bundle: Some(bundle),
            snapshot: Some(snapshot),
        })
    }

    /// Makes `registry` what later writes check against, without serving it: its write is in a
    /// group transaction not yet committed. [`WriteGuard::prepare_staged`] builds what the group
    /// would serve (once, for all its writes) before it commits; [`WriteGuard::discard_staged`]
    /// forgets it if it rolls back.
    pub fn stage(&mut self, registry: Registry) {
        if self.w.staged.is_none() {
            self.w.staged = Some(Staged {
                registry: self.w.registry.clone(),
                bundle: self.w.bundle.clone(),
            });
        }
        self.w.registry = registry;
    }

    /// What serving the staged writes would be; `None` when nothing is staged. An error (the
    /// agents do not fit the bundle's store) means the group must roll back.
    pub fn prepare_staged(&self) -> Result<Option<Prepared>, String> {
        if self.w.staged.is_none() {
            return Ok(None);
        }
        self.prepare(self.w.registry.clone()).map(Some)
    }

    /// Serves what [`WriteGuard::prepare_staged`] built (the group committed).
    pub fn publish_staged(&mut self, p: Option<Prepared>) {
        self.w.staged = None;
        if let Some(p) = p {
            self.install(p);
        }
    }

    /// Forgets the staged writes (their group rolled back): later writes check against what is
    /// served.
    pub fn discard_staged(&mut self) {
        if let Some(s) = self.w.staged.take() {
            self.w.registry = s.registry;
            self.w.bundle = s.bundle;
        }
    }

    /// Serves what was prepared (after its write committed).
    pub fn install(&mut self, p: Prepared) {
        if let Some(snap) = p.snapshot {
            if let Some(old) = self.live.current.swap(Some(Arc::new(snap))) {
                self.retired.push(old);
            }
        }
        self.w.registry = p.registry;
        if p.bundle.is_some() {
            self.w.bundle = p.bundle;
        }
    }

    /// Prepares and installs `registry` at once (nothing to commit first).
    pub fn publish(&mut self, registry: Registry) -> Result<(), String> {
        let p = self.prepare(registry)?;
        self.install(p);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::agents::AgentRow;
    use crate::bundle::LoadOptions;

    fn row(id: &str, parent: Option<&str>, depth: i64, ceiling: i64) -> AgentRow {
        let grant = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#;
        AgentRow::sketch(id, parent, depth, ceiling, grant)
    }

    /// Entity for entity, attributes and ancestors included (Cedar's `==` compares uids only).
    fn same(a: &Entities, b: &Entities) -> bool {
        let (a, b): (&cedar_policy_core::entities::Entities, &cedar_policy_core::entities::Entities) =
            (a.as_ref(), b.as_ref());
        a.deep_eq(b)
    }

    /// Spawns extend the served store instead of rebuilding it: the result is the store a
    /// rebuild gives, entity for entity; a change to an existing agent rebuilds.
    #[test]
    fn a_spawn_extends_the_store_exactly_as_a_rebuild_would() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bundle = Arc::new(Bundle::load(dir, &LoadOptions::default()).unwrap());
        let live = Live::default();
        live.install_bundle(Arc::clone(&bundle)).unwrap();
        let rows = [
            row("agt-000000000001", None, 1, 3),
            row("agt-000000000002", Some("agt-000000000001"), 2, 2),
            row("agt-000000000003", Some("agt-000000000002"), 3, 5),
            row("agt-000000000004", None, 1, 1),
        ];
        for r in rows {
            let mut w = live.write().unwrap();
            let next = w.registry().with(r).unwrap();
            w.publish(next).unwrap();
            let served = live.current().unwrap();
            let rebuilt = served
                .agents
                .combined_entities(&bundle.entities, &bundle.schema)
                .unwrap();
            assert!(same(served.entities(), &rebuilt));
        }
        // A re-granted agent (a new row for an existing id) is rebuilt, not added twice.
        let mut w = live.write().unwrap();
        let next = w
            .registry()
            .with_rows(vec![row("agt-000000000002", Some("agt-000000000001"), 2, 1)])
            .unwrap();
        w.publish(next).unwrap();
        let served = live.current().unwrap();
        let rebuilt = served
            .agents
            .combined_entities(&bundle.entities, &bundle.schema)
            .unwrap();
        assert!(same(served.entities(), &rebuilt));
    }

    /// A snapshot whose store is the previous one's (nothing added) keeps what discovery
    /// computed from the store alone, which is what it would compute itself; a spawn starts
    /// afresh.
    #[test]
    fn a_snapshot_of_the_same_store_keeps_its_conversion_and_a_spawn_does_not() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bundle = Arc::new(Bundle::load(dir, &LoadOptions::default()).unwrap());
        let live = Live::default();
        live.install_bundle(Arc::clone(&bundle)).unwrap();
        let publish = |next: &dyn Fn(&Registry) -> Registry| {
            let mut w = live.write().unwrap();
            let registry = next(w.registry());
            w.publish(registry).unwrap();
            live.current().unwrap()
        };
        let converted = |s: &Snapshot| s.partial_entities().unwrap();
        let first = publish(&|r| r.with(row("agt-000000000001", None, 1, 3)).unwrap());
        let listed = first.memo.get_or_insert_for_store("k", || 1);
        let second = publish(&|r| r.clone());
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&converted(&first), &converted(&second)));
        assert!(Arc::ptr_eq(&listed, &second.memo.get_or_insert_for_store("k", || 2)));
        let whole = |s: &Snapshot| {
            PartialEntities::from_concrete(s.entities().as_ref().clone(), bundle.schema.as_ref()).unwrap()
        };
        assert!(*converted(&second) == whole(&second));
        let third = publish(&|r| r.with(row("agt-000000000002", Some("agt-000000000001"), 2, 2)).unwrap());
        assert!(!Arc::ptr_eq(&converted(&second), &converted(&third)));
        assert_eq!(*third.memo.get_or_insert_for_store("k", || 3), 3);
        let uid = &third.agents.get("agt-000000000002").unwrap().uid;
        assert!(converted(&third).get(uid.as_ref()).is_some());
        assert!(*converted(&third) == whole(&third));
    }
}

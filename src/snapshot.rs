//! What a request is decided against: one bundle, the live agents, and the entity store that
//! joins them. Rebuilt (off the async threads) when the bundle reloads or an agent is created,
//! then swapped atomically.
//!
//! INVARIANT: a request loads one `Arc<Snapshot>` and uses only it, so it never sees a mix of
//! two bundles or two agent registries.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use cedar_policy::Entities;

use crate::bundle::Bundle;
use crate::delegation::Registry;

pub struct Snapshot {
    pub bundle: Arc<Bundle>,
    pub agents: Registry,
    /// The bundle's entities plus the agents'; `None` when there are no agents (then the
    /// bundle's own store is used, and nothing is copied).
    combined: Option<Entities>,
    /// The delegation state could not be loaded: which agents exist and what they were granted
    /// is unknown, so every decision for an `Agent` principal fails closed.
    pub agents_unknown: bool,
}

impl Snapshot {
    pub fn entities(&self) -> &Entities {
        self.combined.as_ref().unwrap_or(&self.bundle.entities)
    }
}

/// The serving snapshot, and the registry writers extend.
#[derive(Default)]
pub struct Live {
    current: ArcSwapOption<Snapshot>,
    /// Writers (bundle reloads, agent creation) serialise here; readers never take it.
    registry: Mutex<Registry>,
    agents_unknown: std::sync::atomic::AtomicBool,
}

impl Live {
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Rebuilds the snapshot for a newly loaded bundle. Blocking.
    pub fn bundle_loaded(&self, bundle: Arc<Bundle>) {
        let Ok(registry) = self.registry.lock() else {
            return;
        };
        self.publish(bundle, registry.clone());
    }

    /// Replaces the registry (after agents were created) and republishes. Blocking.
    pub fn update_registry(&self, f: impl FnOnce(&Registry) -> Result<Registry, String>) -> Result<(), String> {
        let mut registry = self.registry.lock().map_err(|_| "registry lock poisoned".to_owned())?;
        let next = f(&registry)?;
        if let Some(snap) = self.current() {
            self.publish(Arc::clone(&snap.bundle), next.clone());
        }
        *registry = next;
        Ok(())
    }

    /// Marks the agent state as unavailable (it failed to load) and republishes.
    pub fn agents_unknown(&self) {
        self.agents_unknown.store(true, std::sync::atomic::Ordering::Release);
        if let (Some(snap), Ok(registry)) = (self.current(), self.registry.lock()) {
            self.publish(Arc::clone(&snap.bundle), registry.clone());
        }
    }

    pub fn registry(&self) -> Registry {
        self.registry.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn publish(&self, bundle: Arc<Bundle>, agents: Registry) {
        let combined = if agents.is_empty() {
            None
        } else {
            match agents.combined_entities(&bundle.entities, &bundle.schema) {
                Ok(e) => Some(e),
                Err(e) => {
                    // The agents no longer fit the schema (drift): serve the bundle's store and
                    // let every agent decision fail closed on missing attributes.
                    tracing::error!(error = %e, "agent entities do not fit the bundle's schema");
                    None
                }
            }
        };
        self.current.store(Some(Arc::new(Snapshot {
            bundle,
            agents,
            combined,
            agents_unknown: self.agents_unknown.load(std::sync::atomic::Ordering::Acquire),
        })));
    }
}

//! The policy bundle: a directory of Cedar schema, policies and entities, loaded and validated
//! into one immutable [`Bundle`], served through a [`BundleStore`] that swaps whole bundles
//! atomically and keeps the last good one when a reload fails.

mod agents;
mod files;
mod load;
mod problem;
mod store;
mod watch;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use cedar_policy::{Entities, EntityUid, PolicyId, PolicySet, Schema};
use cedar_policy_core::tpe::entities::PartialEntities;

use crate::eval::{Indexed, PolicyIndex};

pub use agents::{AgentNames, ASK_ANNOTATION, CLASSIFICATION_ATTR, DELEGATE_ACTION, INVOKE_ACTION, TAINT_FIELD};
pub use problem::{BundleError, Problem};
pub use store::{BundleStore, ReloadOutcome};
pub use watch::{spawn_watcher, WatchOptions};

/// How strictly a bundle is checked.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Validate every policy strictly against the schema (the default; see `--skip-validation`).
    pub validate: bool,
    /// Require the types deputy's agent model relies on (`Agent`, `Action::"delegate"`).
    pub require_agent_model: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            validate: true,
            require_agent_model: true,
        }
    }
}

/// What an action does to an agent's taint (schema annotation `@taint("source"|"sink")`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaintRole {
    /// Reading: raises the agent's taint to the resource's classification.
    Source,
    /// Writing or sending: denied when the resource is classified below the agent's taint.
    Sink,
}

/// Where a policy came from, for error messages that point at a file and line.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub file: String,
    pub line: usize,
    file_index: usize,
    offset: usize,
}

/// One loaded, validated bundle. Immutable once built; shared behind an `Arc`.
#[derive(Debug)]
pub struct Bundle {
    /// The schema (`schema/*.cedarschema`).
    pub schema: Schema,
    /// The admin policies (`policies/*.cedar`), each with its stable id.
    pub policies: PolicySet,
    /// `policies` cut into slices by scope, so a request evaluates only what can apply to it.
    #[doc(hidden)]
    pub index: PolicyIndex,
    /// The entities (`entities/*.json`), validated against the schema.
    pub entities: Entities,
    /// Where each policy came from (file, line).
    #[doc(hidden)]
    pub sources: HashMap<PolicyId, PolicySource>,
    /// The schema's entity and action type names, parsed once: a request's `type` is looked up
    /// here instead of going through Cedar's parser.
    #[doc(hidden)]
    pub type_names: HashMap<String, cedar_policy::EntityTypeName>,
    /// AuthZEN action name -> action uid; `None` when the name is ambiguous across namespaces.
    #[doc(hidden)]
    pub actions_by_name: HashMap<String, Option<EntityUid>>,
    /// Actions the schema marks `@taint("source")` or `@taint("sink")`.
    #[doc(hidden)]
    pub taint_roles: HashMap<EntityUid, TaintRole>,
    /// Actions whose context type declares `taint` (deputy supplies it for its agents there).
    #[doc(hidden)]
    pub taint_in_context: std::collections::HashSet<EntityUid>,
    /// Those of `taint_in_context` whose context type accepts `{taint}` alone, checked once at
    /// load (see `taint_context`): a request with that context has only its scope checked.
    #[doc(hidden)]
    pub taint_context_valid: std::collections::HashSet<EntityUid>,
    /// Grants shipped for agents the bundle declares (`grants/<agent id>.cedar`), by agent id.
    pub grants: std::collections::BTreeMap<String, String>,
    /// The `Agent` ids the bundle owns (declared, referenced, or named as approvers).
    #[doc(hidden)]
    pub agent_names: AgentNames,
    /// Loaded with deputy's agent model (not `--authorize-only`): every `Agent` principal is
    /// then declared by the bundle, managed by deputy, or unknown (and denied).
    #[doc(hidden)]
    pub agent_model: bool,
    /// Digest of the bundle's files and revision.
    pub version: String,
    /// Git revision, from a `REVISION` file or the `.git` of the bundle directory.
    pub revision: Option<String>,
    /// Whether policies were validated against the schema.
    pub validated: bool,
    /// Files read, relative to the bundle root, in load order.
    pub files: Vec<String>,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// `entities` as Cedar's partial evaluator takes them (discovery), converted on first use
    /// and shared by every snapshot of this bundle.
    #[doc(hidden)]
    pub partial: OnceLock<Result<Arc<PartialEntities>, String>>,
    /// What discovery computes from `entities` alone, shared by every snapshot of this bundle.
    #[doc(hidden)]
    pub memo: crate::snapshot::BundleMemo,
}

impl Bundle {
    /// Loads and validates the bundle at `dir`. Blocking: run it off the async threads.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Bundle, BundleError> {
        load::load(dir, opts)
    }

    /// `entities` for Cedar's partial evaluator, converted (one copy) on first use.
    pub fn partial_entities(&self) -> Result<Arc<PartialEntities>, String> {
        self.partial
            .get_or_init(|| {
                PartialEntities::from_concrete(self.entities.as_ref().clone(), self.schema.as_ref())
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// The admin policies with their index, for deciding requests.
    pub fn admin(&self) -> Indexed<'_> {
        Indexed {
            policies: &self.policies,
            index: &self.index,
        }
    }
}

/// The context `{taint: <taint>}`, as deputy supplies it to a managed agent's request.
///
/// INVARIANT: Cedar's schema check of this context for an action (`validate_context`) does not
/// depend on `taint`: the record holds no entity uid, and a Long has type Long whatever its
/// value. So the check is made once per action at load (`Bundle::taint_context_valid`).
pub fn taint_context(taint: i64) -> cedar_policy_core::ast::Context {
    let record = std::collections::BTreeMap::from([(
        smol_str::SmolStr::new_static(TAINT_FIELD),
        cedar_policy_core::ast::Value::from(taint),
    )]);
    cedar_policy_core::ast::Context::Value(std::sync::Arc::new(record))
}

//! The policy bundle: a directory of Cedar schema, policies and entities, loaded and validated
//! into one immutable [`Bundle`], served through a [`BundleStore`] that swaps whole bundles
//! atomically and keeps the last good one when a reload fails.

mod agents;
mod files;
mod load;
pub(crate) mod memo;
mod problem;
mod store;
mod watch;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use cedar_policy::{Entities, EntityUid, PolicyId, PolicySet, Schema};
use cedar_policy_core::ast::{EntityType, EntityUID};
use cedar_policy_core::tpe::entities::PartialEntities;

use crate::eval::{Indexed, PolicyIndex};

pub use agents::{AgentNames, ASK_ANNOTATION, CLASSIFICATION_ATTR, DELEGATE_ACTION, INVOKE_ACTION, TAINT_FIELD};
pub use problem::{BundleError, Problem};
pub use store::{BundleStore, ReloadOutcome, ReloadStatus};
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
    /// The actions whose context type accepts the empty record, checked once at load (the check
    /// depends on the action alone): a request without a context has only its scope checked.
    #[doc(hidden)]
    pub empty_context_valid: std::collections::HashSet<EntityUid>,
    /// The scopes Cedar's schema check accepts whatever the entity ids, found once at load.
    #[doc(hidden)]
    pub scope_types: ScopeTypes,
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
    pub memo: memo::BundleMemo,
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

type FoldMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type FoldSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The (action, principal type, resource type) triples that Cedar's scope check
/// (`validate_scope_variables`) accepts for any principal and resource of those types, found
/// once at load by asking that check itself.
///
/// INVARIANT: for an action and two entity types declared as ordinary (not enumerated) entity
/// types, the check reads only the types and the action: whether each type is declared, whether
/// it is an enumeration (only then are ids checked), whether the action is defined and applies
/// to the principal and resource types. So a triple accepted once, with any ids, is accepted
/// with every id; enumerated types are left out (their ids matter), and the check runs whole
/// for anything not listed.
#[derive(Debug, Default)]
pub struct ScopeTypes(FoldMap<EntityUID, FoldMap<EntityType, FoldSet<EntityType>>>);

impl ScopeTypes {
    pub fn of(schema: &cedar_policy::Schema) -> ScopeTypes {
        use cedar_policy_core::ast::RequestSchema;
        use cedar_policy_core::validator::{ValidatorEntityType, ValidatorEntityTypeKind};
        let core: &cedar_policy_core::validator::ValidatorSchema = schema.as_ref();
        let ordinary = |t: &EntityType| {
            matches!(
                core.get_entity_type(t),
                Some(ValidatorEntityType {
                    kind: ValidatorEntityTypeKind::Standard(_),
                    ..
                })
            )
        };
        let mut out = ScopeTypes::default();
        for action in schema.actions() {
            let (Some(principals), Some(resources)) =
                (schema.principals_for_action(action), schema.resources_for_action(action))
            else {
                continue;
            };
            let resources: Vec<&EntityType> = resources.map(AsRef::as_ref).filter(|t| ordinary(t)).collect();
            for p in principals.map(AsRef::as_ref).filter(|t| ordinary(t)) {
                for r in &resources {
                    let any = |t: &EntityType| EntityUID::from_components(t.clone(), cedar_policy_core::ast::Eid::new(""), None);
                    if core
                        .validate_scope_variables(Some(&any(p)), Some(action.as_ref()), Some(&any(r)))
                        .is_ok()
                    {
                        out.0
                            .entry(action.as_ref().clone())
                            .or_default()
                            .entry(p.clone())
                            .or_default()
                            .insert((*r).clone());
                    }
                }
            }
        }
        out
    }

    /// Cedar's scope check accepts `principal, action, resource` (listed at load).
    pub fn accepts(&self, principal: &EntityUID, action: &EntityUID, resource: &EntityUID) -> bool {
        self.0
            .get(action)
            .and_then(|by_principal| by_principal.get(principal.entity_type()))
            .is_some_and(|resources| resources.contains(resource.entity_type()))
    }
}

#[cfg(test)]
mod scope_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cedar_policy_core::ast::RequestSchema;
    use std::str::FromStr;

    /// `ScopeTypes::accepts` only where Cedar's own scope check accepts, over every declared
    /// and some undeclared types, enumerated ones, and actions declared or not.
    #[test]
    fn scope_types_accept_only_what_cedar_accepts() {
        let (schema, _) = Schema::from_cedarschema_str(
            r#"
            entity User, Group;
            entity Doc in [Group];
            entity Color enum ["red", "blue"];
            action read appliesTo { principal: [User, Color], resource: [Doc, Color] };
            action write appliesTo { principal: User, resource: [Doc] };
            action admin;
            "#,
        )
        .unwrap();
        let types = ScopeTypes::of(&schema);
        let core: &cedar_policy_core::validator::ValidatorSchema = schema.as_ref();
        let uid = |s: &str| EntityUID::from_str(s).unwrap();
        let entities = [
            r#"User::"a""#,
            r#"User::"""#,
            r#"Group::"g""#,
            r#"Doc::"d""#,
            r#"Color::"red""#,
            r#"Color::"green""#,
            r#"Other::"x""#,
        ];
        let actions = [
            r#"Action::"read""#,
            r#"Action::"write""#,
            r#"Action::"admin""#,
            r#"Action::"nope""#,
        ];
        let mut accepted = 0;
        for a in actions {
            for p in entities {
                for r in entities {
                    let (p, a, r) = (uid(p), uid(a), uid(r));
                    let cedar = core.validate_scope_variables(Some(&p), Some(&a), Some(&r)).is_ok();
                    if types.accepts(&p, &a, &r) {
                        assert!(cedar, "{p} {a} {r}");
                        accepted += 1;
                    }
                }
            }
        }
        // User×Doc for read and write (two ids of User each); enumerated Color never listed.
        assert_eq!(accepted, 4);
    }
}

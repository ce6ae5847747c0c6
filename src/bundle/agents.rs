//! What a bundle says about agents: which `Agent` ids it owns, and whether deputy's own agents
//! can be represented under its schema.
//!
//! INVARIANT (one identity namespace): an `Agent` id the bundle owns — declared in `entities/`,
//! named by an entity or a policy, or named as an `@ask` approver — is never given to an agent
//! deputy creates, and a bundle that declares an id a managed agent holds is refused. So a
//! policy, an entity or an approval rule written about one agent can never come to mean
//! another one that some agent chose to name that way.

use crate::error::ProblemCode;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use cedar_policy::{Entities, Entity, PolicySet, RestrictedExpression, Schema};
use cedar_policy_core::ast;

use super::problem::Problem;

/// The annotation that turns a forbid into "not without approval": `@ask("<approver>")`.
pub const ASK_ANNOTATION: &str = "ask";
/// The action a parent is authorized for when it spawns a child.
pub const DELEGATE_ACTION: &str = "delegate";
/// The action a caller is authorized for when it invokes an existing agent (`POST /v1/invocations`).
pub const INVOKE_ACTION: &str = "invoke_agent";
/// The context attribute deputy supplies for managed agents: the session's taint.
pub const TAINT_FIELD: &str = "taint";
/// The resource attribute holding its classification level.
pub const CLASSIFICATION_ATTR: &str = "classification";
/// The attributes deputy gives the `Agent` entities it creates (its agent model).
pub const AGENT_ATTRIBUTES: [&str; 3] = ["can_delegate", "ceiling", "depth"];

/// The `Agent` ids a bundle owns.
#[derive(Debug, Clone, Default)]
pub struct AgentNames {
    /// Declared in `entities/`, with the file that declares each.
    pub declared: BTreeMap<String, String>,
    /// Named elsewhere in the bundle: an entity's parents or attributes, a policy's literals.
    pub referenced: BTreeSet<String>,
    /// Named by an `@ask("<name>")` rule.
    pub approvers: BTreeSet<String>,
    /// Every name above, lowercased: a name that differs from one of them only in case is
    /// refused too (`Lead` beside `lead` misleads whoever reads an inbox).
    folded: BTreeSet<String>,
}

impl AgentNames {
    /// The bundle owns `id`, or a name that differs from it only in case: no agent deputy
    /// creates may take it.
    pub fn owns(&self, id: &str) -> bool {
        self.folded.contains(&id.to_lowercase())
    }

    /// The bundle declares `Agent::"<id>"` as an entity.
    pub fn declares(&self, id: &str) -> bool {
        self.declared.contains_key(id)
    }

    /// Collects the names from the parsed entity files (`(file, JSON)`), the store and the policies.
    pub(super) fn collect(files: &[(&str, &serde_json::Value)], entities: &Entities, policies: &PolicySet) -> Self {
        let mut names = AgentNames::default();
        let mut file_of: HashMap<String, &str> = HashMap::new();
        for (file, json) in files {
            for item in json.as_array().into_iter().flatten() {
                let uid = item.get("uid").map(|u| u.get("__entity").unwrap_or(u));
                let ty = uid.and_then(|u| u.get("type")).and_then(|t| t.as_str());
                let id = uid.and_then(|u| u.get("id")).and_then(|i| i.as_str());
                if let (Some(crate::agents::AGENT_TYPE), Some(id)) = (ty, id) {
                    file_of.insert(id.to_owned(), file);
                }
            }
        }
        for e in entities.iter() {
            let core: &ast::Entity = e.as_ref();
            if crate::agents::is_agent_type(e.uid().type_name()) {
                let id = e.uid().id().unescaped().to_owned();
                let file = file_of.get(&id).copied().unwrap_or("entities");
                names.declared.insert(id, file.to_owned());
            }
            for parent in core.ancestors() {
                names.note(parent);
            }
            for (_, value) in core.attrs().chain(core.tags()) {
                if let ast::PartialValue::Value(v) = value {
                    names.note_value(v);
                }
            }
        }
        let policies_core: &ast::PolicySet = policies.as_ref();
        for t in policies_core.all_templates() {
            for e in t.condition().subexpressions() {
                if let ast::ExprKind::Lit(ast::Literal::EntityUID(uid)) = e.expr_kind() {
                    names.note(uid);
                }
            }
        }
        for p in policies.policies() {
            if let Some(approver) = p.annotation(ASK_ANNOTATION) {
                names.approvers.insert(approver.to_owned());
            }
        }
        // Declared names are not also listed as references.
        let declared: HashSet<&String> = names.declared.keys().collect();
        names.referenced.retain(|id| !declared.contains(id));
        names.folded = names
            .declared
            .keys()
            .chain(&names.referenced)
            .chain(&names.approvers)
            .map(|n| n.to_lowercase())
            .collect();
        names
    }

    fn note(&mut self, uid: &ast::EntityUID) {
        let name = uid.entity_type().name();
        if AsRef::<str>::as_ref(name.basename_as_ref()) == crate::agents::AGENT_TYPE && name.is_unqualified() {
            self.referenced.insert(uid.eid().as_ref().to_owned());
        }
    }

    fn note_value(&mut self, v: &ast::Value) {
        match v.value_kind() {
            ast::ValueKind::Lit(ast::Literal::EntityUID(uid)) => self.note(uid),
            ast::ValueKind::Set(set) => {
                for item in set.iter() {
                    self.note_value(item);
                }
            }
            ast::ValueKind::Record(rec) => {
                for item in rec.values() {
                    self.note_value(item);
                }
            }
            _ => {}
        }
    }
}

/// Checks that an `Agent` entity with exactly the attributes deputy gives its agents conforms to
/// the schema, so every agent deputy manages can be put in the entity store. A schema that
/// requires more (say a new `team` attribute) would leave the agents out of the store, and
/// forbids that read `principal.*` would then err and be skipped: fail closed by refusing it.
pub(super) fn check_representable(schema: &Schema) -> Result<(), Problem> {
    let uid =
        crate::agents::agent_uid("deputy-agent-model-probe").map_err(|e| Problem::new(ProblemCode::Internal, e))?;
    let attrs = HashMap::from([
        ("can_delegate".to_owned(), RestrictedExpression::new_bool(false)),
        ("ceiling".to_owned(), RestrictedExpression::new_long(0)),
        ("depth".to_owned(), RestrictedExpression::new_long(0)),
    ]);
    let probe =
        Entity::new(uid, attrs, HashSet::new()).map_err(|e| Problem::new(ProblemCode::Internal, e.to_string()))?;
    Entities::from_entities([probe], Some(schema)).map(|_| ()).map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        let e = text.replace("Agent::\"deputy-agent-model-probe\"", "a deputy agent");
        Problem::new(
            ProblemCode::SchemaLacksAgentModel,
            format!(
                "deputy's agents cannot be represented under this schema (deputy gives each exactly \
                 `{}`): {e}",
                AGENT_ATTRIBUTES.join("`, `")
            ),
        )
        .in_file("schema")
        .with_help(
            "make any other `Agent` attribute optional (`team?: String`), or serve with --authorize-only; \
             the last good bundle keeps serving",
        )
    })
}

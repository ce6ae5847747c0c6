//! OpenID AuthZEN Authorization API 1.0 on top of Cedar.
//!
//! Mapping (docs/API.md):
//! - `subject` and `resource` `{type, id}` are Cedar entity uids `type::"id"`;
//! - `action.name` is the schema's action with that id (it must be unambiguous);
//! - `context` is the Cedar context; `subject.properties`, `resource.properties` and
//!   `action.properties` are request-scoped facts and appear in the Cedar context as
//!   `context.subject`, `context.resource` and `context.action`. They never change the entity
//!   store, so a caller cannot rewrite what the bundle says about an entity.

use crate::error::ErrorCode;
use serde_json::{Map, Value};

use crate::authorize::{parse_uid, EntityRef, Fields, Parts as CedarParts, RequestError};
use crate::bundle::Bundle;
use crate::snapshot::Snapshot;

mod search;

pub use search::{search, Kind};

/// How a batch stops early (AuthZEN `options.evaluations_semantic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semantic {
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

/// One AuthZEN decision. An item of a batch that could not be evaluated is a `false` decision
/// carrying its error; the HTTP layer renders it (with the status of its code) as the item's
/// `context.error`.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub decision: bool,
    pub error: Option<RequestError>,
}

impl Evaluation {
    fn error(e: RequestError) -> Self {
        Self {
            decision: false,
            error: Some(e),
        }
    }
}

/// What an evaluations request asks: a batch, or (with no items) one evaluation.
pub enum Batch {
    Single(Evaluation),
    Many(Vec<Evaluation>),
}

/// Taint raised by the decisions of one request, as (agent id, level): the caller makes it
/// durable before answering.
pub type Raised = Vec<(String, i64)>;

/// Decides `POST /access/v1/evaluation`.
pub fn evaluate(snap: &Snapshot, body: &Value, now: i64, raised: &mut Raised) -> Result<Evaluation, RequestError> {
    let top = Fields::of(body, "")?;
    let parts = to_cedar(&snap.bundle, &Parts::from_fields(&top, None)?)?;
    decide(snap, parts, now, raised)
}

/// Decides `POST /access/v1/evaluations`; `max_items` bounds the batch.
pub fn evaluate_batch(
    snap: &Snapshot,
    body: &Value,
    max_items: usize,
    now: i64,
    raised: &mut Raised,
) -> Result<Batch, RequestError> {
    let top = Fields::of(body, "")?;
    let items = top.array("evaluations")?;
    let semantic = semantic(&top)?;
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return evaluate(snap, body, now, raised).map(Batch::Single);
    };
    if items.len() > max_items {
        return Err(RequestError::new(
            ErrorCode::BatchTooLarge,
            format!("`evaluations` has {} items; the limit is {max_items}", items.len()),
        ));
    }
    let defaults = Parts::from_fields(&top, None)?;
    let mut out = Vec::with_capacity(items.len());
    let mut join = crate::agents::taint::BatchJoin::new(&snap.agents, now);
    for (i, item) in items.iter().enumerate() {
        let path = format!("evaluations[{i}]");
        let before = raised.len();
        let eval = Fields::of(item, &path)
            .and_then(|f| Parts::from_fields(&f, Some(&defaults)))
            .and_then(|parts| to_cedar(&snap.bundle, &parts))
            .and_then(|parts| decide(snap, parts, now, raised))
            .unwrap_or_else(Evaluation::error);
        // A read reaches everyone joined to the reader before the next item is decided.
        if i + 1 < items.len() {
            join.join(&raised[before..]);
        }
        let stop = match semantic {
            Semantic::ExecuteAll => false,
            Semantic::DenyOnFirstDeny => !eval.decision,
            Semantic::PermitOnFirstPermit => eval.decision,
        };
        out.push(eval);
        if stop {
            break;
        }
    }
    Ok(Batch::Many(out))
}

fn semantic(top: &Fields<'_>) -> Result<Semantic, RequestError> {
    let Some(options) = top.object("options")? else {
        return Ok(Semantic::ExecuteAll);
    };
    match options.string("evaluations_semantic")? {
        None | Some("execute_all") => Ok(Semantic::ExecuteAll),
        Some("deny_on_first_deny") => Ok(Semantic::DenyOnFirstDeny),
        Some("permit_on_first_permit") => Ok(Semantic::PermitOnFirstPermit),
        Some(other) => Err(RequestError::new(
            ErrorCode::InvalidField,
            format!(
                "field `options.evaluations_semantic` is `{other}`; expected `execute_all`, \
                 `deny_on_first_deny` or `permit_on_first_permit`"
            ),
        )),
    }
}

fn decide(snap: &Snapshot, parts: CedarParts, now: i64, raised: &mut Raised) -> Result<Evaluation, RequestError> {
    let outcome = crate::authorize::decide_observed(snap, parts, now, crate::telemetry::Api::AuthZen)?;
    raised.extend(outcome.raise());
    Ok(Evaluation {
        decision: outcome.decision.allow,
        error: None,
    })
}

/// The subject, action, resource and context of one evaluation, each with its field path.
#[derive(Clone, Default)]
struct Parts<'a> {
    subject: Option<Fields<'a>>,
    action: Option<Fields<'a>>,
    resource: Option<Fields<'a>>,
    context: Option<(&'a Value, String)>,
    /// Where this evaluation sits in the body, for messages about missing parts.
    path: String,
}

impl<'a> Parts<'a> {
    /// Reads the parts at `f`; any part absent there is taken from `defaults`.
    fn from_fields(f: &Fields<'a>, defaults: Option<&Parts<'a>>) -> Result<Self, RequestError> {
        let d = defaults.cloned().unwrap_or_default();
        Ok(Self {
            subject: f.object("subject")?.or(d.subject),
            action: f.object("action")?.or(d.action),
            resource: f.object("resource")?.or(d.resource),
            context: f.get("context").map(|c| (c, f.field_path("context"))).or(d.context),
            path: f.path.clone(),
        })
    }
}

fn to_cedar(bundle: &Bundle, parts: &Parts<'_>) -> Result<CedarParts, RequestError> {
    let missing = |key: &str| {
        let field = if parts.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", parts.path)
        };
        RequestError::missing(&field)
    };
    let subject = parts.subject.as_ref().ok_or_else(|| missing("subject"))?;
    let action = parts.action.as_ref().ok_or_else(|| missing("action"))?;
    let resource = parts.resource.as_ref().ok_or_else(|| missing("resource"))?;
    let principal = parse_uid(bundle, subject)?;
    let resource_ref = parse_uid(bundle, resource)?;
    let action_ref = action_uid(bundle, action)?;
    let (context, context_field) = context_of(parts, [Some(subject), Some(resource), Some(action)])?;
    Ok(CedarParts {
        principal,
        action: action_ref,
        resource: resource_ref,
        context: Some(context),
        context_field,
    })
}

/// The Cedar context of an evaluation: its `context` with the `properties` of the subject,
/// resource and action (those present) as `context.subject`, `context.resource` and
/// `context.action`; and the context's field path, for messages.
fn context_of(parts: &Parts<'_>, with: [Option<&Fields<'_>>; 3]) -> Result<(Value, String), RequestError> {
    let mut context = match &parts.context {
        None => Map::new(),
        Some((Value::Object(m), _)) => m.clone(),
        Some((Value::Null, _)) => Map::new(),
        Some((_, path)) => return Err(RequestError::wrong_type(path, "a JSON object")),
    };
    for (key, part) in ["subject", "resource", "action"].into_iter().zip(with) {
        let Some(part) = part else { continue };
        let Some(props) = part.get("properties") else { continue };
        if !props.is_object() {
            return Err(RequestError::wrong_type(
                &part.field_path("properties"),
                "a JSON object",
            ));
        }
        if context.contains_key(key) {
            return Err(RequestError::new(
                ErrorCode::ContextConflict,
                format!(
                    "`context.{key}` is set, and so is `{}`: they would collide",
                    part.field_path("properties")
                ),
            )
            .with_help(format!(
                "{key} properties are passed to Cedar as `context.{key}`; rename the context field"
            )));
        }
        context.insert(key.to_owned(), props.clone());
    }
    let context_field = parts.context.as_ref().map_or("context", |(_, p)| p.as_str()).to_owned();
    Ok((Value::Object(context), context_field))
}

fn action_uid(bundle: &Bundle, action: &Fields<'_>) -> Result<EntityRef, RequestError> {
    let name = action.require_string("name")?;
    match bundle.actions_by_name.get(name) {
        Some(Some(uid)) => Ok(EntityRef {
            uid: uid.clone(),
            field: action.path.clone(),
        }),
        Some(None) => Err(RequestError::new(
            ErrorCode::UnknownAction,
            format!(
                "field `{}`: action `{name}` is declared in more than one namespace",
                action.field_path("name")
            ),
        )),
        None => Err(RequestError::new(
            ErrorCode::UnknownAction,
            format!(
                "field `{}`: action `{name}` is not declared in the schema",
                action.field_path("name")
            ),
        )),
    }
}

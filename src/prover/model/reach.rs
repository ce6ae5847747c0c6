//! The part of the entity store a replay can observe.
//!
//! Replaying a candidate against a copy of the whole store costs a clone of every entity and a
//! transitive-closure pass over all of them (about 0.5 ms for 1000 entities), while Cedar reads
//! only a handful. Cedar's evaluator dereferences an entity only through a uid it holds as a
//! value, and such values come from exactly four places: the request (principal, action,
//! resource and the context's values), the entity literals of the policies evaluated (scopes
//! included; the `?principal` slot is linked to the child), and the attributes and tags of
//! entities already dereferenced. No Cedar expression builds a uid from anything else (there is
//! no string-to-entity conversion, and extension functions return no entities). `a in b` reads
//! only `a`'s ancestor set, which the store keeps transitively closed.
//!
//! So the store restricted to the entities reachable from those roots through attributes,
//! tags and ancestors, extended with the candidate's entities, gives every entity evaluation
//! can reach exactly the data (attributes, tags, transitively closed ancestors) it has in the
//! whole store extended the same way; Cedar's decision and diagnostics are the same. Ancestors
//! are kept not because evaluation reads them but because the closure Cedar recomputes when
//! the candidate's entities are added must see them: a new file under a stored folder inherits
//! the folder's ancestors, and a candidate may supply a stored entity's dangling parent.
//!
//! [`closed`] re-checks the result after the candidate's entities are added; when it fails (or
//! anything here is unexpected, such as a residual value) the caller replays against the whole
//! store instead, so this is only ever a shortcut to the same answer.

use std::collections::HashSet;

use cedar_policy_core::ast::{Context, Entity, EntityUID, Literal, PartialValue, Value, ValueKind};
use cedar_policy_core::entities::{Dereference, Entities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;
use serde_json::Value as Json;

use super::json_uid;

/// The stored entities reachable from `roots`, the uids in the context and the uids the
/// candidate's entities (JSON) name, closed under attributes, tags and ancestors. `None` when
/// something cannot be followed (a residual value): the caller then uses the whole store.
pub(super) fn restrict(
    store: &Entities,
    roots: &[EntityUID],
    context: &Context,
    candidate: &[Json],
) -> Option<Entities> {
    let mut stack: Vec<EntityUID> = roots.to_vec();
    context_uids(context, &mut stack)?;
    for e in candidate {
        json_uids(e, &mut stack);
    }
    let mut seen: HashSet<EntityUID> = HashSet::new();
    let mut kept: Vec<Entity> = Vec::new();
    while let Some(u) = stack.pop() {
        if seen.contains(&u) {
            continue;
        }
        if let Dereference::Data(e) = store.entity(&u) {
            stack.extend(e.ancestors().cloned());
            for (_, v) in e.attrs().chain(e.tags()) {
                partial_uids(v, &mut stack)?;
            }
            kept.push(e.clone());
        }
        seen.insert(u);
    }
    // INVARIANT: `kept` is a subset of a transitively closed store that holds every stored
    // ancestor of each of its entities, so it is transitively closed itself.
    Entities::from_entities(
        kept,
        None::<&NoEntitiesSchema>,
        TCComputation::AssumeAlreadyComputed,
        Extensions::all_available(),
    )
    .ok()
}

/// Whether `small` holds every stored entity that `roots`, the context and its own entities
/// (through attributes, tags and ancestors) name: the condition under which replaying against
/// it equals replaying against the whole store.
pub(super) fn closed(small: &Entities, store: &Entities, roots: &[EntityUID], context: &Context) -> bool {
    let mut named: Vec<EntityUID> = roots.to_vec();
    if context_uids(context, &mut named).is_none() {
        return false;
    }
    for e in small.iter() {
        named.extend(e.ancestors().cloned());
        for (_, v) in e.attrs().chain(e.tags()) {
            if partial_uids(v, &mut named).is_none() {
                return false;
            }
        }
    }
    named
        .iter()
        .all(|u| matches!(small.entity(u), Dereference::Data(_)) || !matches!(store.entity(u), Dereference::Data(_)))
}

fn context_uids(context: &Context, out: &mut Vec<EntityUID>) -> Option<()> {
    match context {
        Context::Value(fields) => {
            for v in fields.values() {
                value_uids(v, out);
            }
            Some(())
        }
        Context::RestrictedResidual(_) => None,
    }
}

fn partial_uids(v: &PartialValue, out: &mut Vec<EntityUID>) -> Option<()> {
    match v {
        PartialValue::Value(v) => {
            value_uids(v, out);
            Some(())
        }
        PartialValue::Residual(_) => None,
    }
}

fn value_uids(v: &Value, out: &mut Vec<EntityUID>) {
    match v.value_kind() {
        ValueKind::Lit(Literal::EntityUID(u)) => out.push(u.as_ref().clone()),
        ValueKind::Lit(_) | ValueKind::ExtensionValue(_) => {}
        ValueKind::Set(s) => s.iter().for_each(|x| value_uids(x, out)),
        ValueKind::Record(r) => r.values().for_each(|x| value_uids(x, out)),
    }
}

/// Every `{"type": …, "id": …}` object in a candidate entity (its uid, parents and entity
/// attribute values). Over-approximating is harmless; [`closed`] catches anything missed.
fn json_uids(v: &Json, out: &mut Vec<EntityUID>) {
    match v {
        Json::Object(m) => {
            out.extend(json_uid(v));
            m.values().for_each(|x| json_uids(x, out));
        }
        Json::Array(a) => a.iter().for_each(|x| json_uids(x, out)),
        _ => {}
    }
}

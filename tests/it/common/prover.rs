//! Shared helpers for the prover's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Effect, Entities, EntityUid, PolicyId, PolicySet, Request, Schema, SlotId,
};
use deputy::prover::Counterexample;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prover")
}

pub fn schema() -> Schema {
    let src = std::fs::read_to_string(fixtures().join("schema.cedarschema")).unwrap();
    Schema::from_cedarschema_str(&src).unwrap().0
}

pub fn entities(schema: &Schema) -> Entities {
    let src = std::fs::read_to_string(fixtures().join("entities.json")).unwrap();
    Entities::from_json_str(&src, Some(schema)).unwrap()
}

/// Links every policy of `src` to `principal`, with ids prefixed by `prefix`.
pub fn linked(
    src: &str,
    prefix: &str,
    principal: &EntityUid,
    keep: impl Fn(Effect, Option<&str>) -> bool,
) -> PolicySet {
    let mut out = PolicySet::new();
    link_into(&mut out, src, prefix, principal, keep);
    out
}

pub fn link_into(
    out: &mut PolicySet,
    src: &str,
    prefix: &str,
    principal: &EntityUid,
    keep: impl Fn(Effect, Option<&str>) -> bool,
) {
    let parsed = PolicySet::from_str(src).unwrap();
    for (i, t) in parsed.templates().enumerate() {
        if !keep(t.effect(), t.annotation("delegable")) {
            continue;
        }
        let tid = PolicyId::new(format!("{prefix}t{i}"));
        out.add_template(t.new_id(tid.clone())).unwrap();
        out.link(
            tid,
            PolicyId::new(format!("{prefix}l{i}")),
            [(SlotId::principal(), principal.clone())].into(),
        )
        .unwrap();
    }
    for (i, p) in parsed.policies().enumerate() {
        if keep(p.effect(), p.annotation("delegable")) {
            out.add(p.new_id(PolicyId::new(format!("{prefix}s{i}")))).unwrap();
        }
    }
}

fn is_forbid(e: Effect, _: Option<&str>) -> bool {
    e == Effect::Forbid
}

fn delegable(e: Effect, d: Option<&str>) -> bool {
    e == Effect::Forbid || d != Some("false")
}

/// The child side: child policies plus the parent's forbids.
pub fn child_side(child: &str, parent: &str, principal: &EntityUid) -> PolicySet {
    let mut set = linked(child, "c", principal, |_, _| true);
    link_into(&mut set, parent, "pf", principal, is_forbid);
    set
}

/// The parent's delegable view.
pub fn parent_side(parent: &str, principal: &EntityUid) -> PolicySet {
    linked(parent, "p", principal, delegable)
}

/// Replays a counterexample independently of the prover.
pub fn replays(cx: &Counterexample, child: &str, parent: &str, schema: &Schema, store: &Entities) -> bool {
    let principal = EntityUid::from_str(&cx.child_principal).unwrap();
    let action = EntityUid::from_str(&cx.action).unwrap();
    let context = Context::from_json_value(cx.context.clone(), Some((schema, &action))).unwrap();
    let request = Request::new(
        EntityUid::from_str(&cx.principal).unwrap(),
        action,
        EntityUid::from_str(&cx.resource).unwrap(),
        context,
        Some(schema),
    )
    .unwrap();
    let entities = store
        .clone()
        .add_entities_from_json_value(cx.entities.clone(), Some(schema))
        .unwrap();
    let auth = Authorizer::new();
    let c = auth.is_authorized(&request, &child_side(child, parent, &principal), &entities);
    let p = auth.is_authorized(&request, &parent_side(parent, &principal), &entities);
    c.decision() == Decision::Allow && p.decision() == Decision::Deny
}

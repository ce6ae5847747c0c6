//! The soundness law, as a property test: whenever the prover says `Within`, no sampled
//! request (over entity stores consistent with the bundle's facts) is allowed by the child
//! (with the parent's forbids) and denied by the parent's delegable view; and every
//! counterexample it reports replays through Cedar.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/prover.rs"]
mod fx;
#[path = "common/prover_gen.rs"]
mod gen;

use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, Request, Schema};
use deputy::prover::{prove, Grant, ProveOptions, Verdict};
use proptest::prelude::*;

use serde_json::{json, Value};

use gen::{config, pair, FOLDERS};

/// A request over the store plus fresh entities (stored entities keep their facts).
#[derive(Debug, Clone)]
struct Sample {
    child_exists: bool,
    child_ceiling: i64,
    child_delegate: bool,
    child_role: Option<&'static str>,
    child_in_eng: bool,
    action: &'static str,
    resource: usize,
    file_class: i64,
    file_path: &'static str,
    file_public: bool,
    file_tags: Vec<&'static str>,
    file_owner: Option<&'static str>,
    file_parents: Vec<usize>,
    newdir_parent: Option<usize>,
    taint: i64,
    mfa: bool,
    reason: Option<&'static str>,
    /// `context.budget` as tenths (`decimal`), `context.now` as a day of January 2030.
    budget: Option<i64>,
    now: Option<i64>,
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        (
            any::<bool>(),
            0i64..4,
            any::<bool>(),
            prop::option::of(prop::sample::select(&["dev", "ops"][..])),
            any::<bool>(),
        ),
        (
            prop::sample::select(&["read", "list", "write", "reveal"][..]),
            0usize..8,
        ),
        (
            0i64..4,
            prop::sample::select(&["repo/src/a.rs", "repo/x", "docs/a.key", "ticket"][..]),
            any::<bool>(),
            prop::sample::subsequence(&["rust", "docs", "public"][..], 0..3),
            prop::option::of(prop::sample::select(&["alice", "child", "bob"][..])),
            prop::collection::vec(0usize..FOLDERS.len(), 0..3),
            prop::option::of(0usize..6),
        ),
        (
            0i64..5,
            any::<bool>(),
            prop::option::of(prop::sample::select(&["ticket", "ticket-1", "x", "tx"][..])),
            prop::option::of(0i64..40),
            prop::option::of(1i64..6),
        ),
    )
        .prop_map(|(c, (action, resource), f, (taint, mfa, reason, budget, now))| Sample {
            child_exists: c.0,
            child_ceiling: c.1,
            child_delegate: c.2,
            child_role: c.3,
            child_in_eng: c.4,
            action,
            resource,
            file_class: f.0,
            file_path: f.1,
            file_public: f.2,
            file_tags: f.3,
            file_owner: f.4,
            file_parents: f.5,
            newdir_parent: f.6,
            taint,
            mfa,
            reason,
            budget,
            now,
        })
}

fn world(s: &Sample, schema: &Schema, store: &Entities) -> Option<(Request, Entities)> {
    let mut extra: Vec<Value> = Vec::new();
    if s.child_exists {
        let mut attrs = json!({"ceiling": s.child_ceiling, "can_delegate": s.child_delegate});
        if let Some(r) = s.child_role {
            attrs["role"] = json!(r);
        }
        let parents = if s.child_in_eng {
            json!([{"type": "Team", "id": "eng"}])
        } else {
            json!([])
        };
        extra.push(json!({"uid": {"type": "Agent", "id": "child"}, "attrs": attrs, "parents": parents}));
    }
    let parents: Vec<Value> = s
        .file_parents
        .iter()
        .map(|i| json!({"type": "Folder", "id": FOLDERS[*i]}))
        .collect();
    let mut file_attrs = json!({
        "classification": s.file_class, "path": s.file_path, "public": s.file_public, "tags": s.file_tags,
    });
    if let Some(o) = s.file_owner {
        file_attrs["owner"] = json!({"__entity": {"type": "Agent", "id": o}});
    }
    extra.push(json!({"uid": {"type": "File", "id": "new.rs"}, "attrs": file_attrs, "parents": parents}));
    let newdir_parents: Vec<Value> = s
        .newdir_parent
        .map(|i| vec![json!({"type": "Folder", "id": FOLDERS[i]})])
        .unwrap_or_default();
    extra.push(json!({"uid": {"type": "Folder", "id": "newdir"}, "attrs": {}, "parents": newdir_parents}));
    let entities = store
        .clone()
        .add_entities_from_json_value(Value::Array(extra), Some(schema))
        .ok()?;
    let resource = match (s.action, s.resource) {
        ("reveal", _) => "Secret::\"vault/key\"",
        ("list", n) => [
            "Folder::\"repo\"",
            "Folder::\"repo/src\"",
            "Folder::\"newdir\"",
            "Folder::\"other\"",
        ][n % 4],
        ("write", n) => ["File::\"new.rs\"", "File::\"repo/src/main.rs\"", "File::\"missing.rs\""][n % 3],
        (_, n) => [
            "File::\"new.rs\"",
            "File::\"repo/src/main.rs\"",
            "File::\"repo/docs/readme.md\"",
            "File::\"missing.rs\"",
            "Folder::\"repo/src\"",
            "Folder::\"newdir\"",
            "Folder::\"missing\"",
            "Folder::\"repo\"",
        ][n],
    };
    let mut ctx = json!({"taint": s.taint, "mfa": s.mfa});
    if let Some(r) = s.reason {
        ctx["reason"] = json!(r);
    }
    if let Some(b) = s.budget {
        ctx["budget"] = json!({"__extn": {"fn": "decimal", "arg": format!("{}.{}", b / 10, b % 10)}});
    }
    if let Some(d) = s.now {
        ctx["now"] = json!({"__extn": {"fn": "datetime", "arg": format!("2030-01-0{d}")}});
    }
    let action = EntityUid::from_str(&format!("Action::\"{}\"", s.action)).unwrap();
    let context = Context::from_json_value(ctx, Some((schema, &action))).ok()?;
    let request = Request::new(
        EntityUid::from_str("Agent::\"child\"").unwrap(),
        action,
        EntityUid::from_str(resource).unwrap(),
        context,
        Some(schema),
    )
    .ok()?;
    Some((request, entities))
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn within_means_no_sampled_request_escapes(
        (parent_src, child_src) in pair(),
        samples in prop::collection::vec(sample(), 40),
    ) {
        let schema = fx::schema();
        let store = fx::entities(&schema);
        let parent = Grant::parse(&parent_src).unwrap();
        let child = Grant::parse(&child_src).unwrap();
        let Ok(verdict) = prove(&child, &parent, &schema, &store, &ProveOptions::default()) else {
            // Invalid random grants are not this law's business.
            return Ok(());
        };
        match &verdict {
            Verdict::Within(_) => {
                let principal = EntityUid::from_str("Agent::\"child\"").unwrap();
                let child_side = fx::child_side(&child_src, &parent_src, &principal);
                let parent_side = fx::parent_side(&parent_src, &principal);
                let auth = Authorizer::new();
                for s in &samples {
                    let Some((request, entities)) = world(s, &schema, &store) else { continue };
                    let c = auth.is_authorized(&request, &child_side, &entities).decision();
                    let p = auth.is_authorized(&request, &parent_side, &entities).decision();
                    prop_assert!(
                        !(c == Decision::Allow && p == Decision::Deny),
                        "prover said within, but {request} with sample {s:?} escapes\nparent:\n{parent_src}\nchild:\n{child_src}"
                    );
                }
            }
            Verdict::Exceeds(cx) => {
                prop_assert!(
                    fx::replays(cx, &child_src, &parent_src, &schema, &store),
                    "counterexample does not replay: {cx:?}\nparent:\n{parent_src}\nchild:\n{child_src}"
                );
            }
            Verdict::Inconclusive(_) => {}
        }
    }
}

/// A narrow fragment (one action, conditions on Longs, strings and booleans of the context
/// and principal) where boundary cases are dense.
fn narrow_condition() -> BoxedStrategy<String> {
    prop_oneof![
        (0i64..4).prop_map(|k| format!("context.taint <= {k}")),
        (0i64..4).prop_map(|k| format!("context.taint < {k}")),
        (0i64..4).prop_map(|k| format!("context.taint > {k}")),
        (0i64..4).prop_map(|k| format!("context.taint >= {k}")),
        (0i64..4).prop_map(|k| format!("context.taint == {k}")),
        (0i64..4).prop_map(|k| format!("principal.ceiling <= {k}")),
        Just("context.taint <= principal.ceiling".to_owned()),
        Just("principal.ceiling < context.taint".to_owned()),
        Just("context.taint == principal.ceiling".to_owned()),
        Just("context.mfa".to_owned()),
        Just("principal.can_delegate".to_owned()),
        (0i64..40).prop_map(|k| format!(
            "(context has budget && context.budget.lessThan(decimal(\"{}.{}\")))",
            k / 10,
            k % 10
        )),
        (0i64..40).prop_map(|k| format!(
            "(context has budget && context.budget.greaterThanOrEqual(decimal(\"{}.{}\")))",
            k / 10,
            k % 10
        )),
        (1i64..6).prop_map(|d| format!("(context has now && context.now <= datetime(\"2030-01-0{d}\"))")),
        (1i64..6).prop_map(|d| format!("(context has now && context.now > datetime(\"2030-01-0{d}\"))")),
        prop::sample::select(&["t*", "ticket", "*x", "ticket-*", "*"][..])
            .prop_map(|p| format!("(context has reason && context.reason like \"{p}\")")),
    ]
    .prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
            inner.prop_map(|a| format!("!({a})")),
        ]
    })
    .boxed()
}

fn narrow_grant() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::bool::weighted(0.8), narrow_condition()), 1..4).prop_map(|ps| {
        ps.into_iter()
            .map(|(permit, c)| {
                let effect = if permit { "permit" } else { "forbid" };
                format!("{effect}(principal == ?principal, action == Action::\"read\", resource) when {{ {c} }};")
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn within_is_sound_on_dense_boundaries(
        parent_src in narrow_grant(),
        child_src in narrow_grant(),
        samples in prop::collection::vec(sample(), 40),
    ) {
        let schema = fx::schema();
        let store = fx::entities(&schema);
        let parent = Grant::parse(&parent_src).unwrap();
        let child = Grant::parse(&child_src).unwrap();
        let verdict = prove(&child, &parent, &schema, &store, &ProveOptions::default()).unwrap();
        match &verdict {
            Verdict::Within(_) => {
                let principal = EntityUid::from_str("Agent::\"child\"").unwrap();
                let child_side = fx::child_side(&child_src, &parent_src, &principal);
                let parent_side = fx::parent_side(&parent_src, &principal);
                let auth = Authorizer::new();
                for s in samples.iter().map(|s| Sample { child_exists: true, action: "read", ..s.clone() }) {
                    let Some((request, entities)) = world(&s, &schema, &store) else { continue };
                    let c = auth.is_authorized(&request, &child_side, &entities).decision();
                    let p = auth.is_authorized(&request, &parent_side, &entities).decision();
                    prop_assert!(
                        !(c == Decision::Allow && p == Decision::Deny),
                        "prover said within, but {request} escapes\nparent:\n{parent_src}\nchild:\n{child_src}"
                    );
                }
            }
            Verdict::Exceeds(cx) => {
                prop_assert!(fx::replays(cx, &child_src, &parent_src, &schema, &store), "{cx:?}");
            }
            Verdict::Inconclusive(_) => {}
        }
    }
}

/// Relations between two Longs (`context.taint < principal.ceiling`) mixed with bounds,
/// checked against every (taint, ceiling) pair of a small grid.
fn relation_condition() -> BoxedStrategy<String> {
    prop_oneof![
        (0i64..4).prop_map(|k| format!("context.taint <= {k}")),
        (0i64..4).prop_map(|k| format!("context.taint >= {k}")),
        (0i64..4).prop_map(|k| format!("principal.ceiling >= {k}")),
        (0i64..4).prop_map(|k| format!("principal.ceiling <= {k}")),
        Just("context.taint < principal.ceiling".to_owned()),
        Just("principal.ceiling < context.taint".to_owned()),
        Just("context.taint <= principal.ceiling".to_owned()),
        Just("context.taint == principal.ceiling".to_owned()),
    ]
    .prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
            inner.prop_map(|a| format!("!({a})")),
        ]
    })
    .boxed()
}

fn relation_grant() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::bool::weighted(0.8), relation_condition()), 1..4).prop_map(|ps| {
        ps.into_iter()
            .map(|(permit, c)| {
                let effect = if permit { "permit" } else { "forbid" };
                format!("{effect}(principal == ?principal, action == Action::\"read\", resource) when {{ {c} }};")
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// A parent and a child that is either unrelated or the parent narrowed by one more condition.
fn relation_pair() -> impl Strategy<Value = (String, String)> {
    relation_grant().prop_flat_map(|parent| {
        let narrowed = relation_condition().prop_map({
            let parent = parent.clone();
            move |extra| parent.replace("when { ", &format!("when {{ {extra} && "))
        });
        let child = prop_oneof![1 => relation_grant(), 2 => narrowed];
        (Just(parent), child)
    })
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn within_is_sound_on_relations((parent_src, child_src) in relation_pair(), base in sample()) {
        let schema = fx::schema();
        let store = fx::entities(&schema);
        let parent = Grant::parse(&parent_src).unwrap();
        let child = Grant::parse(&child_src).unwrap();
        let verdict = prove(&child, &parent, &schema, &store, &ProveOptions::default()).unwrap();
        match &verdict {
            Verdict::Within(_) => {
                let principal = EntityUid::from_str("Agent::\"child\"").unwrap();
                let child_side = fx::child_side(&child_src, &parent_src, &principal);
                let parent_side = fx::parent_side(&parent_src, &principal);
                let auth = Authorizer::new();
                for taint in -1..6 {
                    for ceiling in -1..6 {
                        let s = Sample { child_exists: true, action: "read", taint, child_ceiling: ceiling, ..base.clone() };
                        let Some((request, entities)) = world(&s, &schema, &store) else { continue };
                        let c = auth.is_authorized(&request, &child_side, &entities).decision();
                        let p = auth.is_authorized(&request, &parent_side, &entities).decision();
                        prop_assert!(
                            !(c == Decision::Allow && p == Decision::Deny),
                            "prover said within, but taint {taint} ceiling {ceiling} escapes\nparent:\n{parent_src}\nchild:\n{child_src}"
                        );
                    }
                }
            }
            Verdict::Exceeds(cx) => {
                prop_assert!(fx::replays(cx, &child_src, &parent_src, &schema, &store), "{cx:?}");
            }
            Verdict::Inconclusive(_) => {}
        }
    }
}

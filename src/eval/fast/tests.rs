//! The exactness invariant, checked against Cedar's own evaluator: for random conditions
//! (well- and ill-typed, over present and missing entities and attributes) and random
//! requests, whenever deputy answers, Cedar answers the same without error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;
use proptest::prelude::*;

const STORE: &str = r#"[
    {"uid": {"type": "User", "id": "u0"}, "attrs": {"level": 2, "name": "ann", "flag": true,
        "home": {"__entity": {"type": "Folder", "id": "f0"}}, "tags": ["a", "b"],
        "a0": 10, "a1": 11, "a2": 12, "a3": 13, "a4": 14, "a5": 15, "a6": 16, "a7": 17, "a8": 18, "a9": 19},
     "parents": [{"type": "Group", "id": "g0"}]},
    {"uid": {"type": "User", "id": "u1"}, "attrs": {"level": "high"}, "parents": []},
    {"uid": {"type": "Group", "id": "g0"}, "attrs": {}, "parents": [{"type": "Group", "id": "g1"}]},
    {"uid": {"type": "Group", "id": "g1"}, "attrs": {}, "parents": []},
    {"uid": {"type": "Doc", "id": "d0"}, "attrs": {"level": 1, "owner": {"__entity": {"type": "User", "id": "u0"}},
        "a0": 20, "a1": 21, "a2": 22, "a3": 23, "a4": 24, "a5": 25, "a6": 26, "a7": 27, "a8": 28, "a9": 29},
     "parents": [{"type": "Folder", "id": "f0"}]},
    {"uid": {"type": "Doc", "id": "d1"}, "attrs": {}, "parents": []},
    {"uid": {"type": "Doc", "id": "deep"}, "attrs": {"level": 0}, "parents": [
        {"type": "Folder", "id": "f0"}, {"type": "Folder", "id": "p0"}, {"type": "Folder", "id": "p1"},
        {"type": "Folder", "id": "p2"}, {"type": "Folder", "id": "p3"}, {"type": "Folder", "id": "p4"},
        {"type": "Folder", "id": "p5"}, {"type": "Folder", "id": "p6"}, {"type": "Folder", "id": "p7"},
        {"type": "Folder", "id": "p8"}, {"type": "Folder", "id": "p9"}, {"type": "Folder", "id": "p10"},
        {"type": "Folder", "id": "p11"}, {"type": "Folder", "id": "p12"}, {"type": "Folder", "id": "p13"},
        {"type": "Folder", "id": "p14"}, {"type": "Folder", "id": "p15"}, {"type": "Folder", "id": "p16"}]},
    {"uid": {"type": "Folder", "id": "f0"}, "attrs": {}, "parents": [{"type": "Folder", "id": "f1"}]},
    {"uid": {"type": "Folder", "id": "f1"}, "attrs": {}, "parents": []},
    {"uid": {"type": "Action", "id": "read"}, "attrs": {}, "parents": [{"type": "Action", "id": "all"}]},
    {"uid": {"type": "Action", "id": "all"}, "attrs": {}, "parents": []}
]"#;

const LEAVES: &[&str] = &[
    "principal",
    "resource",
    "action",
    "context",
    "principal.level",
    "resource.level",
    "principal.name",
    "principal.flag",
    "principal.home",
    "principal.tags",
    "principal.missing",
    "resource.owner",
    "resource.owner.level",
    "resource.missing",
    "action.name",
    "context.n",
    "context.s",
    "context.rec",
    "context.rec.x",
    "context.missing",
    "0",
    "1",
    "2",
    "(-1)",
    "\"ann\"",
    "\"high\"",
    "true",
    "false",
    r#"User::"u0""#,
    r#"User::"ghost""#,
    r#"Doc::"d0""#,
    r#"Folder::"f0""#,
    r#"Folder::"f1""#,
    r#"Group::"g1""#,
    r#"Action::"all""#,
];

const TARGETS: &[&str] = &[
    r#"Group::"g1""#,
    r#"Folder::"f1""#,
    r#"[Folder::"f0", Group::"g0"]"#,
    r#"[Action::"all"]"#,
    r#"[User::"g1", Doc::"f1"]"#,
    r#"Group::"f0""#,
    r#"Folder::"p3""#,
    // `Doc::"deep"` has more ancestors than `descends` compares one by one.
    r#"[Folder::"p0", Folder::"p1", Folder::"p2", Folder::"p3", Folder::"p4", Folder::"p5", Folder::"p6",
        Folder::"p7", Folder::"p8", Folder::"p9", Folder::"p10", Folder::"p11", Folder::"p12",
        Folder::"p13", Folder::"p14", Folder::"p15", Folder::"p16", Folder::"f1"]"#,
    "[]",
    r#"User::"u0""#,
    "principal.home",
];

/// Operands of one type each, so that comparisons are often well-typed.
const TYPED: &[&[&str]] = &[
    &[
        "principal.level",
        "resource.level",
        "context.n",
        "context.rec.x",
        "resource.owner.level",
        "0",
        "1",
        "(-1)",
    ],
    &["context", "context.rec", "principal.home"],
    &[
        "principal",
        "resource",
        "principal.home",
        "resource.owner",
        r#"User::"u0""#,
        r#"Folder::"f0""#,
        r#"Group::"u0""#,
        r#"User::"f0""#,
    ],
    &["principal.name", "context.s", "\"ann\"", "principal.level"],
    // Extension values: `<` on them is Cedar's alone; `==` is Cedar's value equality.
    &["context.d", "context.e", "context.t", "context.t2", "0"],
];

fn comparison() -> impl Strategy<Value = String> {
    proptest::sample::select(TYPED).prop_flat_map(|pool| {
        (
            proptest::sample::select(pool),
            proptest::sample::select(&["==", "!=", "<", "<=", ">", ">="][..]),
            proptest::sample::select(pool),
        )
            .prop_map(|(a, op, b)| format!("({a} {op} {b})"))
    })
}

fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![proptest::sample::select(LEAVES).prop_map(str::to_owned), comparison(),];
    leaf.prop_recursive(4, 24, 3, |inner| {
        // Outside the fragment (`like`, record literals) makes the policy Cedar's alone:
        // rare, so that most generated policies exercise deputy's evaluator.
        prop_oneof![
            4 => (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
            4 => (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
            2 => inner.clone().prop_map(|a| format!("(!{a})")),
            2 => (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("(if {a} then {b} else {c})")),
            6 => (
                inner.clone(),
                proptest::sample::select(&["==", "!=", "<", "<=", ">", ">="][..]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            3 => (inner.clone(), proptest::sample::select(TARGETS)).prop_map(|(a, t)| format!("({a} in {t})")),
            2 => (inner.clone(), proptest::sample::select(&["User", "Doc", "Folder"][..]))
                .prop_map(|(a, t)| format!("({a} is {t})")),
            2 => (inner.clone(), proptest::sample::select(&["level", "home", "x"][..]))
                .prop_map(|(a, f)| format!("({a} has {f})")),
            2 => inner.clone().prop_map(|a| format!("({a}).level")),
            1 => inner.clone().prop_map(|a| format!("({a} like \"a*\")")),
            1 => inner.prop_map(|a| format!("({{x: {a}}} == context.rec)")),
        ]
    })
}

fn scope() -> impl Strategy<Value = String> {
    proptest::sample::select(
        &[
            "principal, action, resource",
            r#"principal == User::"u0", action, resource"#,
            r#"principal in Group::"g1", action == Action::"read", resource is Doc"#,
            r#"principal is User in Group::"g0", action in [Action::"all"], resource in Folder::"f1""#,
            r#"principal, action, resource == Doc::"d1""#,
        ][..],
    )
    .prop_map(str::to_owned)
}

fn request(i: usize, n: i64) -> cedar_policy::Request {
    let principals = [r#"User::"u0""#, r#"User::"u1""#, r#"User::"ghost""#, r#"Group::"g0""#];
    // `Doc::"deep"` has more ancestors than `descends` compares one by one.
    let resources = [
        r#"Doc::"d0""#,
        r#"Doc::"d1""#,
        r#"Doc::"ghost""#,
        r#"Folder::"f0""#,
        r#"Doc::"deep""#,
    ];
    let uid = |s: &str| s.parse::<cedar_policy::EntityUid>().unwrap();
    let context = cedar_policy::Context::from_json_value(
        serde_json::json!({
            "n": n, "s": "ann", "rec": {"x": n},
            "d": {"__extn": {"fn": "decimal", "arg": "1.5"}},
            "e": {"__extn": {"fn": "decimal", "arg": if n > 0 { "1.5" } else { "2.25" }}},
            "t": {"__extn": {"fn": "datetime", "arg": "2026-11-25"}},
            "t2": {"__extn": {"fn": "datetime", "arg": if n > 0 { "2026-11-25" } else { "2025-01-01" }}},
        }),
        None,
    )
    .unwrap();
    cedar_policy::Request::new(
        uid(principals[i % 4]),
        uid(r#"Action::"read""#),
        uid(resources[(i / 4) % 5]),
        context,
        None,
    )
    .unwrap()
}

/// Compares deputy and Cedar on one policy over 20 requests; how many deputy answered.
fn agree(text: &str, n: i64) -> usize {
    agree_all(&[text.to_owned()], n)
}

/// Compares deputy and Cedar on policies compiled together (one `AttrIds`, as an index
/// compiles them) and evaluated in turn on one `Ctx` per request (as a decision does, with
/// its remembered attribute reads), over 20 requests; how many answers deputy gave.
fn agree_all(texts: &[String], n: i64) -> usize {
    let store = cedar_policy::Entities::from_json_str(STORE, None).unwrap();
    let store: &Entities = store.as_ref();
    let mut ids = AttrIds::default();
    let compiled: Vec<_> = texts
        .iter()
        .map(|text| {
            let policy = cedar_policy::Policy::parse(None, text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let cond = Cond::compile(policy.as_ref(), Implied::Nothing, &mut ids);
            (text, policy, cond)
        })
        .collect();
    let mut answered = 0;
    for i in 0..20 {
        let request = request(i, n);
        let request: &Request = request.as_ref();
        let ctx = Ctx::new(store, request);
        for (text, policy, cond) in &compiled {
            let Some(cond) = cond else { continue };
            let p: &Policy = policy.as_ref();
            let cedar = Evaluator::new(request.clone(), store, Extensions::all_available())
                .partial_interpret(&p.condition(), p.env());
            if let Some(b) = cond.eval(&ctx) {
                answered += 1;
                match cedar {
                    Ok(PartialValue::Value(v)) => assert_eq!(
                        v.value_kind(),
                        &ValueKind::Lit(Literal::Bool(b)),
                        "{text}\nrequest {request}\nafter {texts:?}"
                    ),
                    other => panic!("deputy answered {b}, Cedar {other:?}\n{text}\nrequest {request}"),
                }
            }
        }
    }
    answered
}

#[test]
fn answers_only_what_cedar_answers() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (answered, asked) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 2048,
        ..ProptestConfig::default()
    });
    // One to four policies decided together, so that they share remembered attribute reads.
    let policy = (scope(), expr(), any::<bool>()).prop_map(|(scope, cond, unless)| {
        format!(
            "permit({scope}) {} {{ {cond} }};",
            if unless { "unless" } else { "when" }
        )
    });
    let cases = (proptest::collection::vec(policy, 1..=4), -1i64..3);
    runner
        .run(&cases, |(texts, n)| {
            answered.fetch_add(agree_all(&texts, n), Ordering::Relaxed);
            asked.fetch_add(20 * texts.len(), Ordering::Relaxed);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Not vacuous: deputy answers a good share of random (often ill-typed) conditions.
    let (answered, asked) = (answered.into_inner(), asked.into_inner());
    assert!(answered * 4 >= asked, "deputy answered {answered} of {asked}");
}

#[test]
fn remembered_attribute_reads_stay_per_entity_and_attribute() {
    // `User::"u0"` has a0..a9 = 10..19 and `Doc::"d0"` a0..a9 = 20..29: twenty distinct
    // reads when both are in the request, more than a request remembers. Each policy tests
    // one attribute against its own value (true) or a neighbour's (false), by `==` and by
    // the fused comparisons, twice over: a read answered from the wrong memo cell, or
    // from the other entity, gives a different answer than Cedar's.
    let mut texts = Vec::new();
    for round in 0..2 {
        for k in 0..10 {
            for (var, base) in [("principal", 10), ("resource", 20)] {
                let v = base + k + round;
                texts.push(format!(
                    "permit(principal, action, resource) when {{ {var} has a{k} && {var}.a{k} == {v} }};"
                ));
                texts.push(format!(
                    "permit(principal, action, resource) when {{ {var} has a{k} && {var}.a{k} > {} && {var}.a{k} <= {v} }};",
                    v - 1
                ));
            }
        }
    }
    // u0 and d0 meet in 1 request of 20; every policy is answered in every request.
    assert_eq!(agree_all(&texts, 1), texts.len() * 20);
}

#[test]
fn the_fragment_is_answered() {
    // Not vacuous: these compile and are answered for every request the store can answer.
    for (text, at_least) in [
        (
            r#"permit(principal, action, resource) when { context.n >= 0 && context.rec.x == context.n };"#,
            16,
        ),
        (
            r#"permit(principal, action, resource) when { context.n < 1 || context.n <= 0 || context.n > 1 };"#,
            16,
        ),
        (
            r#"permit(principal in Group::"g1", action, resource is Doc in Folder::"f1");"#,
            16,
        ),
        (
            r#"permit(principal, action, resource) when { resource in [Folder::"p0", Folder::"p1",
            Folder::"p2", Folder::"p3", Folder::"p4", Folder::"p5", Folder::"p6", Folder::"p7",
            Folder::"p8", Folder::"p9", Folder::"p10", Folder::"p11", Folder::"p12", Folder::"p13",
            Folder::"p14", Folder::"p15", Folder::"p16", Folder::"f1"] };"#,
            20,
        ),
        (
            r#"permit(principal, action, resource) when { principal has level && principal.level == 2 };"#,
            16,
        ),
        (
            r#"forbid(principal, action, resource) unless { if context.s == "ann" then resource in [Folder::"f0"] else false };"#,
            16,
        ),
        // Attributes of missing entities err in Cedar: not answered there.
        (
            r#"permit(principal, action, resource) when { principal.level > 1 };"#,
            4,
        ),
    ] {
        assert!(agree(text, 1) >= at_least, "{text}");
    }
}

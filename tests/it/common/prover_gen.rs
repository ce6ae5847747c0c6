//! Random grants in the prover's covered fragment over the fixture schema, shared by the
//! soundness law and the differential test against SymCC.
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::test_runner::Config;

pub const FOLDERS: &[&str] = &[
    "repo",
    "repo/src",
    "repo/src/lib",
    "repo/docs",
    "other",
    "vault",
    "newdir",
];

pub fn principal_scope() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("principal == ?principal".to_owned()),
        1 => Just("principal in ?principal".to_owned()),
        1 => Just("principal".to_owned()),
        1 => Just("principal in Team::\"eng\"".to_owned()),
        1 => Just("principal is Agent".to_owned()),
    ]
}

pub fn action_scope() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("action == Action::\"read\"".to_owned()),
        1 => Just("action == Action::\"list\"".to_owned()),
        1 => Just("action == Action::\"write\"".to_owned()),
        1 => Just("action in [Action::\"read\", Action::\"list\"]".to_owned()),
        1 => Just("action in Action::\"readOnly\"".to_owned()),
        1 => Just("action".to_owned()),
    ]
}

pub fn folder() -> impl Strategy<Value = String> {
    prop::sample::select(FOLDERS).prop_map(|f| format!("Folder::\"{f}\""))
}

pub fn resource_scope() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("resource".to_owned()),
        4 => folder().prop_map(|f| format!("resource in {f}")),
        1 => Just("resource == File::\"repo/src/main.rs\"".to_owned()),
        1 => Just("resource == File::\"new.rs\"".to_owned()),
        2 => Just("resource is File".to_owned()),
        2 => folder().prop_map(|f| format!("resource is File in {f}")),
        1 => Just("resource is Folder".to_owned()),
    ]
}

/// Conditions valid for any principal and resource type of the schema.
pub fn atom(file_only: bool) -> BoxedStrategy<String> {
    let mut options: Vec<BoxedStrategy<String>> = vec![
        (0i64..4).prop_map(|k| format!("context.taint <= {k}")).boxed(),
        (0i64..4).prop_map(|k| format!("context.taint > {k}")).boxed(),
        (0i64..4).prop_map(|k| format!("context.taint == {k}")).boxed(),
        Just("context.mfa".to_owned()).boxed(),
        prop::sample::select(&["t*", "ticket", "*x", "ticket-*"][..])
            .prop_map(|p| format!("(context has reason && context.reason like \"{p}\")"))
            .boxed(),
        prop::sample::select(&["ticket", "ticket-1", "x"][..])
            .prop_map(|s| format!("(context has reason && context.reason == \"{s}\")"))
            .boxed(),
        (0i64..4).prop_map(|k| format!("principal.ceiling >= {k}")).boxed(),
        Just("principal.can_delegate".to_owned()).boxed(),
        Just("principal in Team::\"eng\"".to_owned()).boxed(),
        Just("(principal has role && principal.role == \"dev\")".to_owned()).boxed(),
        folder().prop_map(|f| format!("resource in {f}")).boxed(),
        Just("resource is File".to_owned()).boxed(),
        Just("resource == File::\"repo/src/main.rs\"".to_owned()).boxed(),
        (0i64..4).prop_map(|k| format!("context.taint + 1 <= {k}")).boxed(),
        prop::sample::select(&["\"ticket\"", "\"x\""][..])
            .prop_map(|s| format!("(context has reason && [{s}, \"y\"].contains(context.reason))"))
            .boxed(),
    ];
    if file_only {
        options.extend([
            (0i64..4)
                .prop_map(|k| format!("resource.classification <= {k}"))
                .boxed(),
            (0i64..4).prop_map(|k| format!("resource.classification < {k}")).boxed(),
            (0i64..4)
                .prop_map(|k| format!("resource.classification != {k}"))
                .boxed(),
            Just("resource.public".to_owned()).boxed(),
            prop::sample::select(&["repo/*", "repo/src/*", "*.rs", "*"][..])
                .prop_map(|p| format!("resource.path like \"{p}\""))
                .boxed(),
            prop::sample::select(&["rust", "docs", "public"][..])
                .prop_map(|t| format!("resource.tags.contains(\"{t}\")"))
                .boxed(),
            Just("resource.tags.containsAny([\"rust\", \"public\"])".to_owned()).boxed(),
            Just("resource.tags.containsAll([\"rust\", \"public\"])".to_owned()).boxed(),
            Just("(resource has owner && resource.owner == Agent::\"alice\")".to_owned()).boxed(),
            Just("(resource has owner && resource.owner in Team::\"eng\")".to_owned()).boxed(),
        ]);
    }
    prop::strategy::Union::new(options).boxed()
}

pub fn condition(file_only: bool) -> BoxedStrategy<String> {
    atom(file_only)
        .prop_recursive(2, 6, 2, move |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
                inner.clone().prop_map(|a| format!("!({a})")),
                (inner.clone(), inner.clone(), inner).prop_map(|(c, a, b)| format!("(if {c} then {a} else {b})")),
            ]
        })
        .boxed()
}

pub fn policy(parent: bool) -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.75),
        prop::bool::weighted(if parent { 0.15 } else { 0.0 }),
        principal_scope(),
        action_scope(),
        resource_scope(),
    )
        .prop_flat_map(|(permit, withheld, p, a, r)| {
            let file_only = r.starts_with("resource is File") || r.starts_with("resource == File");
            let clause = prop::option::weighted(0.6, (prop::bool::weighted(0.7), condition(file_only)));
            clause.prop_map(move |c| {
                let effect = if permit { "permit" } else { "forbid" };
                let anno = if withheld && permit {
                    "@delegable(\"false\")\n"
                } else {
                    ""
                };
                let cond = match c {
                    Some((true, e)) => format!(" when {{ {e} }}"),
                    Some((false, e)) => format!(" unless {{ {e} }}"),
                    None => String::new(),
                };
                format!("{anno}{effect}({p}, {a}, {r}){cond};")
            })
        })
}

pub fn grant(parent: bool) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(policy(parent), 1..6)
}

/// A child derived from its parent: some of the parent's policies, each maybe narrowed by an
/// extra condition, plus maybe one random policy. These pairs are mostly `Within`, which is
/// where the law has teeth.
pub fn derived_child(parent: Vec<String>) -> impl Strategy<Value = Vec<String>> {
    let n = parent.len();
    (
        prop::collection::vec(
            (
                any::<bool>(),
                prop::option::weighted(0.5, (any::<bool>(), condition(false))),
                prop::option::weighted(0.4, (0usize..40, 0u8..5)),
            ),
            n,
        ),
        prop::option::weighted(0.3, policy(false)),
    )
        .prop_map(move |(picks, extra)| {
            let mut out: Vec<String> = parent
                .iter()
                .zip(picks)
                .filter(|(_, (keep, _, _))| *keep)
                .map(|(p, (_, cond, tweak))| {
                    let mut body = p.trim_end_matches(';').replace("@delegable(\"false\")\n", "");
                    if let Some((nth, digit)) = tweak {
                        body = tweak_number(&body, nth, digit);
                    }
                    match cond {
                        Some((true, c)) => format!("{body} when {{ {c} }};"),
                        Some((false, c)) => format!("{body} unless {{ {c} }};"),
                        None => format!("{body};"),
                    }
                })
                .collect();
            out.extend(extra);
            out
        })
}

/// Replaces one digit of a policy (a Long bound), to probe boundaries.
pub fn tweak_number(body: &str, nth: usize, digit: u8) -> String {
    let positions: Vec<usize> = body
        .char_indices()
        .filter(|(i, c)| c.is_ascii_digit() && body[..*i].ends_with(' '))
        .map(|(i, _)| i)
        .collect();
    match positions.get(nth % positions.len().max(1)) {
        Some(i) => format!("{}{}{}", &body[..*i], digit, &body[i + 1..]),
        None => body.to_owned(),
    }
}

pub fn pair() -> impl Strategy<Value = (String, String)> {
    grant(true).prop_flat_map(|parent| {
        let child = prop_oneof![1 => grant(false), 2 => derived_child(parent.clone())];
        (Just(parent.join("\n")), child.prop_map(|c| c.join("\n")))
    })
}

/// `PROPTEST_CASES` overrides the number of cases (for longer runs in CI).
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

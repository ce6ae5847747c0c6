//! The policy index is exact: for random policy sets (every kind of scope, templates and their
//! links, conditions that err) over random entity hierarchies, and random requests, evaluating
//! the slices the index picks decides exactly as Cedar over the whole set: same decision, same
//! determining policies, same erring policies with the same messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;

use cedar_policy::{Context, Entities, EntityUid, PolicyId, PolicySet, Request, SlotId};
use deputy::eval::{evaluate, evaluate_indexed, Asked, Decision, Indexed, PolicyError, PolicyIndex};
use proptest::prelude::*;
use serde_json::json;

const USERS: usize = 4;
const GROUPS: usize = 3;
const DOCS: usize = 4;
const FOLDERS: usize = 3;
const ACTIONS: usize = 4;
const ACTION_GROUPS: usize = 2;

fn user(i: usize) -> String {
    format!(r#"User::"u{i}""#)
}
fn group(i: usize) -> String {
    format!(r#"Group::"g{i}""#)
}
fn doc(i: usize) -> String {
    format!(r#"Doc::"d{i}""#)
}
fn folder(i: usize) -> String {
    format!(r#"Folder::"f{i}""#)
}
fn action(i: usize) -> String {
    if i < ACTIONS {
        format!(r#"Action::"a{i}""#)
    } else {
        format!(r#"Action::"ag{}""#, i - ACTIONS)
    }
}

/// A principal-side uid: users, groups, and one user that is never in the store.
fn principal_uid(i: usize) -> String {
    match i % (USERS + GROUPS + 1) {
        i if i < USERS => user(i),
        i if i < USERS + GROUPS => group(i - USERS),
        _ => r#"User::"ghost""#.to_owned(),
    }
}
/// A resource-side uid: docs, folders, and one doc that is never in the store.
fn resource_uid(i: usize) -> String {
    match i % (DOCS + FOLDERS + 1) {
        i if i < DOCS => doc(i),
        i if i < DOCS + FOLDERS => folder(i - DOCS),
        _ => r#"Doc::"ghost""#.to_owned(),
    }
}
/// An action uid: actions, action groups, and one action that is in no store.
fn action_uid(i: usize) -> String {
    match i % (ACTIONS + ACTION_GROUPS + 1) {
        i if i < ACTIONS + ACTION_GROUPS => action(i),
        _ => r#"Action::"unknown""#.to_owned(),
    }
}

#[derive(Debug, Clone)]
enum Scope {
    Any,
    Eq(usize),
    In(usize),
    Is(bool),
    IsIn(bool, usize),
    /// A template slot (`== ?principal` or `in ?resource`...), `in` when true.
    Slot(bool),
}

#[derive(Debug, Clone)]
enum ActionScope {
    Any,
    Eq(usize),
    In(Vec<usize>),
}

#[derive(Debug, Clone)]
struct PolicySpec {
    forbid: bool,
    principal: Scope,
    action: ActionScope,
    resource: Scope,
    condition: usize,
    /// Links of a template: (principal value, resource value).
    links: Vec<(usize, usize)>,
}

/// Conditions, several of which err: a missing attribute, an overflow, a type error. Most are in
/// the fragment deputy evaluates itself (`eval::fast`); `like` and `+` are Cedar's alone.
const CONDITIONS: &[&str] = &[
    "",
    "when { true }",
    "when { false }",
    "when { principal.level > 1 }",
    "when { resource.level < context.n }",
    "unless { 9223372036854775807 + context.n > 0 }",
    "when { principal has level && resource has level && principal.level >= resource.level }",
    "when { context.n == 1 }",
    "when { principal.level like \"x\" }",
    "when { resource in principal.home }",
    "when { context.n > 0 || principal.level == 1 }",
    "when { if principal has level then principal.level > 0 else context.n == 0 }",
    "when { !(resource is Doc) || resource.level >= context.n }",
    "unless { principal in [Group::\"g0\", Group::\"g2\"] && action in Action::\"ag0\" }",
];

/// A user: (in the store, `level`, groups, `home` folder).
type UserSpec = (bool, Option<i64>, Vec<usize>, Option<usize>);

#[derive(Debug, Clone)]
struct StoreSpec {
    /// For each user: (in store, level, groups, home folder).
    users: Vec<UserSpec>,
    /// For each group: parent groups with a higher index (acyclic).
    groups: Vec<Vec<usize>>,
    /// For each doc: (in store, level, folders).
    docs: Vec<(bool, Option<i64>, Vec<usize>)>,
    /// For each folder: parent folders with a higher index.
    folders: Vec<Vec<usize>>,
    /// For each action: its groups.
    actions: Vec<Vec<usize>>,
}

#[derive(Debug, Clone)]
struct RequestSpec {
    principal: usize,
    action: usize,
    resource: usize,
    n: i64,
}

fn scope(slot: bool) -> impl Strategy<Value = Scope> {
    let mut options = vec![
        Just(Scope::Any).boxed(),
        (0..16usize).prop_map(Scope::Eq).boxed(),
        (0..16usize).prop_map(Scope::In).boxed(),
        any::<bool>().prop_map(Scope::Is).boxed(),
        (any::<bool>(), 0..16usize).prop_map(|(b, i)| Scope::IsIn(b, i)).boxed(),
    ];
    if slot {
        options.push(any::<bool>().prop_map(Scope::Slot).boxed());
    }
    proptest::strategy::Union::new(options)
}

fn action_scope() -> impl Strategy<Value = ActionScope> {
    prop_oneof![
        Just(ActionScope::Any),
        (0..16usize).prop_map(ActionScope::Eq),
        proptest::collection::vec(0..16usize, 1..3).prop_map(ActionScope::In),
    ]
}

fn policy() -> impl Strategy<Value = PolicySpec> {
    (
        any::<bool>(),
        scope(true),
        action_scope(),
        scope(true),
        0..CONDITIONS.len(),
        proptest::collection::vec((0..16usize, 0..16usize), 0..3),
    )
        .prop_map(|(forbid, principal, action, resource, condition, links)| PolicySpec {
            forbid,
            principal,
            action,
            resource,
            condition,
            links,
        })
}

fn subset(n: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..n, 0..3)
}

fn store() -> impl Strategy<Value = StoreSpec> {
    let level = proptest::option::of(-2i64..4);
    (
        proptest::collection::vec(
            (
                proptest::bool::weighted(0.85),
                level.clone(),
                subset(GROUPS),
                proptest::option::of(0..FOLDERS),
            ),
            USERS,
        ),
        proptest::collection::vec(subset(GROUPS), GROUPS),
        proptest::collection::vec((proptest::bool::weighted(0.85), level, subset(FOLDERS)), DOCS),
        proptest::collection::vec(subset(FOLDERS), FOLDERS),
        proptest::collection::vec(subset(ACTION_GROUPS), ACTIONS),
    )
        .prop_map(|(users, groups, docs, folders, actions)| StoreSpec {
            users,
            groups,
            docs,
            folders,
            actions,
        })
}

fn request() -> impl Strategy<Value = RequestSpec> {
    (0..16usize, 0..16usize, 0..16usize, -1i64..3).prop_map(|(principal, action, resource, n)| RequestSpec {
        principal,
        action,
        resource,
        n,
    })
}

fn principal_scope(s: &Scope) -> String {
    match s {
        Scope::Any => "principal".to_owned(),
        Scope::Eq(i) => format!("principal == {}", principal_uid(*i)),
        Scope::In(i) => format!("principal in {}", principal_uid(*i)),
        Scope::Is(b) => format!("principal is {}", if *b { "User" } else { "Group" }),
        Scope::IsIn(b, i) => format!(
            "principal is {} in {}",
            if *b { "User" } else { "Group" },
            principal_uid(*i)
        ),
        Scope::Slot(true) => "principal in ?principal".to_owned(),
        Scope::Slot(false) => "principal == ?principal".to_owned(),
    }
}

fn resource_scope(s: &Scope) -> String {
    match s {
        Scope::Any => "resource".to_owned(),
        Scope::Eq(i) => format!("resource == {}", resource_uid(*i)),
        Scope::In(i) => format!("resource in {}", resource_uid(*i)),
        Scope::Is(b) => format!("resource is {}", if *b { "Doc" } else { "Folder" }),
        Scope::IsIn(b, i) => format!(
            "resource is {} in {}",
            if *b { "Doc" } else { "Folder" },
            resource_uid(*i)
        ),
        Scope::Slot(true) => "resource in ?resource".to_owned(),
        Scope::Slot(false) => "resource == ?resource".to_owned(),
    }
}

fn action_scope_text(s: &ActionScope) -> String {
    match s {
        ActionScope::Any => "action".to_owned(),
        ActionScope::Eq(i) => format!("action == {}", action_uid(*i)),
        ActionScope::In(list) => format!(
            "action in [{}]",
            list.iter().map(|i| action_uid(*i)).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn uid(s: &str) -> EntityUid {
    EntityUid::from_str(s).unwrap_or_else(|e| panic!("uid {s}: {e}"))
}

/// The policy set: one policy (or template) per spec, each template linked per its links.
fn policy_set(specs: &[PolicySpec]) -> PolicySet {
    let mut set = PolicySet::new();
    for (i, spec) in specs.iter().enumerate() {
        let text = format!(
            "{}({}, {}, {}) {};",
            if spec.forbid { "forbid" } else { "permit" },
            principal_scope(&spec.principal),
            action_scope_text(&spec.action),
            resource_scope(&spec.resource),
            CONDITIONS[spec.condition]
        );
        let id = PolicyId::new(format!("p{i}"));
        let is_template = matches!(spec.principal, Scope::Slot(_)) || matches!(spec.resource, Scope::Slot(_));
        if is_template {
            let t = cedar_policy::Template::parse(Some(id.clone()), &text).unwrap_or_else(|e| panic!("{text}: {e}"));
            set.add_template(t).unwrap_or_else(|e| panic!("{e}"));
            for (j, (p, r)) in spec.links.iter().enumerate() {
                let mut values = std::collections::HashMap::new();
                if matches!(spec.principal, Scope::Slot(_)) {
                    values.insert(SlotId::principal(), uid(&principal_uid(*p)));
                }
                if matches!(spec.resource, Scope::Slot(_)) {
                    values.insert(SlotId::resource(), uid(&resource_uid(*r)));
                }
                set.link(id.clone(), PolicyId::new(format!("p{i}-link{j}")), values)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        } else {
            let p = cedar_policy::Policy::parse(Some(id), &text).unwrap_or_else(|e| panic!("{text}: {e}"));
            set.add(p).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    set
}

fn parents(uids: impl IntoIterator<Item = String>) -> Vec<serde_json::Value> {
    uids.into_iter()
        .map(|u| serde_json::to_value(uid(&u).to_json_value().unwrap_or_else(|e| panic!("{e}"))).unwrap_or_default())
        .collect()
}

fn entity(u: String, attrs: serde_json::Value, ps: Vec<serde_json::Value>) -> serde_json::Value {
    let uid = uid(&u).to_json_value().unwrap_or_else(|e| panic!("{e}"));
    json!({ "uid": uid, "attrs": attrs, "parents": ps })
}

fn entities(spec: &StoreSpec) -> Entities {
    let mut all = Vec::new();
    for (i, (present, level, groups, home)) in spec.users.iter().enumerate() {
        if !present {
            continue;
        }
        let mut attrs = serde_json::Map::new();
        if let Some(l) = level {
            attrs.insert("level".into(), json!(l));
        }
        if let Some(f) = home {
            attrs.insert(
                "home".into(),
                json!({ "__entity": { "type": "Folder", "id": format!("f{f}") } }),
            );
        }
        all.push(entity(user(i), attrs.into(), parents(groups.iter().map(|g| group(*g)))));
    }
    for (i, ps) in spec.groups.iter().enumerate() {
        all.push(entity(
            group(i),
            json!({}),
            parents(ps.iter().filter(|p| **p > i).map(|p| group(*p))),
        ));
    }
    for (i, (present, level, folders)) in spec.docs.iter().enumerate() {
        if !present {
            continue;
        }
        let attrs = level.map(|l| json!({ "level": l })).unwrap_or_else(|| json!({}));
        all.push(entity(doc(i), attrs, parents(folders.iter().map(|f| folder(*f)))));
    }
    for (i, ps) in spec.folders.iter().enumerate() {
        all.push(entity(
            folder(i),
            json!({}),
            parents(ps.iter().filter(|p| **p > i).map(|p| folder(*p))),
        ));
    }
    for (i, ps) in spec.actions.iter().enumerate() {
        all.push(entity(
            action(i),
            json!({}),
            parents(ps.iter().map(|g| action(ACTIONS + g))),
        ));
    }
    for g in 0..ACTION_GROUPS {
        all.push(entity(action(ACTIONS + g), json!({}), vec![]));
    }
    Entities::from_json_value(serde_json::Value::Array(all), None).unwrap_or_else(|e| panic!("{e}"))
}

fn cedar_request(spec: &RequestSpec) -> Request {
    let context = Context::from_json_value(json!({ "n": spec.n }), None).unwrap_or_else(|e| panic!("{e}"));
    Request::new(
        uid(&principal_uid(spec.principal)),
        uid(&action_uid(spec.action)),
        uid(&resource_uid(spec.resource)),
        context,
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Cedar's own `Authorizer` over the whole set, as a `Decision`: what deputy must reproduce.
fn cedar_decision(set: &PolicySet, store: &Entities, request: &cedar_policy::Request) -> Decision {
    let response = cedar_policy::Authorizer::new().is_authorized(request, set, store);
    let mut reasons: Vec<String> = response.diagnostics().reason().map(|id| id.to_string()).collect();
    reasons.sort();
    let mut errors: Vec<PolicyError> = response
        .diagnostics()
        .errors()
        .map(|e| {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
            PolicyError {
                policy: e.policy_id().to_string(),
                message: e.inner().to_string(),
            }
        })
        .collect();
    errors.sort_by(|a, b| a.policy.cmp(&b.policy));
    Decision {
        allow: response.decision() == cedar_policy::Decision::Allow,
        reasons,
        errors,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Indexed evaluation agrees with Cedar over the whole set, on the store the index was
    /// built from and on another one (as a snapshot with agents adds entities), where the
    /// index must either still agree or decline.
    #[test]
    fn indexed_evaluation_is_cedars(
        specs in proptest::collection::vec(policy(), 0..24),
        built_on in store(),
        other in store(),
        requests in proptest::collection::vec(request(), 1..24),
    ) {
        let set = policy_set(&specs);
        let built_store = entities(&built_on);
        let other_store = entities(&other);
        let index = PolicyIndex::build(&set, &built_store);
        // As an agent's chain hop is indexed: without any store's action hierarchy.
        let bare = PolicyIndex::build(&set, &Entities::empty());
        // Two halves asked in turn through one `Asked`, as the hops of a chain are.
        let (first, second) = specs.split_at(specs.len() / 2);
        let halves = [policy_set(first), policy_set(second)];
        let half_indexes = [PolicyIndex::build(&halves[0], &built_store), PolicyIndex::build(&halves[1], &Entities::empty())];
        // Principals to ask on behalf of, as a chain asks the admin policies about each ancestor.
        let others: Vec<(usize, EntityUid)> = requests.iter().map(|r| (r.principal, uid(&principal_uid(r.principal)))).collect();
        for spec in &requests {
            let request = cedar_request(spec);
            for store in [&built_store, &other_store] {
                let cedar = cedar_decision(&set, store, &request);
                let full = evaluate(&set, store, &request);
                let indexed = evaluate_indexed(&set, &index, store, &request);
                prop_assert_eq!(&full, &cedar, "request {:?}\npolicies:\n{}", spec, set);
                prop_assert_eq!(&indexed, &cedar, "request {:?}\npolicies:\n{}", spec, set);
                let hop = evaluate_indexed(&set, &bare, store, &request);
                prop_assert_eq!(&hop, &cedar, "bare index; request {:?}\npolicies:\n{}", spec, set);
                let asked = Asked::new(store, &request);
                for i in [0, 1, 0] {
                    let want = cedar_decision(&halves[i], store, &request);
                    let got = asked.evaluate(&halves[i], &half_indexes[i]);
                    prop_assert_eq!(&got, &want, "half {} asked in turn; request {:?}\npolicies:\n{}", i, spec, halves[i]);
                }
                // The action's and resource's side looked up once per index, as a chain asks the
                // admin policies about the agent and each ancestor; and, ignored, with the wrong index.
                let (with_index, with_bare) = (Indexed { policies: &set, index: &index }, Indexed { policies: &set, index: &bare });
                let (prepared, prepared_bare) = (with_index.prepare(&asked), with_bare.prepare(&asked));
                prop_assert_eq!(&with_index.verdict_prepared(&asked, &prepared).decision(), &cedar, "prepared; request {:?}\npolicies:\n{}", spec, set);
                prop_assert_eq!(&with_bare.verdict_prepared(&asked, &prepared).decision(), &cedar, "prepared for another index");
                for (principal, other) in others.iter().take(3) {
                    let as_other = RequestSpec { principal: *principal, ..spec.clone() };
                    let want = cedar_decision(&set, store, &cedar_request(&as_other));
                    let on_behalf = asked.as_principal(other);
                    prop_assert!(on_behalf.is_some(), "a concrete request is always asked on behalf of another");
                    let Some(on_behalf) = on_behalf else { continue };
                    let got = on_behalf.evaluate(&set, &index);
                    prop_assert_eq!(&got, &want, "on behalf of {}; request {:?}\npolicies:\n{}", other, spec, set);
                    prop_assert_eq!(on_behalf.verdict(&set, &bare).decision(), want.clone(), "bare index, on behalf of {}", other);
                    let got = with_index.verdict_prepared(&on_behalf, &prepared).decision();
                    prop_assert_eq!(&got, &want, "prepared, on behalf of {}; request {:?}\npolicies:\n{}", other, spec, set);
                    prop_assert_eq!(with_bare.verdict_prepared(&on_behalf, &prepared_bare).decision(), want, "bare index prepared, on behalf of {}", other);
                }
            }
        }
    }
}

/// The generator reaches what the index must get right: errors, forbids winning, linked
/// policies deciding, and requests the index answers from several slices.
#[test]
fn the_generator_covers_errors_and_links() {
    let specs = vec![
        PolicySpec {
            forbid: false,
            principal: Scope::Slot(false),
            action: ActionScope::In(vec![ACTIONS]),
            resource: Scope::Any,
            condition: 0,
            links: vec![(0, 0)],
        },
        PolicySpec {
            forbid: true,
            principal: Scope::In(USERS),
            action: ActionScope::Any,
            resource: Scope::Eq(1),
            condition: 3,
            links: vec![],
        },
    ];
    let set = policy_set(&specs);
    let store_spec = StoreSpec {
        users: vec![(true, None, vec![0], None); USERS],
        groups: vec![vec![]; GROUPS],
        docs: vec![(true, None, vec![]); DOCS],
        folders: vec![vec![]; FOLDERS],
        actions: vec![vec![0]; ACTIONS],
    };
    let store = entities(&store_spec);
    let index = PolicyIndex::build(&set, &store);
    let request = cedar_request(&RequestSpec {
        principal: 0,
        action: 0,
        resource: 1,
        n: 0,
    });
    let full = evaluate(&set, &store, &request);
    assert_eq!(full, cedar_decision(&set, &store, &request));
    assert!(full.allow, "{full:?}");
    assert_eq!(full.reasons, ["p0-link0"]);
    assert_eq!(full.errors.len(), 1, "{full:?}");
    assert_eq!(full.errors[0].policy, "p1");
    assert_eq!(evaluate_indexed(&set, &index, &store, &request), full);
    let slices = index
        .slices(
            &store,
            &uid(&principal_uid(0)),
            &uid(&action_uid(0)),
            &uid(&resource_uid(1)),
        )
        .unwrap_or_default();
    assert_eq!(slices.len(), 2);
}

/// One `Asked` through two indexes whose conditions read different attributes under the same
/// number: each answers for its own attribute, not the one the other read first.
#[test]
fn a_request_asked_of_several_indexes_reads_each_ones_attributes() {
    let set = |src: &str| PolicySet::from_str(src).unwrap();
    let by_principal = set(r#"permit(principal, action, resource) when { principal.level > 1 };"#);
    let by_resource = set(r#"permit(principal, action, resource) when { resource.level > 1 };"#);
    let store_spec = StoreSpec {
        users: vec![(true, Some(5), vec![], None); USERS],
        groups: vec![vec![]; GROUPS],
        docs: vec![(true, Some(0), vec![]); DOCS],
        folders: vec![vec![]; FOLDERS],
        actions: vec![vec![]; ACTIONS],
    };
    let store = entities(&store_spec);
    let indexes = [
        PolicyIndex::build(&by_principal, &store),
        PolicyIndex::build(&by_resource, &store),
    ];
    let request = cedar_request(&RequestSpec {
        principal: 0,
        action: 0,
        resource: 0,
        n: 0,
    });
    let asked = Asked::new(&store, &request);
    assert!(asked.evaluate(&by_principal, &indexes[0]).allow);
    assert!(!asked.evaluate(&by_resource, &indexes[1]).allow, "resource.level is 0");
    assert!(asked.evaluate(&by_principal, &indexes[0]).allow);
}

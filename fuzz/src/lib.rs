//! The fuzz harness: one function per target, each feeding bytes to deputy's library the way the
//! server does, against the example bundle at the repository root (loaded once).
//!
//! Shared with `tests/it/fuzz_regressions.rs` (included there with `#[path]`), so a crash input
//! replays through exactly the code the fuzzer ran. It therefore depends only on what deputy's
//! own tests can use: deputy, cedar-policy, serde_json and tempfile.
//!
//! A target "finds" something when it panics: deputy panicking on an input, or one of the
//! assertions below (the prover's soundness law) failing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use cedar_policy::{
    Authorizer, Context, Decision, Effect, Entities, EntityUid, PolicyId, PolicySet, Request, Schema, SlotId,
};
use deputy::agents::{AgentRow, Registry};
use deputy::authorize::{self, Parts};
use deputy::bundle::{Bundle, LoadOptions};
use deputy::prover::{self, Grant, ProveOptions, Verdict};
use deputy::snapshot::{Live, Snapshot};

/// A fixed clock, so a replayed input decides the same way (agents here never expire).
const NOW: i64 = 1_800_000_000;
/// `--max-batch`'s default.
const MAX_BATCH: usize = 1000;

/// Root agent deputy manages in the fuzzed snapshot, and its child: decisions for them go
/// through the chain (admin AND each hop, ceilings, taint).
const ROOT_GRANT: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");
@delegable("false")
permit(principal == ?principal, action == Action::"invoke", resource is Tool);"#;
const CHILD_GRANT: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");
forbid(principal == ?principal, action, resource == File::"repo/src/payroll.rs");"#;

/// The repository root (the example bundle).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("schema").is_dir() && p.join("policies").is_dir())
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The example bundle, and a snapshot of it holding two managed agents.
pub struct Fixture {
    pub snapshot: Arc<Snapshot>,
}

pub static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let bundle = Bundle::load(&repo_root(), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("the example bundle does not load: {e}"));
    let live = Live::default();
    live.install_bundle(Arc::new(bundle))
        .unwrap_or_else(|e| panic!("cannot install the example bundle: {e:?}"));
    let row = |id: &str, parent: Option<&str>, depth, ceiling, grant: &str| AgentRow {
        can_delegate: parent.is_none(),
        ..AgentRow::sketch(id, parent, depth, ceiling, grant)
    };

    let registry = Registry::default()
        .with(row("fz-root", None, 0, 2, ROOT_GRANT))
        .and_then(|r| r.with(row("fz-child", Some("fz-root"), 1, 1, CHILD_GRANT)))
        .unwrap_or_else(|e| panic!("cannot build the fuzz registry: {e}"));
    live.write()
        .and_then(|mut w| w.publish(registry))
        .unwrap_or_else(|e| panic!("cannot publish the fuzz registry: {e}"));
    let snapshot = live.current().unwrap_or_else(|| panic!("no snapshot"));
    Fixture { snapshot }
});

/// What `read_json` in `src/http/routes.rs` does to a body (after the size and time limits).
fn body_json(data: &[u8]) -> Option<serde_json::Value> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    authorize::parse_json(data).ok()
}

/// Decides `parts` as the HTTP layer does.
fn authorize_parts(snap: &Snapshot, parts: Result<Parts, authorize::RequestError>) {
    let Ok(parts) = parts else { return };
    if let Ok(outcome) = authorize::decide(snap, parts, NOW) {
        // The response body is serialised from these; that must not fail either.
        let _ = serde_json::to_vec(&outcome.decision);
        let _ = serde_json::to_vec(&outcome.denied_by);
        let _ = serde_json::to_vec(&outcome.needed);
        if outcome.decision.allow {
            assert!(
                outcome.denied_by.is_none(),
                "an allow carries denied_by: {:?}",
                outcome.denied_by
            );
        }
    }
}

/// (a) `POST /v1/authorize` and `/v1/authorize/batch` bodies. The direct reading of a body
/// (`read_parts`) must agree with the field-by-field one (`parts_of`).
pub fn authorize(data: &[u8]) {
    let snap = &FIXTURE.snapshot;
    let bundle = &snap.bundle;
    let direct = authorize::read_parts(bundle, data);
    let by_field = authorize::parse_json(data).and_then(|b| authorize::parts_of(bundle, &b, ""));
    match (&direct, &by_field) {
        (Ok(a), Ok(b)) => assert_eq!(parts_key(a), parts_key(b), "the two readings of a body differ"),
        (Err(a), Err(b)) => assert_eq!(a, b, "the two readings of a body fail differently"),
        (a, b) => panic!(
            "one reading of a body fails: {:?} vs {:?}",
            a.as_ref().err(),
            b.as_ref().err()
        ),
    }
    authorize_parts(snap, direct);
    let Some(body) = body_json(data) else { return };
    if let Some(items) = body.get("requests").and_then(|r| r.as_array()) {
        for (i, item) in items.iter().enumerate().take(MAX_BATCH) {
            authorize_parts(snap, authorize::parts_of(bundle, item, &format!("requests[{i}]")));
        }
    }
}

type PartsKey = (String, String, String, Option<serde_json::Value>, String);

fn parts_key(p: &Parts) -> PartsKey {
    let field = |r: &authorize::EntityRef| format!("{} at {}", r.uid, r.field);
    (
        field(&p.principal),
        field(&p.action),
        field(&p.resource),
        p.context.clone(),
        p.context_field.clone(),
    )
}

/// (b) `POST /access/v1/evaluation` and `/access/v1/evaluations` bodies.
pub fn authzen(data: &[u8]) {
    let snap = &FIXTURE.snapshot;
    let Some(body) = body_json(data) else { return };
    let mut raised = Vec::new();
    if let Ok(e) = deputy::authzen::evaluate(snap, &body, NOW, &mut raised) {
        assert!(
            e.error.is_none() || !e.decision,
            "an evaluation that failed was allowed"
        );
    }
    if let Ok(deputy::authzen::Batch::Many(evals)) =
        deputy::authzen::evaluate_batch(snap, &body, MAX_BATCH, NOW, &mut raised)
    {
        assert!(
            evals.iter().all(|e| e.error.is_none() || !e.decision),
            "an item that failed was allowed"
        );
    }
}

/// (c) Grant text, as sent in `POST /v1/delegations` and `POST /v1/permission-requests`.
pub fn grant(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let Ok(grant) = Grant::parse(src) else { return };
    let _ = grant.digest();
    let view = grant.delegable_view();
    assert!(view.len() <= grant.len(), "the delegable view grew");
    let schema = &FIXTURE.snapshot.bundle.schema;
    if prover::validate_grant(&grant, schema).is_ok() {
        // What the registry does with an accepted grant: link it to the agent.
        if let Ok(uid) = deputy::agents::agent_uid("fz-new") {
            let _ = deputy::agents::link("fz-new", src, &uid, deputy::agents::View::Full);
            let _ = deputy::agents::link("fz-new", src, &uid, deputy::agents::View::Delegable);
        }
    }
}

/// The byte that separates the files of a `bundle_load` input.
pub const FILE_SEPARATOR: u8 = 0;

/// (d) Bundle loading: the input is up to four files separated by NUL bytes — the schema
/// (`.cedarschema.json` when it starts with `{`), policies, entities, and a grant shipped for
/// `Agent::"orchestrator"`. Load must answer Ok or Err with problems, never panic.
pub fn bundle_load(data: &[u8]) {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    }
    DIR.with(|dir| {
        let root = dir.path();
        for sub in ["schema", "policies", "entities", "grants"] {
            let _ = std::fs::remove_dir_all(root.join(sub));
            let _ = std::fs::create_dir_all(root.join(sub));
        }
        let mut parts = data.splitn(4, |b| *b == FILE_SEPARATOR);
        let schema = parts.next().unwrap_or_default();
        let schema_name = if schema.trim_ascii_start().starts_with(b"{") {
            "s.cedarschema.json"
        } else {
            "s.cedarschema"
        };
        let files = [
            (root.join("schema").join(schema_name), Some(schema)),
            (root.join("policies").join("p.cedar"), parts.next()),
            (root.join("entities").join("e.json"), parts.next()),
            (root.join("grants").join("orchestrator.cedar"), parts.next()),
        ];
        for (path, content) in files {
            if let Some(c) = content {
                if std::fs::write(&path, c).is_err() {
                    return;
                }
            }
        }
        match Bundle::load(root, &LoadOptions::default()) {
            Ok(b) => assert!(!b.version.is_empty(), "a loaded bundle has no version"),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    });
}

/// A cursor over fuzz bytes for the structured grant generator (zeros when exhausted).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn pick<'s>(&mut self, options: &[&'s str]) -> &'s str {
        let i = usize::from(self.byte()) % options.len().max(1);
        options.get(i).copied().unwrap_or("")
    }
    fn small(&mut self, n: u8) -> u8 {
        self.byte() % n.max(1)
    }
}

const ACTIONS: &[&str] = &["read", "write", "invoke", "use_credential", "send_message", "delegate"];
const PRINCIPAL_SCOPES: &[&str] = &[
    "principal == ?principal",
    "principal == ?principal",
    "principal == ?principal",
    "principal in ?principal",
    "principal",
    "principal is Agent",
    "principal is Agent in ?principal",
    "principal == Agent::\"orchestrator\"",
];
const RESOURCE_SCOPES: &[&str] = &[
    "resource",
    "resource in Folder::\"repo\"",
    "resource in Folder::\"repo/src\"",
    "resource in Folder::\"repo/docs\"",
    "resource == Folder::\"repo\"",
    "resource == File::\"repo/src/main.rs\"",
    "resource == File::\"repo/src/payroll.rs\"",
    "resource == File::\"repo/README.md\"",
    "resource is File",
    "resource is Folder",
    "resource is File in Folder::\"repo/src\"",
    "resource is Tool",
    "resource == Tool::\"pytest\"",
    "resource in Folder::\"secrets\"",
    "resource in Folder::\"elsewhere\"",
    "resource == Channel::\"slack-eng\"",
    "resource == Credential::\"github-token\"",
    "resource is Agent",
];
const ATOMS: &[&str] = &[
    "true",
    "false",
    "resource.classification <= {k}",
    "resource.classification > {k}",
    "resource.classification == {k}",
    "resource.classification <= principal.ceiling",
    "context.taint < {k}",
    "context has taint",
    "context has taint && context.taint <= {k}",
    "principal.ceiling >= {k}",
    "principal.depth == {k}",
    "principal.can_delegate",
    "resource in Folder::\"repo/src\"",
    "resource in Folder::\"repo/docs\"",
    "resource == File::\"repo/src/main.rs\"",
    "resource is File",
    "resource has classification",
    "action == Action::\"read\"",
    "action in [Action::\"read\", Action::\"write\"]",
    "resource.classification + 1 > {k}",
    "principal == Agent::\"orchestrator\"",
];

fn gen_expr(b: &mut Bytes<'_>, depth: u8) -> String {
    let k = b.small(4).to_string();
    match b.small(if depth == 0 { 1 } else { 6 }) {
        1 => format!("({} && {})", gen_expr(b, depth - 1), gen_expr(b, depth - 1)),
        2 => format!("({} || {})", gen_expr(b, depth - 1), gen_expr(b, depth - 1)),
        3 => format!("!({})", gen_expr(b, depth - 1)),
        4 => format!(
            "(if {} then {} else {})",
            gen_expr(b, depth - 1),
            gen_expr(b, depth - 1),
            gen_expr(b, depth - 1)
        ),
        _ => b.pick(ATOMS).replace("{k}", &k),
    }
}

fn gen_action_scope(b: &mut Bytes<'_>) -> String {
    match b.small(4) {
        0 => "action".to_owned(),
        1 => {
            let (x, y) = (b.pick(ACTIONS), b.pick(ACTIONS));
            format!("action in [Action::\"{x}\", Action::\"{y}\"]")
        }
        _ => format!("action == Action::\"{}\"", b.pick(ACTIONS)),
    }
}

/// A grant of 1–4 policies over the example schema, from the fuzz bytes.
fn gen_grant(b: &mut Bytes<'_>) -> String {
    let n = 1 + b.small(4);
    let mut out = String::new();
    for _ in 0..n {
        let forbid = b.small(4) == 0;
        if !forbid && b.small(5) == 0 {
            out.push_str("@delegable(\"false\")\n");
        }
        out.push_str(if forbid { "forbid(" } else { "permit(" });
        out.push_str(b.pick(PRINCIPAL_SCOPES));
        out.push_str(", ");
        out.push_str(&gen_action_scope(b));
        out.push_str(", ");
        out.push_str(b.pick(RESOURCE_SCOPES));
        out.push(')');
        match b.small(3) {
            0 => {}
            1 => out.push_str(&format!(" when {{ {} }}", gen_expr(b, 2))),
            _ => out.push_str(&format!(" unless {{ {} }}", gen_expr(b, 2))),
        }
        out.push_str(";\n");
    }
    out
}

/// The two grants of a `prover` input: raw Cedar text `child NUL parent` when the first byte
/// is `b'#'`, else generated from the bytes.
pub fn prover_grants(data: &[u8]) -> (String, String) {
    if let Some((b'#', rest)) = data.split_first() {
        let mut parts = rest.splitn(2, |b| *b == FILE_SEPARATOR);
        let child = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let parent = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        return (child, parent);
    }
    let mut b = Bytes(data);
    let child = gen_grant(&mut b);
    let parent = gen_grant(&mut b);
    (child, parent)
}

/// (e) The prover on a pair of grants: never panics, and a `Within` verdict holds on every
/// concrete request sampled from the example store plus a fresh child agent.
pub fn prover(data: &[u8]) {
    prover_verdict(data);
}

/// `prover`, saying what happened: `"unparsed"`, `"invalid"` (a grant fails validation),
/// `"within"` (and the law held), `"exceeds"` or `"inconclusive"`.
pub fn prover_verdict(data: &[u8]) -> &'static str {
    let (child_src, parent_src) = prover_grants(data);
    let (Ok(child), Ok(parent)) = (Grant::parse(&child_src), Grant::parse(&parent_src)) else {
        return "unparsed";
    };
    let bundle = &FIXTURE.snapshot.bundle;
    let last = data.last().copied().unwrap_or(0);
    let explicit_child = last % 2 == 1;
    let any_principal = last & 2 != 0;
    let child_uid = agent("child");
    #[allow(
        clippy::needless_update,
        reason = "options the prover adds later keep their defaults"
    )]
    let opts = ProveOptions {
        child_principal: explicit_child.then(|| child_uid.clone()),
        max_steps: 4_000,
        max_candidates: 8,
        any_principal,
        ..ProveOptions::default()
    };
    let Ok(verdict) = prover::prove(&child, &parent, &bundle.schema, &bundle.entities, &opts) else {
        return "invalid";
    };
    match verdict {
        Verdict::Within(_) => {
            let attrs = data.first().copied().unwrap_or(0);
            check_within(
                &child_src,
                &parent_src,
                &bundle.schema,
                &bundle.entities,
                &child_uid,
                attrs,
                any_principal,
            );
            "within"
        }
        Verdict::Exceeds(_) => "exceeds",
        Verdict::Inconclusive(_) => "inconclusive",
    }
}

fn agent(id: &str) -> EntityUid {
    deputy::agents::agent_uid(id).unwrap_or_else(|e| panic!("agent uid: {e}"))
}

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_str(&format!("{ty}::{id:?}")).unwrap_or_else(|e| panic!("uid {ty}::{id}: {e}"))
}

/// The policies of `sources` (prefix, Cedar text, which effects/annotations to keep), templates
/// linked to `principal`, in one set.
/// Which policies of a grant to keep, by effect and `@delegable` annotation.
type Keep = fn(Effect, Option<&str>) -> bool;

fn linked(sources: &[(&str, &str, Keep)], principal: &EntityUid) -> PolicySet {
    let mut out = PolicySet::new();
    for (prefix, src, keep) in sources {
        let parsed = PolicySet::from_str(src).unwrap_or_else(|e| panic!("grant reparse: {e}"));
        for p in parsed.policies() {
            if keep(p.effect(), p.annotation(prover::DELEGABLE_ANNOTATION)) {
                let id = PolicyId::new(format!("{prefix}/{}", p.id()));
                out.add(p.new_id(id)).unwrap_or_else(|e| panic!("add: {e}"));
            }
        }
        for t in parsed.templates() {
            if keep(t.effect(), t.annotation(prover::DELEGABLE_ANNOTATION)) {
                let tid = PolicyId::new(format!("{prefix}/template/{}", t.id()));
                out.add_template(t.new_id(tid.clone()))
                    .unwrap_or_else(|e| panic!("add template: {e}"));
                let id = PolicyId::new(format!("{prefix}/{}", t.id()));
                out.link(tid, id, HashMap::from([(SlotId::principal(), principal.clone())]))
                    .unwrap_or_else(|e| panic!("link: {e}"));
            }
        }
    }
    out
}

/// The soundness law, on concrete worlds: the example store plus the child agent (attributes
/// from `attrs`) and two new files. Whatever the child's grant allows (its permits, its forbids
/// and the parent's forbids) the parent's delegable view (with the parent's forbids) allows.
pub fn check_within(
    child: &str,
    parent: &str,
    schema: &Schema,
    store: &Entities,
    child_uid: &EntityUid,
    attrs: u8,
    any_principal: bool,
) {
    let all: Keep = |_, _| true;
    let forbids: Keep = |e, _| e == Effect::Forbid;
    let view: Keep = |e, a| e == Effect::Forbid || a != Some("false");
    let child_set = linked(&[("child", child, all), ("parent", parent, forbids)], child_uid);
    let parent_set = linked(&[("parent", parent, view)], child_uid);

    let (ceiling, taint) = (i64::from(attrs % 4), i64::from((attrs / 4) % 4));
    let extra = serde_json::json!([
        { "uid": {"type": "Agent", "id": child_uid.id().unescaped()},
          "attrs": {"can_delegate": attrs & 0x10 != 0, "ceiling": ceiling, "depth": i64::from((attrs / 32) % 4)},
          "parents": [] },
        { "uid": {"type": "File", "id": "new-in-src"}, "attrs": {"classification": taint},
          "parents": [{"type": "Folder", "id": "repo/src"}] },
        { "uid": {"type": "File", "id": "new-loose"}, "attrs": {"classification": ceiling}, "parents": [] },
    ]);
    let extra = Entities::from_json_value(extra, Some(schema)).unwrap_or_else(|e| panic!("extra entities: {e}"));
    let entities = store
        .clone()
        .add_entities(extra, Some(schema))
        .unwrap_or_else(|e| panic!("world: {e}"));

    let authorizer = Authorizer::new();
    let principals = [
        child_uid.clone(),
        agent("orchestrator"),
        agent("coder-1"),
        uid("Human", "alice"),
    ];
    let resources: Vec<EntityUid> = entities.iter().map(|e| e.uid()).collect();
    // Without `any_principal` the prover answers for the child's own requests only (grants
    // are evaluated on the requests of the agent holding them).
    let principals = if any_principal {
        &principals[..]
    } else {
        principals.get(..1).unwrap_or_default()
    };
    for action in ACTIONS {
        let action = uid("Action", action);
        for p in principals {
            for r in &resources {
                for ctx in contexts(ceiling, taint) {
                    let Ok(context) = Context::from_json_value(ctx, Some((schema, &action))) else {
                        continue;
                    };
                    let Ok(request) = Request::new(p.clone(), action.clone(), r.clone(), context, Some(schema)) else {
                        continue;
                    };
                    let by_child = authorizer.is_authorized(&request, &child_set, &entities);
                    if by_child.decision() != Decision::Allow {
                        continue;
                    }
                    let by_parent = authorizer.is_authorized(&request, &parent_set, &entities);
                    assert!(
                        by_parent.decision() == Decision::Allow,
                        "prover said Within, but {request} is allowed by the child and denied by the \
                         parent's delegable view\n--- child ---\n{child}\n--- parent ---\n{parent}"
                    );
                }
            }
        }
    }
}

fn contexts(ceiling: i64, taint: i64) -> [serde_json::Value; 3] {
    [
        serde_json::json!({}),
        serde_json::json!({"taint": taint}),
        serde_json::json!({"depth": 1, "ttl_seconds": 600, "ceiling": ceiling, "taint": taint, "task": "t"}),
    ]
}

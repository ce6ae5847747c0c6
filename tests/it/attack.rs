//! Attacks on the delegation promise (`child <= delegable_view(parent) <= parent <= admin`) found
//! by a review that attacked the first round of fixes (tests/it/adversary.rs): each broke the
//! promise before its fix and is kept as a regression test. Each runs over HTTP against a real
//! server on `127.0.0.1:0`, on a bundle of its own (`tests/fixtures/attack`: the adversary
//! bundle plus teams, a tool action that is neither a taint source nor a sink, a vault folder, a
//! contractor's bundle agent `vendor`, the example bundle's `ceiling-narrows` rule and an
//! `@ask("human")` rule for tainted parents). docs/SECURITY.md maps each to its invariant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{applied, decide, get_as, post_as, spawn, Options, Resp, TestServer};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-attack-tests";
/// The bundle agent `lead`'s credential (as if mounted from a Secret).
const LEAD: &str = "lead-credential-from-a-secret-0123";
/// The bundle agent `vendor`'s credential.
const VENDOR: &str = "vendor-credential-from-a-secret-01";

struct Env {
    server: TestServer,
    bundle: tempfile::TempDir,
    #[allow(dead_code)]
    state: tempfile::TempDir,
}

fn fixture() -> std::path::PathBuf {
    common::repo_root().join("tests/fixtures/attack")
}

fn options(state: &Path) -> Options {
    Options {
        state: Some(state.to_path_buf()),
        admin_token: Some(ADMIN.to_owned()),
        agent_tokens: [
            ("lead".to_owned(), LEAD.to_owned()),
            ("vendor".to_owned(), VENDOR.to_owned()),
        ]
        .into(),
        ..Options::default()
    }
}

fn start_with(opts: impl FnOnce(&Path) -> Options) -> Env {
    let bundle = tempfile::tempdir().unwrap();
    common::copy_dir(&fixture(), bundle.path());
    let state = tempfile::tempdir().unwrap();
    let server = TestServer::start(bundle.path(), opts(state.path()));
    Env { server, bundle, state }
}

fn start() -> Env {
    start_with(options)
}

impl Env {
    fn edit(&self, file: &str, f: impl FnOnce(String) -> String) {
        let path = self.bundle.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, f(text)).unwrap();
    }
}

const READ_A: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"proj/a");"#;
const READ_WRITE_A: &str =
    r#"permit(principal == ?principal, action in [Action::"read", Action::"write"], resource in Folder::"proj/a");"#;
const INVOKE: &str = r#"permit(principal == ?principal, action == Action::"invoke", resource is Tool);"#;
const READ_ANYTHING: &str = r#"permit(principal == ?principal, action == Action::"read", resource);"#;

fn body(grant: &str) -> Value {
    json!({"grant": grant, "ttl_seconds": 600, "ceiling": 2, "can_delegate": true, "task": "subtask"})
}

fn reloaded(s: &TestServer) -> Value {
    let _ = s.reload();
    s.get("/v1/status").json()["last_reload"].clone()
}

fn approve(s: &TestServer, token: &str, rid: &str) -> Resp {
    post_as(
        s,
        token,
        &format!("/v1/permission-requests/{rid}"),
        &json!({"decision": "approve"}),
    )
}

/// Break 1 (run time, `child <= parent`): an admin forbid that binds a bundle agent through
/// its entity — its group (`principal in Team::"contractors"`) or an attribute
/// (`principal.team`) — does not bind the children it spawns: a child's entity has neither,
/// and run time evaluates the admin policies for the acting agent only. So a child does what
/// its parent cannot, with a grant proved within the parent's.
#[test]
fn an_admin_forbid_on_a_parent_binds_its_children() {
    let env = start();
    let s = &env.server;
    // The vendor (a contractor) is kept out of proj/a/c and may not write, by the admin.
    let d = decide(s, "vendor", "read", ("Doc", "in-c"));
    assert_eq!(d["decision"], "Deny", "{d}");
    let d = decide(s, "vendor", "write", ("Doc", "public"));
    assert_eq!(d["decision"], "Deny", "{d}");
    // It spawns a child with exactly its own grant: proved within.
    let child = applied(&spawn(s, VENDOR, body(READ_WRITE_A)));
    let escaped: Vec<String> = [("read", "in-c"), ("write", "public")]
        .into_iter()
        .map(|(action, doc)| (action, doc, decide(s, &child.id, action, ("Doc", doc))))
        .filter(|(_, _, d)| d["decision"] == "Allow")
        .map(|(action, doc, d)| format!("{action} Doc::\"{doc}\" ({})", d["reasons"]))
        .collect();
    assert!(
        escaped.is_empty(),
        "the vendor's child may do what the admin forbids the vendor: {escaped:?}"
    );
}

/// Break 2 (run time, ceilings): the `ceiling` deputy puts in a managed agent's entity — the
/// one every admin rule reading `principal.ceiling` sees — is the agent's own, not the lowest
/// on its chain. After the bundle lowers a bundle agent's ceiling, its children keep theirs:
/// for an action that is neither a taint source nor a sink (`invoke`, like the example bundle's
/// tools and credentials) a child does what its parent no longer may. docs/DELEGATION.md: "a
/// lowered ceiling bounds the whole subtree at once".
#[test]
fn a_lowered_ceiling_bounds_the_whole_subtree_for_every_action() {
    let env = start();
    let s = &env.server;
    let mut b = body(INVOKE);
    b["ceiling"] = json!(3);
    let child = applied(&spawn(s, LEAD, b));
    assert_eq!(decide(s, &child.id, "invoke", ("Tool", "deploy"))["decision"], "Allow");
    // The admin lowers the lead's ceiling to 1.
    env.edit("entities/agents.json", |t| {
        t.replacen(
            r#""id": "lead" }, "attrs": { "can_delegate": true, "ceiling": 3"#,
            r#""id": "lead" }, "attrs": { "can_delegate": true, "ceiling": 1"#,
            1,
        )
    });
    let last = reloaded(s);
    assert_eq!(last["outcome"], "loaded", "{last}");
    let d = decide(s, "lead", "invoke", ("Tool", "deploy"));
    assert_eq!(
        d["decision"], "Deny",
        "the lead (ceiling 1) may not invoke a level-2 tool: {d}"
    );
    let d = decide(s, &child.id, "invoke", ("Tool", "deploy"));
    assert_eq!(
        d["decision"], "Deny",
        "the lead's child invokes a level-2 tool its parent (ceiling now 1) may not: {d}"
    );
}

/// Break 2b (run time, ceilings, no reload): deputy promises the ceiling "needs no bundle
/// rule" (the adversary bundle deliberately has none), but a child may ask for any ceiling,
/// and admin rules that read `principal.ceiling` see the child's own, above its parent's.
#[test]
fn a_child_never_gets_a_ceiling_above_its_parents_whatever_the_bundle_says() {
    let env = start();
    let s = &env.server;
    // Like the adversary bundle: no delegation rule about ceilings.
    env.edit("policies/delegation.cedar", |t| {
        t.replace(
            "when { context.ceiling > principal.ceiling }",
            "when { context.ceiling > 99 }",
        )
    });
    assert_eq!(reloaded(s)["outcome"], "loaded");
    let r = applied(&spawn(
        s,
        ADMIN,
        json!({"grant": INVOKE, "ttl_seconds": 3600, "ceiling": 1, "can_delegate": true, "task": "orchestrate"}),
    ));
    assert_eq!(decide(s, &r.id, "invoke", ("Tool", "deploy"))["decision"], "Deny");
    let mut b = body(INVOKE);
    b["ceiling"] = json!(3);
    let resp = spawn(s, &r.token, b);
    if resp.status == 201 {
        let child = applied(&resp);
        let d = decide(s, &child.id, "invoke", ("Tool", "deploy"));
        assert_eq!(
            d["decision"], "Deny",
            "a child of a ceiling-1 root invokes a level-2 tool its parent may not: {d}"
        );
    }
}

/// Break 3 (one identity namespace): a name is "owned by the bundle" when a policy names it —
/// but only at spawn time. A bundle that starts naming a managed agent's id in a policy (or an
/// entity) is accepted, and the policy then applies to whoever squatted that name: here a
/// child reads a vault its parent never could. Only *declaring* the id is refused.
#[test]
fn a_bundle_that_starts_naming_a_managed_agent_is_refused() {
    let env = start();
    let s = &env.server;
    let r = applied(&spawn(
        s,
        ADMIN,
        json!({"grant": READ_ANYTHING, "ttl_seconds": 3600, "ceiling": 3, "can_delegate": true, "task": "orchestrate"}),
    ));
    let mut b = body(READ_ANYTHING);
    b["agent_id"] = json!("deployer");
    let squatter = applied(&spawn(s, &r.token, b));
    assert_eq!(decide(s, &r.id, "read", ("Doc", "vault-doc"))["decision"], "Deny");
    assert_eq!(
        decide(s, &squatter.id, "read", ("Doc", "vault-doc"))["decision"],
        "Deny"
    );
    // Later the admin writes a rule for the deployer agent it means to declare.
    env.edit("policies/admin.cedar", |t| {
        t + "\n@id(\"deployer-reads-vault\")\npermit (principal == Agent::\"deployer\", action == Action::\"read\", resource in Folder::\"vault\");\n"
    });
    let last = reloaded(s);
    if last["outcome"] == "loaded" {
        let d = decide(s, &squatter.id, "read", ("Doc", "vault-doc"));
        assert_eq!(
            d["decision"],
            "Deny",
            "a name an agent chose came to mean the bundle's `Agent::\"deployer\"`: the child reads the vault, \
             its parent does not ({}): {d}",
            decide(s, &r.id, "read", ("Doc", "vault-doc"))["decision"]
        );
    } else {
        assert_eq!(last["problems"][0]["code"], "agent_id_conflict", "{last}");
    }
}

/// Break 4 (approvers are identities / every `@ask` approver approves): an approval stands in
/// for *every* `@ask` rule at carry-out, not for the ones its approvers approved. The parent
/// files a delegation of a grandchild while clean (the lead must approve), the lead approves, the
/// parent reads something internal (now a human must approve too: `tainted-needs-human`),
/// and carries the old approval out: applied, no human asked.
#[test]
fn an_approval_does_not_stand_in_for_an_approver_it_never_had() {
    let env = start();
    let s = &env.server;
    let helper = applied(&spawn(s, LEAD, body(READ_A)));
    // A grandchild of the lead: `deep` asks the lead.
    let long = body(READ_A);
    let p = spawn(s, &helper.token, long.clone());
    assert_eq!(p.status, 202, "{}", p.text());
    assert_eq!(p.json()["approvers"], json!(["lead"]), "{}", p.text());
    let rid = p.json()["request_id"].as_str().unwrap().to_owned();
    assert_eq!(approve(s, LEAD, &rid).json()["status"], "approved");
    // The helper reads an internal document: taint 1.
    assert_eq!(decide(s, &helper.id, "read", ("Doc", "internal"))["decision"], "Allow");
    // The same delegation asked now needs the lead *and* a human.
    let fresh = spawn(s, &helper.token, long.clone());
    assert_eq!(fresh.json()["approvers"], json!(["lead", "admin"]), "{}", fresh.text());
    // Carrying out the lead's approval must not skip the human.
    let mut carry = long;
    carry["approved_request"] = json!(rid);
    let c = spawn(s, &helper.token, carry);
    assert_ne!(
        c.status,
        201,
        "applied with the lead's approval alone, though `tainted-needs-human` now denies it: {}",
        c.text()
    );
}

/// Break 4b: the same through a bundle change. An approval collected under one bundle is
/// carried out under a bundle that added an `@ask("human")` rule for it: no human asked.
#[test]
fn an_approval_collected_under_an_older_bundle_does_not_skip_a_new_ask_rule() {
    let env = start();
    let s = &env.server;
    let helper = applied(&spawn(s, LEAD, body(READ_A)));
    // A grandchild of the lead: `deep` asks the lead.
    let long = body(READ_A);
    let p = spawn(s, &helper.token, long.clone());
    assert_eq!(p.json()["approvers"], json!(["lead"]), "{}", p.text());
    let rid = p.json()["request_id"].as_str().unwrap().to_owned();
    assert_eq!(approve(s, LEAD, &rid).json()["status"], "approved");
    // The admin decides that grandchildren need a human too.
    env.edit("policies/delegation.cedar", |t| {
        t + "\n@id(\"deep-human\")\n@ask(\"human\")\nforbid (principal, action == Action::\"delegate\", resource) when { context.depth > 1 };\n"
    });
    assert_eq!(reloaded(s)["outcome"], "loaded");
    let fresh = spawn(s, &helper.token, long.clone());
    assert_eq!(fresh.json()["approvers"], json!(["lead", "admin"]), "{}", fresh.text());
    let mut carry = long;
    carry["approved_request"] = json!(rid);
    let c = spawn(s, &helper.token, carry);
    assert_ne!(
        c.status,
        201,
        "applied without the human the serving bundle's `deep-human` rule asks for: {}",
        c.text()
    );
}

/// Break 5 (an unproven delegation goes to a human): when an `@ask` rule names a bundle agent
/// and the proof is also Inconclusive, only that agent is asked; its approval then applies the
/// unproven grant. docs/SECURITY.md: "`Inconclusive` ... always goes to a human"; DELEGATION.md:
/// the approval stands in for an inconclusive proof because "a human decided".
#[test]
fn an_inconclusive_proof_always_needs_a_human() {
    let env = start();
    let s = &env.server;
    // A helper whose grant uses arithmetic (the prover cannot read it); its own spawn may need
    // a human, who approves it.
    let arith = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"proj/a") when { context has taint && context.taint * 2 <= 2 };"#;
    let first = spawn(s, LEAD, body(arith));
    let helper = if first.status == 202 {
        let rid = first.json()["request_id"].as_str().unwrap().to_owned();
        assert_eq!(approve(s, ADMIN, &rid).json()["status"], "approved");
        let mut carry = body(arith);
        carry["approved_request"] = json!(rid);
        applied(&spawn(s, LEAD, carry))
    } else {
        applied(&first)
    };
    // A grandchild (depth 2: `deep` asks the lead) whose grant the prover cannot settle
    // against the helper's.
    let narrower = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"proj/a") when { context has taint && context.taint <= 1 };"#;
    let p = spawn(s, &helper.token, body(narrower));
    assert_eq!(p.status, 202, "{}", p.text());
    assert_eq!(p.json()["proof"]["verdict"], "inconclusive", "{}", p.text());
    let approvers = p.json()["approvers"].clone();
    let rid = p.json()["request_id"].as_str().unwrap().to_owned();
    // The lead approves (it is entitled to, for `deep`).
    let a = approve(s, LEAD, &rid);
    assert_eq!(a.status, 200, "{}", a.text());
    let mut carry = body(narrower);
    carry["approved_request"] = json!(rid);
    let c = spawn(s, &helper.token, carry);
    assert_ne!(
        c.status,
        201,
        "an inconclusive proof was applied on an agent's approval, no human asked (approvers {approvers}): {}",
        c.text()
    );
}

/// Break 6 (a child starts with its parent's taint): the spawn reads the parent's taint while
/// it plans (before the proof), not in the transaction that inserts the child. A read of a
/// confidential document answered while the proof runs leaves the child at the old taint —
/// and, with `tainted-needs-human`, applied with no human. The parent then hands the data to
/// a child that writes it to a public channel.
#[test]
fn a_child_spawned_after_its_parent_read_something_starts_with_that_taint() {
    let env = start();
    let s = &env.server;
    // A large grant makes the proof take a while (many permits, each proved).
    let mut big = String::new();
    for i in 0..400 {
        big.push_str(&format!(
            "@id(\"p{i}\")\npermit(principal == ?principal, action == Action::\"read\", resource in Folder::\"proj/a\") when {{ context has taint && context.taint <= {i} }};\n"
        ));
    }
    let send = r#"permit(principal == ?principal, action in [Action::"read", Action::"send"], resource);"#;
    let mut attempts = Vec::new();
    for attempt in 0..5 {
        let r = applied(&spawn(
            s,
            ADMIN,
            json!({"grant": format!("{send}\n{big}"), "ttl_seconds": 3600, "ceiling": 3, "can_delegate": true,
                   "task": format!("orchestrate {attempt}")}),
        ));
        let addr = s.addr;
        let token = r.token.clone();
        let b = json!({"grant": format!("{big}\npermit(principal == ?principal, action == Action::\"send\", resource);"),
                       "ttl_seconds": 600, "ceiling": 3, "can_delegate": false, "task": "post"});
        let spawner = std::thread::spawn(move || {
            let bytes = serde_json::to_vec(&b).unwrap();
            let auth = format!("Bearer {token}");
            let resp = common::send(
                addr,
                "POST",
                "/v1/delegations",
                &[("Content-Type", "application/json"), ("Authorization", &auth)],
                Some(&bytes),
            );
            (resp, Instant::now())
        });
        // The read lands while the spawn's proof runs (unless the spawn is answered first).
        let proving = || {
            s.get("/metrics")
                .text()
                .lines()
                .any(|l| l.starts_with("deputy_proofs_running ") && l != "deputy_proofs_running 0")
        };
        assert!(common::wait_until(Duration::from_secs(30), || spawner.is_finished() || proving()));
        let read = decide(s, &r.id, "read", ("Doc", "secret"));
        let read_at = Instant::now();
        let (resp, spawned_at) = spawner.join().unwrap();
        assert_eq!(read["decision"], "Allow", "{read}");
        if resp.status != 201 {
            attempts.push(format!("spawn {}", resp.status));
            continue;
        }
        let child = applied(&resp);
        let taint = resp.json()["taint"].as_i64().unwrap();
        let gap = spawned_at.saturating_duration_since(read_at);
        attempts.push(format!("child taint {taint}, spawn answered {gap:?} after the read"));
        if taint < 2 && gap > Duration::from_millis(100) {
            // The parent may not write down; its child, holding what it read, may.
            let p = decide(s, &r.id, "send", ("Channel", "public"));
            assert_eq!(p["decision"], "Deny", "{p}");
            let c = decide(s, &child.id, "send", ("Channel", "public"));
            panic!(
                "the read of a level-2 doc was answered {gap:?} before the spawn committed, yet the child starts at \
                 taint {taint} and was applied with no human; the parent may not send to a public channel, the \
                 child may ({}): {c}",
                c["decision"]
            );
        }
    }
    eprintln!("no race won: {attempts:?}");
}

/// Weakness: pending delegations are not counted against `--max-pending-requests`, so one
/// agent can fill the state and its approvers' inboxes without bound.
#[test]
fn pending_delegations_count_against_the_pending_limit() {
    let env = start_with(|state| {
        let mut o = options(state);
        o.limits.max_pending_requests = 2;
        o
    });
    let s = &env.server;
    let helper = applied(&spawn(s, LEAD, body(READ_A)));
    let mut statuses = Vec::new();
    for i in 0..6 {
        let mut long = body(READ_A);
        long["ttl_seconds"] = json!(7200);
        long["task"] = json!(format!("task {i}"));
        statuses.push(spawn(s, &helper.token, long).status);
    }
    let inbox = get_as(s, LEAD, "/v1/permission-requests?status=pending").json();
    assert!(
        statuses.iter().filter(|st| **st == 202).count() <= 2,
        "limit 2, yet {statuses:?}; the lead's inbox holds {}",
        inbox["requests"].as_array().map_or(0, Vec::len)
    );
}

/// Weakness: a name deputy is told belongs to a bundle agent (`--agent-credential-file
/// planner=...`) is free for any agent to take until the bundle declares it; once taken, the
/// bundle that declares the admin's `planner` is refused (`agent_id_conflict`) for good.
#[test]
fn a_name_configured_for_a_bundle_agent_cannot_be_squatted() {
    const PLANNER: &str = "planner-credential-from-a-secret-0";
    let env = start_with(|state| {
        let mut o = options(state);
        o.agent_tokens.insert("planner".to_owned(), PLANNER.to_owned());
        o
    });
    let s = &env.server;
    let mut b = body(READ_A);
    b["agent_id"] = json!("planner");
    let squat = spawn(s, LEAD, b);
    // The admin rolls out the planner it configured a credential for.
    env.edit("entities/agents.json", |t| {
        t.replacen(
            "[",
            r#"[ { "uid": { "type": "Agent", "id": "planner" }, "attrs": { "can_delegate": true, "ceiling": 3, "depth": 0 }, "parents": [] },"#,
            1,
        )
    });
    std::fs::write(env.bundle.path().join("grants/planner.cedar"), READ_A).unwrap();
    let last = reloaded(s);
    assert_eq!(
        last["outcome"],
        "loaded",
        "an agent took `planner` first ({} {}); the admin's bundle is refused: {last}",
        squat.status,
        squat.text()
    );
}

/// Weakness (fail open on a misspelling): only the exact annotation `@delegable("false")`
/// withholds a permit. `@delegable("False")`, `@delegable("no")`, `@Delegable("false")` or a
/// bare `@delegable` are accepted silently and the permit is passed on, in spawned, requested
/// and shipped grants alike.
#[test]
fn a_misspelled_delegable_annotation_is_refused_not_passed_on() {
    let env = start();
    let s = &env.server;
    let send = r#"permit(principal == ?principal, action == Action::"send", resource);"#;
    let mut passed_on = Vec::new();
    for annotation in [
        r#"@delegable("False")"#,
        r#"@delegable("no")"#,
        r#"@Delegable("false")"#,
        "@delegable",
    ] {
        let r = spawn(
            s,
            ADMIN,
            json!({"grant": format!("{READ_A}\n{annotation}\n{send}"), "ttl_seconds": 3600, "ceiling": 3,
                   "can_delegate": true, "task": "orchestrate"}),
        );
        if r.status != 201 {
            continue; // refused: what should happen
        }
        let root = applied(&r);
        let c = spawn(s, &root.token, body(send));
        if c.status == 201 {
            let child = applied(&c);
            let d = decide(s, &child.id, "send", ("Channel", "public"));
            passed_on.push(format!("{annotation}: child send {}", d["decision"]));
        }
    }
    assert!(
        passed_on.is_empty(),
        "permits the author marked non-delegable were passed on: {passed_on:?}"
    );
}

// --- Group commit (src/delegation/service.rs `commit`/`flush`/`wait_for`) -------------------

const GROUP_READ_A: &str =
    r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"proj/a");"#;

fn group_body(id: Option<&str>) -> Value {
    let mut b =
        json!({"grant": GROUP_READ_A, "ttl_seconds": 600, "ceiling": 2, "can_delegate": true, "task": "subtask"});
    if let Some(id) = id {
        b["agent_id"] = json!(id);
    }
    b
}

fn state_db(env: &Env) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(env.state.path().join("deputy.sqlite3")).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c
}

fn stored_ids(env: &Env) -> std::collections::BTreeSet<String> {
    let c = state_db(env);
    let mut st = c.prepare("SELECT id FROM agents").unwrap();
    let ids = st
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    ids
}

/// Group commit, failed group start: when `BEGIN IMMEDIATE` fails (the state file is locked
/// by another process past the busy timeout), the write reports its group number as failed —
/// but that number was never used, so the next group gets the same number while it is
/// already marked ended-and-failed. Writes that then wait for that group (others queued behind
/// them) are answered `state_unavailable ... nothing was changed` at once, while their write
/// stays staged and is committed by the last in line. Invariant checked: a spawn is stored
/// exactly when it was answered 201.
#[test]
fn group_failed_begin_never_misanswers_later_writes() {
    let env = start();
    let s = &env.server;
    applied(&spawn(s, LEAD, group_body(Some("warmup"))));
    // Another process holds the write lock past deputy's 5 s busy timeout: the first spawn
    // fails in `BEGIN IMMEDIATE` while holding the writer lock, with a burst queued behind it.
    let blocker = state_db(&env);
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let ids: Vec<String> = (0..12).map(|i| format!("g-{i}")).collect();
    let answered: Vec<(String, u16, String)> = std::thread::scope(|sc| {
        // Each step waits on `deputy_state_writes` (writes waiting for or holding the writer).
        let writes = || {
            s.get("/metrics")
                .text()
                .lines()
                .find_map(|l| l.strip_prefix("deputy_state_writes "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let blocked = sc.spawn(|| spawn(s, LEAD, group_body(Some("blocked"))));
        // Nothing else writes: the one write in progress holds the writer, stuck in BEGIN.
        assert!(common::wait_until(Duration::from_secs(30), || writes() >= 1));
        let hs: Vec<_> = ids
            .iter()
            .map(|id| {
                sc.spawn(move || {
                    let r = spawn(s, LEAD, group_body(Some(id)));
                    (id.clone(), r.status, r.text())
                })
            })
            .collect();
        // The whole burst is queued behind it (unless its busy timeout ran out first).
        let burst = 1 + ids.len() as u64;
        assert!(common::wait_until(Duration::from_secs(30), || {
            blocked.is_finished() || writes() == burst
        }));
        let r = blocked.join().unwrap();
        assert_ne!(r.status, 201, "a spawn against a locked state must fail: {}", r.text());
        // The next writer now takes the writer and the failed group's number is behind it: let
        // it (and the rest) through.
        blocker.execute_batch("ROLLBACK").unwrap();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(blocker);
    let stored = stored_ids(&env);
    let mut wrong = Vec::new();
    for (id, status, text) in &answered {
        if (*status == 201) != stored.contains(id) {
            wrong.push(format!(
                "{id}: answered {status} but stored={}: {text}",
                stored.contains(id)
            ));
        }
    }
    assert!(!stored.contains("blocked"));
    assert!(
        wrong.is_empty(),
        "spawns answered against what was stored:\n{}",
        wrong.join("\n")
    );
}

/// Group commit, revocation racing spawns: a parent spawns from many threads while `lead`
/// revokes it; no child of a revoked parent may be left live (stored or served), and every
/// spawn answered 201 is stored.
#[test]
fn group_revoke_racing_many_spawns_leaves_no_live_child() {
    let env = start();
    let s = &env.server;
    for round in 0..4 {
        let p = applied(&spawn(s, LEAD, group_body(None)));
        // The revoke goes out once `round` spawns were answered: each round races a different
        // part of the burst (an event, not a sleep).
        let answered = std::sync::atomic::AtomicUsize::new(0);
        let outs: Vec<(u16, String)> = std::thread::scope(|sc| {
            let mut hs = Vec::new();
            for _ in 0..10 {
                let (tok, answered) = (p.token.clone(), &answered);
                hs.push(sc.spawn(move || {
                    let r = spawn(s, &tok, group_body(None));
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    (r.status, r.text())
                }));
            }
            let (pid, answered) = (p.id.clone(), &answered);
            let rev = sc.spawn(move || {
                while answered.load(std::sync::atomic::Ordering::SeqCst) < round {
                    std::thread::yield_now();
                }
                common::delete_as(s, LEAD, &format!("/v1/delegations/{pid}"))
            });
            let r = rev.join().unwrap();
            assert!(r.status < 300, "revoke: {} {}", r.status, r.text());
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let c = state_db(&env);
        let live_children: i64 = c
            .query_row(
                "SELECT count(*) FROM agents WHERE parent = ?1 AND revoked_at IS NULL",
                [&p.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(live_children, 0, "round {round}: live children of a revoked parent");
        for (status, text) in outs {
            if status == 201 {
                let v: Value = serde_json::from_str(&text).unwrap();
                let id = v["delegation_id"].as_str().unwrap().to_owned();
                let n: i64 = c
                    .query_row("SELECT count(*) FROM agents WHERE id = ?1", [&id], |r| r.get(0))
                    .unwrap();
                assert_eq!(n, 1, "acknowledged child {id} not stored");
                // Served as revoked: the child's credential no longer spawns.
                let tok = v["credential"].as_str().unwrap();
                assert_ne!(
                    spawn(s, tok, group_body(None)).status,
                    201,
                    "revoked child {id} still spawns"
                );
            }
        }
    }
}

/// Group commit, a write failing inside its savepoint: spawns racing for the same `agent_id`
/// land in the same groups; the losers fail in their own savepoint only. Every id is stored
/// once, exactly the 201s are stored, and after a restart right after the acknowledgements
/// every acknowledged credential still works (acknowledged means durable).
#[test]
fn group_duplicate_ids_fail_alone_and_acks_survive_restart() {
    let Env { server, bundle, state } = start();
    let s = &server;
    let ids: Vec<String> = (0..14).map(|i| format!("dup-{}", i / 2)).collect();
    let outs: Vec<(String, u16, String)> = std::thread::scope(|sc| {
        let hs: Vec<_> = ids
            .iter()
            .map(|id| {
                sc.spawn(move || {
                    let r = spawn(s, LEAD, group_body(Some(id)));
                    (id.clone(), r.status, r.text())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(server);
    let c = rusqlite::Connection::open(state.path().join("deputy.sqlite3")).unwrap();
    let mut tokens = Vec::new();
    for i in 0..7 {
        let id = format!("dup-{i}");
        let won: Vec<_> = outs.iter().filter(|(x, st, _)| *x == id && *st == 201).collect();
        assert_eq!(won.len(), 1, "{id}: {outs:?}");
        let n: i64 = c
            .query_row("SELECT count(*) FROM agents WHERE id = ?1", [&id], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "{id} not stored once");
        let v: Value = serde_json::from_str(&won[0].2).unwrap();
        tokens.push(v["credential"].as_str().unwrap().to_owned());
    }
    for (id, st, text) in &outs {
        assert!(*st == 201 || (400..500).contains(st), "{id}: {st} {text}");
    }
    drop(c);
    let server = TestServer::start(bundle.path(), options(state.path()));
    for t in tokens {
        // Authenticated (201, or 202 when the bundle asks for an approval of a grandchild).
        let r = spawn(&server, &t, group_body(None));
        assert!(r.status == 201 || r.status == 202, "{} {}", r.status, r.text());
    }
}

/// Group commit, revocation racing approvals: a child's grandchild spawns wait for `lead`'s
/// approval (`deep`); `lead` approves them all while revoking the child from another thread.
/// No live grandchild of the revoked child may remain, stored or served.
#[test]
fn group_revoke_racing_approvals_leaves_no_live_grandchild() {
    let env = start();
    let s = &env.server;
    for round in 0..3usize {
        let c = applied(&spawn(s, LEAD, group_body(None)));
        let rids: Vec<String> = (0..6)
            .map(|_| {
                let r = spawn(s, &c.token, group_body(None));
                assert_eq!(r.status, 202, "{}", r.text());
                r.json()["request_id"].as_str().unwrap().to_owned()
            })
            .collect();
        // The revoke goes out once `round` approvals were answered (an event, not a sleep).
        let answered = std::sync::atomic::AtomicUsize::new(0);
        let outs: Vec<Resp> = std::thread::scope(|sc| {
            let hs: Vec<_> = rids
                .iter()
                .map(|rid| {
                    let answered = &answered;
                    sc.spawn(move || {
                        let r = approve(s, LEAD, rid);
                        answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        r
                    })
                })
                .collect();
            let (cid, answered) = (c.id.clone(), &answered);
            let rev = sc.spawn(move || {
                while answered.load(std::sync::atomic::Ordering::SeqCst) < round {
                    std::thread::yield_now();
                }
                common::delete_as(s, LEAD, &format!("/v1/delegations/{cid}"))
            });
            let r = rev.join().unwrap();
            assert!(r.status < 300, "revoke: {} {}", r.status, r.text());
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let db = state_db(&env);
        let live: i64 = db
            .query_row(
                "SELECT count(*) FROM agents WHERE parent = ?1 AND revoked_at IS NULL",
                [&c.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(live, 0, "round {round}: live grandchildren of a revoked child");
        for r in outs {
            if let Some(tok) = r.json()["credential"].as_str() {
                assert_ne!(
                    spawn(s, tok, group_body(None)).status,
                    201,
                    "revoked grandchild still acts"
                );
                assert_ne!(
                    spawn(s, tok, group_body(None)).status,
                    202,
                    "revoked grandchild still acts"
                );
            }
        }
    }
}

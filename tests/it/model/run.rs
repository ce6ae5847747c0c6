//! The operations of the model-based test, their effect on the model, and the checks made after
//! each (see tests/it/model.rs).
//!
//! Longer than the house's ~600 lines on purpose: one `World` (the model's record of every agent,
//! session and request) is what each operation updates and every check reads, and it is included
//! as one file by the fuzz target (fuzz/fuzz_targets/model.rs) as well as by the test binary.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;
use proptest_state_machine::ReferenceStateMachine;
use serde_json::{json, Value};

use super::deputy::{Deputy, ADMIN, LEAD};
use super::oracle::{AgentFacts, Oracle, Pair, DOMAIN};

/// Policies grants are made of. Those marked foreign are about a principal other than the
/// holder; deputy must refuse any grant holding one.
const PARTS: &[(&str, bool)] = &[
    (r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"proj/a");"#, false),
    (r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"proj/a/c");"#, false),
    (r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"proj/b");"#, false),
    (r#"permit(principal == ?principal, action == Action::"write", resource in Folder::"proj/a");"#, false),
    (r#"permit(principal == ?principal, action == Action::"send", resource);"#, false),
    ("@delegable(\"false\")\npermit(principal == ?principal, action == Action::\"read\", resource in Folder::\"proj/a\");", false),
    ("@delegable(\"false\")\npermit(principal == ?principal, action == Action::\"write\", resource in Folder::\"proj/a\");", false),
    ("@delegable(\"false\")\npermit(principal == ?principal, action == Action::\"read\", resource in Folder::\"proj/b\");", false),
    (r#"permit(principal == ?principal, action in [Action::"read", Action::"write"], resource in Folder::"proj");"#, false),
    (r#"forbid(principal, action == Action::"read", resource == Doc::"secret");"#, false),
    (r#"permit(principal == Agent::"kid", action, resource);"#, true),
    (r#"permit(principal == ?principal, action, resource) when { principal == Agent::"kid2" };"#, true),
    (r#"forbid(principal, action, resource) unless { principal.depth == 1 };"#, true),
    (
        r#"permit(principal == ?principal, action == Action::"read", resource == Doc::"internal") when { context has taint && context.taint < 2 };"#,
        false,
    ),
    (r#"permit(principal == ?principal, action == Action::"send", resource == Channel::"public");"#, false),
    (r#"permit(principal in Agent::"lead", action == Action::"read", resource);"#, true),
];

/// Names agents ask for: two free ones, the rest owned by the bundle or by deputy.
const NAMES: &[&str] = &[
    "kid",
    "kid2",
    "worker",
    "lead",
    "auditor",
    "admin",
    "human",
    "agt-000000000001",
    "deputy",
    "Admin",
    "bundle",
];
const FREE_NAMES: &[&str] = &["kid", "kid2"];
/// `Agent` principals that exist nowhere.
const UNKNOWN: &[&str] = &["agt-000000000000", "ghost", "auditor"];

#[derive(Debug, Clone, Copy)]
pub enum Who {
    Admin,
    /// The agent at this index (modulo) among those the world knows; 0 is the bundle's `lead`.
    Agent(usize),
    /// A forged credential naming the agent at this index.
    Forged(usize),
}

#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    Authorize,
    Batch,
    AuthZen,
    AuthZenBatch,
}

#[derive(Debug, Clone, Copy)]
pub enum Principal {
    Agent(usize),
    Worker,
    Unknown(usize),
}

#[derive(Debug, Clone, Copy)]
pub enum Variant {
    /// `proj/a/c` under `proj/b` (true) or under `proj/a` (false).
    Move(bool),
    /// The lead's ceiling 1 and `can_delegate = false` (true), or 3 and true.
    LeadLow(bool),
    /// A schema that requires an `Agent` attribute deputy cannot supply (refused).
    SchemaBreak,
    /// Entities declaring the id a managed agent holds (refused).
    DeclareManaged(usize),
}

#[derive(Debug, Clone)]
pub enum Op {
    Spawn {
        by: Who,
        name: Option<usize>,
        grant: Vec<usize>,
        ceiling: i64,
        long: bool,
        prod: bool,
        can_delegate: bool,
    },
    CarryOut {
        by: Who,
        pending: usize,
    },
    Decide {
        /// `None`: the request's current approver (the entitled one).
        by: Option<Who>,
        pending: usize,
        decision: usize,
    },
    Ask {
        by: usize,
        grant: Vec<usize>,
    },
    Revoke {
        by: Who,
        target: usize,
        complete: bool,
    },
    Authorize {
        endpoint: Endpoint,
        principal: Principal,
        pair: usize,
    },
    Advance {
        secs: i64,
    },
    Reload(Variant),
    Restart {
        kill: bool,
    },
    SpawnRacingRevoke {
        by: usize,
    },
    RacingCarryOut {
        by: usize,
    },
    /// The agent (or session) at `by` invokes the agent at `callee` (`None`: the bundle's
    /// `worker`, which has no grant).
    Invoke {
        by: usize,
        callee: Option<usize>,
        long: bool,
    },
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        3 => Just(Who::Admin),
        8 => (0..32usize).prop_map(Who::Agent),
        1 => (0..32usize).prop_map(Who::Forged),
    ]
}

/// Indices of the parts that are about the holder, and of those that are not.
fn parts(foreign: bool) -> Vec<usize> {
    (0..PARTS.len()).filter(|i| PARTS[*i].1 == foreign).collect()
}

fn grant() -> impl Strategy<Value = Vec<usize>> {
    // `proj/a/c` moves between folders on reload: grants on it drift, so they come often.
    let part = prop_oneof![
        9 => prop::sample::select(parts(false)),
        3 => Just(1usize),
        1 => prop::sample::select(parts(true)),
    ];
    prop::collection::vec(part, 1..=3)
}

pub fn op_strategy() -> BoxedStrategy<Op> {
    // The bundle's lead spawns often: its children are where drift and approvals happen.
    let spawner = prop_oneof![3 => who(), 1 => Just(Who::Agent(0))];
    let spawn = (
        spawner,
        prop::option::weighted(0.35, prop_oneof![0..FREE_NAMES.len(), FREE_NAMES.len()..NAMES.len()]),
        grant(),
        0..=3i64,
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.7),
    )
        .prop_map(|(by, name, grant, ceiling, long, prod, can_delegate)| Op::Spawn {
            by,
            name,
            grant,
            ceiling,
            long,
            prod,
            can_delegate,
        });
    let endpoint = prop_oneof![
        Just(Endpoint::Authorize),
        Just(Endpoint::Batch),
        Just(Endpoint::AuthZen),
        Just(Endpoint::AuthZenBatch),
    ];
    let principal = prop_oneof![
        6 => (0..32usize).prop_map(Principal::Agent),
        1 => Just(Principal::Worker),
        1 => (0..UNKNOWN.len()).prop_map(Principal::Unknown),
    ];
    let variant = prop_oneof![
        3 => Just(Variant::Move(true)),
        1 => Just(Variant::Move(false)),
        2 => any::<bool>().prop_map(Variant::LeadLow),
        1 => Just(Variant::SchemaBreak),
        1 => (0..32usize).prop_map(Variant::DeclareManaged),
    ];
    prop_oneof![
        30 => spawn,
        6 => (who(), 0..16usize).prop_map(|(by, pending)| Op::CarryOut { by, pending }),
        10 => (prop::option::weighted(0.5, who()), 0..16usize, prop_oneof![6 => Just(0usize), 1 => Just(1), 2 => Just(2)])
            .prop_map(|(by, pending, decision)| Op::Decide { by, pending, decision }),
        6 => (0..32usize, grant()).prop_map(|(by, grant)| Op::Ask { by, grant }),
        6 => (who(), 0..32usize, any::<bool>()).prop_map(|(by, target, complete)| Op::Revoke { by, target, complete }),
        20 => (endpoint, principal, 0..DOMAIN.len()).prop_map(|(endpoint, principal, pair)| Op::Authorize { endpoint, principal, pair }),
        4 => prop_oneof![Just(100i64), Just(700), Just(4000)].prop_map(|secs| Op::Advance { secs }),
        10 => variant.prop_map(Op::Reload),
        5 => any::<bool>().prop_map(|kill| Op::Restart { kill }),
        3 => (0..32usize).prop_map(|by| Op::SpawnRacingRevoke { by }),
        3 => (0..32usize).prop_map(|by| Op::RacingCarryOut { by }),
        6 => (0..32usize, prop::option::weighted(0.85, 0..32usize), any::<bool>())
            .prop_map(|(by, callee, long)| Op::Invoke { by, callee, long }),
    ]
    .boxed()
}

/// How often each interesting outcome was reached, over all cases.
static COVERAGE: std::sync::Mutex<BTreeMap<&'static str, usize>> = std::sync::Mutex::new(BTreeMap::new());

fn note(what: &'static str) {
    *COVERAGE.lock().unwrap().entry(what).or_default() += 1;
}

#[allow(dead_code)]
pub fn coverage() -> BTreeMap<&'static str, usize> {
    COVERAGE.lock().unwrap().clone()
}

/// The reference machine only generates operations; agents are picked by index among those the
/// world has seen (modulo), so every sequence is meaningful whatever deputy answered before.
pub struct Ops;

impl ReferenceStateMachine for Ops {
    type State = ();
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Self::State> {
        Just(()).boxed()
    }

    fn transitions(_: &Self::State) -> BoxedStrategy<Self::Transition> {
        op_strategy()
    }

    fn apply(state: Self::State, _: &Self::Transition) -> Self::State {
        state
    }
}

/// Runs one sequence drawn from `data` (fuzzer bytes taken as the generator's random stream),
/// with every check of the test after each step. For `fuzz/fuzz_targets/model.rs`.
#[allow(dead_code)]
pub fn fuzz(data: &[u8]) {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        proptest::test_runner::Config::default(),
        TestRng::from_seed(RngAlgorithm::PassThrough, data),
    );
    let Ok(tree) = Ops::sequential_strategy(1..30).new_tree(&mut runner) else {
        return;
    };
    let (_, ops, _) = tree.current();
    let mut world = World::start();
    world.check();
    for op in &ops {
        world.apply(op);
        world.check();
    }
}

/// One agent as the model knows it.
#[derive(Debug, Clone)]
struct Agent {
    id: String,
    token: String,
    parent: Option<usize>,
    grant: Vec<String>,
    ceiling: i64,
    can_delegate: bool,
    depth: i64,
    expires_at: i64,
    revoked: bool,
    taint: i64,
    /// Set for a session: whom it serves and on which invocation chain.
    session: Option<Session>,
}

/// A session as the model knows it.
#[derive(Debug, Clone)]
struct Session {
    caller: usize,
    /// The agent it serves; `None`: the bundle's `worker`.
    callee: Option<usize>,
    chain: Vec<String>,
    depth: i64,
}

/// The bundle's agent without a grant, and its ceiling in `entities/agents.json`.
const WORKER_CEILING: i64 = 1;

#[derive(Debug, Clone)]
enum Kind {
    /// A pending delegation: the body to send again with `approved_request`.
    Delegation(Value),
    /// More permission: the policies asked for.
    Permission(Vec<String>),
}

#[derive(Debug, Clone)]
struct Pending {
    rid: String,
    requester: usize,
    kind: Kind,
}

/// The world: deputy running, and the model of what it should hold.
pub struct World {
    d: Deputy,
    /// 0 is the bundle's `lead`.
    agents: Vec<Agent>,
    pending: Vec<Pending>,
    moved: bool,
    lead_low: bool,
    /// Names taken by agents deputy created, with the agent's index.
    names: BTreeMap<String, usize>,
    /// Approvals carried out.
    used: BTreeSet<String>,
}

fn fixture() -> PathBuf {
    super::common::repo_root().join("tests/fixtures/adversary")
}

const MAX_AGENTS: usize = 24;

impl World {
    pub fn start() -> World {
        let d = Deputy::start(&fixture());
        let lead = Agent {
            id: "lead".to_owned(),
            token: LEAD.to_owned(),
            parent: None,
            grant: vec![std::fs::read_to_string(fixture().join("grants/lead.cedar")).unwrap()],
            ceiling: 3,
            can_delegate: true,
            depth: 0,
            expires_at: i64::MAX / 2,
            revoked: false,
            taint: 0,
            session: None,
        };
        World {
            d,
            agents: vec![lead],
            pending: Vec::new(),
            moved: false,
            lead_low: false,
            names: BTreeMap::new(),
            used: BTreeSet::new(),
        }
    }

    fn agent(&self, i: usize) -> usize {
        i % self.agents.len()
    }

    fn live(&self, i: usize) -> bool {
        let a = &self.agents[i];
        !a.revoked
            && self.d.now < a.expires_at
            && a.parent.is_none_or(|p| self.live(p))
            && a.session
                .as_ref()
                .is_none_or(|s| self.live(s.caller) && s.callee.is_none_or(|c| self.live(c)))
    }

    /// A raise of `from` to `level` flows along live invocation and delegation links: to a
    /// session's caller and a child's parent, to the sessions an agent started and its children,
    /// and to the sessions that serve an agent (never from a session to its callee).
    fn flow_taint(&mut self, from: usize, level: i64) {
        let mut queue = vec![from];
        while let Some(x) = queue.pop() {
            let mut next = Vec::new();
            match (&self.agents[x].session, self.agents[x].parent) {
                (Some(s), _) if self.live(x) => next.push(s.caller),
                (None, Some(p)) if self.live(x) => next.push(p),
                _ => {}
            }
            let x_is_session = self.agents[x].session.is_some();
            for (j, a) in self.agents.iter().enumerate() {
                let joined = match &a.session {
                    Some(s) => s.caller == x || (!x_is_session && s.callee == Some(x)),
                    None => a.parent == Some(x),
                };
                if joined && self.live(j) {
                    next.push(j);
                }
            }
            for n in next {
                if self.agents[n].taint < level {
                    self.agents[n].taint = level;
                    queue.push(n);
                }
            }
        }
    }

    /// `t` and everything that ends with it: its descendants, the sessions any of them invoked
    /// or that serve any of them, and on.
    fn ended_with(&self, t: usize) -> BTreeSet<usize> {
        let mut out: BTreeSet<usize> = (0..self.agents.len()).filter(|i| self.chain(*i).contains(&t)).collect();
        loop {
            let more: Vec<usize> = (0..self.agents.len())
                .filter(|i| !out.contains(i))
                .filter(|i| {
                    self.agents[*i]
                        .session
                        .as_ref()
                        .is_some_and(|s| out.contains(&s.caller) || s.callee.is_some_and(|c| out.contains(&c)))
                        || self.agents[*i].parent.is_some_and(|p| out.contains(&p))
                })
                .collect();
            if more.is_empty() {
                return out;
            }
            out.extend(more);
        }
    }

    /// The lead's attributes as the bundle now says.
    fn sync_lead(&mut self) {
        let lead = &mut self.agents[0];
        lead.ceiling = if self.lead_low { 1 } else { 3 };
        lead.can_delegate = !self.lead_low;
    }

    fn chain(&self, i: usize) -> Vec<usize> {
        let mut out = vec![i];
        let mut at = i;
        while let Some(p) = self.agents[at].parent {
            out.push(p);
            at = p;
        }
        out.reverse();
        out
    }

    fn chain_ceiling(&self, i: usize) -> i64 {
        self.chain(i).iter().map(|a| self.agents[*a].ceiling).min().unwrap()
    }

    fn is_strict_ancestor(&self, anc: usize, of: usize) -> bool {
        anc != of && self.chain(of).contains(&anc)
    }

    /// The token `who` presents, and the agent it is (`None` for the admin).
    fn token(&self, who: Who) -> (String, Option<usize>, bool) {
        match who {
            Who::Admin => (ADMIN.to_owned(), None, false),
            Who::Agent(i) => {
                let i = self.agent(i);
                (self.agents[i].token.clone(), Some(i), false)
            }
            Who::Forged(i) => {
                let i = self.agent(i);
                (format!("dpt.{}.{}", self.agents[i].id, "0".repeat(64)), Some(i), true)
            }
        }
    }

    fn oracle(&self) -> Oracle {
        let managed: Vec<(String, bool, i64, i64)> = self
            .agents
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, a)| (a.id.clone(), a.can_delegate, self.chain_ceiling(i), a.depth))
            .collect();
        Oracle::load(self.d.bundle.path(), &managed)
    }

    fn facts(&self, i: usize) -> AgentFacts<'_> {
        // A session is decided as its callee, under its own liveness, taint and the callee's
        // ceiling.
        if let Some(Session { callee: Some(c), .. }) = &self.agents[i].session {
            let mut facts = self.facts(*c);
            facts.live = self.live(i);
            facts.ceiling = facts.ceiling.min(self.agents[i].ceiling);
            facts.taint = facts.taint.max(self.agents[i].taint);
            return facts;
        }
        AgentFacts {
            id: &self.agents[i].id,
            chain: self
                .chain(i)
                .into_iter()
                .map(|a| (self.agents[a].id.as_str(), self.agents[a].grant.join("\n")))
                .collect(),
            live: self.live(i),
            ceiling: self.chain_ceiling(i),
            taint: self.agents[i].taint,
        }
    }

    pub fn apply(&mut self, op: &Op) {
        match op.clone() {
            Op::Spawn {
                by,
                name,
                grant,
                ceiling,
                long,
                prod,
                can_delegate,
            } => {
                let mut body = json!({
                    "grant": grant.iter().map(|g| PARTS[*g].0).collect::<Vec<_>>().join("\n"),
                    "ttl_seconds": if long { 7200 } else { 600 },
                    "ceiling": ceiling,
                    "can_delegate": can_delegate,
                    "task": if prod { "prod change" } else { "a task" },
                });
                if let Some(n) = name {
                    body["agent_id"] = json!(NAMES[n]);
                }
                let foreign = grant.iter().any(|g| PARTS[*g].1);
                self.spawn(by, body, foreign, None);
            }
            Op::CarryOut { by, pending } => {
                let Some(p) = self.pick_pending(pending, true) else {
                    return;
                };
                let Kind::Delegation(mut body) = p.kind.clone() else {
                    return;
                };
                body["approved_request"] = json!(p.rid);
                let status = self.request_status(&p.rid).0;
                let (token, caller, _) = self.token(by);
                let r = self.d.call("POST", "/v1/delegations", Some(&token), Some(&body));
                if r.status == 201 {
                    note("approval carried out");
                    assert_eq!(
                        caller,
                        Some(p.requester),
                        "an approval was carried out by someone else: {}",
                        r.text()
                    );
                    assert_eq!(
                        status,
                        "approved",
                        "a delegation not approved was applied: {}",
                        r.text()
                    );
                    assert!(
                        self.used.insert(p.rid.clone()),
                        "an approval was used twice: {}",
                        r.text()
                    );
                    self.record_child(p.requester, &body, &r.json());
                }
            }
            Op::Decide { by, pending, decision } => {
                let Some(p) = self.pick_pending(pending, false) else {
                    return;
                };
                let (status, approver) = self.request_status(&p.rid);
                let by = by.unwrap_or_else(|| match self.agents.iter().position(|a| a.id == approver) {
                    Some(i) => Who::Agent(i),
                    None => Who::Admin,
                });
                let (token, caller, _) = self.token(by);
                let decision = ["approve", "deny", "escalate"][decision];
                let r = self.d.call(
                    "POST",
                    &format!("/v1/permission-requests/{}", p.rid),
                    Some(&token),
                    Some(&json!({"decision": decision, "reason": "model"})),
                );
                if r.status != 200 {
                    note("decision refused");
                    return;
                }
                assert_eq!(status, "pending", "a closed request was decided: {}", r.text());
                if let Some(c) = caller {
                    let entitled = approver != "admin"
                        && self.agents[c].id == approver
                        && self.is_strict_ancestor(c, p.requester)
                        && self.live(c);
                    assert!(
                        entitled,
                        "`{}` decided request {} waiting on `{approver}` for `{}`: {}",
                        self.agents[c].id,
                        p.rid,
                        self.agents[p.requester].id,
                        r.text()
                    );
                }
                if let (Kind::Permission(parts), "approve") = (&p.kind, decision) {
                    note("permission extended");
                    assert_eq!(r.json()["status"], "approved", "{}", r.text());
                    let chain = self.chain(p.requester);
                    // The bundle's lead is never extended through the API: a human's approval
                    // starts below it.
                    let start = match caller {
                        None => chain.iter().rposition(|a| *a == 0).map_or(0, |at| at + 1),
                        Some(c) => chain.iter().position(|a| *a == c).unwrap() + 1,
                    };
                    assert!(start < chain.len(), "a bundle agent's grant was extended: {}", r.text());
                    for a in &chain[start..] {
                        self.agents[*a].grant.extend(parts.iter().cloned());
                    }
                }
            }
            Op::Ask { by, grant } => {
                let i = self.agent(by);
                let parts: Vec<String> = grant.iter().map(|g| PARTS[*g].0.to_owned()).collect();
                let foreign = grant.iter().any(|g| PARTS[*g].1);
                let r = self.d.call(
                    "POST",
                    "/v1/permission-requests",
                    Some(&self.agents[i].token.clone()),
                    Some(&json!({"grant": parts.join("\n"), "reason": "model"})),
                );
                if r.status == 202 {
                    assert!(
                        self.live(i),
                        "a request was filed for an agent that is not live: {}",
                        r.text()
                    );
                    assert!(!foreign, "a grant about another principal was accepted: {}", r.text());
                    let rid = r.json()["request_id"].as_str().unwrap().to_owned();
                    self.pending.push(Pending {
                        rid,
                        requester: i,
                        kind: Kind::Permission(parts),
                    });
                }
            }
            Op::Revoke { by, target, complete } => {
                let t = self.agent(target);
                let (token, caller, forged) = self.token(by);
                let r = if complete {
                    self.d.call(
                        "POST",
                        &format!("/v1/delegations/{}/complete", self.agents[t].id),
                        Some(&token),
                        None,
                    )
                } else {
                    self.d.call(
                        "DELETE",
                        &format!("/v1/delegations/{}", self.agents[t].id),
                        Some(&token),
                        None,
                    )
                };
                if forged {
                    assert_eq!(r.status, 401, "a forged credential was accepted: {}", r.text());
                }
                if r.status != 200 {
                    return;
                }
                note("revoked");
                if let Some(c) = caller {
                    let started_it = self.agents[t].session.as_ref().is_some_and(|s| s.caller == c);
                    let entitled =
                        self.live(c) && (self.is_strict_ancestor(c, t) || (complete && c == t) || started_it);
                    assert!(
                        entitled,
                        "`{}` ended `{}`: {}",
                        self.agents[c].id,
                        self.agents[t].id,
                        r.text()
                    );
                }
                let revoked: BTreeSet<String> = r.json()["revoked"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                for i in self.ended_with(t) {
                    let a = &self.agents[i];
                    if !a.revoked && self.d.now < a.expires_at {
                        assert!(
                            revoked.contains(&a.id),
                            "`{}` outlived the revocation of `{}`: {}",
                            a.id,
                            self.agents[t].id,
                            r.text()
                        );
                    }
                    self.agents[i].revoked = true;
                }
            }
            Op::Authorize {
                endpoint,
                principal,
                pair,
            } => self.authorize(endpoint, principal, pair),
            Op::Advance { secs } => self.d.advance(secs),
            Op::Reload(variant) => self.reload(variant),
            Op::Restart { kill } => self.restart(kill),
            Op::SpawnRacingRevoke { by } => self.spawn_racing_revoke(by),
            Op::RacingCarryOut { by } => self.racing_carry_out(by),
            Op::Invoke { by, callee, long } => self.invoke(by, callee, long),
        }
    }

    /// What the oracle says agent `i` may do: a session of the `worker` is the admin policies
    /// asked about the worker, under the session's bounds.
    fn expected(&self, oracle: &Oracle, i: usize) -> BTreeSet<Pair> {
        match &self.agents[i].session {
            Some(Session { callee: None, .. }) => {
                let a = &self.agents[i];
                oracle.declared_bounded("worker", self.live(i), a.ceiling.min(WORKER_CEILING), a.taint)
            }
            _ => oracle.managed(&self.facts(i)),
        }
    }

    /// The invocation chain, depth and taint an invocation by `i` carries.
    fn acting(&self, i: usize) -> (Vec<String>, i64, i64) {
        let a = &self.agents[i];
        match &a.session {
            None => (vec![a.id.clone()], 0, a.taint),
            Some(s) => {
                let callee_taint = s.callee.map_or(0, |c| self.agents[c].taint);
                (s.chain.clone(), s.depth, a.taint.max(callee_taint))
            }
        }
    }

    /// An invocation: deputy's answer must be exactly what the model predicts (the bundle's
    /// `invoke_agent` rules permit every invocation, so deputy's own rules decide).
    fn invoke(&mut self, by: usize, callee: Option<usize>, long: bool) {
        let i = self.agent(by);
        let callee = callee.map(|c| self.agent(c));
        let callee_id = callee.map_or("worker".to_owned(), |c| self.agents[c].id.clone());
        let ttl = if long { 7200 } else { 600 };
        let body = json!({"callee": {"type": "Agent", "id": callee_id}, "task": "model", "ttl_seconds": ttl});
        let token = self.agents[i].token.clone();
        let (chain, depth, taint) = self.acting(i);
        let callee_ceiling = callee.map_or(WORKER_CEILING, |c| self.chain_ceiling(c));
        let predicted = if !self.live(i) {
            (401, "unauthenticated")
        } else if callee.is_some_and(|c| self.agents[c].session.is_some()) {
            (403, "session_restricted")
        } else if callee.is_some_and(|c| !self.live(c)) {
            (404, "agent_not_found")
        } else if chain.contains(&callee_id) {
            (409, "invocation_cycle")
        } else if depth + 1 > 3 {
            (403, "invocation_too_deep")
        } else if taint > callee_ceiling {
            (403, "taint_above_ceiling")
        } else if self.agents.len() > MAX_AGENTS {
            return;
        } else {
            (201, "")
        };
        let r = self.d.call("POST", "/v1/invocations", Some(&token), Some(&body));
        assert_eq!(
            r.status,
            predicted.0,
            "`{}` (chain {chain:?}, taint {taint}) invoking `{callee_id}` (ceiling {callee_ceiling}): expected {predicted:?}, got {}",
            self.agents[i].id,
            r.text()
        );
        if r.status != 201 {
            note("invocation refused");
            assert_eq!(r.json()["code"], predicted.1, "{}", r.text());
            if predicted.1 == "invocation_cycle" {
                note("invocation cycle");
            }
            return;
        }
        note("invoked");
        let v = r.json();
        let callee_taint = callee.map_or(0, |c| self.agents[c].taint);
        assert_eq!(
            v["taint"],
            json!(taint.max(callee_taint)),
            "a session's starting taint: {v}"
        );
        assert_eq!(v["depth"], json!(depth + 1), "{v}");
        let expires_at = v["expires_at"].as_i64().unwrap();
        let callee_expires = callee.map_or(i64::MAX, |c| self.agents[c].expires_at);
        assert!(
            expires_at <= self.agents[i].expires_at && expires_at <= callee_expires && expires_at <= self.d.now + ttl,
            "a session outlives its caller, its callee or its request: {v}"
        );
        let mut session_chain = chain;
        session_chain.push(callee_id);
        assert_eq!(v["chain"], json!(session_chain), "{v}");
        // The caller never holds the session's credential: the callee claims it, once.
        assert!(
            v.get("credential").is_none(),
            "the caller got the session's credential: {v}"
        );
        let sid = v["session_id"].as_str().unwrap().to_owned();
        let accept = format!("/v1/invocations/{sid}/accept");
        let by_caller = self.d.call("POST", &accept, Some(&token), Some(&json!({})));
        assert_eq!(
            by_caller.status,
            403,
            "the caller claimed the session: {}",
            by_caller.text()
        );
        let callee_token = callee.map_or(ADMIN.to_owned(), |c| self.agents[c].token.clone());
        let accepted = self.d.call("POST", &accept, Some(&callee_token), Some(&json!({})));
        assert_eq!(accepted.status, 200, "the callee could not claim: {}", accepted.text());
        let again = self.d.call("POST", &accept, Some(&callee_token), Some(&json!({})));
        assert_eq!(again.status, 409, "a session was claimed twice: {}", again.text());
        self.agents.push(Agent {
            id: sid,
            token: accepted.json()["credential"].as_str().unwrap().to_owned(),
            parent: None,
            grant: Vec::new(),
            ceiling: v["ceiling"].as_i64().unwrap(),
            can_delegate: false,
            depth: depth + 1,
            expires_at,
            revoked: false,
            taint: taint.max(callee_taint),
            session: Some(Session {
                caller: i,
                callee,
                chain: session_chain,
                depth: depth + 1,
            }),
        });
        // The caller (and everyone joined to it) holds at least the session's taint from now on.
        let session = self.agents.len() - 1;
        self.flow_taint(session, taint.max(callee_taint));
    }

    fn pick_pending(&self, i: usize, delegation: bool) -> Option<Pending> {
        let candidates: Vec<&Pending> = self
            .pending
            .iter()
            .filter(|p| !delegation || matches!(p.kind, Kind::Delegation(_)))
            .collect();
        (!candidates.is_empty()).then(|| candidates[i % candidates.len()].clone())
    }

    fn request_status(&self, rid: &str) -> (String, String) {
        let v = self
            .d
            .call("GET", &format!("/v1/permission-requests/{rid}"), Some(ADMIN), None)
            .json();
        (
            v["status"].as_str().unwrap().to_owned(),
            v["approver"].as_str().unwrap().to_owned(),
        )
    }

    /// Sends a spawn and checks that an applied or pending answer was allowed.
    fn spawn(&mut self, by: Who, body: Value, foreign: bool, approved: Option<&str>) -> Option<usize> {
        let (token, caller, forged) = self.token(by);
        let r = self.d.call("POST", "/v1/delegations", Some(&token), Some(&body));
        if forged {
            assert_eq!(r.status, 401, "a forged credential was accepted: {}", r.text());
            return None;
        }
        if r.status != 201 && r.status != 202 {
            note("spawn refused");
            if std::env::var_os("DEPUTY_MODEL_DEBUG").is_some() {
                eprintln!("refused {} {}", r.status, r.json()["code"]);
            }
            return None;
        }
        note(if r.status == 201 {
            "spawn applied"
        } else {
            "spawn pending"
        });
        assert!(!foreign, "a grant about another principal was accepted: {}", r.text());
        if let Some(n) = body["agent_id"].as_str() {
            assert!(
                FREE_NAMES.contains(&n),
                "the reserved name `{n}` was accepted: {}",
                r.text()
            );
            assert!(
                !self.names.contains_key(n),
                "the name `{n}` was given twice: {}",
                r.text()
            );
        }
        let Some(parent) = caller else {
            assert_eq!(r.status, 201, "a root spawn was left pending: {}", r.text());
            return Some(self.record_root(&body, &r.json()));
        };
        assert!(self.live(parent), "an agent that is not live spawned: {}", r.text());
        let locked = self.chain(parent).into_iter().any(|a| !self.agents[a].can_delegate);
        assert!(
            !locked,
            "an agent with can_delegate = false on its chain spawned: {}",
            r.text()
        );
        let p = &self.agents[parent];
        let ceiling = body["ceiling"].as_i64().unwrap().min(self.chain_ceiling(parent));
        assert!(p.taint <= ceiling, "a child started above its ceiling: {}", r.text());
        let depth = p.depth + 1;
        assert!(depth <= 3, "a child beyond the depth limit: {}", r.text());
        if r.status == 202 {
            let approvers = r.json()["approvers"].as_array().unwrap().clone();
            for a in approvers {
                let a = a.as_str().unwrap();
                let ok = a == "admin" || (a == "lead" && self.is_strict_ancestor(0, parent));
                assert!(
                    ok,
                    "`{a}` is not an identity that may approve for `{}`: {}",
                    p.id,
                    r.text()
                );
            }
            self.pending.push(Pending {
                rid: r.json()["request_id"].as_str().unwrap().to_owned(),
                requester: parent,
                kind: Kind::Delegation(body),
            });
            return None;
        }
        if approved.is_none() {
            let ttl = body["ttl_seconds"].as_i64().unwrap().min(p.expires_at - self.d.now);
            let gated = ttl > 3600 || depth > 1 || body["task"].as_str().unwrap().contains("prod");
            assert!(
                !gated,
                "a delegation the `@ask` rules gate was applied unapproved: {}",
                r.text()
            );
        }
        Some(self.record_child(parent, &body, &r.json()))
    }

    fn record_root(&mut self, body: &Value, resp: &Value) -> usize {
        self.push(None, body, resp, 0, 0)
    }

    fn record_child(&mut self, parent: usize, body: &Value, resp: &Value) -> usize {
        let (taint, depth) = (self.agents[parent].taint, self.agents[parent].depth + 1);
        let asked = body["ceiling"].as_i64().unwrap();
        assert_eq!(
            resp["ceiling"],
            json!(asked.min(self.chain_ceiling(parent))),
            "a child's ceiling is not capped at its parent's chain: {resp}"
        );
        assert_eq!(
            resp["taint"],
            json!(taint),
            "a child did not start with its parent's taint: {resp}"
        );
        self.push(Some(parent), body, resp, taint, depth)
    }

    fn push(&mut self, parent: Option<usize>, body: &Value, resp: &Value, taint: i64, depth: i64) -> usize {
        let id = resp["delegation_id"].as_str().unwrap().to_owned();
        let i = self.agents.len();
        if let Some(n) = body["agent_id"].as_str() {
            self.names.insert(n.to_owned(), i);
        }
        self.agents.push(Agent {
            id,
            token: resp["credential"].as_str().unwrap().to_owned(),
            parent,
            grant: vec![body["grant"].as_str().unwrap().to_owned()],
            ceiling: resp["ceiling"].as_i64().unwrap(),
            can_delegate: body["can_delegate"].as_bool().unwrap(),
            depth,
            expires_at: resp["expires_at"].as_i64().unwrap(),
            revoked: false,
            taint,
            session: None,
        });
        i
    }

    fn authorize(&mut self, endpoint: Endpoint, principal: Principal, pair: usize) {
        let (action, ty, rid) = DOMAIN[pair];
        let oracle = self.oracle();
        let (id, expected, managed) = match principal {
            Principal::Agent(i) => {
                let i = self.agent(i);
                let expected = self
                    .expected(&oracle, i)
                    .contains(&(action.to_owned(), ty.to_owned(), rid.to_owned()));
                (self.agents[i].id.clone(), expected, Some(i))
            }
            Principal::Worker => (
                "worker".to_owned(),
                oracle
                    .declared("worker")
                    .contains(&(action.to_owned(), ty.to_owned(), rid.to_owned())),
                None,
            ),
            Principal::Unknown(k) => (UNKNOWN[k].to_owned(), false, None),
        };
        let cedar = json!({"principal": {"type": "Agent", "id": id}, "action": {"type": "Action", "id": action},
                           "resource": {"type": ty, "id": rid}});
        let authzen = json!({"subject": {"type": "Agent", "id": id}, "action": {"name": action},
                             "resource": {"type": ty, "id": rid}});
        let (path, body) = match endpoint {
            Endpoint::Authorize => ("/v1/authorize", cedar),
            Endpoint::Batch => ("/v1/authorize/batch", json!({"requests": [cedar]})),
            Endpoint::AuthZen => ("/access/v1/evaluation", authzen),
            Endpoint::AuthZenBatch => ("/access/v1/evaluations", json!({"evaluations": [authzen]})),
        };
        let r = self.d.call("POST", path, None, Some(&body));
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let allowed = match endpoint {
            Endpoint::Authorize => v["decision"] == "Allow",
            Endpoint::Batch => v["responses"][0]["decision"] == "Allow",
            Endpoint::AuthZen => v["decision"] == true,
            Endpoint::AuthZenBatch => v["evaluations"][0]["decision"] == true,
        };
        assert_eq!(
            allowed, expected,
            "`{id}` {action} {ty}::{rid} through {path}: deputy said {v}, the oracle {expected}"
        );
        note(if allowed { "allowed" } else { "denied" });
        if let (true, Some(i), Some(level)) = (allowed, managed, oracle.source_level(action, ty, rid)) {
            if self.agents[i].taint < level {
                self.agents[i].taint = level;
                self.flow_taint(i, level);
            }
        }
    }

    fn variant_files(&self, schema_break: bool, declare: Option<&str>) {
        let dir = self.d.bundle.path();
        let fx = fixture();
        let mut things = std::fs::read_to_string(fx.join("entities/things.json")).unwrap();
        if self.moved {
            things = things.replace(
                r#""id": "proj/a/c" }, "attrs": { "classification": 0 }, "parents": [{ "type": "Folder", "id": "proj/a" }]"#,
                r#""id": "proj/a/c" }, "attrs": { "classification": 0 }, "parents": [{ "type": "Folder", "id": "proj/b" }]"#,
            );
        }
        let mut agents = std::fs::read_to_string(fx.join("entities/agents.json")).unwrap();
        if self.lead_low {
            agents = agents.replace(
                r#""id": "lead" }, "attrs": { "can_delegate": true, "ceiling": 3"#,
                r#""id": "lead" }, "attrs": { "can_delegate": false, "ceiling": 1"#,
            );
        }
        let mut schema = std::fs::read_to_string(fx.join("schema/adversary.cedarschema")).unwrap();
        if schema_break {
            schema = schema.replace("team?: String", "team: String");
            agents = agents.replace(r#""depth": 0 }"#, r#""depth": 0, "team": "core" }"#);
        }
        if let Some(id) = declare {
            agents = agents.replacen(
                "[",
                &format!(r#"[ {{ "uid": {{ "type": "Agent", "id": "{id}" }}, "attrs": {{ "can_delegate": true, "ceiling": 3, "depth": 0 }}, "parents": [] }},"#),
                1,
            );
        }
        std::fs::write(dir.join("entities/things.json"), things).unwrap();
        std::fs::write(dir.join("entities/agents.json"), agents).unwrap();
        std::fs::write(dir.join("schema/adversary.cedarschema"), schema).unwrap();
    }

    fn reload(&mut self, variant: Variant) {
        match variant {
            Variant::Move(m) => self.moved = m,
            Variant::LeadLow(l) => self.lead_low = l,
            Variant::SchemaBreak | Variant::DeclareManaged(_) => {}
        }
        let declare = match variant {
            Variant::DeclareManaged(i) => {
                if self.names.is_empty() {
                    return;
                }
                let names: Vec<&String> = self.names.keys().collect();
                Some(names[i % names.len()].clone())
            }
            _ => None,
        };
        let breaks = matches!(variant, Variant::SchemaBreak);
        self.variant_files(breaks, declare.as_deref());
        let last = self.d.reload();
        if breaks || declare.is_some() {
            note("reload refused");
            assert_eq!(
                last["outcome"], "failed",
                "a bundle that cannot hold the agents was installed: {last}"
            );
            let code = if breaks {
                "schema_lacks_agent_model"
            } else {
                "agent_id_conflict"
            };
            assert_eq!(last["problems"][0]["code"], code, "{last}");
            // Put the last good files back, as the admin would.
            self.variant_files(false, None);
        } else {
            note("reload installed");
            assert_ne!(last["outcome"], "failed", "{last}");
            self.sync_lead();
            let drift = crate::common::status_reproved(self.d.addr)["delegation"]["drift"].clone();
            if drift.as_array().is_some_and(|d| !d.is_empty()) {
                note("drift");
            }
        }
    }

    fn restart(&mut self, kill: bool) {
        self.settle();
        note(if kill { "kill -9" } else { "restart" });
        let before = self.views();
        self.d.restart(kill);
        let after = self.views();
        assert_eq!(before, after, "the state changed across a restart (kill -9: {kill})");
    }

    /// Waits until the expiry sweep has recorded everything the clock ended (it runs each
    /// second), so that what deputy shows no longer changes by itself.
    fn settle(&self) {
        let start = std::time::Instant::now();
        loop {
            let unsettled: Vec<Value> = self
                .views()
                .into_iter()
                .filter(|v| {
                    let agent_ended = v.get("delegation_id").is_some() && v["status"] == "expired";
                    let request_ended = v.get("request_id").is_some()
                        && v["status"] == "pending"
                        && v["expires_at"].as_i64().unwrap() <= self.d.now;
                    agent_ended || request_ended
                })
                .collect();
            if unsettled.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the expiry sweep never recorded these (now {}): {unsettled:?}",
                self.d.now
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What deputy shows of every agent and request, for comparing across restarts.
    fn views(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for a in &self.agents {
            let mut v = self
                .d
                .call("GET", &format!("/v1/delegations/{}", a.id), Some(ADMIN), None)
                .json();
            v.as_object_mut().unwrap().remove("bundle_version");
            out.push(v);
        }
        for p in &self.pending {
            out.push(
                self.d
                    .call("GET", &format!("/v1/permission-requests/{}", p.rid), Some(ADMIN), None)
                    .json(),
            );
        }
        out
    }

    /// A spawn authenticated before its body arrives races the revocation of its parent: once
    /// the revocation answered, the spawn must not apply.
    fn spawn_racing_revoke(&mut self, by: usize) {
        let i = self.agent(by);
        if i == 0 || !self.live(i) {
            return;
        }
        let body = serde_json::to_vec(&json!({"grant": PARTS[0].0, "ttl_seconds": 60, "ceiling": 3,
                                               "task": "racing"}))
        .unwrap();
        let mut stream = TcpStream::connect(self.d.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "POST /v1/delegations HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            self.agents[i].token,
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut interim = [0u8; 25];
        stream.read_exact(&mut interim).unwrap();
        assert!(
            interim.starts_with(b"HTTP/1.1 100"),
            "{}",
            String::from_utf8_lossy(&interim)
        );
        note("race against revocation");
        let r = self.d.call(
            "DELETE",
            &format!("/v1/delegations/{}", self.agents[i].id),
            Some(ADMIN),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        for j in self.ended_with(i) {
            self.agents[j].revoked = true;
        }
        stream.write_all(&body).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(
            !text.contains("HTTP/1.1 201"),
            "a spawn was applied after its parent's revocation: {text}"
        );
    }

    /// Concurrent carry-outs of one approval: at most one child.
    fn racing_carry_out(&mut self, by: usize) {
        let i = self.agent(by);
        if self.agents.len() > MAX_AGENTS {
            return;
        }
        let body = json!({"grant": PARTS[0].0, "ttl_seconds": 60, "ceiling": 3, "can_delegate": false,
                          "task": "prod race"});
        let token = self.agents[i].token.clone();
        let r = self.d.call("POST", "/v1/delegations", Some(&token), Some(&body));
        if r.status != 202 {
            if r.status == 201 {
                panic!("a production delegation was applied unapproved: {}", r.text());
            }
            return;
        }
        let rid = r.json()["request_id"].as_str().unwrap().to_owned();
        let a = self.d.call(
            "POST",
            &format!("/v1/permission-requests/{rid}"),
            Some(ADMIN),
            Some(&json!({"decision": "approve"})),
        );
        if a.json()["status"] != "approved" {
            // Another approver's turn first (a deep chain under the lead): leave it pending.
            self.pending.push(Pending {
                rid,
                requester: i,
                kind: Kind::Delegation(body),
            });
            return;
        }
        let mut carry = body.clone();
        carry["approved_request"] = json!(rid);
        note("race for one approval");
        let addr = self.d.addr;
        let barrier = std::sync::Barrier::new(4);
        let responses: Vec<super::common::Resp> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (carry, token, barrier) = (&carry, &token, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let bytes = serde_json::to_vec(carry).unwrap();
                        let auth = format!("Bearer {token}");
                        super::common::send(
                            addr,
                            "POST",
                            "/v1/delegations",
                            &[("Content-Type", "application/json"), ("Authorization", &auth)],
                            Some(&bytes),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let applied: Vec<&super::common::Resp> = responses.iter().filter(|r| r.status == 201).collect();
        assert!(applied.len() <= 1, "one approval applied {} children", applied.len());
        if let Some(r) = applied.first() {
            note("approval carried out");
            self.used.insert(rid);
            self.record_child(i, &carry, &r.json());
        }
    }

    /// The checks made after every step.
    pub fn check(&self) {
        let oracle = self.oracle();
        for (i, a) in self.agents.iter().enumerate() {
            let caps = self
                .d
                .call("GET", &format!("/v1/agents/{}/capabilities", a.id), Some(ADMIN), None);
            assert_eq!(caps.status, 200, "{}", caps.text());
            let got: BTreeSet<Pair> = caps.json()["allowed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["action"].as_str().unwrap().to_owned(),
                        c["resource"]["type"].as_str().unwrap().to_owned(),
                        c["resource"]["id"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            let want = self.expected(&oracle, i);
            assert_eq!(
                got,
                want,
                "`{}` (chain {:?}, live {}, taint {}) may do {:?} more and {:?} less than admin AND each ancestor's \
                 delegable view AND its own grant allow: {}",
                a.id,
                self.chain(i).iter().map(|c| &self.agents[*c].id).collect::<Vec<_>>(),
                self.live(i),
                a.taint,
                got.difference(&want).collect::<Vec<_>>(),
                want.difference(&got).collect::<Vec<_>>(),
                caps.text(),
            );
            let shown = self
                .d
                .call("GET", &format!("/v1/delegations/{}", a.id), Some(ADMIN), None)
                .json();
            assert_eq!(shown["taint"], json!(a.taint), "`{}`'s taint: {shown}", a.id);
            if a.revoked {
                assert_eq!(shown["status"], "revoked", "{shown}");
            }
        }
        // Principals deputy does not manage: the bundle's own, and unknown ones.
        let mut requests = Vec::new();
        for (action, ty, rid) in DOMAIN {
            for id in ["worker"].iter().chain(UNKNOWN) {
                requests.push(
                    json!({"principal": {"type": "Agent", "id": id}, "action": {"type": "Action", "id": action},
                                     "resource": {"type": ty, "id": rid}}),
                );
            }
        }
        let answers = self
            .d
            .call(
                "POST",
                "/v1/authorize/batch",
                None,
                Some(&json!({"requests": requests})),
            )
            .json();
        let worker = oracle.declared("worker");
        for (n, r) in answers["responses"].as_array().unwrap().iter().enumerate() {
            let (action, ty, rid) = DOMAIN[n / (1 + UNKNOWN.len())];
            let pair = (action.to_owned(), ty.to_owned(), rid.to_owned());
            let expected = n % (1 + UNKNOWN.len()) == 0 && worker.contains(&pair);
            assert_eq!(r["decision"] == "Allow", expected, "{} {r}", requests[n]);
            if n % (1 + UNKNOWN.len()) != 0 {
                assert_eq!(r["denied_by"]["bound"], "unknown_agent", "{} {r}", requests[n]);
            }
        }
        // Each approval was carried out at most once.
        let audit = self.d.call("GET", "/v1/audit", Some(ADMIN), None).json();
        let mut uses: BTreeMap<String, usize> = BTreeMap::new();
        for r in audit["records"].as_array().unwrap() {
            if r["event"] == "approval_used" {
                *uses
                    .entry(r["details"]["request_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
        assert!(
            uses.values().all(|n| *n == 1),
            "an approval was used more than once: {uses:?}"
        );
        assert_eq!(
            uses.keys().cloned().collect::<BTreeSet<_>>(),
            self.used,
            "approvals used"
        );
    }
}

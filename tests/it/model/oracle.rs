//! The model's oracle: what an agent may do, computed from the model's own record of agents and
//! grants with Cedar's own `Authorizer`, following DESIGN.md's definition and none of deputy's
//! code: the admin policies asked about the agent and about each ancestor (same action,
//! resource and context) AND, for each strict ancestor, its grant without the
//! `@delegable("false")` permits linked to the agent AND the agent's own whole grant linked to
//! it; deputy's own bounds (live, the lowest ceiling on the chain, no writing below the taint)
//! on top. A managed agent's entity carries the lowest ceiling on its chain.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression, Schema, SlotId,
};

/// The requests every check asks about: (action, resource type, resource id).
pub const DOMAIN: &[(&str, &str, &str)] = &[
    ("read", "Doc", "public"),
    ("read", "Doc", "internal"),
    ("read", "Doc", "secret"),
    ("read", "Doc", "top"),
    ("read", "Doc", "in-c"),
    ("read", "Doc", "in-b"),
    ("read", "Folder", "proj"),
    ("read", "Folder", "proj/a"),
    ("read", "Folder", "proj/b"),
    ("read", "Folder", "proj/a/c"),
    ("write", "Doc", "public"),
    ("write", "Doc", "internal"),
    ("write", "Doc", "secret"),
    ("write", "Doc", "top"),
    ("write", "Doc", "in-c"),
    ("write", "Doc", "in-b"),
    ("write", "Folder", "proj"),
    ("write", "Folder", "proj/a"),
    ("write", "Folder", "proj/b"),
    ("write", "Folder", "proj/a/c"),
    ("send", "Channel", "public"),
    ("send", "Channel", "internal"),
];

pub type Pair = (String, String, String);

/// What the oracle needs to know about one agent.
pub struct AgentFacts<'a> {
    pub id: &'a str,
    /// Root first, this agent last: (holder id, its grant text).
    pub chain: Vec<(&'a str, String)>,
    pub live: bool,
    pub ceiling: i64,
    pub taint: i64,
}

/// One bundle as the oracle reads it (Cedar's own parsers).
pub struct Oracle {
    schema: Schema,
    admin: PolicySet,
    entities: Entities,
    authorizer: Authorizer,
}

impl Oracle {
    /// Reads the bundle at `dir`, and adds `agents` (id, can_delegate, ceiling, depth) as the
    /// entities deputy keeps for the agents it manages.
    pub fn load(dir: &Path, agents: &[(String, bool, i64, i64)]) -> Oracle {
        let mut schema_src = String::new();
        for e in std::fs::read_dir(dir.join("schema")).unwrap() {
            schema_src.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
        }
        let schema = Schema::from_cedarschema_str(&schema_src).unwrap().0;
        let mut policies = String::new();
        let mut files: Vec<_> = std::fs::read_dir(dir.join("policies"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            policies.push_str(&std::fs::read_to_string(f).unwrap());
            policies.push('\n');
        }
        let admin = PolicySet::from_str(&policies).unwrap();
        let mut all = Vec::new();
        for e in std::fs::read_dir(dir.join("entities")).unwrap() {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap();
            all.extend(v.as_array().unwrap().iter().cloned());
        }
        let bundle = Entities::from_json_value(serde_json::Value::Array(all), Some(&schema)).unwrap();
        let managed: Vec<Entity> = agents
            .iter()
            .map(|(id, can_delegate, ceiling, depth)| {
                let attrs = HashMap::from([
                    ("can_delegate".to_owned(), RestrictedExpression::new_bool(*can_delegate)),
                    ("ceiling".to_owned(), RestrictedExpression::new_long(*ceiling)),
                    ("depth".to_owned(), RestrictedExpression::new_long(*depth)),
                ]);
                Entity::new(agent(id), attrs, HashSet::new()).unwrap()
            })
            .collect();
        let entities = bundle.add_entities(managed, Some(&schema)).unwrap();
        Oracle {
            schema,
            admin,
            entities,
            authorizer: Authorizer::new(),
        }
    }

    fn classification(&self, ty: &str, id: &str) -> i64 {
        match self.entities.get(&uid(ty, id)).and_then(|e| e.attr("classification")) {
            Some(Ok(cedar_policy::EvalResult::Long(l))) => l,
            _ => panic!("`{ty}::{id}` has no classification"),
        }
    }

    fn request(&self, principal: &str, action: &str, ty: &str, id: &str, taint: Option<i64>) -> Request {
        let action_uid = uid("Action", action);
        let context = match taint {
            Some(t) => {
                Context::from_json_value(serde_json::json!({"taint": t}), Some((&self.schema, &action_uid))).unwrap()
            }
            None => Context::empty(),
        };
        Request::new(agent(principal), action_uid, uid(ty, id), context, Some(&self.schema)).unwrap()
    }

    fn allows(&self, set: &PolicySet, request: &Request) -> bool {
        self.authorizer.is_authorized(request, set, &self.entities).decision() == Decision::Allow
    }

    /// What a managed agent may do in `DOMAIN`.
    pub fn managed(&self, a: &AgentFacts<'_>) -> BTreeSet<Pair> {
        let mut out = BTreeSet::new();
        if !a.live {
            return out;
        }
        let last = a.chain.len() - 1;
        let hops: Vec<PolicySet> = a
            .chain
            .iter()
            .enumerate()
            .map(|(i, (holder, grant))| linked(holder, grant, a.id, i < last))
            .collect();
        for (action, ty, id) in DOMAIN {
            let c = self.classification(ty, id);
            if c > a.ceiling {
                continue;
            }
            let sink = *action != "read";
            if sink && c < a.taint {
                continue;
            }
            let request = self.request(a.id, action, ty, id, Some(a.taint));
            let admin = a
                .chain
                .iter()
                .all(|(holder, _)| self.allows(&self.admin, &self.request(holder, action, ty, id, Some(a.taint))));
            if admin && hops.iter().all(|h| self.allows(h, &request)) {
                out.insert((action.to_string(), ty.to_string(), id.to_string()));
            }
        }
        out
    }

    /// What a principal the bundle declares (and deputy does not manage) may do: the admin
    /// policies alone.
    pub fn declared(&self, id: &str) -> BTreeSet<Pair> {
        DOMAIN
            .iter()
            .filter(|(action, ty, rid)| self.allows(&self.admin, &self.request(id, action, ty, rid, None)))
            .map(|(a, t, i)| (a.to_string(), t.to_string(), i.to_string()))
            .collect()
    }

    /// What a session of a principal the bundle declares without a grant may do: the admin
    /// policies asked about that principal, under the session's liveness, ceiling and taint.
    pub fn declared_bounded(&self, id: &str, live: bool, ceiling: i64, taint: i64) -> BTreeSet<Pair> {
        if !live {
            return BTreeSet::new();
        }
        DOMAIN
            .iter()
            .filter(|(action, ty, rid)| {
                let c = self.classification(ty, rid);
                c <= ceiling
                    && (*action == "read" || c >= taint)
                    && self.allows(&self.admin, &self.request(id, action, ty, rid, Some(taint)))
            })
            .map(|(a, t, i)| (a.to_string(), t.to_string(), i.to_string()))
            .collect()
    }

    /// The classification of a resource in `DOMAIN`, and whether its action raises taint.
    pub fn source_level(&self, action: &str, ty: &str, id: &str) -> Option<i64> {
        (action == "read").then(|| self.classification(ty, id))
    }
}

/// `grant` (held by `holder`) linked to `principal`; without the non-delegable permits when it
/// is an ancestor's.
fn linked(holder: &str, grant: &str, principal: &str, delegable_only: bool) -> PolicySet {
    let parsed = PolicySet::from_str(grant).unwrap();
    let mut out = PolicySet::new();
    let keep = |effect: cedar_policy::Effect, annotation: Option<&str>| {
        !(delegable_only && effect == cedar_policy::Effect::Permit && annotation == Some("false"))
    };
    for p in parsed.policies() {
        if keep(p.effect(), p.annotation("delegable")) {
            out.add(p.new_id(PolicyId::new(format!("{holder}/{}", p.id()))))
                .unwrap();
        }
    }
    for t in parsed.templates() {
        if !keep(t.effect(), t.annotation("delegable")) {
            continue;
        }
        let tid = PolicyId::new(format!("{holder}/t/{}", t.id()));
        out.add_template(t.clone().new_id(tid.clone())).unwrap();
        out.link(
            tid,
            PolicyId::new(format!("{holder}/{}", t.id())),
            HashMap::from([(SlotId::principal(), agent(principal))]),
        )
        .unwrap();
    }
    out
}

pub fn agent(id: &str) -> EntityUid {
    uid("Agent", id)
}

pub fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(EntityTypeName::from_str(ty).unwrap(), EntityId::new(id))
}

//! Where a raised taint flows: along the live invocation and delegation links.
//!
//! INVARIANT (a delegation is a channel both ways): a child's results reach the parent that
//! spawned it (through the runtime, where deputy cannot see them), and what the parent learns
//! later may reach a child it spawned before. So a raise of a managed child raises its parent,
//! and a raise of an agent raises its live children: an agent and the live children it spawned
//! hold the same taint (a child never starts below its parent's, see `spawn`). Without this a
//! parent could read nothing itself, have a child read a CONFIDENTIAL file and hand it back,
//! and then write it to a PUBLIC sink. Agents the bundle declares are roots: no link joins them
//! to each other, only to the children they spawn.
//!
//! INVARIANT (an invocation is a channel both ways): while a session is live, what its caller
//! holds may reach it (a follow-up message) and what it holds may reach its caller (a result, a
//! partial answer, before or without `complete`); what its callee holds may reach it too. So a
//! raise of any of them raises the others: a caller and each live session it started hold the
//! same taint, and a session never holds less than its callee. The callee itself is not raised
//! by its sessions: one tainted caller does not taint every session of a shared agent.
//!
//! A session's own raise reaches its caller even when the session ended before the raise was
//! written: the decision was made while it was live, and its answer may still reach the caller
//! (a cancel or `complete` committing between a read's decision and its write).
//!
//! Every raise is propagated under the writer lock (`Delegation::persist_taints`), where the
//! registry holds every session an invocation has written, and invocations compute their
//! starting taint under the same lock: a session is either visible to a propagation or created
//! after it, reading the taint it raised. Propagated raises are durable before the decision or
//! invocation that caused them is answered.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{LiveAgent, Registry};

/// Raises, in memory, every agent joined by live invocation or delegation links to an agent in `raised`
/// (which were raised already) and returns those whose stored taint must go up, as (agent,
/// level): every one whose *durable* taint is below the level, even when its in-memory taint is
/// not (an earlier propagation whose write failed raised it in memory only). The whole joined
/// component is walked, not only the agents that went up in memory now, for the same reason.
pub fn propagate(agents: &Registry, raised: &[(String, i64)], now: i64) -> Vec<(Arc<LiveAgent>, i64)> {
    let mut reached: HashMap<Arc<str>, i64> = HashMap::new();
    for (id, level) in raised {
        let l = reached.entry(Arc::from(id.as_str())).or_insert(*level);
        *l = (*l).max(*level);
    }
    let mut flowed = Vec::new();
    let mut queue: VecDeque<(Arc<str>, i64)> = reached.iter().map(|(id, l)| (Arc::clone(id), *l)).collect();
    while let Some((id, level)) = queue.pop_front() {
        for next in neighbours(agents, &id, now) {
            let key: Arc<str> = Arc::from(next.row.id.as_str());
            if reached.get(&key).is_some_and(|l| *l >= level) {
                continue;
            }
            reached.insert(Arc::clone(&key), level);
            next.raise_taint(level);
            if next.durable_taint() < level {
                flowed.push((Arc::clone(next), level));
            }
            queue.push_back((key, level));
        }
    }
    flowed
}

/// What a batch does after an item that read something: raises, in memory only, every agent
/// joined to the reader (already raised in memory) by live invocation or delegation links, so
/// that the batch's later items are decided on the joined taint (as two requests in a row would
/// be). Making the raises durable is `Delegation::persist_taints`'s, before the answer; it walks
/// the whole joined component against the durable taints, so raising here first leaves nothing
/// unwritten. Each raise is joined once (in-memory taints only rise).
pub struct BatchJoin<'a> {
    agents: &'a Registry,
    now: i64,
    joined: std::collections::HashSet<(String, i64)>,
}

impl<'a> BatchJoin<'a> {
    pub fn new(agents: &'a Registry, now: i64) -> BatchJoin<'a> {
        BatchJoin {
            agents,
            now,
            joined: std::collections::HashSet::new(),
        }
    }

    /// Joins `raised` (raises of the batch's items so far) along the links.
    pub fn join(&mut self, raised: &[(String, i64)]) {
        let fresh: Vec<(String, i64)> = raised.iter().filter(|r| !self.joined.contains(*r)).cloned().collect();
        if fresh.is_empty() {
            return;
        }
        let _ = propagate(self.agents, &fresh, self.now);
        self.joined.extend(fresh);
    }
}

/// Whom a raise of `id` reaches, read from the registry's indexes (no scan of every agent):
/// upward, its caller (for a session) or its parent (for a child deputy spawned), live or not —
/// an agent is raised only by a decision made while it was live, whose answer may reach its
/// caller or parent however it ended before the raise was written; downward, the live sessions
/// it started, its live children, and (for an agent that is not a session) the live sessions
/// that serve it.
fn neighbours<'a>(agents: &'a Registry, id: &str, now: i64) -> impl Iterator<Item = &'a Arc<LiveAgent>> + 'a {
    let agent = agents.get(id);
    let is_session = agent.is_some_and(|a| a.session.is_some());
    let up = agent.and_then(|a| match &a.session {
        Some(s) => agents.get(&s.caller),
        None => a.row.parent.as_ref().and_then(|p| agents.get(p)),
    });
    let started = agents.sessions.get(id);
    let children = agents.children.get(id);
    let served = if is_session { None } else { agents.served.get(id) };
    let down = [started, children, served]
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|i| agents.get(i))
        .filter(move |a| a.is_live(now));
    up.into_iter().chain(down)
}

//! The shadow bundle (`deputy serve --shadow DIR`, docs/GITOPS.md): a candidate bundle decided
//! beside the serving one, for every decision, on a thread of its own after the answer is
//! made. Its answers are only counted (`deputy_shadow_decisions`) and the differing ones kept
//! for review (`GET /v1/shadow`): they never change an answer, never raise a taint and never
//! write state.
//!
//! The shadow decides with the same live agents as the serving snapshot the request was decided
//! against (its registry, shared, so revocations and taint are the same), against the shadow
//! bundle's schema, policies and entities. The agents' grants are the ones deputy holds: a
//! shadow bundle's `grants/` are not installed.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use serde::Serialize;

use super::{decide_with, Outcome, Parts, RequestError};
use crate::agents::Registry;
use crate::bundle::{Bundle, BundleStore, LoadOptions};
use crate::snapshot::Snapshot;
use crate::telemetry::{Metrics, ShadowSink};

/// Decisions waiting to be compared; beyond this they are dropped (and counted).
const QUEUE: usize = 4096;
/// What the decisions waiting to be compared may hold (their requests, roughly measured);
/// beyond this one is dropped (and counted). The shadow decides on one thread, slower than the
/// serving ones: without a bound in bytes, a flood of large requests (a 1 MiB context is tens
/// of MiB parsed) grows the queue by gigabytes long before it holds `QUEUE` decisions.
const QUEUE_BYTES: usize = 64 << 20;
/// Differences kept for `GET /v1/shadow`, newest last.
const RECENT: usize = 100;

/// What one bundle answered.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Answer {
    /// `Allow` or `Deny`; absent when the request was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    /// The determining policies.
    pub reasons: Vec<String>,
    /// The error code, when the request was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// The bundle's version.
    pub policy_version: String,
}

impl Answer {
    fn of(result: &Result<Outcome, RequestError>, policy_version: &str) -> Answer {
        match result {
            Ok(o) => Answer {
                decision: Some(if o.decision.allow { "Allow" } else { "Deny" }),
                reasons: o.decision.reasons.clone(),
                error: None,
                policy_version: policy_version.to_owned(),
            },
            Err(e) => Answer {
                decision: None,
                reasons: Vec::new(),
                error: Some(e.code.as_str()),
                policy_version: policy_version.to_owned(),
            },
        }
    }

    /// Same decision, reasons and error (the versions differ by design).
    fn agrees(&self, other: &Answer) -> bool {
        (self.decision, &self.reasons, self.error) == (other.decision, &other.reasons, other.error)
    }
}

/// A request the two bundles answered differently.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// When it was decided (Unix seconds).
    pub at: i64,
    /// The request's principal, action and resource (`Type::"id"`).
    pub principal: String,
    pub action: String,
    pub resource: String,
    /// What the serving bundle answered (the answer the caller got).
    pub served: Answer,
    /// What the shadow bundle answers.
    pub shadow: Answer,
}

/// A decision to compare, packed on the decision path.
pub struct Job {
    /// Roughly what the job holds in memory (see [`approx_size`]).
    size: usize,
    parts: Parts,
    now: i64,
    agents: Registry,
    agents_unknown: bool,
    served: Answer,
}

impl Job {
    /// What the shadow needs of a decision made against `snap`.
    pub fn new(snap: &Snapshot, parts: Parts, now: i64, result: &Result<Outcome, RequestError>) -> Job {
        let size = approx_size(&parts);
        Job {
            size,
            parts,
            now,
            agents: snap.agents.clone(),
            agents_unknown: snap.agents_unknown,
            served: Answer::of(result, &snap.bundle.version),
        }
    }
}

/// The shadow bundle: its loader and the thread that compares.
pub struct Shadow {
    store: Arc<BundleStore>,
    bundle: Arc<ArcSwapOption<Bundle>>,
    tx: SyncSender<Job>,
    counts: Arc<Counts>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Counts {
    same: AtomicU64,
    differs: AtomicU64,
    error: AtomicU64,
    dropped: AtomicU64,
    /// The bytes of the jobs queued (offered, not yet compared).
    queued_bytes: AtomicUsize,
    recent: Mutex<VecDeque<Difference>>,
    last_error: Mutex<Option<String>>,
}

/// `GET /v1/shadow`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The shadow bundle's directory.
    pub bundle: String,
    /// The version being compared, when a valid shadow bundle is loaded.
    pub policy_version: Option<String>,
    /// The shadow bundle's last reload (its problems, when it is invalid).
    pub last_reload: Option<crate::bundle::ReloadStatus>,
    /// Decisions compared that agreed, differed, could not be decided, or were dropped.
    pub same: u64,
    pub differs: u64,
    pub error: u64,
    pub dropped: u64,
    /// Why the last `error` happened.
    pub last_error: Option<String>,
    /// The last differences, newest last.
    pub differences: Vec<Difference>,
}

impl Shadow {
    /// Prepares the shadow bundle at `dir` (loaded by [`Shadow::reload`] and the watcher on
    /// [`Shadow::store`]) and starts the comparing thread.
    pub fn start(dir: PathBuf, opts: LoadOptions, metrics: Arc<Metrics>) -> std::io::Result<Arc<Shadow>> {
        let store = Arc::new(BundleStore::new(dir, opts));
        let bundle: Arc<ArcSwapOption<Bundle>> = Arc::new(ArcSwapOption::empty());
        let slot = Arc::clone(&bundle);
        store.set_publisher(move |b| {
            slot.store(Some(b));
            Ok(())
        });
        let (tx, rx) = sync_channel(QUEUE);
        let counts = Arc::new(Counts::default());
        let worker = Worker {
            bundle: Arc::clone(&bundle),
            counts: Arc::clone(&counts),
            metrics: Arc::clone(&metrics),
            cached: None,
        };
        std::thread::Builder::new()
            .name("deputy-shadow".into())
            .spawn(move || worker.run(rx))?;
        Ok(Arc::new(Shadow {
            store,
            bundle,
            tx,
            counts,
            metrics,
        }))
    }

    /// The shadow bundle's loader (for the watcher).
    pub fn store(&self) -> &Arc<BundleStore> {
        &self.store
    }

    /// What has been compared so far.
    pub fn report(&self) -> Report {
        let c = &self.counts;
        Report {
            bundle: self.store.dir().display().to_string(),
            policy_version: self.bundle.load().as_ref().map(|b| b.version.clone()),
            last_reload: self.store.last_reload(),
            same: c.same.load(Ordering::Relaxed),
            differs: c.differs.load(Ordering::Relaxed),
            error: c.error.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            last_error: c.last_error.lock().ok().and_then(|e| e.clone()),
            differences: c.recent.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default(),
        }
    }
}

impl Shadow {
    fn dropped(&self) {
        self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        self.metrics.shadowed("dropped");
    }
}

impl ShadowSink for Shadow {
    /// A full queue is known before the decision path copies the request for it.
    fn admit(&self) -> bool {
        let room = self.counts.queued_bytes.load(Ordering::Acquire) < QUEUE_BYTES;
        if !room {
            self.dropped();
        }
        room
    }

    fn offer(&self, job: Box<dyn std::any::Any + Send>) {
        let Ok(job) = job.downcast::<Job>() else {
            // Only the decision path offers, and it packs a `Job`.
            self.dropped();
            return;
        };
        let size = job.size;
        // INVARIANT: the queue never holds more than `QUEUE_BYTES` of requests: a job that
        // would pass it is dropped (and counted), never waited for.
        let before = self.counts.queued_bytes.fetch_add(size, Ordering::AcqRel);
        let sent = before.saturating_add(size) <= QUEUE_BYTES && self.tx.try_send(*job).is_ok();
        if !sent {
            self.counts.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            self.dropped();
        }
    }
}

struct Worker {
    bundle: Arc<ArcSwapOption<Bundle>>,
    counts: Arc<Counts>,
    metrics: Arc<Metrics>,
    /// The last shadow snapshot built: reused while the shadow bundle and the agents are the
    /// same, extended when agents were only added.
    cached: Option<Snapshot>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            let size = job.size;
            let compared = self.compare(job);
            self.counts.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            match compared {
                Ok(Some(d)) => {
                    self.counts.differs.fetch_add(1, Ordering::Relaxed);
                    self.metrics.shadowed("differs");
                    tracing::info!(principal = %d.principal, action = %d.action, resource = %d.resource,
                        served = ?d.served.decision, shadow = ?d.shadow.decision, shadow_version = %d.shadow.policy_version,
                        "the shadow bundle decides differently");
                    if let Ok(mut r) = self.counts.recent.lock() {
                        if r.len() == RECENT {
                            r.pop_front();
                        }
                        r.push_back(d);
                    }
                }
                Ok(None) => {
                    self.counts.same.fetch_add(1, Ordering::Relaxed);
                    self.metrics.shadowed("same");
                }
                Err(e) => {
                    self.counts.error.fetch_add(1, Ordering::Relaxed);
                    self.metrics.shadowed("error");
                    if let Ok(mut last) = self.counts.last_error.lock() {
                        *last = Some(e);
                    }
                }
            }
        }
    }

    /// The difference, if the shadow answers `job` otherwise; an error when it cannot decide.
    fn compare(&mut self, job: Job) -> Result<Option<Difference>, String> {
        let bundle = self
            .bundle
            .load_full()
            .ok_or("no valid shadow bundle is loaded (see `last_reload`)")?;
        let reuse = self.cached.as_ref().is_some_and(|s| {
            Arc::ptr_eq(&s.bundle, &bundle) && job.agents.added_to(&s.agents).is_some_and(|a| a.is_empty())
        });
        if !reuse {
            let built = Snapshot::for_shadow(bundle, job.agents, job.agents_unknown, self.cached.as_ref())
                .map_err(|e| format!("the shadow bundle cannot hold the live agents: {e}"))?;
            self.cached = Some(built);
        }
        let snap = self.cached.as_ref().ok_or("no shadow snapshot")?;
        let (principal, action, resource) = (
            shown(&job.parts.principal),
            shown(&job.parts.action),
            shown(&job.parts.resource),
        );
        let shadow = Answer::of(&decide_with(snap, job.parts, job.now, false), &snap.bundle.version);
        if shadow.agrees(&job.served) {
            return Ok(None);
        }
        Ok(Some(Difference {
            at: job.now,
            principal,
            action,
            resource,
            served: job.served,
            shadow,
        }))
    }
}

/// Longest copy of an entity reference (`Type::"id"`) a difference keeps, in bytes: ids are
/// the caller's, up to the body limit, and the report keeps `RECENT` differences.
const MAX_REF: usize = 256;

/// `r` as a difference shows it: `Type::"id"`, cut after `MAX_REF` bytes (marked `…`).
fn shown(r: &super::EntityRef) -> String {
    let mut s = r.uid.to_string();
    if s.len() > MAX_REF {
        let mut end = MAX_REF;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Roughly the bytes a job's request holds: each JSON value node, string and key of its
/// context, and its entity ids. Linear in the context, as copying it for the shadow was.
fn approx_size(parts: &Parts) -> usize {
    fn value(v: &serde_json::Value) -> usize {
        const NODE: usize = std::mem::size_of::<serde_json::Value>();
        NODE + match v {
            serde_json::Value::String(s) => s.len(),
            serde_json::Value::Array(a) => a.iter().map(value).sum(),
            serde_json::Value::Object(o) => o.iter().map(|(k, v)| NODE + k.len() + value(v)).sum(),
            _ => 0,
        }
    }
    let ids: usize = [&parts.principal, &parts.action, &parts.resource]
        .iter()
        .map(|r| r.uid.to_string().len() + r.field.len())
        .sum();
    std::mem::size_of::<Job>() + ids + parts.context.as_ref().map_or(0, value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::authorize::{EntityRef, RequestError};
    use crate::error::ErrorCode;

    /// Attack: exhaust the sidecar's memory through the shadow's queue. The shadow decides on
    /// one thread, slower than the serving ones, and its queue was bounded by count alone (4,096
    /// decisions): a flood of large requests (measured: 6 clients sending 1 MiB contexts to
    /// `/v1/authorize`, which needs no credential, grew a debug sidecar by ~25 MiB/s, 3 GiB in
    /// 110 s, 0 dropped) queued gigabytes. Here the comparing thread is held (on its error
    /// slot), and 200 decisions of 1 MiB each are offered: the queue keeps at most
    /// `QUEUE_BYTES` of them and drops (and counts) the rest.
    #[test]
    fn the_queue_is_bounded_in_bytes_not_only_in_decisions() {
        let empty = tempfile::tempdir().unwrap();
        let shadow = Shadow::start(
            empty.path().to_path_buf(),
            LoadOptions::default(),
            Arc::new(Metrics::new(None)),
        )
        .unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bundle = Arc::new(Bundle::load(root, &LoadOptions::default()).unwrap());
        let snap = Snapshot::for_shadow(bundle, Registry::default(), false, None).unwrap();
        let uid = |t: &str, id: &str| EntityRef {
            uid: format!("{t}::\"{id}\"").parse().unwrap(),
            field: "x".to_owned(),
        };
        let parts = Parts {
            principal: uid("Human", "alice"),
            action: uid("Action", "read"),
            resource: uid("File", "x"),
            context: Some(serde_json::json!({"junk": "x".repeat(1 << 20)})),
            context_field: "context".to_owned(),
        };
        let refused: Result<Outcome, RequestError> = Err(RequestError::new(ErrorCode::InvalidContext, "x"));
        // No shadow bundle is loaded, so every comparison is an error, recorded under this
        // lock: held, the comparing thread stops at its first job.
        let held = shadow.counts.last_error.lock().unwrap();
        let offered = 200u64;
        for _ in 0..offered {
            shadow.offer(Box::new(Job::new(&snap, parts.clone(), 0, &refused)));
        }
        let dropped = shadow.counts.dropped.load(Ordering::Relaxed);
        let kept = offered - dropped;
        // One job in the thread's hands, the rest queued: about `QUEUE_BYTES` / 1 MiB of them.
        assert!(
            kept <= 80,
            "{kept} decisions of 1 MiB each kept waiting ({dropped} dropped): the queue is not bounded in bytes"
        );
        drop(held);
    }

    /// Attack: grow the differences kept for `GET /v1/shadow`. Entity ids are the caller's (up
    /// to the body limit), and the report keeps 100 differences and copies them on every read:
    /// 1 MiB ids made each difference megabytes. A difference keeps at most `MAX_REF` bytes of
    /// each reference.
    #[test]
    fn a_difference_keeps_a_bounded_copy_of_the_callers_ids() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bundle = Arc::new(Bundle::load(root, &LoadOptions::default()).unwrap());
        let snap = Snapshot::for_shadow(Arc::clone(&bundle), Registry::default(), false, None).unwrap();
        let mut worker = Worker {
            bundle: Arc::new(ArcSwapOption::new(Some(bundle))),
            counts: Arc::new(Counts::default()),
            metrics: Arc::new(Metrics::new(None)),
            cached: None,
        };
        let huge = "é".repeat(1 << 19);
        let uid = |t: &str, id: &str| EntityRef {
            uid: format!("{t}::\"{id}\"").parse().unwrap(),
            field: "x".to_owned(),
        };
        let parts = Parts {
            principal: uid("Human", &huge),
            action: uid("Action", "read"),
            resource: uid("File", &huge),
            context: None,
            context_field: "context".to_owned(),
        };
        // The serving side refused it; the shadow decides it: a difference.
        let refused: Result<Outcome, RequestError> = Err(RequestError::new(ErrorCode::InvalidContext, "x"));
        let d = worker
            .compare(Job::new(&snap, parts, 0, &refused))
            .unwrap()
            .expect("a difference");
        for shown in [&d.principal, &d.action, &d.resource] {
            assert!(
                shown.len() <= 300,
                "a difference keeps {} bytes of a reference",
                shown.len()
            );
        }
        assert!(d.principal.starts_with("Human::"), "{}", &d.principal[..40]);
    }
}

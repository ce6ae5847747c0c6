//! Loading the bundle directory and handing each new valid bundle to its publisher, plus the
//! result of the last reload. The store keeps no bundle of its own: what serves is the one
//! published `Snapshot` (`snapshot::Live`), which readiness, status and decisions all read.

use crate::error::ProblemCode;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{Bundle, BundleError, LoadOptions, Problem};

/// What the last load attempt did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub outcome: ReloadOutcome,
    /// RFC 3339 time of the attempt.
    pub at: String,
    /// The version the attempt produced (on success) or that keeps serving (on failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
/// What a reload did.
pub enum ReloadOutcome {
    /// A new bundle was loaded and is serving.
    Loaded,
    /// The bundle's contents did not change; nothing was swapped.
    Unchanged,
    /// The bundle was invalid; the previous one (if any) keeps serving.
    Failed,
}

/// The bundle directory's loader: which version it last published and what the last reload did.
pub struct BundleStore {
    dir: PathBuf,
    opts: LoadOptions,
    /// The version of the last bundle its publisher accepted (the one serving).
    published: Mutex<Option<String>>,
    last: Mutex<Option<ReloadStatus>>,
    reloads_ok: std::sync::atomic::AtomicU64,
    reloads_failed: std::sync::atomic::AtomicU64,
    /// Fingerprint of the files at the last load attempt, good or bad.
    attempted: Mutex<Option<String>>,
    /// Installs a newly loaded bundle into what is served (the snapshot), or refuses it with
    /// problems (it does not fit deputy's live agents).
    publisher: Mutex<Option<Publisher>>,
}

type Publisher = Box<dyn Fn(Arc<Bundle>) -> Result<(), Vec<Problem>> + Send + Sync>;

impl BundleStore {
    pub fn new(dir: PathBuf, opts: LoadOptions) -> Self {
        Self {
            dir,
            opts,
            published: Mutex::new(None),
            last: Mutex::new(None),
            reloads_ok: 0.into(),
            reloads_failed: 0.into(),
            attempted: Mutex::new(None),
            publisher: Mutex::new(None),
        }
    }

    /// Sets what installs each newly loaded bundle (see [`BundleStore::reload`]). Set it before
    /// the first load.
    pub fn set_publisher(&self, publish: impl Fn(Arc<Bundle>) -> Result<(), Vec<Problem>> + Send + Sync + 'static) {
        if let Ok(mut p) = self.publisher.lock() {
            *p = Some(Box::new(publish));
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The version its publisher last accepted, if any.
    pub fn published_version(&self) -> Option<String> {
        self.published.lock().ok().and_then(|v| v.clone())
    }

    /// Loads the bundle from disk and publishes it if it is valid, different, and accepted by
    /// the publisher (a bundle that does not fit deputy's live agents is refused like an invalid
    /// one: the last good bundle keeps serving). Blocking: call from `spawn_blocking` or a plain thread.
    pub fn reload(&self) -> Result<ReloadOutcome, BundleError> {
        let span = crate::telemetry::reload_span();
        let _entered = span.enter();
        let result = Bundle::load(&self.dir, &self.opts);
        if let Ok(mut a) = self.attempted.lock() {
            *a = Some(match &result {
                Ok(b) => b.version.clone(),
                Err(_) => super::files::fingerprint(&self.dir),
            });
        }
        let result = result.and_then(|bundle| self.install(bundle));
        let at = crate::clock::now_rfc3339();
        let (status, ret) = match result {
            Ok((outcome, version)) => (
                ReloadStatus {
                    outcome,
                    at,
                    version: Some(version),
                    problems: Vec::new(),
                },
                Ok(outcome),
            ),
            Err(err) => {
                for p in &err.problems {
                    tracing::error!(code = p.code.as_str(), problem = %p, "bundle rejected; the last good bundle keeps serving");
                }
                (
                    ReloadStatus {
                        outcome: ReloadOutcome::Failed,
                        at,
                        version: self.published_version(),
                        problems: err.problems.clone(),
                    },
                    Err(err),
                )
            }
        };
        let outcome = match status.outcome {
            ReloadOutcome::Loaded => "loaded",
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Failed => "failed",
        };
        crate::telemetry::reload_done(&span, outcome, status.version.as_deref());
        // The status first, then the count: whoever sees the count move sees this status.
        let counter = if ret.is_ok() {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        if let Ok(mut last) = self.last.lock() {
            *last = Some(status);
        }
        counter.fetch_add(1, std::sync::atomic::Ordering::Release);
        ret
    }

    /// Publishes a valid bundle unless its contents are the ones serving.
    fn install(&self, bundle: Bundle) -> Result<(ReloadOutcome, String), BundleError> {
        let version = bundle.version.clone();
        if self.published_version().as_deref() == Some(version.as_str()) {
            return Ok((ReloadOutcome::Unchanged, version));
        }
        let bundle = Arc::new(bundle);
        let published = match self.publisher.lock() {
            Ok(p) => p.as_ref().map_or(Ok(()), |publish| publish(Arc::clone(&bundle))),
            Err(_) => Err(vec![Problem::new(
                ProblemCode::Internal,
                "the bundle publisher lock is poisoned",
            )]),
        };
        if let Err(problems) = published {
            return Err(BundleError {
                dir: self.dir.display().to_string(),
                problems,
            });
        }
        tracing::info!(version = %bundle.version, revision = ?bundle.revision, files = bundle.files.len(), "bundle loaded");
        if let Ok(mut p) = self.published.lock() {
            *p = Some(version.clone());
        }
        Ok((ReloadOutcome::Loaded, version))
    }

    /// Reloads only when the files differ from the last attempt, so a broken bundle is reported
    /// once rather than on every poll. Blocking.
    pub fn reload_if_changed(&self) -> Option<Result<ReloadOutcome, BundleError>> {
        let fp = super::files::fingerprint(&self.dir);
        if self.attempted.lock().ok().and_then(|a| a.clone()).as_deref() == Some(fp.as_str()) {
            return None;
        }
        Some(self.reload())
    }

    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// (successful, failed) reload attempts since start.
    pub fn reload_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Acquire;
        (self.reloads_ok.load(Acquire), self.reloads_failed.load(Acquire))
    }
}

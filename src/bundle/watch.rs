//! Hot reload: watch the bundle with `notify`, wait for edits to settle, then reload off the
//! async threads. Also polls on a timer, because some swaps are invisible to a watcher that
//! was set up on the old directory.
//!
//! Two swap styles matter in Kubernetes:
//! - ConfigMap volumes: the top-level entries are symlinks through `..data`, which kubelet
//!   re-points at a new timestamped directory with one atomic rename inside the bundle dir.
//!   The recursive watch on the bundle dir sees that rename.
//! - git-sync: the bundle path itself is a symlink that is swapped to a new worktree. The
//!   watch on the bundle's parent directory sees the swap, and the watch on the bundle is then
//!   re-established on the new target.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::BundleStore;

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How long the bundle must be quiet before a reload.
    pub debounce: Duration,
    /// How often to check the bundle's digest even without events.
    pub poll_interval: Duration,
}

/// Keeps the file watcher alive; dropping it stops watching (the poll keeps running).
pub struct WatchHandle {
    _task: tokio::task::JoinHandle<()>,
}

/// Starts watching the store's bundle directory. Must be called inside a tokio runtime.
pub fn spawn_watcher(store: Arc<BundleStore>, opts: WatchOptions) -> WatchHandle {
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.send(());
        }
    });
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the file watcher; relying on polling");
            None
        }
    };
    WatchHandle {
        _task: tokio::spawn(run(store, opts, watcher, rx)),
    }
}

async fn run(
    store: Arc<BundleStore>,
    opts: WatchOptions,
    mut watcher: Option<notify::RecommendedWatcher>,
    mut rx: mpsc::UnboundedReceiver<()>,
) {
    let dir = store.dir().to_path_buf();
    let (mut watched, _) = watch_paths(watcher.as_mut(), &dir, Vec::new());
    // A change made before the watches existed raised no event: look once right away.
    let mut look_now = true;
    loop {
        if !look_now {
            tokio::select! {
                ev = rx.recv() => {
                    if ev.is_none() {
                        // The watcher is gone; keep polling.
                        watcher = None;
                    }
                    // Let the edit settle: wait until no event arrives for `debounce`.
                    while let Ok(Some(())) = tokio::time::timeout(opts.debounce, rx.recv()).await {}
                }
                () = tokio::time::sleep(opts.poll_interval) => {}
            }
        }
        let s = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || s.reload_if_changed()).await {
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "bundle reload task failed"),
        }
        let moved;
        (watched, moved) = watch_paths(watcher.as_mut(), &dir, watched);
        // While the watches moved (a symlink swap), a further change could slip between the
        // old watch going and the new one coming: look again rather than wait for an event.
        look_now = moved;
    }
}

/// The paths watched: the bundle root and its parent (not recursively, to see `..data` and
/// symlink swaps without descending into unrelated trees such as `target/` or `.git/`), and the
/// bundle's own sub-directories (recursively), each with the path it resolves to now.
fn watch_set(dir: &Path) -> Vec<(PathBuf, RecursiveMode, Option<PathBuf>)> {
    let mut set = vec![(dir.to_path_buf(), RecursiveMode::NonRecursive)];
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        set.push((parent.to_path_buf(), RecursiveMode::NonRecursive));
    }
    for sub in super::files::SUBDIRS {
        let path = dir.join(sub);
        if path.exists() {
            set.push((path, RecursiveMode::Recursive));
        }
    }
    set.into_iter()
        .map(|(path, mode)| {
            let resolved = std::fs::canonicalize(&path).ok();
            (path, mode, resolved)
        })
        .collect()
}

/// (Re)establishes the watches when any watched path now resolves somewhere new, or a
/// sub-directory appeared. Returns what is watched now, and whether the watches moved.
fn watch_paths(
    watcher: Option<&mut notify::RecommendedWatcher>,
    dir: &Path,
    previous: Vec<(PathBuf, RecursiveMode, Option<PathBuf>)>,
) -> (Vec<(PathBuf, RecursiveMode, Option<PathBuf>)>, bool) {
    let Some(watcher) = watcher else {
        return (previous, false);
    };
    let next = watch_set(dir);
    if next == previous {
        return (previous, false);
    }
    for (path, _, _) in &previous {
        let _ = watcher.unwatch(path);
    }
    for (path, mode, _) in &next {
        if let Err(e) = watcher.watch(path, *mode) {
            tracing::warn!(path = %path.display(), error = %e, "cannot watch; relying on polling");
        }
    }
    (next, true)
}

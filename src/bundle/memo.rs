//! Answers kept with a bundle (computed from its own entity store, shared by every snapshot of
//! it), and the keyed memo both the bundle's and a snapshot's answers use.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Answers kept per bundle at most; beyond, the memo starts over (as a snapshot's).
const CAPACITY: usize = 4096;

/// What discovery computes from a bundle alone (its own entity store), shared by every
/// snapshot of it: a snapshot's new store starts from it rather than from scratch.
#[derive(Default)]
pub struct BundleMemo {
    answers: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for BundleMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BundleMemo")
    }
}

impl BundleMemo {
    /// The answer kept under `key`, or `compute`'s, kept (as the snapshot memo's `get_or_insert`).
    pub fn get_or_insert<T: Any + Send + Sync>(&self, key: &str, compute: impl FnOnce() -> T) -> Arc<T> {
        get_or_insert(&self.answers, key, compute, CAPACITY)
    }
}

/// The answer under `key` in `answers`, or `compute`'s, kept; past `capacity` answers the map
/// starts over.
pub(crate) fn get_or_insert<T: Any + Send + Sync>(
    answers: &Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
    key: &str,
    compute: impl FnOnce() -> T,
    capacity: usize,
) -> Arc<T> {
    let found = answers
        .lock()
        .ok()
        .and_then(|m| m.get(key).cloned())
        .and_then(|a| a.downcast::<T>().ok());
    if let Some(hit) = found {
        return hit;
    }
    let answer = Arc::new(compute());
    if let Ok(mut m) = answers.lock() {
        if m.len() >= capacity {
            m.clear();
        }
        m.insert(key.to_owned(), Arc::clone(&answer) as Arc<dyn Any + Send + Sync>);
    }
    answer
}

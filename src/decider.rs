//! deputy's decision path for embedding in another Rust program: the same request reading,
//! policy index and evaluator the sidecar's `POST /v1/authorize` uses, over one bundle.

use std::sync::Arc;

use crate::authorize::{self, Decision, RequestError};
use crate::bundle::Bundle;
use crate::snapshot::Snapshot;

/// Decides requests against one loaded [`Bundle`]. Cheap to share: clone it or put it in an
/// `Arc`; deciding never copies the policy set or the entity store.
///
/// A `Decider` holds no delegation state: every principal, `Agent`s included, is decided by the
/// bundle's policies alone (with the agent model, an `Agent` the bundle does not declare is
/// denied). Delegation lives in the sidecar ([`crate::Sidecar`]).
#[derive(Clone)]
pub struct Decider {
    snap: Arc<Snapshot>,
}

impl Decider {
    /// A decider over `bundle` (load it with [`Bundle::load`]).
    pub fn new(bundle: Bundle) -> Decider {
        Decider {
            snap: Arc::new(Snapshot::of_bundle(Arc::new(bundle))),
        }
    }

    /// A decider over a snapshot built elsewhere (`gitops` adds the bundle's shipped agents).
    pub(crate) fn of_snapshot(snap: Arc<Snapshot>) -> Decider {
        Decider { snap }
    }

    /// The bundle decided against.
    pub fn bundle(&self) -> &Bundle {
        &self.snap.bundle
    }

    /// Decides a request shaped like `POST /v1/authorize`'s body:
    /// `{"principal": {"type", "id"}, "action": {"type", "id"}, "resource": {"type", "id"},
    /// "context": {…}}`. A request the schema does not allow is an error naming the field at
    /// fault; a policy that errs is reported in the decision's `errors` and does not apply.
    pub fn decide(&self, request: &serde_json::Value) -> Result<Decision, RequestError> {
        let parts = authorize::parts_of(&self.snap.bundle, request, "")?;
        Ok(authorize::decide_with(&self.snap, parts, crate::clock::now(), false)?.decision)
    }

    /// [`Decider::decide`] on the request's JSON bytes.
    pub fn decide_json(&self, body: &[u8]) -> Result<Decision, RequestError> {
        let parts = authorize::read_parts(&self.snap.bundle, body)?;
        Ok(authorize::decide_with(&self.snap, parts, crate::clock::now(), false)?.decision)
    }
}

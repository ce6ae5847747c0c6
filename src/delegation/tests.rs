//! Unit tests of the delegation service against the repository's example bundle and a real
//! SQLite file, with a fixed clock: every operation takes `now`, so lifetimes and deadlines are
//! checked at their exact edges without waiting.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::{AuditKind, Caller, Delegation, Limits, RequestStatus, SpawnOutcome, SpawnRequest};
use crate::bundle::{Bundle, LoadOptions};
use crate::snapshot::{Live, Snapshot};

/// A fixed instant: every test's clock starts here and moves only when the test says so.
const T: i64 = 1_800_000_000;

const ROOT_GRANT: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#;
const CHILD_GRANT: &str =
    r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");"#;

struct Env {
    d: Delegation,
    live: Arc<Live>,
    _state: tempfile::TempDir,
}

fn env() -> Env {
    let state = tempfile::tempdir().unwrap();
    let live = Arc::new(Live::default());
    let d = Delegation::open(
        state.path(),
        Arc::clone(&live),
        Some("admin-secret".into()),
        &HashMap::new(),
        Limits::default(),
    )
    .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let opts = LoadOptions {
        require_agent_model: true,
        ..LoadOptions::default()
    };
    let bundle = Bundle::load(root, &opts).unwrap();
    d.install_bundle(Arc::new(bundle), T).unwrap();
    Env { d, live, _state: state }
}

impl Env {
    fn snap(&self) -> Arc<Snapshot> {
        self.live.current().unwrap()
    }

    /// Spawns and returns the new agent's id, it as a caller, and its credential.
    fn spawn(&self, caller: &Caller, grant: &str, ttl: i64, now: i64) -> (String, Caller, String) {
        let req = SpawnRequest {
            grant: grant.to_owned(),
            ttl_seconds: ttl,
            ceiling: Some(2),
            can_delegate: true,
            task: "t".into(),
            reason: "r".into(),
            agent_id: None,
            approved_request: None,
        };
        match self.d.spawn(&self.snap(), caller, req, now).unwrap() {
            SpawnOutcome::Applied {
                delegation_id,
                credential,
                ..
            } => {
                let me = self.d.authenticate(&self.snap(), Some(&credential), now).unwrap();
                (delegation_id, me, credential)
            }
            other => panic!("not applied: {other:?}"),
        }
    }

    fn events(&self, agent: &str) -> Vec<(String, String)> {
        self.d
            .audit(&Caller::Admin, Some(agent), None, 1000)
            .unwrap()
            .into_iter()
            .map(|r| (r.event, r.actor))
            .collect()
    }
}

#[test]
fn an_agent_expires_at_its_last_second_with_its_children_and_deputy_records_it() {
    let e = env();
    let (root, root_caller, _) = e.spawn(&Caller::Admin, ROOT_GRANT, 60, T);
    let (child, _, child_token) = e.spawn(&root_caller, CHILD_GRANT, 3600, T + 10);
    // The child's lifetime is capped at what its parent has left.
    let child_row = e.snap().agents.get(&child).unwrap().row.clone();
    assert_eq!(child_row.expires_at, T + 60);

    e.d.sweep_expired(&e.snap(), T + 59);
    assert!(e.snap().agents.get(&root).unwrap().is_live(T + 59));
    assert!(!e.events(&root).iter().any(|(ev, _)| ev == "expired"));

    e.d.sweep_expired(&e.snap(), T + 60);
    for id in [&root, &child] {
        assert!(e.snap().agents.get(id).unwrap().is_revoked(), "{id} not revoked");
        assert!(
            e.events(id).contains(&("expired".to_owned(), "deputy".to_owned())),
            "{id}: {:?}",
            e.events(id)
        );
    }
    // Its credential no longer authenticates, even with the clock turned back.
    assert!(e.d.authenticate(&e.snap(), Some(&child_token), T + 30).is_err());
}

#[test]
fn a_permission_request_expires_at_its_deadline_recorded_as_deputys() {
    let e = env();
    let (_, root_caller, _) = e.spawn(&Caller::Admin, ROOT_GRANT, 86_400, T);
    let (child, child_caller, _) = e.spawn(&root_caller, CHILD_GRANT, 86_400, T);
    let wider = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#;
    let (view, _) =
        e.d.request_permission(&e.snap(), &child_caller, wider, "need it", Some(100), T)
            .unwrap();
    assert_eq!(view.status, RequestStatus::Pending);
    assert_eq!(view.expires_at, T + 100);

    e.d.sweep_expired(&e.snap(), T + 99);
    let still = e.d.get_request(&e.snap(), &Caller::Admin, &view.request_id).unwrap();
    assert_eq!(still.status, RequestStatus::Pending);

    e.d.sweep_expired(&e.snap(), T + 100);
    let gone = e.d.get_request(&e.snap(), &Caller::Admin, &view.request_id).unwrap();
    assert_eq!(gone.status, RequestStatus::Expired);
    let events = e.events(&child);
    assert!(
        events.contains(&(AuditKind::PermissionExpired.as_str().to_owned(), "deputy".to_owned())),
        "{events:?}"
    );
    assert_eq!(e.d.verify_audit().unwrap(), None);
}

#[test]
fn revoking_a_parent_closes_its_childs_pending_request_in_the_same_change() {
    let e = env();
    let (root, root_caller, _) = e.spawn(&Caller::Admin, ROOT_GRANT, 86_400, T);
    let (child, child_caller, _) = e.spawn(&root_caller, CHILD_GRANT, 86_400, T);
    let wider = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#;
    let (view, _) =
        e.d.request_permission(&e.snap(), &child_caller, wider, "", None, T)
            .unwrap();

    let ended = e.d.revoke(&e.snap(), &Caller::Admin, &root, false, T + 1).unwrap();
    assert_eq!(ended.len(), 2, "{ended:?}");
    let closed = e.d.get_request(&e.snap(), &Caller::Admin, &view.request_id).unwrap();
    assert_eq!(closed.status, RequestStatus::Closed);
    let events: Vec<String> = e.events(&child).into_iter().map(|(ev, _)| ev).collect();
    assert_eq!(
        events,
        ["applied", "permission_requested", "revoked", "permission_closed"],
        "one record per change, in order"
    );
}

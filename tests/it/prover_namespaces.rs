//! The prover on a namespaced schema with action groups and an enumerated entity type.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cedar_policy::{Entities, Schema};
use deputy::prover::{prove, Grant, ProveOptions, Verdict};

const SCHEMA: &str = r#"
namespace Acme {
  entity Agent = { level: Long };
  entity Env enum ["prod", "dev"];
  entity Repo in [Repo] = { env: Env, name: String };
  action "tools";
  action "read" in ["tools"] appliesTo { principal: [Agent], resource: [Repo], context: { ticket?: String } };
  action "push" in ["tools"] appliesTo { principal: [Agent], resource: [Repo], context: { ticket?: String } };
}
"#;

const ENTITIES: &str = r#"[
  {"uid": {"type": "Acme::Repo", "id": "mono"}, "attrs": {"env": {"__entity": {"type": "Acme::Env", "id": "prod"}}, "name": "mono"}, "parents": []},
  {"uid": {"type": "Acme::Repo", "id": "mono/web"}, "attrs": {"env": {"__entity": {"type": "Acme::Env", "id": "dev"}}, "name": "web"}, "parents": [{"type": "Acme::Repo", "id": "mono"}]}
]"#;

fn verdict(parent: &str, child: &str) -> Verdict {
    let schema: Schema = SCHEMA.parse().unwrap();
    let store = Entities::from_json_str(ENTITIES, Some(&schema)).unwrap();
    let v = prove(
        &Grant::parse(child).unwrap(),
        &Grant::parse(parent).unwrap(),
        &schema,
        &store,
        &ProveOptions::default(),
    )
    .unwrap();
    if let Verdict::Exceeds(cx) = &v {
        assert!(cx.principal.starts_with("Acme::Agent::"), "{cx:?}");
    }
    v
}

#[test]
fn namespaced_hierarchy_and_groups() {
    let parent = r#"permit(principal == ?principal, action in Acme::Action::"tools", resource in Acme::Repo::"mono");"#;
    let child =
        r#"permit(principal == ?principal, action == Acme::Action::"push", resource in Acme::Repo::"mono/web");"#;
    assert!(verdict(parent, child).is_within());
    assert_eq!(verdict(child, parent).name(), "exceeds");
}

#[test]
fn enumerated_entity_attributes() {
    let parent = r#"permit(principal == ?principal, action, resource) when { resource.env == Acme::Env::"dev" };"#;
    let stored = r#"permit(principal == ?principal, action, resource == Acme::Repo::"mono/web");"#;
    assert!(verdict(parent, stored).is_within());
    let prod = r#"permit(principal == ?principal, action, resource == Acme::Repo::"mono");"#;
    assert_eq!(verdict(parent, prod).name(), "exceeds");
}

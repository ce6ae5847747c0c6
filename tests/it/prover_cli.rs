//! The `deputy prove` back end: exit codes and output forms.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::prover as fx;

use deputy::prover::run_prove;

const PARENT: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
@delegable("false")
permit(principal == ?principal, action == Action::"write", resource in Folder::"repo");"#;

fn run(parent: &str, child: &str, json: bool) -> (i32, String) {
    let schema = fx::schema();
    let store = fx::entities(&schema);
    let mut out = Vec::new();
    let code = run_prove(&schema, &store, parent, child, json, &mut out);
    (code, String::from_utf8(out).unwrap())
}

#[test]
fn within_exits_zero_and_names_the_covering_permit() {
    let child = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");"#;
    let (code, text) = run(PARENT, child, false);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("within"), "{text}");
    assert!(text.contains(r#"Folder::"repo/src" in Folder::"repo""#), "{text}");
    let (code, json) = run(PARENT, child, true);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["verdict"], "within");
    assert!(v["counterexample"].is_null() && v["reason"].is_null());
    assert!(v["evidence"]["permits"][0]["covered_by"].as_array().unwrap().len() == 1);
}

#[test]
fn exceeds_exits_one_with_a_counterexample() {
    let child = r#"permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");"#;
    let (code, text) = run(PARENT, child, false);
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with("error[exceeds]"), "{text}");
    assert!(text.contains("Action::\"write\""), "{text}");
    let (code, json) = run(PARENT, child, true);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["verdict"], "exceeds");
    assert_eq!(v["counterexample"]["action"], "Action::\"write\"");
    assert!(v["counterexample"]["entities"].is_array());
}

#[test]
fn inconclusive_exits_two_with_a_reason() {
    let parent =
        r#"permit(principal == ?principal, action == Action::"read", resource) when { context.taint * 2 <= 2 };"#;
    let child = r#"permit(principal == ?principal, action == Action::"read", resource) when { context.taint <= 1 };"#;
    let (code, json) = run(parent, child, true);
    assert_eq!(code, 2, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["verdict"], "inconclusive");
    assert_eq!(v["reason"]["code"], "unsupported_construct");
    assert!(
        v["reason"]["constructs"][0].as_str().unwrap().contains("parent policy"),
        "{json}"
    );
}

#[test]
fn bad_input_exits_sixty_four() {
    let (code, text) = run(PARENT, "permit(principal, action, resource", false);
    assert_eq!(code, 64);
    assert!(text.contains("child grant"), "{text}");
    let child = r#"permit(principal == ?principal, action == Action::"read", resource) when { resource.nope == 1 };"#;
    let (code, json) = run(PARENT, child, true);
    assert_eq!(code, 64);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["error"]["code"], "grant_invalid");
    assert_eq!(v["error"]["issues"][0]["line"], 1);
    let (code, _) = run(
        PARENT,
        r#"permit(principal == ?principal, action, resource in ?resource);"#,
        false,
    );
    assert_eq!(code, 64);
}

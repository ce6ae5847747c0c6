//! Bad input: each malformed request gets its 4xx and a stable code naming the problem, and
//! the server keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::{repo_root, Options, TestServer};

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// A fragment the message must contain (the field or value at fault).
    mentions: &'static str,
}

fn case(
    name: &'static str,
    path: &'static str,
    body: &str,
    status: u16,
    code: &'static str,
    mentions: &'static str,
) -> Case {
    Case {
        name,
        method: "POST",
        path,
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        status,
        code,
        mentions,
    }
}

const OK_REQ: &str = r#"{"principal":{"type":"Agent","id":"coder-1"},"action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"x"}}"#;

fn cases() -> Vec<Case> {
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let big = format!(
        r#"{{"principal":{{"type":"Agent","id":"{}"}}}}"#,
        "a".repeat(2 * 1024 * 1024)
    );
    let many = format!(r#"{{"requests":[{}]}}"#, vec![OK_REQ; 1001].join(","));
    vec![
        case(
            "malformed json",
            "/v1/authorize",
            r#"{"principal": "#,
            400,
            "malformed_json",
            "not valid JSON",
        ),
        case("empty body", "/v1/authorize", "", 400, "malformed_json", "empty"),
        case(
            "not an object",
            "/v1/authorize",
            "[1,2]",
            400,
            "invalid_field",
            "request body",
        ),
        case(
            "missing principal",
            "/v1/authorize",
            r#"{"action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"x"}}"#,
            400,
            "missing_field",
            "principal",
        ),
        case(
            "principal not object",
            "/v1/authorize",
            r#"{"principal":"alice","action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"x"}}"#,
            400,
            "invalid_field",
            "principal",
        ),
        case(
            "missing principal.id",
            "/v1/authorize",
            r#"{"principal":{"type":"Agent"},"action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"x"}}"#,
            400,
            "missing_field",
            "principal.id",
        ),
        case(
            "id of wrong type",
            "/v1/authorize",
            r#"{"principal":{"type":"Agent","id":7},"action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"x"}}"#,
            400,
            "invalid_field",
            "principal.id",
        ),
        case(
            "bad type name",
            "/v1/authorize",
            r#"{"principal":{"type":"Not A Type","id":"a"},"action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"x"}}"#,
            400,
            "invalid_field",
            "principal.type",
        ),
        case(
            "unknown entity type",
            "/v1/authorize",
            r#"{"principal":{"type":"Robot","id":"a"},"action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"x"}}"#,
            400,
            "unknown_entity_type",
            "Robot",
        ),
        case(
            "unknown action",
            "/v1/authorize",
            r#"{"principal":{"type":"Agent","id":"a"},"action":{"type":"Action","id":"launch"},"resource":{"type":"File","id":"x"}}"#,
            400,
            "unknown_action",
            "launch",
        ),
        case(
            "action not applicable",
            "/v1/authorize",
            r#"{"principal":{"type":"Agent","id":"a"},"action":{"type":"Action","id":"read"},"resource":{"type":"Tool","id":"pytest"}}"#,
            400,
            "action_not_applicable",
            "resource",
        ),
        case(
            "context not object",
            "/v1/authorize",
            r#"{"principal":{"type":"Agent","id":"a"},"action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"x"},"context":[1]}"#,
            400,
            "invalid_field",
            "context",
        ),
        case(
            "context wrong type",
            "/v1/authorize",
            r#"{"principal":{"type":"Agent","id":"a"},"action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"x"},"context":{"taint":"x"}}"#,
            400,
            "invalid_context",
            "taint",
        ),
        case(
            "deeply nested json",
            "/v1/authorize",
            &deep,
            400,
            "json_too_deep",
            "32 levels",
        ),
        case("body too large", "/v1/authorize", &big, 413, "body_too_large", "limit"),
        case(
            "batch without requests",
            "/v1/authorize/batch",
            "{}",
            400,
            "missing_field",
            "requests",
        ),
        case(
            "batch too large",
            "/v1/authorize/batch",
            &many,
            413,
            "batch_too_large",
            "1001",
        ),
        case(
            "authzen missing subject",
            "/access/v1/evaluation",
            r#"{"action":{"name":"read"},"resource":{"type":"File","id":"x"}}"#,
            400,
            "missing_field",
            "subject",
        ),
        case(
            "authzen action name not string",
            "/access/v1/evaluation",
            r#"{"subject":{"type":"Agent","id":"a"},"action":{"name":1},"resource":{"type":"File","id":"x"}}"#,
            400,
            "invalid_field",
            "action.name",
        ),
        case(
            "authzen unknown action",
            "/access/v1/evaluation",
            r#"{"subject":{"type":"Agent","id":"a"},"action":{"name":"fly"},"resource":{"type":"File","id":"x"}}"#,
            400,
            "unknown_action",
            "fly",
        ),
        case(
            "authzen bad semantic",
            "/access/v1/evaluations",
            r#"{"subject":{"type":"Agent","id":"a"},"action":{"name":"read"},"options":{"evaluations_semantic":"most"},"evaluations":[{"resource":{"type":"File","id":"x"}}]}"#,
            400,
            "invalid_field",
            "evaluations_semantic",
        ),
        case(
            "authzen property collides with context",
            "/access/v1/evaluation",
            r#"{"subject":{"type":"Agent","id":"a","properties":{}},"action":{"name":"read"},"resource":{"type":"File","id":"x"},"context":{"subject":1}}"#,
            400,
            "context_conflict",
            "context.subject",
        ),
        Case {
            name: "wrong content type",
            content_type: Some("text/plain"),
            ..case("", "/v1/authorize", OK_REQ, 400, "unsupported_media_type", "text/plain")
        },
        Case {
            name: "unknown route",
            ..case("", "/v1/nothing", OK_REQ, 404, "not_found", "/v1/nothing")
        },
        Case {
            name: "wrong method",
            method: "PUT",
            ..case("", "/v1/authorize", OK_REQ, 405, "method_not_allowed", "PUT")
        },
    ]
}

#[test]
fn every_bad_request_gets_its_status_and_code() {
    let s = TestServer::start(&repo_root(), Options::default());
    let mut failures = Vec::new();
    for c in cases() {
        let headers: Vec<(&str, &str)> = c.content_type.map(|t| ("Content-Type", t)).into_iter().collect();
        let r = s.request(c.method, c.path, &headers, Some(&c.body));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let message = body["message"].as_str().unwrap_or("");
        if r.status != c.status || body["code"] != c.code || !message.contains(c.mentions) {
            failures.push(format!(
                "{}: expected {} `{}` mentioning `{}`, got {} {}",
                c.name,
                c.status,
                c.code,
                c.mentions,
                r.status,
                String::from_utf8_lossy(&r.body).chars().take(300).collect::<String>()
            ));
        }
        // The server is still up and deciding after each bad request.
        let ok = s.post_raw("/v1/authorize", Some("application/json"), OK_REQ.as_bytes());
        assert_eq!(
            ok.status,
            200,
            "after `{}` the server stopped answering: {}",
            c.name,
            ok.text()
        );
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_slow_client_cannot_pin_a_connection() {
    use std::io::{Read, Write};
    let s = TestServer::start(&repo_root(), Options::default());
    let mut stream = std::net::TcpStream::connect(s.addr).unwrap();
    // Half a request line, then silence: the header read timeout (2 s in tests) closes it.
    stream.write_all(b"POST /v1/authorize HTTP/1.1\r\nHost: x\r\n").unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let _ = stream.read_to_end(&mut buf);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(9),
        "the slow connection was not closed"
    );
    assert_eq!(s.get("/healthz").status, 200);
}

/// A message quotes the input at fault, but not a megabyte of it: a huge type name, id or
/// action is answered with a bounded message that still names the field.
#[test]
fn an_oversized_value_is_not_echoed_back_whole() {
    let s = TestServer::start(&repo_root(), Options::default());
    let huge = "T".repeat(200_000);
    for (field, body) in [
        (
            "principal.type",
            serde_json::json!({"principal": {"type": huge, "id": "x"}, "action": {"type": "Action", "id": "read"}, "resource": {"type": "File", "id": "x"}}),
        ),
        (
            "action.id",
            serde_json::json!({"principal": {"type": "Agent", "id": "x"}, "action": {"type": "Action", "id": huge}, "resource": {"type": "File", "id": "x"}}),
        ),
    ] {
        let r = s.post("/v1/authorize", &body);
        assert!((400..500).contains(&r.status), "{field}: {}", r.status);
        let j = r.json();
        let message = j["message"].as_str().unwrap();
        assert!(message.len() < 1200, "{field}: a {} byte message", message.len());
        assert!(
            message.contains(field) || message.contains("principal") || message.contains("action"),
            "{message}"
        );
        assert!(message.ends_with("bytes in all)"), "{message}");
    }
    assert_eq!(s.get("/healthz").status, 200);
}

//! Traces end to end: the real binary exports over OTLP/HTTP to a receiver inside the test,
//! which decodes the protobuf bodies with the OTLP message types. Checks trace ids,
//! parent/child links and attributes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::repo_root;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

const DEPUTY: &str = env!("CARGO_BIN_EXE_deputy");
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const ADMIN: &str = "admin-token-for-otel-tests-0123";

/// What the receiver got: every span, with its resource's attributes.
#[derive(Default)]
struct Received {
    spans: Vec<(Vec<KeyValue>, Span)>,
    paths: Vec<String>,
}

/// A minimal OTLP/HTTP receiver: HTTP/1.1 on a loopback port, `POST /v1/traces` with an
/// `application/x-protobuf` body, answered with an empty `ExportTraceServiceResponse`.
fn receiver() -> (SocketAddr, Arc<Mutex<Received>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Received::default()));
    let r = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let r = Arc::clone(&r);
            std::thread::spawn(move || serve_connection(stream, &r));
        }
    });
    (addr, received)
}

fn serve_connection(stream: TcpStream, received: &Mutex<Received>) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        let body = if let Some(len) = headers.get("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            reader.read_exact(&mut body).unwrap();
            body
        } else if headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            read_chunked(&mut reader)
        } else {
            Vec::new()
        };
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/x-protobuf")
        );
        let export = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP protobuf body");
        {
            let mut got = received.lock().unwrap();
            got.paths.push(path);
            for rs in export.resource_spans {
                let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        got.spans.push((resource.clone(), span));
                    }
                }
            }
        }
        let response = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(response).is_err() {
            return;
        }
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).unwrap();
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

struct Sidecar {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `deputy serve` exporting to `otlp`, on an ephemeral port read from its JSON log.
fn serve(otlp: SocketAddr, state: &std::path::Path) -> Sidecar {
    let mut child = Command::new(DEPUTY)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--no-watch"])
        .arg("--state")
        .arg(state)
        .arg("--bundle")
        .arg(repo_root())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_SERVICE_NAME", "deputy-under-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("DEPUTY_ADMIN_TOKEN", ADMIN)
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr = common::listening_addr(&mut child);
    Sidecar { child, addr }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

#[test]
fn request_and_decision_spans_join_the_callers_trace() {
    let (otlp, received) = receiver();
    let state = tempfile::tempdir().unwrap();
    let mut sidecar = serve(otlp, state.path());

    let body = serde_json::to_vec(&json!({
        "principal": {"type": "Agent", "id": "coder-1"},
        "action": {"type": "Action", "id": "read"},
        "resource": {"type": "File", "id": "repo/src/main.rs"},
    }))
    .unwrap();
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let r = common::send(
        sidecar.addr,
        "POST",
        "/v1/authorize",
        &[("Content-Type", "application/json"), ("traceparent", &traceparent)],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["decision"], "Allow");
    let version = r.json()["policy_version"].as_str().unwrap().to_owned();

    // A delegation: a root agent (no proof needed) and a child (proved within).
    let delegate = |token: &str, grant: &str| {
        let body = serde_json::to_vec(
            &json!({"grant": grant, "ttl_seconds": 600, "ceiling": 1, "can_delegate": true, "task": "t"}),
        )
        .unwrap();
        let auth = format!("Bearer {token}");
        let r = common::send(
            sidecar.addr,
            "POST",
            "/v1/delegations",
            &[("Content-Type", "application/json"), ("Authorization", &auth)],
            Some(&body),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    };
    let root = delegate(
        ADMIN,
        r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#,
    );
    delegate(
        root["credential"].as_str().unwrap(),
        r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");"#,
    );

    // A request without a traceparent starts a trace of its own.
    let r = common::send(sidecar.addr, "GET", "/healthz", &[], None);
    assert_eq!(r.status, 200);

    // `deputy serve` drains and flushes its spans on SIGTERM.
    let pid = sidecar.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = sidecar.child.wait().unwrap();
    assert!(status.success(), "deputy exited with {status}");

    let ok = common::wait_until(Duration::from_secs(10), || {
        let got = received.lock().unwrap();
        got.spans.iter().any(|(_, s)| s.name == "authorize") && got.spans.iter().any(|(_, s)| s.name == "GET /healthz")
    });
    let got = received.lock().unwrap();
    let names: Vec<&str> = got.spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert!(ok, "spans received: {names:?}");
    assert!(got.paths.iter().all(|p| p == "/v1/traces"), "{:?}", got.paths);

    let trace_id = hex::decode(TRACE_ID).unwrap();
    let caller = hex::decode(CALLER_SPAN).unwrap();
    let (resource, http) = got
        .spans
        .iter()
        .find(|(_, s)| s.name == "POST /v1/authorize")
        .unwrap_or_else(|| panic!("no request span among {names:?}"));
    assert_eq!(attr_str(resource, "service.name"), Some("deputy-under-test"));
    assert_eq!(http.trace_id, trace_id, "the request span joins the caller's trace");
    assert_eq!(
        http.parent_span_id, caller,
        "the request span's parent is the caller's span"
    );
    assert_eq!(http.kind, 2, "a server span");
    assert_eq!(
        attr(&http.attributes, "http.response.status_code"),
        Some(&any_value::Value::IntValue(200))
    );

    let (_, authz) = got.spans.iter().find(|(_, s)| s.name == "authorize").unwrap();
    assert_eq!(authz.trace_id, trace_id);
    assert_eq!(
        authz.parent_span_id, http.span_id,
        "authorization is a child of the request span"
    );
    let a = &authz.attributes;
    assert_eq!(attr_str(a, "deputy.decision"), Some("allow"));
    assert_eq!(attr_str(a, "deputy.principal"), Some(r#"Agent::"coder-1""#));
    assert_eq!(attr_str(a, "deputy.action"), Some(r#"Action::"read""#));
    assert_eq!(attr_str(a, "deputy.resource.type"), Some("File"));
    assert_eq!(attr_str(a, "deputy.api"), Some("authorize"));
    assert_eq!(attr_str(a, "deputy.policy_version"), Some(version.as_str()));

    let (_, health) = got.spans.iter().find(|(_, s)| s.name == "GET /healthz").unwrap();
    assert_ne!(health.trace_id, trace_id, "an unrelated request has its own trace");
    assert!(health.parent_span_id.is_empty());

    // Delegation spans under their request spans; the child's proof under its delegation.
    let delegations: Vec<&Span> = got
        .spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "delegation")
        .collect();
    assert_eq!(delegations.len(), 2, "{names:?}");
    for d in &delegations {
        assert_eq!(attr_str(&d.attributes, "deputy.delegation.outcome"), Some("applied"));
        let parent = got
            .spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.span_id == d.parent_span_id)
            .unwrap();
        assert_eq!(parent.name, "POST /v1/delegations");
    }
    let (_, proof) = got.spans.iter().find(|(_, s)| s.name == "proof").unwrap();
    assert_eq!(attr_str(&proof.attributes, "deputy.proof.verdict"), Some("within"));
    assert!(attr(&proof.attributes, "deputy.proof.duration_ms").is_some());
    let proved = delegations.iter().find(|d| d.span_id == proof.parent_span_id).unwrap();
    assert_eq!(attr_str(&proved.attributes, "deputy.proof.verdict"), Some("within"));

    // The initial bundle load is traced too, with the version it loaded.
    let (_, reload) = got
        .spans
        .iter()
        .find(|(_, s)| s.name == "reload")
        .unwrap_or_else(|| panic!("no reload span among {names:?}"));
    assert_eq!(attr_str(&reload.attributes, "deputy.reload.outcome"), Some("loaded"));
    assert_eq!(
        attr_str(&reload.attributes, "deputy.policy_version"),
        Some(version.as_str())
    );
}

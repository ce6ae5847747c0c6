//! Traces end to end: the real binary exports over OTLP/HTTP to a receiver inside the test,
//! which decodes the protobuf bodies with the OTLP message types. Checks trace ids,
//! parent/child links and attributes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
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

/// Every span deputy exported, with its resource's attributes.
#[derive(Default)]
struct Received {
    spans: Vec<(Vec<KeyValue>, Span)>,
}

/// One request the receiver got, as it came; the test thread decodes and checks it.
struct Export {
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A minimal OTLP/HTTP receiver: HTTP/1.1 on a loopback port, each request answered with an
/// empty `ExportTraceServiceResponse` and handed, undecoded, to the test thread. A connection
/// it cannot read is handed over as an error; a connection thread that panics is found when
/// the test joins it (`Receiver::finish`), so nothing the receiver sees can fail unnoticed.
struct Receiver {
    addr: SocketAddr,
    exports: mpsc::Receiver<Result<Export, String>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn receiver() -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, exports) = mpsc::channel();
    let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
    let held = Arc::clone(&connections);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let tx = tx.clone();
            // INVARIANT: the handle is pushed under the lock taken before the thread starts, so
            // once deputy got an answer on this connection, `finish` (which takes the lock after
            // deputy exited) sees the handle.
            let mut handles = held.lock().unwrap();
            handles.push(std::thread::spawn(move || {
                if let Err(e) = serve_connection(stream, &tx) {
                    let _ = tx.send(Err(e));
                }
            }));
        }
    });
    Receiver {
        addr,
        exports,
        connections,
    }
}

impl Receiver {
    /// Once the exporter has exited: joins every connection thread (failing on a panic) and
    /// returns what they received, failing on any request they could not read.
    fn finish(self) -> Vec<Export> {
        let handles = std::mem::take(&mut *self.connections.lock().unwrap());
        assert!(!handles.is_empty(), "deputy never connected to the OTLP receiver");
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
        self.exports
            .try_iter()
            .map(|e| e.unwrap_or_else(|e| panic!("the receiver could not read an export: {e}")))
            .collect()
    }
}

/// Serves one connection until the client closes it, sending each request to `tx`.
fn serve_connection(stream: TcpStream, tx: &mpsc::Sender<Result<Export, String>>) -> Result<(), String> {
    let err = |e: std::io::Error| e.to_string();
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(err)?;
    let mut writer = stream.try_clone().map_err(err)?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).map_err(err)? == 0 {
            return Ok(());
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).map_err(err)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| format!("bad header line `{line}`"))?;
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        let body = if let Some(len) = headers.get("content-length") {
            let mut body = vec![0; len.parse().map_err(|e| format!("content-length `{len}`: {e}"))?];
            reader.read_exact(&mut body).map_err(err)?;
            body
        } else if headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            read_chunked(&mut reader)?
        } else {
            Vec::new()
        };
        let content_type = headers.remove("content-type");
        // The test thread holds the receiving end until it has joined this thread.
        let _ = tx.send(Ok(Export {
            path,
            content_type,
            body,
        }));
        let response = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(response).is_err() {
            return Ok(());
        }
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>, String> {
    let err = |e: std::io::Error| e.to_string();
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).map_err(err)?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| format!("chunk size `{size}`: {e}"))?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).map_err(err)?;
        if size == 0 {
            return Ok(body);
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
    let otlp = receiver();
    let state = tempfile::tempdir().unwrap();
    let mut sidecar = serve(otlp.addr, state.path());

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

    // deputy has exited, so every export it made was answered: the receiver has them all.
    let exports = otlp.finish();
    let mut got = Received::default();
    for export in exports {
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(export.content_type.as_deref(), Some("application/x-protobuf"));
        let request = ExportTraceServiceRequest::decode(export.body.as_slice()).expect("an OTLP protobuf body");
        for rs in request.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.spans.push((resource.clone(), span));
                }
            }
        }
    }
    let names: Vec<&str> = got.spans.iter().map(|(_, s)| s.name.as_str()).collect();

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

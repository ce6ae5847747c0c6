//! OpenTelemetry: the OTLP/HTTP exporter configured from the standard `OTEL_*` variables, and
//! the request span joined to the caller's W3C `traceparent`.

use hyper::header::HeaderMap;
use hyper::{Method, StatusCode};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Key, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::Layer;

/// Variables that turn export on: either endpoint.
const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const ENV_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// Variables that turn it off again, as the OpenTelemetry specification defines them.
const ENV_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const ENV_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
const DEFAULT_SERVICE_NAME: &str = "deputy";
/// How long exiting waits for the last spans to be exported (a collector that is down must not
/// hold up a pod's shutdown).
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The instrumentation scope of deputy's spans.
const SCOPE: &str = "deputy";

/// The tracing guard: flushes and stops the exporter when shut down or dropped.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub(super) fn new(provider: Option<SdkTracerProvider>) -> Self {
        Self { provider }
    }

    /// Exports the spans still queued and stops the exporter. Blocking.
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown_with_timeout(FLUSH_TIMEOUT) {
                eprintln!("warning: flushing traces at shutdown failed: {e}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// A tracer provider exporting over OTLP/HTTP (protobuf) when an endpoint is configured;
/// `None` (nothing exported) otherwise. Batch size, delay and queue follow `OTEL_BSP_*`,
/// sampling `OTEL_TRACES_SAMPLER`, headers and timeout `OTEL_EXPORTER_OTLP_*`.
pub(super) fn provider_from_env() -> Result<Option<SdkTracerProvider>, String> {
    let disabled = std::env::var(ENV_SDK_DISABLED).is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || std::env::var(ENV_TRACES_EXPORTER).is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    if disabled || !(env_set(ENV_ENDPOINT) || env_set(ENV_TRACES_ENDPOINT)) {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| format!("cannot export traces: `{ENV_ENDPOINT}`: {e}"))?;
    let detected = Resource::builder().build();
    let named = env_set(ENV_SERVICE_NAME)
        || detected
            .get(&Key::new("service.name"))
            .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let mut resource = Resource::builder().with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !named {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// The layer bridging deputy's `tracing` spans (info and above) to OpenTelemetry.
pub(super) fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SCOPE))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(Targets::new().with_target(SCOPE, tracing::Level::INFO))
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one HTTP request, a child of the caller's span when the request carries a W3C
/// `traceparent`, and the request's trace id (exported or not: from the caller when there is
/// no exporter).
///
/// A `hot` request (a decision) gets no span unless traces are exported: the log layer would
/// format the span's fields into every request's span data, which costs more than the rest of
/// the logging put together, for log lines the decision path almost never writes (the few it
/// does write name the request id themselves).
pub fn http_span(
    method: &Method,
    path: &str,
    request_id: &str,
    headers: &HeaderMap,
    hot: bool,
) -> (Span, Option<String>) {
    if hot && !tracing::enabled!(target: super::TRACE_ONLY, tracing::Level::INFO) {
        let trace_id = headers
            .contains_key(TRACEPARENT)
            .then(|| remote_trace_id(headers))
            .flatten();
        return (Span::none(), trace_id);
    }
    let span = tracing::info_span!(
        "http",
        otel.name = format!("{method} {}", route_template(path)),
        otel.kind = "server",
        otel.status_code = Empty,
        %method,
        %path,
        request_id,
        http.response.status_code = Empty,
    );
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let remote = parent.span().span_context().clone();
    // Without the OpenTelemetry layer (no exporter) there is nothing to join.
    let _ = span.set_parent(parent);
    let local = span.context().span().span_context().clone();
    let trace_id = [local, remote]
        .into_iter()
        .find(|c| c.is_valid())
        .map(|c| c.trace_id().to_string());
    (span, trace_id)
}

const TRACEPARENT: &str = "traceparent";

/// The trace id of the caller's `traceparent`, when it carries a valid one.
fn remote_trace_id(headers: &HeaderMap) -> Option<String> {
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let remote = parent.span().span_context().clone();
    remote.is_valid().then(|| remote.trace_id().to_string())
}

/// Records the response status on the request span.
pub fn http_done(span: &Span, status: StatusCode) {
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    span.in_scope(|| tracing::debug!(status = status.as_u16(), "answered"));
}

/// The route a path matched, without identifiers, so span names stay few.
fn route_template(path: &str) -> &str {
    const ROUTES: &[&str] = &[
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/status",
        "/.well-known/authzen-configuration",
        "/v1/authorize",
        "/v1/authorize/batch",
        "/access/v1/evaluation",
        "/access/v1/evaluations",
        "/v1/delegations",
        "/v1/audit",
        "/v1/permission-requests",
    ];
    if let Some(r) = ROUTES.iter().find(|r| **r == path) {
        return r;
    }
    if let Some(rest) = path.strip_prefix("/v1/delegations/") {
        return if rest.ends_with("/complete") {
            "/v1/delegations/{id}/complete"
        } else {
            "/v1/delegations/{id}"
        };
    }
    if path.starts_with("/v1/permission-requests/") {
        return "/v1/permission-requests/{id}";
    }
    if path.starts_with("/v1/agents/") && path.ends_with("/capabilities") {
        return "/v1/agents/{id}/capabilities";
    }
    "unknown"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templated() {
        assert_eq!(route_template("/v1/authorize"), "/v1/authorize");
        assert_eq!(route_template("/v1/delegations/agt-1"), "/v1/delegations/{id}");
        assert_eq!(
            route_template("/v1/delegations/agt-1/complete"),
            "/v1/delegations/{id}/complete"
        );
        assert_eq!(
            route_template("/v1/permission-requests/req-1"),
            "/v1/permission-requests/{id}"
        );
        assert_eq!(
            route_template("/v1/agents/a/capabilities"),
            "/v1/agents/{id}/capabilities"
        );
        assert_eq!(route_template("/etc/passwd"), "unknown");
    }

    #[test]
    fn traceparent_gives_the_trace_id_without_an_exporter() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            hyper::header::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        for hot in [false, true] {
            let (_, id) = http_span(&Method::POST, "/v1/authorize", "r1", &headers, hot);
            assert_eq!(id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
            let (_, none) = http_span(&Method::POST, "/v1/authorize", "r2", &HeaderMap::new(), hot);
            assert_eq!(none, None);
        }
    }
}

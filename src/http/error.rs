//! The one place errors become HTTP responses: JSON `{code, message, help?}` with a stable
//! snake_case code (docs/ERRORS.md). Unexpected errors are logged and answered generically.

use hyper::StatusCode;
use serde::Serialize;

use crate::authorize::RequestError;

#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// Further fields of the error body (a counterexample, the policies that denied).
    #[serde(flatten)]
    pub details: Box<serde_json::Map<String, serde_json::Value>>,
}

impl From<crate::delegation::DelegationError> for ApiError {
    fn from(e: crate::delegation::DelegationError) -> Self {
        Self {
            status: StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: e.code,
            message: e.message,
            help: e.help,
            details: e.details,
        }
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            help: None,
            details: Box::default(),
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no route for `{path}`"))
            .with_help("see docs/API.md for the endpoints deputy serves")
    }

    pub fn method_not_allowed(method: &hyper::Method, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method `{method}` is not allowed on `{path}`"),
        )
    }

    pub fn no_bundle() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_bundle",
            "no valid policy bundle is loaded, so every request is denied",
        )
        .with_help("see GET /v1/status for the last load error")
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    /// An unexpected failure: logged in full, answered without internals.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error; request failed closed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the request was not allowed",
        )
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        let status = match e.code {
            "body_too_large" | "batch_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            code: e.code,
            message: e.message,
            help: e.help,
            details: Box::default(),
        }
    }
}

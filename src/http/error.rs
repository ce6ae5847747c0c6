//! The one place errors become HTTP responses: JSON `{code, message, help?}` with a stable
//! snake_case code (docs/ERRORS.md). Unexpected errors are logged and answered generically.

use hyper::StatusCode;
use serde::Serialize;

use crate::authorize::RequestError;
use crate::error::ErrorCode;

/// The HTTP status of each error code: the one place a status is chosen, for single answers,
/// batch items and AuthZEN items alike (docs/ERRORS.md lists the same; a test compares them).
pub fn status(code: ErrorCode) -> StatusCode {
    use ErrorCode as C;
    match code {
        C::MalformedJson
        | C::JsonTooDeep
        | C::UnsupportedMediaType
        | C::MissingField
        | C::InvalidField
        | C::UnknownEntityType
        | C::UnknownAction
        | C::ActionNotApplicable
        | C::InvalidContext
        | C::ContextConflict
        | C::InvalidPageToken
        | C::BodyUnreadable
        | C::GrantInvalid
        | C::GrantForeignPrincipal
        | C::NotAnAgent => StatusCode::BAD_REQUEST,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::DelegationForbidden
        | C::TaintAboveCeiling
        | C::GrantExceedsParent
        | C::NotYourDelegation
        | C::AdminOnly
        | C::NotTheApprover
        | C::NotTheRequester
        | C::InvocationNotConfigured
        | C::InvocationForbidden
        | C::InvocationTooDeep
        | C::McpOriginForbidden
        | C::SessionRestricted => StatusCode::FORBIDDEN,
        C::DelegationNotFound
        | C::DelegationDisabled
        | C::ShadowOff
        | C::PermissionRequestNotFound
        | C::AgentNotFound
        | C::McpServerNotFound
        | C::NotFound => StatusCode::NOT_FOUND,
        C::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        C::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        C::RequestClosed
        | C::ExceedsApprover
        | C::RequestNotApproved
        | C::RequestMismatch
        | C::DeclaredInBundle
        | C::GrantFromBundle
        | C::StateChanged
        | C::CannotEscalate
        | C::DelegationCycle
        | C::InvocationCycle
        | C::SessionAlreadyAccepted
        | C::AgentExists
        | C::AgentIdReserved => StatusCode::CONFLICT,
        C::BodyTooLarge | C::GrantTooLarge | C::BatchTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::TooManyAgents | C::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        C::Overloaded | C::StateUnavailable | C::NoBundle => StatusCode::SERVICE_UNAVAILABLE,
        C::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub code: ErrorCode,
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
            status: status(e.code),
            code: e.code,
            message: crate::error::bounded_message(e.message),
            help: e.help,
            details: e.details,
        }
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: status(code),
            code,
            message: crate::error::bounded_message(message.into()),
            help: None,
            details: Box::default(),
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no route for `{path}`"))
            .with_help("see docs/API.md for the endpoints deputy serves")
    }

    pub fn method_not_allowed(method: &hyper::Method, path: &str) -> Self {
        Self::new(
            ErrorCode::MethodNotAllowed,
            format!("method `{method}` is not allowed on `{path}`"),
        )
    }

    pub fn no_bundle() -> Self {
        Self::new(
            ErrorCode::NoBundle,
            "no valid policy bundle is loaded, so every request is denied",
        )
        .with_help("see GET /v1/status for the last load error")
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            ErrorCode::BodyTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    /// An unexpected failure: logged in full, answered without internals.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error; request failed closed");
        Self::new(ErrorCode::Internal, "internal error; the request was not allowed")
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        Self {
            status: status(e.code),
            code: e.code,
            message: e.message,
            help: e.help,
            details: Box::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::error::ProblemCode;

    /// The rows `| `code` | … |` of the table under `heading` in docs/ERRORS.md, as cells.
    fn table(doc: &str, heading: &str) -> Vec<Vec<String>> {
        let section = doc
            .split(heading)
            .nth(1)
            .unwrap_or_else(|| panic!("no `{heading}` in docs/ERRORS.md"));
        let section = section.split("\n## ").next().unwrap_or(section);
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                l.split('|')
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn docs_list_exactly_the_codes_with_their_statuses() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ERRORS.md")).unwrap();
        let documented: Vec<(String, String)> = table(&doc, "## Request errors")
            .into_iter()
            .map(|row| (row[0].trim_matches('`').to_owned(), row[1].clone()))
            .collect();
        let emitted: Vec<(String, String)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str().to_owned(), status(*c).as_u16().to_string()))
            .collect();
        assert_eq!(
            documented, emitted,
            "docs/ERRORS.md's request errors and ErrorCode disagree"
        );
        let documented: Vec<String> = table(&doc, "## Bundle problems")
            .into_iter()
            .map(|row| row[0].trim_matches('`').to_owned())
            .collect();
        let mut emitted: Vec<String> = ProblemCode::ALL.iter().map(|c| c.as_str().to_owned()).collect();
        let mut sorted = documented.clone();
        sorted.sort();
        emitted.sort();
        assert_eq!(
            sorted, emitted,
            "docs/ERRORS.md's bundle problems and ProblemCode disagree"
        );
        let documented: Vec<String> = table(&doc, "## MCP gateway errors")
            .into_iter()
            .map(|row| row[0].trim_matches('`').to_owned())
            .collect();
        let emitted: Vec<String> = crate::error::McpCode::ALL.iter().map(|c| c.as_str().to_owned()).collect();
        assert_eq!(documented, emitted, "docs/ERRORS.md's MCP gateway errors and McpCode disagree");
    }
}

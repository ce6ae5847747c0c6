//! Every stable code deputy reports, in one place: the codes it answers an HTTP request with
//! (`ErrorCode`) and the codes of bundle problems (`ProblemCode`). Codes are never renamed or
//! reused; docs/ERRORS.md lists each (with its status, for HTTP codes: `http::error::status` is
//! the one place a status is chosen), and a test fails when the two disagree. Domain errors carry
//! a code and a message that names the field or file at fault, never a status.

use serde::{Serialize, Serializer};

macro_rules! codes {
    ($(#[$edoc:meta])* $name:ident { $( $(#[$doc:meta])* $variant:ident = $code:literal, )* }) => {
        $(#[$edoc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$doc])* $variant, )*
        }

        impl $name {
            /// Every code, in the order docs/ERRORS.md lists them.
            // Read by the docs test; `McpCode`'s by it alone.
            #[allow(dead_code)]
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];

            /// The code as it appears in answers: snake_case, stable.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $code, )*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

codes! {
/// A stable error code of an HTTP answer.
ErrorCode {
    /// The body is empty or not JSON.
    MalformedJson = "malformed_json",
    /// The body nests deeper than `--max-json-depth`.
    JsonTooDeep = "json_too_deep",
    /// `Content-Type` is present and not JSON.
    UnsupportedMediaType = "unsupported_media_type",
    /// A required field is absent.
    MissingField = "missing_field",
    /// A field has the wrong type or an invalid value.
    InvalidField = "invalid_field",
    /// The principal or resource type is not in the schema.
    UnknownEntityType = "unknown_entity_type",
    /// The action is not in the schema (or is ambiguous).
    UnknownAction = "unknown_action",
    /// The schema does not let the action apply to these types.
    ActionNotApplicable = "action_not_applicable",
    /// The context does not match the action's context type.
    InvalidContext = "invalid_context",
    /// An AuthZEN context key collides with a `properties` mapping.
    ContextConflict = "context_conflict",
    /// A search's `page.token` is not one deputy issued for this search and policy version.
    InvalidPageToken = "invalid_page_token",
    /// The connection failed while the body was read.
    BodyUnreadable = "body_unreadable",
    /// The body did not arrive in time.
    BodyTimeout = "body_timeout",
    /// The body exceeds `--max-body-bytes`.
    BodyTooLarge = "body_too_large",
    /// A grant exceeds `--max-grant-bytes`.
    GrantTooLarge = "grant_too_large",
    /// The caller has `--max-children` live children.
    TooManyAgents = "too_many_agents",
    /// The agent has `--max-pending-requests` pending requests.
    TooManyRequests = "too_many_requests",
    /// More than `--max-connections` connections are open.
    Overloaded = "overloaded",
    /// A batch exceeds `--max-batch` items.
    BatchTooLarge = "batch_too_large",
    /// A grant does not parse, validate, or carries an unknown annotation.
    GrantInvalid = "grant_invalid",
    /// A grant policy is about a principal other than its holder.
    GrantForeignPrincipal = "grant_foreign_principal",
    /// No valid credential.
    Unauthenticated = "unauthenticated",
    /// `can_delegate = false`, or the admin's delegation rules deny.
    DelegationForbidden = "delegation_forbidden",
    /// The child would start with a taint above its ceiling.
    TaintAboveCeiling = "taint_above_ceiling",
    /// The prover found a request the child allows and the parent's delegable view denies.
    GrantExceedsParent = "grant_exceeds_parent",
    /// Only the admin or an ancestor may do this to that delegation.
    NotYourDelegation = "not_your_delegation",
    /// The endpoint needs the admin credential.
    AdminOnly = "admin_only",
    /// No such delegation.
    DelegationNotFound = "delegation_not_found",
    /// Delegation is not enabled on this sidecar.
    DelegationDisabled = "delegation_disabled",
    /// The sidecar compares no shadow bundle (`--shadow`).
    ShadowOff = "shadow_off",
    /// The admin filed a permission request.
    NotAnAgent = "not_an_agent",
    /// The request waits on someone else.
    NotTheApprover = "not_the_approver",
    /// Only the requester may withdraw a request.
    NotTheRequester = "not_the_requester",
    /// No such request, or not visible to the caller.
    PermissionRequestNotFound = "permission_request_not_found",
    /// No such agent.
    AgentNotFound = "agent_not_found",
    /// The request was already decided, withdrawn, expired or closed.
    RequestClosed = "request_closed",
    /// The request is not within the approver's delegable view.
    ExceedsApprover = "exceeds_approver",
    /// `approved_request` is not approved, or does not cover the approvers needed now.
    RequestNotApproved = "request_not_approved",
    /// `approved_request` was approved for something else.
    RequestMismatch = "request_mismatch",
    /// A bundle agent lives as long as the bundle declares it.
    DeclaredInBundle = "declared_in_bundle",
    /// A bundle agent's grant changes only through the bundle.
    GrantFromBundle = "grant_from_bundle",
    /// The state kept changing while the request was checked.
    StateChanged = "state_changed",
    /// A human is the last approver.
    CannotEscalate = "cannot_escalate",
    /// The named child is already on the chain.
    DelegationCycle = "delegation_cycle",
    /// An agent with that id exists or existed.
    AgentExists = "agent_exists",
    /// The id belongs to the bundle or to deputy.
    AgentIdReserved = "agent_id_reserved",
    /// The bundle's schema declares no `invoke_agent` action (or a context deputy cannot supply).
    InvocationNotConfigured = "invocation_not_configured",
    /// The admin's `invoke_agent` rules deny the invocation.
    InvocationForbidden = "invocation_forbidden",
    /// The callee is already on the caller's invocation chain.
    InvocationCycle = "invocation_cycle",
    /// The invocation chain would be deeper than the limit.
    InvocationTooDeep = "invocation_too_deep",
    /// The session was already accepted: its credential is handed out once.
    SessionAlreadyAccepted = "session_already_accepted",
    /// A session acts for its callee only: it cannot spawn, ask for permission, or be invoked.
    SessionRestricted = "session_restricted",
    /// The state store failed.
    StateUnavailable = "state_unavailable",
    /// `/mcp/<server>` names no MCP server this sidecar serves.
    McpServerNotFound = "mcp_server_not_found",
    /// An MCP request carried an `Origin` that is not a loopback one.
    McpOriginForbidden = "mcp_origin_forbidden",
    /// No such route.
    NotFound = "not_found",
    /// The route exists with another method.
    MethodNotAllowed = "method_not_allowed",
    /// No valid bundle has been loaded yet.
    NoBundle = "no_bundle",
    /// An unexpected failure.
    Internal = "internal",
}
}

codes! {
/// A stable code in an MCP gateway answer: in a JSON-RPC error's `data.code`, or a denied tool
/// call's `code` (docs/ERRORS.md, "MCP gateway").
McpCode {
    /// The message is not one JSON-RPC 2.0 request or notification, or its `params` do not fit.
    InvalidMessage = "mcp_invalid_message",
    /// The method is not one the gateway serves.
    MethodNotFound = "mcp_method_not_found",
    /// The server has no tool of that name.
    UnknownTool = "mcp_unknown_tool",
    /// The arguments carry `taint`, which deputy supplies itself.
    ReservedArgument = "mcp_reserved_argument",
    /// The call was denied by policy; it did not reach the server.
    Denied = "mcp_denied",
    /// The upstream server could not be started, exited, or broke its pipe.
    UpstreamUnavailable = "mcp_upstream_unavailable",
    /// The upstream server did not answer in time.
    UpstreamTimeout = "mcp_upstream_timeout",
    /// The taint the call raised could not be made durable; the call was not made.
    StateUnavailable = "state_unavailable",
    /// An unexpected failure; the call was not made.
    Internal = "internal",
}
}

codes! {
/// A stable code of a bundle problem (`deputy validate`, `/v1/status`, logs).
ProblemCode {
    /// The bundle directory does not exist.
    BundleNotFound = "bundle_not_found",
    /// A file or directory of the bundle cannot be read.
    FileUnreadable = "file_unreadable",
    /// There is no schema.
    SchemaMissing = "schema_missing",
    /// A schema file does not parse, or the fragments do not form a schema.
    SchemaInvalid = "schema_invalid",
    /// The schema cannot hold deputy's agent model.
    SchemaLacksAgentModel = "schema_lacks_agent_model",
    /// The entities declare an id an agent deputy created holds.
    AgentIdConflict = "agent_id_conflict",
    /// A shipped grant does not parse or validate.
    GrantInvalid = "grant_invalid",
    /// A shipped grant holds a policy about another principal.
    GrantForeignPrincipal = "grant_foreign_principal",
    /// A policy file does not parse.
    PolicyParse = "policy_parse",
    /// Two policies share an id.
    PolicyIdDuplicate = "policy_id_duplicate",
    /// A policy fails strict validation, or cannot be added.
    PolicyInvalid = "policy_invalid",
    /// An entity file is not JSON.
    EntitiesJson = "entities_json",
    /// An entity file does not conform to the schema.
    EntitiesInvalid = "entities_invalid",
    /// The state store failed while the bundle was being installed.
    StateUnavailable = "state_unavailable",
    /// An unexpected failure while loading.
    Internal = "internal",
}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let all = ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .chain(ProblemCode::ALL.iter().map(|c| c.as_str()));
        let mut seen = std::collections::HashSet::new();
        for (i, c) in all.enumerate() {
            // A code may mean the same in both lists (`internal`), never twice in one.
            let list = if i < ErrorCode::ALL.len() { "http" } else { "problem" };
            assert!(seen.insert((list, c)), "{c} twice");
            assert!(c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'), "{c}");
        }
    }
}

/// The longest error message answered, in bytes. Messages quote the input at fault; a client
/// that sends a megabyte-long type name gets its first part back, not the whole of it.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `message` cut to [`MAX_MESSAGE_BYTES`] (at a character boundary), saying how much was cut.
pub fn bounded_message(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let total = message.len();
    let mut cut = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(&format!("… ({total} bytes in all)"));
    message
}

#[cfg(test)]
mod bounded_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_message("short".to_owned()), "short");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = bounded_message(long.clone());
        assert!(cut.len() < MAX_MESSAGE_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!("… ({} bytes in all)", long.len())));
        assert!(long.starts_with(cut.split('…').next().unwrap()));
    }
}

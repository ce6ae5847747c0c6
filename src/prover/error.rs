//! Errors of the prover: a grant that cannot be parsed, linked or validated.
//!
//! A verdict (within, exceeds, inconclusive) is never an error; these are bad input.

use std::fmt;

use serde::Serialize;

/// Which grant an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantRole {
    /// A grant checked on its own (`validate_grant`).
    Grant,
    /// The child's (requested) grant.
    Child,
    /// The parent's grant.
    Parent,
}

impl fmt::Display for GrantRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GrantRole::Grant => "grant",
            GrantRole::Child => "child grant",
            GrantRole::Parent => "parent grant",
        })
    }
}

/// Why a grant was rejected before any proof was attempted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GrantError {
    /// The grant is not valid Cedar policy syntax.
    #[error(transparent)]
    Parse(ParseGrant),
    /// A template uses `?resource`; grants are templates over `?principal` only.
    #[error(transparent)]
    ResourceSlot(ResourceSlot),
    /// The grant does not validate strictly against the schema.
    #[error(transparent)]
    Invalid(InvalidGrant),
    /// A policy of the grant is about some principal other than the grant's holder.
    #[error(transparent)]
    ForeignPrincipal(ForeignPrincipal),
    /// The child principal given in the options is not usable.
    #[error(transparent)]
    Internal(InternalError),
}

impl GrantError {
    /// Stable snake_case code of this error (never renamed or reused).
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::Parse(_) => "grant_parse_error",
            GrantError::ResourceSlot(_) => "grant_resource_slot",
            GrantError::Invalid(_) => "grant_invalid",
            GrantError::ForeignPrincipal(_) => "grant_foreign_principal",
            GrantError::Internal(_) => "prover_internal_error",
        }
    }

    /// How to fix it, when there is something to say.
    pub fn help(&self) -> Option<&'static str> {
        match self {
            GrantError::Parse(_) => Some("a grant is a list of Cedar policies or templates over `?principal`"),
            GrantError::ResourceSlot(_) => Some("name the resource in the scope, e.g. `resource in Folder::\"repo\"`"),
            GrantError::Invalid(_) => {
                Some("fix the policies so that `cedar validate --validation-mode strict` accepts them")
            }
            GrantError::ForeignPrincipal(_) => Some(
                "a grant is about its holder only: scope each policy `principal == ?principal` (or leave \
                 `principal` unconstrained) and do not test `principal` in `when`/`unless`",
            ),
            GrantError::Internal(_) => None,
        }
    }

    pub(crate) fn internal(message: String) -> GrantError {
        GrantError::Internal(InternalError { message })
    }

    pub(crate) fn with_role(self, role: GrantRole) -> GrantError {
        match self {
            GrantError::Invalid(mut e) => {
                e.role = role;
                GrantError::Invalid(e)
            }
            GrantError::Parse(mut e) => {
                e.role = role;
                GrantError::Parse(e)
            }
            other => other,
        }
    }
}

/// The grant text is not valid Cedar.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot parse {role}: {message}")]
pub struct ParseGrant {
    pub(crate) role: GrantRole,
    /// Cedar's parse errors, each with its line.
    pub message: String,
}

/// A template uses the `?resource` slot.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy `{policy}` (line {line}) uses `?resource`; grants are templates over `?principal` only")]
pub struct ResourceSlot {
    /// Display id of the policy.
    pub policy: String,
    /// Line the policy starts on.
    pub line: usize,
}

/// A policy names or tests a principal other than the holder: `principal == Agent::"x"`,
/// `principal in Group::"g"`, or `principal` read in a condition. Such a policy would decide
/// differently for the holder and for its descendants, which evaluate the holder's grant as
/// their own bound, so no proof about the holder would cover them.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy `{policy}` (line {line}) {why}; a grant may only be about its holder (`?principal`)")]
pub struct ForeignPrincipal {
    /// Display id of the policy.
    pub policy: String,
    /// Line the policy starts on.
    pub line: usize,
    /// What about it is foreign, in words.
    pub why: String,
}

/// Strict validation against the schema failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{role} is not valid against the schema: {}", render_issues(.issues))]
pub struct InvalidGrant {
    /// The grant that failed.
    pub role: GrantRole,
    /// One entry per validation error.
    pub issues: Vec<ValidationIssue>,
}

/// One validation error, pointing at a policy and line.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationIssue {
    /// Display id of the policy.
    pub policy: String,
    /// Line of the offending text.
    pub line: usize,
    /// The validator's message.
    pub message: String,
    /// The validator's hint, if any.
    pub help: Option<String>,
}

/// Something that should not happen (for example the policies could not be linked).
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal prover error: {message}")]
pub struct InternalError {
    pub(crate) message: String,
}

fn render_issues(issues: &[ValidationIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("policy `{}` (line {}): {}", i.policy, i.line, i.message))
        .collect::<Vec<_>>()
        .join("; ")
}

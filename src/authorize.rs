//! The decision path: turn a request into a Cedar `Request` checked against the bundle's schema,
//! and decide it against one immutable bundle. Pure and synchronous; the HTTP layer calls it.

mod request;

use std::sync::LazyLock;

use cedar_policy::{Authorizer, Decision as CedarDecision, PolicyId, Request};
use serde::Serialize;

use crate::bundle::Bundle;

pub use request::{parse_context, parse_uid, EntityRef, Fields, RequestError};

static AUTHORIZER: LazyLock<Authorizer> = LazyLock::new(Authorizer::new);

/// A decision, with Cedar's diagnostics: the determining policies and the policies that erred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allow: bool,
    /// Policies that determined the decision (the satisfied permits on Allow, forbids on Deny).
    pub reasons: Vec<String>,
    pub errors: Vec<PolicyError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyError {
    pub policy: String,
    pub message: String,
}

/// Decides `request` against the bundle's policies and entities. Never fails: evaluation
/// errors are reported in `errors` and, as in Cedar, an erring policy does not apply.
pub fn authorize(bundle: &Bundle, request: &Request) -> Decision {
    let response = AUTHORIZER.is_authorized(request, &bundle.policies, &bundle.entities);
    let mut reasons: Vec<String> = response.diagnostics().reason().map(PolicyId::to_string).collect();
    reasons.sort();
    let mut errors: Vec<PolicyError> = response
        .diagnostics()
        .errors()
        .map(|e| {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
            PolicyError {
                policy: e.policy_id().to_string(),
                message: e.inner().to_string(),
            }
        })
        .collect();
    errors.sort_by(|a, b| a.policy.cmp(&b.policy));
    Decision {
        allow: response.decision() == CedarDecision::Allow,
        reasons,
        errors,
    }
}

/// Builds a Cedar request from its parts, checked against the bundle's schema.
pub fn build_request(
    bundle: &Bundle,
    principal: EntityRef,
    action: EntityRef,
    resource: EntityRef,
    context: Option<serde_json::Value>,
    context_field: &str,
) -> Result<Request, RequestError> {
    let context = parse_context(bundle, &action.uid, context, context_field)?;
    Request::new(principal.uid, action.uid, resource.uid, context, Some(&bundle.schema))
        .map_err(|e| RequestError::from_validation(&e, &principal.field, &action.field, &resource.field))
}

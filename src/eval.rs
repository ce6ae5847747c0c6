//! Evaluating Cedar policies: a decision over a policy set, or over the slices of its index
//! that can apply to a request, combined exactly as Cedar's `Authorizer` combines policies.
//! A leaf of the crate (it knows Cedar, nothing of deputy's state): the bundle builds its index
//! with it and the decision path and the delegation rules decide with it.

mod fast;
mod index;

use std::cell::OnceCell;
use std::sync::LazyLock;

use cedar_policy::{Authorizer, Decision as CedarDecision, Entities, EntityUid, PolicyId, PolicySet, Request};
use serde::Serialize;
use smallvec::SmallVec;

pub use index::PolicyIndex;

static AUTHORIZER: LazyLock<Authorizer> = LazyLock::new(Authorizer::new);

/// A decision, with Cedar's diagnostics: the determining policies and the policies that erred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Allow or deny (a request no policy permits is denied).
    pub allow: bool,
    /// Policies that determined the decision (the satisfied permits on Allow, forbids on Deny).
    pub reasons: Vec<String>,
    /// Policies that erred while evaluating; as in Cedar, an erring policy does not apply.
    pub errors: Vec<PolicyError>,
}

impl Decision {
    /// A decision with its reasons and errors in a stable order (by policy id).
    fn sorted(allow: bool, mut reasons: Vec<String>, mut errors: Vec<PolicyError>) -> Decision {
        reasons.sort();
        errors.sort_by(|a, b| a.policy.cmp(&b.policy));
        Decision { allow, reasons, errors }
    }
}

/// A policy that erred on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyError {
    /// The policy's id.
    pub policy: String,
    /// Cedar's message.
    pub message: String,
}

/// A policy set with its index: evaluates only the slices that can apply to a request.
#[derive(Debug, Clone, Copy)]
pub struct Indexed<'a> {
    pub policies: &'a PolicySet,
    pub index: &'a PolicyIndex,
}

impl<'a> Indexed<'a> {
    /// Decides `request` exactly as [`evaluate`] over the whole set would.
    pub fn evaluate(&self, entities: &Entities, request: &Request) -> Decision {
        evaluate_indexed(self.policies, self.index, entities, request)
    }

    /// [`Indexed::evaluate`] for a request already looked up.
    pub fn evaluate_asked(&self, asked: &Asked<'a>) -> Decision {
        asked.evaluate(self.policies, self.index)
    }

    /// [`Indexed::evaluate_asked`], its reasons not yet rendered.
    pub fn verdict(&self, asked: &Asked<'a>) -> Verdict<'a> {
        asked.verdict(self.policies, self.index)
    }

    /// What of `asked` depends on its action and resource alone, looked up in the index once
    /// for asking it on behalf of several principals ([`Asked::as_principal`]).
    pub fn prepare<'s>(&self, asked: &'s Asked<'a>) -> Prepared<'a, 's> {
        Prepared(self.index.prepare(&asked.ctx))
    }

    /// [`Indexed::verdict`] of `asked` (`prepared`'s request, or one made from it by
    /// [`Asked::as_principal`]) through `prepared`: the same verdict.
    pub fn verdict_prepared(&self, asked: &Asked<'a>, prepared: &Prepared<'a, '_>) -> Verdict<'a> {
        asked.verdict_with(self.policies, self.index, prepared.0.as_ref())
    }
}

/// See [`Indexed::prepare`]. Used with another index or request, it is ignored (the index
/// visits as usual); `None` inside when the index cannot answer for the request.
pub struct Prepared<'a, 's>(Option<index::Prepared<'a, 's>>);

/// Decides `request` against any policy set and entity store, evaluating every policy.
pub fn evaluate(policies: &PolicySet, entities: &Entities, request: &Request) -> Decision {
    let all = policies.policies().map(|p| Candidate::Policy(p.as_ref()));
    evaluate_candidates(all, None, entities, &Req::Given(request))
        .map_or_else(|| authorizer_decision(policies, entities, request), Verdict::decision)
}

/// Decides `request` against the slices of `index` that can apply to it, combined as Cedar
/// combines policies; `policies` (the set `index` was built from) when the index declines.
///
/// INVARIANT: the slices are disjoint and hold every policy whose scope matches (see
/// `index`), so evaluating their policies is evaluating every policy that can be satisfied or
/// err; policies whose scope does not match are neither.
pub fn evaluate_indexed(policies: &PolicySet, index: &PolicyIndex, entities: &Entities, request: &Request) -> Decision {
    Asked::new(entities, request).evaluate(policies, index)
}

/// One request against one store, its entities looked up once, asked of several indexed
/// policy sets in turn (the admin policies and each hop of an agent's chain).
pub struct Asked<'a> {
    ctx: fast::Ctx<'a>,
    entities: &'a Entities,
    request: Req<'a>,
}

/// The Cedar request an [`Asked`] stands for, needed only when Cedar's evaluator or authorizer
/// runs.
#[expect(
    clippy::large_enum_variant,
    reason = "one per ask, on the stack; boxing the cell would allocate for every ancestor"
)]
enum Req<'a> {
    Given(&'a Request),
    /// `base` asked on behalf of `principal`: built on first use (an ancestor's admin check
    /// rarely needs it).
    AsPrincipal {
        base: &'a Request,
        principal: &'a EntityUid,
        built: OnceCell<Request>,
    },
}

impl<'a> Req<'a> {
    fn get(&self) -> &Request {
        match self {
            Req::Given(r) => r,
            Req::AsPrincipal { base, principal, built } => built.get_or_init(|| {
                // What `Request::new(principal, action, resource, context, None)` builds (it
                // validates nothing without a schema), sharing the base's parts.
                let base: &cedar_policy_core::ast::Request = base.as_ref();
                Request::from(cedar_policy_core::ast::Request::new_unchecked(
                    cedar_policy_core::ast::EntityUIDEntry::known(principal.as_ref().clone(), None),
                    base.action().clone(),
                    base.resource().clone(),
                    base.context().cloned(),
                ))
            }),
        }
    }

    /// The request this one was made from by changing the principal (itself, if none).
    fn base(&self) -> &'a Request {
        match self {
            Req::Given(r) | Req::AsPrincipal { base: r, .. } => r,
        }
    }
}

impl<'a> Asked<'a> {
    pub fn new(entities: &'a Entities, request: &'a Request) -> Asked<'a> {
        let core_request: &cedar_policy_core::ast::Request = request.as_ref();
        Asked {
            ctx: fast::Ctx::new(entities.as_ref(), core_request),
            entities,
            request: Req::Given(request),
        }
    }

    /// The same request (action, resource, context) on behalf of `principal`, looking up only
    /// the principal; its Cedar request is built only if Cedar must evaluate something. `None`
    /// when the request lacks an action, a resource or a context (a partial request; never one
    /// built for a decision).
    pub fn as_principal(&self, principal: &'a EntityUid) -> Option<Asked<'a>> {
        let base = self.request.base();
        base.action()?;
        base.resource()?;
        base.context()?;
        Some(Asked {
            ctx: self.ctx.with_principal(principal.as_ref()),
            entities: self.entities,
            request: Req::AsPrincipal {
                base,
                principal,
                built: OnceCell::new(),
            },
        })
    }

    /// Decides the request exactly as [`evaluate`] over the whole of `policies` would, `index`
    /// having been built from `policies`.
    pub fn evaluate(&self, policies: &'a PolicySet, index: &'a PolicyIndex) -> Decision {
        self.verdict(policies, index).decision()
    }

    /// [`Asked::evaluate`], its reasons not yet rendered: for a caller that needs them only on a
    /// deny (an ancestor's admin check).
    pub fn verdict(&self, policies: &'a PolicySet, index: &'a PolicyIndex) -> Verdict<'a> {
        self.verdict_with(policies, index, None)
    }

    fn verdict_with(
        &self,
        policies: &'a PolicySet,
        index: &'a PolicyIndex,
        prepared: Option<&index::Prepared<'a, '_>>,
    ) -> Verdict<'a> {
        // The remembered attribute reads are numbered per index: start afresh for this one.
        self.ctx.forget();
        // On the stack: a request visits a handful of slices per index, and a chain several
        // indexes per request.
        let mut slices: SmallVec<[&index::Slice; 8]> = SmallVec::new();
        let found = match prepared {
            Some(p) => index.slices_prepared(p, &self.ctx, &mut slices),
            None => index.slices_for(&self.ctx, &mut slices),
        };
        if !found {
            return Verdict::Decided(evaluate(policies, self.entities, self.request.get()));
        }
        let ready = slices.iter().flat_map(|s| s.iter()).map(Candidate::Ready);
        evaluate_candidates(ready, Some(&self.ctx), self.entities, &self.request).unwrap_or_else(|| {
            Verdict::Decided(authorizer_decision(policies, self.entities, self.request.get()))
        })
    }
}

/// A decision whose reasons are named but not yet rendered as strings.
pub enum Verdict<'a> {
    Named {
        allow: bool,
        reasons: SmallVec<[Name<'a>; 2]>,
        errors: Vec<PolicyError>,
    },
    Decided(Decision),
}

impl Verdict<'_> {
    pub fn allow(&self) -> bool {
        match self {
            Verdict::Named { allow, .. } => *allow,
            Verdict::Decided(d) => d.allow,
        }
    }

    /// The decision, its reasons rendered and in order.
    pub fn decision(self) -> Decision {
        match self {
            Verdict::Named { allow, reasons, errors } => {
                Decision::sorted(allow, reasons.iter().map(Name::render).collect(), errors)
            }
            Verdict::Decided(d) => d,
        }
    }
}

/// A policy to evaluate: from an index slice (condition built at load) or straight from a set.
enum Candidate<'a> {
    Ready(&'a index::Ready),
    Policy(&'a cedar_policy_core::ast::Policy),
}

/// Decides `request` against `candidates` (distinct policies) the way Cedar's `Authorizer`
/// does: each policy's condition is interpreted by Cedar's own evaluator, exactly as the
/// authorizer does (`Evaluator::partial_evaluate` is `partial_interpret(&policy.condition(),
/// policy.env())`; a `Ready` holds that condition), or by deputy's evaluator for the fragment it
/// covers, which answers only where Cedar's would answer the same without error (`fast`); any
/// satisfied forbid denies, with every satisfied forbid as a reason; else any satisfied permit
/// allows, with every satisfied permit as a reason; else deny. A policy that errs is skipped and
/// reported. `None` on a residual (possible only with unknowns, which deputy's requests never
/// carry): the caller then asks Cedar's `Authorizer`.
fn evaluate_candidates<'a>(
    candidates: impl Iterator<Item = Candidate<'a>>,
    ctx: Option<&fast::Ctx<'_>>,
    entities: &Entities,
    request: &Req<'_>,
) -> Option<Verdict<'a>> {
    use cedar_policy_core::ast::Effect;
    use cedar_policy_core::evaluator::Evaluator;
    // Built on first use: most indexed decisions never need it (nor the request, when it is
    // asked on behalf of another principal).
    let cedar = OnceCell::new();
    let cedar = || {
        cedar.get_or_init(|| {
            let core_request: &cedar_policy_core::ast::Request = request.get().as_ref();
            Evaluator::new(
                core_request.clone(),
                entities.as_ref(),
                cedar_policy_core::extensions::Extensions::all_available(),
            )
        })
    };
    let (mut permits, mut forbids, mut errors) = (SmallVec::new(), SmallVec::new(), Vec::new());
    for candidate in candidates {
        let (name, effect, satisfied) = match candidate {
            Candidate::Ready(p) => {
                let satisfied = match p.fast.as_ref().zip(ctx).and_then(|(cond, ctx)| cond.eval(ctx)) {
                    Some(b) => Ok(b),
                    None => match &p.rest.cedar {
                        index::CedarForm::Policy(policy) => {
                            boolean(cedar().partial_interpret(&policy.condition(), policy.env()))?
                        }
                        index::CedarForm::Condition { condition, env } => {
                            boolean(cedar().partial_interpret(condition, env))?
                        }
                    },
                };
                (Name::Ready(&p.rest.name), p.effect, satisfied)
            }
            Candidate::Policy(p) => (
                Name::Id(p.id()),
                p.effect(),
                boolean(cedar().partial_interpret(&p.condition(), p.env()))?,
            ),
        };
        match satisfied {
            Ok(true) => match effect {
                Effect::Permit => permits.push(name),
                Effect::Forbid => forbids.push(name),
            },
            Ok(false) => {}
            Err(e) => errors.push(PolicyError {
                policy: name.render(),
                message: e.to_string(),
            }),
        }
    }
    let allow = forbids.is_empty() && !permits.is_empty();
    let reasons = if allow { permits } else { forbids };
    Some(Verdict::Named { allow, reasons, errors })
}

/// A condition's value as the authorizer reads it: `None` for anything but a boolean or an error
/// (a condition is a conjunction, which Cedar only lets be a boolean; a residual needs
/// unknowns): the caller then asks Cedar's `Authorizer` rather than guess.
fn boolean(
    interpreted: Result<cedar_policy_core::ast::PartialValue, cedar_policy_core::evaluator::EvaluationError>,
) -> Option<Result<bool, cedar_policy_core::evaluator::EvaluationError>> {
    use cedar_policy_core::ast::{Literal, PartialValue, ValueKind};
    match interpreted {
        Ok(PartialValue::Value(v)) => match v.value_kind() {
            ValueKind::Lit(Literal::Bool(b)) => Some(Ok(*b)),
            _ => None,
        },
        Ok(PartialValue::Residual(_)) => None,
        Err(e) => Some(Err(e)),
    }
}

/// A policy's id, already rendered (index slices) or not.
pub enum Name<'a> {
    Ready(&'a str),
    Id(&'a cedar_policy_core::ast::PolicyID),
}

impl Name<'_> {
    fn render(&self) -> String {
        match self {
            Name::Ready(s) => (*s).to_owned(),
            Name::Id(id) => id.to_string(),
        }
    }
}

/// Cedar's `Authorizer` over the whole set (used only for residuals).
fn authorizer_decision(policies: &PolicySet, entities: &Entities, request: &Request) -> Decision {
    let response = AUTHORIZER.is_authorized(request, policies, entities);
    Decision::sorted(
        response.decision() == CedarDecision::Allow,
        response.diagnostics().reason().map(PolicyId::to_string).collect(),
        policy_errors(&response),
    )
}

fn policy_errors(response: &cedar_policy::Response) -> Vec<PolicyError> {
    response
        .diagnostics()
        .errors()
        .map(|e| {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
            PolicyError {
                policy: e.policy_id().to_string(),
                message: e.inner().to_string(),
            }
        })
        .collect()
}

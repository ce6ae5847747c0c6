//! One bound of the decision path, partially evaluated with Cedar's type-aware partial evaluator
//! (`tpe`): the principal and action known, the context unknown, the resource first unknown (of a
//! type: what holds for every resource of it), then each resource of the store in turn.
//!
//! A bound is a policy set decided for one principal: the admin policies for the agent, the
//! admin policies for each ancestor, each hop's grant. A bound's answer for a resource is
//! Allow, Deny, or a condition on the context: Cedar's residual permits and forbids, rendered
//! as Cedar (`(p1) || (p2)` for the permits, `!((f1) || (f2))` for the forbids). The taint
//! deputy supplies for its agents (`context.taint`) is put in before the per-resource step, so
//! no condition asks the agent for what deputy decides.
//!
//! Resources the residuals cannot tell apart share one answer: those of one class (`Classes`:
//! the same values for every read of the resource, `reads`, by every residual of the bounds)
//! share the answer of all the bounds, combined; and within a bound, those with the same
//! residuals whose scope can match and the same values of what those read share one
//! per-resource evaluation.

mod reads;

use std::collections::{BTreeSet, HashMap, HashSet};

use cedar_policy::{
    Decision as CedarDecision, EntityTypeName, EntityUid, PartialEntities, PartialEntityUid, PartialRequest, Policy,
    PolicySet, Schema, TpeResponse,
};
use cedar_policy_core::ast::{EntityUID, Literal as CedarLiteral, ValueKind};
use serde_json::Value;
use smol_str::SmolStr;

use crate::eval::PolicyIndex;

/// One bound of the chain: a policy set asked about `principal`.
#[derive(Clone, Copy)]
pub struct Bound<'a> {
    pub policies: &'a PolicySet,
    /// The admin set's index: which policies' scopes can match a resource.
    pub index: Option<&'a PolicyIndex>,
    pub principal: &'a EntityUid,
    /// Whether its satisfied permits are reasons of the decision (the agent's own admin
    /// decision and every hop's grant; an ancestor's admin decision is a bound, not a reason).
    pub reasons: bool,
}

/// A bound's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Allow(Vec<String>),
    Deny,
    /// Allowed exactly when this Cedar condition on the context holds (satisfied permits, when
    /// it holds, are the reasons).
    When(String),
}

/// A bound, partially evaluated for every resource of one type.
pub struct TypeLevel {
    /// The answer for a resource of the type whatever it is (one outside the store included).
    pub answer: Answer,
    /// Permits satisfied whatever the resource and context.
    true_permits: Vec<String>,
    /// The policies left to decide, the taint put in: what the per-resource step evaluates.
    residuals: Vec<Policy>,
    /// Each residual's index in `residuals`, by id as Cedar prints it (as the index names it).
    position: HashMap<String, usize>,
    /// What each residual reads of the resource; `None`: more than deputy keys on (`reads`).
    reads: Vec<Option<Vec<reads::Read>>>,
    /// No residual names `resource`: every resource of the type gets `answer`.
    resource_free: bool,
    /// Per-resource answers by what decides them (`Shared`), for the resources that follow.
    shared: HashMap<Shared, Answer>,
}

/// What tells the resources of one type apart for the residuals of several levels (every bound
/// of one action that needs a per-resource step): a resource's [`Class`] decides the value of
/// every read (`reads`) of every residual of those levels.
///
/// INVARIANT (exactness): two resources of the type with the same class get the same answer
/// from each of those levels, so one evaluation serves the class. Each read's value is decided
/// by the class: `in [E, ..]` is true when the resource is a target (then it is named, so its
/// uid is in the class) or has one among its ancestors (the class holds the resource's ancestors
/// among all targets); `== E` is true only for a named resource (its uid is in the class); `is`
/// is the type's; an attribute's value or presence is in the class. Equal values for every read
/// of every residual give the same response over every residual (`reads`), and the policy
/// index only leaves out residuals whose scope is false for the resource, which the response
/// drops anyway (a scope never errs): so the same answer whatever residuals the index kept.
pub struct Classes {
    /// The entity literals reads compare the resource with (`==`) or ask it to be in (`in`).
    named: FastSet<EntityUID>,
    /// The targets of `in` reads.
    targets: FastSet<EntityUID>,
    /// The attributes read, sorted, each with whether its value is read (`resource.a`) or only
    /// its presence (`resource has a`).
    attrs: Vec<(SmolStr, bool)>,
}

/// A set looked up once or more per resource: foldhash (seeded per process) rather than SipHash.
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// What resources of one class share (`Classes`), looked up once per resource.
pub type ByClass<'a> = HashMap<Class<'a>, Answer, foldhash::fast::RandomState>;

/// A resource as the residuals see it (`Classes`), borrowed from the resource and the store.
#[derive(Hash, PartialEq, Eq)]
pub struct Class<'a> {
    /// The resource itself when a read names it.
    uid: Option<&'a EntityUID>,
    /// Its ancestors among the targets of `in` reads, sorted.
    ancestors: Vec<&'a EntityUID>,
    /// Per attribute of `Classes::attrs`, in that order.
    attrs: Vec<AttrSeen<'a>>,
}

#[derive(Hash, PartialEq, Eq)]
enum AttrSeen<'a> {
    Absent,
    /// Present, its value not read.
    Present,
    Value(&'a CedarLiteral),
}

impl Classes {
    /// What the residuals of `levels` read of a resource; `None` when one of them reads more of
    /// it than deputy keys on (`reads`): every resource is then evaluated on its own.
    pub fn new<'l>(levels: impl IntoIterator<Item = &'l TypeLevel>) -> Option<Classes> {
        let mut classes = Classes {
            named: FastSet::default(),
            targets: FastSet::default(),
            attrs: Vec::new(),
        };
        for level in levels.into_iter().filter(|l| l.per_resource()) {
            for read in &level.reads {
                for read in read.as_ref()? {
                    match read {
                        reads::Read::In(targets) => {
                            classes.named.extend(targets.iter().cloned());
                            classes.targets.extend(targets.iter().cloned());
                        }
                        reads::Read::Eq(uid) => {
                            classes.named.insert(uid.clone());
                        }
                        reads::Read::Is(_) => {}
                        reads::Read::Attr(a) => classes.attrs.push((a.clone(), true)),
                        reads::Read::Has(a) => classes.attrs.push((a.clone(), false)),
                    }
                }
            }
        }
        // One entry per attribute: its value read if any read reads it.
        classes.attrs.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        classes.attrs.dedup_by(|later, first| later.0 == first.0);
        Some(classes)
    }

    /// `resource`'s class; `None` when the store does not know what a read needs of it, or an
    /// attribute read has a value deputy does not key on (then it is evaluated on its own).
    pub fn of<'a>(&self, resource: &'a EntityUID, entities: &'a PartialEntities) -> Option<Class<'a>> {
        let entities: &'a cedar_policy_core::tpe::entities::PartialEntities = entities.as_ref();
        let ancestors = if self.targets.is_empty() {
            Vec::new()
        } else {
            let mut found: Vec<&EntityUID> = entities
                .get_ancestors(resource)?
                .iter()
                .filter(|a| self.targets.contains(*a))
                .collect();
            found.sort_unstable();
            found
        };
        let attrs = if self.attrs.is_empty() {
            Vec::new()
        } else {
            let held = entities.get_attrs(resource)?;
            self.attrs
                .iter()
                .map(|(name, value_read)| match held.get(name) {
                    None => Some(AttrSeen::Absent),
                    Some(_) if !value_read => Some(AttrSeen::Present),
                    Some(v) => match v.value_kind() {
                        ValueKind::Lit(l) => Some(AttrSeen::Value(l)),
                        _ => None,
                    },
                })
                .collect::<Option<Vec<_>>>()?
        };
        Some(Class {
            uid: self.named.contains(resource).then_some(resource),
            ancestors,
            attrs,
        })
    }
}

/// What decides a resource's answer: the residuals whose scope can match it (by index in
/// `TypeLevel::residuals`, ascending) and the values of what they read of it, in that order.
type Shared = (Vec<usize>, Vec<reads::Seen>);

/// What the partial evaluator needs besides the bound.
pub struct Env<'a> {
    pub schema: &'a Schema,
    pub entities: &'a PartialEntities,
    pub concrete: &'a cedar_policy::Entities,
    pub action: &'a EntityUid,
    /// `context.taint` as deputy supplies it, when the action's context declares it.
    pub taint: Option<i64>,
}

/// The policies of `policies` whose principal and action scope can match `principal` and
/// `action`, as a set: the others are false for every resource and context (a scope never errs,
/// and the partial evaluator decides `principal in E` from the same ancestors read here), so
/// leaving them out changes no answer and spares the partial evaluator typechecking them.
/// `None` when that leaves every policy, or the set holds template-linked policies (a grant:
/// a few policies, asked as they are).
pub fn scoped(
    policies: &PolicySet,
    principal: &EntityUid,
    action: &EntityUid,
    entities: &PartialEntities,
) -> Option<PolicySet> {
    use cedar_policy_core::ast::{ActionConstraint, EntityReference, PrincipalOrResourceConstraint as C};
    if policies.policies().any(|p| p.template_id().is_some()) {
        return None;
    }
    let entities: &cedar_policy_core::tpe::entities::PartialEntities = entities.as_ref();
    let (principal, action): (&cedar_policy_core::ast::EntityUID, &cedar_policy_core::ast::EntityUID) =
        (principal.as_ref(), action.as_ref());
    // `None`: not known here (a slot; an entity whose ancestors the store does not know).
    let is_in = |uid: &cedar_policy_core::ast::EntityUID, target: &cedar_policy_core::ast::EntityUID| {
        if uid == target {
            return Some(true);
        }
        entities.get_ancestors(uid).map(|a| a.contains(target))
    };
    let entity = |r: &EntityReference| match r {
        EntityReference::EUID(u) => Some(u.as_ref().clone()),
        EntityReference::Slot(_) => None,
    };
    let may_match = |p: &Policy| {
        let core: &cedar_policy_core::ast::Policy = p.as_ref();
        let by_principal = match core.principal_constraint().as_inner() {
            C::Any => Some(true),
            C::Eq(u) => entity(u).map(|u| &u == principal),
            C::In(u) => entity(u).and_then(|u| is_in(principal, &u)),
            C::Is(t) => Some(principal.entity_type() == t.as_ref()),
            C::IsIn(t, u) => match principal.entity_type() == t.as_ref() {
                false => Some(false),
                true => entity(u).and_then(|u| is_in(principal, &u)),
            },
        };
        let by_action = match core.action_constraint() {
            ActionConstraint::Any => Some(true),
            ActionConstraint::Eq(a) => Some(a.as_ref() == action),
            ActionConstraint::In(list) => list.iter().try_fold(false, |any, a| Some(any || is_in(action, a)?)),
        };
        by_principal != Some(false) && by_action != Some(false)
    };
    let kept: Vec<Policy> = policies.policies().filter(|p| may_match(p)).cloned().collect();
    if kept.len() == policies.num_of_policies() {
        return None;
    }
    PolicySet::from_policies(kept).ok()
}

/// Partially evaluates `bound` for a resource of type `ty`, context unknown.
pub fn type_level(bound: &Bound<'_>, ty: &EntityTypeName, env: &Env<'_>) -> Result<TypeLevel, String> {
    let request = PartialRequest::new(
        PartialEntityUid::from_concrete(bound.principal.clone()),
        env.action.clone(),
        PartialEntityUid::new(ty.clone(), None),
        None,
        env.schema,
    )
    .map_err(|e| e.to_string())?;
    let first = bound
        .policies
        .tpe(&request, env.entities, env.schema)
        .map_err(|e| e.to_string())?;
    let true_permits = ids(first.true_permits());
    let residuals: Vec<Policy> = first.residual_policies().collect();
    let residuals = match env.taint {
        Some(taint) if !residuals.is_empty() => residuals
            .iter()
            .map(|p| with_taint(p, taint))
            .collect::<Result<Vec<_>, _>>()?,
        _ => residuals,
    };
    let answer = match first.decision() {
        Some(CedarDecision::Allow) => Answer::Allow(true_permits.clone()),
        Some(CedarDecision::Deny) => Answer::Deny,
        // The taint now put in may settle what was left: ask again over what was left.
        None => {
            let set = PolicySet::from_policies(residuals.iter().cloned()).map_err(|e| e.to_string())?;
            let again = set.tpe(&request, env.entities, env.schema).map_err(|e| e.to_string())?;
            answer_of(&again, &true_permits)?
        }
    };
    let reads: Vec<Option<Vec<reads::Read>>> = residuals
        .iter()
        .map(|p| reads::reads(&AsRef::<cedar_policy_core::ast::Policy>::as_ref(p).condition()))
        .collect();
    let resource_free = reads.iter().all(|r| r.as_ref().is_some_and(Vec::is_empty));
    let position = residuals
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id().to_string(), i))
        .collect();
    Ok(TypeLevel {
        answer,
        true_permits,
        residuals,
        position,
        reads,
        resource_free,
        shared: HashMap::new(),
    })
}

impl TypeLevel {
    /// Whether the answer depends on the resource (else `answer` holds for every resource).
    pub fn per_resource(&self) -> bool {
        matches!(self.answer, Answer::When(_)) && !self.resource_free
    }
}

/// `bound`'s answer for `resource` (of the type `level` was computed for), context unknown.
pub fn at(bound: &Bound<'_>, level: &mut TypeLevel, resource: &EntityUid, env: &Env<'_>) -> Result<Answer, String> {
    if !level.per_resource() {
        return Ok(level.answer.clone());
    }
    // The index names the policies whose scope can match this resource; the others are false.
    let relevant: Vec<usize> = match bound
        .index
        .and_then(|index| index.policy_names(env.concrete, bound.principal, env.action, resource))
    {
        Some(names) => {
            let mut found: Vec<usize> = names.filter_map(|n| level.position.get(n).copied()).collect();
            found.sort_unstable();
            found.dedup();
            found
        }
        None => (0..level.residuals.len()).collect(),
    };
    if relevant.is_empty() {
        return Ok(if level.true_permits.is_empty() {
            Answer::Deny
        } else {
            Answer::Allow(level.true_permits.clone())
        });
    }
    // `Ok`: what decides the answer, shared with the resources that agree on it; `Err`: the
    // relevant residuals, for this resource alone.
    let key: Result<Shared, Vec<usize>> = match seen(level, &relevant, resource, env) {
        Some(seen) => Ok((relevant, seen)),
        None => Err(relevant),
    };
    if let Some(answer) = key.as_ref().ok().and_then(|k| level.shared.get(k)) {
        return Ok(answer.clone());
    }
    let (Ok((relevant, _)) | Err(relevant)) = &key;
    let residuals: Vec<Policy> = relevant
        .iter()
        .filter_map(|&i| level.residuals.get(i))
        .cloned()
        .collect();
    let request = PartialRequest::new(
        PartialEntityUid::from_concrete(bound.principal.clone()),
        env.action.clone(),
        PartialEntityUid::from_concrete(resource.clone()),
        None,
        env.schema,
    )
    .map_err(|e| e.to_string())?;
    let set = PolicySet::from_policies(residuals).map_err(|e| e.to_string())?;
    let response = set.tpe(&request, env.entities, env.schema).map_err(|e| e.to_string())?;
    let answer = answer_of(&response, &level.true_permits)?;
    if let Ok(key) = key {
        level.shared.insert(key, answer.clone());
    }
    Ok(answer)
}

/// The values of what the `relevant` residuals read of `resource`, or `None` when one reads
/// more of it than deputy keys on (then it is evaluated on its own).
fn seen(level: &TypeLevel, relevant: &[usize], resource: &EntityUid, env: &Env<'_>) -> Option<Vec<reads::Seen>> {
    let entities: &cedar_policy_core::tpe::entities::PartialEntities = env.entities.as_ref();
    let mut seen = Vec::new();
    for &i in relevant {
        for read in level.reads.get(i)?.as_ref()? {
            seen.push(reads::seen(read, resource.as_ref(), entities)?);
        }
    }
    Some(seen)
}

/// A partial response as an answer, decided as Cedar's authorizer decides (a satisfied forbid
/// denies; else a satisfied permit allows; erring policies are skipped); `true_permits` were
/// satisfied before it (the response is over what was left).
fn answer_of(response: &TpeResponse<'_>, true_permits: &[String]) -> Result<Answer, String> {
    if response.true_forbids().next().is_some() {
        return Ok(Answer::Deny);
    }
    let mut satisfied: Vec<String> = true_permits.to_vec();
    satisfied.extend(ids(response.true_permits()));
    let forbids: BTreeSet<String> = ids(response.residual_forbids()).into_iter().collect();
    let (mut permits, mut blocks) = (Vec::new(), Vec::new());
    for p in response.residual_policies() {
        if never_holds(&p) {
            // Neither allows nor denies anything: a permit or forbid that never applies.
            continue;
        }
        let text = condition(&p)?;
        if forbids.contains(&p.id().to_string()) {
            blocks.push(text);
        } else {
            permits.push(text);
        }
    }
    let mut parts = Vec::new();
    if satisfied.is_empty() {
        if permits.is_empty() {
            return Ok(Answer::Deny);
        }
        parts.push(any_of(&permits));
    }
    if !blocks.is_empty() {
        parts.push(not(&any_of(&blocks)));
    }
    Ok(if parts.is_empty() {
        Answer::Allow(satisfied)
    } else {
        Answer::When(all_of(&parts))
    })
}

/// The answers of every bound, combined: any deny denies; all allow allows (with the reasons of
/// the bounds that give them); else the conjunction of the conditions.
pub fn combine(answers: impl IntoIterator<Item = (Answer, bool)>) -> Answer {
    let mut reasons = Vec::new();
    let mut conditions = Vec::new();
    for (answer, gives_reasons) in answers {
        match answer {
            Answer::Deny => return Answer::Deny,
            Answer::Allow(r) if gives_reasons => reasons.extend(r),
            Answer::Allow(_) => {}
            // The same admin condition comes back for every ancestor: say it once.
            Answer::When(c) if !conditions.contains(&c) => conditions.push(c),
            Answer::When(_) => {}
        }
    }
    if conditions.is_empty() {
        Answer::Allow(reasons)
    } else {
        Answer::When(all_of(&conditions))
    }
}

fn ids<'a>(it: impl Iterator<Item = &'a cedar_policy::PolicyId>) -> Vec<String> {
    it.map(ToString::to_string).collect()
}

fn any_of(parts: &[String]) -> String {
    join(parts, " || ")
}

fn all_of(parts: &[String]) -> String {
    join(parts, " && ")
}

/// `!(text)`, a double negation rendered away: `!(!(x))` is `x`. Exact: a residual's condition
/// typechecks as a boolean, and `!` errs only where its operand errs.
fn not(text: &str) -> String {
    match negated(text) {
        Some(inner) => inner.to_owned(),
        None => format!("!({text})"),
    }
}

/// `x` when `text` is `!(x)` as a whole: the parenthesis after `!` closes at the end (string
/// literals, which may hold parentheses, skipped).
fn negated(text: &str) -> Option<&str> {
    let inner = text.strip_prefix("!(")?.strip_suffix(')')?;
    let (mut depth, mut literal) = (0usize, Literal::default());
    for c in inner.chars() {
        if literal.takes(c) {
            continue;
        }
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    (depth == 0 && !literal.open).then_some(inner)
}

/// Where a scan of Cedar text is relative to string literals (which may hold anything).
#[derive(Default)]
struct Literal {
    open: bool,
    escaped: bool,
}

impl Literal {
    /// Feeds the next character; true when it belongs to a string literal, quotes included.
    fn takes(&mut self, c: char) -> bool {
        if !self.open {
            self.open = c == '"';
            return self.open;
        }
        match c {
            _ if self.escaped => self.escaped = false,
            '\\' => self.escaped = true,
            '"' => self.open = false,
            _ => {}
        }
        true
    }
}

fn join(parts: &[String], op: &str) -> String {
    match parts {
        [one] => one.clone(),
        _ => parts
            .iter()
            .map(|p| format!("({p})"))
            .collect::<Vec<_>>()
            .join(op),
    }
}

/// A residual policy's condition as Cedar text: its one `when` clause, printed from Cedar's AST
/// as Cedar prints the policy (through its JSON form), so no other part of the policy (an
/// annotation, say) is read for it. A residual's scope is unconstrained (Cedar's
/// `TpeResponse::residual_policies`); one that is not is refused (its condition alone would
/// say more than the policy).
fn condition(p: &Policy) -> Result<String, String> {
    use cedar_policy_core::ast::{ActionConstraint, PrincipalOrResourceConstraint as C};
    let core: &cedar_policy_core::ast::Policy = p.as_ref();
    let unconstrained = matches!(core.principal_constraint().as_inner(), C::Any)
        && matches!(core.action_constraint(), ActionConstraint::Any)
        && matches!(core.resource_constraint().as_inner(), C::Any);
    if !unconstrained {
        return Err(format!("the residual of policy `{}` has a scope", p.id()));
    }
    Ok(match core.non_scope_constraints() {
        Some(e) => squeeze(&e.clone().into_expr::<cedar_policy_core::est::Builder>().to_string()),
        None => "true".to_owned(),
    })
}

/// The residual policy's condition can never evaluate to `true`: it is `false`, or a `&&` with
/// an operand that never holds, or a `||` both of whose operands never hold. Cedar's `&&` is
/// true only when both operands evaluate to `true` (an error or `false` on either side makes it
/// error or false), and its `||` only when one does; a policy whose condition never holds never
/// applies, whether a permit or a forbid (an erring policy is skipped). Cedar's partial
/// evaluator leaves such residuals when the left side is unknown (`context.hour >= 8 && false`:
/// the unknown side could err, so Cedar keeps it).
fn never_holds(p: &Policy) -> bool {
    use cedar_policy_core::ast::{Expr, ExprKind, Literal};
    fn never(e: &Expr) -> bool {
        match e.expr_kind() {
            ExprKind::Lit(Literal::Bool(false)) => true,
            ExprKind::And { left, right } => never(left) || never(right),
            ExprKind::Or { left, right } => never(left) && never(right),
            _ => false,
        }
    }
    let core: &cedar_policy_core::ast::Policy = p.as_ref();
    core.non_scope_constraints().is_some_and(never)
}

/// `text` on one line: each run of whitespace outside string literals made one space, none at
/// either end (a string literal is kept as written: its spaces are its value).
fn squeeze(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut literal, mut space) = (Literal::default(), false);
    for c in text.chars() {
        let inside = literal.open;
        if literal.takes(c) && inside {
            out.push(c);
            continue;
        }
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    }
    out
}

/// `p` with `context.taint` replaced by deputy's value (and `context has taint` by `true`), by a
/// rewrite of Cedar's JSON form of the policy; `p` itself when its conditions read neither
/// (found in its AST, where the rewrite would change nothing).
fn with_taint(p: &Policy, taint: i64) -> Result<Policy, String> {
    use cedar_policy_core::ast::{ExprKind, Var};
    let core: &cedar_policy_core::ast::Policy = p.as_ref();
    let reads_taint = core.non_scope_constraints().is_some_and(|c| {
        c.subexpressions().any(|e| match e.expr_kind() {
            ExprKind::GetAttr { expr, attr } | ExprKind::HasAttr { expr, attr } => {
                matches!(expr.expr_kind(), ExprKind::Var(Var::Context)) && attr.as_str() == crate::bundle::TAINT_FIELD
            }
            _ => false,
        })
    });
    if !reads_taint {
        return Ok(p.clone());
    }
    let mut json = p.to_json().map_err(|e| format!("policy `{}`: {e}", p.id()))?;
    let mut changed = false;
    rewrite(&mut json, taint, &mut changed);
    if !changed {
        return Ok(p.clone());
    }
    Policy::from_json(Some(p.id().clone()), json).map_err(|e| format!("policy `{}`: {e}", p.id()))
}

fn rewrite(v: &mut Value, taint: i64, changed: &mut bool) {
    let is_context_taint = |op: &str, v: &Value| {
        v.get(op).is_some_and(|inner| {
            inner["left"] == serde_json::json!({"Var": "context"})
                && inner["attr"] == crate::bundle::TAINT_FIELD
        })
    };
    if is_context_taint(".", v) {
        *v = serde_json::json!({"Value": taint});
        *changed = true;
        return;
    }
    if is_context_taint("has", v) {
        *v = serde_json::json!({"Value": true});
        *changed = true;
        return;
    }
    match v {
        Value::Object(m) => m.values_mut().for_each(|x| rewrite(x, taint, changed)),
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, taint, changed)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::str::FromStr;

    use super::{condition, never_holds, not, squeeze};

    #[test]
    fn a_condition_is_the_when_clause_whatever_annotations_and_literals_hold() {
        // As Cedar's partial evaluator returns a residual: scope unconstrained, annotations kept.
        let p = cedar_policy::Policy::from_str(
            r#"@note("when { context.x }")
            @other("}")
            permit(principal, action, resource) when { context.s == "when { y }" && context.n > 1 };"#,
        )
        .unwrap();
        // (Cedar's AST has no `>`: it prints `!(n <= 1)`.)
        assert_eq!(condition(&p).unwrap(), r#"(context.s == "when { y }") && (!(context.n <= 1))"#);
        // A policy with a scope is not a residual: refused, not cut down to its condition.
        let scoped =
            cedar_policy::Policy::from_str(r#"permit(principal, action, resource in Folder::"f") when { true };"#).unwrap();
        assert!(condition(&scoped).is_err());
    }

    #[test]
    fn a_condition_never_holds_only_when_no_evaluation_makes_it_true() {
        let holds = |cond: &str| {
            let p = cedar_policy::Policy::from_str(&format!("permit(principal, action, resource) when {{ {cond} }};"))
                .unwrap();
            !never_holds(&p)
        };
        for never in [
            "false",
            "context.x && false",
            "false && context.x",
            "(context.x && false) || (context.y && false)",
            "context.a && (context.x && false)",
        ] {
            assert!(!holds(never), "`{never}` can never hold");
        }
        for may in [
            "true",
            "context.x",
            "context.x || false",
            "!(context.x && false)",
            "if context.x then false else true",
            "context.x == false",
        ] {
            assert!(holds(may), "`{may}` may hold");
        }
    }

    #[test]
    fn a_double_negation_is_rendered_away() {
        assert_eq!(not("!(context.hour < 18)"), "context.hour < 18");
        assert_eq!(not("context.hour < 18"), "!(context.hour < 18)");
        // Not one negation of the whole: kept.
        assert_eq!(not("!(a) || (b)"), "!(!(a) || (b))");
        assert_eq!(not("(!(a)) || (!(b))"), "!((!(a)) || (!(b)))");
        // Parentheses inside a string literal do not count.
        assert_eq!(not(r#"!(context.s == ")(")"#), r#"context.s == ")(""#);
        assert_eq!(not(r#"!(context.s == "(") || (context.t == ")")"#), r#"!(!(context.s == "(") || (context.t == ")"))"#);
        assert_eq!(not(r#"!(context.s == "\")")"#), r#"context.s == "\")""#);
    }

    #[test]
    fn whitespace_is_squeezed_outside_string_literals_only() {
        assert_eq!(squeeze("  context.a\n   &&  context.s == \"x  y\"  "), "context.a && context.s == \"x  y\"");
        assert_eq!(squeeze(r#"context.s == "a\"  b"  &&  true"#), r#"context.s == "a\"  b" && true"#);
    }
}

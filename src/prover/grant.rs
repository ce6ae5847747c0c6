//! Grants: parsing, the delegable view, digests and strict validation.
//!
//! A grant is kept as the list of its policies (templates over `?principal`, or static
//! policies) in source order, each with a display id and the line it starts on, so every
//! later error or piece of evidence can point back at the user's text.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use cedar_policy::{Effect, Policy, PolicyId, PolicySet, Schema, Template, ValidationMode, Validator};
use cedar_policy_core::ast;
use miette::Diagnostic;
use sha2::{Digest, Sha256};

use super::error::{ForeignPrincipal, GrantError, GrantRole, InvalidGrant, ParseGrant, ResourceSlot, ValidationIssue};

/// Annotation that withholds a permit from the delegable view.
pub const DELEGABLE_ANNOTATION: &str = "delegable";

/// One policy of a grant.
#[derive(Debug, Clone)]
pub(crate) struct GrantPolicy {
    /// Display id: the `@id("...")` annotation when present, else Cedar's `policyN`.
    pub(crate) name: String,
    /// 1-based line where the policy starts in the grant source.
    pub(crate) line: usize,
    /// The policy as a template (static policies are templates without slots).
    pub(crate) template: Template,
    /// The original policy when it has no slots (it is added to policy sets as is).
    pub(crate) static_policy: Option<Policy>,
    /// False for a permit annotated `@delegable("false")`.
    delegable: bool,
    effect: Effect,
    /// Every entity literal of the policy, scope included (what a replay must keep of the store).
    entity_literals: Vec<ast::EntityUID>,
}

impl GrantPolicy {
    pub(crate) fn effect(&self) -> Effect {
        self.effect
    }

    pub(crate) fn core(&self) -> &ast::Template {
        self.template.as_ref()
    }

    pub(crate) fn delegable(&self) -> bool {
        self.delegable
    }

    pub(crate) fn entity_literals(&self) -> &[ast::EntityUID] {
        &self.entity_literals
    }

    pub(crate) fn label(&self) -> String {
        format!("`{}` (line {})", self.name, self.line)
    }
}

/// Why a grant policy is not about its holder alone, if it is not.
///
/// A grant is evaluated for its holder and, as their bound, for each of its descendants, with
/// `?principal` linked to the one acting. A policy may therefore refer to the principal only
/// through `?principal` (or not at all): a scope `principal == Agent::"kid"` or `principal in
/// Group::"g"`, or a condition that reads `principal`, decides differently for the holder and
/// for a descendant, so a proof about the holder would not cover the descendant (a holder could
/// write a permit that only fires for a child it names, and pass on what it never had).
///
/// INVARIANT: a policy this accepts decides every request the same way whoever the acting
/// agent is, up to the acting agent itself matching `?principal`.
pub fn foreign_principal(t: &ast::Template) -> Option<String> {
    use ast::{EntityReference as Ref, PrincipalOrResourceConstraint as Scope};
    match t.principal_constraint().as_inner() {
        Scope::Any | Scope::Is(_) => {}
        Scope::Eq(Ref::Slot(_)) | Scope::In(Ref::Slot(_)) | Scope::IsIn(_, Ref::Slot(_)) => {}
        Scope::Eq(Ref::EUID(uid)) => return Some(format!("is scoped to `principal == {uid}`")),
        Scope::In(Ref::EUID(uid)) => return Some(format!("is scoped to `principal in {uid}`")),
        Scope::IsIn(ty, Ref::EUID(uid)) => return Some(format!("is scoped to `principal is {ty} in {uid}`")),
    }
    let reads_principal = t.non_scope_constraints().is_some_and(|cond| {
        cond.subexpressions()
            .any(|e| matches!(e.expr_kind(), ast::ExprKind::Var(ast::Var::Principal)))
    });
    reads_principal.then(|| "tests `principal` in its conditions".to_owned())
}

/// The entity literals of a template: its condition is the conjunction of the scope
/// constraints and the `when`/`unless` clauses, so this covers both.
fn entity_literals(t: &ast::Template) -> Vec<ast::EntityUID> {
    let condition = t.condition();
    let mut out: Vec<ast::EntityUID> = condition
        .subexpressions()
        .filter_map(|e| match e.expr_kind() {
            ast::ExprKind::Lit(ast::Literal::EntityUID(u)) => Some(u.as_ref().clone()),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The deepest grant text nests expressions: parentheses, brackets, braces (a policy's `when {`
/// included) and `if` (whose branches are expressions of their own).
pub const MAX_GRANT_NESTING: usize = 32;

/// The most operators one grant policy may hold (`.`, `+`, `-`, `*`, `!`, comparisons, `&&`,
/// `||`, `in`, `has`, `like`, `is`, `if`): each makes at most one node of the expression tree,
/// so this bounds how deep a chain of them can make it.
pub const MAX_GRANT_OPERATORS: usize = 1024;

/// What the tokens of a grant's text say about the expression trees Cedar would build from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// How deeply the text nests expressions (see [`MAX_GRANT_NESTING`]).
    pub nesting: usize,
    /// The most operators in one policy (see [`MAX_GRANT_OPERATORS`]).
    pub operators: usize,
}

/// The [`Shape`] of grant text `src`, read from its tokens alone (strings and comments skipped):
/// each `(`, `[` or `{` opens a level until its closing bracket, and each `if` opens one until
/// the bracket around it closes (or its policy ends), since its `else` branch runs to there.
/// Never less than the nesting Cedar's parser recurses through, nor than the number of
/// operator nodes of a policy's expression tree.
///
/// INVARIANT: no text reaches Cedar's parser with a nesting above [`MAX_GRANT_NESTING`] or a
/// policy with more than [`MAX_GRANT_OPERATORS`] operators. Its conversion of the syntax tree
/// recurses once per level (`cst_to_ast`), so a grant nested a few hundred deep — a few hundred
/// bytes, well within the grant size limit — overflowed the stack of the thread parsing it,
/// which aborts the whole process; and a chain `1+1+…` tens of thousands long parses flat into a
/// tree as deep, which overflowed the stack when it was dropped.
pub fn shape(src: &str) -> Shape {
    let bytes = src.as_bytes();
    // Per open bracket: the `if`s opened inside it (the outermost entry is the policy's level).
    let mut ifs: Vec<usize> = vec![0];
    let (mut depth, mut nesting, mut i) = (0usize, 0usize, 0usize);
    let (mut operators, mut most) = (0usize, 0usize);
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                // A string: to its closing quote, escapes skipped.
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    match c {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while bytes.get(i).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                ifs.push(0);
            }
            b')' | b']' | b'}' if ifs.len() > 1 => {
                let opened = ifs.pop().unwrap_or_default();
                depth = depth.saturating_sub(1 + opened);
            }
            b';' if ifs.len() == 1 => {
                depth = depth.saturating_sub(ifs[0]);
                ifs[0] = 0;
                operators = 0;
            }
            b'.' | b'+' | b'-' | b'*' | b'!' | b'<' | b'>' | b'=' | b'&' | b'|' => {
                // `&&`, `||`, `==`, `!=`, `<=`, `>=` are one operator each.
                let pair = matches!(
                    (b, bytes.get(i + 1)),
                    (b'&', Some(b'&')) | (b'|', Some(b'|')) | (b'=' | b'!' | b'<' | b'>', Some(b'='))
                );
                if pair {
                    i += 1;
                }
                operators += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while bytes.get(i).is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_') {
                    i += 1;
                }
                let word = &bytes[start..i];
                if matches!(word, b"if" | b"in" | b"has" | b"like" | b"is") {
                    operators += 1;
                }
                if word == b"if" {
                    depth += 1;
                    if let Some(last) = ifs.last_mut() {
                        *last += 1;
                    }
                }
                nesting = nesting.max(depth);
                most = most.max(operators);
                continue;
            }
            _ => {}
        }
        nesting = nesting.max(depth);
        most = most.max(operators);
        i += 1;
    }
    Shape {
        nesting,
        operators: most,
    }
}

/// The deepest expression tree a grant policy may have (its condition: scope and clauses).
/// Chains such as `a + b + c` or `context.a.b.c` parse flat but make a tree as deep as they are
/// long, which deputy's prover and Cedar's printer walk recursively.
pub const MAX_GRANT_DEPTH: usize = 128;

/// How deep the expression tree `e` is (a leaf is 1), counted without recursion.
///
/// INVARIANT: no grant policy deeper than [`MAX_GRANT_DEPTH`] reaches the prover, the run-time
/// link or discovery: a chain a few thousand long overflowed the stack of the thread proving it,
/// which aborts the whole process.
pub fn expr_depth(e: &ast::Expr) -> usize {
    use ast::ExprKind as K;
    let mut deepest = 0;
    let mut stack = vec![(e, 1usize)];
    while let Some((e, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        let d = depth + 1;
        match e.expr_kind() {
            K::If {
                test_expr,
                then_expr,
                else_expr,
            } => stack.extend([(&**test_expr, d), (&**then_expr, d), (&**else_expr, d)]),
            K::And { left, right } | K::Or { left, right } => stack.extend([(&**left, d), (&**right, d)]),
            K::BinaryApp { arg1, arg2, .. } => stack.extend([(&**arg1, d), (&**arg2, d)]),
            K::UnaryApp { arg: expr, .. }
            | K::GetAttr { expr, .. }
            | K::HasAttr { expr, .. }
            | K::ExtHasAttr { expr, .. }
            | K::Like { expr, .. }
            | K::Is { expr, .. } => stack.push((&**expr, d)),
            K::ExtensionFunctionApp { args, .. } | K::Set(args) => stack.extend(args.iter().map(|a| (a, d))),
            K::Record(fields) => stack.extend(fields.values().map(|a| (a, d))),
            _ => {}
        }
    }
    deepest
}

/// Refuses a policy of grant `src` whose expression tree is deeper than [`MAX_GRANT_DEPTH`].
fn check_depth(src: &str, core: &ast::Template) -> Result<(), GrantError> {
    let depth = expr_depth(&core.condition());
    if depth <= MAX_GRANT_DEPTH {
        return Ok(());
    }
    let line = line_of(src, core.loc().map_or(usize::MAX, |l| l.span.offset()));
    Err(GrantError::Parse(ParseGrant {
        role: GrantRole::Grant,
        message: format!(
            "line {line}: the policy's expression nests {depth} deep (a chain of `&&`, `||`, \
             arithmetic or attribute access is as deep as it is long); at most {MAX_GRANT_DEPTH} \
             are accepted"
        ),
    }))
}

/// The authority of one agent: Cedar policy templates over `?principal`.
#[derive(Debug, Clone)]
pub struct Grant {
    src: Arc<str>,
    policies: Vec<GrantPolicy>,
    digest: OnceLock<String>,
    /// `src` as Cedar parsed it, when this grant is all of it (not a view).
    parsed: Option<Arc<PolicySet>>,
}

impl Grant {
    /// Parses a grant from Cedar policy text.
    ///
    /// Templates may use `?principal` only; static policies are accepted as they are.
    pub fn parse(src: &str) -> Result<Grant, GrantError> {
        let shape = shape(src);
        let refuse = |message: String| {
            Err(GrantError::Parse(ParseGrant {
                role: GrantRole::Grant,
                message,
            }))
        };
        if shape.nesting > MAX_GRANT_NESTING {
            return refuse(format!(
                "the grant nests expressions {} deep (parentheses, brackets, braces and `if`, a \
                 policy's `when {{` included); at most {MAX_GRANT_NESTING} are accepted",
                shape.nesting
            ));
        }
        if shape.operators > MAX_GRANT_OPERATORS {
            return refuse(format!(
                "a policy of the grant holds {} operators; at most {MAX_GRANT_OPERATORS} are accepted",
                shape.operators
            ));
        }
        let set = PolicySet::from_str(src).map_err(|e| {
            GrantError::Parse(ParseGrant {
                role: GrantRole::Grant,
                message: render_parse_error(src, &e),
            })
        })?;
        for template in set.templates() {
            check_depth(src, template.as_ref())?;
        }
        for policy in set.policies() {
            let core: &ast::Policy = policy.as_ref();
            check_depth(src, core.template())?;
        }
        let src: Arc<str> = Arc::from(src);
        let mut policies: Vec<(Template, Option<Policy>)> = Vec::new();
        for template in set.templates() {
            policies.push((template.clone(), None));
        }
        for policy in set.policies() {
            // INVARIANT: a freshly parsed set holds no template-linked policies.
            let core: &ast::Policy = policy.as_ref();
            policies.push((Template::from(core.template().clone()), Some(policy.clone())));
        }
        let mut out: Vec<GrantPolicy> = policies
            .into_iter()
            .map(|(template, static_policy)| {
                let line = line_of(&src, template_offset(&template));
                let name = template
                    .annotation("id")
                    .map(str::to_owned)
                    .unwrap_or_else(|| template.id().to_string());
                GrantPolicy {
                    name,
                    line,
                    // Fail closed: only an absent annotation or exactly "true" passes a permit on.
                    delegable: template.annotation(DELEGABLE_ANNOTATION).is_none_or(|v| v == "true"),
                    effect: template.effect(),
                    entity_literals: entity_literals(template.as_ref()),
                    template,
                    static_policy,
                }
            })
            .collect();
        out.sort_by_key(|p| (p.line, template_offset(&p.template)));
        for p in &out {
            if p.core().slots().any(|s| s.id == ast::SlotId::resource()) {
                return Err(GrantError::ResourceSlot(ResourceSlot {
                    policy: p.name.clone(),
                    line: p.line,
                }));
            }
        }
        Ok(Grant {
            src,
            policies: out,
            digest: OnceLock::new(),
            parsed: Some(Arc::new(set)),
        })
    }

    /// Checks that every policy is about the grant's holder only (see [`foreign_principal`]):
    /// `grant_foreign_principal` names the first that is not.
    pub fn check_holder_only(&self) -> Result<(), GrantError> {
        for p in &self.policies {
            if let Some(why) = foreign_principal(p.core()) {
                return Err(GrantError::ForeignPrincipal(ForeignPrincipal {
                    policy: p.name.clone(),
                    line: p.line,
                    why,
                }));
            }
        }
        Ok(())
    }

    /// Checks the grant's annotations: `@id("…")`, and `@delegable("true")` or
    /// `@delegable("false")`. Anything else (`@delegable("False")`, `@Delegable`, a bare
    /// `@delegable`) is refused rather than guessed at, since a misspelt `@delegable("false")`
    /// would otherwise pass a permit on.
    pub fn check_annotations(&self) -> Result<(), GrantError> {
        let mut issues = Vec::new();
        for p in &self.policies {
            for (key, value) in p.template.annotations() {
                let ok = match key {
                    "id" => true,
                    DELEGABLE_ANNOTATION => value == "true" || value == "false",
                    _ => false,
                };
                if !ok {
                    issues.push(ValidationIssue {
                        policy: p.name.clone(),
                        line: p.line,
                        message: format!("annotation `@{key}(\"{value}\")` is not one deputy knows"),
                        help: Some(
                            "grants accept `@id(\"…\")` and `@delegable(\"true\")` or `@delegable(\"false\")`"
                                .to_owned(),
                        ),
                    });
                }
            }
        }
        if issues.is_empty() {
            return Ok(());
        }
        Err(GrantError::Invalid(InvalidGrant {
            role: GrantRole::Grant,
            issues,
        }))
    }

    /// The part of this grant its holder may pass on: every policy except the permits
    /// annotated `@delegable("false")`. Forbids are never withheld.
    pub fn delegable_view(&self) -> Grant {
        Grant {
            src: Arc::clone(&self.src),
            policies: self
                .policies
                .iter()
                .filter(|p| p.effect() == Effect::Forbid || p.delegable())
                .cloned()
                .collect(),
            digest: OnceLock::new(),
            parsed: None,
        }
    }

    /// The grant's whole text as `PolicySet::from_str` parsed it, when this grant is the whole
    /// text (`None` for a view): the registry links an accepted grant from it instead of
    /// parsing the same text again under the writer lock.
    pub fn parsed_text(&self) -> Option<(&str, &Arc<PolicySet>)> {
        self.parsed.as_ref().map(|p| (&*self.src, p))
    }

    /// A stable hex SHA-256 digest of the grant's policies (in canonical Cedar form).
    pub fn digest(&self) -> String {
        self.digest
            .get_or_init(|| {
                let mut hasher = Sha256::new();
                for p in &self.policies {
                    hasher.update(p.template.to_string().as_bytes());
                    hasher.update(b"\n");
                }
                hex::encode(hasher.finalize())
            })
            .clone()
    }

    /// The grant's source text.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// Number of policies in the grant.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// True when the grant holds no policy (it allows nothing).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub(crate) fn policies(&self) -> &[GrantPolicy] {
        &self.policies
    }

    fn policy_set(&self) -> Result<PolicySet, GrantError> {
        let mut set = PolicySet::new();
        for p in &self.policies {
            let added = match &p.static_policy {
                Some(policy) => set.add(policy.clone()),
                None => set.add_template(p.template.clone()),
            };
            added.map_err(|e| GrantError::internal(format!("cannot rebuild grant: {e}")))?;
        }
        Ok(set)
    }

    fn policy_by_id(&self, id: &PolicyId) -> Option<&GrantPolicy> {
        self.policies.iter().find(|p| p.template.id() == id)
    }
}

/// Validates a grant strictly against the schema (Cedar's `Validator`, `ValidationMode::Strict`).
///
/// Every error names the policy and the line it is on.
pub fn validate_grant(grant: &Grant, schema: &Schema) -> Result<(), GrantError> {
    validate_with(grant, &Validator::new(schema.clone()), GrantRole::Grant)
}

pub(crate) fn validate_with(grant: &Grant, validator: &Validator, role: GrantRole) -> Result<(), GrantError> {
    let set = grant.policy_set()?;
    let result = validator.validate(&set, ValidationMode::Strict);
    if result.validation_passed() {
        return Ok(());
    }
    let issues = result
        .validation_errors()
        .map(|e| {
            let policy = grant.policy_by_id(e.policy_id());
            let line = e
                .labels()
                .and_then(|mut labels| labels.next())
                .map(|label| line_of(&grant.src, label.offset()))
                .or(policy.map(|p| p.line))
                .unwrap_or(0);
            ValidationIssue {
                policy: policy
                    .map(|p| p.name.clone())
                    .unwrap_or_else(|| e.policy_id().to_string()),
                line,
                message: e.to_string(),
                help: e.help().map(|h| h.to_string()),
            }
        })
        .collect();
    Err(GrantError::Invalid(InvalidGrant { role, issues }))
}

fn template_offset(template: &Template) -> usize {
    let core: &ast::Template = template.as_ref();
    core.loc().map(|l| l.span.offset()).unwrap_or(usize::MAX)
}

/// 1-based line number of a byte offset.
pub(crate) fn line_of(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()
        .get(..end)
        .map(|b| b.iter().filter(|c| **c == b'\n').count() + 1)
        .unwrap_or(1)
}

fn render_parse_error(src: &str, e: &cedar_policy::ParseErrors) -> String {
    e.iter()
        .map(|err| match err.labels().and_then(|mut l| l.next()) {
            Some(label) => format!("line {}: {err}", line_of(src, label.offset())),
            None => err.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    const SRC: &str = r#"permit(principal == ?principal, action, resource);

@id("creds")
@delegable("false")
permit(principal == ?principal, action, resource);
forbid(principal, action, resource) when { context.taint > 2 };
"#;

    #[test]
    fn policies_keep_names_and_lines() {
        let g = Grant::parse(SRC).unwrap();
        let names: Vec<(&str, usize)> = g.policies().iter().map(|p| (p.name.as_str(), p.line)).collect();
        assert_eq!(names, [("policy0", 1), ("creds", 3), ("policy2", 6)]);
    }

    #[test]
    fn delegable_view_withholds_permits_only() {
        let g = Grant::parse(SRC).unwrap();
        let view = g.delegable_view();
        assert_eq!(view.len(), 2);
        assert!(view.policies().iter().all(|p| p.name != "creds"));
        assert_ne!(g.digest(), view.digest());
        assert_eq!(g.digest(), Grant::parse(SRC).unwrap().digest());
    }

    #[test]
    fn resource_slots_and_syntax_errors_are_rejected() {
        let e = Grant::parse("permit(principal, action, resource in ?resource);").unwrap_err();
        assert_eq!(e.code(), "grant_resource_slot");
        let e = Grant::parse("permit(principal,\n action, resource").unwrap_err();
        assert_eq!(e.code(), "grant_parse_error");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn grants_are_about_their_holder_only() {
        let ok = Grant::parse(
            "permit(principal == ?principal, action, resource in Folder::\"a\");\n\
             permit(principal, action, resource) when { resource.owner == \"x\" };\n\
             permit(principal is Agent, action, resource);\n\
             permit(principal in ?principal, action, resource);\n\
             forbid(principal, action, resource) when { context.taint > 2 };",
        )
        .unwrap();
        ok.check_holder_only().unwrap();
        for (src, why) in [
            (
                "permit(principal == Agent::\"kid\", action, resource);",
                "principal == Agent::\"kid\"",
            ),
            (
                "permit(principal in Team::\"t\", action, resource);",
                "principal in Team::\"t\"",
            ),
            (
                "permit(principal is Agent in Team::\"t\", action, resource);",
                "principal is Agent in",
            ),
            (
                "permit(principal == ?principal, action, resource) when { principal == Agent::\"kid\" };",
                "tests `principal`",
            ),
            (
                "forbid(principal, action, resource) unless { principal.depth == 0 };",
                "tests `principal`",
            ),
            (
                "forbid(principal == Agent::\"me\", action, resource);",
                "principal == Agent::\"me\"",
            ),
        ] {
            let e = Grant::parse(src).unwrap().check_holder_only().unwrap_err();
            assert_eq!(e.code(), "grant_foreign_principal", "{src}");
            assert!(e.to_string().contains(why), "{src}: {e}");
            assert!(e.to_string().contains("line 1"), "{e}");
        }
    }

    #[test]
    fn only_known_annotations_are_accepted() {
        Grant::parse("@id(\"a\")\n@delegable(\"false\")\npermit(principal == ?principal, action, resource);")
            .unwrap()
            .check_annotations()
            .unwrap();
        for bad in [
            "@delegable(\"False\")",
            "@delegable(\"no\")",
            "@Delegable(\"false\")",
            "@delegable",
        ] {
            let g = Grant::parse(&format!("{bad}\npermit(principal == ?principal, action, resource);")).unwrap();
            let e = g.check_annotations().unwrap_err();
            assert_eq!(e.code(), "grant_invalid", "{bad}");
            assert!(e.to_string().contains("line 1"), "{bad}: {e}");
            // And a permit with another spelling of `@delegable` is never passed on.
            if bad.starts_with("@delegable") {
                assert!(g.delegable_view().is_empty(), "{bad}");
            }
        }
    }

    #[test]
    fn line_numbers_are_one_based() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }

    /// Nesting counts brackets and `if`s, not what strings, comments or identifiers hold; a
    /// policy's end closes its `if`s; a grant nested past the limit is refused before Cedar
    /// parses it, one at the limit is parsed.
    #[test]
    fn nesting_is_read_from_the_tokens_and_bounded() {
        let nest = |src: &str| shape(src).nesting;
        assert_eq!(nest("permit(principal, action, resource);"), 1);
        assert_eq!(nest("permit(principal, action, resource) when { [(1)] == [] };"), 3);
        assert_eq!(
            nest(r#"permit(principal, action, resource) when { context.s == "((((\"[[" };"#),
            1
        );
        assert_eq!(nest("// ((((((\npermit(principal, action, resource);"), 1);
        assert_eq!(nest("permit(principal, action, resource) when { diff && iffy };"), 1);
        assert_eq!(
            nest("permit(principal, action, resource) when { if a then b else if c then d else e };"),
            3
        );
        assert_eq!(
            nest("permit(p, a, r) when { (if a then b else c) && (if a then b else c) };"),
            3
        );
        let cond = |n: usize| format!("{}true{}", "(".repeat(n), ")".repeat(n));
        let at = |n: usize| {
            format!(
                "permit(principal == ?principal, action, resource) when {{ {} }};",
                cond(n)
            )
        };
        // `when {` is a level: `n` parentheses inside it are `n + 1`.
        assert_eq!(nest(&at(MAX_GRANT_NESTING - 1)), MAX_GRANT_NESTING);
        assert!(Grant::parse(&at(MAX_GRANT_NESTING - 1)).is_ok());
        let e = Grant::parse(&at(MAX_GRANT_NESTING)).unwrap_err();
        assert_eq!(e.code(), "grant_parse_error");
        assert!(e.to_string().contains("nests"), "{e}");
        let ifs = format!(
            "permit(principal == ?principal, action, resource) when {{ {}true{} }};",
            "if true then ".repeat(500),
            " else false".repeat(500)
        );
        assert!(Grant::parse(&ifs).is_err());
    }

    /// Operators are counted per policy, a two-character one once; past the limit a policy is
    /// refused before Cedar parses it.
    #[test]
    fn operators_are_counted_per_policy_and_bounded() {
        let ops = |src: &str| shape(src).operators;
        assert_eq!(
            ops(r#"permit(principal == ?principal, action, resource in F::"a.b");"#),
            2
        );
        assert_eq!(ops("permit(p, a, r) when { c.b + 1 >= 2 && !d || e has f };"), 7);
        assert_eq!(ops("permit(p, a, r) when { c.b };\npermit(p, a, r) when { c.d.e };"), 2);
        let chain = |n: usize| {
            format!(
                "permit(principal == ?principal, action, resource) when {{ 1{} > 0 }};",
                "+1".repeat(n)
            )
        };
        assert_eq!(ops(&chain(10)), 12);
        let e = Grant::parse(&chain(MAX_GRANT_OPERATORS)).unwrap_err();
        assert!(e.to_string().contains("operators"), "{e}");
        let e = Grant::parse(&chain(30_000)).unwrap_err();
        assert!(e.to_string().contains("operators"), "{e}");
    }

    /// An expression tree is as deep as its longest chain; a grant deeper than the limit is
    /// refused after Cedar parses it, one at the limit is accepted.
    #[test]
    fn expression_depth_is_bounded() {
        let at = |n: usize| {
            format!(
                "permit(principal == ?principal, action, resource) when {{ context.n{} > 0 }};",
                " + 1".repeat(n)
            )
        };
        let depth = |src: &str| {
            let set = PolicySet::from_str(src).unwrap();
            let t = set.templates().next().unwrap();
            let core: &ast::Template = t.as_ref();
            expr_depth(&core.condition())
        };
        let (short, long) = (depth(&at(10)), depth(&at(20)));
        assert_eq!(long - short, 10, "each `+ 1` is one level");
        let fits = MAX_GRANT_DEPTH - short + 10;
        assert_eq!(depth(&at(fits)), MAX_GRANT_DEPTH);
        assert!(Grant::parse(&at(fits)).is_ok());
        let e = Grant::parse(&at(fits + 1)).unwrap_err();
        assert_eq!(e.code(), "grant_parse_error");
        assert!(e.to_string().contains("nests"), "{e}");
        let attrs = format!(
            "permit(principal == ?principal, action, resource) when {{ context{} == 1 }};",
            ".a".repeat(5000)
        );
        assert!(Grant::parse(&attrs).is_err());
    }
}

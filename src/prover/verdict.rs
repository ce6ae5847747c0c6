//! The prover's answer and how it is shown to machines (JSON) and people (text).

use std::fmt::Write as _;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// The outcome of `prove`.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Every request the child may make, its parent's delegable view allows.
    Within(Evidence),
    /// A concrete request the child allows and the parent denies, replayed through Cedar.
    Exceeds(Box<Counterexample>),
    /// No proof either way; callers must treat this as "ask a human", never as "apply".
    Inconclusive(Inconclusive),
}

impl Verdict {
    /// `"within"`, `"exceeds"` or `"inconclusive"`.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Within(_) => "within",
            Verdict::Exceeds(_) => "exceeds",
            Verdict::Inconclusive(_) => "inconclusive",
        }
    }

    /// True for `Within`.
    pub fn is_within(&self) -> bool {
        matches!(self, Verdict::Within(_))
    }
}

impl Serialize for Verdict {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Verdict", 4)?;
        st.serialize_field("verdict", self.name())?;
        st.serialize_field(
            "counterexample",
            &match self {
                Verdict::Exceeds(c) => Some(c.as_ref()),
                _ => None,
            },
        )?;
        st.serialize_field(
            "evidence",
            &match self {
                Verdict::Within(e) => Some(e),
                _ => None,
            },
        )?;
        st.serialize_field(
            "reason",
            &match self {
                Verdict::Inconclusive(i) => Some(i),
                _ => None,
            },
        )?;
        st.end()
    }
}

/// Which engine reached a verdict: deputy's own search.
pub const BACKEND_DEPUTY: &str = "deputy";
/// Which engine reached a verdict: cedar-policy-symcc driving cvc5 (the second opinion).
pub const BACKEND_SYMCC: &str = "symcc-cvc5";

/// Why each child permit is covered.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    /// The engine that proved it: `deputy`, or `symcc-cvc5` when the second opinion settled
    /// what deputy's own search left inconclusive.
    pub backend: &'static str,
    /// One entry per child permit (deputy's proofs). Empty for a `symcc-cvc5` proof, which
    /// covers the whole grant at once and names no parent permits.
    pub permits: Vec<Coverage>,
    /// For a `symcc-cvc5` proof: what deputy's own search answered before the solver settled it.
    pub settled: Option<Inconclusive>,
}

impl Default for Evidence {
    fn default() -> Self {
        Evidence {
            backend: BACKEND_DEPUTY,
            permits: Vec::new(),
            settled: None,
        }
    }
}

/// How one child permit stays inside the parent's delegable view.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// The child permit (`@id` or `policyN`).
    pub child_policy: String,
    /// Line the child permit starts on.
    pub line: usize,
    /// False when the permit can never be satisfied (for example `when { false }`).
    pub applies: bool,
    /// Parent permits the proof relied on.
    pub covered_by: Vec<String>,
    /// Forbids (child's or parent's) that cut away what the parent does not allow.
    pub narrowed_by: Vec<String>,
    /// Facts of the entity store the proof relied on, as `A in B`.
    pub hierarchy_facts: Vec<String>,
}

/// A request allowed by the child grant (with the parent's forbids) and denied by the
/// parent's delegable view, as replayed through Cedar's `Authorizer`.
#[derive(Debug, Clone, Serialize)]
pub struct Counterexample {
    /// The principal (`Type::"id"`).
    pub principal: String,
    /// The action.
    pub action: String,
    /// The resource.
    pub resource: String,
    /// The request context (Cedar JSON).
    pub context: serde_json::Value,
    /// Entities to add to the bundle's store for this request (Cedar entity JSON).
    pub entities: serde_json::Value,
    /// What `?principal` was linked to.
    pub child_principal: String,
    /// Child policies that allowed the request.
    pub allowed_by: Vec<String>,
    /// Parent forbids that denied it (empty when simply no parent permit applies).
    pub denied_by: Vec<String>,
    /// Errors Cedar reported while evaluating the parent's policies.
    pub parent_errors: Vec<String>,
    /// The engine that found it (`deputy` or `symcc-cvc5`); either way Cedar replayed it.
    pub backend: &'static str,
}

/// Why no verdict could be reached.
#[derive(Debug, Clone, Serialize)]
pub struct Inconclusive {
    /// Stable code: `unsupported_construct`, `budget_exhausted` or `replay_failed`.
    pub code: &'static str,
    /// What happened, in words.
    pub message: String,
    /// The policy involved, if one is to blame.
    pub policy: Option<String>,
    /// Expressions the prover could not interpret.
    pub constructs: Vec<String>,
    /// Why the SMT second opinion did not settle it, when one was configured and asked.
    pub solver: Option<SolverNote>,
}

/// Why the SMT second opinion (SymCC + cvc5) left a verdict inconclusive.
#[derive(Debug, Clone, Serialize)]
pub struct SolverNote {
    /// Stable code: `solver_unavailable`, `solver_unknown`, `solver_error`,
    /// `solver_unsupported`, `solver_replay_failed` or `solver_existence`.
    pub code: &'static str,
    /// What happened, naming the solver.
    pub message: String,
}

impl Verdict {
    /// Human-readable rendering, in the style of a compiler diagnostic.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match self {
            Verdict::Within(e) => {
                let _ = writeln!(out, "within: the child grant stays inside the parent's delegable view");
                if e.backend != BACKEND_DEPUTY {
                    let _ = writeln!(
                        out,
                        "  = proved by the second opinion ({}) for every entity store",
                        e.backend
                    );
                    if let Some(i) = &e.settled {
                        let _ = writeln!(out, "  = deputy's own search alone: {}: {}", i.code, i.message);
                    }
                }
                for c in &e.permits {
                    if !c.applies {
                        let _ = writeln!(
                            out,
                            "  = child permit `{}` (line {}) never applies",
                            c.child_policy, c.line
                        );
                        continue;
                    }
                    let _ = writeln!(out, "  = child permit `{}` (line {})", c.child_policy, c.line);
                    if !c.covered_by.is_empty() {
                        let _ = writeln!(out, "      covered by {}", c.covered_by.join(", "));
                    }
                    if !c.narrowed_by.is_empty() {
                        let _ = writeln!(out, "      narrowed by {}", c.narrowed_by.join(", "));
                    }
                    for f in &c.hierarchy_facts {
                        let _ = writeln!(out, "      using {f}");
                    }
                }
            }
            Verdict::Exceeds(c) => {
                let _ = writeln!(
                    out,
                    "error[exceeds]: the child grant allows a request the parent's delegable view denies"
                );
                let _ = writeln!(out, "  --> allowed by {}", c.allowed_by.join(", "));
                if c.backend != BACKEND_DEPUTY {
                    let _ = writeln!(
                        out,
                        "   = found by the second opinion ({}), replayed through Cedar",
                        c.backend
                    );
                }
                let _ = writeln!(out, "   |");
                let _ = writeln!(out, "   | principal: {}", c.principal);
                let _ = writeln!(out, "   | action:    {}", c.action);
                let _ = writeln!(out, "   | resource:  {}", c.resource);
                let _ = writeln!(out, "   | context:   {}", c.context);
                if c.entities.as_array().is_some_and(|a| !a.is_empty()) {
                    let _ = writeln!(out, "   | entities:  {}", c.entities);
                }
                let _ = writeln!(out, "   |");
                if c.denied_by.is_empty() {
                    let _ = writeln!(
                        out,
                        "   = note: no permit of the parent's delegable view applies to this request"
                    );
                } else {
                    let _ = writeln!(out, "   = note: the parent forbids it: {}", c.denied_by.join(", "));
                }
                for e in &c.parent_errors {
                    let _ = writeln!(out, "   = note: while evaluating the parent: {e}");
                }
                let _ = writeln!(
                    out,
                    "   = help: narrow the child permit, or ask the parent's grantor for this permission"
                );
            }
            Verdict::Inconclusive(i) => {
                let _ = writeln!(out, "warning[{}]: {}", i.code, i.message);
                if let Some(p) = &i.policy {
                    let _ = writeln!(out, "  --> {p}");
                }
                for c in &i.constructs {
                    let _ = writeln!(out, "   = not interpreted: {c}");
                }
                if let Some(n) = &i.solver {
                    let _ = writeln!(out, "   = second opinion ({BACKEND_SYMCC}): {}: {}", n.code, n.message);
                }
                let _ = writeln!(
                    out,
                    "   = help: an inconclusive proof is never applied; ask a human to approve the delegation"
                );
            }
        }
        out
    }
}

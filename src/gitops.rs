//! Checks a platform team runs on a bundle before it ships through git (docs/GITOPS.md):
//!
//! - `deputy test`: decision cases the bundle must keep answering (`cases`);
//! - `deputy plan`: what a change to the bundle does (`plan`): the policies, entities, grants
//!   and schema it changes, whether it widens or narrows authority (proved by deputy's prover,
//!   a widening shown by a request Cedar's own authorizer replayed), and the cases it flips.
//!
//! Both decide with the sidecar's own decision path ([`crate::Decider`]), so a case passes here
//! exactly when `POST /v1/authorize` would answer it the same way on that bundle.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bundle::{Bundle, LoadOptions};
use crate::decider::Decider;
use crate::prover::SolverConfig;

pub mod cases;
pub mod plan;

/// Exit codes of `deputy test` and `deputy plan`.
pub const EXIT_OK: u8 = 0;
/// A case failed (`test`, `plan`), or the plan widens authority under `--deny-widening`.
pub const EXIT_FAILED: u8 = 1;
/// A bundle is invalid or a case file cannot be read.
pub const EXIT_BAD_INPUT: u8 = 64;

/// A decider over `bundle` as the sidecar serves it before any agent is spawned: the agents the
/// bundle declares with a shipped grant (`grants/<id>.cedar`) are decided by the admin policies
/// AND that grant, as `POST /v1/authorize` decides them. A bundle loaded without the agent model
/// (`--authorize-only`) is served without delegation state, so no bundle agent is installed and
/// the admin policies alone decide, shipped grants or not.
pub fn decider(bundle: Bundle) -> Result<Decider, String> {
    let bundle = std::sync::Arc::new(bundle);
    let now = crate::clock::now();
    let rows = if bundle.agent_model {
        bundle
            .grants
            .iter()
            .map(|(id, grant)| crate::delegation::shipped_agent(&bundle, id, grant, now))
            .collect()
    } else {
        Vec::new()
    };
    let registry = crate::agents::Registry::from_rows_with_sessions(rows, Vec::new()).map_err(|e| e.to_string())?;
    let live = crate::snapshot::Live::default();
    live.install_bundle(std::sync::Arc::clone(&bundle))
        .map_err(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    live.write()?.publish(registry)?;
    let snap = live.current().ok_or("no snapshot was published")?;
    Ok(Decider::of_snapshot(snap))
}

/// The case paths given, or the bundle's `policy-tests/` when none are.
fn case_paths(bundle: &Path, given: &[PathBuf]) -> Vec<PathBuf> {
    if given.is_empty() {
        vec![bundle.join(cases::DEFAULT_CASES_DIR)]
    } else {
        given.to_vec()
    }
}

fn load_bundle(dir: &Path, opts: &LoadOptions, err: &mut dyn Write) -> Option<Bundle> {
    match Bundle::load(dir, opts) {
        Ok(b) => Some(b),
        Err(e) => {
            for p in &e.problems {
                let _ = writeln!(err, "{p}");
            }
            let _ = writeln!(err, "bundle `{}` is invalid: {} problem(s)", dir.display(), e.problems.len());
            None
        }
    }
}

/// `deputy test`: runs the cases against the bundle; prints each failure (or, with `json`, one
/// JSON document) and returns the exit code.
pub fn run_test(
    bundle_dir: &Path,
    opts: &LoadOptions,
    paths: &[PathBuf],
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let Some(bundle) = load_bundle(bundle_dir, opts, err) else {
        return EXIT_BAD_INPUT;
    };
    let found = match cases::load(&case_paths(bundle_dir, paths)) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    if found.is_empty() {
        let _ = writeln!(err, "error: no cases found (give case files or directories, docs/GITOPS.md)");
        return EXIT_BAD_INPUT;
    }
    let version = bundle.version.clone();
    let decider = match decider(bundle) {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(err, "error: cannot install the bundle's agents: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let outcomes = cases::run(&decider, &found);
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    if json {
        let doc = serde_json::json!({
            "policy_version": version, "passed": outcomes.len() - failed, "failed": failed,
            "cases": outcomes,
        });
        let _ = writeln!(out, "{doc}");
    } else {
        for o in outcomes.iter().filter(|o| !o.passed) {
            let _ = writeln!(out, "FAIL {}: expected {}, got {}", o.case, o.expected, o.answer);
        }
        let _ = writeln!(
            out,
            "{} passed, {failed} failed (bundle `{}`, version {version})",
            outcomes.len() - failed,
            bundle_dir.display()
        );
    }
    if failed == 0 {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// What `deputy plan` is asked.
pub struct PlanArgs<'a> {
    /// The bundle as it is (e.g. a checkout of the target branch).
    pub from: &'a Path,
    /// The bundle as it would be.
    pub to: &'a Path,
    /// Load options for both.
    pub opts: &'a LoadOptions,
    /// Case files or directories (none: the new bundle's `policy-tests/`, if it has one).
    pub cases: &'a [PathBuf],
    /// Fail (exit 1) when the change widens authority or cannot be shown not to.
    pub deny_widening: bool,
    /// The SMT second opinion for what deputy's prover leaves unknown.
    pub solver: Option<SolverConfig>,
    /// Print JSON.
    pub json: bool,
    /// A pod's state directory (or a copy): what installing the new bundle does to its agents.
    pub state: Option<&'a Path>,
}

/// `deputy plan`: compares two bundles; prints the plan and returns the exit code.
pub fn run_plan(args: &PlanArgs<'_>, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let (Some(old), Some(new)) = (
        load_bundle(args.from, args.opts, err),
        load_bundle(args.to, args.opts, err),
    ) else {
        return EXIT_BAD_INPUT;
    };
    let default_dir = args.to.join(cases::DEFAULT_CASES_DIR);
    let paths = if args.cases.is_empty() && !default_dir.is_dir() {
        Vec::new()
    } else {
        case_paths(args.to, args.cases)
    };
    let found = match cases::load(&paths) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let mut plan = plan::plan((args.from, old), (args.to, new), &found, args.solver.clone());
    if let Some(state) = args.state {
        // The plan took the new bundle; the install gets one of its own, loaded again.
        let Some(new) = load_bundle(args.to, args.opts, err) else {
            return EXIT_BAD_INPUT;
        };
        match plan::live_change(new, state, crate::clock::now()) {
            Ok(live) => plan.live = Some(live),
            Err(e) => {
                let _ = writeln!(err, "error: --state `{}`: {e}", state.display());
                return EXIT_BAD_INPUT;
            }
        }
    }
    if args.json {
        let _ = writeln!(out, "{}", serde_json::to_string(&plan).unwrap_or_default());
    } else {
        let _ = render(&plan, out);
    }
    let widening = !matches!(plan.authority.widens, plan::Comparison::No)
        || plan
            .grants
            .iter()
            .any(|g| g.change != "changed" || g.widens.as_ref().is_some_and(|w| !matches!(w, plan::Comparison::No)));
    let refused = plan.live.as_ref().is_some_and(|l| !l.refused.is_empty());
    if plan.failing() > 0 || refused || (args.deny_widening && widening) {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

fn render(p: &plan::Plan, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "plan: version {} -> {}", short(&p.from_version), short(&p.to_version))?;
    writeln!(out, "schema: {}", if p.schema_changed { "changed" } else { "unchanged" })?;
    writeln!(out, "policies: {}", changes(&p.policies))?;
    writeln!(out, "entities: {}", changes(&p.entities))?;
    for g in &p.grants {
        let w = match (g.change, &g.widens) {
            (_, Some(w)) => format!(", widens: {}", comparison(w)),
            ("removed", None) => ", may widen: a running sidecar revokes the agent, a fresh one decides it by \
                                  the admin policies alone"
                .to_owned(),
            (_, None) => ", may widen: a new root authority".to_owned(),
        };
        writeln!(out, "grant of `{}`: {}{w}", g.agent, g.change)?;
    }
    writeln!(out, "authority widens: {}", comparison(&p.authority.widens))?;
    writeln!(out, "authority narrows: {}", comparison(&p.authority.narrows))?;
    let failing = p.failing();
    writeln!(
        out,
        "cases: {} run, {} answer differently, {failing} fail under the new bundle",
        p.cases_run,
        p.cases.iter().filter(|c| c.before != c.after).count()
    )?;
    for c in &p.cases {
        let mark = if c.passes { "changed" } else { "FAIL" };
        writeln!(out, "  {mark} {}: {} -> {} (expected {})", c.case, c.before, c.after, c.expected)?;
    }
    if let Some(live) = &p.live {
        writeln!(out, "live agents: {} in the state", live.live_agents)?;
        if !live.refused.is_empty() {
            writeln!(out, "  REFUSED: the sidecar keeps serving the old bundle:")?;
            for problem in &live.refused {
                writeln!(out, "    {problem}")?;
            }
        }
        for e in &live.events {
            writeln!(
                out,
                "  {} `{}` {}",
                e["event"].as_str().unwrap_or("?"),
                e["agent"].as_str().unwrap_or("?"),
                e["details"]
            )?;
        }
        for d in &live.drift {
            writeln!(
                out,
                "  drift: `{}` no longer proves within `{}` ({})",
                d["agent"].as_str().unwrap_or("?"),
                d["parent"].as_str().unwrap_or("?"),
                d["verdict"].as_str().unwrap_or("?")
            )?;
        }
    }
    Ok(())
}

/// ` where A in [B, C], …` for the entities a found request adds to the store.
fn where_(entities: &serde_json::Value) -> String {
    let uid = |v: &serde_json::Value| format!("{}::{}", v["type"].as_str().unwrap_or("?"), v["id"]);
    let parts: Vec<String> = entities
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let parents = e["parents"].as_array().filter(|p| !p.is_empty());
            let attrs = e["attrs"].as_object().filter(|a| !a.is_empty());
            if parents.is_none() && attrs.is_none() {
                return None;
            }
            let mut s = uid(&e["uid"]);
            if let Some(p) = parents {
                s.push_str(&format!(" in [{}]", p.iter().map(uid).collect::<Vec<_>>().join(", ")));
            }
            if let Some(a) = attrs {
                s.push_str(&format!(" with {}", serde_json::Value::Object(a.clone())));
            }
            Some(s)
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" where {}", parts.join(", "))
    }
}

fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}

fn changes(c: &plan::Changes) -> String {
    if c.is_empty() {
        return "unchanged".to_owned();
    }
    let list = |what: &str, v: &[String]| (!v.is_empty()).then(|| format!("{what} [{}]", v.join(", ")));
    [
        list("added", &c.added),
        list("removed", &c.removed),
        list("changed", &c.changed),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("; ")
}

fn comparison(c: &plan::Comparison) -> String {
    match c {
        plan::Comparison::No => "no (proved)".to_owned(),
        plan::Comparison::Yes { request: r } => {
            let denied = if r.denied_by.is_empty() {
                "no permit".to_owned()
            } else {
                r.denied_by.join(", ")
            };
            format!(
                "YES: {} may {} {}{} (context {}; allowed by [{}], denied before by {denied}; replayed through Cedar)",
                r.principal,
                r.action,
                r.resource,
                where_(&r.entities),
                r.context,
                r.allowed_by.join(", ")
            )
        }
        plan::Comparison::Unknown { why } => format!("unknown ({why})"),
    }
}

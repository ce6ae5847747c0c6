//! The `deputy prove` back end: parse, prove, print, and map the verdict to an exit code.

use std::io::Write;

use cedar_policy::{Entities, Schema};

use super::{prove, Grant, GrantError, GrantRole, ProveOptions, Verdict};

/// Exit code: the child grant is within the parent's delegable view.
pub const EXIT_WITHIN: i32 = 0;
/// Exit code: a replayed counterexample shows the child grant exceeds the parent's.
pub const EXIT_EXCEEDS: i32 = 1;
/// Exit code: no proof either way.
pub const EXIT_INCONCLUSIVE: i32 = 2;
/// Exit code: bad input (unparsable or invalid grant), as in `sysexits.h`'s `EX_DATAERR`.
pub const EXIT_BAD_INPUT: i32 = 64;

/// Runs `deputy prove` on already-loaded schema and entities; returns the exit code.
///
/// With `json`, prints `{verdict, counterexample, evidence, reason}` (or
/// `{error: {code, message, help}}` for bad input); otherwise a human-readable report.
pub fn run_prove(
    schema: &Schema,
    entities: &Entities,
    parent_src: &str,
    child_src: &str,
    json: bool,
    out: &mut dyn Write,
) -> i32 {
    run_prove_with(
        schema,
        entities,
        parent_src,
        child_src,
        json,
        &ProveOptions::default(),
        out,
    )
}

/// Same as [`run_prove`], with the given options (for example a solver for the second opinion).
pub fn run_prove_with(
    schema: &Schema,
    entities: &Entities,
    parent_src: &str,
    child_src: &str,
    json: bool,
    opts: &ProveOptions,
    out: &mut dyn Write,
) -> i32 {
    let result = Grant::parse(parent_src)
        .map_err(|e| e.with_role(GrantRole::Parent))
        .and_then(|parent| {
            let child = Grant::parse(child_src).map_err(|e| e.with_role(GrantRole::Child))?;
            prove(&child, &parent, schema, entities, opts)
        });
    let (code, text) = match result {
        Ok(verdict) => {
            let code = match verdict {
                Verdict::Within(_) => EXIT_WITHIN,
                Verdict::Exceeds(_) => EXIT_EXCEEDS,
                Verdict::Inconclusive(_) => EXIT_INCONCLUSIVE,
            };
            let text = if json {
                serde_json::to_string_pretty(&verdict)
                    .unwrap_or_else(|e| format!("{{\"error\":{{\"code\":\"internal\",\"message\":\"{e}\"}}}}"))
            } else {
                verdict.render()
            };
            (code, text)
        }
        Err(e) => (EXIT_BAD_INPUT, render_error(&e, json)),
    };
    // Nothing sensible to do if stdout is gone; the exit code still tells the story.
    let _ = writeln!(out, "{}", text.trim_end());
    code
}

fn render_error(e: &GrantError, json: bool) -> String {
    if json {
        let issues = match e {
            GrantError::Invalid(inv) => serde_json::to_value(&inv.issues).ok(),
            _ => None,
        };
        let v = serde_json::json!({
            "error": {"code": e.code(), "message": e.to_string(), "help": e.help(), "issues": issues}
        });
        return serde_json::to_string_pretty(&v).unwrap_or_default();
    }
    let mut s = match e {
        GrantError::Invalid(inv) => {
            let mut s = format!("error[{}]: {} is not valid against the schema\n", e.code(), inv.role);
            for i in &inv.issues {
                s.push_str(&format!(
                    "  --> policy `{}`, line {}\n   = {}\n",
                    i.policy, i.line, i.message
                ));
                if let Some(h) = &i.help {
                    s.push_str(&format!("   = help: {h}\n"));
                }
            }
            s
        }
        other => format!("error[{}]: {other}\n", other.code()),
    };
    if let Some(h) = e.help() {
        s.push_str(&format!("   = help: {h}\n"));
    }
    s
}

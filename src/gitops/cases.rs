//! Decision cases: requests a bundle must keep answering a given way (`deputy test`).
//!
//! A case file is JSON: `{"cases": [{"name"?, "principal", "action", "resource", "context"?,
//! "expect": "Allow" | "Deny" | {"error": "<code>"}, "reasons"?: [policy ids]}]}`. The request
//! fields are `POST /v1/authorize`'s; `reasons`, when given, must equal the determining policies
//! as a set. Unknown fields are refused (a misspelt `expect` must not pass a case silently).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::decider::Decider;

/// Where `deputy test` looks for cases when given none: `<bundle>/policy-tests/`.
pub const DEFAULT_CASES_DIR: &str = "policy-tests";

/// What a case expects.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Expect {
    /// `"Allow"` or `"Deny"`.
    Decision(Verdict),
    /// `{"error": "<code>"}`: the request is refused with this code (docs/ERRORS.md).
    Error {
        /// The stable error code.
        error: String,
    },
}

/// A decision a case expects.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

/// One case as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case is about (shown when it fails).
    #[serde(default)]
    pub name: Option<String>,
    /// The request's principal, `{"type", "id"}`.
    pub principal: Value,
    /// The request's action.
    pub action: Value,
    /// The request's resource.
    pub resource: Value,
    /// The request's context (absent: the empty record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    /// The expected answer.
    pub expect: Expect,
    /// The determining policies expected, compared as a set (absent: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
}

/// A case with where it was written.
#[derive(Debug, Clone)]
pub struct Located {
    /// The file, as given (or found under a given directory).
    pub file: String,
    /// Its position in the file's `cases`, from 0.
    pub index: usize,
    /// The case.
    pub case: Case,
}

impl Located {
    /// `file#index` and the name, for reports.
    pub fn label(&self) -> String {
        match &self.case.name {
            Some(n) => format!("{}#{} ({n})", self.file, self.index),
            None => format!("{}#{}", self.file, self.index),
        }
    }
}

/// A case file that cannot be read: the file and what is wrong (serde names the field, line
/// and column).
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct CaseFileError {
    /// The file at fault.
    pub file: String,
    /// What is wrong with it.
    pub message: String,
}

/// Reads the cases under `paths` (files, or directories searched for `*.json`, in path order).
pub fn load(paths: &[PathBuf]) -> Result<Vec<Located>, CaseFileError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            json_files(p, &mut files).map_err(|e| CaseFileError {
                file: p.display().to_string(),
                message: format!("cannot read the directory: {e}"),
            })?;
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for f in files {
        let file = f.display().to_string();
        let text = std::fs::read_to_string(&f).map_err(|e| CaseFileError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let parsed: CaseFile = serde_json::from_str(&text).map_err(|e| CaseFileError {
            file: file.clone(),
            message: format!("{e} (a case file is {{\"cases\": [...]}}, docs/GITOPS.md)"),
        })?;
        out.extend(parsed.cases.into_iter().enumerate().map(|(index, case)| Located {
            file: file.clone(),
            index,
            case,
        }));
    }
    Ok(out)
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            json_files(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
    Ok(())
}

/// What a bundle answered to a case's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// A decision, with its determining policies (sorted) and the policies that erred.
    Decision {
        /// Allowed or denied.
        decision: Verdict,
        /// The determining policies.
        reasons: Vec<String>,
        /// Policies that erred on the request (they did not apply).
        errors: Vec<String>,
    },
    /// The request was refused.
    Error {
        /// The stable code.
        code: String,
        /// Why, naming the field.
        message: String,
    },
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Decision {
                decision,
                reasons,
                errors,
            } => {
                write!(f, "{decision:?}")?;
                if !reasons.is_empty() {
                    write!(f, " by [{}]", reasons.join(", "))?;
                }
                if !errors.is_empty() {
                    write!(f, " (erred: [{}])", errors.join(", "))?;
                }
                Ok(())
            }
            Answer::Error { code, message } => write!(f, "error `{code}`: {message}"),
        }
    }
}

/// Asks `decider` the case's request.
pub fn answer(decider: &Decider, case: &Case) -> Answer {
    let mut request = json!({"principal": case.principal, "action": case.action, "resource": case.resource});
    if let Some(c) = &case.context {
        request["context"] = c.clone();
    }
    // The sidecar refuses a body larger than `--max-body-bytes` (even sent compactly), then one
    // that nests deeper than `--max-json-depth`, before reading it.
    let limit = crate::config::DEFAULT_MAX_BODY_BYTES;
    if serde_json::to_vec(&request).map_or(0, |b| b.len()) > limit {
        return Answer::Error {
            code: crate::error::ErrorCode::BodyTooLarge.as_str().to_owned(),
            message: format!("request body exceeds the limit of {limit} bytes"),
        };
    }
    let max = crate::config::DEFAULT_MAX_JSON_DEPTH;
    if nesting(&request) > max {
        return Answer::Error {
            code: crate::error::ErrorCode::JsonTooDeep.as_str().to_owned(),
            message: format!("the request body nests deeper than {max} levels"),
        };
    }
    match decider.decide(&request) {
        Ok(d) => Answer::Decision {
            decision: if d.allow { Verdict::Allow } else { Verdict::Deny },
            reasons: d.reasons,
            errors: d.errors.into_iter().map(|e| e.policy).collect(),
        },
        Err(e) => Answer::Error {
            code: e.code.as_str().to_owned(),
            message: e.message,
        },
    }
}

/// How deep `v` nests arrays and objects, counted as the sidecar counts a body's brackets (the
/// body's own object is 1).
fn nesting(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether `answer` is what `case` expects.
pub fn passes(case: &Case, answer: &Answer) -> bool {
    match (&case.expect, answer) {
        (Expect::Decision(want), Answer::Decision { decision, reasons, .. }) => {
            want == decision
                && case.reasons.as_ref().is_none_or(|expected| {
                    let mut expected = expected.clone();
                    expected.sort();
                    expected.dedup();
                    expected == *reasons
                })
        }
        (Expect::Error { error }, Answer::Error { code, .. }) => error == code,
        _ => false,
    }
}

/// What the case expects, in words.
pub fn expected(case: &Case) -> String {
    let mut s = match &case.expect {
        Expect::Decision(v) => format!("{v:?}"),
        Expect::Error { error } => format!("error `{error}`"),
    };
    if let Some(r) = &case.reasons {
        s.push_str(&format!(" by [{}]", r.join(", ")));
    }
    s
}

/// One case run against one bundle.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `file#index (name)`.
    pub case: String,
    /// Passed or not.
    pub passed: bool,
    /// What the case expects, in words.
    pub expected: String,
    /// What the bundle answered.
    pub answer: Answer,
}

/// Runs every case against `decider`.
pub fn run(decider: &Decider, cases: &[Located]) -> Vec<Outcome> {
    cases
        .iter()
        .map(|c| {
            let answer = answer(decider, &c.case);
            Outcome {
                case: c.label(),
                passed: passes(&c.case, &answer),
                expected: expected(&c.case),
                answer,
            }
        })
        .collect()
}

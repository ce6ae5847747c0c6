//! Problems found while loading a bundle, located by file and line so that a GitOps pipeline
//! (and a human reading `deputy validate`) can jump straight to the fault.

use std::fmt;

use miette::Diagnostic;
use serde::Serialize;

use crate::error::ProblemCode;

/// One problem in a bundle. `file` is relative to the bundle root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Stable snake_case code, see docs/ERRORS.md.
    pub code: ProblemCode,
    /// The file at fault, relative to the bundle root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 1-based line in `file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column in `file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// What is wrong, naming the policy, entity or field.
    pub message: String,
    /// How to fix it, when deputy knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Problem {
    /// A problem with no location yet.
    pub fn new(code: ProblemCode, message: impl Into<String>) -> Self {
        Self {
            code,
            file: None,
            line: None,
            column: None,
            message: message.into(),
            help: None,
        }
    }

    /// Locates it in `file`.
    pub fn in_file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// Locates it at `line`, `column`.
    pub fn at(mut self, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    /// Adds how to fix it.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Flattens a Cedar diagnostic (and its related diagnostics) into problems, locating each
    /// by the first label's offset into `text`, the source of `file`.
    pub fn from_diagnostic(
        code: ProblemCode,
        diag: &dyn Diagnostic,
        file: Option<&str>,
        text: Option<&str>,
    ) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut push = |d: &dyn Diagnostic| {
            let mut p = Problem::new(code, with_causes(d));
            if let Some(file) = file {
                p = p.in_file(file);
            }
            if let (Some(text), Some(span)) = (text, d.labels().and_then(|mut l| l.next())) {
                let (line, col) = line_col(text, span.offset());
                p = p.at(line, col);
            }
            p.help = d.help().map(|h| h.to_string());
            out.push(p);
        };
        push(diag);
        if let Some(related) = diag.related() {
            for d in related {
                push(d);
            }
        }
        out
    }
}

/// The message of `err` followed by its causes, joined with `: ` (each only once).
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line, self.column) {
            (Some(file), Some(line), Some(col)) => write!(f, "{file}:{line}:{col}: ")?,
            (Some(file), Some(line), None) => write!(f, "{file}:{line}: ")?,
            (Some(file), None, _) => write!(f, "{file}: ")?,
            _ => {}
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, " (help: {help})")?;
        }
        Ok(())
    }
}

/// Every problem found in one load attempt; a bundle with any problem is never served.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bundle `{dir}` is invalid: {} problem(s), first: {}", problems.len(), problems.first().map(ToString::to_string).unwrap_or_default())]
pub struct BundleError {
    /// The bundle directory.
    pub dir: String,
    /// Every problem found, in file order.
    pub problems: Vec<Problem>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "ab\ncd\nef";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (2, 2));
        assert_eq!(line_col(text, 99), (3, 3));
    }

    #[test]
    fn display_names_file_and_line() {
        let p = Problem::new(ProblemCode::PolicyParse, "unexpected token")
            .in_file("policies/a.cedar")
            .at(3, 7);
        assert_eq!(p.to_string(), "policies/a.cedar:3:7: unexpected token");
    }
}

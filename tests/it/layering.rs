//! The crate's top-level modules depend on each other in one direction only (ARCHITECTURE.md
//! draws the layers): every `crate::<module>` a module names is below it. Fails, naming the
//! modules, when an import would close a cycle.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first; a module may only use modules before it in this list.
const LAYERS: &[&str] = &[
    "error",
    "clock",
    "config",
    "eval",
    "prover",
    "telemetry",
    "agents",
    "bundle",
    "snapshot",
    "authorize",
    "decider",
    "authzen",
    "delegation",
    "gitops",
    "mcp",
    "http",
    "probe",
    "server",
    "cli",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `crate::<name>` paths in `text`, including `crate::{a, b::c}` groups.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn modules_depend_on_lower_layers_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        // Code only: a doc comment may link to any item.
        let text: String = std::fs::read_to_string(&f)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let entry = uses.entry(top.clone()).or_default();
        entry.extend(named(&text).into_iter().filter(|m| *m != top));
    }
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut wrong = Vec::new();
    for (module, used) in &uses {
        let Some(mine) = rank(module) else {
            wrong.push(format!("`{module}` is not in LAYERS: place it in a layer"));
            continue;
        };
        for u in used {
            match rank(u) {
                Some(theirs) if theirs < mine => {}
                Some(_) => wrong.push(format!("`{module}` uses `{u}`, which is not below it")),
                None => wrong.push(format!("`{module}` uses `{u}`, which is not in LAYERS")),
            }
        }
    }
    assert!(wrong.is_empty(), "the module layering is broken:\n{}", wrong.join("\n"));
}

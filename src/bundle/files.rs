//! Reading a bundle directory: its files (in a fixed order, with paths relative to the bundle),
//! its git revision, and the policy version, a digest over both.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::problem::Problem;
use crate::error::ProblemCode;
/// Sub-directories of a bundle and the file endings read from each.
pub(super) const SCHEMA_DIR: &str = "schema";
const POLICIES_DIR: &str = "policies";
pub(super) const ENTITIES_DIR: &str = "entities";
/// Grants shipped for agents the bundle declares: `grants/<agent id>.cedar`.
const GRANTS_DIR: &str = "grants";
/// The sub-directories a bundle is read from.
pub(super) const SUBDIRS: [&str; 4] = [SCHEMA_DIR, POLICIES_DIR, ENTITIES_DIR, GRANTS_DIR];
/// A file at the bundle root naming the revision it was built from (e.g. written by CI).
const REVISION_FILE: &str = "REVISION";


/// One file of the bundle, as read.
pub(super) struct SourceFile {
    /// Its path relative to the bundle directory.
    pub(super) rel: String,
    pub(super) text: String,
}

pub(super) fn read_files(dir: &Path, problems: &mut Vec<Problem>) -> [Vec<SourceFile>; 4] {
    [
        read_dir_files(dir, SCHEMA_DIR, &[".cedarschema", ".cedarschema.json"], false, problems),
        read_dir_files(dir, POLICIES_DIR, &[".cedar"], true, problems),
        read_dir_files(dir, ENTITIES_DIR, &[".json"], false, problems),
        read_dir_files(dir, GRANTS_DIR, &[".cedar"], false, problems),
    ]
}

/// The version the bundle at `dir` would have, without parsing it: cheap enough to poll.
pub fn fingerprint(dir: &Path) -> String {
    let mut problems = Vec::new();
    let [s, p, e, g] = read_files(dir, &mut problems);
    let digest = digest(&[&s, &p, &e, &g], read_revision(dir).as_deref());
    if problems.is_empty() {
        return digest;
    }
    // Unreadable files change the fingerprint too, so a reload reports them.
    let mut h = Sha256::new();
    h.update(digest.as_bytes());
    for p in &problems {
        h.update(p.to_string().as_bytes());
    }
    hex::encode(h.finalize())
}

/// Reads the files under `dir/sub` with one of `endings`, sorted by path so that load order
/// (and so policy ids and the digest) does not depend on the file system. Hidden entries are
/// skipped: editors' swap files and Kubernetes' `..data` bookkeeping are not policy.
fn read_dir_files(
    dir: &Path,
    sub: &str,
    endings: &[&str],
    recursive: bool,
    problems: &mut Vec<Problem>,
) -> Vec<SourceFile> {
    let root = dir.join(sub);
    if !root.exists() {
        return Vec::new();
    }
    let mut paths = Vec::new();
    collect(&root, endings, recursive, &mut paths, problems, dir);
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let rel = relative(dir, &path);
            match fs::read_to_string(&path) {
                Ok(text) => Some(SourceFile { rel, text }),
                Err(e) => {
                    problems
                        .push(Problem::new(ProblemCode::FileUnreadable, format!("cannot read file: {e}")).in_file(rel));
                    None
                }
            }
        })
        .collect()
}

fn collect(
    at: &Path,
    endings: &[&str],
    recursive: bool,
    out: &mut Vec<PathBuf>,
    problems: &mut Vec<Problem>,
    root: &Path,
) {
    let entries = match fs::read_dir(at) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(
                Problem::new(ProblemCode::FileUnreadable, format!("cannot read directory: {e}"))
                    .in_file(relative(root, at)),
            );
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symlinks, which ConfigMap mounts are made of; a dangling one is a
        // problem, not a file to skip silently.
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) => {
                problems.push(
                    Problem::new(ProblemCode::FileUnreadable, format!("cannot read file: {e}"))
                        .in_file(relative(root, &path)),
                );
                continue;
            }
        };
        if meta.is_dir() {
            if recursive {
                collect(&path, endings, recursive, out, problems, root);
            }
        } else if endings.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned()
}

/// The git revision of the bundle: a `REVISION` file, else the HEAD of a `.git` at the root.
pub(super) fn read_revision(dir: &Path) -> Option<String> {
    if let Ok(text) = fs::read_to_string(dir.join(REVISION_FILE)) {
        let rev = text.trim();
        if !rev.is_empty() {
            return Some(rev.to_owned());
        }
    }
    let mut git = dir.join(".git");
    // A worktree (git-sync checks out each revision as one) has a `.git` file naming its git dir.
    if let Ok(pointer) = fs::read_to_string(&git) {
        let target = pointer.trim().strip_prefix("gitdir:")?.trim();
        git = dir.join(target);
    }
    let head = fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    match head.strip_prefix("ref: ") {
        Some(reference) => fs::read_to_string(git.join(reference))
            .ok()
            .map(|s| s.trim().to_owned())
            .or_else(|| packed_ref(&git, reference)),
        None => Some(head.to_owned()),
    }
}

fn packed_ref(git: &Path, reference: &str) -> Option<String> {
    let packed = fs::read_to_string(git.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (sha, name) = line.split_once(' ')?;
        (name == reference).then(|| sha.to_owned())
    })
}

/// The policy version: a digest over every file's path and bytes, and the revision.
pub(super) fn digest(groups: &[&[SourceFile]], revision: Option<&str>) -> String {
    let mut h = Sha256::new();
    for file in groups.iter().flat_map(|g| g.iter()) {
        h.update(file.rel.as_bytes());
        h.update([0]);
        h.update(file.text.as_bytes());
        h.update([0]);
    }
    if let Some(rev) = revision {
        h.update(b"revision\0");
        h.update(rev.as_bytes());
    }
    let hex = hex::encode(h.finalize());
    hex.get(..16).unwrap_or(&hex).to_owned()
}


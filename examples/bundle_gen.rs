//! A generated bundle for benchmarks: `n` policies over a 1000-entity hierarchy. Most policies are
//! per-agent grants (`principal == Agent::"a<i>"`), as a fleet's grants are; on top, an admin layer
//! of team (`principal in Team`), resource (`resource == File`) and principal-unconstrained
//! policies that grows with `n` up to a cap. Used by `benches/authorize.rs` (in-process) and by
//! `bench/http.sh --policies N` (over HTTP):
//!
//! `cargo run --release --example bundle_gen -- 100000 /tmp/bundle`; with a third argument, an
//! entity count, the discovery bundle (`generate_discovery`, used by `benches/discovery.rs`):
//! `cargo run --release --example bundle_gen -- 1000 /tmp/bundle 10000`

use std::fmt::Write as _;
use std::path::Path;

/// Teams, agents in the entity store, folders and files: 1000 entities.
pub const TEAMS: usize = 50;
pub const AGENTS: usize = 600;
pub const FOLDERS: usize = 50;
pub const FILES: usize = 300;

pub const SCHEMA: &str = r#"
entity Team in [Team];
entity Agent in [Team] { level: Long };
entity Folder in [Folder];
entity File in [Folder] { classification: Long };
action "all";
action read, list in ["all"] appliesTo { principal: [Agent], resource: [File, Folder], context: { n: Long } };
action write in ["all"] appliesTo { principal: [Agent], resource: [File], context: { n: Long } };
"#;

/// A generated bundle's files.
pub struct Generated {
    pub policies: String,
    pub entities: String,
}

/// The admin layer's size for `n` policies: (team, resource, unconstrained) policies.
pub fn admin_layer(n: usize) -> (usize, usize, usize) {
    let team = (n / 20).clamp(1, 100);
    let resource = (n / 50).clamp(1, 100);
    let any = (n / 100).clamp(1, 10);
    (team, resource, any)
}

pub fn generate(n: usize) -> Generated {
    let (team, resource, any) = admin_layer(n);
    let grants = n.saturating_sub(team + resource + any);
    let mut policies = String::with_capacity(n * 160);
    for i in 0..grants {
        let _ = writeln!(
            policies,
            r#"permit(principal == Agent::"a{i}", action == Action::"{}", resource is File in Folder::"f{}") when {{ resource.classification <= principal.level }};"#,
            if i % 4 == 0 { "write" } else { "read" },
            i % FOLDERS
        );
    }
    for i in 0..team {
        let _ = writeln!(
            policies,
            r#"permit(principal in Team::"t{}", action in [Action::"read", Action::"list"], resource in Folder::"f{}") when {{ context.n >= 0 }};"#,
            i % TEAMS,
            (i * 7) % FOLDERS
        );
    }
    for i in 0..resource {
        let _ = writeln!(
            policies,
            r#"forbid(principal, action == Action::"write", resource == File::"x{}") unless {{ principal.level > 3 }};"#,
            i % FILES
        );
    }
    for i in 0..any {
        let _ = writeln!(
            policies,
            r#"forbid(principal, action in [Action::"all"], resource is File) when {{ resource.classification > {} }};"#,
            5 + i
        );
    }
    Generated {
        policies,
        entities: entities(),
    }
}

fn uid(ty: &str, id: &str) -> serde_json::Value {
    serde_json::json!({ "type": ty, "id": id })
}

/// Teams nest five to a parent; each agent is in one or two teams; folders nest; each file is in
/// one folder.
fn entities() -> String {
    let mut all = Vec::new();
    for t in 0..TEAMS {
        let parents: Vec<_> = if t >= 5 {
            vec![uid("Team", &format!("t{}", t / 5 - 1))]
        } else {
            vec![]
        };
        all.push(serde_json::json!({ "uid": uid("Team", &format!("t{t}")), "attrs": {}, "parents": parents }));
    }
    for a in 0..AGENTS {
        let mut parents = vec![uid("Team", &format!("t{}", a % TEAMS))];
        if a % 3 == 0 {
            parents.push(uid("Team", &format!("t{}", (a / 3) % TEAMS)));
        }
        all.push(serde_json::json!({
            "uid": uid("Agent", &format!("a{a}")), "attrs": { "level": (a % 5) as i64 }, "parents": parents
        }));
    }
    for f in 0..FOLDERS {
        let parents: Vec<_> = if f >= 5 {
            vec![uid("Folder", &format!("f{}", f / 5 - 1))]
        } else {
            vec![]
        };
        all.push(serde_json::json!({ "uid": uid("Folder", &format!("f{f}")), "attrs": {}, "parents": parents }));
    }
    for x in 0..FILES {
        all.push(serde_json::json!({
            "uid": uid("File", &format!("x{x}")),
            "attrs": { "classification": (x % 4) as i64 },
            "parents": [uid("Folder", &format!("f{}", x % FOLDERS))]
        }));
    }
    serde_json::Value::Array(all).to_string()
}

/// The discovery benchmark's schema: deputy's agent model, every action needing context (`hour`).
pub const DISCOVERY_SCHEMA: &str = r#"
entity Agent = { can_delegate: Bool, ceiling: Long, depth: Long };
entity Folder in [Folder] = { classification: Long };
entity File in [Folder] = { classification: Long };
type Ctx = { taint?: Long, hour: Long, flag?: Bool };
@taint("source")
action read appliesTo { principal: [Agent], resource: [Folder, File], context: Ctx };
@taint("sink")
action write appliesTo { principal: [Agent], resource: [Folder, File], context: Ctx };
action delegate appliesTo {
  principal: [Agent], resource: [Agent],
  context: { depth: Long, ttl_seconds: Long, ceiling: Long, taint: Long, task: String },
};
"#;

/// A bundle for discovery: `n` policies, most about one agent each, over `entities` entities
/// (100 folders nesting ten to a parent, 500 declared agents, the rest files), with conditions
/// on the context; the agents `a0`..`a9` are left for deputy to manage (the benchmark's chain).
pub fn generate_discovery(n: usize, entities: usize) -> Generated {
    const DFOLDERS: usize = 100;
    const DAGENTS: usize = 500;
    let files = entities.saturating_sub(DFOLDERS + DAGENTS);
    let mut policies = String::with_capacity(n * 160);
    let shared = (n / 10).clamp(1, 100);
    for i in 0..n.saturating_sub(shared) {
        let agent = i % (DAGENTS + 10);
        let action = if i % 3 == 0 { "write" } else { "read" };
        let _ = match i % 4 {
            0 => writeln!(
                policies,
                r#"permit(principal == Agent::"a{agent}", action == Action::"{action}", resource in Folder::"f{}");"#,
                i % DFOLDERS
            ),
            1 => writeln!(
                policies,
                r#"permit(principal == Agent::"a{agent}", action == Action::"{action}", resource in Folder::"f{}") when {{ context.hour >= {} && context.hour < {} }};"#,
                i % DFOLDERS,
                i % 12,
                12 + i % 12
            ),
            2 => writeln!(
                policies,
                r#"permit(principal == Agent::"a{agent}", action == Action::"{action}", resource == File::"x{}") when {{ context has flag && context.flag }};"#,
                i % files.max(1)
            ),
            _ => writeln!(
                policies,
                r#"forbid(principal == Agent::"a{agent}", action == Action::"{action}", resource in Folder::"f{}") when {{ context.hour > 22 }};"#,
                i % DFOLDERS
            ),
        };
    }
    // Every agent's share (deputy's managed agents included): reads of some folders in office
    // hours, writes elsewhere, and forbids on some files after 18:00.
    for i in 0..shared {
        let _ = match i % 3 {
            0 => writeln!(
                policies,
                r#"permit(principal is Agent, action == Action::"read", resource in Folder::"f{}") when {{ context.hour >= 8 && context.hour < 20 }};"#,
                i % DFOLDERS
            ),
            1 => writeln!(
                policies,
                r#"permit(principal is Agent, action == Action::"write", resource in Folder::"f{}");"#,
                i % DFOLDERS
            ),
            _ => writeln!(
                policies,
                r#"forbid(principal is Agent, action == Action::"write", resource == File::"x{}") unless {{ context.hour < 18 }};"#,
                (i * 37) % files.max(1)
            ),
        };
    }
    let mut all = Vec::new();
    for f in 0..DFOLDERS {
        let parents: Vec<_> = if f >= 10 {
            vec![uid("Folder", &format!("f{}", f / 10 - 1))]
        } else {
            vec![]
        };
        all.push(serde_json::json!({ "uid": uid("Folder", &format!("f{f}")), "attrs": { "classification": 0 }, "parents": parents }));
    }
    for a in 10..DAGENTS + 10 {
        all.push(serde_json::json!({
            "uid": uid("Agent", &format!("a{a}")), "attrs": { "can_delegate": false, "ceiling": 2, "depth": 0 }, "parents": []
        }));
    }
    for x in 0..files {
        all.push(serde_json::json!({
            "uid": uid("File", &format!("x{x}")),
            "attrs": { "classification": (x % 4) as i64 },
            "parents": [uid("Folder", &format!("f{}", x % DFOLDERS))]
        }));
    }
    Generated {
        policies,
        entities: serde_json::Value::Array(all).to_string(),
    }
}

/// Writes the discovery bundle (`generate_discovery`) to `dir`.
pub fn write_discovery(n: usize, entities: usize, dir: &Path) -> std::io::Result<()> {
    let g = generate_discovery(n, entities);
    for sub in ["schema", "policies", "entities"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::write(dir.join("schema/bench.cedarschema"), DISCOVERY_SCHEMA)?;
    std::fs::write(dir.join("policies/bench.cedar"), g.policies)?;
    std::fs::write(dir.join("entities/bench.json"), g.entities)?;
    Ok(())
}

/// Writes a bundle with `n` policies to `dir` (schema/, policies/, entities/).
pub fn write(n: usize, dir: &Path) -> std::io::Result<()> {
    let g = generate(n);
    for sub in ["schema", "policies", "entities"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::write(dir.join("schema/bench.cedarschema"), SCHEMA)?;
    std::fs::write(dir.join("policies/bench.cedar"), g.policies)?;
    std::fs::write(dir.join("entities/bench.json"), g.entities)?;
    Ok(())
}

#[allow(
    dead_code,
    reason = "the entry point when built as an example; benches include this file as a module"
)]
fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let dir = args.next().unwrap_or_else(|| "bench-bundle".to_owned());
    // A third argument, an entity count, writes the discovery bundle instead.
    match args.next().and_then(|s| s.parse::<usize>().ok()) {
        Some(entities) => {
            write_discovery(n, entities, Path::new(&dir))?;
            eprintln!("wrote a discovery bundle of {n} policies over {entities} entities to {dir}");
        }
        None => {
            write(n, Path::new(&dir))?;
            eprintln!("wrote a bundle of {n} policies to {dir}");
        }
    }
    Ok(())
}

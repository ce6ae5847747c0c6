//! The command line: `deputy serve`, `validate`, `audit verify`, `probe`, `prove`, `test`, `plan`,
//! `mcp schema`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::bundle::{Bundle, LoadOptions, WatchOptions};
use crate::config::*;
use crate::http::HttpConfig;
use crate::server::{self, ServeConfig};
use crate::telemetry::{self, LogFormat};

/// Exit code for bad input (sysexits EX_USAGE / EX_DATAERR family).
pub const EXIT_BAD_INPUT: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "deputy",
    version,
    about = "A Cedar policy decision point sidecar for AI agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the decision API on localhost, hot-reloading the bundle.
    Serve(Box<ServeArgs>),
    /// Load and strictly validate a bundle; list every problem as `file:line: message`.
    Validate(ValidateArgs),
    /// Check the delegation audit trail's hash chain: exit 0 intact, 1 tampered (names the
    /// first bad record), 64 when the state cannot be opened.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Probe a deputy endpoint (for Kubernetes exec probes): GET the URL, exit 0 on 2xx, else 1.
    Probe(ProbeArgs),
    /// Prove a child grant within a parent grant's delegable view, against a bundle.
    /// Exit 0 within, 1 exceeds, 2 inconclusive, 64 bad input.
    Prove(ProveArgs),
    /// Run decision cases against a bundle (docs/GITOPS.md). Exit 0 all pass, 1 a case fails,
    /// 64 bad input.
    Test(TestArgs),
    /// What changing one bundle into another does: policies, entities and grants changed,
    /// authority widened or narrowed (proved), cases whose answer changes (docs/GITOPS.md).
    /// Exit 0, 1 when a case fails (or, with --deny-widening, authority may widen), 64 bad input.
    Plan(PlanArgs),
    /// MCP gateway tools (docs/MCP.md).
    #[command(subcommand)]
    Mcp(McpCommand),
}

#[derive(Subcommand, Debug)]
pub enum McpCommand {
    /// Start an MCP server, read its tools and print them as a Cedar schema fragment to commit
    /// to the bundle: `deputy mcp schema fs -- npx @modelcontextprotocol/server-filesystem /srv`.
    /// Arguments with no Cedar type are listed on stderr (and in the fragment). Exit 0, or 1
    /// when the server cannot be started or listed, 64 on a bad name.
    Schema {
        /// The server's name, as given to `deputy serve --mcp-server NAME=…`.
        name: String,
        /// Type JSON `number` arguments as `Long` (a call with a fractional value is refused)
        /// instead of leaving them out (a call that passes one is refused).
        #[arg(long)]
        numbers_as_long: bool,
        /// The command that starts the server (program first), after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct TestArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Case files, or directories searched for `*.json` (default: `<bundle>/policy-tests`).
    pub cases: Vec<PathBuf>,
    /// Print every case's outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The bundle as it is (e.g. a `git worktree` of the target branch).
    #[arg(long)]
    pub from: PathBuf,
    /// The bundle as it would be.
    #[arg(long)]
    pub to: PathBuf,
    /// Case files or directories run against both (default: the new bundle's `policy-tests/`).
    pub cases: Vec<PathBuf>,
    /// Exit 1 when the admin policies or a shipped grant may widen authority (a proved `no` is
    /// needed to pass; `unknown` fails).
    #[arg(long)]
    pub deny_widening: bool,
    /// Plain Cedar bundles: do not require the agent model.
    #[arg(long)]
    pub authorize_only: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// A pod's state directory (or a copy; it is only read): also say what installing the new
    /// bundle does to its live agents (refused, revoked, drifted). Exit 1 when it is refused.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub solver: SolverArgs,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The URL to GET, e.g. http://127.0.0.1:8180/readyz (plain HTTP only).
    #[arg(long)]
    pub url: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the hash chain of the audit trail in a state directory.
    Verify {
        /// The state directory (as given to `deputy serve --state`).
        #[arg(long, env = ENV_STATE, default_value = DEFAULT_STATE)]
        state: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct ProveArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// The parent's grant: Cedar policy templates over `?principal`.
    #[arg(long)]
    pub parent: PathBuf,
    /// The child's grant.
    #[arg(long)]
    pub child: PathBuf,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub solver: SolverArgs,
}

/// The optional SMT second opinion on inconclusive proofs.
#[derive(Args, Debug, Clone)]
pub struct SolverArgs {
    /// Settle inconclusive proofs with cedar-policy-symcc and this cvc5 executable (a path,
    /// or `cvc5` to search `PATH`). Without it, deputy proves alone.
    #[arg(long, env = ENV_SOLVER, value_name = "CVC5")]
    pub solver: Option<std::path::PathBuf>,
    /// Limit per solver query, in milliseconds (cvc5 `--tlimit-per`).
    #[arg(long, default_value_t = crate::prover::DEFAULT_SOLVER_QUERY_TIMEOUT_MS, requires = "solver")]
    pub solver_timeout_ms: u64,
    /// Limit on the whole solver process for one proof, in milliseconds (cvc5 `--tlimit`).
    #[arg(long, default_value_t = crate::prover::DEFAULT_SOLVER_TOTAL_TIMEOUT_MS, requires = "solver")]
    pub solver_total_timeout_ms: u64,
}

impl SolverArgs {
    fn config(&self) -> Option<crate::prover::SolverConfig> {
        self.solver.as_ref().map(|program| crate::prover::SolverConfig {
            program: program.clone(),
            query_timeout_ms: self.solver_timeout_ms.max(1),
            total_timeout_ms: self.solver_total_timeout_ms.max(1),
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct BundleArgs {
    /// The bundle directory (schema/, policies/, entities/).
    #[arg(long, env = ENV_BUNDLE, default_value = DEFAULT_BUNDLE)]
    pub bundle: PathBuf,
    /// Serve plain Cedar authorization: do not require the agent model (`Agent`,
    /// `Action::"delegate"`) in the schema. Delegation is unavailable.
    #[arg(long)]
    pub authorize_only: bool,
    /// Do not validate policies against the schema. For conformance testing and migrations
    /// only: a production bundle is always validated.
    #[arg(long)]
    pub skip_validation: bool,
}

impl BundleArgs {
    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            validate: !self.skip_validation,
            require_agent_model: !self.authorize_only,
        }
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Address to listen on.
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Also serve the API on this Unix domain socket (file permissions then decide who may call).
    #[arg(long, value_name = "PATH")]
    pub listen_unix: Option<PathBuf>,
    /// Allow listening on a non-loopback address (the API is meant for the pod's own agent).
    #[arg(long)]
    pub allow_remote: bool,
    /// Log format.
    #[arg(long, env = ENV_LOG_FORMAT, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Most items in one batch request.
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// Deepest nesting of arrays and objects accepted in a JSON body.
    #[arg(long, default_value_t = DEFAULT_MAX_JSON_DEPTH)]
    pub max_json_depth: usize,
    /// Most connections served at once.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds between digest checks of the bundle, in addition to file events.
    #[arg(long, default_value_t = DEFAULT_POLL_INTERVAL.as_secs())]
    pub poll_interval_secs: u64,
    /// Do not watch the bundle for changes.
    #[arg(long)]
    pub no_watch: bool,
    /// Largest grant text accepted, in bytes.
    #[arg(long, default_value_t = crate::delegation::Limits::default().max_grant_bytes)]
    pub max_grant_bytes: usize,
    /// Most live children one agent may have at once.
    #[arg(long, default_value_t = crate::delegation::Limits::default().max_children)]
    pub max_children: usize,
    /// Deepest an invocation chain may go (a session at this depth cannot invoke); a bundle may
    /// forbid less deep chains in Cedar with `context.depth`.
    #[arg(long, default_value_t = crate::delegation::Limits::default().max_invocation_depth,
          value_parser = clap::value_parser!(i64).range(1..=16))]
    pub max_invocation_depth: i64,
    /// Most pending permission requests one agent may have open.
    #[arg(long, default_value_t = crate::delegation::Limits::default().max_pending_requests)]
    pub max_pending_requests: usize,
    /// Largest the state database may grow, in MiB (changes then fail with 503; decisions go on).
    #[arg(long, default_value_t = crate::delegation::Limits::default().max_state_mib)]
    pub max_state_mib: u64,
    /// Directory of the durable delegation state (agents, grants, credentials, audit).
    #[arg(long, env = ENV_STATE, default_value = DEFAULT_STATE)]
    pub state: PathBuf,
    /// `AGENT=FILE`: the credential of an agent the bundle declares with a grant
    /// (`grants/AGENT.cedar`), read from FILE (e.g. a mounted Secret). Repeatable.
    #[arg(long = "agent-credential-file", value_name = "AGENT=FILE")]
    pub agent_credential_files: Vec<String>,
    /// File holding the admin credential (else `DEPUTY_ADMIN_TOKEN`). Without either, no root
    /// agents can be created and the audit trail cannot be read over HTTP.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// A candidate bundle to decide every request against as well, off the request path, and
    /// compare (`GET /v1/shadow`, `deputy_shadow_decisions`); it never changes an answer.
    /// Watched and reloaded like `--bundle` (docs/GITOPS.md).
    #[arg(long, env = ENV_SHADOW, value_name = "DIR")]
    pub shadow: Option<PathBuf>,
    /// Write one JSON line per decision to FILE (appended to), or to stdout with `-`.
    #[arg(long, env = ENV_DECISION_LOG, value_name = "FILE")]
    pub decision_log: Option<String>,
    /// Write this context field's value as `***` in the decision log (`a.b` for a nested
    /// field). Repeatable.
    #[arg(long, value_name = "FIELD", requires = "decision_log")]
    pub decision_log_mask: Vec<String>,
    /// Leave allowed decisions out of the decision log.
    #[arg(long, requires = "decision_log")]
    pub decision_log_drop_allows: bool,
    /// `NAME=COMMAND ARG…`: serve the MCP server NAME, started as COMMAND (split on whitespace,
    /// no shell; or `NAME=["COMMAND", "ARG", …]` as JSON), at `/mcp/NAME` (docs/MCP.md). Repeatable.
    #[arg(long = "mcp-server", value_name = "NAME=COMMAND")]
    pub mcp_servers: Vec<String>,
    #[command(flatten)]
    pub solver: SolverArgs,
}

impl ServeArgs {
    fn observe_config(&self) -> telemetry::ObserveConfig {
        telemetry::ObserveConfig {
            decision_log: self.decision_log.as_deref().map(|target| telemetry::DecisionLogConfig {
                mask: self.decision_log_mask.clone(),
                drop_allows: self.decision_log_drop_allows,
                ..telemetry::DecisionLogConfig::new(telemetry::DecisionLogTarget::parse(target))
            }),
        }
    }
}

/// Reads `AGENT=FILE` pairs into agent id -> credential.
fn read_agent_tokens(pairs: &[String]) -> Result<std::collections::HashMap<String, String>, String> {
    let mut out = std::collections::HashMap::new();
    for pair in pairs {
        let (agent, file) = pair
            .split_once('=')
            .ok_or_else(|| format!("--agent-credential-file `{pair}` must be AGENT=FILE"))?;
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read --agent-credential-file `{file}`: {e}"))?
            .trim()
            .to_owned();
        if token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(format!(
                "the credential in `{file}` must be at least {MIN_ADMIN_TOKEN_LEN} characters"
            ));
        }
        out.insert(agent.to_owned(), token);
    }
    Ok(out)
}

/// The admin token from a file or the environment; never logged.
fn read_admin_token(file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --admin-token-file `{}`: {e}", path.display()))?,
        ),
        None => std::env::var(ENV_ADMIN_TOKEN).ok(),
    };
    match token.map(|t| t.trim().to_owned()) {
        Some(t) if t.len() < MIN_ADMIN_TOKEN_LEN => Err(format!(
            "the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters"
        )),
        other => Ok(other),
    }
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Validate(args) => validate(&args),
        Command::Prove(args) => prove(&args),
        Command::Test(args) => ExitCode::from(crate::gitops::run_test(
            &args.bundle.bundle,
            &args.bundle.load_options(),
            &args.cases,
            args.json,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
        Command::Plan(args) => {
            let opts = LoadOptions {
                require_agent_model: !args.authorize_only,
                ..LoadOptions::default()
            };
            let plan = crate::gitops::PlanArgs {
                from: &args.from,
                to: &args.to,
                opts: &opts,
                cases: &args.cases,
                deny_widening: args.deny_widening,
                solver: args.solver.config(),
                json: args.json,
                state: args.state.as_deref(),
            };
            ExitCode::from(crate::gitops::run_plan(
                &plan,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            ))
        }
        Command::Mcp(command) => mcp(&command),
        Command::Probe(args) => probe(&args),
        Command::Audit(AuditCommand::Verify { state }) => audit_verify(&state),
    }
}

fn mcp(command: &McpCommand) -> ExitCode {
    let McpCommand::Schema {
        name,
        numbers_as_long,
        command,
    } = command;
    let config = match crate::mcp::ServerConfig::new(name, command.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::mcp::list_tools_of(&config)) {
        Ok(tools) => {
            let options = crate::mcp::SchemaOptions {
                numbers_as_long: *numbers_as_long,
            };
            let fragment = crate::mcp::fragment(name, &tools, options);
            for e in &fragment.excluded {
                let (tool, arg, why) = (&e.tool, &e.path, &e.why);
                if e.tool_dropped {
                    eprintln!(
                        "note: `{name}/{tool}`: not generated: it needs `{arg}` ({why}), so no call of it could pass"
                    );
                } else {
                    eprintln!("note: `{name}/{tool}`: `{arg}` left out ({why}); a call that passes it is refused");
                }
            }
            print!("{}", fragment.text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn probe(args: &ProbeArgs) -> ExitCode {
    match crate::probe::get(&args.url, std::time::Duration::from_millis(args.timeout_ms)) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("probe: `{}` answered {status}", args.url);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("probe: `{}`: {e}", args.url);
            ExitCode::from(1)
        }
    }
}

fn audit_verify(state: &std::path::Path) -> ExitCode {
    let path = state.join(crate::delegation::STATE_FILE);
    if !path.exists() {
        eprintln!("error: no state database at `{}`", path.display());
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let store = match crate::delegation::Store::open(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    match store.verify_audit() {
        Ok(None) => {
            let n = store.audit_records(None, None, usize::MAX).map_or(0, |r| r.len());
            println!("audit trail intact: {n} record(s) chained");
            ExitCode::SUCCESS
        }
        Ok(Some(problem)) => {
            println!("audit trail TAMPERED: {problem}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// Every problem as `file:line:col: message`, then a count, on stderr.
fn print_problems(dir: &std::path::Path, e: &crate::bundle::BundleError) {
    for p in &e.problems {
        eprintln!("{p}");
    }
    eprintln!("bundle `{}` is invalid: {} problem(s)", dir.display(), e.problems.len());
}

fn prove(args: &ProveArgs) -> ExitCode {
    let bundle = match Bundle::load(&args.bundle.bundle, &args.bundle.load_options()) {
        Ok(b) => b,
        Err(e) => {
            print_problems(&args.bundle.bundle, &e);
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| eprintln!("error: cannot read `{}`: {e}", path.display()))
    };
    let (Ok(parent), Ok(child)) = (read(&args.parent), read(&args.child)) else {
        return ExitCode::from(EXIT_BAD_INPUT);
    };
    let mut out = std::io::stdout();
    let opts = crate::prover::ProveOptions {
        solver: args.solver.config(),
        ..crate::prover::ProveOptions::default()
    };
    let code = crate::prover::run_prove_with(
        &bundle.schema,
        &bundle.entities,
        &parent,
        &child,
        args.json,
        &opts,
        &mut out,
    );
    ExitCode::from(u8::try_from(code).unwrap_or(EXIT_BAD_INPUT))
}

fn validate(args: &ValidateArgs) -> ExitCode {
    match Bundle::load(&args.bundle.bundle, &args.bundle.load_options()) {
        Ok(b) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "policy_version": b.version, "revision": b.revision, "files": b.files})
                );
            } else {
                println!(
                    "bundle `{}` is valid: {} policies, {} templates, version {}",
                    args.bundle.bundle.display(),
                    b.policies.policies().count(),
                    b.policies.templates().count(),
                    b.version
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if args.json {
                println!("{}", serde_json::json!({"valid": false, "problems": e.problems}));
            } else {
                print_problems(&args.bundle.bundle, &e);
            }
            ExitCode::from(1)
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let _telemetry = match telemetry::init(args.log_format) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        eprintln!(
            "error: refusing to listen on non-loopback address `{}`; pass --allow-remote if the \
             API must be reachable from outside the pod",
            args.listen
        );
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let admin_token = match read_admin_token(args.admin_token_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let agent_tokens = match read_agent_tokens(&args.agent_credential_files) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let (mcp_servers, bad): (Vec<_>, Vec<_>) = args
        .mcp_servers
        .iter()
        .map(|s| crate::mcp::ServerConfig::parse(s))
        .partition(Result::is_ok);
    if !bad.is_empty() {
        for e in bad.into_iter().filter_map(Result::err) {
            eprintln!("error: --mcp-server: {e}");
        }
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let mcp_servers: Vec<crate::mcp::ServerConfig> = mcp_servers.into_iter().filter_map(Result::ok).collect();
    let config = ServeConfig {
        bundle: args.bundle.bundle.clone(),
        listen: args.listen,
        load: args.bundle.load_options(),
        http: HttpConfig {
            max_body_bytes: args.max_body_bytes,
            max_batch: args.max_batch,
            max_json_depth: args.max_json_depth,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: args.max_connections,
        },
        watch: (!args.no_watch).then(|| WatchOptions {
            debounce: DEFAULT_RELOAD_DEBOUNCE,
            poll_interval: std::time::Duration::from_secs(args.poll_interval_secs.max(1)),
        }),
        drain: DEFAULT_DRAIN,
        state: (!args.bundle.authorize_only).then(|| args.state.clone()),
        admin_token,
        agent_tokens,
        listen_unix: args.listen_unix.clone(),
        limits: crate::delegation::Limits {
            max_grant_bytes: args.max_grant_bytes,
            max_children: args.max_children,
            max_pending_requests: args.max_pending_requests,
            max_state_mib: args.max_state_mib,
            solver: args.solver.config(),
            max_invocation_depth: args.max_invocation_depth,
        },
        observe: args.observe_config(),
        shadow: args.shadow.clone(),
        mcp_servers,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let signal = shutdown_signal();
        #[cfg(unix)]
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let running = match server::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: cannot start serving on `{}`: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        #[cfg(unix)]
        if let Some(hangup) = hangup {
            tokio::spawn(reload_on_hangup(hangup, running.stores()));
        }
        signal.await;
        tracing::info!("shutting down: draining connections");
        running.stop().await;
        ExitCode::SUCCESS
    })
}

/// Reloads the bundle (and the shadow bundle) on every SIGHUP (as a file change would), off
/// the async threads.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    stores: Vec<std::sync::Arc<crate::bundle::BundleStore>>,
) {
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the bundle");
        let s = stores.clone();
        let _ = tokio::task::spawn_blocking(move || s.iter().for_each(|s| drop(s.reload()))).await;
    }
}

/// Resolves on Ctrl-C or SIGTERM. The SIGTERM handler is installed when this is called, not
/// when first awaited, so a SIGTERM that arrives while the server starts still drains it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
    }
}

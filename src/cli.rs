//! The command line: `deputy serve`, `deputy validate`.

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
    Serve(ServeArgs),
    /// Load and strictly validate a bundle; list every problem as `file:line: message`.
    Validate(ValidateArgs),
    /// Check the delegation audit trail's hash chain: exit 0 intact, 1 tampered (names the
    /// first bad record), 64 when the state cannot be opened.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Prove a child grant within a parent grant's delegable view, against a bundle.
    /// Exit 0 within, 1 exceeds, 2 inconclusive, 64 bad input.
    Prove(ProveArgs),
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
    /// Most connections served at once.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds between digest checks of the bundle, in addition to file events.
    #[arg(long, default_value_t = DEFAULT_POLL_INTERVAL.as_secs())]
    pub poll_interval_secs: u64,
    /// Do not watch the bundle for changes.
    #[arg(long)]
    pub no_watch: bool,
    /// Directory of the durable delegation state (agents, grants, credentials, audit).
    #[arg(long, env = ENV_STATE, default_value = DEFAULT_STATE)]
    pub state: PathBuf,
    /// File holding the admin credential (else `DEPUTY_ADMIN_TOKEN`). Without either, no root
    /// agents can be created and the audit trail cannot be read over HTTP.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
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
        Command::Serve(args) => serve(args),
        Command::Validate(args) => validate(&args),
        Command::Prove(args) => prove(&args),
        Command::Audit(AuditCommand::Verify { state }) => audit_verify(&state),
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

fn prove(args: &ProveArgs) -> ExitCode {
    let bundle = match Bundle::load(&args.bundle.bundle, &args.bundle.load_options()) {
        Ok(b) => b,
        Err(e) => {
            for p in &e.problems {
                eprintln!("{p}");
            }
            eprintln!(
                "bundle `{}` is invalid: {} problem(s)",
                args.bundle.bundle.display(),
                e.problems.len()
            );
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
    let code = crate::prover::run_prove(&bundle.schema, &bundle.entities, &parent, &child, args.json, &mut out);
    ExitCode::from(u8::try_from(code).unwrap_or(EXIT_BAD_INPUT))
}

fn validate(args: &ValidateArgs) -> ExitCode {
    match Bundle::load(&args.bundle.bundle, &args.bundle.load_options()) {
        Ok(b) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "policy_version": b.version, "files": b.files})
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
                for p in &e.problems {
                    eprintln!("{p}");
                }
                eprintln!(
                    "bundle `{}` is invalid: {} problem(s)",
                    args.bundle.bundle.display(),
                    e.problems.len()
                );
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
    let config = ServeConfig {
        bundle: args.bundle.bundle.clone(),
        listen: args.listen,
        load: args.bundle.load_options(),
        http: HttpConfig {
            max_body_bytes: args.max_body_bytes,
            max_batch: args.max_batch,
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
        observe: args.observe_config(),
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
        let running = match server::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: cannot start serving on `{}`: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        signal.await;
        tracing::info!("shutting down: draining connections");
        running.stop().await;
        ExitCode::SUCCESS
    })
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

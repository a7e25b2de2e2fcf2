//! The `tern` binary: parses arguments and starts one role.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod drill;
mod drill_html;
mod drill_report;
mod notify;
mod ops;
mod sockets;

use clap::{Parser, Subcommand};
use tern_core::config::Config;
use tokio_util::sync::CancellationToken;

/// Exit code for a bad configuration file (EX_CONFIG).
pub(crate) const EX_CONFIG: u8 = 78;
/// Exit code for bad command-line usage (EX_USAGE).
pub(crate) const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Keeps a service answering when one of its regions goes dark"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and print what it describes.
    CheckConfig { file: PathBuf },
    /// Run the edge: the HTTP reverse proxy, and the authoritative DNS server when the configuration has a [dns] table.
    Edge {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a controller node (Raft member that decides verdicts, routing and leases).
    Controller(ops::ControllerArgs),
    /// Run a region agent: probes every region from this one and reports to the controllers.
    Agent {
        #[arg(long)]
        config: PathBuf,
    },
    /// Add or remove a controller node.
    Members {
        #[command(subcommand)]
        command: ops::MembersCommand,
    },
    /// Show the controllers' view: members, leader, quorum, verdicts, routing, leases.
    Status(ops::Target),
    /// Show the audit log, newest first, with evidence.
    Events {
        #[command(flatten)]
        target: ops::Target,
        /// How many events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Manual traffic control.
    Route {
        #[command(subcommand)]
        command: ops::RouteCommand,
    },
    /// Move a database cluster's writer to another region now (its region
    /// must be down and the lag within budget, unless --force); `tern
    /// failover cancel CLUSTER` cancels the running plan.
    Failover(ops::FailoverArgs),
    /// Planned move of a database cluster's writer with zero loss.
    Switchover(ops::PlanArgs),
    /// Bring up a multi-region deployment on this machine and run a failure scenario.
    Lab(tern_lab::LabArgs),
    /// Region evacuation drills: practise a failover on a live deployment.
    Drill {
        #[command(subcommand)]
        command: drill::DrillCommand,
    },
    /// Certificates for the control plane's mutual TLS.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run the lab's sample service (started by `tern lab`).
    SampleService(tern_sample::SampleArgs),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Make a private CA (unless DIR has one) and a certificate for every
    /// controller, agent, edge, operator and viewer the file names, each
    /// with its identity as spiffe://tern/ROLE/NAME; files that exist are
    /// kept, so running it again after adding a region makes only the new
    /// ones.
    Init {
        #[arg(long)]
        config: PathBuf,
        /// Where to write them; default: `[controller.tls] dir`.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// How long the certificates are valid, in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

fn certs(command: CertsCommand) -> ExitCode {
    let CertsCommand::Init { config, out, days } = command;
    let cfg = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let tls_dir = cfg
        .controller
        .as_ref()
        .and_then(|c| c.tls.as_ref())
        .map(|t| t.dir.clone());
    let Some(dir) = out.or(tls_dir) else {
        eprintln!(
            "tern certs init: say where with --out DIR (the file has no [controller.tls] dir)"
        );
        return ExitCode::from(EX_USAGE);
    };
    let principals = tern_proto::pki::principals(&cfg);
    match tern_proto::pki::init(&dir, &principals, days) {
        Ok(made) => {
            for p in &made.written {
                println!("wrote {}", p.display());
            }
            for p in &made.kept {
                println!("kept  {}", p.display());
            }
            println!(
                "{} certificates under {} for {} principals; keep ca.key offline once every certificate is made",
                made
                    .written
                    .iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "pem") && !p.ends_with("ca.pem"))
                    .count(),
                dir.display(),
                principals.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern certs init: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // First, while the process has one thread: it clears the variables.
    let sockets = match sockets::Inherited::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tern: sockets handed over: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let command = cli
        .command
        .unwrap_or(Command::Lab(tern_lab::LabArgs::default()));
    // The lab prints its own progress; its log lines would only interleave.
    // Operator commands print their answers; openraft's own log is chatty.
    init_tracing(match command {
        Command::Edge { .. } | Command::Agent { .. } | Command::SampleService(_) => "info",
        Command::Controller(_) => "info,openraft=error",
        _ => "warn",
    });
    // Only controllers and agents serve sockets handed over.
    if !matches!(command, Command::Controller(_) | Command::Agent { .. }) {
        if let Err(e) = sockets.all_taken() {
            eprintln!("tern: {e}");
            return ExitCode::from(EX_USAGE);
        }
    }
    match command {
        Command::CheckConfig { file } => match load(&file) {
            Ok(cfg) => {
                // The certificates are read too: an expired or mismatched
                // one is a configuration error before anything starts.
                if let Some(t) = cfg.edge.as_ref().and_then(|e| e.tls.as_ref()) {
                    if let Err(e) = tern_edge::tls::load(t) {
                        eprintln!("{}: TLS: {e}", file.display());
                        return ExitCode::from(EX_CONFIG);
                    }
                }
                if let Some(t) = cfg.controller.as_ref().and_then(|c| c.tls.as_ref()) {
                    if let Err(e) = tern_proto::tls::load_roots(&t.ca) {
                        eprintln!("{}: control-plane TLS: {e}", file.display());
                        return ExitCode::from(EX_CONFIG);
                    }
                }
                print!("{}: ok\n{}", file.display(), cfg.summary());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Edge { config } => {
            let mut cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // An edge that follows controllers keeps their last table next
            // to its configuration unless told otherwise.
            if let (Some(edge), Some(_)) = (cfg.edge.as_mut(), cfg.controller.as_ref()) {
                if edge.routing_state.is_none() {
                    let dir = config.parent().unwrap_or(Path::new("."));
                    edge.routing_state =
                        Some(dir.join(format!("tern-routing-{}.json", edge.region)));
                }
            }
            runtime().block_on(run_edge(cfg))
        }
        Command::Controller(args) => runtime().block_on(ops::run_controller(args, sockets)),
        Command::Agent { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime().block_on(async move {
                let mut agent = match tern_agent::Agent::new(&cfg) {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("tern agent: {e:#}");
                        return ExitCode::from(EX_CONFIG);
                    }
                };
                if let Err(e) = agent.check_doors().await {
                    eprintln!("tern agent: {e:#}");
                    return ExitCode::from(EX_CONFIG);
                }
                let mut sockets = sockets;
                let inherited = sockets.take_prefixed("writer-proxy.");
                let admin = match agent.bind_admin(sockets.take("admin")) {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("tern agent: {e:#}");
                        return ExitCode::FAILURE;
                    }
                };
                if let Err(e) = sockets.all_taken() {
                    eprintln!("tern agent: {e}");
                    return ExitCode::from(EX_USAGE);
                }
                let proxies = match agent.bind_proxies(inherited).await {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("tern agent: {e:#}");
                        return ExitCode::FAILURE;
                    }
                };
                let regions: Vec<String> = agent.regions().map(String::from).collect();
                let proxies: Vec<String> = proxies
                    .iter()
                    .map(|(c, a)| format!(" writer-proxy {c} {a}"))
                    .collect();
                let admin = admin.map_or(String::new(), |a| format!(" admin {a}"));
                let line = format!(
                    "agent in {} watching {}{}{admin}",
                    agent.region(),
                    regions.join(", "),
                    proxies.concat()
                );
                let stop = shutdown_on_signal();
                println!("ready: {line}");
                notify::ready(&line);
                agent.run(stop).await;
                ExitCode::SUCCESS
            })
        }
        Command::Certs { command } => certs(command),
        Command::Drill { command } => runtime().block_on(drill::run(command)),
        Command::Members { command } => runtime().block_on(ops::members(command)),
        Command::Status(target) => runtime().block_on(ops::status(target)),
        Command::Events { target, limit } => runtime().block_on(ops::events(target, limit)),
        Command::Route { command } => runtime().block_on(ops::route(command)),
        Command::Failover(args) => runtime().block_on(ops::failover(args)),
        Command::Switchover(plan) => runtime().block_on(ops::switchover(plan)),
        Command::Lab(args) if args.unsafe_no_self_fence && !tern_agent::FAULT_INJECTION => {
            eprintln!(
                "tern lab: --unsafe-no-self-fence exists only in test builds (feature fault-injection); this build always fences"
            );
            ExitCode::from(EX_USAGE)
        }
        Command::Lab(args) => runtime().block_on(async move {
            match tern_lab::run(args).await {
                Ok(outcome) => ExitCode::from(outcome.exit_code()),
                Err(e) => {
                    eprintln!("tern lab: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::SampleService(args) => runtime().block_on(async move {
            match tern_sample::run(args, shutdown_on_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tern sample-service: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

pub(crate) fn load(path: &Path) -> Result<Config, ExitCode> {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: cannot read: {e}");
            return Err(ExitCode::from(EX_CONFIG));
        }
    };
    Config::from_toml(&name, &text).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!(
            "{name}: {} problem{}; nothing was started",
            errors.0.len(),
            if errors.0.len() == 1 { "" } else { "s" }
        );
        ExitCode::from(EX_CONFIG)
    })
}

async fn run_edge(cfg: Config) -> ExitCode {
    let edge = match tern_edge::Edge::bind(&cfg).await {
        Ok(e) => e,
        Err(tern_edge::EdgeError::NoEdgeSettings) => {
            eprintln!("tern edge: the configuration has no [edge] table");
            return ExitCode::from(EX_CONFIG);
        }
        Err(e @ (tern_edge::EdgeError::Tls(_) | tern_edge::EdgeError::ControlTls(_))) => {
            eprintln!("tern edge: {e}; nothing was started");
            return ExitCode::from(EX_CONFIG);
        }
        Err(e) => {
            eprintln!("tern edge: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The ready line: the lab and scripts read the bound addresses from it
    // ("listening on ADDR admin ADDR[ dns ADDR][ https ADDR]").
    let dns = edge
        .dns_addr()
        .map_or(String::new(), |a| format!(" dns {a}"));
    let https = edge
        .tls_addr()
        .map_or(String::new(), |a| format!(" https {a}"));
    let line = format!(
        "listening on {} admin {}{dns}{https}",
        edge.local_addr(),
        edge.admin_addr()
            .map_or("none".to_string(), |a| a.to_string())
    );
    let stop = shutdown_on_signal();
    println!("{line}");
    notify::ready(&format!("edge {line}"));
    edge.run(stop).await;
    ExitCode::SUCCESS
}

/// A token cancelled on SIGINT or SIGTERM.
/// A token cancelled on SIGTERM or SIGINT (after telling the service
/// manager `STOPPING=1`). The handlers are installed before this returns,
/// so call it before telling the service manager `READY=1`: a SIGTERM sent
/// the moment the process says it is ready then stops it cleanly instead of
/// killing it with the default action.
pub(crate) fn shutdown_on_signal() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        notify::stopping();
        t.cancel();
    });
    token
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the async runtime")
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

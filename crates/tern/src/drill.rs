//! `tern drill`: start, follow, abort and report region evacuation drills
//! (see `tern_core::drill`); the controllers run them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use tern_core::control::{Applied, Command};
use tern_core::drill::{Drill, DrillSpec, Guardrails, Phase};
use tern_proto::http::CallError;

use crate::drill_report::{phase_lines, switchovers, DrillReport};
use crate::ops::{actor, unavailable, Controllers, Target};
use crate::EX_USAGE;

#[derive(Subcommand)]
pub enum DrillCommand {
    /// Evacuate REGION in steps, hold, bring the traffic back; aborts on a
    /// guardrail breach. Follows the drill to its end unless --no-wait.
    Start(StartArgs),
    /// The running or last drill, step by step, and each region's last pass.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// End the running drill now and restore routing in one step.
    Abort {
        #[command(flatten)]
        target: Target,
    },
    /// A drill's report (the running or last one, or ID): per phase its
    /// share, duration and what the guardrails read; as JSON with --json.
    Report {
        /// The drill's id; default: the running or last one.
        id: Option<u64>,
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        /// Also write the drill as an HTML page (a step chart and every
        /// phase against the guardrails).
        #[arg(long, value_name = "PATH")]
        html: Option<PathBuf>,
        #[command(flatten)]
        target: Controllers,
    },
}

#[derive(Args)]
pub struct StartArgs {
    /// The region to evacuate.
    pub region: String,
    /// Evacuation shares in percent, rising to 100 (default: `[drill]
    /// steps`, else 1,10,50,100).
    #[arg(long, value_parser = parse_shares)]
    pub steps: Option<Shares>,
    /// How long each step is held (default: `[drill] hold`, else 60s).
    #[arg(long, value_parser = parse_duration)]
    pub hold: Option<Duration>,
    /// Shares on the way back, falling to 0; default: all at once.
    #[arg(long, value_parser = parse_shares)]
    pub return_steps: Option<Shares>,
    /// Move the region's database writers away (planned switchover, zero
    /// loss) at this step's share, and back at the end.
    #[arg(long, value_name = "SHARE")]
    pub with_switchover: Option<u8>,
    /// Abort when more than this share of a region's client requests fail
    /// (default: `[drill] max_error_rate`, else 1%).
    #[arg(long, value_parser = parse_rate)]
    pub max_error_rate: Option<f64>,
    /// Abort when a region's clients' p99 latency is over this (default:
    /// `[drill] max_p99`, else 1s).
    #[arg(long, value_parser = parse_duration)]
    pub max_p99: Option<Duration>,
    /// The guardrails' evaluation window (default: `[drill] window`, else 5s).
    #[arg(long, value_parser = parse_duration)]
    pub window: Option<Duration>,
    /// Fewer requests in a window than this are too few to judge (default:
    /// `[drill] min_requests`, else 20).
    #[arg(long)]
    pub min_requests: Option<u64>,
    /// Check and print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Return once the drill is committed.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub target: Target,
}

/// A list of shares, percent.
#[derive(Clone, Debug)]
pub struct Shares(pub Vec<u8>);

fn parse_shares(s: &str) -> Result<Shares, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .trim_end_matches('%')
                .parse::<u8>()
                .ok()
                .filter(|v| *v <= 100)
                .ok_or_else(|| format!("\"{p}\" is not a share from 0 to 100"))
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(Shares)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tern_core::units::parse_duration(s)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| format!("\"{s}\" is not a share like 1% or 0.01"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("\"{s}\" is not between 0% and 100%"))
    }
}

pub async fn run(command: DrillCommand) -> ExitCode {
    match command {
        DrillCommand::Start(args) => start(args).await,
        DrillCommand::Status { target } => status(&target).await,
        DrillCommand::Abort { target } => abort(&target).await,
        DrillCommand::Report {
            id,
            json,
            html,
            target,
        } => report(id, json, html, &target).await,
    }
}

async fn start(args: StartArgs) -> ExitCode {
    // The file's [drill] table gives what the flags leave out.
    let defaults = match &args.target.config {
        Some(path) => match crate::load(path) {
            Ok(c) => c.drill,
            Err(code) => return code,
        },
        None => tern_core::drill::DrillSettings::default(),
    };
    let g = defaults.guardrails;
    let spec = DrillSpec {
        service_guardrails: Default::default(),
        region: args.region.clone(),
        steps: args.steps.map_or(defaults.steps, |s| s.0),
        hold: args.hold.unwrap_or(defaults.hold),
        return_steps: args.return_steps.map_or(defaults.return_steps, |s| s.0),
        switchover_at: args.with_switchover.or(defaults.switchover_at),
        guardrails: Guardrails {
            max_error_rate: args.max_error_rate.unwrap_or(g.max_error_rate),
            max_p99: args.max_p99.unwrap_or(g.max_p99),
            window: args.window.unwrap_or(g.window),
            min_requests: args.min_requests.unwrap_or(g.min_requests),
        },
    };
    if let Err(e) = spec.validate() {
        eprintln!("tern drill start: {e}");
        return ExitCode::from(EX_USAGE);
    }
    println!("{}", describe(&spec));
    for (service, own) in &defaults.service_guardrails {
        let g = own.resolve(&spec.guardrails);
        println!(
            "  service {service} has its own limits: errors over {:.1}% or p99 over {} ms (as this file says; the leader's configuration decides)",
            g.max_error_rate * 100.0,
            g.max_p99.as_millis()
        );
    }
    if args.dry_run {
        println!("dry run: nothing changed");
        return ExitCode::SUCCESS;
    }
    let client = match args.target.client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let command = Command::StartDrill {
        spec,
        actor: actor("tern drill start"),
        wall_ms: 0,
    };
    let id = match client.write(&command).await {
        Ok(a) => match a.applied {
            Applied::Drill(id) => id,
            _ => {
                eprintln!("tern drill start: the controllers answered without a drill");
                return ExitCode::FAILURE;
            }
        },
        Err(CallError::Refused { message, .. }) | Err(CallError::Forbidden { message, .. }) => {
            eprintln!("tern drill start: {message}");
            return ExitCode::FAILURE;
        }
        Err(e) => return unavailable(e),
    };
    println!("drill {id} committed");
    if args.no_wait {
        return ExitCode::SUCCESS;
    }
    follow(&client, id).await
}

/// Prints each phase as it ends; exit 0 when the drill passes, 1 otherwise.
async fn follow(client: &tern_proto::ControllerClient, id: u64) -> ExitCode {
    let mut shown = 0;
    let mut last_contact = Instant::now();
    let started = Instant::now();
    loop {
        match client.drills().await {
            Ok(view) => {
                last_contact = Instant::now();
                // The controller that answers may not have applied the
                // drill yet: wait for it; a newer drill means ours is gone.
                let newest = view.current.as_ref().map_or(0, |d| d.id);
                let found = view
                    .current
                    .into_iter()
                    .chain(view.past)
                    .find(|d| d.id == id);
                let Some(d) = found else {
                    if newest > id {
                        eprintln!("drill {id} is no longer the current drill");
                        return ExitCode::FAILURE;
                    }
                    if started.elapsed() > Duration::from_secs(30) {
                        eprintln!(
                            "drill {id} was committed but the controller answering has not shown it for 30 s; see `tern drill status`"
                        );
                        return ExitCode::FAILURE;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                for r in d.history.iter().skip(shown) {
                    print_phase(r, &d.spec.guardrails);
                }
                shown = d.history.len();
                match &d.phase {
                    Phase::Passed => {
                        println!("drill {id} passed");
                        return ExitCode::SUCCESS;
                    }
                    Phase::Aborted { reason } => {
                        println!("drill {id} aborted: {reason}");
                        return ExitCode::FAILURE;
                    }
                    _ => {}
                }
            }
            Err(e) if last_contact.elapsed() > Duration::from_secs(30) => return unavailable(e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn describe(spec: &DrillSpec) -> String {
    let list = |v: &[u8]| {
        v.iter()
            .map(|s| format!("{s}%"))
            .collect::<Vec<_>>()
            .join(" -> ")
    };
    format!(
        "drill of {}: {} (each held {} s), then back {}; {}abort on errors over {:.1}% or p99 over {} ms in any region over {} s windows",
        spec.region,
        list(&spec.steps),
        spec.hold.as_secs_f64(),
        if spec.return_steps.is_empty() {
            "at once".to_string()
        } else {
            format!("in steps {}", list(&spec.return_steps))
        },
        match spec.switchover_at {
            Some(s) => format!("writers switched over at {s}% and back at the end; "),
            None => String::new(),
        },
        spec.guardrails.max_error_rate * 100.0,
        spec.guardrails.max_p99.as_millis(),
        spec.guardrails.window.as_secs_f64()
    )
}

async fn status(target: &Target) -> ExitCode {
    let client = match target.client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let view = match client.drills().await {
        Ok(v) => v,
        Err(e) => return unavailable(e),
    };
    if target.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view).expect("serializes")
        );
        return ExitCode::SUCCESS;
    }
    match &view.current {
        Some(d) => print_drill(d),
        None => println!("no drill yet"),
    }
    if !view.evacuation.is_empty() {
        let shares: Vec<String> = view
            .evacuation
            .iter()
            .map(|(r, s)| format!("{r} {s}%"))
            .collect();
        println!("evacuation now: {}", shares.join(", "));
    }
    println!("last passed drill per region:");
    for line in crate::ops::practice(&view.last_pass, crate::ops::max_age(target)) {
        println!("  {line}");
    }
    ExitCode::SUCCESS
}

fn print_drill(d: &Drill) {
    println!(
        "drill {} of {} ({}), started by {}: now {} at {}%",
        d.id,
        d.spec.region,
        describe(&d.spec),
        d.actor,
        d.phase.name(),
        d.share()
    );
    for r in &d.history {
        print_phase(r, &d.spec.guardrails);
    }
    if let Phase::Aborted { reason } = &d.phase {
        println!("  aborted: {reason}");
    }
}

/// One ended phase: its name, share and length, then what clients saw.
fn print_phase(r: &tern_core::drill::PhaseRecord, g: &Guardrails) {
    println!(
        "  {:<16} {:>3}%  {:>7.1} s",
        r.phase.name(),
        r.share,
        (r.ended_at - r.started_at).as_secs_f64(),
    );
    for line in phase_lines(r, g) {
        println!("      {line}");
    }
}

async fn abort(target: &Target) -> ExitCode {
    let client = match target.client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let command = Command::AbortDrill {
        id: None,
        reason: "aborted by hand".into(),
        actor: actor("tern drill abort"),
    };
    match client.write(&command).await {
        Ok(_) => {
            println!("drill aborted; routing restored");
            ExitCode::SUCCESS
        }
        Err(CallError::Refused { message, .. }) | Err(CallError::Forbidden { message, .. }) => {
            eprintln!("tern drill abort: {message}");
            ExitCode::FAILURE
        }
        Err(e) => unavailable(e),
    }
}

async fn report(
    id: Option<u64>,
    json: Option<PathBuf>,
    html: Option<PathBuf>,
    target: &Controllers,
) -> ExitCode {
    let client = match target.client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let view = match client.drills().await {
        Ok(v) => v,
        Err(e) => return unavailable(e),
    };
    let all: Vec<&Drill> = view.past.iter().chain(view.current.iter()).collect();
    let drill = match id {
        Some(id) => all.iter().find(|d| d.id == id).copied(),
        None => all.last().copied(),
    };
    let Some(drill) = drill else {
        eprintln!("tern drill report: no such drill");
        return ExitCode::FAILURE;
    };
    print_drill(drill);
    // The switchovers it asked for, as the controllers keep them (the
    // last few plans per cluster).
    let clusters = match client.clusters().await {
        Ok(v) => v.clusters,
        Err(e) => return unavailable(e),
    };
    let report = DrillReport {
        drill,
        switchovers: switchovers(&clusters, drill.id),
    };
    for s in &report.switchovers {
        println!("  {}", s.line());
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).expect("serializes");
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("tern drill report: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    if let Some(path) = html {
        if let Err(e) = std::fs::write(&path, crate::drill_html::render(&report)) {
            eprintln!("tern drill report: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

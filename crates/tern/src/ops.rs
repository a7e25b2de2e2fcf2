//! The control-plane commands: `tern controller`, `tern members`,
//! `tern status`, `tern events`, `tern route set`, `tern failover` and
//! `tern switchover`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tern_controller::node::NodeOptions;
use tern_controller::Controller;
use tern_core::control::{Applied, Command};
use tern_core::failover::{PlanKind, Step};
use tern_proto::api::{MembershipChange, StatusView};
use tern_proto::http::CallError;
use tern_proto::ControllerClient;

use crate::sockets::Inherited;
use crate::{load, shutdown_on_signal, EX_CONFIG, EX_USAGE};

/// Exit code when no controller could do it (EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

#[derive(Args)]
pub struct ControllerArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// This node's id in `[[controller.node]]`.
    #[arg(long)]
    pub id: u64,
    /// Where the node keeps its Raft log and state (created if missing).
    #[arg(long, default_value = "tern-controller-data")]
    pub data: PathBuf,
    /// Listen here instead of the node's configured address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Join a running group (wait for `tern members add`) instead of forming
    /// one from the configuration.
    #[arg(long)]
    pub join: bool,
}

/// Where to find the controllers, and how to print the answer.
#[derive(Args, Clone)]
pub struct Target {
    #[command(flatten)]
    pub at: Controllers,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl std::ops::Deref for Target {
    type Target = Controllers;

    fn deref(&self) -> &Controllers {
        &self.at
    }
}

/// Where to find the controllers: `--controller` addresses, or the nodes of
/// a configuration file's `[controller]` table; and who the caller is.
#[derive(Args, Clone)]
pub struct Controllers {
    /// A controller's address; repeat for several (any node answers).
    #[arg(long = "controller", value_name = "ADDR")]
    pub controllers: Vec<SocketAddr>,
    /// Read the controllers' addresses from this configuration file (and,
    /// with `[controller.tls]`, the CA and the operator's certificate).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The operator's or viewer's certificate (PEM) for mutual TLS; default:
    /// `operator-NAME.pem` in `[controller.tls] dir` when the file names one
    /// operator.
    #[arg(long, env = "TERN_CERT", value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// The key of `--cert` (PEM).
    #[arg(long, env = "TERN_KEY", value_name = "PEM")]
    pub key: Option<PathBuf>,
}

impl Controllers {
    pub(crate) fn client(&self) -> Result<ControllerClient, ExitCode> {
        let mut addrs = self.controllers.clone();
        let mut tls = None;
        if let Some(path) = &self.config {
            let cfg = load(path)?;
            match cfg.controller {
                Some(c) => {
                    addrs.extend(c.nodes.iter().map(|n| n.addr));
                    if let Some(t) = &c.tls {
                        tls = Some(self.identity(path, t)?.client_config());
                    }
                }
                None => {
                    eprintln!("{}: no [controller] table", path.display());
                    return Err(ExitCode::from(EX_CONFIG));
                }
            }
        }
        if addrs.is_empty() {
            eprintln!("say where the controllers are: --controller ADDR or --config FILE");
            return Err(ExitCode::from(EX_USAGE));
        }
        Ok(ControllerClient::with_tls(
            addrs,
            Duration::from_secs(2),
            tls,
        ))
    }

    /// The operator's (or viewer's) side of mutual TLS: `--cert`/`--key`,
    /// or the one operator the file names.
    fn identity(
        &self,
        path: &std::path::Path,
        t: &tern_core::config::ControlTls,
    ) -> Result<tern_proto::tls::ControlPlaneTls, ExitCode> {
        use tern_core::auth::{Principal, Role};
        use tern_core::config::tls::CertFiles;
        let (who, files) = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let who = read_principal(cert).map_err(|e| {
                    eprintln!("{}: {e}", cert.display());
                    ExitCode::from(EX_CONFIG)
                })?;
                let files = CertFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                (who, Some(files))
            }
            (None, None) => match t.operators.as_slice() {
                [one] => (Principal::new(Role::Operator, one), None),
                _ => {
                    eprintln!(
                        "{}: [controller.tls] names several operators ({}); say which certificate is yours with --cert and --key (or TERN_CERT and TERN_KEY)",
                        path.display(),
                        t.operators.join(", ")
                    );
                    return Err(ExitCode::from(EX_USAGE));
                }
            },
            _ => {
                eprintln!("give --cert and --key together");
                return Err(ExitCode::from(EX_USAGE));
            }
        };
        tern_proto::tls::ControlPlaneTls::load(t, who, files).map_err(|e| {
            eprintln!("control-plane TLS: {e}");
            ExitCode::from(EX_CONFIG)
        })
    }
}

/// The principal the first certificate of a PEM file names.
fn read_principal(path: &std::path::Path) -> Result<tern_core::auth::Principal, String> {
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::from_pem_file(path)
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    tern_proto::tls::principal_of(&cert)
}

#[derive(Subcommand)]
pub enum MembersCommand {
    /// Add a controller node: it catches up as a learner, then votes.
    Add {
        #[arg(long)]
        id: u64,
        /// The new node's address as the other controllers reach it.
        #[arg(long)]
        addr: SocketAddr,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a controller node from the group (at least three remain).
    Remove {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum RouteCommand {
    /// Set a service's weights per region, e.g. `--weights us-east=0,us-west=1`.
    Set {
        service: String,
        #[arg(long, value_name = "REGION=N,...")]
        weights: String,
        /// Do it even if no healthy region would take traffic (recorded).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
}

/// `tern failover` and `tern switchover`.
#[derive(Args)]
pub struct PlanArgs {
    /// The database cluster, as in `[database.NAME]`.
    pub cluster: String,
    /// The region whose node becomes the primary.
    #[arg(long)]
    pub to: String,
    /// Return once the plan is committed instead of following it to the end.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to follow the plan.
    #[arg(long, default_value = "120s", value_parser = parse_wait)]
    pub timeout: Duration,
    #[command(flatten)]
    pub target: Target,
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    tern_core::units::parse_duration(s)
}

pub(crate) fn actor(command: &str) -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    format!("{user} ({command})")
}

/// `tern failover`: start a plan, or `cancel` the running one.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct FailoverArgs {
    #[command(subcommand)]
    pub action: Option<FailoverAction>,
    /// The database cluster, as in `[database.NAME]`.
    #[arg(required = true)]
    pub cluster: Option<String>,
    /// The region whose node becomes the primary.
    #[arg(long, required = true)]
    pub to: Option<String>,
    /// Return once the plan is committed instead of following it to the end.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to follow the plan.
    #[arg(long, default_value = "120s", value_parser = parse_wait)]
    pub timeout: Duration,
    #[command(flatten)]
    pub target: Target,
    /// Skip the RPO gate and the down-verdict check (recorded in the audit log).
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand)]
pub enum FailoverAction {
    /// Cancel the running plan of a cluster: it fails at its current step
    /// (recorded in the audit log); the writer stays where it is.
    Cancel {
        /// The database cluster, as in `[database.NAME]`.
        cluster: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `tern failover CLUSTER --to REGION [--force]`: without `--force` the
/// same gate as an automatic failover (the writer's region is down and the
/// lag is within the budget); with it, the gate is skipped and recorded.
/// `tern failover cancel CLUSTER` cancels the running plan.
pub async fn failover(args: FailoverArgs) -> ExitCode {
    let plan = match (args.action, args.cluster, args.to) {
        (Some(FailoverAction::Cancel { cluster, target }), _, _) => {
            return cancel_plan(&cluster, &target).await
        }
        (None, Some(cluster), Some(to)) => PlanArgs {
            cluster,
            to,
            no_wait: args.no_wait,
            timeout: args.timeout,
            target: args.target,
        },
        _ => {
            eprintln!("tern failover: give CLUSTER --to REGION, or cancel CLUSTER");
            return ExitCode::from(EX_USAGE);
        }
    };
    let force = args.force;
    let args = plan;
    let kind = if force {
        PlanKind::Forced {
            actor: actor("tern failover --force"),
        }
    } else {
        PlanKind::Automatic
    };
    start_plan(args, kind, "tern failover").await
}

/// Cancels the running plan of `cluster`.
async fn cancel_plan(cluster: &str, target: &Target) -> ExitCode {
    let client = match target.client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let command = Command::CancelPlan {
        cluster: cluster.to_string(),
        actor: actor("tern failover cancel"),
    };
    match client.write(&command).await {
        Ok(tern_proto::api::WriteAnswer {
            applied: Applied::Plan(id),
            ..
        }) => {
            println!("plan {id} of {cluster} cancelled; the writer stays where it was");
            ExitCode::SUCCESS
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(CallError::Refused { message, .. }) => {
            eprintln!("tern failover cancel: {message}");
            ExitCode::FAILURE
        }
        Err(e) => unavailable(e),
    }
}

/// `tern switchover CLUSTER --to REGION`: fence, wait for the standby to
/// replay everything, then switch: zero loss.
pub async fn switchover(args: PlanArgs) -> ExitCode {
    let kind = PlanKind::Switchover {
        actor: actor("tern switchover"),
    };
    start_plan(args, kind, "tern switchover").await
}

async fn start_plan(args: PlanArgs, kind: PlanKind, what: &str) -> ExitCode {
    let client = match args.target.client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let command = Command::StartFailover {
        cluster: args.cluster.clone(),
        to: args.to.clone(),
        kind,
        lag_bytes: None,
        evidence: vec![format!("requested with {what}")],
    };
    let id = match client.write(&command).await {
        Ok(tern_proto::api::WriteAnswer {
            applied: Applied::Plan(id),
            ..
        }) => id,
        Ok(_) => {
            eprintln!("{what}: the controllers answered without a plan");
            return ExitCode::FAILURE;
        }
        Err(CallError::Refused { message, .. }) => {
            eprintln!("{what}: {message}");
            return ExitCode::FAILURE;
        }
        Err(e) => return unavailable(e),
    };
    println!("plan {id} committed: {} to {}", args.cluster, args.to);
    if args.no_wait {
        return ExitCode::SUCCESS;
    }
    follow_plan(&client, &args.cluster, id, args.timeout, what).await
}

/// Prints each step of plan `id` as it ends; succeeds when it is done.
async fn follow_plan(
    client: &ControllerClient,
    cluster: &str,
    id: u64,
    timeout: Duration,
    what: &str,
) -> ExitCode {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut printed = 0;
    let mut last_step = None;
    loop {
        if let Ok(view) = client.clusters().await {
            if let Some(plan) = view
                .clusters
                .get(cluster)
                .and_then(|c| c.plan.as_ref())
                .filter(|p| p.id == id)
            {
                for h in plan.history.iter().skip(printed) {
                    println!(
                        "  {:<11} {} in {} ms (attempt {}): {}",
                        h.step.as_str(),
                        if h.ok { "done" } else { "FAILED" },
                        h.finished_at.saturating_sub(h.started_at).as_millis(),
                        h.attempts,
                        h.detail
                    );
                }
                printed = plan.history.len();
                if last_step != Some(plan.step) && plan.active() {
                    println!("  ... {}", plan.step.as_str());
                    last_step = Some(plan.step);
                }
                match plan.step {
                    Step::Done => {
                        let c = &view.clusters[cluster];
                        println!(
                            "done: writer {} in epoch {}, {} ms in all",
                            c.writer.region,
                            c.writer.epoch,
                            plan.history.last().map_or(0, |h| h
                                .finished_at
                                .saturating_sub(plan.started_at)
                                .as_millis())
                        );
                        return ExitCode::SUCCESS;
                    }
                    Step::Failed => {
                        eprintln!("{what}: plan {id} failed (see `tern events`)");
                        return ExitCode::FAILURE;
                    }
                    _ => {}
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "{what}: plan {id} not finished after {} s; it goes on (see `tern status`)",
                timeout.as_secs()
            );
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `tern controller`, on the socket named `controller` when one was
/// handed over (see [`crate::sockets`]).
pub async fn run_controller(args: ControllerArgs, mut sockets: Inherited) -> ExitCode {
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let options = NodeOptions {
        id: args.id,
        data_dir: args.data,
        listen: args.listen,
        join: args.join,
    };
    let listener = sockets.take("controller");
    if let Err(e) = sockets.all_taken() {
        eprintln!("tern controller: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let node = match Controller::start_on(
        &cfg,
        options,
        listener,
        tern_controller::clock::WallClock::new(),
    )
    .await
    {
        Ok(n) => n,
        Err(e) => {
            eprintln!("tern controller: {e:#}");
            let config_problem = e
                .downcast_ref::<tern_controller::lifecycle::StartError>()
                .is_some();
            return ExitCode::from(if config_problem { EX_CONFIG } else { 1 });
        }
    };
    let stop = shutdown_on_signal();
    println!("controller {} listening on {}", node.id, node.addr);
    crate::notify::ready(&format!(
        "controller {} listening on {}",
        node.id, node.addr
    ));
    stop.cancelled().await;
    node.shutdown().await;
    ExitCode::SUCCESS
}

pub(crate) fn unavailable(e: CallError) -> ExitCode {
    eprintln!("tern: {e}");
    ExitCode::from(EX_UNAVAILABLE)
}

pub async fn members(cmd: MembersCommand) -> ExitCode {
    let (change, target) = match cmd {
        MembersCommand::Add { id, addr, target } => (
            MembershipChange::Add {
                id,
                addr: addr.to_string(),
            },
            target,
        ),
        MembersCommand::Remove { id, target } => (MembershipChange::Remove { id }, target),
    };
    let client = match target.client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.change_membership(&change).await {
        Ok(status) => {
            print!("{}", render_status(&status));
            ExitCode::SUCCESS
        }
        Err(e) => unavailable(e),
    }
}

pub async fn status(target: Target) -> ExitCode {
    let client = match target.client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.status().await {
        Ok(s) => {
            let clusters = client.clusters().await.ok();
            let drills = client.drills().await.ok();
            if target.json {
                let mut value = serde_json::to_value(&s).expect("status serializes");
                if let Some(c) = &clusters {
                    value["databases"] = serde_json::to_value(c).expect("clusters serialize");
                }
                if let Some(d) = &drills {
                    value["drills"] = serde_json::json!({
                        "last_pass_unix_ms": d.last_pass,
                        "evacuation": d.evacuation,
                        "running": d.current.as_ref().filter(|c| !c.phase.finished()).map(|c| c.id),
                    });
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("status serializes")
                );
            } else {
                print!("{}", render_status(&s));
                if let Some(c) = &clusters {
                    print!("{}", render_clusters(c));
                }
                if let Some(d) = &drills {
                    if let Some(c) = d.current.as_ref().filter(|c| !c.phase.finished()) {
                        println!(
                            "drill {} of {} running: {} at {}%",
                            c.id,
                            c.spec.region,
                            c.phase.name(),
                            c.share()
                        );
                    }
                    println!("practice (last passed drill):");
                    for line in practice(&d.last_pass, max_age(&target)) {
                        println!("  {line}");
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => unavailable(e),
    }
}

pub fn render_status(s: &StatusView) -> String {
    let mut out = String::new();
    if !s.in_quorum {
        out.push_str(
            "WARNING: this controller is OUT OF QUORUM; what follows is its last known state and it commits nothing\n",
        );
    }
    for w in &s.warnings {
        out.push_str(&format!("WARNING: {w}\n"));
    }
    out.push_str(&format!(
        "controller {} ({}), {}, term {}, leader {}, {}\n",
        s.node,
        s.region,
        s.role,
        s.term,
        s.leader.map_or("none".to_string(), |l| l.to_string()),
        if s.in_quorum {
            "in quorum"
        } else {
            "no quorum"
        }
    ));
    out.push_str("members:\n");
    for m in &s.members {
        out.push_str(&format!(
            "  {} {}{}{}\n",
            m.id,
            m.addr,
            if m.voter { "" } else { " (learner)" },
            if Some(m.id) == s.leader {
                " leader"
            } else {
                ""
            }
        ));
    }
    out.push_str("verdicts:\n");
    for (region, v) in &s.verdicts {
        out.push_str(&format!("  {region}: {v}\n"));
    }
    for (target, v) in &s.service_verdicts {
        let (service, region) = target.split_once('@').unwrap_or((target, ""));
        out.push_str(&format!("  service {service} in {region}: {v}\n"));
    }
    out.push_str(&format!(
        "routing table v{}{}:\n",
        s.routing.version,
        if s.routing.cluster_id.is_empty() {
            String::new()
        } else {
            format!(" (control plane {})", s.routing.cluster_id)
        }
    ));
    for (service, route) in &s.routing.services {
        let w: Vec<String> = route
            .weights
            .iter()
            .map(|(r, w)| format!("{r}={w}"))
            .collect();
        out.push_str(&format!(
            "  {service}: {}{}\n",
            w.join(" "),
            if route.all_unhealthy {
                " (no healthy region: the service's all-unhealthy policy applies)"
            } else {
                ""
            }
        ));
    }
    out.push_str("leases:\n");
    if s.leases.is_empty() {
        out.push_str("  none\n");
    }
    for l in &s.leases {
        let holder = match (&l.holder, l.expires_at_ms) {
            (Some(h), Some(exp)) => {
                let left = exp as i64 - s.now_ms as i64;
                if left >= 0 {
                    format!("held by {h}, {left} ms left")
                } else {
                    format!("held by {h}, expired {} ms ago", -left)
                }
            }
            _ => "released".to_string(),
        };
        out.push_str(&format!("  {}: epoch {}, {holder}\n", l.cluster, l.epoch));
    }
    out
}

pub fn render_clusters(v: &tern_proto::api::ClustersView) -> String {
    let mut out = String::new();
    if v.clusters.is_empty() {
        return out;
    }
    out.push_str("databases:\n");
    for (name, c) in &v.clusters {
        out.push_str(&format!(
            "  {name}: writer {} epoch {} ({} replication, rpo budget {} bytes)\n",
            c.writer.region,
            c.writer.epoch,
            if c.spec.sync { "sync" } else { "async" },
            c.spec.rpo_budget
        ));
        for seen in v.replication.iter().filter(|r| &r.report.cluster == name) {
            let r = &seen.report;
            out.push_str(&format!(
                "    {}: {}{} WAL {}{}{} ({} ms ago)\n",
                r.region,
                r.role,
                if r.read_only { " (fenced)" } else { "" },
                r.lsn,
                r.received_lsn
                    .map_or(String::new(), |x| format!(", received {x}")),
                match (r.lag_bytes, r.lag_ms) {
                    (None, None) => String::new(),
                    (b, ms) => format!(
                        ", lag {} bytes / {} ms",
                        b.map_or("?".into(), |b| b.to_string()),
                        ms.map_or("?".into(), |m| m.to_string())
                    ),
                },
                seen.age_ms
            ));
        }
        if let Some(p) = &c.plan {
            out.push_str(&format!(
                "    plan {}: {} -> {}, step {}\n",
                p.id,
                p.from,
                p.to,
                p.step.as_str()
            ));
        }
        if let Some(r) = &c.refused {
            out.push_str(&format!("    last refusal: {r}\n"));
        }
    }
    out
}

pub async fn events(target: Target, limit: usize) -> ExitCode {
    let client = match target.client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.events(limit).await {
        Ok(v) => {
            if target.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("events serialize")
                );
                return ExitCode::SUCCESS;
            }
            if !v.in_quorum {
                println!("WARNING: this controller is OUT OF QUORUM; newer events may exist");
            }
            for e in &v.events {
                println!(
                    "#{} {} {}: {}",
                    e.index,
                    format_time(e.at),
                    e.kind,
                    e.summary
                );
                for line in &e.evidence {
                    println!("    {line}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => unavailable(e),
    }
}

/// UTC time of day with milliseconds, from a duration since the Unix epoch.
pub fn format_time(at: Duration) -> String {
    let ms = at.as_millis() as u64;
    let day = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000
    )
}

pub async fn route(cmd: RouteCommand) -> ExitCode {
    let RouteCommand::Set {
        service,
        weights,
        force,
        target,
    } = cmd;
    let mut parsed = Vec::new();
    for part in weights.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((region, w)) = part.split_once('=') else {
            eprintln!("tern route set: expected REGION=N, found \"{part}\"");
            return ExitCode::from(EX_USAGE);
        };
        let Ok(w) = w.trim().parse::<u32>() else {
            eprintln!("tern route set: weight of {region} must be a whole number, found \"{w}\"");
            return ExitCode::from(EX_USAGE);
        };
        if w > 1000 {
            eprintln!("tern route set: weight of {region} must be from 0 to 1000, found {w}");
            return ExitCode::from(EX_USAGE);
        }
        parsed.push((region.trim().to_string(), w));
    }
    if parsed.is_empty() {
        eprintln!("tern route set: --weights needs at least one REGION=N");
        return ExitCode::from(EX_USAGE);
    }
    let client = match target.client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let actor = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let command = Command::SetWeights {
        service,
        weights: parsed,
        force,
        actor: format!("{actor} (tern route set)"),
    };
    match client.write(&command).await {
        Ok(answer) => {
            match answer.applied {
                Applied::Routing(v) => println!("committed: routing table v{v}"),
                _ => println!("committed: no change to the routing table"),
            }
            ExitCode::SUCCESS
        }
        Err(CallError::Refused { message, .. }) => {
            eprintln!("tern route set: {message}");
            ExitCode::FAILURE
        }
        Err(e) => unavailable(e),
    }
}

/// The `[drill] max_age` of the file `target` names, else the default
/// (30 days).
pub fn max_age(target: &Controllers) -> Duration {
    target
        .config
        .as_ref()
        .and_then(|p| crate::load(p).ok())
        .map_or(tern_core::drill::DrillSettings::default().max_age, |c| {
            c.drill.max_age
        })
}

/// "REGION: N days ago" per region with a passed drill, with a warning
/// past `max_age`.
pub fn practice(
    last_pass: &std::collections::BTreeMap<String, u64>,
    max_age: Duration,
) -> Vec<String> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if last_pass.is_empty() {
        return vec!["none: no region has passed a drill (never practised)".into()];
    }
    last_pass
        .iter()
        .map(|(region, at)| {
            let age = Duration::from_millis(now_ms.saturating_sub(*at));
            let days = age.as_secs_f64() / 86_400.0;
            let stale = if age > max_age {
                format!(
                    " (WARNING: older than {:.0} days; practise again)",
                    max_age.as_secs_f64() / 86_400.0
                )
            } else {
                String::new()
            };
            format!("{region}: {days:.1} days ago{stale}")
        })
        .collect()
}

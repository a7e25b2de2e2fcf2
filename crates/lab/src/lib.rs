//! tern's lab: a whole multi-region deployment on one machine, a fault, and
//! numbers about what happened.
//!
//! [`run`] starts a [`topology::Deployment`] (a [`sample`] service and an
//! edge per serving region, each region on its own loopback subnet, every
//! cross-region path through the [`wan`] emulator), drives load from
//! clients located in each region ([`load`]), applies a [`scenario`]'s
//! faults, watches the edges' routing through their admin API, and hands
//! everything to the oracle ([`report`]) for the terminal table and JSON.
//! Child processes are started from the `tern` binary itself ([`process`])
//! and die with the lab, however it ends. Alongside, DNS clients
//! ([`dns_client`]) find the edges through the edges' own DNS, and
//! [`dns_report`] compares that path with the HTTP path for the same fault.
//! With PostgreSQL installed, each serving region also has a database node
//! (a primary in us-east, a streaming standby in us-west, [`postgres`]),
//! payments are written through the region's writer proxy, and after the run
//! [`dbrun`] hands the clients' acknowledged writes, the final primary's
//! rows and the controllers' leases to the write oracle ([`db_report`]).

pub mod db_report;
pub mod dbrun;
pub mod dns_client;
pub mod dns_report;
pub mod html;
pub mod load;
pub mod postgres;
pub mod process;
pub mod report;
pub mod sample;
pub mod scenario;
pub mod topology;
pub mod wan;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::load::{ClientSpec, RequestRecord};
use crate::report::{ControlFacts, Event, Moments, Report, RoutingSample};
use crate::scenario::{Action, Scenario};
use crate::topology::{default_regions, DbSettings, Deployment, EdgeTuning};
use crate::wan::Fault;

/// Arguments of `tern lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Scenario to run.
    #[arg(long, default_value = "region-outage")]
    pub scenario: String,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Write the report as an HTML page with a timeline plot to this file.
    #[arg(long)]
    pub report_html: Option<PathBuf>,
    /// Seed for the load mix and the fault's timing.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How the failed region's network breaks: `blackhole` (packets vanish,
    /// connections hang) or `reset` (connections are refused and reset).
    #[arg(long, default_value = "blackhole", value_parser = parse_fault)]
    pub fault: Fault,
    /// One-way delay between regions, in milliseconds.
    #[arg(long, default_value_t = 35)]
    pub delay_ms: u64,
    /// Clients located in each serving region.
    #[arg(long, default_value_t = 3)]
    pub clients_per_region: usize,
    /// Milliseconds between the starts of one client's requests.
    #[arg(long, default_value_t = 20)]
    pub pace_ms: u64,
    /// Exit with status 1 when a target of the scenario is missed.
    #[arg(long)]
    pub check: bool,
    /// Keep the lab's directory (configurations and process logs) and print its path.
    #[arg(long)]
    pub keep_dir: bool,
    /// The tern binary to start roles from; defaults to the running one.
    #[arg(long, hide = true)]
    pub tern_binary: Option<PathBuf>,
    /// Give the edges no retry budget. Only for showing that the oracle sees
    /// the failures retries otherwise hide.
    #[arg(long, hide = true)]
    pub no_edge_retries: bool,
    /// Clients in each serving region that find the edges through DNS (0: none).
    #[arg(long, default_value_t = 6)]
    pub dns_clients_per_region: usize,
    /// TTL of the edges' DNS answers, in seconds.
    #[arg(long, default_value_t = 2)]
    pub dns_ttl_s: u64,
    /// Share of DNS clients that keep answers longer than their TTL (at least one when above 0).
    #[arg(long, default_value_t = 0.09)]
    pub dns_stretch_share: f64,
    /// How long those clients keep an answer at least, in seconds.
    #[arg(long, default_value_t = 60)]
    pub dns_stretch_s: u64,
    /// Milliseconds between the starts of one DNS client's requests.
    #[arg(long, default_value_t = 100)]
    pub dns_pace_ms: u64,
    /// The database: `auto` (asynchronous replication when PostgreSQL is
    /// installed, none otherwise), `async`, `sync` or `off`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "async", "sync", "off"])]
    pub db: String,
    /// Agents never fence their database. Only for showing that the oracle
    /// counts the writes this lets through.
    #[arg(long, hide = true)]
    pub unsafe_no_self_fence: bool,
}

impl Default for LabArgs {
    fn default() -> Self {
        LabArgs {
            scenario: "region-outage".into(),
            report_json: None,
            report_html: None,
            seed: 1,
            fault: Fault::Blackhole,
            delay_ms: 35,
            clients_per_region: 3,
            pace_ms: 20,
            check: false,
            keep_dir: false,
            tern_binary: None,
            no_edge_retries: false,
            dns_clients_per_region: 6,
            dns_ttl_s: 2,
            dns_stretch_share: 0.09,
            dns_stretch_s: 60,
            dns_pace_ms: 100,
            db: "auto".into(),
            unsafe_no_self_fence: false,
        }
    }
}

pub struct Outcome {
    pub report: Report,
    pub check: bool,
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        if self.check && !self.report.targets.all_met() {
            1
        } else {
            0
        }
    }
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    match s {
        "blackhole" => Ok(Fault::Blackhole),
        "reset" => Ok(Fault::Reset),
        other => Err(format!("expected blackhole or reset, found {other}")),
    }
}

/// Runs one scenario end to end.
pub async fn run(args: LabArgs) -> Result<Outcome> {
    let scenario = Scenario::by_name(&args.scenario, args.seed, args.fault)?;
    if args.clients_per_region == 0 || args.pace_ms == 0 {
        bail!("--clients-per-region and --pace-ms must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.dns_stretch_share)
        || args.dns_ttl_s == 0
        || args.dns_pace_ms == 0
    {
        bail!("--dns-stretch-share must be from 0 to 1; --dns-ttl-s and --dns-pace-ms at least 1");
    }
    let db = match (args.db.as_str(), postgres::pg_bin_dir()) {
        ("off", _) => None,
        ("auto", None) => {
            println!(
                "PostgreSQL server binaries not found (on PATH or under /usr/lib/postgresql/*/bin): running without the database"
            );
            None
        }
        ("auto" | "async", Some(bin)) => Some(DbSettings { bin, sync: false }),
        (_, Some(bin)) => Some(DbSettings { bin, sync: true }),
        (mode, None) => bail!(
            "--db {mode} needs PostgreSQL server binaries (on PATH or under /usr/lib/postgresql/*/bin)"
        ),
    };
    if scenario.needs_db && db.is_none() {
        bail!(
            "scenario {} is about the database and needs it (--db async or sync, and PostgreSQL installed)",
            scenario.name
        );
    }
    if args.unsafe_no_self_fence {
        // Read by the agents this lab starts.
        std::env::set_var(tern_agent::db::UNSAFE_NO_SELF_FENCE, "1");
    }
    let binary = match &args.tern_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("find the tern binary")?,
    };
    let dir = tempfile::Builder::new()
        .prefix("tern-lab-")
        .tempdir()
        .context("create the lab directory")?;
    let delay = Duration::from_millis(args.delay_ms);
    println!(
        "tern lab: scenario {} (seed {}), regions us-east 127.0.1.0/24, us-west 127.0.2.0/24, witness 127.0.3.0/24, {} ms one way between regions",
        scenario.name, args.seed, args.delay_ms
    );
    println!(
        "starting: {}sample service, edge, agent and controller in each serving region, a controller and an agent at the witness, WAN emulator",
        match &db {
            Some(d) => format!(
                "PostgreSQL ({} replication: primary in us-east, standby in us-west by base backup across the WAN), ",
                if d.sync { "synchronous" } else { "asynchronous" }
            ),
            None => String::new(),
        }
    );

    let tuning = EdgeTuning {
        retries: !args.no_edge_retries,
        dns_ttl: Duration::from_secs(args.dns_ttl_s),
        ..EdgeTuning::default()
    };
    let mut deployment = tokio::select! {
        d = Deployment::start(&binary, dir.path(), default_regions(), delay, tuning, db) => d?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted while starting"),
    };
    let mut interrupted = false;
    let result = tokio::select! {
        r = drive(&mut deployment, &scenario, &args) => r,
        _ = tokio::signal::ctrl_c() => {
            interrupted = true;
            Err(anyhow::anyhow!("interrupted; stopping every process of the lab"))
        }
    };
    if let (Err(e), false) = (&result, interrupted) {
        eprintln!("tern lab: the run failed ({e:#}); last log lines of each process:");
        for rt in &deployment.serving {
            for name in [
                format!("edge-{}", rt.spec.name),
                format!("service-{}", rt.spec.name),
                format!("agent-{}", rt.spec.name),
                format!("controller-{}", rt.spec.name),
            ] {
                let path = deployment.log_dir().join(format!("{name}.log"));
                eprintln!("--- last lines of {name} ---\n{}", process::tail(&path, 8));
            }
        }
    }
    deployment.shutdown().await;
    if args.keep_dir {
        let kept = dir.keep();
        println!("lab directory kept: {}", kept.display());
    }
    let report = result?;
    print!("\n{}", report.table());
    if let Some(path) = &args.report_json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    if let Some(path) = &args.report_html {
        std::fs::write(path, html::render(&report))
            .with_context(|| format!("write {}", path.display()))?;
        println!("timeline written to {}", path.display());
    }
    Ok(Outcome {
        report,
        check: args.check,
    })
}

struct Clock {
    t0: Instant,
    t0_unix_ms: f64,
}

impl Clock {
    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1_000.0
    }

    fn lab_ms_of_unix(&self, unix_ms: f64) -> f64 {
        unix_ms - self.t0_unix_ms
    }

    fn stamp(&self) -> String {
        format!("[{:>5.1}s]", self.ms() / 1_000.0)
    }
}

async fn drive(deployment: &mut Deployment, scenario: &Scenario, args: &LabArgs) -> Result<Report> {
    let admins: Vec<(String, SocketAddr)> = deployment
        .serving
        .iter()
        .map(|rt| (rt.spec.name.clone(), rt.admin_addr))
        .collect();
    wait_until_probed(&admins).await?;
    wait_for_control(deployment, &admins).await?;

    let client_paths = deployment.client_paths(Duration::from_micros(500)).await?;
    let t0 = Instant::now();
    let clock = Arc::new(Clock {
        t0,
        t0_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1_000.0),
    });
    let stop = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<RequestRecord>();
    let mut id = 0;
    for (region, edges) in &client_paths {
        for _ in 0..args.clients_per_region {
            id += 1;
            let spec = ClientSpec {
                id,
                region: region.clone(),
                edges: edges.clone(),
                pace: Duration::from_millis(args.pace_ms),
                edge_timeout: Duration::from_millis(1_000),
                avoid_for: Duration::from_secs(3),
                seed: args.seed.wrapping_mul(1_000).wrapping_add(id as u64),
            };
            tokio::spawn(load::run_client(spec, t0, stop.clone(), tx.clone()));
        }
    }
    drop(tx);
    let (dns_tx, mut dns_rx) = mpsc::unbounded_channel::<dns_client::DnsRequestRecord>();
    let dns_clients = spawn_dns_clients(deployment, &client_paths, args, t0, &stop, dns_tx);

    let routing: Arc<Mutex<Vec<RoutingSample>>> = Arc::default();
    let current: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let monitor = tokio::spawn(monitor_routing(
        admins.clone(),
        clock.clone(),
        routing.clone(),
        current.clone(),
        stop.clone(),
    ));

    let mut records: Vec<RequestRecord> = Vec::new();
    let mut dns_records: Vec<dns_client::DnsRequestRecord> = Vec::new();
    let mut events = vec![Event {
        t_ms: 0.0,
        what: "load starts".into(),
    }];
    println!(
        "{} steady: load from {} clients in each serving region",
        clock.stamp(),
        args.clients_per_region
    );
    let mut fault_ms = None;
    let mut restore_ms = None;
    // Audit-log length of the cut-off controller when the partition began.
    let mut minority_at_cut: Option<(SocketAddr, usize)> = None;
    let mut minority_decisions = None;
    let mut steps = scenario.steps.iter().peekable();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last_count = 0usize;
    let end = t0 + scenario.duration;
    loop {
        let next_step_at = steps.peek().map(|s| t0 + s.at).unwrap_or(end).min(end);
        tokio::select! {
            Some(r) = rx.recv() => records.push(r),
            Some(r) = dns_rx.recv() => dns_records.push(r),
            _ = ticker.tick() => {
                let failed = records.iter().filter(|r| !r.ok).count();
                let edges = current.lock().expect("routing lock").iter()
                    .map(|(e, to)| format!("{e}->{}", if to.is_empty() { "none".to_string() } else { to.join("+") }))
                    .collect::<Vec<_>>().join(", ");
                println!(
                    "{} {:>4} req/s, {failed} failed so far; edges route: {edges}",
                    clock.stamp(),
                    records.len() - last_count
                );
                last_count = records.len();
            }
            _ = tokio::time::sleep_until(next_step_at.into()) => {
                if Instant::now() >= end && steps.peek().is_none() {
                    break;
                }
                let Some(step) = steps.next() else { continue };
                println!("{} {}", clock.stamp(), step.label);
                match &step.action {
                    Action::Cut(region, fault) => {
                        fault_ms.get_or_insert(clock.ms());
                        deployment.wan.set_region_fault(region, *fault);
                    }
                    Action::Kill(region) => {
                        fault_ms.get_or_insert(clock.ms());
                        deployment.kill_region(region).await?;
                    }
                    Action::Restore(region) => {
                        // The WAN heals first: a rejoining database reaches the new primary.
                        deployment.wan.set_region_fault(region, Fault::None);
                        deployment.restart_region(region).await?;
                        restore_ms = Some(clock.ms());
                        if let Some(note) = deployment.restore_database(region).await? {
                            println!("{} {note}", clock.stamp());
                            events.push(Event { t_ms: clock.ms(), what: note });
                        }
                    }
                    Action::Switchover(to) => {
                        fault_ms.get_or_insert(clock.ms());
                        let id = dbrun::switchover(deployment, to).await?;
                        println!("{} switchover plan {id} committed", clock.stamp());
                    }
                    Action::Partition(region) => {
                        fault_ms.get_or_insert(clock.ms());
                        let addr = deployment
                            .controller_addrs()
                            .into_iter()
                            .find(|(r, _)| r == region)
                            .map(|(_, a)| a);
                        if let Some(addr) = addr {
                            if let Some(n) = audit_len(addr).await {
                                minority_at_cut = Some((addr, n));
                            }
                        }
                        partition(deployment, region, Fault::Blackhole);
                    }
                    Action::Heal(region) => {
                        if let Some((addr, before)) = minority_at_cut {
                            minority_decisions =
                                audit_len(addr).await.map(|n| n.saturating_sub(before));
                        }
                        partition(deployment, region, Fault::None);
                        restore_ms = Some(clock.ms());
                    }
                    Action::Flap { region, period, duration } => {
                        fault_ms.get_or_insert(clock.ms());
                        restore_ms = Some(clock.ms() + duration.as_secs_f64() * 1_000.0);
                        let store = deployment.store_file(region);
                        let (period, until) = (*period, Instant::now() + *duration);
                        tokio::spawn(async move {
                            let mut healthy = true;
                            while Instant::now() < until {
                                tokio::time::sleep(period).await;
                                healthy = !healthy;
                                let _ = if healthy {
                                    std::fs::write(&store, b"ok")
                                } else {
                                    std::fs::remove_file(&store)
                                };
                            }
                            let _ = std::fs::write(&store, b"ok");
                        });
                    }
                    Action::KillControllers => {
                        fault_ms.get_or_insert(clock.ms());
                        deployment.kill_controllers().await;
                    }
                    Action::StartControllers => {
                        deployment.start_controllers().await?;
                        restore_ms = Some(clock.ms());
                    }
                }
                events.push(Event { t_ms: clock.ms(), what: step.label.clone() });
            }
        }
    }
    stop.cancel();
    let end_ms = clock.ms();
    // Clients finish the request in hand; collect those records too.
    while let Some(r) = rx.recv().await {
        records.push(r);
    }
    while let Some(r) = dns_rx.recv().await {
        dns_records.push(r);
    }
    let _ = monitor.await;
    events.push(Event {
        t_ms: end_ms,
        what: "load stops".into(),
    });
    records.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    let routing = routing.lock().expect("routing lock").clone();
    let mut facts = control_facts(deployment, &clock).await;
    facts.minority_decisions = minority_decisions;
    // With the database, payments are the write load: the write oracle
    // judges them; the HTTP figures are about the rest.
    let writes = match &deployment.db {
        Some(_) => Some(dbrun::write_report(deployment, &records, fault_ms).await),
        None => None,
    };
    if deployment.db.is_some() {
        records.retain(|r| r.payment.is_none());
        dns_records.retain(|r| r.record.payment.is_none());
    }
    let mut report = report::build(report::Inputs {
        scenario: scenario.name,
        seed: args.seed,
        failed_region: scenario.failed_region.as_deref(),
        one_way_delay_ms: args.delay_ms,
        records: &records,
        routing: &routing,
        moments: Moments {
            fault_ms,
            restore_ms,
            end_ms,
        },
        events,
    });
    if !dns_clients.is_empty() {
        let tuning = EdgeTuning::default();
        report.dns_path = Some(dns_report::build(dns_report::DnsInputs {
            settings: dns_report::DnsPathSettings {
                ttl_s: args.dns_ttl_s,
                stretch_s: args.dns_stretch_s,
                stretch_share: args.dns_stretch_share,
                check_interval_ms: tuning.interval_ms,
                check_fall: tuning.fall,
                pace_ms: args.dns_pace_ms,
            },
            dns: &dns_records,
            http: &records,
            http_clients: id,
            dns_clients,
            failed_region: scenario.failed_region.as_deref(),
            fault_ms,
            restore_ms,
            end_ms,
            http_detection_ms: report.detection_ms,
        }));
    }
    report.add_control(facts);
    if let Some(w) = writes {
        let w = w.context("the write oracle")?;
        let sync = deployment.db.as_ref().is_some_and(|d| d.settings.sync);
        report.add_writes(w, sync);
    }
    Ok(report)
}

/// Starts the clients that find edges through DNS; returns how many of each
/// kind (honouring TTLs, keeping answers longer) it started.
fn spawn_dns_clients(
    deployment: &Deployment,
    client_paths: &[(String, Vec<load::EdgePath>)],
    args: &LabArgs,
    t0: Instant,
    stop: &CancellationToken,
    out: mpsc::UnboundedSender<dns_client::DnsRequestRecord>,
) -> BTreeMap<&'static str, usize> {
    use dns_client::{DnsClientSpec, DnsServer, StubResolver, TtlBehaviour};
    let mut started = BTreeMap::new();
    let total = args.dns_clients_per_region * client_paths.len();
    if total == 0 {
        return started;
    }
    // The share, rounded, but at least one client when the share is above 0.
    let mut stretchers = (args.dns_stretch_share * total as f64).round() as usize;
    if args.dns_stretch_share > 0.0 {
        stretchers = stretchers.max(1);
    }
    let mut rng = fastrand::Rng::with_seed(args.seed ^ 0xd45);
    let mut picks: Vec<usize> = (0..total).collect();
    rng.shuffle(&mut picks);
    let stretching: std::collections::BTreeSet<usize> =
        picks.into_iter().take(stretchers).collect();
    let mut n = 0;
    for (region, edges) in client_paths {
        let Some(spec) = deployment.regions.iter().find(|r| &r.name == region) else {
            continue;
        };
        // The region's own DNS server first, then the others.
        let mut servers: Vec<DnsServer> = deployment
            .serving
            .iter()
            .map(|rt| DnsServer {
                region: rt.spec.name.clone(),
                addr: rt.dns_addr,
            })
            .collect();
        servers.sort_by_key(|s| s.region != *region);
        let paths: Vec<(std::net::IpAddr, load::EdgePath)> = edges
            .iter()
            .filter_map(|p| {
                let rt = deployment
                    .serving
                    .iter()
                    .find(|rt| rt.spec.name == p.region)?;
                Some((rt.spec.ip(1), p.clone()))
            })
            .collect();
        for _ in 0..args.dns_clients_per_region {
            let behaviour = if stretching.contains(&n) {
                TtlBehaviour::Stretches(Duration::from_secs(args.dns_stretch_s))
            } else {
                TtlBehaviour::Honours
            };
            n += 1;
            *started.entry(behaviour.group()).or_insert(0) += 1;
            let seed = args.seed.wrapping_mul(7_919).wrapping_add(n as u64);
            let client = DnsClientSpec {
                id: 10_000 + n,
                region: region.clone(),
                resolver: StubResolver::new(
                    servers.clone(),
                    spec.ip(200),
                    behaviour,
                    deployment.wan.clone(),
                    spec.client_label(),
                    seed,
                ),
                paths: paths.clone(),
                pace: Duration::from_millis(args.dns_pace_ms),
                edge_timeout: Duration::from_millis(1_000),
                seed,
            };
            tokio::spawn(dns_client::run_dns_client(
                client,
                t0,
                stop.clone(),
                out.clone(),
            ));
        }
    }
    started
}

/// Cuts (or heals) a region from the others: every path between it and
/// another region, and other regions' clients from its edge. Its own
/// clients still reach it.
fn partition(deployment: &Deployment, region: &str, fault: Fault) {
    for other in &deployment.regions {
        if other.name == region {
            continue;
        }
        deployment.wan.set_pair_fault(region, &other.name, fault);
        deployment
            .wan
            .set_pair_fault(&other.client_label(), region, fault);
        if let Some(r) = deployment.regions.iter().find(|r| r.name == region) {
            deployment
                .wan
                .set_pair_fault(&r.client_label(), &other.name, fault);
        }
    }
}

/// How many entries a controller's audit log holds (read directly).
async fn audit_len(addr: SocketAddr) -> Option<usize> {
    let client = tern_controller::ControllerClient::new(vec![addr], Duration::from_secs(1));
    client.events(100_000).await.ok().map(|v| v.events.len())
}

/// The audit log from any reachable controller, in lab time.
async fn control_facts(deployment: &Deployment, clock: &Clock) -> ControlFacts {
    let addrs: Vec<SocketAddr> = deployment
        .controller_addrs()
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    if addrs.is_empty() {
        return ControlFacts::default();
    }
    // Prefer a node in quorum: it has the committed history.
    for addr in &addrs {
        let client = tern_controller::ControllerClient::new(vec![*addr], Duration::from_secs(2));
        let Ok(view) = client.events(100_000).await else {
            continue;
        };
        if !view.in_quorum {
            continue;
        }
        let mut audit: Vec<(f64, String, String, Vec<String>)> = view
            .events
            .into_iter()
            .map(|e| {
                (
                    clock.lab_ms_of_unix(e.at.as_millis() as f64),
                    e.kind,
                    e.summary,
                    e.evidence,
                )
            })
            .collect();
        audit.reverse();
        return ControlFacts {
            audit,
            fetched: true,
            minority_decisions: None,
        };
    }
    ControlFacts::default()
}

/// Waits until the controllers have a leader with a quorum and every edge
/// holds a committed routing table.
async fn wait_for_control(deployment: &Deployment, admins: &[(String, SocketAddr)]) -> Result<()> {
    let addrs: Vec<SocketAddr> = deployment
        .controller_addrs()
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let controllers = tern_controller::ControllerClient::new(addrs, Duration::from_secs(1));
    let client = admin_client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let quorum = controllers
            .status()
            .await
            .is_ok_and(|s| s.in_quorum && s.leader.is_some());
        let mut tables = true;
        for (_, admin) in admins {
            tables &= get_status(&client, *admin)
                .await
                .is_some_and(|s| s["routing"]["version"].as_u64().unwrap_or(0) >= 1);
        }
        if quorum && tables {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the controllers elected no leader, or edges got no routing table, within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type AdminClient = Client<HttpConnector, Empty<Bytes>>;

fn admin_client() -> AdminClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn get_status(client: &AdminClient, admin: SocketAddr) -> Option<serde_json::Value> {
    let req = http::Request::get(format!("http://{admin}/status"))
        .body(Empty::new())
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_millis(500), client.request(req))
        .await
        .ok()?
        .ok()?;
    let body = tokio::time::timeout(Duration::from_millis(500), resp.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    serde_json::from_slice(&body).ok()
}

/// Waits until every edge has completed a successful probe of every backend,
/// so the load starts on a deployment that is known to work.
async fn wait_until_probed(admins: &[(String, SocketAddr)]) -> Result<()> {
    let client = admin_client();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut all = true;
        for (_, admin) in admins {
            let probed = get_status(&client, *admin).await.is_some_and(|s| {
                s["services"].as_array().is_some_and(|svcs| {
                    svcs.iter().all(|svc| {
                        svc["backends"].as_array().is_some_and(|bs| {
                            bs.iter()
                                .all(|b| b["health"] == "up" && b["rtt_ms"].is_number())
                        })
                    })
                })
            });
            all &= probed;
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("edges did not see every backend healthy within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls every edge's `/status` and records each change of the regions it
/// routes to, with the time the edge itself reports for the change.
async fn monitor_routing(
    admins: Vec<(String, SocketAddr)>,
    clock: Arc<Clock>,
    routing: Arc<Mutex<Vec<RoutingSample>>>,
    current: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
    stop: CancellationToken,
) {
    let client = admin_client();
    let mut last: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
    loop {
        for (region, admin) in &admins {
            let Some(status) = get_status(&client, *admin).await else {
                current
                    .lock()
                    .expect("routing lock")
                    .insert(region.clone(), vec!["(down)".into()]);
                // An edge that does not answer its admin API is recorded as
                // unreachable once, from the moment the lab noticed.
                if last.get(region).is_none_or(|(s, _)| !s.is_empty()) {
                    last.insert(region.clone(), (Vec::new(), 0));
                    routing.lock().expect("routing lock").push(RoutingSample {
                        edge_region: region.clone(),
                        serving_regions: Vec::new(),
                        since_ms: clock.ms(),
                        reachable: false,
                    });
                }
                continue;
            };
            let Some(svc) = status["services"].get(0) else {
                continue;
            };
            let serving: Vec<String> = svc["serving_regions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let since = svc["serving_since_unix_ms"].as_u64().unwrap_or(0);
            current
                .lock()
                .expect("routing lock")
                .insert(region.clone(), serving.clone());
            let changed = last
                .get(region)
                .is_none_or(|(s, t)| *s != serving || *t != since);
            if changed {
                last.insert(region.clone(), (serving.clone(), since));
                routing.lock().expect("routing lock").push(RoutingSample {
                    edge_region: region.clone(),
                    serving_regions: serving,
                    since_ms: clock.lab_ms_of_unix(since as f64),
                    reachable: true,
                });
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

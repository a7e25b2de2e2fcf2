//! One run of a scenario: start the deployment, wait until it is ready,
//! drive load from every region while the scenario's steps break and heal
//! it ([`drive`]), then hand the clients' records and the nodes' contents
//! to the oracle and write the report. A task of its own ([`collect`])
//! gathers the records and prints the live line on time meanwhile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::args::{LabArgs, Outcome};
use crate::clock::Clock;
use crate::control::{audit_len, control_facts, wait_for_control, wait_for_writes};
use crate::dns_client::{self, DnsRequestRecord};
use crate::load::{self, ClientSpec, RequestRecord};
use crate::report::{self, Event, Moments, Report, RoutingSample};
use crate::scenario::{Action, Scenario, Step};
use crate::topology::{default_regions, DbSettings, Deployment, EdgeTuning};
use crate::wan::Fault;
use crate::watch::{self, monitor_routing, wait_until_probed};
use crate::{db_report, dbrun, dns_report, html, postgres, process};

/// Runs one scenario end to end.
///
/// However the run ends, every process it started is stopped and its
/// directory removed, unless `--keep-dir`: with a report, with an error,
/// with a panic that unwinds, and on SIGTERM, SIGINT or SIGHUP. After such a
/// signal the lab cleans up, then ends the process by that same signal, as
/// a Unix tool does, so that whoever started it sees how it ended (a second
/// signal while it stops kills the processes instead of waiting for them).
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
    let db = db_settings(&args.db, postgres::pg_bin_dir())?;
    if db.is_none() && args.db == "auto" {
        println!(
            "PostgreSQL server binaries not found (on PATH or under /usr/lib/postgresql/*/bin): running without the database"
        );
    }
    if scenario.needs_db && db.is_none() {
        bail!(
            "scenario {} is about the database and needs it (--db sync or async, and PostgreSQL installed)",
            scenario.name
        );
    }
    if args.unsafe_no_self_fence {
        // Read by the agents this lab starts.
        std::env::set_var(tern_proto::UNSAFE_NO_SELF_FENCE, "1");
    }
    let binary = match &args.tern_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("find the tern binary")?,
    };
    // Caught before the directory exists, so that none of them can end the
    // process between its creation and its removal.
    let mut signals = Signals::install()?;
    let dir = LabDir::create(args.keep_dir)?;
    println!(
        "tern lab: scenario {} (seed {}), regions us-east 127.0.1.0/24, us-west 127.0.2.0/24, witness 127.0.3.0/24, {} ms one way between regions",
        scenario.name, args.seed, args.delay_ms
    );
    println!(
        "starting: {}sample service, edge, agent and controller in each serving region, a controller and an agent at the witness, WAN emulator (in {})",
        match &db {
            Some(d) => format!(
                "PostgreSQL ({} replication: primary in us-east, standby in us-west by base backup across the WAN), ",
                if d.sync { "synchronous" } else { "asynchronous" }
            ),
            None => String::new(),
        },
        dir.path.display()
    );
    let ended = run_in(&args, &scenario, db, &binary, &dir.path, &mut signals).await;
    // Every process of the lab has stopped.
    if args.keep_dir {
        say(&format!("lab directory kept: {}", dir.path.display()));
    }
    let path = dir.path.clone();
    drop(dir);
    let (result, https) = match ended {
        Ended::Signal(signal) => {
            say(&format!(
                "tern lab: {}: every process stopped; {}",
                signal_name(signal),
                if args.keep_dir {
                    format!("{} kept", path.display())
                } else {
                    format!("{} removed", path.display())
                }
            ));
            end_by(signal);
            bail!("stopped by {}", signal_name(signal));
        }
        Ended::Ran { report, https } => (report, https),
    };
    let mut report = (*result)?;
    report.targets.https_at_every_edge = Some(!https.is_empty() && https.iter().all(|c| c.ok));
    report.https = https;
    report.summary = report.verdict_line();
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
    // The last line of every run, to be quoted as it is.
    println!("{}", report.summary);
    Ok(Outcome {
        report,
        check: args.check,
    })
}

/// The database of a run from `--db` and the PostgreSQL binaries found:
/// `auto` is synchronous replication when PostgreSQL is installed (the
/// configuration a payments service needs: nothing acknowledged is lost),
/// none otherwise.
fn db_settings(mode: &str, bin: Option<std::path::PathBuf>) -> Result<Option<DbSettings>> {
    Ok(match (mode, bin) {
        ("off", _) | ("auto", None) => None,
        ("auto" | "sync", Some(bin)) => Some(DbSettings { bin, sync: true }),
        ("async", Some(bin)) => Some(DbSettings { bin, sync: false }),
        (mode, None) => bail!(
            "--db {mode} needs PostgreSQL server binaries (on PATH or under /usr/lib/postgresql/*/bin)"
        ),
        (mode, Some(_)) => bail!("--db {mode}: expected auto, sync, async or off"),
    })
}

/// How [`run_in`] ended.
enum Ended {
    /// The run went to its end, or failed; the HTTPS checks made before the load.
    Ran {
        report: Box<Result<Report>>,
        https: Vec<crate::https::HttpsCheck>,
    },
    /// A signal stopped it (its number).
    Signal(i32),
}

/// Starts the deployment in `dir`, runs the scenario and stops every
/// process, whatever happens meanwhile.
async fn run_in(
    args: &LabArgs,
    scenario: &Scenario,
    db: Option<DbSettings>,
    binary: &std::path::Path,
    dir: &std::path::Path,
    signals: &mut Signals,
) -> Ended {
    let tuning = EdgeTuning {
        retries: !args.no_edge_retries,
        dns_ttl: Duration::from_secs(args.dns_ttl_s),
        ..lab_tuning(args)
    };
    let delay = Duration::from_millis(args.delay_ms);
    // A signal while it starts drops the start: the processes it started
    // die with their handles.
    let mut deployment = tokio::select! {
        d = Deployment::start(binary, dir, default_regions(), delay, tuning, db) => match d {
            Ok(d) => d,
            Err(e) => return Ended::Ran { report: Box::new(Err(e)), https: Vec::new() },
        },
        signal = signals.recv() => {
            say(&format!("tern lab: {} while starting; stopping every process", signal_name(signal)));
            return Ended::Signal(signal);
        }
    };
    let mut https = Vec::new();
    let mut stopped_by = None;
    let result = tokio::select! {
        r = async {
            https = check_https(&deployment).await;
            drive(&mut deployment, scenario, args).await
        } => r,
        signal = signals.recv() => {
            say(&format!("tern lab: {}; stopping every process", signal_name(signal)));
            stopped_by = Some(signal);
            Err(anyhow::anyhow!("stopped by {}", signal_name(signal)))
        }
    };
    if let (Err(e), None) = (&result, stopped_by) {
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
    tokio::select! {
        () = deployment.shutdown() => {}
        signal = signals.recv() => {
            say(&format!("tern lab: {} again; killing every process", signal_name(signal)));
            stopped_by.get_or_insert(signal);
        }
    }
    // Whatever the shutdown left running dies with its handle here.
    drop(deployment);
    match stopped_by {
        Some(signal) => Ended::Signal(signal),
        None => Ended::Ran {
            report: Box::new(result),
            https,
        },
    }
}

/// Every edge over HTTPS, as a client that trusts only the lab's CA.
async fn check_https(deployment: &Deployment) -> Vec<crate::https::HttpsCheck> {
    let mut https = Vec::new();
    for rt in &deployment.serving {
        let c = crate::https::check(&rt.spec.name, rt.https_addr, &deployment.ca_file).await;
        println!(
            "https: {} {} at {} ({}), trusting {}",
            c.region,
            c.url,
            c.addr,
            if c.ok {
                c.detail.clone()
            } else {
                format!("FAILED: {}", c.detail)
            },
            deployment.ca_file.display()
        );
        https.push(c);
    }
    https
}

/// The signals that end a lab early, caught for the whole run.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("catch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("catch SIGINT")?,
            hup: signal(SignalKind::hangup()).context("catch SIGHUP")?,
        })
    }

    /// The next of them to arrive (its number).
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.int.recv() => libc::SIGINT,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Ends the process by `signal`, its default action restored (the lab has
/// cleaned up by then). Returns only if the signal did not end it.
fn end_by(signal: i32) {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    // SAFETY: plain syscalls; the handler is replaced by the default action,
    // which ends the process, before the signal is raised again.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// A line on stdout that never panics: after SIGHUP the terminal may be gone.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// The lab's directory (configurations, logs, the databases' data): removed
/// when dropped, whether the run ended well, with an error or with a
/// panic, unless it is to be kept.
struct LabDir {
    path: std::path::PathBuf,
    keep: bool,
}

impl LabDir {
    fn create(keep: bool) -> Result<LabDir> {
        let dir = tempfile::Builder::new()
            .prefix("tern-lab-")
            .tempdir()
            .context("create the lab directory")?;
        Ok(LabDir {
            path: dir.keep(),
            keep,
        })
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // A process killed a moment ago may still be writing its last
        // file: try again until the directory is gone, for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::remove_dir_all(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("tern lab: could not remove {}: {e}", self.path.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// The load of a run while it goes: the task collecting the clients'
/// records (and printing the progress line) and the edges' routing as the
/// monitor sees it.
struct Load {
    stop: CancellationToken,
    collector: JoinHandle<Collected>,
    /// HTTP clients started, and DNS clients by how they treat TTLs.
    http_clients: usize,
    dns_clients: BTreeMap<&'static str, usize>,
    routing: Arc<Mutex<Vec<RoutingSample>>>,
    monitor: JoinHandle<()>,
}

/// Starts the HTTP clients, the DNS clients and the routing monitor.
fn start_load(
    deployment: &Deployment,
    client_paths: &[(String, Vec<load::EdgePath>)],
    admins: &[(String, SocketAddr)],
    args: &LabArgs,
    clock: &Arc<Clock>,
) -> Load {
    let t0 = clock.t0();
    let stop = CancellationToken::new();
    let (tx, records) = mpsc::unbounded_channel::<RequestRecord>();
    let mut id = 0;
    for (region, edges) in client_paths {
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
    let (dns_tx, dns_records) = mpsc::unbounded_channel::<DnsRequestRecord>();
    let dns_clients = spawn_dns_clients(deployment, client_paths, args, t0, &stop, dns_tx);
    let routing: Arc<Mutex<Vec<RoutingSample>>> = Arc::default();
    let current: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let monitor = tokio::spawn(monitor_routing(
        admins.to_vec(),
        clock.clone(),
        routing.clone(),
        current.clone(),
        stop.clone(),
    ));
    let collector = tokio::spawn(collect(
        records,
        dns_records,
        Progress {
            t0: tokio::time::Instant::from_std(t0),
            every: Duration::from_secs(1),
            writes_apart: deployment.db.is_some(),
            routes: current,
        },
        stop.clone(),
        |line| say(&line),
    ));
    Load {
        stop,
        collector,
        http_clients: id,
        dns_clients,
        routing,
        monitor,
    }
}

/// When the scenario's faults began and healed, and what the controller
/// cut off by a partition decided meanwhile: what the steps leave behind
/// for the oracle.
#[derive(Default)]
struct Faults {
    fault_ms: Option<f64>,
    /// When a killed region's last process was dead.
    dark_ms: Option<f64>,
    restore_ms: Option<f64>,
    /// Audit-log length of the cut-off controller when the partition began.
    minority_at_cut: Option<(SocketAddr, usize)>,
    minority_decisions: Option<usize>,
    /// When a drill scenario's breach started.
    breach_ms: Option<f64>,
}

/// Has `region`'s sample service fail `share` of its item and root
/// requests (`POST /admin/errors`).
async fn inject_errors(deployment: &Deployment, region: &str, share: f64) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = deployment
        .serving
        .iter()
        .find(|r| r.spec.name == region)
        .map(|r| r.service_addr)
        .ok_or_else(|| anyhow::anyhow!("no serving region {region}"))?;
    let body = format!("{{\"share\": {share}}}");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "POST /admin/errors HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.1 200") {
        anyhow::bail!("{region}'s service refused the error injection: {text}");
    }
    Ok(())
}

/// Carries out one step of the scenario.
async fn apply_step(
    deployment: &mut Deployment,
    step: &Step,
    clock: &Clock,
    faults: &mut Faults,
) -> Result<()> {
    match &step.action {
        Action::Cut(region, fault) => {
            faults.fault_ms.get_or_insert(clock.ms());
            deployment.wan.set_region_fault(region, *fault);
        }
        Action::Kill(region) => {
            faults.fault_ms.get_or_insert(clock.ms());
            deployment.kill_region(region).await?;
            faults.dark_ms.get_or_insert(clock.ms());
        }
        Action::Restore(region) => {
            // The WAN heals first: a rejoining database reaches the new primary.
            // The region is back from the moment its first process starts: a
            // request it serves while the rest starts belongs after the outage.
            faults.restore_ms = Some(clock.ms());
            deployment.wan.set_region_fault(region, Fault::None);
            deployment.restart_region(region).await?;
        }
        Action::Switchover(to) => {
            faults.fault_ms.get_or_insert(clock.ms());
            let id = dbrun::switchover(deployment, to).await?;
            println!("{} switchover plan {id} committed", clock.stamp());
        }
        Action::Partition(region) => {
            faults.fault_ms.get_or_insert(clock.ms());
            let addr = deployment
                .controller_addrs()
                .into_iter()
                .find(|(r, _)| r == region)
                .map(|(_, a)| a);
            if let Some(addr) = addr {
                if let Some(n) = audit_len(deployment, addr).await {
                    faults.minority_at_cut = Some((addr, n));
                }
            }
            deployment.partition(region, Fault::Blackhole);
        }
        Action::Heal(region) => {
            if let Some((addr, before)) = faults.minority_at_cut {
                faults.minority_decisions = audit_len(deployment, addr)
                    .await
                    .map(|n| n.saturating_sub(before));
            }
            deployment.partition(region, Fault::None);
            faults.restore_ms = Some(clock.ms());
        }
        Action::Flap {
            region,
            period,
            down_for,
            duration,
        } => {
            faults.fault_ms.get_or_insert(clock.ms());
            faults.restore_ms = Some(clock.ms() + duration.as_secs_f64() * 1_000.0);
            let store = deployment.store_file(region);
            let (period, down_for) = (*period, *down_for);
            let start = tokio::time::Instant::now();
            let until = start + *duration;
            tokio::spawn(async move {
                // Deadlines from the start, not sleeps in a row: a late
                // wake-up must not stretch every later phase.
                let mut cycle_start = start;
                while cycle_start < until {
                    tokio::time::sleep_until(cycle_start).await;
                    let _ = std::fs::remove_file(&store);
                    tokio::time::sleep_until(cycle_start + down_for).await;
                    let _ = std::fs::write(&store, b"ok");
                    cycle_start += period;
                }
                let _ = std::fs::write(&store, b"ok");
            });
        }
        Action::KillAgent(region) => {
            faults.fault_ms.get_or_insert(clock.ms());
            deployment.kill_agent(region).await?;
        }
        Action::StartAgent(region) => {
            faults.restore_ms = Some(clock.ms());
            deployment.restart_agent(region).await?;
        }
        Action::KillControllers => {
            faults.fault_ms.get_or_insert(clock.ms());
            deployment.kill_controllers().await;
        }
        Action::StartControllers => {
            deployment.start_controllers().await?;
            faults.restore_ms = Some(clock.ms());
        }
        Action::RestartController(region) => {
            faults.fault_ms.get_or_insert(clock.ms());
            deployment.restart_controller(region).await?;
        }
        Action::RestartAgent(region) => {
            faults.fault_ms.get_or_insert(clock.ms());
            deployment.restart_agent_gracefully(region).await?;
        }
        Action::RestartEdge(region) => {
            faults.fault_ms.get_or_insert(clock.ms());
            deployment.restart_edge(region).await?;
        }
        Action::StartDrill(spec) => {
            faults.fault_ms.get_or_insert(clock.ms());
            let id = dbrun::start_drill(deployment, spec).await?;
            println!("{} drill {id} committed", clock.stamp());
        }
        Action::InjectErrors { region, per_mille } => {
            if *per_mille > 0 {
                faults.breach_ms.get_or_insert(clock.ms());
            }
            inject_errors(deployment, region, f64::from(*per_mille) / 1000.0).await?;
        }
    }
    Ok(())
}

/// Waits until the deployment is ready, runs the load through the
/// scenario's steps, and judges the run.
async fn drive(deployment: &mut Deployment, scenario: &Scenario, args: &LabArgs) -> Result<Report> {
    let admins: Vec<(String, SocketAddr)> = deployment
        .serving
        .iter()
        .map(|rt| (rt.spec.name.clone(), rt.admin_addr))
        .collect();
    wait_until_probed(&admins).await?;
    wait_for_control(deployment, &admins).await?;
    wait_for_writes(deployment).await?;

    let client_paths = deployment.client_paths(Duration::from_micros(500)).await?;
    let clock = Arc::new(Clock::start());
    let t0 = clock.t0();
    let load = start_load(deployment, &client_paths, &admins, args, &clock);
    // However this ends (a failed step, a signal dropping it), the clients
    // and the progress line stop with it.
    let _stop_load = load.stop.clone().drop_guard();

    let mut events = vec![Event {
        t_ms: 0.0,
        what: "load starts".into(),
    }];
    println!(
        "{} steady: load from {} clients in each serving region",
        clock.stamp(),
        args.clients_per_region
    );
    // The steps, each at its time; the progress line is the collector's,
    // on time however long a step takes.
    let mut faults = Faults::default();
    for step in &scenario.steps {
        tokio::time::sleep_until((t0 + step.at).into()).await;
        // The event is stamped when the step starts, as the terminal's line
        // is: a region's restart takes seconds to finish.
        let started_ms = clock.ms();
        println!("{} {}", clock.stamp(), step.label);
        apply_step(deployment, step, &clock, &mut faults).await?;
        events.push(Event {
            t_ms: started_ms,
            what: step.label.clone(),
        });
    }
    tokio::time::sleep_until((t0 + scenario.duration).into()).await;
    load.stop.cancel();
    let end_ms = clock.ms();
    // Clients finish the request in hand; the collector gathers those records too.
    let Collected {
        mut records,
        dns_records,
    } = load.collector.await.context("the records' collector")?;
    let _ = load.monitor.await;
    let probe_failures = watch::probe_failures(&admins).await;
    events.push(Event {
        t_ms: end_ms,
        what: "load stops".into(),
    });
    records.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    let routing = load.routing.lock().expect("routing lock").clone();
    judge(
        deployment,
        scenario,
        args,
        &clock,
        Judged {
            records,
            dns_records,
            routing,
            events,
            faults,
            end_ms,
            http_clients: load.http_clients,
            dns_clients: load.dns_clients,
            probe_failures,
        },
    )
    .await
}

/// What a run leaves for the oracle.
struct Judged {
    records: Vec<RequestRecord>,
    dns_records: Vec<DnsRequestRecord>,
    routing: Vec<RoutingSample>,
    events: Vec<Event>,
    faults: Faults,
    end_ms: f64,
    http_clients: usize,
    dns_clients: BTreeMap<&'static str, usize>,
    /// Failed health probes by edge region, then backend region.
    probe_failures: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Hands the run's records, the nodes' contents and the controllers' audit
/// log to the oracle.
async fn judge(
    deployment: &Deployment,
    scenario: &Scenario,
    args: &LabArgs,
    clock: &Clock,
    run: Judged,
) -> Result<Report> {
    let Judged {
        records,
        mut dns_records,
        routing,
        events,
        faults,
        end_ms,
        http_clients,
        dns_clients,
        probe_failures,
    } = run;
    let Faults {
        fault_ms,
        dark_ms,
        restore_ms,
        minority_decisions,
        breach_ms,
        ..
    } = faults;
    // With the database, payments are the write load, counted apart from
    // the HTTP requests the same way as the live line counts them: the
    // write oracle judges them; the HTTP figures are about the rest.
    let writes_apart = deployment.db.is_some();
    let (writes, records): (Vec<RequestRecord>, Vec<RequestRecord>) = records
        .into_iter()
        .partition(|r| report::is_write(r, writes_apart));
    // Before the fault nothing may fail, writes included: requests that
    // ended before it (one in flight at the fault is the fault's).
    let failed_before_fault: Vec<String> = fault_ms.map_or(Vec::new(), |fault| {
        let mut failed: Vec<&RequestRecord> = records
            .iter()
            .filter(|r| !r.ok)
            .chain(writes.iter().filter(|w| !report::write_acked(w)))
            .filter(|r| r.end_ms() < fault)
            .collect();
        failed.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        failed
            .into_iter()
            .map(|r| {
                format!(
                    "{:.0} ms {} client {}: {}",
                    r.start_ms,
                    r.method,
                    r.client_region,
                    r.error.clone().unwrap_or_else(|| format!(
                        "status {} from {}",
                        r.status.map_or("none".into(), |s| s.to_string()),
                        r.served_by.as_deref().unwrap_or("the edge itself")
                    ))
                )
            })
            .collect()
    });
    let mut facts = control_facts(deployment, clock).await;
    facts.minority_decisions = minority_decisions;
    // What the agents did to their nodes on their own (fence, restart,
    // rejoin) goes on the timeline, as the controllers' audit log has it.
    let mut events = events;
    for (t_ms, kind, summary, _) in &facts.audit {
        if kind.starts_with("node-") && *t_ms >= 0.0 && *t_ms <= end_ms {
            events.push(Event {
                t_ms: *t_ms,
                what: summary.clone(),
            });
        }
    }
    events.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    let write_outcome = match &deployment.db {
        Some(_) => Some(dbrun::write_report(deployment, &writes, fault_ms).await),
        None => None,
    };
    dns_records.retain(|r| !report::is_write(&r.record, writes_apart));
    let mut report = report::build(report::Inputs {
        scenario: scenario.name,
        seed: args.seed,
        failed_region: scenario.failed_region.as_deref(),
        one_way_delay_ms: args.delay_ms,
        records: &records,
        writes: &writes,
        routing: &routing,
        moments: Moments {
            fault_ms,
            dark_ms,
            restore_ms,
            end_ms,
        },
        events,
        failed_before_fault,
    });
    if !dns_clients.is_empty() {
        let tuning = lab_tuning(args);
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
            http_clients,
            dns_clients,
            failed_region: scenario.failed_region.as_deref(),
            fault_ms,
            restore_ms,
            end_ms,
            http_detection_ms: report.detection_ms,
        }));
    }
    report.settings = lab_tuning(args).describe();
    report.judge_detection_by_clients(report::clients_detection(
        &records,
        scenario.failed_region.as_deref(),
        fault_ms,
        lab_tuning(args).try_timeout_ms as f64,
    ));
    report.probe_failures = probe_failures;
    report.add_control(facts);
    if let Some(drill) = dbrun::last_drill(deployment).await {
        let window_ms = drill.spec.guardrails.window.as_millis() as f64;
        report.add_drill(
            crate::drill_report::judge(&drill, clock, &records, breach_ms, end_ms),
            window_ms,
        );
    }
    if let Some(w) = write_outcome {
        let w: db_report::WriteOutcome = w.context("the write oracle")?;
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
    out: mpsc::UnboundedSender<DnsRequestRecord>,
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

/// How [`collect`] reports progress while the load runs.
struct Progress {
    /// Lab time zero, on tokio's clock (`tokio::time::Instant::from_std`
    /// of the lab's clock).
    t0: tokio::time::Instant,
    /// Time between two progress lines.
    every: Duration,
    /// Whether payments are writes, counted apart ([`crate::report::Tally`]).
    writes_apart: bool,
    /// Each edge's current first-choice regions, as the routing monitor last saw them.
    routes: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
}

/// Every record of a run's clients, as [`collect`] gathered them.
#[derive(Debug, Default)]
struct Collected {
    records: Vec<RequestRecord>,
    dns_records: Vec<DnsRequestRecord>,
}

/// Gathers the HTTP clients' and the DNS clients' records until both
/// channels close (every client stopped and handed in the request it had in
/// hand), and hands `out` a progress line every `progress.every` until
/// `stop`, then one with the totals. Run it as a task of its own: its ticks
/// depend on nothing else the lab does (a step that takes seconds, such as a
/// region's restart, holds up no line), and a tick it missed is skipped, not
/// made up in a burst.
async fn collect(
    mut records: mpsc::UnboundedReceiver<RequestRecord>,
    mut dns_records: mpsc::UnboundedReceiver<DnsRequestRecord>,
    progress: Progress,
    stop: CancellationToken,
    mut out: impl FnMut(String) + Send,
) -> Collected {
    use crate::report::{load_stopped_line, progress_line, Tally};
    let mut ticker = tokio::time::interval_at(progress.t0 + progress.every, progress.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut collected = Collected::default();
    let mut total = Tally::default();
    let (mut last, mut last_at) = (total, progress.t0);
    let (mut http_open, mut dns_open, mut ticking) = (true, true, true);
    while http_open || dns_open {
        tokio::select! {
            r = records.recv(), if http_open => match r {
                Some(r) => {
                    total.add(&r, progress.writes_apart);
                    collected.records.push(r);
                }
                None => http_open = false,
            },
            r = dns_records.recv(), if dns_open => match r {
                Some(r) => collected.dns_records.push(r),
                None => dns_open = false,
            },
            _ = stop.cancelled(), if ticking => ticking = false,
            now = ticker.tick(), if ticking => {
                let routes = progress.routes.lock().expect("routing lock").clone();
                out(progress_line(
                    now - progress.t0,
                    now - last_at,
                    &total.since(&last),
                    &total,
                    progress.writes_apart,
                    &routes,
                ));
                (last, last_at) = (total, now);
            }
        }
    }
    out(load_stopped_line(
        tokio::time::Instant::now() - progress.t0,
        &total,
        progress.writes_apart,
    ));
    collected
}

/// The edges' health settings of a run: the lab's fast ones, or the
/// product's defaults with `--product-defaults`.
fn lab_tuning(args: &LabArgs) -> EdgeTuning {
    if args.product_defaults {
        EdgeTuning::product_defaults()
    } else {
        EdgeTuning::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{PaymentAck, PaymentRecord};
    fn record(start_ms: f64, ok: bool, payment: Option<bool>) -> RequestRecord {
        RequestRecord {
            start_ms,
            latency_ms: 5.0,
            client_region: "us-west".into(),
            method: if payment.is_some() { "POST" } else { "GET" },
            status: Some(if ok { 200 } else { 503 }),
            ok,
            edge_region: Some("us-west".into()),
            served_by: ok.then(|| "us-west".to_string()),
            edges_tried: 1,
            error: None,
            payment: payment.map(|acked| PaymentRecord {
                key: format!("k{start_ms}"),
                ack: acked.then(|| PaymentAck {
                    id: start_ms as i64,
                    node: "us-west".into(),
                    timeline: "00000002".into(),
                    written_at_ms: 0,
                    replay: false,
                }),
            }),
        }
    }

    /// Broke when the progress line was printed by the loop that also
    /// carried out the scenario's steps: a region's restart held it for
    /// 3 to 4 s, then it printed a burst of lines with one timestamp.
    #[tokio::test(start_paused = true)]
    async fn progress_ticks_on_time_while_the_lab_is_busy_elsewhere() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (_dns_tx, dns_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let t0 = tokio::time::Instant::now();
        let collector = tokio::spawn(collect(
            rx,
            dns_rx,
            Progress {
                t0,
                every: Duration::from_secs(1),
                writes_apart: true,
                routes: Arc::default(),
            },
            stop.clone(),
            move |l| sink.lock().unwrap().push(l),
        ));
        tx.send(record(100.0, true, None)).unwrap();
        // The rest of the lab is busy for 4.5 s (a restart) and sends nothing.
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        tx.send(record(4_600.0, false, Some(false))).unwrap();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        stop.cancel();
        drop(tx);
        drop(_dns_tx);
        let collected = collector.await.unwrap();
        assert_eq!(collected.records.len(), 2);
        let lines = lines.lock().unwrap().clone();
        let stamps: Vec<&str> = lines.iter().map(|l| &l[..8]).collect();
        assert_eq!(
            stamps,
            ["[  1.0s]", "[  2.0s]", "[  3.0s]", "[  4.0s]", "[  5.0s]", "[  5.5s]"],
            "{lines:#?}"
        );
        assert!(
            lines[0].contains("http    1 req/s, 0 failed so far"),
            "{}",
            lines[0]
        );
        assert!(
            lines[4].contains("writes   1/s, 1 failed so far"),
            "{}",
            lines[4]
        );
        assert!(
            lines[5].contains(
                "http requests 1 sent, 0 failed; writes 1 sent, 0 acknowledged, 1 failed"
            ),
            "{}",
            lines[5]
        );
    }

    /// Broke when the lab's default database replicated asynchronously: a
    /// first run printed lost acknowledged writes beside "target met",
    /// while a payments service wants nothing acknowledged lost.
    #[test]
    fn the_default_database_replicates_synchronously() {
        let bin = || Some(std::path::PathBuf::from("/usr/lib/postgresql/17/bin"));
        let sync = |mode: &str| db_settings(mode, bin()).unwrap().map(|d| d.sync);
        assert_eq!(sync(&LabArgs::default().db), Some(true));
        assert_eq!(sync("sync"), Some(true));
        assert_eq!(sync("async"), Some(false));
        assert_eq!(sync("off"), None);
        // Without PostgreSQL the default runs without the database; asking
        // for one is an error.
        assert!(db_settings("auto", None).unwrap().is_none());
        assert!(db_settings("sync", None).is_err());
    }
}

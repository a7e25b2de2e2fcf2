//! The agents' database loops with real PostgreSQL servers and a real
//! controller group (DESIGN.md invariants 1 and 2): one writer per epoch
//! (the old primary fences itself before a new epoch can exist), and
//! nothing acknowledged lost in synchronous mode. The test plays the
//! vantage points' probes; everything else is the real thing.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{workdir, PgNode};
use tern_agent::db::DbAgent;
use tern_agent::metrics::AgentMetrics;
use tern_agent::writer_proxy::{Target, WriterProxy};
use tern_controller::node::NodeOptions;
use tern_controller::Controller;
use tern_core::config::Config;
use tern_core::failover::Step;
use tern_proto::api::{ObservationBatch, RegionResult};
use tern_proto::ControllerClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

const LEASE_MS: u64 = 1500;
const DRIFT_MS: u64 = 300;

/// A relay that can be cut: connections stay open and carry nothing.
struct Link {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Link {
    async fn start(target: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    if flag.load(Ordering::SeqCst) {
                        // Blackholed: hold the connection silently.
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        drop(inbound);
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut ar, mut aw) = inbound.into_split();
                    let (mut br, mut bw) = outbound.into_split();
                    let f1 = flag.clone();
                    let up = async move {
                        let mut buf = vec![0u8; 16384];
                        while let Ok(n) = ar.read(&mut buf).await {
                            if n == 0 || f1.load(Ordering::SeqCst) {
                                break;
                            }
                            if bw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        // Cut: keep the write side open, send nothing.
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 16384];
                        while let Ok(n) = br.read(&mut buf).await {
                            if n == 0 || flag.load(Ordering::SeqCst) {
                                break;
                            }
                            if aw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    };
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
            }
        });
        Link { addr, cut }
    }
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// A node's table of the configuration: where it listens, and what its
/// agent needs to stop and start it.
fn node_toml(region: &str, node: &PgNode) -> String {
    format!(
        "[[database.payments.node]]\nregion = \"{region}\"\naddr = \"127.0.0.1:{}\"\nproxy = \"127.0.0.1:0\"\n\
         data_dir = {:?}\nbin_dir = {:?}\nserver_args = {:?}\n",
        node.port,
        node.data.display().to_string(),
        common::bin_dir().display().to_string(),
        node.server_args(),
    )
}

fn config(
    controllers: &[SocketAddr],
    east: &PgNode,
    west: &PgNode,
    sync: bool,
    scale_hook: Option<&str>,
) -> Config {
    let mut s = String::new();
    for (r, serves) in [("east", true), ("west", true), ("witness", false)] {
        s.push_str(&format!(
            "[[region]]\nname = \"{r}\"\nserves_traffic = {serves}\n"
        ));
    }
    s.push_str(
        "[service.api]\npolicy = \"failover\"\n\
         [[service.api.backend]]\nregion = \"east\"\nurl = \"http://127.0.0.1:9\"\n\
         [[service.api.backend]]\nregion = \"west\"\nurl = \"http://127.0.0.1:9\"\n\
         [controller]\nheartbeat = \"50ms\"\nelection_timeout = \"300ms\"\nrpc_timeout = \"200ms\"\n",
    );
    for (i, a) in controllers.iter().enumerate() {
        s.push_str(&format!(
            "[[controller.node]]\nid = {}\nregion = \"{}\"\naddr = \"{a}\"\n",
            i + 1,
            ["east", "west", "witness"][i]
        ));
    }
    s.push_str(
        "[verdict]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nfall = 3\nrise = 3\nhold_down = \"300ms\"\n",
    );
    s.push_str(&format!(
        "[database.payments]\nreplication = \"{}\"\nrpo_budget = \"16MiB\"\nlease = \"{LEASE_MS}ms\"\n\
         drift_margin = \"{DRIFT_MS}ms\"\nprimary = \"east\"\nstep_timeout = \"5s\"\n{}{}",
        if sync { "sync" } else { "async" },
        node_toml("east", east),
        node_toml("west", west),
    ));
    if let Some(hook) = scale_hook {
        let at = s.find("[[database.payments.node]]").unwrap();
        s.insert_str(
            at,
            &format!("scale_hook = {hook:?}\nscale_hook_timeout = \"5s\"\n"),
        );
    }
    Config::from_toml("test.toml", &s).expect("test configuration")
}

/// Faults a test injects into east's agent.
#[derive(Default, Clone, Copy)]
struct Faults {
    /// East's agent reads its node through a port nothing listens on: every
    /// SQL status read fails while the node runs.
    east_sql_blind: bool,
    /// East's database loop panics this long after it starts.
    east_panic_after: Option<Duration>,
}

struct Lab {
    _dir: tempfile::TempDir,
    east: PgNode,
    west: PgNode,
    controllers: Vec<Arc<Controller>>,
    /// East's agent reaches the controllers through these.
    east_links: Vec<Link>,
    client: ControllerClient,
    east_stop: CancellationToken,
    /// East's database loop; ends once `east_stop` is cancelled.
    east_agent: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
    west_proxy: WriterProxy,
    east_proxy: WriterProxy,
    /// When the agents were started.
    agents_started: tokio::time::Instant,
    /// East's agent metrics (its database loop and proxy record here).
    east_metrics: AgentMetrics,
}

impl Lab {
    async fn start(sync: bool, fence: bool) -> Lab {
        Lab::start_with(sync, fence, Faults::default()).await
    }

    async fn start_with(sync: bool, fence: bool, faults: Faults) -> Lab {
        let dir = workdir();
        let east = PgNode::primary(dir.path(), "east");
        let setup = connect(&east.conninfo()).await.unwrap();
        setup
            .batch_execute(
                "CREATE TABLE payments (id bigserial PRIMARY KEY, key text UNIQUE NOT NULL, \
                 written_at timestamptz NOT NULL DEFAULT clock_timestamp())",
            )
            .await
            .unwrap();
        if sync {
            for sql in [
                "ALTER SYSTEM SET synchronous_standby_names = '*'",
                "SELECT pg_reload_conf()",
            ] {
                setup.batch_execute(sql).await.unwrap();
            }
        }
        let west = PgNode::standby(dir.path(), "west", &east);

        // Bound here and handed to the controllers, so that no other test
        // takes a port in between.
        let mut addrs = Vec::new();
        let mut listeners = Vec::new();
        for _ in 0..3 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.push(l.local_addr().unwrap());
            listeners.push(l);
        }
        // The scale hook leaves a note of where and in which epoch it ran.
        let note = dir.path().join("scaled");
        let hook = format!(
            "echo \"$TERN_CLUSTER $TERN_REGION $TERN_EPOCH\" > {}",
            note.display()
        );
        let cfg = config(&addrs, &east, &west, sync, sync.then_some(hook.as_str()));
        let mut east_db = cfg.databases[0].clone();
        if faults.east_sql_blind {
            let node = east_db
                .nodes
                .iter_mut()
                .find(|n| n.region == "east")
                .unwrap();
            node.addr = "127.0.0.1:9".parse().unwrap();
        }
        let mut controllers = Vec::new();
        for (i, (a, l)) in addrs.iter().zip(listeners).enumerate() {
            let options = NodeOptions {
                id: i as u64 + 1,
                data_dir: dir.path().join(format!("controller{}", i + 1)),
                listen: Some(*a),
                join: false,
            };
            let wall = tern_controller::clock::WallClock::new();
            controllers.push(
                Controller::start_on(&cfg, options, Some(l), wall)
                    .await
                    .unwrap(),
            );
        }
        let mut east_links = Vec::new();
        for a in &addrs {
            east_links.push(Link::start(*a).await);
        }
        let db = cfg.databases[0].clone();
        let stop = CancellationToken::new();
        let east_stop = stop.child_token();
        let client = ControllerClient::new(addrs.clone(), Duration::from_millis(300));
        let east_client = ControllerClient::new(
            east_links.iter().map(|l| l.addr).collect(),
            Duration::from_millis(300),
        );
        let closed = || Target::Closed {
            reason: "starting".into(),
        };
        let (east_proxy, east_task) =
            WriterProxy::bind("127.0.0.1:0".parse().unwrap(), "payments", closed())
                .await
                .unwrap();
        let (west_proxy, west_task) =
            WriterProxy::bind("127.0.0.1:0".parse().unwrap(), "payments", closed())
                .await
                .unwrap();
        tokio::spawn(east_task.run(east_stop.clone()));
        tokio::spawn(west_task.run(stop.clone()));
        let mut east_agent = DbAgent::new("east", east_db, east_client, Some(east_proxy.clone()))
            .expect("east's agent");
        if !fence {
            east_agent = east_agent.without_self_fence();
        }
        if let Some(after) = faults.east_panic_after {
            east_agent = east_agent.panic_after(after);
        }
        let east_metrics = AgentMetrics::new("east");
        east_metrics.add_proxy("payments", east_proxy.clone());
        let east_agent = east_agent.with_metrics(east_metrics.clone());
        let agents_started = tokio::time::Instant::now();
        let east_agent = tokio::spawn(east_agent.run(east_stop.clone()));
        let west_agent = DbAgent::new("west", db, client.clone(), Some(west_proxy.clone()))
            .expect("west's agent");
        tokio::spawn(west_agent.run(stop.clone()));
        Lab {
            _dir: dir,
            east,
            west,
            controllers,
            east_links,
            client,
            east_stop,
            east_agent: Some(east_agent),
            stop,
            west_proxy,
            east_proxy,
            agents_started,
            east_metrics,
        }
    }

    /// The vantage points other than east see east fail, one round per
    /// verdict interval (as agents probe), until a controller in quorum has
    /// committed the down verdict.
    async fn east_goes_down(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let down = self.controllers.iter().any(|c| {
                let s = c.status();
                s.in_quorum && s.verdicts.get("east").map(String::as_str) == Some("down")
            });
            if down {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "east was never declared down"
            );
            for vantage in ["west", "witness"] {
                let batch = ObservationBatch {
                    vantage: vantage.into(),
                    results: vec![RegionResult {
                        service: None,
                        region: "east".into(),
                        ok: false,
                        latency_ms: None,
                        detail: "test".into(),
                    }],
                };
                let _ = self.client.observe(&batch).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_writer(
        &self,
        region: &str,
        within: Duration,
    ) -> tern_core::failover::ClusterState {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(v) = self.client.clusters().await {
                let c = v.clusters["payments"].clone();
                let settled = c.plan.as_ref().is_none_or(|p| !p.active());
                if c.writer.region == region && c.writer.epoch > 0 && settled {
                    return c;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no writer in {region} within {within:?}: {c:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(self) {
        self.stop.cancel();
        for c in &self.controllers {
            c.shutdown().await;
        }
    }
}

async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// An application writing to a database (see [`writer`]).
struct App {
    /// Ends once stopped, with each acknowledged key and its
    /// acknowledgement time (Unix ms).
    task: tokio::task::JoinHandle<Vec<(String, f64)>>,
    /// How many attempts it has made: a connection that failed, or an
    /// insert sent.
    attempts: watch::Receiver<u64>,
}

impl App {
    /// Waits until it has made `more` attempts from now on.
    async fn tries(&self, more: u64) {
        let mut attempts = self.attempts.clone();
        let from = *attempts.borrow_and_update();
        tokio::time::timeout(
            Duration::from_secs(60),
            attempts.wait_for(|n| *n >= from + more),
        )
        .await
        .expect("the application stopped trying")
        .expect("the application ended");
    }
}

/// An application writing to `conninfo` every 10 ms until `stop`.
fn writer(conninfo: String, prefix: &'static str, stop: CancellationToken) -> App {
    let (attempts, counted) = watch::channel(0u64);
    let task = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut client: Option<tokio_postgres::Client> = None;
        let mut n = 0u64;
        while !stop.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = tokio::time::timeout(Duration::from_millis(500), connect(&conninfo))
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
            if let Some(c) = client.as_ref() {
                n += 1;
                let key = format!("{prefix}-{n}");
                let done = tokio::time::timeout(
                    Duration::from_millis(1000),
                    c.execute("INSERT INTO payments (key) VALUES ($1)", &[&key]),
                )
                .await;
                match done {
                    Ok(Ok(_)) => acked.push((key, unix_ms())),
                    Ok(Err(_)) => {}
                    Err(_) => client = None,
                }
            }
            attempts.send_modify(|a| *a += 1);
        }
        acked
    });
    App {
        task,
        attempts: counted,
    }
}

async fn keys_on(conninfo: &str) -> Vec<(String, f64)> {
    let c = connect(conninfo).await.unwrap();
    c.query(
        "SELECT key, (extract(epoch FROM written_at) * 1000)::float8 FROM payments",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn seeds(default: u64) -> Vec<u64> {
    let n = std::env::var("TERN_PG_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    (1..=n).collect()
}

/// East is cut from every controller while an application keeps writing to
/// it directly; west is promoted. No write may land on east after the lease
/// the controllers superseded expired: east fenced itself before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_writer_per_epoch() {
    for seed in seeds(3) {
        let late = one_writer_per_epoch_seed(seed, true).await;
        assert_eq!(
            late, 0,
            "seed {seed}: {late} writes accepted by east after its lease expired"
        );
    }
}

/// The same with self-fencing disabled: the check above must see the late
/// writes, or it could not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_self_fencing_the_old_primary_takes_late_writes() {
    let late = one_writer_per_epoch_seed(1, false).await;
    assert!(
        late > 0,
        "an unfenced old primary took no late write: the check is blind"
    );
}

async fn one_writer_per_epoch_seed(seed: u64, fence: bool) -> usize {
    let lab = Lab::start(false, fence).await;
    let first = lab.wait_writer("east", Duration::from_secs(20)).await;
    assert_eq!(first.writer.epoch, 1, "seed {seed}");
    let stop = CancellationToken::new();
    let app = writer(lab.east.conninfo(), "east", stop.clone());
    // A random moment within a lease period.
    let jitter = fastrand_below(seed, LEASE_MS);
    tokio::time::sleep(Duration::from_millis(500 + jitter)).await;
    for l in &lab.east_links {
        l.cut.store(true, Ordering::SeqCst);
    }
    lab.east_goes_down().await;
    let after = lab.wait_writer("west", Duration::from_secs(20)).await;
    assert!(after.writer.epoch > first.writer.epoch, "seed {seed}");
    let plan = after.plan.as_ref().expect("a plan");
    assert_eq!(plan.step, Step::Done, "seed {seed}");
    let (holder, _, expired_ms) = plan
        .previous_lease
        .clone()
        .expect("the grant records the lease it superseded");
    assert_eq!(holder, "east");
    // West's proxy follows within a round of its agent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !matches!(lab.west_proxy.target(), Target::Writable(w) if w.epoch == after.writer.epoch) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: west's proxy never followed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // West takes writes through its proxy in the new epoch.
    let through_proxy = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
        lab.west_proxy.local_addr().port()
    );
    let w = connect(&through_proxy)
        .await
        .expect("west's proxy leads to the new primary");
    w.execute("INSERT INTO payments (key) VALUES ('west-1')", &[])
        .await
        .expect("the new primary takes writes");
    // The old side keeps trying: twenty more attempts on east.
    app.tries(20).await;
    stop.cancel();
    let acked = app.task.await.unwrap();
    assert!(
        !acked.is_empty(),
        "seed {seed}: the application never wrote"
    );
    // East's agent stops (its watchdog fences east if it may still take
    // writes); east's own rows are read with the server up again.
    lab.east_stop.cancel();
    let mut lab = lab;
    if let Some(agent) = lab.east_agent.take() {
        agent.await.expect("east's agent ended");
    }
    lab.east.ensure_running();
    let late = keys_on(&lab.east.conninfo())
        .await
        .into_iter()
        .filter(|(_, at)| *at > expired_ms as f64)
        .count();
    lab.shutdown().await;
    late
}

fn fastrand_below(seed: u64, n: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x % n
}

/// Synchronous replication: the primary's host dies while an application
/// writes; every write it acknowledged is on the promoted standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_in_sync_mode() {
    for seed in seeds(2) {
        let mut lab = Lab::start(true, true).await;
        lab.wait_writer("east", Duration::from_secs(20)).await;
        let stop = CancellationToken::new();
        let app = writer(lab.east.conninfo(), "east", stop.clone());
        // Fault timing: the host dies at a random moment of the writes.
        tokio::time::sleep(Duration::from_millis(500 + fastrand_below(seed, 1000))).await;
        // The host dies: its database and its agent at once.
        lab.east.kill();
        lab.east_stop.cancel();
        stop.cancel();
        let acked = app.task.await.unwrap();
        assert!(
            acked.len() > 5,
            "seed {seed}: only {} writes before the crash",
            acked.len()
        );
        lab.east_goes_down().await;
        let c = lab.wait_writer("west", Duration::from_secs(20)).await;
        let steps: Vec<Step> = c
            .plan
            .as_ref()
            .unwrap()
            .history
            .iter()
            .map(|h| h.step)
            .collect();
        assert_eq!(
            steps,
            vec![Step::WaitLease, Step::Promote, Step::ScaleHook],
            "seed {seed}"
        );
        let note =
            std::fs::read_to_string(lab._dir.path().join("scaled")).expect("the scale hook ran");
        assert_eq!(
            note.trim(),
            format!("payments west {}", c.writer.epoch),
            "seed {seed}"
        );
        let on_west: std::collections::BTreeSet<String> = keys_on(&lab.west.conninfo())
            .await
            .into_iter()
            .map(|k| k.0)
            .collect();
        let lost: Vec<&String> = acked
            .iter()
            .map(|a| &a.0)
            .filter(|k| !on_west.contains(*k))
            .collect();
        assert!(
            lost.is_empty(),
            "seed {seed}: acknowledged but lost: {lost:?}"
        );
        lab.shutdown().await;
    }
}

/// Waits until `node` no longer answers (it was stopped), up to `within`.
async fn wait_fenced(node: &PgNode, within: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    while node.is_ready() {
        assert!(
            started.elapsed() < within,
            "east still runs after {within:?} without a valid lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

// Broke when a failed status read fenced nothing: east's agent cannot read
// its node over SQL, yet the node is stopped before its lease runs out,
// because whether it may take writes is read from its data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_sql_is_fenced_all_the_same() {
    let faults = Faults {
        east_sql_blind: true,
        ..Faults::default()
    };
    let lab = Lab::start_with(false, true, faults).await;
    lab.wait_writer("east", Duration::from_secs(20)).await;
    // A window on purpose: that east's agent, blind to its node over SQL,
    // does not fence it within 500 ms of holding a valid lease is what is
    // asserted here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        lab.east.is_ready(),
        "east was fenced while it held its lease"
    );
    for l in &lab.east_links {
        l.cut.store(true, Ordering::SeqCst);
    }
    // Fenced a margin before the lease (counted from the last renewal's
    // send, at most a renewal interval before the cut) runs out.
    let took = wait_fenced(&lab.east, Duration::from_millis(LEASE_MS)).await;
    assert!(
        took < Duration::from_millis(LEASE_MS),
        "fenced after {took:?}"
    );
    lab.east_stop.cancel();
    lab.shutdown().await;
}

// Broke when a panic in the database loop was swallowed while the writer
// proxy kept relaying: the loop panics, its watchdog stops the node at once
// and closes the proxy, long before the lease would run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_database_loop_fences_the_node_and_closes_the_proxy() {
    let faults = Faults {
        east_panic_after: Some(Duration::from_secs(3)),
        ..Faults::default()
    };
    let lab = Lab::start_with(false, true, faults).await;
    lab.wait_writer("east", Duration::from_secs(20)).await;
    assert!(lab.east.is_ready());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !matches!(lab.east_proxy.target(), Target::Writable(_)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "east's proxy never led to east"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_fenced(&lab.east, Duration::from_secs(10)).await;
    // The panic comes 3 s after the start; the lease would last up to
    // LEASE_MS more from the last renewal: the fence must not wait for it.
    let after_panic = lab
        .agents_started
        .elapsed()
        .saturating_sub(Duration::from_secs(3));
    assert!(
        after_panic < Duration::from_millis(LEASE_MS / 2),
        "fenced {after_panic:?} after the panic: it waited for the lease"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while !matches!(lab.east_proxy.target(), Target::Closed { .. }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "east's proxy still leads to east after its loop panicked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lab.east_stop.cancel();
    lab.shutdown().await;
}

/// An agent asked to keep `app` to the writer proxies refuses to start on
/// initdb's rules (the unix socket and 127.0.0.1 admit every role, and the
/// proxies connect from 127.0.0.2), naming each line; once the file admits
/// `app` only from the proxies, the same agent starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_to_start_while_pg_hba_lets_the_application_past_the_proxy() {
    let dir = workdir();
    let east = PgNode::primary(dir.path(), "east");
    let cfg = Config::from_toml("test.toml", &doors_toml(&east)).expect("configuration");
    let agent = tern_agent::Agent::new(&cfg).unwrap();
    let refused = agent
        .check_doors()
        .await
        .expect_err("initdb's rules let app past the proxy");
    let why = format!("{refused:#}");
    assert!(why.contains("unix socket"), "{why}");
    assert!(why.contains("from 127.0.0.1/32"), "{why}");

    std::fs::write(
        east.data.join("pg_hba.conf"),
        "local all postgres trust\nlocal all all reject\n\
         host all postgres 127.0.0.1/32 trust\nhost all app 127.0.0.2/32 trust\n\
         host all all 0.0.0.0/0 reject\n",
    )
    .unwrap();
    agent
        .check_doors()
        .await
        .expect("app admitted only from the proxies");
}

/// East's agent, with `app_roles` and the proxies' source address set on
/// the cluster (no controller is reached by the check).
fn doors_toml(east: &PgNode) -> String {
    let mut s = String::from("[agent]\nregion = \"east\"\n");
    for (r, serves) in [("east", true), ("west", true), ("witness", false)] {
        s.push_str(&format!(
            "[[region]]\nname = \"{r}\"\nserves_traffic = {serves}\n"
        ));
    }
    s.push_str(
        "[service.api]\npolicy = \"failover\"\n\
         [[service.api.backend]]\nregion = \"east\"\nurl = \"http://127.0.0.1:9\"\n\
         [controller]\n",
    );
    for (i, r) in ["east", "west", "witness"].iter().enumerate() {
        s.push_str(&format!(
            "[[controller.node]]\nid = {}\nregion = \"{r}\"\naddr = \"127.0.0.1:{}\"\n",
            i + 1,
            i + 1
        ));
    }
    s.push_str(&format!(
        "[database.payments]\napp_roles = [\"app\"]\napp_sources = [\"127.0.0.2\"]\n{}",
        node_toml("east", east)
    ));
    s
}

/// The value of the series `name` whose labels include every one of
/// `labels` (`key="value"`), in a metrics page.
fn series(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    page.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|want| set.split(',').any(|have| have == *want))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// `GET /metrics` from an agent's admin endpoint, as Prometheus scrapes it.
async fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_metrics_show_the_role_the_lease_and_the_fence_as_they_change() {
    let lab = Lab::start(false, true).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = listener.local_addr().unwrap();
    tokio::spawn(tern_agent::metrics::serve(
        listener,
        lab.east_metrics.clone(),
        lab.stop.clone(),
    ));
    lab.wait_writer("east", Duration::from_secs(20)).await;
    let cluster = "cluster=\"payments\"";
    // East holds the lease: a primary, not fenced, time left on epoch 1.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = scrape(admin).await;
        if series(&page, "tern_agent_lease_epoch", &[cluster]) == Some(1.0) {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lease in the metrics:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        series(
            &page,
            "tern_agent_node_role",
            &[cluster, "role=\"primary\""]
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        series(&page, "tern_agent_node_fenced", &[cluster]),
        Some(0.0),
        "{page}"
    );
    assert!(
        series(&page, "tern_agent_lease_remaining_seconds", &[cluster]).unwrap() > 0.0,
        "{page}"
    );
    // Every series names the agent's region, the writer proxy's too.
    let region = "agent_region=\"east\"";
    assert!(
        series(
            &page,
            "tern_agent_writer_proxy_connections",
            &[cluster, region]
        )
        .is_some(),
        "{page}"
    );
    assert!(
        series(
            &page,
            "tern_agent_writer_proxy_accepted_total",
            &[cluster, region]
        )
        .is_some(),
        "{page}"
    );
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.contains(region), "{line}");
    }
    // The database loop stamps each round, so that a hung loop shows.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let round = series(
        &page,
        "tern_agent_last_round_timestamp_seconds",
        &[cluster, "loop=\"database\""],
    )
    .expect("a round timestamp");
    assert!((now - round).abs() < 10.0, "{now} vs {round}:\n{page}");

    // Cut from the controllers, east fences itself: the metrics say so.
    for l in &lab.east_links {
        l.cut.store(true, Ordering::SeqCst);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let page = scrape(admin).await;
        if series(&page, "tern_agent_node_fenced", &[cluster]) == Some(1.0) {
            assert_eq!(
                series(&page, "tern_agent_lease_epoch", &[cluster]),
                Some(0.0),
                "{page}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "east never showed fenced:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lab.stop.cancel();
}

//! A three-controller group in one process for tests: every node-to-node
//! path goes through a small TCP relay that a test can cut (blackhole: the
//! connection stays open and nothing arrives), which is a real partition as
//! far as the nodes can tell.

#![allow(dead_code, clippy::needless_range_loop)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tern_controller::node::NodeOptions;
use tern_controller::{Controller, NodeId};
use tern_core::config::Config;
use tern_proto::api::{ObservationBatch, RegionResult, StatusView};
use tern_proto::ControllerClient;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

pub const REGIONS: [&str; 3] = ["east", "west", "witness"];

/// A relay from `listen` to `target` that can be cut and healed.
pub struct Link {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Link {
    pub async fn start(ip: IpAddr, target: SocketAddr) -> Link {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let flag = flag.clone();
                tokio::spawn(async move {
                    if flag.load(Ordering::SeqCst) {
                        hold(inbound, &flag).await;
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    relay(inbound, outbound, flag).await;
                });
            }
        });
        Link { addr, cut }
    }

    pub fn cut(&self, on: bool) {
        self.cut.store(on, Ordering::SeqCst);
    }
}

/// Keeps a connection open and silent while the link is cut.
async fn hold(stream: TcpStream, flag: &AtomicBool) {
    while flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stream);
}

/// Copies both ways until the link is cut; then the bytes stop (nothing is
/// delivered) and the connection is dropped once healed.
async fn relay(a: TcpStream, b: TcpStream, flag: Arc<AtomicBool>) {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let f1 = flag.clone();
    let up = tokio::spawn(async move { pump(&mut ar, &mut bw, &f1).await });
    let down = tokio::spawn(async move { pump(&mut br, &mut aw, &flag).await });
    let _ = tokio::join!(up, down);
}

async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    flag: &AtomicBool,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if flag.load(Ordering::SeqCst) { break; }
                continue;
            }
        };
        if flag.load(Ordering::SeqCst) {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    // Cut: swallow everything until healed, then drop the connection.
    while flag.load(Ordering::SeqCst) {
        tokio::select! {
            r = from.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

pub struct Group {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Option<Arc<Controller>>>,
    /// Each node's own listen address.
    pub addrs: Vec<SocketAddr>,
    /// links[(i, j)]: how node i reaches node j.
    pub links: BTreeMap<(usize, usize), Link>,
    pub configs: Vec<Config>,
    /// Listeners bound for each node's first start (a restart binds its
    /// address again).
    reserved: Vec<Option<std::net::TcpListener>>,
}

pub struct Timings {
    pub lease_ms: u64,
    pub drift_ms: u64,
    /// `capacity_rps` of east and west, when set.
    pub capacity_rps: Option<[u64; 2]>,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_ms: 600,
            drift_ms: 150,
            capacity_rps: None,
        }
    }
}

/// A loopback subnet of its own per seed, so that groups never collide.
fn ip(seed: u64, node: usize) -> IpAddr {
    let salt = std::process::id() as u64;
    IpAddr::V4(Ipv4Addr::new(
        127,
        (60 + (seed.wrapping_mul(7).wrapping_add(salt)) % 120) as u8,
        (salt % 250) as u8 + 1,
        (10 + node) as u8,
    ))
}

pub fn config_text(addrs: &[SocketAddr], t: &Timings) -> String {
    let mut s = String::new();
    for (i, r) in REGIONS.iter().enumerate() {
        s.push_str(&format!(
            "[[region]]\nname = \"{r}\"\nserves_traffic = {}\n",
            i < 2
        ));
        if let Some(c) = t.capacity_rps.filter(|_| i < 2) {
            s.push_str(&format!("capacity_rps = {}\n", c[i]));
        }
    }
    s.push_str(
        "[service.api]\npolicy = \"failover\"\n\
         [[service.api.backend]]\nregion = \"east\"\nurl = \"http://127.0.0.1:9\"\n\
         [[service.api.backend]]\nregion = \"west\"\nurl = \"http://127.0.0.1:9\"\n",
    );
    s.push_str(
        "[controller]\nheartbeat = \"50ms\"\nelection_timeout = \"300ms\"\nrpc_timeout = \"200ms\"\n",
    );
    for (i, a) in addrs.iter().enumerate() {
        s.push_str(&format!(
            "[[controller.node]]\nid = {}\nregion = \"{}\"\naddr = \"{a}\"\n",
            i + 1,
            REGIONS[i % 3]
        ));
    }
    s.push_str(
        "[verdict]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nfall = 3\nrise = 3\nhold_down = \"300ms\"\n",
    );
    s.push_str(&format!(
        "[database.payments]\nlease = \"{}ms\"\ndrift_margin = \"{}ms\"\n",
        t.lease_ms, t.drift_ms
    ));
    // A cluster with nodes: its writer moves only by failover plans.
    s.push_str(&format!(
        "[database.orders]\nlease = \"{}ms\"\ndrift_margin = \"{}ms\"\nrpo_budget = \"1KiB\"\n\
         step_timeout = \"2s\"\nprimary = \"east\"\n\
         [[database.orders.node]]\nregion = \"east\"\naddr = \"127.0.0.1:9\"\n\
         [[database.orders.node]]\nregion = \"west\"\naddr = \"127.0.0.1:9\"\n",
        t.lease_ms, t.drift_ms
    ));
    // The same in synchronous mode.
    s.push_str(&format!(
        "[database.ledger]\nreplication = \"sync\"\nlease = \"{}ms\"\ndrift_margin = \"{}ms\"\n\
         rpo_budget = \"1KiB\"\nstep_timeout = \"2s\"\nprimary = \"east\"\n\
         [[database.ledger.node]]\nregion = \"east\"\naddr = \"127.0.0.1:9\"\n\
         [[database.ledger.node]]\nregion = \"west\"\naddr = \"127.0.0.1:9\"\n",
        t.lease_ms, t.drift_ms
    ));
    s
}

impl Group {
    pub async fn start(seed: u64, t: Timings) -> Group {
        let dir = tempfile::tempdir().unwrap();
        // Each node's listener, bound here and handed to its first start,
        // so that no other test can take the port in between.
        let mut addrs = Vec::new();
        let mut reserved = Vec::new();
        for i in 0..3 {
            let l = std::net::TcpListener::bind(SocketAddr::new(ip(seed, i), 0)).unwrap();
            addrs.push(l.local_addr().unwrap());
            reserved.push(Some(l));
        }
        let mut links = BTreeMap::new();
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    links.insert((i, j), Link::start(ip(seed, i), addrs[j]).await);
                }
            }
        }
        let mut configs = Vec::new();
        for i in 0..3 {
            let seen: Vec<SocketAddr> = (0..3)
                .map(|j| {
                    if i == j {
                        addrs[j]
                    } else {
                        links[&(i, j)].addr
                    }
                })
                .collect();
            let text = config_text(&seen, &t);
            configs.push(Config::from_toml("test.toml", &text).expect("test config"));
        }
        let mut g = Group {
            dir,
            nodes: vec![None, None, None],
            addrs,
            links,
            configs,
            reserved,
        };
        for i in 0..3 {
            g.start_node(i).await;
        }
        g
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}", i + 1))
    }

    pub async fn start_node(&mut self, i: usize) {
        let options = NodeOptions {
            id: (i + 1) as NodeId,
            data_dir: self.data_dir(i),
            listen: Some(self.addrs[i]),
            join: false,
        };
        // The first start takes the listener bound in `start`; a restart
        // binds the node's address again.
        let listener = match self.reserved[i].take() {
            Some(l) => l,
            None => bind_again(self.addrs[i]).await,
        };
        // A restarted node's database may still be held for a moment by the
        // stopped node's last tasks; opening it waits for the lock by
        // blocking its thread, so it runs where it does not keep those tasks
        // (or another seed's) from running on this runtime.
        let config = &self.configs[i];
        let node = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(Controller::start_on(
                config,
                options,
                Some(listener),
                tern_controller::clock::WallClock::new(),
            ))
        })
        .expect("start controller");
        self.nodes[i] = Some(node);
    }

    pub async fn stop_node(&mut self, i: usize) {
        // The shutdown joins the node's server task, so its listener is
        // closed when this returns; `start_node` binds the address again.
        if let Some(n) = self.nodes[i].take() {
            n.shutdown().await;
        }
    }

    /// Stops node `i` and returns its state as it was when it stopped.
    pub async fn stop_node_with_state(&mut self, i: usize) -> tern_core::control::ControlState {
        let n = self.nodes[i].take().expect("node running");
        n.shutdown().await;
        let state = n.state();
        drop(n);
        state
    }

    pub async fn stop_all(&mut self) {
        for i in 0..3 {
            self.stop_node(i).await;
        }
    }

    /// Cuts node `i` from both others, both ways.
    pub fn isolate(&self, i: usize, on: bool) {
        for ((a, b), link) in &self.links {
            if *a == i || *b == i {
                link.cut(on);
            }
        }
    }

    pub fn node(&self, i: usize) -> &Arc<Controller> {
        self.nodes[i].as_ref().expect("node running")
    }

    pub fn client(&self, i: usize) -> ControllerClient {
        ControllerClient::new(vec![self.addrs[i]], Duration::from_secs(1))
    }

    /// A client of every node (as agents have).
    pub fn all(&self) -> ControllerClient {
        ControllerClient::new(self.addrs.clone(), Duration::from_millis(500))
    }

    pub fn status(&self, i: usize) -> StatusView {
        self.node(i).status()
    }

    /// Waits until a running node leads with a quorum and has committed
    /// its term's first entry (it takes commands); returns its index.
    pub async fn leader(&self) -> usize {
        for _ in 0..200 {
            for (i, n) in self.nodes.iter().enumerate() {
                if let Some(n) = n {
                    let s = n.status();
                    if s.role == "leader" && s.in_quorum && n.has_taken_over() {
                        return i;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no leader with a quorum within 5 s");
    }

    /// Waits until `cond` holds for node `i`'s status, or panics after `within`.
    pub async fn wait_for(
        &self,
        i: usize,
        within: Duration,
        what: &str,
        cond: impl Fn(&StatusView) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let s = self.status(i);
            if cond(&s) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("node {} never got to: {what}; status: {s:#?}", i + 1);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Binds a stopped node's address again for its restart: its listener is
/// closed once its shutdown returned, and should the address still be busy
/// (a socket of the old node not yet let go), it is tried again until it
/// binds, for up to 5 s.
async fn bind_again(addr: SocketAddr) -> std::net::TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("the address {addr} of a stopped node is still taken after 5 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

pub fn batch(vantage: &str, region: &str, ok: bool) -> ObservationBatch {
    ObservationBatch {
        vantage: vantage.into(),
        results: vec![RegionResult {
            service: None,
            region: region.into(),
            ok,
            latency_ms: Some(5),
            detail: if ok { String::new() } else { "timeout".into() },
        }],
    }
}

/// Small deterministic random numbers for fault timing.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The seeds a fault test runs over: `TERN_SEEDS` (a count) or 20.
pub fn seeds() -> Vec<u64> {
    let n: u64 = std::env::var("TERN_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    (1..=n).collect()
}

/// Runs `f` for every seed, a few at a time: each seed has a group of its
/// own on its own loopback addresses. A failing seed fails the test.
pub async fn over_seeds<F, Fut>(f: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let seeds = seeds();
    for chunk in seeds.chunks(4) {
        let mut set = tokio::task::JoinSet::new();
        for &seed in chunk {
            set.spawn(f(seed));
        }
        while let Some(r) = set.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
                panic!("a seed's task failed: {e}");
            }
        }
    }
}

//! The lab's deployment: regions on their own loopback subnets, a sample
//! service and an edge per serving region, and WAN links for every path that
//! crosses regions (and for clients reaching edges, so that a dark region is
//! dark to its own users too).
//!
//! Every region (the witness too) runs a controller, and each serving region
//! an agent; all of their cross-region traffic crosses the WAN as well.
//!
//! Address plan: region N uses 127.0.N.0/24; its edge binds 127.0.N.1, its
//! controller 127.0.N.7, its sample service 127.0.N.10, WAN links from it
//! toward other regions 127.0.N.100 and WAN links for its clients
//! 127.0.N.200. Ports are chosen by the kernel, so several labs can run side
//! by side.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tern_core::auth::{Principal, Role};

use crate::load::EdgePath;
use crate::postgres::{self, PgServer};
use crate::process::{Held, Proc};
use crate::wan::{Fault, Wan};

/// The lab's database cluster.
pub const CLUSTER: &str = "payments";

/// The lab database's RPO time budget (`rpo_budget`, with 1 MiB).
pub const RPO_TIME: Duration = Duration::from_secs(1);
/// The lab database's lease.
pub const LEASE: Duration = Duration::from_secs(5);

/// The longest an agent's round may leave a write unnoticed under the RPO
/// time budget: its tick, or its controller calls when they hang
/// (`tern_core::lease::rpo_call_bound`): 1 s with the lab's settings.
pub fn agent_round() -> Duration {
    tern_core::lease::rpo_call_bound(RPO_TIME, LEASE)
}

/// How the lab runs its database: a primary in the first serving region and
/// a streaming standby in each other one, made by `pg_basebackup` across the WAN.
#[derive(Debug, Clone)]
pub struct DbSettings {
    pub bin: PathBuf,
    pub sync: bool,
}

/// A region's database node and its writer proxy.
pub struct DbNodeRuntime {
    pub region: String,
    pub server: PgServer,
    /// Where the node listens (the lab and its own region reach it here).
    pub addr: SocketAddr,
    /// Where the region's writer proxy (in its agent) listens.
    pub proxy: SocketAddr,
}

pub struct DbRuntime {
    pub settings: DbSettings,
    pub nodes: Vec<DbNodeRuntime>,
    /// How a process in region `.0` reaches the node of region `.1`.
    paths: BTreeMap<(String, String), SocketAddr>,
}

impl DbRuntime {
    pub fn node(&self, region: &str) -> Option<&DbNodeRuntime> {
        self.nodes.iter().find(|n| n.region == region)
    }

    fn node_mut(&mut self, region: &str) -> Option<&mut DbNodeRuntime> {
        self.nodes.iter_mut().find(|n| n.region == region)
    }

    /// How `from` reaches the node of `to`.
    pub fn path(&self, from: &str, to: &str) -> Option<SocketAddr> {
        if from == to {
            return self.node(to).map(|n| n.addr);
        }
        self.paths.get(&(from.to_string(), to.to_string())).copied()
    }
}

/// Health and retry settings the lab gives its edges; tuned for detection
/// under a second with a 70 ms cross-region round trip.
#[derive(Debug, Clone)]
pub struct EdgeTuning {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub fall: u32,
    pub rise: u32,
    pub try_timeout_ms: u64,
    /// When false, edges get an empty retry budget.
    pub retries: bool,
    /// TTL of the edges' DNS answers for `payments.lab.`.
    pub dns_ttl: Duration,
}

impl Default for EdgeTuning {
    /// The lab's fast settings: probes every 200 ms, 150 ms timeout, a
    /// 300 ms try timeout, so that a run takes seconds, not minutes.
    fn default() -> Self {
        EdgeTuning {
            interval_ms: 200,
            timeout_ms: 150,
            fall: 3,
            rise: 3,
            try_timeout_ms: 300,
            retries: true,
            dns_ttl: Duration::from_secs(2),
        }
    }
}

impl EdgeTuning {
    /// The product's defaults for the same settings (what a file that does
    /// not set them gets): probes every 1 s with a 500 ms timeout, fall and
    /// rise 3, a 2 s try timeout.
    pub fn product_defaults() -> EdgeTuning {
        EdgeTuning {
            interval_ms: 1_000,
            timeout_ms: 500,
            try_timeout_ms: 2_000,
            ..EdgeTuning::default()
        }
    }

    /// One line for the report: which settings the figures come from.
    pub fn describe(&self) -> String {
        let lab = EdgeTuning::default();
        let which = if self.interval_ms == lab.interval_ms
            && self.try_timeout_ms == lab.try_timeout_ms
        {
            "the lab's fast settings (--product-defaults for the product's: every 1 s, 500 ms timeout, try timeout 2 s)"
        } else {
            "the product's default settings"
        };
        format!(
            "edge health checks every {} ms (timeout {} ms, down after {}, up after {}), try timeout {} ms: {which}",
            self.interval_ms, self.timeout_ms, self.fall, self.rise, self.try_timeout_ms
        )
    }
}

#[derive(Debug, Clone)]
pub struct RegionSpec {
    pub name: String,
    /// 1-based; the third octet of the region's subnet.
    pub index: u8,
    pub serves_traffic: bool,
}

impl RegionSpec {
    pub fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, self.index, host))
    }

    pub fn client_label(&self) -> String {
        format!("clients@{}", self.name)
    }
}

pub fn default_regions() -> Vec<RegionSpec> {
    vec![
        RegionSpec {
            name: "us-east".into(),
            index: 1,
            serves_traffic: true,
        },
        RegionSpec {
            name: "us-west".into(),
            index: 2,
            serves_traffic: true,
        },
        RegionSpec {
            name: "witness".into(),
            index: 3,
            serves_traffic: false,
        },
    ]
}

/// Verdict settings of the lab's controllers: the defaults (probe every
/// second, down after 3 failures), with a shorter hold-down so that a run
/// shows the return too.
pub const VERDICT_TOML: &str =
    "[verdict]\ninterval = \"1s\"\ntimeout = \"500ms\"\nfall = 3\nrise = 3\nhold_down = \"2s\"\n";

/// How a region reaches each serving region's service: (region, address).
type Paths = Vec<(String, SocketAddr)>;

/// One controller node: one per region, the witness included.
pub struct ControllerRuntime {
    pub id: u64,
    pub spec: RegionSpec,
    /// Where it listens (reached directly by processes of its own region and by the lab).
    pub addr: SocketAddr,
    proc: Option<Proc>,
}

impl ControllerRuntime {
    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }
}

/// A serving region's processes and addresses.
pub struct RegionRuntime {
    pub spec: RegionSpec,
    pub service_addr: SocketAddr,
    pub edge_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The edge's DNS server (UDP and TCP).
    pub dns_addr: SocketAddr,
    /// The edge's HTTPS listener, serving [`crate::https::HOST`].
    pub https_addr: SocketAddr,
    /// The edge's certificate, signed by the lab's CA.
    cert: tern_core::config::tls::CertFiles,
    service: Option<Proc>,
    edge: Option<Proc>,
    agent: Option<Proc>,
    /// How this region's edge reaches each serving region's service, in failover order.
    backend_paths: Vec<(String, SocketAddr)>,
}

impl RegionRuntime {
    pub fn is_running(&self) -> bool {
        self.edge.is_some()
    }
}

pub struct Deployment {
    pub regions: Vec<RegionSpec>,
    pub serving: Vec<RegionRuntime>,
    pub controllers: Vec<ControllerRuntime>,
    /// Agents of regions that serve no traffic (the witness): a third
    /// vantage point, so that a majority can see a region die.
    witness_agents: Vec<(RegionSpec, Paths, Option<Proc>)>,
    /// How a process in region `.0` reaches controller `.1`.
    controller_paths: BTreeMap<(String, u64), SocketAddr>,
    /// Each region's agent's admin endpoint (`/metrics`), by region.
    pub agent_admins: BTreeMap<String, SocketAddr>,
    pub wan: Wan,
    pub one_way_delay: Duration,
    binary: PathBuf,
    dir: PathBuf,
    tuning: EdgeTuning,
    pub db: Option<DbRuntime>,
    /// The lab's certificate authority (PEM): what an HTTPS client of the
    /// edges trusts.
    pub ca_file: PathBuf,
    /// The lab's side of the control plane's mutual TLS (operator
    /// [`LAB_OPERATOR`]).
    control_tls: Arc<rustls::ClientConfig>,
    /// Controllers' and writer proxies' sockets, bound by the lab and
    /// handed to the process that serves them.
    held: Held,
}

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The operator the lab acts as toward the controllers (switchovers, reads).
pub const LAB_OPERATOR: &str = "lab";

impl Deployment {
    /// Starts every process and link; returns once all edges serve.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        regions: Vec<RegionSpec>,
        one_way_delay: Duration,
        tuning: EdgeTuning,
        db: Option<DbSettings>,
    ) -> Result<Deployment> {
        let wan = Wan::new();
        let held = Held::default();
        let serving_specs: Vec<RegionSpec> = regions
            .iter()
            .filter(|r| r.serves_traffic)
            .cloned()
            .collect();
        let db = match db {
            Some(settings) => Some(
                start_database(settings, dir, &serving_specs, &wan, one_way_delay, &held).await?,
            ),
            None => None,
        };

        // Services first: edges need their addresses.
        let mut services = Vec::new();
        for r in &serving_specs {
            let store = dir.join(format!("{}.store", r.name));
            std::fs::write(&store, b"ok").context("create the sample store file")?;
            let db_args = db
                .as_ref()
                .and_then(|d| d.node(&r.name))
                .map(|n| (n.proxy, n.addr));
            let (proc, addr) =
                start_service(binary, dir, r, SocketAddr::new(r.ip(10), 0), db_args).await?;
            services.push((proc, addr));
        }

        // The lab's own certificate authority, and a certificate per edge
        // for the service's name, the region's edge name and its address.
        let ca = crate::certs::Ca::new("tern lab CA")?;
        let ca_file = dir.join("ca.pem");
        ca.write(&ca_file)?;
        let mut serving = Vec::new();
        for (j, r) in serving_specs.iter().enumerate() {
            let mut backend_paths = Vec::new();
            for (i, other) in serving_specs.iter().enumerate() {
                let target = services[i].1;
                let addr = if i == j {
                    target
                } else {
                    wan.add_link(
                        &r.name,
                        &other.name,
                        SocketAddr::new(r.ip(100), 0),
                        target,
                        one_way_delay,
                    )
                    .await
                    .with_context(|| format!("WAN link {} -> {}", r.name, other.name))?
                };
                backend_paths.push((other.name.clone(), addr));
            }
            let edge_name = format!("{}.edge.lab", r.name);
            let edge_ip = r.ip(1).to_string();
            let cert = ca.issue(
                &[crate::https::HOST, &edge_name, "localhost", &edge_ip],
                crate::certs::Validity::Current,
                dir,
                &format!("edge-{}-cert", r.name),
            )?;
            serving.push(RegionRuntime {
                spec: r.clone(),
                service_addr: services[j].1,
                edge_addr: SocketAddr::new(r.ip(1), 0),
                admin_addr: SocketAddr::new(r.ip(1), 0),
                dns_addr: SocketAddr::new(r.ip(1), 0),
                https_addr: SocketAddr::new(r.ip(1), 0),
                cert,
                service: None,
                edge: None,
                agent: None,
                backend_paths,
            });
        }
        for (rt, (proc, _)) in serving.iter_mut().zip(services) {
            rt.service = Some(proc);
        }

        // The control plane's own CA and a certificate per controller,
        // agent, edge and the lab's operator: every lab runs the control
        // plane over mutual TLS, as a real deployment does.
        let pki = dir.join("pki");
        let mut principals = vec![Principal::new(Role::Operator, LAB_OPERATOR)];
        for (k, r) in regions.iter().enumerate() {
            principals.push(Principal::new(Role::Controller, (k + 1).to_string()));
            principals.push(Principal::new(Role::Agent, &r.name));
            if r.serves_traffic {
                principals.push(Principal::new(Role::Edge, &r.name));
            }
        }
        tern_proto::pki::init(&pki, &principals, 30).context("the control plane's certificates")?;
        let control_settings = tern_core::config::ControlTls {
            ca: pki.join("ca.pem"),
            dir: pki.clone(),
            operators: vec![LAB_OPERATOR.into()],
            viewers: Vec::new(),
            reload_check: Duration::from_secs(2),
        };
        let control_tls = tern_proto::tls::ControlPlaneTls::load(
            &control_settings,
            Principal::new(Role::Operator, LAB_OPERATOR),
            None,
        )
        .context("the lab operator's certificate")?
        .client_config();

        // Controllers: addresses fixed first, since every node's file names
        // the others (through the WAN).
        let mut controllers = Vec::new();
        for (k, r) in regions.iter().enumerate() {
            let addr = held
                .bind(r.ip(7))
                .with_context(|| format!("a controller address in {}", r.name))?;
            controllers.push(ControllerRuntime {
                id: k as u64 + 1,
                spec: r.clone(),
                addr,
                proc: None,
            });
        }
        let mut controller_paths = BTreeMap::new();
        for from in &regions {
            for c in &controllers {
                let addr = if c.spec.name == from.name {
                    c.addr
                } else {
                    wan.add_link(
                        &from.name,
                        &c.spec.name,
                        SocketAddr::new(from.ip(100), 0),
                        c.addr,
                        one_way_delay,
                    )
                    .await
                    .with_context(|| {
                        format!("WAN link {} -> controller in {}", from.name, c.spec.name)
                    })?
                };
                controller_paths.insert((from.name.clone(), c.id), addr);
            }
        }

        let mut agent_admins = BTreeMap::new();
        for r in &regions {
            let addr = held
                .bind(r.ip(8))
                .with_context(|| format!("an agent admin address in {}", r.name))?;
            agent_admins.insert(r.name.clone(), addr);
        }
        let mut witness_agents = Vec::new();
        for w in regions.iter().filter(|r| !r.serves_traffic) {
            let mut paths = Vec::new();
            for rt in &serving {
                let addr = wan
                    .add_link(
                        &w.name,
                        &rt.spec.name,
                        SocketAddr::new(w.ip(100), 0),
                        rt.service_addr,
                        one_way_delay,
                    )
                    .await
                    .with_context(|| format!("WAN link {} -> {}", w.name, rt.spec.name))?;
                paths.push((rt.spec.name.clone(), addr));
            }
            witness_agents.push((w.clone(), paths, None));
        }

        let mut deployment = Deployment {
            regions,
            serving,
            controllers,
            witness_agents,
            controller_paths,
            agent_admins,
            wan,
            one_way_delay,
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            tuning,
            db,
            ca_file,
            control_tls,
            held,
        };
        for k in 0..deployment.controllers.len() {
            deployment.start_controller(k).await?;
        }
        for i in 0..deployment.serving.len() {
            deployment.start_edge(i).await?;
            deployment.start_agent(i).await?;
        }
        for w in 0..deployment.witness_agents.len() {
            let (spec, paths, _) = &deployment.witness_agents[w];
            let proc = deployment
                .spawn_agent(&spec.name.clone(), &paths.clone())
                .await?;
            deployment.witness_agents[w].2 = Some(proc);
        }
        Ok(deployment)
    }

    fn regions_toml(&self) -> String {
        let mut out = String::new();
        for r in &self.regions {
            out.push_str(&format!(
                "[[region]]\nname = \"{}\"\nserves_traffic = {}\n\n",
                r.name, r.serves_traffic
            ));
        }
        out
    }

    fn service_toml(&self, backend_paths: &[(String, SocketAddr)]) -> String {
        let t = &self.tuning;
        let mut out = String::from(
            "[service.payments]\npolicy = \"failover\"\nwhen_all_unhealthy = \"fail-open\"\n\
             outlier = { consecutive_failures = 3, base_ejection = \"2s\", max_ejection = \"30s\" }\n\n",
        );
        for (region, addr) in backend_paths {
            out.push_str(&format!(
                "[[service.payments.backend]]\nregion = \"{region}\"\nurl = \"http://{addr}\"\n\
                 health = {{ path = \"/health\", interval = \"{}ms\", timeout = \"{}ms\", fall = {}, rise = {} }}\n\n",
                t.interval_ms, t.timeout_ms, t.fall, t.rise
            ));
        }
        out
    }

    /// The `[controller]` and `[verdict]` tables as seen from `region`.
    fn control_toml(&self, region: &str) -> String {
        let pki = self.dir.join("pki");
        let mut out = format!(
            "[controller]\nheartbeat = \"150ms\"\nelection_timeout = \"1s\"\nrpc_timeout = \"500ms\"\n\
             [controller.tls]\nca = \"{}\"\ndir = \"{}\"\noperators = [\"{LAB_OPERATOR}\"]\n",
            pki.join("ca.pem").display(),
            pki.display()
        );
        for c in &self.controllers {
            let addr = self.controller_paths[&(region.to_string(), c.id)];
            out.push_str(&format!(
                "[[controller.node]]\nid = {}\nregion = \"{}\"\naddr = \"{addr}\"\n",
                c.id, c.spec.name
            ));
        }
        out.push('\n');
        out.push_str(VERDICT_TOML);
        out.push_str(&self.database_toml(region));
        out
    }

    /// The `[database.payments]` table as seen from `region`: every node by
    /// the address that region reaches it at, and the region's own proxy.
    fn database_toml(&self, region: &str) -> String {
        let Some(db) = &self.db else {
            return String::new();
        };
        let mut out = format!(
            "\n[database.{CLUSTER}]\nreplication = \"{}\"\nrpo_budget = [\"{}ms\", \"1MiB\"]\nlease = \"{}ms\"\nprimary = \"{}\"\n",
            if db.settings.sync { "sync" } else { "async" },
            RPO_TIME.as_millis(),
            LEASE.as_millis(),
            db.nodes[0].region
        );
        for n in &db.nodes {
            // Every file lists every node (the controllers' initial state
            // must be the same everywhere); a region without a WAN path to a
            // node (the witness) names it directly and never uses it.
            let addr = db.path(region, &n.region).unwrap_or(n.addr);
            out.push_str(&format!(
                "[[database.{CLUSTER}.node]]\nregion = \"{}\"\naddr = \"{addr}\"\n",
                n.region
            ));
            if n.region == region {
                // The agent fences its node by stopping it, starts it again
                // and rejoins it as a standby; in the lab the node also
                // stops when its agent dies (a killed region takes both).
                out.push_str(&format!(
                    "proxy = \"{}\"\ndata_dir = {:?}\nbin_dir = {:?}\nserver_args = {:?}\nstop_with_agent = true\n",
                    n.proxy,
                    n.server.data.display().to_string(),
                    db.settings.bin.display().to_string(),
                    n.server.server_args(),
                ));
            }
        }
        out
    }

    async fn start_controller(&mut self, k: usize) -> Result<()> {
        let c = &self.controllers[k];
        let region = c.spec.name.clone();
        // The controller needs the services (to know their regions), not how to reach them.
        let paths: Vec<(String, SocketAddr)> = self
            .serving
            .iter()
            .map(|rt| (rt.spec.name.clone(), rt.service_addr))
            .collect();
        let config = format!(
            "{}{}{}",
            self.regions_toml(),
            self.service_toml(&paths),
            self.control_toml(&region)
        );
        let path = self.dir.join(format!("controller-{region}.toml"));
        std::fs::write(&path, config).with_context(|| format!("write {}", path.display()))?;
        let args = vec![
            "controller".to_string(),
            "--config".to_string(),
            path.display().to_string(),
            "--id".to_string(),
            c.id.to_string(),
            "--data".to_string(),
            self.dir
                .join(format!("controller-{region}.data"))
                .display()
                .to_string(),
        ];
        let name = format!("controller-{region}");
        let socket = self.held.take(c.addr)?;
        let (proc, _) = Proc::start_with(
            &name,
            &self.binary,
            &args,
            &self.dir,
            READY_TIMEOUT,
            vec![("controller".into(), socket)],
        )
        .await?;
        self.controllers[k].proc = Some(proc);
        Ok(())
    }

    /// How long a role gets to stop on SIGTERM in a rolling restart
    /// before it is killed: the edge's unready delay and drain fit in it.
    const RESTART_GRACE: Duration = Duration::from_secs(10);

    /// Restarts the region's controller as an upgrade would: SIGTERM, wait
    /// for it to end, start it again from its data; returns once it serves.
    pub async fn restart_controller(&mut self, region: &str) -> Result<()> {
        let k = self
            .controllers
            .iter()
            .position(|c| c.spec.name == region)
            .ok_or_else(|| anyhow!("no controller in region {region}"))?;
        if let Some(mut p) = self.controllers[k].proc.take() {
            p.stop(Self::RESTART_GRACE).await;
        }
        self.start_controller(k).await
    }

    /// Restarts the region's agent (the witness's too) as an upgrade would:
    /// SIGTERM, which leaves its database node running, then a new agent.
    ///
    /// The new agent starts as soon as the old one says it only drains its
    /// writer proxies' sessions (its `draining:` line, printed once its
    /// database loop has stopped), on the same held sockets: it takes the
    /// new connections while the old one's sessions end at idle points.
    /// Returns once the new agent is ready and the old one has ended.
    pub async fn restart_agent_gracefully(&mut self, region: &str) -> Result<()> {
        if let Some(w) = self
            .witness_agents
            .iter()
            .position(|(s, _, _)| s.name == region)
        {
            let old = self.witness_agents[w].2.take();
            let (spec, paths, _) = &self.witness_agents[w];
            let (name, paths) = (spec.name.clone(), paths.clone());
            let proc = self
                .hand_over_agent(old, || self.spawn_agent(&name, &paths))
                .await?;
            self.witness_agents[w].2 = Some(proc);
            return Ok(());
        }
        let i = self.runtime_mut(region)?;
        let old = self.serving[i].agent.take();
        let (name, paths) = (
            self.serving[i].spec.name.clone(),
            self.serving[i].backend_paths.clone(),
        );
        let proc = self
            .hand_over_agent(old, || self.spawn_agent(&name, &paths))
            .await?;
        self.serving[i].agent = Some(proc);
        Ok(())
    }

    /// Stops `old` (SIGTERM), starts its successor with `start` once `old`
    /// drains or has ended, then waits for `old` to end.
    async fn hand_over_agent<'a, F>(
        &'a self,
        old: Option<Proc>,
        start: impl FnOnce() -> F,
    ) -> Result<Proc>
    where
        F: std::future::Future<Output = Result<Proc>> + 'a,
    {
        let Some(mut old) = old else {
            return start().await;
        };
        old.terminate();
        old.wait_for_line("draining:", Self::RESTART_GRACE).await;
        let new = start().await;
        old.wait_or_kill(Self::RESTART_GRACE).await;
        new
    }

    /// Restarts the region's edge as an upgrade would: SIGTERM (it answers
    /// not ready, then drains), then a new edge on the same addresses.
    ///
    /// The new edge starts once the old one has let go of its admin address
    /// (after its unready delay), while the old one still accepts on its
    /// client listeners: the new edge joins them (SO_REUSEPORT) and the old
    /// one closes its own only once the new one listens, so no client
    /// connection is refused. Returns once the old edge has ended.
    pub async fn restart_edge(&mut self, region: &str) -> Result<()> {
        let i = self.runtime_mut(region)?;
        let Some(mut old) = self.serving[i].edge.take() else {
            return self.start_edge(i).await;
        };
        old.terminate();
        let admin = self.serving[i].admin_addr;
        let deadline = tokio::time::Instant::now() + Self::RESTART_GRACE;
        while tokio::net::TcpStream::connect(admin).await.is_ok()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = self.start_edge(i).await;
        old.wait_or_kill(Self::RESTART_GRACE).await;
        started
    }

    /// Lets go of the lab's copies of the sockets of the region's
    /// controller and agent (its admin endpoint and writer proxy), so that
    /// they refuse connections once those processes are dead.
    fn release_region_sockets(&self, region: &str) {
        for c in self.controllers.iter().filter(|c| c.spec.name == region) {
            self.held.release(c.addr);
        }
        self.release_agent_sockets(region);
    }

    fn release_agent_sockets(&self, region: &str) {
        if let Some(a) = self.agent_admins.get(region) {
            self.held.release(*a);
        }
        if let Some(n) = self.db.as_ref().and_then(|d| d.node(region)) {
            self.held.release(n.proxy);
        }
    }

    /// SIGKILLs the region's agent alone.
    pub async fn kill_agent(&mut self, region: &str) -> Result<()> {
        self.release_agent_sockets(region);
        let i = self.runtime_mut(region)?;
        if let Some(mut p) = self.serving[i].agent.take() {
            p.kill().await;
        }
        Ok(())
    }

    /// Starts the region's agent again (after [`Deployment::kill_agent`]).
    pub async fn restart_agent(&mut self, region: &str) -> Result<()> {
        let i = self.runtime_mut(region)?;
        if self.serving[i].agent.is_none() {
            self.start_agent(i).await?;
        }
        Ok(())
    }

    async fn start_agent(&mut self, i: usize) -> Result<()> {
        let rt = &self.serving[i];
        let (region, paths) = (rt.spec.name.clone(), rt.backend_paths.clone());
        let proc = self.spawn_agent(&region, &paths).await?;
        self.serving[i].agent = Some(proc);
        Ok(())
    }

    async fn spawn_agent(&self, region: &str, paths: &[(String, SocketAddr)]) -> Result<Proc> {
        let admin = self.agent_admins[region];
        let config = format!(
            "{}[agent]\nregion = \"{region}\"\nadmin = \"{admin}\"\n\n{}{}",
            self.regions_toml(),
            self.service_toml(paths),
            self.control_toml(region)
        );
        let path = self.dir.join(format!("agent-{region}.toml"));
        std::fs::write(&path, config).with_context(|| format!("write {}", path.display()))?;
        let args = vec![
            "agent".to_string(),
            "--config".to_string(),
            path.display().to_string(),
        ];
        let name = format!("agent-{region}");
        let mut sockets = vec![("admin".to_string(), self.held.take(admin)?)];
        if let Some(n) = self.db.as_ref().and_then(|d| d.node(region)) {
            sockets.push((format!("writer-proxy.{CLUSTER}"), self.held.take(n.proxy)?));
        }
        let (proc, _) = Proc::start_with(
            &name,
            &self.binary,
            &args,
            &self.dir,
            READY_TIMEOUT,
            sockets,
        )
        .await?;
        Ok(proc)
    }

    /// A client of `addrs` over the control plane's mutual TLS, as the
    /// lab's operator.
    pub fn controller_client(
        &self,
        addrs: Vec<SocketAddr>,
        timeout: Duration,
    ) -> tern_proto::ControllerClient {
        tern_proto::ControllerClient::with_tls(addrs, timeout, Some(self.control_tls.clone()))
    }

    /// How the lab itself reaches each controller (directly, not through the WAN).
    pub fn controller_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.controllers
            .iter()
            .filter(|c| c.is_running())
            .map(|c| (c.spec.name.clone(), c.addr))
            .collect()
    }

    /// Kills every controller.
    pub async fn kill_controllers(&mut self) {
        for c in &self.controllers {
            self.held.release(c.addr);
        }
        for c in &mut self.controllers {
            if let Some(mut p) = c.proc.take() {
                p.kill().await;
            }
        }
    }

    /// Starts every controller that is not running, from its own data.
    pub async fn start_controllers(&mut self) -> Result<()> {
        for k in 0..self.controllers.len() {
            if self.controllers[k].proc.is_none() {
                self.start_controller(k).await?;
            }
        }
        Ok(())
    }

    /// The path of a region's sample store file: its critical dependency.
    pub fn store_file(&self, region: &str) -> PathBuf {
        self.dir.join(format!("{region}.store"))
    }

    fn edge_config(&self, rt: &RegionRuntime) -> String {
        let t = &self.tuning;
        let mut out = self.regions_toml();
        out.push_str(&format!(
            "[edge]\nregion = \"{}\"\nlisten = \"{}\"\nadmin = \"{}\"\nrequest_timeout = \"5s\"\ntry_timeout = \"{}ms\"\nshutdown_grace = \"1s\"\nrouting_state = \"{}\"\n",
            rt.spec.name,
            rt.edge_addr,
            rt.admin_addr,
            t.try_timeout_ms,
            self.dir.join(format!("edge-{}.routing.json", rt.spec.name)).display()
        ));
        if !t.retries {
            out.push_str("retry_budget = 0.0\nretry_min_per_second = 0\n");
        }
        out.push('\n');
        out.push_str(&self.service_toml(&rt.backend_paths));
        out.push_str(&self.control_toml(&rt.spec.name));
        let serving: Vec<RegionSpec> = self
            .regions
            .iter()
            .filter(|r| r.serves_traffic)
            .cloned()
            .collect();
        out.push_str(&edge_dns_config(rt.dns_addr, &serving, t.dns_ttl));
        out.push_str(&format!(
            "\n[edge.tls]\nlisten = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            rt.https_addr,
            rt.cert.cert.display(),
            rt.cert.key.display()
        ));
        out
    }

    async fn start_edge(&mut self, i: usize) -> Result<()> {
        let config = self.edge_config(&self.serving[i]);
        let rt = &mut self.serving[i];
        let path = self.dir.join(format!("edge-{}.toml", rt.spec.name));
        std::fs::write(&path, config).with_context(|| format!("write {}", path.display()))?;
        let args = vec![
            "edge".to_string(),
            "--config".to_string(),
            path.display().to_string(),
        ];
        let name = format!("edge-{}", rt.spec.name);
        let (proc, words) =
            Proc::start(&name, &self.binary, &args, &self.dir, READY_TIMEOUT).await?;
        // "listening on ADDR admin ADDR dns ADDR https ADDR"
        rt.edge_addr = words
            .first()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| anyhow!("{name} printed no listen address"))?;
        rt.admin_addr = words
            .get(2)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| anyhow!("{name} printed no admin address"))?;
        // "... dns ADDR": kept, so that a restarted edge answers DNS where it did.
        rt.dns_addr = match (words.get(3).map(String::as_str), words.get(4)) {
            (Some("dns"), Some(w)) => w
                .parse()
                .map_err(|_| anyhow!("{name} printed a bad DNS address"))?,
            _ => return Err(anyhow!("{name} printed no DNS address")),
        };
        // "... https ADDR": kept too.
        rt.https_addr = match (words.get(5).map(String::as_str), words.get(6)) {
            (Some("https"), Some(w)) => w
                .parse()
                .map_err(|_| anyhow!("{name} printed a bad HTTPS address"))?,
            _ => return Err(anyhow!("{name} printed no HTTPS address")),
        };
        rt.edge = Some(proc);
        Ok(())
    }

    /// Adds WAN links for clients located in each region toward every edge,
    /// and returns, per region, the edges in order of nearness.
    pub async fn client_paths(
        &self,
        local_delay: Duration,
    ) -> Result<Vec<(String, Vec<EdgePath>)>> {
        let mut out = Vec::new();
        for r in self.regions.iter().filter(|r| r.serves_traffic) {
            let mut paths = Vec::new();
            // Own region first, then the others in index order.
            let mut order: Vec<&RegionRuntime> = self.serving.iter().collect();
            order.sort_by_key(|rt| (rt.spec.name != r.name, rt.spec.index));
            for rt in order {
                let delay = if rt.spec.name == r.name {
                    local_delay
                } else {
                    self.one_way_delay
                };
                let addr = self
                    .wan
                    .add_link(
                        &r.client_label(),
                        &rt.spec.name,
                        SocketAddr::new(r.ip(200), 0),
                        rt.edge_addr,
                        delay,
                    )
                    .await
                    .with_context(|| {
                        format!(
                            "WAN link for clients of {} to edge {}",
                            r.name, rt.spec.name
                        )
                    })?;
                paths.push(EdgePath {
                    region: rt.spec.name.clone(),
                    addr,
                });
            }
            out.push((r.name.clone(), paths));
        }
        Ok(out)
    }

    fn runtime_mut(&mut self, region: &str) -> Result<usize> {
        self.serving
            .iter()
            .position(|rt| rt.spec.name == region)
            .ok_or_else(|| anyhow!("no serving region named {region}"))
    }

    /// Kills every process of a region outright.
    pub async fn kill_region(&mut self, region: &str) -> Result<()> {
        self.release_region_sockets(region);
        let i = self.runtime_mut(region)?;
        let rt = &mut self.serving[i];
        for p in [rt.edge.take(), rt.service.take(), rt.agent.take()]
            .into_iter()
            .flatten()
        {
            let mut p = p;
            p.kill().await;
        }
        for c in self
            .controllers
            .iter_mut()
            .filter(|c| c.spec.name == region)
        {
            if let Some(mut p) = c.proc.take() {
                p.kill().await;
            }
        }
        if let Some(node) = self.db.as_mut().and_then(|d| d.node_mut(region)) {
            node.server.kill().await;
        }
        Ok(())
    }

    /// The database's writer region, as a controller in quorum says (a
    /// controller that just restarted answers with its old state until it
    /// hears from the leader). Tries for up to 10 s.
    pub async fn writer_region(&self) -> Option<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            for (_, addr) in self.controller_addrs() {
                let client = self.controller_client(vec![addr], Duration::from_secs(1));
                if let Ok(view) = client.clusters().await {
                    if view.in_quorum {
                        return view.clusters.get(CLUSTER).map(|c| c.writer.region.clone());
                    }
                }
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts a killed region's processes again on the same addresses. Its
    /// database node is its agent's to bring back: started again while the
    /// region holds the writer, otherwise rejoined as a standby of the
    /// writer (`pg_rewind`, keeping what the old primary alone had).
    pub async fn restart_region(&mut self, region: &str) -> Result<()> {
        let i = self.runtime_mut(region)?;
        if self.serving[i].service.is_none() {
            let spec = self.serving[i].spec.clone();
            let addr = self.serving[i].service_addr;
            let db_args = self
                .db
                .as_ref()
                .and_then(|d| d.node(region))
                .map(|n| (n.proxy, n.addr));
            let (proc, _) = start_service(&self.binary, &self.dir, &spec, addr, db_args).await?;
            self.serving[i].service = Some(proc);
        }
        if let Some(k) = self.controllers.iter().position(|c| c.spec.name == region) {
            if self.controllers[k].proc.is_none() {
                self.start_controller(k).await?;
            }
        }
        if self.serving[i].edge.is_none() {
            self.start_edge(i).await?;
        }
        if self.serving[i].agent.is_none() {
            self.start_agent(i).await?;
        }
        Ok(())
    }

    /// Stops everything: agents, edges (they drain), services, controllers, then the WAN.
    pub async fn shutdown(&mut self) {
        for (_, _, p) in &mut self.witness_agents {
            if let Some(mut p) = p.take() {
                p.stop(Duration::from_secs(2)).await;
            }
        }
        for rt in &mut self.serving {
            if let Some(mut p) = rt.agent.take() {
                p.stop(Duration::from_secs(2)).await;
            }
        }
        for rt in &mut self.serving {
            if let Some(mut p) = rt.edge.take() {
                p.stop(Duration::from_secs(3)).await;
            }
        }
        for rt in &mut self.serving {
            if let Some(mut p) = rt.service.take() {
                p.stop(Duration::from_secs(3)).await;
            }
        }
        for c in &mut self.controllers {
            if let Some(mut p) = c.proc.take() {
                p.stop(Duration::from_secs(2)).await;
            }
        }
        if let Some(db) = self.db.as_mut() {
            for n in &mut db.nodes {
                let _ = n.server.stop().await;
            }
        }
        self.wan.shutdown();
    }

    /// Cuts (or heals) a region from the others: every path between it and
    /// another region, and other regions' clients from its edge. Its own
    /// clients still reach it.
    pub fn partition(&self, region: &str, fault: Fault) {
        for other in &self.regions {
            if other.name == region {
                continue;
            }
            self.wan.set_pair_fault(region, &other.name, fault);
            self.wan
                .set_pair_fault(&other.client_label(), region, fault);
            if let Some(r) = self.regions.iter().find(|r| r.name == region) {
                self.wan
                    .set_pair_fault(&r.client_label(), &other.name, fault);
            }
        }
    }

    pub fn log_dir(&self) -> &Path {
        &self.dir
    }
}

/// Starts the database: the primary in the first serving region, the
/// schema, and a standby in every other serving region made by a base backup
/// across the WAN.
///
/// Each server runs before anything is given its address. PostgreSQL cannot
/// be handed a bound socket, so a server's port is settled by its first
/// start, which moves to another port should the one chosen be taken
/// meanwhile ([`PgServer::start`]); only then are the WAN links toward it
/// made, and the configuration files, written later, name it too.
///
/// A writer proxy's socket is bound here, before the sample service is
/// given its address, and handed to the region's agent when it starts
/// ([`Held`]).
async fn start_database(
    settings: DbSettings,
    dir: &Path,
    serving: &[RegionSpec],
    wan: &Wan,
    one_way_delay: Duration,
    held: &Held,
) -> Result<DbRuntime> {
    let first = serving
        .first()
        .ok_or_else(|| anyhow!("the database needs a serving region"))?;
    let mut paths = BTreeMap::new();
    let mut nodes = Vec::new();
    let sync_standby = (settings.sync && serving.len() > 1).then(|| serving[1].name.clone());
    let mut primary = PgServer::init_primary(
        &settings.bin,
        &dir.join(format!("pg-{}", first.name)),
        &first.name,
        SocketAddr::new(first.ip(20), 0),
        sync_standby.as_deref(),
    )
    .await?;
    primary.start().await?;
    postgres::create_schema(&primary.conninfo()).await?;
    let addr = primary.listen;
    link_database_node(wan, serving, first, addr, one_way_delay, &mut paths).await?;
    nodes.push(DbNodeRuntime {
        region: first.name.clone(),
        server: primary,
        addr,
        proxy: held.bind(first.ip(5))?,
    });
    for r in serving.iter().skip(1) {
        let source = paths[&(r.name.clone(), first.name.clone())];
        let mut standby = PgServer::standby_from(
            &settings.bin,
            &dir.join(format!("pg-{}", r.name)),
            &r.name,
            SocketAddr::new(r.ip(20), 0),
            source,
            &r.name,
        )
        .await?;
        standby.start().await?;
        let addr = standby.listen;
        link_database_node(wan, serving, r, addr, one_way_delay, &mut paths).await?;
        nodes.push(DbNodeRuntime {
            region: r.name.clone(),
            server: standby,
            addr,
            proxy: held.bind(r.ip(5))?,
        });
    }
    if let Some(name) = &sync_standby {
        nodes[0]
            .server
            .wait_for_standby(name, Duration::from_secs(30))
            .await?;
    }
    Ok(DbRuntime {
        settings,
        nodes,
        paths,
    })
}

/// WAN links from every other serving region to the database node of `to`,
/// listening at `addr`; recorded in `paths` by (from, to).
async fn link_database_node(
    wan: &Wan,
    serving: &[RegionSpec],
    to: &RegionSpec,
    addr: SocketAddr,
    one_way_delay: Duration,
    paths: &mut BTreeMap<(String, String), SocketAddr>,
) -> Result<()> {
    for from in serving.iter().filter(|from| from.name != to.name) {
        let link = wan
            .add_link(
                &from.name,
                &to.name,
                SocketAddr::new(from.ip(100), 0),
                addr,
                one_way_delay,
            )
            .await
            .with_context(|| format!("WAN link {} -> database in {}", from.name, to.name))?;
        paths.insert((from.name.clone(), to.name.clone()), link);
    }
    Ok(())
}

async fn start_service(
    binary: &Path,
    dir: &Path,
    r: &RegionSpec,
    listen: SocketAddr,
    db: Option<(SocketAddr, SocketAddr)>,
) -> Result<(Proc, SocketAddr)> {
    let store = dir.join(format!("{}.store", r.name));
    let args = vec![
        "sample-service".to_string(),
        "--listen".to_string(),
        listen.to_string(),
        "--region".to_string(),
        r.name.clone(),
        "--dep".to_string(),
        format!("store=file:{},critical", store.display()),
        "--dep".to_string(),
        "cache=always:ok".to_string(),
    ];
    let mut args = args;
    if let Some((writer, local)) = db {
        args.extend([
            "--db-writer".to_string(),
            writer.to_string(),
            "--db-local".to_string(),
            local.to_string(),
        ]);
    }
    let name = format!("service-{}", r.name);
    let (proc, words) = Proc::start(&name, binary, &args, dir, READY_TIMEOUT).await?;
    let addr = words
        .first()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| anyhow!("{name} printed no listen address"))?;
    Ok((proc, addr))
}
/// The `[dns]` table of a lab edge: the zone `lab.` with `payments.lab.`
/// answering every serving region's edge, healthy while that region's
/// payments backend is, and the regions' subnets as client networks.
pub fn edge_dns_config(listen: SocketAddr, serving: &[RegionSpec], ttl: Duration) -> String {
    let mut out = format!("[dns]\nlisten = \"{listen}\"\nworkers = 1\n\n");
    for r in serving {
        out.push_str(&format!(
            "[[dns.network]]\nprefix = \"127.0.{}.0/24\"\nregion = \"{}\"\n\n",
            r.index, r.name
        ));
    }
    out.push_str(&format!(
        "[[dns.zone]]\nname = \"lab\"\nns = [{}]\nnegative_ttl = \"5s\"\n\n",
        serving
            .iter()
            .map(|r| format!("\"ns.{}.lab\"", r.name))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.push_str(&format!(
        "[[dns.zone.record]]\nname = \"payments\"\ntype = \"A\"\npolicy = \"multivalue\"\nttl = \"{}s\"\nwhen_all_unhealthy = \"fail-open\"\n\n",
        ttl.as_secs().max(1)
    ));
    for r in serving {
        out.push_str(&format!(
            "[[dns.zone.record.target]]\naddress = \"{}\"\nregion = \"{}\"\nservice = \"payments\"\n\n",
            r.ip(1),
            r.name
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_dns_table_is_a_valid_configuration() {
        let regions = default_regions();
        let serving: Vec<RegionSpec> = regions
            .iter()
            .filter(|r| r.serves_traffic)
            .cloned()
            .collect();
        let mut toml = String::new();
        for r in &regions {
            toml.push_str(&format!("[[region]]\nname = \"{}\"\n", r.name));
        }
        toml.push_str("[edge]\nregion = \"us-east\"\nlisten = \"127.0.1.1:0\"\n[service.payments]\npolicy = \"failover\"\n");
        for r in &serving {
            toml.push_str(&format!(
                "[[service.payments.backend]]\nregion = \"{}\"\nurl = \"http://127.0.{}.10:80\"\n",
                r.name, r.index
            ));
        }
        toml.push_str(&edge_dns_config(
            "127.0.1.1:0".parse().unwrap(),
            &serving,
            Duration::from_secs(2),
        ));
        let cfg = tern_core::config::Config::from_toml("lab.toml", &toml)
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let dns = cfg.dns.unwrap();
        assert_eq!(dns.zones[0].records[0].name, "payments.lab");
        assert_eq!(dns.zones[0].records[0].ttl, Duration::from_secs(2));
        assert_eq!(dns.networks.len(), 2);
    }
}

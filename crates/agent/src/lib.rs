//! The region agent: every `verdict.interval` it runs the configured health
//! checks of every region's backends from its own region, and sends one
//! batch of observations (one result per region) to the controllers. Each
//! region is thus watched from every region; the controllers' leader
//! aggregates the batches and commits only verdict changes.

pub mod db;
pub mod metrics;
pub mod writer_proxy;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use tern_core::config::{Backend, Config, Database};
use tern_probe::{probe, probe_client, ProbeClient};
use tern_proto::api::{ObservationBatch, RegionResult};
use tern_proto::lifecycle::{Exit, Tasks};
use tern_proto::ControllerClient;
use tokio_util::sync::CancellationToken;

/// Whether this build honours the test-only safety switches (the
/// `fault-injection` feature; only the tests' builds have it).
pub const FAULT_INJECTION: bool = cfg!(feature = "fault-injection");

fn db_loop_name(d: &Database) -> String {
    format!("database loop {}", d.name)
}

/// How long a new writer proxy holds connections while the agent first
/// learns the writer (see [`writer_proxy::WriterProxy::hold_until_first_target`]);
/// within the sample service's 2 s database deadline.
const PROXY_STARTUP_HOLD: Duration = Duration::from_millis(1500);

/// How long the agent's tasks get to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a stopping agent's writer proxies let their open sessions go on
/// while the next agent, given the same sockets, takes over (see
/// [`writer_proxy`]'s drain). Sessions never outlive the writer's lease as
/// this agent last saw it renewed, however long this is.
const PROXY_DRAIN: Duration = Duration::from_secs(4);

pub struct Agent {
    region: String,
    interval: Duration,
    timeout: Duration,
    /// Backends to probe, by region and service: each service gets its own
    /// verdict in each region.
    targets: BTreeMap<(String, String), Vec<Backend>>,
    controllers: ControllerClient,
    probes: ProbeClient,
    /// Database clusters with a node in this region.
    databases: Vec<Database>,
    proxies: Vec<(String, writer_proxy::WriterProxy)>,
    proxy_tasks: Vec<writer_proxy::ProxyTask>,
    metrics: metrics::AgentMetrics,
    /// `agent.admin`, and its listener once bound.
    admin: Option<std::net::SocketAddr>,
    admin_listener: Option<std::net::TcpListener>,
    /// The agent's control-plane certificate, reloaded while it runs.
    tls: Option<tern_proto::tls::ControlPlaneTls>,
}

/// A start refused for a problem of the configuration or the files it
/// names (`tern agent` exits 78 on it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigProblem(pub String);

impl Agent {
    pub fn new(config: &Config) -> Result<Agent> {
        let region = config
            .agent
            .clone()
            .ok_or_else(|| anyhow!("the configuration has no [agent] table"))?;
        let ctl = config
            .controller
            .as_ref()
            .ok_or_else(|| anyhow!("the configuration has no [controller] table"))?;
        let mut targets: BTreeMap<(String, String), Vec<Backend>> = BTreeMap::new();
        for s in &config.services {
            for b in &s.backends {
                targets
                    .entry((b.region.clone(), s.name.clone()))
                    .or_default()
                    .push(b.clone());
            }
        }
        if targets.is_empty() {
            return Err(anyhow!(
                "the configuration has no service backends to watch"
            ));
        }
        let databases: Vec<Database> = config
            .databases
            .iter()
            .filter(|d| d.node(&region).is_some())
            .cloned()
            .collect();
        for d in &databases {
            db::check_node(d, &region)?;
        }
        // Mutual TLS toward the controllers, as this region's agent.
        let tls = match &ctl.tls {
            Some(t) => Some(
                tern_proto::tls::ControlPlaneTls::load(
                    t,
                    tern_core::auth::Principal::new(tern_core::auth::Role::Agent, &region),
                    None,
                )
                .map_err(|e| anyhow!(ConfigProblem(format!("control-plane TLS: {e}"))))?,
            ),
            None => None,
        };
        Ok(Agent {
            interval: config.verdict.interval,
            timeout: config.verdict.timeout,
            targets,
            controllers: ControllerClient::with_tls(
                ctl.nodes.iter().map(|n| n.addr).collect(),
                ctl.rpc_timeout.max(Duration::from_millis(500)),
                tls.as_ref().map(|t| t.client_config()),
            ),
            tls,
            probes: probe_client(),
            databases,
            proxies: Vec::new(),
            proxy_tasks: Vec::new(),
            metrics: metrics::AgentMetrics::new(&region),
            admin: config.agent_admin,
            admin_listener: None,
            region,
        })
    }

    /// Binds the admin endpoint (`/metrics`, `/ready`) at `agent.admin`, or
    /// takes `inherited` (a listener handed over, which must be bound to
    /// that address); answers its address, or `None` when the
    /// configuration names none.
    ///
    /// # Errors
    /// The address cannot be bound; an inherited listener bound elsewhere,
    /// or handed over without `agent.admin` in the configuration.
    pub fn bind_admin(
        &mut self,
        inherited: Option<std::net::TcpListener>,
    ) -> Result<Option<std::net::SocketAddr>> {
        let listener = match (self.admin, inherited) {
            (None, None) => return Ok(None),
            (None, Some(_)) => {
                bail!("an admin socket was handed over, but the configuration has no agent.admin")
            }
            (Some(addr), Some(l)) => {
                let at = l.local_addr()?;
                if at != addr {
                    bail!(
                        "the admin socket handed over is bound to {at}, but agent.admin is {addr}"
                    );
                }
                l
            }
            (Some(addr), None) => metrics::bind(addr)?,
        };
        let at = listener.local_addr()?;
        self.admin_listener = Some(listener);
        Ok(Some(at))
    }

    /// Binds the writer proxy of each cluster that has one in this region;
    /// answers (cluster, address) for each. Until the controllers say who
    /// the writer is, a proxy refuses connections.
    ///
    /// `inherited` holds listeners bound already, by cluster name (handed
    /// over by the process that started the agent); a cluster's proxy uses
    /// its listener instead of binding one.
    ///
    /// # Errors
    /// An address that cannot be bound; an inherited listener bound to
    /// another address than the cluster's configured `proxy`, or for a
    /// cluster without a proxy in this region.
    pub async fn bind_proxies(
        &mut self,
        mut inherited: BTreeMap<String, std::net::TcpListener>,
    ) -> Result<Vec<(String, std::net::SocketAddr)>> {
        let mut out = Vec::new();
        for d in &self.databases {
            let Some(listen) = d.node(&self.region).and_then(|n| n.proxy) else {
                continue;
            };
            let closed = writer_proxy::Target::Closed {
                reason: "the agent has not heard from the controllers yet".into(),
            };
            let bound = match inherited.remove(&d.name) {
                Some(l) => {
                    let at = l.local_addr()?;
                    if at != listen {
                        bail!(
                            "the writer proxy socket of {} handed over is bound to {at}, but its configured proxy address is {listen}",
                            d.name
                        );
                    }
                    l.set_nonblocking(true)?;
                    writer_proxy::WriterProxy::bind_on(
                        tokio::net::TcpListener::from_std(l)?,
                        &d.name,
                        closed,
                    )
                }
                None => writer_proxy::WriterProxy::bind(listen, &d.name, closed).await,
            };
            let (proxy, task) =
                bound.map_err(|e| anyhow!("writer proxy of {} on {listen}: {e:#}", d.name))?;
            // Clients that connect while this agent first asks who the
            // writer is (a restart) wait for the answer, for up to a lease
            // tick, rather than being refused.
            proxy.hold_until_first_target(PROXY_STARTUP_HOLD);
            out.push((d.name.clone(), proxy.local_addr()));
            self.metrics.add_proxy(&d.name, proxy.clone());
            self.proxies.push((d.name.clone(), proxy));
            self.proxy_tasks.push(task);
        }
        if let Some(cluster) = inherited.keys().next() {
            bail!(
                "a writer proxy socket was handed over for {cluster}, which has no proxy in region {}",
                self.region
            );
        }
        Ok(out)
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn regions(&self) -> impl Iterator<Item = &str> {
        let regions: std::collections::BTreeSet<&str> =
            self.targets.keys().map(|(r, _)| r.as_str()).collect();
        regions.into_iter()
    }

    /// One probe round: every backend of every region, concurrently.
    pub async fn round(&self) -> ObservationBatch {
        let mut checks = Vec::new();
        for ((region, service), backends) in &self.targets {
            for b in backends {
                let client = self.probes.clone();
                let timeout = self.timeout;
                let region = (region.clone(), service.clone());
                let backend = b.clone();
                checks.push(tokio::spawn(async move {
                    let p = probe(
                        &client,
                        &backend.url,
                        backend.tls.as_ref(),
                        &backend.health.probe,
                        timeout,
                    )
                    .await;
                    let outcome = if p.ok {
                        Ok(p.elapsed)
                    } else {
                        Err(format!("{}: {}", backend.url, p.detail))
                    };
                    (region, outcome)
                }));
            }
        }
        let mut by_region: BTreeMap<(String, String), RegionResult> = BTreeMap::new();
        for c in checks {
            let Ok(((region, service), outcome)) = c.await else {
                continue;
            };
            let r = by_region
                .entry((region.clone(), service.clone()))
                .or_insert_with(|| RegionResult {
                    region,
                    service: Some(service),
                    ok: true,
                    latency_ms: None,
                    detail: String::new(),
                });
            match outcome {
                Ok(latency) => {
                    let ms = latency.as_millis() as u64;
                    r.latency_ms = Some(r.latency_ms.map_or(ms, |l| l.max(ms)));
                }
                Err(detail) => {
                    r.ok = false;
                    if !r.detail.is_empty() {
                        r.detail.push_str("; ");
                    }
                    r.detail.push_str(&detail);
                }
            }
        }
        ObservationBatch {
            vantage: self.region.clone(),
            results: by_region.into_values().collect(),
        }
    }

    /// Checks, for each cluster with `app_roles`, that the local node's
    /// `pg_hba.conf` admits those roles only from the writer proxies
    /// (`app_sources`). Fails with every offending rule when one lets them
    /// past the proxy; a node that does not answer now is checked on the
    /// database loop's first connection instead (and only logged then).
    pub async fn check_doors(&self) -> Result<()> {
        let mut open = Vec::new();
        for d in &self.databases {
            let Some(conninfo) = db::conninfo(d, &self.region) else {
                continue;
            };
            let found = db::doors::check(d, &conninfo, Duration::from_secs(2)).await;
            match &found {
                db::doors::DoorCheck::Open(problems) => open.push(format!(
                    "database {}: the writer proxy is not the only door for application roles {} on the node in {}:\n  {}\n  \
                     admit them only from the writer proxies' addresses, or remove app_roles to run without this guarantee",
                    d.name,
                    d.app_roles.join(", "),
                    self.region,
                    problems.join("\n  ")
                )),
                other => db::doors::log(d, other),
            }
        }
        if open.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(open.join("\n")))
        }
    }

    /// Probes and reports every interval until `stop`; runs a database
    /// loop per cluster with a node here, and the writer proxies. A
    /// database loop that panics is started again after a second; its
    /// fence watchdog has already stopped the node and closed the proxy.
    ///
    /// On `stop` the database loops, probes and admin endpoint stop first
    /// (a round in progress finishes; the node keeps running), then the
    /// agent prints `draining: ...` on stdout and its writer proxies stop
    /// accepting and drain their open sessions for up to [`PROXY_DRAIN`]: a
    /// supervisor holding the proxies' sockets starts the next agent on
    /// that line, so that one database loop at a time acts on the node and
    /// no client session is cut in flight.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut tasks = Tasks::new(&stop);
        if let Some(t) = &self.tls {
            t.spawn_watch(tasks.token());
        }
        // The proxies outlive the rest: their token is cancelled only once
        // the database loops have stopped.
        let mut proxies = Tasks::new(&CancellationToken::new());
        for (task, (cluster, _)) in std::mem::take(&mut self.proxy_tasks)
            .into_iter()
            .zip(&self.proxies)
        {
            proxies.spawn(
                format!("writer proxy {cluster}"),
                task.with_drain(PROXY_DRAIN).run(proxies.token()),
            );
        }
        if let Some(l) = self.admin_listener.take() {
            let metrics = self.metrics.clone();
            let token = tasks.token();
            tasks.spawn("admin endpoint".to_string(), async move {
                if let Err(e) = metrics::serve(l, metrics, token).await {
                    tracing::error!("the agent's admin endpoint stopped: {e:#}");
                }
            });
        }
        let databases = std::mem::take(&mut self.databases);
        for d in &databases {
            self.spawn_db_loop(&mut tasks, d);
        }
        let probes = self.probe_loop(tasks.token());
        tokio::pin!(probes);
        loop {
            tokio::select! {
                () = &mut probes => break,
                Some(exit) = proxies.next_exit(), if !proxies.is_empty() => tracing::warn!("{exit}"),
                Some(exit) = tasks.next_exit(), if !tasks.is_empty() => {
                    if stop.is_cancelled() {
                        continue;
                    }
                    let crashed = databases.iter().find(|d| exit.task() == db_loop_name(d));
                    match (crashed, &exit) {
                        (Some(d), Exit::Panicked { message, .. }) => {
                            tracing::error!(cluster = %d.name, "the database loop panicked ({message}); its node is fenced and its writer proxy closed; starting it again in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            self.spawn_db_loop(&mut tasks, d);
                        }
                        _ => tracing::warn!("{exit}"),
                    }
                }
            }
        }
        tasks.shutdown(SHUTDOWN_GRACE).await;
        if !proxies.is_empty() {
            let clusters: Vec<&str> = self.proxies.iter().map(|(c, _)| c.as_str()).collect();
            println!("draining: writer proxies of {}", clusters.join(", "));
            proxies.shutdown(PROXY_DRAIN + Duration::from_secs(1)).await;
        }
    }

    fn spawn_db_loop(&self, tasks: &mut Tasks, d: &Database) {
        let proxy = self
            .proxies
            .iter()
            .find(|(c, _)| *c == d.name)
            .map(|(_, p)| p.clone());
        match db::DbAgent::new(&self.region, d.clone(), self.controllers.clone(), proxy) {
            Ok(agent) => tasks.spawn(
                db_loop_name(d),
                agent.with_metrics(self.metrics.clone()).run(tasks.token()),
            ),
            Err(e) => tracing::error!("{e}"),
        }
    }

    async fn probe_loop(&self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unreachable = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let batch = self.round().await;
            for r in &batch.results {
                self.metrics
                    .probe(&r.region, r.service.as_deref(), r.ok, r.latency_ms);
                if !r.ok {
                    tracing::debug!(region = %r.region, detail = %r.detail, "probe failed");
                }
            }
            match self.controllers.observe(&batch).await {
                Ok(()) => {
                    if unreachable {
                        tracing::info!("controllers reachable again");
                        unreachable = false;
                    }
                }
                Err(e) => {
                    self.metrics.report_failed();
                    if !unreachable {
                        tracing::warn!(error = %e, "observations not delivered; no controller with a quorum answers");
                        unreachable = true;
                    }
                }
            }
        }
    }
}

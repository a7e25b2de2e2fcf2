//! One controller node: the Raft member, its HTTP server, and (while it
//! leads) the verdict engine that turns observations into committed
//! decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::AppendEntriesResponse;
use openraft::{BasicNode, Raft, ServerState};
use serde::de::DeserializeOwned;
use tern_core::config::{Config, ControllerSettings, Database, Replication, VerdictConfig};
use tern_core::control::{Applied, Command, ControlState};
use tern_core::failover::{leader_action, ClusterSpec, LeaderAction, LeaderView, PlanKind, Step};
use tern_core::lease::LeaseSettings;
use tern_core::verdict::{Observation, Verdict, VerdictEngine};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{
    ClustersView, EventsView, LeaseView, MemberView, MembershipChange, ObservationBatch,
    ReplicationReport, ReplicationSeen, RoutingView, StatusView, WriteAnswer,
};
use crate::http::{error, json, CallError, HttpClient};
use crate::network::Network;
use crate::store::{self, StateMachine};
use crate::{NodeId, Request, TypeConfig};

type Body = Full<Bytes>;
type Resp = http::Response<Body>;

/// Wall-clock time as the control state counts it.
pub fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Requests forwarded by a follower carry this header; the receiver does
/// not forward them again.
const FORWARDED: &str = "x-tern-forwarded";
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Longest wait for a request head on an open connection (idle keep-alive included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How a node starts.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub id: NodeId,
    pub data_dir: std::path::PathBuf,
    /// Address to listen on; defaults to the node's configured address.
    pub listen: Option<SocketAddr>,
    /// Join an existing group instead of forming one from the configuration
    /// (the node waits to be added with `tern controller add-node`).
    pub join: bool,
}

pub struct Controller {
    pub id: NodeId,
    pub region: String,
    pub addr: SocketAddr,
    raft: Raft<TypeConfig>,
    machine: StateMachine,
    client: HttpClient,
    peers: Arc<BTreeMap<NodeId, SocketAddr>>,
    settings: ControllerSettings,
    verdict: VerdictConfig,
    /// Serving regions: the verdict targets.
    regions: Vec<String>,
    /// Regions whose agents vote: every region of the configuration.
    vantages: Vec<String>,
    /// The verdict engine of the current leadership term.
    engine: Mutex<Option<(u64, VerdictEngine)>>,
    /// When a legitimate leader last reached this node.
    leader_contact: Mutex<Option<Instant>>,
    databases: Vec<Database>,
    /// The latest replication report per (cluster, region), with its arrival.
    replication: Mutex<BTreeMap<(String, String), (Instant, ReplicationReport)>>,
    /// When the leader last tried to start a plan, per cluster (a refused
    /// start is tried again once a second, not every tick).
    plan_attempts: Mutex<BTreeMap<String, Instant>>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Controller {
    /// Opens the node's storage, binds its address and starts Raft, the API
    /// server and the leader loop.
    pub async fn start(config: &Config, options: NodeOptions) -> Result<Arc<Controller>> {
        let settings = config
            .controller
            .clone()
            .ok_or_else(|| anyhow!("the configuration has no [controller] table"))?;
        let me = settings.node(options.id).cloned().ok_or_else(|| {
            anyhow!(
                "no [[controller.node]] with id {} in the configuration (ids: {})",
                options.id,
                settings
                    .nodes
                    .iter()
                    .map(|n| n.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("create {}", options.data_dir.display()))?;

        // A region's starting weight is the largest of its backends'.
        let mut weights: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
        for s in &config.services {
            let w = weights.entry(s.name.clone()).or_default();
            for b in &s.backends {
                let e = w.entry(b.region.clone()).or_insert(0);
                *e = (*e).max(b.weight);
            }
        }
        let leases = config
            .databases
            .iter()
            .map(|d| d.lease)
            .reduce(|a, b| LeaseSettings {
                duration: a.duration.max(b.duration),
                drift_margin: a.drift_margin.max(b.drift_margin),
            })
            .unwrap_or(LeaseSettings {
                duration: Duration::from_secs(5),
                drift_margin: Duration::from_millis(500),
            });
        let initial = ControlState::with_weights(weights, leases).with_clusters(
            config
                .databases
                .iter()
                .filter(|d| !d.nodes.is_empty())
                .map(|d| (d.name.clone(), cluster_spec(d))),
        );
        let (log, machine) = store::open(&options.data_dir.join("controller.redb"), initial)?;

        let raft_config = openraft::Config {
            cluster_name: "tern".into(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_timeout.as_millis() as u64,
            election_timeout_max: settings.election_timeout.as_millis() as u64 * 2,
            install_snapshot_timeout: (settings.rpc_timeout.as_millis() as u64 * 4).max(1000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| anyhow!("controller timings: {e}"))?;

        let peers: BTreeMap<NodeId, SocketAddr> =
            settings.nodes.iter().map(|n| (n.id, n.addr)).collect();
        let peers = Arc::new(peers);
        let client = HttpClient::new();
        let network = Network {
            client: client.clone(),
            peers: peers.clone(),
            rpc_timeout: settings.rpc_timeout,
        };
        let raft = Raft::new(
            options.id,
            Arc::new(raft_config),
            network,
            log,
            machine.clone(),
        )
        .await
        .map_err(|e| anyhow!("start raft: {e}"))?;

        let listen = options.listen.unwrap_or(me.addr);
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind the controller address {listen}"))?;
        let addr = listener.local_addr()?;

        let regions: Vec<String> = config
            .regions
            .iter()
            .filter(|r| r.serves_traffic)
            .map(|r| r.name.clone())
            .collect();
        // Every region is a vantage point (the witness too): a verdict needs
        // a majority of all of them, reporting or not.
        let vantages: Vec<String> = config.regions.iter().map(|r| r.name.clone()).collect();
        let (shutdown, _) = watch::channel(false);
        let node = Arc::new(Controller {
            id: options.id,
            region: me.region.clone(),
            addr,
            raft,
            machine,
            client,
            peers,
            settings: settings.clone(),
            verdict: config.verdict.clone(),
            regions,
            vantages,
            engine: Mutex::new(None),
            leader_contact: Mutex::new(None),
            databases: config.databases.clone(),
            replication: Mutex::new(BTreeMap::new()),
            plan_attempts: Mutex::new(BTreeMap::new()),
            shutdown,
            tasks: Mutex::new(Vec::new()),
        });

        let tasks = vec![
            tokio::spawn(serve(node.clone(), listener)),
            tokio::spawn(leader_loop(node.clone())),
        ];
        *node.tasks.lock().expect("tasks lock") = tasks;

        let initialized = node
            .raft
            .is_initialized()
            .await
            .map_err(|e| anyhow!("raft: {e}"))?;
        if !initialized && !options.join {
            let members: BTreeMap<NodeId, BasicNode> = settings
                .nodes
                .iter()
                .map(|n| (n.id, BasicNode::new(n.addr.to_string())))
                .collect();
            // Every configured node may do this with the same members: safe.
            if let Err(e) = node.raft.initialize(members).await {
                tracing::debug!("initialize: {e}");
            }
        }
        Ok(node)
    }

    /// Stops the server, the leader loop and Raft, and waits for them.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            let _ = t.await;
        }
        let _ = self.raft.shutdown().await;
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// A copy of the applied control state.
    pub fn state(&self) -> ControlState {
        self.machine.with(|m| m.state.clone())
    }

    fn election_timeout(&self) -> Duration {
        self.settings.election_timeout
    }

    /// Whether this node is part of a working majority now.
    pub fn in_quorum(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        match m.state {
            ServerState::Leader => m
                .millis_since_quorum_ack
                .is_some_and(|ms| ms < self.election_timeout().as_millis() as u64),
            ServerState::Follower => {
                m.current_leader.is_some()
                    && self
                        .leader_contact
                        .lock()
                        .expect("contact lock")
                        .is_some_and(|t| t.elapsed() < self.election_timeout() * 2)
            }
            _ => false,
        }
    }

    pub fn status(&self) -> StatusView {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberView {
                id: *id,
                addr: self
                    .peers
                    .get(id)
                    .map_or(node.addr.clone(), |a| a.to_string()),
                voter: voters.contains(id),
            })
            .collect();
        let (verdicts, routing, leases) = self.machine.with(|mach| {
            let s = &mach.state;
            let verdicts = self
                .regions
                .iter()
                .map(|r| (r.clone(), s.verdict(r).as_str().to_string()))
                .collect();
            let leases = lease_views(s);
            (verdicts, s.routing().clone(), leases)
        });
        StatusView {
            node: self.id,
            region: self.region.clone(),
            role: role.to_string(),
            leader: m.current_leader,
            in_quorum: self.in_quorum(),
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index),
            members,
            verdicts,
            routing,
            leases,
            now_ms: now().as_millis() as u64,
        }
    }

    /// The database clusters with their leases and the replication reports held here.
    pub fn clusters_view(&self) -> ClustersView {
        let (clusters, leases) = self.machine.with(|m| {
            let s = &m.state;
            let leases = lease_views(s);
            (s.clusters().clone(), leases)
        });
        let replication = self
            .replication
            .lock()
            .expect("replication lock")
            .values()
            .map(|(at, r)| ReplicationSeen {
                report: r.clone(),
                age_ms: at.elapsed().as_millis() as u64,
            })
            .collect();
        ClustersView {
            in_quorum: self.in_quorum(),
            now_ms: now().as_millis() as u64,
            clusters,
            leases,
            replication,
        }
    }

    /// What the leader knows of a cluster beyond the committed state: which
    /// regions could take the writer and the last known lag toward the first.
    fn leader_view(&self, state: &ControlState, cluster: &str) -> Option<LeaderView> {
        let c = state.clusters().get(cluster)?;
        let writer_down = !state.verdict(&c.writer.region).serves();
        let candidates: Vec<String> = c
            .spec
            .regions
            .iter()
            .filter(|r| **r != c.writer.region && state.verdict(r).serves())
            .cloned()
            .collect();
        let reports = self.replication.lock().expect("replication lock");
        let primary = reports.get(&(cluster.to_string(), c.writer.region.clone()));
        let target = candidates
            .first()
            .and_then(|t| reports.get(&(cluster.to_string(), t.clone())));
        let mut evidence = Vec::new();
        let lag_bytes = match (primary, target) {
            (Some((pa, p)), Some((ta, t))) if p.role == "primary" && t.role == "standby" => {
                let received = t.received_lsn.unwrap_or(t.lsn).max(t.lsn);
                evidence.push(format!(
                    "primary {} last reported WAL at {} ({} ms ago)",
                    p.region,
                    p.lsn,
                    pa.elapsed().as_millis()
                ));
                evidence.push(format!(
                    "standby {} has received {} ({} ms ago)",
                    t.region,
                    received,
                    ta.elapsed().as_millis()
                ));
                Some(p.lsn.saturating_sub(received))
            }
            _ => {
                evidence.push(format!(
                    "no usable reports: primary {}, standby {}",
                    primary.map_or("none".to_string(), |(_, r)| r.role.clone()),
                    target.map_or("none".to_string(), |(_, r)| r.role.clone())
                ));
                None
            }
        };
        Some(LeaderView {
            writer_down,
            candidates,
            lag_bytes,
            evidence,
        })
    }

    /// An operator's plan comes without a lag figure: the leader adds the
    /// one it knows, with its evidence, so the gate and the audit have it.
    fn with_lag(&self, command: Command) -> Command {
        match command {
            Command::StartFailover {
                cluster,
                to,
                kind,
                lag_bytes: None,
                mut evidence,
            } => {
                let view = self.leader_view(&self.state(), &cluster);
                let lag_bytes = view.as_ref().and_then(|v| v.lag_bytes);
                if let Some(v) = view {
                    evidence.extend(v.evidence);
                }
                Command::StartFailover {
                    cluster,
                    to,
                    kind,
                    lag_bytes,
                    evidence,
                }
            }
            other => other,
        }
    }

    /// Merges the replication reports the other controllers hold: for each
    /// (cluster, region) the freshest report wins.
    async fn fetch_peer_reports(&self) {
        let peers: Vec<SocketAddr> = self
            .peers
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, a)| *a)
            .collect();
        let calls = peers.iter().map(|a| {
            self.client
                .get::<ClustersView>(*a, "/v1/clusters", self.settings.rpc_timeout)
        });
        let views = futures_util::future::join_all(calls).await;
        let now = Instant::now();
        let mut mine = self.replication.lock().expect("replication lock");
        for view in views.into_iter().flatten() {
            for seen in view.replication {
                let at = now
                    .checked_sub(Duration::from_millis(seen.age_ms))
                    .unwrap_or(now);
                let key = (seen.report.cluster.clone(), seen.report.region.clone());
                let newer = mine.get(&key).is_none_or(|(t, _)| *t < at);
                if newer {
                    mine.insert(key, (at, seen.report));
                }
            }
        }
    }

    /// While leading with a quorum: starts, grants and retries failover plans.
    async fn drive_plans(&self) {
        let state = self.state();
        let names: Vec<String> = state.clusters().keys().cloned().collect();
        for cluster in names {
            let Some(view) = self.leader_view(&state, &cluster) else {
                continue;
            };
            let c = &state.clusters()[&cluster];
            let Some(action) = leader_action(c, &cluster, state.leases(), &view, now()) else {
                continue;
            };
            let command = match action {
                LeaderAction::Start {
                    to,
                    lag_bytes,
                    evidence,
                } => {
                    let throttled = {
                        let mut attempts = self.plan_attempts.lock().expect("attempts lock");
                        let recent = attempts
                            .get(&cluster)
                            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
                        if !recent {
                            attempts.insert(cluster.clone(), Instant::now());
                        }
                        recent
                    };
                    if throttled {
                        continue;
                    }
                    if lag_bytes.is_none() {
                        // This node may have restarted and lost the reports
                        // (the dead primary's last one never comes again):
                        // its peers hold them too.
                        self.fetch_peer_reports().await;
                        if let Some(v) = self.leader_view(&state, &cluster) {
                            if v.lag_bytes.is_some() {
                                continue; // decided on the next tick, with the figure
                            }
                        }
                    }
                    Command::StartFailover {
                        cluster: cluster.clone(),
                        to,
                        kind: PlanKind::Automatic,
                        lag_bytes,
                        evidence,
                    }
                }
                LeaderAction::Grant { plan_id } => Command::PlanStep {
                    cluster: cluster.clone(),
                    plan_id,
                    step: Step::WaitLease,
                    ok: true,
                    detail: "the previous lease surely expired".into(),
                    lsn: None,
                },
                LeaderAction::TimedOut { plan_id, step } => Command::PlanTimedOut {
                    cluster: cluster.clone(),
                    plan_id,
                    step,
                },
            };
            match self.write_local(command).await {
                Ok(WriteAnswer {
                    applied: Applied::Plan(id),
                    ..
                }) => tracing::info!(%cluster, plan = id, "failover plan started"),
                Ok(_) => {}
                Err(e) => tracing::debug!(%cluster, "plan command not committed: {e}"),
            }
        }
    }

    fn leader_addr(&self) -> Option<SocketAddr> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        if leader == self.id {
            return None;
        }
        self.peers.get(&leader).copied().or_else(|| {
            m.membership_config
                .membership()
                .get_node(&leader)
                .and_then(|n| n.addr.parse().ok())
        })
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Commits a command through the leader: here if this node leads,
    /// otherwise forwarded once. Fails when no quorum commits it in time.
    pub async fn write(
        &self,
        command: Command,
        forwarded: bool,
    ) -> Result<WriteAnswer, WriteError> {
        if self.is_leader() {
            return self.write_local(command).await;
        }
        if forwarded {
            return Err(WriteError::NoQuorum(format!(
                "controller {} does not lead and does not forward twice",
                self.id
            )));
        }
        let leader = self.leader_addr().ok_or_else(|| {
            WriteError::NoQuorum(format!(
                "controller {} knows no leader; it is out of quorum and commits nothing",
                self.id
            ))
        })?;
        let deadline = self.write_deadline() + self.settings.rpc_timeout;
        self.client
            .post_with_header::<_, WriteAnswer>(
                leader,
                "/v1/write",
                &command,
                deadline,
                (FORWARDED, "1"),
            )
            .await
            .map_err(|e| match e {
                CallError::Status {
                    status: 409,
                    message,
                    ..
                } => WriteError::Refused(message),
                other => WriteError::NoQuorum(format!(
                    "the leader could not commit it ({other}); this node may be out of quorum"
                )),
            })
    }

    fn write_deadline(&self) -> Duration {
        self.election_timeout() * 2
    }

    async fn write_local(&self, command: Command) -> Result<WriteAnswer, WriteError> {
        let command = self.with_lag(command);
        let request = Request {
            at_ms: now().as_millis() as u64,
            command,
        };
        let result = tokio::time::timeout(self.write_deadline(), self.raft.client_write(request))
            .await
            .map_err(|_| {
                WriteError::NoQuorum(format!(
                    "not committed within {} ms: controller {} cannot reach a majority",
                    self.write_deadline().as_millis(),
                    self.id
                ))
            })?;
        match result {
            Ok(r) => match r.data.outcome {
                Ok(applied) => Ok(WriteAnswer {
                    applied,
                    index: r.log_id.index,
                }),
                Err(message) => Err(WriteError::Refused(message)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(WriteError::NoQuorum(format!(
                    "leadership moved to {:?} while writing; retry",
                    f.leader_id
                )))
            }
            Err(e) => Err(WriteError::NoQuorum(e.to_string())),
        }
    }

    /// Feeds an agent's observations to the leader's verdict engine.
    async fn observe(&self, batch: ObservationBatch, forwarded: bool) -> Result<(), WriteError> {
        if !self.is_leader() {
            if forwarded {
                return Err(WriteError::NoQuorum("not the leader".into()));
            }
            let leader = self
                .leader_addr()
                .ok_or_else(|| WriteError::NoQuorum("no leader known".into()))?;
            return self
                .client
                .post_with_header::<_, serde_json::Value>(
                    leader,
                    "/v1/observations",
                    &batch,
                    self.settings.rpc_timeout,
                    (FORWARDED, "1"),
                )
                .await
                .map(|_| ())
                .map_err(|e| WriteError::NoQuorum(e.to_string()));
        }
        let at = now();
        let decisions = {
            let mut engine = self.engine.lock().expect("engine lock");
            let Some((_, engine)) = engine.as_mut() else {
                return Err(WriteError::NoQuorum(
                    "the leader is still taking over".into(),
                ));
            };
            let mut decisions = Vec::new();
            for r in &batch.results {
                let obs = Observation {
                    vantage: batch.vantage.clone(),
                    target: r.region.clone(),
                    ok: r.ok,
                    latency: r.latency_ms.map(Duration::from_millis),
                    at,
                };
                decisions.extend(engine.observe(&obs));
            }
            decisions
        };
        self.commit_decisions(decisions).await;
        Ok(())
    }

    async fn commit_decisions(&self, decisions: Vec<tern_core::verdict::Decision>) {
        if decisions.is_empty() {
            return;
        }
        if !self.in_quorum() {
            // A leader cut off from its majority decides nothing; the engine
            // starts again from the committed verdicts if it keeps leading.
            tracing::warn!(
                "out of quorum: {} verdict decisions dropped",
                decisions.len()
            );
            self.engine.lock().expect("engine lock").take();
            return;
        }
        for d in decisions {
            let target = d.target.clone();
            if let Err(e) = self.write_local(Command::Verdict(d)).await {
                tracing::warn!("verdict on {target} not committed: {e}");
                self.engine.lock().expect("engine lock").take();
                return;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The state machine refused the command (the message says why).
    #[error("{0}")]
    Refused(String),
    /// Not committed: no reachable majority.
    #[error("{0}")]
    NoQuorum(String),
}

impl HttpClient {
    /// POST with one extra header.
    pub async fn post_with_header<B: serde::Serialize, R: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &B,
        deadline: Duration,
        header: (&'static str, &'static str),
    ) -> Result<R, CallError> {
        self.post_headers(addr, path, body, deadline, &[header])
            .await
    }
}

/// While this node leads: starts a verdict engine per term (from the
/// committed verdicts), records the leadership change, and ticks the
/// engine so that silent vantage points go stale.
async fn leader_loop(node: Arc<Controller>) {
    let mut shutdown = node.shutdown.subscribe();
    let tick = (node.verdict.interval / 4).max(Duration::from_millis(50));
    let mut announced_term = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let m = node.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            node.engine.lock().expect("engine lock").take();
            continue;
        }
        let term = m.current_term;
        let fresh = {
            let engine = node.engine.lock().expect("engine lock");
            engine.as_ref().map(|(t, _)| *t) != Some(term)
        };
        if fresh {
            if !node.in_quorum() {
                continue;
            }
            if announced_term != term {
                let leader = format!("controller {} ({})", node.id, node.region);
                match node.write_local(Command::LeaderChanged { leader }).await {
                    Ok(_) => announced_term = term,
                    Err(e) => {
                        tracing::warn!("leader change not committed: {e}");
                        continue;
                    }
                }
            }
            let at = now();
            let mut engine = VerdictEngine::new(
                node.verdict.settings,
                node.vantages.clone(),
                &node.regions,
                at,
            );
            node.machine.with(|mach| {
                for r in &node.regions {
                    engine.seed(r, mach.state.verdict(r), at);
                }
            });
            *node.engine.lock().expect("engine lock") = Some((term, engine));
            continue;
        }
        let decisions = {
            let mut engine = node.engine.lock().expect("engine lock");
            match engine.as_mut() {
                Some((_, e)) => e.tick(now()),
                None => Vec::new(),
            }
        };
        node.commit_decisions(decisions).await;
        if node.in_quorum() {
            node.drive_plans().await;
        }
    }
}

/// The leases of a control state, as the API shows them.
fn lease_views(s: &ControlState) -> Vec<LeaseView> {
    s.leases()
        .clusters()
        .map(|c| {
            let holder = s.leases().holder(c);
            LeaseView {
                cluster: c.to_string(),
                epoch: s.leases().epoch(c),
                holder: holder.as_ref().map(|h| h.0.clone()),
                expires_at_ms: holder.map(|h| h.2.as_millis() as u64),
            }
        })
        .collect()
}

/// What the replicated state keeps of a configured database cluster.
fn cluster_spec(d: &Database) -> ClusterSpec {
    ClusterSpec {
        sync: d.replication == Replication::Sync,
        rpo_budget: d.rpo_budget,
        regions: d.nodes.iter().map(|n| n.region.clone()).collect(),
        primary: d
            .primary
            .clone()
            .or_else(|| d.nodes.first().map(|n| n.region.clone()))
            .unwrap_or_default(),
        scale_hook: d.scale_hook.is_some(),
        step_timeout: d.step_timeout,
    }
}

async fn serve(node: Arc<Controller>, listener: TcpListener) {
    let mut shutdown = node.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let mut conn_shutdown = node.shutdown.subscribe();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(route(node, req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // A client that sends no request head for this long is dropped.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = conn_shutdown.changed() => {}
            }
        });
    }
}

async fn body<T: DeserializeOwned>(req: http::Request<Incoming>) -> Result<T, Resp> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

fn query(req: &http::Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

async fn route(node: Arc<Controller>, req: http::Request<Incoming>) -> Resp {
    let forwarded = req.headers().contains_key(FORWARDED);
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/raft/append") => {
            let rpc = match body(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            let result = node.raft.append_entries(rpc).await;
            if let Ok(r) = &result {
                if !matches!(r, AppendEntriesResponse::HigherVote(_)) {
                    *node.leader_contact.lock().expect("contact lock") = Some(Instant::now());
                }
            }
            json(StatusCode::OK, &result)
        }
        (Method::POST, "/raft/vote") => match body(req).await {
            Ok(rpc) => json(StatusCode::OK, &node.raft.vote(rpc).await),
            Err(resp) => resp,
        },
        (Method::POST, "/raft/snapshot") => match body(req).await {
            Ok(rpc) => json(StatusCode::OK, &node.raft.install_snapshot(rpc).await),
            Err(resp) => resp,
        },
        (Method::GET, "/v1/status") => json(StatusCode::OK, &node.status()),
        (Method::GET, "/v1/events") => {
            let limit: usize = query(&req, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100);
            let events = node
                .machine
                .with(|m| m.state.audit().iter().rev().take(limit).cloned().collect());
            json(
                StatusCode::OK,
                &EventsView {
                    in_quorum: node.in_quorum(),
                    events,
                },
            )
        }
        (Method::GET, "/v1/routing") => {
            let after: u64 = query(&req, "after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let wait = Duration::from_millis(
                query(&req, "wait_ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0u64)
                    .min(60_000),
            );
            let deadline = tokio::time::Instant::now() + wait;
            let mut metrics = node.raft.metrics();
            loop {
                let table = node.machine.with(|m| m.state.routing().clone());
                if table.version > after || tokio::time::Instant::now() >= deadline {
                    return json(
                        StatusCode::OK,
                        &RoutingView {
                            in_quorum: node.in_quorum(),
                            table,
                        },
                    );
                }
                tokio::select! {
                    _ = metrics.changed() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        (Method::POST, "/v1/observations") => {
            let batch: ObservationBatch = match body(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match node.observe(batch, forwarded).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({ "accepted": true })),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        }
        (Method::POST, "/v1/write") => {
            let command: Command = match body(req).await {
                Ok(c) => c,
                Err(resp) => return resp,
            };
            match node.write(command, forwarded).await {
                Ok(answer) => json(StatusCode::OK, &answer),
                Err(WriteError::Refused(m)) => error(StatusCode::CONFLICT, m),
                Err(WriteError::NoQuorum(m)) => error(StatusCode::SERVICE_UNAVAILABLE, m),
            }
        }
        (Method::GET, "/v1/clusters") => json(StatusCode::OK, &node.clusters_view()),
        (Method::POST, "/v1/replication") => {
            let report: ReplicationReport = match body(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            if !node.databases.iter().any(|d| d.name == report.cluster) {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("unknown database cluster \"{}\"", report.cluster),
                );
            }
            node.replication.lock().expect("replication lock").insert(
                (report.cluster.clone(), report.region.clone()),
                (Instant::now(), report),
            );
            json(StatusCode::OK, &serde_json::json!({ "accepted": true }))
        }
        (Method::POST, "/v1/members") => {
            let change: MembershipChange = match body(req).await {
                Ok(c) => c,
                Err(resp) => return resp,
            };
            match change_membership(&node, change).await {
                Ok(()) => json(StatusCode::OK, &node.status()),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
            }
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

async fn change_membership(node: &Controller, change: MembershipChange) -> Result<(), String> {
    if !node.is_leader() {
        let leader = node.leader_addr().ok_or("no leader known: out of quorum")?;
        return node
            .client
            .post::<_, serde_json::Value>(leader, "/v1/members", &change, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    let voters: BTreeSet<NodeId> = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    let next = match change {
        MembershipChange::Add { id, addr } => {
            node.raft
                .add_learner(id, BasicNode::new(addr), true)
                .await
                .map_err(|e| format!("add controller {id} as a learner: {e}"))?;
            let mut v = voters;
            v.insert(id);
            v
        }
        MembershipChange::Remove { id } => {
            let mut v = voters;
            if !v.remove(&id) {
                return Err(format!("controller {id} is not a voter"));
            }
            if v.len() < 3 {
                return Err(format!(
                    "removing controller {id} would leave {} voters; a group needs at least three",
                    v.len()
                ));
            }
            v
        }
    };
    node.raft
        .change_membership(next, false)
        .await
        .map_err(|e| format!("change membership: {e}"))?;
    Ok(())
}

/// Verdict of a region in a status view.
pub fn verdict_of(status: &StatusView, region: &str) -> Verdict {
    match status.verdicts.get(region).map(String::as_str) {
        Some("down") => Verdict::Down,
        Some("degraded") => Verdict::Degraded,
        _ => Verdict::Up,
    }
}

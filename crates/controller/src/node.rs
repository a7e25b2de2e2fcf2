//! One controller node: what it holds (Raft, the applied state, the
//! replication reports, the leader's verdict engine) and the views every
//! node answers (status, database clusters). Starting and stopping it is
//! [`crate::lifecycle`]; committing goes through [`crate::commit`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};
use tern_core::config::{ControllerSettings, Database, Replication, VerdictConfig};
use tern_core::control::ControlState;
use tern_core::failover::ClusterSpec;
use tern_core::verdict::{Verdict, VerdictEngine};
use tern_proto::api::{
    ClustersView, LeaseView, MemberView, ReplicationReport, ReplicationSeen, StatusView,
};
use tern_proto::http::HttpClient;
use tern_proto::lifecycle::Tasks;
use tern_proto::NodeId;
use tokio_util::sync::CancellationToken;

use crate::clock::{ClusterClock, WallClock};
use crate::store::StateMachine;
use crate::TypeConfig;

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
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) machine: StateMachine,
    pub(crate) client: HttpClient,
    pub(crate) peers: Arc<BTreeMap<NodeId, SocketAddr>>,
    pub(crate) settings: ControllerSettings,
    pub(crate) verdict: VerdictConfig,
    /// Serving regions: the verdict targets.
    pub(crate) regions: Vec<String>,
    /// Regions whose agents vote: every region of the configuration.
    pub(crate) vantages: Vec<String>,
    /// The verdict engine of the current leadership term.
    pub(crate) engine: Mutex<Option<(u64, VerdictEngine)>>,
    /// When a legitimate leader last reached this node.
    pub(crate) leader_contact: Mutex<Option<Instant>>,
    pub(crate) databases: Vec<Database>,
    /// `[drill]`: the windows a drill may start in.
    pub(crate) drill: tern_core::drill::DrillSettings,
    /// The latest guardrail report per (region, edge), with its arrival.
    pub(crate) guardrails:
        Mutex<BTreeMap<(String, String), (Instant, tern_proto::api::GuardrailReport)>>,
    /// Per serving region, requests per second its backends can serve
    /// (`capacity_rps`); empty: drills do not check capacity.
    pub(crate) capacities: BTreeMap<String, u64>,
    /// The latest replication report per (cluster, region), with its arrival.
    pub(crate) replication: Mutex<BTreeMap<(String, String), (Instant, ReplicationReport)>>,
    /// When the leader last tried to start a plan, per cluster (a refused
    /// start is tried again once a second, not every tick).
    pub(crate) plan_attempts: Mutex<BTreeMap<String, Instant>>,
    /// Cluster time as this node reads it (`crate::clock`).
    pub(crate) clock: Arc<ClusterClock>,
    /// The term whose LeaderChanged entry this node committed: until then a
    /// new leader takes no other command.
    pub(crate) announced_term: tokio::sync::watch::Sender<u64>,
    /// Cancelled when the node stops; the server and leader loop watch it.
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: Mutex<Option<Tasks>>,
}
impl Controller {
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Whether this node leads and has committed its term's first entry
    /// (LeaderChanged): only then does it take other commands.
    pub fn has_taken_over(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state == openraft::ServerState::Leader && *self.announced_term.borrow() >= m.current_term
    }

    /// Cluster time now: the leader's term clock while this node leads,
    /// otherwise an estimate that trails the leader's.
    pub fn cluster_now(&self) -> Duration {
        let (leading, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader, m.current_term)
        };
        let state_time = self.machine.with(|m| m.state.time());
        if leading {
            self.clock.leader_now(term, state_time)
        } else {
            self.clock.follower_now(state_time)
        }
    }

    /// This node's wall clock (tests step it to play a clock step).
    pub fn wall_clock(&self) -> &Arc<WallClock> {
        self.clock.wall()
    }

    /// A copy of the applied control state.
    pub fn state(&self) -> ControlState {
        self.machine.with(|m| m.state.clone())
    }

    pub(crate) fn election_timeout(&self) -> Duration {
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
        let (verdicts, service_verdicts, routing, leases) = self.machine.with(|mach| {
            let s = &mach.state;
            let verdicts = self
                .regions
                .iter()
                .map(|r| (r.clone(), s.verdict(r).as_str().to_string()))
                .collect();
            let service_verdicts = s
                .service_verdicts()
                .iter()
                .map(|(t, v)| (t.clone(), v.as_str().to_string()))
                .collect();
            let leases = lease_views(s);
            (verdicts, service_verdicts, s.routing().clone(), leases)
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
            service_verdicts,
            routing,
            leases,
            now_ms: self.cluster_now().as_millis() as u64,
            warnings: self
                .settings
                .placement_warning
                .iter()
                .map(|w| {
                    format!("unsafe controller placement accepted (allow_unsafe_placement): {w}")
                })
                .chain(self.settings.plaintext_warning.clone())
                .collect(),
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
            now_ms: self.cluster_now().as_millis() as u64,
            clusters,
            leases,
            replication,
        }
    }
}

/// The leases of a control state, as the API shows them.
pub(crate) fn lease_views(s: &ControlState) -> Vec<LeaseView> {
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
pub(crate) fn cluster_spec(d: &Database) -> ClusterSpec {
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

/// Verdict of a region in a status view.
pub fn verdict_of(status: &StatusView, region: &str) -> Verdict {
    match status.verdicts.get(region).map(String::as_str) {
        Some("down") => Verdict::Down,
        Some("degraded") => Verdict::Degraded,
        _ => Verdict::Up,
    }
}

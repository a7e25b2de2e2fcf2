//! The controller's HTTP API: the shapes exchanged with agents, edges and
//! operators. Paths:
//!
//! - `GET /v1/status`: [`StatusView`].
//! - `GET /v1/events?limit=N`: the audit log, newest first.
//! - `GET /v1/routing?after=V&wait_ms=N`: the committed [`RoutingTable`];
//!   waits up to `wait_ms` for a version newer than `after` (long poll).
//! - `POST /v1/observations`: an [`ObservationBatch`] from an agent.
//! - `POST /v1/write`: a [`Command`](tern_core::control::Command); answers
//!   [`WriteAnswer`].
//! - `POST /v1/members`: a [`MembershipChange`].
//! - `GET /v1/clusters`: [`ClustersView`], the database clusters' writers,
//!   plans and leases, with the replication reports this node holds.
//! - `POST /v1/replication`: a [`ReplicationReport`] from an agent; kept in
//!   memory by every node it reaches (not committed), for the RPO gate.
//! - `GET /v1/drills`: [`DrillsView`].
//! - `POST /v1/guardrails`: a [`GuardrailReport`] from an edge during a
//!   drill; kept in memory by every node it reaches (not committed).
//! - `POST /raft/{append,vote,snapshot}`: Raft between controllers.
//!
//! Every failure is answered with an [`ApiError`] body whose `kind` says
//! what the caller may do next (a refusal is final, no quorum is worth
//! trying elsewhere), so callers never branch on HTTP status codes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_core::control::{Applied, AuditEntry, RoutingTable};
use tern_core::failover::Clusters;

use crate::NodeId;

/// Why an endpoint did not do what was asked: the `kind` of an [`ApiError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The replicated state machine refused the command (a lease held by
    /// another region, a stale epoch, a plan step of another plan...). Final:
    /// sending it again elsewhere gets the same answer. HTTP 409.
    Refused,
    /// Not committed: this node knows no leader with a working majority.
    /// Another controller may do better. HTTP 503.
    NoQuorum,
    /// The request does not decode or names nothing known. HTTP 400.
    BadRequest,
    /// No such endpoint or object. HTTP 404.
    NotFound,
    /// The caller's certificate does not allow this request (see
    /// `tern_core::auth`). Final. HTTP 403.
    Forbidden,
}

impl ErrorKind {
    /// The HTTP status this kind is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Refused => 409,
            ErrorKind::NoQuorum => 503,
            ErrorKind::BadRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Forbidden => 403,
        }
    }
}

/// The body of every error answer: `{"error": "...", "kind": "refused"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A sentence for the operator.
    pub error: String,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub node: NodeId,
    pub region: String,
    /// leader, follower, candidate or learner.
    pub role: String,
    pub leader: Option<NodeId>,
    /// Whether this node is part of a working majority right now. A node
    /// out of quorum answers with the state it has and commits nothing.
    pub in_quorum: bool,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberView>,
    /// Region verdicts (up, degraded, down); regions not listed are up.
    pub verdicts: BTreeMap<String, String>,
    /// Verdicts of services in regions (`service@region`) that are not up.
    #[serde(default)]
    pub service_verdicts: BTreeMap<String, String>,
    pub routing: RoutingTable,
    pub leases: Vec<LeaseView>,
    /// Milliseconds since the Unix epoch on this node's clock.
    pub now_ms: u64,
    /// What an operator should know about this deployment's layout (for
    /// example controllers placed so that one region's loss loses the
    /// quorum, accepted with `allow_unsafe_placement`).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseView {
    pub cluster: String,
    pub epoch: u64,
    pub holder: Option<String>,
    pub expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsView {
    pub in_quorum: bool,
    pub events: Vec<AuditEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutingView {
    pub in_quorum: bool,
    pub table: RoutingTable,
}

/// One probe round of an agent: what it saw of each region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObservationBatch {
    /// The agent's region: the vantage point.
    pub vantage: String,
    pub results: Vec<RegionResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionResult {
    pub region: String,
    /// The service this result is of (each service gets its own verdict in
    /// each region); `None`: every backend of the region at once.
    #[serde(default)]
    pub service: Option<String>,
    pub ok: bool,
    pub latency_ms: Option<u64>,
    /// What failed, for the evidence.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteAnswer {
    pub applied: Applied,
    /// Log index of the committed entry.
    pub index: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a node: first as a learner that catches up, then as a voter.
    Add {
        id: NodeId,
        addr: String,
    },
    Remove {
        id: NodeId,
    },
}

/// `GET /v1/drills`: the running or last drill, the ones before it, and
/// each region's last passed drill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillsView {
    pub in_quorum: bool,
    /// The running drill, or the last one.
    pub current: Option<tern_core::drill::Drill>,
    /// Finished drills before it, oldest first.
    pub past: Vec<tern_core::drill::Drill>,
    /// Per region, when its last drill passed (Unix ms, leader's clock).
    pub last_pass: std::collections::BTreeMap<String, u64>,
    /// The routing table's evacuation shares now.
    pub evacuation: std::collections::BTreeMap<String, u8>,
}

/// What one edge's clients saw over the last window (`POST
/// /v1/guardrails`: once a second while a drill runs, once a window
/// otherwise): kept in memory by every controller it reaches, for the
/// leader's guardrails and its capacity check before a drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardrailReport {
    /// The edge's region: its clients' region.
    pub region: String,
    /// Which edge of the region: its listen address and a tag chosen at
    /// start, unique per process (edges on several hosts often share one
    /// configuration, and one certificate). Reports of several edges of one
    /// region are added up, not overwritten.
    #[serde(default)]
    pub edge: String,
    /// The window the figures cover, in ms.
    pub window_ms: u64,
    pub requests: u64,
    /// Requests answered 5xx, or not at all.
    pub errors: u64,
    /// p50 and p99 of the time to response headers, in ms (the upper bound
    /// of the histogram bucket that holds it).
    #[serde(default)]
    pub p50_ms: u64,
    pub p99_ms: u64,
    /// The same figures per service.
    #[serde(default)]
    pub services: Vec<ServiceWindow>,
    /// Requests answered by each region's backends in the window (the
    /// load each region served through this edge).
    #[serde(default)]
    pub served: std::collections::BTreeMap<String, u64>,
}

/// One service's part of a [`GuardrailReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceWindow {
    pub service: String,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
}

/// What an agent read of its region's database node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationReport {
    pub cluster: String,
    pub region: String,
    /// primary, standby, or down (no answer).
    pub role: String,
    /// Primary: current WAL position; standby: replayed position.
    pub lsn: u64,
    /// Standby: received and flushed WAL position.
    pub received_lsn: Option<u64>,
    /// Replication lag in bytes (primary: its slowest standby's replay;
    /// standby: received but not yet replayed) and in milliseconds
    /// (primary: `replay_lag`; standby: since the last replayed commit).
    #[serde(default)]
    pub lag_bytes: Option<u64>,
    #[serde(default)]
    pub lag_ms: Option<u64>,
    /// New transactions are read-only (the node is fenced).
    pub read_only: bool,
    /// Standby: the writer epoch its agent last saw it streaming from (its
    /// WAL receiver streaming from the writer's node). A failover promotes
    /// only a standby of the current epoch's writer.
    #[serde(default)]
    pub streamed_epoch: Option<u64>,
}

/// A report as a controller holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicationSeen {
    pub report: ReplicationReport,
    /// Milliseconds since the report arrived.
    pub age_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClustersView {
    pub in_quorum: bool,
    pub now_ms: u64,
    pub clusters: Clusters,
    pub leases: Vec<LeaseView>,
    pub replication: Vec<ReplicationSeen>,
}

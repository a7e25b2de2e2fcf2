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
//! - `POST /raft/{append,vote,snapshot}`: Raft between controllers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_core::control::{Applied, AuditEntry, RoutingTable};

use crate::NodeId;

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
    pub routing: RoutingTable,
    pub leases: Vec<LeaseView>,
    /// Milliseconds since the Unix epoch on this node's clock.
    pub now_ms: u64,
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

//! tern's controller: three or more nodes (one per serving region plus a
//! witness) form a Raft group on openraft with durable storage in redb.
//!
//! The replicated state is tern-core's [`ControlState`]: verdicts, the
//! routing table, leases and epochs, and the audit log. The leader runs a
//! [`VerdictEngine`] over the agents' observations and commits only
//! decisions; every node answers reads, forwards writes to the leader, and
//! says when it is out of quorum (then it commits nothing).
//!
//! The node's parts, one module each: [`node`] (what a node holds; status
//! and cluster views), [`lifecycle`] (start and stop), [`server`] (the
//! HTTP API),
//! [`leader`] (the leader loop and verdict engine), [`election`] (no
//! elections from a node cut off from a majority), [`plans`] (failover
//! plans), [`commit`] (writes through the leader), [`membership`],
//! [`store`] (redb) and [`network`] (Raft RPCs). The API's wire shapes and
//! the client agents, edges and operators use live in `tern-proto`.
//!
//! [`ControlState`]: tern_core::control::ControlState
//! [`VerdictEngine`]: tern_core::verdict::VerdictEngine

pub mod clock;
pub mod commit;
pub mod drills;
pub mod election;
pub mod leader;
pub mod lifecycle;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod plans;
pub mod server;
pub mod store;

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use tern_core::control::{Applied, Command};

pub use commit::WriteError;
pub use node::Controller;
pub use tern_proto::NodeId;

/// One entry of the replicated log: a command, the leader's cluster time
/// when it proposed it (milliseconds since the Unix epoch, see [`clock`])
/// and the leader's term. Replicas apply it with that time and term, so
/// they all reach the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub at_ms: u64,
    /// The Raft term of the leader that proposed it: the first entry of a
    /// higher term extends every lease before anything else applies
    /// (`ControlState::apply_in_term`).
    #[serde(default)]
    pub term: u64,
    pub command: Command,
}

/// What applying an entry produced, or why the state machine refused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub outcome: Result<Applied, String>,
}

impl Response {
    pub fn nothing() -> Response {
        Response {
            outcome: Ok(Applied::Nothing),
        }
    }
}

openraft::declare_raft_types!(
    /// The controller's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
);

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} at {}", self.command, self.at_ms)
    }
}

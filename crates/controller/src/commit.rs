//! Committing a command at this node while it leads, within a deadline,
//! with a typed [`WriteError`] that says whether the state machine refused
//! the command or no majority committed it; and where the leader is, for
//! the requests a follower forwards ([`FORWARDED`]).

use std::net::SocketAddr;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tern_core::control::Command;
use tern_proto::api::WriteAnswer;

use crate::node::Controller;
use crate::Request;

/// Requests forwarded by a follower carry this header; the receiver does
/// not forward them again.
pub(crate) const FORWARDED: &str = "x-tern-forwarded";

impl Controller {
    pub(crate) fn leader_addr(&self) -> Option<SocketAddr> {
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

    pub(crate) fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    pub(crate) fn write_deadline(&self) -> Duration {
        self.election_timeout() * 2
    }

    pub(crate) async fn write_local(&self, command: Command) -> Result<WriteAnswer, WriteError> {
        let term = self.raft.metrics().borrow().current_term;
        let request = Request {
            at_ms: self.cluster_now().as_millis() as u64,
            term,
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

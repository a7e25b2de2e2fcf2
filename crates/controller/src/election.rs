//! Elections only when they can be won: openraft 0.9 has no pre-vote, so a
//! controller cut off from the others keeps starting elections, and when
//! the cut heals its ever higher term forces the working leader to step
//! down: a needless election, and every lease extended by a period by the
//! next leader's first entry. This task stops a node from starting
//! elections while it cannot reach a majority of the voters (itself
//! included), and lets it again once it can; a healed node then simply
//! follows the leader it hears from.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::ServerState;
use tern_proto::api::StatusView;
use tern_proto::NodeId;

use crate::node::Controller;

/// Checks reachability every half election timeout until the node stops.
pub(crate) async fn election_guard(node: Arc<Controller>) {
    let stop = node.stop.clone();
    let every = node.election_timeout() / 2;
    let mut electing = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let (leading, voters) = {
            let m = node.raft.metrics();
            let m = m.borrow();
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            (m.state == ServerState::Leader, voters)
        };
        let reachable = if leading {
            voters.len()
        } else {
            1 + reachable_peers(&node, &voters).await
        };
        let majority = voters.len() / 2 + 1;
        let may_elect = reachable >= majority;
        if may_elect != electing {
            node.raft.runtime_config().elect(may_elect);
            electing = may_elect;
            if may_elect {
                tracing::info!(
                    reachable,
                    voters = voters.len(),
                    "a majority of the controllers is reachable again: elections allowed"
                );
            } else {
                tracing::warn!(
                    reachable,
                    voters = voters.len(),
                    "cut off from a majority of the controllers: this node starts no election until it reaches one"
                );
            }
        }
    }
}

/// How many of the other voters answer a status request in time.
async fn reachable_peers(node: &Controller, voters: &BTreeSet<NodeId>) -> usize {
    let calls = voters
        .iter()
        .filter(|id| **id != node.id)
        .filter_map(|id| node.peers.get(id).copied())
        .map(|addr| {
            node.client
                .get::<StatusView>(addr, "/v1/status", node.settings.rpc_timeout)
        });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count()
}

//! Changing the controller group: a node is added as a learner that
//! catches up, then made a voter; removing a voter is refused when fewer
//! than three would be left. A follower forwards the change to the leader.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::BasicNode;
use tern_proto::api::MembershipChange;
use tern_proto::http::CallError;
use tern_proto::NodeId;

use crate::commit::WriteError;
use crate::node::Controller;

pub(crate) async fn change_membership(
    node: &Controller,
    change: MembershipChange,
) -> Result<(), WriteError> {
    if !node.is_leader() {
        let leader = node
            .leader_addr()
            .ok_or_else(|| WriteError::NoQuorum("no leader known: out of quorum".into()))?;
        return node
            .client
            .post::<_, serde_json::Value>(leader, "/v1/members", &change, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|e| match e {
                CallError::Refused { message, .. } => WriteError::Refused(message),
                other => WriteError::NoQuorum(other.to_string()),
            });
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
                .map_err(|e| {
                    WriteError::NoQuorum(format!("add controller {id} as a learner: {e}"))
                })?;
            let mut v = voters;
            v.insert(id);
            v
        }
        MembershipChange::Remove { id } => {
            let mut v = voters;
            if !v.remove(&id) {
                return Err(WriteError::Refused(format!(
                    "controller {id} is not a voter"
                )));
            }
            if v.len() < 3 {
                return Err(WriteError::Refused(format!(
                    "removing controller {id} would leave {} voters; a group needs at least three",
                    v.len()
                )));
            }
            v
        }
    };
    node.raft
        .change_membership(next, false)
        .await
        .map_err(|e| WriteError::NoQuorum(format!("change membership: {e}")))?;
    Ok(())
}

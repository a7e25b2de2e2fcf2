//! Raft messages between controllers, as JSON over HTTP. The address of a
//! peer comes from this node's configuration first (addresses are as seen
//! from here), then from the membership.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{NodeId, TypeConfig};
use tern_proto::http::{CallError, HttpClient};

#[derive(Clone)]
pub struct Network {
    pub client: HttpClient,
    pub peers: Arc<BTreeMap<NodeId, SocketAddr>>,
    pub rpc_timeout: Duration,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        let addr = self
            .peers
            .get(&target)
            .copied()
            .or_else(|| node.addr.parse().ok());
        Peer {
            target,
            addr,
            client: self.client.clone(),
            rpc_timeout: self.rpc_timeout,
        }
    }
}

pub struct Peer {
    target: NodeId,
    addr: Option<SocketAddr>,
    client: HttpClient,
    rpc_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

impl Peer {
    async fn send<Req, Resp, E>(
        &self,
        path: &str,
        body: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let addr = self.addr.ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&Failure(format!(
                "no address for controller {}",
                self.target
            ))))
        })?;
        let deadline = option.hard_ttl().min(self.rpc_timeout);
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .client
            .post(addr, path, body, deadline)
            .await
            .map_err(|e| match e {
                CallError::Unreachable { .. } => {
                    RPCError::Unreachable(Unreachable::new(&Failure(e.to_string())))
                }
                _ => RPCError::Network(NetworkError::new(&Failure(e.to_string()))),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send("/raft/vote", &rpc, &option).await
    }
}

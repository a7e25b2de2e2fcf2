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
    /// One Raft call. It runs in a task of its own with the RPC timeout:
    /// openraft drops a call at its own deadline (the heartbeat, 150 ms by
    /// default), shorter than a new connection's TCP and TLS handshakes plus
    /// the request across a WAN (three round trips). Dropped with it, the
    /// connection would never be made and a restarted peer never reached
    /// again; finished in its task, the connection lands in the pool for
    /// the next call, and a late answer is dropped.
    async fn send<Req, Resp, E>(
        &self,
        path: &'static str,
        body: &Req,
        _option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned + Send + 'static,
        E: std::error::Error + DeserializeOwned + Send + 'static,
    {
        let addr = self.addr.ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&Failure(format!(
                "no address for controller {}",
                self.target
            ))))
        })?;
        let body = serde_json::to_value(body).map_err(|e| {
            RPCError::Network(NetworkError::new(&Failure(format!(
                "the request does not serialize: {e}"
            ))))
        })?;
        let client = self.client.clone();
        let timeout = self.rpc_timeout;
        let call = tokio::spawn(async move {
            client
                .post::<_, Result<Resp, RaftError<NodeId, E>>>(addr, path, &body, timeout)
                .await
        });
        let answer = call
            .await
            .map_err(|e| {
                RPCError::Network(NetworkError::new(&Failure(format!(
                    "the call's task ended: {e}"
                ))))
            })?
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

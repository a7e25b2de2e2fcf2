//! Starting and stopping a controller node: open the store, start Raft,
//! bind the API address, spawn the API server ([`crate::server`]) and the
//! leader loop ([`crate::leader`]) into one task set, and form the group
//! from the configuration when it is new. Stopping follows the roles' one
//! shutdown contract (`tern_proto::lifecycle`): cancel, join within a
//! grace time, then force; then Raft stops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use openraft::{BasicNode, Raft};
use tern_core::auth::{Principal, Role};
use tern_core::config::Config;
use tern_core::control::{ControlState, RegionRule};
use tern_core::lease::LeaseSettings;
use tern_proto::http::HttpClient;
use tern_proto::lifecycle::Tasks;
use tern_proto::NodeId;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::{ClusterClock, WallClock};
use crate::network::Network;
use crate::node::{cluster_spec, Controller, NodeOptions};
use crate::store;

/// A start that failed for a reason the caller reports in its own way.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The control-plane certificates did not load (a configuration
    /// problem: `tern controller` exits 78).
    #[error("control-plane TLS: {0}")]
    Tls(tern_proto::tls::TlsError),
}

/// How long a stopping node waits for its server and leader loop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Controller {
    /// Opens the node's storage, binds its address and starts Raft, the API
    /// server and the leader loop.
    pub async fn start(config: &Config, options: NodeOptions) -> Result<Arc<Controller>> {
        Controller::start_with_clock(config, options, WallClock::new()).await
    }

    /// [`Controller::start`] on a given wall clock (which a test may step).
    pub async fn start_with_clock(
        config: &Config,
        options: NodeOptions,
        wall: Arc<WallClock>,
    ) -> Result<Arc<Controller>> {
        Controller::start_on(config, options, None, wall).await
    }

    /// [`Controller::start`] on a listener the caller bound already (so
    /// that nothing else can take its port in between), and a wall clock.
    ///
    /// # Errors
    /// Besides [`Controller::start`]'s: a listener bound to another address
    /// than the node's (`options.listen`, else its configured address).
    pub async fn start_on(
        config: &Config,
        options: NodeOptions,
        listener: Option<std::net::TcpListener>,
        wall: Arc<WallClock>,
    ) -> Result<Arc<Controller>> {
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
        let rule = RegionRule {
            critical: config
                .services
                .iter()
                .filter(|s| s.critical)
                .map(|s| s.name.clone())
                .collect(),
            down_when: config.verdict.region_down,
        };
        let initial = ControlState::with_weights(weights, leases)
            .with_region_rule(rule)
            .with_clusters(
                config
                    .databases
                    .iter()
                    .filter(|d| !d.nodes.is_empty())
                    .map(|d| (d.name.clone(), cluster_spec(d))),
            );
        let clock = Arc::new(ClusterClock::new(wall));
        let (log, machine) = store::open(
            &options.data_dir.join("controller.redb"),
            initial,
            clock.clone(),
        )?;

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
        // Mutual TLS on the API and between controllers, when configured.
        let tls = match &settings.tls {
            Some(t) => Some(
                tern_proto::tls::ControlPlaneTls::load(
                    t,
                    Principal::new(Role::Controller, options.id.to_string()),
                    None,
                )
                .map_err(|e| anyhow!(StartError::Tls(e)))?,
            ),
            None => None,
        };
        let client = HttpClient::with_tls(tls.as_ref().map(|t| t.client_config()));
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
        let listener = match listener {
            Some(l) => {
                // Peers and clients are given the configured address: a
                // socket bound elsewhere would leave them talking to nobody.
                let bound = l.local_addr()?;
                if bound != listen {
                    return Err(anyhow!(
                        "the listening socket handed over is bound to {bound}, but node {}'s address is {listen}",
                        options.id
                    ));
                }
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)?
            }
            None => TcpListener::bind(listen)
                .await
                .with_context(|| format!("bind the controller address {listen}"))?,
        };
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
        // The node's token is its task set's: shutting the set down stops
        // the server, every connection and the leader loop.
        let mut tasks = Tasks::new(&CancellationToken::new());
        let stop = tasks.token();
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
            drill: config.drill.clone(),
            replication: Mutex::new(BTreeMap::new()),
            guardrails: Mutex::new(BTreeMap::new()),
            capacities: config
                .regions
                .iter()
                .filter(|r| r.serves_traffic)
                .filter_map(|r| Some((r.name.clone(), r.capacity_rps?)))
                .collect(),
            plan_attempts: Mutex::new(BTreeMap::new()),
            clock,
            announced_term: tokio::sync::watch::channel(0).0,
            stop: stop.clone(),
            tasks: Mutex::new(None),
        });

        let acceptor = tls.as_ref().map(|t| {
            t.spawn_watch(stop.clone());
            tokio_rustls::TlsAcceptor::from(t.server_config())
        });
        tasks.spawn(
            "api server",
            crate::server::serve(node.clone(), listener, acceptor),
        );
        tasks.spawn("leader loop", crate::leader::leader_loop(node.clone()));
        tasks.spawn(
            "election guard",
            crate::election::election_guard(node.clone()),
        );
        *node.tasks.lock().expect("tasks lock") = Some(tasks);

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
        let tasks = self.tasks.lock().expect("tasks lock").take();
        if let Some(tasks) = tasks {
            tasks.shutdown(SHUTDOWN_GRACE).await;
        }
        let _ = self.raft.shutdown().await;
    }
}

//! tern's edge: the HTTP front door of a region.
//!
//! An [`Edge`] binds a client listener and an admin listener, then serves:
//! [`proxy`] routes each request to a backend chosen by the service's policy
//! (through `tern_core::routing`), retries safely on another region, and
//! feeds outcomes to passive outlier detection; [`probe`] runs the active
//! health checks; [`admin`] serves `/status`, `/metrics` and `/ready`.
//! [`state::EdgeState`] is the shared view all three read and update.
//! Shutdown follows one contract: a cancellation token stops accepting, the
//! edge reports `Draining`, in-flight requests get the configured grace time,
//! then everything is joined.

pub mod admin;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod state;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tern_core::config::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::EdgeState;

/// Lifecycle of an edge, published on a watch channel so that tests and the
/// admin endpoint wait for a phase instead of sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Serving,
    Draining,
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("the configuration has no [edge] table")]
    NoEdgeSettings,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Edge {
    state: Arc<EdgeState>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    phase: watch::Sender<Phase>,
}

impl Edge {
    /// Binds the listeners; nothing is served until [`Edge::run`].
    pub async fn bind(config: &Config) -> Result<Edge, EdgeError> {
        let settings = config.edge.clone().ok_or(EdgeError::NoEdgeSettings)?;
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| EdgeError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let admin = match settings.admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| EdgeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let (phase, _) = watch::channel(Phase::Starting);
        Ok(Edge {
            state: Arc::new(EdgeState::new(config, settings)),
            listener,
            admin,
            phase,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener has an address"))
    }

    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub fn state(&self) -> Arc<EdgeState> {
        self.state.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) {
        let Edge {
            state,
            listener,
            admin,
            phase,
        } = self;
        let settings = state.settings.clone();
        let tasks = TaskTracker::new();
        let background = CancellationToken::new();
        probe::spawn_probes(state.clone(), &tasks, background.clone());
        if let Some(admin) = admin {
            let state = state.clone();
            let phase = phase.subscribe();
            let stop = background.clone();
            tasks.spawn(admin::serve(admin, state, phase, stop));
        }

        let client = proxy::upstream_client(settings.try_timeout);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper refuses buffer limits under 8 KiB.
        builder
            .http1()
            .keep_alive(true)
            .max_buf_size((settings.max_header as usize).max(8192));
        builder
            .http2()
            .max_header_list_size(settings.max_header.min(u64::from(u32::MAX)) as u32);
        let graceful = GracefulShutdown::new();
        phase.send_replace(Phase::Serving);
        tracing::info!(listen = %listener.local_addr().map_or("?".into(), |a| a.to_string()), region = %state.region, "edge serving");

        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            let client = client.clone();
            let svc = service_fn(move |req| {
                let state = state.clone();
                let client = client.clone();
                async move { Ok::<_, Infallible>(proxy::handle(state, client, req, remote).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
            });
        }

        phase.send_replace(Phase::Draining);
        drop(listener);
        tracing::info!(grace = ?settings.shutdown_grace, "edge draining");
        if tokio::time::timeout(settings.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace time over; closing remaining connections");
        }
        background.cancel();
        tasks.close();
        tasks.wait().await;
        phase.send_replace(Phase::Stopped);
    }
}

//! A client of the controller group for agents, edges and operators: it
//! tries the configured controllers in turn until one answers, and starts
//! with the one that answered last.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tern_core::control::Command;

use crate::api::{
    ClustersView, DrillsView, EventsView, GuardrailReport, MembershipChange, ObservationBatch,
    ReplicationReport, RoutingView, StatusView, WriteAnswer,
};
use crate::http::{CallError, HttpClient};

#[derive(Clone)]
pub struct ControllerClient {
    addrs: Arc<Vec<SocketAddr>>,
    /// Index of the controller that answered last.
    preferred: Arc<AtomicUsize>,
    http: HttpClient,
    timeout: Duration,
}

impl ControllerClient {
    /// A client over plain HTTP (controllers without `[controller.tls]`).
    pub fn new(addrs: Vec<SocketAddr>, timeout: Duration) -> ControllerClient {
        ControllerClient::with_tls(addrs, timeout, None)
    }

    /// A client over mutual TLS with `tls` (see
    /// [`crate::tls::ControlPlaneTls::client_config`]), or plain HTTP when
    /// `None`.
    pub fn with_tls(
        addrs: Vec<SocketAddr>,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> ControllerClient {
        ControllerClient {
            addrs: Arc::new(addrs),
            preferred: Arc::new(AtomicUsize::new(0)),
            http: HttpClient::with_tls(tls),
            timeout,
        }
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Runs `call` against each controller, the last good one first, until
    /// one does not fail with "unreachable". Other errors are answers.
    async fn any<T, F, Fut>(&self, call: F) -> Result<T, CallError>
    where
        F: Fn(HttpClient, SocketAddr) -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let n = self.addrs.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            match call(self.http.clone(), self.addrs[i]).await {
                Ok(v) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if e.is_retryable_elsewhere() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(CallError::Unreachable {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            reason: "no controller addresses configured".into(),
        }))
    }

    /// The status of one controller (whichever answers first).
    pub async fn status(&self) -> Result<StatusView, CallError> {
        let t = self.timeout;
        self.any(|h, a| async move { h.get(a, "/v1/status", t).await })
            .await
    }

    /// The status of a given controller.
    pub async fn status_of(&self, addr: SocketAddr) -> Result<StatusView, CallError> {
        self.http.get(addr, "/v1/status", self.timeout).await
    }

    pub async fn events(&self, limit: usize) -> Result<EventsView, CallError> {
        let t = self.timeout;
        let path = format!("/v1/events?limit={limit}");
        self.any(|h, a| {
            let path = path.clone();
            async move { h.get(a, &path, t).await }
        })
        .await
    }

    /// The committed routing table; waits up to `wait` for a version newer
    /// than `after`.
    pub async fn routing(&self, after: u64, wait: Duration) -> Result<RoutingView, CallError> {
        let t = self.timeout + wait;
        let path = format!("/v1/routing?after={after}&wait_ms={}", wait.as_millis());
        self.any(|h, a| {
            let path = path.clone();
            async move { h.get(a, &path, t).await }
        })
        .await
    }

    pub async fn observe(&self, batch: &ObservationBatch) -> Result<(), CallError> {
        let t = self.timeout;
        self.any(|h, a| async move {
            h.post::<_, serde_json::Value>(a, "/v1/observations", batch, t)
                .await
                .map(|_| ())
        })
        .await
    }

    /// The drills as one controller (whichever answers) sees them.
    pub async fn drills(&self) -> Result<DrillsView, CallError> {
        let t = self.timeout;
        self.any(|h, a| async move { h.get(a, "/v1/drills", t).await })
            .await
    }

    /// The database clusters as one controller (whichever answers) sees them.
    pub async fn clusters(&self) -> Result<ClustersView, CallError> {
        let t = self.timeout;
        self.any(|h, a| async move { h.get(a, "/v1/clusters", t).await })
            .await
    }

    /// Sends a guardrail report to every controller at once, so that
    /// whichever leads judges the drill on it; answers how many took it.
    pub async fn report_guardrails(&self, report: &GuardrailReport) -> usize {
        let t = self.timeout;
        let calls = self.addrs.iter().map(|a| {
            let h = self.http.clone();
            async move {
                h.post::<_, serde_json::Value>(*a, "/v1/guardrails", report, t)
                    .await
                    .is_ok()
            }
        });
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    /// Sends a replication report to every controller at once, so that
    /// whichever leads next knows the lag; answers how many took it.
    pub async fn report_replication(&self, report: &ReplicationReport) -> usize {
        let t = self.timeout;
        let calls = self.addrs.iter().map(|a| {
            let h = self.http.clone();
            async move {
                match h
                    .post::<_, serde_json::Value>(*a, "/v1/replication", report, t)
                    .await
                {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::debug!("replication report to {a}: {e}");
                        false
                    }
                }
            }
        });
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    /// Commits a command; a refusal by the state machine comes back as
    /// [`CallError::Refused`], no majority anywhere as
    /// [`CallError::NoQuorum`] or [`CallError::Unreachable`].
    pub async fn write(&self, command: &Command) -> Result<WriteAnswer, CallError> {
        // Writes may wait for an election: give them longer.
        let t = self.timeout * 4;
        self.any(|h, a| async move { h.post(a, "/v1/write", command, t).await })
            .await
    }

    pub async fn change_membership(
        &self,
        change: &MembershipChange,
    ) -> Result<StatusView, CallError> {
        let t = Duration::from_secs(30);
        self.any(|h, a| async move { h.post(a, "/v1/members", change, t).await })
            .await
    }
}

//! Active health checks: one task per backend sends an HTTP or TCP probe every
//! interval and feeds the result to the backend's `HealthTracker`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tern_core::config::{BackendUrl, ProbeKind};
use tern_core::health::HealthState;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::EdgeState;

/// Probe responses larger than this are cut; a health body is small.
const MAX_PROBE_BODY: usize = 64 * 1024;

pub type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

pub fn probe_client() -> ProbeClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // Probes keep their own pool, apart from traffic, so a probe never queues
    // behind requests and its round trip measures the path, not the load.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// Starts one probe loop per backend of every service.
pub fn spawn_probes(state: Arc<EdgeState>, tracker: &TaskTracker, shutdown: CancellationToken) {
    let client = probe_client();
    for (si, service) in state.services.iter().enumerate() {
        for bi in 0..service.backends.len() {
            let state = state.clone();
            let client = client.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = probe_loop(state, si, bi, client) => {}
                }
            });
        }
    }
}

async fn probe_loop(state: Arc<EdgeState>, si: usize, bi: usize, client: ProbeClient) {
    let service = &state.services[si];
    let backend = &service.backends[bi];
    let check = backend.config.health.clone();
    // Spread the first probes so that backends are not all checked at once.
    let jitter =
        Duration::from_millis(fastrand::u64(0..=check.interval.as_millis().min(50) as u64));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + jitter, check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let result = tokio::time::timeout(
            check.timeout,
            probe_once(&client, &backend.config.url, &check.probe),
        )
        .await;
        let elapsed = started.elapsed();
        let (ok, detail) = match result {
            Ok(Ok(())) => (true, String::new()),
            Ok(Err(e)) => (false, e),
            Err(_) => (false, format!("no answer within {:?}", check.timeout)),
        };
        if ok {
            let mut rtt = backend.rtt.lock().expect("rtt lock");
            // Smooth like TCP's SRTT (alpha 1/4, a little faster than 1/8)
            // so one slow probe does not reorder regions.
            *rtt = Some(match *rtt {
                None => elapsed,
                Some(prev) => prev.mul_f64(0.75) + elapsed.mul_f64(0.25),
            });
        }
        let now = state.clock.now();
        let transition = backend.health.lock().expect("health lock").observe(ok, now);
        if let Some(t) = transition {
            let up = t.to == HealthState::Up;
            if up {
                tracing::info!(service = %service.config.name, region = %backend.config.region, backend = %backend.config.url, "backend up");
            } else {
                tracing::warn!(service = %service.config.name, region = %backend.config.region, backend = %backend.config.url, reason = %detail, "backend down");
            }
            state.metrics.backend_up(
                &service.config.name,
                &backend.config.region,
                &backend.config.url.to_string(),
                up,
            );
            state.refresh_serving(service);
        } else if !ok {
            tracing::debug!(service = %service.config.name, backend = %backend.config.url, reason = %detail, "probe failed");
        }
    }
}

pub async fn probe_once(
    client: &ProbeClient,
    url: &BackendUrl,
    probe: &ProbeKind,
) -> Result<(), String> {
    match probe {
        ProbeKind::Tcp => TcpStream::connect(url.authority())
            .await
            .map(|_| ())
            .map_err(|e| format!("connect: {e}")),
        ProbeKind::Http {
            path,
            expect_status,
            body_contains,
        } => {
            let uri = format!("http://{}{}{}", url.authority(), url.base_path, path);
            let req = http::Request::get(uri)
                .header(http::header::USER_AGENT, "tern-edge-probe")
                .body(Empty::new())
                .map_err(|e| format!("bad probe request: {e}"))?;
            let resp = client
                .request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            if !expect_status.contains(status) {
                return Err(format!("status {status}"));
            }
            if let Some(needle) = body_contains {
                let body = Limited::new(resp.into_body(), MAX_PROBE_BODY)
                    .collect()
                    .await
                    .map_err(|e| format!("body: {e}"))?
                    .to_bytes();
                if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
                    return Err(format!("body lacks \"{needle}\""));
                }
            }
            Ok(())
        }
    }
}

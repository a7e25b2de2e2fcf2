//! Active health checks: one task per backend sends an HTTP or TCP probe every
//! interval (`tern_probe::probe`) and feeds the result to the backend's
//! `HealthTracker`.

use std::sync::Arc;
use std::time::Duration;

use tern_core::health::HealthState;
use tern_probe::{probe, probe_client, ProbeClient};
use tern_proto::lifecycle::Tasks;

use crate::state::EdgeState;

/// Starts one probe loop per backend of every service.
pub fn spawn_probes(state: Arc<EdgeState>, tasks: &mut Tasks) {
    let client = probe_client();
    for (si, service) in state.services.iter().enumerate() {
        for bi in 0..service.backends.len() {
            let state = state.clone();
            let client = client.clone();
            let shutdown = tasks.token();
            tasks.spawn("backend probe", async move {
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
        let outcome = probe(
            &client,
            &backend.config.url,
            backend.config.tls.as_ref(),
            &check.probe,
            check.timeout,
        )
        .await;
        let (ok, detail, elapsed) = (outcome.ok, outcome.detail, outcome.elapsed);
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

//! Active health checks of DNS targets that have a probe of their own: one
//! task per target probes `address:port` every interval, like the service
//! backends' probes, and feeds the target's `HealthTracker`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tern_core::config::BackendUrl;
use tern_core::health::HealthState;
use tern_probe::{probe as run_probe, probe_client, ProbeClient};
use tern_proto::lifecycle::Tasks;

use super::authority::TargetHealth;
use crate::state::EdgeState;

/// Starts one probe loop per DNS target with a health check of its own.
pub fn spawn_probes(state: Arc<EdgeState>, tasks: &mut Tasks) {
    let Some(authority) = state.dns.as_ref() else {
        return;
    };
    let client = probe_client();
    for (pi, policy) in authority.policies.iter().enumerate() {
        for (ti, target) in policy.targets.iter().enumerate() {
            if !matches!(target.health, TargetHealth::Probe(_)) {
                continue;
            }
            let state = state.clone();
            let client = client.clone();
            let shutdown = tasks.token();
            tasks.spawn("dns target probe", async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = probe_loop(state, pi, ti, client) => {}
                }
            });
        }
    }
}

async fn probe_loop(state: Arc<EdgeState>, pi: usize, ti: usize, client: ProbeClient) {
    let Some(authority) = state.dns.as_ref() else {
        return;
    };
    let policy = &authority.policies[pi];
    let target = &policy.targets[ti];
    let TargetHealth::Probe(probe) = &target.health else {
        return;
    };
    let host = match target.address {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    };
    let url = BackendUrl {
        tls: false,
        host,
        port: probe.port,
        base_path: String::new(),
    };
    let check = probe.check.clone();
    let jitter =
        Duration::from_millis(fastrand::u64(0..=check.interval.as_millis().min(50) as u64));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + jitter, check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let outcome = run_probe(&client, &url, None, &check.probe, check.timeout).await;
        let (ok, detail) = (outcome.ok, outcome.detail);
        let now = state.clock.now();
        let transition = probe.tracker.lock().expect("health lock").observe(ok, now);
        if let Some(t) = transition {
            let up = t.to == HealthState::Up;
            probe.up.store(up, Ordering::Relaxed);
            if up {
                tracing::info!(record = %policy.name, region = %target.region, address = %target.address, "dns target up");
            } else {
                tracing::warn!(record = %policy.name, region = %target.region, address = %target.address, reason = %detail, "dns target down");
            }
            state.metrics.dns_target_up(
                &policy.name,
                &target.region,
                &target.address.to_string(),
                up,
            );
        } else if !ok {
            tracing::debug!(record = %policy.name, address = %target.address, reason = %detail, "dns probe failed");
        }
    }
}

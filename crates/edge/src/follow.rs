//! Following the controllers' committed routing table: a long poll against
//! any controller, applied as soon as it answers with a newer version, and
//! kept on disk so that a restart without controllers serves with it
//! (static stability). When no controller answers, the edge keeps the last
//! table and its own health checks and outlier detection keep protecting
//! requests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_core::control::RoutingTable;
use tern_proto::ControllerClient;
use tokio_util::sync::CancellationToken;

use crate::state::{EdgeState, RoutingUpdate};

/// How long one long poll waits for a change. A controller that went dark
/// (packets vanish) holds the poll this long plus the client's timeout
/// before the next controller is asked: short, since a changed table
/// answers the poll at once anyway.
pub const POLL_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u64,
    services: BTreeMap<String, BTreeMap<String, u32>>,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    evacuation: BTreeMap<String, u8>,
    #[serde(default)]
    drill_window_ms: Option<u64>,
}

fn weights(table: &RoutingTable) -> BTreeMap<String, BTreeMap<String, u32>> {
    table
        .services
        .iter()
        .map(|(s, r)| (s.clone(), r.weights.clone()))
        .collect()
}

/// Applies the table saved at `path`, if there is a readable one.
pub fn load(state: &EdgeState, path: &Path) {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the saved routing table");
            return;
        }
    };
    match serde_json::from_slice::<Saved>(&text) {
        Ok(saved) => {
            state.apply_routing(
                RoutingUpdate {
                    version: saved.version,
                    services: saved.services,
                    evacuation: saved.evacuation,
                    drill_window: saved.drill_window_ms.map(Duration::from_millis),
                    cluster_id: saved.cluster_id,
                },
                "disk",
            );
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a saved routing table that does not parse")
        }
    }
}

/// Writes the table atomically (temporary file, then rename).
fn save(path: &Path, table: &RoutingTable) {
    let saved = Saved {
        version: table.version,
        services: weights(table),
        cluster_id: table.cluster_id.clone(),
        evacuation: table.evacuation.clone(),
        drill_window_ms: table.drill_window_ms,
    };
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(&saved).expect("routing table serializes");
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot save the routing table");
    }
}

/// Follows the committed routing table until `stop`.
pub async fn follow(
    state: Arc<EdgeState>,
    client: ControllerClient,
    path: Option<PathBuf>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut warned = false;
    loop {
        let after = state.routing.read().expect("routing lock").version;
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            a = client.routing(after, POLL_WAIT) => a,
        };
        match answer {
            Ok(view) => {
                backoff = Duration::from_millis(200);
                if warned {
                    tracing::info!("controllers reachable again");
                    warned = false;
                }
                let table = &view.table;
                let update = RoutingUpdate {
                    version: table.version,
                    services: weights(table),
                    evacuation: table.evacuation.clone(),
                    drill_window: table.drill_window_ms.map(Duration::from_millis),
                    cluster_id: table.cluster_id.clone(),
                };
                if state.apply_routing(update, "controllers") {
                    if let Some(p) = &path {
                        save(p, table);
                    }
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "no controller answers; serving with the last routing table");
                    warned = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The window reported while no drill runs (the load a drill's capacity
/// check reads).
const IDLE_WINDOW: Duration = Duration::from_secs(5);

/// Sends every controller the last window's figures: once a second, over
/// the drill's window, while the committed table names one; once every
/// [`IDLE_WINDOW`] otherwise. Until `stop`.
pub async fn report_guardrails(
    state: Arc<EdgeState>,
    client: ControllerClient,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_ticks = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let drill_window = state.routing.read().expect("routing lock").drill_window;
        let window = match drill_window {
            Some(w) => w,
            None => {
                idle_ticks += 1;
                if !idle_ticks.is_multiple_of(IDLE_WINDOW.as_secs()) {
                    continue;
                }
                IDLE_WINDOW
            }
        };
        let report = guardrail_report(&state, window);
        if client.report_guardrails(&report).await == 0 && drill_window.is_some() {
            tracing::warn!("no controller took this edge's guardrail report");
        }
    }
}

/// This edge's figures over the whole seconds of the last `window`.
pub fn guardrail_report(state: &EdgeState, window: Duration) -> tern_proto::api::GuardrailReport {
    let now = state.clock.now().as_secs();
    let t = state.clients.totals(now, window);
    let services = state
        .services
        .iter()
        .filter_map(|s| {
            let t = s.clients.totals(now, window);
            (t.requests > 0).then(|| tern_proto::api::ServiceWindow {
                service: s.config.name.clone(),
                requests: t.requests,
                errors: t.errors,
                p50_ms: t.p50_ms,
                p99_ms: t.p99_ms,
            })
        })
        .collect();
    let served = state
        .served
        .iter()
        .map(|(region, w)| (region.clone(), w.totals(now, window).requests))
        .filter(|(_, n)| *n > 0)
        .collect();
    tern_proto::api::GuardrailReport {
        region: state.region.clone(),
        edge: state.instance.clone(),
        window_ms: window.as_millis() as u64,
        requests: t.requests,
        errors: t.errors,
        p50_ms: t.p50_ms,
        p99_ms: t.p99_ms,
        services,
        served,
    }
}

//! What the lab reads from the edges' admin API: whether every backend has
//! been probed, each change of the regions an edge routes to, and how many
//! health probes each edge saw fail.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::report::RoutingSample;

pub type AdminClient = Client<HttpConnector, Empty<Bytes>>;

pub fn admin_client() -> AdminClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn get_status(client: &AdminClient, admin: SocketAddr) -> Option<serde_json::Value> {
    let req = http::Request::get(format!("http://{admin}/status"))
        .body(Empty::new())
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_millis(500), client.request(req))
        .await
        .ok()?
        .ok()?;
    let body = tokio::time::timeout(Duration::from_millis(500), resp.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    serde_json::from_slice(&body).ok()
}

/// Failed health probes each edge counted, by edge region then backend
/// region (summed over services), read once from every edge's `/status`;
/// an edge that does not answer is left out. The flapping scenario uses it
/// to show its fault reached every edge: a flap no probe saw tests nothing.
pub async fn probe_failures(
    admins: &[(String, SocketAddr)],
) -> BTreeMap<String, BTreeMap<String, u64>> {
    let client = admin_client();
    let mut out = BTreeMap::new();
    for (edge, admin) in admins {
        let Some(status) = get_status(&client, *admin).await else {
            continue;
        };
        let mut by_region: BTreeMap<String, u64> = BTreeMap::new();
        for svc in status["services"].as_array().into_iter().flatten() {
            for b in svc["backends"].as_array().into_iter().flatten() {
                if let (Some(region), Some(n)) =
                    (b["region"].as_str(), b["probe_failures"].as_u64())
                {
                    *by_region.entry(region.to_string()).or_default() += n;
                }
            }
        }
        out.insert(edge.clone(), by_region);
    }
    out
}

/// Waits until every edge has completed a successful probe of every backend,
/// so the load starts on a deployment that is known to work.
pub async fn wait_until_probed(admins: &[(String, SocketAddr)]) -> Result<()> {
    let client = admin_client();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut all = true;
        for (_, admin) in admins {
            let probed = get_status(&client, *admin).await.is_some_and(|s| {
                s["services"].as_array().is_some_and(|svcs| {
                    svcs.iter().all(|svc| {
                        svc["backends"].as_array().is_some_and(|bs| {
                            bs.iter()
                                .all(|b| b["health"] == "up" && b["rtt_ms"].is_number())
                        })
                    })
                })
            });
            all &= probed;
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("edges did not see every backend healthy within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls every edge's `/status` and records each change of the regions it
/// routes to, with the time the edge itself reports for the change.
pub async fn monitor_routing(
    admins: Vec<(String, SocketAddr)>,
    clock: Arc<Clock>,
    routing: Arc<Mutex<Vec<RoutingSample>>>,
    current: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
    stop: CancellationToken,
) {
    let client = admin_client();
    let mut last: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
    loop {
        for (region, admin) in &admins {
            let Some(status) = get_status(&client, *admin).await else {
                current
                    .lock()
                    .expect("routing lock")
                    .insert(region.clone(), vec!["(down)".into()]);
                // An edge that does not answer its admin API is recorded as
                // unreachable once, from the moment the lab noticed.
                if last.get(region).is_none_or(|(s, _)| !s.is_empty()) {
                    last.insert(region.clone(), (Vec::new(), 0));
                    routing.lock().expect("routing lock").push(RoutingSample {
                        edge_region: region.clone(),
                        serving_regions: Vec::new(),
                        since_ms: clock.ms(),
                        reachable: false,
                    });
                }
                continue;
            };
            let Some(svc) = status["services"].get(0) else {
                continue;
            };
            let serving: Vec<String> = svc["serving_regions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let since = svc["serving_since_unix_ms"].as_u64().unwrap_or(0);
            current
                .lock()
                .expect("routing lock")
                .insert(region.clone(), serving.clone());
            let changed = last
                .get(region)
                .is_none_or(|(s, t)| *s != serving || *t != since);
            if changed {
                last.insert(region.clone(), (serving.clone(), since));
                routing.lock().expect("routing lock").push(RoutingSample {
                    edge_region: region.clone(),
                    serving_regions: serving,
                    since_ms: clock.lab_ms_of_unix(since as f64),
                    reachable: true,
                });
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

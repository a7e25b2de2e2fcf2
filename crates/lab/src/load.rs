//! The load generator: clients located in each region.
//!
//! A client knows every edge, ordered by nearness (its own region first),
//! and moves to the next edge when one does not answer, the way a client
//! walks the addresses of a DNS answer. An edge that did not answer is
//! avoided for a while, then tried again. Every request becomes a
//! [`RequestRecord`] for the oracle.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One edge a client can reach, through the WAN path from the client's region.
#[derive(Debug, Clone)]
pub struct EdgePath {
    pub region: String,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub id: usize,
    pub region: String,
    /// Nearest first.
    pub edges: Vec<EdgePath>,
    /// Time between request starts.
    pub pace: Duration,
    /// How long one edge gets to answer before the client moves on.
    pub edge_timeout: Duration,
    /// How long an edge that did not answer is avoided.
    pub avoid_for: Duration,
    pub seed: u64,
}

/// One request as the client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Start, in milliseconds since the lab's time zero.
    pub start_ms: f64,
    pub latency_ms: f64,
    pub client_region: String,
    pub method: &'static str,
    /// The final status, if any edge answered.
    pub status: Option<u16>,
    pub ok: bool,
    /// Region of the edge that gave the final answer.
    pub edge_region: Option<String>,
    /// Region of the backend that served it (`x-served-by`).
    pub served_by: Option<String>,
    /// How many edges were tried.
    pub edges_tried: u8,
    pub error: Option<String>,
}

impl RequestRecord {
    pub fn end_ms(&self) -> f64 {
        self.start_ms + self.latency_ms
    }
}

pub(crate) type LoadClient = Client<HttpConnector, Full<Bytes>>;

/// The HTTP client of one lab client.
pub(crate) fn client(edge_timeout: Duration) -> LoadClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(edge_timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// The record of a request that reached no edge at all.
pub(crate) fn failed_record(
    region: &str,
    t0: Instant,
    started: Instant,
    error: String,
) -> RequestRecord {
    RequestRecord {
        start_ms: ms_since(t0, started),
        latency_ms: started.elapsed().as_secs_f64() * 1_000.0,
        client_region: region.to_string(),
        method: "GET",
        status: None,
        ok: false,
        edge_region: None,
        served_by: None,
        edges_tried: 0,
        error: Some(error),
    }
}

/// Runs one client until `stop`, sending every record to `out`.
pub async fn run_client(
    spec: ClientSpec,
    t0: Instant,
    stop: CancellationToken,
    out: mpsc::UnboundedSender<RequestRecord>,
) {
    let client = client(spec.edge_timeout);
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let mut avoid_until: Vec<Option<Instant>> = vec![None; spec.edges.len()];
    let mut seq: u64 = 0;
    let mut next =
        Instant::now() + Duration::from_millis(rng.u64(0..spec.pace.as_millis().max(1) as u64));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        next += spec.pace;
        // A client that fell behind (an edge timed out) skips the missed slots
        // instead of bursting to catch up.
        let now = Instant::now();
        if next < now {
            next = now;
        }
        seq += 1;
        let record = one_request(&spec, &client, &mut rng, &mut avoid_until, seq, t0).await;
        if out.send(record).is_err() {
            return;
        }
    }
}

struct Planned {
    method: &'static str,
    path: String,
    body: Bytes,
    key: Option<String>,
}

fn plan_request(spec: &ClientSpec, rng: &mut fastrand::Rng, seq: u64) -> Planned {
    let item = rng.u32(0..1000);
    match rng.u32(0..100) {
        0..60 => Planned {
            method: "GET",
            path: format!("/items/{item}"),
            body: Bytes::new(),
            key: None,
        },
        60..85 => Planned {
            method: "PUT",
            path: format!("/items/{item}"),
            body: Bytes::from(format!("value from client {} #{seq}", spec.id)),
            key: None,
        },
        _ => Planned {
            method: "POST",
            path: "/payments".to_string(),
            body: Bytes::from(format!(
                "{{\"amount\": {}, \"client\": {}}}",
                rng.u32(1..10_000),
                spec.id
            )),
            key: Some(format!("c{}-{}-{seq}", spec.id, spec.seed)),
        },
    }
}

pub(crate) async fn one_request(
    spec: &ClientSpec,
    client: &LoadClient,
    rng: &mut fastrand::Rng,
    avoid_until: &mut [Option<Instant>],
    seq: u64,
    t0: Instant,
) -> RequestRecord {
    let planned = plan_request(spec, rng, seq);
    let started = Instant::now();
    let now = started;
    // Nearest first, skipping edges that recently did not answer, unless that
    // leaves none.
    let mut order: Vec<usize> = (0..spec.edges.len())
        .filter(|i| avoid_until[*i].is_none_or(|t| t <= now))
        .collect();
    if order.is_empty() {
        order = (0..spec.edges.len()).collect();
    }
    let mut tried = 0u8;
    let mut last_error = None;
    for i in order {
        tried += 1;
        let edge = &spec.edges[i];
        let mut builder = http::Request::builder()
            .method(planned.method)
            .uri(format!("http://{}{}", edge.addr, planned.path))
            .header(http::header::HOST, "payments.lab")
            .header("x-lab-client", spec.region.as_str());
        if let Some(key) = &planned.key {
            builder = builder.header("idempotency-key", key.as_str());
        }
        if !planned.body.is_empty() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(Full::new(planned.body.clone()))
            .expect("valid request");
        let attempt = tokio::time::timeout(spec.edge_timeout, async {
            let resp = client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let served_by = resp
                .headers()
                .get("x-served-by")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            resp.into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((status, served_by))
        })
        .await;
        match attempt {
            Ok(Ok((status, served_by))) => {
                return RequestRecord {
                    start_ms: ms_since(t0, started),
                    latency_ms: started.elapsed().as_secs_f64() * 1_000.0,
                    client_region: spec.region.clone(),
                    method: planned.method,
                    status: Some(status),
                    ok: status < 500,
                    edge_region: Some(edge.region.clone()),
                    served_by,
                    edges_tried: tried,
                    error: None,
                };
            }
            Ok(Err(e)) => last_error = Some(format!("edge {}: {e}", edge.region)),
            Err(_) => {
                last_error = Some(format!(
                    "edge {}: no answer within {:?}",
                    edge.region, spec.edge_timeout
                ))
            }
        }
        avoid_until[i] = Some(Instant::now() + spec.avoid_for);
    }
    RequestRecord {
        start_ms: ms_since(t0, started),
        latency_ms: started.elapsed().as_secs_f64() * 1_000.0,
        client_region: spec.region.clone(),
        method: planned.method,
        status: None,
        ok: false,
        edge_region: None,
        served_by: None,
        edges_tried: tried,
        error: last_error,
    }
}

fn ms_since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64() * 1_000.0
}

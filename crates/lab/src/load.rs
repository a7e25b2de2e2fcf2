//! The load generator: clients located in each region.
//!
//! A client knows every edge, ordered by nearness (its own region first),
//! and moves to the next edge when one does not answer, the way a client
//! walks the addresses of a DNS answer. An edge that did not answer is
//! avoided for a while, then tried again. Every request becomes a
//! [`RequestRecord`] for the oracle; a payment's record also keeps its
//! idempotency key and, when the service acknowledged it, the row it was
//! told about ([`PaymentRecord`]), for the write oracle.

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
    /// The service itself answered (`x-served-by` names it) without a server error.
    pub ok: bool,
    /// Region of the edge that gave the final answer.
    pub edge_region: Option<String>,
    /// Region of the backend that served it (`x-served-by`).
    pub served_by: Option<String>,
    /// How many edges were tried.
    pub edges_tried: u8,
    pub error: Option<String>,
    /// For `POST /payments`: the key sent and the acknowledgement, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentRecord>,
}

/// A payment as its client saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PaymentRecord {
    /// The idempotency key sent (every edge tried got the same one).
    pub key: String,
    /// The acknowledgement, when the final answer was one.
    pub ack: Option<PaymentAck>,
}

/// A payment the service said it stored: a 2xx answer whose JSON body names the row
/// (`id`, `node`, `written_at_ms`), as the sample service answers when backed by PostgreSQL.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PaymentAck {
    pub id: i64,
    /// The database server that wrote the row.
    pub node: String,
    /// The WAL timeline it wrote the row on (with `node`, which writer incarnation).
    pub timeline: String,
    /// That server's clock when it wrote the row, Unix milliseconds.
    pub written_at_ms: i64,
    /// The answer was a replay of an earlier payment with the same key.
    pub replay: bool,
}

impl PaymentAck {
    /// Reads an acknowledgement from an answer: `None` unless the status is 2xx and the body
    /// names the row.
    pub fn from_answer(status: u16, replay: bool, body: &[u8]) -> Option<PaymentAck> {
        if !(200..300).contains(&status) {
            return None;
        }
        let body: serde_json::Value = serde_json::from_slice(body).ok()?;
        Some(PaymentAck {
            id: body.get("id")?.as_i64()?,
            node: body.get("node")?.as_str()?.to_string(),
            timeline: body
                .get("timeline")
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_string(),
            written_at_ms: body.get("written_at_ms")?.as_i64()?,
            replay,
        })
    }
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
        payment: None,
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
    let mut retry_key: Option<(String, u32)> = None;
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
        let retry = retry_key.as_ref().map(|(k, _): &(String, u32)| k.as_str());
        let record = one_request(&spec, &client, &mut rng, &mut avoid_until, seq, retry, t0).await;
        // A payment that was not acknowledged is sent again with the same
        // key at the client's next payment, up to three times, as a client
        // that must not pay twice does: the service may have processed it.
        retry_key = match &record.payment {
            Some(p) if p.ack.is_none() => {
                let tries = match &retry_key {
                    Some((k, n)) if *k == p.key => n + 1,
                    _ => 1,
                };
                (tries < 3).then(|| (p.key.clone(), tries))
            }
            Some(_) => None,
            None => retry_key,
        };
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

fn plan_request(
    spec: &ClientSpec,
    rng: &mut fastrand::Rng,
    seq: u64,
    retry_key: Option<&str>,
) -> Planned {
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
            key: Some(retry_key.map_or_else(
                || format!("c{}-{}-{seq}", spec.id, spec.seed),
                str::to_string,
            )),
        },
    }
}

pub(crate) async fn one_request(
    spec: &ClientSpec,
    client: &LoadClient,
    rng: &mut fastrand::Rng,
    avoid_until: &mut [Option<Instant>],
    seq: u64,
    retry_key: Option<&str>,
    t0: Instant,
) -> RequestRecord {
    let planned = plan_request(spec, rng, seq, retry_key);
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
            let replay = resp
                .headers()
                .get("idempotent-replay")
                .is_some_and(|v| v.as_bytes() == b"true");
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, served_by, replay, body))
        })
        .await;
        match attempt {
            Ok(Ok((status, served_by, replay, body))) => {
                let payment = planned.key.as_ref().map(|key| PaymentRecord {
                    key: key.clone(),
                    ack: PaymentAck::from_answer(status, replay, &body),
                });
                return RequestRecord {
                    start_ms: ms_since(t0, started),
                    latency_ms: started.elapsed().as_secs_f64() * 1_000.0,
                    client_region: spec.region.clone(),
                    method: planned.method,
                    status: Some(status),
                    // Only what the service itself answered counts as a
                    // success: an edge's own 404, 408 or 413 names no backend.
                    ok: status < 500 && served_by.is_some(),
                    edge_region: Some(edge.region.clone()),
                    served_by,
                    edges_tried: tried,
                    error: None,
                    payment,
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
        payment: planned.key.map(|key| PaymentRecord { key, ack: None }),
    }
}

fn ms_since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64() * 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payment_ack_needs_a_2xx_answer_naming_the_row() {
        let row = br#"{"id": 7, "key": "k", "node": "us-east", "timeline": "00000002", "written_at_ms": 1700000000123, "region": "us-west"}"#;
        assert_eq!(
            PaymentAck::from_answer(201, false, row),
            Some(PaymentAck {
                id: 7,
                node: "us-east".into(),
                timeline: "00000002".into(),
                written_at_ms: 1_700_000_000_123,
                replay: false,
            })
        );
        assert!(PaymentAck::from_answer(200, true, row).unwrap().replay);
        let cases: [(u16, &[u8]); 5] = [
            (
                503,
                br#"{"error": "database at 127.0.1.20:5432 did not answer"}"#,
            ),
            (503, row),
            // The in-memory service names no row.
            (
                201,
                br#"{"id": "us-east-1", "region": "us-east", "key": "k"}"#,
            ),
            (201, br#"{"id": 7, "node": "us-east"}"#),
            (201, b"not json"),
        ];
        for (status, body) in cases {
            assert_eq!(
                PaymentAck::from_answer(status, false, body),
                None,
                "{status} {}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

//! The controller's HTTP API server: one connection task per client,
//! routes dispatched by method and path to the node, every failure an
//! [`tern_proto::api::ApiError`] body. The shapes are in
//! [`tern_proto::api`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use openraft::raft::AppendEntriesResponse;
use serde::de::DeserializeOwned;
use tern_core::control::Command;
use tern_proto::api::{
    ErrorKind, EventsView, MembershipChange, ObservationBatch, ReplicationReport, RoutingView,
};
use tern_proto::http::{error, json};
use tokio::net::TcpListener;

use crate::commit::{WriteError, FORWARDED};
use crate::node::Controller;

type Body = Full<Bytes>;
type Resp = http::Response<Body>;

const MAX_BODY: usize = 16 * 1024 * 1024;
/// Longest wait for a request head on an open connection (idle keep-alive included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn serve(node: Arc<Controller>, listener: TcpListener) {
    let stop = node.stop.clone();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let conn_stop = node.stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(route(node, req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // A client that sends no request head for this long is dropped.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = conn_stop.cancelled() => {}
            }
        });
    }
}

async fn body<T: DeserializeOwned>(req: http::Request<Incoming>) -> Result<T, Resp> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| error(ErrorKind::BadRequest, format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| error(ErrorKind::BadRequest, format!("bad JSON body: {e}")))
}

fn query(req: &http::Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

async fn route(node: Arc<Controller>, req: http::Request<Incoming>) -> Resp {
    let forwarded = req.headers().contains_key(FORWARDED);
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/raft/append") => {
            let rpc = match body(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            let result = node.raft.append_entries(rpc).await;
            if let Ok(r) = &result {
                if !matches!(r, AppendEntriesResponse::HigherVote(_)) {
                    *node.leader_contact.lock().expect("contact lock") = Some(Instant::now());
                }
            }
            json(StatusCode::OK, &result)
        }
        (Method::POST, "/raft/vote") => match body(req).await {
            Ok(rpc) => json(StatusCode::OK, &node.raft.vote(rpc).await),
            Err(resp) => resp,
        },
        (Method::POST, "/raft/snapshot") => match body(req).await {
            Ok(rpc) => json(StatusCode::OK, &node.raft.install_snapshot(rpc).await),
            Err(resp) => resp,
        },
        (Method::GET, "/v1/status") => json(StatusCode::OK, &node.status()),
        (Method::GET, "/metrics") => {
            let mut resp =
                http::Response::new(Full::new(Bytes::from(crate::metrics::render(&node))));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (Method::GET, "/v1/events") => {
            let limit: usize = query(&req, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100);
            let events = node
                .machine
                .with(|m| m.state.audit().iter().rev().take(limit).cloned().collect());
            json(
                StatusCode::OK,
                &EventsView {
                    in_quorum: node.in_quorum(),
                    events,
                },
            )
        }
        (Method::GET, "/v1/routing") => {
            let after: u64 = query(&req, "after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let wait = Duration::from_millis(
                query(&req, "wait_ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0u64)
                    .min(60_000),
            );
            let deadline = tokio::time::Instant::now() + wait;
            let mut metrics = node.raft.metrics();
            loop {
                let table = node.machine.with(|m| m.state.routing().clone());
                if table.version > after || tokio::time::Instant::now() >= deadline {
                    return json(
                        StatusCode::OK,
                        &RoutingView {
                            in_quorum: node.in_quorum(),
                            table,
                        },
                    );
                }
                tokio::select! {
                    _ = metrics.changed() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        (Method::POST, "/v1/observations") => {
            let batch: ObservationBatch = match body(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match node.observe(batch, forwarded).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({ "accepted": true })),
                Err(e) => error(ErrorKind::NoQuorum, e.to_string()),
            }
        }
        (Method::POST, "/v1/write") => {
            let command: Command = match body(req).await {
                Ok(c) => c,
                Err(resp) => return resp,
            };
            match node.write(command, forwarded).await {
                Ok(answer) => json(StatusCode::OK, &answer),
                Err(WriteError::Refused(m)) => error(ErrorKind::Refused, m),
                Err(WriteError::NoQuorum(m)) => error(ErrorKind::NoQuorum, m),
            }
        }
        (Method::GET, "/v1/clusters") => json(StatusCode::OK, &node.clusters_view()),
        (Method::POST, "/v1/replication") => {
            let report: ReplicationReport = match body(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            if !node.databases.iter().any(|d| d.name == report.cluster) {
                return error(
                    ErrorKind::NotFound,
                    format!("unknown database cluster \"{}\"", report.cluster),
                );
            }
            node.replication.lock().expect("replication lock").insert(
                (report.cluster.clone(), report.region.clone()),
                (Instant::now(), report),
            );
            json(StatusCode::OK, &serde_json::json!({ "accepted": true }))
        }
        (Method::POST, "/v1/members") => {
            let change: MembershipChange = match body(req).await {
                Ok(c) => c,
                Err(resp) => return resp,
            };
            match crate::membership::change_membership(&node, change).await {
                Ok(()) => json(StatusCode::OK, &node.status()),
                Err(WriteError::Refused(m)) => error(ErrorKind::Refused, m),
                Err(WriteError::NoQuorum(m)) => error(ErrorKind::NoQuorum, m),
            }
        }
        _ => error(ErrorKind::NotFound, format!("no such endpoint: {path}")),
    }
}

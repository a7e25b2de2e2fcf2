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
use tern_core::auth::{attribute, authorize, Action, Principal, Role};
use tern_core::control::Command;
use tern_proto::api::{
    ErrorKind, EventsView, GuardrailReport, MembershipChange, ObservationBatch, ReplicationReport,
    RoutingView,
};
use tern_proto::http::{error, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::commit::{WriteError, FORWARDED};
use crate::node::Controller;

type Body = Full<Bytes>;
type Resp = http::Response<Body>;

const MAX_BODY: usize = 16 * 1024 * 1024;
/// Longest wait for a request head on an open connection (idle keep-alive included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener`: over mutual TLS when `tls` is given (every
/// request is then authorized against the caller's certificate), plain
/// HTTP otherwise (every caller is trusted; see `[controller.tls]`).
pub(crate) async fn serve(node: Arc<Controller>, listener: TcpListener, tls: Option<TlsAcceptor>) {
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
        let tls = tls.clone();
        tokio::spawn(async move {
            let (io, who) = match tls {
                None => (Io::Plain(stream), None),
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let stream = match handshake.await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(error = %e, "control-plane TLS handshake refused");
                            return;
                        }
                        Err(_) => return,
                    };
                    let who = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(tern_proto::tls::principal_of);
                    match who {
                        Some(Ok(p)) => (Io::Tls(Box::new(stream)), Some(p)),
                        Some(Err(e)) => {
                            tracing::info!(error = %e, "control-plane client certificate names no principal");
                            return;
                        }
                        None => return,
                    }
                }
            };
            let svc = service_fn(move |req| {
                let node = node.clone();
                let who = who.clone();
                async move { Ok::<_, Infallible>(route(node, who, req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // A client that sends no request head for this long is dropped.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(io), svc);
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

/// The answer refusing `action` to `who`, if it is refused: never when the
/// server runs without TLS (`who` is `None`), else by
/// [`tern_core::auth::authorize`].
fn forbidden(who: &Option<Principal>, action: Action<'_>) -> Option<Resp> {
    let p = who.as_ref()?;
    let denied = authorize(p, action).err()?;
    tracing::warn!(principal = %p, refused = %denied, "control-plane request forbidden");
    Some(error(ErrorKind::Forbidden, denied.to_string()))
}

async fn route(
    node: Arc<Controller>,
    who: Option<Principal>,
    req: http::Request<Incoming>,
) -> Resp {
    let forwarded = req.headers().contains_key(FORWARDED);
    let path = req.uri().path().to_string();
    let action = match (req.method(), path.as_str()) {
        (&Method::POST, p) if p.starts_with("/raft/") => Some(Action::Raft),
        (&Method::GET, _) => Some(Action::Read),
        (&Method::POST, "/v1/members") => Some(Action::Members),
        _ => None, // decided on the body
    };
    if let Some(action) = action {
        if let Some(resp) = forbidden(&who, action) {
            return resp;
        }
    }
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
            if let Some(resp) = forbidden(
                &who,
                Action::Observe {
                    vantage: &batch.vantage,
                },
            ) {
                return resp;
            }
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
            let cluster_name = command_cluster(&command);
            let cluster = cluster_name
                .and_then(|name| node.machine.with(|m| m.state.clusters().get(name).cloned()));
            if let Some(resp) = forbidden(
                &who,
                Action::Write {
                    command: &command,
                    cluster: cluster.as_ref(),
                },
            ) {
                return resp;
            }
            // The audit log names the certificate, not what the client says.
            let command = match &who {
                Some(p) if p.role != Role::Controller => attribute(p, command),
                _ => command,
            };
            match node.write(command, forwarded).await {
                Ok(answer) => json(StatusCode::OK, &answer),
                Err(WriteError::Refused(m)) => error(ErrorKind::Refused, m),
                Err(WriteError::NoQuorum(m)) => error(ErrorKind::NoQuorum, m),
            }
        }
        (Method::GET, "/v1/clusters") => json(StatusCode::OK, &node.clusters_view()),
        (Method::GET, "/v1/drills") => {
            let view = node.machine.with(|m| tern_proto::api::DrillsView {
                in_quorum: false,
                current: m.state.drill().cloned(),
                past: m.state.past_drills().to_vec(),
                last_pass: m.state.last_drill_pass().clone(),
                evacuation: m.state.routing().evacuation.clone(),
            });
            json(
                StatusCode::OK,
                &tern_proto::api::DrillsView {
                    in_quorum: node.in_quorum(),
                    ..view
                },
            )
        }
        (Method::POST, "/v1/replication") => {
            let report: ReplicationReport = match body(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            if let Some(resp) = forbidden(
                &who,
                Action::Replicate {
                    region: &report.region,
                },
            ) {
                return resp;
            }
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
        (Method::POST, "/v1/guardrails") => {
            let report: GuardrailReport = match body(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            if let Some(resp) = forbidden(
                &who,
                Action::Guardrails {
                    region: &report.region,
                },
            ) {
                return resp;
            }
            crate::drills::keep_report(&node, report);
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

/// The database cluster a command is about, if any.
fn command_cluster(command: &Command) -> Option<&str> {
    match command {
        Command::AcquireLease { cluster, .. }
        | Command::RenewLease { cluster, .. }
        | Command::ReleaseLease { cluster, .. }
        | Command::StartFailover { cluster, .. }
        | Command::PlanStep { cluster, .. }
        | Command::PlanTimedOut { cluster, .. }
        | Command::CancelPlan { cluster, .. }
        | Command::NodeEvent { cluster, .. } => Some(cluster),
        Command::Verdict(_)
        | Command::SetWeights { .. }
        | Command::LeaderChanged { .. }
        | Command::StartDrill { .. }
        | Command::DrillAdvance { .. }
        | Command::DrillWatch { .. }
        | Command::AbortDrill { .. } => None,
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

//! The controller's HTTP API server: one connection task per client (TLS
//! accepted here, the caller's certificate read once per connection), and
//! an axum [`Router`] whose authorization layer and handlers decide what the
//! caller may do; every failure is an [`tern_proto::api::ApiError`] body.
//! The shapes are in [`tern_proto::api`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Extension, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::Full;
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
use tower_service::Service as _;

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
    let app = router(node.clone()).layer(DefaultBodyLimit::max(MAX_BODY));
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
        let app = app.clone();
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
            let svc = service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(Caller(who.clone()));
                let mut app = app.clone();
                async move {
                    // Bodies over MAX_BODY are refused with 413 (DefaultBodyLimit).
                    let req = req.map(axum::body::Body::new);
                    Ok::<_, Infallible>(app.call(req).await.unwrap_or_else(|e| match e {}))
                }
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

/// What every handler gets: the node, and who is calling (`None` when the
/// server runs without TLS: every caller is trusted).
#[derive(Clone)]
struct Caller(Option<Principal>);

type App = State<Arc<Controller>>;

/// The API's routes. Authorization comes in two layers: [`by_route`]
/// decides for the requests whose route says everything (Raft, reads,
/// membership), and the handlers of bodies that name a region or a
/// cluster decide on the body ([`forbidden`]).
fn router(node: Arc<Controller>) -> Router {
    Router::new()
        .route("/raft/append", post(raft_append))
        .route("/raft/vote", post(raft_vote))
        .route("/raft/snapshot", post(raft_snapshot))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/events", get(events))
        .route("/v1/routing", get(routing))
        .route("/v1/clusters", get(clusters))
        .route("/v1/drills", get(drills))
        .route("/v1/observations", post(observations))
        .route("/v1/write", post(write))
        .route("/v1/replication", post(replication))
        .route("/v1/guardrails", post(guardrails))
        .route("/v1/members", post(members))
        .fallback(not_found)
        .layer(middleware::from_fn(by_route))
        .with_state(node)
}

/// The route-level authorization layer.
async fn by_route(req: Request, next: Next) -> Response {
    let who = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller(None));
    let path = req.uri().path();
    let action = match *req.method() {
        Method::POST if path.starts_with("/raft/") => Some(Action::Raft),
        Method::GET => Some(Action::Read),
        Method::POST if path == "/v1/members" => Some(Action::Members),
        _ => None, // decided on the body
    };
    if let Some(resp) = action.and_then(|a| forbidden(&who.0, a)) {
        return resp.into_response();
    }
    next.run(req).await
}

/// A JSON body, or the [`ApiError`](tern_proto::api::ApiError) saying why not.
fn decode<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Box<Resp>> {
    serde_json::from_slice(bytes)
        .map_err(|e| Box::new(error(ErrorKind::BadRequest, format!("bad JSON body: {e}"))))
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

macro_rules! body {
    ($bytes:expr) => {
        match decode(&$bytes) {
            Ok(v) => v,
            Err(resp) => return *resp,
        }
    };
}

async fn raft_append(State(node): App, bytes: Bytes) -> Resp {
    let rpc = body!(bytes);
    let result = node.raft.append_entries(rpc).await;
    if let Ok(r) = &result {
        if !matches!(r, AppendEntriesResponse::HigherVote(_)) {
            *node.leader_contact.lock().expect("contact lock") = Some(Instant::now());
        }
    }
    json(StatusCode::OK, &result)
}

async fn raft_vote(State(node): App, bytes: Bytes) -> Resp {
    let rpc = body!(bytes);
    json(StatusCode::OK, &node.raft.vote(rpc).await)
}

async fn raft_snapshot(State(node): App, bytes: Bytes) -> Resp {
    let rpc = body!(bytes);
    json(StatusCode::OK, &node.raft.install_snapshot(rpc).await)
}

async fn status(State(node): App) -> Resp {
    json(StatusCode::OK, &node.status())
}

async fn metrics(State(node): App) -> Resp {
    let mut resp = http::Response::new(Full::new(Bytes::from(crate::metrics::render(&node))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    resp
}

/// Query values are read leniently, as before the router: a value that
/// does not parse counts as absent.
#[derive(serde::Deserialize)]
struct EventsQuery {
    limit: Option<String>,
}

async fn events(State(node): App, Query(q): Query<EventsQuery>) -> Resp {
    let limit = q.limit.and_then(|l| l.parse().ok()).unwrap_or(100);
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

#[derive(serde::Deserialize)]
struct RoutingQuery {
    after: Option<String>,
    wait_ms: Option<String>,
}

/// The committed routing table; with `after` and `wait_ms`, a long poll
/// that answers as soon as a newer version is applied here (at most 60 s).
async fn routing(State(node): App, Query(q): Query<RoutingQuery>) -> Resp {
    let after: u64 = q.after.and_then(|v| v.parse().ok()).unwrap_or(0);
    let wait_ms: u64 = q.wait_ms.and_then(|v| v.parse().ok()).unwrap_or(0);
    let wait = Duration::from_millis(wait_ms.min(60_000));
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

async fn clusters(State(node): App) -> Resp {
    json(StatusCode::OK, &node.clusters_view())
}

async fn drills(State(node): App) -> Resp {
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

fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

async fn observations(
    State(node): App,
    Extension(who): Extension<Caller>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    let batch: ObservationBatch = body!(bytes);
    if let Some(resp) = forbidden(
        &who.0,
        Action::Observe {
            vantage: &batch.vantage,
        },
    ) {
        return resp;
    }
    match node.observe(batch, forwarded(&headers)).await {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "accepted": true })),
        Err(e) => error(ErrorKind::NoQuorum, e.to_string()),
    }
}

async fn write(
    State(node): App,
    Extension(who): Extension<Caller>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    let command: Command = body!(bytes);
    let cluster_name = command_cluster(&command);
    let cluster =
        cluster_name.and_then(|name| node.machine.with(|m| m.state.clusters().get(name).cloned()));
    if let Some(resp) = forbidden(
        &who.0,
        Action::Write {
            command: &command,
            cluster: cluster.as_ref(),
        },
    ) {
        return resp;
    }
    // The audit log names the certificate, not what the client says.
    let command = match &who.0 {
        Some(p) if p.role != Role::Controller => attribute(p, command),
        _ => command,
    };
    match node.write(command, forwarded(&headers)).await {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(WriteError::Refused(m)) => error(ErrorKind::Refused, m),
        Err(WriteError::NoQuorum(m)) => error(ErrorKind::NoQuorum, m),
    }
}

async fn replication(State(node): App, Extension(who): Extension<Caller>, bytes: Bytes) -> Resp {
    let report: ReplicationReport = body!(bytes);
    if let Some(resp) = forbidden(
        &who.0,
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

async fn guardrails(State(node): App, Extension(who): Extension<Caller>, bytes: Bytes) -> Resp {
    let report: GuardrailReport = body!(bytes);
    if let Some(resp) = forbidden(
        &who.0,
        Action::Guardrails {
            region: &report.region,
        },
    ) {
        return resp;
    }
    crate::drills::keep_report(&node, report);
    json(StatusCode::OK, &serde_json::json!({ "accepted": true }))
}

async fn members(State(node): App, bytes: Bytes) -> Resp {
    let change: MembershipChange = body!(bytes);
    match crate::membership::change_membership(&node, change).await {
        Ok(()) => json(StatusCode::OK, &node.status()),
        Err(WriteError::Refused(m)) => error(ErrorKind::Refused, m),
        Err(WriteError::NoQuorum(m)) => error(ErrorKind::NoQuorum, m),
    }
}

async fn not_found(uri: http::Uri) -> Resp {
    error(
        ErrorKind::NotFound,
        format!("no such endpoint: {}", uri.path()),
    )
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

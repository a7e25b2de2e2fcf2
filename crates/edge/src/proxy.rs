//! The request path: route, buffer what may be retried, send, retry safely.
//!
//! [`handle`] is infallible: every failure becomes a response with a status
//! and a short JSON reason, so no input can crash the front door.

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tern_core::config::tls::BackendTls;
use tern_core::retry::{may_retry, AttemptOutcome};
use tern_core::routing::RoutePlan;

use crate::state::{EdgeState, ServiceState};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<tern_probe::Connector, ProxyBody>;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// One worker's clients toward backends: one for plain HTTP and one per
/// distinct TLS setting of `https://` backends. Cheap to clone.
#[derive(Clone)]
pub struct Upstreams {
    plain: UpstreamClient,
    tls: Arc<std::collections::HashMap<BackendTls, UpstreamClient>>,
}

impl Upstreams {
    /// Clients for every backend of `state`: connections kept 60 s idle;
    /// `max_headers` header lines at most in a response head. `Err` names
    /// a TLS file that could not be used (checked once at bind).
    pub fn new(
        state: &EdgeState,
        connect_timeout: Duration,
        max_headers: usize,
    ) -> Result<Upstreams, String> {
        let client = |tls: Option<&BackendTls>| -> Result<UpstreamClient, String> {
            let connector = tern_probe::connector(tls, Some(connect_timeout))?;
            Ok(Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(512)
                .http1_max_headers(max_headers)
                .build(connector))
        };
        let mut tls = std::collections::HashMap::new();
        for s in &state.services {
            for b in &s.backends {
                if let Some(t) = &b.config.tls {
                    if !tls.contains_key(t) {
                        tls.insert(t.clone(), client(Some(t))?);
                    }
                }
            }
        }
        Ok(Upstreams {
            plain: client(None)?,
            tls: Arc::new(tls),
        })
    }

    fn for_backend(&self, tls: Option<&BackendTls>) -> &UpstreamClient {
        tls.and_then(|t| self.tls.get(t)).unwrap_or(&self.plain)
    }
}

/// Facts about the client's connection the request path needs.
#[derive(Debug, Clone, Copy)]
pub struct ClientConn {
    pub remote: SocketAddr,
    /// The request came over the HTTPS listener.
    pub secure: bool,
}

pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A short JSON error response from the edge itself.
pub fn error_response(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": reason, "status": status.as_u16() }).to_string();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The request body as the edge holds it: whole in memory (so it can be sent
/// again), or a stream that can be sent once.
enum HeldBody {
    Buffered(Bytes),
    Streaming(Option<ProxyBody>),
}

enum BodyProblem {
    TooLarge,
    Client(String),
}

/// Reads the body into memory if it fits in `buffer_limit`; otherwise returns
/// a stream of what was read so far followed by the rest.
async fn hold_body(
    mut body: Incoming,
    buffer_limit: u64,
    max_body: Option<u64>,
) -> Result<HeldBody, BodyProblem> {
    if body.is_end_stream() {
        return Ok(HeldBody::Buffered(Bytes::new()));
    }
    let limit_stream = |b: ProxyBody| -> ProxyBody {
        match max_body {
            Some(max) => Limited::new(b, max as usize).boxed_unsync(),
            None => b,
        }
    };
    if let Some(len) = body.size_hint().exact() {
        if len > buffer_limit {
            return Ok(HeldBody::Streaming(Some(limit_stream(
                body.map_err(BoxError::from).boxed_unsync(),
            ))));
        }
    }
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Ok(HeldBody::Buffered(buf.freeze())),
            Some(Err(e)) => return Err(BodyProblem::Client(e.to_string())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if max_body.is_some_and(|m| buf.len() as u64 > m) {
                        return Err(BodyProblem::TooLarge);
                    }
                    if buf.len() as u64 > buffer_limit {
                        // Too big to hold: send what we have, then the rest as it comes.
                        let prefix = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(
                            buf.freeze(),
                        ))]);
                        let rest = BodyStream::new(body.map_err(BoxError::from));
                        let stream = StreamBody::new(prefix.chain(rest)).boxed_unsync();
                        return Ok(HeldBody::Streaming(Some(limit_stream(stream))));
                    }
                }
                Err(trailers) => {
                    // Trailers end the body; the buffered bytes plus trailers
                    // are rare enough to send once, unbuffered.
                    let data = futures_util::stream::iter([
                        Ok::<_, BoxError>(Frame::data(buf.freeze())),
                        Ok(trailers),
                    ]);
                    return Ok(HeldBody::Streaming(Some(
                        StreamBody::new(data).boxed_unsync(),
                    )));
                }
            },
        }
    }
}

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes headers that describe one connection and must not be forwarded
/// (RFC 9110 7.6.1), including any the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    for h in named {
        headers.remove(h);
    }
}

fn via_value(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_2 => "2.0 tern",
        Version::HTTP_10 => "1.0 tern",
        _ => "1.1 tern",
    })
}

fn append_via(headers: &mut HeaderMap, version: Version) {
    headers.append(header::VIA, via_value(version));
}

/// The request's host, lower case and without port: `:authority` for HTTP/2,
/// the Host header for HTTP/1.1.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| {
                    h.parse::<http::uri::Authority>()
                        .map_or(h.to_string(), |a| a.host().to_string())
                })
        })?;
    Some(raw.trim_end_matches('.').to_ascii_lowercase())
}

/// Handles one client request. Never fails: errors become responses.
pub async fn handle(
    state: Arc<EdgeState>,
    client: Upstreams,
    req: Request<Incoming>,
    conn: ClientConn,
) -> Response<ProxyBody> {
    let started = Instant::now();
    route_and_forward(&state, &client, req, conn, started).await
}

async fn route_and_forward(
    state: &EdgeState,
    client: &Upstreams,
    req: Request<Incoming>,
    conn: ClientConn,
    started: Instant,
) -> Response<ProxyBody> {
    let host = request_host(&req);
    if host.is_none() && req.version() == Version::HTTP_11 {
        state.metrics.unrouted_request(400);
        return error_response(StatusCode::BAD_REQUEST, "missing Host header");
    }
    let Some(service) = state.route(host.as_deref(), req.uri().path()) else {
        state.metrics.unrouted_request(404);
        return error_response(StatusCode::NOT_FOUND, "no service for this host and path");
    };
    if service.config.https_redirect && !conn.secure {
        if let Some(resp) = https_redirect(state, host.as_deref(), &req) {
            service.requests.count(resp.status().as_u16());
            return resp;
        }
    }
    let resp = forward(state, client, service, req, conn, started).await;
    service.requests.count(resp.status().as_u16());
    let (second, failed, latency) = (
        state.clock.now().as_secs(),
        resp.status().is_server_error(),
        started.elapsed(),
    );
    state.clients.record(second, failed, latency);
    service.clients.record(second, failed, latency);
    resp
}

/// `308 Permanent Redirect` to the same target on the HTTPS listener (308
/// keeps the method and body, RFC 9110 section 15.4.9); `None` when the
/// request names no host to redirect to.
fn https_redirect(
    state: &EdgeState,
    host: Option<&str>,
    req: &Request<Incoming>,
) -> Option<Response<ProxyBody>> {
    let tls = state.tls.as_ref()?;
    let host = host?;
    let port = match tls.listen_addr().port() {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = HeaderValue::from_str(&format!("https://{host}{port}{target}")).ok()?;
    let mut resp = Response::new(full("redirecting to HTTPS\n"));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    Some(resp)
}

async fn forward(
    state: &EdgeState,
    upstreams: &Upstreams,
    service: &ServiceState,
    req: Request<Incoming>,
    conn: ClientConn,
    started: Instant,
) -> Response<ProxyBody> {
    let settings = &state.settings;
    let deadline = started + settings.request_timeout;
    let content_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let (Some(max), Some(len)) = (settings.max_body, content_length) {
        if len > max {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than the edge accepts",
            );
        }
    }

    let (mut parts, body) = req.into_parts();
    let has_key = parts.headers.contains_key(IDEMPOTENCY_KEY);
    let retry_safe = may_retry(parts.method.as_str(), has_key);
    // Every method's body is held up to the limit: a request that never
    // left the edge (connection refused) may go elsewhere whatever its
    // method, and only a held body can be sent again.
    let buffer_limit = settings
        .retry_body_limit
        .min(settings.max_body.unwrap_or(u64::MAX));
    let held = match tokio::time::timeout_at(
        deadline.into(),
        hold_body(body, buffer_limit, settings.max_body),
    )
    .await
    {
        Err(_) => {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
            )
        }
        Ok(Err(BodyProblem::TooLarge)) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than the edge accepts",
            )
        }
        Ok(Err(BodyProblem::Client(e))) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("could not read request body: {e}"),
            )
        }
        Ok(Ok(h)) => h,
    };
    let mut held = held;
    let replayable = matches!(held, HeldBody::Buffered(_));

    let plan = state.plan(service, fastrand::u64(..));
    let order = match plan {
        RoutePlan::FailClosed => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "every backend of this service is unhealthy and the service fails closed",
            )
        }
        RoutePlan::Try { order, .. } => order,
    };
    service
        .retry_budget
        .lock()
        .expect("budget lock")
        .record_request(state.clock.now());

    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    add_forwarding_headers(&mut headers, &parts, conn);

    let mut last_failure: Option<(AttemptOutcome, String)> = None;
    for (attempt, &bi) in order.iter().enumerate() {
        let backend = &service.backends[bi];
        if attempt > 0 {
            // A request that provably never reached the last backend is
            // safe to send anywhere; any other only when repeating it is.
            let never_sent = last_failure.as_ref().is_some_and(|(o, _)| o.never_sent());
            if !(retry_safe || never_sent) || !replayable {
                state
                    .metrics
                    .retry_denied(&service.config.name, "not-idempotent");
                break;
            }
            if !service
                .retry_budget
                .lock()
                .expect("budget lock")
                .try_withdraw(state.clock.now())
            {
                state.metrics.retry_denied(&service.config.name, "budget");
                break;
            }
            state
                .metrics
                .retry(&service.config.name, &backend.config.region);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let body = match &mut held {
            HeldBody::Buffered(b) => full(b.clone()),
            HeldBody::Streaming(s) => match s.take() {
                Some(s) => s,
                None => break,
            },
        };
        let url = &backend.config.url;
        let client = upstreams.for_backend(backend.config.tls.as_ref());
        let uri: Uri = match format!(
            "{}://{}{}{}",
            if url.tls { "https" } else { "http" },
            url.authority(),
            url.base_path,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        )
        .parse()
        {
            Ok(u) => u,
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "request target cannot be forwarded",
                )
            }
        };
        let mut out = Request::new(body);
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri;
        *out.headers_mut() = headers.clone();

        let attempt_started = Instant::now();
        let result =
            tokio::time::timeout(settings.try_timeout.min(remaining), client.request(out)).await;
        let elapsed = attempt_started.elapsed();
        let outcome = match &result {
            Err(_) => AttemptOutcome::TimedOut,
            Ok(Ok(resp)) => AttemptOutcome::Status(resp.status().as_u16()),
            Ok(Err(e)) if e.is_connect() => AttemptOutcome::ConnectFailed,
            Ok(Err(e)) if unparsable_response(e) => AttemptOutcome::Unparsable,
            Ok(Err(_)) => AttemptOutcome::Reset,
        };
        // A 503 with Retry-After is a live backend declining on purpose
        // (its own dependency is busy or moving); ejecting it helps nobody.
        let declined = matches!(&result, Ok(Ok(resp))
            if resp.status() == StatusCode::SERVICE_UNAVAILABLE
                && resp.headers().contains_key(http::header::RETRY_AFTER));
        state.record_attempt(service, bi, outcome.counts_as_failure() && !declined);
        // Every attempt that reached the backend (answered, reset or timed
        // out) is load on its region, retried ones included.
        if !matches!(outcome, AttemptOutcome::ConnectFailed) {
            if let Some(w) = state.served.get(&backend.config.region) {
                w.record(state.clock.now().as_secs(), false, elapsed);
            }
        }
        if let Ok(Ok(_)) = &result {
            state.metrics.upstream_latency(
                &service.config.name,
                &backend.config.region,
                elapsed.as_secs_f64(),
            );
        }
        let more = attempt + 1 < order.len();
        match result {
            Ok(Ok(resp)) => {
                if outcome.is_retryable_failure() && more && retry_safe && replayable {
                    last_failure = Some((outcome, format!("status {}", resp.status())));
                    continue;
                }
                return into_client_response(resp);
            }
            Ok(Err(e)) => {
                if let Some(resp) = body_limit_response(&e) {
                    return resp;
                }
                tracing::debug!(backend = %url, error = %e, "attempt failed");
                last_failure = Some((outcome, e.to_string()));
                if !outcome.is_retryable_failure() {
                    break;
                }
            }
            Err(_) => {
                last_failure = Some((
                    outcome,
                    format!(
                        "no response within {:?}",
                        settings.try_timeout.min(remaining)
                    ),
                ));
            }
        }
    }
    match last_failure {
        Some((AttemptOutcome::TimedOut, why)) => error_response(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("upstream timed out: {why}"),
        ),
        Some((_, why)) => {
            error_response(StatusCode::BAD_GATEWAY, &format!("upstream failed: {why}"))
        }
        None => error_response(StatusCode::GATEWAY_TIMEOUT, "request deadline passed"),
    }
}

/// Whether the backend's answer reached the edge but its head could not be
/// parsed (hyper's parse errors, too many headers among them).
fn unparsable_response(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return h.is_parse() || h.is_parse_too_large();
        }
        source = s.source();
    }
    false
}

fn body_limit_response(e: &hyper_util::client::legacy::Error) -> Option<Response<ProxyBody>> {
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<LengthLimitError>() {
            return Some(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than the edge accepts",
            ));
        }
        source = s.source();
    }
    None
}

fn add_forwarding_headers(headers: &mut HeaderMap, parts: &http::request::Parts, conn: ClientConn) {
    let remote = conn.remote;
    // Every X-Forwarded-For line the client sent, in order, then the
    // client's address: a list split over several lines is one list
    // (RFC 9110 section 5.3), and `insert` after `get` kept only the first.
    let mut xff: Vec<u8> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let v = v.as_bytes().trim_ascii();
        if !v.is_empty() {
            xff.extend_from_slice(v);
            xff.extend_from_slice(b", ");
        }
    }
    xff.extend_from_slice(remote.ip().to_string().as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    // What the client spoke to the edge; a backend builds absolute URLs and
    // Secure cookies from it (the edge's own TLS ends here).
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if conn.secure { "https" } else { "http" }),
    );
    append_via(headers, parts.version);
    // The request was routed by the target's authority when it has one
    // (absolute form, or HTTP/2's :authority), so the backend must see that
    // name too: RFC 9112 section 3.2.2 has the absolute-form authority win
    // over a Host header that disagrees, and a proxy replace it.
    if let Some(a) = parts.uri.authority() {
        if let Ok(v) = HeaderValue::from_str(a.as_str()) {
            headers.insert(header::HOST, v);
        }
    }
}

fn into_client_response(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    append_via(&mut parts.headers, parts.version);
    Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        assert_eq!(left, vec!["x-keep"]);
    }
}

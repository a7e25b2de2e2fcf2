//! JSON over HTTP/1.1 with a deadline on every call: the transport between
//! controllers, and between controllers and agents, edges and operators.
//! Failures come back typed ([`CallError`]), decoded from the
//! [`ApiError`] body every endpoint answers a failure with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{ApiError, ErrorKind};

/// Why a call failed. The variants drive what a caller does next:
/// [`CallError::Refused`] is final, [`CallError::NoQuorum`] and
/// [`CallError::Unreachable`] are worth trying at another controller.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: refused, reset, or past the deadline. The peer may be down
    /// or cut off.
    #[error("{addr} unreachable: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    /// The controllers' state machine refused the command
    /// ([`ErrorKind::Refused`]); the message says why.
    #[error("{addr} refused: {message}")]
    Refused { addr: SocketAddr, message: String },
    /// The caller's identity may not make this request
    /// ([`ErrorKind::Forbidden`]); the message says who and what.
    #[error("{addr} forbids it: {message}")]
    Forbidden { addr: SocketAddr, message: String },
    /// The peer has no working majority behind it ([`ErrorKind::NoQuorum`]).
    #[error("{addr} has no quorum: {message}")]
    NoQuorum { addr: SocketAddr, message: String },
    /// The peer answered with another error status and this message.
    #[error("{addr} answered {status}: {message}")]
    Status {
        addr: SocketAddr,
        status: u16,
        message: String,
    },
    #[error("{addr} sent a body that does not decode: {reason}")]
    Decode { addr: SocketAddr, reason: String },
}

impl CallError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CallError::Unreachable { .. })
    }

    /// Whether another controller might answer better (no answer here, or
    /// no quorum behind this one).
    pub fn is_retryable_elsewhere(&self) -> bool {
        matches!(
            self,
            CallError::Unreachable { .. } | CallError::NoQuorum { .. }
        )
    }
}

/// The transport's client: plain HTTP, or HTTPS with mutual TLS when made
/// with [`HttpClient::with_tls`] (a [`crate::tls::ControlPlaneTls`]'s
/// client configuration). Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    scheme: &'static str,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    /// Plain HTTP.
    pub fn new() -> HttpClient {
        HttpClient::with_tls(None)
    }

    /// HTTPS with `tls` when given (every call then goes to `https://`),
    /// plain HTTP otherwise.
    pub fn with_tls(tls: Option<Arc<rustls::ClientConfig>>) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.enforce_http(false);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let config = tls.unwrap_or_else(|| {
            // Never used: calls go to http:// URLs.
            Arc::new(
                rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        });
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(Arc::unwrap_or_clone(config))
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpClient { inner, scheme }
    }

    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &B,
        deadline: Duration,
    ) -> Result<R, CallError> {
        self.post_headers(addr, path, body, deadline, &[]).await
    }

    pub async fn post_headers<B: Serialize, R: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &B,
        deadline: Duration,
        headers: &[(&'static str, &'static str)],
    ) -> Result<R, CallError> {
        let bytes = serde_json::to_vec(body).expect("request bodies serialize");
        self.call(
            Method::POST,
            addr,
            path,
            Bytes::from(bytes),
            deadline,
            headers,
        )
        .await
    }

    /// POST with one extra header.
    pub async fn post_with_header<B: Serialize, R: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &B,
        deadline: Duration,
        header: (&'static str, &'static str),
    ) -> Result<R, CallError> {
        self.post_headers(addr, path, body, deadline, &[header])
            .await
    }

    pub async fn get<R: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
        deadline: Duration,
    ) -> Result<R, CallError> {
        self.call(Method::GET, addr, path, Bytes::new(), deadline, &[])
            .await
    }

    async fn call<R: DeserializeOwned>(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        body: Bytes,
        deadline: Duration,
        headers: &[(&'static str, &'static str)],
    ) -> Result<R, CallError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}://{addr}{path}", self.scheme))
            .header(header::CONTENT_TYPE, "application/json");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Full::new(body)).expect("a valid request");
        let unreachable = |reason: String| CallError::Unreachable { addr, reason };
        let work = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| unreachable(error_chain(&e)))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the body: {e}")))?
                .to_bytes();
            Ok::<_, CallError>((status, body))
        };
        let (status, body) = tokio::time::timeout(deadline, work)
            .await
            .map_err(|_| unreachable(format!("no answer within {} ms", deadline.as_millis())))??;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiError>(&body) {
                Ok(ApiError {
                    error: message,
                    kind: ErrorKind::Refused,
                }) => CallError::Refused { addr, message },
                Ok(ApiError {
                    error: message,
                    kind: ErrorKind::NoQuorum,
                }) => CallError::NoQuorum { addr, message },
                Ok(ApiError {
                    error: message,
                    kind: ErrorKind::Forbidden,
                }) => CallError::Forbidden { addr, message },
                Ok(ApiError { error: message, .. }) => CallError::Status {
                    addr,
                    status: status.as_u16(),
                    message,
                },
                Err(_) => CallError::Status {
                    addr,
                    status: status.as_u16(),
                    message: String::from_utf8_lossy(&body).into_owned(),
                },
            });
        }
        serde_json::from_slice(&body).map_err(|e| CallError::Decode {
            addr,
            reason: e.to_string(),
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A JSON response with a status.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> http::Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("responses serialize");
    http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// An error response: an [`ApiError`] body with the kind's status.
pub fn error(kind: ErrorKind, message: impl Into<String>) -> http::Response<Full<Bytes>> {
    let status = StatusCode::from_u16(kind.status()).expect("a valid status");
    json(
        status,
        &ApiError {
            error: message.into(),
            kind,
        },
    )
}

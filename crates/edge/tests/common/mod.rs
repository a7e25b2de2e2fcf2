//! Test harness: real backends and a real edge on loopback, port 0 everywhere.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tern_core::config::Config;
use tern_edge::{Edge, Phase};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How a test backend answers requests outside `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the backend's name.
    Ok,
    /// Always this status.
    Status(u16),
    /// Read the request, then drop the connection without answering, as a
    /// process killed mid-request would.
    Drop,
    /// Never answer.
    Hang,
    /// Answer after a delay.
    Slow(Duration),
    /// 200 with this many extra header lines (`x-h-1` ...).
    ManyHeaders(usize),
}

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub mode: Arc<Mutex<Mode>>,
    /// 200 or 503 on `/health`.
    pub healthy: Arc<Mutex<bool>>,
    /// Requests seen outside `/health`.
    pub hits: Arc<AtomicUsize>,
    /// Bytes of request bodies received, in total.
    pub body_bytes: Arc<AtomicUsize>,
    /// Headers of the last request, as "name: value" lines.
    pub last_headers: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl Backend {
    pub async fn start(name: &str, mode: Mode) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = Backend {
            name: name.to_string(),
            addr,
            mode: Arc::new(Mutex::new(mode)),
            healthy: Arc::new(Mutex::new(true)),
            hits: Arc::default(),
            body_bytes: Arc::default(),
            last_headers: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (name, m, h, hits, bytes, headers, stop) = (
            b.name.clone(),
            b.mode.clone(),
            b.healthy.clone(),
            b.hits.clone(),
            b.body_bytes.clone(),
            b.last_headers.clone(),
            b.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let (name, m, h, hits, bytes, headers, stop) = (
                    name.clone(),
                    m.clone(),
                    h.clone(),
                    hits.clone(),
                    bytes.clone(),
                    headers.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (name, m, h, hits, bytes, headers) = (
                            name.clone(),
                            m.clone(),
                            h.clone(),
                            hits.clone(),
                            bytes.clone(),
                            headers.clone(),
                        );
                        async move { answer(req, &name, &m, &h, &hits, &bytes, &headers).await }
                    });
                    // Generous, so that the edge's own limits are what a test meets.
                    let conn = hyper::server::conn::http1::Builder::new()
                        .max_headers(1000)
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        b
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn set_healthy(&self, healthy: bool) {
        *self.healthy.lock().unwrap() = healthy;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection, like a killed process.
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    mode: &Mutex<Mode>,
    healthy: &Mutex<bool>,
    hits: &AtomicUsize,
    bytes: &AtomicUsize,
    headers: &Mutex<Vec<String>>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    if req.uri().path() == "/health" {
        let ok = *healthy.lock().unwrap();
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from("ok")))
            .unwrap());
    }
    hits.fetch_add(1, Ordering::SeqCst);
    *headers.lock().unwrap() = req
        .headers()
        .iter()
        .map(|(k, v)| format!("{}: {}", k, v.to_str().unwrap_or("?")))
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    bytes.fetch_add(body.len(), Ordering::SeqCst);
    let mode = *mode.lock().unwrap();
    match mode {
        Mode::Ok => {}
        Mode::Status(s) => {
            return Ok(Response::builder()
                .status(s)
                .body(Full::new(Bytes::from(name.to_string())))
                .unwrap());
        }
        Mode::Drop => return Err(std::io::Error::other("dropped on purpose")),
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::ManyHeaders(n) => {
            let mut resp = Response::builder().header("x-served-by", name);
            for i in 1..=n {
                resp = resp.header(format!("x-h-{i}"), "v");
            }
            return Ok(resp.body(Full::new(Bytes::from(name.to_string()))).unwrap());
        }
    }
    Ok(Response::builder()
        .header("x-served-by", name)
        .body(Full::new(Bytes::from(name.to_string())))
        .unwrap())
}

pub struct RunningEdge {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub stop: CancellationToken,
    pub phase: tokio::sync::watch::Receiver<Phase>,
    pub task: tokio::task::JoinHandle<()>,
}

impl RunningEdge {
    pub async fn start(toml: &str) -> RunningEdge {
        let config = Config::from_toml("test.toml", toml)
            .unwrap_or_else(|e| panic!("bad test config:\n{e}"));
        let edge = Edge::bind(&config).await.unwrap();
        let addr = edge.local_addr();
        let admin = edge.admin_addr().unwrap();
        let mut phase = edge.phase();
        let stop = CancellationToken::new();
        let task = tokio::spawn(edge.run(stop.clone()));
        phase.wait_for(|p| *p == Phase::Serving).await.unwrap();
        RunningEdge {
            addr,
            admin,
            stop,
            phase,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn status(&self) -> serde_json::Value {
        let (_, body) = get(&format!("http://{}/status", self.admin)).await;
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until `/status` satisfies `f`, polling; panics after 10 s.
    pub async fn wait_status(
        &self,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status().await;
            if f(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; status: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Edge settings for tests: listeners on port 0. Keys in `extra_edge`
/// replace the defaults.
pub fn edge_toml(extra_edge: &str, service: &str) -> String {
    let defaults = [
        "region = \"a\"",
        "listen = \"127.0.0.1:0\"",
        "admin = \"127.0.0.1:0\"",
        "try_timeout = \"300ms\"",
        "request_timeout = \"3s\"",
        "shutdown_grace = \"2s\"",
    ];
    let overridden = |line: &str| {
        let key = line.split('=').next().unwrap().trim();
        extra_edge
            .lines()
            .any(|l| l.split('=').next().unwrap().trim() == key)
    };
    let edge: Vec<&str> = defaults.into_iter().filter(|l| !overridden(l)).collect();
    format!(
        "[[region]]\nname = \"a\"\n[[region]]\nname = \"b\"\n\n[edge]\n{}\n{extra_edge}\n\n{service}\n",
        edge.join("\n")
    )
}

/// A backend table with fast health checks.
pub fn backend_toml(service: &str, region: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[service.{service}.backend]]
region = "{region}"
url = "http://{addr}"
health = {{ path = "/health", interval = "50ms", timeout = "40ms", fall = 2, rise = 2 }}
{extra}
"#
    )
}

/// A test client; reads response heads of up to 1,000 header lines (hyper's
/// default of 100 is lower than what the edge relays).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http1_max_headers(1000)
        .build(HttpConnector::new())
}

pub async fn send(req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, String) {
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get(url: &str) -> (StatusCode, String) {
    let (s, _, b) = send(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await;
    (s, b)
}

/// Sends raw bytes and returns the raw response text.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

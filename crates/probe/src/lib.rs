//! tern's active health probe: one HTTP or TCP check of one target, with a
//! deadline. The edge's backend checks, its DNS targets' checks and the
//! agent's checks of every region all send this same probe, so a backend
//! is judged the same way wherever it is watched from.
//!
//! [`probe_client`] makes the connection pool probes use (apart from
//! traffic, so a probe never queues behind requests); [`probe`] runs one
//! check against a [`BackendUrl`] and answers a [`ProbeOutcome`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tern_core::config::{BackendUrl, ProbeKind};
use tokio::net::TcpStream;

/// Probe responses larger than this are cut; a health body is small.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// The HTTP client probes use.
pub type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// A client with its own small pool (one idle connection per target).
pub fn probe_client() -> ProbeClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // Probes keep their own pool, apart from traffic, so a probe never queues
    // behind requests and its round trip measures the path, not the load.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// The check passed.
    pub ok: bool,
    /// Why it failed (empty when it passed).
    pub detail: String,
    /// From sending the probe to its verdict (at most the deadline).
    pub elapsed: Duration,
}

/// Runs one check of `url` within `timeout`: a failure to pass for any
/// reason (refused, wrong status, body without the expected text, no
/// answer in time) is `ok: false` with the reason.
pub async fn probe(
    client: &ProbeClient,
    url: &BackendUrl,
    kind: &ProbeKind,
    timeout: Duration,
) -> ProbeOutcome {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, probe_once(client, url, kind)).await;
    let (ok, detail) = match result {
        Ok(Ok(())) => (true, String::new()),
        Ok(Err(e)) => (false, e),
        Err(_) => (
            false,
            format!("no answer within {} ms", timeout.as_millis()),
        ),
    };
    ProbeOutcome {
        ok,
        detail,
        elapsed: started.elapsed(),
    }
}

/// One check without a deadline of its own: `Err` carries the reason.
pub async fn probe_once(
    client: &ProbeClient,
    url: &BackendUrl,
    probe: &ProbeKind,
) -> Result<(), String> {
    match probe {
        ProbeKind::Tcp => TcpStream::connect(url.authority())
            .await
            .map(|_| ())
            .map_err(|e| format!("connect: {e}")),
        ProbeKind::Http {
            path,
            expect_status,
            body_contains,
            host,
            headers,
        } => {
            let uri = format!("http://{}{}{}", url.authority(), url.base_path, path);
            let mut req =
                http::Request::get(uri).header(http::header::USER_AGENT, "tern-edge-probe");
            if let Some(host) = host {
                req = req.header(http::header::HOST, host.as_str());
            }
            for (name, value) in headers {
                req = req.header(name.as_str(), value.as_str());
            }
            let req = req
                .body(Empty::new())
                .map_err(|e| format!("bad probe request: {e}"))?;
            let resp = client
                .request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            if !expect_status.contains(status) {
                return Err(format!("status {status}"));
            }
            if let Some(needle) = body_contains {
                let body = Limited::new(resp.into_body(), MAX_PROBE_BODY)
                    .collect()
                    .await
                    .map_err(|e| format!("body: {e}"))?
                    .to_bytes();
                if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
                    return Err(format!("body lacks \"{needle}\""));
                }
            }
            Ok(())
        }
    }
}

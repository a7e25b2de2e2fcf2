//! tern's active health probe: one HTTP or TCP check of one target, with a
//! deadline. The edge's backend checks, its DNS targets' checks and the
//! agent's checks of every region all send this same probe, so a backend
//! is judged the same way wherever it is watched from.
//!
//! [`probe_client`] makes the connection pool probes use (apart from
//! traffic, so a probe never queues behind requests); [`probe`] runs one
//! check against a [`BackendUrl`] and answers a [`ProbeOutcome`].
//! [`connector`] makes the connector toward a backend, plain or over TLS
//! (rustls with the ring provider, the backend's CA file or the system's
//! trust store, an optional client certificate); the edge's traffic uses it
//! too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tern_core::config::tls::BackendTls;
use tern_core::config::{BackendUrl, ProbeKind};
use tokio::net::TcpStream;

/// Probe responses larger than this are cut; a health body is small.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// The TLS provider of every tern endpoint: rustls' ring provider (TLS 1.2
/// and 1.3 cipher suites, X25519 and NIST curves). rustls 0.23.48 marks it
/// deprecated because ring has no post-quantum key exchange; aws-lc-rs has
/// one but needs a C and assembler build on every machine, so tern stays on
/// ring until rustls offers post-quantum groups with it.
#[allow(deprecated)]
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A connector toward backends: plain TCP for `http://`, TLS for `https://`.
pub type Connector = HttpsConnector<HttpConnector>;

/// The rustls client configuration toward a backend: its CA file's
/// certificates (or the system's trust store), and its client certificate
/// when it asks for one. `Err` names the file that could not be used.
pub fn client_tls_config(tls: &BackendTls) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| format!("{}: cannot read CA certificates: {e}", ca.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("{}: no usable CA certificate", ca.display()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match &tls.client {
        None => Ok(builder.with_no_client_auth()),
        Some(files) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| format!("{}: cannot read certificates: {e}", files.cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(&files.key)
                .map_err(|e| format!("{}: no usable private key: {e}", files.key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: {e}", files.cert.display()))
        }
    }
}

/// A connector for a backend with `tls` settings (`None`: plain HTTP
/// only), with TCP_NODELAY and an optional connect timeout.
pub fn connector(
    tls: Option<&BackendTls>,
    connect_timeout: Option<Duration>,
) -> Result<Connector, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(connect_timeout);
    http.enforce_http(false);
    let config = match tls {
        Some(t) => client_tls_config(t)?,
        // Never used for a handshake: plain backends only.
        None => ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let builder = match tls.and_then(|t| t.server_name.as_ref()) {
        Some(name) => {
            let name = ServerName::try_from(name.clone())
                .map_err(|e| format!("server_name {name}: {e}"))?;
            builder.with_server_name_resolver(FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    Ok(builder.enable_http1().wrap_connector(http))
}

/// A probe client for one TLS setting (or plain HTTP).
type PooledClient = Client<Connector, Empty<Bytes>>;

/// The HTTP client probes use: one small pool per TLS setting, apart from
/// traffic. Cheap to clone.
#[derive(Clone)]
pub struct ProbeClient {
    plain: PooledClient,
    /// Clients for `https://` backends, by their settings (an error is
    /// kept too, and reported by every probe that needs it).
    tls: Arc<Mutex<HashMap<BackendTls, Result<PooledClient, String>>>>,
}

fn pooled(connector: Connector) -> PooledClient {
    // Probes keep their own pool, apart from traffic, so a probe never queues
    // behind requests and its round trip measures the path, not the load.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// A client with its own small pool (one idle connection per target).
pub fn probe_client() -> ProbeClient {
    ProbeClient {
        plain: pooled(connector(None, None).expect("a plain connector needs no files")),
        tls: Arc::default(),
    }
}

impl ProbeClient {
    fn for_backend(&self, tls: Option<&BackendTls>) -> Result<PooledClient, String> {
        let Some(tls) = tls else {
            return Ok(self.plain.clone());
        };
        let mut cache = self.tls.lock().expect("probe client cache");
        cache
            .entry(tls.clone())
            .or_insert_with(|| connector(Some(tls), None).map(pooled))
            .clone()
    }
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

/// Runs one check of `url` (over TLS with `tls` for `https://` URLs) within
/// `timeout`: a failure to pass for any reason (refused, handshake failed,
/// wrong status, body without the expected text, no answer in time) is
/// `ok: false` with the reason.
pub async fn probe(
    client: &ProbeClient,
    url: &BackendUrl,
    tls: Option<&BackendTls>,
    kind: &ProbeKind,
    timeout: Duration,
) -> ProbeOutcome {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, probe_once(client, url, tls, kind)).await;
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
    tls: Option<&BackendTls>,
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
            let scheme = if url.tls { "https" } else { "http" };
            let uri = format!("{scheme}://{}{}{}", url.authority(), url.base_path, path);
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
            let client = client
                .for_backend(if url.tls { tls } else { None })
                .map_err(|e| format!("TLS settings: {e}"))?;
            let resp = client
                .request(req)
                .await
                .map_err(|e| format!("request: {}", error_chain(&e)))?;
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

/// An error with its sources, so a failed handshake says why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

//! The lab's edges over HTTPS: every edge serves `payments.lab` with a
//! certificate from the lab's own authority ([`crate::certs`]), and the lab
//! checks each one before the load starts, as a client would: a TLS
//! handshake that trusts only the lab's CA, ALPN, then a request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tern_core::config::tls::BackendTls;

/// The name the lab's edges serve over HTTPS (and its certificates carry).
pub const HOST: &str = "payments.lab";

/// What one edge answered over HTTPS.
#[derive(Debug, Clone, Serialize)]
pub struct HttpsCheck {
    pub region: String,
    /// `https://payments.lab:PORT/` with the edge's address to resolve it to.
    pub url: String,
    pub addr: String,
    pub ok: bool,
    /// e.g. "TLSv1_3 h2 200", or why it failed.
    pub detail: String,
}

/// Checks `addr` over HTTPS trusting only `ca`: the handshake for
/// [`HOST`], HTTP/2 chosen by ALPN, and `GET /health` answered below 500.
pub async fn check(region: &str, addr: SocketAddr, ca: &Path) -> HttpsCheck {
    let url = format!("https://{HOST}:{}/", addr.port());
    let (ok, detail) = match tokio::time::timeout(Duration::from_secs(5), get(addr, ca)).await {
        Ok(Ok(d)) => (true, d),
        Ok(Err(e)) => (false, format!("{e:#}")),
        Err(_) => (false, "no answer within 5 s".to_string()),
    };
    HttpsCheck {
        region: region.to_string(),
        url,
        addr: addr.to_string(),
        ok,
        detail,
    }
}

async fn get(addr: SocketAddr, ca: &Path) -> Result<String> {
    let mut config = tern_probe::client_tls_config(&BackendTls {
        ca: Some(ca.to_path_buf()),
        client: None,
        server_name: None,
    })
    .map_err(|e| anyhow!(e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let tls = connector
        .connect(ServerName::try_from(HOST)?, tcp)
        .await
        .context("TLS handshake")?;
    let (_, session) = tls.get_ref();
    let version = session
        .protocol_version()
        .map_or("?".to_string(), |v| format!("{v:?}"));
    if session.alpn_protocol() != Some(b"h2") {
        return Err(anyhow!("ALPN did not choose h2"));
    }
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .context("HTTP/2 handshake")?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://{HOST}/health")).body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await.context("request")?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if status.is_server_error() {
        return Err(anyhow!("status {status}"));
    }
    Ok(format!("{version} h2 {}", status.as_u16()))
}

//! HTTPS at the edge with real clients: curl over HTTP/1.1 and HTTP/2 with
//! SNI for two names served by different certificates, a handshake with an
//! unknown name, certificates reloaded while a keep-alive connection stays
//! open, a bad new certificate refused, the redirect from plain HTTP, and
//! TLS toward a backend that asks for a client certificate.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tern_edge::Edge;
use tern_lab::certs::{Ca, Validity};

struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("tern test CA").unwrap();
    let ca_file = dir.path().join("ca.pem");
    ca.write(&ca_file).unwrap();
    Pki { dir, ca, ca_file }
}

impl Pki {
    fn issue(&self, names: &[&str], stem: &str) -> (PathBuf, PathBuf) {
        self.issue_with(names, stem, Validity::Current)
    }

    fn issue_with(&self, names: &[&str], stem: &str, v: Validity) -> (PathBuf, PathBuf) {
        let f = self.ca.issue(names, v, self.dir.path(), stem).unwrap();
        (f.cert, f.key)
    }
}

fn leaf_der(cert: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec()
}

struct TlsEdge {
    edge: RunningEdge,
    https: SocketAddr,
}

async fn start_tls_edge(toml: &str) -> TlsEdge {
    let edge = RunningEdge::start(toml).await;
    // The HTTPS listener's bound address, as /status reports it.
    let s = edge.status().await;
    let https: SocketAddr = s["tls"]["listen"].as_str().unwrap().parse().unwrap();
    TlsEdge { edge, https }
}

fn service(name: &str, host: &str, backend: &Backend, extra: &str) -> String {
    format!(
        "[service.{name}]\npolicy = \"failover\"\nhosts = [\"{host}\"]\n{extra}\n{}",
        backend_toml(name, "a", backend.addr, "")
    )
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

struct Curl {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn curl(args: &[&str]) -> Curl {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("run curl");
    Curl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `https://NAME:PORT/` resolved to the edge, trusting the test CA.
async fn curl_name(pki: &Pki, edge: &TlsEdge, name: &str, extra: &[&str]) -> Curl {
    let resolve = format!("{name}:{}:127.0.0.1", edge.https.port());
    let url = format!("https://{name}:{}/", edge.https.port());
    let ca = p(&pki.ca_file);
    let mut args = vec![
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_each_names_certificate_over_http1_and_http2() {
    let pki = pki();
    let (a_cert, a_key) = pki.issue(&["a.tern.test"], "a");
    let (b_cert, b_key) = pki.issue(&["b.tern.test"], "b");
    let (d_cert, d_key) = pki.issue(&["default.tern.test"], "default");
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    // a's certificate comes with its service, b's from [[edge.tls.certificate]].
    let services = format!(
        "{}\n{}\n[edge.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [[edge.tls.certificate]]\nhosts = [\"b.tern.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        service(
            "a",
            "a.tern.test",
            &a,
            &format!(
                "tls = {{ cert = \"{}\", key = \"{}\" }}",
                p(&a_cert),
                p(&a_key)
            )
        ),
        service("b", "b.tern.test", &b, ""),
        p(&d_cert),
        p(&d_key),
        p(&b_cert),
        p(&b_key),
    );
    let edge = start_tls_edge(&edge_toml("", &services)).await;
    for (name, body) in [("a.tern.test", "a"), ("b.tern.test", "b")] {
        for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
            let c = curl_name(&pki, &edge, name, &[flag]).await;
            assert_eq!(c.code, 0, "{name} {flag}: {}", c.stderr);
            assert_eq!(
                c.stdout,
                format!("{body}\n{version}"),
                "{name} {flag}: {}",
                c.stderr
            );
            assert!(
                c.stderr.contains(&format!("CN={name}")),
                "{name} {flag}: another certificate was served:\n{}",
                c.stderr
            );
        }
    }
    // TLS 1.2 as well as 1.3.
    let c = curl_name(
        &pki,
        &edge,
        "a.tern.test",
        &["--tlsv1.2", "--tls-max", "1.2"],
    )
    .await;
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(c.stderr.contains("TLSv1.2"), "{}", c.stderr);
    // The backend learns the client spoke HTTPS.
    let seen = a.last_headers.lock().unwrap().clone();
    assert!(
        seen.iter().any(|l| l == "x-forwarded-proto: https"),
        "{seen:?}"
    );

    // An unknown name gets the default certificate (which curl then
    // rightly refuses for that name).
    let c = curl_name(&pki, &edge, "unknown.tern.test", &["-k"]).await;
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(c.stderr.contains("CN=default.tern.test"), "{}", c.stderr);
    let c = curl_name(&pki, &edge, "unknown.tern.test", &[]).await;
    assert_eq!(
        c.code, 60,
        "a certificate for another name was accepted: {}",
        c.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_an_unknown_name_is_refused_at_the_handshake() {
    let pki = pki();
    let (a_cert, a_key) = pki.issue(&["a.tern.test"], "a");
    let a = Backend::start("a", Mode::Ok).await;
    let services = format!(
        "{}\n[edge.tls]\nlisten = \"127.0.0.1:0\"\n\
         [[edge.tls.certificate]]\nhosts = [\"a.tern.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        service("a", "a.tern.test", &a, ""),
        p(&a_cert),
        p(&a_key)
    );
    let edge = start_tls_edge(&edge_toml("", &services)).await;
    let c = curl_name(&pki, &edge, "unknown.tern.test", &["-k"]).await;
    assert_eq!(c.code, 35, "the handshake was not refused: {}", c.stderr);
    let s = edge.edge.status().await;
    assert_eq!(s["tls"]["unknown_names"], 1, "{s:#}");
    // The known name still works.
    let c = curl_name(&pki, &edge, "a.tern.test", &[]).await;
    assert_eq!(c.code, 0, "{}", c.stderr);
}

/// A client of the edge's HTTPS listener that keeps its connection.
struct KeptConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    peer_leaf: Vec<u8>,
}

async fn connect_tls(pki: &Pki, addr: SocketAddr, name: &str) -> KeptConnection {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(tern_probe::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .expect("handshake");
    let peer_leaf = tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    KeptConnection { sender, peer_leaf }
}

impl KeptConnection {
    async fn get(&mut self, host: &str) -> (StatusCode, String) {
        let req = Request::get("/")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .expect("the kept connection was dropped");
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_dropping_a_kept_connection_and_a_bad_one_is_refused() {
    let pki = pki();
    let (cert, key) = pki.issue(&["a.tern.test"], "a");
    let first = leaf_der(&cert);
    let a = Backend::start("a", Mode::Ok).await;
    let services = format!(
        "{}\n[edge.tls]\nlisten = \"127.0.0.1:0\"\nreload_check = \"100ms\"\n\
         [[edge.tls.certificate]]\nhosts = [\"a.tern.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        service("a", "a.tern.test", &a, ""),
        p(&cert),
        p(&key)
    );
    let edge = start_tls_edge(&edge_toml("", &services)).await;
    let mut kept = connect_tls(&pki, edge.https, "a.tern.test").await;
    assert_eq!(kept.peer_leaf, first);
    assert_eq!(
        kept.get("a.tern.test").await,
        (StatusCode::OK, "a".to_string())
    );

    // New files in place: the edge loads them by itself.
    pki.issue(&["a.tern.test"], "a");
    let second = leaf_der(&cert);
    assert_ne!(first, second);
    edge.edge
        .wait_status("the new certificate loaded", |s| s["tls"]["reloads"] == 2)
        .await;
    let fresh = connect_tls(&pki, edge.https, "a.tern.test").await;
    assert_eq!(
        fresh.peer_leaf, second,
        "a new handshake got the old certificate"
    );
    // The connection made before the reload is still served.
    assert_eq!(
        kept.get("a.tern.test").await,
        (StatusCode::OK, "a".to_string())
    );

    // An expired replacement is refused; the loaded one stays in use.
    pki.issue_with(&["a.tern.test"], "a", Validity::Expired);
    let s = edge
        .edge
        .wait_status("the expired certificate refused", |s| {
            s["tls"]["reload_failures"] == 1
        })
        .await;
    assert!(
        s["tls"]["last_error"].as_str().unwrap().contains("expired"),
        "{s:#}"
    );
    let after = connect_tls(&pki, edge.https, "a.tern.test").await;
    assert_eq!(
        after.peer_leaf, second,
        "the refused certificate was served"
    );
    assert_eq!(
        kept.get("a.tern.test").await,
        (StatusCode::OK, "a".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https_where_the_service_asks() {
    let pki = pki();
    let (cert, key) = pki.issue(&["a.tern.test", "b.tern.test"], "ab");
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let services = format!(
        "{}\n{}\n[edge.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
        service("a", "a.tern.test", &a, "https_redirect = true"),
        service("b", "b.tern.test", &b, ""),
        p(&cert),
        p(&key)
    );
    let edge = start_tls_edge(&edge_toml("", &services)).await;
    let resp = raw(
        edge.edge.addr,
        b"POST /pay?x=1 HTTP/1.1\r\nHost: a.tern.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 308"), "{resp}");
    let location = format!(
        "location: https://a.tern.test:{}/pay?x=1",
        edge.https.port()
    );
    assert!(resp.to_ascii_lowercase().contains(&location), "{resp}");
    assert_eq!(a.hits(), 0);
    // The other service still answers plain HTTP.
    let resp = raw(
        edge.edge.addr,
        b"GET / HTTP/1.1\r\nHost: b.tern.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // And the redirect's target serves it.
    let c = curl_name(&pki, &edge, "a.tern.test", &[]).await;
    assert_eq!(c.stdout, "a\n2", "{}", c.stderr);
}

/// A backend over TLS that accepts only clients with a certificate from
/// the test CA; answers 200 "tls-backend" (and its health check).
async fn mutual_tls_backend(pki: &Pki) -> SocketAddr {
    let (cert, key) = pki.issue(&["backend.tern.test"], "backend");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        tern_probe::crypto_provider(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(tern_probe::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        "tls-backend",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_backend_with_a_private_ca_and_a_client_certificate_is_served_and_probed() {
    let pki = pki();
    let backend = mutual_tls_backend(&pki).await;
    let (client_cert, client_key) = pki.issue(&["edge.tern.test"], "edge-client");
    let services = format!(
        "[service.api]\npolicy = \"failover\"\n\
         [[service.api.backend]]\nregion = \"a\"\nurl = \"https://{backend}\"\n\
         health = {{ path = \"/health\", interval = \"200ms\", timeout = \"150ms\", fall = 2, rise = 2 }}\n\
         tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\", server_name = \"backend.tern.test\" }}\n",
        p(&pki.ca_file),
        p(&client_cert),
        p(&client_key)
    );
    let edge = RunningEdge::start(&edge_toml("", &services)).await;
    let s = edge
        .wait_status("a probe over TLS passed", |s| {
            s["services"][0]["backends"][0]["rtt_ms"].is_number()
        })
        .await;
    assert_eq!(
        s["services"][0]["backends"][0]["url"],
        format!("https://{backend}")
    );
    let (status, body) = get(&edge.url("/")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "tls-backend"));

    // Without the client certificate the backend refuses the edge.
    let services = format!(
        "[service.api]\npolicy = \"failover\"\n\
         [[service.api.backend]]\nregion = \"a\"\nurl = \"https://{backend}\"\n\
         health = {{ path = \"/health\", interval = \"200ms\", timeout = \"150ms\", fall = 2, rise = 2 }}\n\
         tls = {{ ca = \"{}\", server_name = \"backend.tern.test\" }}\n",
        p(&pki.ca_file)
    );
    let edge = RunningEdge::start(&edge_toml("", &services)).await;
    assert_eq!(get(&edge.url("/")).await.0, StatusCode::BAD_GATEWAY);
}

/// A CA file that is not there stops the edge at bind: nothing half-starts.
#[tokio::test]
async fn a_missing_backend_ca_file_stops_the_edge_at_bind() {
    let services = "[service.api]\npolicy = \"failover\"\n\
         [[service.api.backend]]\nregion = \"a\"\nurl = \"https://127.0.0.1:1\"\n\
         tls = { ca = \"/nonexistent/ca.pem\" }\n";
    let config = tern_core::config::Config::from_toml("t.toml", &edge_toml("", services)).unwrap();
    let err = Edge::bind(&config)
        .await
        .err()
        .expect("bound with a missing CA file");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

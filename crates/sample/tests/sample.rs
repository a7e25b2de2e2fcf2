//! Tests of the sample service over real HTTP/1.1 on loopback: health verdicts from
//! dependencies, forced health, items, idempotent payments, routing errors, argument parsing
//! and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tern_sample::{
    bind, Dependency, DependencyCheck, SampleArgs, SampleConfig, MAX_BODY, SHUTDOWN_GRACE,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Service {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(region: &str, dependencies: Vec<Dependency>) -> Service {
    let cfg = SampleConfig {
        region: region.to_owned(),
        dependencies,
    };
    let server = bind("127.0.0.1:0".parse().unwrap(), cfg).await.unwrap();
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.serve(shutdown.clone()));
    Service {
        addr,
        shutdown,
        task,
    }
}

fn dep(name: &str, check: DependencyCheck, critical: bool) -> Dependency {
    Dependency {
        name: name.to_owned(),
        check,
        critical,
    }
}

/// An address nothing listens on: a socket bound without listening, so
/// that connections are refused; the port stays taken while it is held.
fn closed_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request timed out")
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("body {bytes:?} is not JSON: {e}"));
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    call(addr, Method::GET, path, &[], Bytes::new()).await
}

fn dependency<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no dependency {name} in {health}"))
}

#[tokio::test]
async fn health_is_ok_when_every_dependency_passes() {
    let db = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let marker = tempfile::NamedTempFile::new().unwrap();
    let svc = start(
        "us-east",
        vec![
            dep("db", DependencyCheck::Tcp(db.local_addr().unwrap()), true),
            dep("marker", DependencyCheck::File(marker.path().into()), true),
            dep("cache", DependencyCheck::Always(true), false),
        ],
    )
    .await;

    let answer = get(svc.addr, "/health").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.headers["x-served-by"], "us-east");
    assert_eq!(answer.body["status"], "ok");
    assert_eq!(answer.body["region"], "us-east");
    for name in ["db", "marker", "cache"] {
        let d = dependency(&answer.body, name);
        assert_eq!(d["ok"], true, "{d}");
        assert!(d["elapsed_ms"].is_u64() && d["detail"].is_string(), "{d}");
    }
    assert_eq!(dependency(&answer.body, "cache")["critical"], false);
}

#[tokio::test]
async fn health_fails_when_a_critical_dependency_fails() {
    let (_held, closed) = closed_port();
    let svc = start(
        "us-east",
        vec![
            dep("db", DependencyCheck::Tcp(closed), true),
            dep("cache", DependencyCheck::Always(true), false),
        ],
    )
    .await;

    let answer = get(svc.addr, "/health").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body["status"], "failing");
    assert_eq!(dependency(&answer.body, "db")["ok"], false);
    assert_eq!(dependency(&answer.body, "cache")["ok"], true);
}

#[tokio::test]
async fn health_is_degraded_when_only_a_non_critical_dependency_fails() {
    let missing = PathBuf::from("/nonexistent/tern/sample/marker");
    let svc = start(
        "eu-west",
        vec![
            dep("db", DependencyCheck::Always(true), true),
            dep("reports", DependencyCheck::File(missing), false),
        ],
    )
    .await;

    let answer = get(svc.addr, "/health").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["status"], "degraded");
    assert_eq!(dependency(&answer.body, "reports")["ok"], false);
}

#[tokio::test]
async fn admin_health_forces_the_verdict_down_and_back() {
    let svc = start("us-east", vec![]).await;
    let force = |healthy: bool| {
        call(
            svc.addr,
            Method::POST,
            "/admin/health",
            &[("content-type", "application/json")],
            json!({ "healthy": healthy }).to_string(),
        )
    };

    assert_eq!(force(false).await.status, StatusCode::OK);
    let down = get(svc.addr, "/health").await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.body["status"], "failing");

    assert_eq!(force(true).await.status, StatusCode::OK);
    let up = get(svc.addr, "/health").await;
    assert_eq!(up.status, StatusCode::OK);
    assert_eq!(up.body["status"], "ok");

    let bad = call(svc.addr, Method::POST, "/admin/health", &[], "healthy").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body["error"].is_string());
}

#[tokio::test]
async fn admin_errors_fail_that_share_of_item_requests_and_leave_health_alone() {
    let svc = start("us-east", vec![]).await;
    let inject = |share: f64| {
        call(
            svc.addr,
            Method::POST,
            "/admin/errors",
            &[("content-type", "application/json")],
            json!({ "share": share }).to_string(),
        )
    };
    assert_eq!(inject(1.0).await.status, StatusCode::OK);
    let failed = get(svc.addr, "/items/a").await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.body["error"], "injected error");
    assert_eq!(get(svc.addr, "/health").await.status, StatusCode::OK);
    let mut failures = 0;
    assert_eq!(inject(0.2).await.status, StatusCode::OK);
    for _ in 0..500 {
        failures += usize::from(get(svc.addr, "/items/a").await.status.is_server_error());
    }
    assert!(
        (50..150).contains(&failures),
        "{failures} of 500 failed at 20%"
    );
    assert_eq!(inject(0.0).await.status, StatusCode::OK);
    assert_eq!(get(svc.addr, "/items/a").await.status, StatusCode::OK);
    let bad = call(
        svc.addr,
        Method::POST,
        "/admin/errors",
        &[],
        "{\"share\": 2}",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn idempotency_key_replays_the_first_payment() {
    let svc = start("us-east", vec![]).await;
    let pay = |key: Option<&'static str>| {
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        async move {
            call(
                svc.addr,
                Method::POST,
                "/payments",
                &headers,
                r#"{"amount": 42}"#,
            )
            .await
        }
    };

    let first = pay(Some("order-1")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.headers.get("idempotent-replay").is_none());
    let id = first.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("us-east-"), "{id}");
    assert_eq!(first.body["key"], "order-1");

    let replay = pay(Some("order-1")).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.headers["idempotent-replay"], "true");
    assert_eq!(replay.body, first.body);

    let other_key = pay(Some("order-2")).await;
    let no_key_a = pay(None).await;
    let no_key_b = pay(None).await;
    let ids = [&first, &other_key, &no_key_a, &no_key_b].map(|a| a.body["id"].clone());
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            assert_ne!(a, b, "payment ids must be distinct: {ids:?}");
        }
    }
    assert!(no_key_b.headers.get("idempotent-replay").is_none());

    let stored = get(svc.addr, &format!("/payments/{id}")).await;
    assert_eq!(stored.status, StatusCode::OK);
    assert_eq!(stored.body["id"], id.as_str());
    assert_eq!(stored.body["payload"]["amount"], 42);
    assert_eq!(
        get(svc.addr, "/payments/us-east-999").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn payment_body_must_be_json() {
    let svc = start("us-east", vec![]).await;
    let answer = call(svc.addr, Method::POST, "/payments", &[], "{not json").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.body["error"].is_string());
}

#[tokio::test]
async fn put_then_get_item() {
    let svc = start("ap-south", vec![]).await;
    let missing = get(svc.addr, "/items/k1").await;
    assert_eq!(missing.status, StatusCode::OK);
    assert_eq!(missing.body["value"], Value::Null);

    let put = call(svc.addr, Method::PUT, "/items/k1", &[], "v1").await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(
        put.body,
        json!({"id": "k1", "stored": true, "region": "ap-south"})
    );

    let got = get(svc.addr, "/items/k1").await;
    assert_eq!(
        got.body,
        json!({"id": "k1", "value": "v1", "region": "ap-south"})
    );
    assert_eq!(got.headers["x-served-by"], "ap-south");
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let svc = start("us-east", vec![]).await;
    let big = vec![b'a'; MAX_BODY + 1];
    let answer = call(svc.addr, Method::PUT, "/items/big", &[], big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(get(svc.addr, "/items/big").await.body["value"], Value::Null);

    let fits = vec![b'a'; MAX_BODY];
    let answer = call(svc.addr, Method::PUT, "/items/big", &[], fits).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_get_json_errors() {
    let svc = start("us-east", vec![]).await;
    for path in ["/nope", "/items", "/items/", "/items/a/b", "/payments/"] {
        let answer = get(svc.addr, path).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert!(answer.body["error"].is_string(), "{path}: {}", answer.body);
        assert_eq!(answer.headers["x-served-by"], "us-east");
    }
    let answer = call(svc.addr, Method::DELETE, "/items/a", &[], Bytes::new()).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);

    let root = get(svc.addr, "/").await;
    assert_eq!(root.status, StatusCode::OK);
    assert_eq!(root.body, json!({"service": "sample", "region": "us-east"}));
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_without_waiting_out_the_grace() {
    let svc = start("us-east", vec![]).await;
    // The client pools its connection, leaving an idle keep-alive connection open.
    get(svc.addr, "/").await;
    svc.shutdown.cancel();
    let served = tokio::time::timeout(SHUTDOWN_GRACE / 2, svc.task)
        .await
        .expect("serve did not return promptly after shutdown");
    served.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(svc.addr).await.is_err());
}

#[test]
fn dependency_parse_accepts_the_documented_forms() {
    let cases = [
        (
            "db=tcp:127.0.0.1:5432,critical",
            dep(
                "db",
                DependencyCheck::Tcp("127.0.0.1:5432".parse().unwrap()),
                true,
            ),
        ),
        (
            "db=tcp:127.0.1.1:5432",
            dep(
                "db",
                DependencyCheck::Tcp("127.0.1.1:5432".parse().unwrap()),
                false,
            ),
        ),
        (
            "flag=file:/tmp/ready",
            dep("flag", DependencyCheck::File("/tmp/ready".into()), false),
        ),
        (
            "flag=file:/tmp/ready,critical",
            dep("flag", DependencyCheck::File("/tmp/ready".into()), true),
        ),
        (
            "x=always:ok",
            dep("x", DependencyCheck::Always(true), false),
        ),
        (
            "x=always:fail,critical",
            dep("x", DependencyCheck::Always(false), true),
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(Dependency::parse(input), Ok(expected), "{input}");
    }
}

#[test]
fn dependency_parse_rejects_garbage() {
    for input in [
        "",
        "db",
        "=always:ok",
        "db=",
        "db=tcp",
        "db=tcp:localhost",
        "db=tcp:127.0.0.1",
        "db=udp:127.0.0.1:53",
        "db=file:",
        "db=always:maybe",
        "db=always:ok,important",
        "db=always:ok,critical,critical",
    ] {
        assert!(
            Dependency::parse(input).is_err(),
            "{input:?} should be rejected"
        );
    }
}

#[test]
fn sample_args_parse() {
    let args = SampleArgs::parse([
        "--listen",
        "127.0.1.1:8080",
        "--region=us-east",
        "--dep",
        "db=always:ok,critical",
    ])
    .unwrap();
    assert_eq!(args.listen, "127.0.1.1:8080".parse().unwrap());
    assert_eq!(args.region, "us-east");
    assert_eq!(
        args.dependencies,
        vec![dep("db", DependencyCheck::Always(true), true)]
    );

    assert!(SampleArgs::parse(["--region", "us-east"]).is_err());
    assert!(SampleArgs::parse(["--listen", "127.0.0.1:0"]).is_err());
    assert!(SampleArgs::parse(["--listen", "127.0.0.1:0", "--region"]).is_err());
    assert!(SampleArgs::parse(["--listen", "nowhere", "--region", "r"]).is_err());
    assert!(SampleArgs::parse(["--listen", "127.0.0.1:0", "--region", "r", "--bogus"]).is_err());
}

#[test]
fn sample_args_parse_the_database_addresses() {
    let base = ["--listen", "127.0.1.10:80", "--region", "us-west"];
    let args = SampleArgs::parse(base.iter().copied().chain([
        "--db-writer",
        "127.0.2.20:5432",
        "--db-local=127.0.2.21:5432",
    ]))
    .unwrap();
    let db = args.payments_db().unwrap();
    assert_eq!(db.writer, "127.0.2.20:5432".parse().unwrap());
    assert_eq!(db.local, "127.0.2.21:5432".parse().unwrap());

    // Reads go to the writer unless told otherwise; no writer, no database.
    let writer_only = SampleArgs::parse(
        base.iter()
            .copied()
            .chain(["--db-writer", "127.0.2.20:5432"]),
    )
    .unwrap();
    assert_eq!(writer_only.payments_db().unwrap().local, db.writer);
    assert_eq!(SampleArgs::parse(base).unwrap().payments_db(), None);

    for bad in [
        &["--db-local", "127.0.2.21:5432"][..],
        &["--db-writer", "primary:5432"],
        &["--db-writer"],
    ] {
        let err = SampleArgs::parse(base.iter().chain(bad).copied()).unwrap_err();
        assert!(err.contains("--db-"), "{bad:?}: {err}");
    }
}

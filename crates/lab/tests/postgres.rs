//! The lab's PostgreSQL servers and the sample service's payments on them, against real
//! PostgreSQL (found by `pg_bin_dir`: Debian's `postgresql-15`, or `TERN_PG_BIN`): a primary
//! and a streaming standby, idempotent payments written to one and read from the other,
//! synchronous commits that wait for the standby, crashes that leave nothing behind, and a
//! service that reconnects after its database comes back.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tern_lab::postgres::{self, pg_bin_dir, PgServer};
use tern_sample::{bind_with_database, PaymentsDb, SampleConfig, DB_DEADLINE};
use tokio_util::sync::CancellationToken;

fn bin() -> PathBuf {
    pg_bin_dir().expect(
        "these tests need the PostgreSQL server binaries: install Debian's postgresql-15 \
         (initdb, postgres, pg_basebackup under /usr/lib/postgresql/15/bin) or set TERN_PG_BIN",
    )
}

/// A loopback address of this test's own (127.1xx.y.n), on a port free when asked.
fn loopback() -> SocketAddr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let pid = std::process::id();
    let ip = Ipv4Addr::new(
        127,
        100 + (pid % 100) as u8,
        ((pid / 100) % 250) as u8,
        NEXT.fetch_add(1, Ordering::SeqCst),
    );
    let port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    SocketAddr::new(ip.into(), port)
}

async fn primary(root: &Path, sync_standby: Option<&str>) -> PgServer {
    let mut p = PgServer::init_primary(
        &bin(),
        &root.join("us-east"),
        "us-east",
        loopback(),
        sync_standby,
    )
    .await
    .unwrap();
    p.start().await.unwrap();
    postgres::create_schema(&p.conninfo()).await.unwrap();
    p
}

async fn standby(root: &Path, primary: &PgServer) -> PgServer {
    let mut s = PgServer::standby_from(
        &bin(),
        &root.join("us-west"),
        "us-west",
        loopback(),
        primary.listen,
        "us-west",
    )
    .await
    .unwrap();
    s.start().await.unwrap();
    s
}

/// Starts the sample service of `region` with payments in PostgreSQL.
async fn service(region: &str, db: PaymentsDb) -> (SocketAddr, CancellationToken) {
    let cfg = SampleConfig {
        region: region.into(),
        dependencies: vec![],
    };
    let server = bind_with_database("127.0.0.1:0".parse().unwrap(), cfg, Some(db))
        .await
        .unwrap();
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.serve(shutdown.clone()));
    (addr, shutdown)
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
    key: Option<&str>,
    body: &str,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("the service did not answer within 10 s")
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{bytes:?}: {e}"));
    Answer {
        status,
        headers,
        body,
    }
}

async fn pay(addr: SocketAddr, key: &str, amount: i64) -> Answer {
    let body = format!("{{\"amount\": {amount}}}");
    call(addr, Method::POST, "/payments", Some(key), &body).await
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `(pid, state, parent)` of every process.
fn processes() -> Vec<(u32, String, u32)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((pid, f.first()?.to_string(), f.get(1)?.parse().ok()?))
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    processes()
        .iter()
        .any(|(p, state, _)| *p == pid && state != "Z")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_are_written_to_the_primary_once_per_key_and_read_from_the_standby() {
    let root = tempfile::tempdir().unwrap();
    let primary = primary(root.path(), Some("us-west")).await;
    let standby = standby(root.path(), &primary).await;
    assert_eq!(
        primary
            .wait_for_standby("us-west", Duration::from_secs(30))
            .await
            .unwrap(),
        "sync"
    );
    let (svc, _stop) = service(
        "us-west",
        PaymentsDb {
            writer: primary.listen,
            local: standby.listen,
        },
    )
    .await;

    let before = unix_ms();
    let first = pay(svc, "order-1", 42).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert!(first.headers.get("idempotent-replay").is_none());
    let id = first.body["id"].as_i64().expect("a numeric id");
    assert_eq!(first.body["key"], "order-1");
    assert_eq!(first.body["amount"], 42);
    assert_eq!(first.body["node"], "us-east", "written by the primary");
    assert_eq!(first.body["region"], "us-west", "answered by the service");
    let written = first.body["written_at_ms"].as_i64().unwrap();
    assert!(
        (before - 1_000..=unix_ms() + 1_000).contains(&written),
        "written_at_ms {written}"
    );

    let replay = pay(svc, "order-1", 42).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    assert_eq!(replay.headers["idempotent-replay"], "true");
    assert_eq!(replay.body, first.body, "the replay names the same payment");

    let other = pay(svc, "order-2", 7).await;
    assert_eq!(other.status, StatusCode::CREATED);
    assert_ne!(other.body["id"], first.body["id"]);

    // Synchronous replication waits for the standby's flush, not its replay: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let read = loop {
        let read = call(svc, Method::GET, &format!("/payments/{id}"), None, "").await;
        if read.status == StatusCode::OK || Instant::now() > deadline {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body, first.body);

    for missing in ["/payments/999999999", "/payments/not-a-number"] {
        let answer = call(svc, Method::GET, missing, None, "").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{missing}");
        assert!(answer.body["error"].is_string());
    }
    let no_key = call(svc, Method::POST, "/payments", None, r#"{"amount": 1}"#).await;
    assert_eq!(no_key.status, StatusCode::BAD_REQUEST);
    let zero = pay(svc, "order-3", 0).await;
    assert_eq!(zero.status, StatusCode::CREATED);
    let bad = call(
        svc,
        Method::POST,
        "/payments",
        Some("order-4"),
        "{\"amount\": \"x\"}",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let rows = postgres::read_payments(&primary.conninfo()).await.unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["order-1", "order-2", "order-3"], "one row per key");
    assert_eq!((rows[0].id, rows[0].written_at_ms), (id, written));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_commit_waits_for_the_standby_and_the_service_answers_503_meanwhile() {
    let root = tempfile::tempdir().unwrap();
    let primary = primary(root.path(), Some("us-west")).await;
    let mut standby = standby(root.path(), &primary).await;
    primary
        .wait_for_standby("us-west", Duration::from_secs(30))
        .await
        .unwrap();
    let (svc, _stop) = service(
        "us-east",
        PaymentsDb {
            writer: primary.listen,
            local: primary.listen,
        },
    )
    .await;
    assert_eq!(pay(svc, "before", 1).await.status, StatusCode::CREATED);

    standby.kill().await;
    let client = postgres::connect(&primary.conninfo(), Duration::from_secs(5))
        .await
        .unwrap();
    let insert = tokio::spawn(async move {
        client
            .execute(
                "INSERT INTO payments (key, amount) VALUES ('direct', 1)",
                &[],
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        !insert.is_finished(),
        "a commit returned while its synchronous standby was down"
    );

    let started = Instant::now();
    let answer = pay(svc, "during", 2).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    assert!(answer.body["error"].is_string());
    assert!(
        started.elapsed() < DB_DEADLINE + Duration::from_secs(1),
        "answered after {:?}",
        started.elapsed()
    );

    standby.start().await.unwrap();
    let inserted = tokio::time::timeout(Duration::from_secs(30), insert)
        .await
        .expect("the commit did not return once the standby was back")
        .unwrap()
        .unwrap();
    assert_eq!(inserted, 1);

    // The payment the service gave up on was committed once the standby confirmed it; a
    // retry with its key finds it rather than paying twice.
    let retry = pay(svc, "during", 2).await;
    assert!(
        [StatusCode::OK, StatusCode::CREATED].contains(&retry.status),
        "{}",
        retry.body
    );
    let rows = postgres::read_payments(&primary.conninfo()).await.unwrap();
    assert_eq!(rows.iter().filter(|r| r.key == "during").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_leaves_no_process_and_the_service_reconnects_after_its_restart() {
    let root = tempfile::tempdir().unwrap();
    let mut primary = primary(root.path(), None).await;
    let (svc, _stop) = service(
        "us-east",
        PaymentsDb {
            writer: primary.listen,
            local: primary.listen,
        },
    )
    .await;
    // Fill the pool: these connections die with the server.
    for i in 0..4 {
        assert_eq!(
            pay(svc, &format!("a{i}"), 1).await.status,
            StatusCode::CREATED
        );
    }

    let postmaster = primary.pid().unwrap();
    let mut server: Vec<u32> = processes()
        .into_iter()
        .filter(|(_, _, parent)| *parent == postmaster)
        .map(|(pid, _, _)| pid)
        .collect();
    assert!(server.len() >= 4, "backends and helpers: {server:?}");
    server.push(postmaster);
    primary.kill().await;
    let survivors: Vec<u32> = server.iter().copied().filter(|p| alive(*p)).collect();
    assert!(
        survivors.is_empty(),
        "the killed server's {survivors:?} live on"
    );
    assert!(!primary.is_running());

    let down = pay(svc, "b", 1).await;
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        down.body
    );

    // Crash recovery on the same address: nothing kept the port or the shared memory.
    primary.start().await.unwrap();
    let up = pay(svc, "c", 1).await;
    assert_eq!(up.status, StatusCode::CREATED, "{}", up.body);
    let rows = postgres::read_payments(&primary.conninfo()).await.unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["a0", "a1", "a2", "a3", "c"]);

    let postmaster = primary.pid().unwrap();
    primary.stop().await.unwrap();
    assert!(!alive(postmaster));
    assert!(!primary.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_made_from_a_primary_takes_its_own_name_and_address() {
    let root = tempfile::tempdir().unwrap();
    let primary = primary(root.path(), None).await;
    let standby = standby(root.path(), &primary).await;
    assert_eq!(
        primary
            .wait_for_standby("us-west", Duration::from_secs(30))
            .await
            .unwrap(),
        "async"
    );
    let client = postgres::connect(&standby.conninfo(), Duration::from_secs(5))
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('cluster_name'), \
             current_setting('synchronous_standby_names'), inet_server_addr()::text",
            &[],
        )
        .await
        .unwrap();
    let (recovering, name, sync, addr): (bool, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert!(recovering);
    assert_eq!(name, "us-west");
    assert_eq!(
        sync, "",
        "a promoted standby must not wait for a standby of its own"
    );
    assert_eq!(addr, format!("{}/32", standby.listen.ip()));
}

//! DESIGN.md invariant 6: a request is retried on another region only when it
//! is idempotent by method or carries an `Idempotency-Key`.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

async fn two_backends(first: Mode) -> (Backend, Backend, RunningEdge) {
    let a = Backend::start("a", first).await;
    let b = Backend::start("b", Mode::Ok).await;
    let service = format!(
        "[service.api]\npolicy = \"failover\"\n{}{}",
        backend_toml("api", "a", a.addr, ""),
        backend_toml("api", "b", b.addr, "")
    );
    let edge = RunningEdge::start(&edge_toml("", &service)).await;
    (a, b, edge)
}

fn request(method: &str, edge: &RunningEdge, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut r = Request::builder().method(method).uri(edge.url("/pay"));
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    r.body(Full::new(Bytes::from_static(b"{\"amount\": 5}")))
        .unwrap()
}

#[tokio::test]
async fn get_is_retried_on_another_region_when_the_backend_dies_mid_request() {
    let (a, b, edge) = two_backends(Mode::Drop).await;
    let (status, headers, body) = send(request("GET", &edge, None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-served-by"], "b");
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn put_and_delete_are_retried() {
    for method in ["PUT", "DELETE"] {
        let (_a, b, edge) = two_backends(Mode::Drop).await;
        let (status, _, _) = send(request(method, &edge, None)).await;
        assert_eq!(status, StatusCode::OK, "{method}");
        assert_eq!(b.hits(), 1, "{method}");
    }
}

#[tokio::test]
async fn post_without_key_is_never_retried() {
    let (a, b, edge) = two_backends(Mode::Drop).await;
    let (status, _, body) = send(request("POST", &edge, None)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("upstream failed"), "{body}");
    assert_eq!(a.hits(), 1);
    assert_eq!(
        b.hits(),
        0,
        "a POST without Idempotency-Key reached a second region"
    );
}

#[tokio::test]
async fn post_with_idempotency_key_is_retried_with_its_body() {
    let (a, b, edge) = two_backends(Mode::Drop).await;
    let (status, headers, _) = send(request("POST", &edge, Some("k-1"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-served-by"], "b");
    assert_eq!(a.hits(), 1);
    assert_eq!(b.hits(), 1);
    assert_eq!(b.body_bytes.load(std::sync::atomic::Ordering::SeqCst), 13);
    assert!(b
        .last_headers
        .lock()
        .unwrap()
        .iter()
        .any(|h| h == "idempotency-key: k-1"));
}

#[tokio::test]
async fn a_hanging_backend_times_out_and_get_moves_on() {
    let (_a, b, edge) = two_backends(Mode::Hang).await;
    let started = std::time::Instant::now();
    let (status, _, _) = send(request("GET", &edge, None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.hits(), 1);
    // try_timeout is 300 ms.
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn a_503_is_retried_for_get_but_passed_through_for_post() {
    let (_a, b, edge) = two_backends(Mode::Status(503)).await;
    let (status, _, _) = send(request("GET", &edge, None)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = send(request("POST", &edge, None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "a", "the backend's own answer is passed through");
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn an_empty_retry_budget_stops_retries() {
    let a = Backend::start("a", Mode::Drop).await;
    let b = Backend::start("b", Mode::Ok).await;
    let service = format!(
        "[service.api]\npolicy = \"failover\"\n{}{}",
        backend_toml("api", "a", a.addr, ""),
        backend_toml("api", "b", b.addr, "")
    );
    let edge = RunningEdge::start(&edge_toml(
        "retry_budget = 0.0\nretry_min_per_second = 0",
        &service,
    ))
    .await;
    let (status, _, _) = send(request("GET", &edge, None)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(b.hits(), 0);
    let (_, metrics) = get(&format!("http://{}/metrics", edge.admin)).await;
    assert!(
        metrics.contains("tern_edge_retries_denied_total{service=\"api\",reason=\"budget\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bodies_over_the_retry_limit_stream_whole_and_are_not_retried() {
    let a = Backend::start("a", Mode::Ok).await;
    let service = format!(
        "[service.api]\npolicy = \"failover\"\n{}",
        backend_toml("api", "a", a.addr, "")
    );
    let edge = RunningEdge::start(&edge_toml("retry_body_limit = \"1KiB\"", &service)).await;
    let big = vec![b'x'; 300 * 1024];
    let req = Request::put(edge.url("/blob"))
        .body(Full::new(Bytes::from(big)))
        .unwrap();
    let (status, _, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        a.body_bytes.load(std::sync::atomic::Ordering::SeqCst),
        300 * 1024
    );

    // The same body to a dying backend is not retried: it could not be replayed.
    let b = Backend::start("b", Mode::Ok).await;
    a.set_mode(Mode::Drop);
    let service = format!(
        "[service.api]\npolicy = \"failover\"\n{}{}",
        backend_toml("api", "a", a.addr, ""),
        backend_toml("api", "b", b.addr, "")
    );
    let edge = RunningEdge::start(&edge_toml("retry_body_limit = \"1KiB\"", &service)).await;
    let req = Request::put(edge.url("/blob"))
        .body(Full::new(Bytes::from(vec![b'y'; 4096])))
        .unwrap();
    let (status, _, _) = send(req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(b.hits(), 0);
}

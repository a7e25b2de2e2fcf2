//! The edge as a proxy: health-driven failover, outlier ejection, policies,
//! protocol correctness, bad input and graceful shutdown, against real
//! backends on loopback.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tern_edge::Phase;

fn failover(a: &Backend, b: &Backend, extra_service: &str) -> String {
    format!(
        "[service.api]\npolicy = \"failover\"\n{extra_service}\n{}{}",
        backend_toml("api", "a", a.addr, ""),
        backend_toml("api", "b", b.addr, "")
    )
}

#[tokio::test]
async fn failover_follows_active_health_and_returns_after_rise() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let edge = RunningEdge::start(&edge_toml("", &failover(&a, &b, ""))).await;
    assert_eq!(get(&edge.url("/")).await.1, "a");
    a.set_healthy(false);
    edge.wait_status("a down", |s| s["services"][0]["serving_regions"][0] == "b")
        .await;
    assert_eq!(get(&edge.url("/")).await.1, "b");
    a.set_healthy(true);
    let s = edge
        .wait_status("a back", |s| s["services"][0]["serving_regions"][0] == "a")
        .await;
    assert_eq!(s["services"][0]["backends"][0]["health"], "up");
    assert_eq!(get(&edge.url("/")).await.1, "a");
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_backend_and_lets_it_return() {
    let a = Backend::start("a", Mode::Status(500)).await;
    let b = Backend::start("b", Mode::Ok).await;
    let outlier =
        "outlier = { consecutive_failures = 3, base_ejection = \"400ms\", max_ejection = \"2s\" }";
    let edge = RunningEdge::start(&edge_toml("", &failover(&a, &b, outlier))).await;
    // 500 is not retryable: the first three reach the client, then a is ejected.
    for _ in 0..3 {
        assert_eq!(
            get(&edge.url("/")).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    let s = edge.status().await;
    assert_eq!(s["services"][0]["backends"][0]["ejected"], true, "{s:#}");
    assert_eq!(s["services"][0]["backends"][0]["ejections"], 1);
    assert_eq!(get(&edge.url("/")).await.1, "b");
    let (_, metrics) = get(&format!("http://{}/metrics", edge.admin)).await;
    assert!(
        metrics.contains("tern_edge_ejections_total{service=\"api\",region=\"a\"} 1"),
        "{metrics}"
    );
    // Health probes still pass, so once the ejection ends, a serves again.
    a.set_mode(Mode::Ok);
    edge.wait_status("a's ejection ended", |s| {
        s["services"][0]["backends"][0]["ejected"] == false
    })
    .await;
    assert_eq!(get(&edge.url("/")).await.1, "a");
}

#[tokio::test]
async fn outlier_detection_never_ejects_more_than_the_share() {
    let a = Backend::start("a", Mode::Status(500)).await;
    let b = Backend::start("b", Mode::Status(500)).await;
    let outlier =
        "outlier = { consecutive_failures = 2, base_ejection = \"10s\", max_ejected_share = 0.5 }";
    let service = format!(
        "[service.api]\npolicy = \"weighted\"\n{outlier}\n{}{}",
        backend_toml("api", "a", a.addr, ""),
        backend_toml("api", "b", b.addr, "")
    );
    let edge = RunningEdge::start(&edge_toml("", &service)).await;
    for _ in 0..20 {
        get(&edge.url("/")).await;
    }
    let s = edge.status().await;
    let ejected = s["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["ejected"] == true)
        .count();
    assert_eq!(ejected, 1, "{s:#}");
}

#[tokio::test]
async fn weighted_split_follows_the_weights() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let service = format!(
        "[service.api]\npolicy = \"weighted\"\n{}{}",
        backend_toml("api", "a", a.addr, "weight = 1"),
        backend_toml("api", "b", b.addr, "weight = 3")
    );
    let edge = RunningEdge::start(&edge_toml("", &service)).await;
    let n = 2000;
    for _ in 0..n {
        get(&edge.url("/")).await;
    }
    let share_b = b.hits() as f64 / n as f64;
    assert_eq!(a.hits() + b.hits(), n);
    assert!(
        (share_b - 0.75).abs() < 0.04,
        "b got {share_b:.3} of requests, expected 0.75"
    );
}

#[tokio::test]
async fn weight_zero_serves_only_when_nothing_else_can() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let service = format!(
        "[service.api]\npolicy = \"weighted\"\n{}{}",
        backend_toml("api", "a", a.addr, "weight = 0"),
        backend_toml("api", "b", b.addr, "weight = 5")
    );
    let edge = RunningEdge::start(&edge_toml("", &service)).await;
    for _ in 0..50 {
        assert_eq!(get(&edge.url("/")).await.1, "b");
    }
    b.set_healthy(false);
    edge.wait_status("b down", |s| {
        s["services"][0]["backends"][1]["health"] == "down"
    })
    .await;
    assert_eq!(get(&edge.url("/")).await.1, "a");
}

#[tokio::test]
async fn latency_policy_prefers_the_nearest_and_the_own_region_on_ties() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    // Both backends are equally near: the edge's own region (a) wins the tie,
    // even though b is listed first.
    let service = format!(
        "[service.api]\npolicy = \"latency\"\n{}{}",
        backend_toml("api", "b", b.addr, ""),
        backend_toml("api", "a", a.addr, "")
    );
    let edge = RunningEdge::start(&edge_toml("", &service)).await;
    // Loopback round trips are a tie (within 2 ms); on a loaded machine one
    // probe may be slow, so wait until the smoothed values agree well inside
    // the tie window.
    edge.wait_status("round trips measured and tied", |s| {
        let rtts: Vec<f64> = s["services"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["rtt_ms"].as_f64())
            .collect();
        rtts.len() == 2 && (rtts[0] - rtts[1]).abs() < 0.5
    })
    .await;
    assert_eq!(get(&edge.url("/")).await.1, "a");
}

#[tokio::test]
async fn forwarding_headers_are_added_and_hop_by_hop_removed() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let edge = RunningEdge::start(&edge_toml("", &failover(&a, &b, ""))).await;
    let req = Request::get(edge.url("/h"))
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-keep", "yes")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["via"].to_str().unwrap().contains("tern"));
    let seen = a.last_headers.lock().unwrap().clone();
    let has = |h: &str| seen.iter().any(|l| l == h);
    assert!(has("x-forwarded-for: 203.0.113.9, 127.0.0.1"), "{seen:?}");
    assert!(has("x-forwarded-proto: http"), "{seen:?}");
    assert!(has("via: 1.1 tern"), "{seen:?}");
    assert!(has("x-keep: yes"), "{seen:?}");
    assert!(!seen.iter().any(|l| l.starts_with("x-private")), "{seen:?}");
}

/// A client sent X-Forwarded-For on two lines: the backend must see every
/// value in order, then the client's address (the edge kept only the first
/// line).
#[tokio::test]
async fn two_x_forwarded_for_lines_reach_the_backend_as_one_list_in_order() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let edge = RunningEdge::start(&edge_toml("", &failover(&a, &b, ""))).await;
    let resp = raw(
        edge.addr,
        b"GET /h HTTP/1.1\r\nHost: any\r\nX-Forwarded-For: 203.0.113.1\r\n\
          X-Forwarded-For: 198.51.100.2, 192.0.2.3\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = a.last_headers.lock().unwrap().clone();
    let xff: Vec<&String> = seen
        .iter()
        .filter(|l| l.starts_with("x-forwarded-for:"))
        .collect();
    assert_eq!(
        xff,
        ["x-forwarded-for: 203.0.113.1, 198.51.100.2, 192.0.2.3, 127.0.0.1"],
        "{seen:?}"
    );
}

/// `GET http://api.example.com/x` with `Host: internal.example.com`, the
/// two names being different services: routed by the target's authority,
/// the request must reach that service's backend under that name too (RFC
/// 9112 section 3.2.2), not carry the other service's Host.
#[tokio::test]
async fn an_absolute_form_target_is_routed_and_forwarded_under_its_own_authority() {
    let api = Backend::start("api", Mode::Ok).await;
    let internal = Backend::start("internal", Mode::Ok).await;
    let services = format!(
        "[service.api]\npolicy = \"failover\"\nhosts = [\"api.example.com\"]\n{}\n\
         [service.internal]\npolicy = \"failover\"\nhosts = [\"internal.example.com\"]\n{}",
        backend_toml("api", "a", api.addr, ""),
        backend_toml("internal", "a", internal.addr, "")
    );
    let edge = RunningEdge::start(&edge_toml("", &services)).await;
    let resp = raw(
        edge.addr,
        b"GET http://api.example.com/x HTTP/1.1\r\nHost: internal.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("api"), "routed to the wrong service: {resp}");
    let seen = api.last_headers.lock().unwrap().clone();
    assert!(
        seen.iter().any(|l| l == "host: api.example.com"),
        "the backend saw another service's Host: {seen:?}"
    );
    assert_eq!(internal.hits(), 0);
}

/// A backend answering 200 with 120 response headers got the client a 502
/// and was ejected as failing. It is served under the default limit; over
/// a lower configured limit the client gets a 502 and the backend, alive,
/// is neither ejected nor marked down.
#[tokio::test]
async fn a_response_with_many_headers_is_served_and_never_ejects_its_backend() {
    let a = Backend::start("a", Mode::ManyHeaders(120)).await;
    let b = Backend::start("b", Mode::Ok).await;
    let outlier = "outlier = { consecutive_failures = 2, base_ejection = \"10s\" }";
    let edge = RunningEdge::start(&edge_toml("", &failover(&a, &b, outlier))).await;
    let (status, headers, body) = send(
        Request::get(edge.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "a");
    assert!(headers.contains_key("x-h-120"));

    let edge = RunningEdge::start(&edge_toml(
        "max_response_headers = 50",
        &failover(&a, &b, outlier),
    ))
    .await;
    for _ in 0..4 {
        let (status, body) = get(&edge.url("/")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    }
    let s = edge.status().await;
    let backend = &s["services"][0]["backends"][0];
    assert_eq!(backend["ejected"], false, "{s:#}");
    assert_eq!(backend["ejections"], 0, "{s:#}");
    assert_eq!(backend["health"], "up", "{s:#}");
}

/// A POST without a key to a backend whose port refuses connections (its
/// health not yet down) got 502 until outlier detection ejected it. The
/// request never left the edge, so it goes to the next region at once,
/// whatever its method; a POST the backend did receive is not repeated.
#[tokio::test]
async fn a_post_refused_at_connect_goes_to_the_next_region() {
    // Bound but not listening: connections to it are refused, and the port
    // stays ours for the whole test.
    let refusing =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    refusing
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let dead = refusing.local_addr().unwrap().as_socket().unwrap();
    let b = Backend::start("b", Mode::Ok).await;
    // Probes far apart: the refusing backend is still up when the POSTs come.
    let slow_health =
        "health = { path = \"/health\", interval = \"60s\", timeout = \"40ms\", fall = 2, rise = 2 }";
    let services = format!(
        "[service.api]\npolicy = \"failover\"\n\
         [[service.api.backend]]\nregion = \"a\"\nurl = \"http://{dead}\"\n{slow_health}\n{}",
        backend_toml("api", "b", b.addr, "")
    );
    let edge = RunningEdge::start(&edge_toml("", &services)).await;
    for i in 0..3 {
        let (status, _, body) = send(
            Request::post(edge.url("/pay"))
                .body(Full::new(Bytes::from(format!("payment {i}"))))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "POST {i}: {body}");
        assert_eq!(body, "b");
    }
    assert_eq!(b.hits(), 3);
    let s = edge.status().await;
    assert_eq!(
        s["services"][0]["backends"][0]["health"], "up",
        "the test needs the refusing backend still up: {s:#}"
    );

    // A POST that reached its backend is never sent twice.
    let a = Backend::start("a", Mode::Drop).await;
    let c = Backend::start("c", Mode::Ok).await;
    let edge = RunningEdge::start(&edge_toml("", &failover(&a, &c, ""))).await;
    let (status, _, _) = send(
        Request::post(edge.url("/pay"))
            .body(Full::new(Bytes::from("once")))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!((a.hits(), c.hits()), (1, 0));
}

/// A backend that serves only its own name (421 for any other Host, its
/// health check included), as virtual-hosted servers do.
async fn name_only_backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let host = req.headers().get("host").and_then(|h| h.to_str().ok());
                        let status = if host == Some(name) {
                            StatusCode::OK
                        } else {
                            StatusCode::MISDIRECTED_REQUEST
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from("named")))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A backend answering only `Host: api.example.com` was marked down by the
/// probe, which sent `ip:port` as Host, and the service then failed
/// closed. Probes send the service's first host name by default, or the
/// configured one.
#[tokio::test]
async fn a_backend_that_serves_only_its_own_name_passes_its_health_check() {
    let named = name_only_backend("api.example.com").await;
    let services = format!(
        "[service.api]\npolicy = \"failover\"\nhosts = [\"api.example.com\", \"www.example.com\"]\n\
         when_all_unhealthy = \"fail-closed\"\n{}",
        backend_toml("api", "a", named, "")
    );
    let edge = RunningEdge::start(&edge_toml("", &services)).await;
    let s = edge
        .wait_status("a probe passed (a round trip measured)", |s| {
            s["services"][0]["backends"][0]["rtt_ms"].is_number()
        })
        .await;
    let b = &s["services"][0]["backends"][0];
    assert_eq!(
        (b["health"].as_str(), b["probe_failures"].as_u64()),
        (Some("up"), Some(0)),
        "{s:#}"
    );
    let (status, _, body) = send(
        Request::get(edge.url("/"))
            .header("host", "api.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "named"));

    // A configured Host wins over the service's names.
    let other = name_only_backend("health.internal").await;
    let services = format!(
        "[service.api]\npolicy = \"failover\"\nhosts = [\"api.example.com\"]\n\
         [[service.api.backend]]\nregion = \"a\"\nurl = \"http://{other}\"\n\
         health = {{ path = \"/health\", interval = \"50ms\", timeout = \"40ms\", fall = 2, rise = 2, host = \"health.internal\" }}\n"
    );
    let edge = RunningEdge::start(&edge_toml("", &services)).await;
    let s = edge
        .wait_status("the configured Host passes", |s| {
            s["services"][0]["backends"][0]["rtt_ms"].is_number()
        })
        .await;
    assert_eq!(
        s["services"][0]["backends"][0]["probe_failures"], 0,
        "{s:#}"
    );
}

/// A request head of 150 header lines gets 431 under the default limit
/// (100) and is served when `max_request_headers` allows it.
#[tokio::test]
async fn request_header_lines_are_limited_by_max_request_headers() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let mut head = String::from("GET / HTTP/1.1\r\nHost: any\r\nConnection: close\r\n");
    for i in 0..150 {
        head.push_str(&format!("x-h-{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let edge = RunningEdge::start(&edge_toml("", &failover(&a, &b, ""))).await;
    let resp = raw(edge.addr, head.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let edge = RunningEdge::start(&edge_toml(
        "max_request_headers = 200",
        &failover(&a, &b, ""),
    ))
    .await;
    let resp = raw(edge.addr, head.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let edge = RunningEdge::start(&edge_toml("", &failover(&a, &b, ""))).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let resp = client
        .request(
            Request::get(edge.url("/h2"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "a");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_edge_keeps_serving() {
    let a = Backend::start("a", Mode::Ok).await;
    let service = format!(
        "[service.api]\npolicy = \"failover\"\nhosts = [\"api.test\"]\n{}",
        backend_toml("api", "a", a.addr, "")
    );
    let edge = RunningEdge::start(&edge_toml(
        "max_body = \"1KiB\"\nmax_header = \"8KiB\"",
        &service,
    ))
    .await;

    let garbage = raw(edge.addr, b"HELLO THERE\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");

    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: api.test\r\nX-Big: {}\r\n\r\n",
        "y".repeat(20 * 1024)
    );
    let resp = raw(edge.addr, big_header.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");

    let resp = raw(
        edge.addr,
        b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("larger than the edge accepts"), "{resp}");

    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        3000,
        "z".repeat(3000)
    );
    let resp = raw(edge.addr, chunked.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");

    let resp = raw(
        edge.addr,
        b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(resp.contains("no service"), "{resp}");

    let resp = raw(edge.addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("Host"), "{resp}");

    // Still serving after all of that.
    let ok = raw(
        edge.addr,
        b"GET / HTTP/1.1\r\nHost: API.test:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let a = Backend::start("a", Mode::Slow(Duration::from_millis(500))).await;
    let b = Backend::start("b", Mode::Ok).await;
    let mut edge = RunningEdge::start(&edge_toml(
        "try_timeout = \"2s\"\nunready_delay = \"1s\"",
        &failover(&a, &b, ""),
    ))
    .await;
    let url = edge.url("/slow");
    let in_flight = tokio::spawn(async move {
        send(
            http::Request::get(&url)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
    });
    // Wait until the request reached the backend, then shut down.
    while a.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    edge.stop.cancel();
    // /ready said 503 while the listeners still accepted: a balancer in
    // front sees not-ready before connections are refused (it stayed 200
    // until they were closed).
    edge.phase.wait_for(|p| *p == Phase::Unready).await.unwrap();
    assert_eq!(
        get(&format!("http://{}/ready", edge.admin)).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let still = tokio::net::TcpStream::connect(edge.addr).await;
    assert!(still.is_ok(), "an unready edge closed its listeners early");
    edge.phase
        .wait_for(|p| *p == Phase::Draining)
        .await
        .unwrap();
    let refused = tokio::net::TcpStream::connect(edge.addr).await;
    assert!(
        refused.is_err(),
        "a draining edge must not accept new connections"
    );
    let (status, headers, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
    // Answered while shutting down: the client must not reuse the
    // connection, which is about to close.
    assert_eq!(
        headers.get(http::header::CONNECTION).map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "{headers:?}"
    );
    edge.phase.wait_for(|p| *p == Phase::Stopped).await.unwrap();
    edge.task.await.unwrap();
}

#[tokio::test]
async fn admin_reports_status_metrics_and_readiness() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let edge = RunningEdge::start(&edge_toml("", &failover(&a, &b, ""))).await;
    get(&edge.url("/")).await;
    let s = edge.status().await;
    assert_eq!(s["phase"], "serving");
    assert_eq!(s["region"], "a");
    let svc = &s["services"][0];
    assert_eq!(svc["policy"], "failover");
    assert_eq!(svc["backends"].as_array().unwrap().len(), 2);
    assert_eq!(svc["backends"][1]["weight"], 1);
    let (_, metrics) = get(&format!("http://{}/metrics", edge.admin)).await;
    assert!(
        metrics.contains("tern_edge_requests_total{service=\"api\",class=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tern_edge_upstream_latency_seconds_bucket"),
        "{metrics}"
    );
    assert_eq!(
        get(&format!("http://{}/ready", edge.admin)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&format!("http://{}/nope", edge.admin)).await.0,
        StatusCode::NOT_FOUND
    );
}

/// The admin listener had no header-read timeout: a client that never
/// finished its request head held a connection for ever.
#[tokio::test]
async fn a_slow_admin_client_is_closed_after_the_client_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let edge = RunningEdge::start(&edge_toml(
        "client_timeout = \"300ms\"",
        &failover(&a, &b, ""),
    ))
    .await;
    let mut conn = tokio::net::TcpStream::connect(edge.admin).await.unwrap();
    conn.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the admin listener kept a half-sent request open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_client_connections_are_closed_after_the_client_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let edge = RunningEdge::start(&edge_toml(
        "client_timeout = \"300ms\"",
        &failover(&a, &b, ""),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    // One request on a keep-alive connection, then silence.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection still open: {closed:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
}

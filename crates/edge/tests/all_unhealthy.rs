//! DESIGN.md invariant 5: when every backend looks unhealthy, the service's
//! `when_all_unhealthy` decides, and `/status` shows the choice.

mod common;

use common::*;
use http::StatusCode;

async fn all_down(policy: &str) -> (Backend, Backend, RunningEdge) {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    a.set_healthy(false);
    b.set_healthy(false);
    let service = format!(
        "[service.api]\npolicy = \"failover\"\nwhen_all_unhealthy = \"{policy}\"\n{}{}",
        backend_toml("api", "a", a.addr, ""),
        backend_toml("api", "b", b.addr, "")
    );
    let edge = RunningEdge::start(&edge_toml("", &service)).await;
    edge.wait_status("both backends down", |s| {
        s["services"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["health"] == "down")
    })
    .await;
    (a, b, edge)
}

#[tokio::test]
async fn fail_closed_answers_503_with_a_reason_and_sends_nothing() {
    let (a, b, edge) = all_down("fail-closed").await;
    let (status, body) = get(&edge.url("/x")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("fails closed"),
        "{body}"
    );
    assert_eq!(a.hits() + b.hits(), 0);
    let s = edge.status().await;
    assert_eq!(s["services"][0]["when_all_unhealthy"], "fail-closed");
    assert_eq!(s["services"][0]["all_unhealthy"], true);
}

#[tokio::test]
async fn fail_open_still_serves_from_an_unhealthy_backend() {
    let (a, _b, edge) = all_down("fail-open").await;
    let (status, body) = get(&edge.url("/x")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "a");
    assert_eq!(a.hits(), 1);
    let s = edge.status().await;
    assert_eq!(s["services"][0]["when_all_unhealthy"], "fail-open");
    assert_eq!(s["services"][0]["all_unhealthy"], true);
}

#[tokio::test]
async fn one_healthy_backend_is_not_all_unhealthy() {
    let (_a, b, edge) = all_down("fail-closed").await;
    b.set_healthy(true);
    edge.wait_status("b up", |s| {
        s["services"][0]["backends"][1]["health"] == "up"
    })
    .await;
    let (status, body) = get(&edge.url("/x")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "b"));
    assert_eq!(edge.status().await["services"][0]["all_unhealthy"], false);
}

//! A controller's `/metrics` (Prometheus text format) says what its status
//! says: who leads, who is in the quorum, the verdicts, the leases. Read
//! over HTTP from the nodes' own addresses, as Prometheus scrapes them.

mod common;

use std::time::Duration;

use common::{Group, Timings};
use tern_core::control::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` from node `i`: (content type, body).
async fn scrape(g: &Group, i: usize) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(g.addrs[i]).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    (content_type, body.to_string())
}

/// The value of the sample `name{labels}` (labels as they are written).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_say_who_leads_who_is_in_quorum_and_what_the_leases_hold() {
    let mut g = Group::start(1, Timings::default()).await;
    let leader = g.leader().await;
    let follower = (leader + 1) % 3;
    g.all()
        .write(&Command::AcquireLease {
            cluster: "payments".into(),
            holder: "east".into(),
        })
        .await
        .expect("a lease");
    // The follower has applied the grant once its status shows it.
    g.wait_for(follower, Duration::from_secs(5), "the lease applied", |s| {
        s.leases
            .iter()
            .any(|l| l.cluster == "payments" && l.holder.is_some())
    })
    .await;

    let (content_type, body) = scrape(&g, leader).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let me = |i: usize| {
        let s = g.status(i);
        format!("{{node=\"{}\",region=\"{}\"}}", s.node, s.region)
    };
    assert_eq!(
        sample(&body, &format!("tern_controller_is_leader{}", me(leader))),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &format!("tern_controller_in_quorum{}", me(leader))),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &format!("tern_controller_voters{}", me(leader))),
        Some(3.0),
        "{body}"
    );
    assert!(sample(&body, &format!("tern_controller_term{}", me(leader))).unwrap() >= 1.0);
    assert!(
        sample(
            &body,
            &format!("tern_controller_audit_entries_total{}", me(leader))
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(
            &body,
            "tern_controller_region_verdict{region=\"east\",verdict=\"up\"}"
        ),
        Some(1.0),
        "{body}"
    );
    let remaining = sample(
        &body,
        "tern_controller_lease_remaining_seconds{cluster=\"payments\",holder=\"east\"}",
    )
    .expect("the payments lease");
    assert!(remaining > 0.0, "{body}");
    assert_eq!(
        sample(&body, "tern_controller_plan_active{cluster=\"orders\"}"),
        Some(0.0),
        "{body}"
    );
    // No drill yet: never practised (0), none running.
    assert_eq!(
        sample(
            &body,
            "tern_drill_last_pass_timestamp_seconds{region=\"east\"}"
        ),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "tern_drill_running{region=\"east\"}"),
        Some(0.0),
        "{body}"
    );

    let (_, body) = scrape(&g, follower).await;
    assert_eq!(
        sample(&body, &format!("tern_controller_is_leader{}", me(follower))),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &format!("tern_controller_in_quorum{}", me(follower))),
        Some(1.0),
        "{body}"
    );

    // Cut from both others, the follower says it is out of the quorum.
    g.isolate(follower, true);
    g.wait_for(follower, Duration::from_secs(5), "out of quorum", |s| {
        !s.in_quorum
    })
    .await;
    let (_, body) = scrape(&g, follower).await;
    assert_eq!(
        sample(&body, &format!("tern_controller_in_quorum{}", me(follower))),
        Some(0.0),
        "{body}"
    );
    g.isolate(follower, false);
    g.stop_all().await;
}

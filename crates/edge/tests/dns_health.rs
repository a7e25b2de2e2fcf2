//! DNS answers follow health (DESIGN.md invariant 4 on the DNS path): a dead
//! target leaves the answers within fall x interval plus one interval, one
//! failed probe changes nothing, a target returns after `rise` successes,
//! and the all-unhealthy policy decides when nothing is healthy. Real
//! backends, real probes, real `dig`.

mod common;
mod dns_common;

use std::time::{Duration, Instant};

use dns_common::*;

const INTERVAL_MS: u64 = 200;
const FALL: u64 = 3;
const RISE: u64 = 2;

/// A record whose targets probe the backends' `/health` themselves.
fn probed(
    name: &str,
    policy: &str,
    extra: &str,
    targets: &[(&str, &str, &HealthServer)],
) -> String {
    let mut s = format!(
        "[[dns.zone.record]]\nname = \"{name}\"\ntype = \"A\"\npolicy = \"{policy}\"\nttl = \"1s\"\n{extra}\n"
    );
    for (addr, region, backend) in targets {
        s.push_str(&format!(
            "[[dns.zone.record.target]]\naddress = \"{addr}\"\nregion = \"{region}\"\nhealth = {{ port = {}, path = \"/health\", interval = \"{INTERVAL_MS}ms\", timeout = \"100ms\", fall = {FALL}, rise = {RISE} }}\n",
            backend.addr.port()
        ));
    }
    s
}

async fn answer(edge: &DnsEdge, name: &str) -> (String, Vec<String>) {
    let d = edge.dig1(&[name]).await;
    (d.status.clone(), d.data("A"))
}

#[tokio::test]
async fn a_dead_target_leaves_the_answers_within_fall_intervals_plus_one() {
    let a = HealthServer::start("127.0.0.1:0").await;
    let b = HealthServer::start("127.0.0.2:0").await;
    let zone = probed(
        "edges",
        "multivalue",
        "",
        &[("127.0.0.1", "a", &a), ("127.0.0.2", "b", &b)],
    );
    let edge = DnsEdge::start(&dns_toml("", &zone)).await;
    eventually("both targets answered", Duration::from_secs(5), || async {
        answer(&edge, "edges.example.com").await.1.len() == 2
    })
    .await;

    let killed = Instant::now();
    a.kill();
    let limit = Duration::from_millis(FALL * INTERVAL_MS + INTERVAL_MS);
    let mut gone = None;
    while killed.elapsed() < limit + Duration::from_secs(2) {
        let (_, addrs) = answer(&edge, "edges.example.com").await;
        if !addrs.contains(&"127.0.0.1".to_string()) {
            gone = Some(killed.elapsed());
            assert_eq!(addrs, ["127.0.0.2"], "the healthy target stays");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gone = gone.expect("the dead target never left the answers");
    eprintln!("dead target left the answers after {gone:?} (limit {limit:?})");
    // Each look is one dig run (milliseconds, more on a loaded machine);
    // allow one slow look on top.
    assert!(
        gone <= limit + Duration::from_millis(200),
        "left after {gone:?}, limit {limit:?}"
    );
    // Not before fall - 1 intervals: the threshold is really applied.
    assert!(
        gone >= Duration::from_millis((FALL - 1) * INTERVAL_MS - 50),
        "left after only {gone:?}"
    );
    let status = edge.status().await;
    assert_eq!(
        status["dns"][0]["targets"][0]["healthy"], false,
        "{status:#}"
    );
    assert_eq!(status["dns"][0]["answer"], serde_json::json!(["127.0.0.2"]));
}

#[tokio::test]
async fn one_failed_probe_changes_nothing_and_rise_successes_bring_a_target_back() {
    let a = HealthServer::start("127.0.0.1:0").await;
    let b = HealthServer::start("127.0.0.2:0").await;
    let zone = probed(
        "api",
        "failover",
        "",
        &[("127.0.0.1", "a", &a), ("127.0.0.2", "b", &b)],
    );
    let edge = DnsEdge::start(&dns_toml("", &zone)).await;
    // Both targets' probes run at their interval (each has answered two)
    // before the window below, which counts on that cadence.
    eventually(
        "the first probes answered",
        Duration::from_secs(5),
        || async { a.answered() >= 2 && b.answered() >= 2 },
    )
    .await;
    assert_eq!(answer(&edge, "api.example.com").await.1, ["127.0.0.1"]);

    // Unhealthy for 1.25 intervals: one probe (at most two) fails, fewer
    // than fall. The window is timed by its own task so that slow dig runs
    // on a loaded machine cannot stretch it; the answers are watched
    // throughout and for three intervals after.
    let flap = {
        let healthy = a.healthy_handle();
        tokio::spawn(async move {
            healthy.store(false, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(INTERVAL_MS + INTERVAL_MS / 4)).await;
            healthy.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let watch = Instant::now();
    while !flap.is_finished() || watch.elapsed() < Duration::from_millis(4 * INTERVAL_MS) {
        assert_eq!(
            answer(&edge, "api.example.com").await.1,
            ["127.0.0.1"],
            "a failed probe moved the answer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Down for real, then back: it returns only after rise successes.
    a.set_healthy(false);
    eventually("failover to b", Duration::from_secs(3), || async {
        answer(&edge, "api.example.com").await.1 == ["127.0.0.2"]
    })
    .await;
    let healed = Instant::now();
    a.set_healthy(true);
    let mut back = None;
    while healed.elapsed() < Duration::from_secs(3) {
        if answer(&edge, "api.example.com").await.1 == ["127.0.0.1"] {
            back = Some(healed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = back.expect("the target never came back");
    eprintln!("healed target back in the answers after {back:?}");
    let most = Duration::from_millis(RISE * INTERVAL_MS + INTERVAL_MS + 200);
    let least = Duration::from_millis((RISE - 1) * INTERVAL_MS - 50);
    assert!(
        back >= least && back <= most,
        "back after {back:?}, expected {least:?}..{most:?}"
    );
}

#[tokio::test]
async fn targets_following_a_service_backend_switch_with_the_http_path() {
    let a = common::Backend::start("a", common::Mode::Ok).await;
    let b = common::Backend::start("b", common::Mode::Ok).await;
    let services = format!(
        "[service.api]\npolicy = \"failover\"\n{}{}",
        common::backend_toml("api", "a", a.addr, ""),
        common::backend_toml("api", "b", b.addr, "")
    );
    let zone = r#"
[[dns.zone.record]]
name = "api"
type = "A"
policy = "failover"
ttl = "1s"
[[dns.zone.record.target]]
address = "192.0.2.1"
region = "a"
service = "api"
[[dns.zone.record.target]]
address = "192.0.2.2"
region = "b"
service = "api"
"#;
    let edge = DnsEdge::start(&dns_toml(&services, zone)).await;
    assert_eq!(answer(&edge, "api.example.com").await.1, ["192.0.2.1"]);
    a.kill();
    // The service's checks: 50 ms interval, fall 2.
    eventually(
        "the DNS answer follows the HTTP path",
        Duration::from_secs(2),
        || async { answer(&edge, "api.example.com").await.1 == ["192.0.2.2"] },
    )
    .await;
    let s = edge.status().await;
    assert_eq!(
        s["services"][0]["serving_regions"],
        serde_json::json!(["b"])
    );
    assert_eq!(s["dns"][0]["answer"], serde_json::json!(["192.0.2.2"]));
}

#[tokio::test]
async fn all_unhealthy_fails_open_or_closed_as_configured() {
    let a = HealthServer::start("127.0.0.1:0").await;
    let b = HealthServer::start("127.0.0.2:0").await;
    let mut zone = probed(
        "open",
        "failover",
        "when_all_unhealthy = \"fail-open\"",
        &[("127.0.0.1", "a", &a), ("127.0.0.2", "b", &b)],
    );
    zone.push_str(&probed(
        "closed",
        "multivalue",
        "when_all_unhealthy = \"fail-closed\"",
        &[("127.0.0.1", "a", &a), ("127.0.0.2", "b", &b)],
    ));
    let edge = DnsEdge::start(&dns_toml("", &zone)).await;
    a.set_healthy(false);
    b.set_healthy(false);
    eventually("every target down", Duration::from_secs(5), || async {
        let s = edge.status().await;
        s["dns"][0]["all_unhealthy"] == true && s["dns"][1]["all_unhealthy"] == true
    })
    .await;
    let (status, addrs) = answer(&edge, "open.example.com").await;
    assert_eq!(
        (status.as_str(), addrs),
        ("NOERROR", vec!["127.0.0.1".to_string()])
    );
    let closed = edge.dig1(&["closed.example.com"]).await;
    assert_eq!(closed.status, "SERVFAIL", "{}", closed.raw);
    assert!(closed.answers.is_empty());
    assert!(
        !closed.has_flag("aa"),
        "a failure is not an authoritative answer"
    );
    let s = edge.status().await;
    assert_eq!(s["dns"][1]["fail_closed"], true);
    assert_eq!(s["dns"][1]["when_all_unhealthy"], "fail-closed");
    // One target heals: both records answer it, healthy again. Each
    // record's targets have probes of their own, so each comes back on its
    // own probe's rise.
    b.set_healthy(true);
    for record in ["closed.example.com", "open.example.com"] {
        eventually(
            &format!("b back in {record}"),
            Duration::from_secs(5),
            || async { answer(&edge, record).await.1 == ["127.0.0.2"] },
        )
        .await;
    }
}

//! The DNS front door, end to end with the real `dig`: static records, every
//! policy with and without EDNS Client Subnet, over UDP and TCP, and the
//! protocol's corner cases (NXDOMAIN versus NODATA, REFUSED, truncation,
//! case, the AA flag).

mod dns_common;

use dns_common::*;

const STATIC: &str = r#"
[[dns.zone.record]]
name = "@"
type = "MX"
values = ["10 mail.example.com", "20 mx2.example.net"]
[[dns.zone.record]]
name = "mail"
type = "A"
ttl = "1h"
values = ["192.0.2.25", "192.0.2.26"]
[[dns.zone.record]]
name = "mail"
type = "AAAA"
values = ["2001:db8::25"]
[[dns.zone.record]]
name = "www"
type = "CNAME"
values = ["mail.example.com"]
[[dns.zone.record]]
name = "out"
type = "CNAME"
values = ["elsewhere.example.org"]
[[dns.zone.record]]
name = "deep.under.tree"
type = "TXT"
values = ["v=spf1 -all", "second"]
"#;

/// Run every static check over UDP and over TCP.
#[tokio::test]
async fn static_records_over_udp_and_tcp() {
    let edge = DnsEdge::start(&dns_toml("", STATIC)).await;
    for transport in ["+notcp", "+tcp"] {
        let a = edge.dig1(&[transport, "mail.example.com", "A"]).await;
        assert_eq!(a.status, "NOERROR", "{}", a.raw);
        assert!(a.has_flag("aa"), "authoritative answer: {}", a.raw);
        assert!(!a.has_flag("tc"), "{}", a.raw);
        assert_eq!(a.data("A"), ["192.0.2.25", "192.0.2.26"], "{transport}");
        assert_eq!(a.answers[0].1, 3600, "per-record TTL");

        let aaaa = edge.dig1(&[transport, "mail.example.com", "AAAA"]).await;
        assert_eq!(aaaa.data("AAAA"), ["2001:db8::25"]);

        let mx = edge.dig1(&[transport, "example.com", "MX"]).await;
        assert_eq!(
            mx.data("MX"),
            ["10 mail.example.com.", "20 mx2.example.net."]
        );
        assert_eq!(mx.answers[0].1, 300, "the zone's default TTL");

        // A CNAME inside the zone is followed; the chain ends in the target's records.
        let cname = edge.dig1(&[transport, "www.example.com", "A"]).await;
        assert_eq!(cname.data("CNAME"), ["mail.example.com."]);
        assert_eq!(cname.data("A"), ["192.0.2.25", "192.0.2.26"]);
        // A CNAME out of the zone is answered alone.
        let out = edge.dig1(&[transport, "out.example.com", "A"]).await;
        assert_eq!(out.status, "NOERROR");
        assert_eq!(out.data("CNAME"), ["elsewhere.example.org."]);
        assert!(out.data("A").is_empty());

        let txt = edge
            .dig1(&[transport, "deep.under.tree.example.com", "TXT"])
            .await;
        assert_eq!(txt.data("TXT"), ["\"v=spf1 -all\"", "\"second\""]);

        let soa = edge.dig1(&[transport, "example.com", "SOA"]).await;
        assert_eq!(soa.data("SOA").len(), 1);
        assert!(soa.data("SOA")[0].starts_with("ns1.example.com. hostmaster.example.com. 1 "));
        let ns = edge.dig1(&[transport, "example.com", "NS"]).await;
        assert_eq!(ns.data("NS"), ["ns1.example.com."]);
    }
}

#[tokio::test]
async fn nxdomain_nodata_refused_case_and_the_aa_flag() {
    let edge = DnsEdge::start(&dns_toml("", STATIC)).await;
    // A name that does not exist: NXDOMAIN with the SOA for negative caching.
    let nx = edge.dig1(&["nothing.example.com", "A"]).await;
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.raw);
    assert!(nx.has_flag("aa"));
    assert_eq!(nx.authority.len(), 1, "{}", nx.raw);
    assert_eq!(nx.authority[0].2, "SOA");
    assert_eq!(
        nx.authority[0].1, 30,
        "negative TTL = min(SOA TTL, minimum)"
    );
    // A name that exists without the type: NODATA (NOERROR, no answer, SOA).
    let nodata = edge.dig1(&["mail.example.com", "TXT"]).await;
    assert_eq!(nodata.status, "NOERROR", "{}", nodata.raw);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authority[0].2, "SOA");
    // An empty non-terminal exists too.
    let ent = edge.dig1(&["under.tree.example.com", "A"]).await;
    assert_eq!(ent.status, "NOERROR", "{}", ent.raw);
    assert!(ent.answers.is_empty());
    // Outside every zone: REFUSED, not authoritative.
    let refused = edge.dig1(&["example.org", "A"]).await;
    assert_eq!(refused.status, "REFUSED", "{}", refused.raw);
    assert!(!refused.has_flag("aa"));
    let suffix = edge.dig1(&["badexample.com", "A"]).await;
    assert_eq!(
        suffix.status, "REFUSED",
        "a suffix that is not a label boundary"
    );
    // Names ignore case; the question keeps the client's spelling, also when
    // a worker answers from the cache the first query filled (tests/dns_cache.rs
    // checks that case alone).
    let answers = edge
        .dig(&["mail.example.com", "A", "MaIl.ExAmPlE.CoM", "A"])
        .await;
    assert_eq!(answers.len(), 2);
    let mixed = answers[1].clone();
    assert_eq!(mixed.data("A"), ["192.0.2.25", "192.0.2.26"]);
    assert!(mixed.raw.contains(";MaIl.ExAmPlE.CoM."), "{}", mixed.raw);
    // The server says it does not recurse.
    assert!(!mixed.has_flag("ra"));
    // A CHAOS query is refused.
    let chaos = edge.dig1(&["version.bind", "CH", "TXT"]).await;
    assert_eq!(chaos.status, "REFUSED");
}

#[tokio::test]
async fn truncation_edns_buffer_sizes_and_tcp_fallback() {
    // 40 TXT strings of 100 bytes: about 4.4 kB, over any UDP limit.
    let values: Vec<String> = (0..40)
        .map(|i| format!("\"{i:02}{}\"", "x".repeat(98)))
        .collect();
    let zone = format!(
        "[[dns.zone.record]]\nname = \"big\"\ntype = \"TXT\"\nvalues = [{}]\n[[dns.zone.record]]\nname = \"small\"\ntype = \"A\"\nvalues = [\"192.0.2.1\"]\n",
        values.join(", ")
    );
    let edge = DnsEdge::start(&dns_toml("", &zone)).await;
    // UDP without EDNS: 512 bytes at most; TC set, and dig (+ignore) keeps the cut answer.
    let plain = edge
        .dig1(&["+ignore", "+noedns", "big.example.com", "TXT"])
        .await;
    assert!(plain.has_flag("tc"), "{}", plain.raw);
    assert!(
        plain.answers.is_empty(),
        "a truncated answer carries no partial RRset"
    );
    // With EDNS the server offers 1232 bytes and never sends more.
    let edns = edge
        .dig1(&["+ignore", "+bufsize=4096", "big.example.com", "TXT"])
        .await;
    assert!(edns.has_flag("tc"), "{}", edns.raw);
    assert_eq!(edns.udp, Some(1232));
    // dig's default retries over TCP on TC and gets everything.
    let full = edge.dig1(&["big.example.com", "TXT"]).await;
    assert!(!full.has_flag("tc"));
    assert_eq!(full.data("TXT").len(), 40, "{}", full.raw);
    // A small answer fits in 512 bytes and is not truncated.
    let small = edge
        .dig1(&["+ignore", "+noedns", "small.example.com", "A"])
        .await;
    assert!(!small.has_flag("tc"));
    assert_eq!(small.data("A"), ["192.0.2.1"]);
}

fn policy_record(name: &str, policy: &str, extra: &str, targets: &[(&str, &str, u32)]) -> String {
    let mut s = format!(
        "[[dns.zone.record]]\nname = \"{name}\"\ntype = \"A\"\npolicy = \"{policy}\"\nttl = \"5s\"\n{extra}\n"
    );
    for (addr, region, weight) in targets {
        s.push_str(&format!(
            "[[dns.zone.record.target]]\naddress = \"{addr}\"\nregion = \"{region}\"\nweight = {weight}\n"
        ));
    }
    s
}

#[tokio::test]
async fn failover_answers_the_first_target_with_its_ttl() {
    let zone = policy_record(
        "api",
        "failover",
        "",
        &[("192.0.2.1", "a", 1), ("192.0.2.2", "b", 1)],
    );
    let edge = DnsEdge::start(&dns_toml("", &zone)).await;
    for args in [
        vec!["api.example.com"],
        vec!["+tcp", "api.example.com"],
        vec!["+subnet=10.2.0.0/24", "api.example.com"],
    ] {
        let d = edge.dig1(&args).await;
        assert_eq!(d.data("A"), ["192.0.2.1"], "{args:?}: {}", d.raw);
        assert_eq!(d.answers[0].1, 5);
        assert!(d.has_flag("aa"));
        if args[0].starts_with("+subnet") {
            // Failover does not depend on the client: scope 0.
            assert_eq!(d.subnet.as_deref(), Some("10.2.0.0/24/0"), "{}", d.raw);
        }
    }
}

#[tokio::test]
async fn weighted_follows_weights_and_weight_zero_stays_out() {
    let zone = policy_record(
        "api",
        "weighted",
        "",
        &[
            ("192.0.2.1", "a", 3),
            ("192.0.2.2", "b", 1),
            ("192.0.2.3", "b", 0),
        ],
    );
    let edge = DnsEdge::start(&dns_toml("", &zone)).await;
    // dig sends one query per name on its command line: 200 queries, one process.
    let names = vec!["api.example.com"; 200];
    let answers = edge.dig(&names).await;
    assert_eq!(
        answers.len(),
        200,
        "dig printed {} responses",
        answers.len()
    );
    let mut counts = std::collections::HashMap::new();
    for d in &answers {
        let a = d.data("A");
        assert_eq!(a.len(), 1, "weighted answers one address: {}", d.raw);
        *counts.entry(a[0].clone()).or_insert(0u32) += 1;
    }
    let first = counts.get("192.0.2.1").copied().unwrap_or(0);
    let second = counts.get("192.0.2.2").copied().unwrap_or(0);
    assert_eq!(
        counts.get("192.0.2.3"),
        None,
        "weight 0 while others are healthy"
    );
    // 3:1 expected; bounds far outside random variation for 200 draws.
    assert!((120..=185).contains(&first), "{counts:?}");
    assert!(second >= 15, "{counts:?}");
    let tcp = edge.dig1(&["+tcp", "api.example.com"]).await;
    assert_eq!(tcp.data("A").len(), 1);
}

#[tokio::test]
async fn latency_answers_the_clients_region_by_ecs_or_resolver_address() {
    let zone = policy_record(
        "api",
        "latency",
        "",
        &[("192.0.2.1", "a", 1), ("192.0.2.2", "b", 1)],
    );
    let edge = DnsEdge::start(&dns_toml("", &zone)).await;
    for transport in ["+notcp", "+tcp"] {
        // ECS in region a's network: a's target; the scope is the network's /16.
        let a = edge
            .dig1(&[transport, "+subnet=10.1.7.0/24", "api.example.com"])
            .await;
        assert_eq!(a.data("A"), ["192.0.2.1"], "{}", a.raw);
        assert_eq!(a.subnet.as_deref(), Some("10.1.7.0/24/16"), "{}", a.raw);
        // ECS in region b's network.
        let b = edge
            .dig1(&[transport, "+subnet=10.2.9.0/24", "api.example.com"])
            .await;
        assert_eq!(b.data("A"), ["192.0.2.2"], "{}", b.raw);
        assert_eq!(b.subnet.as_deref(), Some("10.2.9.0/24/16"));
        // ECS in no configured network: file order; valid for the client's subnet only.
        let none = edge
            .dig1(&[transport, "+subnet=192.0.2.0/24", "api.example.com"])
            .await;
        assert_eq!(none.data("A"), ["192.0.2.1"]);
        assert_eq!(none.subnet.as_deref(), Some("192.0.2.0/24/24"));
        // Without ECS the resolver's address decides: 127.0.0.1 is in b's network.
        let resolver = edge.dig1(&[transport, "api.example.com"]).await;
        assert_eq!(resolver.data("A"), ["192.0.2.2"], "{}", resolver.raw);
        assert_eq!(resolver.subnet, None, "no ECS asked, none echoed");
        // ECS with source prefix 0 means "use the resolver's address".
        let zero = edge
            .dig1(&[transport, "+subnet=0.0.0.0/0", "api.example.com"])
            .await;
        assert_eq!(zero.data("A"), ["192.0.2.2"], "{}", zero.raw);
    }
}

#[tokio::test]
async fn multivalue_answers_up_to_eight_nearest_first() {
    let mut targets = Vec::new();
    let addrs: Vec<String> = (1..=10).map(|i| format!("192.0.2.{i}")).collect();
    for (i, a) in addrs.iter().enumerate() {
        targets.push((a.as_str(), if i < 5 { "a" } else { "b" }, 1));
    }
    let zone = policy_record("edges", "multivalue", "", &targets);
    let edge = DnsEdge::start(&dns_toml("", &zone)).await;
    for transport in ["+notcp", "+tcp"] {
        let from_b = edge
            .dig1(&[transport, "+subnet=10.2.0.0/16", "edges.example.com"])
            .await;
        assert_eq!(
            from_b.data("A"),
            [
                "192.0.2.6",
                "192.0.2.7",
                "192.0.2.8",
                "192.0.2.9",
                "192.0.2.10",
                "192.0.2.1",
                "192.0.2.2",
                "192.0.2.3"
            ],
            "{}",
            from_b.raw
        );
        assert_eq!(from_b.subnet.as_deref(), Some("10.2.0.0/16/16"));
        let from_a = edge
            .dig1(&[transport, "+subnet=10.1.0.0/24", "edges.example.com"])
            .await;
        assert_eq!(from_a.data("A")[..5], addrs[..5]);
        assert_eq!(from_a.data("A").len(), 8);
    }
}

#[tokio::test]
async fn status_shows_the_answers_served_and_metrics_count_them() {
    let zone = policy_record(
        "api",
        "latency",
        "when_all_unhealthy = \"fail-closed\"",
        &[("192.0.2.1", "a", 1), ("192.0.2.2", "b", 1)],
    );
    let edge = DnsEdge::start(&dns_toml("", &zone)).await;
    let s = edge.status().await;
    let rec = &s["dns"][0];
    assert_eq!(rec["name"], "api.example.com", "{s:#}");
    assert_eq!(rec["policy"], "latency");
    assert_eq!(rec["when_all_unhealthy"], "fail-closed");
    assert_eq!(rec["answer"], serde_json::json!(["192.0.2.1"]));
    assert_eq!(
        rec["answer_by_client_region"],
        serde_json::json!([["a", ["192.0.2.1"]], ["b", ["192.0.2.2"]]])
    );
    edge.dig(&["api.example.com", "api.example.com", "nope.example.com"])
        .await;
    let m = edge.metrics().await;
    let line = m
        .lines()
        .find(|l| {
            l.starts_with("tern_dns_answers_total{")
                && l.contains("record=\"api.example.com\"")
                && l.contains("outcome=\"healthy\"")
        })
        .unwrap_or_else(|| panic!("no answer counter:\n{m}"));
    assert!(line.contains("policy=\"latency\""), "{line}");
    assert!(line.ends_with(" 2"), "{line}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("tern_dns_responses_total{rcode=\"NXDOMAIN\"} 1")),
        "{m}"
    );
}

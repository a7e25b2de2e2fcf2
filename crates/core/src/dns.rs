//! DNS answer decisions: which targets of a policy record a query gets.
//!
//! [`select`] is a pure function of a [`TargetView`] per target, the
//! client's region (from [`client_network`], the longest configured network
//! that holds the client's address) and a random number the caller draws,
//! like [`crate::routing::plan`] for HTTP. [`ecs_scope`] says which EDNS
//! Client Subnet scope an answer is valid for. The edge owns the wire format.

use std::net::IpAddr;

pub use crate::config::dns::truncate;
use crate::config::dns::{DnsPolicy, Network};
use crate::config::AllUnhealthy;

/// A multivalue answer holds at most this many addresses, like Route 53's.
pub const MULTIVALUE_MAX: usize = 8;

/// What the DNS server currently knows about one target of a policy record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetView<'a> {
    pub region: &'a str,
    pub weight: u32,
    pub healthy: bool,
    /// The share of answers, percent, that a drill moves away from this
    /// target's region ([`crate::drill`]); 0 outside a drill.
    pub evacuated: u8,
}

/// The targets to answer with, in answer order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Target indexes; `degraded` when no target was healthy and the record
    /// fails open, so the answer ignores health.
    Answer { targets: Vec<usize>, degraded: bool },
    /// No target is healthy and the record fails closed (the server answers SERVFAIL).
    FailClosed,
}

/// Chooses the answer of one query. `client_region` is the region the
/// client's network maps to, if any; `random` is any uniformly drawn number
/// (only the weighted policy uses it).
pub fn select(
    policy: DnsPolicy,
    when_all_unhealthy: AllUnhealthy,
    targets: &[TargetView<'_>],
    client_region: Option<&str>,
    random: u64,
) -> Selection {
    let healthy: Vec<usize> = (0..targets.len()).filter(|i| targets[*i].healthy).collect();
    let (candidates, degraded) = if healthy.is_empty() {
        match when_all_unhealthy {
            AllUnhealthy::FailClosed => return Selection::FailClosed,
            AllUnhealthy::FailOpen => ((0..targets.len()).collect(), true),
        }
    } else {
        (healthy, false)
    };
    if candidates.is_empty() {
        return Selection::FailClosed;
    }
    let chosen = choose(policy, targets, candidates.clone(), client_region, random);
    // A drill's evacuation: this answer falls in the evacuated share of the
    // first choice's region: answer with the next choice among the others.
    let chosen = match chosen.first().map(|i| &targets[*i]) {
        Some(t)
            if t.evacuated > 0
                && crate::routing::mix(random) % 100 < u64::from(t.evacuated.min(100)) =>
        {
            let region = t.region;
            let others: Vec<usize> = candidates
                .into_iter()
                .filter(|i| targets[*i].region != region)
                .collect();
            if others.is_empty() {
                chosen
            } else {
                choose(
                    policy,
                    targets,
                    others,
                    client_region,
                    crate::routing::mix(crate::routing::mix(random)),
                )
            }
        }
        _ => chosen,
    };
    Selection::Answer {
        targets: chosen,
        degraded,
    }
}

/// The targets `policy` answers with among `candidates` (not empty).
fn choose(
    policy: DnsPolicy,
    targets: &[TargetView<'_>],
    candidates: Vec<usize>,
    client_region: Option<&str>,
    random: u64,
) -> Vec<usize> {
    match policy {
        // File order is the failover order.
        DnsPolicy::Failover => vec![candidates[0]],
        DnsPolicy::Weighted => vec![pick_weighted(targets, &candidates, random)],
        DnsPolicy::Latency => vec![nearest_first(targets, candidates, client_region)[0]],
        DnsPolicy::Multivalue => {
            let mut order = nearest_first(targets, candidates, client_region);
            order.truncate(MULTIVALUE_MAX);
            order
        }
    }
}

/// The client's region's targets first, then the others in file order.
fn nearest_first(
    targets: &[TargetView<'_>],
    mut candidates: Vec<usize>,
    client_region: Option<&str>,
) -> Vec<usize> {
    if let Some(region) = client_region {
        // A stable sort keeps file order within each group.
        candidates.sort_by_key(|i| targets[*i].region != region);
    }
    candidates
}

/// Weight 0 serves only when no candidate with a weight is left.
fn pick_weighted(targets: &[TargetView<'_>], candidates: &[usize], random: u64) -> usize {
    let positive: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|i| targets[*i].weight > 0)
        .collect();
    if positive.is_empty() {
        return candidates[(random % candidates.len() as u64) as usize];
    }
    let total: u64 = positive.iter().map(|i| u64::from(targets[*i].weight)).sum();
    let mut point = random % total;
    for i in &positive {
        let w = u64::from(targets[*i].weight);
        if point < w {
            return *i;
        }
        point -= w;
    }
    positive[positive.len() - 1]
}

/// The most specific configured network that holds `addr`.
pub fn client_network(networks: &[Network], addr: IpAddr) -> Option<&Network> {
    networks
        .iter()
        .filter(|n| n.contains(addr))
        .max_by_key(|n| n.prefix_len)
}

/// The EDNS Client Subnet scope prefix to echo (RFC 7871 section 7.2.1):
/// answers that do not depend on the client's location are valid for every
/// client (scope 0); location-dependent ones are valid for the network that
/// decided them, or, when no network matched, for the client's own subnet.
pub fn ecs_scope(location_dependent: bool, matched: Option<&Network>, source_prefix: u8) -> u8 {
    if !location_dependent {
        return 0;
    }
    match matched {
        Some(n) => n.prefix_len,
        None => source_prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AllUnhealthy::{FailClosed, FailOpen};
    use DnsPolicy::{Failover, Latency, Multivalue, Weighted};

    fn views<'a>(spec: &'a [(&'a str, u32, bool)]) -> Vec<TargetView<'a>> {
        spec.iter()
            .map(|(region, weight, healthy)| TargetView {
                region,
                weight: *weight,
                healthy: *healthy,
                evacuated: 0,
            })
            .collect()
    }

    #[test]
    fn an_evacuation_share_moves_that_share_of_answers_to_the_next_choice_under_every_policy() {
        let spec = [("us-east", 1, true), ("us-west", 1, true), ("eu", 1, true)];
        for policy in [Failover, Weighted, Latency, Multivalue] {
            let first_east = |v: &[TargetView<'_>]| {
                (0..10_000u64)
                    .filter(|r| {
                        let Selection::Answer { targets, .. } = select(
                            policy,
                            FailClosed,
                            v,
                            Some("us-east"),
                            crate::routing::mix(*r),
                        ) else {
                            panic!()
                        };
                        targets.iter().any(|t| v[*t].region == "us-east")
                    })
                    .count() as f64
                    / 10_000.0
            };
            let mut v = views(&spec);
            let before = first_east(&v);
            for share in [10u8, 50, 100] {
                v[0].evacuated = share;
                let after = first_east(&v);
                let want = before * (1.0 - f64::from(share) / 100.0);
                assert!(
                    (after - want).abs() < 0.02,
                    "{policy:?} at {share}%: {after:.3} of answers name us-east, expected {want:.3}"
                );
            }
        }
    }

    fn answer(targets: &[usize], degraded: bool) -> Selection {
        Selection::Answer {
            targets: targets.to_vec(),
            degraded,
        }
    }

    /// Each row: policy, all-unhealthy policy, targets (region, weight,
    /// healthy), client region, random number, expected selection.
    #[test]
    fn selection_table() {
        type Row<'a> = (
            DnsPolicy,
            AllUnhealthy,
            &'a [(&'a str, u32, bool)],
            Option<&'a str>,
            u64,
            Selection,
        );
        let e = "us-east";
        let w = "us-west";
        let table: &[Row<'_>] = &[
            // failover: first healthy in file order.
            (
                Failover,
                FailOpen,
                &[(e, 1, true), (w, 1, true)],
                None,
                0,
                answer(&[0], false),
            ),
            (
                Failover,
                FailOpen,
                &[(e, 1, false), (w, 1, true)],
                Some(e),
                0,
                answer(&[1], false),
            ),
            (
                Failover,
                FailOpen,
                &[(e, 1, false), (w, 1, false)],
                None,
                0,
                answer(&[0], true),
            ),
            (
                Failover,
                FailClosed,
                &[(e, 1, false), (w, 1, false)],
                None,
                0,
                Selection::FailClosed,
            ),
            // weighted: by weight among healthy; weight 0 only when nothing else is healthy.
            (
                Weighted,
                FailOpen,
                &[(e, 1, true), (w, 3, true)],
                None,
                0,
                answer(&[0], false),
            ),
            (
                Weighted,
                FailOpen,
                &[(e, 1, true), (w, 3, true)],
                None,
                1,
                answer(&[1], false),
            ),
            (
                Weighted,
                FailOpen,
                &[(e, 1, true), (w, 3, true)],
                None,
                3,
                answer(&[1], false),
            ),
            (
                Weighted,
                FailOpen,
                &[(e, 1, true), (w, 3, true)],
                None,
                4,
                answer(&[0], false),
            ),
            (
                Weighted,
                FailOpen,
                &[(e, 0, true), (w, 3, true)],
                None,
                0,
                answer(&[1], false),
            ),
            (
                Weighted,
                FailOpen,
                &[(e, 0, true), (w, 3, false)],
                None,
                7,
                answer(&[0], false),
            ),
            (
                Weighted,
                FailOpen,
                &[(e, 1, false), (w, 3, true)],
                None,
                0,
                answer(&[1], false),
            ),
            (
                Weighted,
                FailOpen,
                &[(e, 1, false), (w, 0, false)],
                None,
                5,
                answer(&[0], true),
            ),
            (
                Weighted,
                FailClosed,
                &[(e, 1, false), (w, 0, false)],
                None,
                5,
                Selection::FailClosed,
            ),
            // latency: the client's region when healthy, else the next in file order.
            (
                Latency,
                FailOpen,
                &[(e, 1, true), (w, 1, true)],
                Some(w),
                0,
                answer(&[1], false),
            ),
            (
                Latency,
                FailOpen,
                &[(e, 1, true), (w, 1, true)],
                Some(e),
                0,
                answer(&[0], false),
            ),
            (
                Latency,
                FailOpen,
                &[(e, 1, true), (w, 1, true)],
                None,
                0,
                answer(&[0], false),
            ),
            (
                Latency,
                FailOpen,
                &[(e, 1, true), (w, 1, false)],
                Some(w),
                0,
                answer(&[0], false),
            ),
            (
                Latency,
                FailOpen,
                &[(e, 1, false), (w, 1, false)],
                Some(w),
                0,
                answer(&[1], true),
            ),
            (
                Latency,
                FailClosed,
                &[(e, 1, false), (w, 1, false)],
                Some(w),
                0,
                Selection::FailClosed,
            ),
            // multivalue: every healthy target, nearest first, at most 8.
            (
                Multivalue,
                FailOpen,
                &[(e, 1, true), (w, 1, true), (e, 1, true)],
                Some(w),
                0,
                answer(&[1, 0, 2], false),
            ),
            (
                Multivalue,
                FailOpen,
                &[(e, 1, true), (w, 1, false), (e, 1, true)],
                Some(w),
                0,
                answer(&[0, 2], false),
            ),
            (
                Multivalue,
                FailOpen,
                &[(e, 1, false), (w, 1, false)],
                None,
                0,
                answer(&[0, 1], true),
            ),
            (
                Multivalue,
                FailClosed,
                &[(e, 1, false), (w, 1, false)],
                None,
                0,
                Selection::FailClosed,
            ),
            (
                Multivalue,
                FailOpen,
                &[
                    (e, 1, true),
                    (e, 1, true),
                    (e, 1, true),
                    (e, 1, true),
                    (e, 1, true),
                    (w, 1, true),
                    (w, 1, true),
                    (w, 1, true),
                    (w, 1, true),
                    (w, 1, true),
                ],
                Some(w),
                0,
                answer(&[5, 6, 7, 8, 9, 0, 1, 2], false),
            ),
        ];
        for (row, (policy, unhealthy, spec, client, random, want)) in table.iter().enumerate() {
            let got = select(*policy, *unhealthy, &views(spec), *client, *random);
            assert_eq!(
                &got, want,
                "row {row}: {policy:?} {spec:?} client {client:?}"
            );
        }
    }

    #[test]
    fn weighted_shares_follow_weights() {
        let spec = [("a", 1, true), ("b", 3, true), ("c", 0, true)];
        let v = views(&spec);
        let mut counts = [0u32; 3];
        for random in 0..4000u64 {
            if let Selection::Answer { targets, .. } = select(Weighted, FailOpen, &v, None, random)
            {
                counts[targets[0]] += 1;
            }
        }
        assert_eq!(counts, [1000, 3000, 0]);
    }

    fn net(prefix: &str, len: u8, region: &str) -> Network {
        Network {
            addr: prefix.parse().unwrap(),
            prefix_len: len,
            region: region.to_string(),
        }
    }

    #[test]
    fn longest_network_wins() {
        let nets = [
            net("10.0.0.0", 8, "wide"),
            net("10.1.0.0", 16, "narrow"),
            net("2001:db8::", 32, "v6"),
        ];
        let r = |a: &str| client_network(&nets, a.parse().unwrap()).map(|n| n.region.as_str());
        assert_eq!(r("10.1.2.3"), Some("narrow"));
        assert_eq!(r("10.2.0.1"), Some("wide"));
        assert_eq!(r("11.0.0.1"), None);
        assert_eq!(r("2001:db8::5"), Some("v6"));
        assert_eq!(r("2001:db9::5"), None);
    }

    #[test]
    fn ecs_scopes() {
        let n = net("10.1.0.0", 16, "x");
        assert_eq!(ecs_scope(false, Some(&n), 24), 0);
        assert_eq!(ecs_scope(true, Some(&n), 24), 16);
        assert_eq!(ecs_scope(true, None, 24), 24);
    }

    #[test]
    fn truncation_clears_host_bits() {
        let t = |a: &str, l| truncate(a.parse().unwrap(), l).to_string();
        assert_eq!(t("10.1.2.3", 24), "10.1.2.0");
        assert_eq!(t("10.1.2.3", 0), "0.0.0.0");
        assert_eq!(t("10.1.2.3", 32), "10.1.2.3");
        assert_eq!(t("10.1.2.3", 12), "10.0.0.0");
        assert_eq!(t("2001:db8:1:2::7", 48), "2001:db8:1::");
    }
}

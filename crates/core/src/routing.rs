//! Routing decisions: which backend a request goes to first, and which ones
//! it may be retried on, given the service's policy and what the edge knows.
//!
//! [`plan`] is a pure function of a [`BackendView`] per backend and a random
//! number the caller draws, so every choice can be replayed in a test.

use std::time::Duration;

use crate::config::{AllUnhealthy, Policy};

/// What the edge currently knows about one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendView<'a> {
    pub region: &'a str,
    pub weight: u32,
    /// The active health checks' verdict.
    pub healthy: bool,
    /// Passive outlier detection has ejected it.
    pub ejected: bool,
    /// Smoothed round trip the edge measured; `None` until measured.
    pub rtt: Option<Duration>,
    /// The share of requests, percent, that a drill moves away from this
    /// backend's region ([`crate::drill`]); 0 outside a drill.
    pub evacuated: u8,
}

impl BackendView<'_> {
    pub fn available(&self) -> bool {
        self.healthy && !self.ejected
    }
}

/// The outcome of routing one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePlan {
    /// Backend indexes: the first is the chosen one, the rest are retry
    /// candidates in order of preference.
    Try { order: Vec<usize>, degraded: bool },
    /// No backend is available and the service fails closed.
    FailClosed,
}

/// Two round trips closer than this count as a tie in the latency policy,
/// so measurement noise does not pull traffic out of the edge's own region.
pub const LATENCY_TIE: Duration = Duration::from_millis(2);

/// Chooses the backends for one request. `random` is any uniformly drawn
/// number; only the weighted policy uses it.
pub fn plan(
    policy: Policy,
    when_all_unhealthy: AllUnhealthy,
    local_region: &str,
    backends: &[BackendView<'_>],
    random: u64,
) -> RoutePlan {
    let available: Vec<usize> = (0..backends.len())
        .filter(|i| backends[*i].available())
        .collect();
    if available.is_empty() {
        return match when_all_unhealthy {
            AllUnhealthy::FailClosed => RoutePlan::FailClosed,
            AllUnhealthy::FailOpen => {
                let mut order = order_by_policy(
                    policy,
                    local_region,
                    backends,
                    (0..backends.len()).collect(),
                    random,
                );
                // The least bad first: a backend whose probes pass (only
                // ejected for its answers) before one that fails them, and
                // among those failing, one not ejected too. A stable sort,
                // so the policy's order holds within each group.
                order.sort_by_key(|i| (!backends[*i].healthy, backends[*i].ejected));
                RoutePlan::Try {
                    order,
                    degraded: true,
                }
            }
        };
    }
    let order = order_by_policy(policy, local_region, backends, available, random);
    RoutePlan::Try {
        order: evacuate(policy, local_region, backends, order, random),
        degraded: false,
    }
}

/// A drill's evacuation: when the first choice's region is being evacuated
/// and this request falls in the evacuated share, the request goes to the
/// policy's next choice among the other regions (a weighted policy picks
/// again by weight among them), and the evacuated region's backends stay
/// last, as retries. Nothing moves when no other region is available.
fn evacuate(
    policy: Policy,
    local_region: &str,
    backends: &[BackendView<'_>],
    order: Vec<usize>,
    random: u64,
) -> Vec<usize> {
    let Some(&first) = order.first() else {
        return order;
    };
    let region = backends[first].region;
    let share = backends[first].evacuated.min(100);
    let mut order = if share == 0 || mix(random) % 100 >= u64::from(share) {
        order
    } else {
        let (evacuated, mut rest): (Vec<usize>, Vec<usize>) = order
            .into_iter()
            .partition(|i| backends[*i].region == region);
        if rest.is_empty() {
            return evacuated;
        }
        rest.sort_unstable();
        let mut order = order_by_policy(policy, local_region, backends, rest, mix(mix(random)));
        order.extend(evacuated);
        order
    };
    // A fully evacuated region is a last resort, whatever came first.
    order.sort_by_key(|i| backends[*i].evacuated >= 100);
    order
}

/// A second, independent-looking number from `random` (SplitMix64's
/// finalizer), so the evacuation draw does not follow the weighted pick.
pub(crate) fn mix(random: u64) -> u64 {
    let mut z = random.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn order_by_policy(
    policy: Policy,
    local_region: &str,
    backends: &[BackendView<'_>],
    mut candidates: Vec<usize>,
    random: u64,
) -> Vec<usize> {
    match policy {
        // File order is the failover order.
        Policy::Failover => candidates,
        Policy::Latency => {
            candidates.sort_by(|a, b| {
                let (ba, bb) = (&backends[*a], &backends[*b]);
                let ra = ba.rtt.unwrap_or(Duration::MAX);
                let rb = bb.rtt.unwrap_or(Duration::MAX);
                let tie = ra.abs_diff(rb) < LATENCY_TIE;
                if tie {
                    let la = ba.region != local_region;
                    let lb = bb.region != local_region;
                    la.cmp(&lb).then(a.cmp(b))
                } else {
                    ra.cmp(&rb)
                }
            });
            candidates
        }
        Policy::Weighted => {
            let positive: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|i| backends[*i].weight > 0)
                .collect();
            // Weight 0 serves only when nothing with a weight can.
            let pool = if positive.is_empty() {
                candidates.clone()
            } else {
                positive
            };
            let first = pick_weighted(backends, &pool, random);
            let mut rest: Vec<usize> = candidates.into_iter().filter(|i| *i != first).collect();
            rest.sort_by(|a, b| backends[*b].weight.cmp(&backends[*a].weight).then(a.cmp(b)));
            let mut order = vec![first];
            order.extend(rest);
            order
        }
    }
}

fn pick_weighted(backends: &[BackendView<'_>], pool: &[usize], random: u64) -> usize {
    let total: u64 = pool.iter().map(|i| u64::from(backends[*i].weight)).sum();
    if total == 0 {
        return pool[(random % pool.len() as u64) as usize];
    }
    let mut point = random % total;
    for i in pool {
        let w = u64::from(backends[*i].weight);
        if point < w {
            return *i;
        }
        point -= w;
    }
    pool[pool.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use AllUnhealthy::{FailClosed, FailOpen};
    use Policy::{Failover, Latency, Weighted};

    fn view(
        region: &str,
        weight: u32,
        healthy: bool,
        ejected: bool,
        rtt_ms: Option<u64>,
    ) -> BackendView<'_> {
        BackendView {
            region,
            weight,
            healthy,
            ejected,
            rtt: rtt_ms.map(Duration::from_millis),
            evacuated: 0,
        }
    }

    /// Share of `n` requests whose first choice is in `region`.
    fn share_first(views: &[BackendView<'_>], policy: Policy, region: &str, n: u64) -> f64 {
        let hits = (0..n)
            .filter(|r| {
                let o = order(plan(policy, FailClosed, "us-east", views, mix(*r)));
                views[o[0]].region == region
            })
            .count();
        hits as f64 / n as f64
    }

    #[test]
    fn an_evacuation_share_moves_that_share_to_the_next_choice_under_every_policy() {
        for policy in [Failover, Latency, Weighted] {
            let mut v = vec![
                view("us-east", 1, true, false, Some(5)),
                view("us-west", 1, true, false, Some(40)),
                view("eu", 1, true, false, Some(90)),
            ];
            let before = share_first(&v, policy, "us-east", 10_000);
            for share in [10u8, 50, 100] {
                v[0].evacuated = share;
                let after = share_first(&v, policy, "us-east", 10_000);
                let want = before * (1.0 - f64::from(share) / 100.0);
                assert!(
                    (after - want).abs() < 0.02,
                    "{policy:?} at {share}%: {after:.3} of requests still first to us-east, expected {want:.3}"
                );
            }
            // At 100% the evacuated region is only a last retry.
            let o = order(plan(policy, FailClosed, "us-east", &v, 7));
            assert_eq!(v[*o.last().unwrap()].region, "us-east", "{policy:?}");
        }
        // The failover policy's next choice is the next in file order.
        let mut v = vec![
            view("us-east", 1, true, false, None),
            view("us-west", 1, true, false, None),
            view("eu", 1, true, false, None),
        ];
        v[0].evacuated = 100;
        assert_eq!(
            order(plan(Failover, FailClosed, "us-east", &v, 3)),
            [1, 2, 0]
        );
        // Nowhere else to go: the region keeps its traffic.
        v[1].healthy = false;
        v[2].healthy = false;
        assert_eq!(order(plan(Failover, FailClosed, "us-east", &v, 3)), [0]);
    }

    fn order(p: RoutePlan) -> Vec<usize> {
        match p {
            RoutePlan::Try { order, .. } => order,
            RoutePlan::FailClosed => panic!("unexpected fail-closed"),
        }
    }

    /// Rows: policy, local region, backends (region, weight, healthy, ejected, rtt), random, expected order.
    #[test]
    fn policy_table() {
        type Row<'a> = (Policy, &'a str, Vec<BackendView<'a>>, u64, Vec<usize>);
        let table: Vec<Row<'_>> = vec![
            (
                Failover,
                "b",
                vec![
                    view("a", 1, true, false, None),
                    view("b", 1, true, false, None),
                ],
                0,
                vec![0, 1],
            ),
            (
                Failover,
                "a",
                vec![
                    view("a", 1, false, false, None),
                    view("b", 1, true, false, None),
                ],
                0,
                vec![1],
            ),
            (
                Failover,
                "a",
                vec![
                    view("a", 1, true, true, None),
                    view("b", 1, true, false, None),
                ],
                0,
                vec![1],
            ),
            (
                Latency,
                "a",
                vec![
                    view("a", 1, true, false, Some(70)),
                    view("b", 1, true, false, Some(1)),
                ],
                0,
                vec![1, 0],
            ),
            // Ties go to the edge's own region.
            (
                Latency,
                "b",
                vec![
                    view("a", 1, true, false, Some(5)),
                    view("b", 1, true, false, Some(6)),
                ],
                0,
                vec![1, 0],
            ),
            (
                Latency,
                "a",
                vec![
                    view("a", 1, true, false, Some(5)),
                    view("b", 1, true, false, Some(6)),
                ],
                0,
                vec![0, 1],
            ),
            // Unmeasured goes last.
            (
                Latency,
                "a",
                vec![
                    view("a", 1, true, false, None),
                    view("b", 1, true, false, Some(90)),
                ],
                0,
                vec![1, 0],
            ),
            (
                Weighted,
                "a",
                vec![
                    view("a", 3, true, false, None),
                    view("b", 1, true, false, None),
                ],
                0,
                vec![0, 1],
            ),
            (
                Weighted,
                "a",
                vec![
                    view("a", 3, true, false, None),
                    view("b", 1, true, false, None),
                ],
                2,
                vec![0, 1],
            ),
            (
                Weighted,
                "a",
                vec![
                    view("a", 3, true, false, None),
                    view("b", 1, true, false, None),
                ],
                3,
                vec![1, 0],
            ),
            // Weight 0 is a retry candidate but never chosen while others are available.
            (
                Weighted,
                "a",
                vec![
                    view("a", 0, true, false, None),
                    view("b", 1, true, false, None),
                ],
                0,
                vec![1, 0],
            ),
            // Weight 0 serves when nothing else is available.
            (
                Weighted,
                "a",
                vec![
                    view("a", 0, true, false, None),
                    view("b", 1, false, false, None),
                ],
                7,
                vec![0],
            ),
        ];
        for (row, (policy, local, backends, random, want)) in table.into_iter().enumerate() {
            let got = order(plan(policy, FailClosed, local, &backends, random));
            assert_eq!(got, want, "row {row}");
        }
    }

    #[test]
    fn all_unhealthy_policy() {
        let backends = vec![
            view("a", 1, false, false, None),
            view("b", 1, true, true, None),
        ];
        assert_eq!(
            plan(Failover, FailClosed, "a", &backends, 0),
            RoutePlan::FailClosed
        );
        // Fail-open tries the healthy but ejected b before the failing a.
        assert_eq!(
            plan(Failover, FailOpen, "a", &backends, 0),
            RoutePlan::Try {
                order: vec![1, 0],
                degraded: true
            }
        );
    }

    /// A surviving edge sent its traffic to a dead first region for 2 s:
    /// the dead region's outlier ejection ended while the healthy region
    /// was ejected, so every backend was unavailable and fail-open took
    /// the file order. The least bad goes first.
    #[test]
    fn fail_open_never_puts_a_region_failing_its_probes_before_one_passing_them() {
        let backends = vec![
            view("dead", 1, false, false, None),
            view("alive", 1, true, true, None),
            view("dead-and-ejected", 1, false, true, None),
        ];
        for policy in [Failover, Latency, Weighted] {
            let o = order(plan(policy, FailOpen, "dead", &backends, 7));
            assert_eq!(o[0], 1, "{policy:?}: {o:?}");
            assert_eq!(o, vec![1, 0, 2], "{policy:?}");
        }
    }

    #[test]
    fn weighted_split_follows_weights() {
        let backends = vec![
            view("a", 1, true, false, None),
            view("b", 3, true, false, None),
        ];
        let mut counts = [0u32; 2];
        for r in 0..4000u64 {
            counts[order(plan(
                Weighted,
                FailOpen,
                "a",
                &backends,
                r.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ))[0]] += 1;
        }
        let share = f64::from(counts[1]) / 4000.0;
        assert!((share - 0.75).abs() < 0.03, "share of b {share}");
    }
}

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
    RoutePlan::Try {
        order: order_by_policy(policy, local_region, backends, available, random),
        degraded: false,
    }
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
        }
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

//! Invariant 1 under clock steps: no wall-clock step on a controller
//! shortens a lease. Each test gives "east" a lease, steps one or more
//! controllers' wall clocks (`Controller::wall_clock`), and has "west" ask
//! for the lease until it gets it; the grant must come, in real time
//! (`Instant`), no earlier than the lease's full period after east's
//! request was sent, which is when east's own agent stops writing.

mod common;

use std::time::{Duration, Instant};

use common::{Group, Timings};
use tern_core::control::{Applied, Command};

const HOUR_MS: i64 = 3_600_000;

fn acquire(holder: &str) -> Command {
    Command::AcquireLease {
        cluster: "payments".into(),
        holder: holder.into(),
    }
}

/// East takes the lease; answers when its request was sent (the start of
/// east's own count of the lease) and the epoch. Like an agent, it asks
/// again while no controller has a quorum (a leader change under load).
async fn east_takes_the_lease(g: &Group) -> (Instant, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (sent, answer) = loop {
        let sent = Instant::now();
        match g.all().write(&acquire("east")).await {
            Ok(answer) => break (sent, answer),
            Err(e) if e.is_retryable_elsewhere() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("east's lease not committed: {e}"),
        }
    };
    let Applied::Lease(l) = answer.applied else {
        panic!("expected a lease, got {:?}", answer.applied)
    };
    (sent, l.epoch)
}

/// West asks for the lease until it gets it (within `patience`); answers
/// the real time of the grant and the epoch.
async fn west_waits_for_the_lease(g: &Group, patience: Duration) -> (Instant, u64) {
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(answer) = g.all().write(&acquire("west")).await {
            if let Applied::Lease(l) = answer.applied {
                return (Instant::now(), l.epoch);
            }
        }
        assert!(
            Instant::now() < deadline,
            "west got no lease within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_not_early(east_sent: Instant, granted: Instant, lease: Duration, what: &str) {
    let held = granted.duration_since(east_sent);
    assert!(
        held >= lease,
        "{what}: west was granted the lease {} ms after east's request, before east's {} ms lease ran out",
        held.as_millis(),
        lease.as_millis()
    );
}

// Broke when leases were counted on the leader's wall clock: a forward step
// of the leader's clock expired east's lease at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_step_of_the_leaders_clock_does_not_shorten_a_lease() {
    let t = Timings::default();
    let lease = Duration::from_millis(t.lease_ms);
    let g = Group::start(21, t).await;
    let leader = g.leader().await;
    let (sent, epoch) = east_takes_the_lease(&g).await;
    g.node(leader).wall_clock().step(HOUR_MS);
    let (granted, west_epoch) = west_waits_for_the_lease(&g, Duration::from_secs(10)).await;
    assert_not_early(sent, granted, lease, "leader stepped forward an hour");
    assert!(west_epoch > epoch);
    let mut g = g;
    g.stop_all().await;
}

// Broke when a new leader's first reading came from its wall clock with
// nothing to hold the leases it inherited: every controller but the leader
// is an hour ahead, and the leader is stopped, so a stepped one leads next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_with_a_clock_an_hour_ahead_does_not_shorten_a_lease() {
    // A lease longer than an election, so that it is still running when the
    // stepped controller takes over.
    let t = Timings {
        lease_ms: 4_000,
        ..Timings::default()
    };
    let lease = Duration::from_millis(t.lease_ms);
    let mut g = Group::start(22, t).await;
    let leader = g.leader().await;
    let (sent, _) = east_takes_the_lease(&g).await;
    for i in (0..3).filter(|i| *i != leader) {
        g.node(i).wall_clock().step(HOUR_MS);
    }
    g.stop_node(leader).await;
    let next = g.leader().await;
    assert_ne!(next, leader);
    let (granted, _) = west_waits_for_the_lease(&g, Duration::from_secs(10)).await;
    assert_not_early(sent, granted, lease, "new leader an hour ahead");
    g.stop_all().await;
}

// Broke (liveness) when a backward step of the leader's clock kept a lease
// alive for the hour the clock went back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backward_step_of_the_leaders_clock_does_not_stretch_a_lease_for_ever() {
    let t = Timings::default();
    let lease = Duration::from_millis(t.lease_ms);
    let margin = Duration::from_millis(t.drift_ms);
    let g = Group::start(23, t).await;
    let leader = g.leader().await;
    let (sent, _) = east_takes_the_lease(&g).await;
    g.node(leader).wall_clock().step(-HOUR_MS);
    let (granted, _) = west_waits_for_the_lease(&g, Duration::from_secs(10)).await;
    assert_not_early(sent, granted, lease, "leader stepped back an hour");
    assert!(
        granted.duration_since(sent) < lease + margin + Duration::from_secs(5),
        "the lease outlived its period by far: {} ms",
        granted.duration_since(sent).as_millis()
    );
    let mut g = g;
    g.stop_all().await;
}

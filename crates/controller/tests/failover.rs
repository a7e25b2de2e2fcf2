//! Failover plans through real controller groups (DESIGN.md invariants 1
//! and 2): the RPO gate, and plans that survive a leader change. The test
//! plays the agents' part (replication reports, step reports) through the
//! controllers' HTTP API; the agents themselves are exercised by the lab.

mod common;

use std::time::Duration;

use common::{batch, over_seeds, Group, Rng, Timings};
use tern_core::control::{Applied, Command};
use tern_core::drill::{DrillSpec, Guardrails};
use tern_core::failover::{PlanKind, Step};
use tern_proto::api::{GuardrailReport, ReplicationReport};
use tern_proto::http::CallError;

const CLUSTER: &str = "orders";

fn report(region: &str, role: &str, lsn: u64) -> ReplicationReport {
    ReplicationReport {
        cluster: CLUSTER.into(),
        region: region.into(),
        role: role.into(),
        lsn,
        received_lsn: (role == "standby").then_some(lsn),
        lag_bytes: None,
        lag_ms: None,
        read_only: false,
        // A standby here streams from the writer of the epoch the test
        // granted first (east's epoch 1).
        streamed_epoch: (role == "standby").then_some(1),
    }
}

/// Marks east down: every vantage point reports failures until the verdict
/// is committed.
async fn east_goes_down(g: &Group) {
    region_is(g, "east", false).await;
}

/// Commits `command` the way the CLI does: once a leader is known, one
/// call that tries every node in turn (no retries beyond that).
async fn write_once(g: &Group, command: &Command) -> Applied {
    g.leader().await;
    match g.all().write(command).await {
        Ok(a) => a.applied,
        Err(e) => panic!("not committed: {command:?}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_refused_over_the_budget() {
    let g = Group::start(1, Timings::default()).await;
    let leader = g.leader().await;
    let lease = write_once(
        &g,
        &Command::AcquireLease {
            cluster: CLUSTER.into(),
            holder: "east".into(),
        },
    )
    .await;
    assert!(matches!(lease, Applied::Lease(_)), "{lease:?}");
    // The standby is 64 KiB behind; the budget is 1 KiB.
    let _ = leader;
    let client = g.all();
    assert_eq!(
        client
            .report_replication(&report("east", "primary", 70_000))
            .await,
        3
    );
    client
        .report_replication(&report("west", "standby", 4_464))
        .await;
    east_goes_down(&g).await;
    wait_state(&g, "the refusal is audited", |s| {
        s.audit()
            .iter()
            .any(|a| a.kind == "failover-refused" && a.summary.contains(CLUSTER))
    })
    .await;
    // The leader tries again once a second for each cluster whose writer is
    // down, here orders and ledger (both written in east). Each try is a log
    // entry (committed, then refused by the state machine), and once east is
    // down nothing else is written to this group: four more applied entries
    // are two more tries of orders at the gate.
    let tried = g.status(g.leader().await).last_applied.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let applied = g.status(g.leader().await).last_applied.unwrap_or(0);
        if applied >= tried + 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no automatic attempt after the refusal: {applied} entries applied, {tried} when it was audited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = g.node(g.leader().await).state();
    let c = &state.clusters()[CLUSTER];
    assert!(
        c.plan.is_none(),
        "a plan started over the budget: {:?}",
        c.plan
    );
    assert_eq!(c.writer.region, "east");
    let refusals: Vec<_> = state
        .audit()
        .iter()
        .filter(|a| a.kind == "failover-refused" && a.summary.contains(CLUSTER))
        .collect();
    assert_eq!(
        refusals.len(),
        1,
        "refused once, audited once: {refusals:?}"
    );
    assert!(
        refusals[0]
            .summary
            .contains("65536 bytes exceeds the budget of 1024"),
        "{}",
        refusals[0].summary
    );
    // An operator forces it; that is recorded.
    let forced = write_once(
        &g,
        &Command::StartFailover {
            cluster: CLUSTER.into(),
            to: "west".into(),
            kind: PlanKind::Forced {
                actor: "test".into(),
            },
            lag_bytes: None,
            evidence: vec![],
        },
    )
    .await;
    assert!(matches!(forced, Applied::Plan(1)), "{forced:?}");
    let state = g.node(g.leader().await).state();
    let entry = state
        .audit()
        .iter()
        .find(|a| a.kind == "forced")
        .expect("forcing is audited");
    assert!(
        entry.summary.contains("lag 65536 bytes"),
        "{}",
        entry.summary
    );
}

/// A plan interrupted by a leader change at a random moment resumes from
/// its last committed step: the new epoch still waits for the old lease,
/// every step is recorded once, and the writer ends on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_resumes_after_a_leader_change() {
    over_seeds(plan_resumes_after_a_leader_change_seed).await;
}

async fn plan_resumes_after_a_leader_change_seed(seed: u64) {
    let t = Timings::default();
    let (lease_ms, drift_ms) = (t.lease_ms, t.drift_ms);
    let mut rng = Rng::new(seed);
    let mut g = Group::start(seed + 100, t).await;
    g.leader().await;
    let Applied::Lease(first) = write_once(
        &g,
        &Command::AcquireLease {
            cluster: CLUSTER.into(),
            holder: "east".into(),
        },
    )
    .await
    else {
        panic!("no lease")
    };
    let client = g.all();
    client
        .report_replication(&report("east", "primary", 1000))
        .await;
    client
        .report_replication(&report("west", "standby", 1000))
        .await;
    // East's agent renews until its region is declared down.
    let last = std::sync::Arc::new(std::sync::Mutex::new(first.expires_at));
    let renewer = {
        let client = client.clone();
        let epoch = first.epoch;
        let last = last.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                let renew = Command::RenewLease {
                    cluster: CLUSTER.into(),
                    holder: "east".into(),
                    epoch,
                };
                if let Ok(a) = client.write(&renew).await {
                    if let Applied::Lease(l) = a.applied {
                        *last.lock().unwrap() = l.expires_at;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    east_goes_down(&g).await;
    renewer.abort();
    let _ = renewer.await;
    // The last expiry a renewal set (a renewal in flight when aborted may
    // still commit: the grant check below then fails only if the table is wrong).
    let last_expiry = *last.lock().unwrap();

    // A leader change at a random moment of the plan.
    tokio::time::sleep(Duration::from_millis(rng.below(lease_ms + 400))).await;
    let leader = g.leader().await;
    g.stop_node(leader).await;
    g.start_node(leader).await;

    // Play west's agent: promote once it holds the new epoch.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: the plan never reached promote"
        );
        let node = g.leader().await;
        let state = g.node(node).state();
        let c = &state.clusters()[CLUSTER];
        if let Some(p) = c.plan.as_ref().filter(|p| p.step == Step::Promote) {
            let command = Command::PlanStep {
                cluster: CLUSTER.into(),
                plan_id: p.id,
                step: Step::Promote,
                ok: true,
                detail: "promoted by the test".into(),
                lsn: Some(1000),
            };
            if g.client(node).write(&command).await.is_ok() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node = g.leader().await;
    let state = g.node(node).state();
    let c = &state.clusters()[CLUSTER];
    let plan = c.plan.as_ref().expect("a plan");
    assert_eq!(plan.step, Step::Done, "seed {seed}");
    assert_eq!(c.writer.region, "west", "seed {seed}");
    assert!(
        c.writer.epoch > first.epoch,
        "seed {seed}: epoch {}",
        c.writer.epoch
    );
    let steps: Vec<Step> = plan.history.iter().map(|h| h.step).collect();
    assert_eq!(
        steps,
        vec![Step::WaitLease, Step::Promote],
        "seed {seed}: each step once"
    );
    // The grant came after the old lease surely expired.
    let grant = &plan.history[0];
    assert!(
        grant.finished_at >= last_expiry + Duration::from_millis(drift_ms),
        "seed {seed}: granted at {:?}, old lease expired at {last_expiry:?}",
        grant.finished_at
    );
    assert!(g.node(0).cluster_now() >= grant.finished_at);
    let plans = state
        .audit()
        .iter()
        .filter(|a| a.kind == "failover" && a.summary.contains("automatic failover"))
        .count();
    assert_eq!(
        plans, 1,
        "seed {seed}: one plan, not restarted by the new leader"
    );
    g.stop_all().await;
}

fn report_of(
    cluster: &str,
    region: &str,
    role: &str,
    lsn: u64,
    streamed_epoch: Option<u64>,
) -> ReplicationReport {
    ReplicationReport {
        cluster: cluster.into(),
        region: region.into(),
        role: role.into(),
        lsn,
        received_lsn: (role == "standby").then_some(lsn),
        lag_bytes: None,
        lag_ms: None,
        read_only: false,
        streamed_epoch,
    }
}

/// Every vantage point reports `region` up or down, one round per verdict
/// interval (as agents probe), until a leader with a quorum has committed
/// that verdict.
async fn region_is(g: &Group, region: &str, ok: bool) {
    let want = if ok { "up" } else { "down" };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let leader = g.leader().await;
        if g.status(leader).verdicts.get(region).map(String::as_str) == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{region} was never declared {want}"
        );
        let client = g.client(leader);
        for vantage in ["east", "west", "witness"] {
            let _ = client.observe(&batch(vantage, region, ok)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_state(
    g: &Group,
    what: &str,
    done: impl Fn(&tern_core::control::ControlState) -> bool,
) -> tern_core::control::ControlState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let state = g.node(g.leader().await).state();
        if done(&state) {
            return state;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Broke when a candidate was any serving region and sync mode let an
// unknown lag through: after a failover to west and no rejoin, west's loss
// "promoted" the stale old primary in east (a primary already, counted as
// promoted), losing every write acknowledged since the first failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_failover_in_sync_mode_does_not_promote_the_stale_old_primary() {
    const LEDGER: &str = "ledger";
    let g = Group::start(9, Timings::default()).await;
    g.leader().await;
    let lease = write_once(
        &g,
        &Command::AcquireLease {
            cluster: LEDGER.into(),
            holder: "east".into(),
        },
    )
    .await;
    assert!(matches!(lease, Applied::Lease(_)), "{lease:?}");
    let client = g.all();
    client
        .report_replication(&report_of(LEDGER, "east", "primary", 1000, None))
        .await;
    client
        .report_replication(&report_of(LEDGER, "west", "standby", 1000, Some(1)))
        .await;
    // East dies; west, a standby of epoch 1's writer, is promoted.
    region_is(&g, "east", false).await;
    let state = wait_state(&g, "the first plan reaches promote", |s| {
        s.clusters()[LEDGER]
            .plan
            .as_ref()
            .is_some_and(|p| p.step == Step::Promote)
    })
    .await;
    let plan = state.clusters()[LEDGER].plan.clone().unwrap();
    write_once(
        &g,
        &Command::PlanStep {
            cluster: LEDGER.into(),
            plan_id: plan.id,
            step: Step::Promote,
            ok: true,
            detail: "west promoted".into(),
            lsn: Some(1000),
        },
    )
    .await;
    wait_state(&g, "west writes in epoch 2", |s| {
        s.clusters()[LEDGER].writer.region == "west"
    })
    .await;
    // East comes back as it was: a primary of epoch 1 that never rejoined.
    client
        .report_replication(&report_of(LEDGER, "west", "primary", 9000, None))
        .await;
    client
        .report_replication(&report_of(LEDGER, "east", "primary", 1500, None))
        .await;
    region_is(&g, "east", true).await;
    wait_state(&g, "east up again", |s| s.verdict("east").serves()).await;
    // Then west dies.
    region_is(&g, "west", false).await;
    let state = wait_state(&g, "the refusal is audited", |s| {
        s.audit().iter().any(|a| {
            a.kind == "failover-refused" && a.summary.contains("no standby is known to stream")
        })
    })
    .await;
    let c = &state.clusters()[LEDGER];
    assert_eq!(
        c.writer.region, "west",
        "the stale old primary took the writer"
    );
    assert_eq!(
        c.plan.as_ref().map(|p| p.id),
        Some(plan.id),
        "a second plan started: {:?}",
        c.plan
    );
    let refusal = state
        .audit()
        .iter()
        .find(|a| a.kind == "failover-refused" && a.summary.contains(LEDGER))
        .unwrap();
    assert!(
        refusal
            .evidence
            .iter()
            .any(|e| e.contains("east is no candidate") && e.contains("a primary")),
        "{refusal:?}"
    );
}

/// The checks before a drill (issue: "when capacities are configured, the
/// receivers can absorb the evacuated load"; "with a switchover, the
/// standby's lag is within the budget"): each refusal says why and commits
/// nothing; with the checks met the drill starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_is_refused_until_the_receivers_can_absorb_the_load_and_the_lag_is_known() {
    let t = Timings {
        capacity_rps: Some([1000, 100]),
        ..Timings::default()
    };
    let g = Group::start(11, t).await;
    g.leader().await;
    let start = |switchover_at| Command::StartDrill {
        spec: DrillSpec {
            region: "east".into(),
            steps: vec![50, 100],
            hold: Duration::from_secs(60),
            return_steps: vec![],
            switchover_at,
            guardrails: Guardrails::default(),
            service_guardrails: Default::default(),
        },
        actor: "test".into(),
        wall_ms: 0,
    };
    let refused = |r: Result<tern_proto::api::WriteAnswer, CallError>| match r {
        Err(CallError::Refused { message, .. }) => message,
        other => panic!("expected a refusal: {other:?}"),
    };
    // No edge has said what east serves: nothing to check the capacities
    // against, so no drill.
    let m = refused(g.all().write(&start(None)).await);
    assert!(
        m.contains("no edge of east, west reported the load it serves"),
        "{m}"
    );

    // east's edge: east's backends answered 2,500 requests in 5 s.
    let load = |served_east: u64| GuardrailReport {
        region: "east".into(),
        edge: "edge-1".into(),
        window_ms: 5000,
        requests: served_east,
        errors: 0,
        p50_ms: 2,
        p99_ms: 8,
        services: vec![],
        served: [("east".to_string(), served_east)].into(),
    };
    assert_eq!(g.all().report_guardrails(&load(2500)).await, 3);
    // west's clients are not accounted for yet: still nothing to judge on.
    let m = refused(g.all().write(&start(None)).await);
    assert!(m.contains("no edge of west reported"), "{m}");
    let west = GuardrailReport {
        region: "west".into(),
        edge: "edge-2".into(),
        served: Default::default(),
        ..load(0)
    };
    assert_eq!(g.all().report_guardrails(&west).await, 3);
    let m = refused(g.all().write(&start(None)).await);
    assert!(
        m.contains("cannot absorb east's load: east serves 500 req/s; west has 100 req/s free"),
        "{m}"
    );

    // At 50 req/s west can take it; with a switchover, the lag of the
    // standby in west must be known first.
    assert_eq!(g.all().report_guardrails(&load(250)).await, 3);
    let m = refused(g.all().write(&start(Some(50))).await);
    assert!(
        m.contains("standby in west is unknown") && m.contains("budget of 1024 bytes"),
        "{m}"
    );
    assert!(
        g.all().drills().await.unwrap().current.is_none(),
        "nothing committed"
    );
    match g.all().write(&start(None)).await {
        Ok(a) => assert_eq!(a.applied, Applied::Drill(1)),
        Err(e) => panic!("the checks pass: {e}"),
    }
}

//! The oracle: what happened during a scenario, computed from the client
//! records and the edges' routing history only, never from what the system
//! under test says about itself.
//!
//! Everything here is a pure function of its inputs so the oracle itself is
//! tested with hand-made records.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::load::RequestRecord;
use crate::stats::{ms as fmt_ms, thousands};
pub use crate::stats::{percentiles, Percentiles};

/// Success rate the service must be back above, for [`RTO_WINDOW_MS`], to count as recovered.
pub const RTO_SUCCESS: f64 = 0.999;
pub const RTO_WINDOW_MS: f64 = 5_000.0;
/// Candidate recovery points are tried at this step.
const RTO_STEP_MS: f64 = 100.0;

/// A routing observation from one edge's `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct RoutingSample {
    pub edge_region: String,
    pub serving_regions: Vec<String>,
    /// When the edge started routing this way, in ms since the lab's time zero.
    pub since_ms: f64,
    /// False when the edge's admin API did not answer (killed or cut off);
    /// `serving_regions` is then empty and `since_ms` is when the lab noticed.
    pub reachable: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub t_ms: f64,
    pub what: String,
}

/// The targets of a run, each `None` when it does not apply to the
/// scenario: only those that apply are printed, and `--check` enforces
/// every one printed ([`Targets::all_met`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Targets {
    /// Zero failed HTTP requests for clients outside the failed region
    /// (scenarios with a failed region).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_failures_outside_failed_region: Option<bool>,
    /// Detection under 1000 ms as the clients saw it: the last request of a
    /// client outside the failed region that paid for the fault (failed,
    /// tried a second edge, or waited out a try) ended within 1000 ms of
    /// it (`clients_detection_ms`, from the clients' records; the edges'
    /// own `detection_ms` only until those are in). Scenarios with a failed
    /// region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection_under_1s: Option<bool>,
    /// The controllers committed a verdict on the failed region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict_committed: Option<bool>,
    /// The cut-off controller committed nothing while cut off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minority_decided_nothing: Option<bool>,
    /// Committed routing moved exactly as the scenario requires (down and
    /// back once for a partition, never for flapping health).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_extra_flap: Option<bool>,
    /// No failed HTTP request at all (scenarios without a failed region).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_failures: Option<bool>,
    /// Nothing acknowledged lost (synchronous replication, or a switchover).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_lost_writes: Option<bool>,
    /// Asynchronous replication: what was lost fits the RPO budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_within_budget: Option<bool>,
    /// No write taken by a superseded writer (split brain), judged from the clients'
    /// records alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_split_brain_writes: Option<bool>,
    /// No idempotency key processed twice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_duplicate_keys: Option<bool>,
    /// Writes taken again by the new primary within 10 s of the fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_back_within_10s: Option<bool>,
    /// No request or write failed before the fault: the deployment was ready
    /// when the load started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nothing_failed_before_the_fault: Option<bool>,
    /// No payment write failed (a rolling restart must not show).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_failed_writes: Option<bool>,
    /// The database's writer never moved (no failover plan ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_failover: Option<bool>,
    /// Every edge answered over HTTPS (TLS trusting the lab's CA, h2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_at_every_edge: Option<bool>,
    /// The drill passed (its committed outcome).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill_passed: Option<bool>,
    /// Each phase's share of requests served outside the evacuated region,
    /// from the clients' records, within the tolerance of the drill's share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill_shares_as_planned: Option<bool>,
    /// A breach aborted the drill in time, and the clients' requests went
    /// back to the region (from their records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill_aborted_in_time: Option<bool>,
    /// Requests failed by the breach within the lab's stated bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breach_failures_within_bound: Option<bool>,
}

impl Targets {
    /// Whether every target that applies was met: what `--check` enforces.
    pub fn all_met(&self) -> bool {
        self.list().iter().all(|(_, met)| *met)
    }

    /// Name and state of every target that applies, for the table.
    pub fn list(&self) -> Vec<(&'static str, bool)> {
        let all = [
            (
                "no failed http request outside the failed region",
                self.no_failures_outside_failed_region,
            ),
            ("detection under 1000 ms", self.detection_under_1s),
            (
                "a verdict committed on the failed region",
                self.verdict_committed,
            ),
            (
                "the cut-off controller decided nothing",
                self.minority_decided_nothing,
            ),
            ("no extra routing change (no flap)", self.no_extra_flap),
            ("no failed http request at all", self.no_failures),
            ("no acknowledged write lost", self.no_lost_writes),
            (
                "lost writes within the RPO budget (time and size)",
                self.loss_within_budget,
            ),
            (
                "no write taken by a superseded writer (split brain)",
                self.no_split_brain_writes,
            ),
            ("no idempotency key processed twice", self.no_duplicate_keys),
            (
                "writes taken again within 10 s of the fault",
                self.writes_back_within_10s,
            ),
            (
                "nothing failed before the fault",
                self.nothing_failed_before_the_fault,
            ),
            ("no failed write", self.no_failed_writes),
            ("no failover (the writer never moved)", self.no_failover),
            ("every edge answered over HTTPS", self.https_at_every_edge),
            ("the drill passed", self.drill_passed),
            (
                "traffic moved as each drill step said (clients' records)",
                self.drill_shares_as_planned,
            ),
            (
                "the drill aborted within 2 windows + 2 s of the breach and traffic came back",
                self.drill_aborted_in_time,
            ),
            (
                "requests failed by the breach within the bound",
                self.breach_failures_within_bound,
            ),
        ];
        all.into_iter()
            .filter_map(|(name, t)| t.map(|t| (name, t)))
            .collect()
    }
}

/// What the controllers recorded during a run: their audit log (read from
/// any reachable controller at the end) and, for a partition, how many
/// entries the cut-off controller added while it was cut off.
#[derive(Debug, Clone, Default)]
pub struct ControlFacts {
    /// (lab ms, kind, summary, evidence), oldest first.
    pub audit: Vec<(f64, String, String, Vec<String>)>,
    pub fetched: bool,
    pub minority_decisions: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub failed_region: Option<String>,
    /// Which health-check settings the figures come from (the lab's fast
    /// ones, or the product's defaults).
    #[serde(default)]
    pub settings: String,
    pub one_way_delay_ms: u64,
    /// The line a run ends with ([`Report::verdict_line`]): the scenario,
    /// failed HTTP requests, when writes came back, lost writes, targets met.
    #[serde(default)]
    pub summary: String,
    /// HTTP requests the load's clients sent: with the database, payments
    /// are writes and counted apart ([`Tally`]); without it, everything.
    pub requests_total: usize,
    /// Of those, the ones the service itself did not answer without a server error.
    pub requests_failed: usize,
    pub requests_by_client_region: BTreeMap<String, usize>,
    pub failed_by_client_region: BTreeMap<String, usize>,
    /// From the fault until the first surviving edge stopped routing to the failed region.
    pub detection_ms: Option<f64>,
    /// What the clients saw instead: from the fault until the end of the
    /// last request, by a client outside the failed region, that started
    /// after the fault and still paid for it (failed, tried a second edge,
    /// or took longer than one try timeout, so it reached into the failed
    /// region first); 0 when none did. From the clients' records alone
    /// ([`clients_detection`]).
    pub clients_detection_ms: Option<f64>,
    /// From the first failed request's start to the last failed request's end; 0 without failures.
    pub error_window_ms: f64,
    /// The HTTP requests' recovery time (reads and the sample service's
    /// own writes, payments apart): from the fault until their success rate
    /// was back above 99.9 % for 5 s. The writes' is
    /// `writes.write_unavailable_ms`.
    pub rto_ms: Option<f64>,
    /// From the failed region's return until every edge routed to it again.
    pub failback_ms: Option<f64>,
    pub latency_ms: BTreeMap<String, Percentiles>,
    /// Which region's backend served the requests, per phase.
    pub served_by: BTreeMap<String, BTreeMap<String, usize>>,
    pub targets: Targets,
    pub events: Vec<Event>,
    /// Each edge's first-choice regions over time, from its own `/status`.
    pub edge_routing: Vec<RoutingSample>,
    /// Changes of an edge's first-choice regions after its first sample.
    pub edge_route_changes: usize,
    /// Failed health probes each edge counted over the run, by edge region
    /// then backend region (from each edge's `/status` at the end).
    pub probe_failures: BTreeMap<String, BTreeMap<String, u64>>,
    /// From the fault until the controllers committed a verdict on the failed region.
    pub verdict_ms: Option<f64>,
    /// From the fault until the controllers committed a new writer of the
    /// database (from their audit log); `None` without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_ms: Option<f64>,
    /// What that audit entry says (the new writer and its epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_writer: Option<String>,
    /// Committed routing-table changes during the run (from the audit log).
    pub routing_changes: Option<usize>,
    /// Entries the cut-off controller added while cut off (partition only).
    pub minority_decisions: Option<usize>,
    /// Controller leader changes during the run (from the audit log): each
    /// extends every lease by a period, so a needless one delays failovers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_changes: Option<usize>,
    /// Requests that failed before the fault was injected, one line each
    /// (start ms, method, client region, what the client was told).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_before_fault: Vec<String>,
    /// The controllers' audit log of the run, oldest first.
    pub audit: Vec<String>,
    /// Requests per time bucket, for plots.
    pub timeline: Vec<Bucket>,
    pub fault_ms: Option<f64>,
    pub restore_ms: Option<f64>,
    pub end_ms: f64,
    /// The same fault seen by clients that find edges through DNS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_path: Option<crate::dns_report::DnsPathReport>,
    /// The drill of a drill scenario, judged from the clients' records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<crate::drill_report::DrillOutcome>,
    /// What happened to the payments written to PostgreSQL (with the database).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<crate::db_report::WriteReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseFacts>,
    /// Each edge over HTTPS, checked before the load started.
    #[serde(default)]
    pub https: Vec<crate::https::HttpsCheck>,
}

/// The database at the end of a run, as the controllers say.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseFacts {
    pub replication: String,
    pub writer: String,
    pub epoch: u64,
    /// The failover plans the controllers ran, with their steps' durations.
    pub plans: Vec<String>,
}

/// The lab database's RPO budget (`rpo_budget` in its configuration).
pub const RPO_BUDGET_BYTES: u64 = 1024 * 1024;

/// Length of a [`Bucket`] in milliseconds.
pub const BUCKET_MS: f64 = 250.0;

/// HTTP requests and writes that started in one [`BUCKET_MS`] interval,
/// counted as [`Tally`] counts them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    pub t_ms: f64,
    /// HTTP requests that succeeded.
    pub ok: usize,
    /// HTTP requests that failed.
    pub failed: usize,
    /// p99 latency of the successful HTTP requests, 0 without any.
    pub p99_ms: f64,
    /// Writes acknowledged (with the database; 0 without it).
    #[serde(default)]
    pub writes_acked: usize,
    /// Writes not acknowledged.
    #[serde(default)]
    pub writes_failed: usize,
}

/// Groups HTTP `records` and `writes` (payments counted apart, empty
/// without the database) by start time into [`BUCKET_MS`] buckets from 0
/// to `end_ms`.
pub fn timeline(records: &[RequestRecord], writes: &[RequestRecord], end_ms: f64) -> Vec<Bucket> {
    let n = (end_ms / BUCKET_MS).ceil().max(1.0) as usize;
    let bucket = |r: &RequestRecord| ((r.start_ms.max(0.0) / BUCKET_MS) as usize).min(n - 1);
    let mut out: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            t_ms: i as f64 * BUCKET_MS,
            ok: 0,
            failed: 0,
            p99_ms: 0.0,
            writes_acked: 0,
            writes_failed: 0,
        })
        .collect();
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); n];
    for r in records {
        let i = bucket(r);
        if r.ok {
            out[i].ok += 1;
            latencies[i].push(r.latency_ms);
        } else {
            out[i].failed += 1;
        }
    }
    for w in writes {
        let b = &mut out[bucket(w)];
        if write_acked(w) {
            b.writes_acked += 1;
        } else {
            b.writes_failed += 1;
        }
    }
    for (b, l) in out.iter_mut().zip(&mut latencies) {
        b.p99_ms = percentiles(l).p99;
    }
    out
}

/// Whether a write (a payment's record) was acknowledged: the answer named its row.
pub fn write_acked(r: &RequestRecord) -> bool {
    r.payment.as_ref().is_some_and(|p| p.ack.is_some())
}

/// Whether a record is a write, counted apart from the HTTP requests: a
/// payment, when the lab runs the database (`writes_apart`). Without the
/// database the sample service keeps payments in memory and they are
/// HTTP requests like the others.
pub fn is_write(r: &RequestRecord, writes_apart: bool) -> bool {
    writes_apart && r.payment.is_some()
}

/// Counts of a run's records, made the same way for the live line, the
/// timeline and the table: HTTP requests (failed when the service itself
/// did not answer without a server error) and writes (failed when not
/// acknowledged), each apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub requests: usize,
    pub requests_failed: usize,
    pub writes: usize,
    pub writes_failed: usize,
}

impl Tally {
    /// Counts one record.
    pub fn add(&mut self, r: &RequestRecord, writes_apart: bool) {
        if is_write(r, writes_apart) {
            self.writes += 1;
            self.writes_failed += usize::from(!write_acked(r));
        } else {
            self.requests += 1;
            self.requests_failed += usize::from(!r.ok);
        }
    }

    /// The counts of `records`.
    pub fn of(records: &[RequestRecord], writes_apart: bool) -> Tally {
        let mut t = Tally::default();
        for r in records {
            t.add(r, writes_apart);
        }
        t
    }

    /// What was counted since `earlier`.
    pub fn since(&self, earlier: &Tally) -> Tally {
        Tally {
            requests: self.requests - earlier.requests,
            requests_failed: self.requests_failed - earlier.requests_failed,
            writes: self.writes - earlier.writes,
            writes_failed: self.writes_failed - earlier.writes_failed,
        }
    }
}

/// `[ 12.0s]`: lab time as progress lines print it.
pub fn stamp(t: std::time::Duration) -> String {
    format!("[{:>5.1}s]", t.as_secs_f64())
}

/// The live line printed every second while the load runs: the rates over
/// the last `interval` (`delta`), the failures so far (`total`), counted
/// as the table counts them, and where each edge routes.
pub fn progress_line(
    at: std::time::Duration,
    interval: std::time::Duration,
    delta: &Tally,
    total: &Tally,
    writes_apart: bool,
    routes: &BTreeMap<String, Vec<String>>,
) -> String {
    let secs = interval.as_secs_f64().max(1e-3);
    let rate = |n: usize| (n as f64 / secs).round() as usize;
    let mut line = format!(
        "{} http {:>4} req/s, {} failed so far",
        stamp(at),
        rate(delta.requests),
        thousands(total.requests_failed)
    );
    if writes_apart {
        let _ = write!(
            line,
            "; writes {:>3}/s, {} failed so far",
            rate(delta.writes),
            thousands(total.writes_failed)
        );
    }
    let edges: Vec<String> = routes
        .iter()
        .map(|(e, to)| {
            let to = if to.is_empty() {
                "none".to_string()
            } else {
                to.join("+")
            };
            format!("{e}->{to}")
        })
        .collect();
    let _ = write!(line, "; edges route: {}", edges.join(", "));
    line
}

/// The line printed once every client's record is in: the totals the
/// table then shows.
pub fn load_stopped_line(at: std::time::Duration, total: &Tally, writes_apart: bool) -> String {
    let mut line = format!(
        "{} load stopped: http requests {} sent, {} failed",
        stamp(at),
        thousands(total.requests),
        thousands(total.requests_failed)
    );
    if writes_apart {
        let _ = write!(
            line,
            "; writes {} sent, {} acknowledged, {} failed",
            thousands(total.writes),
            thousands(total.writes - total.writes_failed),
            thousands(total.writes_failed)
        );
    }
    line
}

/// Times of the scenario's key moments, ms since time zero.
#[derive(Debug, Clone)]
pub struct Moments {
    /// When the fault began (the first process of a killed region was
    /// signalled): detection and recovery are counted from here.
    pub fault_ms: Option<f64>,
    /// When the fault had fully taken hold (the last process of a killed
    /// region was dead). A request that started between `fault_ms` and this
    /// moment may rightly have been served by the failed region, so the
    /// `during` phase begins here. `None`: the fault took hold at once.
    pub dark_ms: Option<f64>,
    pub restore_ms: Option<f64>,
    pub end_ms: f64,
}

pub struct Inputs<'a> {
    pub scenario: &'a str,
    pub seed: u64,
    pub failed_region: Option<&'a str>,
    pub one_way_delay_ms: u64,
    /// HTTP requests (payments apart when the lab runs the database).
    pub records: &'a [RequestRecord],
    /// Writes: the payments, judged by the write oracle (empty without the database).
    pub writes: &'a [RequestRecord],
    pub routing: &'a [RoutingSample],
    pub moments: Moments,
    pub events: Vec<Event>,
    /// Requests and writes (payments included) that failed before the fault,
    /// one line each.
    pub failed_before_fault: Vec<String>,
}

pub fn build(inputs: Inputs<'_>) -> Report {
    let Inputs {
        scenario,
        seed,
        failed_region,
        one_way_delay_ms,
        records,
        writes,
        routing,
        moments,
        events,
        failed_before_fault,
    } = inputs;
    let mut by_region = BTreeMap::new();
    let mut failed_by_region = BTreeMap::new();
    for r in records {
        *by_region.entry(r.client_region.clone()).or_insert(0) += 1;
        let failed = failed_by_region.entry(r.client_region.clone()).or_insert(0);
        if !r.ok {
            *failed += 1;
        }
    }
    let failed: Vec<&RequestRecord> = records.iter().filter(|r| !r.ok).collect();
    let error_window_ms = match (
        failed.iter().map(|r| r.start_ms).reduce(f64::min),
        failed.iter().map(|r| r.end_ms()).reduce(f64::max),
    ) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let detection_ms = match (moments.fault_ms, failed_region) {
        (Some(fault), Some(region)) => detection(routing, region, fault),
        _ => None,
    };
    let failback_ms = match (moments.restore_ms, failed_region) {
        (Some(restore), Some(region)) => failback(routing, region, restore),
        _ => None,
    };
    let rto_ms = moments
        .fault_ms
        .and_then(|f| rto(records, f, moments.end_ms));

    let phase_of = |r: &RequestRecord| -> &'static str {
        let dark = moments.dark_ms.or(moments.fault_ms);
        match (dark, moments.restore_ms) {
            (Some(f), _) if r.start_ms < f => "before",
            (Some(_), Some(x)) if r.start_ms >= x => "after",
            (Some(_), _) => "during",
            (None, _) => "before",
        }
    };
    let mut latencies: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut served_by: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for phase in ["before", "during", "after"] {
        latencies.insert(phase.to_string(), Vec::new());
        served_by.insert(phase.to_string(), BTreeMap::new());
    }
    for r in records {
        let phase = phase_of(r);
        if r.ok {
            latencies.get_mut(phase).expect("phase").push(r.latency_ms);
        }
        if let Some(s) = &r.served_by {
            *served_by
                .get_mut(phase)
                .expect("phase")
                .entry(s.clone())
                .or_insert(0) += 1;
        }
    }
    let latency_ms = latencies
        .into_iter()
        .map(|(phase, mut v)| (phase, percentiles(&mut v)))
        .collect();

    let outside_failures: usize = failed_by_region
        .iter()
        .filter(|(region, _)| Some(region.as_str()) != failed_region)
        .map(|(_, n)| *n)
        .sum();
    // With a failed region, its own clients may fail and the edges must
    // notice; without one, no HTTP request may fail at all.
    let targets = Targets {
        no_failures_outside_failed_region: failed_region.map(|_| outside_failures == 0),
        detection_under_1s: failed_region.map(|_| detection_ms.is_some_and(|d| d < 1_000.0)),
        no_failures: failed_region.is_none().then_some(failed.is_empty()),
        nothing_failed_before_the_fault: moments.fault_ms.map(|_| failed_before_fault.is_empty()),
        ..Targets::default()
    };
    Report {
        scenario: scenario.to_string(),
        seed,
        failed_region: failed_region.map(str::to_string),
        settings: String::new(),
        one_way_delay_ms,
        summary: String::new(),
        requests_total: records.len(),
        requests_failed: failed.len(),
        requests_by_client_region: by_region,
        failed_by_client_region: failed_by_region,
        detection_ms,
        clients_detection_ms: None,
        error_window_ms,
        rto_ms,
        failback_ms,
        latency_ms,
        served_by,
        targets,
        events,
        edge_route_changes: edge_route_changes(routing),
        edge_routing: routing.to_vec(),
        probe_failures: BTreeMap::new(),
        verdict_ms: None,
        failover_ms: None,
        new_writer: None,
        routing_changes: None,
        leader_changes: None,
        failed_before_fault: failed_before_fault.clone(),
        minority_decisions: None,
        audit: Vec::new(),
        timeline: timeline(records, writes, moments.end_ms),
        fault_ms: moments.fault_ms,
        restore_ms: moments.restore_ms,
        end_ms: moments.end_ms,
        dns_path: None,
        drill: None,
        writes: None,
        database: None,
        https: Vec::new(),
    }
}

/// Changes of first-choice regions seen on reachable edges, not counting
/// each edge's first sample.
fn edge_route_changes(routing: &[RoutingSample]) -> usize {
    let mut last: BTreeMap<&str, &[String]> = BTreeMap::new();
    let mut changes = 0;
    for s in routing.iter().filter(|s| s.reachable) {
        match last.insert(&s.edge_region, &s.serving_regions) {
            Some(prev) if prev != s.serving_regions.as_slice() => changes += 1,
            _ => {}
        }
    }
    changes
}

impl Report {
    /// Adds a drill scenario's drill and the targets that depend on it.
    pub fn add_drill(&mut self, d: crate::drill_report::DrillOutcome, window_ms: f64) {
        match self.scenario.as_str() {
            "evacuation" => {
                self.targets.drill_passed = Some(d.outcome == "passed");
                self.targets.drill_shares_as_planned = Some(d.shares_within_tolerance());
            }
            "evacuation-abort" => {
                // Requests fail during the breach by design: the bound
                // replaces "no failed request".
                self.targets.no_failures = None;
                let in_time = match (d.breach_ms, d.aborted_ms) {
                    (Some(b), Some(a)) => {
                        a - b <= crate::drill_report::abort_deadline_ms(window_ms)
                    }
                    _ => false,
                };
                let back = d
                    .after_share
                    .is_some_and(|s| s <= crate::drill_report::SHARE_TOLERANCE);
                self.targets.drill_aborted_in_time = Some(in_time && back);
                self.targets.breach_failures_within_bound = Some(
                    d.failed_during_breach
                        .is_some_and(|f| f <= crate::drill_report::BREACH_FAILURE_BOUND),
                );
            }
            _ => {}
        }
        self.drill = Some(d);
    }

    /// Adds the write oracle's report and the targets that depend on it.
    pub fn add_writes(&mut self, w: crate::db_report::WriteOutcome, sync: bool) {
        let r = &w.report;
        // A switchover promises zero loss; so does the loss of an agent
        // (its node dies with it and comes back with everything committed).
        let zero_loss = sync
            || matches!(
                self.scenario.as_str(),
                "switchover" | "agent-loss" | "rolling-restart" | "evacuation" | "evacuation-abort"
            );
        if self.scenario == "rolling-restart" {
            self.targets.no_failed_writes = Some(r.failed_writes == 0);
            self.targets.no_failover = Some(w.plans.is_empty());
        }
        self.targets.no_lost_writes = zero_loss.then_some(r.lost_acked_writes == 0);
        // Within what the configuration promises, in time (the writer's rate
        // times the time budget plus an agent round) and in size.
        self.targets.loss_within_budget = (!zero_loss).then_some(
            r.lost_bytes_estimate <= RPO_BUDGET_BYTES
                && r.loss_bound
                    .is_none_or(|bound| r.lost_acked_writes <= bound),
        );
        self.targets.no_split_brain_writes = Some(r.split_brain_writes == 0);
        self.targets.no_duplicate_keys = Some(r.duplicate_keys == 0);
        if matches!(
            self.scenario.as_str(),
            "region-outage" | "partition" | "failback" | "switchover" | "agent-loss"
        ) && self.fault_ms.is_some()
        {
            self.targets.writes_back_within_10s =
                Some(r.write_unavailable_ms.is_some_and(|ms| ms < 10_000.0));
        }
        self.database = Some(DatabaseFacts {
            replication: if sync { "sync" } else { "async" }.into(),
            writer: w.writer,
            epoch: w.epoch,
            plans: w.plans,
        });
        self.writes = Some(w.report);
    }

    /// Adds what the controllers recorded, and the targets that depend on it.
    pub fn add_control(&mut self, facts: ControlFacts) {
        self.audit = facts
            .audit
            .iter()
            .map(|(t, kind, summary, evidence)| {
                let mut line = format!("[{:>6.1}s] {kind}: {summary}", t / 1_000.0);
                if !evidence.is_empty() {
                    line.push_str(" | ");
                    line.push_str(&evidence.join("; "));
                }
                line
            })
            .collect();
        if !facts.fetched {
            return;
        }
        // The control plane naming itself is no change of routing.
        self.routing_changes = Some(
            facts
                .audit
                .iter()
                .filter(|(t, kind, summary, _)| {
                    kind == "routing" && *t >= 0.0 && !summary.contains("control plane identity")
                })
                .count(),
        );
        self.leader_changes = Some(
            facts
                .audit
                .iter()
                .filter(|(t, kind, _, _)| kind == "leader" && *t >= 0.0)
                .count(),
        );
        self.minority_decisions = facts.minority_decisions;
        if let (Some(region), Some(fault)) = (&self.failed_region, self.fault_ms) {
            let prefix = format!("region {region} ");
            self.verdict_ms = facts
                .audit
                .iter()
                .find(|(t, kind, summary, _)| {
                    kind == "verdict"
                        && *t >= fault
                        && summary.starts_with(&prefix)
                        && summary.ends_with("-> down")
                })
                .map(|(t, _, _, _)| t - fault);
            self.targets.verdict_committed = Some(self.verdict_ms.is_some());
        }
        if let Some(fault) = self.fault_ms {
            if let Some((t, _, summary, _)) = facts
                .audit
                .iter()
                .find(|(t, kind, _, _)| kind == "writer" && *t >= fault)
            {
                self.failover_ms = Some(t - fault);
                self.new_writer = Some(summary.clone());
            }
        }
        // (No failed request at all is a target of every scenario without
        // a failed region already: see `build`.)
        match self.scenario.as_str() {
            "partition" => {
                self.targets.minority_decided_nothing = Some(self.minority_decisions == Some(0));
                // Down once, back up once.
                self.targets.no_extra_flap = Some(self.routing_changes == Some(2));
            }
            "flapping" => {
                self.targets.no_extra_flap =
                    Some(self.routing_changes == Some(0) && self.edge_route_changes == 0);
            }
            "controller-loss" => {
                self.targets.no_extra_flap = Some(self.edge_route_changes == 0);
            }
            "rolling-restart" => {
                self.targets.no_extra_flap = Some(self.routing_changes == Some(0));
            }
            _ => {}
        }
    }
}

impl Report {
    /// Sets what the clients saw of the fault ([`clients_detection`]) and
    /// judges the detection target on it, not on the edges' clocks: the
    /// oracle takes the clients' word, not the system's.
    pub fn judge_detection_by_clients(&mut self, clients_detection_ms: Option<f64>) {
        self.clients_detection_ms = clients_detection_ms;
        if self.targets.detection_under_1s.is_some() {
            self.targets.detection_under_1s =
                Some(clients_detection_ms.is_some_and(|d| d < 1_000.0));
        }
    }
}

/// [`Report::clients_detection_ms`] from `records`: clients outside
/// `failed_region`, requests started at or after `fault_ms`; a request
/// slower than `try_timeout_ms` had a try time out on the way. `None`
/// without a fault or a failed region.
pub fn clients_detection(
    records: &[RequestRecord],
    failed_region: Option<&str>,
    fault_ms: Option<f64>,
    try_timeout_ms: f64,
) -> Option<f64> {
    let (region, fault) = (failed_region?, fault_ms?);
    let paid = records
        .iter()
        .filter(|r| r.client_region != region && r.start_ms >= fault)
        .filter(|r| !r.ok || r.edges_tried > 1 || r.latency_ms > try_timeout_ms)
        .map(|r| r.end_ms() - fault)
        .reduce(f64::max);
    Some(paid.unwrap_or(0.0))
}

/// The first moment after the fault at which an edge outside the failed
/// region routed away from it.
fn detection(routing: &[RoutingSample], failed_region: &str, fault_ms: f64) -> Option<f64> {
    routing
        .iter()
        .filter(|s| s.reachable && s.edge_region != failed_region)
        .filter(|s| s.since_ms >= fault_ms)
        .filter(|s| !s.serving_regions.iter().any(|r| r == failed_region))
        .map(|s| s.since_ms - fault_ms)
        .reduce(f64::min)
}

/// The moment after the restore by which every edge routed to the failed
/// region again. An edge already routing there at the restore counts as back.
fn failback(routing: &[RoutingSample], failed_region: &str, restore_ms: f64) -> Option<f64> {
    let serves = |s: &RoutingSample| s.serving_regions.iter().any(|r| r == failed_region);
    let edges: std::collections::BTreeSet<&str> =
        routing.iter().map(|s| s.edge_region.as_str()).collect();
    let mut latest = restore_ms;
    for edge in edges {
        let mine = || routing.iter().filter(move |s| s.edge_region == edge);
        let at_restore = mine()
            .filter(|s| s.since_ms < restore_ms)
            .max_by(|a, b| a.since_ms.total_cmp(&b.since_ms));
        if at_restore.is_some_and(serves) && !mine().any(|s| s.since_ms >= restore_ms && !serves(s))
        {
            continue;
        }
        let back = mine()
            .filter(|s| s.since_ms >= restore_ms && serves(s))
            .map(|s| s.since_ms)
            .reduce(f64::min)?;
        latest = latest.max(back);
    }
    Some(latest - restore_ms)
}

/// The smallest delay after the fault from which the next 5 s of requests
/// succeeded at least 99.9 % of the time. `None` if that never happened
/// before the end of the run.
pub fn rto(records: &[RequestRecord], fault_ms: f64, end_ms: f64) -> Option<f64> {
    if !records.iter().any(|r| !r.ok && r.end_ms() >= fault_ms) {
        return Some(0.0);
    }
    let mut t = fault_ms;
    while t + RTO_WINDOW_MS <= end_ms {
        let window: Vec<&RequestRecord> = records
            .iter()
            .filter(|r| r.start_ms >= t && r.start_ms < t + RTO_WINDOW_MS)
            .collect();
        if !window.is_empty() {
            let ok = window.iter().filter(|r| r.ok).count();
            if ok as f64 / window.len() as f64 >= RTO_SUCCESS {
                return Some(t - fault_ms);
            }
        }
        t += RTO_STEP_MS;
    }
    None
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), fmt_ms)
}

/// One line of the table: a label, a figure, and what the figure means.
fn explained(out: &mut String, label: &str, figure: &str, meaning: &str) {
    let _ = writeln!(out, "{label:<19} {figure:<12} {meaning}");
}

impl Report {
    /// The line a run ends with, to be quoted as it is: for example
    /// `region-outage: 0 of 4,068 http requests failed; writes back after
    /// 6.2 s; 0 acknowledged writes lost; 9 of 9 targets met`. Its figures
    /// are the table's.
    pub fn verdict_line(&self) -> String {
        let mut parts = vec![format!(
            "{}: {} of {} http requests failed",
            self.scenario,
            thousands(self.requests_failed),
            thousands(self.requests_total)
        )];
        match &self.writes {
            Some(w) => {
                parts.push(match (w.last_failed_write_ms, w.write_unavailable_ms) {
                    (None, _) => "no write failed after the fault".to_string(),
                    (Some(_), Some(back)) => format!("writes back after {:.1} s", back / 1_000.0),
                    (Some(_), None) => "writes not back by the end of the run".to_string(),
                });
                parts.push(format!(
                    "{} acknowledged write{} lost",
                    thousands(w.lost_acked_writes),
                    if w.lost_acked_writes == 1 { "" } else { "s" }
                ));
            }
            None => parts.push("no database".to_string()),
        }
        let targets = self.targets.list();
        let met = targets.iter().filter(|(_, met)| *met).count();
        let missed: Vec<&str> = targets
            .iter()
            .filter(|(_, met)| !met)
            .map(|(name, _)| *name)
            .collect();
        parts.push(if missed.is_empty() {
            format!("{met} of {} targets met", targets.len())
        } else {
            format!(
                "{met} of {} targets met (MISSED: {})",
                targets.len(),
                missed.join(", ")
            )
        });
        parts.join("; ")
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario            {} (seed {})",
            self.scenario, self.seed
        );
        if let Some(r) = &self.failed_region {
            let _ = writeln!(out, "failed region       {r}");
        }
        if !self.settings.is_empty() {
            let _ = writeln!(out, "settings            {}", self.settings);
        }
        let _ = writeln!(
            out,
            "http requests       {} sent, {} failed ({})",
            thousands(self.requests_total),
            thousands(self.requests_failed),
            if self.writes.is_some() {
                "GET and PUT; the payments are the writes below"
            } else {
                "payments included: no database"
            }
        );
        for (region, total) in &self.requests_by_client_region {
            let failed = self
                .failed_by_client_region
                .get(region)
                .copied()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "  clients {region:<11} {} sent, {} failed",
                thousands(*total),
                thousands(failed)
            );
        }
        if let Some(w) = &self.writes {
            let _ = writeln!(
                out,
                "writes              {} sent, {} acknowledged, {} failed (POST /payments through the writer proxies)",
                thousands(w.write_attempts),
                thousands(w.acked_writes),
                thousands(w.failed_writes)
            );
        }
        for (label, figure, meaning) in self.times() {
            explained(&mut out, label, &figure, &meaning);
        }
        let _ = writeln!(
            out,
            "latency (ms)        phase    count     p50     p99     max"
        );
        for phase in ["before", "during", "after"] {
            if let Some(p) = self.latency_ms.get(phase) {
                let _ = writeln!(
                    out,
                    "                    {phase:<7} {:>6} {:>7.1} {:>7.1} {:>7.1}",
                    p.count, p.p50, p.p99, p.max
                );
            }
        }
        let _ = writeln!(out, "served by           (phase: region=requests)");
        for (phase, regions) in &self.served_by {
            let list: Vec<String> = regions.iter().map(|(r, n)| format!("{r}={n}")).collect();
            let _ = writeln!(out, "  {phase:<17} {}", list.join(" "));
        }
        for line in &self.failed_before_fault {
            let _ = writeln!(out, "failed before fault {line}");
        }
        if self.routing_changes.is_some() || !self.audit.is_empty() {
            let _ = writeln!(
                out,
                "routing changes     {} committed, {} seen on edges",
                self.routing_changes
                    .map_or("n/a".to_string(), |n| n.to_string()),
                self.edge_route_changes
            );
            if self.scenario == "flapping" {
                let seen = self
                    .probe_failures
                    .iter()
                    .map(|(edge, by)| {
                        let by = by
                            .iter()
                            .map(|(r, n)| format!("{r}={n}"))
                            .collect::<Vec<_>>()
                            .join(" ");
                        format!("{edge} edge: {by}")
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let _ = writeln!(out, "probes failed       {seen}");
            }
            if let Some(n) = self.minority_decisions {
                let _ = writeln!(out, "minority decisions  {n}");
            }
            if let Some(n) = self.leader_changes {
                let _ = writeln!(
                    out,
                    "leader changes      {n} (each extends every lease by a period)"
                );
            }
            let _ = writeln!(out, "audit log of the run:");
            for line in &self.audit {
                let _ = writeln!(out, "  {line}");
            }
        }
        if let (Some(w), Some(d)) = (&self.writes, &self.database) {
            let _ = writeln!(
                out,
                "database            {} replication; writer at the end: {} (epoch {})",
                d.replication, d.writer, d.epoch
            );
            for p in &d.plans {
                let _ = writeln!(out, "  {p}");
            }
            out.push_str(&w.table());
        }
        if let Some(drill) = &self.drill {
            out.push_str(&drill.render());
        }
        if let Some(dns) = &self.dns_path {
            out.push_str(&dns.table());
        }
        let mark = |ok: bool| if ok { "met" } else { "MISSED" };
        for (name, met) in self.targets.list() {
            let _ = writeln!(out, "target: {name}: {}", mark(met));
        }
        out
    }

    /// The times of the run as the table prints them, each a label, its
    /// figure and what it measures: only those that apply to the scenario.
    /// The HTML page shows these same rows.
    pub fn times(&self) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        let region = self.failed_region.as_deref();
        let from = if self.scenario == "switchover" {
            "switchover start"
        } else {
            "fault"
        };
        if let Some(region) = region {
            out.push((
                "detection",
                opt_ms(self.detection_ms),
                format!(
                    "{from} until the first surviving edge stopped routing to {region} (that edge's clock); {}",
                    match self.clients_detection_ms {
                        Some(paid) if paid > 0.0 => format!(
                            "clients outside {region} paid for the fault until {}",
                            fmt_ms(paid)
                        ),
                        Some(_) => format!("no client outside {region} paid for it"),
                        None => "what clients paid for it is unknown".to_string(),
                    }
                ),
            ));
            if self.routing_changes.is_some() {
                out.push((
                    "verdict",
                    opt_ms(self.verdict_ms),
                    format!(
                        "{from} until the controllers committed {region} down (probes failing from a majority of vantage points)"
                    ),
                ));
            }
        }
        if self.writes.is_some() {
            out.push((
                "failover",
                opt_ms(self.failover_ms),
                format!(
                    "{from} until the controllers committed a new writer{}",
                    self.new_writer
                        .as_ref()
                        .map_or(String::new(), |w| format!(" ({w})"))
                ),
            ));
        }
        if self.fault_ms.is_some() {
            out.push((
                "rto, http requests",
                opt_ms(self.rto_ms),
                format!(
                    "{from} until http requests succeeded 99.9% of the time over 5 s; error window {} (first failed http request to last)",
                    fmt_ms(self.error_window_ms)
                ),
            ));
        }
        if let Some(w) = &self.writes {
            if self.fault_ms.is_some() {
                out.push((
                    "rto, writes",
                    opt_ms(w.write_unavailable_ms),
                    format!(
                        "{from} until a write sent after it was acknowledged (by a new writer when there is one); the last failed write ended {} after it",
                        opt_ms(w.last_failed_write_ms)
                    ),
                ));
            }
        }
        if let (Some(region), Some(_)) = (region, self.restore_ms) {
            out.push((
                "failback",
                opt_ms(self.failback_ms),
                format!("{region}'s restart until every edge routed to it again"),
            ));
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn every_listed_target_counts_in_all_met() {
        let mut t = Targets {
            no_failures_outside_failed_region: Some(true),
            detection_under_1s: Some(true),
            verdict_committed: Some(true),
            minority_decided_nothing: Some(true),
            no_extra_flap: Some(true),
            no_failures: Some(true),
            no_lost_writes: Some(true),
            loss_within_budget: Some(true),
            no_split_brain_writes: Some(true),
            no_duplicate_keys: Some(true),
            writes_back_within_10s: Some(true),
            nothing_failed_before_the_fault: Some(true),
            no_failed_writes: Some(true),
            no_failover: Some(true),
            https_at_every_edge: Some(true),
            drill_passed: Some(true),
            drill_shares_as_planned: Some(true),
            drill_aborted_in_time: Some(true),
            breach_failures_within_bound: Some(true),
        };
        assert!(t.all_met());
        let n = t.list().len();
        for k in 0..n {
            let mut broken = t.clone();
            match k {
                0 => broken.no_failures_outside_failed_region = Some(false),
                1 => broken.detection_under_1s = Some(false),
                2 => broken.verdict_committed = Some(false),
                3 => broken.minority_decided_nothing = Some(false),
                4 => broken.no_extra_flap = Some(false),
                5 => broken.no_failures = Some(false),
                6 => broken.no_lost_writes = Some(false),
                7 => broken.loss_within_budget = Some(false),
                8 => broken.no_split_brain_writes = Some(false),
                9 => broken.no_duplicate_keys = Some(false),
                10 => broken.writes_back_within_10s = Some(false),
                11 => broken.nothing_failed_before_the_fault = Some(false),
                12 => broken.no_failed_writes = Some(false),
                13 => broken.no_failover = Some(false),
                14 => broken.https_at_every_edge = Some(false),
                15 => broken.drill_passed = Some(false),
                16 => broken.drill_shares_as_planned = Some(false),
                17 => broken.drill_aborted_in_time = Some(false),
                _ => broken.breach_failures_within_bound = Some(false),
            }
            assert!(
                !broken.all_met(),
                "target {k} ({}) is not checked",
                t.list()[k].0
            );
            assert_eq!(broken.list().iter().filter(|(_, met)| !met).count(), 1);
        }
        t.no_split_brain_writes = None;
        assert!(t.all_met(), "a target that does not apply is not missed");
    }

    fn rec(start_ms: f64, latency_ms: f64, region: &str, ok: bool) -> RequestRecord {
        RequestRecord {
            start_ms,
            latency_ms,
            client_region: region.to_string(),
            method: "GET",
            status: ok.then_some(200),
            ok,
            edge_region: None,
            served_by: Some("us-east".into()),
            edges_tried: 1,
            error: None,
            payment: None,
        }
    }

    fn sample(edge: &str, serving: &str, since_ms: f64) -> RoutingSample {
        RoutingSample {
            edge_region: edge.into(),
            serving_regions: vec![serving.into()],
            since_ms,
            reachable: true,
        }
    }

    fn inputs<'a>(records: &'a [RequestRecord], routing: &'a [RoutingSample]) -> Inputs<'a> {
        Inputs {
            scenario: "region-outage",
            seed: 1,
            failed_region: Some("us-east"),
            one_way_delay_ms: 35,
            records,
            writes: &[],
            routing,
            moments: Moments {
                fault_ms: Some(10_000.0),
                dark_ms: None,
                restore_ms: Some(20_000.0),
                end_ms: 30_000.0,
            },
            events: Vec::new(),
            failed_before_fault: Vec::new(),
        }
    }

    #[test]
    fn counts_failures_per_client_region_and_error_window() {
        let mut records: Vec<_> = (0..300)
            .map(|i| rec(i as f64 * 100.0, 5.0, "us-west", true))
            .collect();
        records.push(rec(10_050.0, 1_000.0, "us-east", false));
        records.push(rec(12_000.0, 500.0, "us-east", false));
        let r = build(inputs(&records, &[]));
        assert_eq!(r.requests_total, 302);
        assert_eq!(r.requests_failed, 2);
        assert_eq!(r.failed_by_client_region["us-east"], 2);
        assert_eq!(r.failed_by_client_region["us-west"], 0);
        assert_eq!(r.error_window_ms, 12_500.0 - 10_050.0);
        assert_eq!(r.targets.no_failures_outside_failed_region, Some(true));
    }

    #[test]
    fn a_failure_outside_the_failed_region_misses_the_target() {
        let records = vec![rec(10_100.0, 5.0, "us-west", false)];
        let r = build(inputs(&records, &[]));
        assert_eq!(r.targets.no_failures_outside_failed_region, Some(false));
        assert!(!r.targets.all_met());
    }

    #[test]
    fn detection_uses_the_first_surviving_edge_change_after_the_fault() {
        let routing = vec![
            sample("us-west", "us-east", 0.0),
            // The failed region's own edge does not count.
            sample("us-east", "us-west", 10_100.0),
            sample("us-west", "us-west", 10_640.0),
            sample("us-west", "us-east", 21_500.0),
            sample("us-east", "us-east", 20_300.0),
        ];
        let r = build(inputs(&[], &routing));
        assert_eq!(r.detection_ms, Some(640.0));
        assert_eq!(r.targets.detection_under_1s, Some(true));
        assert_eq!(r.failback_ms, Some(1_500.0));
    }

    #[test]
    fn clients_detection_is_the_last_outside_request_that_paid_for_the_fault() {
        let mut slow = rec(10_200.0, 450.0, "us-west", true);
        slow.served_by = Some("us-west".into());
        let mut second_edge = rec(10_500.0, 40.0, "us-west", true);
        second_edge.edges_tried = 2;
        let records = vec![
            // Before the fault, and inside the failed region: not counted.
            rec(9_000.0, 900.0, "us-west", false),
            rec(12_000.0, 900.0, "us-east", false),
            slow,
            second_edge,
            rec(10_700.0, 40.0, "us-west", true),
        ];
        let d = clients_detection(&records, Some("us-east"), Some(10_000.0), 300.0);
        assert_eq!(d, Some(650.0));
        let calm = [rec(10_700.0, 40.0, "us-west", true)];
        assert_eq!(
            clients_detection(&calm, Some("us-east"), Some(10_000.0), 300.0),
            Some(0.0)
        );
        assert_eq!(
            clients_detection(&records, None, Some(10_000.0), 300.0),
            None
        );
    }

    #[test]
    fn an_unreachable_edge_is_not_a_detection() {
        let mut dark = sample("us-west", "us-east", 10_200.0);
        dark.serving_regions.clear();
        dark.reachable = false;
        let routing = vec![sample("us-west", "us-east", 0.0), dark];
        assert_eq!(build(inputs(&[], &routing)).detection_ms, None);
    }

    #[test]
    fn no_detection_misses_the_target() {
        let routing = vec![sample("us-west", "us-east", 0.0)];
        let r = build(inputs(&[], &routing));
        assert_eq!(r.detection_ms, None);
        assert_eq!(r.targets.detection_under_1s, Some(false));
    }

    #[test]
    fn rto_is_when_success_returns_above_the_slo_for_5s() {
        // 100 requests per second; failures from 10.0 s to 12.0 s.
        let records: Vec<_> = (0..3000)
            .map(|i| {
                let t = i as f64 * 10.0;
                rec(t, 5.0, "us-east", !(10_000.0..12_000.0).contains(&t))
            })
            .collect();
        let r = rto(&records, 10_000.0, 30_000.0).unwrap();
        assert!((2_000.0..=2_100.0).contains(&r), "rto {r}");
        // No failures after the fault: zero.
        let clean: Vec<_> = (0..100)
            .map(|i| rec(i as f64 * 10.0, 5.0, "x", true))
            .collect();
        assert_eq!(rto(&clean, 100.0, 30_000.0), Some(0.0));
        // Never recovered before the end.
        let broken: Vec<_> = (0..100)
            .map(|i| rec(i as f64 * 100.0, 5.0, "x", false))
            .collect();
        assert_eq!(rto(&broken, 0.0, 10_000.0), None);
    }

    #[test]
    fn timeline_buckets_count_every_request() {
        let records = vec![
            rec(10.0, 5.0, "a", true),
            rec(260.0, 9.0, "a", false),
            rec(270.0, 7.0, "a", true),
            rec(999.0, 1.0, "a", true),
        ];
        let t = timeline(&records, &[], 1_000.0);
        assert_eq!(t.len(), 4);
        assert_eq!((t[0].ok, t[0].failed), (1, 0));
        assert_eq!((t[1].ok, t[1].failed, t[1].p99_ms), (1, 1, 7.0));
        assert_eq!(t[3].t_ms, 750.0);
        assert_eq!(t.iter().map(|b| b.ok + b.failed).sum::<usize>(), 4);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&mut v);
        assert_eq!((p.count, p.p50, p.p99, p.max), (100, 50.0, 99.0, 100.0));
        assert_eq!(percentiles(&mut []).count, 0);
    }

    #[test]
    fn phases_split_latency_and_served_by() {
        let records = vec![
            rec(1_000.0, 3.0, "us-west", true),
            rec(15_000.0, 80.0, "us-west", true),
            rec(25_000.0, 4.0, "us-west", true),
            rec(25_100.0, 6.0, "us-west", false),
        ];
        let r = build(inputs(&records, &[]));
        assert_eq!(r.latency_ms["before"].count, 1);
        assert_eq!(r.latency_ms["during"].p50, 80.0);
        // Failed requests carry no latency.
        assert_eq!(r.latency_ms["after"].count, 1);
        assert_eq!(r.served_by["during"]["us-east"], 1);
    }

    /// A region takes a few milliseconds to kill, process by process; a
    /// request that started meanwhile and was answered by the dying region
    /// belongs before the outage, not to it (seed 2 of the region-outage lab
    /// once showed us-east serving "during" the outage this way).
    #[test]
    fn a_request_answered_while_the_region_was_being_killed_is_not_during_the_outage() {
        let records = vec![rec(10_004.0, 3.0, "us-west", true)];
        let mut i = inputs(&records, &[]);
        i.moments.dark_ms = Some(10_020.0);
        let r = build(i);
        assert!(r.served_by["during"].is_empty(), "{:?}", r.served_by);
        assert_eq!(r.served_by["before"]["us-east"], 1);
    }

    /// A payment's record: acknowledged by `node` or not.
    fn payment(start_ms: f64, region: &str, acked_by: Option<&str>) -> RequestRecord {
        use crate::load::{PaymentAck, PaymentRecord};
        RequestRecord {
            method: "POST",
            payment: Some(PaymentRecord {
                key: format!("k{start_ms}"),
                ack: acked_by.map(|node| PaymentAck {
                    id: start_ms as i64,
                    node: node.into(),
                    timeline: if node == "us-east" { "1" } else { "2" }.into(),
                    written_at_ms: 0,
                    replay: false,
                }),
            }),
            // An edge answering 503 for a payment is no acknowledgement,
            // and so is a 4xx the service answered.
            status: Some(if acked_by.is_some() { 201 } else { 503 }),
            ok: acked_by.is_some(),
            ..rec(start_ms, 30.0, region, true)
        }
    }

    /// A region-outage run with the database: HTTP requests all served,
    /// payments failing while the writer moves, then the table's inputs.
    pub(crate) fn outage_with_writes() -> (Vec<RequestRecord>, Report) {
        let mut all: Vec<RequestRecord> = (0..300)
            .map(|i| rec(i as f64 * 100.0, 5.0, "us-west", true))
            .collect();
        all.push(rec(10_200.0, 900.0, "us-east", false));
        for i in 0..30 {
            let t = i as f64 * 1_000.0 + 50.0;
            let by = match t {
                t if t < 10_000.0 => Some("us-east"),
                t if t < 16_000.0 => None,
                _ => Some("us-west"),
            };
            all.push(payment(t, "us-west", by));
        }
        let (writes, records): (Vec<_>, Vec<_>) =
            all.iter().cloned().partition(|r| is_write(r, true));
        let routing = [
            sample("us-west", "us-east", 0.0),
            sample("us-west", "us-west", 10_240.0),
            sample("us-west", "us-east", 21_000.0),
        ];
        let mut i = inputs(&records, &routing);
        i.writes = &writes;
        let mut report = build(i);
        let (acked, attempts) = crate::db_report::writes_from_records(&writes);
        let rows: Vec<crate::db_report::Row> = acked
            .iter()
            .map(|a| crate::db_report::Row {
                id: a.id,
                key: a.key.clone(),
                node: a.node.clone(),
                written_at_ms: 0,
            })
            .collect();
        let w = crate::db_report::build(crate::db_report::WriteInputs {
            acked: &acked,
            attempts: &attempts,
            nodes: &[crate::db_report::NodeRows {
                node: "us-west".into(),
                rows: Ok(rows),
            }],
            fault_at: Some(std::time::Duration::from_secs(10)),
            rpo_time: None,
            agent_round: std::time::Duration::ZERO,
        });
        report.add_writes(
            crate::db_report::WriteOutcome {
                report: w,
                writer: "us-west".into(),
                epoch: 2,
                plans: vec![
                    "plan 1 us-east -> us-west (done): wait-lease 2588 ms, promote 831 ms".into(),
                ],
            },
            true,
        );
        report.add_control(ControlFacts {
            audit: vec![
                (
                    12_700.0,
                    "verdict".into(),
                    "region us-east up -> down".into(),
                    vec![],
                ),
                (
                    15_900.0,
                    "writer".into(),
                    "payments: writer is us-west in epoch 2".into(),
                    vec![],
                ),
            ],
            fetched: true,
            minority_decisions: None,
        });
        (all, report)
    }

    /// Broke when the live line counted payments among the failed requests
    /// ("113 failed so far") while the table left them out ("0 failed"):
    /// both count HTTP requests and writes apart, the same way.
    #[test]
    fn the_live_line_and_the_table_count_requests_and_writes_the_same_way() {
        let (all, report) = outage_with_writes();
        let total = Tally::of(&all, true);
        assert_eq!(
            (total.requests, total.requests_failed),
            (report.requests_total, report.requests_failed)
        );
        let w = report.writes.as_ref().unwrap();
        assert_eq!(
            (total.writes, total.writes_failed),
            (w.write_attempts, w.failed_writes)
        );
        let table = report.table();
        let stopped = load_stopped_line(std::time::Duration::from_secs(30), &total, true);
        assert!(
            stopped.ends_with(
                "http requests 301 sent, 1 failed; writes 30 sent, 24 acknowledged, 6 failed"
            ),
            "{stopped}"
        );
        assert!(
            table.contains("http requests       301 sent, 1 failed"),
            "{table}"
        );
        assert!(
            table.contains("writes              30 sent, 24 acknowledged, 6 failed"),
            "{table}"
        );
        let live = progress_line(
            std::time::Duration::from_secs(14),
            std::time::Duration::from_secs(1),
            &Tally {
                requests: 10,
                requests_failed: 0,
                writes: 1,
                writes_failed: 1,
            },
            &Tally {
                requests: 150,
                requests_failed: 1,
                writes: 14,
                writes_failed: 5,
            },
            true,
            &BTreeMap::from([("us-west".to_string(), vec!["us-west".to_string()])]),
        );
        assert_eq!(
            live,
            "[ 14.0s] http   10 req/s, 1 failed so far; writes   1/s, 5 failed so far; edges route: us-west->us-west"
        );
        // The timeline counts them apart too.
        let buckets = &report.timeline;
        assert_eq!(buckets.iter().map(|b| b.ok + b.failed).sum::<usize>(), 301);
        assert_eq!(buckets.iter().map(|b| b.writes_acked).sum::<usize>(), 24);
        assert_eq!(buckets.iter().map(|b| b.writes_failed).sum::<usize>(), 6);
        // Without the database, payments are HTTP requests like the others.
        assert_eq!(Tally::of(&all, false).requests, all.len());
    }

    /// Broke when `rto 0 ms` stood beside `write unavailable 6203 ms` with
    /// nothing saying the first covered HTTP requests only: each time is
    /// labelled and explained on one line.
    #[test]
    fn each_time_is_labelled_and_explained_on_one_line() {
        let (_, report) = outage_with_writes();
        let table = report.table();
        let line = |label: &str| {
            let found: Vec<&str> = table
                .lines()
                .filter(|l| l.starts_with(&format!("{label:<19} ")))
                .collect();
            assert_eq!(found.len(), 1, "{label} in\n{table}");
            found[0].to_string()
        };
        assert!(line("detection")
            .contains("fault until the first surviving edge stopped routing to us-east"));
        assert!(
            line("verdict").contains("2,700 ms")
                && line("verdict").contains("committed us-east down")
        );
        assert!(
            line("failover").contains("5,900 ms")
                && line("failover").contains("writer is us-west in epoch 2")
        );
        let http = line("rto, http requests");
        assert!(
            http.contains("http requests succeeded 99.9% of the time over 5 s"),
            "{http}"
        );
        let writes = line("rto, writes");
        assert!(
            writes.contains("6,") && writes.contains("a write sent after it was acknowledged"),
            "{writes}"
        );
        assert!(line("failback").contains("us-east's restart until every edge routed to it again"));
        assert!(!table.contains("\nrto "), "an unlabelled rto:\n{table}");
    }

    /// Broke when a run ended with a table and no line to quote: the
    /// verdict line's figures are the table's.
    #[test]
    fn every_run_ends_with_a_verdict_line_whose_figures_are_the_tables() {
        let (_, mut report) = outage_with_writes();
        report.targets.https_at_every_edge = Some(true);
        let w = report.writes.as_ref().unwrap();
        let back = w.write_unavailable_ms.unwrap();
        let line = report.verdict_line();
        let n = report.targets.list().len();
        assert_eq!(
            line,
            format!(
                "region-outage: 1 of 301 http requests failed; writes back after {:.1} s; 0 acknowledged writes lost; {n} of {n} targets met",
                back / 1_000.0
            )
        );
        report.targets.detection_under_1s = Some(false);
        let missed = report.verdict_line();
        assert!(
            missed.ends_with(&format!(
                "{} of {n} targets met (MISSED: detection under 1000 ms)",
                n - 1
            )),
            "{missed}"
        );
        let table = report.table();
        assert!(
            table.contains("target: detection under 1000 ms: MISSED"),
            "{table}"
        );
        assert_eq!(
            table.lines().filter(|l| l.starts_with("target: ")).count(),
            n,
            "every counted target is printed:\n{table}"
        );
    }

    /// Broke when the detection target took the edges' word: an edge can
    /// route away from the dead region and back (or clients can pay for it
    /// some other way) while its first change looks fast.
    #[test]
    fn the_detection_target_is_judged_on_what_the_clients_paid() {
        let (_, mut report) = outage_with_writes();
        report.detection_ms = Some(250.0);
        report.targets.detection_under_1s = Some(true);
        report.judge_detection_by_clients(Some(4_413.0));
        assert_eq!(report.targets.detection_under_1s, Some(false));
        report.judge_detection_by_clients(Some(558.0));
        assert_eq!(report.targets.detection_under_1s, Some(true));
        report.judge_detection_by_clients(None);
        assert_eq!(report.targets.detection_under_1s, Some(false));
        // No failed region, no detection target to judge.
        report.targets.detection_under_1s = None;
        report.judge_detection_by_clients(Some(10.0));
        assert_eq!(report.targets.detection_under_1s, None);
    }

    /// Broke when `switchover` printed `detection under 1000 ms: met`
    /// beside `detection n/a`: a scenario without a failed region lists no
    /// target or time about one.
    #[test]
    fn a_scenario_without_a_failed_region_lists_no_detection() {
        let records: Vec<_> = (0..100)
            .map(|i| rec(i as f64 * 100.0, 5.0, "us-west", true))
            .collect();
        let mut i = inputs(&records, &[]);
        i.scenario = "switchover";
        i.failed_region = None;
        let r = build(i);
        let names: Vec<&str> = r.targets.list().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "no failed http request at all",
                "nothing failed before the fault"
            ]
        );
        let table = r.table();
        for absent in [
            "detection",
            "verdict ",
            "failback",
            "outside the failed region",
        ] {
            assert!(!table.contains(absent), "{absent:?} in\n{table}");
        }
        assert!(table.contains("rto, http requests  0 ms"), "{table}");
        assert!(r.targets.all_met());
    }
}

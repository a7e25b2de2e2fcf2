//! Failover plans of database clusters (DESIGN.md invariants 1 and 2), as
//! part of the replicated control state.
//!
//! Each cluster has a writer (the region whose node takes writes, and the
//! epoch it holds) and at most one active [`Plan`]. A plan moves a cluster's
//! writer to another region step by step; every step is a committed command,
//! so a plan interrupted by a controller leader change resumes from its last
//! committed step on the next leader:
//!
//! - `Fence` (switchover only): the old primary's agent fences its node and
//!   reports the WAL position it stopped at; its lease is released.
//! - `CatchUp` (switchover only): the target's agent reports once it has
//!   replayed up to that position, so nothing is lost.
//! - `WaitLease`: the leader grants the target a lease in a new epoch, which
//!   the lease table allows only after the old lease surely expired (or was
//!   released).
//! - `Promote`: the target's agent promotes its node and reports; the writer
//!   becomes the target in the new epoch.
//! - `ScaleHook` (when configured): the target's agent runs the hook.
//!
//! An automatic plan starts only when the writer's region is down and the
//! last known replication lag is within the cluster's RPO budget; an
//! operator can force one, which is recorded. [`leader_action`] is the pure
//! decision the controller's leader takes every tick.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lease::LeaseTable;

/// What the control state knows of a cluster from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub sync: bool,
    pub rpo_budget: u64,
    /// Regions that have a node, in configuration order.
    pub regions: Vec<String>,
    pub primary: String,
    pub scale_hook: bool,
    #[serde(with = "crate::units::serde_ms")]
    pub step_timeout: Duration,
}

/// The region whose node takes writes, and its epoch (0 before the first lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    pub region: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanKind {
    /// Started by the leader on a region-down verdict.
    Automatic,
    /// Started by an operator, skipping the RPO gate.
    Forced { actor: String },
    /// Planned switchover: fence, catch up, then switch with zero loss.
    Switchover { actor: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Step {
    Fence,
    CatchUp,
    WaitLease,
    Promote,
    ScaleHook,
    Done,
    Failed,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Fence => "fence",
            Step::CatchUp => "catch-up",
            Step::WaitLease => "wait-lease",
            Step::Promote => "promote",
            Step::ScaleHook => "scale-hook",
            Step::Done => "done",
            Step::Failed => "failed",
        }
    }
}

/// A finished step, with its timing and evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    #[serde(with = "crate::units::serde_ms")]
    pub started_at: Duration,
    #[serde(with = "crate::units::serde_ms")]
    pub finished_at: Duration,
    pub attempts: u32,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: u64,
    pub kind: PlanKind,
    pub from: String,
    pub to: String,
    pub step: Step,
    #[serde(with = "crate::units::serde_ms")]
    pub started_at: Duration,
    #[serde(with = "crate::units::serde_ms")]
    pub step_started_at: Duration,
    /// Attempts of the current step (a timed-out step is tried again).
    pub attempts: u32,
    /// The lag the plan was started with (evidence of the RPO gate).
    pub lag_bytes: Option<u64>,
    /// Switchover: the WAL position the old primary stopped at.
    pub fence_lsn: Option<u64>,
    /// The epoch granted to the target.
    pub epoch: Option<u64>,
    /// The lease the grant superseded: holder, epoch and expiry (the
    /// evidence that the old writer's time was up; the lab's oracle counts
    /// writes accepted after it).
    #[serde(default)]
    pub previous_lease: Option<(String, u64, u64)>,
    pub history: Vec<StepRecord>,
}

impl Plan {
    pub fn active(&self) -> bool {
        !matches!(self.step, Step::Done | Step::Failed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub spec: ClusterSpec,
    pub writer: Writer,
    pub plan: Option<Plan>,
    /// The last reason an automatic promotion was refused (audited once per reason).
    pub refused: Option<String>,
    plans_started: u64,
    /// Finished plans, oldest first (the last [`KEEP_PLANS`]).
    #[serde(default)]
    pub past: Vec<Plan>,
}

/// Finished plans kept in the state.
pub const KEEP_PLANS: usize = 16;

/// Attempts a step gets before its plan fails.
pub const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum FailoverError {
    #[error("unknown database cluster \"{0}\"")]
    UnknownCluster(String),
    #[error("cluster {cluster} has no node in region \"{region}\"")]
    NoNode { cluster: String, region: String },
    #[error("region {region} already holds the writer of cluster {cluster}")]
    AlreadyWriter { cluster: String, region: String },
    #[error("cluster {cluster} has a plan in progress (plan {id}, step {step})")]
    PlanInProgress {
        cluster: String,
        id: u64,
        step: String,
    },
    #[error("{0}")]
    Refused(String),
}

/// An audit line the caller records.
pub type Note = (&'static str, String, Vec<String>);

impl ClusterState {
    pub fn new(spec: ClusterSpec) -> ClusterState {
        ClusterState {
            writer: Writer {
                region: spec.primary.clone(),
                epoch: 0,
            },
            spec,
            plan: None,
            refused: None,
            plans_started: 0,
            past: Vec::new(),
        }
    }

    pub fn active_plan(&self) -> Option<&Plan> {
        self.plan.as_ref().filter(|p| p.active())
    }

    /// Whether `holder` may take a lease outside a grant by a plan: the
    /// writer when no plan runs, or a plan's target while it promotes.
    pub fn may_acquire(&self, holder: &str) -> bool {
        match self.active_plan() {
            None => holder == self.writer.region,
            Some(p) => p.step == Step::Promote && p.to == holder,
        }
    }

    /// A lease was granted to `holder` in `epoch` (by acquisition).
    pub fn on_lease(&mut self, holder: &str, epoch: u64) {
        match self.plan.as_mut().filter(|p| p.active()) {
            Some(p) if p.to == holder => p.epoch = Some(epoch),
            _ if holder == self.writer.region => self.writer.epoch = epoch,
            _ => {}
        }
    }

    /// Starts a plan moving the writer to `to`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        cluster: &str,
        to: &str,
        kind: PlanKind,
        lag_bytes: Option<u64>,
        writer_down: bool,
        evidence: Vec<String>,
        at: Duration,
        notes: &mut Vec<Note>,
    ) -> Result<u64, FailoverError> {
        if !self.spec.regions.iter().any(|r| r == to) {
            return Err(FailoverError::NoNode {
                cluster: cluster.into(),
                region: to.into(),
            });
        }
        if let Some(p) = self.active_plan() {
            return Err(FailoverError::PlanInProgress {
                cluster: cluster.into(),
                id: p.id,
                step: p.step.as_str().into(),
            });
        }
        if to == self.writer.region {
            return Err(FailoverError::AlreadyWriter {
                cluster: cluster.into(),
                region: to.into(),
            });
        }
        let lag = lag_bytes.map_or("unknown".to_string(), |l| format!("{l} bytes"));
        let first = match &kind {
            PlanKind::Automatic => {
                let refusal = if !writer_down {
                    Some(format!(
                        "region {} is not down; an automatic failover needs a down verdict",
                        self.writer.region
                    ))
                } else if self.spec.sync {
                    // Acknowledged commits are on a standby that streams
                    // from the writer; a figure over the budget means
                    // synchronous commits were suspended (after a promotion)
                    // and the standby is behind; no figure means the target
                    // is not known to stream from the writer at all.
                    match lag_bytes {
                        None => Some(format!(
                            "automatic promotion of {cluster} refused: no standby is known to stream from the writer, so it may lack acknowledged writes (sync mode)"
                        )),
                        Some(l) if l > self.spec.rpo_budget => Some(format!(
                            "automatic promotion of {cluster} refused: lag {l} bytes exceeds the budget of {} bytes",
                            self.spec.rpo_budget
                        )),
                        _ => None,
                    }
                } else {
                    match lag_bytes {
                        None => Some(format!(
                            "automatic promotion of {cluster} refused: the replication lag is unknown (budget {} bytes)",
                            self.spec.rpo_budget
                        )),
                        Some(l) if l > self.spec.rpo_budget => Some(format!(
                            "automatic promotion of {cluster} refused: lag {l} bytes exceeds the budget of {} bytes",
                            self.spec.rpo_budget
                        )),
                        Some(_) => None,
                    }
                };
                if let Some(reason) = refusal {
                    if self.refused.as_ref() != Some(&reason) {
                        notes.push(("failover-refused", reason.clone(), evidence));
                        self.refused = Some(reason.clone());
                    }
                    return Err(FailoverError::Refused(reason));
                }
                Step::WaitLease
            }
            PlanKind::Forced { actor } => {
                notes.push((
                    "forced",
                    format!(
                        "{actor} forced a failover of {cluster} to {to} (lag {lag}, budget {} bytes)",
                        self.spec.rpo_budget
                    ),
                    evidence.clone(),
                ));
                Step::WaitLease
            }
            PlanKind::Switchover { .. } => {
                if writer_down {
                    return Err(FailoverError::Refused(format!(
                        "region {} is down; a switchover needs a reachable primary (use failover)",
                        self.writer.region
                    )));
                }
                Step::Fence
            }
        };
        self.refused = None;
        self.plans_started += 1;
        let id = self.plans_started;
        let what = match &kind {
            PlanKind::Automatic => "automatic failover".to_string(),
            PlanKind::Forced { actor } => format!("failover forced by {actor}"),
            PlanKind::Switchover { actor } => format!("switchover by {actor}"),
        };
        let mut ev = evidence;
        ev.push(format!(
            "replication {}, lag {lag}, budget {} bytes",
            if self.spec.sync { "sync" } else { "async" },
            self.spec.rpo_budget
        ));
        notes.push((
            "failover",
            format!(
                "plan {id}: {what} of {cluster} from {} (epoch {}) to {to}",
                self.writer.region, self.writer.epoch
            ),
            ev,
        ));
        if let Some(done) = self.plan.take() {
            self.past.push(done);
            if self.past.len() > KEEP_PLANS {
                self.past.remove(0);
            }
        }
        self.plan = Some(Plan {
            id,
            kind,
            from: self.writer.region.clone(),
            to: to.to_string(),
            step: first,
            started_at: at,
            step_started_at: at,
            attempts: 1,
            lag_bytes,
            fence_lsn: None,
            epoch: None,
            previous_lease: None,
            history: Vec::new(),
        });
        Ok(id)
    }

    /// Closes the current step and moves to `next`.
    fn advance(
        &mut self,
        cluster: &str,
        next: Step,
        ok: bool,
        detail: String,
        at: Duration,
        notes: &mut Vec<Note>,
    ) {
        let Some(p) = self.plan.as_mut() else { return };
        let took = at.saturating_sub(p.step_started_at);
        notes.push((
            "failover-step",
            format!(
                "plan {} of {cluster}: {} {} in {} ms",
                p.id,
                p.step.as_str(),
                if ok { "done" } else { "failed" },
                took.as_millis()
            ),
            vec![detail.clone()],
        ));
        p.history.push(StepRecord {
            step: p.step,
            started_at: p.step_started_at,
            finished_at: at,
            attempts: p.attempts,
            ok,
            detail,
        });
        p.step = next;
        p.step_started_at = at;
        p.attempts = 1;
        if !p.active() {
            let total = at.saturating_sub(p.started_at);
            notes.push((
                "failover",
                format!(
                    "plan {} of {cluster} {} after {} ms; writer {} epoch {}",
                    p.id,
                    if next == Step::Done {
                        "complete"
                    } else {
                        "failed"
                    },
                    total.as_millis(),
                    self.writer.region,
                    self.writer.epoch
                ),
                Vec::new(),
            ));
        }
    }

    /// An agent (or the leader) reports the end of a step of plan `plan_id`.
    /// Reports of other plans or steps change nothing (they are duplicates
    /// or late), which makes retries safe.
    #[allow(clippy::too_many_arguments)]
    pub fn step_done(
        &mut self,
        cluster: &str,
        plan_id: u64,
        step: Step,
        ok: bool,
        detail: String,
        lsn: Option<u64>,
        leases: &mut LeaseTable,
        at: Duration,
        notes: &mut Vec<Note>,
    ) -> Result<bool, FailoverError> {
        let Some(p) = self.plan.as_ref().filter(|p| p.active()) else {
            return Ok(false);
        };
        if p.id != plan_id || p.step != step {
            return Ok(false);
        }
        if !ok {
            return Ok(self.retry(cluster, detail, at, notes));
        }
        match step {
            Step::Fence => {
                let (from, epoch) = (p.from.clone(), self.writer.epoch);
                // The old primary stopped taking writes: its lease can go.
                let released = leases.release(cluster, &from, epoch).is_ok();
                if let Some(p) = self.plan.as_mut() {
                    p.fence_lsn = lsn;
                    if released {
                        p.previous_lease = Some((from.clone(), epoch, at.as_millis() as u64));
                    }
                }
                let detail = format!(
                    "{detail}; lease {}",
                    if released { "released" } else { "not held" }
                );
                self.advance(cluster, Step::CatchUp, true, detail, at, notes);
            }
            Step::CatchUp => self.advance(cluster, Step::WaitLease, true, detail, at, notes),
            Step::WaitLease => {
                let to = p.to.clone();
                let previous = leases
                    .holder(cluster)
                    .map(|(h, e, exp)| (h, e, exp.as_millis() as u64))
                    .or_else(|| p.previous_lease.clone());
                match leases.grant_new_epoch(cluster, &to, at) {
                    Ok(lease) => {
                        if let Some(p) = self.plan.as_mut() {
                            p.epoch = Some(lease.epoch);
                            p.previous_lease = previous;
                        }
                        let detail = format!("{to} holds epoch {}", lease.epoch);
                        notes.push((
                            "lease",
                            format!("{to} holds {cluster} in epoch {}", lease.epoch),
                            vec![format!(
                                "granted by plan {plan_id}; expires at {} ms",
                                lease.expires_at.as_millis()
                            )],
                        ));
                        self.advance(cluster, Step::Promote, true, detail, at, notes);
                    }
                    Err(e) => return Err(FailoverError::Refused(e.to_string())),
                }
            }
            Step::Promote => {
                let (to, epoch) = (p.to.clone(), p.epoch.unwrap_or(0));
                self.writer = Writer {
                    region: to.clone(),
                    epoch,
                };
                notes.push((
                    "writer",
                    format!("{cluster}: writer is {to} in epoch {epoch}"),
                    vec![detail.clone()],
                ));
                let next = if self.spec.scale_hook {
                    Step::ScaleHook
                } else {
                    Step::Done
                };
                self.advance(cluster, next, true, detail, at, notes);
            }
            Step::ScaleHook => self.advance(cluster, Step::Done, true, detail, at, notes),
            Step::Done | Step::Failed => return Ok(false),
        }
        Ok(true)
    }

    /// An operator cancels the active plan: it fails at its current step,
    /// with the operator named. Refused when no plan runs.
    pub fn cancel(
        &mut self,
        cluster: &str,
        actor: &str,
        at: Duration,
        notes: &mut Vec<Note>,
    ) -> Result<u64, FailoverError> {
        let Some(p) = self.active_plan() else {
            return Err(FailoverError::Refused(format!(
                "no failover plan of {cluster} runs"
            )));
        };
        let (id, step) = (p.id, p.step);
        notes.push((
            "failover-cancelled",
            format!(
                "{actor} cancelled plan {id} of {cluster} at step {}",
                step.as_str()
            ),
            vec![format!(
                "writer stays {} in epoch {}",
                self.writer.region, self.writer.epoch
            )],
        ));
        self.advance(
            cluster,
            Step::Failed,
            false,
            format!("cancelled by {actor}"),
            at,
            notes,
        );
        Ok(id)
    }

    /// Whether `holder` may renew its lease now: not while a plan moves the
    /// writer away from it (its lease must run out for the plan's grant).
    pub fn may_renew(&self, holder: &str) -> Result<(), String> {
        match self.active_plan() {
            Some(p) if p.from == holder && p.to != holder && p.step < Step::Promote => Err(format!(
                "plan {} moves the writer from {holder} to {} (step {}): {holder}'s lease is not renewed",
                p.id,
                p.to,
                p.step.as_str()
            )),
            _ => Ok(()),
        }
    }

    /// A step failed or timed out: tried again, until [`MAX_ATTEMPTS`].
    pub fn retry(
        &mut self,
        cluster: &str,
        detail: String,
        at: Duration,
        notes: &mut Vec<Note>,
    ) -> bool {
        let Some(p) = self.plan.as_mut().filter(|p| p.active()) else {
            return false;
        };
        if p.attempts >= MAX_ATTEMPTS {
            // A failed scale hook does not undo a promotion.
            let next = if p.step == Step::ScaleHook {
                Step::Done
            } else {
                Step::Failed
            };
            self.advance(cluster, next, false, detail, at, notes);
        } else {
            p.attempts += 1;
            p.step_started_at = at;
            notes.push((
                "failover-step",
                format!(
                    "plan {} of {cluster}: {} attempt {} of {MAX_ATTEMPTS}",
                    p.id,
                    p.step.as_str(),
                    p.attempts
                ),
                vec![detail],
            ));
        }
        true
    }
}

/// A node's role as its agent last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Primary,
    Standby,
    /// The agent could not read its node.
    Down,
}

/// What an agent last reported of its region's node, as the leader holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    pub role: NodeRole,
    /// Primary: its current WAL position; standby: its replayed one.
    pub lsn: u64,
    /// Standby: the WAL position it has received and flushed.
    pub received_lsn: Option<u64>,
    /// Standby: the writer epoch it was last seen streaming from (the
    /// agent saw its WAL receiver streaming from the writer's node).
    pub streamed_epoch: Option<u64>,
    /// How long ago the report arrived.
    pub age: Duration,
}

/// The leader's view of a cluster from the agents' reports (pure).
///
/// Candidates are the nodes that could take the writer without losing what
/// it acknowledged: in a serving region, last reported as a standby
/// streaming from the writer of the *current* epoch (an old primary that
/// never rejoined, or a standby of an older writer, is not one), most WAL
/// received first, ties in configuration order. The lag is the writer's
/// last reported WAL position minus what `target` (or else the first
/// candidate) has received; it is unknown (`None`) when either report is
/// missing or the target is not a candidate, and an unknown lag never
/// passes the automatic gate ([`ClusterState::start`]).
pub fn leader_view(
    c: &ClusterState,
    writer_down: bool,
    serving: &dyn Fn(&str) -> bool,
    reports: &BTreeMap<String, NodeReport>,
    target: Option<&str>,
) -> LeaderView {
    let epoch = c.writer.epoch;
    let mut evidence = Vec::new();
    let others: Vec<&String> = c
        .spec
        .regions
        .iter()
        .filter(|r| **r != c.writer.region && serving(r))
        .collect();
    let mut valid: Vec<(&String, u64)> = Vec::new();
    for r in &others {
        match reports.get(*r) {
            Some(n) if n.role == NodeRole::Standby && n.streamed_epoch == Some(epoch) => {
                valid.push((r, n.received_lsn.unwrap_or(n.lsn).max(n.lsn)));
            }
            Some(n) => evidence.push(format!(
                "{r} is no candidate: its last report ({} ms ago) is {}",
                n.age.as_millis(),
                match (n.role, n.streamed_epoch) {
                    (NodeRole::Primary, _) => "a primary, not a standby of the writer".to_string(),
                    (NodeRole::Down, _) => "a node its agent could not read".to_string(),
                    (NodeRole::Standby, Some(e)) => format!(
                        "a standby last seen streaming from the writer of epoch {e}, not {epoch}"
                    ),
                    (NodeRole::Standby, None) =>
                        format!("a standby not seen streaming from the writer of epoch {epoch}"),
                }
            )),
            None => evidence.push(format!("{r} is no candidate: no report of its node")),
        }
    }
    // Most WAL first; the sort is stable, so ties keep configuration order.
    valid.sort_by_key(|v| std::cmp::Reverse(v.1));
    let mut candidates: Vec<String> = valid.iter().map(|(r, _)| (*r).clone()).collect();
    let chosen = target
        .map(str::to_string)
        .or_else(|| candidates.first().cloned());
    let received = chosen
        .as_deref()
        .and_then(|t| valid.iter().find(|(r, _)| r.as_str() == t).map(|(_, l)| *l));
    let primary = reports
        .get(&c.writer.region)
        .filter(|p| p.role == NodeRole::Primary);
    let lag_bytes = match (primary, received) {
        (Some(p), Some(received)) => {
            // The figure is only as fresh as the primary's last report: say
            // how old it is and what it cannot see, beside the figure.
            let t = chosen.as_deref().unwrap_or_default();
            let lag = p.lsn.saturating_sub(received);
            let age = p.age.as_millis();
            evidence.push(format!(
                "lag {lag} bytes toward {t} as of primary {}'s last report, {age} ms old \
                 (WAL at {}; {t} had received {received}, reported {} ms ago): WAL the \
                 primary wrote after that report is not in the figure; {}",
                c.writer.region,
                p.lsn,
                reports.get(t).map_or(0, |n| n.age.as_millis()),
                if c.spec.sync {
                    "in sync mode a commit was acknowledged only once a standby had it"
                } else {
                    "in async mode, writes it acknowledged since then may be lost"
                }
            ));
            Some(lag)
        }
        (None, _) => {
            evidence.push(format!(
                "no usable report of the writer {}: the lag is unknown",
                c.writer.region
            ));
            None
        }
        (_, None) => {
            evidence.push(format!(
                "no standby known to stream from the writer of epoch {epoch}{}: the lag is unknown",
                chosen
                    .as_deref()
                    .map_or(String::new(), |t| format!(" in {t}"))
            ));
            None
        }
    };
    if candidates.is_empty() {
        // Named for the audit line of the refusal; the unknown lag refuses.
        candidates = others.into_iter().cloned().collect();
    }
    LeaderView {
        writer_down,
        candidates,
        lag_bytes,
        evidence,
    }
}

/// What the leader knows beyond the committed state when it decides.
#[derive(Debug, Clone, Default)]
pub struct LeaderView {
    /// Whether the writer's region has a committed down verdict.
    pub writer_down: bool,
    /// Regions with a node whose verdict lets them take the writer, in preference order.
    pub candidates: Vec<String>,
    /// The last known replication lag toward the first candidate, in bytes.
    pub lag_bytes: Option<u64>,
    /// Evidence behind the lag figure.
    pub evidence: Vec<String>,
}

/// What the leader should commit for a cluster now, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderAction {
    Start {
        to: String,
        lag_bytes: Option<u64>,
        evidence: Vec<String>,
    },
    Grant {
        plan_id: u64,
    },
    TimedOut {
        plan_id: u64,
        step: Step,
    },
}

/// The leader's decision for one cluster: start an automatic plan when the
/// writer's region is down, grant the target its lease once the old one
/// surely expired, and retry steps that outlived the step timeout.
pub fn leader_action(
    c: &ClusterState,
    cluster: &str,
    leases: &LeaseTable,
    view: &LeaderView,
    now: Duration,
) -> Option<LeaderAction> {
    match c.active_plan() {
        None => {
            if !view.writer_down {
                return None;
            }
            let to = view
                .candidates
                .iter()
                .find(|r| **r != c.writer.region)?
                .clone();
            Some(LeaderAction::Start {
                to,
                lag_bytes: view.lag_bytes,
                evidence: view.evidence.clone(),
            })
        }
        Some(p) => {
            if p.step == Step::WaitLease {
                if leases.grantable(cluster, now) {
                    return Some(LeaderAction::Grant { plan_id: p.id });
                }
                // The old lease runs out within a period plus the margin of
                // the step's start (renewals are refused while the plan
                // runs): a wait longer than that and the step timeout is
                // stuck, and ends as a timeout rather than a hang.
                let l = leases.settings();
                let bound = l.duration + l.drift_margin + c.spec.step_timeout;
                if now.saturating_sub(p.step_started_at) > bound {
                    return Some(LeaderAction::TimedOut {
                        plan_id: p.id,
                        step: p.step,
                    });
                }
                return None;
            }
            if now.saturating_sub(p.step_started_at) > c.spec.step_timeout {
                return Some(LeaderAction::TimedOut {
                    plan_id: p.id,
                    step: p.step,
                });
            }
            None
        }
    }
}

/// Clusters by name.
pub type Clusters = BTreeMap<String, ClusterState>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseSettings;

    fn spec(sync: bool) -> ClusterSpec {
        ClusterSpec {
            sync,
            rpo_budget: 1000,
            regions: vec!["east".into(), "west".into()],
            primary: "east".into(),
            scale_hook: false,
            step_timeout: Duration::from_secs(10),
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn leases() -> LeaseTable {
        LeaseTable::new(LeaseSettings {
            duration: s(5),
            drift_margin: s(1),
        })
    }

    fn view(down: bool, lag: Option<u64>) -> LeaderView {
        LeaderView {
            writer_down: down,
            candidates: vec!["east".into(), "west".into()],
            lag_bytes: lag,
            evidence: vec![],
        }
    }

    #[test]
    fn promotion_is_refused_over_the_budget_and_audited_once() {
        let mut c = ClusterState::new(spec(false));
        let mut notes = Vec::new();
        for _ in 0..3 {
            let r = c.start(
                "db",
                "west",
                PlanKind::Automatic,
                Some(5000),
                true,
                vec![],
                s(1),
                &mut notes,
            );
            assert!(matches!(r, Err(FailoverError::Refused(_))), "{r:?}");
        }
        assert_eq!(notes.len(), 1, "one audit line per refusal reason");
        assert!(notes[0].1.contains("exceeds the budget"));
        assert!(c.plan.is_none());
        // Unknown lag is refused too; within budget starts.
        assert!(c
            .start(
                "db",
                "west",
                PlanKind::Automatic,
                None,
                true,
                vec![],
                s(1),
                &mut notes
            )
            .is_err());
        assert!(c
            .start(
                "db",
                "west",
                PlanKind::Automatic,
                Some(10),
                true,
                vec![],
                s(1),
                &mut notes
            )
            .is_ok());
    }

    #[test]
    // Broke when sync mode let an unknown lag through: after one failover
    // and no rejoin, the stale old primary was "promoted" in a second one.
    fn sync_replication_refuses_an_unknown_lag_and_forcing_is_recorded() {
        let mut c = ClusterState::new(spec(true));
        let mut notes = Vec::new();
        let auto = |c: &mut ClusterState, lag, notes: &mut Vec<Note>| {
            c.start(
                "db",
                "west",
                PlanKind::Automatic,
                lag,
                true,
                vec![],
                s(1),
                notes,
            )
        };
        assert!(matches!(
            auto(&mut c, None, &mut notes),
            Err(FailoverError::Refused(r)) if r.contains("no standby is known to stream")
        ));
        assert!(auto(&mut c, Some(10), &mut notes).is_ok());
        let mut c = ClusterState::new(spec(false));
        let mut notes = Vec::new();
        let forced = PlanKind::Forced {
            actor: "ops".into(),
        };
        assert!(c
            .start(
                "db",
                "west",
                forced,
                Some(1 << 30),
                true,
                vec![],
                s(1),
                &mut notes
            )
            .is_ok());
        assert!(notes.iter().any(|n| n.0 == "forced"));
    }

    fn report(
        role: NodeRole,
        lsn: u64,
        received: Option<u64>,
        streamed: Option<u64>,
    ) -> NodeReport {
        NodeReport {
            role,
            lsn,
            received_lsn: received,
            streamed_epoch: streamed,
            age: Duration::from_millis(100),
        }
    }

    /// A cluster of three regions whose writer is `writer` in `epoch`.
    fn three(writer: &str, epoch: u64) -> ClusterState {
        let mut sp = spec(true);
        sp.regions = vec!["east".into(), "west".into(), "north".into()];
        let mut c = ClusterState::new(sp);
        c.writer = Writer {
            region: writer.into(),
            epoch,
        };
        c
    }

    // Broke when candidates were any serving region in configuration order:
    // a stale old primary, or the standby with less WAL, could be chosen.
    #[test]
    fn only_standbys_streaming_from_the_current_writer_are_candidates() {
        use NodeRole::*;
        let all = |_: &str| true;
        // (reports, expected candidates, expected lag)
        type Case<'a> = (Vec<(&'a str, NodeReport)>, Vec<&'a str>, Option<u64>);
        let cases: Vec<Case> = vec![
            // Both standbys stream from epoch 2: most WAL first.
            (
                vec![
                    ("west", report(Primary, 1000, None, None)),
                    ("east", report(Standby, 900, Some(950), Some(2))),
                    ("north", report(Standby, 990, Some(1000), Some(2))),
                ],
                vec!["north", "east"],
                Some(0),
            ),
            // East is the old primary that never rejoined: not a candidate.
            (
                vec![
                    ("west", report(Primary, 1000, None, None)),
                    ("east", report(Primary, 5000, None, None)),
                    ("north", report(Standby, 900, Some(900), Some(2))),
                ],
                vec!["north"],
                Some(100),
            ),
            // North streamed from the writer of epoch 1, not 2.
            (
                vec![
                    ("west", report(Primary, 1000, None, None)),
                    ("east", report(Primary, 5000, None, None)),
                    ("north", report(Standby, 900, Some(900), Some(1))),
                ],
                vec!["east", "north"],
                None,
            ),
            // No report of the writer: the lag is unknown.
            (
                vec![("east", report(Standby, 900, Some(950), Some(2)))],
                vec!["east"],
                None,
            ),
        ];
        for (i, (reports, candidates, lag)) in cases.into_iter().enumerate() {
            let reports: BTreeMap<String, NodeReport> = reports
                .into_iter()
                .map(|(r, n)| (r.to_string(), n))
                .collect();
            let v = leader_view(&three("west", 2), true, &all, &reports, None);
            assert_eq!(v.candidates, candidates, "case {i}: {:?}", v.evidence);
            assert_eq!(v.lag_bytes, lag, "case {i}: {:?}", v.evidence);
        }
        // A region that is down is no candidate, whatever its report.
        let reports: BTreeMap<String, NodeReport> = [
            ("west".to_string(), report(Primary, 1000, None, None)),
            (
                "north".to_string(),
                report(Standby, 1000, Some(1000), Some(2)),
            ),
            ("east".to_string(), report(Standby, 500, Some(500), Some(2))),
        ]
        .into();
        let v = leader_view(&three("west", 2), true, &|r| r != "north", &reports, None);
        assert_eq!(v.candidates, vec!["east"]);
        assert_eq!(v.lag_bytes, Some(500));
        // An operator's target gets its own lag figure.
        let v = leader_view(&three("west", 2), true, &all, &reports, Some("east"));
        assert_eq!(v.lag_bytes, Some(500));
    }

    // Broke when the audit line approving a failover said `lag 0 bytes`
    // computed from a primary report 3.5 s old, with nothing saying so.
    #[test]
    fn the_lag_figure_says_how_old_it_is_and_what_it_cannot_see() {
        use NodeRole::*;
        let mut primary = report(Primary, 1_000, None, None);
        primary.age = Duration::from_millis(3_500);
        let reports: BTreeMap<String, NodeReport> = [
            ("west".to_string(), primary),
            (
                "east".to_string(),
                report(Standby, 990, Some(1_200), Some(2)),
            ),
        ]
        .into();
        for (sync, blind) in [
            (
                true,
                "in sync mode a commit was acknowledged only once a standby had it",
            ),
            (
                false,
                "in async mode, writes it acknowledged since then may be lost",
            ),
        ] {
            let mut c = three("west", 2);
            c.spec.sync = sync;
            let v = leader_view(&c, true, &|_| true, &reports, None);
            assert_eq!(v.lag_bytes, Some(0));
            let line = v.evidence.join("; ");
            for needle in [
                "lag 0 bytes toward east as of primary west's last report, 3500 ms old",
                "WAL the primary wrote after that report is not in the figure",
                blind,
            ] {
                assert!(line.contains(needle), "{needle:?} in {line:?}");
            }
        }
    }

    /// A plan of `c` from east to west, started at 2 s with east holding
    /// epoch 1 since 0 s.
    fn running_plan(c: &mut ClusterState, l: &mut LeaseTable) -> u64 {
        let first = l.acquire("db", "east", s(0)).unwrap();
        c.on_lease("east", first.epoch);
        let mut notes = Vec::new();
        c.start(
            "db",
            "west",
            PlanKind::Automatic,
            Some(0),
            true,
            vec![],
            s(2),
            &mut notes,
        )
        .unwrap()
    }

    // Broke when lease renewals were not checked against a running plan: the
    // old writer's agent kept renewing and the plan waited for ever.
    #[test]
    fn the_old_writer_may_not_renew_while_a_plan_moves_it_away() {
        let mut c = ClusterState::new(spec(false));
        let mut l = leases();
        assert!(c.may_renew("east").is_ok());
        running_plan(&mut c, &mut l);
        assert!(c.may_renew("east").unwrap_err().contains("is not renewed"));
        assert!(c.may_renew("west").is_ok());
    }

    // Broke when the lease-wait step had no bound: a lease that never ran
    // out (here kept alive by leader changes) hung the plan.
    #[test]
    fn a_lease_wait_past_its_bound_times_out() {
        let mut c = ClusterState::new(spec(false));
        let mut l = leases();
        let id = running_plan(&mut c, &mut l);
        // Bound: lease 5 + margin 1 + step timeout 10 = 16 s from 2 s.
        for t in [3, 10, 17] {
            l.on_leader_change(s(t));
            let a = leader_action(&c, "db", &l, &view(true, Some(0)), s(t));
            assert_eq!(a, None, "at {t} s");
        }
        l.on_leader_change(s(19));
        assert_eq!(
            leader_action(&c, "db", &l, &view(true, Some(0)), s(19)),
            Some(LeaderAction::TimedOut {
                plan_id: id,
                step: Step::WaitLease
            })
        );
    }

    #[test]
    fn a_cancelled_plan_fails_at_its_step_and_is_audited() {
        let mut c = ClusterState::new(spec(false));
        let mut l = leases();
        let mut notes = Vec::new();
        assert!(
            c.cancel("db", "ops", s(1), &mut notes).is_err(),
            "no plan runs"
        );
        let id = running_plan(&mut c, &mut l);
        assert_eq!(c.cancel("db", "ops", s(3), &mut notes).unwrap(), id);
        let p = c.plan.as_ref().unwrap();
        assert_eq!(p.step, Step::Failed);
        assert_eq!(c.writer.region, "east");
        assert!(notes
            .iter()
            .any(|n| n.0 == "failover-cancelled" && n.1.contains("ops cancelled plan")));
        // And the old writer may renew again.
        assert!(c.may_renew("east").is_ok());
    }

    // Broke when the plan's grant was an acquire: a target that held the
    // lease already kept its old epoch instead of getting a new one.
    #[test]
    fn a_plans_grant_is_a_new_epoch_even_for_the_holder() {
        let mut l = leases();
        let first = l.acquire("db", "west", s(0)).unwrap();
        let granted = l.grant_new_epoch("db", "west", s(1)).unwrap();
        assert_eq!(granted.epoch, first.epoch + 1);
        // Another holder's valid lease still stands in the way.
        assert!(l.grant_new_epoch("db", "east", s(2)).is_err());
        assert!(l.grant_new_epoch("db", "east", s(7)).is_ok());
    }

    #[test]
    fn a_plan_runs_its_steps_and_the_new_epoch_waits_for_the_old_lease() {
        let mut c = ClusterState::new(spec(false));
        let mut l = leases();
        let first = l.acquire("db", "east", s(0)).unwrap();
        c.on_lease("east", first.epoch);
        assert_eq!(c.writer.epoch, 1);
        let mut notes = Vec::new();
        let id = c
            .start(
                "db",
                "west",
                PlanKind::Automatic,
                Some(0),
                true,
                vec![],
                s(2),
                &mut notes,
            )
            .unwrap();
        // Before expiry (5) plus margin (1), the leader grants nothing.
        assert_eq!(
            leader_action(&c, "db", &l, &view(true, Some(0)), s(5)),
            None
        );
        assert_eq!(
            leader_action(&c, "db", &l, &view(true, Some(0)), s(6)),
            Some(LeaderAction::Grant { plan_id: id })
        );
        // Granting early is refused by the lease table itself.
        assert!(c
            .step_done(
                "db",
                id,
                Step::WaitLease,
                true,
                String::new(),
                None,
                &mut l,
                s(5),
                &mut notes
            )
            .is_err());
        assert!(c
            .step_done(
                "db",
                id,
                Step::WaitLease,
                true,
                String::new(),
                None,
                &mut l,
                s(6),
                &mut notes
            )
            .unwrap());
        assert_eq!(c.plan.as_ref().unwrap().step, Step::Promote);
        assert_eq!(
            c.writer.region, "east",
            "the writer moves only once promoted"
        );
        // A duplicate report changes nothing.
        assert!(!c
            .step_done(
                "db",
                id,
                Step::WaitLease,
                true,
                String::new(),
                None,
                &mut l,
                s(6),
                &mut notes
            )
            .unwrap());
        assert!(c
            .step_done(
                "db",
                id,
                Step::Promote,
                true,
                "promoted".into(),
                None,
                &mut l,
                s(7),
                &mut notes
            )
            .unwrap());
        assert_eq!(
            c.writer,
            Writer {
                region: "west".into(),
                epoch: 2
            }
        );
        let p = c.plan.as_ref().unwrap();
        assert_eq!(p.step, Step::Done);
        let steps: Vec<Step> = p.history.iter().map(|h| h.step).collect();
        assert_eq!(steps, vec![Step::WaitLease, Step::Promote]);
        // Only the writer may acquire now.
        assert!(c.may_acquire("west") && !c.may_acquire("east"));
    }

    #[test]
    fn a_timed_out_step_is_retried_then_the_plan_fails() {
        let mut c = ClusterState::new(spec(false));
        let mut l = leases();
        let mut notes = Vec::new();
        let id = c
            .start(
                "db",
                "west",
                PlanKind::Automatic,
                Some(0),
                true,
                vec![],
                s(0),
                &mut notes,
            )
            .unwrap();
        c.step_done(
            "db",
            id,
            Step::WaitLease,
            true,
            String::new(),
            None,
            &mut l,
            s(0),
            &mut notes,
        )
        .unwrap();
        let v = view(true, Some(0));
        assert_eq!(leader_action(&c, "db", &l, &v, s(5)), None);
        assert_eq!(
            leader_action(&c, "db", &l, &v, s(11)),
            Some(LeaderAction::TimedOut {
                plan_id: id,
                step: Step::Promote
            })
        );
        for k in 0..MAX_ATTEMPTS {
            assert!(c.retry(
                "db",
                format!("timeout {k}"),
                s(11 + u64::from(k)),
                &mut notes
            ));
        }
        assert_eq!(c.plan.as_ref().unwrap().step, Step::Failed);
        assert_eq!(c.writer.region, "east");
    }

    #[test]
    fn a_switchover_fences_catches_up_and_needs_no_expiry() {
        let mut c = ClusterState::new(spec(false));
        let mut l = leases();
        let lease = l.acquire("db", "east", s(0)).unwrap();
        c.on_lease("east", lease.epoch);
        let mut notes = Vec::new();
        let sw = PlanKind::Switchover {
            actor: "ops".into(),
        };
        assert!(
            c.start(
                "db",
                "west",
                sw.clone(),
                Some(0),
                true,
                vec![],
                s(1),
                &mut notes
            )
            .is_err(),
            "needs a live primary"
        );
        let id = c
            .start("db", "west", sw, Some(0), false, vec![], s(1), &mut notes)
            .unwrap();
        assert!(c
            .step_done(
                "db",
                id,
                Step::Fence,
                true,
                "fenced".into(),
                Some(42),
                &mut l,
                s(1),
                &mut notes
            )
            .unwrap());
        assert_eq!(c.plan.as_ref().unwrap().fence_lsn, Some(42));
        assert!(c
            .step_done(
                "db",
                id,
                Step::CatchUp,
                true,
                "replayed 42".into(),
                None,
                &mut l,
                s(2),
                &mut notes
            )
            .unwrap());
        // Released, so grantable at once.
        assert!(l.grantable("db", s(2)));
        assert!(c
            .step_done(
                "db",
                id,
                Step::WaitLease,
                true,
                String::new(),
                None,
                &mut l,
                s(2),
                &mut notes
            )
            .unwrap());
        assert!(c
            .step_done(
                "db",
                id,
                Step::Promote,
                true,
                String::new(),
                None,
                &mut l,
                s(3),
                &mut notes
            )
            .unwrap());
        assert_eq!(
            c.writer,
            Writer {
                region: "west".into(),
                epoch: 2
            }
        );
    }

    #[test]
    fn only_one_plan_at_a_time_and_never_to_the_writer() {
        let mut c = ClusterState::new(spec(true));
        let mut notes = Vec::new();
        assert!(matches!(
            c.start(
                "db",
                "east",
                PlanKind::Forced { actor: "o".into() },
                None,
                true,
                vec![],
                s(0),
                &mut notes
            ),
            Err(FailoverError::AlreadyWriter { .. })
        ));
        assert!(matches!(
            c.start(
                "db",
                "mars",
                PlanKind::Automatic,
                None,
                true,
                vec![],
                s(0),
                &mut notes
            ),
            Err(FailoverError::NoNode { .. })
        ));
        c.start(
            "db",
            "west",
            PlanKind::Automatic,
            Some(0),
            true,
            vec![],
            s(0),
            &mut notes,
        )
        .unwrap();
        assert!(matches!(
            c.start(
                "db",
                "west",
                PlanKind::Automatic,
                None,
                true,
                vec![],
                s(0),
                &mut notes
            ),
            Err(FailoverError::PlanInProgress { .. })
        ));
    }
}

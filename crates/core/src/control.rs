//! The controller's replicated state, as a deterministic state machine.
//!
//! [`ControlState::apply`] takes a [`Command`] (already ordered by the
//! controllers' log) and the time the leader stamped on it, and changes the
//! region verdicts, the operators' weights, the derived [`RoutingTable`],
//! the primary leases and the audit log. Every replica applying the same
//! commands reaches the same state, which is what lets a Raft log carry it.
//! Each change that matters leaves an [`AuditEntry`] with its evidence
//! (DESIGN.md invariant 7).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::failover::{ClusterSpec, ClusterState, Clusters, FailoverError, Note, PlanKind, Step};
use crate::lease::{Lease, LeaseError, LeaseSettings, LeaseTable};
use crate::verdict::{Decision, Verdict};

/// Per service, the weight edges must give each region. Versioned: the
/// version grows by one with every change, so edges can tell new from old.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    pub version: u64,
    pub services: BTreeMap<String, ServiceRoute>,
    /// The identity of the control plane that committed it (chosen once, by
    /// its first leader): an edge takes a table of another identity even
    /// with a lower version, so a rebuilt control plane is not ignored.
    #[serde(default)]
    pub cluster_id: String,
    /// A drill's evacuation: per region, the share of its traffic, percent,
    /// that edges send to the next choice instead ([`crate::drill`]).
    #[serde(default)]
    pub evacuation: BTreeMap<String, u8>,
    /// While a drill runs: the guardrails' evaluation window, in ms, over
    /// which every edge reports what its clients saw.
    #[serde(default)]
    pub drill_window_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRoute {
    /// Effective weight per region: the operators' weight, or 0 while the
    /// region's verdict is down.
    pub weights: BTreeMap<String, u32>,
    /// No region may take traffic; edges apply the service's all-unhealthy policy.
    pub all_unhealthy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A verdict change decided by the leader's verdict engine.
    Verdict(Decision),
    /// An operator sets a service's weights (`tern route set`).
    SetWeights {
        service: String,
        weights: Vec<(String, u32)>,
        force: bool,
        actor: String,
    },
    AcquireLease {
        cluster: String,
        holder: String,
    },
    RenewLease {
        cluster: String,
        holder: String,
        epoch: u64,
    },
    ReleaseLease {
        cluster: String,
        holder: String,
        epoch: u64,
    },
    /// A new leader took over; leases are extended to be safe whatever its clock.
    LeaderChanged {
        leader: String,
        /// The control plane's identity, proposed by a leader of a state
        /// that has none yet (the first leader); taken only then.
        #[serde(default)]
        cluster_id: Option<String>,
    },
    /// Start a plan moving a cluster's writer to `to` (see [`crate::failover`]).
    StartFailover {
        cluster: String,
        to: String,
        kind: PlanKind,
        lag_bytes: Option<u64>,
        evidence: Vec<String>,
    },
    /// A step of a plan ended (reported by an agent, or by the leader for
    /// the lease grant).
    PlanStep {
        cluster: String,
        plan_id: u64,
        step: Step,
        ok: bool,
        detail: String,
        lsn: Option<u64>,
    },
    /// The leader saw a step outlive the step timeout.
    PlanTimedOut {
        cluster: String,
        plan_id: u64,
        step: Step,
    },
    /// An operator cancels the running plan of a cluster (`tern failover
    /// cancel`): it fails at its current step, audited with the operator.
    CancelPlan {
        cluster: String,
        actor: String,
    },
    /// An operator starts a drill (`tern drill start`); `wall_ms` is the
    /// leader's wall clock (Unix ms) for the report.
    StartDrill {
        spec: crate::drill::DrillSpec,
        actor: String,
        #[serde(default)]
        wall_ms: u64,
    },
    /// The leader moves drill `id` to `phase` (from [`crate::drill::Drill::next`]).
    DrillAdvance {
        id: u64,
        phase: crate::drill::Phase,
        evidence: Vec<String>,
        #[serde(default)]
        wall_ms: u64,
    },
    /// The leader watched drill `id`'s guardrails over one window (its
    /// heartbeat: a new leader resumes only a drill watched recently).
    DrillWatch {
        id: u64,
        evidence: Vec<String>,
        /// Per client region, the window's figures (added to the phase's
        /// tally for the report).
        #[serde(default)]
        window: BTreeMap<String, crate::drill::WindowStats>,
    },
    /// The drill ends now and routing returns to what it was: a guardrail
    /// breached (the leader), or an operator said so (`tern drill abort`).
    AbortDrill {
        id: Option<u64>,
        reason: String,
        actor: String,
    },
    /// An agent acted on its own node outside a plan (fenced it, started
    /// it again, made it a standby of the writer): recorded in the audit
    /// log with its evidence, changing nothing else.
    NodeEvent {
        cluster: String,
        region: String,
        /// `fence`, `unfence`, `rejoin`, `start`.
        action: String,
        summary: String,
        evidence: Vec<String>,
    },
}

/// Audit entries the replicated state keeps: the newest ones. Each replica
/// compacts at the same entries, so replicas stay identical; older entries
/// are gone from `tern events` (entry indexes keep counting).
pub const KEEP_AUDIT: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the audit log, from 1.
    pub index: u64,
    #[serde(with = "crate::units::serde_ms")]
    pub at: Duration,
    pub kind: String,
    pub summary: String,
    /// The observations or inputs behind the decision.
    pub evidence: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ControlError {
    #[error("unknown service \"{0}\"")]
    UnknownService(String),
    #[error("region \"{region}\" does not serve service \"{service}\"")]
    UnknownRegion { service: String, region: String },
    #[error(
        "refused: service \"{service}\" would have no healthy region taking traffic ({detail}); use --force to do it anyway"
    )]
    WouldStrandService { service: String, detail: String },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Failover(#[from] FailoverError),
    #[error("{0}")]
    Drill(String),
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Nothing,
    /// The routing table changed to this version.
    Routing(u64),
    Lease(Lease),
    /// A failover plan started with this id.
    Plan(u64),
    /// A plan moved on (true) or the report was a duplicate (false).
    Step(bool),
    /// A drill started with this id, or moved on.
    Drill(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    /// The regions each service has backends in.
    service_regions: BTreeMap<String, Vec<String>>,
    verdicts: BTreeMap<String, Verdict>,
    weights: BTreeMap<String, BTreeMap<String, u32>>,
    routing: RoutingTable,
    leases: LeaseTable,
    #[serde(default)]
    clusters: Clusters,
    /// The newest [`KEEP_AUDIT`] entries (at most a tenth more between
    /// compactions), oldest first.
    audit: Vec<AuditEntry>,
    /// Entries compacted away from the front of `audit`: the next entry's
    /// index is `audit_dropped + audit.len() + 1`.
    #[serde(default)]
    audit_dropped: u64,
    /// Cluster time of the last applied command: no command is applied at
    /// an earlier time (see `ControlState::apply`).
    #[serde(default, with = "crate::units::serde_ms")]
    time: Duration,
    /// The highest leadership term a command was applied in.
    #[serde(default)]
    term: u64,
    /// The control plane's identity (empty until its first leader chose it).
    #[serde(default)]
    cluster_id: String,
    /// Verdicts of one service in one region, by [`service_target`] name.
    /// A region's own verdict follows from its services' by `region_rule`.
    #[serde(default)]
    service_verdicts: BTreeMap<String, Verdict>,
    #[serde(default)]
    region_rule: RegionRule,
    /// The running drill, or the last one.
    #[serde(default)]
    drill: Option<crate::drill::Drill>,
    /// Finished drills before it, oldest first (the last [`KEEP_DRILLS`]).
    #[serde(default)]
    past_drills: Vec<crate::drill::Drill>,
    #[serde(default)]
    drills_started: u64,
    /// Per region, the leader's wall clock (Unix ms) when its last drill passed.
    #[serde(default)]
    last_drill_pass: BTreeMap<String, u64>,
}

/// Finished drills kept in the state besides the last.
pub const KEEP_DRILLS: usize = 16;

/// When a region counts as down, from its services' verdicts (the way
/// Route 53's calculated health checks and Cloudflare's monitor groups
/// combine child checks): one failing service of many never takes the
/// whole region, the database with it, unless the configuration says so.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRule {
    /// The services that count (empty: every service).
    pub critical: BTreeSet<String>,
    pub down_when: RegionDown,
}

pub use crate::config::RegionDown;

/// The verdict target of `service` in `region`: `service@region`.
pub fn service_target(service: &str, region: &str) -> String {
    format!("{service}@{region}")
}

impl ControlState {
    /// Starts with every region up and every weight at 1.
    pub fn new(
        service_regions: BTreeMap<String, Vec<String>>,
        leases: LeaseSettings,
    ) -> ControlState {
        let weights = service_regions
            .into_iter()
            .map(|(s, regions)| (s, regions.into_iter().map(|r| (r, 1)).collect()))
            .collect();
        ControlState::with_weights(weights, leases)
    }

    /// Starts with every region up and the given weights per service and
    /// region (the configured backends' weights).
    pub fn with_weights(
        weights: BTreeMap<String, BTreeMap<String, u32>>,
        leases: LeaseSettings,
    ) -> ControlState {
        let service_regions = weights
            .iter()
            .map(|(s, w)| (s.clone(), w.keys().cloned().collect()))
            .collect();
        let mut state = ControlState {
            service_regions,
            verdicts: BTreeMap::new(),
            weights,
            routing: RoutingTable::default(),
            leases: LeaseTable::new(leases),
            clusters: Clusters::new(),
            audit: Vec::new(),
            audit_dropped: 0,
            time: Duration::ZERO,
            term: 0,
            cluster_id: String::new(),
            service_verdicts: BTreeMap::new(),
            region_rule: RegionRule::default(),
            drill: None,
            past_drills: Vec::new(),
            drills_started: 0,
            last_drill_pass: BTreeMap::new(),
        };
        state.routing = RoutingTable {
            version: 1,
            services: state.derive_routes(&state.weights),
            cluster_id: String::new(),
            evacuation: BTreeMap::new(),
            drill_window_ms: None,
        };
        state
    }

    /// Sets the rule that makes a region down from its services' verdicts.
    pub fn with_region_rule(mut self, rule: RegionRule) -> ControlState {
        self.region_rule = rule;
        self
    }

    /// The verdict of `service` in `region` (up unless decided otherwise).
    pub fn service_verdict(&self, service: &str, region: &str) -> Verdict {
        self.service_verdicts
            .get(&service_target(service, region))
            .copied()
            .unwrap_or(Verdict::Up)
    }

    /// Every service verdict that is not up, by [`service_target`].
    pub fn service_verdicts(&self) -> &BTreeMap<String, Verdict> {
        &self.service_verdicts
    }

    /// The verdict targets of every service in every region it runs in.
    pub fn service_targets(&self) -> Vec<String> {
        self.service_regions
            .iter()
            .flat_map(|(s, regions)| regions.iter().map(move |r| service_target(s, r)))
            .collect()
    }

    /// The region's verdict by the rule, from its services' verdicts.
    fn region_from_services(&self, region: &str) -> Verdict {
        let critical: Vec<&String> = self
            .service_regions
            .iter()
            .filter(|(s, regions)| {
                regions.iter().any(|r| r == region)
                    && (self.region_rule.critical.is_empty()
                        || self.region_rule.critical.contains(*s))
            })
            .map(|(s, _)| s)
            .collect();
        let verdicts: Vec<Verdict> = critical
            .iter()
            .map(|s| self.service_verdict(s, region))
            .collect();
        let down = verdicts.iter().filter(|v| **v == Verdict::Down).count();
        let region_down = match self.region_rule.down_when {
            RegionDown::AllCritical => !verdicts.is_empty() && down == verdicts.len(),
            RegionDown::AnyCritical => down > 0,
            RegionDown::AtLeast(k) => down >= k as usize && down > 0,
        };
        if region_down {
            Verdict::Down
        } else if verdicts.iter().any(|v| *v != Verdict::Up) {
            Verdict::Degraded
        } else {
            Verdict::Up
        }
    }

    /// Adds the database clusters of the configuration (writer: each one's
    /// configured primary, epoch 0 until its first lease).
    pub fn with_clusters(
        mut self,
        specs: impl IntoIterator<Item = (String, ClusterSpec)>,
    ) -> ControlState {
        for (name, spec) in specs {
            self.clusters.insert(name, ClusterState::new(spec));
        }
        self
    }

    pub fn clusters(&self) -> &Clusters {
        &self.clusters
    }

    /// The running drill, or the last one.
    pub fn drill(&self) -> Option<&crate::drill::Drill> {
        self.drill.as_ref()
    }

    /// Finished drills before [`ControlState::drill`], oldest first.
    pub fn past_drills(&self) -> &[crate::drill::Drill] {
        &self.past_drills
    }

    /// Per region, when its last drill passed (leader's wall clock, Unix ms).
    pub fn last_drill_pass(&self) -> &BTreeMap<String, u64> {
        &self.last_drill_pass
    }

    /// Per region, the evacuation share of the running drill.
    fn evacuation(&self) -> BTreeMap<String, u8> {
        self.drill
            .iter()
            .filter(|d| !d.phase.finished() && d.share() > 0)
            .map(|d| (d.spec.region.clone(), d.share()))
            .collect()
    }

    /// Whether a drill runs now.
    pub fn drill_running(&self) -> bool {
        self.drill.as_ref().is_some_and(|d| !d.phase.finished())
    }

    fn start_drill(
        &mut self,
        spec: crate::drill::DrillSpec,
        actor: String,
        at: Duration,
    ) -> Result<Applied, ControlError> {
        let refuse = |m: String| Err(ControlError::Drill(format!("drill refused: {m}")));
        if let Err(e) = spec.validate() {
            return refuse(e);
        }
        let region = spec.region.clone();
        let regions: BTreeSet<&String> = self.service_regions.values().flatten().collect();
        if !regions.contains(&region) {
            return refuse(format!("unknown region \"{region}\""));
        }
        if let Some(d) = self.drill.as_ref().filter(|d| !d.phase.finished()) {
            return refuse(format!(
                "drill {} of {} is running ({})",
                d.id,
                d.spec.region,
                d.phase.name()
            ));
        }
        if let Some((name, c)) = self
            .clusters
            .iter()
            .find(|(_, c)| c.active_plan().is_some())
        {
            let p = c.active_plan().expect("checked");
            return refuse(format!(
                "plan {} of {name} is running (step {})",
                p.id,
                p.step.as_str()
            ));
        }
        let receivers: Vec<&String> = regions
            .into_iter()
            .filter(|r| **r != region && self.verdict(r).serves())
            .collect();
        if receivers.is_empty() {
            return refuse(format!("no other region is up to take {region}'s traffic"));
        }
        for (service, regions) in &self.service_regions {
            if regions.contains(&region)
                && !regions.iter().any(|r| {
                    *r != region
                        && self.service_verdict(service, r).serves()
                        && self.verdict(r).serves()
                })
            {
                return refuse(format!(
                    "service {service} has no other region up to take {region}'s share"
                ));
            }
        }
        self.drills_started += 1;
        let id = self.drills_started;
        let evidence = vec![
            format!(
                "steps {} %, held {} ms each; return {}",
                spec.steps
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                spec.hold.as_millis(),
                if spec.return_steps.is_empty() {
                    "at once".to_string()
                } else {
                    spec.return_steps
                        .iter()
                        .map(u8::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                }
            ),
            format!(
                "guardrails: error rate {:.1}%, p99 {} ms, over {} ms windows",
                spec.guardrails.max_error_rate * 100.0,
                spec.guardrails.max_p99.as_millis(),
                spec.guardrails.window.as_millis()
            ),
            format!(
                "receivers up: {}",
                receivers
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ];
        let drill = crate::drill::Drill::new(id, spec, actor.clone(), at);
        if let Some(old) = self.drill.replace(drill) {
            self.past_drills.push(old);
            if self.past_drills.len() > KEEP_DRILLS {
                self.past_drills.remove(0);
            }
        }
        self.record(
            at,
            "drill",
            format!("drill {id} of {region} started by {actor}"),
            evidence,
        );
        self.publish(at, &format!("drill {id}"));
        Ok(Applied::Drill(id))
    }

    fn end_drill_phase(
        &mut self,
        id: u64,
        phase: crate::drill::Phase,
        evidence: Vec<String>,
        wall_ms: u64,
        at: Duration,
    ) -> Result<Applied, ControlError> {
        let Some(d) = self
            .drill
            .as_mut()
            .filter(|d| d.id == id && !d.phase.finished())
        else {
            return Ok(Applied::Nothing);
        };
        d.advance(phase.clone(), evidence.clone(), at);
        let share = d.share();
        let region = d.spec.region.clone();
        let summary = match &phase {
            crate::drill::Phase::Aborted { reason } => {
                format!("drill {id} of {region} aborted: {reason}; routing restored")
            }
            crate::drill::Phase::Passed => format!("drill {id} of {region} passed"),
            other => format!("drill {id} of {region}: {} at {share}%", other.name()),
        };
        if phase == crate::drill::Phase::Passed {
            self.last_drill_pass.insert(region, wall_ms);
        }
        self.record(at, "drill", summary, evidence);
        self.publish(at, &format!("drill {id}"));
        Ok(Applied::Drill(id))
    }

    pub fn routing(&self) -> &RoutingTable {
        &self.routing
    }

    pub fn verdict(&self, region: &str) -> Verdict {
        self.verdicts.get(region).copied().unwrap_or(Verdict::Up)
    }

    /// Every region that ever had a verdict other than the initial `Up`.
    pub fn verdicts(&self) -> &BTreeMap<String, Verdict> {
        &self.verdicts
    }

    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// The control plane's identity (empty until its first leader chose it).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Cluster time of the last applied command.
    pub fn time(&self) -> Duration {
        self.time
    }

    /// The audit log, oldest first.
    pub fn audit(&self) -> &[AuditEntry] {
        &self.audit
    }

    /// Index of the newest audit entry (0 before the first).
    pub fn last_audit_index(&self) -> u64 {
        self.audit_dropped + self.audit.len() as u64
    }

    /// Entries compacted away: every kept entry has a higher index.
    pub fn audit_dropped(&self) -> u64 {
        self.audit_dropped
    }

    /// Takes the kept audit entries out of the state (to store them apart
    /// from it); [`ControlState::restore_audit`] puts them back.
    pub fn take_audit(&mut self) -> Vec<AuditEntry> {
        std::mem::take(&mut self.audit)
    }

    /// Puts back the kept audit entries: those with an index above
    /// [`ControlState::audit_dropped`], oldest first, as taken or as stored.
    pub fn restore_audit(&mut self, entries: Vec<AuditEntry>) {
        self.audit = entries;
    }

    fn record_notes(&mut self, at: Duration, notes: Vec<Note>) {
        for (kind, summary, evidence) in notes {
            self.record(at, kind, summary, evidence);
        }
    }

    fn cluster_mut(&mut self, cluster: &str) -> Result<&mut ClusterState, ControlError> {
        self.clusters
            .get_mut(cluster)
            .ok_or_else(|| FailoverError::UnknownCluster(cluster.to_string()).into())
    }

    fn record(&mut self, at: Duration, kind: &str, summary: String, evidence: Vec<String>) {
        let index = self.audit_dropped + self.audit.len() as u64 + 1;
        self.audit.push(AuditEntry {
            index,
            at,
            kind: kind.to_string(),
            summary,
            evidence,
        });
        // Compaction keeps the state (written whole on every applied batch)
        // bounded; dropping a tenth at a time keeps its cost amortised.
        if self.audit.len() > KEEP_AUDIT + KEEP_AUDIT / 10 {
            let drop = self.audit.len() - KEEP_AUDIT;
            self.audit.drain(..drop);
            self.audit_dropped += drop as u64;
        }
    }

    fn derive_routes(
        &self,
        weights: &BTreeMap<String, BTreeMap<String, u32>>,
    ) -> BTreeMap<String, ServiceRoute> {
        weights
            .iter()
            .map(|(service, w)| {
                let weights: BTreeMap<String, u32> = w
                    .iter()
                    .map(|(region, weight)| {
                        // A service is routed away from a region that is down,
                        // and from one where this service alone is down.
                        let serving = self.verdict(region).serves()
                            && self.service_verdict(service, region) != Verdict::Down;
                        (region.clone(), if serving { *weight } else { 0 })
                    })
                    .collect();
                let all_unhealthy = weights.values().all(|w| *w == 0);
                (
                    service.clone(),
                    ServiceRoute {
                        weights,
                        all_unhealthy,
                    },
                )
            })
            .collect()
    }

    /// Recomputes the routing table; bumps the version and audits only on change.
    fn publish(&mut self, at: Duration, cause: &str) -> Option<u64> {
        let services = self.derive_routes(&self.weights);
        let evacuation = self.evacuation();
        let drill_window_ms = self
            .drill
            .as_ref()
            .filter(|d| !d.phase.finished())
            .map(|d| d.spec.guardrails.window.as_millis() as u64);
        if services == self.routing.services
            && evacuation == self.routing.evacuation
            && drill_window_ms == self.routing.drill_window_ms
        {
            return None;
        }
        let version = self.routing.version + 1;
        let evidence = services
            .iter()
            .map(|(s, r)| {
                let w: Vec<String> = r
                    .weights
                    .iter()
                    .map(|(region, w)| format!("{region}={w}"))
                    .collect();
                format!(
                    "{s}: {}{}",
                    w.join(","),
                    if r.all_unhealthy {
                        " (all unhealthy)"
                    } else {
                        ""
                    }
                )
            })
            .collect::<Vec<String>>();
        let mut evidence = evidence;
        evidence.extend(evacuation.iter().map(|(region, share)| {
            format!("evacuation: {share}% of {region}'s traffic elsewhere")
        }));
        self.routing = RoutingTable {
            version,
            services,
            cluster_id: self.cluster_id.clone(),
            evacuation,
            drill_window_ms,
        };
        self.record(
            at,
            "routing",
            format!("routing table v{version} ({cause})"),
            evidence,
        );
        Some(version)
    }

    /// Applies a command proposed by the leader of `term`. The first command
    /// of a higher term first treats every lease as possibly valid for a
    /// whole period from `at` ([`LeaseTable::on_leader_change`]): a new
    /// leader's clock may run ahead of its predecessor's, and whatever it
    /// commits first (a lease request that arrived before its
    /// `LeaderChanged` entry, say) must not find a lease expired early.
    pub fn apply_in_term(
        &mut self,
        term: u64,
        command: Command,
        at: Duration,
    ) -> Result<Applied, ControlError> {
        if term > self.term {
            self.term = term;
            let at = at.max(self.time);
            self.leases.on_leader_change(at);
        }
        self.apply(command, at)
    }

    /// Applies one command stamped with the leader's cluster time `at`
    /// (an `at` earlier than the last command's counts as the last's).
    pub fn apply(&mut self, command: Command, at: Duration) -> Result<Applied, ControlError> {
        // Cluster time never runs backward, whoever proposed the command.
        let at = at.max(self.time);
        self.time = at;
        match command {
            Command::Verdict(d) if d.target.contains('@') => {
                // A service's verdict in a region; the region's follows by the rule.
                let Some((service, region)) = d.target.split_once('@') else {
                    return Ok(Applied::Nothing);
                };
                let (service, region) = (service.to_string(), region.to_string());
                if self.service_verdict(&service, &region) == d.to {
                    return Ok(Applied::Nothing);
                }
                let evidence = verdict_evidence(&d);
                self.record(
                    at,
                    "verdict",
                    format!(
                        "service {service} in {region} {} -> {}",
                        d.from.as_str(),
                        d.to.as_str()
                    ),
                    evidence,
                );
                if d.to == Verdict::Up {
                    self.service_verdicts.remove(&d.target);
                } else {
                    self.service_verdicts.insert(d.target.clone(), d.to);
                }
                let before = self.verdict(&region);
                let after = self.region_from_services(&region);
                if before != after {
                    let services: Vec<String> = self
                        .service_regions
                        .iter()
                        .filter(|(_, rs)| rs.contains(&region))
                        .map(|(s, _)| format!("{s}: {}", self.service_verdict(s, &region).as_str()))
                        .collect();
                    self.record(
                        at,
                        "verdict",
                        format!("region {region} {} -> {}", before.as_str(), after.as_str()),
                        vec![format!(
                            "by the rule {:?} over its critical services: {}",
                            self.region_rule.down_when,
                            services.join(", ")
                        )],
                    );
                    self.verdicts.insert(region.clone(), after);
                }
                let cause = format!("verdict on {}", d.target);
                Ok(self
                    .publish(at, &cause)
                    .map_or(Applied::Nothing, Applied::Routing))
            }
            Command::Verdict(d) => {
                if self.verdict(&d.target) == d.to {
                    return Ok(Applied::Nothing);
                }
                let evidence = verdict_evidence(&d);
                self.record(
                    at,
                    "verdict",
                    format!(
                        "region {} {} -> {}",
                        d.target,
                        d.from.as_str(),
                        d.to.as_str()
                    ),
                    evidence,
                );
                self.verdicts.insert(d.target.clone(), d.to);
                let cause = format!("verdict on {}", d.target);
                Ok(self
                    .publish(at, &cause)
                    .map_or(Applied::Nothing, Applied::Routing))
            }
            Command::SetWeights {
                service,
                weights,
                force,
                actor,
            } => {
                let regions = self
                    .service_regions
                    .get(&service)
                    .ok_or_else(|| ControlError::UnknownService(service.clone()))?;
                let mut next = self.weights.clone();
                let entry = next
                    .get_mut(&service)
                    .expect("weights exist for every service");
                for (region, w) in &weights {
                    if !regions.contains(region) {
                        return Err(ControlError::UnknownRegion {
                            service: service.clone(),
                            region: region.clone(),
                        });
                    }
                    entry.insert(region.clone(), *w);
                }
                let routes = self.derive_routes(&next);
                let route = &routes[&service];
                let wanted: Vec<String> = weights.iter().map(|(r, w)| format!("{r}={w}")).collect();
                if route.all_unhealthy {
                    let detail = next[&service]
                        .iter()
                        .map(|(r, w)| format!("{r}: weight {w}, {}", self.verdict(r).as_str()))
                        .collect::<Vec<_>>()
                        .join("; ");
                    if !force {
                        return Err(ControlError::WouldStrandService { service, detail });
                    }
                    self.record(
                        at,
                        "forced",
                        format!(
                            "{actor} forced weights {} on {service} leaving no healthy region",
                            wanted.join(",")
                        ),
                        vec![detail],
                    );
                }
                self.record(
                    at,
                    "weights",
                    format!("{actor} set weights {} on {service}", wanted.join(",")),
                    Vec::new(),
                );
                self.weights = next;
                Ok(self
                    .publish(at, &format!("weights set by {actor}"))
                    .map_or(Applied::Nothing, Applied::Routing))
            }
            Command::AcquireLease { cluster, holder } => {
                if let Some(c) = self.clusters.get(&cluster) {
                    if !c.may_acquire(&holder) {
                        return Err(FailoverError::Refused(format!(
                            "{holder} may not take the lease of {cluster}: the writer is {}{}",
                            c.writer.region,
                            c.plan.as_ref().filter(|p| p.active()).map_or(
                                String::new(),
                                |p| format!(" and plan {} is at step {}", p.id, p.step.as_str())
                            )
                        ))
                        .into());
                    }
                }
                let before = self.leases.epoch(&cluster);
                let lease = self.leases.acquire(&cluster, &holder, at)?;
                if lease.epoch != before {
                    self.record(
                        at,
                        "lease",
                        format!("{holder} holds {cluster} in epoch {}", lease.epoch),
                        vec![format!("previous epoch {before}")],
                    );
                }
                if let Some(c) = self.clusters.get_mut(&cluster) {
                    c.on_lease(&holder, lease.epoch);
                }
                Ok(Applied::Lease(lease))
            }
            Command::RenewLease {
                cluster,
                holder,
                epoch,
            } => {
                if let Some(c) = self.clusters.get(&cluster) {
                    c.may_renew(&holder).map_err(FailoverError::Refused)?;
                }
                Ok(Applied::Lease(
                    self.leases.renew(&cluster, &holder, epoch, at)?,
                ))
            }
            Command::CancelPlan { cluster, actor } => {
                let mut notes = Vec::new();
                let c = self.cluster_mut(&cluster)?;
                let id = c.cancel(&cluster, &actor, at, &mut notes)?;
                self.record_notes(at, notes);
                Ok(Applied::Plan(id))
            }
            Command::ReleaseLease {
                cluster,
                holder,
                epoch,
            } => {
                self.leases.release(&cluster, &holder, epoch)?;
                self.record(
                    at,
                    "lease",
                    format!("{holder} released {cluster} epoch {epoch}"),
                    Vec::new(),
                );
                Ok(Applied::Nothing)
            }
            Command::LeaderChanged { leader, cluster_id } => {
                self.leases.on_leader_change(at);
                self.record(
                    at,
                    "leader",
                    format!("{leader} leads; leases extended by one period"),
                    Vec::new(),
                );
                // A drill nobody watched for too long ends here rather than
                // go on blind; one watched recently resumes where it was.
                if let Some((id, reason)) = self
                    .drill
                    .as_ref()
                    .and_then(|d| d.on_leader_change(at).map(|r| (d.id, r)))
                {
                    self.end_drill_phase(
                        id,
                        crate::drill::Phase::Aborted { reason },
                        Vec::new(),
                        0,
                        at,
                    )?;
                }
                if let (true, Some(id)) = (self.cluster_id.is_empty(), cluster_id) {
                    // A new version, so that every edge hears of the identity.
                    self.cluster_id = id.clone();
                    self.routing.cluster_id = id.clone();
                    self.routing.version += 1;
                    let version = self.routing.version;
                    self.record(
                        at,
                        "routing",
                        format!("routing table v{version} (control plane identity {id})"),
                        Vec::new(),
                    );
                }
                Ok(Applied::Nothing)
            }
            Command::StartFailover {
                cluster,
                to,
                kind,
                lag_bytes,
                evidence,
            } => {
                let writer_region = self.cluster_mut(&cluster)?.writer.region.clone();
                let writer_down = !self.verdict(&writer_region).serves();
                let mut notes = Vec::new();
                let c = self.cluster_mut(&cluster)?;
                let result = c.start(
                    &cluster,
                    &to,
                    kind,
                    lag_bytes,
                    writer_down,
                    evidence,
                    at,
                    &mut notes,
                );
                self.record_notes(at, notes);
                Ok(Applied::Plan(result?))
            }
            Command::PlanStep {
                cluster,
                plan_id,
                step,
                ok,
                detail,
                lsn,
            } => {
                let mut notes = Vec::new();
                let mut leases = std::mem::take(&mut self.leases);
                let result = self.cluster_mut(&cluster).and_then(|c| {
                    c.step_done(
                        &cluster,
                        plan_id,
                        step,
                        ok,
                        detail,
                        lsn,
                        &mut leases,
                        at,
                        &mut notes,
                    )
                    .map_err(ControlError::from)
                });
                self.leases = leases;
                self.record_notes(at, notes);
                Ok(Applied::Step(result?))
            }
            Command::StartDrill {
                spec,
                actor,
                wall_ms: _,
            } => self.start_drill(spec, actor, at),
            Command::DrillAdvance {
                id,
                phase,
                evidence,
                wall_ms,
            } => self.end_drill_phase(id, phase, evidence, wall_ms, at),
            Command::DrillWatch {
                id,
                evidence: _,
                window,
            } => {
                match self
                    .drill
                    .as_mut()
                    .filter(|d| d.id == id && !d.phase.finished())
                {
                    Some(d) => {
                        d.watch(&window, at);
                        Ok(Applied::Drill(id))
                    }
                    None => Ok(Applied::Nothing),
                }
            }
            Command::AbortDrill { id, reason, actor } => {
                let Some(running) = self
                    .drill
                    .as_ref()
                    .filter(|d| !d.phase.finished() && id.is_none_or(|i| i == d.id))
                    .map(|d| d.id)
                else {
                    return Err(ControlError::Drill("no drill is running".into()));
                };
                self.end_drill_phase(
                    running,
                    crate::drill::Phase::Aborted {
                        reason: format!("{reason} ({actor})"),
                    },
                    vec![format!("ended by the abort: {reason} ({actor})")],
                    0,
                    at,
                )
            }
            Command::NodeEvent {
                cluster,
                region,
                action,
                summary,
                evidence,
            } => {
                self.cluster_mut(&cluster)?;
                let kind = match action.as_str() {
                    "fence" => "node-fence",
                    "unfence" => "node-unfence",
                    "rejoin" => "node-rejoin",
                    _ => "node",
                };
                self.record(
                    at,
                    kind,
                    format!("{cluster} in {region}: {summary}"),
                    evidence,
                );
                Ok(Applied::Nothing)
            }
            Command::PlanTimedOut {
                cluster,
                plan_id,
                step,
            } => {
                let mut notes = Vec::new();
                let c = self.cluster_mut(&cluster)?;
                let moved = match &c.plan {
                    Some(p) if p.active() && p.id == plan_id && p.step == step => c.retry(
                        &cluster,
                        format!("no report within {} ms", c.spec.step_timeout.as_millis()),
                        at,
                        &mut notes,
                    ),
                    _ => false,
                };
                self.record_notes(at, notes);
                Ok(Applied::Step(moved))
            }
        }
    }
}

/// A decision's evidence as audit lines.
fn verdict_evidence(d: &crate::verdict::Decision) -> Vec<String> {
    d.evidence
        .iter()
        .map(|v| {
            format!(
                "{}: {} failed, {} ok in a row{}{}",
                v.vantage,
                v.consecutive_failures,
                v.consecutive_successes,
                v.last_latency
                    .map_or(String::new(), |l| format!(", last {} ms", l.as_millis())),
                if v.fresh { "" } else { " (stale, no vote)" }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::VantageEvidence;

    fn state() -> ControlState {
        let mut services = BTreeMap::new();
        services.insert(
            "api".to_string(),
            vec!["east".to_string(), "west".to_string()],
        );
        ControlState::new(
            services,
            LeaseSettings {
                duration: Duration::from_secs(5),
                drift_margin: Duration::from_secs(1),
            },
        )
    }

    /// Three services in east and west: api and pay critical, docs not.
    fn three_services(rule: RegionDown) -> ControlState {
        let mut services = BTreeMap::new();
        for s in ["api", "docs", "pay"] {
            services.insert(s.to_string(), vec!["east".to_string(), "west".to_string()]);
        }
        ControlState::new(
            services,
            LeaseSettings {
                duration: Duration::from_secs(5),
                drift_margin: Duration::from_secs(1),
            },
        )
        .with_region_rule(RegionRule {
            critical: ["api", "pay"].into_iter().map(String::from).collect(),
            down_when: rule,
        })
    }

    // Broke when the agent folded every backend of every service into one
    // result per region: one failing service took the whole region (and
    // the database's writer) down.
    #[test]
    fn a_region_is_down_only_by_its_rule_over_services() {
        use RegionDown::*;
        // (rule, services down in east, east's verdict)
        let cases: Vec<(RegionDown, Vec<&str>, Verdict)> = vec![
            (AllCritical, vec!["docs"], Verdict::Up),
            (AllCritical, vec!["api"], Verdict::Degraded),
            (AllCritical, vec!["api", "pay"], Verdict::Down),
            (AnyCritical, vec!["docs"], Verdict::Up),
            (AnyCritical, vec!["pay"], Verdict::Down),
            (AtLeast(2), vec!["api"], Verdict::Degraded),
            (AtLeast(2), vec!["api", "docs"], Verdict::Degraded),
            (AtLeast(2), vec!["api", "pay"], Verdict::Down),
        ];
        for (rule, down, expected) in cases {
            let mut s = three_services(rule);
            for svc in &down {
                s.apply(
                    verdict(&service_target(svc, "east"), Verdict::Up, Verdict::Down),
                    t(1),
                )
                .unwrap();
            }
            assert_eq!(s.verdict("east"), expected, "{rule:?} with {down:?} down");
            // A down service is routed away from east on its own; the
            // others keep east unless the region is down.
            for svc in ["api", "docs", "pay"] {
                let w = s.routing().services[svc].weights["east"];
                let gone = down.contains(&svc) || expected == Verdict::Down;
                assert_eq!(w == 0, gone, "{rule:?}: {svc} in east has weight {w}");
            }
            assert_eq!(s.verdict("west"), Verdict::Up);
        }
        // A service coming back brings its region back.
        let mut s = three_services(AnyCritical);
        s.apply(verdict("pay@east", Verdict::Up, Verdict::Down), t(1))
            .unwrap();
        assert_eq!(s.verdict("east"), Verdict::Down);
        s.apply(verdict("pay@east", Verdict::Down, Verdict::Up), t(2))
            .unwrap();
        assert_eq!(s.verdict("east"), Verdict::Up);
        assert!(s.service_verdicts().is_empty());
        assert!(s
            .audit()
            .iter()
            .any(|a| a.summary == "region east up -> down"));
    }

    fn verdict(region: &str, from: Verdict, to: Verdict) -> Command {
        Command::Verdict(Decision {
            target: region.into(),
            from,
            to,
            at: Duration::from_secs(1),
            evidence: vec![VantageEvidence {
                vantage: "west".into(),
                consecutive_failures: 3,
                consecutive_successes: 0,
                consecutive_slow: 0,
                last_latency: None,
                last_report: Duration::from_secs(1),
                fresh: true,
            }],
        })
    }

    fn set(weights: &[(&str, u32)], force: bool) -> Command {
        Command::SetWeights {
            service: "api".into(),
            weights: weights.iter().map(|(r, w)| (r.to_string(), *w)).collect(),
            force,
            actor: "ops".into(),
        }
    }

    fn t(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn drill_spec(region: &str) -> crate::drill::DrillSpec {
        crate::drill::DrillSpec {
            service_guardrails: Default::default(),
            region: region.into(),
            steps: vec![10, 100],
            hold: t(10),
            return_steps: vec![],
            switchover_at: None,
            guardrails: crate::drill::Guardrails::default(),
        }
    }

    fn start(region: &str) -> Command {
        Command::StartDrill {
            spec: drill_spec(region),
            actor: "operator admin".into(),
            wall_ms: 0,
        }
    }

    #[test]
    fn a_drill_publishes_its_share_in_the_routing_table_and_an_abort_restores_it() {
        let mut s = state();
        let v = s.routing().version;
        assert_eq!(s.apply(start("east"), t(1)).unwrap(), Applied::Drill(1));
        assert_eq!(
            s.routing().evacuation,
            BTreeMap::from([("east".into(), 10)])
        );
        assert_eq!(s.routing().version, v + 1);
        // Weights are untouched: edges apply the share themselves.
        assert_eq!(s.routing().services["api"].weights["east"], 1);
        let e = s.apply(start("west"), t(2)).unwrap_err().to_string();
        assert!(e.contains("drill 1 of east is running"), "{e}");
        s.apply(
            Command::DrillAdvance {
                id: 1,
                phase: crate::drill::Phase::Evacuating { step: 1 },
                evidence: vec![],
                wall_ms: 0,
            },
            t(11),
        )
        .unwrap();
        assert_eq!(s.routing().evacuation["east"], 100);
        s.apply(
            Command::AbortDrill {
                id: None,
                reason: "error rate of clients in west 5.0% over 1.0%".into(),
                actor: "leader".into(),
            },
            t(12),
        )
        .unwrap();
        assert!(
            s.routing().evacuation.is_empty(),
            "routing restored in one step"
        );
        assert!(!s.drill_running());
        assert!(
            s.audit().iter().any(|e| e.kind == "drill"
                && e.summary.contains("aborted: error rate of clients in west")),
            "{:?}",
            s.audit()
        );
        // A step for a finished drill changes nothing.
        let v = s.routing().version;
        s.apply(
            Command::DrillAdvance {
                id: 1,
                phase: crate::drill::Phase::Passed,
                evidence: vec![],
                wall_ms: 5,
            },
            t(13),
        )
        .unwrap();
        assert_eq!(s.routing().version, v);
        assert!(s.last_drill_pass().is_empty());
    }

    #[test]
    fn a_drill_is_refused_without_a_region_up_to_take_the_traffic() {
        let mut s = state();
        s.apply(verdict("west", Verdict::Up, Verdict::Down), t(1))
            .unwrap();
        let e = s.apply(start("east"), t(2)).unwrap_err().to_string();
        assert!(e.contains("no other region is up"), "{e}");
        let e = s.apply(start("mars"), t(2)).unwrap_err().to_string();
        assert!(e.contains("unknown region"), "{e}");
        assert!(s.routing().evacuation.is_empty());
    }

    #[test]
    fn a_new_leader_aborts_a_drill_nobody_watched_and_resumes_a_watched_one() {
        let mut s = state();
        s.apply(start("east"), t(1)).unwrap();
        s.apply(
            Command::DrillWatch {
                id: 1,
                evidence: vec![],
                window: BTreeMap::new(),
            },
            t(6),
        )
        .unwrap();
        s.apply(
            Command::LeaderChanged {
                leader: "c2".into(),
                cluster_id: None,
            },
            t(9),
        )
        .unwrap();
        assert!(s.drill_running(), "watched 3 s ago: resumed");
        s.apply(
            Command::LeaderChanged {
                leader: "c3".into(),
                cluster_id: None,
            },
            t(30),
        )
        .unwrap();
        assert!(!s.drill_running());
        assert!(s.routing().evacuation.is_empty());
        let Some(crate::drill::Phase::Aborted { reason }) = s.drill().map(|d| d.phase.clone())
        else {
            panic!()
        };
        assert!(reason.contains("without a leader"), "{reason}");
    }

    #[test]
    fn a_down_verdict_zeroes_the_region_and_bumps_the_version() {
        let mut s = state();
        assert_eq!(s.routing().version, 1);
        let applied = s
            .apply(verdict("east", Verdict::Up, Verdict::Down), t(1))
            .unwrap();
        assert_eq!(applied, Applied::Routing(2));
        let route = &s.routing().services["api"];
        assert_eq!(route.weights["east"], 0);
        assert_eq!(route.weights["west"], 1);
        // The same verdict again changes nothing.
        assert_eq!(
            s.apply(verdict("east", Verdict::Up, Verdict::Down), t(2))
                .unwrap(),
            Applied::Nothing
        );
        assert_eq!(s.routing().version, 2);
        // The audit log has the verdict with its evidence, then the routing change.
        let kinds: Vec<_> = s.audit().iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, vec!["verdict", "routing"]);
        assert!(s.audit()[0].evidence[0].contains("west: 3 failed"));
    }

    #[test]
    fn a_degraded_region_keeps_its_weight() {
        let mut s = state();
        s.apply(verdict("east", Verdict::Up, Verdict::Degraded), t(1))
            .unwrap();
        assert_eq!(s.routing().services["api"].weights["east"], 1);
    }

    #[test]
    fn weights_that_strand_a_service_are_refused_unless_forced() {
        let mut s = state();
        s.apply(verdict("west", Verdict::Up, Verdict::Down), t(1))
            .unwrap();
        let err = s.apply(set(&[("east", 0)], false), t(2)).unwrap_err();
        assert!(
            matches!(err, ControlError::WouldStrandService { .. }),
            "{err}"
        );
        assert_eq!(
            s.routing().services["api"].weights["east"],
            1,
            "a refused change changes nothing"
        );
        let forced = s.apply(set(&[("east", 0)], true), t(3)).unwrap();
        assert!(matches!(forced, Applied::Routing(_)));
        assert!(s.routing().services["api"].all_unhealthy);
        let forced_entry = s
            .audit()
            .iter()
            .find(|a| a.kind == "forced")
            .expect("forcing is recorded");
        assert!(
            forced_entry.summary.contains("ops forced"),
            "{}",
            forced_entry.summary
        );
    }

    #[test]
    fn weights_are_checked_against_the_service() {
        let mut s = state();
        assert!(matches!(
            s.apply(set(&[("mars", 1)], false), t(1)),
            Err(ControlError::UnknownRegion { .. })
        ));
        assert!(matches!(
            s.apply(
                Command::SetWeights {
                    service: "nope".into(),
                    weights: vec![],
                    force: false,
                    actor: "ops".into()
                },
                t(1)
            ),
            Err(ControlError::UnknownService(_))
        ));
        assert_eq!(
            s.apply(set(&[("east", 3)], false), t(2)).unwrap(),
            Applied::Routing(2)
        );
        // Weight is remembered while the region is down, and returns with it.
        s.apply(verdict("east", Verdict::Up, Verdict::Down), t(3))
            .unwrap();
        assert_eq!(s.routing().services["api"].weights["east"], 0);
        s.apply(verdict("east", Verdict::Down, Verdict::Up), t(4))
            .unwrap();
        assert_eq!(s.routing().services["api"].weights["east"], 3);
    }

    // Broke when only the LeaderChanged entry extended leases: a new leader
    // whose clock ran ahead granted a lease request it committed first.
    #[test]
    fn the_first_command_of_a_new_term_finds_no_lease_expired_early() {
        let acquire = |h: &str| Command::AcquireLease {
            cluster: "payments".into(),
            holder: h.into(),
        };
        // (term of west's request, its time in s, granted?)
        let cases = [
            (1, 2, false),        // same term, before east's 5 s lease ran out
            (1, 7, true),         // same term, after expiry plus the margin
            (2, 3600, false),     // a new leader an hour ahead: a whole period first
            (2, 3600 + 7, false), // the new term started at the first request of it
        ];
        for (term, at, granted) in cases {
            let mut s = state();
            s.apply_in_term(1, acquire("east"), t(0)).unwrap();
            let r = s.apply_in_term(term, acquire("west"), t(at));
            assert_eq!(r.is_ok(), granted, "term {term} at {at} s: {r:?}");
        }
        // In the new term, the lease runs out a period after the term began.
        let mut s = state();
        s.apply_in_term(1, acquire("east"), t(0)).unwrap();
        assert!(s.apply_in_term(2, acquire("west"), t(3600)).is_err());
        assert!(s.apply_in_term(2, acquire("west"), t(3600 + 5)).is_err());
        assert!(s.apply_in_term(2, acquire("west"), t(3600 + 7)).is_ok());
    }

    #[test]
    fn cluster_time_never_runs_backward() {
        let mut s = state();
        s.apply(set(&[("east", 3)], false), t(10)).unwrap();
        s.apply(set(&[("east", 2)], false), t(4)).unwrap();
        assert_eq!(s.time(), t(10));
        assert_eq!(s.audit().last().unwrap().at, t(10));
    }

    #[test]
    fn leases_are_audited_and_epochs_survive_leader_changes() {
        let mut s = state();
        let acquire = |h: &str| Command::AcquireLease {
            cluster: "payments".into(),
            holder: h.into(),
        };
        let Applied::Lease(l) = s.apply(acquire("east"), t(0)).unwrap() else {
            panic!("expected a lease")
        };
        assert_eq!(l.epoch, 1);
        s.apply(
            Command::LeaderChanged {
                leader: "c2".into(),
                cluster_id: None,
            },
            t(3),
        )
        .unwrap();
        // Expiry moved to 3 + 5 s, plus 1 s margin.
        assert!(s.apply(acquire("west"), t(8)).is_err());
        let Applied::Lease(l2) = s.apply(acquire("west"), t(9)).unwrap() else {
            panic!("expected a lease")
        };
        assert_eq!(l2.epoch, 2);
        let lease_entries = s.audit().iter().filter(|a| a.kind == "lease").count();
        assert_eq!(lease_entries, 2);
    }

    /// The audit log once grew without end, and the whole state (audit
    /// included) is written on every applied batch: it is compacted to the
    /// newest entries, with indexes that keep counting.
    #[test]
    fn the_audit_log_is_bounded_and_its_indexes_keep_counting() {
        let mut s = state();
        let leader = |i: u64| Command::LeaderChanged {
            leader: format!("c{}", i % 3),
            cluster_id: None,
        };
        let n = (KEEP_AUDIT * 2) as u64;
        for i in 0..n {
            s.apply(leader(i), Duration::from_millis(i)).unwrap();
        }
        let audit = s.audit();
        assert!(
            audit.len() <= KEEP_AUDIT + KEEP_AUDIT / 10,
            "{}",
            audit.len()
        );
        assert!(audit.len() >= KEEP_AUDIT);
        let last = audit.last().unwrap().index;
        assert!(last >= n, "every entry counted: last index {last}");
        assert!(audit.windows(2).all(|w| w[1].index == w[0].index + 1));
        let json = serde_json::to_string(&s).unwrap();
        let back: ControlState = serde_json::from_str(&json).unwrap();
        let mut a = back.clone();
        let mut b = s.clone();
        a.apply(leader(n), Duration::from_millis(n)).unwrap();
        b.apply(leader(n), Duration::from_millis(n)).unwrap();
        assert_eq!(a.audit().last(), b.audit().last());
    }

    #[test]
    fn replicas_applying_the_same_commands_agree() {
        let commands = vec![
            (verdict("east", Verdict::Up, Verdict::Down), t(1)),
            (set(&[("west", 4)], false), t(2)),
            (
                Command::AcquireLease {
                    cluster: "payments".into(),
                    holder: "west".into(),
                },
                t(3),
            ),
            (verdict("east", Verdict::Down, Verdict::Up), t(9)),
        ];
        let mut a = state();
        let mut b = state();
        for (c, at) in &commands {
            let ra = a.apply(c.clone(), *at);
            let rb = b.apply(c.clone(), *at);
            assert_eq!(ra, rb);
        }
        assert_eq!(a, b);
    }
}

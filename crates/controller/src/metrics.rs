//! Prometheus metrics of a controller (`GET /metrics`, OpenMetrics text
//! format 1.0), named `tern_controller_<thing>_<unit>[_total]`: Raft
//! (term, leader, quorum, log and apply index), the replicated state
//! (verdicts, leases, plans and their steps, the audit log) and the
//! replication reports this node holds. Every figure is read from the node
//! at the moment of the scrape.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::node::Controller;

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Registers a gauge family and returns it.
fn family<M: prometheus_client::metrics::TypedMetric + Default + Clone + std::fmt::Debug>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, M>
where
    Family<Labels, M>: prometheus_client::encoding::EncodeMetric + Send + Sync + 'static,
{
    let f = Family::<Labels, M>::default();
    registry.register(name, help, f.clone());
    f
}

fn label(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// The node's metrics now, in the text exposition format.
pub fn render(node: &Controller) -> String {
    let m = node.raft.metrics().borrow().clone();
    let status = node.status();
    let clusters = node.clusters_view();
    let mut r = Registry::default();
    let me = label(&[("node", &node.id.to_string()), ("region", &node.region)]);

    let info = family::<Gauge>(
        &mut r,
        "tern_controller_info",
        "This node: 1, labelled with its id and region",
    );
    info.get_or_create(&me).set(1);
    let term = family::<Gauge>(&mut r, "tern_controller_term", "Current Raft term");
    term.get_or_create(&me).set(m.current_term as i64);
    let leader = family::<Gauge>(
        &mut r,
        "tern_controller_is_leader",
        "1 when this node is the Raft leader",
    );
    leader
        .get_or_create(&me)
        .set(i64::from(status.role == "leader"));
    let leader_id = family::<Gauge>(
        &mut r,
        "tern_controller_leader_id",
        "The leader's node id as this node knows it (0: none)",
    );
    leader_id
        .get_or_create(&me)
        .set(m.current_leader.unwrap_or(0) as i64);
    let quorum = family::<Gauge>(
        &mut r,
        "tern_controller_in_quorum",
        "1 when this node is part of a working majority (0: it commits nothing)",
    );
    quorum.get_or_create(&me).set(i64::from(status.in_quorum));
    let voters = family::<Gauge>(
        &mut r,
        "tern_controller_voters",
        "Voting members of the group",
    );
    voters
        .get_or_create(&me)
        .set(status.members.iter().filter(|m| m.voter).count() as i64);
    let log = family::<Gauge>(
        &mut r,
        "tern_controller_log_index",
        "Index of the last entry in this node's log",
    );
    log.get_or_create(&me)
        .set(m.last_log_index.unwrap_or(0) as i64);
    let applied = family::<Gauge>(
        &mut r,
        "tern_controller_applied_index",
        "Index of the last entry applied to the state (committed)",
    );
    applied
        .get_or_create(&me)
        .set(m.last_applied.map_or(0, |l| l.index) as i64);
    let audit = family::<Counter>(
        &mut r,
        "tern_controller_audit_entries",
        "Audit entries recorded since the group formed",
    );
    audit
        .get_or_create(&me)
        .inc_by(node.machine.with(|s| s.state.last_audit_index()));
    let warnings = family::<Gauge>(
        &mut r,
        "tern_controller_config_warnings",
        "1 for each warning the configuration accepted in so many words, by kind (allow_unsafe_placement, insecure_plaintext)",
    );
    for (kind, on) in [
        (
            "allow_unsafe_placement",
            node.settings.placement_warning.is_some(),
        ),
        (
            "insecure_plaintext",
            node.settings.plaintext_warning.is_some(),
        ),
    ] {
        warnings
            .get_or_create(&label(&[
                ("node", &node.id.to_string()),
                ("region", &node.region),
                ("kind", kind),
            ]))
            .set(i64::from(on));
    }

    let verdict = family::<Gauge>(
        &mut r,
        "tern_controller_region_verdict",
        "1 for the committed verdict of each region (up, degraded, down)",
    );
    for region in &node.regions {
        let v = status.verdicts.get(region).map_or("up", String::as_str);
        for candidate in ["up", "degraded", "down"] {
            verdict
                .get_or_create(&label(&[("region", region), ("verdict", candidate)]))
                .set(i64::from(v == candidate));
        }
    }

    let now_ms = clusters.now_ms;
    let epoch = family::<Gauge>(
        &mut r,
        "tern_controller_lease_epoch",
        "Current writer epoch of each database cluster",
    );
    let remaining = family::<FloatGauge>(
        &mut r,
        "tern_controller_lease_remaining_seconds",
        "Time left on the writer's lease on cluster time (0 when no lease is held)",
    );
    for l in &clusters.leases {
        let holder = l.holder.clone().unwrap_or_default();
        let labels = label(&[("cluster", &l.cluster), ("holder", &holder)]);
        epoch.get_or_create(&labels).set(l.epoch as i64);
        let left = l
            .expires_at_ms
            .map_or(0.0, |e| e.saturating_sub(now_ms) as f64 / 1000.0);
        remaining.get_or_create(&labels).set(left);
    }

    let active = family::<Gauge>(
        &mut r,
        "tern_controller_plan_active",
        "1 while a failover or switchover plan of the cluster runs",
    );
    let in_step = family::<FloatGauge>(
        &mut r,
        "tern_controller_plan_step_seconds",
        "Time the running plan has spent in its current step (cluster time)",
    );
    let attempts = family::<Gauge>(
        &mut r,
        "tern_controller_plan_step_attempts",
        "Attempts of the running plan's current step",
    );
    let step_duration = family::<FloatGauge>(
        &mut r,
        "tern_controller_last_plan_step_duration_seconds",
        "Duration of each step of the cluster's last finished plan",
    );
    let plan_duration = family::<FloatGauge>(
        &mut r,
        "tern_controller_last_plan_duration_seconds",
        "Duration of the cluster's last finished plan, labelled with its outcome",
    );
    // A gauge: the state keeps only the last finished plans, so the count
    // falls when an old one is dropped; it counts nothing since a start.
    let plans = family::<Gauge>(
        &mut r,
        "tern_controller_plans_finished",
        "Finished plans the state keeps now, by outcome (at most the last 16)",
    );
    for (name, c) in &clusters.clusters {
        let running = c.plan.as_ref().filter(|p| p.active());
        active
            .get_or_create(&label(&[("cluster", name)]))
            .set(i64::from(running.is_some()));
        if let Some(p) = running {
            let labels = label(&[
                ("cluster", name),
                ("step", p.step.as_str()),
                ("plan", &p.id.to_string()),
            ]);
            let spent = (now_ms as f64 - p.step_started_at.as_millis() as f64).max(0.0) / 1000.0;
            in_step.get_or_create(&labels).set(spent);
            attempts.get_or_create(&labels).set(i64::from(p.attempts));
        }
        let finished = c.past.iter().chain(c.plan.iter().filter(|p| !p.active()));
        let mut last = None;
        for p in finished {
            let outcome = if p.step == tern_core::failover::Step::Done {
                "done"
            } else {
                "failed"
            };
            plans
                .get_or_create(&label(&[("cluster", name), ("outcome", outcome)]))
                .inc();
            if last
                .as_ref()
                .is_none_or(|l: &&tern_core::failover::Plan| l.id < p.id)
            {
                last = Some(p);
            }
        }
        if let Some(p) = last {
            for s in &p.history {
                step_duration
                    .get_or_create(&label(&[("cluster", name), ("step", s.step.as_str())]))
                    .set((s.finished_at.saturating_sub(s.started_at)).as_secs_f64());
            }
            let end = p
                .history
                .iter()
                .map(|s| s.finished_at)
                .max()
                .unwrap_or(p.started_at);
            let outcome = if p.step == tern_core::failover::Step::Done {
                "done"
            } else {
                "failed"
            };
            plan_duration
                .get_or_create(&label(&[("cluster", name), ("outcome", outcome)]))
                .set(end.saturating_sub(p.started_at).as_secs_f64());
        }
    }

    let lag_bytes = family::<Gauge>(
        &mut r,
        "tern_controller_replication_lag_bytes",
        "Replication lag each agent last reported for its node (bytes)",
    );
    let lag_seconds = family::<FloatGauge>(
        &mut r,
        "tern_controller_replication_lag_seconds",
        "Replication lag each agent last reported for its node (seconds)",
    );
    let age = family::<FloatGauge>(
        &mut r,
        "tern_controller_replication_report_age_seconds",
        "How old this node's latest replication report of each node is",
    );
    let fenced = family::<Gauge>(
        &mut r,
        "tern_controller_node_read_only",
        "1 when a node was last reported read-only or down (fenced)",
    );
    for seen in &clusters.replication {
        let rep = &seen.report;
        let labels = label(&[
            ("cluster", &rep.cluster),
            ("region", &rep.region),
            ("role", &rep.role),
        ]);
        if let Some(b) = rep.lag_bytes {
            lag_bytes.get_or_create(&labels).set(b as i64);
        }
        if let Some(ms) = rep.lag_ms {
            lag_seconds.get_or_create(&labels).set(ms as f64 / 1000.0);
        }
        age.get_or_create(&labels).set(seen.age_ms as f64 / 1000.0);
        fenced
            .get_or_create(&labels)
            .set(i64::from(rep.read_only || rep.role == "down"));
    }

    // Drills: when each serving region last passed one (0: never, so that
    // an alert can fire on "never practised"), and the running drill.
    let (last_pass, evacuation, running) = node.machine.with(|m| {
        (
            m.state.last_drill_pass().clone(),
            m.state.routing().evacuation.clone(),
            m.state
                .drill()
                .filter(|d| !d.phase.finished())
                .map(|d| d.spec.region.clone()),
        )
    });
    let passed = family::<FloatGauge>(
        &mut r,
        "tern_drill_last_pass_timestamp_seconds",
        "Unix time of the region's last passed drill (0: never practised)",
    );
    let share = family::<Gauge>(
        &mut r,
        "tern_drill_evacuation_percent",
        "The share of the region's traffic a running drill sends elsewhere",
    );
    let drilling = family::<Gauge>(
        &mut r,
        "tern_drill_running",
        "1 while a drill of the region runs",
    );
    for region in &node.regions {
        let labels = label(&[("region", region)]);
        passed
            .get_or_create(&labels)
            .set(last_pass.get(region).map_or(0.0, |ms| *ms as f64 / 1000.0));
        share
            .get_or_create(&labels)
            .set(i64::from(evacuation.get(region).copied().unwrap_or(0)));
        drilling
            .get_or_create(&labels)
            .set(i64::from(running.as_deref() == Some(region.as_str())));
    }

    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}

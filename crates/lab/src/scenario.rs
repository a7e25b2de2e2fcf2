//! Scenarios: a timeline of faults and recoveries applied to the deployment
//! while the load runs.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::wan::Fault;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Break every WAN path to and from the region with this fault.
    Cut(String, Fault),
    /// Kill the region's processes outright.
    Kill(String),
    /// Restart the region's processes and heal its WAN paths.
    Restore(String),
    /// Cut the region from every other region (blackhole), and other
    /// regions' clients from it; its own clients still reach it.
    Partition(String),
    /// Heal a partition.
    Heal(String),
    /// Make the region's health check fail for `down_for` at the start of
    /// every `period`, for `duration`. Phases are counted from the fault's
    /// start, so a late wake-up shifts one phase, never the rest.
    Flap {
        region: String,
        period: Duration,
        down_for: Duration,
        duration: Duration,
    },
    /// Kill every controller.
    KillControllers,
    /// SIGKILL the region's agent alone (its writer proxy dies with it).
    KillAgent(String),
    /// Start the region's agent again.
    StartAgent(String),
    /// Start every controller again from its own data.
    StartControllers,
    /// An operator's planned switchover of the lab's database to a region.
    Switchover(String),
    /// Stop the region's controller as an upgrade would (SIGTERM, then wait
    /// for it to end) and start it again; returns once it serves.
    RestartController(String),
    /// The same for the region's agent (its writer proxies with it).
    RestartAgent(String),
    /// The same for the region's edge (not ready, then draining, then gone).
    RestartEdge(String),
    /// An operator starts a drill (`tern drill start`).
    StartDrill(Box<tern_core::drill::DrillSpec>),
    /// The region's sample service answers this share, per mille, of item
    /// and root requests with 500 (0 stops it).
    InjectErrors { region: String, per_mille: u16 },
}

#[derive(Debug, Clone)]
pub struct Step {
    pub at: Duration,
    pub action: Action,
    /// Printed as the phase starts.
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub failed_region: Option<String>,
    pub steps: Vec<Step>,
    pub duration: Duration,
    /// The scenario is about the database: it needs PostgreSQL.
    pub needs_db: bool,
}

/// Every scenario's name, the default first, in the order `tern lab --help` lists them.
pub const NAMES: &[&str] = &[
    "region-outage",
    "partition",
    "flapping",
    "controller-loss",
    "switchover",
    "failback",
    "agent-loss",
    "rolling-restart",
    "evacuation",
    "evacuation-abort",
];

/// What a scenario does, in the one line that `tern lab --help` and the
/// error for an unknown `--scenario` print beside its name; `None` for a
/// name that is not in [`NAMES`].
pub fn about(name: &str) -> Option<&'static str> {
    Some(match name {
        "region-outage" => {
            "us-east goes dark (--fault), its processes are killed, then it restarts (default)"
        }
        "partition" => "us-east is cut from us-west and the witness (its own clients still reach it), then healed",
        "flapping" => "us-east's health fails for 150 ms of every 700 ms for 15 s; routing must not move",
        "controller-loss" => "every controller is killed for 30 s, then restarted from its data",
        "switchover" => "an operator moves the database's writer to us-west, planned (needs the database)",
        "failback" => "us-east is killed and the database fails over; us-east rejoins and gets the writer back (needs the database)",
        "agent-loss" => "us-east's agent is killed while its node is the primary, then starts again (needs the database)",
        "rolling-restart" => "every controller, then every agent, then every edge is restarted one at a time under load, as an upgrade would (needs the database)",
        "evacuation" => "a drill evacuates us-east in steps of 10, 50 and 100%, its writer switched over at 50% and back at the end (needs the database)",
        "evacuation-abort" => "a drill evacuates us-east while us-west starts failing 30% of its requests; the drill must abort and restore routing (needs the database)",
        _ => return None,
    })
}

/// How long each step of the lab's drills is held.
pub const DRILL_HOLD: Duration = Duration::from_secs(5);

/// The lab's drill of us-east: 10, 50 and 100%, each held [`DRILL_HOLD`],
/// back at once; guardrails of 1% errors and a 2 s p99 over 2 s windows.
pub fn drill_spec(switchover_at: Option<u8>) -> tern_core::drill::DrillSpec {
    tern_core::drill::DrillSpec {
        service_guardrails: Default::default(),
        region: "us-east".into(),
        steps: vec![10, 50, 100],
        hold: DRILL_HOLD,
        return_steps: Vec::new(),
        switchover_at,
        guardrails: tern_core::drill::Guardrails {
            max_error_rate: 0.01,
            max_p99: Duration::from_secs(2),
            window: Duration::from_secs(2),
            min_requests: 20,
        },
    }
}

impl Scenario {
    /// Builds a scenario by name. The seed moves the fault by up to a second
    /// so that runs over several seeds hit different moments of the probe cycle.
    pub fn by_name(name: &str, seed: u64, fault: Fault) -> Result<Scenario> {
        let how = match fault {
            Fault::Blackhole => "every WAN path blackholed",
            Fault::Reset => "every WAN connection reset",
            Fault::None => bail!("the outage needs a fault: blackhole or reset"),
        };
        let jitter = Duration::from_millis(fastrand::Rng::with_seed(seed).u64(0..1_000));
        match name {
            "region-outage" => {
                let region = "us-east".to_string();
                let at = Duration::from_secs(6) + jitter;
                Ok(Scenario {
                    name: "region-outage",
                    failed_region: Some(region.clone()),
                    steps: vec![
                        Step {
                            at,
                            action: Action::Cut(region.clone(), fault),
                            label: format!("outage: {region} goes dark ({how})"),
                        },
                        Step {
                            at: at + Duration::from_secs(4),
                            action: Action::Kill(region.clone()),
                            label: format!("outage: {region}'s processes are killed"),
                        },
                        Step {
                            at: at + Duration::from_secs(12),
                            action: Action::Restore(region.clone()),
                            label: format!("recovery: {region} restarts and its WAN paths heal"),
                        },
                    ],
                    duration: at + Duration::from_secs(22),
                    needs_db: false,
                })
            }
            "switchover" => {
                let at = Duration::from_secs(6) + jitter;
                Ok(Scenario {
                    name: "switchover",
                    failed_region: None,
                    steps: vec![Step {
                        at,
                        action: Action::Switchover("us-west".into()),
                        label: "switchover: the database's writer moves to us-west (planned)"
                            .into(),
                    }],
                    duration: at + Duration::from_secs(12),
                    needs_db: true,
                })
            }
            "failback" => {
                let region = "us-east".to_string();
                let at = Duration::from_secs(6) + jitter;
                Ok(Scenario {
                    name: "failback",
                    failed_region: Some(region.clone()),
                    steps: vec![
                        Step {
                            at,
                            action: Action::Kill(region.clone()),
                            label: format!("outage: {region}'s processes and database are killed"),
                        },
                        Step {
                            at: at + Duration::from_secs(14),
                            action: Action::Restore(region.clone()),
                            label: format!(
                                "recovery: {region} restarts; its old primary rejoins as a standby"
                            ),
                        },
                        Step {
                            at: at + Duration::from_secs(24),
                            action: Action::Switchover(region.clone()),
                            label: format!("failback: switchover of the database back to {region}"),
                        },
                    ],
                    duration: at + Duration::from_secs(34),
                    needs_db: true,
                })
            }
            "partition" => {
                let region = "us-east".to_string();
                let at = Duration::from_secs(6) + jitter;
                Ok(Scenario {
                    name: "partition",
                    failed_region: Some(region.clone()),
                    steps: vec![
                        Step {
                            at,
                            action: Action::Partition(region.clone()),
                            label: format!(
                                "partition: {region} is cut from the other regions; its processes keep running"
                            ),
                        },
                        Step {
                            at: at + Duration::from_secs(12),
                            action: Action::Heal(region.clone()),
                            label: format!("heal: {region} reachable again"),
                        },
                    ],
                    duration: at + Duration::from_secs(24),
                    needs_db: false,
                })
            }
            "flapping" => {
                let region = "us-east".to_string();
                let at = Duration::from_secs(5) + jitter;
                let duration = Duration::from_secs(15);
                Ok(Scenario {
                    name: "flapping",
                    failed_region: None,
                    steps: vec![Step {
                        at,
                        // Each failing phase is shorter than one probe
                        // interval (200 ms in the lab, 1 s by default) and
                        // the period longer than `fall` probes span, so any
                        // `fall` consecutive probes see at most one failure:
                        // hysteresis must absorb it with a margin of two
                        // more failures (a slow probe on a loaded host), not
                        // zero. The old 300/300 ms alternation phase-locked
                        // with 200 ms probes into fail-fail-pass for the
                        // whole run, so one slow probe moved routing. The
                        // period is no multiple of the probe interval, so the
                        // probes' phase slides and every edge sees failures
                        // (a 600 ms period let one edge's probes miss them all).
                        action: Action::Flap {
                            region: region.clone(),
                            period: Duration::from_millis(700),
                            down_for: Duration::from_millis(150),
                            duration,
                        },
                        label: format!(
                            "flapping: {region}'s health fails for 150 ms of every 700 ms for {} s",
                            duration.as_secs()
                        ),
                    }],
                    duration: at + duration + Duration::from_secs(5),
                    needs_db: false,
                })
            }
            "controller-loss" => {
                let at = Duration::from_secs(5) + jitter;
                Ok(Scenario {
                    name: "controller-loss",
                    failed_region: None,
                    steps: vec![
                        Step {
                            at,
                            action: Action::KillControllers,
                            label: "controller loss: every controller is killed".into(),
                        },
                        Step {
                            at: at + Duration::from_secs(30),
                            action: Action::StartControllers,
                            label: "controllers start again from their data".into(),
                        },
                    ],
                    duration: at + Duration::from_secs(38),
                    needs_db: false,
                })
            }
            "rolling-restart" => {
                // One process at a time, a pause between them; the order of
                // docs/deploy.md: controllers, agents, edges.
                let mut steps = Vec::new();
                let mut at = Duration::from_secs(6) + jitter;
                let mut add = |action: Action, label: String| {
                    steps.push(Step { at, action, label });
                    at += Duration::from_secs(3);
                };
                for r in ["us-east", "us-west", "witness"] {
                    add(
                        Action::RestartController(r.into()),
                        format!("rolling restart: the controller in {r}"),
                    );
                }
                for r in ["us-east", "us-west", "witness"] {
                    add(
                        Action::RestartAgent(r.into()),
                        format!("rolling restart: the agent in {r}"),
                    );
                }
                for r in ["us-east", "us-west"] {
                    add(
                        Action::RestartEdge(r.into()),
                        format!("rolling restart: the edge in {r}"),
                    );
                }
                Ok(Scenario {
                    name: "rolling-restart",
                    failed_region: None,
                    steps,
                    duration: at + Duration::from_secs(6),
                    needs_db: true,
                })
            }
            "evacuation" => {
                let at = Duration::from_secs(6) + jitter;
                Ok(Scenario {
                    name: "evacuation",
                    failed_region: None,
                    steps: vec![Step {
                        at,
                        action: Action::StartDrill(Box::new(drill_spec(Some(50)))),
                        label: "drill: us-east is evacuated in steps of 10, 50 and 100%, its writer moved at 50%".into(),
                    }],
                    duration: at + Duration::from_secs(45),
                    needs_db: true,
                })
            }
            "evacuation-abort" => {
                let at = Duration::from_secs(6) + jitter;
                Ok(Scenario {
                    name: "evacuation-abort",
                    failed_region: None,
                    steps: vec![
                        Step {
                            at,
                            action: Action::StartDrill(Box::new(drill_spec(None))),
                            label: "drill: us-east is evacuated in steps of 10, 50 and 100%".into(),
                        },
                        Step {
                            // Into the 50% step.
                            at: at + DRILL_HOLD + Duration::from_secs(2),
                            action: Action::InjectErrors {
                                region: "us-west".into(),
                                per_mille: 300,
                            },
                            label: "breach: us-west's service fails 30% of its requests".into(),
                        },
                        Step {
                            at: at + DRILL_HOLD + Duration::from_secs(14),
                            action: Action::InjectErrors {
                                region: "us-west".into(),
                                per_mille: 0,
                            },
                            label: "us-west's service is healthy again".into(),
                        },
                    ],
                    duration: at + DRILL_HOLD + Duration::from_secs(20),
                    needs_db: true,
                })
            }
            "agent-loss" => {
                let region = "us-east".to_string();
                let at = Duration::from_secs(6) + jitter;
                Ok(Scenario {
                    name: "agent-loss",
                    failed_region: None,
                    steps: vec![
                        Step {
                            at,
                            action: Action::KillAgent(region.clone()),
                            label: format!(
                                "agent loss: {region}'s agent is killed (SIGKILL) while its node is the primary"
                            ),
                        },
                        Step {
                            at: at + Duration::from_secs(4),
                            action: Action::StartAgent(region.clone()),
                            label: format!("recovery: {region}'s agent starts again"),
                        },
                    ],
                    duration: at + Duration::from_secs(16),
                    needs_db: true,
                })
            }
            other => bail!(
                "unknown scenario \"{other}\"; known scenarios: {}",
                NAMES.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_outage_orders_its_steps_and_fits_two_minutes() {
        for seed in 0..20 {
            let s = Scenario::by_name("region-outage", seed, Fault::Blackhole).unwrap();
            let times: Vec<_> = s.steps.iter().map(|s| s.at).collect();
            assert!(times.windows(2).all(|w| w[0] < w[1]));
            assert!(s.duration >= *times.last().unwrap() + Duration::from_secs(10));
            assert!(s.duration < Duration::from_secs(60));
        }
    }

    #[test]
    fn every_scenario_orders_its_steps_and_fits_a_minute() {
        for name in NAMES {
            for seed in 0..5 {
                let s = Scenario::by_name(name, seed, Fault::Blackhole).unwrap();
                let times: Vec<_> = s.steps.iter().map(|s| s.at).collect();
                assert!(times.windows(2).all(|w| w[0] < w[1]), "{name}");
                assert!(s.duration > *times.last().unwrap(), "{name}");
                assert!(s.duration <= Duration::from_secs(60), "{name}");
                assert_eq!(
                    s.needs_db,
                    matches!(
                        *name,
                        "switchover"
                            | "failback"
                            | "agent-loss"
                            | "rolling-restart"
                            | "evacuation"
                            | "evacuation-abort"
                    ),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn every_scenario_has_a_one_line_description() {
        for name in NAMES {
            let about = about(name).unwrap_or_else(|| panic!("{name} has no description"));
            assert!(
                !about.is_empty() && !about.contains('\n'),
                "{name}: {about:?}"
            );
        }
        assert_eq!(about("meteor"), None);
    }

    #[test]
    fn unknown_scenario_lists_the_known_ones() {
        let e = Scenario::by_name("meteor", 1, Fault::Blackhole)
            .unwrap_err()
            .to_string();
        assert!(e.contains("region-outage"), "{e}");
    }
}

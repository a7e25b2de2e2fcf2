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
}

pub const NAMES: &[&str] = &["region-outage"];

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
                            at: at + Duration::from_secs(10),
                            action: Action::Restore(region.clone()),
                            label: format!("recovery: {region} restarts and its WAN paths heal"),
                        },
                    ],
                    duration: at + Duration::from_secs(20),
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
    fn unknown_scenario_lists_the_known_ones() {
        let e = Scenario::by_name("meteor", 1, Fault::Blackhole)
            .unwrap_err()
            .to_string();
        assert!(e.contains("region-outage"), "{e}");
    }
}

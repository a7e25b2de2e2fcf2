//! The arguments of `tern lab` and what a run answers.

use std::path::PathBuf;

use crate::report::Report;
use crate::wan::Fault;

/// Arguments of `tern lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Scenario to run.
    #[arg(long, default_value = "region-outage")]
    pub scenario: String,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Write the report as an HTML page with a timeline plot to this file.
    #[arg(long)]
    pub report_html: Option<PathBuf>,
    /// Seed for the load mix and the fault's timing.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How the failed region's network breaks: `blackhole` (packets vanish,
    /// connections hang) or `reset` (connections are refused and reset).
    #[arg(long, default_value = "blackhole", value_parser = parse_fault)]
    pub fault: Fault,
    /// One-way delay between regions, in milliseconds.
    #[arg(long, default_value_t = 35)]
    pub delay_ms: u64,
    /// Clients located in each serving region.
    #[arg(long, default_value_t = 3)]
    pub clients_per_region: usize,
    /// Milliseconds between the starts of one client's requests.
    #[arg(long, default_value_t = 20)]
    pub pace_ms: u64,
    /// Exit with status 1 when a target of the scenario is missed.
    #[arg(long)]
    pub check: bool,
    /// Keep the lab's directory (configurations and process logs) and print its path.
    #[arg(long)]
    pub keep_dir: bool,
    /// The tern binary to start roles from; defaults to the running one.
    #[arg(long, hide = true)]
    pub tern_binary: Option<PathBuf>,
    /// Give the edges no retry budget. Only for showing that the oracle sees
    /// the failures retries otherwise hide.
    #[arg(long, hide = true)]
    pub no_edge_retries: bool,
    /// Clients in each serving region that find the edges through DNS (0: none).
    #[arg(long, default_value_t = 6)]
    pub dns_clients_per_region: usize,
    /// TTL of the edges' DNS answers, in seconds.
    #[arg(long, default_value_t = 2)]
    pub dns_ttl_s: u64,
    /// Share of DNS clients that keep answers longer than their TTL (at least one when above 0).
    #[arg(long, default_value_t = 0.09)]
    pub dns_stretch_share: f64,
    /// How long those clients keep an answer at least, in seconds.
    #[arg(long, default_value_t = 60)]
    pub dns_stretch_s: u64,
    /// Milliseconds between the starts of one DNS client's requests.
    #[arg(long, default_value_t = 100)]
    pub dns_pace_ms: u64,
    /// The database: `auto` (synchronous replication when PostgreSQL is
    /// installed, none otherwise), `sync`, `async` or `off`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "async", "sync", "off"])]
    pub db: String,
    /// Agents never fence their database. Only for showing that the oracle
    /// counts the writes this lets through.
    #[arg(long, hide = true)]
    pub unsafe_no_self_fence: bool,
    /// Run the edges with the product's default health-check settings
    /// (probes every 1 s, 500 ms timeout, try timeout 2 s) instead of the
    /// lab's fast ones (200 ms, 150 ms, 300 ms).
    #[arg(long)]
    pub product_defaults: bool,
}

impl Default for LabArgs {
    fn default() -> Self {
        LabArgs {
            scenario: "region-outage".into(),
            report_json: None,
            report_html: None,
            seed: 1,
            fault: Fault::Blackhole,
            delay_ms: 35,
            clients_per_region: 3,
            pace_ms: 20,
            check: false,
            keep_dir: false,
            tern_binary: None,
            no_edge_retries: false,
            dns_clients_per_region: 6,
            dns_ttl_s: 2,
            dns_stretch_share: 0.09,
            dns_stretch_s: 60,
            dns_pace_ms: 100,
            db: "auto".into(),
            unsafe_no_self_fence: false,
            product_defaults: false,
        }
    }
}

pub struct Outcome {
    pub report: Report,
    pub check: bool,
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        if self.check && !self.report.targets.all_met() {
            1
        } else {
            0
        }
    }
}

pub(crate) fn parse_fault(s: &str) -> Result<Fault, String> {
    match s {
        "blackhole" => Ok(Fault::Blackhole),
        "reset" => Ok(Fault::Reset),
        other => Err(format!("expected blackhole or reset, found {other}")),
    }
}

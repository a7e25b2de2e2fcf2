//! The arguments of `tern lab` and what a run answers.
//!
//! Arguments with a fixed set of values (`--scenario`, `--db`, `--fault`)
//! give clap each value with a one-line description, so `tern lab --help`
//! lists them and clap refuses anything else before the lab starts: a bad
//! value is a usage error (exit 64), never confused with a missed target
//! (exit 1 under `--check`).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use crate::report::Report;
use crate::scenario;
use crate::wan::Fault;

/// Arguments of `tern lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Scenario to run.
    #[arg(long, default_value = "region-outage", value_parser = ScenarioParser)]
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
    /// How the failed region's network breaks.
    #[arg(long, default_value = "blackhole", value_parser = fault_parser())]
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
    /// The database.
    #[arg(long, default_value = "auto", value_parser = db_parser())]
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

/// What a finished run answers: its report, and whether `--check` was given.
pub struct Outcome {
    /// The run's report, as printed and written.
    pub report: Report,
    /// `--check`: a missed target fails the run.
    pub check: bool,
}

impl Outcome {
    /// The lab's exit status: 1 when `--check` was given and a target was
    /// missed, 0 otherwise (usage errors exit 64 before a run starts).
    pub fn exit_code(&self) -> u8 {
        if self.check && !self.report.targets.all_met() {
            1
        } else {
            0
        }
    }
}

/// `--scenario`: one of [`scenario::NAMES`], each listed with its
/// [`scenario::about`] line. clap's own error for a value outside a list
/// puts the names on one line without what they do; an unknown scenario
/// deserves the list a user chooses from, so this parser writes it.
#[derive(Debug, Clone, Copy)]
struct ScenarioParser;

impl TypedValueParser for ScenarioParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        if let Some(name) = value.to_str().filter(|v| scenario::NAMES.contains(v)) {
            return Ok(name.to_string());
        }
        let arg = arg.map_or_else(|| "--scenario".to_string(), ToString::to_string);
        let mut message = format!(
            "invalid value '{}' for '{arg}'\n\nscenarios:",
            value.to_string_lossy()
        );
        let width = scenario::NAMES.iter().map(|n| n.len()).max().unwrap_or(0);
        for name in scenario::NAMES {
            let about = scenario::about(name).unwrap_or_default();
            let _ = write!(message, "\n  {name:<width$}  {about}");
        }
        Err(
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, message)
                .format(&mut cmd.clone()),
        )
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(scenario::NAMES.iter().map(|name| {
            PossibleValue::new(*name).help(scenario::about(name).unwrap_or_default())
        })))
    }
}

/// `--db`: each mode with what it runs.
fn db_parser() -> PossibleValuesParser {
    PossibleValuesParser::new([
        PossibleValue::new("auto")
            .help("synchronous replication when PostgreSQL is installed, no database otherwise"),
        PossibleValue::new("sync").help(
            "a primary and a standby with synchronous replication: nothing acknowledged is lost",
        ),
        PossibleValue::new("async").help(
            "asynchronous replication: a failover may lose what the standby had not received",
        ),
        PossibleValue::new("off").help("no database"),
    ])
}

/// `--fault`: each way a region's network breaks.
fn fault_parser() -> impl TypedValueParser<Value = Fault> {
    PossibleValuesParser::new([
        PossibleValue::new("blackhole").help("packets vanish and connections hang"),
        PossibleValue::new("reset").help("connections are refused and reset"),
    ])
    .try_map(|s| parse_fault(&s))
}

pub(crate) fn parse_fault(s: &str) -> Result<Fault, String> {
    match s {
        "blackhole" => Ok(Fault::Blackhole),
        "reset" => Ok(Fault::Reset),
        other => Err(format!("expected blackhole or reset, found {other}")),
    }
}

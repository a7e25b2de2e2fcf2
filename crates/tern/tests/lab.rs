//! The lab end to end: `tern lab` as a user runs it, with the report checked
//! against the region-outage targets, and a run built to fail, to show that
//! the oracle sees what it must see.

use std::path::Path;
use std::process::Command;

fn run_lab(seed: u64, extra: &[&str], report: &Path) -> (bool, String, serde_json::Value) {
    run_scenario("region-outage", seed, extra, report)
}

fn run_scenario(
    scenario: &str,
    seed: u64,
    extra: &[&str],
    report: &Path,
) -> (bool, String, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "lab",
            "--scenario",
            scenario,
            "--seed",
            &seed.to_string(),
            "--report-json",
        ])
        .arg(report)
        .args(extra)
        .output()
        .expect("run tern lab");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = std::fs::read_to_string(report)
        .unwrap_or_else(|e| panic!("no report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    (
        out.status.success(),
        format!("{stdout}\n{stderr}"),
        serde_json::from_str(&text).unwrap(),
    )
}

fn failed_for(report: &serde_json::Value, region: &str) -> u64 {
    report["failed_by_client_region"][region].as_u64().unwrap()
}

/// Region us-east dies; clients of us-west must not notice, and the edges
/// must route away within a second. Two seeds move the fault across the
/// probe cycle.
#[test]
fn lab_region_outage_meets_its_targets_over_seeds() {
    let dir = tempfile::tempdir().unwrap();
    for seed in [2, 3] {
        let path = dir.path().join(format!("report-{seed}.json"));
        let (ok, output, r) = run_lab(seed, &["--check"], &path);
        assert!(ok, "seed {seed}: lab missed a target:\n{output}");
        assert_eq!(r["scenario"], "region-outage");
        assert!(
            r["requests_total"].as_u64().unwrap() > 1000,
            "seed {seed}: {r:#}"
        );
        assert_eq!(failed_for(&r, "us-west"), 0, "seed {seed}: {output}");
        let detection = r["detection_ms"].as_f64().unwrap();
        assert!(detection < 1000.0, "seed {seed}: detection {detection} ms");
        // Traffic went to us-west during the outage and came back afterwards.
        assert!(
            r["served_by"]["during"]["us-east"].is_null(),
            "seed {seed}: {r:#}"
        );
        assert!(
            r["served_by"]["after"]["us-east"].as_u64().unwrap() > 0,
            "seed {seed}: {r:#}"
        );
        for phase in ["before", "during", "after"] {
            let p = &r["latency_ms"][phase];
            assert!(
                p["count"].as_u64().unwrap() > 0 && p["p50"].is_number() && p["p99"].is_number(),
                "{phase}: {p}"
            );
        }
        // The controllers saw it too, from a majority of vantage points.
        let verdict = r["verdict_ms"].as_f64().expect("verdict_ms");
        assert!(
            verdict > 0.0 && verdict < 10_000.0,
            "seed {seed}: verdict {verdict} ms"
        );
        assert!(
            r["audit"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l.as_str().unwrap().contains("region us-east up -> down")),
            "seed {seed}: {r:#}"
        );
        assert!(
            output.contains("goes dark"),
            "progress lines missing:\n{output}"
        );
        assert!(
            output.contains("edges route:"),
            "live line missing:\n{output}"
        );
    }
}

/// The same outage with the edges' retries switched off: requests in flight
/// to the dead region now fail for us-west's clients, and the oracle must
/// say so (and `--check` must fail).
#[test]
fn lab_oracle_reports_failures_when_edges_cannot_retry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let (ok, output, r) = run_lab(4, &["--check", "--no-edge-retries"], &path);
    assert!(
        failed_for(&r, "us-west") > 0,
        "the oracle missed failures:\n{output}"
    );
    assert_eq!(r["targets"]["no_failures_outside_failed_region"], false);
    assert!(r["error_window_ms"].as_f64().unwrap() > 0.0);
    assert!(!ok, "--check must fail when a target is missed");
}

/// The lab leaves no process behind.
#[test]
fn lab_cleans_up_its_processes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let _ = run_lab(5, &[], &path);
    let leaked = lab_children();
    assert!(leaked.is_empty(), "processes left behind: {leaked:?}");
}

/// us-east is cut off while its processes run: the majority side decides,
/// the cut-off controller decides nothing, and after healing routing moves
/// back exactly once.
#[test]
fn lab_partition_majority_decides_minority_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partition.json");
    let (ok, output, r) = run_scenario("partition", 6, &["--check"], &path);
    assert!(ok, "partition missed a target:\n{output}");
    assert_eq!(r["minority_decisions"], 0, "{output}");
    assert_eq!(r["routing_changes"], 2, "{output}");
    assert!(r["verdict_ms"].as_f64().is_some(), "{output}");
    assert_eq!(failed_for(&r, "us-west"), 0, "{output}");
}

/// us-east's health fails for 150 ms of every 700 ms: no `fall` probes in a
/// row see more than one failure, so nothing moves, even with a slow probe
/// or two on a loaded host (300/300 ms phase-locked with 200 ms probes into
/// fail-fail-pass, and one slow probe moved routing in CI).
#[test]
fn lab_flapping_moves_no_routing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flapping.json");
    let (ok, output, r) = run_scenario("flapping", 7, &["--check"], &path);
    assert!(ok, "flapping missed a target:\n{output}");
    assert_eq!(r["routing_changes"], 0, "{output}");
    assert_eq!(r["edge_route_changes"], 0, "{output}");
    assert_eq!(r["requests_failed"], 0, "{output}");
    // The flap reached every edge's probes: a run in which no probe saw it
    // would pass without testing anything.
    for edge in ["us-east", "us-west"] {
        let seen = r["probe_failures"][edge]["us-east"].as_u64().unwrap_or(0);
        assert!(
            seen > 0,
            "the {edge} edge saw no failed probe of us-east:\n{output}"
        );
    }
}

/// Every controller dies for 30 s: the edges keep serving with the last
/// committed table, with no added errors.
#[test]
fn lab_controller_loss_adds_no_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller-loss.json");
    let (ok, output, r) = run_scenario("controller-loss", 8, &["--check"], &path);
    assert!(ok, "controller-loss missed a target:\n{output}");
    assert_eq!(r["requests_failed"], 0, "{output}");
    assert!(r["requests_total"].as_u64().unwrap() > 3000, "{output}");
    assert!(output.contains("every controller is killed"), "{output}");
}

/// Pids of running `tern edge` and `tern sample-service` processes started
/// by a lab (their arguments name the lab's directory).
fn lab_children() -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let role = args.get(1).map(String::as_str);
        if matches!(
            role,
            Some("edge") | Some("sample-service") | Some("controller") | Some("agent")
        ) && args.iter().any(|a| a.contains("tern-lab-"))
        {
            pids.push(pid);
        }
    }
    pids
}

//! The drill scenarios end to end (`tern lab --scenario evacuation` and
//! `evacuation-abort` with `--check`): a drill under load passes with
//! traffic moving as each step says and the writer switched over and back
//! with nothing lost, and a drill whose receiving region degrades aborts in
//! time, with routing back and the breach's failures within the bound.

use std::process::Command;

fn run(scenario: &str, report: &std::path::Path) -> (bool, String, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["lab", "--scenario", scenario, "--check", "--report-json"])
        .arg(report)
        .output()
        .expect("run tern lab");
    let output = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text =
        std::fs::read_to_string(report).unwrap_or_else(|e| panic!("no report ({e}):\n{output}"));
    (
        out.status.success(),
        output,
        serde_json::from_str(&text).unwrap(),
    )
}

#[test]
fn lab_evacuation_drill_passes_with_traffic_moving_as_each_step_says() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, output, r) = run("evacuation", &dir.path().join("r.json"));
    assert!(ok, "evacuation missed a target:\n{output}");
    assert_eq!(r["drill"]["outcome"], "passed", "{output}");
    let phases = r["drill"]["phases"].as_array().unwrap();
    let judged: Vec<&serde_json::Value> = phases
        .iter()
        .filter(|p| p["within_tolerance"].as_bool().is_some())
        .collect();
    assert!(judged.len() >= 4, "too few phases judged:\n{output}");
    assert!(
        phases
            .iter()
            .any(|p| p["share"] == 100 && p["measured"].as_f64() > Some(0.9)),
        "{output}"
    );
    assert_eq!(r["writes"]["lost_acked_writes"], 0, "{output}");
    assert!(output.contains("moving-writer"), "{output}");
}

#[test]
fn lab_evacuation_abort_restores_routing_within_two_windows() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, output, r) = run("evacuation-abort", &dir.path().join("r.json"));
    assert!(ok, "evacuation-abort missed a target:\n{output}");
    assert_eq!(r["drill"]["outcome"], "aborted", "{output}");
    let reason = r["drill"]["abort_reason"].as_str().unwrap();
    assert!(
        reason.contains("error rate of payments for clients in"),
        "{reason}"
    );
    assert!(
        r["drill"]["after_share"].as_f64().unwrap() < 0.1,
        "{output}"
    );
}

//! The rolling-restart scenario end to end, as a user runs it: every
//! controller, then every agent, then every edge is stopped with SIGTERM and
//! started again under load, and `--check` holds the run to its targets (no
//! failed request or write, nothing lost, no routing change, no failover).

use std::process::Command;

// Broke twice: the writer region's agent cut every session its writer proxy
// relayed when it stopped, so the payments in flight failed while the next
// agent started; and an edge restart refused connections between the old
// edge closing its listeners and the new one binding, so clients left their
// own region's edge and failed when the other region's edge restarted.
#[test]
fn lab_rolling_restart_fails_no_request_and_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["lab", "--scenario", "rolling-restart", "--check"])
        .arg("--report-json")
        .arg(&report)
        .output()
        .expect("run tern lab");
    let output = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text =
        std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("no report ({e}):\n{output}"));
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(out.status.success(), "a target was missed:\n{output}");
    // The figures behind the targets, so that a failure names them.
    assert_eq!(r["requests_failed"], 0, "{output}");
    assert_eq!(r["writes"]["failed_writes"], 0, "{output}");
    assert_eq!(r["writes"]["lost_acked_writes"], 0, "{output}");
    assert_eq!(r["routing_changes"], 0, "{output}");
    assert_eq!(r["database"]["writer"], "us-east", "{output}");
    assert!(
        r["writes"]["acked_writes"].as_u64().unwrap_or(0) > 100,
        "too few writes to judge:\n{output}"
    );
}

//! The lab's DNS path: clients that find the edges through the edges' own DNS
//! (multivalue, a stub cache honouring TTLs, a share of clients keeping
//! answers longer) against the HTTP path, for the same region outage.

use std::process::Command;

#[test]
fn dns_clients_leave_the_dead_region_after_detection_plus_ttl_and_stretchers_much_later() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "lab",
            "--seed",
            "3",
            "--dns-ttl-s",
            "2",
            "--dns-stretch-s",
            "60",
        ])
        .arg("--report-json")
        .arg(&report)
        .output()
        .expect("run tern lab");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("dns path vs http path"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let dns = &r["dns_path"];
    let group = |name: &str| {
        dns["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == name)
            .unwrap_or_else(|| panic!("no group {name}: {dns:#}"))
            .clone()
    };
    let http = group("edges route (all HTTP clients)");
    let honours = group("dns, honours TTL");
    let stretches = group("dns, keeps answers longer");
    assert_eq!(http["kept_reaching_failed_region_ms"], r["detection_ms"]);
    // 6 DNS clients per region, 9% of 12 rounds to 1.
    assert_eq!(honours["clients"], 11, "{dns:#}");
    assert_eq!(stretches["clients"], 1, "{dns:#}");
    assert!(honours["requests"].as_u64().unwrap() > 500, "{dns:#}");
    // Multivalue answers hold the other region too: nobody fails, they move on.
    assert_eq!(honours["failed"], 0, "{dns:#}");
    assert_eq!(dns["honouring_clients_within_bound"], true, "{dns:#}");
    let bound = dns["bound_ms"].as_f64().unwrap();
    // A client keeping answers for 60 s keeps trying the dead region through
    // most of the 10 s outage, far past the honouring clients' bound.
    let stretched = stretches["kept_reaching_failed_region_ms"]
        .as_f64()
        .unwrap();
    assert!(
        stretched > bound + 3_000.0,
        "{stretched} vs bound {bound}: {dns:#}"
    );
}

//! `tern check-config` reports every problem of a file in one run, in the
//! file's own words, as `FILE:LINE:COLUMN: `KEY`: message` lines and a count.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EX_CONFIG: i32 = 78;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .current_dir(fixtures())
        .output()
        .expect("run the tern binary")
}

/// check-config stopped at the first value of the wrong type (`expected
/// i64`), hiding a second one in another table and a policy that does not
/// exist, although it promises every problem.
#[test]
fn check_config_reports_every_type_error_in_one_pass() {
    let out = tern(&["check-config", "type_errors.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    for (line, expected) in lines.iter().zip([
        "type_errors.toml:10:11: `edge.workers`: expected a whole number, found the string \"4\"",
        "type_errors.toml:13:10: `service.api.policy`: expected one of \"failover\", \"weighted\", \"latency\", found \"fastest\"",
        "type_errors.toml:17:41: `service.api.backend[0].health.interval`: expected a duration like 500ms, found the whole number 5",
        "type_errors.toml: 3 problems; nothing was started",
    ]) {
        assert!(line.starts_with(expected), "expected {expected:?}, got\n{stderr}");
    }
    assert!(!stderr.contains("i64"), "{stderr}");
}

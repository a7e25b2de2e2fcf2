//! The `tern` binary's command line: exit codes and what it prints.
//!
//! Exit codes follow sysexits: 0 for success, 78 (EX_CONFIG) for a configuration
//! file that cannot be read or is invalid, 64 (EX_USAGE) for bad command-line usage.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EX_USAGE: i32 = 64;
const EX_CONFIG: i32 = 78;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs `tern` with `args` in the fixture directory, so that file names in
/// its output are the short relative names the test passed.
fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .current_dir(fixtures())
        .env_remove("RUST_LOG")
        .output()
        .expect("run the tern binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code, showing both streams when it is wrong.
#[track_caller]
fn assert_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: wrong exit status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn check_config_accepts_a_good_file_and_prints_a_summary() {
    let out = tern(&["check-config", "good.toml"]);
    assert_code(&out, 0, "tern check-config good.toml");
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("good.toml: ok\n"), "{stdout}");
    for expected in [
        "regions (3): us-east, us-west, witness (no traffic)",
        "edge: region us-west, listen 127.0.1.1:8080, admin 127.0.1.1:9090",
        "services (2):",
        "  api: policy failover, api.example.com, *.api.example.com, path /v1, when all unhealthy fail-closed",
        "us-east http://127.0.1.10:8080/base weight 3 health http /healthz every 2s",
        "us-west http://127.0.2.10:80 weight 0 health tcp every 1s",
        "  web: policy weighted, any host, path /, when all unhealthy fail-open",
    ] {
        assert!(
            stdout.contains(expected),
            "summary lacks {expected:?}:\n{stdout}"
        );
    }
}

#[test]
fn check_config_rejects_a_bad_file_naming_file_line_and_key() {
    let out = tern(&["check-config", "bad.toml"]);
    assert_code(&out, EX_CONFIG, "tern check-config bad.toml");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    // Every problem is reported, in file order, then a count.
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 3, "{stderr}");
    assert!(
        lines[0]
            .starts_with("bad.toml:8:10: `service.api.backend[0].region`: unknown region \"west\""),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(
            "bad.toml:10:10: `service.api.backend[0].weight`: expected an integer from 0 to 1000"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.toml: 2 problems; nothing was started"),
        "{stderr}"
    );
}

#[test]
fn check_config_rejects_a_toml_syntax_error() {
    let out = tern(&["check-config", "syntax.toml"]);
    assert_code(&out, EX_CONFIG, "tern check-config syntax.toml");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("syntax.toml:2:") && stderr.contains("`region.name`"),
        "{stderr}"
    );
    assert!(stderr.contains("1 problem;"), "{stderr}");
}

#[test]
fn check_config_of_a_missing_file_is_a_config_error() {
    let out = tern(&["check-config", "no-such-file.toml"]);
    assert_code(&out, EX_CONFIG, "tern check-config no-such-file.toml");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("no-such-file.toml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn edge_with_a_bad_file_exits_before_starting() {
    let out = tern(&["edge", "--config", "bad.toml"]);
    assert_code(&out, EX_CONFIG, "tern edge --config bad.toml");
    assert!(
        text(&out.stderr).contains("nothing was started"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn usage_errors_exit_64() {
    for args in [
        &["no-such-command"][..],
        &["--no-such-flag"],
        &["check-config"],
        &["check-config", "--no-such-flag", "good.toml"],
        &["check-config", "good.toml", "extra.toml"],
        &["edge"],
    ] {
        let out = tern(args);
        assert_code(&out, EX_USAGE, &format!("tern {}", args.join(" ")));
        assert!(
            !out.stderr.is_empty(),
            "tern {}: usage errors explain themselves on stderr",
            args.join(" ")
        );
    }
}

#[test]
fn help_exits_0_and_lists_the_subcommands() {
    for args in [&["--help"][..], &["help"], &["check-config", "--help"]] {
        let out = tern(args);
        assert_code(&out, 0, &format!("tern {}", args.join(" ")));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("Usage: tern"), "{stdout}");
    }
    let stdout = text(&tern(&["--help"]).stdout);
    for sub in ["check-config", "edge", "lab", "sample-service"] {
        assert!(stdout.contains(sub), "--help lacks {sub}:\n{stdout}");
    }
}

#[test]
fn version_exits_0() {
    let out = tern(&["--version"]);
    assert_code(&out, 0, "tern --version");
    assert!(
        text(&out.stdout).starts_with("tern "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn sample_service_without_arguments_exits_64_with_usage() {
    let out = tern(&["sample-service"]);
    assert_code(&out, EX_USAGE, "tern sample-service");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("Usage: tern sample-service"), "{stderr}");
}

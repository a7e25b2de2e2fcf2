//! `tern lab`'s command line: values outside a fixed list are usage errors
//! (exit 64, before anything starts), and `--help` lists each scenario with
//! what it does.

use std::process::{Command, Output};

use tern_lab::scenario;

const EX_USAGE: i32 = 64;

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .env_remove("TERN_LOG")
        .output()
        .expect("run the tern binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

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

/// The line of `output` that names `name` and holds its description.
fn line_for<'a>(output: &'a str, name: &str) -> Option<&'a str> {
    let about = scenario::about(name).expect("a known scenario");
    output
        .lines()
        .find(|l| l.contains(name) && l.contains(about))
}

/// `tern lab --scenario nope` exited 1, the status `--check` gives a missed
/// target, after starting the lab's runtime, and named the scenarios on one
/// line without saying what they do.
#[test]
fn an_unknown_scenario_exits_64_and_lists_the_scenarios() {
    let out = tern(&["lab", "--scenario", "nope"]);
    assert_code(&out, EX_USAGE, "tern lab --scenario nope");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid value 'nope' for '--scenario"),
        "{stderr}"
    );
    assert!(scenario::NAMES.len() >= 7, "{:?}", scenario::NAMES);
    for name in scenario::NAMES {
        let line = line_for(&stderr, name)
            .unwrap_or_else(|| panic!("no line for {name} with its description:\n{stderr}"));
        assert!(
            line.trim_start().starts_with(name),
            "one scenario a line, name first: {line:?}"
        );
    }
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
}

/// `tern lab --help` showed `--scenario` without the scenarios to choose from.
#[test]
fn lab_help_lists_every_scenario() {
    for args in [&["lab", "--help"][..], &["help", "lab"]] {
        let out = tern(args);
        assert_code(&out, 0, &format!("tern {}", args.join(" ")));
        let stdout = text(&out.stdout);
        for name in scenario::NAMES {
            let line = line_for(&stdout, name)
                .unwrap_or_else(|| panic!("no line for {name} with its description:\n{stdout}"));
            assert!(
                line.trim_start().starts_with(&format!("- {name}: ")),
                "{line:?}"
            );
        }
        for value in ["auto", "sync", "async", "off", "blackhole", "reset"] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("- {value}: "))),
                "no line for {value}:\n{stdout}"
            );
        }
    }
}

/// Every other lab flag with a bad value is a usage error too, refused
/// before the lab starts.
#[test]
fn lab_flags_with_bad_values_exit_64() {
    for (args, says) in [
        (
            &["lab", "--db", "nope"][..],
            "possible values: auto, sync, async, off",
        ),
        (
            &["lab", "--fault", "nope"],
            "possible values: blackhole, reset",
        ),
        (&["lab", "--seed", "x"], "invalid value 'x' for '--seed"),
        (
            &["lab", "--clients-per-region", "many"],
            "--clients-per-region",
        ),
        (
            &["lab", "--scenario"],
            "a value is required for '--scenario",
        ),
        (&["lab", "--no-such-flag"], "--no-such-flag"),
    ] {
        let what = format!("tern {}", args.join(" "));
        let out = tern(args);
        assert_code(&out, EX_USAGE, &what);
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(says),
            "{what}: expected {says:?} in\n{stderr}"
        );
        assert!(stderr.starts_with("error: "), "{what}:\n{stderr}");
    }
}

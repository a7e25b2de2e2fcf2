//! Sockets handed to `tern` at its start (systemd's socket activation
//! protocol, `LISTEN_FDS` and `LISTEN_FDNAMES`): a controller serves the one
//! named `controller` (the operator commands' test runs on them), and every
//! handover tern cannot serve exactly is refused before anything starts.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use tern_lab::process::hand_over;

fn config(dir: &Path, controller_addr: &str) -> String {
    let s = format!(
        "[[region]]\nname = \"east\"\n[[region]]\nname = \"west\"\n[[region]]\nname = \"witness\"\nserves_traffic = false\n\
         [service.api]\npolicy = \"failover\"\n\
         [[service.api.backend]]\nregion = \"east\"\nurl = \"http://127.0.0.1:9\"\n\
         [[service.api.backend]]\nregion = \"west\"\nurl = \"http://127.0.0.1:9\"\n\
         [controller]\n\
         [[controller.node]]\nid = 1\nregion = \"east\"\naddr = \"{controller_addr}\"\n\
         [[controller.node]]\nid = 2\nregion = \"west\"\naddr = \"127.0.0.1:2\"\n\
         [[controller.node]]\nid = 3\nregion = \"witness\"\naddr = \"127.0.0.1:3\"\n"
    );
    let path = dir.join("tern.toml");
    std::fs::write(&path, s).unwrap();
    path.display().to_string()
}

fn controller(config: &str, data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["controller", "--config", config, "--id", "1", "--data"])
        .arg(data);
    cmd
}

fn run(mut cmd: Command) -> (Option<i32>, String) {
    let o: Output = cmd.output().expect("run tern");
    (
        o.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn a_controller_refuses_a_socket_bound_elsewhere_than_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "127.0.0.1:1");
    let mut cmd = controller(&cfg, &dir.path().join("data"));
    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    let bound = elsewhere.local_addr().unwrap();
    hand_over(&mut cmd, vec![("controller".into(), elsewhere)]).unwrap();
    let (code, out) = run(cmd);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("handed over is bound to {bound}")) && out.contains("127.0.0.1:1"),
        "{out}"
    );
}

#[test]
fn a_socket_that_nobody_serves_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let own = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(dir.path(), &own.local_addr().unwrap().to_string());
    let stray = TcpListener::bind("127.0.0.1:0").unwrap();
    let stray_addr = stray.local_addr().unwrap();
    let mut cmd = controller(&cfg, &dir.path().join("data"));
    hand_over(
        &mut cmd,
        vec![("controller".into(), own), ("edge".into(), stray)],
    )
    .unwrap();
    let (code, out) = run(cmd);
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains(&format!("does not serve: edge {stray_addr}")),
        "{out}"
    );

    // A role that takes no socket at all refuses any.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["check-config", &cfg]);
    hand_over(
        &mut cmd,
        vec![(
            "controller".into(),
            TcpListener::bind("127.0.0.1:0").unwrap(),
        )],
    )
    .unwrap();
    let (code, out) = run(cmd);
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("does not serve: controller"), "{out}");
}

#[test]
fn a_handover_whose_names_do_not_match_its_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "127.0.0.1:1");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["check-config", &cfg])
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "controller");
    let (code, out) = run(cmd);
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("names 1 sockets where LISTEN_FDS says 2"),
        "{out}"
    );

    // Meant for another process: ignored, as sd_listen_fds(3) does.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["check-config", &cfg])
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "controller");
    let (code, out) = run(cmd);
    assert_eq!(code, Some(0), "{out}");
}

//! tern under a service manager. Sockets handed over at its start
//! (systemd's socket activation protocol, `LISTEN_FDS` and
//! `LISTEN_FDNAMES`): a controller serves the one named `controller` (the
//! operator commands' test runs on them), and every handover tern cannot
//! serve exactly is refused before anything starts. Readiness
//! (`NOTIFY_SOCKET`): `READY=1` once a role serves, `STOPPING=1` at shutdown.

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

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

/// A controller started as a service manager would: its socket handed
/// over and `NOTIFY_SOCKET` set. Returns the process, the manager's end of
/// the notification socket (30 s read timeout) and the controller's address.
fn managed_controller(
    dir: &std::path::Path,
) -> (std::process::Child, UnixDatagram, std::net::SocketAddr) {
    let own = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = own.local_addr().unwrap();
    let cfg = config(dir, &addr.to_string());
    let notify_path = dir.join("notify.sock");
    let manager = UnixDatagram::bind(&notify_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut cmd = controller(&cfg, &dir.join("data"));
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    hand_over(&mut cmd, vec![("controller".into(), own)]).unwrap();
    (cmd.spawn().unwrap(), manager, addr)
}

#[test]
fn a_controller_tells_the_service_manager_it_is_ready_once_it_serves_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, manager, addr) = managed_controller(dir.path());
    let mut buf = [0u8; 4096];
    let n = manager.recv(&mut buf).expect("a READY=1 notification");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.lines().any(|l| l == "READY=1"), "{message}");
    assert!(
        message.contains(&format!("STATUS=controller 1 listening on {addr}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("MAINPID={}", child.id())),
        "{message}"
    );
    // Ready means serving: the node answers on its address now.
    std::net::TcpStream::connect(addr).expect("the controller serves once it said READY=1");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let n = manager.recv(&mut buf).expect("a STOPPING=1 notification");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// Broke: the controller said READY=1 before its SIGTERM handler was
/// installed, so a SIGTERM sent the moment it was ready (as a service
/// manager stopping a unit that just started may) killed it with the
/// default action: no STOPPING=1, no clean shutdown.
#[test]
fn a_sigterm_sent_the_moment_a_controller_is_ready_stops_it_cleanly() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, manager, _) = managed_controller(dir.path());
        let mut buf = [0u8; 4096];
        let n = manager.recv(&mut buf).expect("a READY=1 notification");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "round {round}: the controller did not stop cleanly: {status}"
        );
        let n = manager
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("round {round}: no STOPPING=1: {e}"));
        assert_eq!(String::from_utf8_lossy(&buf[..n]), "STOPPING=1");
    }
}

//! `tern drill` against real controller processes: a dry run changes
//! nothing, bad steps are a usage error, a drill whose edges report nothing
//! aborts for missing data with routing restored, `tern status` says the
//! region was never practised, and `tern drill report --html` writes a
//! page that headless Chromium renders with the outcome and every phase.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tern_lab::process::hand_over;

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .output()
        .expect("run tern")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn config(dir: &Path, addrs: &[SocketAddr]) -> std::path::PathBuf {
    let mut s = String::from(
        "[[region]]\nname = \"east\"\n[[region]]\nname = \"west\"\n[[region]]\nname = \"witness\"\nserves_traffic = false\n\
         [service.api]\npolicy = \"failover\"\n\
         [[service.api.backend]]\nregion = \"east\"\nurl = \"http://127.0.0.1:9\"\n\
         [[service.api.backend]]\nregion = \"west\"\nurl = \"http://127.0.0.1:9\"\n\
         [service.api.guardrails]\nmax_p99 = \"3s\"\n\
         [drill]\nwindow = \"1s\"\nhold = \"30s\"\nsteps = [10, 100]\n\
         [controller]\nheartbeat = \"50ms\"\nelection_timeout = \"300ms\"\nrpc_timeout = \"300ms\"\n",
    );
    for (i, (a, r)) in addrs.iter().zip(["east", "west", "witness"]).enumerate() {
        s.push_str(&format!(
            "[[controller.node]]\nid = {}\nregion = \"{r}\"\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    let path = dir.join("tern.toml");
    std::fs::write(&path, s).unwrap();
    path
}

#[test]
fn a_drill_without_edge_reports_aborts_and_its_html_report_renders() {
    let dir = tempfile::tempdir().unwrap();
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let cfg = config(dir.path(), &addrs);
    let cfg = cfg.to_str().unwrap();
    let _nodes: Vec<Node> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
            cmd.args([
                "controller",
                "--config",
                cfg,
                "--id",
                &(i + 1).to_string(),
                "--data",
            ])
            .arg(dir.path().join(format!("data{}", i + 1)))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            hand_over(&mut cmd, vec![("controller".into(), l)]).unwrap();
            Node(cmd.spawn().unwrap())
        })
        .collect();
    wait_until("a leader that takes commands", || {
        let o = tern(&["status", "--config", cfg]);
        o.status.success() && text(&o).contains("(control plane ")
    });
    let o = tern(&["status", "--config", cfg]);
    assert!(text(&o).contains("never practised"), "{}", text(&o));

    // A dry run prints the plan with the file's [drill] defaults.
    let o = tern(&["drill", "start", "east", "--config", cfg, "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("drill of east: 10% -> 100% (each held 30 s)"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("service api has its own limits: errors over 1.0% or p99 over 3000 ms"),
        "{}",
        text(&o)
    );
    let o = tern(&["drill", "status", "--config", cfg]);
    assert!(text(&o).contains("no drill yet"), "{}", text(&o));
    let o = tern(&[
        "drill", "start", "east", "--config", cfg, "--steps", "50,10",
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));

    // No edge reports: after the first window, missing data aborts it,
    // and `tern drill start` (following it) exits 1.
    let o = tern(&["drill", "start", "east", "--config", cfg]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("drill 1 committed"), "{out}");
    assert!(out.contains("aborted: no fresh guardrail data"), "{out}");
    let o = tern(&["status", "--config", cfg, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["drills"]["evacuation"],
        serde_json::json!({}),
        "routing restored"
    );
    let o = tern(&["drill", "abort", "--config", cfg]);
    assert_eq!(o.status.code(), Some(1), "nothing to abort: {}", text(&o));
    assert!(text(&o).contains("no drill is running"), "{}", text(&o));

    let page = dir.path().join("drill.html");
    let json = dir.path().join("drill.json");
    let o = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["drill", "report", "--config", cfg, "--html"])
        .arg(&page)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["id"], 1);
    assert_eq!(report["switchovers"], serde_json::json!([]));
    assert_eq!(
        report["spec"]["service_guardrails"]["api"]["max_p99"], 3000,
        "the leader stamped the service's own limits into the drill"
    );

    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium (apt-get install -y chromium)");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("id=\"outcome\" class=\"bad\">aborted"),
        "{dom}"
    );
    assert!(dom.contains("missing data counts as a breach"), "{dom}");
    assert!(
        dom.contains("api: error rate at most 1.0%, p99 at most 3000 ms"),
        "{dom}"
    );
    assert!(dom.contains("<tr class=\"phase\">"), "{dom}");
    assert!(dom.contains("<svg"), "{dom}");
}

//! The operator commands against real controller processes: `tern status`,
//! `tern route set` (refused, then forced and audited), `tern events`, and
//! what they say once the answering node has lost its quorum.

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

fn config(dir: &Path, addrs: &[SocketAddr]) -> std::path::PathBuf {
    let mut s = String::from(
        "[[region]]\nname = \"east\"\n[[region]]\nname = \"west\"\n[[region]]\nname = \"witness\"\nserves_traffic = false\n\
         [service.api]\npolicy = \"failover\"\n\
         [[service.api.backend]]\nregion = \"east\"\nurl = \"http://127.0.0.1:9\"\n\
         [[service.api.backend]]\nregion = \"west\"\nurl = \"http://127.0.0.1:9\"\n\
         [controller]\nheartbeat = \"50ms\"\nelection_timeout = \"300ms\"\nrpc_timeout = \"300ms\"\n",
    );
    for (i, (a, r)) in addrs.iter().zip(["east", "west", "witness"]).enumerate() {
        s.push_str(&format!(
            "[[controller.node]]\nid = {}\nregion = \"{r}\"\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    // A database cluster whose nodes no agent runs: the plan commands are
    // committed and shown, the steps that need an agent wait.
    s.push_str(
        "[database.orders]\nprimary = \"east\"\n\
         [[database.orders.node]]\nregion = \"east\"\naddr = \"127.0.0.1:9\"\n\
         [[database.orders.node]]\nregion = \"west\"\naddr = \"127.0.0.1:9\"\n",
    );
    let path = dir.join("tern.toml");
    std::fs::write(&path, s).unwrap();
    path
}

/// `tern controller` for node `id`, its output dropped.
fn controller(config: &str, id: usize, data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args([
        "controller",
        "--config",
        config,
        "--id",
        &id.to_string(),
        "--data",
    ])
    .arg(data)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn operator_commands_work_against_any_node_and_say_when_out_of_quorum() {
    let dir = tempfile::tempdir().unwrap();
    // Bound here and handed to each controller at its start, so that no
    // other process can take a port in between.
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let cfg = config(dir.path(), &addrs);
    let cfg_s = cfg.to_str().unwrap();
    let mut nodes: Vec<Option<Node>> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let mut cmd = controller(cfg_s, i + 1, &dir.path().join(format!("data{}", i + 1)));
            hand_over(&mut cmd, vec![("controller".into(), listener)]).unwrap();
            Some(Node(cmd.spawn().expect("start controller")))
        })
        .collect();
    let second = addrs[1].to_string();
    // A leader, whose first entry named the control plane (routing v2).
    wait_until("a leader", || {
        let o = tern(&["status", "--controller", &second]);
        o.status.success()
            && text(&o).contains(", in quorum")
            && text(&o).contains("(control plane ")
    });
    let o = tern(&["status", "--config", cfg_s]);
    let out = text(&o);
    assert!(out.contains("routing table v2 (control plane "), "{out}");
    assert!(out.contains("api: east=1 west=1"), "{out}");

    // Draining every region is refused unless forced; forcing is audited.
    let o = tern(&[
        "route",
        "set",
        "api",
        "--weights",
        "east=0,west=0",
        "--controller",
        &second,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no healthy region"), "{}", text(&o));
    let o = tern(&[
        "route",
        "set",
        "api",
        "--weights",
        "east=0,west=0",
        "--force",
        "--controller",
        &second,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // v1 from the configuration, v2 the control plane naming itself.
    assert!(text(&o).contains("routing table v3"), "{}", text(&o));
    let o = tern(&["events", "--config", cfg_s, "--limit", "10"]);
    let out = text(&o);
    assert!(out.contains("forced weights east=0,west=0"), "{out}");
    let o = tern(&[
        "route",
        "set",
        "api",
        "--weights",
        "east=two",
        "--config",
        cfg_s,
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));

    // Failover: gated (east is not down), then forced and audited; a second
    // plan waits for the first.
    let o = tern(&[
        "failover",
        "orders",
        "--to",
        "west",
        "--controller",
        &second,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is not down"), "{}", text(&o));
    let o = tern(&[
        "failover",
        "orders",
        "--to",
        "west",
        "--force",
        "--no-wait",
        "--controller",
        &second,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("plan 1 committed"), "{}", text(&o));
    let out = text(&tern(&["status", "--config", cfg_s]));
    assert!(out.contains("orders: writer east epoch 0"), "{out}");
    assert!(out.contains("plan 1: east -> west"), "{out}");
    let out = text(&tern(&["events", "--config", cfg_s, "--limit", "10"]));
    assert!(out.contains("forced a failover of orders to west"), "{out}");
    let o = tern(&["switchover", "orders", "--to", "west", "--config", cfg_s]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("plan in progress"), "{}", text(&o));
    // The running plan is cancelled by hand (audited), once.
    let o = tern(&["failover", "cancel", "orders", "--config", cfg_s]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("plan 1 of orders cancelled"),
        "{}",
        text(&o)
    );
    let o = tern(&["failover", "cancel", "orders", "--config", cfg_s]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("no failover plan of orders runs"),
        "{}",
        text(&o)
    );
    let out = text(&tern(&["events", "--config", cfg_s, "--limit", "10"]));
    assert!(out.contains("cancelled plan 1 of orders"), "{out}");

    // Two nodes die: the third answers with what it has and says so, and
    // commits nothing.
    nodes[1].take();
    nodes[2].take();
    let first = addrs[0].to_string();
    wait_until("node 1 out of quorum", || {
        text(&tern(&["status", "--controller", &first])).contains("OUT OF QUORUM")
    });
    let out = text(&tern(&["status", "--controller", &first]));
    assert!(out.contains("routing table v3"), "{out}");
    let o = tern(&[
        "route",
        "set",
        "api",
        "--weights",
        "east=1",
        "--controller",
        &first,
    ]);
    assert_eq!(o.status.code(), Some(69), "{}", text(&o));
    let o = tern(&["events", "--controller", &first]);
    assert!(text(&o).contains("OUT OF QUORUM"), "{}", text(&o));
}

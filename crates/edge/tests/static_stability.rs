//! DESIGN.md invariant 3, the edge's half: edges follow the committed
//! routing table, and with every controller gone (also across an edge
//! restart) they keep serving with the last table while their own health
//! checks still protect requests. Over many seeds of fault timing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use tern_controller::node::NodeOptions;
use tern_controller::Controller;
use tern_core::config::Config;
use tern_core::control::Command;
use tern_proto::ControllerClient;

fn seeds() -> u64 {
    std::env::var("TERN_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Health checks that a loaded machine does not fail by accident.
fn lenient_backend(region: &str, addr: SocketAddr) -> String {
    format!(
        "[[service.api.backend]]\nregion = \"{region}\"\nurl = \"http://{addr}\"\n\
         health = {{ path = \"/health\", interval = \"150ms\", timeout = \"140ms\", fall = 3, rise = 2 }}\n"
    )
}

fn controller_toml(addrs: &[SocketAddr]) -> String {
    // Two regions only (the tests are about edges): two controllers share
    // region a, which a file must accept in so many words.
    let mut s = String::from(
        "[controller]\nallow_unsafe_placement = true\nheartbeat = \"50ms\"\nelection_timeout = \"300ms\"\nrpc_timeout = \"200ms\"\n",
    );
    for (i, a) in addrs.iter().enumerate() {
        let region = if i == 1 { "b" } else { "a" };
        s.push_str(&format!(
            "[[controller.node]]\nid = {}\nregion = \"{region}\"\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    s
}

/// Starts the three controllers on listeners bound beforehand (kept bound,
/// so that no other test takes a port in between).
async fn start_controllers(
    config: &Config,
    dir: &std::path::Path,
    listeners: Vec<std::net::TcpListener>,
) -> Vec<Arc<Controller>> {
    let mut nodes = Vec::new();
    for (id, l) in (1..=3u64).zip(listeners) {
        let options = NodeOptions {
            id,
            data_dir: dir.join(format!("ctl{id}")),
            listen: None,
            join: false,
        };
        let wall = tern_controller::clock::WallClock::new();
        nodes.push(
            Controller::start_on(config, options, Some(l), wall)
                .await
                .expect("controller"),
        );
    }
    nodes
}

/// Sends `n` GETs and returns the bodies (the backend names).
async fn served_by(edge: &RunningEdge, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (status, body) = get(&edge.url("/x")).await;
        assert_eq!(status, StatusCode::OK, "a request failed: {body}");
        out.push(body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_stability_with_all_controllers_down() {
    for seed in 1..=seeds() {
        let mut rng = fastrand::Rng::with_seed(seed);
        let dir = tempfile::tempdir().unwrap();
        let a = Backend::start("a", Mode::Ok).await;
        let b = Backend::start("b", Mode::Ok).await;
        let mut addrs = Vec::new();
        let mut listeners = Vec::new();
        for _ in 0..3 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.push(l.local_addr().unwrap());
            listeners.push(l);
        }
        let state_file = dir.path().join("routing.json");
        let service = format!(
            "[service.api]\npolicy = \"failover\"\nwhen_all_unhealthy = \"fail-open\"\n{}{}\n{}",
            lenient_backend("a", a.addr),
            lenient_backend("b", b.addr),
            controller_toml(&addrs)
        );
        let toml = edge_toml(
            &format!("routing_state = \"{}\"", state_file.display()),
            &service,
        );
        let config = Config::from_toml("test.toml", &toml).unwrap();
        let controllers = start_controllers(&config, dir.path(), listeners).await;
        let edge = RunningEdge::start(&toml).await;
        edge.wait_status("the first committed table", |s| {
            s["routing"]["version"].as_u64() >= Some(1)
        })
        .await;
        assert_eq!(served_by(&edge, 3).await, ["a", "a", "a"], "seed {seed}");

        // Operators drain region a: the edge follows the committed table.
        let client = ControllerClient::new(addrs.clone(), Duration::from_secs(1));
        let mut committed = None;
        for _ in 0..100 {
            let cmd = Command::SetWeights {
                service: "api".into(),
                weights: vec![("a".into(), 0)],
                force: false,
                actor: "test".into(),
            };
            if let Ok(answer) = client.write(&cmd).await {
                committed = Some(answer);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            committed.is_some(),
            "seed {seed}: the drain never committed"
        );
        let s = edge
            .wait_status("the drain applied", |s| {
                s["routing"]["weights"]["api"]["a"] == 0 && s["routing"]["source"] == "controllers"
            })
            .await;
        let version = s["routing"]["version"].as_u64().unwrap();
        assert_eq!(served_by(&edge, 3).await, ["b", "b", "b"], "seed {seed}");

        // Every controller dies at a random moment; traffic keeps to the table.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..200))).await;
        for c in &controllers {
            c.shutdown().await;
        }
        // Looked at after a random while: the table must hold at any moment
        // after the controllers are gone, not only at once.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..400))).await;
        assert!(
            served_by(&edge, 5).await.iter().all(|x| x == "b"),
            "seed {seed}"
        );

        // The edge restarts with no controller: it serves from the saved table.
        edge.stop.cancel();
        let _ = edge.task.await;
        let edge = RunningEdge::start(&toml).await;
        let s = edge.status().await;
        assert_eq!(s["routing"]["source"], "disk", "seed {seed}: {s:#}");
        assert_eq!(
            s["routing"]["version"].as_u64(),
            Some(version),
            "seed {seed}"
        );
        assert!(
            served_by(&edge, 5).await.iter().all(|x| x == "b"),
            "seed {seed}"
        );

        // Its own checks still protect requests: b dies, the edge sees it
        // and, all regions now unhealthy or drained, fails open to a.
        b.kill();
        edge.wait_status("b down by the edge's own checks", |s| {
            s["services"][0]["backends"][1]["health"] == "down"
        })
        .await;
        assert_eq!(served_by(&edge, 3).await, ["a", "a", "a"], "seed {seed}");
        edge.stop.cancel();
        let _ = edge.task.await;
        a.kill();
    }
}

/// Three controllers on listeners of their own, and the configuration text
/// of an edge that knows `extra` controller addresses first.
async fn group(
    dir: &std::path::Path,
    extra_first: &[SocketAddr],
) -> (Vec<Arc<Controller>>, Vec<SocketAddr>, String, Backend) {
    let a = Backend::start("a", Mode::Ok).await;
    let mut addrs = Vec::new();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        addrs.push(l.local_addr().unwrap());
        listeners.push(l);
    }
    let service = format!(
        "[service.api]\npolicy = \"failover\"\nwhen_all_unhealthy = \"fail-open\"\n{}\n{}",
        lenient_backend("a", a.addr),
        controller_toml(&addrs)
    );
    let config = Config::from_toml("test.toml", &edge_toml("", &service)).unwrap();
    let controllers = start_controllers(&config, &dir.join("group"), listeners).await;
    // The edge's own file lists the extra addresses before the group's.
    let mut seen: Vec<SocketAddr> = extra_first.to_vec();
    seen.extend(&addrs);
    let edge_service = format!(
        "[service.api]\npolicy = \"failover\"\nwhen_all_unhealthy = \"fail-open\"\n{}\n{}",
        lenient_backend("a", a.addr),
        controller_toml_ids(&seen, extra_first.len())
    );
    let toml = edge_toml(
        &format!("routing_state = \"{}\"", dir.join("routing.json").display()),
        &edge_service,
    );
    (controllers, addrs, toml, a)
}

/// `controller_toml` whose first `dark` nodes get ids past the group's.
fn controller_toml_ids(addrs: &[SocketAddr], dark: usize) -> String {
    let mut s = String::from(
        "[controller]\nallow_unsafe_placement = true\nheartbeat = \"50ms\"\nelection_timeout = \"300ms\"\nrpc_timeout = \"200ms\"\n",
    );
    for (i, a) in addrs.iter().enumerate() {
        let id = if i < dark { 10 + i } else { i - dark + 1 };
        let region = if i % 2 == 1 { "b" } else { "a" };
        s.push_str(&format!(
            "[[controller.node]]\nid = {id}\nregion = \"{region}\"\naddr = \"{a}\"\n"
        ));
    }
    s
}

// Broke when an edge's long poll stayed on a controller that went dark
// (it accepts connections and never answers) for about 20 s: the edge
// must move to the next controller within the poll bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_leaves_a_dark_controller_within_the_poll_bound() {
    let dir = tempfile::tempdir().unwrap();
    // A controller that went dark: connections open, nothing comes back.
    let dark = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dark_addr = dark.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = dark.accept().await {
            open.push(s);
        }
    });
    let (controllers, _, toml, _a) = group(dir.path(), &[dark_addr]).await;
    let started = tokio::time::Instant::now();
    let edge = RunningEdge::start(&toml).await;
    edge.wait_status("a table from the next controller", |s| {
        s["routing"]["source"] == "controllers"
    })
    .await;
    let took = started.elapsed();
    // The poll wait plus the client's timeout (0.5 s) plus slack.
    let bound = tern_edge::follow::POLL_WAIT + Duration::from_secs(3);
    assert!(
        took < bound,
        "the edge stayed {took:?} on the dark controller"
    );
    edge.stop.cancel();
    let _ = edge.task.await;
    for c in &controllers {
        c.shutdown().await;
    }
    held.abort();
}

// Broke when routing versions had no identity: a control plane rebuilt from
// nothing counts its versions from 1 again, and an edge that had seen a
// higher version of the old one ignored it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_follows_a_rebuilt_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let (controllers, addrs, toml, _a) = group(dir.path(), &[]).await;
    let edge = RunningEdge::start(&toml).await;
    // The old plane moves on to a few versions.
    let client = ControllerClient::new(addrs.clone(), Duration::from_secs(1));
    for w in [2u32, 3, 4] {
        for _ in 0..100 {
            let cmd = Command::SetWeights {
                service: "api".into(),
                weights: vec![("a".into(), w)],
                force: false,
                actor: "test".into(),
            };
            if client.write(&cmd).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let old = edge
        .wait_status("the old plane's weight 4", |s| {
            s["routing"]["weights"]["api"]["a"] == 4
        })
        .await;
    let old_id = old["routing"]["cluster_id"].as_str().unwrap().to_string();
    let old_version = old["routing"]["version"].as_u64().unwrap();
    assert!(!old_id.is_empty());
    // The control plane is rebuilt from nothing on the same addresses.
    for c in &controllers {
        c.shutdown().await;
    }
    drop(controllers);
    let mut listeners = Vec::new();
    for a in &addrs {
        listeners.push(std::net::TcpListener::bind(a).unwrap());
    }
    let config = Config::from_toml("test.toml", &toml).unwrap();
    let rebuilt = start_controllers(&config, &dir.path().join("rebuilt"), listeners).await;
    let new = edge
        .wait_status("the rebuilt plane's table", |s| {
            s["routing"]["cluster_id"]
                .as_str()
                .is_some_and(|id| id != old_id)
        })
        .await;
    assert!(
        new["routing"]["version"].as_u64().unwrap() < old_version,
        "{new:#}"
    );
    assert_eq!(new["routing"]["weights"]["api"]["a"], 1, "{new:#}");
    edge.stop.cancel();
    let _ = edge.task.await;
    for c in &rebuilt {
        c.shutdown().await;
    }
}

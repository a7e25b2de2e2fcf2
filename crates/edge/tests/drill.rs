//! A drill's evacuation share, end to end: real controllers commit the
//! drill, a real edge follows the table, and the share of requests (HTTP,
//! each routing policy) and of answers (DNS with dig, each policy) that
//! leave the evacuated region matches the step within a tolerance; the
//! edge reports its clients' figures while the drill runs, and an abort
//! restores routing in one step.

mod common;
mod dns_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tern_controller::node::NodeOptions;
use tern_controller::Controller;
use tern_core::config::Config;
use tern_core::control::Command;
use tern_core::drill::{DrillSpec, Guardrails};
use tern_edge::{Edge, Phase};
use tern_proto::ControllerClient;
use tokio_util::sync::CancellationToken;

/// Share tolerance: 400 draws of p = 0.5 have a standard deviation of 2.5%.
const TOLERANCE: f64 = 0.1;
const DRAWS: usize = 400;

fn config_text(a: SocketAddr, b: SocketAddr, controllers: &[SocketAddr]) -> String {
    let mut s = String::from(
        "[[region]]\nname = \"a\"\n[[region]]\nname = \"b\"\n\n\
         [edge]\nregion = \"a\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworkers = 1\n\n",
    );
    for (name, policy) in [("fo", "failover"), ("we", "weighted"), ("la", "latency")] {
        s.push_str(&format!(
            "[service.{name}]\npolicy = \"{policy}\"\npath_prefix = \"/{name}\"\n"
        ));
        s.push_str(&backend_toml(name, "a", a, ""));
        s.push_str(&backend_toml(name, "b", b, ""));
    }
    s.push_str(
        "\n[dns]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\
         [[dns.network]]\nprefix = \"127.0.0.0/8\"\nregion = \"a\"\n\
         [[dns.zone]]\nname = \"example.com\"\nns = [\"ns1.example.com\"]\n",
    );
    for policy in ["failover", "weighted", "latency", "multivalue"] {
        s.push_str(&format!(
            "[[dns.zone.record]]\nname = \"{policy}\"\ntype = \"A\"\npolicy = \"{policy}\"\nttl = \"1s\"\n\
             [[dns.zone.record.target]]\naddress = \"192.0.2.1\"\nregion = \"a\"\n\
             [[dns.zone.record.target]]\naddress = \"192.0.2.2\"\nregion = \"b\"\n"
        ));
    }
    s.push_str(
        "\n[controller]\nallow_unsafe_placement = true\nheartbeat = \"50ms\"\nelection_timeout = \"300ms\"\nrpc_timeout = \"300ms\"\n",
    );
    for (i, c) in controllers.iter().enumerate() {
        let region = if i == 1 { "b" } else { "a" };
        s.push_str(&format!(
            "[[controller.node]]\nid = {}\nregion = \"{region}\"\naddr = \"{c}\"\n",
            i + 1
        ));
    }
    s
}

struct Setup {
    _dir: tempfile::TempDir,
    _controllers: Vec<Arc<Controller>>,
    client: ControllerClient,
    http: SocketAddr,
    dns: SocketAddr,
    admin: SocketAddr,
    stop: CancellationToken,
    /// Region b's edge: every serving region's edge reports to the drill.
    stop_b: CancellationToken,
    _a: Backend,
    _b: Backend,
}

async fn setup() -> Setup {
    setup_with(|t| t).await
}

/// [`setup`] with the configuration text changed by `tweak`.
async fn setup_with(tweak: impl Fn(String) -> String) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let text = tweak(config_text(a.addr, b.addr, &addrs));
    let config = Config::from_toml("drill.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let mut controllers = Vec::new();
    for (id, l) in (1..=3u64).zip(listeners) {
        let options = NodeOptions {
            id,
            data_dir: dir.path().join(format!("ctl{id}")),
            listen: None,
            join: false,
        };
        controllers.push(
            Controller::start_on(
                &config,
                options,
                Some(l),
                tern_controller::clock::WallClock::new(),
            )
            .await
            .unwrap(),
        );
    }
    let edge = Edge::bind(&config).await.unwrap();
    let (http, dns, admin) = (
        edge.local_addr(),
        edge.dns_addr().unwrap(),
        edge.admin_addr().unwrap(),
    );
    let mut phase = edge.phase();
    let stop = CancellationToken::new();
    tokio::spawn(edge.run(stop.clone()));
    phase.wait_for(|p| *p == Phase::Serving).await.unwrap();
    let text_b = text.replacen("region = \"a\"\nlisten", "region = \"b\"\nlisten", 1);
    let config_b = Config::from_toml("drill-b.toml", &text_b).unwrap_or_else(|e| panic!("{e}"));
    let edge_b = Edge::bind(&config_b).await.unwrap();
    let mut phase_b = edge_b.phase();
    let stop_b = CancellationToken::new();
    tokio::spawn(edge_b.run(stop_b.clone()));
    phase_b.wait_for(|p| *p == Phase::Serving).await.unwrap();
    let client = ControllerClient::new(addrs, Duration::from_secs(1));
    let s = Setup {
        _dir: dir,
        _controllers: controllers,
        client,
        http,
        dns,
        admin,
        stop,
        stop_b,
        _a: a,
        _b: b,
    };
    s.wait_status("the first committed table", |v| {
        v["routing"]["version"].as_u64() >= Some(2)
    })
    .await;
    s
}

impl Setup {
    async fn status(&self) -> serde_json::Value {
        let body = dns_common::http_get(self.admin, "/status").await;
        serde_json::from_str(&body).unwrap()
    }

    async fn wait_status(&self, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.status().await;
            if f(&s) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Share of `DRAWS` requests under `/prefix` that region a served.
    async fn http_share_a(&self, prefix: &str) -> f64 {
        let mut a = 0;
        for _ in 0..DRAWS {
            let (status, body) = get(&format!("http://{}/{prefix}/x", self.http)).await;
            assert!(status.is_success(), "{status} {body}");
            a += usize::from(body == "a");
        }
        a as f64 / DRAWS as f64
    }

    /// Share of `DRAWS` answers for `name` that name region a's address.
    async fn dns_share_a(&self, name: &str) -> f64 {
        let fqdn = format!("{name}.example.com");
        let args: Vec<&str> = std::iter::repeat_n(fqdn.as_str(), DRAWS).collect();
        let answers = dns_common::dig(self.dns, &args).await;
        assert_eq!(answers.len(), DRAWS);
        let a = answers
            .iter()
            .filter(|d| d.answers.iter().any(|r| r.3 == "192.0.2.1"))
            .count();
        a as f64 / DRAWS as f64
    }
}

fn near(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= TOLERANCE,
        "{what}: {got:.3} of traffic still in region a, expected {want:.3} +- {TOLERANCE}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evacuation_share_is_honoured_by_every_policy_and_an_abort_restores_routing() {
    let s = setup().await;
    // Before: the failover and latency policies (a is local) send all to
    // a, the weighted one half.
    near("failover before", s.http_share_a("fo").await, 1.0);
    let spec = DrillSpec {
        service_guardrails: Default::default(),
        region: "a".into(),
        steps: vec![50, 100],
        // Held far longer than the test needs: the test aborts it.
        hold: Duration::from_secs(600),
        return_steps: vec![],
        switchover_at: None,
        guardrails: Guardrails {
            window: Duration::from_secs(2),
            ..Guardrails::default()
        },
    };
    s.client
        .write(&Command::StartDrill {
            spec,
            actor: "test".into(),
            wall_ms: 0,
        })
        .await
        .expect("the drill starts");
    s.wait_status("the edge to take the 50% share", |v| {
        v["routing"]["evacuation"]["a"] == 50
    })
    .await;
    for (prefix, base) in [("fo", 1.0), ("we", 0.5), ("la", 1.0)] {
        near(
            &format!("http {prefix}"),
            s.http_share_a(prefix).await,
            base * 0.5,
        );
    }
    for (name, base) in [
        ("failover", 1.0),
        ("weighted", 0.5),
        ("latency", 1.0),
        ("multivalue", 1.0),
    ] {
        near(
            &format!("dns {name}"),
            s.dns_share_a(name).await,
            base * 0.5,
        );
    }

    // The edge reports its clients' window while the drill runs, and the
    // drill goes on (nothing breached).
    let view = s.client.drills().await.unwrap();
    let d = view.current.unwrap();
    assert!(!d.phase.finished(), "{:?}", d.phase);

    s.client
        .write(&Command::AbortDrill {
            id: None,
            reason: "test over".into(),
            actor: "test".into(),
        })
        .await
        .unwrap();
    s.wait_status("routing restored", |v| {
        v["routing"]["evacuation"]
            .as_object()
            .is_some_and(|m| m.is_empty())
    })
    .await;
    near("failover after", s.http_share_a("fo").await, 1.0);
    near("dns failover after", s.dns_share_a("failover").await, 1.0);
    let d = s.client.drills().await.unwrap().current.unwrap();
    assert_eq!(d.phase.name(), "aborted");
    s.stop.cancel();
    s.stop_b.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_aborts_when_an_edge_stops_reporting() {
    // The edges follow the controllers but their clients send nothing: a
    // window of no requests is too little to judge, not a breach; then b's
    // edge stops (its reports stop): missing data aborts the drill.
    let s = setup().await;
    let spec = DrillSpec {
        service_guardrails: Default::default(),
        region: "a".into(),
        steps: vec![100],
        hold: Duration::from_secs(600),
        return_steps: vec![],
        switchover_at: None,
        guardrails: Guardrails {
            window: Duration::from_secs(1),
            ..Guardrails::default()
        },
    };
    s.client
        .write(&Command::StartDrill {
            spec,
            actor: "test".into(),
            wall_ms: 0,
        })
        .await
        .unwrap();
    s.wait_status("the edge to take the share", |v| {
        v["routing"]["evacuation"]["a"] == 100
    })
    .await;
    // Three windows with reports: still running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = s.client.drills().await.unwrap().current.unwrap();
    assert!(
        !d.phase.finished(),
        "aborted while the edges reported: {:?}",
        d.phase
    );
    s.stop_b.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let d = s.client.drills().await.unwrap().current.unwrap();
        if let tern_core::drill::Phase::Aborted { reason } = &d.phase {
            assert!(reason.contains("edges of b (missing data"), "{reason}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never aborted: {:?}",
            d.phase
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop.cancel();
}

/// The capacity check reads the load the edges measured: region a's edge
/// serves a's failover service far over what b says it can take, so a
/// drill of a is refused, naming the figures, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_is_refused_when_the_other_region_cannot_take_the_load_the_edges_measured() {
    let s = setup_with(|t| {
        t.replacen("name = \"a\"\n", "name = \"a\"\ncapacity_rps = 100000\n", 1)
            .replacen("name = \"b\"\n", "name = \"b\"\ncapacity_rps = 20\n", 1)
    })
    .await;
    let start = Command::StartDrill {
        spec: DrillSpec {
            service_guardrails: Default::default(),
            region: "a".into(),
            steps: vec![100],
            hold: Duration::from_secs(600),
            return_steps: vec![],
            switchover_at: None,
            guardrails: Guardrails::default(),
        },
        actor: "test".into(),
        wall_ms: 0,
    };
    // Until the edge's first load report (every 5 s), the check has no
    // figures and refuses for that; then for the load.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for _ in 0..50 {
            let (status, body) = get(&format!("http://{}/fo/x", s.http)).await;
            assert!(status.is_success() && body == "a", "{status} {body}");
        }
        match s.client.write(&start).await {
            Err(tern_proto::http::CallError::Refused { message, .. })
                if message.contains("cannot absorb a's load") =>
            {
                assert!(message.contains("b has 20 req/s free"), "{message}");
                break;
            }
            Err(tern_proto::http::CallError::Refused { message, .. })
                if message.contains("reported the load it serves") => {}
            other => panic!("expected a refusal: {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge never reported its load"
        );
    }
    let view = s.client.drills().await.unwrap();
    assert!(view.current.is_none() && view.evacuation.is_empty());
    s.stop.cancel();
    s.stop_b.cancel();
}

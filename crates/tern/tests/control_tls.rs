//! Mutual TLS and authorization on the control plane, against real
//! controller processes whose certificates `tern certs init` made: who is
//! refused (no certificate, another CA, a role or region that may not),
//! what the audit log names, and a certificate rotated under a running
//! controller.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tern_core::auth::{Principal, Role};
use tern_core::config::ControlTls;
use tern_core::control::Command as Cmd;
use tern_lab::process::hand_over;
use tern_proto::api::{ObservationBatch, RegionResult, ReplicationReport};
use tern_proto::http::{CallError, HttpClient};
use tern_proto::tls::ControlPlaneTls;
use tern_proto::ControllerClient;

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

/// Three controllers with `[controller.tls]`, certificates from `tern
/// certs init`, controller 1's output in `dir/controller-1.log`.
struct Deployment {
    dir: tempfile::TempDir,
    config: PathBuf,
    addrs: Vec<SocketAddr>,
    _nodes: Vec<Node>,
}

impl Deployment {
    fn start() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let listeners: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut s = String::from(
            "[[region]]\nname = \"east\"\n[[region]]\nname = \"west\"\n[[region]]\nname = \"witness\"\nserves_traffic = false\n\
             [service.api]\npolicy = \"failover\"\n\
             [[service.api.backend]]\nregion = \"east\"\nurl = \"http://127.0.0.1:9\"\n\
             [[service.api.backend]]\nregion = \"west\"\nurl = \"http://127.0.0.1:9\"\n\
             [controller]\nheartbeat = \"50ms\"\nelection_timeout = \"300ms\"\nrpc_timeout = \"300ms\"\n\
             [controller.tls]\nca = \"pki/ca.pem\"\ndir = \"pki\"\nreload_check = \"100ms\"\n",
        );
        for (i, (a, r)) in addrs.iter().zip(["east", "west", "witness"]).enumerate() {
            s.push_str(&format!(
                "[[controller.node]]\nid = {}\nregion = \"{r}\"\naddr = \"{a}\"\n",
                i + 1
            ));
        }
        s.push_str(
            "[database.orders]\nprimary = \"east\"\n\
             [[database.orders.node]]\nregion = \"east\"\naddr = \"127.0.0.1:9\"\n\
             [[database.orders.node]]\nregion = \"west\"\naddr = \"127.0.0.1:9\"\n",
        );
        let config = dir.path().join("tern.toml");
        std::fs::write(&config, s).unwrap();
        let cfg = config.to_str().unwrap();
        let o = tern(&["certs", "init", "--config", cfg]);
        assert!(o.status.success(), "{}", text(&o));
        for stem in [
            "ca",
            "controller-1",
            "agent-east",
            "edge-west",
            "operator-admin",
        ] {
            assert!(
                dir.path().join("pki").join(format!("{stem}.pem")).exists(),
                "{stem}"
            );
        }
        let nodes = listeners
            .into_iter()
            .enumerate()
            .map(|(i, listener)| {
                let log =
                    std::fs::File::create(dir.path().join(format!("controller-{}.log", i + 1)))
                        .unwrap();
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
                .stderr(log);
                hand_over(&mut cmd, vec![("controller".into(), listener)]).unwrap();
                Node(cmd.spawn().expect("start controller"))
            })
            .collect();
        let d = Deployment {
            dir,
            config,
            addrs,
            _nodes: nodes,
        };
        wait_until("a leader, reached over mutual TLS", || {
            let o = tern(&["status", "--config", d.cfg()]);
            // The leader's first entry named the control plane: it takes commands.
            o.status.success()
                && text(&o).contains(", in quorum")
                && text(&o).contains("(control plane ")
        });
        d
    }

    fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    fn settings(&self) -> ControlTls {
        ControlTls {
            ca: self.pki().join("ca.pem"),
            dir: self.pki(),
            operators: vec!["admin".into()],
            viewers: vec![],
            reload_check: Duration::from_secs(2),
        }
    }

    fn tls(&self, role: Role, name: &str) -> ControlPlaneTls {
        ControlPlaneTls::load(&self.settings(), Principal::new(role, name), None).unwrap()
    }

    fn client(&self, role: Role, name: &str) -> ControllerClient {
        ControllerClient::with_tls(
            self.addrs.clone(),
            Duration::from_secs(2),
            Some(self.tls(role, name).client_config()),
        )
    }

    fn events(&self) -> String {
        let o = tern(&["events", "--config", self.cfg(), "--limit", "1000"]);
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    }
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, CallError>) -> String {
    match r {
        Err(CallError::Forbidden { message, .. }) => message,
        other => panic!("expected forbidden, got {other:?}"),
    }
}

fn weights(actor: &str) -> Cmd {
    Cmd::SetWeights {
        service: "api".into(),
        weights: vec![("east".into(), 1), ("west".into(), 0)],
        force: false,
        actor: actor.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_only_what_its_certificate_allows() {
    let d = Deployment::start();
    let before = d.events();

    // No certificate at all: plain HTTP and TLS without a client
    // certificate are both turned away before any request is read.
    let plain = ControllerClient::new(d.addrs.clone(), Duration::from_secs(2));
    let e = plain.write(&weights("nobody")).await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    let anonymous = {
        let tls = d.tls(Role::Operator, "admin");
        let mut config = (*tls.client_config()).clone();
        config.client_auth_cert_resolver = Arc::new(NoCert);
        ControllerClient::with_tls(
            d.addrs.clone(),
            Duration::from_secs(2),
            Some(Arc::new(config)),
        )
    };
    let e = anonymous.write(&weights("nobody")).await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");

    // A certificate of the right name from another CA.
    let other = tempfile::tempdir().unwrap();
    tern_proto::pki::init(other.path(), &[Principal::new(Role::Operator, "admin")], 30).unwrap();
    let foreign = ControlPlaneTls::load(
        &ControlTls {
            ca: d.pki().join("ca.pem"),
            ..d.settings()
        },
        Principal::new(Role::Operator, "admin"),
        Some(tern_core::config::tls::CertFiles {
            cert: other.path().join("operator-admin.pem"),
            key: other.path().join("operator-admin.key"),
        }),
    );
    assert!(
        foreign.unwrap_err().why.contains("not valid under the CA"),
        "a foreign certificate does not even load"
    );
    let foreign = {
        // Trust the other CA on this side, so that only the controllers judge.
        let mut both = std::fs::read_to_string(other.path().join("ca.pem")).unwrap();
        both.push_str(&std::fs::read_to_string(d.pki().join("ca.pem")).unwrap());
        let ca = other.path().join("both.pem");
        std::fs::write(&ca, both).unwrap();
        ControlPlaneTls::load(
            &ControlTls { ca, ..d.settings() },
            Principal::new(Role::Operator, "admin"),
            Some(tern_core::config::tls::CertFiles {
                cert: other.path().join("operator-admin.pem"),
                key: other.path().join("operator-admin.key"),
            }),
        )
        .unwrap()
    };
    let foreign = ControllerClient::with_tls(
        d.addrs.clone(),
        Duration::from_secs(2),
        Some(foreign.client_config()),
    );
    let e = foreign.write(&weights("mallory")).await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");

    // An edge reads, and may not write.
    let edge = d.client(Role::Edge, "west");
    edge.status().await.expect("an edge reads the status");
    edge.routing(0, Duration::ZERO)
        .await
        .expect("an edge reads the routing");
    let m = forbidden(edge.write(&weights("edge")).await);
    assert!(
        m.contains("edge west may not set the weights of api"),
        "{m}"
    );
    let viewer_like = forbidden(
        edge.observe(&ObservationBatch {
            vantage: "west".into(),
            results: vec![],
        })
        .await,
    );
    assert!(viewer_like.contains("observations"), "{viewer_like}");

    // An agent of east speaks for east only.
    let east = d.client(Role::Agent, "east");
    let batch = |vantage: &str| ObservationBatch {
        vantage: vantage.into(),
        results: vec![RegionResult {
            region: "west".into(),
            service: None,
            ok: false,
            latency_ms: None,
            detail: "forged".into(),
        }],
    };
    east.observe(&batch("east"))
        .await
        .expect("east reports from east");
    let m = forbidden(east.observe(&batch("west")).await);
    assert!(
        m.contains("agent east may not report observations from west"),
        "{m}"
    );
    let http = HttpClient::with_tls(Some(d.tls(Role::Agent, "east").client_config()));
    let report = |region: &str| ReplicationReport {
        cluster: "orders".into(),
        region: region.into(),
        role: "standby".into(),
        lsn: 1 << 40,
        received_lsn: Some(1 << 40),
        lag_bytes: Some(0),
        lag_ms: Some(0),
        read_only: true,
        streamed_epoch: Some(1),
    };
    let r: Result<serde_json::Value, _> = http
        .post(
            d.addrs[0],
            "/v1/replication",
            &report("west"),
            Duration::from_secs(2),
        )
        .await;
    let m = forbidden(r);
    assert!(
        m.contains("agent east may not report the replication of west"),
        "{m}"
    );
    let m = forbidden(
        east.write(&Cmd::AcquireLease {
            cluster: "orders".into(),
            holder: "west".into(),
        })
        .await,
    );
    assert!(
        m.contains("agent east may not take or renew west's lease"),
        "{m}"
    );
    let m = forbidden(
        east.write(&Cmd::RenewLease {
            cluster: "orders".into(),
            holder: "west".into(),
            epoch: 1,
        })
        .await,
    );
    assert!(m.contains("west's lease"), "{m}");
    let m = forbidden(
        east.write(&Cmd::ReleaseLease {
            cluster: "orders".into(),
            holder: "west".into(),
            epoch: 1,
        })
        .await,
    );
    assert!(m.contains("release west's lease"), "{m}");
    let m = forbidden(east.write(&weights("agent")).await);
    assert!(m.contains("operators only"), "{m}");

    // Nothing any refused caller sent was committed.
    let after = d.events();
    assert_eq!(
        before.lines().count(),
        after.lines().count(),
        "refused requests left audit entries:\n{after}"
    );
    assert!(
        !after.contains("forged") && !after.contains("mallory"),
        "{after}"
    );

    // The operator's command goes through and the audit names the
    // certificate, whatever the client says it is.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "route",
            "set",
            "api",
            "--weights",
            "east=1,west=0",
            "--config",
            d.cfg(),
        ])
        .env("USER", "someone-else")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let events = d.events();
    assert!(
        events.contains("operator admin (someone-else (tern route set)) set weights"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_takes_effect_without_a_restart_and_a_bad_one_is_refused() {
    let d = Deployment::start();
    let addr = d.addrs[0];
    let client = d.tls(Role::Operator, "admin").client_config();
    let served = || {
        let client = client.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(client)
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .expect("a handshake with controller 1");
            tls.get_ref().1.peer_certificates().unwrap()[0].clone()
        }
    };
    let leaf = |path: &Path| CertificateDer::from_pem_file(path).unwrap();
    let cert = d.pki().join("controller-1.pem");
    let key = d.pki().join("controller-1.key");
    assert_eq!(served().await, leaf(&cert));

    // A new certificate from the same CA, written as an operator would:
    // key first, then certificate, each replaced by a rename.
    let (ca_cert, ca_key) = (
        std::fs::read_to_string(d.pki().join("ca.pem")).unwrap(),
        std::fs::read_to_string(d.pki().join("ca.key")).unwrap(),
    );
    let ca = tern_proto::pki::Authority::from_pem(&ca_cert, &ca_key).unwrap();
    let (new_cert, new_key) = ca
        .issue(&Principal::new(Role::Controller, "1"), 30)
        .unwrap();
    replace(&key, &new_key);
    replace(&cert, &new_cert);
    let new_leaf = leaf(&cert);
    let deadline = Instant::now() + Duration::from_secs(20);
    while served().await != new_leaf {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The group still works over it.
    let o = tern(&["status", "--config", d.cfg()]);
    assert!(o.status.success(), "{}", text(&o));

    // A certificate for another principal is refused; the last good one stays.
    let log = d.dir.path().join("controller-1.log");
    let refusals = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("is agent east")
            .count()
    };
    assert_eq!(refusals(), 0);
    let (wrong_cert, wrong_key) = ca.issue(&Principal::new(Role::Agent, "east"), 30).unwrap();
    replace(&key, &wrong_key);
    replace(&cert, &wrong_cert);
    wait_until("the controller to refuse the new certificate", || {
        refusals() > 0
    });
    assert_eq!(served().await, new_leaf);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("new control-plane certificate refused"),
        "{logged}"
    );
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A client that offers no certificate.
#[derive(Debug)]
struct NoCert;

impl rustls::client::ResolvesClientCert for NoCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

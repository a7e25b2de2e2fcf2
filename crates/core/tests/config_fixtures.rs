//! Configuration fixtures: one good file that uses every key, and a directory of
//! bad files that each make one mistake.
//!
//! Each bad file states what the loader must say about it in a leading comment:
//!
//! ```toml
//! # expect: line=12 key=service.api.backend[0].weight contains="from 0 to 1000"
//! ```
//!
//! The test checks the first error's line, dotted key and message, and that its
//! Display form starts with `<file>:<line>:`. Adding a case means adding a file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tern_core::config::{AllUnhealthy, Config, Policy, ProbeKind, StatusRange};

fn fixtures(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
}

/// The `.toml` files in a fixture directory, sorted by name.
fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = fixtures(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

fn load(path: &Path) -> (String, Result<Config, tern_core::config::ConfigErrors>) {
    let name = file_name(path);
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let result = Config::from_toml(&name, &text);
    (name, result)
}

/// What a bad fixture says its first error must be.
#[derive(Debug, Default, PartialEq)]
struct Expect {
    line: usize,
    key: String,
    contains: String,
}

/// Parses the `# expect: line=N key=K contains="..."` comment of a fixture.
/// `contains` is a quoted string in which `\"` and `\\` are escapes.
fn parse_expect(text: &str) -> Result<Expect, String> {
    let spec = text
        .lines()
        .take_while(|l| l.trim_start().starts_with('#'))
        .find_map(|l| l.trim_start().strip_prefix("# expect:"))
        .ok_or("no leading `# expect:` comment")?;
    let mut expect = Expect::default();
    let (mut line, mut key, mut contains) = (None, None, None);
    let mut rest = spec.trim_start();
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=VALUE at `{rest}`"))?;
        let value;
        if let Some(quoted) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, e @ ('"' | '\\'))) => out.push(e),
                        other => return Err(format!("bad escape {other:?} in `{after}`")),
                    },
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("unterminated string in `{after}`"))?;
            value = out;
            rest = quoted[end..].trim_start();
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            value = after[..end].to_string();
            rest = after[end..].trim_start();
        }
        match name.trim() {
            "line" => {
                line = Some(
                    value
                        .parse()
                        .map_err(|_| format!("line={value} is not a number"))?,
                )
            }
            "key" => key = Some(value),
            "contains" => contains = Some(value),
            other => return Err(format!("unknown expectation `{other}`")),
        }
    }
    expect.line = line.ok_or("missing line=")?;
    expect.key = key.ok_or("missing key=")?;
    expect.contains = contains.ok_or("missing contains=")?;
    Ok(expect)
}

#[test]
fn expect_comments_parse() {
    let e = parse_expect(
        "# about this file\n# expect: line=3 key=a.b[0].c contains=\"say \\\"hi\\\" \\\\ \"\nx = 1\n",
    )
    .unwrap();
    assert_eq!(
        e,
        Expect {
            line: 3,
            key: "a.b[0].c".into(),
            contains: "say \"hi\" \\ ".into(),
        }
    );
    assert!(parse_expect("x = 1\n# expect: line=1 key=x contains=\"\"").is_err());
    assert!(parse_expect("# expect: line=1 key=x").is_err());
    assert!(parse_expect("# expect: line=1 key=x contains=\"open").is_err());
    assert!(parse_expect("# expect: line=one key=x contains=\"\"").is_err());
}

#[test]
fn every_bad_fixture_reports_its_expected_first_error() {
    let files = toml_files("bad");
    assert!(
        files.len() >= 14,
        "expected at least 14 bad fixtures, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let (name, result) = load(path);
        let expect = match parse_expect(&text) {
            Ok(e) => e,
            Err(why) => {
                failures.push(format!("{name}: bad expectation: {why}"));
                continue;
            }
        };
        let errors = match result {
            Ok(_) => {
                failures.push(format!("{name}: loaded, but should have failed"));
                continue;
            }
            Err(errors) => errors,
        };
        let Some(first) = errors.0.first() else {
            failures.push(format!("{name}: failed with an empty error list"));
            continue;
        };
        let shown = first.to_string();
        let mut wrong = Vec::new();
        if first.file != name {
            wrong.push(format!("file {:?}, expected {name:?}", first.file));
        }
        if first.line != expect.line {
            wrong.push(format!("line {}, expected {}", first.line, expect.line));
        }
        if first.key != expect.key {
            wrong.push(format!("key {:?}, expected {:?}", first.key, expect.key));
        }
        if !first.message.contains(&expect.contains) {
            wrong.push(format!("message does not contain {:?}", expect.contains));
        }
        let prefix = format!("{name}:{}:", expect.line);
        if !shown.starts_with(&prefix) {
            wrong.push(format!("display does not start with {prefix:?}"));
        }
        if !wrong.is_empty() {
            failures.push(format!("{name}: {}\n    got: {shown}", wrong.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad fixtures did not fail as expected:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// `loop-a CNAME loop-b`, `loop-b CNAME loop-a` and `self CNAME self`
/// passed the check, and a query got the same CNAME eight times: each loop
/// is refused once, naming its records; a chain into a loop is not a loop
/// of its own.
#[test]
fn cname_loops_are_refused_naming_their_records() {
    let path = fixtures("bad").join("dns_cname_loop.toml");
    let (_, result) = load(&path);
    let errors = result.expect_err("a zone with CNAME loops loaded");
    let loops: Vec<&str> = errors
        .0
        .iter()
        .filter(|e| e.message.starts_with("CNAME loop"))
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(loops.len(), 2, "{loops:#?}");
    assert!(
        loops[1].contains("self.example.com -> self.example.com"),
        "{loops:#?}"
    );
    assert!(
        !loops.iter().any(|m| m.contains("into-the-loop")),
        "{loops:#?}"
    );
}

#[test]
fn every_good_fixture_loads() {
    let files = toml_files("good");
    assert!(!files.is_empty(), "no good fixtures");
    for path in &files {
        let (name, result) = load(path);
        if let Err(errors) = result {
            panic!("{name} should load:\n{errors}");
        }
    }
}

/// The full fixture sets every key to a value other than its default, so each
/// assertion shows that the key was read and resolved.
#[test]
fn full_fixture_resolves_every_key() {
    let (_, result) = load(&fixtures("good").join("full.toml"));
    let cfg = result.unwrap_or_else(|e| panic!("full.toml should load:\n{e}"));

    let regions: Vec<(&str, bool)> = cfg
        .regions
        .iter()
        .map(|r| (r.name.as_str(), r.serves_traffic))
        .collect();
    assert_eq!(
        regions,
        [("us-east", true), ("us-west", true), ("witness", false)]
    );

    let edge = cfg.edge.as_ref().expect("edge settings");
    assert_eq!(edge.region, "us-west");
    assert_eq!(edge.listen, "127.0.1.1:8080".parse().unwrap());
    assert_eq!(edge.admin, Some("127.0.1.1:9090".parse().unwrap()));
    assert_eq!(edge.request_timeout, Duration::from_secs(12));
    assert_eq!(edge.try_timeout, Duration::from_millis(1500));
    assert_eq!(edge.retry_budget, 0.25);
    assert_eq!(edge.retry_min_per_second, 7);
    assert_eq!(edge.retry_body_limit, 32 * 1024);
    assert_eq!(edge.max_body, Some(10 * 1024 * 1024));
    assert_eq!(edge.max_header, 32 * 1024);
    assert_eq!(edge.max_request_headers, 120);
    assert_eq!(edge.max_response_headers, 150);
    assert_eq!(edge.shutdown_grace, Duration::from_secs(3));
    assert_eq!(edge.unready_delay, Duration::from_millis(750));
    assert_eq!(edge.workers, Some(3));
    assert_eq!(edge.client_timeout, Duration::from_secs(45));

    let names: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "web"]);

    let api = cfg.service("api").unwrap();
    assert_eq!(api.policy, Policy::Failover);
    assert_eq!(api.hosts, ["api.example.com", "*.api.example.com"]);
    assert_eq!(api.path_prefix, "/v1");
    assert_eq!(api.when_all_unhealthy, AllUnhealthy::FailClosed);
    assert_eq!(api.outlier.consecutive_failures, 4);
    assert_eq!(api.outlier.base_ejection, Duration::from_secs(2));
    assert_eq!(api.outlier.max_ejection, Duration::from_secs(30));
    assert_eq!(api.outlier.max_ejected_share, 0.34);
    assert_eq!(api.backends.len(), 2);

    let east = &api.backends[0];
    assert_eq!(east.region, "us-east");
    assert_eq!(east.url.to_string(), "http://127.0.1.10:8080/base");
    assert_eq!(east.url.authority(), "127.0.1.10:8080");
    assert_eq!(east.weight, 3);
    assert_eq!(east.health.interval, Duration::from_secs(2));
    assert_eq!(east.health.timeout, Duration::from_millis(750));
    assert_eq!(east.health.fall, 2);
    assert_eq!(east.health.rise, 4);
    assert_eq!(
        east.health.probe,
        ProbeKind::Http {
            path: "/healthz".into(),
            expect_status: StatusRange {
                low: 200,
                high: 299
            },
            body_contains: Some("ok".into()),
            // The service's first host name (the second is a wildcard).
            host: Some("api.example.com".into()),
            // Names lower-cased.
            headers: vec![
                ("x-probe".into(), "tern".into()),
                ("authorization".into(), "Bearer t".into()),
            ],
        }
    );

    let west = &api.backends[1];
    assert_eq!(west.region, "us-west");
    assert_eq!(west.url.authority(), "127.0.2.10:80");
    assert_eq!(west.url.base_path, "");
    assert_eq!(west.weight, 0);
    assert_eq!(west.health.probe, ProbeKind::Tcp);
    assert_eq!(west.health.interval, Duration::from_secs(1));
    assert_eq!(west.health.timeout, Duration::from_millis(250));
    assert_eq!((west.health.fall, west.health.rise), (3, 3));

    // The second service leaves everything optional out and gets the defaults.
    let web = cfg.service("web").unwrap();
    assert_eq!(web.policy, Policy::Weighted);
    assert!(web.hosts.is_empty());
    assert_eq!(web.path_prefix, "/");
    assert_eq!(web.when_all_unhealthy, AllUnhealthy::FailOpen);
    assert_eq!(web.outlier, Default::default());
    let b = &web.backends[0];
    assert_eq!(b.url.authority(), "[::1]:8081");
    assert_eq!(b.weight, 1);
    assert_eq!(
        b.health.probe,
        ProbeKind::Http {
            path: "/health".into(),
            expect_status: StatusRange {
                low: 200,
                high: 399
            },
            body_contains: None,
            // A service without host names: the probe sends ip:port.
            host: None,
            headers: vec![],
        }
    );
    assert_eq!(b.health.interval, Duration::from_secs(1));
    assert_eq!(b.health.timeout, Duration::from_millis(500));

    let ctl = cfg.controller.as_ref().expect("controller");
    assert_eq!(ctl.heartbeat, Duration::from_millis(100));
    assert_eq!(ctl.election_timeout, Duration::from_millis(800));
    assert_eq!(ctl.rpc_timeout, Duration::from_millis(300));
    let nodes: Vec<(u64, &str, String)> = ctl
        .nodes
        .iter()
        .map(|n| (n.id, n.region.as_str(), n.addr.to_string()))
        .collect();
    assert_eq!(
        nodes,
        vec![
            (1, "us-east", "127.0.1.7:7400".to_string()),
            (2, "us-west", "127.0.2.7:7400".to_string()),
            (3, "witness", "127.0.3.7:7400".to_string()),
        ]
    );
    let v = &cfg.verdict;
    assert_eq!(v.interval, Duration::from_secs(2));
    assert_eq!(v.timeout, Duration::from_secs(1));
    assert_eq!((v.settings.fall, v.settings.rise), (4, 5));
    assert_eq!(v.settings.hold_down, Duration::from_secs(10));
    assert_eq!(
        v.settings.degraded_latency,
        Some(Duration::from_millis(300))
    );
    assert_eq!(cfg.agent.as_deref(), Some("us-west"));
    assert_eq!(cfg.agent_admin, Some("127.0.2.8:9091".parse().unwrap()));
    let db = &cfg.databases[0];
    assert_eq!(db.name, "payments");
    assert_eq!(db.replication, tern_core::config::Replication::Sync);
    assert_eq!(db.rpo_budget, 2 * 1024 * 1024);
    assert_eq!(db.lease.duration, Duration::from_secs(4));
    assert_eq!(db.lease.drift_margin, Duration::from_secs(1));
}

#[test]
fn dns_fixture_resolves_names_ttls_and_checks() {
    use tern_core::config::dns::{DnsPolicy, RecordData, StaticValue, TargetCheck};
    let (_, result) = load(&fixtures("good").join("dns.toml"));
    let cfg = result.expect("dns.toml loads");
    assert!(cfg.services.is_empty(), "an edge may serve DNS only");
    let dns = cfg.dns.expect("a [dns] table");
    assert_eq!(dns.workers, Some(2));
    assert_eq!(dns.networks[1].prefix_len, 48);
    let zone = &dns.zones[0];
    assert_eq!(zone.name, "example.com");
    assert_eq!(zone.ns, ["ns1.example.com", "ns2.example.net"]);
    assert_eq!(zone.hostmaster, "ops.example.com");
    assert_eq!(zone.negative_ttl, Duration::from_secs(30));
    let mx = &zone.records[0];
    assert_eq!(
        (mx.name.as_str(), mx.ttl),
        ("example.com", Duration::from_secs(300))
    );
    assert_eq!(
        mx.data,
        RecordData::Static(vec![
            StaticValue::Mx {
                preference: 10,
                exchange: "mail.example.com".into()
            },
            StaticValue::Mx {
                preference: 20,
                exchange: "backup.example.net".into()
            },
        ])
    );
    let api = &zone.records[4];
    assert_eq!(api.ttl, Duration::from_secs(10));
    let RecordData::Policy(p) = &api.data else {
        panic!("api is a policy record")
    };
    assert_eq!(p.policy, DnsPolicy::Failover);
    assert_eq!(p.when_all_unhealthy, AllUnhealthy::FailClosed);
    // An HTTP probe of a target sends the record's name as Host.
    match &p.targets[0].check {
        TargetCheck::Probe { health, .. } => match &health.probe {
            ProbeKind::Http { host, .. } => assert_eq!(host.as_deref(), Some(api.name.as_str())),
            other => panic!("expected an http probe, found {other:?}"),
        },
        other => panic!("expected a probe, found {other:?}"),
    }
    match &p.targets[1].check {
        TargetCheck::Probe { port, health } => {
            assert_eq!(*port, 8080);
            assert_eq!(health.probe, ProbeKind::Tcp);
        }
        other => panic!("expected a probe, found {other:?}"),
    }
    // A health-checked record's TTL defaults to at most 60 s even under a 5 m zone TTL.
    let api6 = &zone.records[5];
    assert_eq!(
        (api6.name.as_str(), api6.ttl),
        ("api6.example.com", Duration::from_secs(60))
    );
    let RecordData::Policy(p6) = &api6.data else {
        panic!("api6 is a policy record")
    };
    assert!(p6.ipv6);
    assert_eq!(p6.targets[1].weight, 0);
    assert_eq!(p6.targets[0].check, TargetCheck::None);
}

#[test]
fn a_plaintext_control_plane_off_loopback_loads_only_when_the_file_says_so() {
    let path = fixtures("bad").join("controller_plaintext_off_loopback.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let said = text.replace(
        "[controller]\n",
        "[controller]\ninsecure_plaintext = true\n",
    );
    let cfg = Config::from_toml("plaintext.toml", &said).expect("accepted in so many words");
    let warning = cfg.controller.unwrap().plaintext_warning;
    assert_eq!(
        warning.as_deref(),
        Some("the control plane runs in plaintext (insecure_plaintext) on 10.0.2.7:7400 (west), 10.0.3.7:7400 (witness)")
    );
    // On loopback (one host, the lab) nothing needs saying.
    let lab = text.replace("10.0.", "127.0.");
    let cfg = Config::from_toml("loopback.toml", &lab).expect("loopback is fine");
    assert_eq!(cfg.controller.unwrap().plaintext_warning, None);
}

#[test]
fn a_control_plane_with_mutual_tls_may_listen_off_loopback() {
    let path = fixtures("bad").join("controller_plaintext_off_loopback.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = format!(
        "{text}\n[controller.tls]\nca = \"pki/ca.pem\"\ndir = \"/etc/tern/pki\"\noperators = [\"alice\", \"bob\"]\nreload_check = \"500ms\"\n"
    );
    let cfg = Config::from_toml("/srv/tern/tern.toml", &text).expect("TLS makes it safe");
    let c = cfg.controller.unwrap();
    assert_eq!(c.plaintext_warning, None);
    let t = c.tls.expect("the tls table");
    assert_eq!(t.ca, std::path::Path::new("/srv/tern/pki/ca.pem"));
    assert_eq!(t.dir, std::path::Path::new("/etc/tern/pki"));
    assert_eq!(t.operators, ["alice", "bob"]);
    assert_eq!(t.reload_check, Duration::from_millis(500));

    let bad = text.replace("\"alice\"", "\"al ice\"");
    let e = Config::from_toml("bad.toml", &bad).unwrap_err().to_string();
    assert!(e.contains("controller.tls.operators[0]"), "{e}");
}

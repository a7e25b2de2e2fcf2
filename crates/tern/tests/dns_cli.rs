//! The `tern` binary with a `[dns]` table: `check-config` summarises the
//! zones, mistakes exit 78 with file, line and key, and `tern edge` answers
//! DNS (checked with the real `dig`) and names the address in its ready line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const EX_CONFIG: i32 = 78;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .current_dir(fixtures())
        .output()
        .expect("run the tern binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_summarises_zones_and_policy_records() {
    let out = tern(&["check-config", "dns.toml"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}{stdout}", text(&out.stderr));
    for expected in [
        "dns: listen 127.0.0.1:0 (udp and tcp), 1 client network, 1 zone",
        "  network 10.2.0.0/16 -> us-west",
        "  zone example.com: ns ns1.example.com, serial 1, 2 records (1 static, 1 policy), negative ttl 60s",
        "    ns1.example.com A ttl 300s: 192.0.2.53",
        "    api.example.com A ttl 10s: policy latency, when all unhealthy fail-closed",
        "      us-east 192.0.2.1 weight 1, health http :8080/health every 2s (fall 3, rise 2)",
        "      us-west 192.0.2.2 weight 1, no health check",
    ] {
        assert!(stdout.contains(expected), "summary lacks {expected:?}:\n{stdout}");
    }
}

#[test]
fn check_config_rejects_dns_mistakes_with_line_and_key() {
    let out = tern(&["check-config", "dns_bad.toml"]);
    assert_eq!(out.status.code(), Some(EX_CONFIG));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].starts_with(
            "dns_bad.toml:18:10: `dns.zone[0].record[0].policy`: expected one of \"failover\", \"weighted\", \"latency\", \"multivalue\", found \"nearest\""
        ),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("dns_bad.toml:21:10: `dns.zone[0].record[0].target[0].region`: unknown region \"us-west\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 problems; nothing was started"),
        "{stderr}"
    );
}

/// Kills the child when the test ends, pass or fail.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn edge_answers_dns_and_prints_the_dns_address() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["edge", "--config", "dns.toml"])
            .current_dir(fixtures())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tern edge"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    // "listening on ADDR admin ADDR dns ADDR"
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.get(5), Some(&"dns"), "{line}");
    let dns: std::net::SocketAddr = words[6].parse().unwrap();
    let dig = |extra: &[&str]| {
        let out = Command::new("dig")
            .arg(format!("@{}", dns.ip()))
            .args([
                "-p",
                &dns.port().to_string(),
                "+short",
                "+tries=1",
                "+time=2",
            ])
            .args(extra)
            .output()
            .expect("run dig; install it with `apt-get install -y dnsutils`");
        text(&out.stdout).trim().to_string()
    };
    assert_eq!(
        dig(&["+subnet=10.2.3.0/24", "api.example.com"]),
        "192.0.2.2"
    );
    assert_eq!(dig(&["+tcp", "ns1.example.com"]), "192.0.2.53");
}

//! Harness for the DNS tests: an edge with a `[dns]` table on loopback
//! (port 0), queried with the real `dig` from Debian's dnsutils.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tern_core::config::Config;
use tern_edge::{Edge, Phase};
use tokio_util::sync::CancellationToken;

pub struct DnsEdge {
    pub dns: SocketAddr,
    pub admin: SocketAddr,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl DnsEdge {
    pub async fn start(toml: &str) -> DnsEdge {
        let config = Config::from_toml("test.toml", toml)
            .unwrap_or_else(|e| panic!("bad test config:\n{e}\n{toml}"));
        let edge = Edge::bind(&config).await.unwrap();
        let dns = edge.dns_addr().expect("the config has a [dns] table");
        let admin = edge.admin_addr().unwrap();
        let mut phase = edge.phase();
        let stop = CancellationToken::new();
        let task = tokio::spawn(edge.run(stop.clone()));
        phase.wait_for(|p| *p == Phase::Serving).await.unwrap();
        DnsEdge {
            dns,
            admin,
            stop,
            task,
        }
    }

    /// Runs `dig` against this server with `args` (names, types, options).
    pub async fn dig(&self, args: &[&str]) -> Vec<Dig> {
        dig(self.dns, args).await
    }

    /// One query; panics unless dig printed exactly one response.
    pub async fn dig1(&self, args: &[&str]) -> Dig {
        let mut all = self.dig(args).await;
        assert_eq!(all.len(), 1, "dig {args:?} printed {} responses", all.len());
        all.remove(0)
    }

    pub async fn status(&self) -> serde_json::Value {
        let body = http_get(self.admin, "/status").await;
        serde_json::from_str(&body).unwrap()
    }

    pub async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").await
    }
}

/// A minimal HTTP/1.0 GET, to read the admin API without a client library.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// One response as dig printed it.
#[derive(Debug, Clone, Default)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    /// (name, ttl, type, data) of the answer section.
    pub answers: Vec<(String, u32, String, String)>,
    pub authority: Vec<(String, u32, String, String)>,
    /// The CLIENT-SUBNET line's value, such as `10.2.3.0/24/16`.
    pub subnet: Option<String>,
    /// The advertised UDP payload size from the OPT record.
    pub udp: Option<u16>,
    pub raw: String,
}

impl Dig {
    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// The data of answers of type `kind`, in order.
    pub fn data(&self, kind: &str) -> Vec<String> {
        self.answers
            .iter()
            .filter(|a| a.2 == kind)
            .map(|a| a.3.clone())
            .collect()
    }
}

pub async fn dig(server: SocketAddr, args: &[&str]) -> Vec<Dig> {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        // One try, as a client's first query: a query the server drops must
        // fail the test, not hide behind a second try. The wait is long
        // (5 s) so that a loaded machine's slow answer is still an answer.
        .args(["+norec", "+tries=1", "+time=5", "+nocookie"])
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run dig ({e}); install it with `apt-get install -y dnsutils` (Debian's dnsutils)"
            )
        });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_dig(&text)
}

fn parse_dig(text: &str) -> Vec<Dig> {
    let mut all = Vec::new();
    let mut cur: Option<Dig> = None;
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
            if let Some(d) = cur.take() {
                all.push(d);
            }
            let status = rest
                .split("status: ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .unwrap_or("")
                .to_string();
            cur = Some(Dig {
                status,
                ..Dig::default()
            });
            section = "";
            continue;
        }
        let Some(d) = cur.as_mut() else { continue };
        d.raw.push_str(line);
        d.raw.push('\n');
        if let Some(rest) = line.strip_prefix(";; flags:") {
            let flags = rest.split(';').next().unwrap_or("");
            d.flags = flags.split_whitespace().map(str::to_string).collect();
        } else if let Some(rest) = line.strip_prefix("; CLIENT-SUBNET: ") {
            d.subnet = Some(rest.trim().to_string());
        } else if line.starts_with("; EDNS:") {
            d.udp = line
                .split("udp: ")
                .nth(1)
                .and_then(|u| u.trim().parse().ok());
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";;") || line.trim().is_empty() {
            if line.trim().is_empty() {
                section = "";
            }
        } else if !line.starts_with(';') && !section.is_empty() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() >= 5 {
                let rr = (
                    parts[0].to_string(),
                    parts[1].parse().unwrap_or(0),
                    parts[3].to_string(),
                    parts[4..].join(" "),
                );
                if section == "answer" {
                    d.answers.push(rr);
                } else {
                    d.authority.push(rr);
                }
            }
        }
    }
    if let Some(d) = cur.take() {
        all.push(d);
    }
    all
}

/// Regions a and b; networks 10.1/16 -> a, 10.2/16 -> b and the loopback
/// resolver 127/8 -> b; then `zone_body` inside one zone `example.com`.
pub fn dns_toml(services: &str, zone_body: &str) -> String {
    format!(
        r#"
[[region]]
name = "a"
[[region]]
name = "b"

[edge]
region = "a"
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
workers = 1

{services}

[dns]
listen = "127.0.0.1:0"
workers = 2

[[dns.network]]
prefix = "10.1.0.0/16"
region = "a"
[[dns.network]]
prefix = "10.2.0.0/16"
region = "b"
[[dns.network]]
prefix = "127.0.0.0/8"
region = "b"

[[dns.zone]]
name = "example.com"
ns = ["ns1.example.com"]
negative_ttl = "30s"

{zone_body}
"#
    )
}

/// Polls `f` until it holds; panics after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stand-in for a target's service: answers `GET /health` with 200 or 503
/// on an address of the test's choosing; `kill` closes it like a dead process.
pub struct HealthServer {
    pub addr: SocketAddr,
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Requests answered so far (probes, in these tests).
    answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
}

impl HealthServer {
    pub async fn start(addr: &str) -> HealthServer {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let s = HealthServer {
            addr: listener.local_addr().unwrap(),
            healthy: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            answered: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
            stop: CancellationToken::new(),
        };
        let (healthy, answered, stop) = (s.healthy.clone(), s.answered.clone(), s.stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (healthy, answered, stop) = (healthy.clone(), answered.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let n = tokio::select! {
                            _ = stop.cancelled() => return,
                            n = stream.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
                        };
                        seen.extend_from_slice(&buf[..n]);
                        // One response per request head; keep-alive like a real service.
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let (code, text) = if healthy.load(Ordering::SeqCst) {
                                (200, "OK")
                            } else {
                                (503, "Service Unavailable")
                            };
                            let resp =
                                format!("HTTP/1.1 {code} {text}\r\ncontent-length: 2\r\n\r\nok");
                            if stream.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        s
    }

    /// The flag behind `set_healthy`, for a task that times a health change.
    pub fn healthy_handle(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.healthy.clone()
    }

    /// How many requests (probes) it has answered.
    pub fn answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy
            .store(healthy, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn kill(&self) {
        self.stop.cancel();
    }
}

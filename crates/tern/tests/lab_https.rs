//! The lab's edges over HTTPS with real clients, while the lab runs: curl
//! trusting only the lab's certificate authority (HTTP/2 by ALPN), and a
//! headless Chromium loading a page through the edge (Debian's `chromium`;
//! `.ci/run` installs it).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// What the lab printed for one edge: "https: REGION URL at ADDR (...),
/// trusting CA".
struct HttpsLine {
    url: String,
    addr: String,
    ca: String,
}

fn parse(line: &str) -> Option<HttpsLine> {
    let rest = line.strip_prefix("https: ")?;
    let mut words = rest.split_whitespace();
    let _region = words.next()?;
    let url = words.next()?.to_string();
    let _at = words.next()?;
    let addr = words.next()?.to_string();
    let ca = rest.rsplit_once("trusting ")?.1.trim().to_string();
    Some(HttpsLine { url, addr, ca })
}

#[test]
fn the_labs_edges_answer_curl_and_a_headless_browser_over_https() {
    assert!(
        Command::new("chromium").arg("--version").output().is_ok(),
        "this test runs Debian's chromium; install it with `apt-get install -y chromium`"
    );
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut lab = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["lab", "--db", "off", "--seed", "2", "--report-json"])
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run tern lab");
    let stdout = lab.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let mut edges = Vec::new();
    // The lab prints one https line per edge before the load starts.
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if let Some(h) = parse(&line) {
            edges.push(h);
        }
        if line.starts_with('[') || edges.len() == 2 {
            break;
        }
    }
    assert_eq!(edges.len(), 2, "no https lines:\n{}", seen.join("\n"));
    let profile = tempfile::tempdir().unwrap();
    for e in &edges {
        let port = e.url.rsplit_once(':').unwrap().1.trim_end_matches('/');
        let ip = e.addr.rsplit_once(':').unwrap().0;
        let url = format!("{}health", e.url);
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--http2", "--cacert", &e.ca])
            .args(["--resolve", &format!("payments.lab:{port}:{ip}")])
            .args(["-w", "\n%{http_version} %{http_code}", &url])
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.ends_with("\n2 200"),
            "curl {url}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The browser resolves the name to the edge; it does not know the
        // lab's CA (curl above checked the chain), so certificate errors
        // are waived for it alone.
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--ignore-certificate-errors",
                &format!("--host-resolver-rules=MAP payments.lab {ip}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "--dump-dom",
                &url,
            ])
            .output()
            .expect("run chromium");
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(
            // The sample service's health JSON, rendered by the browser.
            dom.contains("\"forced_unhealthy\"") && !dom.contains("ERR_"),
            "chromium {url}: {dom}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in lines {
        seen.push(line.unwrap());
    }
    let status = lab.wait().unwrap();
    assert!(status.success(), "{}", seen.join("\n"));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        r["targets"]["https_at_every_edge"], true,
        "{:#}",
        r["https"]
    );
}

//! `tern edge` and `tern check-config` with TLS, as an operator runs them:
//! an expired certificate stops everything before it starts (exit 78), and
//! SIGHUP reloads the certificates of a running edge.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_lab::certs::{Ca, Validity};

fn config(dir: &Path, cert: &Path, key: &Path) -> std::path::PathBuf {
    let text = format!(
        "[[region]]\nname = \"a\"\n\n[edge]\nregion = \"a\"\nlisten = \"127.0.0.1:0\"\n\
         admin = \"127.0.0.1:0\"\nunready_delay = \"0s\"\n\n\
         [service.api]\npolicy = \"failover\"\nhosts = [\"api.tern.test\"]\n\
         [[service.api.backend]]\nregion = \"a\"\nurl = \"http://127.0.0.1:9\"\n\n\
         [edge.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\nreload_check = \"1h\"\n",
        cert.display(),
        key.display()
    );
    let path = dir.join("edge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn an_expired_certificate_is_refused_at_load_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA").unwrap();
    let f = ca
        .issue(&["api.tern.test"], Validity::Expired, dir.path(), "old")
        .unwrap();
    let path = config(dir.path(), &f.cert, &f.key);
    for args in [
        vec!["check-config", path.to_str().unwrap()],
        vec!["edge", "--config", path.to_str().unwrap()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(
            stderr.contains("expired") && stderr.contains("old.pem"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn sighup_reloads_the_certificates_of_a_running_edge() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA").unwrap();
    let f = ca
        .issue(&["api.tern.test"], Validity::Current, dir.path(), "api")
        .unwrap();
    let path = config(dir.path(), &f.cert, &f.key);
    let mut edge = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["edge", "--config", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(edge.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "listening on ADDR admin ADDR https ADDR"
    let words: Vec<&str> = line.split_whitespace().collect();
    let admin = words[4];
    assert_eq!(words.get(5), Some(&"https"), "{line}");
    let status = || -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", &format!("http://{admin}/status")])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    assert_eq!(status()["tls"]["reloads"], 1);
    ca.issue(&["api.tern.test"], Validity::Current, dir.path(), "api")
        .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &edge.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while status()["tls"]["reloads"] != 2 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload: {:#}",
            status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    edge.kill().unwrap();
    edge.wait().unwrap();
}

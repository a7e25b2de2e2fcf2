//! Real PostgreSQL clusters for tests: `initdb` into a temporary directory,
//! a server on a free loopback port, and streaming standbys made with
//! `pg_basebackup`. Run as the `postgres` user when the tests run as root
//! (PostgreSQL refuses to run as root). Servers stop when dropped.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory of the newest installed PostgreSQL server binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TERN_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql/*/bin (or set TERN_PG_BIN)")
}

/// uid and gid to run PostgreSQL as: the `postgres` user when we are root.
pub fn run_as() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let out = Command::new("id").args(["-g", "postgres"]).output().ok()?;
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some((uid, gid))
}

fn command(name: &str) -> Command {
    let mut cmd = Command::new(bin_dir().join(name));
    if let Some((uid, gid)) = run_as() {
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    cmd
}

fn chown(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory the postgres user may use; removed when dropped.
pub fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chown(dir.path());
    dir
}

pub struct PgNode {
    pub data: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl PgNode {
    /// A new primary in `root/name`, with data checksums.
    pub fn primary(root: &Path, name: &str) -> PgNode {
        PgNode::primary_with(root, name, true)
    }

    /// A new primary in `root/name`; without checksums (and with the
    /// default `wal_log_hints = off`) `pg_rewind` refuses it.
    pub fn primary_with(root: &Path, name: &str, checksums: bool) -> PgNode {
        let data = root.join(name);
        let mut args = vec!["-U", "postgres", "--auth=trust", "-N", "--no-instructions"];
        if checksums {
            args.push("-k");
        }
        run(command("initdb").arg("-D").arg(&data).args(args), "initdb");
        // In the file, not on the command line: pg_rewind's crash recovery
        // of a node reads only the file, and must keep the WAL it needs.
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(
            &mut conf,
            b"\nlisten_addresses = '127.0.0.1'\nfsync = off\nwal_level = replica\n\
              hot_standby = on\nwal_keep_size = '256MB'\n",
        )
        .unwrap();
        let mut node = PgNode {
            data,
            port: free_port(),
            child: None,
        };
        node.start();
        node
    }

    /// A streaming standby of `primary` in `root/name`.
    pub fn standby(root: &Path, name: &str, primary: &PgNode) -> PgNode {
        let data = root.join(name);
        run(
            command("pg_basebackup")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .arg("-D")
                .arg(&data)
                .args(["-R", "-X", "stream", "-c", "fast"]),
            "pg_basebackup",
        );
        let mut node = PgNode {
            data,
            port: free_port(),
            child: None,
        };
        node.start();
        node
    }

    /// The arguments after `postgres -D DATA` that give this node its port
    /// and socket directory (an agent that starts the node uses them too).
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.port.to_string(),
            "-c".into(),
            format!(
                "unix_socket_directories={}",
                self.data.with_extension("sock").display()
            ),
        ]
    }

    /// Whether the server answers on its port (whoever started it).
    pub fn is_ready(&self) -> bool {
        command("pg_isready")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the server unless it answers already.
    pub fn ensure_running(&mut self) {
        if !self.is_ready() {
            self.child = None;
            self.start();
        }
    }

    pub fn start(&mut self) {
        // Sockets outside the data directory: pg_rewind copies that directory.
        let sockets = self.data.with_extension("sock");
        std::fs::create_dir_all(&sockets).unwrap();
        chown(&sockets);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.with_extension("log"))
            .unwrap();
        chown(&self.data.with_extension("log"));
        let child = command("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(self.server_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres on port {} did not start; log:\n{}",
                self.port,
                std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=5",
            self.port
        )
    }

    /// Immediate shutdown, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGQUIT);
            }
            let _ = c.wait();
        }
    }
}

impl Drop for PgNode {
    fn drop(&mut self) {
        self.kill();
    }
}

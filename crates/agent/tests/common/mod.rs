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

/// Gives `path` to the `postgres` user when the tests run as root.
pub fn chown(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
    }
}

/// A port that was free a moment ago. PostgreSQL cannot be handed a bound
/// socket, so another process may take the port before the server binds it:
/// [`PgNode`] then starts the new server on another one.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How many ports a new server tries before the test gives up.
const PORT_ATTEMPTS: u32 = 5;

/// The server could not bind its port: another process took it.
struct PortTaken {
    log: String,
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
        PgNode::first_start(data)
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
        PgNode::first_start(data)
    }

    /// Starts a new node's server on a free port. Nobody knows the port
    /// yet, so one taken meanwhile is replaced by another.
    fn first_start(data: PathBuf) -> PgNode {
        let mut node = PgNode {
            data,
            port: 0,
            child: None,
        };
        for _ in 0..PORT_ATTEMPTS {
            node.port = free_port();
            match node.try_start() {
                Ok(()) => return node,
                Err(PortTaken { log }) => {
                    eprintln!(
                        "postgres in {}: port {} was taken before it could bind it; trying another\n{log}",
                        node.data.display(),
                        node.port
                    );
                }
            }
        }
        panic!(
            "postgres in {}: every one of {PORT_ATTEMPTS} free ports was taken before the server could bind it",
            node.data.display()
        );
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

    /// Starts the server again on its port (others, such as an agent's
    /// configuration or a standby, may know it); panics if it does not start.
    pub fn start(&mut self) {
        if let Err(PortTaken { log }) = self.try_start() {
            panic!(
                "postgres in {}: its port {} was taken while it was down:\n{log}",
                self.data.display(),
                self.port
            );
        }
    }

    /// Starts the server and waits until it accepts connections; answers
    /// `PortTaken` when it exited because another process holds its port,
    /// and panics on any other failure.
    fn try_start(&mut self) -> Result<(), PortTaken> {
        // Sockets outside the data directory: pg_rewind copies that directory.
        let sockets = self.data.with_extension("sock");
        std::fs::create_dir_all(&sockets).unwrap();
        chown(&sockets);
        let log_path = self.data.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        chown(&log_path);
        // This start's lines: the log is appended to across restarts.
        let from = log.metadata().map_or(0, |m| m.len() as usize);
        let this_start = || {
            let all = std::fs::read(&log_path).unwrap_or_default();
            String::from_utf8_lossy(all.get(from..).unwrap_or_default()).into_owned()
        };
        let child = command("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(self.server_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start postgres");
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                let log = this_start();
                if log.contains("Address already in use") {
                    return Err(PortTaken { log });
                }
                panic!(
                    "postgres on port {} exited while starting ({status}); log:\n{log}",
                    self.port
                );
            }
            // Ours, not whatever else answers on the port: the pid file names
            // this server, which says it is ready once its sockets are bound.
            if self.pid_file_says_ready(pid) && self.is_ready() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "postgres on port {} did not start; log:\n{}",
                self.port,
                this_start()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether `postmaster.pid` names `pid` with the status `ready` (a
    /// primary) or `standby` (a hot standby that accepts connections).
    fn pid_file_says_ready(&self, pid: u32) -> bool {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap_or_default();
        let mut lines = text.lines();
        lines.next().map(str::trim) == Some(pid.to_string().as_str())
            && matches!(lines.nth(6).map(str::trim), Some("ready" | "standby"))
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

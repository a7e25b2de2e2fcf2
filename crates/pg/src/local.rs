//! The PostgreSQL node on this host, driven through its data directory:
//! whether its server runs (`postmaster.pid`, whoever started it), whether
//! it is configured as a standby (`standby.signal`), and the actions that
//! need the host: start it, stop it with escalation, crash it, make it a
//! standby again.
//!
//! Stopping is the fence that holds against every client: a stopped server
//! accepts no write from anyone, however a session asks. [`LocalNode::stop`]
//! escalates (fast shutdown, then immediate, then SIGKILL of the postmaster
//! and every child) until nothing of the server runs, so it fails only when
//! this process may not signal the server at all.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{PgError, Result};

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// No server was running.
    NotRunning,
    /// A fast shutdown (sessions ended, a shutdown checkpoint written).
    Fast,
    /// The fast shutdown took too long: an immediate shutdown.
    Immediate,
    /// Neither answered in time: the postmaster and its children were killed.
    Killed,
}

impl Stopped {
    pub fn as_str(self) -> &'static str {
        match self {
            Stopped::NotRunning => "not running",
            Stopped::Fast => "fast shutdown",
            Stopped::Immediate => "immediate shutdown",
            Stopped::Killed => "killed",
        }
    }
}

/// A node whose data directory is on this host.
#[derive(Debug)]
pub struct LocalNode {
    data: PathBuf,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    args: Vec<String>,
    stop_with_parent: bool,
    /// The server when this process started it (reaped when it exits).
    child: Mutex<Option<std::process::Child>>,
}

impl LocalNode {
    /// The node in `data`, run with the binaries in `bin` and `args` after
    /// `postgres -D DATA` (the node's identity when it is not in its
    /// configuration file: port, addresses, socket directory...). When this
    /// process runs as root, the server and its tools run as the owner of
    /// the data directory (PostgreSQL refuses to run as root).
    pub fn new(data: &Path, bin: &Path, args: Vec<String>) -> LocalNode {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = if root {
            std::fs::metadata(data)
                .ok()
                .map(|m| (m.uid(), m.gid()))
                .filter(|(uid, _)| *uid != 0)
        } else {
            None
        };
        LocalNode {
            data: data.to_path_buf(),
            bin: bin.to_path_buf(),
            run_as,
            args,
            stop_with_parent: false,
            child: Mutex::new(None),
        }
    }

    /// Runs the server and tools as this uid and gid (when this process is
    /// root), whoever owns the data directory.
    pub fn with_run_as(mut self, run_as: Option<(u32, u32)>) -> LocalNode {
        self.run_as = run_as;
        self
    }

    /// A server this process starts is killed by the kernel when the thread
    /// that started it ends (`PR_SET_PDEATHSIG`): a watchdog, so that a dead
    /// agent leaves no writable primary behind (a restart of the agent then
    /// restarts the server too).
    pub fn stop_with_parent(mut self, on: bool) -> LocalNode {
        self.stop_with_parent = on;
        self
    }

    pub fn data(&self) -> &Path {
        &self.data
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn run_as(&self) -> Option<(u32, u32)> {
        self.run_as
    }

    /// The server's log, beside the data directory.
    pub fn log_path(&self) -> PathBuf {
        self.data.with_extension("log")
    }

    /// The postmaster's pid, when one runs for this data directory.
    pub fn postmaster(&self) -> Option<i32> {
        self.reap();
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        (pid > 0 && is_postgres(pid)).then_some(pid)
    }

    pub fn is_running(&self) -> bool {
        self.postmaster().is_some()
    }

    /// Where the running server takes local connections: the directory of
    /// its Unix socket and its port, as its `postmaster.pid` says (lines 4
    /// and 5), when a server runs, has a socket directory, and its socket
    /// file (`.s.PGSQL.<port>`) is there.
    pub fn socket(&self) -> Option<(PathBuf, u16)> {
        self.postmaster()?;
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let mut lines = text.lines().skip(3);
        let port: u16 = lines.next()?.trim().parse().ok()?;
        let dir = PathBuf::from(lines.next()?.trim());
        (dir.is_absolute() && dir.join(format!(".s.PGSQL.{port}")).exists()).then_some((dir, port))
    }

    /// The data directory says the server runs in recovery (a standby).
    pub fn is_standby(&self) -> bool {
        self.data.join("standby.signal").exists() || self.data.join("recovery.signal").exists()
    }

    /// Whether the server may be accepting writes now: it runs and is not
    /// configured as a standby. Read from this host alone, so it answers
    /// even when the server does not.
    pub fn may_accept_writes(&self) -> bool {
        self.is_running() && !self.is_standby()
    }

    /// Stops the server, escalating until nothing of it runs: fast shutdown
    /// for up to `grace`, then an immediate shutdown for up to 2 s, then
    /// SIGKILL of the postmaster and its children. Fails only when the
    /// server cannot be signalled at all (another user's, without root).
    pub async fn stop(&self, grace: Duration) -> Result<Stopped> {
        let Some(pid) = self.postmaster() else {
            return Ok(Stopped::NotRunning);
        };
        for (signal, wait, how) in [
            (libc::SIGINT, grace, Stopped::Fast),
            (libc::SIGQUIT, Duration::from_secs(2), Stopped::Immediate),
        ] {
            signal_pid(pid, signal)?;
            if self.wait_gone(pid, wait).await {
                return Ok(how);
            }
        }
        self.crash().await?;
        Ok(Stopped::Killed)
    }

    /// Crashes the server as a dead host would: SIGKILL to the postmaster
    /// and every one of its children, then waits until none is alive.
    pub async fn crash(&self) -> Result<()> {
        let Some(pid) = self.postmaster() else {
            return Ok(());
        };
        signal_pid(pid, libc::SIGSTOP)?;
        let children = children_of(pid);
        signal_pid(pid, libc::SIGKILL)?;
        for c in &children {
            let _ = signal_pid(*c, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while (alive(pid) || children.iter().any(|c| alive(*c))) && Instant::now() < deadline {
            self.reap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.reap();
        Ok(())
    }

    /// [`LocalNode::crash`] without waiting: SIGKILL to the postmaster and
    /// its children, for a `Drop`.
    pub fn crash_now(&self) {
        let Some(pid) = self.postmaster() else { return };
        if signal_pid(pid, libc::SIGSTOP).is_err() {
            return;
        }
        let children = children_of(pid);
        let _ = signal_pid(pid, libc::SIGKILL);
        for c in &children {
            let _ = signal_pid(*c, libc::SIGKILL);
        }
    }

    async fn wait_gone(&self, pid: i32, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            self.reap();
            if !alive(pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reaps the server this process started, once it exited.
    fn reap(&self) {
        let mut child = self.child.lock().expect("child lock");
        if let Some(c) = child.as_mut() {
            if !matches!(c.try_wait(), Ok(None)) {
                *child = None;
            }
        }
    }

    /// Starts the server (`postgres -D DATA ARGS`, in a process group of its
    /// own, its output appended to [`LocalNode::log_path`]) and waits up to
    /// `timeout` until it accepts connections (its `postmaster.pid` says
    /// ready, or standby for a standby without hot standby).
    pub async fn start(&self, timeout: Duration) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let io = |what: String| move |source| PgError::Io { what, source };
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("open {}", log_path.display())))?;
        if let Some((uid, gid)) = self.run_as {
            let _ = std::os::unix::fs::chown(&log_path, Some(uid), Some(gid));
        }
        let mut cmd = std::process::Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(&self.args)
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        if self.stop_with_parent {
            // SAFETY: prctl is async-signal-safe and touches no memory of
            // ours; it runs after the switch of user (which would clear it).
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|e| PgError::Tool {
            tool: "postgres".into(),
            reason: format!(
                "could not start {}: {e}",
                self.bin.join("postgres").display()
            ),
        })?;
        let pid = child.id() as i32;
        *self.child.lock().expect("child lock") = Some(child);
        let deadline = Instant::now() + timeout;
        loop {
            let exited = {
                let mut child = self.child.lock().expect("child lock");
                match child.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(Some(status))) => {
                        *child = None;
                        Some(status.to_string())
                    }
                    _ => None,
                }
            };
            if let Some(status) = exited {
                return Err(PgError::Tool {
                    tool: "postgres".into(),
                    reason: format!(
                        "exited while starting ({status}); last log lines:\n{}",
                        tail(&log_path, 10)
                    ),
                });
            }
            // A crashed server leaves its pid file behind: only the new
            // postmaster's own line counts.
            if self.postmaster() == Some(pid)
                && self
                    .status_line()
                    .is_some_and(|s| s == "ready" || s == "standby")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.stop(Duration::from_secs(2)).await;
                return Err(PgError::Timeout {
                    what: format!("start the server in {}", self.data.display()),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The status line of `postmaster.pid` (`starting`, `ready`, `standby`,
    /// `stopping`), when the server wrote one.
    fn status_line(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().nth(7).map(|l| l.trim().to_string())
    }

    /// Makes the (stopped) node a standby that streams with
    /// `primary_conninfo`: writes `standby.signal`, and `primary_conninfo`
    /// plus an empty `synchronous_standby_names` to `postgresql.auto.conf`
    /// (later lines of that file win), so that after a promotion it does
    /// not wait for a standby that is not there.
    pub fn configure_standby(&self, primary_conninfo: &str) -> Result<()> {
        let io = |what: String| move |source| PgError::Io { what, source };
        let auto = self.data.join("postgresql.auto.conf");
        let line = format!(
            "\n# tern: a standby of the current writer\nprimary_conninfo = {}\nsynchronous_standby_names = ''\n",
            conf_string(primary_conninfo)
        );
        append(&auto, &line).map_err(io(format!("write {}", auto.display())))?;
        let signal = self.data.join("standby.signal");
        std::fs::write(&signal, b"").map_err(io(format!("write {}", signal.display())))?;
        for path in [&auto, &signal] {
            if let Some((uid, gid)) = self.run_as {
                let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
            }
        }
        Ok(())
    }

    /// The position of the last checkpoint (`pg_controldata`): after a fast
    /// shutdown, the shutdown checkpoint, which a standby has replayed past
    /// once it has everything this node wrote.
    pub async fn checkpoint_lsn(&self) -> Result<u64> {
        let out = self
            .tools()
            .run(
                "pg_controldata",
                &["-D", &self.data.display().to_string()],
                Duration::from_secs(10),
            )
            .await?;
        let line = out
            .lines()
            .find(|l| l.starts_with("Latest checkpoint location:"))
            .ok_or_else(|| {
                PgError::Unexpected("pg_controldata printed no checkpoint location".into())
            })?;
        crate::parse_lsn(line.split(':').nth(1).unwrap_or("").trim())
    }

    /// Whether the (stopped) server was shut down cleanly: its control file
    /// says `shut down`, so its last checkpoint ends its WAL.
    pub async fn shut_down_cleanly(&self) -> Result<bool> {
        let out = self
            .tools()
            .run(
                "pg_controldata",
                &["-D", &self.data.display().to_string()],
                Duration::from_secs(10),
            )
            .await?;
        Ok(out.lines().any(|l| {
            l.starts_with("Database cluster state:")
                && (l.ends_with("shut down") || l.ends_with("shut down in recovery"))
        }))
    }

    /// Records that plan `plan` promotes this node, before it does:
    /// [`LocalNode::promoted_by`] then tells a promotion this plan made
    /// from a node that was a primary already.
    pub fn mark_promotion(&self, plan: u64) -> Result<()> {
        let path = self.data.join(PROMOTION_MARK);
        std::fs::write(&path, plan.to_string()).map_err(|source| PgError::Io {
            what: format!("write {}", path.display()),
            source,
        })
    }

    /// The plan that last promoted this node, if one did.
    pub fn promoted_by(&self) -> Option<u64> {
        std::fs::read_to_string(self.data.join(PROMOTION_MARK))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The server tools of this node, run as its user.
    pub fn tools(&self) -> crate::PgTools {
        crate::PgTools {
            bin_dir: self.bin.clone(),
            run_as: self.run_as,
        }
    }
}

/// The file in a data directory naming the plan that promoted the node.
const PROMOTION_MARK: &str = "tern.promoted";

/// The directory of the PostgreSQL server binaries: `TERN_PG_BIN` if set,
/// else the directory of the `initdb` found on `PATH` (symlinks resolved),
/// else the newest `/usr/lib/postgresql/*/bin`. Only directories that also
/// hold `postgres` and `pg_basebackup` count.
pub fn pg_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "postgres", "pg_basebackup"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("TERN_PG_BIN").map(PathBuf::from) {
        return complete(&dir).then_some(dir);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("initdb"))
            .filter(|initdb| initdb.is_file())
            .filter_map(|initdb| std::fs::canonicalize(initdb).ok())
            .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
            .find(|dir| complete(dir))
    });
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// A configuration string literal: single quotes, quotes doubled.
fn conf_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn signal_pid(pid: i32, signal: i32) -> Result<()> {
    // SAFETY: a plain syscall; the pid was checked to be a postgres process.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(PgError::Io {
                what: format!("signal the postmaster (pid {pid})"),
                source: e,
            });
        }
    }
    Ok(())
}

/// `(pid, state, parent pid, command)` of every process, from `/proc`.
fn processes() -> Vec<(i32, char, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (state, ppid, _) = stat(pid)?;
            Some((pid, state, ppid))
        })
        .collect()
}

/// State, parent pid and command name of a process.
fn stat(pid: i32) -> Option<(char, i32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid, comm))
}

fn children_of(parent: i32) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|(_, _, ppid)| *ppid == parent)
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Whether `pid` is a live process (a zombie is not).
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _, _)| state != 'Z')
}

/// Whether `pid` is a live PostgreSQL server process (a stale
/// `postmaster.pid` may name a pid reused by something else).
fn is_postgres(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _, comm)| {
        state != 'Z' && (comm == "postgres" || comm == "postmaster")
    })
}

/// The last `n` lines of a file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_read_from_proc() {
        let me = std::process::id() as i32;
        let all = processes();
        let (_, state, _) = all
            .iter()
            .find(|(pid, _, _)| *pid == me)
            .expect("this process");
        assert_ne!(*state, 'Z');
        assert!(alive(me));
        assert!(!alive(i32::MAX));
        assert!(children_of(i32::MAX).is_empty());
        // A test binary is not a PostgreSQL server, whatever a stale pid
        // file says.
        assert!(!is_postgres(me));
    }

    #[test]
    fn a_data_directory_without_a_server_is_not_running() {
        let dir = std::env::temp_dir().join(format!("tern-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A stale pid file naming this (non-postgres) process.
        std::fs::write(
            dir.join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        let node = LocalNode::new(&dir, Path::new("/nonexistent"), Vec::new());
        assert!(!node.is_running());
        assert!(!node.may_accept_writes());
        std::fs::write(dir.join("standby.signal"), b"").unwrap();
        assert!(node.is_standby());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

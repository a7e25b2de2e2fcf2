//! Child processes of the lab: started from the `tern` binary itself, their
//! output kept in log files, and killed with the lab, however it ends.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One running child.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    /// The lines the child printed on stdout after its ready line.
    lines: tokio::sync::watch::Receiver<Vec<String>>,
}

impl Proc {
    /// Starts `binary args...` and waits for its ready line on stdout, which
    /// every tern role prints once bound ("listening on ADDR ..."). Returns
    /// the process and the words after "listening on".
    pub async fn start(
        name: &str,
        binary: &Path,
        args: &[String],
        log_dir: &Path,
        ready_timeout: Duration,
    ) -> Result<(Proc, Vec<String>)> {
        Proc::start_with(name, binary, args, log_dir, ready_timeout, Vec::new()).await
    }

    /// [`Proc::start`], handing the child listening `sockets` by name (see
    /// [`hand_over`]). The lab's copies are closed once the child is ready.
    pub async fn start_with(
        name: &str,
        binary: &Path,
        args: &[String],
        log_dir: &Path,
        ready_timeout: Duration,
        sockets: Vec<(String, std::net::TcpListener)>,
    ) -> Result<(Proc, Vec<String>)> {
        let log = log_dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let mut cmd = std::process::Command::new(binary);
        hand_over(&mut cmd, sockets).with_context(|| format!("start {name}"))?;
        let mut cmd = Command::from(cmd);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .env(
                "TERN_LOG",
                std::env::var("TERN_LOG").unwrap_or_else(|_| "info".into()),
            )
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // It makes the kernel kill the child if the lab dies, even by SIGKILL,
        // so a crashed lab leaves no process behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {}", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(ready_timeout, async {
            while let Some(line) = lines.next_line().await? {
                // "... listening on ADDR ..." or "ready: ..." for roles that do not listen.
                let rest = line
                    .split_once("listening on ")
                    .map(|(_, r)| r)
                    .or_else(|| line.strip_prefix("ready: "));
                if let Some(rest) = rest {
                    return Ok::<_, std::io::Error>(Some(
                        rest.split_whitespace()
                            .map(str::to_string)
                            .collect::<Vec<_>>(),
                    ));
                }
            }
            Ok(None)
        })
        .await;
        let words = match ready {
            Ok(Ok(Some(words))) => words,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = child.wait().await.ok();
                bail!(
                    "{name} exited before it was ready ({status:?}); last log lines:\n{}",
                    tail(&log, 15)
                );
            }
            Err(_) => bail!(
                "{name} was not ready within {ready_timeout:?}; last log lines:\n{}",
                tail(&log, 15)
            ),
        };
        // Keep draining stdout so the child never blocks on a full pipe;
        // the lines are kept for [`Proc::wait_for_line`] (roles print few).
        let (seen, seen_rx) = tokio::sync::watch::channel(Vec::new());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                seen.send_modify(|l: &mut Vec<String>| l.push(line));
            }
        });
        Ok((
            Proc {
                name: name.to_string(),
                child,
                log,
                lines: seen_rx,
            },
            words,
        ))
    }

    /// Kills the process outright (SIGKILL), as a dead host would stop it.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace`, then kills it.
    pub async fn stop(&mut self, grace: Duration) {
        self.terminate();
        self.wait_or_kill(grace).await;
    }

    /// Sends SIGTERM and returns at once.
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: plain syscall on a pid we own.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// Waits up to `grace` for the process to end, then kills it.
    pub async fn wait_or_kill(&mut self, grace: Duration) {
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }

    /// Waits up to `timeout` until the process prints a line starting with
    /// `prefix` on stdout (after its ready line) or ends; answers whether
    /// it printed it.
    pub async fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> bool {
        let mut lines = self.lines.clone();
        let printed = lines.wait_for(|l| l.iter().any(|l| l.starts_with(prefix)));
        tokio::select! {
            r = printed => r.is_ok(),
            _ = self.child.wait() => {
                // The last lines may still be on their way through the pipe.
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.lines.borrow().iter().any(|l| l.starts_with(prefix))
            }
            () = tokio::time::sleep(timeout) => false,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Hands listening `sockets` to the program `cmd` starts, the way systemd's
/// socket activation does (`sd_listen_fds(3)`): descriptors 3, 4, ... in
/// order, `LISTEN_FDS` their count and `LISTEN_FDNAMES` their names joined
/// by `:` (`tern` reads them: a controller takes `controller`, an agent
/// `writer-proxy.CLUSTER`). `LISTEN_PID` is left unset, as the child's pid
/// is not known before it exists; `tern` accepts that. The sockets stay
/// open until the command is dropped.
///
/// # Errors
/// More than 64 sockets, a name with `:`, or a descriptor that cannot be
/// duplicated.
pub fn hand_over(
    cmd: &mut std::process::Command,
    sockets: Vec<(String, TcpListener)>,
) -> Result<()> {
    if sockets.is_empty() {
        return Ok(());
    }
    if sockets.len() > 64 {
        bail!("{} sockets to hand over: at most 64", sockets.len());
    }
    let mut names = Vec::new();
    let mut fds = Vec::new();
    for (name, listener) in sockets {
        if name.is_empty() || name.contains(':') {
            bail!("socket name {name:?}: not empty and without ':'");
        }
        // A copy above any descriptor the child is given (3 to 3 + 64), so
        // that moving one into place never overwrites another; close-on-exec,
        // so that no other program the lab starts inherits it.
        // SAFETY: fcntl on a descriptor the listener owns; the result is a
        // new descriptor owned by nobody else.
        let fd = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("duplicate the socket {name}"));
        }
        // SAFETY: `fd` was just made and is owned by nobody else.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        names.push(name);
    }
    cmd.env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID");
    // SAFETY: dup2 is async-signal-safe and touches no memory of ours; the
    // targets are the child's own descriptors 3, 4, ..., and dup2 leaves
    // them open across exec.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(fd.as_raw_fd(), 3 + i as libc::c_int) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// Listening sockets the lab binds before the process that serves them
/// starts, so that no other process can take their ports in between: bound
/// once by [`Held::bind`] and handed to each process that serves the
/// address ([`Held::take`]).
///
/// Like a service manager's socket unit, the lab keeps its own copy while a
/// process serves the address, so a process stopped and started again (a
/// rolling restart) takes over the same socket and clients that connect in
/// between wait in its backlog instead of being refused. A process that
/// dies as a host would is let go with [`Held::release`]: its address then
/// refuses connections, and a later start binds it again.
#[derive(Default)]
pub struct Held(Mutex<BTreeMap<SocketAddr, TcpListener>>);

impl Held {
    /// Binds a free port on `ip` and keeps the socket; answers its address.
    ///
    /// # Errors
    /// No port could be bound on `ip`.
    pub fn bind(&self, ip: IpAddr) -> Result<SocketAddr> {
        let l = TcpListener::bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind a listening socket on {ip}"))?;
        let addr = l.local_addr()?;
        self.0.lock().expect("held sockets").insert(addr, l);
        Ok(addr)
    }

    /// The socket for `addr`, for a process about to serve it: the one kept
    /// (a copy; the lab keeps its own), or, after [`Held::release`], the
    /// address bound again.
    ///
    /// # Errors
    /// The address is taken (by another process, or by a previous server
    /// that has not let it go), or the socket cannot be duplicated.
    pub fn take(&self, addr: SocketAddr) -> Result<TcpListener> {
        let mut held = self.0.lock().expect("held sockets");
        if let Some(l) = held.get(&addr) {
            return l
                .try_clone()
                .with_context(|| format!("duplicate the socket of {addr}"));
        }
        let l = TcpListener::bind(addr).with_context(|| format!("bind {addr} again"))?;
        let copy = l
            .try_clone()
            .with_context(|| format!("duplicate the socket of {addr}"))?;
        held.insert(addr, copy);
        Ok(l)
    }

    /// Lets go of the lab's copy of `addr`'s socket: once the process that
    /// served it is dead, connections to it are refused.
    pub fn release(&self, addr: SocketAddr) {
        self.0.lock().expect("held sockets").remove(&addr);
    }
}

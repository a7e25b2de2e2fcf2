//! Child processes of the lab: started from the `tern` binary itself, their
//! output kept in log files, and killed with the lab, however it ends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One running child.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
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
        let log = log_dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let mut cmd = Command::new(binary);
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
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((
            Proc {
                name: name.to_string(),
                child,
                log,
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
        if let Some(pid) = self.child.id() {
            // SAFETY: plain syscall on a pid we own.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
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

//! tern's PostgreSQL adapter: what a node is (primary or standby), how far
//! behind it is, and the actions the failover plan needs from it: promote a
//! standby, fence a primary (no new writes: read-only by default and every
//! client session ended), and make an old primary a standby again.
//!
//! [`Pg`] is a connection to one node with a deadline on every statement:
//! [`Pg::status`] answers a [`PgStatus`]; [`Pg::promote`], [`Pg::fence`],
//! [`Pg::unfence`] and [`Pg::set_synchronous`] act on it. [`PgTools`] runs
//! the server's own tools (`pg_rewind`, `pg_basebackup`) for
//! [`PgTools::rejoin`]. Every failure is a [`PgError`] that says whether
//! the node did not answer in time, refused a statement, or a tool failed.
//! WAL positions are `u64` byte offsets ([`parse_lsn`]).
//!
//! Fencing here is the reachable-primary fence of a failover; a node that
//! must be sure no write gets through is stopped instead (`pg_ctl stop`),
//! since a session may still ask for a read-write transaction explicitly.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// Why an action on a PostgreSQL node failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The node did not answer within the deadline (it may be hung, cut
    /// off or overloaded): nothing is known of what it did.
    #[error("{what}: no answer within {} ms", .timeout.as_millis())]
    Timeout { what: String, timeout: Duration },
    /// The node answered with an error, or the connection broke.
    #[error("{what}: {source}")]
    Postgres {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A server tool (`pg_rewind`, `pg_basebackup`) failed or could not run.
    #[error("{tool}: {reason}")]
    Tool { tool: String, reason: String },
    /// A file of the data directory could not be read or changed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The node answered something this adapter does not understand.
    #[error("{0}")]
    Unexpected(String),
}

impl PgError {
    /// Whether the node gave no answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, PgError::Timeout { .. })
    }
}

pub type Result<T, E = PgError> = std::result::Result<T, E>;

fn pg_err(what: &str) -> impl FnOnce(tokio_postgres::Error) -> PgError + '_ {
    move |source| PgError::Postgres {
        what: what.to_string(),
        source,
    }
}

fn timeout_err(what: &str, timeout: Duration) -> PgError {
    PgError::Timeout {
        what: what.to_string(),
        timeout,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// One reading of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct PgStatus {
    pub role: Role,
    /// The primary's current WAL position, or the standby's replayed one.
    pub lsn: u64,
    /// Primary: the largest replay lag of its standbys, in bytes; standby:
    /// received but not yet replayed WAL. `None`: nothing to compare with.
    pub lag_bytes: Option<u64>,
    /// Primary: the largest `replay_lag` of its standbys; standby: time
    /// since the last replayed transaction. `None` when unknown.
    pub lag_seconds: Option<f64>,
    /// New transactions default to read-only (fenced).
    pub read_only: bool,
    /// Primary: commits wait for a standby (`synchronous_standby_names` set).
    pub synchronous: bool,
    /// Primary: standbys streaming now.
    pub streaming: u32,
}

/// Parses a PostgreSQL LSN such as `16/B374D848`.
pub fn parse_lsn(text: &str) -> Result<u64> {
    let bad = || PgError::Unexpected(format!("not an LSN: {text:?}"));
    let (hi, lo) = text.split_once('/').ok_or_else(bad)?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
    if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
        return Err(bad());
    }
    Ok(hi << 32 | lo)
}

pub struct Pg {
    client: Client,
    timeout: Duration,
}

impl Pg {
    /// Connects with a deadline; the connection task runs on the current runtime.
    pub async fn connect(conninfo: &str, timeout: Duration) -> Result<Pg> {
        let (client, connection) =
            tokio::time::timeout(timeout, tokio_postgres::connect(conninfo, NoTls))
                .await
                .map_err(|_| timeout_err("connect to PostgreSQL", timeout))?
                .map_err(pg_err("connect to PostgreSQL"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(Pg { client, timeout })
    }

    async fn deadline<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| timeout_err(what, self.timeout))?
            .map_err(pg_err(what))
    }

    pub async fn status(&self) -> Result<PgStatus> {
        let row = self
            .deadline(
                "read the role",
                self.client.query_one(
                    "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on', \
                     current_setting('synchronous_standby_names') <> '', \
                     (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')::int4",
                    &[],
                ),
            )
            .await?;
        let in_recovery: bool = row.get(0);
        let read_only: bool = row.get(1);
        let synchronous: bool = row.get(2);
        let streaming: i32 = row.get(3);
        // Both queries answer (position, lag in bytes, lag in seconds).
        let (role, what, sql) = if in_recovery {
            (
                Role::Standby,
                "read the standby's position",
                "SELECT coalesce(pg_last_wal_replay_lsn(), '0/0')::text, \
                 pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8, \
                 extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
            )
        } else {
            (
                Role::Primary,
                "read the primary's position",
                "SELECT pg_current_wal_lsn()::text, \
                 (SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::float8 FROM pg_stat_replication), \
                 (SELECT max(extract(epoch FROM replay_lag))::float8 FROM pg_stat_replication)",
            )
        };
        let row = self.deadline(what, self.client.query_one(sql, &[])).await?;
        let lsn: String = row.get(0);
        let lag_bytes: Option<f64> = row.get(1);
        let lag_seconds: Option<f64> = row.get(2);
        Ok(PgStatus {
            role,
            lsn: parse_lsn(&lsn)?,
            lag_bytes: lag_bytes.map(|b| b.max(0.0) as u64),
            lag_seconds,
            read_only,
            synchronous,
            streaming: streaming.max(0) as u32,
        })
    }

    /// Promotes a standby and waits (up to `wait`) until it accepts writes.
    pub async fn promote(&self, wait: Duration) -> Result<()> {
        let secs = wait.as_secs().clamp(1, 3600) as i32;
        let row = tokio::time::timeout(
            wait + self.timeout,
            self.client
                .query_one("SELECT pg_promote(true, $1)", &[&secs]),
        )
        .await
        .map_err(|_| timeout_err("promote", wait + self.timeout))?
        .map_err(pg_err("promote"))?;
        let done: bool = row.get(0);
        if !done {
            return Err(timeout_err("promote (pg_promote answered false)", wait));
        }
        Ok(())
    }

    /// Fences a primary: new transactions are read-only and every other
    /// client session is ended. Returns how many sessions were ended.
    pub async fn fence(&self) -> Result<u64> {
        self.deadline(
            "set read-only",
            self.client
                .batch_execute("ALTER SYSTEM SET default_transaction_read_only = on"),
        )
        .await?;
        self.deadline(
            "reload the configuration",
            self.client.query_one("SELECT pg_reload_conf()", &[]),
        )
        .await?;
        let row = self
            .deadline(
                "end client sessions",
                self.client.query_one(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                    &[],
                ),
            )
            .await?;
        let ended: i64 = row.get(0);
        Ok(ended.max(0) as u64)
    }

    /// Makes commits wait for a standby (`*`: any one), or not.
    pub async fn set_synchronous(&self, on: bool) -> Result<()> {
        let sql = if on {
            "ALTER SYSTEM SET synchronous_standby_names = '*'"
        } else {
            "ALTER SYSTEM SET synchronous_standby_names = ''"
        };
        self.alter_system("set synchronous_standby_names", sql)
            .await
    }

    /// One `ALTER SYSTEM` statement, then a configuration reload.
    async fn alter_system(&self, what: &str, sql: &str) -> Result<()> {
        self.deadline(what, self.client.batch_execute(sql)).await?;
        self.deadline(
            "reload the configuration",
            self.client.query_one("SELECT pg_reload_conf()", &[]),
        )
        .await?;
        Ok(())
    }

    /// Lifts a fence (after the node has rejoined, or by an operator).
    pub async fn unfence(&self) -> Result<()> {
        self.alter_system(
            "reset read-only",
            "ALTER SYSTEM RESET default_transaction_read_only",
        )
        .await
    }
}

/// How an old primary was made a standby again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejoin {
    /// `pg_rewind`: only the diverged blocks were copied.
    Rewind,
    /// A fresh `pg_basebackup`, after `pg_rewind` failed for this reason.
    BaseBackup { rewind_error: String },
}

/// The local PostgreSQL tools, for actions that need the server stopped.
#[derive(Debug, Clone)]
pub struct PgTools {
    pub bin_dir: PathBuf,
    /// Run the tools as this uid and gid (when the agent runs as root).
    pub run_as: Option<(u32, u32)>,
}

impl PgTools {
    fn command(&self, name: &str) -> tokio::process::Command {
        let mut cmd = std::process::Command::new(self.bin_dir.join(name));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.env("LC_ALL", "C").stdin(std::process::Stdio::null());
        tokio::process::Command::from(cmd)
    }

    async fn run(&self, name: &str, args: &[&str], timeout: Duration) -> Result<()> {
        let out = tokio::time::timeout(timeout, self.command(name).args(args).output())
            .await
            .map_err(|_| timeout_err(name, timeout))?
            .map_err(|e| PgError::Tool {
                tool: name.to_string(),
                reason: format!("could not run: {e}"),
            })?;
        if !out.status.success() {
            return Err(PgError::Tool {
                tool: name.to_string(),
                reason: format!(
                    "failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }

    /// Makes a stopped old primary a streaming standby of `source`:
    /// `pg_rewind` first (it finishes the crash recovery of a node that was
    /// not shut down cleanly), a fresh base backup when that fails. Both
    /// write `standby.signal` and `primary_conninfo`; start the server
    /// afterwards.
    pub async fn rejoin(&self, data_dir: &Path, source: &str, timeout: Duration) -> Result<Rejoin> {
        let data = data_dir.display().to_string();
        // A freshly promoted source records its new timeline in pg_control
        // only at its next checkpoint; without one pg_rewind may see no
        // divergence and leave the old primary's extra writes in place.
        let source_pg = Pg::connect(source, timeout.min(Duration::from_secs(10))).await?;
        tokio::time::timeout(timeout, source_pg.client.batch_execute("CHECKPOINT"))
            .await
            .map_err(|_| timeout_err("checkpoint on the new primary", timeout))?
            .map_err(pg_err("checkpoint on the new primary"))?;
        let target = format!("--target-pgdata={data}");
        let server = format!("--source-server={source}");
        let rewind = self
            .run(
                "pg_rewind",
                &[&target, &server, "--write-recovery-conf"],
                timeout,
            )
            .await;
        match rewind {
            Ok(()) => Ok(Rejoin::Rewind),
            Err(e) => {
                tracing::warn!(error = %e, "pg_rewind failed; taking a fresh base backup");
                let io = |what: String| move |source| PgError::Io { what, source };
                for entry in std::fs::read_dir(data_dir).map_err(io(format!("read {data}")))? {
                    let path = entry.map_err(io(format!("read {data}")))?.path();
                    if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    }
                    .map_err(io(format!("clear {}", path.display())))?;
                }
                self.run(
                    "pg_basebackup",
                    &[
                        "-d", source, "-D", &data, "-R", "-X", "stream", "-c", "fast",
                    ],
                    timeout,
                )
                .await?;
                Ok(Rejoin::BaseBackup {
                    rewind_error: e.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse() {
        assert_eq!(parse_lsn("0/0").unwrap(), 0);
        assert_eq!(parse_lsn("16/B374D848").unwrap(), 0x16_B374_D848);
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF").unwrap(), u64::MAX);
        for bad in ["", "16", "x/1", "1/", "100000000/0"] {
            assert!(parse_lsn(bad).is_err(), "{bad}");
        }
    }
}

//! tern's PostgreSQL adapter: what a node is (primary or standby), how far
//! behind it is, and the actions the failover plan needs from it: promote a
//! standby, fence a primary (stop it), and make an old primary a standby
//! again without losing what it alone had.
//!
//! [`Pg`] is a connection to one node with a deadline on every statement:
//! [`Pg::status`] answers a [`PgStatus`]; [`Pg::promote`] and
//! [`Pg::set_synchronous`] act on it. [`LocalNode`] is the node on this host,
//! driven through its data directory: running or not, standby or not,
//! start, and stop with escalation (the fence: a stopped server refuses
//! every write from every client). [`PgTools`] runs the server's own tools
//! (`pg_rewind`, `pg_basebackup`, `pg_waldump`) for [`PgTools::rejoin`],
//! which keeps and reports what an old primary had that the new one lacks. Every failure is a [`PgError`] that says whether
//! the node did not answer in time, refused a statement, or a tool failed.
//! WAL positions are `u64` byte offsets ([`parse_lsn`]).
//!
//! Fencing here is the reachable-primary fence of a failover; a node that
//! must be sure no write gets through is stopped instead (`pg_ctl stop`),
//! since a session may still ask for a read-write transaction explicitly.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

pub mod hba;
pub mod local;
pub mod passfile;

pub use hba::{side_doors, HbaRule};
pub use local::{pg_bin_dir, LocalNode, Stopped};

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
    /// Standby: where its WAL receiver streams from now (`sender_host`,
    /// `sender_port` of `pg_stat_wal_receiver`), when it streams.
    pub upstream: Option<(String, u16)>,
    /// Primary: the most WAL any streaming standby has confirmed flushed
    /// (`flush_lsn` of `pg_stat_replication`); `None` with no standby.
    pub confirmed_lsn: Option<u64>,
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
        let confirmed_lsn = if in_recovery {
            None
        } else {
            self.deadline(
                "read the standbys' flush positions",
                self.client.query_one(
                    "SELECT max(flush_lsn)::text FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                ),
            )
            .await?
            .get::<_, Option<String>>(0)
            .map(|l| parse_lsn(&l))
            .transpose()?
        };
        let upstream = if in_recovery {
            self.deadline(
                "read the WAL receiver",
                self.client.query_opt(
                    "SELECT sender_host, sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                    &[],
                ),
            )
            .await?
            .and_then(|r| {
                let host: Option<String> = r.get(0);
                let port: Option<i32> = r.get(1);
                Some((host?, u16::try_from(port?).ok()?))
            })
        } else {
            None
        };
        Ok(PgStatus {
            role,
            lsn: parse_lsn(&lsn)?,
            lag_bytes: lag_bytes.map(|b| b.max(0.0) as u64),
            lag_seconds,
            read_only,
            synchronous,
            streaming: streaming.max(0) as u32,
            upstream,
            confirmed_lsn,
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

    /// The node's client authentication rules as the server parsed its
    /// `pg_hba.conf` (`pg_hba_file_rules`; needs a superuser), in file order.
    pub async fn hba_rules(&self) -> Result<Vec<HbaRule>> {
        let what = "read pg_hba_file_rules";
        let rows = self
            .deadline(
                what,
                self.client.query(
                    "SELECT line_number, type, database, user_name, address, netmask, auth_method, error \
                     FROM pg_hba_file_rules ORDER BY line_number",
                    &[],
                ),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| HbaRule {
                line: r.get(0),
                kind: r.get(1),
                databases: r.get::<_, Option<Vec<String>>>(2).unwrap_or_default(),
                users: r.get::<_, Option<Vec<String>>>(3).unwrap_or_default(),
                address: r.get(4),
                netmask: r.get(5),
                method: r.get(6),
                error: r.get(7),
            })
            .collect())
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
}

/// How an old primary was made a standby again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejoin {
    /// `pg_rewind`: only the diverged blocks were copied.
    Rewind,
    /// A fresh `pg_basebackup`, after `pg_rewind` failed for this reason;
    /// the old data directory was moved to `kept_at`, never deleted.
    BaseBackup {
        rewind_error: String,
        kept_at: PathBuf,
    },
}

/// What a rejoin did, and what the old primary had that the new writer
/// does not (DESIGN.md invariant 2: rejoin never destroys diverged writes;
/// they are kept and reported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejoinReport {
    pub how: Rejoin,
    /// Where the histories forked (the WAL position and the old primary's
    /// timeline), when they did.
    pub diverged_at: Option<(u64, u32)>,
    /// Transactions the old primary committed after the fork (their ids),
    /// from its WAL: the writes an operator may have to reconcile.
    pub diverged_transactions: Vec<u32>,
    /// Where the old primary's WAL from the fork on, and `pg_waldump`'s
    /// reading of it (`waldump.txt`), were kept (when it committed
    /// anything after the fork).
    pub kept: Option<PathBuf>,
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

    /// Runs a tool; answers its standard output and error, together.
    pub(crate) async fn run(&self, name: &str, args: &[&str], timeout: Duration) -> Result<String> {
        let out = tokio::time::timeout(timeout, self.command(name).args(args).output())
            .await
            .map_err(|_| timeout_err(name, timeout))?
            .map_err(|e| PgError::Tool {
                tool: name.to_string(),
                reason: format!("could not run: {e}"),
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(PgError::Tool {
                tool: name.to_string(),
                reason: format!("failed ({}): {}", out.status, text.trim()),
            });
        }
        Ok(text)
    }

    /// Makes a stopped old primary a standby of `source` (a conninfo), and
    /// keeps what it had that `source` does not:
    ///
    /// 1. a checkpoint on the source (a freshly promoted source records its
    ///    new timeline only then; without it `pg_rewind` may see no fork);
    /// 2. `pg_rewind --dry-run` finds where the histories forked;
    /// 3. the old primary's WAL from that segment on is copied beside the
    ///    data directory (`<data>.diverged-<unix ms>`) with `pg_waldump`'s
    ///    reading of it, and the transactions committed after the fork are
    ///    listed in the report;
    /// 4. `pg_rewind`, or when that fails, the data directory is moved
    ///    aside (never deleted) and a fresh base backup taken.
    ///
    /// Both end with `standby.signal` and `primary_conninfo` written;
    /// start the server afterwards.
    pub async fn rejoin(
        &self,
        data_dir: &Path,
        source: &str,
        timeout: Duration,
    ) -> Result<RejoinReport> {
        let data = data_dir.display().to_string();
        let source_pg = Pg::connect(source, timeout.min(Duration::from_secs(10))).await?;
        tokio::time::timeout(timeout, source_pg.client.batch_execute("CHECKPOINT"))
            .await
            .map_err(|_| timeout_err("checkpoint on the new primary", timeout))?
            .map_err(pg_err("checkpoint on the new primary"))?;
        let target = format!("--target-pgdata={data}");
        let server = format!("--source-server={source}");
        // pg_rewind needs a cleanly shut down target, and its dry run does
        // not finish a crash recovery itself: single-user mode does.
        self.finish_crash_recovery(data_dir, timeout).await?;
        let dry = self
            .run("pg_rewind", &[&target, &server, "--dry-run"], timeout)
            .await;
        let diverged_at = match &dry {
            Ok(out) => parse_divergence(out),
            Err(e) => {
                tracing::warn!(error = %e, "pg_rewind --dry-run failed; the fork point is unknown");
                None
            }
        };

        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut report = RejoinReport {
            how: Rejoin::Rewind,
            diverged_at,
            diverged_transactions: Vec::new(),
            kept: None,
        };
        if let Some((lsn, timeline)) = diverged_at {
            let kept = data_dir.with_extension(format!("diverged-{stamp}"));
            match self
                .keep_diverged(data_dir, &kept, lsn, timeline, timeout)
                .await
            {
                // Nothing committed after the fork (a clean switchover):
                // nothing to keep.
                Ok(xids) if xids.is_empty() => {
                    let _ = std::fs::remove_dir_all(&kept);
                }
                Ok(xids) => {
                    report.diverged_transactions = xids;
                    report.kept = Some(kept);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the diverged WAL; it is kept as it was");
                    report.kept = Some(kept);
                }
            }
        }
        let rewind = self
            .run(
                "pg_rewind",
                &[&target, &server, "--write-recovery-conf"],
                timeout,
            )
            .await;
        if let Err(e) = rewind {
            tracing::warn!(error = %e, "pg_rewind failed; moving the data directory aside and taking a fresh base backup");
            let io = |what: String| move |source| PgError::Io { what, source };
            let aside = data_dir.with_extension(format!("old-{stamp}"));
            let meta = std::fs::metadata(data_dir).map_err(io(format!("read {data}")))?;
            std::fs::rename(data_dir, &aside)
                .map_err(io(format!("move {data} to {}", aside.display())))?;
            std::fs::create_dir(data_dir).map_err(io(format!("create {data}")))?;
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(format!("chmod {data}")))?;
            let _ = std::os::unix::fs::chown(data_dir, Some(meta.uid()), Some(meta.gid()));
            self.run(
                "pg_basebackup",
                &[
                    "-d", source, "-D", &data, "-R", "-X", "stream", "-c", "fast",
                ],
                timeout,
            )
            .await?;
            report.how = Rejoin::BaseBackup {
                rewind_error: e.to_string(),
                kept_at: aside,
            };
        }
        Ok(report)
    }

    /// Completes the crash recovery of a server that was not shut down
    /// cleanly (`postgres --single`, as `pg_rewind` itself does), so that
    /// its data directory says "shut down".
    async fn finish_crash_recovery(&self, data_dir: &Path, timeout: Duration) -> Result<()> {
        let data = data_dir.display().to_string();
        let state = self.run("pg_controldata", &["-D", &data], timeout).await?;
        let clean = state.lines().any(|l| {
            l.starts_with("Database cluster state:")
                && (l.ends_with("shut down") || l.ends_with("shut down in recovery"))
        });
        if clean {
            return Ok(());
        }
        self.run(
            "postgres",
            &[
                "--single",
                "-F",
                "-D",
                &data,
                "-c",
                "archive_mode=off",
                "template1",
            ],
            timeout,
        )
        .await
        .map(|_| ())
    }

    /// Copies the WAL segments from the fork on (and the timeline history
    /// files) to `kept/pg_wal`, reads them with `pg_waldump` into
    /// `kept/waldump.txt`, and answers the ids of the transactions
    /// committed after the fork.
    async fn keep_diverged(
        &self,
        data_dir: &Path,
        kept: &Path,
        lsn: u64,
        timeline: u32,
        timeout: Duration,
    ) -> Result<Vec<u32>> {
        let io = |what: String| move |source| PgError::Io { what, source };
        let wal = data_dir.join("pg_wal");
        let kept_wal = kept.join("pg_wal");
        std::fs::create_dir_all(&kept_wal).map_err(io(format!("create {}", kept_wal.display())))?;
        // Segment names: timeline, then the 64-bit segment number in two
        // 32-bit halves, all hex (16 MiB segments: 256 per half).
        let first = lsn / WAL_SEGMENT;
        let first_name = format!("{:08X}{:08X}", first >> 8, first & 0xFF);
        for entry in std::fs::read_dir(&wal).map_err(io(format!("read {}", wal.display())))? {
            let entry = entry.map_err(io(format!("read {}", wal.display())))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let segment = name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit());
            let keep = name.ends_with(".history") || (segment && name[8..] >= *first_name);
            if keep {
                std::fs::copy(entry.path(), kept_wal.join(&name))
                    .map_err(io(format!("copy {name}")))?;
            }
        }
        if let Some((uid, gid)) = self.run_as {
            for p in [kept, kept_wal.as_path()] {
                let _ = std::os::unix::fs::chown(p, Some(uid), Some(gid));
            }
            for e in std::fs::read_dir(&kept_wal).into_iter().flatten().flatten() {
                let _ = std::os::unix::fs::chown(e.path(), Some(uid), Some(gid));
            }
        }
        let start = format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF);
        let path = kept_wal.display().to_string();
        let tli = timeline.to_string();
        // pg_waldump stops with an error at the end of the WAL: what it read
        // up to there is the answer.
        let out = tokio::time::timeout(
            timeout,
            self.command("pg_waldump")
                .args(["--path", &path, "--timeline", &tli, "--start", &start])
                .output(),
        )
        .await
        .map_err(|_| timeout_err("pg_waldump", timeout))?
        .map_err(|e| PgError::Tool {
            tool: "pg_waldump".into(),
            reason: format!("could not run: {e}"),
        })?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let dump = kept.join("waldump.txt");
        std::fs::write(
            &dump,
            format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
        )
        .map_err(io(format!("write {}", dump.display())))?;
        Ok(committed_transactions(&text))
    }
}

/// WAL segment size (PostgreSQL's default, which the lab and `initdb` use).
const WAL_SEGMENT: u64 = 16 * 1024 * 1024;

/// `servers diverged at WAL location 0/3000148 on timeline 1`, from
/// `pg_rewind`'s output; `None` when no rewind is required.
fn parse_divergence(out: &str) -> Option<(u64, u32)> {
    let line = out
        .lines()
        .find(|l| l.contains("servers diverged at WAL location"))?;
    let rest = line.split("WAL location").nth(1)?.trim();
    let mut words = rest.split_whitespace();
    let lsn = parse_lsn(words.next()?).ok()?;
    let timeline = words.nth(2)?.trim_end_matches('.').parse().ok()?;
    Some((lsn, timeline))
}

/// The ids of transactions with a COMMIT record in `pg_waldump` output.
fn committed_transactions(dump: &str) -> Vec<u32> {
    let mut xids: Vec<u32> = dump
        .lines()
        .filter(|l| l.contains("rmgr: Transaction") && l.contains("desc: COMMIT"))
        .filter_map(|l| {
            let tx = l.split("tx:").nth(1)?;
            tx.split(',').next()?.trim().parse().ok()
        })
        .filter(|x| *x != 0)
        .collect();
    xids.sort_unstable();
    xids.dedup();
    xids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fork_point_is_read_from_pg_rewinds_output() {
        let out = "pg_rewind: connected to server\npg_rewind: servers diverged at WAL location 0/3000148 on timeline 1\npg_rewind: rewinding from last common checkpoint at 0/2000060 on timeline 1\n";
        assert_eq!(parse_divergence(out), Some((0x3000148, 1)));
        assert_eq!(parse_divergence("pg_rewind: no rewind required\n"), None);
    }

    #[test]
    fn committed_transactions_are_read_from_pg_waldump() {
        let dump = "rmgr: Heap        len (rec/tot):     59/    59, tx:        745, lsn: 0/03000180, prev 0/03000148, desc: INSERT off 3 flags 0x00, blkref #0: rel 1663/5/16385 blk 0\n\
rmgr: Transaction len (rec/tot):     34/    34, tx:        745, lsn: 0/030001C0, prev 0/03000180, desc: COMMIT 2026-12-01 20:00:00.000000 UTC\n\
rmgr: Transaction len (rec/tot):     34/    34, tx:        746, lsn: 0/03000200, prev 0/030001C0, desc: ABORT 2026-12-01 20:00:00.100000 UTC\n\
rmgr: Transaction len (rec/tot):     34/    34, tx:        747, lsn: 0/03000240, prev 0/03000200, desc: COMMIT 2026-12-01 20:00:00.200000 UTC\n";
        assert_eq!(committed_transactions(dump), vec![745, 747]);
    }

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

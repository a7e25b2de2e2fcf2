//! An old primary rejoins on its own: once another region holds the
//! writer, an agent whose node is a (fenced, stopped) primary makes it a
//! standby of the current writer with `pg_rewind`, or a fresh base backup
//! when that fails, keeping what the old primary had that the writer does
//! not (`tern_pg::PgTools::rejoin`), then starts it; a stopped standby is
//! simply started. Each step is audited. The node never takes writes in
//! between: it is stopped, then a standby.

use std::time::{Duration, Instant};

use tern_core::failover::{ClusterState, Step};
use tern_pg::Rejoin;

use super::DbAgent;

/// How long a rejoin (rewind or base backup) may take.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a standby gets to start.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause after a failed rejoin before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(5);

impl DbAgent {
    /// Makes this region's stopped node a running standby of the writer,
    /// when another region holds the writer and no plan involves this one.
    pub(super) async fn rejoin_if_needed(&mut self, c: &ClusterState) {
        if c.writer.region == self.region || c.writer.epoch == 0 || self.local.is_running() {
            return;
        }
        if c.plan.as_ref().is_some_and(|p| {
            p.active() && p.step < Step::Done && (p.to == self.region || p.from == self.region)
        }) {
            return;
        }
        if self
            .rejoin_failed_at
            .is_some_and(|t| t.elapsed() < RETRY_AFTER)
        {
            return;
        }
        let Some(writer) = self.db.node(&c.writer.region) else {
            return;
        };
        let source = super::remote_conninfo(writer.addr, &self.db.login);
        let name = self.db.name.clone();
        if self.local.is_standby() {
            match self.local.start(START_TIMEOUT).await {
                Ok(()) => {
                    tracing::info!(cluster = %name, "standby started");
                    self.audit("start", "standby started".into(), Vec::new())
                        .await;
                }
                Err(e) => {
                    tracing::warn!(cluster = %name, "start the standby: {e}");
                    self.rejoin_failed_at = Some(Instant::now());
                }
            }
            return;
        }
        tracing::info!(cluster = %name, writer = %c.writer.region, epoch = c.writer.epoch, "the old primary rejoins as a standby of the writer");
        let started = Instant::now();
        let report = match self
            .local
            .tools()
            .rejoin(self.local.data(), &source, REJOIN_TIMEOUT)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(cluster = %name, "rejoin failed: {e}; trying again in {} s", RETRY_AFTER.as_secs());
                self.audit(
                    "rejoin",
                    format!("rejoin as a standby of {} failed", c.writer.region),
                    vec![e.to_string()],
                )
                .await;
                self.rejoin_failed_at = Some(Instant::now());
                return;
            }
        };
        let conninfo = format!("{source} application_name={}", self.region);
        if let Err(e) = self.local.configure_standby(&conninfo) {
            tracing::warn!(cluster = %name, "configure the standby: {e}");
            self.rejoin_failed_at = Some(Instant::now());
            return;
        }
        let mut evidence = Vec::new();
        match &report.how {
            Rejoin::Rewind => evidence.push("pg_rewind".to_string()),
            Rejoin::BaseBackup {
                rewind_error,
                kept_at,
            } => evidence.push(format!(
                "pg_rewind failed ({rewind_error}); fresh base backup; the old data directory is kept at {}",
                kept_at.display()
            )),
        }
        match report.diverged_at {
            Some((lsn, tli)) => evidence.push(format!(
                "diverged from the writer at WAL {lsn} on timeline {tli}; {} transactions committed here after it{}",
                report.diverged_transactions.len(),
                report
                    .kept
                    .as_ref()
                    .map_or(String::new(), |k| format!(", kept with their WAL in {}", k.display()))
            )),
            None => evidence.push("no divergence: nothing to keep".into()),
        }
        if !report.diverged_transactions.is_empty() {
            let shown: Vec<String> = report
                .diverged_transactions
                .iter()
                .take(20)
                .map(|x| x.to_string())
                .collect();
            evidence.push(format!("diverged transaction ids: {}", shown.join(", ")));
        }
        match self.local.start(START_TIMEOUT).await {
            Ok(()) => {
                tracing::info!(cluster = %name, took_ms = started.elapsed().as_millis() as u64, "rejoined as a standby of {}", c.writer.region);
                self.rejoin_failed_at = None;
                self.audit(
                    "rejoin",
                    format!(
                        "old primary rejoined as a standby of {} in {} ms",
                        c.writer.region,
                        started.elapsed().as_millis()
                    ),
                    evidence,
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(cluster = %name, "start the rejoined standby: {e}");
                self.rejoin_failed_at = Some(Instant::now());
            }
        }
    }
}

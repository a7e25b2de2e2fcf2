//! The agent's database loop: for each cluster with a node in the agent's
//! region it reads the node (role, WAL position), reports it to every
//! controller, keeps the primary's lease ([`lease`]), fences the node when
//! the lease cannot be renewed in time ([`fence`]), carries out the steps
//! of failover plans that fall to its region ([`steps`]), makes an old
//! primary a standby of the current writer on its own ([`rejoin`]), and
//! points the region's writer proxy at the current writer with the
//! writer's lease as its deadline ([`target`]).
//!
//! Self-fencing (DESIGN.md invariant 1): the agent counts its lease from the
//! moment it *sent* the renewal, so its deadline is never later than the
//! controllers'. It fences a primary `fence_margin` before that deadline;
//! the controllers grant a new epoch only after their own expiry plus a
//! drift margin. So once a new epoch can exist, the old primary has stopped
//! taking writes.
//!
//! The fence is a stop of the server ([`tern_pg::LocalNode::stop`], which
//! escalates to SIGKILL): a stopped server refuses every write from every
//! client, however a session asks. It fails closed: whether the node may
//! take writes is read from its data directory (running, not a standby), so
//! a node that does not answer SQL is fenced all the same; and a watchdog
//! task of its own ([`fence::watchdog`]) stops the node at the deadline
//! even when this loop hangs in a call, panics or is gone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_core::config::Database;
use tern_core::control::Command;
use tern_core::failover::{ClusterState, Step};
use tern_pg::{LocalNode, Pg, PgStatus, Role};
use tern_proto::api::{ClustersView, ReplicationReport};
use tern_proto::ControllerClient;
pub use tern_proto::UNSAFE_NO_SELF_FENCE;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::writer_proxy::WriterProxy;

pub mod doors;
mod fence;
mod lease;
mod rejoin;
mod rpo;
mod steps;
mod target;

pub use fence::FenceDeadline;

/// Whether this process was asked not to fence ([`UNSAFE_NO_SELF_FENCE`]
/// set to `1`). Honoured only by builds with the `fault-injection`
/// feature (the test builds); a normal build refuses it, loudly.
fn fault_injection_asked() -> bool {
    let asked = std::env::var(UNSAFE_NO_SELF_FENCE).is_ok_and(|v| v == "1");
    if asked && !cfg!(feature = "fault-injection") {
        tracing::error!(
            "{UNSAFE_NO_SELF_FENCE}=1 ignored: this build of tern has no fault injection; the agent fences as always"
        );
        return false;
    }
    asked
}

/// Why an agent cannot look after its region's node.
#[derive(Debug, thiserror::Error)]
pub enum DbAgentError {
    #[error(
        "database {cluster}: the node in {region} has no data_dir; the agent fences a primary by stopping it, so it needs the node's data directory"
    )]
    NoDataDir { cluster: String, region: String },
    #[error(
        "database {cluster}: no PostgreSQL server binaries for the node in {region} (set bin_dir, TERN_PG_BIN, or put initdb on PATH)"
    )]
    NoBinaries { cluster: String, region: String },
    #[error("database {cluster} has no node in region {region}")]
    NoNode { cluster: String, region: String },
}

/// How the agent of `region` connects to its node of `db`.
pub fn conninfo(db: &Database, region: &str) -> Option<String> {
    let node = db.node(region)?;
    let socket = local_node(db, region).ok().and_then(|l| l.socket());
    Some(local_conninfo(node.addr, socket, &db.login))
}

/// A conninfo value in single quotes, backslash and quote escaped (libpq's
/// rule).
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// How the agent reaches its own node (tokio-postgres, which reads no
/// password file itself): over the server's Unix socket when it has one (as
/// libpq users expect of a local server: no network, and `peer`
/// authentication for the role the agent runs as), otherwise over TCP at
/// the node's `addr`; as `login.user`, with the password the password file
/// has for it (a Unix socket matches `localhost` there, as in libpq).
fn local_conninfo(
    addr: std::net::SocketAddr,
    socket: Option<(std::path::PathBuf, u16)>,
    login: &tern_core::config::DbLogin,
) -> String {
    let (host, shown, port) = match &socket {
        Some((dir, port)) => (dir.display().to_string(), "localhost".to_string(), *port),
        None => (addr.ip().to_string(), addr.ip().to_string(), addr.port()),
    };
    let mut out = format!(
        "host={} port={port} user={} dbname=postgres connect_timeout=2",
        quoted(&host),
        quoted(&login.user)
    );
    let password = tern_pg::passfile::password(
        login.passfile.as_deref(),
        tern_pg::passfile::Login {
            host: &shown,
            port,
            database: "postgres",
            user: &login.user,
        },
    );
    if let Some(p) = password {
        out.push_str(&format!(" password={}", quoted(&p)));
    }
    out
}

/// How libpq's tools (`pg_rewind`, `pg_basebackup`) and a standby's WAL
/// receiver reach another region's node at `addr`: as `login.user`, with
/// libpq's own password file handling (`passfile` when the file names
/// one) and TLS as `sslmode` and the certificates say.
pub fn remote_conninfo(addr: std::net::SocketAddr, login: &tern_core::config::DbLogin) -> String {
    let mut out = format!(
        "host={} port={} user={} dbname=postgres connect_timeout=5",
        addr.ip(),
        addr.port(),
        quoted(&login.user)
    );
    if let Some(p) = &login.passfile {
        out.push_str(&format!(" passfile={}", quoted(&p.display().to_string())));
    }
    if let Some(m) = &login.sslmode {
        out.push_str(&format!(" sslmode={m}"));
    }
    for (key, path) in [
        ("sslrootcert", &login.sslrootcert),
        ("sslcert", &login.sslcert),
        ("sslkey", &login.sslkey),
    ] {
        if let Some(p) = path {
            out.push_str(&format!(" {key}={}", quoted(&p.display().to_string())));
        }
    }
    out
}

/// Checks that the agent of `region` can look after its node of `db`.
pub fn check_node(db: &Database, region: &str) -> Result<(), DbAgentError> {
    local_node(db, region).map(|_| ())
}

fn local_node(db: &Database, region: &str) -> Result<LocalNode, DbAgentError> {
    let node = db.node(region).ok_or_else(|| DbAgentError::NoNode {
        cluster: db.name.clone(),
        region: region.to_string(),
    })?;
    let data = node
        .data_dir
        .clone()
        .ok_or_else(|| DbAgentError::NoDataDir {
            cluster: db.name.clone(),
            region: region.to_string(),
        })?;
    let bin = node
        .bin_dir
        .clone()
        .or_else(tern_pg::pg_bin_dir)
        .ok_or_else(|| DbAgentError::NoBinaries {
            cluster: db.name.clone(),
            region: region.to_string(),
        })?;
    Ok(
        LocalNode::new(&data, &bin, node.server_args.clone())
            .stop_with_parent(node.stop_with_agent),
    )
}

pub struct DbAgent {
    region: String,
    db: Database,
    controllers: ControllerClient,
    proxy: Option<WriterProxy>,
    /// The node on this host, which the fence stops.
    local: Arc<LocalNode>,
    self_fence: bool,
    tick: Duration,
    /// Fence this long before the lease deadline.
    fence_margin: Duration,
    pg: Option<Pg>,
    /// The local deadline of the lease held, and its epoch.
    lease: Option<(u64, Instant)>,
    last_renewal: Option<Instant>,
    /// Plan steps already carried out here: (plan, step, attempt).
    done: BTreeMap<(u64, Step), u32>,
    last_view: Option<(Instant, ClustersView)>,
    /// The watchdog's deadline: when to stop the node if no renewal moved it.
    deadline: watch::Sender<FenceDeadline>,
    /// A rejoin failed at this time: tried again after a pause.
    rejoin_failed_at: Option<Instant>,
    /// When a lease was last granted or renewed here.
    last_renewal_ok: Option<Instant>,
    /// The writer epoch this region's standby was last seen streaming from.
    streamed_epoch: Option<u64>,
    /// The primary's WAL positions as read, with when: the RPO time budget's
    /// clock (`rpo` module).
    wal_seen: std::collections::VecDeque<(Instant, u64)>,
    /// The most WAL a standby has confirmed flushed, as last read.
    confirmed_lsn: u64,
    /// The node was fenced for the RPO time budget at this instant: it starts
    /// again only after a renewal sent later.
    rpo_fenced_at: Option<Instant>,
    /// Fault injection: panic at this instant.
    #[cfg(feature = "fault-injection")]
    panic_at: Option<Instant>,
    /// Where each round's view of the node and lease is recorded.
    metrics: Option<crate::metrics::AgentMetrics>,
    /// When this loop started, for the startup grace (see
    /// [`DbAgent::in_startup_grace`]).
    started: Instant,
    /// The node's `pg_hba.conf` was checked on this loop's first connection.
    doors_checked: bool,
}

impl DbAgent {
    /// The database loop of `db`'s node in `region`. Fails when the agent
    /// could not fence that node (no data directory, no server binaries).
    pub fn new(
        region: &str,
        db: Database,
        controllers: ControllerClient,
        proxy: Option<WriterProxy>,
    ) -> Result<DbAgent, DbAgentError> {
        let local = local_node(&db, region)?;
        let lease = db.lease.duration;
        let (deadline, _) = watch::channel(FenceDeadline::Unarmed);
        Ok(DbAgent {
            region: region.to_string(),
            controllers,
            proxy,
            local: Arc::new(local),
            self_fence: !fault_injection_asked(),
            tick: tern_core::lease::agent_tick(lease),
            fence_margin: (lease / 5).max(Duration::from_millis(300)),
            pg: None,
            lease: None,
            last_renewal: None,
            done: BTreeMap::new(),
            last_view: None,
            deadline,
            rejoin_failed_at: None,
            started: Instant::now(),
            last_renewal_ok: None,
            streamed_epoch: None,
            wal_seen: std::collections::VecDeque::new(),
            confirmed_lsn: 0,
            rpo_fenced_at: None,
            metrics: None,
            #[cfg(feature = "fault-injection")]
            panic_at: None,
            doors_checked: false,
            db,
        })
    }

    /// An agent that never fences its node: only for showing that the
    /// tests and the lab's oracle catch what that lets through. Exists only
    /// in builds with the `fault-injection` feature, which tests turn on.
    #[cfg(feature = "fault-injection")]
    pub fn without_self_fence(mut self) -> DbAgent {
        self.self_fence = false;
        self
    }

    fn conninfo(&self) -> Option<String> {
        let node = self.db.node(&self.region)?;
        Some(local_conninfo(
            node.addr,
            self.local.socket(),
            &self.db.login,
        ))
    }

    /// The SQL deadline of one status read: short enough that the round
    /// still fits before the fence deadline.
    fn sql_timeout(&self) -> Duration {
        (self.db.lease.duration / 10).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }

    async fn status(&mut self) -> Option<PgStatus> {
        if !self.local.is_running() {
            self.pg = None;
            return None;
        }
        if self.pg.is_none() {
            let conninfo = self.conninfo()?;
            match Pg::connect(&conninfo, self.sql_timeout()).await {
                Ok(pg) => {
                    if !self.doors_checked {
                        // Once per agent process: the start-up check may
                        // have found the node down.
                        self.doors_checked = true;
                        doors::log(&self.db, &doors::judge(&self.db, &pg).await);
                    }
                    self.pg = Some(pg)
                }
                Err(e) => {
                    tracing::debug!(cluster = %self.db.name, "local node unreachable: {e}");
                    return None;
                }
            }
        }
        match self.pg.as_ref()?.status().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(cluster = %self.db.name, "local node status: {e}");
                self.pg = None;
                None
            }
        }
    }

    /// Records each round's view of the node and the lease in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::AgentMetrics) -> DbAgent {
        self.metrics = Some(metrics);
        self
    }

    /// Runs until `stop`; the fence watchdog runs beside it and outlives a
    /// panic of this loop (it then fences at once).
    pub async fn run(mut self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.self_fence {
            tokio::spawn(fence::watchdog(
                self.db.name.clone(),
                self.local.clone(),
                self.deadline.subscribe(),
                self.proxy.clone(),
                stop.clone(),
            ));
        } else {
            tracing::warn!(
                cluster = %self.db.name,
                "{UNSAFE_NO_SELF_FENCE}=1: this agent will not fence its node when its lease runs out"
            );
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            #[cfg(feature = "fault-injection")]
            if self.panic_at.is_some_and(|t| Instant::now() >= t) {
                panic!(
                    "fault injection: the database loop of {} panics",
                    self.db.name
                );
            }
            self.round().await;
        }
    }

    async fn round(&mut self) {
        let status = self.status().await;
        // The RPO clock and the watchdog are set from the local status
        // before the controllers are called: a call that hangs on a cut
        // network must not hold back the time-budget fence.
        self.note_wal(status.as_ref());
        self.arm_watchdog();
        // The controllers' part is bounded so that a hanging controller
        // (a partition) does not hold up the round past the fence deadline
        // of a valid lease (the watchdog fences on time in any case); without
        // a valid lease there is no deadline to keep, and a controller that
        // just got a quorum back may take a while to answer.
        let budget = match self.lease {
            Some((_, until)) if self.lease_valid() => until
                .saturating_duration_since(Instant::now() + self.fence_margin)
                .clamp(Duration::from_millis(300), Duration::from_secs(2)),
            _ => Duration::from_secs(2),
        };
        // Under an RPO time budget a primary's round stays short, so that a
        // write made just after this round's status read is noted by the
        // next round within one round (`rpo_loss_window`, rpo module).
        let budget = match self.db.rpo_time {
            Some(rpo) if self.local.may_accept_writes() => budget.min(
                tern_core::lease::rpo_call_bound(rpo, self.db.lease.duration),
            ),
            _ => budget,
        };
        let cluster = tokio::time::timeout(budget, self.sync(status.as_ref()))
            .await
            .ok()
            .flatten();
        self.arm_watchdog();
        self.guard(status.as_ref()).await;
        if let Some(c) = &cluster {
            self.rejoin_if_needed(c).await;
            self.plan_steps(c, status.as_ref()).await;
        }
        self.point_proxy();
        self.record(status.as_ref());
    }

    /// This round's view of the node and the lease, for `/metrics`.
    fn record(&self, status: Option<&PgStatus>) {
        let Some(m) = &self.metrics else { return };
        let lease = self
            .lease
            .filter(|_| self.lease_valid())
            .map(|(epoch, until)| {
                (
                    epoch,
                    until
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64(),
                )
            });
        m.db_round(&crate::metrics::DbRound {
            cluster: &self.db.name,
            role: status.map(|s| s.role.as_str()),
            // Down, or a primary that takes no writes; a standby is not fenced.
            fenced: status.is_none_or(|s| s.role == Role::Primary && s.read_only),
            lag_bytes: status.and_then(|s| s.lag_bytes),
            lag_seconds: status.and_then(|s| s.lag_seconds).map(|l| l.max(0.0)),
            lease,
        });
    }

    /// Reports the node, reads the cluster's committed state and keeps the lease.
    async fn sync(&mut self, status: Option<&PgStatus>) -> Option<ClusterState> {
        self.note_upstream(status);
        if let Some(s) = status {
            let report = ReplicationReport {
                cluster: self.db.name.clone(),
                region: self.region.clone(),
                role: s.role.as_str().to_string(),
                lsn: s.lsn,
                received_lsn: (s.role == Role::Standby).then(|| s.lsn + s.lag_bytes.unwrap_or(0)),
                lag_bytes: s.lag_bytes,
                lag_ms: s.lag_seconds.map(|l| (l.max(0.0) * 1000.0) as u64),
                read_only: s.read_only,
                streamed_epoch: (s.role == Role::Standby)
                    .then_some(self.streamed_epoch)
                    .flatten(),
            };
            self.controllers.report_replication(&report).await;
        }
        let sent = Instant::now();
        let view = match self.controllers.clusters().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!("controllers unreachable: {e}");
                return None;
            }
        };
        let cluster = view.clusters.get(&self.db.name).cloned()?;
        self.keep_lease(&view, &cluster).await;
        self.last_view = Some((sent, view));
        Some(cluster)
    }

    /// Makes the loop panic once `after` has passed: only for showing that
    /// a crashed loop fences its node and closes its proxy. Exists only in
    /// builds with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    pub fn panic_after(mut self, after: Duration) -> DbAgent {
        self.panic_at = Some(Instant::now() + after);
        self
    }

    /// A newly started loop that has not held a lease yet leaves its node
    /// as it found it for up to one lease period, unless the controllers
    /// say another region holds the writer: long enough to renew the lease
    /// of a running primary (an agent restart, controllers still electing),
    /// no longer than the node would have run without an agent anyway.
    /// After that, no lease means fence.
    fn in_startup_grace(&self) -> bool {
        self.last_renewal_ok.is_none()
            && self.started.elapsed() < self.db.lease.duration
            && self
                .cluster()
                .is_none_or(|c| c.writer.region == self.region)
    }

    /// Remembers the writer epoch the standby streams from, when its WAL
    /// receiver streams from the node of the writer the last view named. A
    /// promoted or restarted node forgets it.
    fn note_upstream(&mut self, status: Option<&PgStatus>) {
        let Some(s) = status else { return };
        if s.role != Role::Standby {
            self.streamed_epoch = None;
            return;
        }
        let writer = self
            .cluster()
            .map(|c| (c.writer.region.clone(), c.writer.epoch));
        let Some((region, epoch)) = writer else {
            return;
        };
        let Some(node) = self.db.node(&region) else {
            return;
        };
        let from_writer = s.upstream.as_ref().is_some_and(|(host, port)| {
            host.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip == node.addr.ip())
                && *port == node.addr.port()
        });
        if from_writer && epoch > 0 {
            self.streamed_epoch = Some(epoch);
        }
    }

    /// The cluster as the last view had it.
    fn cluster(&self) -> Option<&ClusterState> {
        self.last_view
            .as_ref()
            .and_then(|(_, v)| v.clusters.get(&self.db.name))
    }

    /// Records an action on the node in the controllers' audit log (best
    /// effort: the log line says what happened here, it decides nothing).
    async fn audit(&self, action: &str, summary: String, evidence: Vec<String>) {
        let command = Command::NodeEvent {
            cluster: self.db.name.clone(),
            region: self.region.clone(),
            action: action.to_string(),
            summary,
            evidence,
        };
        if let Err(e) = self.controllers.write(&command).await {
            tracing::debug!(cluster = %self.db.name, "node event not recorded: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use tern_core::config::DbLogin;

    #[test]
    fn the_local_node_is_reached_over_its_socket_with_the_password_files_password() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pgpass");
        std::fs::write(&pass, "localhost:5433:postgres:tern:s3cr'et\n").unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let login = DbLogin {
            user: "tern".into(),
            passfile: Some(pass),
            ..DbLogin::default()
        };
        let info = local_conninfo(
            "10.0.1.5:5432".parse().unwrap(),
            Some(("/run/postgresql".into(), 5433)),
            &login,
        );
        assert_eq!(
            info,
            "host='/run/postgresql' port=5433 user='tern' dbname=postgres connect_timeout=2 password='s3cr\\'et'"
        );
        // tokio-postgres reads it back as written.
        let parsed: tokio_postgres::Config = info.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"s3cr'et"[..]));
        // Over TCP the address is what the file must name.
        let info = local_conninfo("10.0.1.5:5432".parse().unwrap(), None, &login);
        assert!(!info.contains("password"), "{info}");
    }

    #[test]
    fn other_regions_nodes_are_reached_with_libpqs_password_file_and_tls() {
        let login = DbLogin {
            user: "replicator".into(),
            passfile: Some("/etc/tern/pgpass".into()),
            sslmode: Some("verify-full".into()),
            sslrootcert: Some("/etc/tern/pg-ca.pem".into()),
            sslcert: Some("/etc/tern/pg.pem".into()),
            sslkey: Some("/etc/tern/pg.key".into()),
        };
        assert_eq!(
            remote_conninfo("10.0.2.5:5432".parse().unwrap(), &login),
            "host=10.0.2.5 port=5432 user='replicator' dbname=postgres connect_timeout=5 \
             passfile='/etc/tern/pgpass' sslmode=verify-full sslrootcert='/etc/tern/pg-ca.pem' \
             sslcert='/etc/tern/pg.pem' sslkey='/etc/tern/pg.key'"
        );
    }
}

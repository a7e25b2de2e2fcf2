//! The writer proxy as the only door: whether the node's `pg_hba.conf`
//! admits the cluster's application roles (`app_roles`) from anywhere but
//! the writer proxies (`app_sources`). A client that reaches PostgreSQL past
//! the proxy is not stopped by the proxy's lease deadline when this agent
//! dies, so a dead agent could leave it writing to an old primary; with the
//! proxy the only door, every application write stops with the lease.

use std::time::Duration;

use tern_core::config::Database;
use tern_pg::Pg;

/// What the check of one node found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DoorCheck {
    /// No application roles are configured: nothing to check.
    NotAsked,
    /// Only the writer proxies' addresses admit the application roles.
    Closed,
    /// The node did not answer (or would not show its rules): why.
    NotChecked(String),
    /// Each rule that lets an application role past the proxy.
    Open(Vec<String>),
}

/// Reads the rules of the node of `db` in `region` through a new
/// connection (`conninfo`) with a deadline of `timeout` and judges them.
pub async fn check(db: &Database, conninfo: &str, timeout: Duration) -> DoorCheck {
    if db.app_roles.is_empty() {
        return DoorCheck::NotAsked;
    }
    match Pg::connect(conninfo, timeout).await {
        Ok(pg) => judge(db, &pg).await,
        Err(e) => DoorCheck::NotChecked(e.to_string()),
    }
}

/// Judges the rules of the node behind `pg`.
pub async fn judge(db: &Database, pg: &Pg) -> DoorCheck {
    if db.app_roles.is_empty() {
        return DoorCheck::NotAsked;
    }
    match pg.hba_rules().await {
        Ok(rules) => {
            let problems = tern_pg::side_doors(&rules, &db.app_roles, &db.app_sources);
            if problems.is_empty() {
                DoorCheck::Closed
            } else {
                DoorCheck::Open(problems)
            }
        }
        Err(e) => DoorCheck::NotChecked(e.to_string()),
    }
}

/// Logs what a check found, for the node of `db`.
pub fn log(db: &Database, found: &DoorCheck) {
    match found {
        DoorCheck::NotAsked => {}
        DoorCheck::Closed => tracing::info!(
            cluster = %db.name,
            roles = %db.app_roles.join(","),
            "pg_hba.conf admits the application roles only from the writer proxies"
        ),
        DoorCheck::NotChecked(why) => tracing::warn!(
            cluster = %db.name,
            "pg_hba.conf not checked yet ({why}); checked again once the node answers"
        ),
        DoorCheck::Open(problems) => {
            for p in problems {
                tracing::error!(cluster = %db.name, "pg_hba.conf: {p}");
            }
        }
    }
}

//! What the lab reads from the controllers: whether they are ready, and
//! their audit log (the control-plane facts of a report).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::clock::Clock;
use crate::report::ControlFacts;
use crate::topology::Deployment;
use crate::watch::{admin_client, get_status};

/// How many entries a controller's audit log holds (read directly).
pub async fn audit_len(deployment: &Deployment, addr: SocketAddr) -> Option<usize> {
    let client = deployment.controller_client(vec![addr], Duration::from_secs(1));
    client.events(100_000).await.ok().map(|v| v.events.len())
}

/// The audit log from any reachable controller, in lab time.
pub async fn control_facts(deployment: &Deployment, clock: &Clock) -> ControlFacts {
    let addrs: Vec<SocketAddr> = deployment
        .controller_addrs()
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    if addrs.is_empty() {
        return ControlFacts::default();
    }
    // Prefer a node in quorum: it has the committed history.
    for addr in &addrs {
        let client = deployment.controller_client(vec![*addr], Duration::from_secs(2));
        let Ok(view) = client.events(100_000).await else {
            continue;
        };
        if !view.in_quorum {
            continue;
        }
        let mut audit: Vec<(f64, String, String, Vec<String>)> = view
            .events
            .into_iter()
            .map(|e| {
                (
                    clock.lab_ms_of_unix(e.at.as_millis() as f64),
                    e.kind,
                    e.summary,
                    e.evidence,
                )
            })
            .collect();
        audit.reverse();
        return ControlFacts {
            audit,
            fetched: true,
            minority_decisions: None,
        };
    }
    ControlFacts::default()
}

/// Waits until the controllers have a leader with a quorum and every edge
/// holds a committed routing table.
pub async fn wait_for_control(
    deployment: &Deployment,
    admins: &[(String, SocketAddr)],
) -> Result<()> {
    let addrs: Vec<SocketAddr> = deployment
        .controller_addrs()
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let controllers = deployment.controller_client(addrs, Duration::from_secs(1));
    let client = admin_client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let quorum = controllers
            .status()
            .await
            .is_ok_and(|s| s.in_quorum && s.leader.is_some());
        let mut tables = true;
        for (_, admin) in admins {
            // A table of the named control plane: its first leader's entry
            // is in, so nothing of the start-up lands in the run.
            tables &= get_status(&client, *admin).await.is_some_and(|s| {
                s["routing"]["version"].as_u64().unwrap_or(0) >= 1
                    && s["routing"]["cluster_id"]
                        .as_str()
                        .is_some_and(|id| !id.is_empty())
            });
        }
        if quorum && tables {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the controllers elected no leader, or edges got no routing table, within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every serving region's writer proxy leads to a primary that
/// takes writes (a session through it is not in recovery), so that the
/// load starts on a database known to work. Judged from the outside: a
/// session through each proxy, as the sample service opens them.
pub async fn wait_for_writes(deployment: &Deployment) -> Result<()> {
    let Some(db) = &deployment.db else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &db.nodes {
        let conninfo = crate::postgres::conninfo_for(node.proxy);
        loop {
            let ready = match crate::postgres::connect(&conninfo, Duration::from_secs(2)).await {
                Ok(client) => client
                    .query_one("SELECT NOT pg_is_in_recovery()", &[])
                    .await
                    .is_ok_and(|row| row.get::<_, bool>(0)),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the writer proxy of {} led to no writable primary within 30 s",
                    node.region
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

//! The control plane's part of the file: `[controller]` (the Raft group's
//! members and timings), `[verdict]` (how agents probe and how the leader
//! turns their observations into verdicts), `[agent]` and `[database.NAME]`
//! (lease settings of a database cluster).
//!
//! Addresses in a file are as seen by the process that reads it: in the lab
//! each region's file names the other regions' controllers by the WAN
//! emulator's addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{RawAgent, RawController, RawDatabase, RawVerdict, S};
use super::{join, valid_name, Checker};
use crate::lease::LeaseSettings;
use crate::verdict::VerdictSettings;

/// The controllers: a Raft group of three or more nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerSettings {
    pub nodes: Vec<ControllerNode>,
    /// Leader heartbeat to followers.
    pub heartbeat: Duration,
    /// A follower that hears no leader for this long (randomised up to twice
    /// as long) starts an election.
    pub election_timeout: Duration,
    /// Deadline of one node-to-node or client request.
    pub rpc_timeout: Duration,
}

impl ControllerSettings {
    pub fn node(&self, id: u64) -> Option<&ControllerNode> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerNode {
    pub id: u64,
    pub region: String,
    pub addr: SocketAddr,
}

/// How agents probe and how observations become verdicts.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictConfig {
    /// Agents probe every region this often.
    pub interval: Duration,
    pub timeout: Duration,
    pub settings: VerdictSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    Async,
    Sync,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Database {
    pub name: String,
    pub replication: Replication,
    pub rpo_budget: u64,
    pub lease: LeaseSettings,
    /// One PostgreSQL node per region (none: the cluster only has leases).
    pub nodes: Vec<DbNode>,
    /// The region of the first primary.
    pub primary: Option<String>,
    /// Run in the new primary's region after a promotion (`sh -c`).
    pub scale_hook: Option<String>,
    pub scale_hook_timeout: Duration,
    /// Longest wait for one step of a failover plan before it is retried.
    pub step_timeout: Duration,
}

impl Database {
    pub fn node(&self, region: &str) -> Option<&DbNode> {
        self.nodes.iter().find(|n| n.region == region)
    }
}

/// A database node as seen by the reader of the file: `addr` is how this
/// process reaches it (in the lab, another region's node through the WAN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbNode {
    pub region: String,
    pub addr: SocketAddr,
    /// Where this region's writer proxy for the cluster listens.
    pub proxy: Option<SocketAddr>,
    /// The node's data directory, for the agent of its region, which fences
    /// the node by stopping it, starts it again and rejoins it as a
    /// standby. An agent refuses to keep the lease of a node without one.
    pub data_dir: Option<std::path::PathBuf>,
    /// The PostgreSQL server binaries (default: found on `PATH` or under
    /// `/usr/lib/postgresql/*/bin`).
    pub bin_dir: Option<std::path::PathBuf>,
    /// Arguments after `postgres -D DATA` when the agent starts the node
    /// (its identity, when that is not in its configuration file).
    pub server_args: Vec<String>,
    /// The node's server stops when its agent dies (`PR_SET_PDEATHSIG`): a
    /// dead agent cannot leave a writable primary behind, at the cost of a
    /// database restart on every agent restart. Default false.
    pub stop_with_agent: bool,
}

pub(super) fn validate_controller(
    c: &mut Checker<'_>,
    raw: &S<RawController>,
    regions: &BTreeSet<String>,
) -> Option<ControllerSettings> {
    let r = raw.get_ref();
    let heartbeat = c.duration(
        &r.heartbeat,
        "controller.heartbeat",
        Duration::from_millis(150),
    );
    let election_timeout = c.duration(
        &r.election_timeout,
        "controller.election_timeout",
        Duration::from_millis(1000),
    );
    if election_timeout < heartbeat * 3 {
        if let Some(e) = &r.election_timeout {
            c.err(
                e.span(),
                "controller.election_timeout",
                "expected at least three heartbeats, so that one lost heartbeat starts no election",
            );
        }
    }
    let rpc_timeout = c.duration(
        &r.rpc_timeout,
        "controller.rpc_timeout",
        Duration::from_millis(500),
    );
    if r.node.len() < 3 {
        c.err(
            raw.span(),
            "controller.node",
            format!(
                "expected at least three [[controller.node]] tables (a quorum that survives one loss), found {}",
                r.node.len()
            ),
        );
    }
    let mut ids = BTreeSet::new();
    let mut nodes = Vec::new();
    for (i, n) in r.node.iter().enumerate() {
        let n = n.get_ref();
        let key = format!("controller.node[{i}]");
        let id = *n.id.get_ref();
        if !(1..=u64::from(u32::MAX) as i64).contains(&id) {
            c.err(
                n.id.span(),
                format!("{key}.id"),
                format!("expected a node id from 1 to {}, found {id}", u32::MAX),
            );
            continue;
        }
        if !ids.insert(id) {
            c.err(
                n.id.span(),
                format!("{key}.id"),
                format!("duplicate controller node id {id}"),
            );
        }
        let region = n.region.get_ref().clone();
        if !regions.contains(&region) {
            c.err(
                n.region.span(),
                format!("{key}.region"),
                format!(
                    "unknown region \"{region}\"; expected one of: {}",
                    join(regions)
                ),
            );
        }
        if let Some(addr) = c.socket_addr(&n.addr, &format!("{key}.addr")) {
            nodes.push(ControllerNode {
                id: id as u64,
                region,
                addr,
            });
        }
    }
    Some(ControllerSettings {
        nodes,
        heartbeat,
        election_timeout,
        rpc_timeout,
    })
}

pub(super) fn validate_verdict(c: &mut Checker<'_>, raw: Option<&S<RawVerdict>>) -> VerdictConfig {
    let empty = RawVerdict {
        interval: None,
        timeout: None,
        fall: None,
        rise: None,
        hold_down: None,
        degraded_latency: None,
    };
    let v = raw.map_or(&empty, |r| r.get_ref());
    let interval = c.duration(&v.interval, "verdict.interval", Duration::from_secs(1));
    let timeout = c.duration(&v.timeout, "verdict.timeout", Duration::from_millis(500));
    if timeout > interval {
        if let Some(t) = &v.timeout {
            c.err(
                t.span(),
                "verdict.timeout",
                "expected a timeout no longer than the interval",
            );
        }
    }
    let fall = c.count(&v.fall, "verdict.fall", 1..101, 3);
    let rise = c.count(&v.rise, "verdict.rise", 1..101, 3);
    let hold_down = c.duration(&v.hold_down, "verdict.hold_down", Duration::from_secs(5));
    let degraded_latency = v
        .degraded_latency
        .as_ref()
        .map(|_| c.duration(&v.degraded_latency, "verdict.degraded_latency", timeout));
    VerdictConfig {
        interval,
        timeout,
        settings: VerdictSettings {
            fall,
            rise,
            hold_down,
            degraded_latency,
            // A vantage point that missed three rounds no longer votes.
            stale_after: interval * 3 + timeout,
        },
    }
}

pub(super) fn validate_agent(
    c: &mut Checker<'_>,
    raw: &S<RawAgent>,
    regions: &BTreeSet<String>,
) -> Option<String> {
    let region = raw.get_ref().region.get_ref().clone();
    if !regions.contains(&region) {
        c.err(
            raw.get_ref().region.span(),
            "agent.region",
            format!(
                "unknown region \"{region}\"; expected one of: {}",
                join(regions)
            ),
        );
        return None;
    }
    Some(region)
}

pub(super) fn validate_databases(
    c: &mut Checker<'_>,
    raw: &BTreeMap<S<String>, S<RawDatabase>>,
    regions: &BTreeSet<String>,
) -> Vec<Database> {
    let mut out = Vec::new();
    for (name, db) in raw {
        let key = format!("database.{}", name.get_ref());
        if !valid_name(name.get_ref()) {
            c.err(
                name.span(),
                &key,
                "expected a database name of letters, digits, '-' and '_'",
            );
        }
        let d = db.get_ref();
        let replication = match d.replication.as_ref().map(|r| r.get_ref().as_str()) {
            None | Some("async") => Replication::Async,
            Some("sync") => Replication::Sync,
            Some(other) => {
                let span = d.replication.as_ref().map_or(0..0, |r| r.span());
                c.err(
                    span,
                    format!("{key}.replication"),
                    format!("expected \"async\" or \"sync\", found \"{other}\""),
                );
                Replication::Async
            }
        };
        let rpo_budget = c
            .size(&d.rpo_budget, &format!("{key}.rpo_budget"))
            .unwrap_or(1024 * 1024);
        let lease = c.duration(&d.lease, &format!("{key}.lease"), Duration::from_secs(5));
        let drift_margin = c.duration(
            &d.drift_margin,
            &format!("{key}.drift_margin"),
            Duration::from_millis(500),
        );
        if drift_margin >= lease {
            if let Some(m) = &d.drift_margin {
                c.err(
                    m.span(),
                    format!("{key}.drift_margin"),
                    "expected a margin shorter than the lease",
                );
            }
        }
        let mut nodes: Vec<DbNode> = Vec::new();
        for (i, n) in d.node.iter().enumerate() {
            let n = n.get_ref();
            let nkey = format!("{key}.node[{i}]");
            let region = n.region.get_ref().clone();
            if !regions.contains(&region) {
                c.err(
                    n.region.span(),
                    format!("{nkey}.region"),
                    format!(
                        "unknown region \"{region}\"; expected one of: {}",
                        join(regions)
                    ),
                );
            } else if nodes.iter().any(|o| o.region == region) {
                c.err(
                    n.region.span(),
                    format!("{nkey}.region"),
                    format!("a second node in region \"{region}\"; expected one node per region"),
                );
            }
            let addr = c.socket_addr(&n.addr, &format!("{nkey}.addr"));
            let proxy = n
                .proxy
                .as_ref()
                .and_then(|p| c.socket_addr(p, &format!("{nkey}.proxy")));
            if let Some(addr) = addr {
                nodes.push(DbNode {
                    region,
                    addr,
                    proxy,
                    data_dir: n.data_dir.as_ref().map(|p| p.get_ref().into()),
                    bin_dir: n.bin_dir.as_ref().map(|p| p.get_ref().into()),
                    server_args: n.server_args.iter().map(|a| a.get_ref().clone()).collect(),
                    stop_with_agent: n.stop_with_agent.as_ref().is_some_and(|b| *b.get_ref()),
                });
            }
        }
        let primary = match &d.primary {
            Some(p) => {
                if !d.node.is_empty() && !nodes.iter().any(|n| &n.region == p.get_ref()) {
                    c.err(
                        p.span(),
                        format!("{key}.primary"),
                        format!(
                            "expected the region of one of the cluster's nodes, found \"{}\"",
                            p.get_ref()
                        ),
                    );
                }
                Some(p.get_ref().clone())
            }
            None => nodes.first().map(|n| n.region.clone()),
        };
        let scale_hook_timeout = c.duration(
            &d.scale_hook_timeout,
            &format!("{key}.scale_hook_timeout"),
            Duration::from_secs(30),
        );
        let step_timeout = c.duration(
            &d.step_timeout,
            &format!("{key}.step_timeout"),
            Duration::from_secs(10),
        );
        out.push(Database {
            name: name.get_ref().clone(),
            replication,
            rpo_budget,
            lease: LeaseSettings {
                duration: lease,
                drift_margin,
            },
            nodes,
            primary,
            scale_hook: d.scale_hook.as_ref().map(|h| h.get_ref().clone()),
            scale_hook_timeout,
            step_timeout,
        });
    }
    out
}

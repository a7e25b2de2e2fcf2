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
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawAgent, RawControlTls, RawController, RawDatabase, RawVerdict, S};
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
    /// The file accepts a layout in which losing one region loses the
    /// quorum (`allow_unsafe_placement = true`): then this says which
    /// region, for `tern status` to warn about.
    pub placement_warning: Option<String>,
    /// The file runs the control plane in plaintext on addresses off
    /// loopback (`insecure_plaintext = true`): then this names them, for
    /// `tern status` to warn about.
    pub plaintext_warning: Option<String>,
    /// Mutual TLS on every control path (`[controller.tls]`); `None`: plain
    /// HTTP, accepted only on loopback or with `insecure_plaintext`.
    pub tls: Option<ControlTls>,
}

/// `[controller.tls]`: the certificate authority every control-plane peer
/// trusts, and the directory where each process finds its own certificate
/// and key as `ROLE-NAME.pem` and `ROLE-NAME.key` (`controller-1`,
/// `agent-us-east`, `edge-us-east`, `operator-NAME`, `viewer-NAME`; what
/// `tern certs init` writes). Relative paths are relative to the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlTls {
    /// PEM certificates of the CA (more than one during a CA change).
    pub ca: PathBuf,
    pub dir: PathBuf,
    /// The operators `tern certs init` makes certificates for (default:
    /// one named `admin`).
    pub operators: Vec<String>,
    /// Read-only users `tern certs init` makes certificates for.
    pub viewers: Vec<String>,
    /// How often the certificate files are checked for changes (default
    /// 2 s); SIGHUP reloads at once.
    pub reload_check: Duration,
}

impl ControlTls {
    /// This process's certificate and key in [`ControlTls::dir`].
    pub fn files(&self, who: &crate::auth::Principal) -> super::tls::CertFiles {
        let stem = who.file_stem();
        super::tls::CertFiles {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        }
    }
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
    /// When a region is down, from its critical services' verdicts
    /// (`region_down`: `"all"`, the default, `"any"`, or a number).
    pub region_down: RegionDown,
}

/// How many of a region's critical services must be down for the region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RegionDown {
    /// Every critical service of the region.
    #[default]
    AllCritical,
    /// Any one critical service.
    AnyCritical,
    /// At least this many critical services.
    AtLeast(u32),
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
    /// The size budget of the RPO, in WAL bytes: automatic promotion is
    /// refused when the last known lag is larger. `u64::MAX` when the file
    /// gives only a time budget.
    pub rpo_budget: u64,
    /// The time budget of the RPO: a primary whose standbys confirmed none
    /// of its WAL written this long ago, and whose own lease renewal is this
    /// old too, stops taking writes (Aurora's `rds.global_db_rpo` holds its
    /// writer back the same way). `None`: no time budget.
    pub rpo_time: Option<Duration>,
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
    /// The application's roles, which must reach the writer only through a
    /// writer proxy (whose target follows the lease). When not empty, each
    /// agent checks its node's `pg_hba.conf` at start and refuses to run
    /// while a rule admits one of them from elsewhere.
    pub app_roles: Vec<String>,
    /// The addresses the writer proxies connect to PostgreSQL from
    /// (default: each node's `proxy` address, as one host each).
    pub app_sources: Vec<ipnet::IpNet>,
    /// How the agent logs in to PostgreSQL.
    pub login: DbLogin,
}

/// How an agent logs in to PostgreSQL, in libpq's terms (PostgreSQL
/// documentation, "Connection Strings" and "The Password File"): its own
/// node over the Unix socket when the server has one (peer
/// authentication), otherwise, and for other regions' nodes (`pg_rewind`,
/// a base backup, a standby's `primary_conninfo`), over TCP with a
/// password from the password file and TLS as `sslmode` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbLogin {
    /// The role (default `postgres`).
    pub user: String,
    /// The password file (libpq's `.pgpass` format). Default: libpq's own
    /// choice (`PGPASSFILE`, else `~/.pgpass`).
    pub passfile: Option<PathBuf>,
    /// libpq's `sslmode` for TCP connections (`disable`, `allow`, `prefer`,
    /// `require`, `verify-ca`, `verify-full`); `None`: libpq's default.
    pub sslmode: Option<String>,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
}

impl Default for DbLogin {
    fn default() -> DbLogin {
        DbLogin {
            user: "postgres".into(),
            passfile: None,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
        }
    }
}

/// The `sslmode` values libpq knows.
pub const SSLMODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

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
    // The first address off loopback, with its span, and all of them.
    let mut exposed: (Option<(std::ops::Range<usize>, String)>, Vec<String>) = (None, Vec::new());
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
            if !addr.ip().is_loopback() {
                let said = format!("{addr} ({region})");
                exposed
                    .0
                    .get_or_insert((n.addr.span(), format!("{key}.addr")));
                exposed.1.push(said);
            }
            nodes.push(ControllerNode {
                id: id as u64,
                region,
                addr,
            });
        }
    }
    let placement_warning = unsafe_placement(&nodes);
    let allow_unsafe = r
        .allow_unsafe_placement
        .as_ref()
        .is_some_and(|b| *b.get_ref());
    if let Some(problem) = &placement_warning {
        if !allow_unsafe {
            c.err(
                raw.span(),
                "controller.node",
                format!(
                    "{problem}; expected controllers placed so that the loss of any one region leaves a majority (one per serving region and one at a witness site), or allow_unsafe_placement = true"
                ),
            );
        }
    }
    let insecure = r.insecure_plaintext.as_ref().is_some_and(|b| *b.get_ref());
    let tls = r.tls.as_ref().and_then(|t| control_tls(c, t));
    let mut plaintext_warning = None;
    // With mutual TLS, addresses off loopback are what a deployment needs.
    if r.tls.is_some() {
        exposed.0 = None;
    }
    if let (Some((span, key)), addrs) = exposed {
        let addrs = addrs.join(", ");
        if insecure {
            plaintext_warning = Some(format!(
                "the control plane runs in plaintext (insecure_plaintext) on {addrs}"
            ));
        } else {
            c.err(
                span,
                key,
                format!(
                    "controllers listening off loopback ({addrs}) would carry the control plane in plaintext: anyone who reaches them can change routing and leases; add a [controller.tls] table (mutual TLS; `tern certs init` makes the certificates), or keep them on a private network and set insecure_plaintext = true in [controller] to say so"
                ),
            );
        }
    }
    Some(ControllerSettings {
        nodes,
        heartbeat,
        election_timeout,
        rpc_timeout,
        placement_warning: placement_warning.filter(|_| allow_unsafe),
        plaintext_warning,
        tls,
    })
}

fn control_tls(c: &mut Checker<'_>, t: &S<RawControlTls>) -> Option<ControlTls> {
    use super::tls::{nonempty, resolve};
    let r = t.get_ref();
    let ok = nonempty(c, &r.ca, "controller.tls.ca") & nonempty(c, &r.dir, "controller.tls.dir");
    let mut names = |list: &[S<String>], key: &str| -> Vec<String> {
        let mut out = Vec::new();
        for (i, n) in list.iter().enumerate() {
            let name = n.get_ref().trim();
            if valid_name(name) {
                out.push(name.to_string());
            } else {
                c.err(
                    n.span(),
                    format!("{key}[{i}]"),
                    format!("expected a name of letters, digits and '-', found \"{name}\""),
                );
            }
        }
        out
    };
    let mut operators = names(&r.operators, "controller.tls.operators");
    let viewers = names(&r.viewers, "controller.tls.viewers");
    if r.operators.is_empty() {
        operators.push("admin".into());
    }
    let reload_check = c.duration(
        &r.reload_check,
        "controller.tls.reload_check",
        Duration::from_secs(2),
    );
    ok.then(|| ControlTls {
        ca: resolve(c, &r.ca),
        dir: resolve(c, &r.dir),
        operators,
        viewers,
        reload_check,
    })
}

/// Why losing one region would lose the controllers' quorum, if it would:
/// the first region (in name order) holding so many voters that the rest
/// are no majority of all of them.
fn unsafe_placement(nodes: &[ControllerNode]) -> Option<String> {
    let n = nodes.len();
    if n < 3 {
        return None; // reported on its own
    }
    let majority = n / 2 + 1;
    let mut per_region: std::collections::BTreeMap<&str, usize> = Default::default();
    for node in nodes {
        *per_region.entry(node.region.as_str()).or_default() += 1;
    }
    per_region.into_iter().find_map(|(region, k)| {
        (n - k < majority).then(|| {
            format!(
                "losing region {region} ({k} of {n} controllers) would leave {} of the {majority} a quorum needs",
                n - k
            )
        })
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
        region_down: None,
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
    let region_down = match &v.region_down {
        None => RegionDown::AllCritical,
        Some(r) => match r.get_ref() {
            super::raw::RawRegionDown::Word(w) if w == "all" => RegionDown::AllCritical,
            super::raw::RawRegionDown::Word(w) if w == "any" => RegionDown::AnyCritical,
            super::raw::RawRegionDown::Count(n) if (1..=100).contains(n) => {
                RegionDown::AtLeast(*n as u32)
            }
            other => {
                c.err(
                    r.span(),
                    "verdict.region_down",
                    format!(
                        "expected \"all\" (every critical service down), \"any\" (one), or a number of critical services from 1 to 100, found {}",
                        match other {
                            super::raw::RawRegionDown::Word(w) => format!("\"{w}\""),
                            super::raw::RawRegionDown::Count(n) => n.to_string(),
                        }
                    ),
                );
                RegionDown::AllCritical
            }
        },
    };
    VerdictConfig {
        interval,
        timeout,
        region_down,
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

/// The agent's region, and the address of its admin endpoint (`/metrics`)
/// when it has one.
pub(super) fn validate_agent(
    c: &mut Checker<'_>,
    raw: &S<RawAgent>,
    regions: &BTreeSet<String>,
) -> Option<(String, Option<SocketAddr>)> {
    let admin = raw
        .get_ref()
        .admin
        .as_ref()
        .and_then(|a| c.socket_addr(a, "agent.admin"));
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
    Some((region, admin))
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
        let (rpo_budget, rpo_time) = rpo_budget(c, &d.rpo_budget, &format!("{key}.rpo_budget"));
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
        let app_roles: Vec<String> = d.app_roles.iter().map(|r| r.get_ref().clone()).collect();
        let mut app_sources = Vec::new();
        for (i, s) in d.app_sources.iter().enumerate() {
            let text = s.get_ref();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => app_sources.push(net),
                Err(_) => c.err(
                    s.span(),
                    format!("{key}.app_sources[{i}]"),
                    format!("expected an address or a network like 10.0.1.5 or 10.0.1.0/24, found \"{text}\""),
                ),
            }
        }
        if d.app_sources.is_empty() {
            for n in &nodes {
                match n.proxy {
                    Some(p) if !p.ip().is_unspecified() => {
                        app_sources.push(ipnet::IpNet::from(p.ip()))
                    }
                    Some(_) if !app_roles.is_empty() => {
                        let span = d.app_roles.first().map_or(0..0, |r| r.span());
                        c.err(
                            span,
                            format!("{key}.app_sources"),
                            format!(
                                "the writer proxy in {} listens on every address, so where it connects from is unknown; give app_sources",
                                n.region
                            ),
                        );
                    }
                    _ => {}
                }
            }
        }
        out.push(Database {
            name: name.get_ref().clone(),
            replication,
            rpo_budget,
            rpo_time,
            lease: LeaseSettings {
                duration: lease,
                drift_margin,
            },
            nodes,
            primary,
            scale_hook: d.scale_hook.as_ref().map(|h| h.get_ref().clone()),
            scale_hook_timeout,
            step_timeout,
            app_roles,
            app_sources,
            login: db_login(c, d, &key),
        });
    }
    out
}

/// `rpo_budget`: a size (`"1MiB"`), a duration (`"1s"`), or both in an
/// array; default 1 MiB and no time budget. With only a duration there is no
/// size budget.
fn rpo_budget(
    c: &mut Checker<'_>,
    raw: &Option<S<super::raw::RawBudget>>,
    key: &str,
) -> (u64, Option<Duration>) {
    use super::raw::RawBudget;
    let Some(raw) = raw else {
        return (1024 * 1024, None);
    };
    let values: Vec<&String> = match raw.get_ref() {
        RawBudget::One(v) => vec![v],
        RawBudget::Many(vs) => vs.iter().collect(),
    };
    let (mut size, mut time) = (None, None);
    for v in values {
        if let Ok(n) = crate::units::parse_size(v) {
            if n == 0 || size.is_some() {
                c.err(
                    raw.span(),
                    key,
                    "expected one size greater than zero, like 1MiB",
                );
            }
            size = Some(n);
        } else if let Ok(d) = crate::units::parse_duration(v) {
            if d.is_zero() || time.is_some() {
                c.err(
                    raw.span(),
                    key,
                    "expected one duration greater than zero, like 1s",
                );
            }
            time = Some(d);
        } else {
            c.err(
                raw.span(),
                key,
                format!("expected a size like 1MiB or a duration like 1s (or both, [\"1s\", \"1MiB\"]), found \"{v}\""),
            );
        }
    }
    (
        size.unwrap_or(if time.is_some() {
            u64::MAX
        } else {
            1024 * 1024
        }),
        time,
    )
}

fn db_login(c: &mut Checker<'_>, d: &RawDatabase, key: &str) -> DbLogin {
    use super::tls::resolve;
    let mut login = DbLogin::default();
    if let Some(u) = &d.user {
        let user = u.get_ref().trim();
        if user.is_empty() || user.contains(|ch: char| ch.is_whitespace() || ch == '\'') {
            c.err(
                u.span(),
                format!("{key}.user"),
                format!(
                    "expected a PostgreSQL role name without spaces or quotes, found \"{user}\""
                ),
            );
        } else {
            login.user = user.to_string();
        }
    }
    if let Some(m) = &d.sslmode {
        let mode = m.get_ref().trim();
        if SSLMODES.contains(&mode) {
            login.sslmode = Some(mode.to_string());
        } else {
            c.err(
                m.span(),
                format!("{key}.sslmode"),
                format!("expected one of {}, found \"{mode}\"", SSLMODES.join(", ")),
            );
        }
    }
    let path = |c: &mut Checker<'_>, v: &Option<S<String>>, k: &str| -> Option<PathBuf> {
        let v = v.as_ref()?;
        if v.get_ref().trim().is_empty() || v.get_ref().contains('\'') {
            c.err(
                v.span(),
                format!("{key}.{k}"),
                "expected a file path without quotes",
            );
            return None;
        }
        Some(resolve(c, v))
    };
    login.passfile = path(c, &d.passfile, "passfile");
    login.sslrootcert = path(c, &d.sslrootcert, "sslrootcert");
    login.sslcert = path(c, &d.sslcert, "sslcert");
    login.sslkey = path(c, &d.sslkey, "sslkey");
    if login.sslcert.is_some() != login.sslkey.is_some() {
        let span = d
            .sslcert
            .as_ref()
            .or(d.sslkey.as_ref())
            .map_or(0..0, |v| v.span());
        c.err(
            span,
            key.to_string(),
            "expected both sslcert and sslkey, or neither",
        );
    }
    login
}

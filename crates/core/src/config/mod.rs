//! The configuration: one TOML file, loaded in two stages.
//!
//! Stage one ([`raw`]) deserializes the file's shape with source spans and
//! rejects unknown keys; it reads past a value of the wrong type, so that
//! every such problem is found in one pass. Stage two ([`validate`]) checks
//! meaning (names, references, ranges, URLs, durations) and resolves
//! defaults into the [`Config`] model that the roles use. Both stages
//! report problems as [`ConfigError`]s naming the file, line, key and what
//! was expected, in the file's words.

mod control;
pub mod dns;
mod drill;
mod error;
mod raw;
pub mod tls;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

pub use control::{
    ControlTls, ControllerNode, ControllerSettings, Database, DbLogin, RegionDown, Replication,
    VerdictConfig,
};
use error::Source;
pub use error::{ConfigError, ConfigErrors};
use raw::{RawBackend, RawConfig, RawEdge, RawHealth, RawOutlier, RawService, S};

use crate::units::{format_duration, parse_duration, parse_size};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub regions: Vec<Region>,
    /// Settings of the edge role; absent in files that configure no edge.
    pub edge: Option<EdgeSettings>,
    pub services: Vec<Service>,
    /// The edge's authoritative DNS server; absent when the file has no `[dns]` table.
    pub dns: Option<dns::DnsConfig>,
    /// The controller group; absent in files for an edge without controllers.
    pub controller: Option<ControllerSettings>,
    /// Agent probing and verdict thresholds (defaults when absent).
    pub verdict: VerdictConfig,
    /// The region of the agent role, when this file configures one.
    pub agent: Option<String>,
    /// Where the agent serves `/metrics` (`agent.admin`), if anywhere.
    pub agent_admin: Option<SocketAddr>,
    pub databases: Vec<Database>,
    /// `[drill]`: drill defaults, allowed windows, the practice age.
    pub drill: crate::drill::DrillSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: String,
    pub serves_traffic: bool,
    /// Requests per second the region's backends can serve, all services
    /// together (`capacity_rps`): set on every serving region or none.
    /// With capacities, a drill starts only when the other regions can
    /// absorb the evacuated region's load as the edges measured it.
    pub capacity_rps: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeSettings {
    /// The region this edge runs in; the latency policy prefers it on ties.
    pub region: String,
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// Deadline for a whole request, retries included.
    pub request_timeout: Duration,
    /// Deadline for one attempt against one backend, until response headers.
    pub try_timeout: Duration,
    /// Retries allowed as a share of requests over a sliding window.
    pub retry_budget: f64,
    /// Retries always allowed per second, so that light traffic can still retry.
    pub retry_min_per_second: u32,
    /// Request bodies up to this size are buffered so that they can be retried.
    pub retry_body_limit: u64,
    /// Request bodies larger than this are refused with 413.
    pub max_body: Option<u64>,
    /// Largest request head accepted; larger gets 431.
    pub max_header: u64,
    /// Most header lines in a client's request head (default 100, as
    /// Envoy's `max_headers_count`; HAProxy's `tune.http.maxhdr` is 101).
    /// A request with more gets 431. Above 100 each idle client connection
    /// holds more memory (measured: about 9 KiB more at 200, see
    /// `bench/edge-vs-haproxy`), so the default stays at 100.
    pub max_request_headers: usize,
    /// Most header lines in a backend's response head (default 200). A
    /// response with more gets the client a 502 but does not count against
    /// the backend, which answered.
    pub max_response_headers: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// On shutdown, how long `/ready` answers 503 while the listeners still
    /// accept, so that a load balancer in front stops sending before they
    /// close (default 2 s; Kubernetes' preStop sleep and Envoy's drain time
    /// do the same). 0 closes them at once.
    pub unready_delay: Duration,
    /// The HTTPS listener and its certificates (`[edge.tls]`).
    pub tls: Option<tls::EdgeTls>,
    /// Threads serving client traffic; `None` means one per CPU.
    pub workers: Option<u32>,
    /// A client connection that sends no complete request head for this long
    /// is closed; this also bounds idle keep-alive connections.
    pub client_timeout: Duration,
    /// Where the edge keeps the last committed routing table, so that it
    /// serves with it after a restart without controllers. `None`: next to
    /// the configuration file (the binary decides).
    pub routing_state: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The first healthy backend in file order.
    Failover,
    /// A healthy backend chosen by weight.
    Weighted,
    /// The healthy backend with the lowest measured round trip.
    Latency,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Failover => "failover",
            Policy::Weighted => "weighted",
            Policy::Latency => "latency",
        }
    }
}

/// What a service does when no backend is healthy (DESIGN.md invariant 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllUnhealthy {
    /// Try every backend anyway: some answer beats none.
    FailOpen,
    /// Answer 503 with a reason.
    FailClosed,
}

impl AllUnhealthy {
    pub fn as_str(self) -> &'static str {
        match self {
            AllUnhealthy::FailOpen => "fail-open",
            AllUnhealthy::FailClosed => "fail-closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub policy: Policy,
    /// Host names this service answers for (lower case, no port); empty means any.
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub when_all_unhealthy: AllUnhealthy,
    pub outlier: OutlierSettings,
    /// Whether the service counts for its regions' verdicts (`critical`,
    /// default true; see `[verdict] region_down`).
    pub critical: bool,
    /// The certificate served for this service's hosts over HTTPS.
    pub tls: Option<tls::CertFiles>,
    /// Plain-HTTP requests get `308 Permanent Redirect` to the same URL on
    /// the edge's HTTPS listener (`https_redirect`, default false).
    pub https_redirect: bool,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierSettings {
    /// Consecutive failures (connect error, reset, timeout, 5xx) that eject a backend.
    pub consecutive_failures: u32,
    /// First ejection time; the n-th ejection lasts n times this, up to `max_ejection`.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Largest share of a service's backends ejected at once (at least one may always be).
    pub max_ejected_share: f64,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
            max_ejected_share: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub region: String,
    pub url: BackendUrl,
    pub weight: u32,
    pub health: HealthCheck,
    /// TLS settings of an `https://` backend (trust, client certificate,
    /// server name); `None` for plain HTTP.
    pub tls: Option<tls::BackendTls>,
}

/// An `http://` or `https://host[:port][/base]` backend address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// `https://`: traffic and probes go over TLS.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix prepended to proxied paths; empty or starting with `/`, no trailing `/`.
    pub base_path: String,
}

impl BackendUrl {
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(
            f,
            "{scheme}://{}:{}{}",
            self.host, self.port, self.base_path
        )
    }
}

/// What a health probe sends and expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// `GET path` answered with a status in `expect_status` (and a body
    /// holding `body_contains`, when set).
    Http {
        path: String,
        expect_status: StatusRange,
        body_contains: Option<String>,
        /// The `Host` the probe sends. `None` sends the target's
        /// `ip:port`; a backend's check defaults to its service's first
        /// host name and a DNS target's to the record's name, so that a
        /// backend serving only its own names is not judged down (HAProxy
        /// needs `http-check send hdr Host` for the same).
        host: Option<String>,
        /// Extra request headers (names lower-case, one value each).
        headers: Vec<(String, String)>,
    },
    /// A TCP connect.
    Tcp,
}

impl ProbeKind {
    /// Gives an HTTP probe without a configured `Host` this one.
    pub fn default_host(&mut self, host: &str) {
        if let ProbeKind::Http { host: h @ None, .. } = self {
            *h = Some(host.to_string());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
}

impl Config {
    /// Parses and validates `text`, naming `file` in errors.
    ///
    /// Every problem is reported in one pass: each value of the wrong type,
    /// unknown key and missing key (stage one reads past them, see
    /// [`raw`]), and stage two's findings beside them, except those that
    /// only follow from a value stage one had to set aside. A TOML syntax
    /// error is reported alone.
    pub fn from_toml(file: &str, text: &str) -> Result<Config, ConfigErrors> {
        let source = Source { file, text };
        let raw::Read {
            config,
            problems,
            set_aside,
        } = raw::read(&source).map_err(|mut problems| {
            in_file_order(&mut problems);
            ConfigErrors(problems)
        })?;
        let checked = validate(&source, config);
        if problems.is_empty() {
            return checked;
        }
        let mut errors = problems;
        if let Err(ConfigErrors(found)) = checked {
            errors.extend(
                found
                    .into_iter()
                    .filter(|e| !set_aside.iter().any(|s| s.explains(e))),
            );
        }
        in_file_order(&mut errors);
        Err(ConfigErrors(errors))
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// A short human summary, as `tern check-config` prints it.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let regions: Vec<String> = self
            .regions
            .iter()
            .map(|r| {
                if r.serves_traffic {
                    r.name.clone()
                } else {
                    format!("{} (no traffic)", r.name)
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "regions ({}): {}",
            self.regions.len(),
            regions.join(", ")
        );
        if let Some(edge) = &self.edge {
            let admin = edge.admin.map_or("none".to_string(), |a| a.to_string());
            let _ = writeln!(
                out,
                "edge: region {}, listen {}, admin {}, request timeout {}, try timeout {}, retry budget {:.0}%",
                edge.region,
                edge.listen,
                admin,
                format_duration(edge.request_timeout),
                format_duration(edge.try_timeout),
                edge.retry_budget * 100.0
            );
        }
        if let Some(ctl) = &self.controller {
            let nodes: Vec<String> = ctl
                .nodes
                .iter()
                .map(|n| format!("{} {} {}", n.id, n.region, n.addr))
                .collect();
            let _ = writeln!(
                out,
                "controllers ({}): {}; heartbeat {}, election timeout {}",
                ctl.nodes.len(),
                nodes.join(", "),
                format_duration(ctl.heartbeat),
                format_duration(ctl.election_timeout)
            );
        }
        let v = &self.verdict;
        if self.controller.is_some() || self.agent.is_some() {
            let _ = writeln!(
            out,
            "verdicts: probe every {} (timeout {}), down after {} failures from a majority, up after {} successes and {} hold-down",
            format_duration(v.interval),
            format_duration(v.timeout),
            v.settings.fall,
            v.settings.rise,
            format_duration(v.settings.hold_down)
        );
        }
        if let Some(region) = &self.agent {
            let admin = self
                .agent_admin
                .map_or(String::new(), |a| format!(", admin {a}"));
            let _ = writeln!(out, "agent: region {region}{admin}");
        }
        for d in &self.databases {
            let _ = writeln!(
                out,
                "database {}: {} replication, rpo budget {}, lease {} (drift margin {})",
                d.name,
                match d.replication {
                    Replication::Async => "async",
                    Replication::Sync => "sync",
                },
                match (d.rpo_budget, d.rpo_time) {
                    (u64::MAX, Some(t)) => format_duration(t),
                    (b, Some(t)) => format!("{} and {b} bytes", format_duration(t)),
                    (b, None) => format!("{b} bytes"),
                },
                format_duration(d.lease.duration),
                format_duration(d.lease.drift_margin)
            );
        }
        let _ = writeln!(out, "services ({}):", self.services.len());
        for s in &self.services {
            let hosts = if s.hosts.is_empty() {
                "any host".to_string()
            } else {
                s.hosts.join(", ")
            };
            let _ = writeln!(
                out,
                "  {}: policy {}, {}, path {}, when all unhealthy {}",
                s.name,
                s.policy.as_str(),
                hosts,
                s.path_prefix,
                s.when_all_unhealthy.as_str()
            );
            for b in &s.backends {
                let probe = match &b.health.probe {
                    ProbeKind::Http { path, .. } => format!("http {path}"),
                    ProbeKind::Tcp => "tcp".to_string(),
                };
                let _ = writeln!(
                    out,
                    "    {} {} weight {} health {} every {} (timeout {}, fall {}, rise {})",
                    b.region,
                    b.url,
                    b.weight,
                    probe,
                    format_duration(b.health.interval),
                    format_duration(b.health.timeout),
                    b.health.fall,
                    b.health.rise
                );
            }
        }
        if let Some(dns) = &self.dns {
            dns.summarize(&mut out);
        }
        out
    }
}

/// Sorts problems by their place in the file; those of the whole file
/// (line 0) come last. The sort is stable: at one place, stage one's
/// problem comes before stage two's.
fn in_file_order(errors: &mut [ConfigError]) {
    errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
}

/// Collects errors during validation so that all of them are reported.
struct Checker<'a> {
    source: &'a Source<'a>,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn err(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(self.source.error(span, key, message));
    }

    fn duration(&mut self, value: &Option<S<String>>, key: &str, default: Duration) -> Duration {
        match value {
            None => default,
            Some(v) => match parse_duration(v.get_ref()) {
                Ok(d) if d.is_zero() => {
                    self.err(v.span(), key, "expected a duration greater than zero");
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.err(v.span(), key, e);
                    default
                }
            },
        }
    }

    fn size(&mut self, value: &Option<S<String>>, key: &str) -> Option<u64> {
        let v = value.as_ref()?;
        match parse_size(v.get_ref()) {
            Ok(0) => {
                self.err(v.span(), key, "expected a size greater than zero");
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                self.err(v.span(), key, e);
                None
            }
        }
    }

    fn count(&mut self, value: &Option<S<i64>>, key: &str, range: Range<i64>, default: u32) -> u32 {
        match value {
            None => default,
            Some(v) if range.contains(v.get_ref()) => *v.get_ref() as u32,
            Some(v) => {
                self.err(
                    v.span(),
                    key,
                    format!(
                        "expected an integer from {} to {}, found {}",
                        range.start,
                        range.end - 1,
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn share(&mut self, value: &Option<S<f64>>, key: &str, default: f64) -> f64 {
        match value {
            None => default,
            Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.err(
                    v.span(),
                    key,
                    format!("expected a share from 0.0 to 1.0, found {}", v.get_ref()),
                );
                default
            }
        }
    }

    fn socket_addr(&mut self, value: &S<String>, key: &str) -> Option<SocketAddr> {
        match value.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    value.span(),
                    key,
                    format!(
                        "expected an address such as \"127.0.0.1:8080\", found \"{}\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }
}

fn validate(source: &Source<'_>, raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut c = Checker {
        source,
        errors: Vec::new(),
    };

    let mut regions = Vec::new();
    let mut region_names = BTreeSet::new();
    if raw.region.is_empty() {
        c.err(0..0, "region", "expected at least one [[region]] table");
    }
    for (i, r) in raw.region.iter().enumerate() {
        let key = format!("region[{i}].name");
        let name = r.get_ref().name.get_ref().trim().to_string();
        if !valid_name(&name) {
            c.err(
                r.get_ref().name.span(),
                key,
                "expected a name of letters, digits, '-' and '_'",
            );
        } else if !region_names.insert(name.clone()) {
            c.err(
                r.get_ref().name.span(),
                key,
                format!("duplicate region name \"{name}\""),
            );
        }
        let capacity_rps = r.get_ref().capacity_rps.as_ref().and_then(|v| {
            let n = u64::try_from(*v.get_ref()).ok().filter(|n| *n > 0);
            if n.is_none() {
                c.err(
                    v.span(),
                    format!("region[{i}].capacity_rps"),
                    "expected a whole number of requests per second above 0",
                );
            }
            n
        });
        regions.push(Region {
            name,
            serves_traffic: r.get_ref().serves_traffic,
            capacity_rps,
        });
    }
    let with_capacity = regions
        .iter()
        .filter(|r| r.serves_traffic && r.capacity_rps.is_some())
        .count();
    let serving = regions.iter().filter(|r| r.serves_traffic).count();
    if with_capacity > 0 && with_capacity < serving {
        let missing: Vec<&str> = regions
            .iter()
            .filter(|r| r.serves_traffic && r.capacity_rps.is_none())
            .map(|r| r.name.as_str())
            .collect();
        let span = raw.region.first().map_or(0..0, |r| r.span());
        c.err(
            span,
            "region",
            format!(
                "capacity_rps is set on some serving regions but not on {}: set it on every serving region or on none",
                missing.join(", ")
            ),
        );
    }

    let edge = raw
        .edge
        .as_ref()
        .and_then(|e| validate_edge(&mut c, e.get_ref(), &region_names));

    let mut services = Vec::new();
    let mut claimed_routes: Vec<(String, String, String)> = Vec::new();
    // File order, so that a clash is reported on the later service.
    let mut in_file_order: Vec<_> = raw.service.iter().collect();
    in_file_order.sort_by_key(|(name, _)| name.span().start);
    for (name, svc) in in_file_order {
        let key = format!("service.{}", name.get_ref());
        if !valid_name(name.get_ref()) {
            c.err(
                name.span(),
                &key,
                "expected a service name of letters, digits, '-' and '_'",
            );
        }
        if let Some(s) = validate_service(&mut c, name.get_ref(), svc, &region_names) {
            let mut mine = BTreeSet::new();
            for host in hosts_or_any(&s.hosts) {
                if !mine.insert(host.clone()) {
                    c.err(
                        svc.span(),
                        format!("{key}.hosts"),
                        format!("host \"{host}\" is listed twice (host names ignore case)"),
                    );
                    continue;
                }
                if let Some((_, _, other)) = claimed_routes
                    .iter()
                    .find(|(h, p, _)| *h == host && *p == s.path_prefix)
                {
                    c.err(
                        svc.span(),
                        &key,
                        format!(
                            "host \"{host}\" with path prefix \"{}\" is already served by service \"{other}\"",
                            s.path_prefix
                        ),
                    );
                }
                claimed_routes.push((host, s.path_prefix.clone(), s.name.clone()));
            }
            services.push(s);
        }
    }
    // The HTTPS listener serves the services' certificates too.
    let mut edge = edge;
    if let (Some(settings), Some(raw_tls)) = (
        edge.as_mut(),
        raw.edge.as_ref().and_then(|e| e.get_ref().tls.as_ref()),
    ) {
        let service_certs = services
            .iter()
            .filter_map(|s| {
                s.tls.as_ref().map(|files| tls::NamedCertificate {
                    hosts: s.hosts.clone(),
                    files: files.clone(),
                })
            })
            .collect();
        settings.tls = tls::validate_edge_tls(&mut c, raw_tls, service_certs);
    }
    let has_tls = edge.as_ref().is_some_and(|e| e.tls.is_some());
    for (name, svc) in &raw.service {
        let r = svc.get_ref();
        for (v, what) in [
            (
                r.https_redirect
                    .as_ref()
                    .filter(|v| *v.get_ref())
                    .map(|v| v.span()),
                "https_redirect",
            ),
            (r.tls.as_ref().map(|t| t.span()), "tls"),
        ] {
            if let (Some(span), Some(_), false) = (v, &edge, has_tls) {
                c.err(
                    span,
                    format!("service.{}.{what}", name.get_ref()),
                    "the edge has no HTTPS listener; add an [edge.tls] table with listen = ...",
                );
            }
        }
    }
    if raw.edge.is_some() && raw.service.is_empty() && raw.dns.is_none() {
        c.err(
            raw.edge.as_ref().map_or(0..0, |e| e.span()),
            "service",
            "an edge needs at least one [service.NAME] table or a [dns] table",
        );
    }
    let dns = raw
        .dns
        .as_ref()
        .and_then(|d| dns::validate_dns(&mut c, d, &region_names, &services));
    if let (Some(d), None) = (&raw.dns, &raw.edge) {
        c.err(
            d.span(),
            "dns",
            "the DNS server runs in the edge; add an [edge] table (region and listen)",
        );
    }

    let controller = raw
        .controller
        .as_ref()
        .and_then(|r| control::validate_controller(&mut c, r, &region_names));
    let verdict = control::validate_verdict(&mut c, raw.verdict.as_ref());
    let (agent, agent_admin) = raw
        .agent
        .as_ref()
        .and_then(|a| control::validate_agent(&mut c, a, &region_names))
        .map_or((None, None), |(region, admin)| (Some(region), admin));
    let databases = control::validate_databases(&mut c, &raw.database, &region_names);
    let mut drill = drill::validate_drill(&mut c, raw.drill.as_ref());
    for (name, svc) in &raw.service {
        if let Some(g) = &svc.get_ref().guardrails {
            let key = format!("service.{}.guardrails", name.get_ref());
            let limits = drill::validate_service_guardrails(&mut c, &key, g);
            drill
                .service_guardrails
                .insert(name.get_ref().clone(), limits);
        }
    }

    if c.errors.is_empty() {
        Ok(Config {
            regions,
            edge,
            services,
            dns,
            controller,
            verdict,
            agent,
            agent_admin,
            databases,
            drill,
        })
    } else {
        c.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(c.errors))
    }
}

fn hosts_or_any(hosts: &[String]) -> Vec<String> {
    if hosts.is_empty() {
        vec!["*".to_string()]
    } else {
        hosts.to_vec()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn validate_edge(
    c: &mut Checker<'_>,
    e: &RawEdge,
    regions: &BTreeSet<String>,
) -> Option<EdgeSettings> {
    let region = e.region.get_ref().clone();
    if !regions.contains(&region) {
        c.err(
            e.region.span(),
            "edge.region",
            format!(
                "unknown region \"{region}\"; expected one of: {}",
                join(regions)
            ),
        );
    }
    let listen = c.socket_addr(&e.listen, "edge.listen");
    let admin = e
        .admin
        .as_ref()
        .and_then(|a| c.socket_addr(a, "edge.admin"));
    let request_timeout = c.duration(
        &e.request_timeout,
        "edge.request_timeout",
        Duration::from_secs(10),
    );
    let try_timeout = c.duration(&e.try_timeout, "edge.try_timeout", Duration::from_secs(2));
    if try_timeout > request_timeout {
        if let Some(t) = &e.try_timeout {
            c.err(
                t.span(),
                "edge.try_timeout",
                format!(
                    "expected at most request_timeout ({}), found {}",
                    format_duration(request_timeout),
                    format_duration(try_timeout)
                ),
            );
        }
    }
    let retry_budget = c.share(&e.retry_budget, "edge.retry_budget", 0.2);
    let retry_min_per_second = c.count(
        &e.retry_min_per_second,
        "edge.retry_min_per_second",
        0..100_001,
        10,
    );
    let retry_body_limit = c
        .size(&e.retry_body_limit, "edge.retry_body_limit")
        .unwrap_or(64 * 1024);
    let max_body = c.size(&e.max_body, "edge.max_body");
    let max_header = c
        .size(&e.max_header, "edge.max_header")
        .unwrap_or(16 * 1024);
    if max_header < 8 * 1024 {
        if let Some(h) = &e.max_header {
            c.err(h.span(), "edge.max_header", "expected at least 8KiB");
        }
    }
    let max_request_headers = c.count(
        &e.max_request_headers,
        "edge.max_request_headers",
        1..10_001,
        100,
    ) as usize;
    let max_response_headers = c.count(
        &e.max_response_headers,
        "edge.max_response_headers",
        1..10_001,
        200,
    ) as usize;
    let shutdown_grace = c.duration(
        &e.shutdown_grace,
        "edge.shutdown_grace",
        Duration::from_secs(5),
    );
    // Zero is allowed here: close the listeners at once.
    let unready_delay = match &e.unready_delay {
        None => Duration::from_secs(2),
        Some(v) => crate::units::parse_duration(v.get_ref()).unwrap_or_else(|msg| {
            c.err(v.span(), "edge.unready_delay", msg);
            Duration::from_secs(2)
        }),
    };
    let workers = e
        .workers
        .as_ref()
        .map(|_| c.count(&e.workers, "edge.workers", 1..257, 1));
    let client_timeout = c.duration(
        &e.client_timeout,
        "edge.client_timeout",
        Duration::from_secs(30),
    );
    let routing_state = e
        .routing_state
        .as_ref()
        .map(|p| std::path::PathBuf::from(p.get_ref()));
    Some(EdgeSettings {
        routing_state,
        workers,
        client_timeout,
        region,
        listen: listen?,
        admin,
        request_timeout,
        try_timeout,
        retry_budget,
        retry_min_per_second,
        retry_body_limit,
        max_body,
        max_header,
        max_request_headers,
        max_response_headers,
        shutdown_grace,
        unready_delay,
        // Read after the services, whose certificates it serves.
        tls: None,
    })
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

fn validate_service(
    c: &mut Checker<'_>,
    name: &str,
    svc: &S<RawService>,
    regions: &BTreeSet<String>,
) -> Option<Service> {
    let key = format!("service.{name}");
    let s = svc.get_ref();
    let policy = match s.policy.get_ref().as_str() {
        "failover" => Policy::Failover,
        "weighted" => Policy::Weighted,
        "latency" => Policy::Latency,
        other => {
            c.err(
                s.policy.span(),
                format!("{key}.policy"),
                format!(
                    "expected one of \"failover\", \"weighted\", \"latency\", found \"{other}\""
                ),
            );
            Policy::Failover
        }
    };
    let when_all_unhealthy = match s
        .when_all_unhealthy
        .as_ref()
        .map(|v| (v.get_ref().as_str(), v.span()))
    {
        None | Some(("fail-open", _)) => AllUnhealthy::FailOpen,
        Some(("fail-closed", _)) => AllUnhealthy::FailClosed,
        Some((other, span)) => {
            c.err(
                span,
                format!("{key}.when_all_unhealthy"),
                format!("expected \"fail-open\" or \"fail-closed\", found \"{other}\""),
            );
            AllUnhealthy::FailOpen
        }
    };
    let mut hosts = Vec::new();
    for (i, h) in s.hosts.iter().enumerate() {
        let host = h.get_ref().trim().to_ascii_lowercase();
        let ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '*');
        if !ok {
            c.err(
                h.span(),
                format!("{key}.hosts[{i}]"),
                format!(
                    "expected a host name without scheme or port, found \"{}\"",
                    h.get_ref()
                ),
            );
        }
        hosts.push(host);
    }
    let service_tls = s.tls.as_ref().and_then(|t| {
        if s.hosts.is_empty() {
            c.err(
                t.span(),
                format!("{key}.tls"),
                "a service's certificate is served for its hosts; this service lists none (hosts = [...])",
            );
        }
        tls::cert_pair(c, &format!("{key}.tls"), t)
    });
    let path_prefix = match &s.path_prefix {
        None => "/".to_string(),
        Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
        Some(p) => {
            c.err(
                p.span(),
                format!("{key}.path_prefix"),
                format!(
                    "expected a path starting with '/', found \"{}\"",
                    p.get_ref()
                ),
            );
            "/".to_string()
        }
    };
    let outlier = s
        .outlier
        .as_ref()
        .map(|o| validate_outlier(c, &format!("{key}.outlier"), o.get_ref()))
        .unwrap_or_default();

    if s.backend.is_empty() {
        c.err(
            svc.span(),
            &key,
            "expected at least one [[service.NAME.backend]]; a service without backends can serve nothing",
        );
    }
    let mut backends = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, b) in s.backend.iter().enumerate() {
        let bkey = format!("{key}.backend[{i}]");
        if let Some(mut backend) = validate_backend(c, &bkey, b.get_ref(), regions) {
            if let Some(first) = hosts.first().filter(|h| !h.contains('*')) {
                backend.health.probe.default_host(first);
            }
            if !seen.insert((backend.region.clone(), backend.url.to_string())) {
                c.err(
                    b.get_ref().url.span(),
                    format!("{bkey}.url"),
                    format!(
                        "duplicate backend {} in region {}",
                        backend.url, backend.region
                    ),
                );
            }
            backends.push(backend);
        }
    }
    if policy == Policy::Weighted && !backends.is_empty() && backends.iter().all(|b| b.weight == 0)
    {
        c.err(
            s.policy.span(),
            format!("{key}.policy"),
            "a weighted service needs at least one backend with a weight above 0",
        );
    }
    Some(Service {
        name: name.to_string(),
        policy,
        hosts,
        path_prefix,
        when_all_unhealthy,
        outlier,
        critical: s.critical.as_ref().is_none_or(|c| *c.get_ref()),
        tls: service_tls,
        https_redirect: s.https_redirect.as_ref().is_some_and(|v| *v.get_ref()),
        backends,
    })
}

fn validate_outlier(c: &mut Checker<'_>, key: &str, o: &RawOutlier) -> OutlierSettings {
    let d = OutlierSettings::default();
    let consecutive_failures = c.count(
        &o.consecutive_failures,
        &format!("{key}.consecutive_failures"),
        1..1001,
        d.consecutive_failures,
    );
    let base_ejection = c.duration(
        &o.base_ejection,
        &format!("{key}.base_ejection"),
        d.base_ejection,
    );
    let max_ejection = c.duration(
        &o.max_ejection,
        &format!("{key}.max_ejection"),
        d.max_ejection,
    );
    if max_ejection < base_ejection {
        if let Some(m) = &o.max_ejection {
            c.err(
                m.span(),
                format!("{key}.max_ejection"),
                format!(
                    "expected at least base_ejection ({}), found {}",
                    format_duration(base_ejection),
                    format_duration(max_ejection)
                ),
            );
        }
    }
    let max_ejected_share = c.share(
        &o.max_ejected_share,
        &format!("{key}.max_ejected_share"),
        d.max_ejected_share,
    );
    OutlierSettings {
        consecutive_failures,
        base_ejection,
        max_ejection,
        max_ejected_share,
    }
}

fn validate_backend(
    c: &mut Checker<'_>,
    key: &str,
    b: &RawBackend,
    regions: &BTreeSet<String>,
) -> Option<Backend> {
    let region = b.region.get_ref().clone();
    if !regions.contains(&region) {
        c.err(
            b.region.span(),
            format!("{key}.region"),
            format!(
                "unknown region \"{region}\"; expected one of: {}",
                join(regions)
            ),
        );
    }
    let url = match parse_backend_url(b.url.get_ref()) {
        Ok(u) => Some(u),
        Err(e) => {
            c.err(b.url.span(), format!("{key}.url"), e);
            None
        }
    };
    let weight = c.count(&b.weight, &format!("{key}.weight"), 0..1001, 1);
    let tls = match (&b.tls, url.as_ref().map(|u| u.tls)) {
        (Some(t), Some(false)) => {
            c.err(
                t.span(),
                format!("{key}.tls"),
                "only https:// backends take a tls table; this backend's url is http://",
            );
            None
        }
        (Some(t), _) => Some(tls::validate_backend_tls(c, &format!("{key}.tls"), t)),
        (None, Some(true)) => Some(tls::BackendTls {
            ca: None,
            client: None,
            server_name: None,
        }),
        (None, _) => None,
    };
    let health = validate_health(
        c,
        &format!("{key}.health"),
        b.health.as_ref().map(|h| h.get_ref()),
    );
    Some(Backend {
        region,
        url: url?,
        weight,
        health,
        tls,
    })
}

fn validate_health(c: &mut Checker<'_>, key: &str, h: Option<&RawHealth>) -> HealthCheck {
    let empty = RawHealth {
        kind: None,
        path: None,
        interval: None,
        timeout: None,
        fall: None,
        rise: None,
        expect_status: None,
        body_contains: None,
        host: None,
        headers: None,
    };
    let h = h.unwrap_or(&empty);
    let interval = c.duration(
        &h.interval,
        &format!("{key}.interval"),
        Duration::from_secs(1),
    );
    let timeout = c.duration(
        &h.timeout,
        &format!("{key}.timeout"),
        Duration::from_millis(500).min(interval),
    );
    if interval < timeout {
        match (&h.interval, &h.timeout) {
            (Some(i), _) => c.err(
                i.span(),
                format!("{key}.interval"),
                format!(
                    "expected an interval at least as long as the timeout ({}), found {}",
                    format_duration(timeout),
                    format_duration(interval)
                ),
            ),
            (None, Some(t)) => c.err(
                t.span(),
                format!("{key}.timeout"),
                format!(
                    "expected a timeout no longer than the interval ({}, the default), found {}",
                    format_duration(interval),
                    format_duration(timeout)
                ),
            ),
            (None, None) => {}
        }
    }
    let fall = c.count(&h.fall, &format!("{key}.fall"), 1..101, 3);
    let rise = c.count(&h.rise, &format!("{key}.rise"), 1..101, 3);
    let kind = h.kind.as_ref().map_or("http", |k| k.get_ref().as_str());
    let probe = match kind {
        "http" => {
            let path = match &h.path {
                None => "/health".to_string(),
                Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
                Some(p) => {
                    c.err(
                        p.span(),
                        format!("{key}.path"),
                        format!(
                            "expected a path starting with '/', found \"{}\"",
                            p.get_ref()
                        ),
                    );
                    "/health".to_string()
                }
            };
            let expect_status = match &h.expect_status {
                None => StatusRange {
                    low: 200,
                    high: 399,
                },
                Some(v) => parse_status_range(v.get_ref()).unwrap_or_else(|e| {
                    c.err(v.span(), format!("{key}.expect_status"), e);
                    StatusRange {
                        low: 200,
                        high: 399,
                    }
                }),
            };
            let host = h.host.as_ref().and_then(|v| {
                let t = v.get_ref().trim();
                if is_probe_host(t) {
                    Some(t.to_ascii_lowercase())
                } else {
                    c.err(
                        v.span(),
                        format!("{key}.host"),
                        format!(
                            "expected a host name or host:port such as \"api.example.com\", found \"{}\"",
                            v.get_ref()
                        ),
                    );
                    None
                }
            });
            let mut headers = Vec::new();
            for (name, value) in h.headers.iter().flat_map(|m| m.get_ref().iter()) {
                let lower = name.to_ascii_lowercase();
                if !is_header_name(&lower) || lower == "host" || lower == "content-length" {
                    c.err(
                        value.span(),
                        format!("{key}.headers"),
                        format!(
                            "expected a header name other than host (use host = ...) and content-length, found \"{name}\""
                        ),
                    );
                } else if !is_header_value(value.get_ref()) {
                    c.err(
                        value.span(),
                        format!("{key}.headers.{name}"),
                        "expected a header value of visible characters, spaces and tabs",
                    );
                } else {
                    headers.push((lower, value.get_ref().clone()));
                }
            }
            ProbeKind::Http {
                path,
                expect_status,
                body_contains: h.body_contains.as_ref().map(|b| b.get_ref().clone()),
                host,
                headers,
            }
        }
        "tcp" => {
            for (field, v) in [
                ("path", &h.path),
                ("expect_status", &h.expect_status),
                ("body_contains", &h.body_contains),
                ("host", &h.host),
            ] {
                if let Some(v) = v {
                    c.err(
                        v.span(),
                        format!("{key}.{field}"),
                        "only http health checks take this key; this check has kind = \"tcp\"",
                    );
                }
            }
            ProbeKind::Tcp
        }
        other => {
            let span = h.kind.as_ref().map_or(0..0, |k| k.span());
            c.err(
                span,
                format!("{key}.kind"),
                format!("expected \"http\" or \"tcp\", found \"{other}\""),
            );
            ProbeKind::Tcp
        }
    };
    HealthCheck {
        probe,
        interval,
        timeout,
        fall,
        rise,
    }
}

/// A probe's `Host`: a DNS name or IP literal, with an optional port.
fn is_probe_host(t: &str) -> bool {
    let (name, port) = match t.rsplit_once(':') {
        Some((n, p)) if !n.contains(':') || n.ends_with(']') => (n, Some(p)),
        _ => (t, None),
    };
    let name_ok = !name.is_empty()
        && (name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            || (name.starts_with('[') && name.ends_with(']')));
    name_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// A header name: an RFC 9110 section 5.6.2 token.
fn is_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value: visible characters, spaces and tabs (RFC 9110 section 5.5).
fn is_header_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn parse_status_range(text: &str) -> Result<StatusRange, String> {
    let bad =
        || format!("expected a status or range such as \"200\" or \"200-399\", found \"{text}\"");
    let (low, high) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let low: u16 = low.parse().map_err(|_| bad())?;
    let high: u16 = high.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
        return Err(bad());
    }
    Ok(StatusRange { low, high })
}

/// Parses `http://host[:port][/base]`.
pub fn parse_backend_url(text: &str) -> Result<BackendUrl, String> {
    let bad = |why: &str| {
        format!("expected a URL such as \"http://127.0.1.10:8080\", found \"{text}\" ({why})")
    };
    let (tls, rest) = if let Some(rest) = text.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = text.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(bad("the scheme must be http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if path.contains(['?', '#']) {
        return Err(bad("no query or fragment allowed"));
    }
    if authority.contains('@') {
        return Err(bad("no user info allowed"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
    {
        return Err(bad("missing or invalid host"));
    }
    let port = match port {
        None if tls => 443,
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("invalid port"))?,
    };
    Ok(BackendUrl {
        tls,
        host,
        port,
        base_path: path.trim_end_matches('/').to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[region]]
name = "us-east"
[[region]]
name = "us-west"
[[region]]
name = "witness"
serves_traffic = false

[edge]
region = "us-east"
listen = "127.0.1.1:8080"
admin = "127.0.1.1:9090"

[service.api]
policy = "failover"
when_all_unhealthy = "fail-closed"
[[service.api.backend]]
region = "us-east"
url = "http://127.0.1.10:8080"
health = { path = "/health", interval = "1s", timeout = "500ms", fall = 3, rise = 2 }
[[service.api.backend]]
region = "us-west"
url = "http://127.0.2.10:8080/v1/"
weight = 5
health = { kind = "tcp", interval = "2s" }
"#;

    #[test]
    fn a_service_guardrail_table_overrides_only_what_it_names() {
        let text = GOOD.replace(
            "[service.api]\n",
            "[drill]\nmax_p99 = \"800ms\"\nmin_requests = 50\n[service.api]\nguardrails = { max_p99 = \"3s\" }\n",
        );
        let cfg = Config::from_toml("g.toml", &text).unwrap();
        let own = cfg.drill.service_guardrails["api"];
        assert_eq!(own.max_p99, Some(Duration::from_secs(3)));
        assert_eq!(own.max_error_rate, None);
        let g = own.resolve(&cfg.drill.guardrails);
        assert_eq!(g.max_p99, Duration::from_secs(3));
        assert_eq!(g.min_requests, 50, "from [drill]");
        assert_eq!(g.max_error_rate, 0.01, "the default");
        let bad = GOOD.replace(
            "[service.api]\n",
            "[service.api]\nguardrails = { max_error_rate = 5.0, max_p99 = \"soon\" }\n",
        );
        let err = Config::from_toml("g.toml", &bad).unwrap_err().to_string();
        assert!(
            err.contains("service.api.guardrails.max_error_rate"),
            "{err}"
        );
        assert!(err.contains("service.api.guardrails.max_p99"), "{err}");
    }

    #[test]
    fn capacities_are_set_on_every_serving_region_or_none() {
        let text = GOOD.replace(
            "name = \"us-east\"\n",
            "name = \"us-east\"\ncapacity_rps = 500\n",
        );
        let err = Config::from_toml("c.toml", &text).unwrap_err().to_string();
        assert!(err.contains("but not on us-west"), "{err}");
        let text = text.replace(
            "name = \"us-west\"\n",
            "name = \"us-west\"\ncapacity_rps = 800\n",
        );
        let cfg = Config::from_toml("c.toml", &text).unwrap();
        assert_eq!(cfg.regions[1].capacity_rps, Some(800));
        assert_eq!(
            cfg.regions[2].capacity_rps, None,
            "the witness serves nothing"
        );
        let err = Config::from_toml("c.toml", &text.replace("800", "-1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("region[1].capacity_rps"), "{err}");
    }

    #[test]
    fn loads_a_good_file() {
        let cfg = Config::from_toml("good.toml", GOOD).unwrap();
        assert_eq!(cfg.regions.len(), 3);
        assert!(!cfg.regions[2].serves_traffic);
        let api = cfg.service("api").unwrap();
        assert_eq!(api.policy, Policy::Failover);
        assert_eq!(api.when_all_unhealthy, AllUnhealthy::FailClosed);
        assert_eq!(api.backends[0].health.rise, 2);
        assert_eq!(api.backends[1].url.base_path, "/v1");
        assert_eq!(api.backends[1].health.probe, ProbeKind::Tcp);
        assert_eq!(api.backends[1].health.timeout, Duration::from_millis(500));
        let edge = cfg.edge.unwrap();
        assert_eq!(edge.retry_budget, 0.2);
        assert!(cfg.regions.iter().any(|r| r.name == edge.region));
    }

    #[test]
    fn errors_name_line_and_key() {
        let text = GOOD.replace("interval = \"1s\"", "interval = \"1 parsec\"");
        let err = Config::from_toml("f.toml", &text).unwrap_err();
        let e = &err.0[0];
        assert_eq!(e.key, "service.api.backend[0].health.interval");
        assert_eq!(e.line, 21);
        assert!(e.to_string().starts_with("f.toml:21:"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("weight = 5", "wieght = 5");
        let err = Config::from_toml("f.toml", &text).unwrap_err();
        let e = &err.0[0];
        assert_eq!(e.line, 25, "{e}");
        assert_eq!(e.key, "service.api.backend[1].wieght", "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn unknown_key_in_inline_table_is_named() {
        let text = GOOD.replace("fall = 3, rise = 2", "fall = 3, rize = 2");
        let e = &Config::from_toml("f.toml", &text).unwrap_err().0[0];
        assert_eq!(e.key, "service.api.backend[0].health.rize", "{e}");
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_backend_url("http://a.example:81/x/").unwrap(),
            BackendUrl {
                tls: false,
                host: "a.example".into(),
                port: 81,
                base_path: "/x".into()
            }
        );
        assert_eq!(parse_backend_url("http://[::1]:9").unwrap().host, "[::1]");
        assert_eq!(parse_backend_url("http://h").unwrap().port, 80);
        let https = parse_backend_url("https://h").unwrap();
        assert_eq!((https.tls, https.port), (true, 443));
        assert_eq!(https.to_string(), "https://h:443");
        for bad in [
            "ftp://h",
            "https://",
            "http://",
            "http://h:0",
            "http://h:99999",
            "http://u@h",
            "http://h/?q",
            "h:80",
        ] {
            assert!(parse_backend_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_ranges() {
        assert_eq!(
            parse_status_range("200"),
            Ok(StatusRange {
                low: 200,
                high: 200
            })
        );
        assert_eq!(
            parse_status_range("200-299"),
            Ok(StatusRange {
                low: 200,
                high: 299
            })
        );
        for bad in ["2xx", "300-200", "99", "600", ""] {
            assert!(parse_status_range(bad).is_err(), "{bad}");
        }
    }
}

//! The `[dns]` table: the edge's authoritative DNS server, its zones and the
//! client networks that map resolvers to regions.
//!
//! Raw shapes (with spans, unknown keys rejected) and their validation into
//! [`DnsConfig`] live together here. A policy record's targets are health
//! checked either by a service backend the edge already probes
//! (`service = "api"`: the backend of that service in the target's region, the
//! same `fall`/`rise` tracker the HTTP path uses) or by a probe of their own
//! (`health = { port = 8080, ... }` against the target's address); a target
//! with neither is always considered healthy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::raw::{RawDns, RawHealth, RawRecord, RawTarget, RawZone, S};
use super::{join, validate_health, AllUnhealthy, Checker, HealthCheck, ProbeKind, Service};
use crate::units::format_duration;

/// The edge's DNS server.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// UDP and TCP address the server answers on.
    pub listen: SocketAddr,
    /// Threads serving UDP; `None` means one per CPU.
    pub workers: Option<u32>,
    /// Client networks, for the latency and multivalue policies.
    pub networks: Vec<Network>,
    pub zones: Vec<Zone>,
}

/// A client network and the region it is nearest to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The network address (host bits cleared).
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub region: String,
}

impl Network {
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4() && truncate(addr, self.prefix_len) == self.addr
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// Lower case, without the trailing dot, such as `example.com`.
    pub name: String,
    /// Name servers (fully qualified, lower case); the first is the SOA's primary.
    pub ns: Vec<String>,
    /// The SOA's responsible mailbox as a name (`hostmaster.example.com`).
    pub hostmaster: String,
    pub serial: u32,
    pub refresh: Duration,
    pub retry: Duration,
    pub expire: Duration,
    /// How long resolvers cache a negative answer (the SOA minimum, RFC 2308).
    pub negative_ttl: Duration,
    /// TTL of the SOA and NS records and the default of static records.
    pub ttl: Duration,
    pub records: Vec<DnsRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsRecord {
    /// Fully qualified, lower case, without the trailing dot.
    pub name: String,
    pub ttl: Duration,
    pub data: RecordData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecordData {
    Static(Vec<StaticValue>),
    Policy(PolicyRecord),
}

impl DnsRecord {
    /// The record type as written in zone files.
    pub fn type_name(&self) -> &'static str {
        match &self.data {
            RecordData::Static(v) => v.first().map_or("A", StaticValue::type_name),
            RecordData::Policy(p) => {
                if p.ipv6 {
                    "AAAA"
                } else {
                    "A"
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaticValue {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// Fully qualified, lower case, without the trailing dot.
    Cname(String),
    Txt(String),
    Mx {
        preference: u16,
        exchange: String,
    },
}

impl StaticValue {
    pub fn type_name(&self) -> &'static str {
        match self {
            StaticValue::A(_) => "A",
            StaticValue::Aaaa(_) => "AAAA",
            StaticValue::Cname(_) => "CNAME",
            StaticValue::Txt(_) => "TXT",
            StaticValue::Mx { .. } => "MX",
        }
    }
}

/// How a policy record picks its answer (see `crate::dns::select`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsPolicy {
    /// The first healthy target in file order.
    Failover,
    /// One healthy target chosen by weight.
    Weighted,
    /// The healthy target in the client's region, else the first healthy one.
    Latency,
    /// Up to eight healthy targets, the client's region first.
    Multivalue,
}

impl DnsPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsPolicy::Failover => "failover",
            DnsPolicy::Weighted => "weighted",
            DnsPolicy::Latency => "latency",
            DnsPolicy::Multivalue => "multivalue",
        }
    }

    /// Whether the answer depends on where the client is.
    pub fn location_dependent(self) -> bool {
        matches!(self, DnsPolicy::Latency | DnsPolicy::Multivalue)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRecord {
    pub policy: DnsPolicy,
    /// AAAA when true, A otherwise.
    pub ipv6: bool,
    pub when_all_unhealthy: AllUnhealthy,
    pub targets: Vec<DnsTarget>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsTarget {
    pub address: IpAddr,
    pub region: String,
    pub weight: u32,
    pub check: TargetCheck,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetCheck {
    /// Always healthy.
    None,
    /// Healthy when the backend of this service in the target's region is.
    Service(String),
    /// A probe of the target's own address on `port`.
    Probe { port: u16, health: HealthCheck },
}

/// Default TTL of static records and of the SOA and NS records.
const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// A health-checked answer must be able to change quickly: its default TTL.
const DEFAULT_POLICY_TTL: Duration = Duration::from_secs(60);
/// RFC 2181 section 8: TTLs are at most 2^31 - 1 seconds; a week is plenty.
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) fn validate_dns(
    c: &mut Checker<'_>,
    d: &S<RawDns>,
    regions: &BTreeSet<String>,
    services: &[Service],
) -> Option<DnsConfig> {
    let raw = d.get_ref();
    let listen = c.socket_addr(&raw.listen, "dns.listen");
    let workers = raw
        .workers
        .as_ref()
        .map(|_| c.count(&raw.workers, "dns.workers", 1..257, 1));
    let mut networks = Vec::new();
    for (i, n) in raw.network.iter().enumerate() {
        let n = n.get_ref();
        let key = format!("dns.network[{i}]");
        check_region(c, &n.region, &format!("{key}.region"), regions);
        match parse_prefix(n.prefix.get_ref()) {
            Ok((addr, prefix_len)) => networks.push(Network {
                addr,
                prefix_len,
                region: n.region.get_ref().clone(),
            }),
            Err(e) => c.err(n.prefix.span(), format!("{key}.prefix"), e),
        }
    }
    if raw.zone.is_empty() {
        c.err(
            d.span(),
            "dns.zone",
            "expected at least one [[dns.zone]] table; a DNS server without zones refuses everything",
        );
    }
    let mut zones: Vec<Zone> = Vec::new();
    for (i, z) in raw.zone.iter().enumerate() {
        let key = format!("dns.zone[{i}]");
        if let Some(zone) = validate_zone(c, &key, z, regions, services) {
            if zones.iter().any(|other| other.name == zone.name) {
                c.err(
                    z.get_ref().name.span(),
                    format!("{key}.name"),
                    format!("zone \"{}\" is configured twice", zone.name),
                );
            }
            zones.push(zone);
        }
    }
    check_cname_loops(c, d, &zones);
    Some(DnsConfig {
        listen: listen?,
        workers,
        networks,
        zones,
    })
}

/// Refuses CNAME chains that come back to a name they passed, within or
/// across the server's zones (`self CNAME self` included): a resolver
/// would chase them until its own limit (RFC 1034 section 3.6.2 asks that
/// loops not be made). The error names every record of the loop.
fn check_cname_loops(c: &mut Checker<'_>, d: &S<RawDns>, zones: &[Zone]) {
    let mut cname: BTreeMap<&str, &str> = BTreeMap::new();
    for z in zones {
        for r in &z.records {
            if let RecordData::Static(values) = &r.data {
                if let Some(StaticValue::Cname(target)) = values.first() {
                    cname.insert(r.name.as_str(), target.as_str());
                }
            }
        }
    }
    // Where each CNAME was written, for the error's line and key.
    let written = |name: &str| -> Option<(std::ops::Range<usize>, String)> {
        for (zi, z) in d.get_ref().zone.iter().enumerate() {
            let zone_name = parse_name(z.get_ref().name.get_ref()).ok()?;
            for (ri, r) in z.get_ref().record.iter().enumerate() {
                let r = r.get_ref();
                if r.kind.get_ref().eq_ignore_ascii_case("CNAME")
                    && owner_name(r.name.get_ref(), &zone_name).is_ok_and(|n| n == name)
                {
                    return Some((r.name.span(), format!("dns.zone[{zi}].record[{ri}].name")));
                }
            }
        }
        None
    };
    let mut reported: BTreeSet<&str> = BTreeSet::new();
    for &start in cname.keys() {
        let mut path = vec![start];
        let mut at = start;
        while let Some(&next) = cname.get(at) {
            if let Some(i) = path.iter().position(|&p| p == next) {
                let ring = &path[i..];
                if ring.iter().any(|n| reported.contains(n)) {
                    break;
                }
                reported.extend(ring.iter().copied());
                // Reported at the ring's first name in order, once.
                let first = *ring.iter().min().expect("a ring has a name");
                let mut names: Vec<&str> = ring.to_vec();
                let k = names.iter().position(|&n| n == first).expect("in the ring");
                names.rotate_left(k);
                names.push(first);
                let (span, key) = written(first).unwrap_or((d.span(), "dns.zone".to_string()));
                c.err(
                    span,
                    key,
                    format!(
                        "CNAME loop: {}; a chain of CNAMEs must end at a name with other records",
                        names.join(" -> ")
                    ),
                );
                break;
            }
            path.push(next);
            at = next;
        }
    }
}

fn check_region(c: &mut Checker<'_>, region: &S<String>, key: &str, regions: &BTreeSet<String>) {
    if !regions.contains(region.get_ref()) {
        c.err(
            region.span(),
            key,
            format!(
                "unknown region \"{}\"; expected one of: {}",
                region.get_ref(),
                join(regions)
            ),
        );
    }
}

fn validate_zone(
    c: &mut Checker<'_>,
    key: &str,
    z: &S<RawZone>,
    regions: &BTreeSet<String>,
    services: &[Service],
) -> Option<Zone> {
    let raw = z.get_ref();
    let name = match parse_name(raw.name.get_ref()) {
        Ok(n) if !n.is_empty() => n,
        Ok(_) => {
            c.err(
                raw.name.span(),
                format!("{key}.name"),
                "expected a zone name such as \"example.com\", not the root",
            );
            return None;
        }
        Err(e) => {
            c.err(raw.name.span(), format!("{key}.name"), e);
            return None;
        }
    };
    if raw.ns.is_empty() {
        c.err(
            z.span(),
            format!("{key}.ns"),
            "expected at least one name server, such as ns = [\"ns1.example.com\"]",
        );
    }
    let mut ns = Vec::new();
    for (i, n) in raw.ns.iter().enumerate() {
        match parse_name(n.get_ref()) {
            Ok(n) if !n.is_empty() => ns.push(n),
            Ok(_) => c.err(
                n.span(),
                format!("{key}.ns[{i}]"),
                "expected a name server's name",
            ),
            Err(e) => c.err(n.span(), format!("{key}.ns[{i}]"), e),
        }
    }
    let hostmaster = match &raw.hostmaster {
        None => format!("hostmaster.{name}"),
        Some(h) => parse_name(h.get_ref()).unwrap_or_else(|e| {
            c.err(h.span(), format!("{key}.hostmaster"), e);
            String::new()
        }),
    };
    let serial = match &raw.serial {
        None => 1,
        Some(s) if (0..=i64::from(u32::MAX)).contains(s.get_ref()) => *s.get_ref() as u32,
        Some(s) => {
            c.err(
                s.span(),
                format!("{key}.serial"),
                format!(
                    "expected an integer from 0 to 4294967295, found {}",
                    s.get_ref()
                ),
            );
            1
        }
    };
    let zone_ttl = ttl(c, &raw.ttl, &format!("{key}.ttl"), DEFAULT_TTL);
    let refresh = ttl_like(c, &raw.refresh, &format!("{key}.refresh"), 3600);
    let retry = ttl_like(c, &raw.retry, &format!("{key}.retry"), 600);
    let expire = ttl_like(c, &raw.expire, &format!("{key}.expire"), 7 * 24 * 3600);
    let negative_ttl = ttl(
        c,
        &raw.negative_ttl,
        &format!("{key}.negative_ttl"),
        Duration::from_secs(60),
    );

    let mut records: Vec<DnsRecord> = Vec::new();
    for (i, r) in raw.record.iter().enumerate() {
        let rkey = format!("{key}.record[{i}]");
        let Some(record) = validate_record(c, &rkey, r, &name, zone_ttl, regions, services) else {
            continue;
        };
        let clash = records.iter().find(|other| {
            other.name == record.name
                && (other.type_name() == record.type_name()
                    || other.type_name() == "CNAME"
                    || record.type_name() == "CNAME")
        });
        if let Some(other) = clash {
            let why = if other.type_name() == record.type_name() {
                format!(
                    "{} records of \"{}\" are already defined; list all values in one record",
                    record.type_name(),
                    record.name
                )
            } else {
                format!(
                    "\"{}\" already has records of type {}; a CNAME must be the only record of its name",
                    record.name,
                    other.type_name()
                )
            };
            c.err(r.get_ref().name.span(), format!("{rkey}.name"), why);
        }
        if record.name == name && record.type_name() == "CNAME" {
            c.err(
                r.get_ref().name.span(),
                format!("{rkey}.name"),
                "the zone apex cannot have a CNAME (it has SOA and NS records)",
            );
        }
        records.push(record);
    }
    Some(Zone {
        name,
        ns,
        hostmaster,
        serial,
        refresh,
        retry,
        expire,
        negative_ttl,
        ttl: zone_ttl,
        records,
    })
}

fn ttl(c: &mut Checker<'_>, value: &Option<S<String>>, key: &str, default: Duration) -> Duration {
    let d = c.duration(value, key, default);
    if d > MAX_TTL {
        if let Some(v) = value {
            c.err(
                v.span(),
                key,
                format!("expected at most 7 days, found {}", format_duration(d)),
            );
        }
        return default;
    }
    if d.subsec_nanos() != 0 {
        if let Some(v) = value {
            c.err(
                v.span(),
                key,
                format!(
                    "expected whole seconds (DNS counts TTLs in seconds), found {}",
                    format_duration(d)
                ),
            );
        }
    }
    d
}

/// SOA timers: durations like TTLs, but with up to a year allowed for expire.
fn ttl_like(c: &mut Checker<'_>, value: &Option<S<String>>, key: &str, default: u64) -> Duration {
    c.duration(value, key, Duration::from_secs(default))
}

#[allow(clippy::too_many_arguments)]
fn validate_record(
    c: &mut Checker<'_>,
    key: &str,
    r: &S<RawRecord>,
    zone: &str,
    zone_ttl: Duration,
    regions: &BTreeSet<String>,
    services: &[Service],
) -> Option<DnsRecord> {
    let raw = r.get_ref();
    let name = match owner_name(raw.name.get_ref(), zone) {
        Ok(n) => n,
        Err(e) => {
            c.err(raw.name.span(), format!("{key}.name"), e);
            return None;
        }
    };
    let kind = raw.kind.get_ref().trim().to_ascii_uppercase();
    let known = ["A", "AAAA", "CNAME", "TXT", "MX"];
    if !known.contains(&kind.as_str()) {
        c.err(
            raw.kind.span(),
            format!("{key}.type"),
            format!(
                "expected one of \"A\", \"AAAA\", \"CNAME\", \"TXT\", \"MX\", found \"{}\"",
                raw.kind.get_ref()
            ),
        );
        return None;
    }
    let Some(policy) = &raw.policy else {
        // A static record.
        if let Some(w) = &raw.when_all_unhealthy {
            c.err(
                w.span(),
                format!("{key}.when_all_unhealthy"),
                "only policy records take this key; add policy = \"failover\" or remove it",
            );
        }
        if let Some(t) = raw.target.first() {
            c.err(
                t.span(),
                format!("{key}.target"),
                "only policy records have targets; add policy = \"failover\" or use values = [...]",
            );
        }
        if raw.values.is_empty() {
            c.err(
                r.span(),
                format!("{key}.values"),
                "expected at least one value, such as values = [\"192.0.2.1\"]",
            );
            return None;
        }
        if kind == "CNAME" && raw.values.len() > 1 {
            c.err(
                raw.values[1].span(),
                format!("{key}.values[1]"),
                "a CNAME record has exactly one value",
            );
        }
        let mut values = Vec::new();
        for (i, v) in raw.values.iter().enumerate() {
            match parse_value(&kind, v.get_ref()) {
                Ok(value) => values.push(value),
                Err(e) => c.err(v.span(), format!("{key}.values[{i}]"), e),
            }
        }
        let ttl = ttl(c, &raw.ttl, &format!("{key}.ttl"), zone_ttl);
        return Some(DnsRecord {
            name,
            ttl,
            data: RecordData::Static(values),
        });
    };

    let policy_value = match policy.get_ref().as_str() {
        "failover" => DnsPolicy::Failover,
        "weighted" => DnsPolicy::Weighted,
        "latency" => DnsPolicy::Latency,
        "multivalue" => DnsPolicy::Multivalue,
        other => {
            c.err(
                policy.span(),
                format!("{key}.policy"),
                format!(
                    "expected one of \"failover\", \"weighted\", \"latency\", \"multivalue\", found \"{other}\""
                ),
            );
            DnsPolicy::Failover
        }
    };
    if kind != "A" && kind != "AAAA" {
        c.err(
            raw.kind.span(),
            format!("{key}.type"),
            format!(
                "policy records answer addresses: expected \"A\" or \"AAAA\", found \"{kind}\""
            ),
        );
    }
    if let Some(v) = raw.values.first() {
        c.err(
            v.span(),
            format!("{key}.values"),
            "a policy record answers with its targets' addresses; remove values",
        );
    }
    let when_all_unhealthy = match &raw.when_all_unhealthy {
        None => AllUnhealthy::FailOpen,
        Some(v) => match v.get_ref().as_str() {
            "fail-open" => AllUnhealthy::FailOpen,
            "fail-closed" => AllUnhealthy::FailClosed,
            other => {
                c.err(
                    v.span(),
                    format!("{key}.when_all_unhealthy"),
                    format!("expected \"fail-open\" or \"fail-closed\", found \"{other}\""),
                );
                AllUnhealthy::FailOpen
            }
        },
    };
    if raw.target.is_empty() {
        c.err(
            r.span(),
            format!("{key}.target"),
            "expected at least one [[dns.zone.record.target]] in a policy record",
        );
    }
    let ipv6 = kind == "AAAA";
    let mut targets = Vec::new();
    for (i, t) in raw.target.iter().enumerate() {
        let tkey = format!("{key}.target[{i}]");
        if let Some(target) = validate_target(c, &tkey, t.get_ref(), &name, ipv6, regions, services)
        {
            targets.push(target);
        }
    }
    if policy_value == DnsPolicy::Weighted
        && !targets.is_empty()
        && targets.iter().all(|t| t.weight == 0)
    {
        c.err(
            policy.span(),
            format!("{key}.policy"),
            "a weighted record needs at least one target with a weight above 0",
        );
    }
    let ttl = ttl(
        c,
        &raw.ttl,
        &format!("{key}.ttl"),
        zone_ttl.min(DEFAULT_POLICY_TTL),
    );
    Some(DnsRecord {
        name,
        ttl,
        data: RecordData::Policy(PolicyRecord {
            policy: policy_value,
            ipv6,
            when_all_unhealthy,
            targets,
        }),
    })
}

fn validate_target(
    c: &mut Checker<'_>,
    key: &str,
    t: &RawTarget,
    name: &str,
    ipv6: bool,
    regions: &BTreeSet<String>,
    services: &[Service],
) -> Option<DnsTarget> {
    check_region(c, &t.region, &format!("{key}.region"), regions);
    let address = match t.address.get_ref().trim().parse::<IpAddr>() {
        Ok(a) if a.is_ipv6() == ipv6 => Some(a),
        Ok(a) => {
            c.err(
                t.address.span(),
                format!("{key}.address"),
                format!(
                    "expected an {} address for a record of type {}, found {a}",
                    if ipv6 { "IPv6" } else { "IPv4" },
                    if ipv6 { "AAAA" } else { "A" }
                ),
            );
            None
        }
        Err(_) => {
            c.err(
                t.address.span(),
                format!("{key}.address"),
                format!(
                    "expected an IP address such as \"192.0.2.1\", found \"{}\"",
                    t.address.get_ref()
                ),
            );
            None
        }
    };
    let weight = c.count(&t.weight, &format!("{key}.weight"), 0..1001, 1);
    let check = match (&t.service, &t.health) {
        (Some(s), Some(h)) => {
            c.err(
                h.span(),
                format!("{key}.health"),
                format!(
                    "a target follows either a service's health (service = \"{}\") or its own check (health = {{...}}), not both",
                    s.get_ref()
                ),
            );
            TargetCheck::None
        }
        (Some(s), None) => {
            let name = s.get_ref();
            match services.iter().find(|svc| &svc.name == name) {
                None => {
                    let names: BTreeSet<String> = services.iter().map(|s| s.name.clone()).collect();
                    c.err(
                        s.span(),
                        format!("{key}.service"),
                        format!(
                            "unknown service \"{name}\"; expected one of: {}",
                            if names.is_empty() {
                                "(no [service.NAME] tables)".to_string()
                            } else {
                                join(&names)
                            }
                        ),
                    );
                }
                Some(svc) if !svc.backends.iter().any(|b| &b.region == t.region.get_ref()) => {
                    c.err(
                        s.span(),
                        format!("{key}.service"),
                        format!(
                            "service \"{name}\" has no backend in region \"{}\" whose health this target could follow",
                            t.region.get_ref()
                        ),
                    );
                }
                Some(_) => {}
            }
            TargetCheck::Service(name.clone())
        }
        (None, Some(h)) => {
            let h = h.get_ref();
            let hkey = format!("{key}.health");
            let port = match *h.port.get_ref() {
                p @ 1..=65535 => p as u16,
                p => {
                    c.err(
                        h.port.span(),
                        format!("{hkey}.port"),
                        format!("expected a port from 1 to 65535, found {p}"),
                    );
                    1
                }
            };
            let as_backend = RawHealth {
                kind: h.kind.clone(),
                path: h.path.clone(),
                interval: h.interval.clone(),
                timeout: h.timeout.clone(),
                fall: h.fall.clone(),
                rise: h.rise.clone(),
                expect_status: h.expect_status.clone(),
                body_contains: h.body_contains.clone(),
                host: h.host.clone(),
                headers: h.headers.clone(),
            };
            let mut health = validate_health(c, &hkey, Some(&as_backend));
            if !name.starts_with('*') {
                health.probe.default_host(name.trim_end_matches('.'));
            }
            TargetCheck::Probe { port, health }
        }
        (None, None) => TargetCheck::None,
    };
    Some(DnsTarget {
        address: address?,
        region: t.region.get_ref().clone(),
        weight,
        check,
    })
}

fn parse_value(kind: &str, text: &str) -> Result<StaticValue, String> {
    let t = text.trim();
    match kind {
        "A" => t.parse().map(StaticValue::A).map_err(|_| {
            format!("expected an IPv4 address such as \"192.0.2.1\", found \"{text}\"")
        }),
        "AAAA" => t.parse().map(StaticValue::Aaaa).map_err(|_| {
            format!("expected an IPv6 address such as \"2001:db8::1\", found \"{text}\"")
        }),
        "CNAME" => parse_name(t).map(StaticValue::Cname),
        "TXT" => {
            if text.len() > 4000 {
                Err("expected a TXT value of at most 4000 bytes".to_string())
            } else {
                Ok(StaticValue::Txt(text.to_string()))
            }
        }
        "MX" => {
            let bad = || {
                format!("expected \"PREFERENCE NAME\" such as \"10 mail.example.com\", found \"{text}\"")
            };
            let (pref, exchange) = t.split_once(char::is_whitespace).ok_or_else(bad)?;
            let preference: u16 = pref.parse().map_err(|_| bad())?;
            let exchange = parse_name(exchange.trim())?;
            Ok(StaticValue::Mx {
                preference,
                exchange,
            })
        }
        _ => Err(format!("unsupported record type {kind}")),
    }
}

/// Parses a domain name written with or without the trailing dot into lower
/// case without it; the root is the empty string.
pub fn parse_name(text: &str) -> Result<String, String> {
    let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
    if t.is_empty() {
        return Ok(t);
    }
    let bad = |why: &str| {
        format!("expected a domain name such as \"www.example.com\", found \"{text}\" ({why})")
    };
    if t.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    for label in t.split('.') {
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        if label.len() > 63 {
            return Err(bad("a label is longer than 63 characters"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad("only letters, digits, '-' and '_' are allowed"));
        }
    }
    Ok(t)
}

/// Resolves a record's name within `zone`: `@` is the apex, a name ending
/// in `.` is absolute and must lie in the zone, anything else is relative.
fn owner_name(text: &str, zone: &str) -> Result<String, String> {
    let t = text.trim();
    if t == "@" {
        return Ok(zone.to_string());
    }
    if t.ends_with('.') {
        let n = parse_name(t)?;
        if n == zone || n.ends_with(&format!(".{zone}")) {
            return Ok(n);
        }
        return Err(format!(
            "\"{text}\" is outside zone \"{zone}\"; write a name relative to the zone, \"@\" for the apex, or an absolute name ending in \"{zone}.\""
        ));
    }
    let relative = parse_name(t)?;
    if relative.is_empty() {
        return Err(format!(
            "expected a name relative to \"{zone}\" or \"@\", found \"{text}\""
        ));
    }
    let full = format!("{relative}.{zone}");
    parse_name(&full)
}

/// Parses `ADDRESS/LENGTH`; host bits must be zero so that a typo such as
/// `10.1.2.3/16` is caught instead of silently meaning `10.1.0.0/16`.
fn parse_prefix(text: &str) -> Result<(IpAddr, u8), String> {
    let bad = || {
        format!("expected a network such as \"10.1.0.0/16\" or \"2001:db8::/32\", found \"{text}\"")
    };
    let (addr, len) = text.trim().split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    let network = truncate(addr, len);
    if network != addr {
        return Err(format!(
            "\"{text}\" has host bits set; did you mean \"{network}/{len}\"?"
        ));
    }
    Ok((addr, len))
}

impl DnsConfig {
    /// Appends the `tern check-config` lines of the DNS server.
    pub fn summarize(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "dns: listen {} (udp and tcp), {} client network{}, {} zone{}",
            self.listen,
            self.networks.len(),
            if self.networks.len() == 1 { "" } else { "s" },
            self.zones.len(),
            if self.zones.len() == 1 { "" } else { "s" },
        );
        for n in &self.networks {
            let _ = writeln!(out, "  network {}/{} -> {}", n.addr, n.prefix_len, n.region);
        }
        for z in &self.zones {
            let policy_records = z
                .records
                .iter()
                .filter(|r| matches!(r.data, RecordData::Policy(_)))
                .count();
            let _ = writeln!(
                out,
                "  zone {}: ns {}, serial {}, {} record{} ({} static, {} policy), negative ttl {}",
                z.name,
                z.ns.join(", "),
                z.serial,
                z.records.len(),
                if z.records.len() == 1 { "" } else { "s" },
                z.records.len() - policy_records,
                policy_records,
                format_duration(z.negative_ttl),
            );
            for r in &z.records {
                match &r.data {
                    RecordData::Static(values) => {
                        let shown: Vec<String> = values.iter().map(show_value).collect();
                        let _ = writeln!(
                            out,
                            "    {} {} ttl {}: {}",
                            r.name,
                            r.type_name(),
                            format_duration(r.ttl),
                            shown.join(", ")
                        );
                    }
                    RecordData::Policy(p) => {
                        let _ = writeln!(
                            out,
                            "    {} {} ttl {}: policy {}, when all unhealthy {}",
                            r.name,
                            r.type_name(),
                            format_duration(r.ttl),
                            p.policy.as_str(),
                            p.when_all_unhealthy.as_str()
                        );
                        for t in &p.targets {
                            let check = match &t.check {
                                TargetCheck::None => "no health check".to_string(),
                                TargetCheck::Service(s) => format!("health of service {s}"),
                                TargetCheck::Probe { port, health } => {
                                    let kind = match &health.probe {
                                        ProbeKind::Http { path, .. } => {
                                            format!("http :{port}{path}")
                                        }
                                        ProbeKind::Tcp => format!("tcp :{port}"),
                                    };
                                    format!(
                                        "health {kind} every {} (fall {}, rise {})",
                                        format_duration(health.interval),
                                        health.fall,
                                        health.rise
                                    )
                                }
                            };
                            let _ = writeln!(
                                out,
                                "      {} {} weight {}, {}",
                                t.region, t.address, t.weight, check
                            );
                        }
                    }
                }
            }
        }
    }
}

fn show_value(v: &StaticValue) -> String {
    match v {
        StaticValue::A(a) => a.to_string(),
        StaticValue::Aaaa(a) => a.to_string(),
        StaticValue::Cname(n) => n.clone(),
        StaticValue::Txt(t) => format!("{t:?}"),
        StaticValue::Mx {
            preference,
            exchange,
        } => format!("{preference} {exchange}"),
    }
}

/// `addr` with every bit past `prefix_len` cleared.
pub fn truncate(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if prefix_len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix_len.min(32)))
            };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if prefix_len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix_len.min(128)))
            };
            IpAddr::V6((bits & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_name("WWW.Example.COM.").unwrap(), "www.example.com");
        assert_eq!(parse_name(".").unwrap(), "");
        assert!(parse_name("a..b").is_err());
        assert!(parse_name("a b").is_err());
        assert!(parse_name(&"x".repeat(64)).is_err());
        assert_eq!(owner_name("@", "example.com").unwrap(), "example.com");
        assert_eq!(owner_name("api", "example.com").unwrap(), "api.example.com");
        assert_eq!(
            owner_name("API.example.com.", "example.com").unwrap(),
            "api.example.com"
        );
        assert!(owner_name("api.example.org.", "example.com").is_err());
        assert!(owner_name("badexample.com.", "example.com").is_err());
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_prefix("10.1.0.0/16").unwrap(),
            ("10.1.0.0".parse().unwrap(), 16)
        );
        assert!(parse_prefix("10.1.2.3/16")
            .unwrap_err()
            .contains("10.1.0.0/16"));
        assert!(parse_prefix("10.1.0.0/33").is_err());
        assert!(parse_prefix("10.1.0.0").is_err());
        assert_eq!(parse_prefix("2001:db8::/32").unwrap().1, 32);
    }

    #[test]
    fn static_values() {
        assert_eq!(
            parse_value("MX", "10 Mail.Example.com.").unwrap(),
            StaticValue::Mx {
                preference: 10,
                exchange: "mail.example.com".into()
            }
        );
        assert!(parse_value("MX", "mail.example.com").is_err());
        assert!(parse_value("A", "::1").is_err());
        assert!(parse_value("AAAA", "::1").is_ok());
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let n = Network {
            addr: "127.0.1.0".parse().unwrap(),
            prefix_len: 24,
            region: "x".into(),
        };
        assert!(n.contains("127.0.1.200".parse().unwrap()));
        assert!(!n.contains("127.0.2.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
    }
}

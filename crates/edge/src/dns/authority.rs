//! The zones the edge is authoritative for, compiled from the configuration
//! into wire-ready records, and the function that answers one query.
//!
//! [`Authority::respond`] takes the raw bytes of a query and returns the raw
//! bytes of the response (or nothing, for packets that must not be answered).
//! It never panics on input: anything it cannot parse gets FORMERR when the
//! header is readable and is dropped otherwise. Policy records ask
//! `tern_core::dns::select` for their targets on every query, so an answer
//! follows health as soon as a probe changes it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, TXT};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use serde::Serialize;
use tern_core::config::dns::{
    DnsConfig, DnsPolicy, Network, PolicyRecord, RecordData, StaticValue, TargetCheck, Zone,
};
use tern_core::config::{AllUnhealthy, HealthCheck};
use tern_core::dns::{client_network, ecs_scope, select, truncate, Selection, TargetView};
use tern_core::health::{HealthState, HealthTracker};

use crate::metrics::{DnsRecordCounters, DnsResponseCounters, Metrics};
use crate::service::ServiceState;

/// The largest UDP response the server sends, whatever a client advertises:
/// the DNS flag day 2020 value, which avoids IP fragmentation.
pub const UDP_PAYLOAD_MAX: u16 = 1232;
/// CNAME chains are followed at most this far inside the server's zones.
const MAX_CNAME_CHAIN: usize = 8;

/// How a query reached the server; UDP responses are size-limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What an answer depended on, noted by [`Authority::respond_noting`].
#[derive(Debug, Clone, Default)]
pub struct Dependencies {
    /// The same query from the same network would get the same bytes while
    /// the policies below keep their targets' health (false for weighted
    /// draws, ECS echoes and malformed queries).
    pub reusable: bool,
    /// Policy records consulted, with the outcome counted for each.
    pub policies: Vec<(usize, Outcome)>,
    pub rcode: ResponseCode,
    pub truncated: bool,
}

/// How a policy record answered one query, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Healthy,
    Degraded,
    FailClosed,
}

/// The health of one target of a policy record.
pub enum TargetHealth {
    /// No health check: always healthy.
    Always,
    /// Follows a service backend's active health checks.
    Backend { service: usize, backend: usize },
    /// A probe of its own, run by `dns::probe`.
    Probe(Box<ProbeHealth>),
}

pub struct ProbeHealth {
    pub port: u16,
    pub check: HealthCheck,
    pub tracker: Mutex<HealthTracker>,
    /// Mirrors the tracker's state so that the query path reads one atomic.
    pub up: AtomicBool,
}

pub struct TargetState {
    pub address: IpAddr,
    pub region: String,
    pub weight: u32,
    pub health: TargetHealth,
    /// The share of answers, percent, a drill moves away from this
    /// target's region (from the committed routing table).
    pub evacuated: std::sync::atomic::AtomicU8,
    /// The target's answer record, built once; only the TTL is the record's.
    record: Record,
}

impl TargetState {
    pub fn healthy(&self, services: &[ServiceState]) -> bool {
        match &self.health {
            TargetHealth::Always => true,
            TargetHealth::Backend { service, backend } => {
                services[*service].backends[*backend]
                    .health
                    .lock()
                    .expect("health lock")
                    .state()
                    == HealthState::Up
            }
            TargetHealth::Probe(p) => p.up.load(Ordering::Relaxed),
        }
    }

    pub fn check_name(&self) -> String {
        match &self.health {
            TargetHealth::Always => "none".to_string(),
            TargetHealth::Backend { .. } => "service backend".to_string(),
            TargetHealth::Probe(p) => format!("probe :{}", p.port),
        }
    }
}

/// A policy record and its targets.
pub struct PolicyState {
    /// Fully qualified, lower case, without the trailing dot.
    pub name: String,
    pub ttl: u32,
    pub policy: DnsPolicy,
    pub ipv6: bool,
    pub when_all_unhealthy: AllUnhealthy,
    pub targets: Vec<TargetState>,
    counters: DnsRecordCounters,
}

impl PolicyState {
    pub fn record_type(&self) -> &'static str {
        if self.ipv6 {
            "AAAA"
        } else {
            "A"
        }
    }

    pub fn count(&self, outcome: Outcome) {
        self.count_n(outcome, 1);
    }

    pub fn count_n(&self, outcome: Outcome, n: u64) {
        match outcome {
            Outcome::Healthy => self.counters.healthy.inc_by(n),
            Outcome::Degraded => self.counters.degraded.inc_by(n),
            Outcome::FailClosed => self.counters.fail_closed.inc_by(n),
        };
    }

    /// One bit per target, set when healthy; `None` past 64 targets, and
    /// while a drill evacuates a target's region (its answers are draws).
    pub fn health_mask(&self, services: &[ServiceState]) -> Option<u64> {
        if self.targets.len() > 64
            || self
                .targets
                .iter()
                .any(|t| t.evacuated.load(Ordering::Relaxed) > 0)
        {
            return None;
        }
        Some(
            self.targets
                .iter()
                .enumerate()
                .filter(|(_, t)| t.healthy(services))
                .fold(0, |m, (i, _)| m | 1 << i),
        )
    }

    /// The selection for a client in `client_region`, reading health now.
    pub fn select(
        &self,
        services: &[ServiceState],
        client_region: Option<&str>,
        random: u64,
    ) -> Selection {
        let views: Vec<TargetView<'_>> = self
            .targets
            .iter()
            .map(|t| TargetView {
                region: &t.region,
                weight: t.weight,
                healthy: t.healthy(services),
                evacuated: t.evacuated.load(Ordering::Relaxed),
            })
            .collect();
        select(
            self.policy,
            self.when_all_unhealthy,
            &views,
            client_region,
            random,
        )
    }
}

struct CompiledZone {
    origin: LowerName,
    soa: Record,
    ns: Vec<Record>,
    /// TTL of negative answers: the smaller of the SOA's TTL and its minimum (RFC 2308).
    negative_ttl: u32,
}

/// Everything owned by one name in a zone.
#[derive(Default)]
struct NameEntry {
    zone: usize,
    statics: Vec<Record>,
    /// Indexes into `Authority::policies`.
    policies: Vec<usize>,
    cname: Option<Name>,
}

pub struct Authority {
    zones: Vec<CompiledZone>,
    networks: Vec<Network>,
    pub policies: Vec<PolicyState>,
    names: HashMap<LowerName, NameEntry>,
    responses: DnsResponseCounters,
}

/// Seconds of a TTL, saturating (the configuration bounds TTLs to a week).
fn secs(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn name(text: &str) -> Name {
    // The configuration validated every name; the root is the fallback.
    let mut n = Name::from_ascii(text).unwrap_or_else(|_| Name::root());
    n.set_fqdn(true);
    n
}

impl Authority {
    /// Takes the committed routing table's evacuation shares (region to
    /// percent; absent: 0) for every policy record's targets.
    pub fn set_evacuation(&self, shares: &std::collections::BTreeMap<String, u8>) {
        for p in &self.policies {
            for t in &p.targets {
                let share = shares.get(&t.region).copied().unwrap_or(0);
                t.evacuated.store(share, Ordering::Relaxed);
            }
        }
    }

    /// Compiles the zones. `services` resolves targets that follow a service backend.
    pub fn new(
        config: &DnsConfig,
        services: &[ServiceState],
        metrics: &Metrics,
        now: std::time::Duration,
    ) -> Authority {
        let mut zones = Vec::new();
        let mut names: HashMap<LowerName, NameEntry> = HashMap::new();
        let mut policies = Vec::new();
        for (zi, z) in config.zones.iter().enumerate() {
            zones.push(compile_zone(z));
            let origin = LowerName::new(&name(&z.name));
            names.entry(origin).or_default().zone = zi;
            for r in &z.records {
                let owner = name(&r.name);
                // Every name between the owner and the apex exists (empty
                // non-terminals answer NODATA, not NXDOMAIN).
                let mut up = owner.clone();
                while up.num_labels() > 0 && LowerName::new(&up) != LowerName::new(&name(&z.name)) {
                    names.entry(LowerName::new(&up)).or_default().zone = zi;
                    up = up.base_name();
                }
                let entry = names.entry(LowerName::new(&owner)).or_default();
                entry.zone = zi;
                let ttl = secs(r.ttl);
                match &r.data {
                    RecordData::Static(values) => {
                        for v in values {
                            if let StaticValue::Cname(target) = v {
                                entry.cname = Some(name(target));
                            }
                            entry.statics.push(Record::from_rdata(
                                owner.clone(),
                                ttl,
                                static_rdata(v),
                            ));
                        }
                    }
                    RecordData::Policy(p) => {
                        entry.policies.push(policies.len());
                        policies.push(compile_policy(
                            &r.name, &owner, ttl, p, services, metrics, now,
                        ));
                    }
                }
            }
        }
        Authority {
            zones,
            networks: config.networks.clone(),
            policies,
            names,
            responses: metrics.dns_responses(),
        }
    }

    /// Answers one query. `None` means send nothing: packets too short to
    /// carry a header, and responses (answering those invites loops).
    pub fn respond(
        &self,
        services: &[ServiceState],
        query: &[u8],
        src: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        self.respond_noting(
            services,
            query,
            src,
            transport,
            &mut Dependencies::default(),
        )
    }

    /// [`Authority::respond`], noting in `deps` what the answer depended on
    /// so that a cache can tell when it would still be the same.
    pub fn respond_noting(
        &self,
        services: &[ServiceState],
        query: &[u8],
        src: SocketAddr,
        transport: Transport,
        deps: &mut Dependencies,
    ) -> Option<Vec<u8>> {
        deps.reusable = true;
        if query.len() < 12 || query[2] & 0x80 != 0 {
            self.responses.dropped.inc();
            deps.reusable = false;
            return None;
        }
        let request = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) => {
                deps.reusable = false;
                return Some(self.header_only(query, ResponseCode::FormErr));
            }
        };
        if request.metadata.message_type != MessageType::Query {
            self.responses.dropped.inc();
            deps.reusable = false;
            return None;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        response.add_queries(request.queries.iter().cloned());
        let mut max_size: usize = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => 512,
        };
        if let Some(req_edns) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(UDP_PAYLOAD_MAX);
            edns.set_version(0);
            if transport == Transport::Udp {
                max_size = usize::from(req_edns.max_payload().clamp(512, UDP_PAYLOAD_MAX));
            }
            if req_edns.version() > 0 {
                response.set_edns(edns);
                return Some(self.finish(response, ResponseCode::BADVERS, max_size, deps));
            }
            response.set_edns(edns);
        }
        if request.metadata.op_code != OpCode::Query {
            return Some(self.finish(response, ResponseCode::NotImp, max_size, deps));
        }
        if request.queries.len() != 1 {
            return Some(self.finish(response, ResponseCode::FormErr, max_size, deps));
        }
        let ecs = match request_subnet(&request) {
            Ok(ecs) => ecs,
            Err(()) => return Some(self.finish(response, ResponseCode::FormErr, max_size, deps)),
        };
        if ecs.is_some() {
            // The echoed option carries the client's subnet.
            deps.reusable = false;
        }
        let rcode = self.answer(services, &request.queries[0], ecs, src, &mut response, deps);
        Some(self.finish(response, rcode, max_size, deps))
    }

    /// Fills the answer and authority sections; returns the response code.
    fn answer(
        &self,
        services: &[ServiceState],
        query: &Query,
        ecs: Option<ClientSubnet>,
        src: SocketAddr,
        response: &mut Message,
        deps: &mut Dependencies,
    ) -> ResponseCode {
        if query.query_class() != DNSClass::IN && query.query_class() != DNSClass::ANY {
            return ResponseCode::Refused;
        }
        let qtype = query.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            // Zones come from the configuration file; no zone transfers.
            return ResponseCode::Refused;
        }
        let mut qname = LowerName::new(query.name());
        let Some(zi) = self.zone_of(&qname) else {
            return ResponseCode::Refused;
        };
        response.metadata.authoritative = true;
        // The client's location: the ECS subnet when it carries one, else the resolver.
        let client_addr = match &ecs {
            Some(s) if s.source_prefix() > 0 => s.addr(),
            _ => src.ip(),
        };
        let network = client_network(&self.networks, client_addr);
        let client_region = network.map(|n| n.region.as_str());
        let mut location_dependent = false;
        let mut rcode = ResponseCode::NoError;
        let mut zone = zi;
        // Names this chain has passed: a loop (refused by the configuration
        // check, guarded here too) ends the chain instead of repeating records.
        let mut passed: Vec<LowerName> = Vec::new();
        for _ in 0..MAX_CNAME_CHAIN {
            if passed.contains(&qname) {
                break;
            }
            passed.push(qname.clone());
            let Some(entry) = self.names.get(&qname) else {
                rcode = ResponseCode::NXDomain;
                break;
            };
            zone = entry.zone;
            let at_apex = self.zones[zone].origin == qname;
            if let Some(target) = &entry.cname {
                if qtype != RecordType::CNAME && qtype != RecordType::ANY {
                    response.answers.extend(entry.statics.iter().cloned());
                    let next = LowerName::new(target);
                    match self.zone_of(&next) {
                        Some(_) => {
                            qname = next;
                            continue;
                        }
                        None => break,
                    }
                }
            }
            let any = qtype == RecordType::ANY;
            if at_apex && (any || qtype == RecordType::SOA) {
                response.answers.push(self.zones[zone].soa.clone());
            }
            if at_apex && (any || qtype == RecordType::NS) {
                response.answers.extend(self.zones[zone].ns.iter().cloned());
            }
            response.answers.extend(
                entry
                    .statics
                    .iter()
                    .filter(|r| any || r.record_type() == qtype)
                    .cloned(),
            );
            for pi in &entry.policies {
                let p = &self.policies[*pi];
                let ptype = if p.ipv6 {
                    RecordType::AAAA
                } else {
                    RecordType::A
                };
                if !(any || ptype == qtype) {
                    continue;
                }
                location_dependent |= p.policy.location_dependent();
                // A weighted answer is a fresh draw each time.
                deps.reusable &= p.policy != DnsPolicy::Weighted;
                match p.select(services, client_region, fastrand::u64(..)) {
                    Selection::FailClosed => {
                        p.count(Outcome::FailClosed);
                        deps.policies.push((*pi, Outcome::FailClosed));
                        rcode = ResponseCode::ServFail;
                    }
                    Selection::Answer { targets, degraded } => {
                        let outcome = if degraded {
                            Outcome::Degraded
                        } else {
                            Outcome::Healthy
                        };
                        p.count(outcome);
                        deps.policies.push((*pi, outcome));
                        for t in targets {
                            let mut r = p.targets[t].record.clone();
                            r.ttl = p.ttl;
                            response.answers.push(r);
                        }
                    }
                }
            }
            break;
        }
        if rcode == ResponseCode::ServFail {
            // Failing closed: no answer, and nothing authoritative about it.
            response.answers.clear();
            response.metadata.authoritative = false;
        } else if response.answers.is_empty() || rcode == ResponseCode::NXDomain {
            // NODATA or NXDOMAIN: the SOA tells resolvers how long to cache that.
            let z = &self.zones[zone];
            let mut soa = z.soa.clone();
            soa.ttl = z.negative_ttl;
            response.authorities.push(soa);
        }
        if let (Some(s), Some(edns)) = (ecs, response.edns.as_mut()) {
            let scope = ecs_scope(location_dependent, network, s.source_prefix());
            edns.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::new(
                    s.addr(),
                    s.source_prefix(),
                    scope,
                )));
        }
        rcode
    }

    /// Index of the configured network a client address belongs to, if any.
    pub fn network_index(&self, addr: IpAddr) -> Option<usize> {
        let n = client_network(&self.networks, addr)?;
        self.networks.iter().position(|x| std::ptr::eq(x, n))
    }

    pub fn responses(&self) -> &DnsResponseCounters {
        &self.responses
    }

    /// The zone a name belongs to: the longest origin that is a suffix of it.
    fn zone_of(&self, qname: &LowerName) -> Option<usize> {
        self.zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.origin.zone_of(qname))
            .max_by_key(|(_, z)| z.origin.num_labels())
            .map(|(i, _)| i)
    }

    /// Sets the code, encodes, and truncates to `max_size` (TC set, only the
    /// question and OPT kept) so that the client retries over TCP.
    fn finish(
        &self,
        mut response: Message,
        rcode: ResponseCode,
        max_size: usize,
        deps: &mut Dependencies,
    ) -> Vec<u8> {
        response.metadata.response_code = rcode;
        self.responses.count(rcode);
        deps.rcode = rcode;
        let mut out = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut out);
        encoder.set_max_size(max_size as u16);
        let fits = response.emit(&mut encoder).is_ok() && out.len() > 2 && out[2] & 0x02 == 0;
        if fits {
            return out;
        }
        self.responses.truncated.inc();
        deps.truncated = true;
        let mut out = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut out);
        encoder.set_max_size(max_size as u16);
        if response.truncate().emit(&mut encoder).is_ok() {
            return out;
        }
        // A question too large for the size: a bare header still fits.
        let mut out = Vec::with_capacity(12);
        let mut bare = response.truncate();
        bare.queries.clear();
        bare.edns = None;
        let _ = bare.emit(&mut BinEncoder::new(&mut out));
        out
    }

    /// A header-only response for a query that could not be parsed.
    fn header_only(&self, query: &[u8], rcode: ResponseCode) -> Vec<u8> {
        self.responses.count(rcode);
        let mut out = vec![0u8; 12];
        out[0] = query[0];
        out[1] = query[1];
        // QR, the query's opcode and RD; no other flag.
        out[2] = 0x80 | (query[2] & 0x78) | (query[2] & 0x01);
        out[3] = rcode.low() & 0x0f;
        out
    }

    /// What each policy record answers now, for `/status`.
    pub fn status(&self, services: &[ServiceState]) -> Vec<DnsRecordStatus> {
        let mut regions: Vec<&str> = self.networks.iter().map(|n| n.region.as_str()).collect();
        regions.sort();
        regions.dedup();
        self.policies
            .iter()
            .map(|p| {
                let show = |sel: Selection| -> (Vec<String>, bool, bool) {
                    match sel {
                        Selection::FailClosed => (Vec::new(), true, true),
                        Selection::Answer { targets, degraded } => (
                            targets
                                .iter()
                                .map(|t| p.targets[*t].address.to_string())
                                .collect(),
                            degraded,
                            false,
                        ),
                    }
                };
                let (answer, all_unhealthy, fail_closed) = show(p.select(services, None, 0));
                let answer_by_client_region = if p.policy.location_dependent() {
                    regions
                        .iter()
                        .map(|r| (r.to_string(), show(p.select(services, Some(r), 0)).0))
                        .collect()
                } else {
                    Vec::new()
                };
                DnsRecordStatus {
                    name: p.name.clone(),
                    record_type: p.record_type(),
                    policy: p.policy.as_str(),
                    ttl: p.ttl,
                    when_all_unhealthy: p.when_all_unhealthy.as_str(),
                    all_unhealthy,
                    fail_closed,
                    answer,
                    answer_by_client_region,
                    targets: p
                        .targets
                        .iter()
                        .map(|t| DnsTargetStatus {
                            address: t.address.to_string(),
                            region: t.region.clone(),
                            weight: t.weight,
                            health_check: t.check_name(),
                            healthy: t.healthy(services),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// The query's ECS option, checked as RFC 7871 section 7.1.2 asks: a source
/// prefix no longer than the address family allows and no address bits set
/// beyond it.
fn request_subnet(request: &Message) -> Result<Option<ClientSubnet>, ()> {
    let Some(edns) = &request.edns else {
        return Ok(None);
    };
    match edns.option(EdnsCode::Subnet) {
        Some(EdnsOption::Subnet(s)) => {
            let max = if s.addr().is_ipv4() { 32 } else { 128 };
            if s.source_prefix() > max
                || s.scope_prefix() != 0
                || truncate(s.addr(), s.source_prefix()) != s.addr()
            {
                return Err(());
            }
            Ok(Some(*s))
        }
        Some(_) => Err(()),
        None => Ok(None),
    }
}

fn compile_zone(z: &Zone) -> CompiledZone {
    let origin = name(&z.name);
    let ttl = secs(z.ttl);
    let primary = z.ns.first().map_or_else(|| origin.clone(), |n| name(n));
    let clamp = |d: std::time::Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
    let soa = Record::from_rdata(
        origin.clone(),
        ttl,
        RData::SOA(SOA::new(
            primary,
            name(&z.hostmaster),
            z.serial,
            clamp(z.refresh),
            clamp(z.retry),
            clamp(z.expire),
            secs(z.negative_ttl),
        )),
    );
    let ns =
        z.ns.iter()
            .map(|n| Record::from_rdata(origin.clone(), ttl, RData::NS(NS(name(n)))))
            .collect();
    CompiledZone {
        origin: LowerName::new(&origin),
        soa,
        ns,
        negative_ttl: ttl.min(secs(z.negative_ttl)),
    }
}

fn static_rdata(v: &StaticValue) -> RData {
    match v {
        StaticValue::A(a) => RData::A(A(*a)),
        StaticValue::Aaaa(a) => RData::AAAA(AAAA(*a)),
        StaticValue::Cname(n) => RData::CNAME(CNAME(name(n))),
        StaticValue::Txt(t) => {
            // A character-string holds at most 255 bytes; longer text is split.
            let chunks = t
                .as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            RData::TXT(TXT::new(chunks))
        }
        StaticValue::Mx {
            preference,
            exchange,
        } => RData::MX(MX::new(*preference, name(exchange))),
    }
}

#[allow(clippy::too_many_arguments)]
fn compile_policy(
    display: &str,
    owner: &Name,
    ttl: u32,
    p: &PolicyRecord,
    services: &[ServiceState],
    metrics: &Metrics,
    now: std::time::Duration,
) -> PolicyState {
    let targets = p
        .targets
        .iter()
        .map(|t| {
            let rdata = match t.address {
                IpAddr::V4(a) => RData::A(A(a)),
                IpAddr::V6(a) => RData::AAAA(AAAA(a)),
            };
            let health = match &t.check {
                TargetCheck::None => TargetHealth::Always,
                TargetCheck::Service(svc) => services
                    .iter()
                    .enumerate()
                    .find(|(_, s)| &s.config.name == svc)
                    .and_then(|(si, s)| {
                        s.backends
                            .iter()
                            .position(|b| b.config.region == t.region)
                            .map(|bi| TargetHealth::Backend {
                                service: si,
                                backend: bi,
                            })
                    })
                    .unwrap_or(TargetHealth::Always),
                TargetCheck::Probe { port, health } => TargetHealth::Probe(Box::new(ProbeHealth {
                    port: *port,
                    check: health.clone(),
                    tracker: Mutex::new(HealthTracker::new(
                        health.fall,
                        health.rise,
                        HealthState::Up,
                        now,
                    )),
                    up: AtomicBool::new(true),
                })),
            };
            TargetState {
                address: t.address,
                region: t.region.clone(),
                weight: t.weight,
                health,
                evacuated: std::sync::atomic::AtomicU8::new(0),
                record: Record::from_rdata(owner.clone(), ttl, rdata),
            }
        })
        .collect();
    PolicyState {
        name: display.to_string(),
        ttl,
        policy: p.policy,
        ipv6: p.ipv6,
        when_all_unhealthy: p.when_all_unhealthy,
        targets,
        counters: metrics.dns_record(
            display,
            if p.ipv6 { "AAAA" } else { "A" },
            p.policy.as_str(),
        ),
    }
}

#[derive(Debug, Serialize)]
pub struct DnsRecordStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub record_type: &'static str,
    pub policy: &'static str,
    pub ttl: u32,
    pub when_all_unhealthy: &'static str,
    /// No target is healthy; the answer below ignores health (fail-open) or is empty.
    pub all_unhealthy: bool,
    /// Queries get SERVFAIL now.
    pub fail_closed: bool,
    /// What a client from no configured network gets now (weighted: one draw).
    pub answer: Vec<String>,
    /// For latency and multivalue records: what clients of each region get now.
    pub answer_by_client_region: Vec<(String, Vec<String>)>,
    pub targets: Vec<DnsTargetStatus>,
}

#[derive(Debug, Serialize)]
pub struct DnsTargetStatus {
    pub address: String,
    pub region: String,
    pub weight: u32,
    pub health_check: String,
    pub healthy: bool,
}

//! Clients that find the edges through tern's DNS instead of knowing them.
//!
//! Each edge of the lab also serves the zone `lab.` with a multivalue record
//! `payments.lab.` whose targets are the edges, each healthy while that
//! edge sees its region's payments service healthy (the same checks its HTTP
//! routing uses). A [`StubResolver`] asks its own region's edge first, then
//! the others, caches the answer for its TTL (or, for the share of clients
//! that stretch TTLs, for longer) and serves a stale answer when no server
//! answers. A DNS client then tries the answered addresses in order, the way
//! `getaddrinfo` plus a connect loop does. Every request becomes a
//! [`DnsRequestRecord`] naming the regions it tried, so the oracle can say how
//! long clients kept reaching a dead region on the DNS path.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::load::{self, ClientSpec, EdgePath, RequestRecord};
use crate::wan::{Fault, Wan};

/// The name DNS clients resolve.
pub const NAME: &str = "payments.lab";

/// How a DNS client treats TTLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TtlBehaviour {
    /// Caches an answer for its TTL.
    Honours,
    /// Caches an answer for at least this long, whatever its TTL (some
    /// resolvers and client libraries do).
    Stretches(Duration),
}

impl TtlBehaviour {
    pub fn group(&self) -> &'static str {
        match self {
            TtlBehaviour::Honours => "dns, honours TTL",
            TtlBehaviour::Stretches(_) => "dns, keeps answers longer",
        }
    }
}

/// One DNS server the stub can ask: a region's edge.
#[derive(Debug, Clone)]
pub struct DnsServer {
    pub region: String,
    pub addr: SocketAddr,
}

struct Cached {
    addrs: Vec<Ipv4Addr>,
    expires: Instant,
}

/// A stub resolver with a cache, located in one region.
pub struct StubResolver {
    /// Nearest first.
    servers: Vec<DnsServer>,
    /// Queries leave from this address, so the server maps them to the client's region.
    bind_ip: IpAddr,
    behaviour: TtlBehaviour,
    /// A region's DNS server is dark when the WAN cuts the client from it.
    wan: Wan,
    client_label: String,
    timeout: Duration,
    cache: Option<Cached>,
    next_id: u16,
}

impl StubResolver {
    pub fn new(
        servers: Vec<DnsServer>,
        bind_ip: IpAddr,
        behaviour: TtlBehaviour,
        wan: Wan,
        client_label: String,
        seed: u64,
    ) -> StubResolver {
        StubResolver {
            servers,
            bind_ip,
            behaviour,
            wan,
            client_label,
            timeout: Duration::from_millis(500),
            cache: None,
            next_id: seed as u16,
        }
    }

    /// The addresses of `name`, from the cache while it is fresh.
    pub async fn resolve(&mut self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let now = Instant::now();
        if let Some(c) = &self.cache {
            if c.expires > now {
                return Some(c.addrs.clone());
            }
        }
        for server in self.servers.clone() {
            if self.wan.fault_between(&self.client_label, &server.region) != Fault::None {
                // A dark region's server does not answer: the stub waits it out.
                tokio::time::sleep(self.timeout).await;
                continue;
            }
            self.next_id = self.next_id.wrapping_add(1);
            if let Some((addrs, ttl)) = self.query(server.addr, name, self.next_id).await {
                let keep = match self.behaviour {
                    TtlBehaviour::Honours => ttl,
                    TtlBehaviour::Stretches(at_least) => ttl.max(at_least),
                };
                self.cache = Some(Cached {
                    addrs: addrs.clone(),
                    expires: Instant::now() + keep,
                });
                return Some(addrs);
            }
        }
        // No server answered: serve the stale answer rather than nothing (RFC 8767).
        self.cache.as_ref().map(|c| c.addrs.clone())
    }

    async fn query(
        &self,
        server: SocketAddr,
        name: &str,
        id: u16,
    ) -> Option<(Vec<Ipv4Addr>, Duration)> {
        let socket = UdpSocket::bind(SocketAddr::new(self.bind_ip, 0))
            .await
            .ok()?;
        socket.send_to(&build_query(name, id), server).await.ok()?;
        let mut buf = [0u8; 1500];
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let (n, _) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                return parse_answer(&buf[..n]);
            }
        }
    }
}

/// A plain A query with recursion not desired.
pub fn build_query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]);
    q
}

/// The A records of a NOERROR response and their smallest TTL; `None` for
/// anything else (an error code, no address, a malformed packet).
pub fn parse_answer(msg: &[u8]) -> Option<(Vec<Ipv4Addr>, Duration)> {
    if msg.len() < 12 || msg[2] & 0x80 == 0 || msg[3] & 0x0f != 0 {
        return None;
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(msg, i)? + 4;
    }
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for _ in 0..an {
        i = skip_name(msg, i)?;
        let head = msg.get(i..i + 10)?;
        let rtype = u16::from_be_bytes([head[0], head[1]]);
        let rttl = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let len = usize::from(u16::from_be_bytes([head[8], head[9]]));
        i += 10;
        let data = msg.get(i..i + len)?;
        if rtype == 1 && len == 4 {
            addrs.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
            ttl = ttl.min(rttl);
        }
        i += len;
    }
    if addrs.is_empty() {
        return None;
    }
    Some((addrs, Duration::from_secs(u64::from(ttl))))
}

fn skip_name(msg: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *msg.get(i)?;
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(i + 2);
        }
        i += 1 + usize::from(len);
    }
}

/// One request of a DNS client, as the oracle needs it.
#[derive(Debug, Clone, Serialize)]
pub struct DnsRequestRecord {
    pub group: &'static str,
    /// Regions whose edges this request tried, in order.
    pub tried: Vec<String>,
    /// The resolver had no answer at all.
    pub unresolved: bool,
    pub record: RequestRecord,
}

pub struct DnsClientSpec {
    pub id: usize,
    pub region: String,
    pub resolver: StubResolver,
    /// The path from this client's region to each edge, by the edge's IP.
    pub paths: Vec<(IpAddr, EdgePath)>,
    pub pace: Duration,
    pub edge_timeout: Duration,
    pub seed: u64,
}

/// Runs one DNS client until `stop`, sending every record to `out`.
pub async fn run_dns_client(
    mut spec: DnsClientSpec,
    t0: Instant,
    stop: CancellationToken,
    out: mpsc::UnboundedSender<DnsRequestRecord>,
) {
    let group = spec.resolver.behaviour.group();
    let client = load::client(spec.edge_timeout);
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let mut seq = 0u64;
    let mut next =
        Instant::now() + Duration::from_millis(rng.u64(0..spec.pace.as_millis().max(1) as u64));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        next += spec.pace;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        seq += 1;
        let started = Instant::now();
        let answer = spec.resolver.resolve(NAME).await.unwrap_or_default();
        let edges: Vec<EdgePath> = answer
            .iter()
            .filter_map(|ip| {
                spec.paths
                    .iter()
                    .find(|(edge_ip, _)| *edge_ip == IpAddr::V4(*ip))
                    .map(|(_, p)| p.clone())
            })
            .collect();
        let record = if edges.is_empty() {
            DnsRequestRecord {
                group,
                tried: Vec::new(),
                unresolved: true,
                record: load::failed_record(
                    &spec.region,
                    t0,
                    started,
                    "no address for the name".into(),
                ),
            }
        } else {
            let request_spec = ClientSpec {
                id: spec.id,
                region: spec.region.clone(),
                edges: edges.clone(),
                pace: spec.pace,
                edge_timeout: spec.edge_timeout,
                avoid_for: Duration::ZERO,
                seed: spec.seed,
            };
            // The addresses are tried in answer order every time, as a
            // connect loop over getaddrinfo's list does.
            let mut avoid = vec![None; edges.len()];
            let mut record =
                load::one_request(&request_spec, &client, &mut rng, &mut avoid, seq, None, t0)
                    .await;
            record.latency_ms = started.elapsed().as_secs_f64() * 1_000.0;
            let tried = edges
                .iter()
                .take(usize::from(record.edges_tried))
                .map(|e| e.region.clone())
                .collect();
            DnsRequestRecord {
                group,
                tried,
                unresolved: false,
                record,
            }
        };
        if out.send(record).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_answers_round_trip_through_the_wire_format() {
        let q = build_query("payments.lab", 0x1234);
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(&q[12..], b"\x08payments\x03lab\x00\x00\x01\x00\x01");
        // A response: the question, then two A records compressed onto it.
        let mut r = q.clone();
        r[2] = 0x84;
        r[7] = 2;
        for (ttl, ip) in [(7u32, [127, 0, 2, 1]), (5, [127, 0, 1, 1])] {
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            r.extend_from_slice(&ttl.to_be_bytes());
            r.extend_from_slice(&[0, 4]);
            r.extend_from_slice(&ip);
        }
        let (addrs, ttl) = parse_answer(&r).unwrap();
        assert_eq!(
            addrs,
            [Ipv4Addr::new(127, 0, 2, 1), Ipv4Addr::new(127, 0, 1, 1)]
        );
        assert_eq!(ttl, Duration::from_secs(5), "the smallest TTL counts");
        // SERVFAIL, a query, or a cut packet is no answer.
        let mut servfail = r.clone();
        servfail[3] = 2;
        assert_eq!(parse_answer(&servfail), None);
        assert_eq!(parse_answer(&q), None);
        assert_eq!(parse_answer(&r[..r.len() - 2]), None);
    }
}

//! Hostile input never crashes the DNS server: random bytes and mutations of
//! real queries go through `Authority::respond` for a bounded time (seeded,
//! so a failure replays), and every answer it sends is a well-formed
//! response to the query's ID. Named packets that once could go wrong are
//! checked one by one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};
use tern_core::config::Config;
use tern_edge::dns::authority::{Authority, Transport};
use tern_edge::metrics::Metrics;

const CONFIG: &str = r#"
[[region]]
name = "a"
[[region]]
name = "b"
[edge]
region = "a"
listen = "127.0.0.1:0"
[dns]
listen = "127.0.0.1:0"
[[dns.network]]
prefix = "10.0.0.0/8"
region = "b"
[[dns.zone]]
name = "example.com"
ns = ["ns1.example.com"]
[[dns.zone.record]]
name = "www"
type = "CNAME"
values = ["api.example.com"]
[[dns.zone.record]]
name = "txt"
type = "TXT"
values = ["hello", "world"]
[[dns.zone.record]]
name = "api"
type = "A"
policy = "multivalue"
[[dns.zone.record.target]]
address = "192.0.2.1"
region = "a"
[[dns.zone.record.target]]
address = "192.0.2.2"
region = "b"
"#;

fn authority() -> Authority {
    let cfg = Config::from_toml("fuzz.toml", CONFIG).unwrap();
    Authority::new(
        cfg.dns.as_ref().unwrap(),
        &[],
        &Metrics::new(),
        Duration::ZERO,
    )
}

fn src() -> SocketAddr {
    "127.0.0.1:5300".parse().unwrap()
}

fn query(name: &str, kind: RecordType, ecs: Option<ClientSubnet>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x1234;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    if let Some(s) = ecs {
        edns.options_mut().insert(EdnsOption::Subnet(s));
    }
    m.set_edns(edns);
    m.to_vec().unwrap()
}

/// Whatever comes back must parse, be a response, and carry the query's ID.
fn check(auth: &Authority, packet: &[u8], transport: Transport) {
    let Some(resp) = auth.respond(&[], packet, src(), transport) else {
        return;
    };
    assert!(
        resp.len() >= 12,
        "response shorter than a header: {packet:02x?}"
    );
    assert_eq!(
        resp[..2],
        packet[..2],
        "response to another ID: {packet:02x?}"
    );
    assert!(resp[2] & 0x80 != 0, "QR not set: {packet:02x?}");
    if transport == Transport::Udp {
        assert!(
            resp.len() <= 1232,
            "UDP response over the limit: {packet:02x?}"
        );
    }
    let parsed = Message::from_vec(&resp)
        .unwrap_or_else(|e| panic!("unparsable response ({e}) to {packet:02x?}"));
    assert_eq!(parsed.metadata.message_type, MessageType::Response);
}

#[test]
fn random_bytes_and_mutated_queries_never_crash() {
    let auth = authority();
    let seeds = [
        query("api.example.com", RecordType::A, None),
        query(
            "www.example.com",
            RecordType::A,
            Some(ClientSubnet::new("10.1.0.0".parse().unwrap(), 16, 0)),
        ),
        query("txt.example.com", RecordType::ANY, None),
        query("nothing.example.com", RecordType::AAAA, None),
    ];
    // Bounded time, so CI stays fast; the seed is printed so a failure replays.
    let seed = std::env::var("TERN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7e2a_d115_u64);
    let budget = Duration::from_millis(
        std::env::var("TERN_FUZZ_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3000),
    );
    eprintln!("fuzz seed {seed}, budget {budget:?}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget {
        for _ in 0..256 {
            let packet = if rng.bool() {
                let len = rng.usize(0..600);
                let mut p: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                // Mostly queries, so parsing gets past the QR check.
                if p.len() > 2 && rng.u8(..4) != 0 {
                    p[2] &= 0x7f;
                }
                p
            } else {
                let mut p = seeds[rng.usize(..seeds.len())].clone();
                for _ in 0..rng.usize(1..6) {
                    if p.is_empty() {
                        break;
                    }
                    match rng.u8(..4) {
                        0 => {
                            let i = rng.usize(..p.len());
                            p[i] ^= 1 << rng.u8(..8);
                        }
                        1 => {
                            let i = rng.usize(..p.len());
                            p[i] = rng.u8(..);
                        }
                        2 => p.truncate(rng.usize(..=p.len())),
                        _ => {
                            let i = rng.usize(..=p.len());
                            p.insert(i, rng.u8(..));
                        }
                    }
                }
                p
            };
            let transport = if rng.bool() {
                Transport::Udp
            } else {
                Transport::Tcp
            };
            check(&auth, &packet, transport);
            runs += 1;
        }
    }
    eprintln!("{runs} packets in {:?}", started.elapsed());
    assert!(runs > 10_000, "too few packets tried: {runs}");
}

fn rcode(resp: &[u8]) -> ResponseCode {
    Message::from_vec(resp).unwrap().metadata.response_code
}

#[test]
fn named_hostile_packets() {
    let auth = authority();
    // Too short for a header: dropped.
    assert_eq!(auth.respond(&[], &[0x12], src(), Transport::Udp), None);
    // A response (QR set) is never answered: answering invites loops.
    let mut response = query("api.example.com", RecordType::A, None);
    response[2] |= 0x80;
    assert_eq!(auth.respond(&[], &response, src(), Transport::Udp), None);
    // A header claiming 65535 questions with none present: FORMERR.
    let lying = [0x12, 0x34, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0];
    let r = auth.respond(&[], &lying, src(), Transport::Udp).unwrap();
    assert_eq!(rcode(&r), ResponseCode::FormErr);
    // A compression pointer that points at itself: FORMERR, no loop.
    let mut looped = vec![0x12, 0x34, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let r = auth.respond(&[], &looped, src(), Transport::Udp).unwrap();
    assert_eq!(rcode(&r), ResponseCode::FormErr);
    // ECS with address bits beyond the source prefix: FORMERR (RFC 7871
    // 7.1.2). A /12 sends two address octets; 10.1 sets bit 16.
    let bad_ecs = query(
        "api.example.com",
        RecordType::A,
        Some(ClientSubnet::new("10.1.0.0".parse().unwrap(), 12, 0)),
    );
    let r = auth.respond(&[], &bad_ecs, src(), Transport::Udp).unwrap();
    assert_eq!(rcode(&r), ResponseCode::FormErr);
    // Two questions: FORMERR.
    let mut two = Message::query();
    two.add_query(Query::query(
        Name::from_ascii("a.example.com").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.example.com").unwrap(),
        RecordType::A,
    ));
    let r = auth
        .respond(&[], &two.to_vec().unwrap(), src(), Transport::Udp)
        .unwrap();
    assert_eq!(rcode(&r), ResponseCode::FormErr);
    // An opcode other than QUERY: NOTIMP.
    let mut notify = Message::new(7, MessageType::Query, OpCode::Notify);
    notify.add_query(Query::query(
        Name::from_ascii("example.com").unwrap(),
        RecordType::SOA,
    ));
    let r = auth
        .respond(&[], &notify.to_vec().unwrap(), src(), Transport::Udp)
        .unwrap();
    assert_eq!(rcode(&r), ResponseCode::NotImp);
    // A zone transfer is refused: zones come from the configuration file.
    let axfr = query("example.com", RecordType::AXFR, None);
    let r = auth.respond(&[], &axfr, src(), Transport::Tcp).unwrap();
    assert_eq!(rcode(&r), ResponseCode::Refused);
    // EDNS version 1: BADVERS (code 16, which hickory also names BADSIG).
    let mut v1 = Message::query();
    v1.add_query(Query::query(
        Name::from_ascii("api.example.com").unwrap(),
        RecordType::A,
    ));
    let mut edns = Edns::new();
    edns.set_version(1);
    v1.set_edns(edns);
    let r = auth
        .respond(&[], &v1.to_vec().unwrap(), src(), Transport::Udp)
        .unwrap();
    assert_eq!(u16::from(rcode(&r)), 16);
}

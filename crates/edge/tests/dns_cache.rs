//! The UDP workers' answer cache gives the same bytes an uncached answer
//! would: the question as the client spelled it, and policy answers that
//! follow health the moment it changes.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tern_core::config::Config;
use tern_edge::dns::authority::{Authority, TargetHealth, Transport};
use tern_edge::dns::cache::AnswerCache;
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
[[dns.zone]]
name = "example.com"
ns = ["ns1.example.com"]
[[dns.zone.record]]
name = "mail"
type = "A"
values = ["192.0.2.25"]
[[dns.zone.record]]
name = "api"
type = "A"
policy = "failover"
[[dns.zone.record.target]]
address = "192.0.2.1"
region = "a"
health = { port = 9, interval = "1s" }
[[dns.zone.record.target]]
address = "192.0.2.2"
region = "b"
health = { port = 9, interval = "1s" }
"#;

fn authority() -> Authority {
    let cfg = Config::from_toml("cache.toml", CONFIG).unwrap();
    Authority::new(
        cfg.dns.as_ref().unwrap(),
        &[],
        &Metrics::new(),
        Duration::ZERO,
    )
}

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

fn src() -> SocketAddr {
    "127.0.0.1:5300".parse().unwrap()
}

fn addresses(resp: &[u8]) -> Vec<String> {
    Message::from_vec(resp)
        .unwrap()
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_cached_answer_keeps_the_clients_id_and_spelling() {
    let auth = authority();
    let mut cache = AnswerCache::default();
    let first = cache
        .respond(&auth, &[], &query("mail.example.com", 1), src())
        .unwrap();
    let q = query("MaIl.ExAmPlE.cOm", 2);
    let cached = cache.respond(&auth, &[], &q, src()).unwrap();
    let uncached = auth.respond(&[], &q, src(), Transport::Udp).unwrap();
    assert_eq!(addresses(&first), ["192.0.2.25"]);
    let m = Message::from_vec(&cached).unwrap();
    assert_eq!(m.metadata.id, 2);
    assert_eq!(m.queries[0].name().to_ascii(), "MaIl.ExAmPlE.cOm.");
    // The same records; the cached copy may compress the owner name onto the
    // question and so show it in the client's spelling, which DNS allows.
    let fresh = Message::from_vec(&uncached).unwrap();
    assert_eq!(m.answers, fresh.answers);
    assert_eq!(m.metadata, fresh.metadata);
}

#[test]
fn a_cached_policy_answer_follows_health_at_once() {
    let auth = authority();
    let mut cache = AnswerCache::default();
    let ask = |cache: &mut AnswerCache, id| {
        addresses(
            &cache
                .respond(&auth, &[], &query("api.example.com", id), src())
                .unwrap(),
        )
    };
    assert_eq!(ask(&mut cache, 1), ["192.0.2.1"]);
    assert_eq!(ask(&mut cache, 2), ["192.0.2.1"]);
    let TargetHealth::Probe(first) = &auth.policies[0].targets[0].health else {
        panic!("the target has its own probe");
    };
    first.up.store(false, Ordering::Relaxed);
    assert_eq!(
        ask(&mut cache, 3),
        ["192.0.2.2"],
        "no stale answer after a health change"
    );
    first.up.store(true, Ordering::Relaxed);
    assert_eq!(ask(&mut cache, 4), ["192.0.2.1"]);
}

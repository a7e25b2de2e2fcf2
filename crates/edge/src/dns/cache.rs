//! A UDP worker's cache of encoded answers, so that the common query costs a
//! hash lookup and a copy instead of a parse, a selection and an encoding.
//!
//! Only plain queries use it: one question, no records other than an EDNS
//! version 0 OPT without a client subnet. The key is the question (name in
//! lower case), the EDNS payload the answer was cut to, and the configured
//! network the client is in. An entry remembers which policy records it
//! consulted and the health of their targets at the time; it is used only
//! while that health is unchanged, so an answer follows health exactly as an
//! uncached one would. Weighted answers (a fresh draw each time), ECS
//! answers and errors are never cached. Each worker owns its cache: no lock.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::authority::{Authority, Dependencies, Outcome, Transport, UDP_PAYLOAD_MAX};
use crate::service::ServiceState;

/// A worker clears its cache past this many entries (a flood of distinct
/// names must not grow it without bound).
const MAX_ENTRIES: usize = 4096;

const OPT: u16 = 41;
const ECS_OPTION: u16 = 8;

struct Entry {
    bytes: Vec<u8>,
    /// Policy records consulted, the outcome counted and their targets' health.
    policies: Vec<(usize, Outcome, u64)>,
    rcode: hickory_proto::op::ResponseCode,
    truncated: bool,
}

#[derive(Default)]
pub struct AnswerCache {
    entries: HashMap<Box<[u8]>, Entry>,
    key: Vec<u8>,
    /// Counts of answers given from the cache, added to the shared metrics
    /// by [`AnswerCache::flush_counts`] once per batch rather than once per
    /// query, so that workers do not contend on the counters' cache lines.
    pending_rcodes: Vec<(hickory_proto::op::ResponseCode, u64)>,
    pending_truncated: u64,
    pending_outcomes: Vec<((usize, Outcome), u64)>,
}

impl AnswerCache {
    /// Answers like [`Authority::respond`] over UDP, from the cache when it can.
    pub fn respond(
        &mut self,
        auth: &Authority,
        services: &[ServiceState],
        query: &[u8],
        src: SocketAddr,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.respond_into(auth, services, query, src, &mut out)
            .then_some(out)
    }

    /// [`AnswerCache::respond`] into a buffer the caller reuses; false when
    /// nothing is to be sent.
    pub fn respond_into(
        &mut self,
        auth: &Authority,
        services: &[ServiceState],
        query: &[u8],
        src: SocketAddr,
        out: &mut Vec<u8>,
    ) -> bool {
        let network = auth.network_index(src.ip());
        let Some(question_end) = plain_query(query, network, &mut self.key) else {
            return match auth.respond(services, query, src, Transport::Udp) {
                Some(v) => {
                    *out = v;
                    true
                }
                None => false,
            };
        };
        if let Some(e) = self.entries.get(self.key.as_slice()) {
            let fresh = e
                .policies
                .iter()
                .all(|(pi, _, mask)| auth.policies[*pi].health_mask(services) == Some(*mask));
            if fresh {
                out.clear();
                out.extend_from_slice(&e.bytes);
                // The query's ID, RD and CD bits, and its question as spelled.
                out[0] = query[0];
                out[1] = query[1];
                out[2] = (out[2] & !0x01) | (query[2] & 0x01);
                out[3] = (out[3] & !0x10) | (query[3] & 0x10);
                out[12..question_end].copy_from_slice(&query[12..question_end]);
                // A batch holds few kinds of answer: linear searches, no allocation.
                match self.pending_rcodes.iter_mut().find(|(r, _)| *r == e.rcode) {
                    Some((_, n)) => *n += 1,
                    None => self.pending_rcodes.push((e.rcode, 1)),
                }
                self.pending_truncated += u64::from(e.truncated);
                for (pi, outcome, _) in &e.policies {
                    let key = (*pi, *outcome);
                    match self.pending_outcomes.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, n)) => *n += 1,
                        None => self.pending_outcomes.push((key, 1)),
                    }
                }
                return true;
            }
        }
        let mut deps = Dependencies::default();
        let Some(fresh) = auth.respond_noting(services, query, src, Transport::Udp, &mut deps)
        else {
            return false;
        };
        *out = fresh;
        let same_question =
            out.len() >= question_end && out[12..question_end] == query[12..question_end];
        if deps.reusable && same_question {
            let policies: Option<Vec<(usize, Outcome, u64)>> = deps
                .policies
                .iter()
                .map(|(pi, outcome)| {
                    auth.policies[*pi]
                        .health_mask(services)
                        .map(|m| (*pi, *outcome, m))
                })
                .collect();
            if let Some(policies) = policies {
                if self.entries.len() >= MAX_ENTRIES {
                    self.entries.clear();
                }
                self.entries.insert(
                    self.key.clone().into_boxed_slice(),
                    Entry {
                        bytes: out.clone(),
                        policies,
                        rcode: deps.rcode,
                        truncated: deps.truncated,
                    },
                );
            }
        }
        true
    }
}

impl AnswerCache {
    /// Adds the counts of cached answers to the shared metrics.
    pub fn flush_counts(&mut self, auth: &Authority) {
        for (rcode, n) in self.pending_rcodes.drain(..) {
            auth.responses().count_n(rcode, n);
        }
        if self.pending_truncated > 0 {
            auth.responses().truncated.inc_by(self.pending_truncated);
            self.pending_truncated = 0;
        }
        for ((pi, outcome), n) in self.pending_outcomes.drain(..) {
            auth.policies[pi].count_n(outcome, n);
        }
    }
}

/// When `query` is plain, writes its cache key into `key` and returns where
/// its question ends; `None` sends it down the full path.
fn plain_query(query: &[u8], network: Option<usize>, key: &mut Vec<u8>) -> Option<usize> {
    key.clear();
    if query.len() < 12 + 5 {
        return None;
    }
    let flags = query[2];
    // A query (QR 0) with opcode QUERY and a zero response code.
    if flags & 0xf8 != 0 || query[3] & 0x0f != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([query[i], query[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut i = 12;
    loop {
        let len = usize::from(*query.get(i)?);
        if len == 0 {
            key.push(0);
            i += 1;
            break;
        }
        // No compression in a question we cache; labels of at most 63 bytes.
        if len > 63 || i + 1 + len > query.len() || key.len() + len + 1 > 255 {
            return None;
        }
        key.push(len as u8);
        key.extend(query[i + 1..i + 1 + len].iter().map(u8::to_ascii_lowercase));
        i += 1 + len;
    }
    // Type and class.
    key.extend_from_slice(query.get(i..i + 4)?);
    i += 4;
    let question_end = i;
    let payload = if ar == 1 {
        // OPT: root name, type 41, class = payload size, TTL = rcode, version, flags.
        let opt = query.get(i..i + 11)?;
        if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != OPT || opt[6] != 0 {
            return None;
        }
        let payload = u16::from_be_bytes([opt[3], opt[4]]).clamp(512, UDP_PAYLOAD_MAX);
        let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        i += 11;
        let options = query.get(i..i + rdlen)?;
        let mut j = 0;
        while j < options.len() {
            let head = options.get(j..j + 4)?;
            let code = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            if code == ECS_OPTION {
                return None;
            }
            j += 4 + len;
        }
        if j != options.len() {
            return None;
        }
        i += rdlen;
        payload
    } else {
        0
    };
    if i != query.len() {
        return None;
    }
    key.extend_from_slice(&payload.to_be_bytes());
    match network {
        None => key.push(0),
        Some(n) if n < 255 => key.push(n as u8 + 1),
        Some(_) => return None,
    }
    Some(question_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], edns: Option<&[u8]>) -> Vec<u8> {
        let mut q = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(edns.is_some()),
        ];
        q.extend_from_slice(name);
        q.extend_from_slice(&[0, 1, 0, 1]);
        if let Some(options) = edns {
            q.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0]);
            q.extend_from_slice(&(options.len() as u16).to_be_bytes());
            q.extend_from_slice(options);
        }
        q
    }

    #[test]
    fn keys_ignore_case_and_separate_payloads_and_networks() {
        let mut k1 = Vec::new();
        let mut k2 = Vec::new();
        let q1 = query(b"\x03API\x07example\x03com\x00", None);
        let q2 = query(b"\x03api\x07EXAMPLE\x03com\x00", None);
        assert_eq!(plain_query(&q1, None, &mut k1), Some(q1.len()));
        assert_eq!(plain_query(&q2, None, &mut k2), Some(q2.len()));
        assert_eq!(k1, k2);
        plain_query(&q2, Some(0), &mut k2);
        assert_ne!(k1, k2, "the client's network is part of the key");
        let e = query(b"\x03api\x07example\x03com\x00", Some(&[]));
        plain_query(&e, None, &mut k2);
        assert_ne!(k1, k2, "EDNS changes the answer's size limit");
        // A cookie option is fine; a client subnet is not cached.
        let cookie = query(
            b"\x03api\x07example\x03com\x00",
            Some(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]),
        );
        assert!(plain_query(&cookie, None, &mut k2).is_some());
        let ecs = query(
            b"\x03api\x07example\x03com\x00",
            Some(&[0, 8, 0, 7, 0, 1, 24, 0, 10, 1, 2]),
        );
        assert_eq!(plain_query(&ecs, None, &mut k2), None);
    }

    #[test]
    fn anything_unusual_takes_the_full_path() {
        let mut k = Vec::new();
        let good = query(b"\x01a\x00", None);
        assert!(plain_query(&good, None, &mut k).is_some());
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(plain_query(&response, None, &mut k), None);
        let mut notify = good.clone();
        notify[2] |= 4 << 3;
        assert_eq!(plain_query(&notify, None, &mut k), None);
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(plain_query(&trailing, None, &mut k), None);
        let compressed = query(b"\xc0\x0c", None);
        assert_eq!(plain_query(&compressed, None, &mut k), None);
        assert_eq!(plain_query(&good[..good.len() - 1], None, &mut k), None);
    }
}

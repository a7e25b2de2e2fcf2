//! The oracle for writes: which acknowledged payments the final primary still holds, which
//! payments were processed twice, which were written by a node whose lease had run out, and
//! how long writes were unavailable after the fault.
//!
//! Inputs are the clients' own records ([`AckedWrite`], [`WriteAttempt`], extracted from the
//! load generator's records by [`writes_from_records`]), the rows read from the final primary
//! after the run ([`Row`]) and the leases the controllers granted ([`LeaseFact`], from their
//! audit log). Everything here is a pure function of those, tested with hand-made tables.
//!
//! Two clocks appear: lab times are `Duration`s since the lab's time zero (when a client sent
//! or got an answer); `*_ms` fields ending in `_at_ms` are Unix milliseconds read by the
//! database servers and controllers, all on the lab's one machine.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::load::RequestRecord;

/// A payment a client was told is stored: a 2xx answer to `POST /payments` naming its row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AckedWrite {
    /// The idempotency key the client sent.
    pub key: String,
    /// The row's id, as answered.
    pub id: i64,
    /// The server that wrote the row (its `cluster_name`), as answered.
    pub node: String,
    /// When the client sent the request (lab time).
    pub sent_at: Duration,
    /// When the client got the answer (lab time).
    pub ack_at: Duration,
    /// The writing server's clock when it wrote the row (Unix ms), as answered.
    pub written_at_ms: i64,
}

/// One `POST /payments` as the client saw it, acknowledged or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteAttempt {
    pub key: String,
    /// Lab time the request was sent.
    pub sent_at: Duration,
    /// Lab time the client stopped waiting: an answer, an error or its last timeout.
    pub ended_at: Duration,
    /// Whether it ended with an acknowledgement ([`AckedWrite`]).
    pub acked: bool,
}

/// A row of `payments` on the final primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub id: i64,
    pub key: String,
    pub node: String,
    pub written_at_ms: i64,
}

/// A primary lease as the controllers granted it: `holder` (a node name, as in
/// [`AckedWrite::node`]) could accept writes in `epoch` from `granted_at_ms` until
/// `expired_at_ms` (Unix ms, inclusive). Several facts with the same holder and epoch (a grant
/// and its renewals) are one lease from the earliest grant to the latest expiry. An unknown
/// grant time means "since before any write".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseFact {
    pub holder: String,
    pub epoch: u64,
    pub granted_at_ms: Option<i64>,
    pub expired_at_ms: i64,
}

/// Everything the write oracle reads.
#[derive(Debug, Clone)]
pub struct WriteInputs<'a> {
    pub acked: &'a [AckedWrite],
    pub attempts: &'a [WriteAttempt],
    /// Every row found on the final primary after the run.
    pub rows: &'a [Row],
    /// The name of the node that was primary at the end (whose rows `rows` are).
    pub final_primary: &'a str,
    /// When the fault was injected (lab time), if there was one.
    pub fault_at: Option<Duration>,
    /// Every lease granted during the run; empty when the controllers could not be read.
    pub leases: &'a [LeaseFact],
}

/// What happened to the writes. Counts of acknowledged writes are of distinct `(key, id)`
/// pairs: a replayed answer names the same payment again and counts once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteReport {
    pub final_primary: String,
    /// `POST /payments` requests sent.
    pub write_attempts: usize,
    /// Attempts that ended without an acknowledgement (an error status, no answer, or an
    /// answer that named no row).
    pub failed_writes: usize,
    /// Distinct payments acknowledged to clients.
    pub acked_writes: usize,
    /// Acknowledged payments the final primary does not hold: no row with both the
    /// acknowledged id and the acknowledged key. (A row with the id but another key means the
    /// id was handed out again after the payment was lost, so it counts as lost too.)
    pub lost_acked_writes: usize,
    /// The ids of those, ascending.
    pub lost_ids: Vec<i64>,
    /// Keys processed twice: the acknowledgements for the key together with the final
    /// primary's row for it name more than one id.
    pub duplicate_keys: usize,
    /// Those keys, sorted.
    pub duplicate_key_list: Vec<String>,
    /// Acknowledged payments written when their node held no lease: no lease of
    /// [`AckedWrite::node`] covers [`AckedWrite::written_at_ms`] (granted at or before it, and
    /// `written_at_ms <= expired_at_ms`). So a write after the expiry of the latest lease the
    /// node held at that time is fenced. `None` when no lease facts were given.
    pub fenced_writes: Option<usize>,
    /// The ids of those, ascending.
    pub fenced_ids: Vec<i64>,
    /// From the fault to the first acknowledgement by the final primary of a write sent at or
    /// after the fault (lab ms): how long until writes were taken again by the node that ended
    /// up primary. It includes up to one request interval of the load. `None` without a fault
    /// or if that never happened.
    pub write_unavailable_ms: Option<f64>,
    /// From the fault to the end of the last failed write that ended at or after it (lab ms).
    /// `None` without a fault or without such a failure.
    pub last_failed_write_ms: Option<f64>,
    /// Heap bytes the lost rows took ([`row_bytes`]), a rough size of the lost data.
    pub lost_bytes_estimate: u64,
}

/// The write oracle.
pub fn build(i: WriteInputs<'_>) -> WriteReport {
    // Distinct acknowledged payments; the first acknowledgement of each stands for it.
    let mut acked: BTreeMap<(&str, i64), &AckedWrite> = BTreeMap::new();
    for a in i.acked {
        acked.entry((a.key.as_str(), a.id)).or_insert(a);
    }
    let held: BTreeSet<(&str, i64)> = i.rows.iter().map(|r| (r.key.as_str(), r.id)).collect();
    let lost: Vec<&AckedWrite> = acked
        .iter()
        .filter(|(pair, _)| !held.contains(*pair))
        .map(|(_, a)| *a)
        .collect();
    let mut lost_ids: Vec<i64> = lost.iter().map(|a| a.id).collect();
    lost_ids.sort_unstable();

    let mut ids_by_key: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for (key, id) in acked.keys() {
        ids_by_key.entry(key).or_default().insert(*id);
    }
    for r in i.rows {
        // Only keys someone was told about: a row nobody acknowledged is no duplicate.
        if let Some(ids) = ids_by_key.get_mut(r.key.as_str()) {
            ids.insert(r.id);
        }
    }
    let duplicate_key_list: Vec<String> = ids_by_key
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(key, _)| key.to_string())
        .collect();

    let (fenced_writes, fenced_ids) = if i.leases.is_empty() {
        (None, Vec::new())
    } else {
        let leases = merge_leases(i.leases);
        let mut ids: Vec<i64> = acked
            .values()
            .filter(|a| !covered(&leases, &a.node, a.written_at_ms))
            .map(|a| a.id)
            .collect();
        ids.sort_unstable();
        (Some(ids.len()), ids)
    };

    let write_unavailable_ms = i.fault_at.and_then(|fault| {
        i.acked
            .iter()
            .filter(|a| a.sent_at >= fault && a.node == i.final_primary)
            .map(|a| a.ack_at.saturating_sub(fault))
            .min()
            .map(ms)
    });
    let last_failed_write_ms = i.fault_at.and_then(|fault| {
        i.attempts
            .iter()
            .filter(|a| !a.acked && a.ended_at >= fault)
            .map(|a| a.ended_at - fault)
            .max()
            .map(ms)
    });

    WriteReport {
        final_primary: i.final_primary.to_string(),
        write_attempts: i.attempts.len(),
        failed_writes: i.attempts.iter().filter(|a| !a.acked).count(),
        acked_writes: acked.len(),
        lost_acked_writes: lost.len(),
        lost_ids,
        duplicate_keys: duplicate_key_list.len(),
        duplicate_key_list,
        fenced_writes,
        fenced_ids,
        write_unavailable_ms,
        last_failed_write_ms,
        lost_bytes_estimate: lost.iter().map(|a| row_bytes(&a.key, &a.node)).sum(),
    }
}

/// One lease per holder and epoch: the earliest grant (unknown wins: since forever) to the
/// latest expiry.
fn merge_leases(facts: &[LeaseFact]) -> BTreeMap<(&str, u64), (Option<i64>, i64)> {
    let mut leases: BTreeMap<(&str, u64), (Option<i64>, i64)> = BTreeMap::new();
    for f in facts {
        leases
            .entry((f.holder.as_str(), f.epoch))
            .and_modify(|(granted, expired)| {
                *granted = match (*granted, f.granted_at_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                };
                *expired = (*expired).max(f.expired_at_ms);
            })
            .or_insert((f.granted_at_ms, f.expired_at_ms));
    }
    leases
}

/// Whether some lease of `node` covers the moment `at_ms`.
fn covered(leases: &BTreeMap<(&str, u64), (Option<i64>, i64)>, node: &str, at_ms: i64) -> bool {
    leases.iter().any(|((holder, _), (granted, expired))| {
        *holder == node && granted.is_none_or(|g| g <= at_ms) && at_ms <= *expired
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Estimated heap bytes of one `payments` row: the 23-byte tuple header (no null bitmap) padded
/// to 8, `id`, `key` as text, `amount` aligned to 8, `node` as text, `written_at` aligned to 8,
/// the whole padded to 8, plus its 4-byte line pointer. Text under 127 bytes has a 1-byte
/// header; longer text a 4-byte one aligned to 4 (compression ignored). Indexes are not
/// counted.
pub fn row_bytes(key: &str, node: &str) -> u64 {
    fn align(n: u64, to: u64) -> u64 {
        n.div_ceil(to) * to
    }
    fn text(at: u64, len: usize) -> u64 {
        let len = len as u64;
        if len < 127 {
            at + 1 + len
        } else {
            align(at, 4) + 4 + len
        }
    }
    let mut n = 24 + 8;
    n = text(n, key.len());
    n = align(n, 8) + 8;
    n = text(n, node.len());
    n = align(n, 8) + 8;
    align(n, 8) + 4
}

/// The acknowledged writes and every write attempt in the load generator's records (those with
/// a [`PaymentRecord`](crate::load::PaymentRecord)). A request's end is its start plus its
/// latency; lab times before zero count as zero.
pub fn writes_from_records(records: &[RequestRecord]) -> (Vec<AckedWrite>, Vec<WriteAttempt>) {
    let lab = |ms: f64| Duration::from_secs_f64(ms.max(0.0) / 1_000.0);
    let mut acked = Vec::new();
    let mut attempts = Vec::new();
    for r in records {
        let Some(p) = &r.payment else {
            continue;
        };
        let (sent_at, ended_at) = (lab(r.start_ms), lab(r.end_ms()));
        attempts.push(WriteAttempt {
            key: p.key.clone(),
            sent_at,
            ended_at,
            acked: p.ack.is_some(),
        });
        if let Some(ack) = &p.ack {
            acked.push(AckedWrite {
                key: p.key.clone(),
                id: ack.id,
                node: ack.node.clone(),
                sent_at,
                ack_at: ended_at,
                written_at_ms: ack.written_at_ms,
            });
        }
    }
    (acked, attempts)
}

impl WriteReport {
    /// Lines for the terminal table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0} ms"));
        let _ = writeln!(
            out,
            "writes              {} sent, {} acknowledged, {} failed (final primary {})",
            self.write_attempts, self.acked_writes, self.failed_writes, self.final_primary
        );
        let _ = writeln!(
            out,
            "lost acked writes   {} (about {} bytes){}",
            self.lost_acked_writes,
            self.lost_bytes_estimate,
            list(&self.lost_ids)
        );
        let _ = writeln!(
            out,
            "processed twice     {}{}",
            self.duplicate_keys,
            list(&self.duplicate_key_list)
        );
        let _ = writeln!(
            out,
            "fenced writes       {}{}",
            self.fenced_writes
                .map_or("n/a (no lease facts)".to_string(), |n| n.to_string()),
            list(&self.fenced_ids)
        );
        let _ = writeln!(
            out,
            "write unavailable   {}",
            opt(self.write_unavailable_ms)
        );
        let _ = writeln!(
            out,
            "last failed write   {}",
            opt(self.last_failed_write_ms)
        );
        out
    }
}

/// ": a, b, c" for up to ten items, with a count of the rest.
fn list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = items.iter().take(10).map(|i| i.to_string()).collect();
    let more = items.len().saturating_sub(10);
    if more > 0 {
        format!(": {} and {more} more", shown.join(", "))
    } else {
        format!(": {}", shown.join(", "))
    }
}

/// What the oracle says of the writes of a run.
pub struct WriteOutcome {
    pub report: WriteReport,
    /// The writer at the end and the plans the controllers ran, for the timeline.
    pub writer: String,
    pub epoch: u64,
    pub plans: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{PaymentAck, PaymentRecord};

    const S: Duration = Duration::from_secs(1);

    fn ack(key: &str, id: i64, node: &str, sent_s: u64, written_at_ms: i64) -> AckedWrite {
        AckedWrite {
            key: key.into(),
            id,
            node: node.into(),
            sent_at: S * sent_s as u32,
            ack_at: S * sent_s as u32 + Duration::from_millis(40),
            written_at_ms,
        }
    }

    fn row(id: i64, key: &str, node: &str) -> Row {
        Row {
            id,
            key: key.into(),
            node: node.into(),
            written_at_ms: 0,
        }
    }

    fn lease(holder: &str, epoch: u64, granted: Option<i64>, expired: i64) -> LeaseFact {
        LeaseFact {
            holder: holder.into(),
            epoch,
            granted_at_ms: granted,
            expired_at_ms: expired,
        }
    }

    fn report(acked: &[AckedWrite], rows: &[Row], leases: &[LeaseFact]) -> WriteReport {
        build(WriteInputs {
            acked,
            attempts: &[],
            rows,
            final_primary: "us-west",
            fault_at: Some(S * 10),
            leases,
        })
    }

    #[test]
    fn lost_writes_are_acknowledged_payments_missing_from_the_final_primary() {
        // (acknowledged, rows on the final primary, lost ids, acked count)
        type Case = (Vec<AckedWrite>, Vec<Row>, Vec<i64>, usize);
        let cases: Vec<(&str, Case)> = vec![
            (
                "everything replicated",
                (
                    vec![ack("a", 1, "us-east", 1, 0), ack("b", 2, "us-east", 2, 0)],
                    vec![row(1, "a", "us-east"), row(2, "b", "us-east")],
                    vec![],
                    2,
                ),
            ),
            (
                "the last write before the fault never reached the standby",
                (
                    vec![ack("a", 1, "us-east", 1, 0), ack("b", 2, "us-east", 9, 0)],
                    vec![row(1, "a", "us-east")],
                    vec![2],
                    2,
                ),
            ),
            (
                "a replayed answer names the same payment: counted once",
                (
                    vec![ack("a", 1, "us-east", 1, 0), ack("a", 1, "us-east", 3, 0)],
                    vec![],
                    vec![1],
                    1,
                ),
            ),
            (
                "rows nobody acknowledged are not lost writes",
                (vec![], vec![row(7, "x", "us-east")], vec![], 0),
            ),
        ];
        for (name, (acked, rows, lost, count)) in cases {
            let r = report(&acked, &rows, &[]);
            assert_eq!(r.lost_ids, lost, "{name}");
            assert_eq!(r.lost_acked_writes, lost.len(), "{name}");
            assert_eq!(r.acked_writes, count, "{name}");
        }
    }

    /// Regression: an id handed out again by the new primary (its sequence had not seen the
    /// lost write) must not hide the lost payment that first had it.
    #[test]
    fn an_id_reused_for_another_key_is_still_a_lost_write() {
        let acked = [ack("a", 33, "us-east", 9, 0)];
        let rows = [row(33, "z", "us-west")];
        let r = report(&acked, &rows, &[]);
        assert_eq!(r.lost_ids, vec![33]);
        assert_eq!(r.lost_bytes_estimate, row_bytes("a", "us-east"));
    }

    #[test]
    fn keys_processed_twice() {
        type Case = (Vec<AckedWrite>, Vec<Row>, Vec<&'static str>);
        let cases: Vec<(&str, Case)> = vec![
            (
                "a replay with the same id is no duplicate",
                (
                    vec![ack("a", 1, "us-east", 1, 0), ack("a", 1, "us-east", 2, 0)],
                    vec![row(1, "a", "us-east")],
                    vec![],
                ),
            ),
            (
                "acknowledged twice with different ids",
                (
                    vec![ack("a", 1, "us-east", 1, 0), ack("a", 40, "us-west", 12, 0)],
                    vec![row(40, "a", "us-west")],
                    vec!["a"],
                ),
            ),
            (
                "acknowledged once, but the final primary holds the key under another id",
                (
                    vec![ack("b", 2, "us-east", 9, 0)],
                    vec![row(41, "b", "us-west")],
                    vec!["b"],
                ),
            ),
            (
                "an unacknowledged key is nobody's duplicate",
                (vec![], vec![row(41, "c", "us-west")], vec![]),
            ),
        ];
        for (name, (acked, rows, keys)) in cases {
            let r = report(&acked, &rows, &[]);
            assert_eq!(r.duplicate_key_list, keys, "{name}");
            assert_eq!(r.duplicate_keys, keys.len(), "{name}");
        }
    }

    #[test]
    fn fenced_writes_are_written_outside_every_lease_of_their_node() {
        let leases = [
            lease("us-east", 1, Some(1_000), 5_000),
            // A renewal of epoch 1: the lease now runs to 9 000.
            lease("us-east", 1, Some(4_000), 9_000),
            lease("us-west", 2, Some(11_000), 30_000),
            // us-east comes back as primary later.
            lease("us-east", 3, Some(40_000), 50_000),
        ];
        // (node, written_at_ms, fenced)
        let cases = [
            ("us-east", 2_000, false),
            ("us-east", 9_000, false),
            ("us-east", 9_001, true),
            ("us-east", 20_000, true),
            ("us-east", 45_000, false),
            ("us-east", 500, true),
            ("us-west", 12_000, false),
            ("us-west", 10_999, true),
            ("us-central", 12_000, true),
        ];
        for (node, at, fenced) in cases {
            let r = report(&[ack("k", 1, node, 1, at)], &[], &leases);
            assert_eq!(r.fenced_writes, Some(usize::from(fenced)), "{node} at {at}");
            assert_eq!(r.fenced_ids.is_empty(), !fenced, "{node} at {at}");
        }
        // An unknown grant time covers everything before the expiry.
        let open = [
            lease("us-east", 1, None, 5_000),
            lease("us-east", 1, Some(4_000), 6_000),
        ];
        for (at, fenced) in [(-1, false), (6_000, false), (6_001, true)] {
            let r = report(&[ack("k", 1, "us-east", 1, at)], &[], &open);
            assert_eq!(r.fenced_writes, Some(usize::from(fenced)), "at {at}");
        }
        // Without lease facts there is no verdict.
        let r = report(&[ack("k", 1, "us-east", 1, 0)], &[], &[]);
        assert_eq!((r.fenced_writes, r.fenced_ids.len()), (None, 0));
    }

    #[test]
    fn write_unavailability_runs_to_the_final_primarys_first_ack() {
        let at = |ms: u64| Duration::from_millis(ms);
        let acked_at = |node: &str, sent: u64, acked: u64| AckedWrite {
            ack_at: at(acked),
            sent_at: at(sent),
            ..ack("k", sent as i64, node, 0, 0)
        };
        // (name, acknowledgements, fault, expected)
        type Case = (&'static str, Vec<AckedWrite>, Option<u64>, Option<f64>);
        let cases: Vec<Case> = vec![
            (
                "the new primary's first ack",
                vec![
                    acked_at("us-east", 9_000, 9_050),
                    acked_at("us-west", 13_000, 13_200),
                    acked_at("us-west", 12_500, 14_000),
                ],
                Some(10_000),
                Some(3_200.0),
            ),
            (
                "the old primary's acks after the fault do not count",
                vec![
                    acked_at("us-east", 10_100, 10_150),
                    acked_at("us-west", 15_000, 15_010),
                ],
                Some(10_000),
                Some(5_010.0),
            ),
            (
                "a write sent before the fault does not count",
                vec![
                    acked_at("us-west", 9_990, 10_020),
                    acked_at("us-west", 10_400, 10_450),
                ],
                Some(10_000),
                Some(450.0),
            ),
            (
                "never",
                vec![acked_at("us-east", 10_100, 10_150)],
                Some(10_000),
                None,
            ),
            ("no fault", vec![acked_at("us-west", 1, 2)], None, None),
        ];
        for (name, acked, fault, expected) in cases {
            let r = build(WriteInputs {
                acked: &acked,
                attempts: &[],
                rows: &[],
                final_primary: "us-west",
                fault_at: fault.map(at),
                leases: &[],
            });
            assert_eq!(r.write_unavailable_ms, expected, "{name}");
        }
    }

    #[test]
    fn failed_writes_and_the_last_failure_after_the_fault() {
        let attempt = |sent: u64, ended: u64, acked: bool| WriteAttempt {
            key: format!("k{sent}"),
            sent_at: Duration::from_millis(sent),
            ended_at: Duration::from_millis(ended),
            acked,
        };
        let attempts = [
            attempt(1_000, 1_040, true),
            attempt(2_000, 2_500, false),
            attempt(9_800, 11_800, false),
            attempt(12_000, 14_000, false),
            attempt(15_000, 15_040, true),
        ];
        let r = build(WriteInputs {
            acked: &[],
            attempts: &attempts,
            rows: &[],
            final_primary: "us-west",
            fault_at: Some(Duration::from_secs(10)),
            leases: &[],
        });
        assert_eq!((r.write_attempts, r.failed_writes), (5, 3));
        assert_eq!(r.last_failed_write_ms, Some(4_000.0));
        let quiet = build(WriteInputs {
            acked: &[],
            attempts: &attempts[..2],
            rows: &[],
            final_primary: "us-west",
            fault_at: Some(Duration::from_secs(10)),
            leases: &[],
        });
        assert_eq!(quiet.last_failed_write_ms, None);
    }

    #[test]
    fn row_bytes_follow_the_heap_layout() {
        // 24 header + 8 id = 32; key "a" 2 bytes -> 34; amount at 40 -> 48; node "us-east" 8
        // bytes -> 56; written_at at 56 -> 64; + 4 line pointer.
        assert_eq!(row_bytes("a", "us-east"), 68);
        // key of 20: 32 + 21 = 53 -> amount at 56 -> 64; node 8 -> 72 -> written_at 80; + 4.
        assert_eq!(row_bytes(&"k".repeat(20), "us-east"), 84);
        // A long key takes a 4-byte header aligned to 4: 32 + 4 + 200 = 236 -> 240 + 8 = 248;
        // node -> 256 -> 264; + 4.
        assert_eq!(row_bytes(&"k".repeat(200), "us-east"), 268);
    }

    #[test]
    fn writes_come_from_the_payment_records() {
        let record = |start_ms: f64, key: &str, ack: Option<PaymentAck>| RequestRecord {
            start_ms,
            latency_ms: 40.0,
            client_region: "us-east".into(),
            method: "POST",
            status: ack.as_ref().map(|_| 201),
            ok: ack.is_some(),
            edge_region: None,
            served_by: None,
            edges_tried: 1,
            error: None,
            payment: Some(PaymentRecord {
                key: key.into(),
                ack,
            }),
        };
        let mut get = record(0.0, "-", None);
        get.method = "GET";
        get.payment = None;
        let records = [
            get,
            record(
                1_000.0,
                "a",
                Some(PaymentAck {
                    id: 5,
                    node: "us-east".into(),
                    written_at_ms: 1_700_000_000_000,
                    replay: false,
                }),
            ),
            record(2_000.0, "b", None),
        ];
        let (acked, attempts) = writes_from_records(&records);
        assert_eq!(
            acked,
            vec![AckedWrite {
                key: "a".into(),
                id: 5,
                node: "us-east".into(),
                sent_at: Duration::from_secs(1),
                ack_at: Duration::from_millis(1_040),
                written_at_ms: 1_700_000_000_000,
            }]
        );
        assert_eq!(attempts.len(), 2);
        assert_eq!(
            (
                attempts[1].key.as_str(),
                attempts[1].acked,
                attempts[1].ended_at
            ),
            ("b", false, Duration::from_millis(2_040))
        );
    }

    #[test]
    fn the_table_names_every_figure() {
        let r = report(
            &[ack("a", 1, "us-east", 1, 0), ack("b", 2, "us-east", 11, 0)],
            &[row(1, "a", "us-east")],
            &[],
        );
        let table = r.table();
        for needle in [
            "2 acknowledged",
            "lost acked writes   1",
            ": 2",
            "n/a (no lease facts)",
            "write unavailable",
        ] {
            assert!(table.contains(needle), "{needle:?} in\n{table}");
        }
    }
}

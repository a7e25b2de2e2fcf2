//! The oracle for writes: which acknowledged payments the final writer still holds, which
//! payments were processed twice, which were acknowledged by a writer that another writer had
//! already superseded (split brain), and how long writes were unavailable after the fault.
//!
//! Inputs are the clients' own records ([`AckedWrite`], [`WriteAttempt`], extracted from the
//! load generator's records by [`writes_from_records`]) and the rows read from every node after
//! the run ([`Row`]). Nothing the system says it did is an input: not the controllers' leases,
//! not who they say the primary is. Every acknowledgement names the writer that committed it
//! (the server's `cluster_name` and the WAL timeline it wrote on), so two writers that took
//! writes at once show in the clients' records alone. Everything here is a pure function of
//! those, tested with hand-made tables.
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
    /// The WAL timeline the server wrote it on, as answered: with `node`, which incarnation
    /// of a writer committed it (a promotion starts a new timeline).
    pub timeline: String,
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

/// A row of `payments` on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub id: i64,
    pub key: String,
    pub node: String,
    pub written_at_ms: i64,
}

/// What was read from one node after the run: its rows, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRows {
    /// The node's name (its `cluster_name`, as in [`AckedWrite::node`]).
    pub node: String,
    pub rows: Result<Vec<Row>, String>,
}

/// Everything the write oracle reads.
#[derive(Debug, Clone)]
pub struct WriteInputs<'a> {
    pub acked: &'a [AckedWrite],
    pub attempts: &'a [WriteAttempt],
    /// Every node's rows after the run (a node that could not be read says why).
    pub nodes: &'a [NodeRows],
    /// When the fault was injected (lab time), if there was one.
    pub fault_at: Option<Duration>,
    /// The cluster's RPO time budget, and how often its agents look (one
    /// round): with a fault, the loss bound is the writer's rate before the
    /// fault times their sum.
    pub rpo_time: Option<Duration>,
    pub agent_round: Duration,
}

/// What happened to the writes. Counts of acknowledged writes are of distinct `(key, id)`
/// pairs: a replayed answer names the same payment again and counts once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteReport {
    /// The node that acknowledged the last write of the run, as the clients were told: the
    /// writer at the end, whose rows the lost writes are counted against.
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
    /// Acknowledged payments taken by a superseded writer (split brain), from the clients'
    /// records alone: a writer is one `(node, timeline)`; a write acknowledged by writer A and
    /// *sent after* a client had already been acknowledged a write by a writer B whose first
    /// acknowledgement came later than A's first, was taken by A while B was surely writing.
    pub split_brain_writes: usize,
    /// The ids of those, ascending.
    pub split_brain_ids: Vec<i64>,
    /// The writers that acknowledged writes, in the order of their first acknowledgement:
    /// `node/timeline: n writes, first..last ack (lab ms)`.
    pub writers: Vec<String>,
    /// Per node read after the run: how many rows it holds and how many acknowledged payments
    /// it lacks (a standby behind, or a node that never caught up), or why it was not read.
    pub nodes: Vec<String>,
    /// Keys sent more than once whose acknowledgement came from another writer than the one
    /// that had acknowledged the last write before the key's first attempt: retries that
    /// really crossed a change of writer (what the double-processing check is about).
    pub keys_retried_across_writers: usize,
    /// From the fault to the first acknowledgement of a write sent at or after the fault by a
    /// writer that took no write before it, or, when no new writer appeared, by any writer
    /// (lab ms): how long until writes were taken again, as clients saw it. It includes up to
    /// one request interval of the load. `None` without a fault or if that never happened.
    pub write_unavailable_ms: Option<f64>,
    /// From the fault to the end of the last failed write that ended at or after it (lab ms).
    /// `None` without a fault or without such a failure.
    pub last_failed_write_ms: Option<f64>,
    /// Heap bytes the lost rows took ([`row_bytes`]), a rough size of the lost data.
    pub lost_bytes_estimate: u64,
    /// The most acknowledged writes the configuration lets be lost: the rate at which the
    /// writer at the fault acknowledged writes in the 5 s before it, times the RPO time budget
    /// plus one agent round. `None` without a fault or a time budget.
    pub loss_bound: Option<usize>,
}

/// The write oracle.
pub fn build(i: WriteInputs<'_>) -> WriteReport {
    // Distinct acknowledged payments; the first acknowledgement of each stands for it.
    let mut acked: BTreeMap<(&str, i64), &AckedWrite> = BTreeMap::new();
    for a in i.acked {
        acked.entry((a.key.as_str(), a.id)).or_insert(a);
    }
    // The writer at the end is the one the last acknowledgement named.
    let final_primary = i
        .acked
        .iter()
        .max_by_key(|a| a.ack_at)
        .map_or(String::new(), |a| a.node.clone());
    let no_rows: Vec<Row> = Vec::new();
    let final_rows: &[Row] = i
        .nodes
        .iter()
        .find(|n| n.node == final_primary)
        .and_then(|n| n.rows.as_ref().ok())
        .map_or(&no_rows, |r| r.as_slice());
    let held: BTreeSet<(&str, i64)> = final_rows.iter().map(|r| (r.key.as_str(), r.id)).collect();
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
    for r in final_rows {
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

    let (writers, split_brain_ids) = split_brain(i.acked);
    let keys_retried_across_writers = retried_across_writers(i.acked, i.attempts);
    let nodes = i
        .nodes
        .iter()
        .map(|n| match &n.rows {
            Ok(rows) => {
                let keys: BTreeSet<(&str, i64)> =
                    rows.iter().map(|r| (r.key.as_str(), r.id)).collect();
                let missing = acked.keys().filter(|k| !keys.contains(*k)).count();
                format!(
                    "{}: {} rows, {missing} acknowledged payments missing",
                    n.node,
                    rows.len()
                )
            }
            Err(why) => format!("{}: not read ({why})", n.node),
        })
        .collect();

    // Writes are back when a writer takes one sent at or after the fault: a
    // writer that took none before it, when one appeared (the old writer's
    // last acknowledgements while it was being cut off are no recovery);
    // otherwise (no failover) any writer.
    let write_unavailable_ms = i.fault_at.and_then(|fault| {
        let before: BTreeSet<(&str, &str)> = i
            .acked
            .iter()
            .filter(|a| a.sent_at < fault)
            .map(|a| (a.node.as_str(), a.timeline.as_str()))
            .collect();
        let after = |new_only: bool| {
            i.acked
                .iter()
                .filter(|a| a.sent_at >= fault)
                .filter(|a| !new_only || !before.contains(&(a.node.as_str(), a.timeline.as_str())))
                .map(|a| a.ack_at.saturating_sub(fault))
                .min()
        };
        after(true).or_else(|| after(false)).map(ms)
    });
    let loss_bound = match (i.fault_at, i.rpo_time) {
        (Some(fault), Some(budget)) => {
            let window = Duration::from_secs(5).min(fault);
            let writer = i
                .acked
                .iter()
                .filter(|a| a.ack_at <= fault)
                .max_by_key(|a| a.ack_at)
                .map(|a| (a.node.as_str(), a.timeline.as_str()));
            let n = i
                .acked
                .iter()
                .filter(|a| Some((a.node.as_str(), a.timeline.as_str())) == writer)
                .filter(|a| a.ack_at <= fault && a.ack_at + window > fault)
                .count();
            (!window.is_zero()).then(|| {
                let rate = n as f64 / window.as_secs_f64();
                (rate * (budget + i.agent_round).as_secs_f64()).ceil() as usize
            })
        }
        _ => None,
    };
    let last_failed_write_ms = i.fault_at.and_then(|fault| {
        i.attempts
            .iter()
            .filter(|a| !a.acked && a.ended_at >= fault)
            .map(|a| a.ended_at - fault)
            .max()
            .map(ms)
    });

    WriteReport {
        final_primary: final_primary.clone(),
        write_attempts: i.attempts.len(),
        failed_writes: i.attempts.iter().filter(|a| !a.acked).count(),
        acked_writes: acked.len(),
        lost_acked_writes: lost.len(),
        lost_ids,
        duplicate_keys: duplicate_key_list.len(),
        duplicate_key_list,
        split_brain_writes: split_brain_ids.len(),
        split_brain_ids,
        writers,
        nodes,
        keys_retried_across_writers,
        write_unavailable_ms,
        last_failed_write_ms,
        lost_bytes_estimate: lost.iter().map(|a| row_bytes(&a.key, &a.node)).sum(),
        loss_bound,
    }
}

/// The writers in the clients' records, in the order of their first acknowledgement, and the
/// ids of the writes a superseded writer took: for writers A before B (by first
/// acknowledgement), A's writes *sent* after B's first acknowledgement *arrived*.
fn split_brain(acked: &[AckedWrite]) -> (Vec<String>, Vec<i64>) {
    let mut by_writer: BTreeMap<(&str, &str), Vec<&AckedWrite>> = BTreeMap::new();
    for a in acked {
        by_writer
            .entry((a.node.as_str(), a.timeline.as_str()))
            .or_default()
            .push(a);
    }
    let mut writers: Vec<((&str, &str), Vec<&AckedWrite>)> = by_writer.into_iter().collect();
    for (_, w) in &mut writers {
        w.sort_by_key(|a| a.ack_at);
    }
    writers.sort_by_key(|(_, w)| w[0].ack_at);
    let mut ids = BTreeSet::new();
    for (i, (_, older)) in writers.iter().enumerate() {
        for (_, newer) in &writers[i + 1..] {
            let took_over = newer[0].ack_at;
            ids.extend(older.iter().filter(|a| a.sent_at > took_over).map(|a| a.id));
        }
    }
    let lines = writers
        .iter()
        .map(|((node, tl), w)| {
            format!(
                "{node}/{}: {} writes, acknowledged {:.0}..{:.0} ms",
                if tl.is_empty() { "?" } else { tl },
                w.len(),
                ms(w[0].ack_at),
                ms(w[w.len() - 1].ack_at)
            )
        })
        .collect();
    (lines, ids.into_iter().collect())
}

/// How many keys were retried across a change of writer: sent more than once, and
/// acknowledged by a writer other than the one that acknowledged the last write (any key)
/// before the key's first attempt.
fn retried_across_writers(acked: &[AckedWrite], attempts: &[WriteAttempt]) -> usize {
    let mut first_sent: BTreeMap<&str, (Duration, usize)> = BTreeMap::new();
    for a in attempts {
        let e = first_sent.entry(a.key.as_str()).or_insert((a.sent_at, 0));
        e.0 = e.0.min(a.sent_at);
        e.1 += 1;
    }
    let mut by_time: Vec<&AckedWrite> = acked.iter().collect();
    by_time.sort_by_key(|a| a.ack_at);
    let writer_at = |t: Duration| {
        by_time
            .iter()
            .rev()
            .find(|a| a.ack_at <= t)
            .map(|a| (a.node.as_str(), a.timeline.as_str()))
    };
    let mut keys = BTreeSet::new();
    for a in acked {
        let Some((first, tries)) = first_sent.get(a.key.as_str()) else {
            continue;
        };
        let before = writer_at(*first);
        if *tries > 1 && before.is_some_and(|w| w != (a.node.as_str(), a.timeline.as_str())) {
            keys.insert(a.key.as_str());
        }
    }
    keys.len()
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
                timeline: ack.timeline.clone(),
                sent_at,
                ack_at: ended_at,
                written_at_ms: ack.written_at_ms,
            });
        }
    }
    (acked, attempts)
}

impl WriteReport {
    /// Lines for the terminal table: what happened to the acknowledged
    /// writes. (How many were sent, acknowledged and failed, and when writes
    /// came back, are with the run's other counts and times.)
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "lost acked writes   {} (about {} bytes){}{}",
            self.lost_acked_writes,
            self.lost_bytes_estimate,
            self.loss_bound.map_or(String::new(), |b| format!(
                "; the time budget allows {b} (the writer's rate before the fault x (budget + one agent round))"
            )),
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
            "split-brain writes  {}{} (taken by a superseded writer, from the clients' records)",
            self.split_brain_writes,
            list(&self.split_brain_ids)
        );
        for w in &self.writers {
            let _ = writeln!(out, "  writer {w}");
        }
        for n in &self.nodes {
            let _ = writeln!(out, "  node {n}");
        }
        let _ = writeln!(
            out,
            "final writer        {} (the node that acknowledged the last write; lost writes are counted against its rows)",
            self.final_primary
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
            timeline: "00000001".into(),
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

    /// The oracle with `rows` as the rows of the final writer (the last
    /// acknowledgement's node).
    fn report(acked: &[AckedWrite], rows: &[Row]) -> WriteReport {
        let last = acked
            .iter()
            .max_by_key(|a| a.ack_at)
            .map_or("us-west".to_string(), |a| a.node.clone());
        build(WriteInputs {
            acked,
            attempts: &[],
            nodes: &[NodeRows {
                node: last,
                rows: Ok(rows.to_vec()),
            }],
            fault_at: Some(S * 10),
            rpo_time: None,
            agent_round: Duration::ZERO,
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
            let r = report(&acked, &rows);
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
        let r = report(&acked, &rows);
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
            let r = report(&acked, &rows);
            assert_eq!(r.duplicate_key_list, keys, "{name}");
            assert_eq!(r.duplicate_keys, keys.len(), "{name}");
        }
    }

    // Broke when split brain was judged from the controllers' lease
    // records: it is judged from what clients were told alone.
    #[test]
    fn a_superseded_writer_taking_writes_is_split_brain() {
        let at = |ms: u64| Duration::from_millis(ms);
        let w = |id: i64, node: &str, tl: &str, sent: u64, acked: u64| AckedWrite {
            timeline: tl.into(),
            sent_at: at(sent),
            ack_at: at(acked),
            ..ack(&format!("k{id}"), id, node, 0, 0)
        };
        // (name, acknowledgements, split-brain ids)
        type Case = (&'static str, Vec<AckedWrite>, Vec<i64>);
        let cases: Vec<Case> = vec![
            (
                "a clean failover: the old writer stops before the new one starts",
                vec![
                    w(1, "us-east", "1", 1_000, 1_050),
                    w(2, "us-east", "1", 8_000, 8_050),
                    w(3, "us-west", "2", 14_000, 14_080),
                ],
                vec![],
            ),
            (
                "the old writer acknowledges a write sent after the new one's first",
                vec![
                    w(1, "us-east", "1", 1_000, 1_050),
                    w(3, "us-west", "2", 14_000, 14_080),
                    w(4, "us-east", "1", 14_500, 14_550),
                    w(5, "us-east", "1", 15_000, 15_040),
                ],
                vec![4, 5],
            ),
            (
                "a write sent before the takeover and acknowledged after it is no proof",
                vec![
                    w(1, "us-east", "1", 13_900, 14_200),
                    w(3, "us-west", "2", 14_000, 14_080),
                ],
                vec![],
            ),
            (
                "the same node on a new timeline is another writer (a promotion)",
                vec![
                    w(1, "us-east", "1", 1_000, 1_050),
                    w(2, "us-east", "3", 20_000, 20_050),
                    w(6, "us-east", "1", 21_000, 21_030),
                ],
                vec![6],
            ),
        ];
        for (name, acked, ids) in cases {
            let r = report(&acked, &[]);
            assert_eq!(r.split_brain_ids, ids, "{name}");
            assert_eq!(r.split_brain_writes, ids.len(), "{name}");
        }
    }

    #[test]
    fn retries_count_only_when_they_cross_a_change_of_writer() {
        let at = |ms: u64| Duration::from_millis(ms);
        let w = |key: &str, id: i64, node: &str, sent: u64, acked: u64| AckedWrite {
            sent_at: at(sent),
            ack_at: at(acked),
            ..ack(key, id, node, 0, 0)
        };
        let try_ = |key: &str, sent: u64, acked: bool| WriteAttempt {
            key: key.into(),
            sent_at: at(sent),
            ended_at: at(sent + 100),
            acked,
        };
        let acked = [
            w("a", 1, "us-east", 1_000, 1_050),
            // "b" fails on east, then west takes it: across.
            w("b", 2, "us-west", 12_000, 12_100),
            // "c" fails once and east takes it again: not across.
            w("c", 3, "us-east", 2_100, 2_150),
        ];
        let attempts = [
            try_("a", 1_000, true),
            try_("b", 9_000, false),
            try_("b", 12_000, true),
            try_("c", 2_000, false),
            try_("c", 2_100, true),
        ];
        assert_eq!(retried_across_writers(&acked, &attempts), 1);
    }

    // Broke when the loss check compared row bytes with a WAL-byte budget
    // and could not fail: the bound now follows the time budget.
    #[test]
    fn the_loss_bound_is_the_writers_rate_times_the_budget_and_a_round() {
        // 20 writes a second by us-east over the 5 s before the fault at 10 s.
        let acked: Vec<AckedWrite> = (0..100)
            .map(|k| AckedWrite {
                sent_at: Duration::from_millis(5_000 + k * 50),
                ack_at: Duration::from_millis(5_020 + k * 50),
                ..ack(&format!("k{k}"), k as i64, "us-east", 0, 0)
            })
            .collect();
        let r = build(WriteInputs {
            acked: &acked,
            attempts: &[],
            nodes: &[],
            fault_at: Some(S * 10),
            rpo_time: Some(S),
            agent_round: Duration::from_millis(500),
        });
        assert_eq!(r.loss_bound, Some(30));
    }

    #[test]
    fn every_node_is_read_and_the_final_writer_comes_from_the_clients() {
        let acked = [ack("a", 1, "us-east", 1, 0), ack("b", 2, "us-west", 12, 0)];
        let r = build(WriteInputs {
            acked: &acked,
            attempts: &[],
            nodes: &[
                NodeRows {
                    node: "us-east".into(),
                    rows: Ok(vec![row(1, "a", "us-east")]),
                },
                NodeRows {
                    node: "us-west".into(),
                    rows: Ok(vec![row(1, "a", "us-east"), row(2, "b", "us-west")]),
                },
                NodeRows {
                    node: "us-central".into(),
                    rows: Err("connection refused".into()),
                },
            ],
            fault_at: None,
            rpo_time: None,
            agent_round: Duration::ZERO,
        });
        assert_eq!(r.final_primary, "us-west");
        assert_eq!(r.lost_acked_writes, 0);
        assert_eq!(
            r.nodes,
            vec![
                "us-east: 1 rows, 1 acknowledged payments missing",
                "us-west: 2 rows, 0 acknowledged payments missing",
                "us-central: not read (connection refused)",
            ]
        );
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
                    acked_at("us-east", 9_000, 9_050),
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
                "no new writer (no failover): the old one's first write after the fault",
                vec![
                    acked_at("us-east", 9_000, 9_050),
                    acked_at("us-east", 10_100, 10_150),
                ],
                Some(10_000),
                Some(150.0),
            ),
            (
                "never",
                vec![acked_at("us-east", 9_000, 9_050)],
                Some(10_000),
                None,
            ),
            ("no fault", vec![acked_at("us-west", 1, 2)], None, None),
        ];
        for (name, acked, fault, expected) in cases {
            let r = build(WriteInputs {
                acked: &acked,
                attempts: &[],
                nodes: &[],
                fault_at: fault.map(at),
                rpo_time: None,
                agent_round: Duration::ZERO,
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
            nodes: &[],
            fault_at: Some(Duration::from_secs(10)),
            rpo_time: None,
            agent_round: Duration::ZERO,
        });
        assert_eq!((r.write_attempts, r.failed_writes), (5, 3));
        assert_eq!(r.last_failed_write_ms, Some(4_000.0));
        let quiet = build(WriteInputs {
            acked: &[],
            attempts: &attempts[..2],
            nodes: &[],
            fault_at: Some(Duration::from_secs(10)),
            rpo_time: None,
            agent_round: Duration::ZERO,
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
                    timeline: "00000002".into(),
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
                timeline: "00000002".into(),
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
        );
        let table = r.table();
        for needle in [
            "lost acked writes   1",
            ": 2",
            "split-brain writes  0",
            "writer us-east/00000001: 2 writes",
            "final writer        us-east",
        ] {
            assert!(table.contains(needle), "{needle:?} in\n{table}");
        }
    }
}

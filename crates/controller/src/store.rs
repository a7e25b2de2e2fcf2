//! Durable Raft storage on redb: the log, the vote, the committed index, the
//! applied state machine and its last snapshot, all in one database file.
//!
//! The state machine is small (verdicts, a routing table, leases, plans),
//! so every applied batch writes it whole in the same transaction as its
//! last-applied log id: a node that restarts comes back exactly where it
//! stopped, without replaying the log. The audit log, the one part that
//! grows with time, is kept apart: each batch appends only its new entries
//! to a table of their own (keyed by index) and drops those the state
//! compacted away, in the same transaction, so the cost of a batch does
//! not grow with the history (`bench/state-vs-etcd`).

use std::fmt::{Debug, Display};
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tern_core::control::{AuditEntry, ControlState};

use crate::clock::ClusterClock;
use crate::{NodeId, Request, Response, TypeConfig};

type Node = openraft::BasicNode;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The kept audit entries, by index, as JSON.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

const VOTE: &str = "vote";
const PURGED: &str = "purged";
const COMMITTED: &str = "committed";
const MACHINE: &str = "machine";
const SNAPSHOT: &str = "snapshot";

fn err<E: Display>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
) -> impl FnOnce(E) -> StorageError<NodeId> {
    move |e| StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

/// The applied state: what the controllers agreed on, and up to where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Node>,
    pub state: ControlState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

/// Opens (or creates) the node's database. `initial` is the state a fresh
/// node starts from; a restarted node reads its own.
/// Opens (or creates) the store at `path`; a new store starts from
/// `initial`. `clock` is told each time the state's cluster time advances.
pub fn open(
    path: &Path,
    initial: ControlState,
    clock: Arc<ClusterClock>,
) -> anyhow::Result<(LogStore, StateMachine)> {
    // A node restarted within one process may still be letting go of the
    // file lock for a moment; another process holding it is an error.
    let mut attempts = 0;
    let db = loop {
        match Database::create(path) {
            Ok(db) => break db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "open the controller database {}: {e}",
                    path.display()
                ))
            }
        }
    };
    let db = Arc::new(db);
    {
        let tx = db.begin_write()?;
        tx.open_table(LOG)?;
        tx.open_table(META)?;
        tx.open_table(AUDIT)?;
        tx.commit()?;
    }
    let machine = match read_meta::<Machine>(&db, MACHINE)? {
        Some(mut m) => {
            if m.state.audit().is_empty() {
                m.state
                    .restore_audit(read_audit(&db, m.state.audit_dropped())?);
            } else {
                // Written before the audit had a table of its own: move it there.
                write_machine(&db, &mut m, None)?;
            }
            m
        }
        None => Machine {
            last_applied: None,
            membership: StoredMembership::default(),
            state: initial,
        },
    };
    clock.applied(machine.state.time());
    let machine = Arc::new(RwLock::new(machine));
    Ok((
        LogStore { db: db.clone() },
        StateMachine { db, machine, clock },
    ))
}

fn read_meta<T: for<'de> Deserialize<'de>>(db: &Database, key: &str) -> anyhow::Result<Option<T>> {
    let tx = db.begin_read()?;
    let table = tx.open_table(META)?;
    match table.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

/// The stored audit entries above `dropped`, oldest first.
fn read_audit(db: &Database, dropped: u64) -> anyhow::Result<Vec<AuditEntry>> {
    let tx = db.begin_read()?;
    let table = tx.open_table(AUDIT)?;
    let mut out = Vec::new();
    for row in table.range((dropped + 1)..)? {
        let (_, v) = row?;
        out.push(serde_json::from_slice(v.value())?);
    }
    Ok(out)
}

/// Writes the applied state in one transaction: the state without its
/// audit entries, the entries above `stored_up_to` (all of them with
/// `None`, which first empties the table: a snapshot replaces everything)
/// and the removal of those the state compacted away.
fn write_machine(
    db: &Database,
    machine: &mut Machine,
    stored_up_to: Option<u64>,
) -> anyhow::Result<()> {
    let audit = machine.state.take_audit();
    let bytes = serde_json::to_vec(&*machine);
    machine.state.restore_audit(audit);
    let bytes = bytes?;
    let tx = db.begin_write()?;
    {
        if stored_up_to.is_none() {
            tx.delete_table(AUDIT)?;
        }
        let mut table = tx.open_table(AUDIT)?;
        let from = stored_up_to.unwrap_or(0);
        for entry in machine.state.audit().iter().filter(|e| e.index > from) {
            table.insert(entry.index, serde_json::to_vec(entry)?.as_slice())?;
        }
        let dropped = machine.state.audit_dropped();
        if dropped > 0 {
            table.retain_in::<u64, _>(..=dropped, |_, _| false)?;
        }
        let mut meta = tx.open_table(META)?;
        meta.insert(MACHINE, bytes.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

fn write_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(value)?;
    let tx = db.begin_write()?;
    {
        let mut table = tx.open_table(META)?;
        table.insert(key, bytes.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> anyhow::Result<Vec<Entry<TypeConfig>>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LOG)?;
        let mut out = Vec::new();
        for item in table.range::<u64>(range)? {
            let (_, v) = item?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    fn last_entry(&self) -> anyhow::Result<Option<Entry<TypeConfig>>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LOG)?;
        let last = match table.last()? {
            Some((_, v)) => Some(serde_json::from_slice(v.value())?),
            None => None,
        };
        Ok(last)
    }

    fn remove(&self, range: (Bound<u64>, Bound<u64>)) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(LOG)?;
            table.retain_in::<u64, _>(range, |_, _| false)?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        self.entries(bounds)
            .map_err(err(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let purged: Option<LogId<NodeId>> =
            read_meta(&self.db, PURGED).map_err(err(ErrorSubject::Store, ErrorVerb::Read))?;
        let last = self
            .last_entry()
            .map_err(err(ErrorSubject::Logs, ErrorVerb::Read))?
            .map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        write_meta(&self.db, VOTE, vote).map_err(err(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        read_meta(&self.db, VOTE).map_err(err(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        write_meta(&self.db, COMMITTED, &committed)
            .map_err(err(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(read_meta::<Option<LogId<NodeId>>>(&self.db, COMMITTED)
            .map_err(err(ErrorSubject::Store, ErrorVerb::Read))?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = (|| -> anyhow::Result<()> {
            let tx = self.db.begin_write()?;
            {
                let mut table = tx.open_table(LOG)?;
                for entry in entries {
                    let bytes = serde_json::to_vec(&entry)?;
                    table.insert(entry.log_id.index, bytes.as_slice())?;
                }
            }
            // redb's default durability syncs on commit: flushed means on disk.
            tx.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(err(ErrorSubject::Logs, ErrorVerb::Write)(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.remove((Bound::Included(log_id.index), Bound::Unbounded))
            .map_err(err(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        write_meta(&self.db, PURGED, &Some(log_id))
            .map_err(err(ErrorSubject::Store, ErrorVerb::Write))?;
        self.remove((Bound::Unbounded, Bound::Included(log_id.index)))
            .map_err(err(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

/// The applied state machine; cheap to clone (shared).
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    machine: Arc<RwLock<Machine>>,
    clock: Arc<ClusterClock>,
}

impl StateMachine {
    /// A copy of the applied state.
    pub fn snapshot_of_state(&self) -> Machine {
        self.machine.read().expect("machine lock").clone()
    }

    /// Reads the applied state without copying it.
    pub fn with<T>(&self, f: impl FnOnce(&Machine) -> T) -> T {
        f(&self.machine.read().expect("machine lock"))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let m = self.snapshot_of_state();
        let data =
            serde_json::to_vec(&m).map_err(err(ErrorSubject::StateMachine, ErrorVerb::Read))?;
        let snapshot_id = match m.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "0".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: m.last_applied,
            last_membership: m.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        write_meta(&self.db, SNAPSHOT, &stored)
            .map_err(err(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let m = self.machine.read().expect("machine lock");
        Ok((m.last_applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        // Applied in place (a copy of the state would copy the audit log):
        // when the write fails, the node stops on the storage error, so the
        // state in memory is never served ahead of what is on disk.
        let mut m = self.machine.write().expect("machine lock");
        let stored_up_to = m.state.last_audit_index();
        for entry in entries {
            m.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::nothing(),
                EntryPayload::Membership(mem) => {
                    m.membership = StoredMembership::new(Some(entry.log_id), mem);
                    Response::nothing()
                }
                EntryPayload::Normal(Request {
                    at_ms,
                    term,
                    command,
                }) => Response {
                    outcome: m
                        .state
                        .apply_in_term(term, command, std::time::Duration::from_millis(at_ms))
                        .map_err(|e| e.to_string()),
                },
            };
            responses.push(response);
        }
        write_machine(&self.db, &mut m, Some(stored_up_to))
            .map_err(err(ErrorSubject::StateMachine, ErrorVerb::Write))?;
        let time = m.state.time();
        drop(m);
        self.clock.applied(time);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let mut machine: Machine =
            serde_json::from_slice(&data).map_err(err(subject(), ErrorVerb::Read))?;
        write_machine(&self.db, &mut machine, None).map_err(err(subject(), ErrorVerb::Write))?;
        write_meta(
            &self.db,
            SNAPSHOT,
            &StoredSnapshot {
                meta: meta.clone(),
                data,
            },
        )
        .map_err(err(subject(), ErrorVerb::Write))?;
        let time = machine.state.time();
        *self.machine.write().expect("machine lock") = machine;
        self.clock.applied(time);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored: Option<StoredSnapshot> = read_meta(&self.db, SNAPSHOT)
            .map_err(err(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

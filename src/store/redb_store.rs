//! [`RedbStore`]: the embedded default [`Store`], one redb file per node.
//!
//! Owns the file's tables and their byte layout; must not decode the
//! records it stores. Durability choices (see also `docs/channels.md`):
//!
//! | operation | redb durability | why |
//! | --- | --- | --- |
//! | [`Store::append_outbox`] | `Immediate`, two-phase commit | "accepted" means on disk; one fsync covers the batch (group commit) |
//! | [`Store::dedupe_record`] | `Immediate` | a receiver acks only what survives a crash |
//!
//! Appends and dedupe records that arrive while a durable commit runs —
//! from any stream, any thread — wait for it and then share the next one
//! ([`super::group::GroupCommitter`]): one fsync covers the batches of every
//! stream of the node. The sync channel's owner and subscriber commits
//! (`redb_store/sync.rs`) join the same group commit.
//!
//! | [`Store::set_cursor`] | `Immediate` | a cursor is a promise to the peer |
//! | [`Store::ack_outbox`] | `None` by default ([`RedbOptions::durable_acks`]) | an ack lost in a crash only causes a resend, which the receiver deduplicates; it becomes durable with the next `Immediate` commit |
//! | prunes | `None` | a lost prune only retains more |

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use super::group::GroupCommitter;
use super::{
    AppTxn, AppendOutcome, AtomicApply, AtomicBatch, DedupeRecord, OutboxBatch, OutboxRecord,
    Store, StoreError, prune_victims,
};
use crate::vocab::StreamId;

mod sync;

/// (stream, seq) → encoded outbox value.
const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
/// (stream, message id) → seq.
const OUTBOX_IDS: TableDefinition<(&str, u64), u64> = TableDefinition::new("outbox_ids");
/// (stream, operation key) → (message id, stamped at ms).
const IDEMPOTENCY: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("idempotency");
/// stream → next seq.
const NEXT_SEQ: TableDefinition<&str, u64> = TableDefinition::new("next_seq");
/// Node-wide counters (`next_message_id`).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (stream, message id) → encoded dedupe value.
const DEDUPE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dedupe");
/// stream → cursor.
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// `"out/<stream>"` → this node's sender incarnation; `"in/<stream>"` → the
/// newest remote sender incarnation the receiver accepted.
const INCARNATIONS: TableDefinition<&str, u64> = TableDefinition::new("incarnations");

const NEXT_MESSAGE_ID: &str = "next_message_id";

macro_rules! redb_errors {
    ($($t:ident),*) => {$(
        impl From<redb::$t> for StoreError {
            fn from(e: redb::$t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
redb_errors!(
    DatabaseError,
    TransactionError,
    TableError,
    StorageError,
    CommitError,
    SetDurabilityError
);

/// Options of a [`RedbStore`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedbOptions {
    /// Commit acks with `Durability::Immediate` (an fsync per ack batch)
    /// instead of `Durability::None`. Default `false`: a lost ack only
    /// causes a deduplicated resend.
    pub durable_acks: bool,
}

impl RedbOptions {
    /// Sets [`RedbOptions::durable_acks`].
    pub fn durable_acks(mut self, yes: bool) -> Self {
        self.durable_acks = yes;
        self
    }
}

/// The redb-backed [`Store`]: one file per node.
pub struct RedbStore {
    db: Database,
    options: RedbOptions,
    durable_commits: AtomicU64,
    grouped_ops: AtomicU64,
    group: GroupCommitter<DurableOp, DurableOut>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("options", &self.options)
            .field("durable_commits", &self.durable_commits())
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the store file at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, RedbOptions::default())
    }

    /// Opens (or creates) the store file at `path`.
    pub fn open_with(path: impl AsRef<Path>, options: RedbOptions) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let store = Self {
            db,
            options,
            durable_commits: AtomicU64::new(0),
            grouped_ops: AtomicU64::new(0),
            group: GroupCommitter::default(),
        };
        // Create every table once so readers never meet a missing one.
        let txn = store.db.begin_write()?;
        txn.open_table(OUTBOX)?;
        txn.open_table(OUTBOX_IDS)?;
        txn.open_table(IDEMPOTENCY)?;
        txn.open_table(NEXT_SEQ)?;
        txn.open_table(META)?;
        txn.open_table(DEDUPE)?;
        txn.open_table(CURSORS)?;
        txn.open_table(INCARNATIONS)?;
        store.commit(txn, true)?;
        Ok(store)
    }

    /// The redb database, for application tables of their own in the
    /// node's one file (the built-in key-value handler's `kv` table).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// How many `Immediate` (fsync'd) write transactions this handle has
    /// committed since it was opened; a metric, and how tests observe group
    /// commit.
    pub fn durable_commits(&self) -> u64 {
        self.durable_commits.load(Ordering::Relaxed)
    }

    fn begin(&self, durable: bool) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        if durable {
            txn.set_durability(Durability::Immediate)?;
            txn.set_two_phase_commit(true);
        } else {
            txn.set_durability(Durability::None)?;
        }
        Ok(txn)
    }

    /// Commits; `durable` must match what the transaction was begun with
    /// (redb's default, used by `open_with`, is `Immediate`).
    fn commit(&self, txn: WriteTransaction, durable: bool) -> Result<(), StoreError> {
        txn.commit()?;
        if durable {
            self.durable_commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Store for RedbStore {
    fn append_outbox(&self, batch: &OutboxBatch) -> Result<Vec<AppendOutcome>, StoreError> {
        match self.durable(DurableOp::Append(batch.clone())) {
            DurableOut::Appended(r) => r,
            _ => Err(StoreError::Corrupt("group commit mixed up".into())),
        }
    }

    fn ack_outbox(&self, stream: &StreamId, message_ids: &[u64]) -> Result<usize, StoreError> {
        let durable = self.options.durable_acks;
        let txn = self.begin(durable)?;
        let mut removed = 0;
        {
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut ids = txn.open_table(OUTBOX_IDS)?;
            for id in message_ids {
                let seq = ids.remove((stream.as_str(), *id))?.map(|v| v.value());
                if let Some(seq) = seq {
                    outbox.remove((stream.as_str(), seq))?;
                    removed += 1;
                }
            }
        }
        self.commit(txn, durable)?;
        Ok(removed)
    }

    fn pending_outbox(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let outbox = txn.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for item in outbox.iter()? {
            let (k, v) = item?;
            let (stream, seq) = k.value();
            let (message_id, class, replayable, operation_key, record) = decode_outbox(v.value())?;
            out.push(OutboxRecord {
                stream: StreamId::new(stream),
                message_id,
                seq,
                record,
                operation_key,
                class,
                replayable,
            });
        }
        Ok(out)
    }

    fn pending_outbox_for(&self, stream: &StreamId) -> Result<Vec<OutboxRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let outbox = txn.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for item in outbox.range((stream.as_str(), 0)..=(stream.as_str(), u64::MAX))? {
            let (k, v) = item?;
            let (_, seq) = k.value();
            let (message_id, class, replayable, operation_key, record) = decode_outbox(v.value())?;
            out.push(OutboxRecord {
                stream: stream.clone(),
                message_id,
                seq,
                record,
                operation_key,
                class,
                replayable,
            });
        }
        Ok(out)
    }

    fn sender_incarnation(&self, stream: &StreamId, fresh: u64) -> Result<u64, StoreError> {
        let key = format!("out/{stream}");
        {
            let txn = self.db.begin_read()?;
            if let Some(v) = txn.open_table(INCARNATIONS)?.get(key.as_str())? {
                return Ok(v.value());
            }
        }
        let txn = self.begin(true)?;
        let value = {
            let mut table = txn.open_table(INCARNATIONS)?;
            let existing = table.get(key.as_str())?.map(|v| v.value());
            match existing {
                Some(v) => v,
                None => {
                    table.insert(key.as_str(), fresh)?;
                    fresh
                }
            }
        };
        self.commit(txn, true)?;
        Ok(value)
    }

    fn peer_incarnation(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let key = format!("in/{stream}");
        Ok(txn
            .open_table(INCARNATIONS)?
            .get(key.as_str())?
            .map(|v| v.value()))
    }

    fn set_peer_incarnation(&self, stream: &StreamId, incarnation: u64) -> Result<(), StoreError> {
        let txn = self.begin(true)?;
        txn.open_table(INCARNATIONS)?
            .insert(format!("in/{stream}").as_str(), incarnation)?;
        self.commit(txn, true)
    }

    fn next_ids(&self, stream: &StreamId) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let seq = txn
            .open_table(NEXT_SEQ)?
            .get(stream.as_str())?
            .map_or(1, |v| v.value());
        let id = txn
            .open_table(META)?
            .get(NEXT_MESSAGE_ID)?
            .map_or(1, |v| v.value());
        Ok((seq, id))
    }

    fn idempotency_prune(&self, older_than_ms: u64) -> Result<usize, StoreError> {
        let txn = self.begin(false)?;
        let mut removed = 0;
        {
            let mut idem = txn.open_table(IDEMPOTENCY)?;
            idem.retain(|_, (_, at)| {
                let keep = at >= older_than_ms;
                removed += usize::from(!keep);
                keep
            })?;
        }
        self.commit(txn, false)?;
        Ok(removed)
    }

    fn dedupe_lookup(
        &self,
        stream: &StreamId,
        message_id: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEDUPE)?;
        match table.get((stream.as_str(), message_id))? {
            Some(v) => Ok(Some(decode_dedupe(v.value())?.2)),
            None => Ok(None),
        }
    }

    fn dedupe_record(
        &self,
        records: &[DedupeRecord],
        cursors: &[(StreamId, u64)],
    ) -> Result<(), StoreError> {
        match self.durable(DurableOp::Record(records.to_vec(), cursors.to_vec())) {
            DurableOut::Recorded(r) => r,
            _ => Err(StoreError::Corrupt("group commit mixed up".into())),
        }
    }

    fn dedupe_record_with(&self, apply: AtomicApply) -> Result<AtomicBatch, StoreError> {
        match self.durable(DurableOp::Atomic(apply)) {
            DurableOut::Atomic(r) => r,
            _ => Err(StoreError::Corrupt("group commit mixed up".into())),
        }
    }

    fn app_get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let name = app_name(table)?;
        let txn = self.db.begin_read()?;
        let t = match txn.open_table(app_def(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    fn app_len(&self, table: &str) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let name = app_name(table)?;
        let txn = self.db.begin_read()?;
        let t = match txn.open_table(app_def(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        Ok(t.len()?)
    }

    fn dedupe_load(&self) -> Result<Vec<DedupeRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEDUPE)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let (stream, message_id) = k.value();
            let (seq, recorded_at_ms, reply) = decode_dedupe(v.value())?;
            out.push(DedupeRecord {
                stream: StreamId::new(stream),
                message_id,
                seq,
                reply,
                recorded_at_ms,
            });
        }
        Ok(out)
    }

    fn dedupe_load_for(&self, stream: &StreamId) -> Result<Vec<DedupeRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEDUPE)?;
        let mut out = Vec::new();
        for item in table.range((stream.as_str(), 0)..=(stream.as_str(), u64::MAX))? {
            let (k, v) = item?;
            let (_, message_id) = k.value();
            let (seq, recorded_at_ms, reply) = decode_dedupe(v.value())?;
            out.push(DedupeRecord {
                stream: stream.clone(),
                message_id,
                seq,
                reply,
                recorded_at_ms,
            });
        }
        Ok(out)
    }

    fn dedupe_prune(
        &self,
        older_than_ms: u64,
        keep_per_stream: usize,
    ) -> Result<usize, StoreError> {
        let records = self.dedupe_load()?;
        let doomed = prune_victims(
            records
                .iter()
                .map(|r| (&r.stream, r.message_id, r.recorded_at_ms)),
            older_than_ms,
            keep_per_stream,
        );
        if doomed.is_empty() {
            return Ok(0);
        }
        let txn = self.begin(false)?;
        {
            let mut table = txn.open_table(DEDUPE)?;
            for (stream, id) in &doomed {
                table.remove((stream.as_str(), *id))?;
            }
        }
        self.commit(txn, false)?;
        Ok(doomed.len())
    }

    fn set_cursor(&self, stream: &StreamId, cursor: u64) -> Result<(), StoreError> {
        let txn = self.begin(true)?;
        txn.open_table(CURSORS)?.insert(stream.as_str(), cursor)?;
        self.commit(txn, true)
    }

    fn cursor(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(CURSORS)?
            .get(stream.as_str())?
            .map(|v| v.value()))
    }
}

/// Outbox value: message id (8, BE) · class (1) · replayable (1) ·
/// key length (4, BE; `u32::MAX` = no key) · key · record.
/// A durable write that joins the next group commit.
enum DurableOp {
    Append(OutboxBatch),
    Record(Vec<DedupeRecord>, Vec<(StreamId, u64)>),
    Atomic(AtomicApply),
    Sync(SyncOp),
}

/// A sync channel commit joining the node's group commit: the owners and
/// subscribers of every document share one transaction and fsync with the
/// command streams.
enum SyncOp {
    Owner(String, crate::store::sync_store::SyncOwnerCommit),
    Subscriber(StreamId, crate::store::sync_store::SyncSubscriberCommit),
}

/// The result of one [`DurableOp`].
enum DurableOut {
    Appended(Result<Vec<AppendOutcome>, StoreError>),
    Recorded(Result<(), StoreError>),
    Atomic(Result<AtomicBatch, StoreError>),
    Synced(Result<(), StoreError>),
}

impl RedbStore {
    /// Runs `op` in the next group commit: concurrent appends and dedupe
    /// records of every stream of the node share one transaction and one
    /// fsync (see [`super::group`]).
    fn durable(&self, op: DurableOp) -> DurableOut {
        self.group.run(op, |ops| self.commit_group(ops))
    }

    fn commit_group(&self, ops: Vec<DurableOp>) -> Vec<DurableOut> {
        let n = ops.len();
        // What each operation was, to fail them all alike if the commit fails.
        let kinds: Vec<u8> = ops
            .iter()
            .map(|op| match op {
                DurableOp::Append(_) => 0,
                DurableOp::Record(..) => 1,
                DurableOp::Atomic(_) => 2,
                DurableOp::Sync(_) => 3,
            })
            .collect();
        let run = move || -> Result<Vec<DurableOut>, StoreError> {
            let txn = self.begin(true)?;
            let mut outs = Vec::with_capacity(n);
            for op in ops {
                outs.push(match op {
                    DurableOp::Append(batch) => DurableOut::Appended(Ok(append_in(&txn, &batch)?)),
                    DurableOp::Record(records, cursors) => {
                        record_in(&txn, &records, &cursors)?;
                        DurableOut::Recorded(Ok(()))
                    }
                    DurableOp::Atomic(apply) => {
                        let batch = apply(&mut RedbTxn(&txn))?;
                        record_in(&txn, &batch.records, &batch.cursors)?;
                        DurableOut::Atomic(Ok(batch))
                    }
                    DurableOp::Sync(SyncOp::Owner(doc, commit)) => {
                        sync::owner_commit_in(&txn, &doc, &commit)?;
                        DurableOut::Synced(Ok(()))
                    }
                    DurableOp::Sync(SyncOp::Subscriber(stream, commit)) => {
                        sync::subscriber_commit_in(&txn, &stream, &commit)?;
                        DurableOut::Synced(Ok(()))
                    }
                });
            }
            self.commit(txn, true)?;
            self.grouped_ops.fetch_add(n as u64, Ordering::Relaxed);
            Ok(outs)
        };
        match run() {
            Ok(outs) => outs,
            Err(e) => {
                // The whole transaction failed: so did every operation in it.
                let why = e.to_string();
                kinds
                    .iter()
                    .map(|kind| {
                        let e = StoreError::Corrupt(format!("group commit failed: {why}"));
                        match kind {
                            0 => DurableOut::Appended(Err(e)),
                            1 => DurableOut::Recorded(Err(e)),
                            2 => DurableOut::Atomic(Err(e)),
                            _ => DurableOut::Synced(Err(e)),
                        }
                    })
                    .collect()
            }
        }
    }

    /// Runs a sync channel commit in the next group commit.
    fn durable_sync(&self, op: SyncOp) -> Result<(), StoreError> {
        match self.durable(DurableOp::Sync(op)) {
            DurableOut::Synced(r) => r,
            _ => Err(StoreError::Corrupt("group commit mixed up".into())),
        }
    }

    /// How many durable operations (appends, dedupe records, sync commits) the group
    /// commits have carried; with [`RedbStore::durable_commits`] it shows how
    /// many operations shared each fsync.
    pub fn grouped_ops(&self) -> u64 {
        self.grouped_ops.load(Ordering::Relaxed)
    }
}

/// The redb name of an application table (checked): `app/<table>`.
fn app_name(table: &str) -> Result<String, StoreError> {
    super::check_table(table)?;
    Ok(format!("app/{table}"))
}

/// The definition of an application table named by [`app_name`].
fn app_def(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

/// An [`AppTxn`] on a redb write transaction.
struct RedbTxn<'a>(&'a WriteTransaction);

impl AppTxn for RedbTxn<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.0.open_table(app_def(&app_name(table)?))?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    fn insert(
        &mut self,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut t = self.0.open_table(app_def(&app_name(table)?))?;
        let old = t.insert(key, value)?.map(|v| v.value().to_vec());
        Ok(old)
    }

    fn remove(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut t = self.0.open_table(app_def(&app_name(table)?))?;
        let old = t.remove(key)?.map(|v| v.value().to_vec());
        Ok(old)
    }
}

/// Writes one outbox batch inside `txn`, assigning ids.
fn append_in(
    txn: &WriteTransaction,
    batch: &OutboxBatch,
) -> Result<Vec<AppendOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(batch.entries.len());
    {
        let mut outbox = txn.open_table(OUTBOX)?;
        let mut ids = txn.open_table(OUTBOX_IDS)?;
        let mut idem = txn.open_table(IDEMPOTENCY)?;
        let mut seqs = txn.open_table(NEXT_SEQ)?;
        let mut meta = txn.open_table(META)?;
        let mut cursors = txn.open_table(CURSORS)?;
        let mut next_id = meta.get(NEXT_MESSAGE_ID)?.map_or(1, |v| v.value());
        for e in &batch.entries {
            let stream = e.stream.as_str();
            if let Some(key) = &e.operation_key
                && let Some(v) = idem.get((stream, key.as_str()))?
            {
                outcomes.push(AppendOutcome::DuplicateOf {
                    message_id: v.value().0,
                });
                continue;
            }
            let message_id = next_id;
            next_id += 1;
            let seq = seqs.get(stream)?.map_or(1, |v| v.value());
            seqs.insert(stream, seq + 1)?;
            if let Some(key) = &e.operation_key {
                idem.insert((stream, key.as_str()), (message_id, batch.now_ms))?;
            }
            ids.insert((stream, message_id), seq)?;
            let value = encode_outbox(
                message_id,
                e.class,
                e.replayable,
                e.operation_key.as_deref(),
                &e.record,
            );
            outbox.insert((stream, seq), value.as_slice())?;
            outcomes.push(AppendOutcome::Stored { message_id, seq });
        }
        meta.insert(NEXT_MESSAGE_ID, next_id)?;
        for (stream, cursor) in &batch.cursors {
            cursors.insert(stream.as_str(), *cursor)?;
        }
    }
    Ok(outcomes)
}

/// Writes dedupe records and cursors inside `txn`.
fn record_in(
    txn: &WriteTransaction,
    records: &[DedupeRecord],
    cursors: &[(StreamId, u64)],
) -> Result<(), StoreError> {
    {
        let mut dedupe = txn.open_table(DEDUPE)?;
        let mut table = txn.open_table(CURSORS)?;
        for r in records {
            let key = (r.stream.as_str(), r.message_id);
            if dedupe.get(key)?.is_none() {
                let value = encode_dedupe(r.seq, r.recorded_at_ms, &r.reply);
                dedupe.insert(key, value.as_slice())?;
            }
        }
        for (stream, cursor) in cursors {
            table.insert(stream.as_str(), *cursor)?;
        }
    }
    Ok(())
}

fn encode_outbox(
    message_id: u64,
    class: u8,
    replayable: bool,
    key: Option<&str>,
    record: &[u8],
) -> Vec<u8> {
    let key_len = key.map_or(0, str::len);
    let mut v = Vec::with_capacity(14 + key_len + record.len());
    v.extend_from_slice(&message_id.to_be_bytes());
    v.push(class);
    v.push(u8::from(replayable));
    match key {
        Some(k) => {
            v.extend_from_slice(&(k.len() as u32).to_be_bytes());
            v.extend_from_slice(k.as_bytes());
        }
        None => v.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
    v.extend_from_slice(record);
    v
}

type OutboxValue = (u64, u8, bool, Option<String>, Vec<u8>);

fn decode_outbox(v: &[u8]) -> Result<OutboxValue, StoreError> {
    let corrupt = || StoreError::Corrupt("outbox value".into());
    if v.len() < 14 {
        return Err(corrupt());
    }
    let message_id = u64::from_be_bytes(v[0..8].try_into().map_err(|_| corrupt())?);
    let class = v[8];
    let replayable = v[9] != 0;
    let key_len = u32::from_be_bytes(v[10..14].try_into().map_err(|_| corrupt())?);
    let (key, rest) = if key_len == u32::MAX {
        (None, &v[14..])
    } else {
        let end = 14usize
            .checked_add(key_len as usize)
            .filter(|e| *e <= v.len())
            .ok_or_else(corrupt)?;
        let key = std::str::from_utf8(&v[14..end]).map_err(|_| corrupt())?;
        (Some(key.to_owned()), &v[end..])
    };
    Ok((message_id, class, replayable, key, rest.to_vec()))
}

/// Dedupe value: seq (8, BE) · recorded at ms (8, BE) · reply.
fn encode_dedupe(seq: u64, at_ms: u64, reply: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + reply.len());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&at_ms.to_be_bytes());
    v.extend_from_slice(reply);
    v
}

fn decode_dedupe(v: &[u8]) -> Result<(u64, u64, Vec<u8>), StoreError> {
    let corrupt = || StoreError::Corrupt("dedupe value".into());
    if v.len() < 16 {
        return Err(corrupt());
    }
    let seq = u64::from_be_bytes(v[0..8].try_into().map_err(|_| corrupt())?);
    let at = u64::from_be_bytes(v[8..16].try_into().map_err(|_| corrupt())?);
    Ok((seq, at, v[16..].to_vec()))
}

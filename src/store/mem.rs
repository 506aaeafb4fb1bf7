//! [`MemStore`]: the in-memory [`Store`], **not durable**.
//!
//! Owns nothing but its maps. It implements exactly the semantics of the
//! redb backend (transactions are all-or-nothing under one lock, ids come
//! from per-stream and per-node counters) so tests and memory-transport
//! simulations can run fast; a "restart" in a test is rebuilding the
//! channel cores from the same `MemStore`. A process crash loses it all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    AppTxn, AppendOutcome, AtomicApply, AtomicBatch, DedupeRecord, NewOutboxEntry, OutboxBatch,
    OutboxRecord, Store, StoreError,
};
use crate::vocab::StreamId;

mod sync;

#[derive(Default)]
struct Inner {
    /// (stream, seq) → record.
    outbox: BTreeMap<(StreamId, u64), OutboxRecord>,
    /// (stream, message id) → seq.
    outbox_ids: BTreeMap<(StreamId, u64), u64>,
    /// (stream, operation key) → (message id, stamped at ms).
    idempotency: BTreeMap<(StreamId, String), (u64, u64)>,
    /// stream → next seq.
    next_seq: BTreeMap<StreamId, u64>,
    /// The node's next message id (0 = never assigned, read as 1).
    next_message_id: u64,
    /// (stream, message id) → record.
    dedupe: BTreeMap<(StreamId, u64), DedupeRecord>,
    cursors: BTreeMap<StreamId, u64>,
    /// Sender incarnations by stream.
    sender_incarnations: BTreeMap<StreamId, u64>,
    /// Accepted remote sender incarnations by stream.
    peer_incarnations: BTreeMap<StreamId, u64>,
    /// Application tables: (table, key) → value.
    app: BTreeMap<(String, Vec<u8>), Vec<u8>>,
}

/// An [`AppTxn`] over the committed application tables plus the writes of
/// the running transaction, applied only if it commits.
struct MemTxn<'a> {
    committed: &'a BTreeMap<(String, Vec<u8>), Vec<u8>>,
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
}

impl AppTxn for MemTxn<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        super::check_table(table)?;
        let k = (table.to_string(), key.to_vec());
        Ok(match self.writes.get(&k) {
            Some(v) => v.clone(),
            None => self.committed.get(&k).cloned(),
        })
    }

    fn insert(
        &mut self,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let old = self.get(table, key)?;
        self.writes
            .insert((table.to_string(), key.to_vec()), Some(value.to_vec()));
        Ok(old)
    }

    fn remove(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let old = self.get(table, key)?;
        self.writes.insert((table.to_string(), key.to_vec()), None);
        Ok(old)
    }
}

/// An in-memory [`Store`]. **Not durable**: for tests and simulations only.
///
/// Cloning shares the same contents (like reopening the same file).
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
    /// The sync channel's records (see [`crate::store::SyncStore`]).
    sync: Arc<Mutex<sync::SyncMem>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Poisoned)
    }
}

impl Store for MemStore {
    fn append_outbox(&self, batch: &OutboxBatch) -> Result<Vec<AppendOutcome>, StoreError> {
        let mut g = self.lock()?;
        let mut outcomes = Vec::with_capacity(batch.entries.len());
        for NewOutboxEntry {
            stream,
            record,
            operation_key,
            class,
            replayable,
        } in &batch.entries
        {
            if let Some(key) = operation_key
                && let Some((id, _)) = g.idempotency.get(&(stream.clone(), key.clone()))
            {
                outcomes.push(AppendOutcome::DuplicateOf { message_id: *id });
                continue;
            }
            let message_id = g.next_message_id.max(1);
            g.next_message_id = message_id + 1;
            let seq = g.next_seq.get(stream).copied().unwrap_or(1);
            g.next_seq.insert(stream.clone(), seq + 1);
            if let Some(key) = operation_key {
                g.idempotency
                    .insert((stream.clone(), key.clone()), (message_id, batch.now_ms));
            }
            g.outbox_ids.insert((stream.clone(), message_id), seq);
            g.outbox.insert(
                (stream.clone(), seq),
                OutboxRecord {
                    stream: stream.clone(),
                    message_id,
                    seq,
                    record: record.clone(),
                    operation_key: operation_key.clone(),
                    class: *class,
                    replayable: *replayable,
                },
            );
            outcomes.push(AppendOutcome::Stored { message_id, seq });
        }
        for (stream, cursor) in &batch.cursors {
            g.cursors.insert(stream.clone(), *cursor);
        }
        Ok(outcomes)
    }

    fn ack_outbox(&self, stream: &StreamId, message_ids: &[u64]) -> Result<usize, StoreError> {
        let mut g = self.lock()?;
        let mut removed = 0;
        for id in message_ids {
            if let Some(seq) = g.outbox_ids.remove(&(stream.clone(), *id)) {
                g.outbox.remove(&(stream.clone(), seq));
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn pending_outbox(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        Ok(self.lock()?.outbox.values().cloned().collect())
    }

    fn next_ids(&self, stream: &StreamId) -> Result<(u64, u64), StoreError> {
        let g = self.lock()?;
        Ok((
            g.next_seq.get(stream).copied().unwrap_or(1),
            g.next_message_id.max(1),
        ))
    }

    fn idempotency_prune(&self, older_than_ms: u64) -> Result<usize, StoreError> {
        let mut g = self.lock()?;
        let before = g.idempotency.len();
        g.idempotency.retain(|_, (_, at)| *at >= older_than_ms);
        Ok(before - g.idempotency.len())
    }

    fn dedupe_lookup(
        &self,
        stream: &StreamId,
        message_id: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()?
            .dedupe
            .get(&(stream.clone(), message_id))
            .map(|r| r.reply.clone()))
    }

    fn dedupe_record(
        &self,
        records: &[DedupeRecord],
        cursors: &[(StreamId, u64)],
    ) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        for r in records {
            g.dedupe
                .entry((r.stream.clone(), r.message_id))
                .or_insert_with(|| r.clone());
        }
        for (stream, cursor) in cursors {
            g.cursors.insert(stream.clone(), *cursor);
        }
        Ok(())
    }

    fn dedupe_record_with(&self, apply: AtomicApply) -> Result<AtomicBatch, StoreError> {
        let mut g = self.lock()?;
        let (batch, writes) = {
            let mut txn = MemTxn {
                committed: &g.app,
                writes: BTreeMap::new(),
            };
            let batch = apply(&mut txn)?;
            (batch, txn.writes)
        };
        for (k, v) in writes {
            match v {
                Some(v) => g.app.insert(k, v),
                None => g.app.remove(&k),
            };
        }
        for r in &batch.records {
            g.dedupe
                .entry((r.stream.clone(), r.message_id))
                .or_insert_with(|| r.clone());
        }
        for (stream, cursor) in &batch.cursors {
            g.cursors.insert(stream.clone(), *cursor);
        }
        Ok(batch)
    }

    fn app_get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        super::check_table(table)?;
        Ok(self
            .lock()?
            .app
            .get(&(table.to_string(), key.to_vec()))
            .cloned())
    }

    fn app_len(&self, table: &str) -> Result<u64, StoreError> {
        super::check_table(table)?;
        let g = self.lock()?;
        Ok(g.app.keys().filter(|(t, _)| t == table).count() as u64)
    }

    fn pending_outbox_for(&self, stream: &StreamId) -> Result<Vec<OutboxRecord>, StoreError> {
        let g = self.lock()?;
        Ok(g.outbox
            .range((stream.clone(), 0)..=(stream.clone(), u64::MAX))
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn sender_incarnation(&self, stream: &StreamId, fresh: u64) -> Result<u64, StoreError> {
        let mut g = self.lock()?;
        Ok(*g.sender_incarnations.entry(stream.clone()).or_insert(fresh))
    }

    fn peer_incarnation(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        Ok(self.lock()?.peer_incarnations.get(stream).copied())
    }

    fn set_peer_incarnation(&self, stream: &StreamId, incarnation: u64) -> Result<(), StoreError> {
        self.lock()?
            .peer_incarnations
            .insert(stream.clone(), incarnation);
        Ok(())
    }

    fn dedupe_load_for(&self, stream: &StreamId) -> Result<Vec<DedupeRecord>, StoreError> {
        let g = self.lock()?;
        Ok(g.dedupe
            .range((stream.clone(), 0)..=(stream.clone(), u64::MAX))
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn dedupe_load(&self) -> Result<Vec<DedupeRecord>, StoreError> {
        Ok(self.lock()?.dedupe.values().cloned().collect())
    }

    fn dedupe_prune(
        &self,
        older_than_ms: u64,
        keep_per_stream: usize,
    ) -> Result<usize, StoreError> {
        let mut g = self.lock()?;
        let doomed = super::prune_victims(
            g.dedupe
                .values()
                .map(|r| (&r.stream, r.message_id, r.recorded_at_ms)),
            older_than_ms,
            keep_per_stream,
        );
        for key in &doomed {
            g.dedupe.remove(key);
        }
        Ok(doomed.len())
    }

    fn set_cursor(&self, stream: &StreamId, cursor: u64) -> Result<(), StoreError> {
        self.lock()?.cursors.insert(stream.clone(), cursor);
        Ok(())
    }

    fn cursor(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        Ok(self.lock()?.cursors.get(stream).copied())
    }
}

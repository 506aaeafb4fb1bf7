//! The durable store: outbox, idempotency records, id counters, receiver
//! dedupe records and cursors, behind the small [`Store`] trait.
//!
//! Owns durability and nothing else: it stores *bytes* (an encoded command
//! envelope, an encoded reply) keyed by stream and ids, and never decodes
//! them. It must not touch channels, routing, transports or tokio: every
//! method is synchronous, and the caller (the node's store actor, or a
//! blocking thread) decides where it runs. One writer at a time is enough.
//!
//! Backends:
//! - [`RedbStore`]: the embedded default, one redb file per node; every
//!   write that the caller is told about is fsync'd first.
//! - [`MemStore`]: in memory, **not durable**; for unit tests and the
//!   memory-transport simulations.
//!
//! The contract the channels rely on (see `docs/channels.md`):
//! - [`Store::append_outbox`] writes a whole [`OutboxBatch`] (outbox entries,
//!   their idempotency records, the id counters and any cursor changes) in
//!   one transaction, and returns only after it is durable. One call covers
//!   many concurrent sends with a single fsync (group commit).
//! - Ids are assigned by the store inside that transaction, so they never
//!   repeat after a restart and sequence numbers of a stream have no gaps.
//! - [`Store::dedupe_record`] is durable before it returns: a receiver acks
//!   only what it has recorded.
//! - [`Store::dedupe_record_with`] runs an application's writes (through an
//!   [`AppTxn`]) in the same durable transaction as the dedupe records and
//!   cursor they go with: after any crash both are there or neither is.

pub mod group;
mod mem;
mod redb_store;
pub mod sync_store;

pub use mem::MemStore;
pub use redb_store::{RedbOptions, RedbStore};
pub use sync_store::SyncStore;

use crate::vocab::StreamId;

/// A command to be written to the outbox. The store assigns its ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOutboxEntry {
    /// The logical stream the command is sent on.
    pub stream: StreamId,
    /// The encoded command envelope; opaque to the store.
    pub record: Vec<u8>,
    /// The caller's operation key, if any: a second entry with the same key
    /// on the same stream is not stored (see [`AppendOutcome::DuplicateOf`]).
    pub operation_key: Option<String>,
    /// The traffic class's wire code (see [`crate::vocab::TrafficClass`]).
    pub class: u8,
    /// Whether the command may be resent on another path after a route
    /// change or restart (see `docs/channels.md`, classification).
    pub replayable: bool,
}

/// A command as stored in the outbox, with the ids the store assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRecord {
    /// The logical stream.
    pub stream: StreamId,
    /// The message id: unique among all messages this node's store assigned.
    pub message_id: u64,
    /// The per-stream sequence number (starts at 1, no gaps).
    pub seq: u64,
    /// The encoded command envelope.
    pub record: Vec<u8>,
    /// The operation key it was stored with, if any.
    pub operation_key: Option<String>,
    /// The traffic class's wire code.
    pub class: u8,
    /// Whether it may be replayed after a route change or restart.
    pub replayable: bool,
}

/// One group commit: everything in it becomes durable together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxBatch {
    /// The commands, in the order their ids are assigned.
    pub entries: Vec<NewOutboxEntry>,
    /// Cursor changes committed in the same transaction.
    pub cursors: Vec<(StreamId, u64)>,
    /// Wall-clock time of the commit in milliseconds since the Unix epoch;
    /// stamped on idempotency records for [`Store::idempotency_prune`].
    pub now_ms: u64,
}

/// What happened to one entry of an [`OutboxBatch`], in the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppendOutcome {
    /// Stored durably with these ids: the command is *accepted*.
    Stored {
        /// The assigned message id.
        message_id: u64,
        /// The assigned per-stream sequence number.
        seq: u64,
    },
    /// Not stored: the operation key was already used on this stream by the
    /// message with this id (which may already be acked and gone from the
    /// outbox; the idempotency record outlives it until pruned).
    DuplicateOf {
        /// The id of the message first stored with the key.
        message_id: u64,
    },
}

/// A receiver-side dedupe record: a message that was applied (or cancelled)
/// and the reply that was sent for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupeRecord {
    /// The logical stream.
    pub stream: StreamId,
    /// The sender's message id.
    pub message_id: u64,
    /// The sender's sequence number of the message.
    pub seq: u64,
    /// The encoded reply, returned unchanged to a duplicate.
    pub reply: Vec<u8>,
    /// When it was recorded, in milliseconds since the Unix epoch.
    pub recorded_at_ms: u64,
}

/// Errors of a store backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The redb backend failed (I/O, corruption, a full disk …).
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    /// A stored value could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// A previous panic while holding the store's lock left it unusable.
    #[error("store lock poisoned")]
    Poisoned,
    /// The backend does not implement this operation (a test double).
    #[error("not supported by this store: {0}")]
    Unsupported(&'static str),
    /// An application table name is empty, too long, or not allowed.
    #[error("bad application table name {0:?}")]
    BadTable(String),
}

/// Longest application table name (see [`AppTxn`]).
pub const APP_TABLE_MAX: usize = 64;

/// Application tables inside a store transaction: each `table` is a
/// byte-keyed map of the application's own, kept apart from the channels'
/// tables (in redb, the table `app/<table>` of the node's file). Table
/// names are 1–[`APP_TABLE_MAX`] bytes.
///
/// Reads see the writes made earlier in the same transaction, including
/// those of earlier commands of the same group commit.
pub trait AppTxn {
    /// The value under `key`.
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key` to `value`; returns the previous value.
    fn insert(
        &mut self,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// Removes `key`; returns the previous value.
    fn remove(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

/// What an atomic apply leaves to be committed with its effects: the
/// dedupe records (whose replies the caller gets back), cursor changes, and
/// replies that are not recorded (class C).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AtomicBatch {
    /// Dedupe records, written as by [`Store::dedupe_record`].
    pub records: Vec<DedupeRecord>,
    /// Cursor changes.
    pub cursors: Vec<(StreamId, u64)>,
    /// Replies not recorded (returned unchanged).
    pub unrecorded: Vec<(u64, Vec<u8>)>,
}

/// The application's part of a [`Store::dedupe_record_with`]: runs inside
/// the store's write transaction (possibly with other callers' operations:
/// group commit) and returns what to record with its writes. An `Err`
/// aborts the whole transaction.
pub type AtomicApply =
    Box<dyn FnOnce(&mut dyn AppTxn) -> Result<AtomicBatch, StoreError> + Send + 'static>;

fn check_table(table: &str) -> Result<(), StoreError> {
    if table.is_empty() || table.len() > APP_TABLE_MAX {
        return Err(StoreError::BadTable(table.to_string()));
    }
    Ok(())
}

/// The storage contract of the channels. Methods are synchronous and may
/// block on disk I/O: call them from the store actor or a blocking thread.
///
/// Every method that returns `Ok` after writing has committed; the ones
/// documented as durable have also been fsync'd.
pub trait Store: Send + Sync + 'static {
    /// Writes the batch in one transaction, durably (fsync before return),
    /// assigning each stored entry the next message id of the node and the
    /// next sequence number of its stream. An entry whose operation key was
    /// already used on its stream is not written and reported as
    /// [`AppendOutcome::DuplicateOf`] (also within the same batch). The
    /// batch's cursor changes commit in the same transaction.
    fn append_outbox(&self, batch: &OutboxBatch) -> Result<Vec<AppendOutcome>, StoreError>;

    /// Removes acknowledged entries of a stream in one transaction; returns
    /// how many were present. Unknown ids are ignored. Durability is the
    /// backend's documented choice: losing an ack in a crash only causes a
    /// resend, which the receiver deduplicates.
    fn ack_outbox(&self, stream: &StreamId, message_ids: &[u64]) -> Result<usize, StoreError>;

    /// Every entry still in the outbox, ordered by stream then sequence.
    fn pending_outbox(&self) -> Result<Vec<OutboxRecord>, StoreError>;

    /// The entries of one stream still in the outbox, in sequence order (a
    /// prefix query: other streams are not read).
    fn pending_outbox_for(&self, stream: &StreamId) -> Result<Vec<OutboxRecord>, StoreError>;

    /// The incarnation of this node's sender on `stream`: the stored one,
    /// or `fresh`, stored durably, if the store has none (a new or wiped
    /// store starts a new sequence space).
    fn sender_incarnation(&self, stream: &StreamId, fresh: u64) -> Result<u64, StoreError>;

    /// The newest incarnation of the remote sender that this node's
    /// receiver of `stream` has accepted, if any.
    fn peer_incarnation(&self, stream: &StreamId) -> Result<Option<u64>, StoreError>;

    /// Records, durably, that the receiver of `stream` has moved on to the
    /// sender incarnation `incarnation`.
    fn set_peer_incarnation(&self, stream: &StreamId, incarnation: u64) -> Result<(), StoreError>;

    /// The ids the next append on `stream` would assign:
    /// `(next_seq, next_message_id)`. Both start at 1.
    fn next_ids(&self, stream: &StreamId) -> Result<(u64, u64), StoreError>;

    /// Drops idempotency records stamped before `older_than_ms`; returns how
    /// many. After that, the same operation key is accepted as new.
    fn idempotency_prune(&self, older_than_ms: u64) -> Result<usize, StoreError>;

    /// The stored reply of a message already applied, if still retained.
    fn dedupe_lookup(
        &self,
        stream: &StreamId,
        message_id: u64,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// Records applied messages and their replies, plus cursor changes
    /// (typically the receiver's delivered sequence), in one durable
    /// transaction. A record for an id already present is left unchanged.
    fn dedupe_record(
        &self,
        records: &[DedupeRecord],
        cursors: &[(StreamId, u64)],
    ) -> Result<(), StoreError>;

    /// Runs `apply` inside one durable write transaction, then writes the
    /// records and cursors it returns in that same transaction, and returns
    /// them once committed. The application's writes, the records and the
    /// cursors become durable together or not at all.
    fn dedupe_record_with(&self, apply: AtomicApply) -> Result<AtomicBatch, StoreError> {
        let _ = apply;
        Err(StoreError::Unsupported("dedupe_record_with"))
    }

    /// Reads `key` of an application table outside any command (see
    /// [`AppTxn`]); the committed state.
    fn app_get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = (table, key);
        Err(StoreError::Unsupported("app_get"))
    }

    /// How many keys an application table holds.
    fn app_len(&self, table: &str) -> Result<u64, StoreError> {
        let _ = table;
        Err(StoreError::Unsupported("app_len"))
    }

    /// Every retained dedupe record, ordered by stream then message id; used
    /// to rebuild the receiver's in-memory dedupe after a restart.
    fn dedupe_load(&self) -> Result<Vec<DedupeRecord>, StoreError>;

    /// The retained dedupe records of one stream, by message id (a prefix
    /// query: other streams are not read).
    fn dedupe_load_for(&self, stream: &StreamId) -> Result<Vec<DedupeRecord>, StoreError>;

    /// Retention: removes dedupe records recorded before `older_than_ms`, and
    /// in each stream all but the `keep_per_stream` with the highest message
    /// ids. Returns how many were removed.
    fn dedupe_prune(&self, older_than_ms: u64, keep_per_stream: usize)
    -> Result<usize, StoreError>;

    /// Sets a stream's cursor, durably.
    fn set_cursor(&self, stream: &StreamId, cursor: u64) -> Result<(), StoreError>;

    /// A stream's cursor, if one was ever set.
    fn cursor(&self, stream: &StreamId) -> Result<Option<u64>, StoreError>;
}

/// The dedupe records to remove under the retention rule of
/// [`Store::dedupe_prune`]. `records` must be ordered by stream then message
/// id (ascending), as both backends store them.
fn prune_victims<'a>(
    records: impl Iterator<Item = (&'a StreamId, u64, u64)>,
    older_than_ms: u64,
    keep_per_stream: usize,
) -> Vec<(StreamId, u64)> {
    let mut per_stream: std::collections::BTreeMap<&StreamId, Vec<(u64, u64)>> =
        std::collections::BTreeMap::new();
    for (stream, id, at) in records {
        per_stream.entry(stream).or_default().push((id, at));
    }
    let mut doomed = Vec::new();
    for (stream, ids) in per_stream {
        let over = ids.len().saturating_sub(keep_per_stream);
        for (i, (id, at)) in ids.into_iter().enumerate() {
            if i < over || at < older_than_ms {
                doomed.push((stream.clone(), id));
            }
        }
    }
    doomed
}

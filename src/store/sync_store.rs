//! The storage contract of the sync channel ([`SyncStore`]): the owner's
//! ordered log, its snapshot, epoch and per-publisher accept marks; the
//! subscriber's cursor, applied state and publish outbox.
//!
//! Owns durability of those records and nothing else: it stores bytes
//! (opaque document updates and snapshots) and never decodes them. Kept
//! apart from [`super::Store`] so the command channel's contract stays
//! unchanged. Every commit is one transaction, durable (fsync'd) before it
//! returns: an owner acknowledges a publish only after the entry is on
//! disk, and a subscriber's cursor always matches its stored applied state.

use super::StoreError;
use crate::vocab::StreamId;

/// One accepted update of an owner's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncLogEntry {
    /// Its sequence number in the owner's current epoch (from 1, no gaps).
    pub seq: u64,
    /// The node that published it.
    pub publisher: String,
    /// The publisher's id of the update (per publisher, from 1).
    pub update_id: u64,
    /// When the owner accepted it, in ms since the Unix epoch.
    pub accepted_at_ms: u64,
    /// The opaque update.
    pub bytes: Vec<u8>,
}

/// A stored snapshot of an owner's document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncSnapshotRecord {
    /// The sequence number of the last update it contains.
    pub seq: u64,
    /// The opaque snapshot.
    pub bytes: Vec<u8>,
    /// For each publisher, the highest update id it contains (accepted at
    /// or before `seq`).
    pub publishers: Vec<(String, u64)>,
}

/// What an owner's store holds for one document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncOwnerRecord {
    /// The log's epoch (never 0 once set).
    pub epoch: u64,
    /// The latest snapshot, if one was taken.
    pub snapshot: Option<SyncSnapshotRecord>,
    /// The retained log entries after trimming, ordered by `seq`.
    pub log: Vec<SyncLogEntry>,
    /// For each publisher, the highest update id accepted (or refused for
    /// good) so far.
    pub publishers: Vec<(String, u64)>,
}

/// One owner transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncOwnerCommit {
    /// The epoch to record (written every commit; changing it resets the log).
    pub epoch: u64,
    /// Drop every stored entry, snapshot and mark first (a log reset).
    pub reset: bool,
    /// Entries to append.
    pub append: Vec<SyncLogEntry>,
    /// Publisher marks to set.
    pub publishers: Vec<(String, u64)>,
    /// A snapshot replacing the stored one.
    pub snapshot: Option<SyncSnapshotRecord>,
    /// Remove entries with `seq <=` this (the replay window moved).
    pub trim_through: Option<u64>,
}

/// What a subscriber's store holds for one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncSubscriberRecord {
    /// The last applied cursor's epoch (0: none yet).
    pub epoch: u64,
    /// The last applied cursor's sequence number.
    pub seq: u64,
    /// The base snapshot of the applied state, if any.
    pub snapshot: Option<Vec<u8>>,
    /// Updates applied on top of the snapshot, in order.
    pub applied: Vec<Vec<u8>>,
    /// Own publishes not yet acknowledged by the owner: (update id, bytes).
    pub outbox: Vec<(u64, Vec<u8>)>,
    /// The next update id to assign (ids start at 1).
    pub next_update_id: u64,
}

/// One subscriber transaction: cursor and applied state change together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncSubscriberCommit {
    /// The new cursor `(epoch, seq)`, if it moved.
    pub cursor: Option<(u64, u64)>,
    /// Replace the base snapshot and clear the applied updates.
    pub replace_snapshot: Option<Vec<u8>>,
    /// Updates to append to the applied state (after any replacement).
    pub append_applied: Vec<Vec<u8>>,
    /// Publishes to add to the outbox.
    pub outbox_add: Vec<(u64, Vec<u8>)>,
    /// Remove outbox entries with an id `<=` this.
    pub outbox_remove_through: Option<u64>,
    /// Outbox entries to remove by id (refused by the owner).
    pub outbox_remove: Vec<u64>,
    /// The new next update id, if ids were assigned.
    pub next_update_id: Option<u64>,
}

impl SyncSubscriberCommit {
    /// Whether the commit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.cursor.is_none()
            && self.replace_snapshot.is_none()
            && self.append_applied.is_empty()
            && self.outbox_add.is_empty()
            && self.outbox_remove_through.is_none()
            && self.outbox_remove.is_empty()
            && self.next_update_id.is_none()
    }

    /// Folds `later` into this commit (as if applied after it).
    pub fn merge(&mut self, later: SyncSubscriberCommit) {
        if later.cursor.is_some() {
            self.cursor = later.cursor;
        }
        if later.replace_snapshot.is_some() {
            self.replace_snapshot = later.replace_snapshot;
            self.append_applied.clear();
        }
        self.append_applied.extend(later.append_applied);
        self.outbox_add.extend(later.outbox_add);
        if let Some(t) = later.outbox_remove_through {
            self.outbox_remove_through = Some(self.outbox_remove_through.map_or(t, |o| o.max(t)));
        }
        self.outbox_remove.extend(later.outbox_remove);
        if later.next_update_id.is_some() {
            self.next_update_id = later.next_update_id;
        }
    }
}

impl SyncOwnerCommit {
    /// Folds `later` into this commit (as if applied after it).
    pub fn merge(&mut self, later: SyncOwnerCommit) {
        if later.reset {
            *self = later;
            return;
        }
        self.epoch = later.epoch;
        self.append.extend(later.append);
        self.publishers.extend(later.publishers);
        if later.snapshot.is_some() {
            self.snapshot = later.snapshot;
        }
        if let Some(t) = later.trim_through {
            self.trim_through = Some(self.trim_through.map_or(t, |o| o.max(t)));
        }
    }

    /// Whether the commit changes nothing but the epoch.
    pub fn is_empty(&self) -> bool {
        !self.reset
            && self.append.is_empty()
            && self.publishers.is_empty()
            && self.snapshot.is_none()
            && self.trim_through.is_none()
    }
}

/// Durable storage of sync channels. Methods are synchronous and may block
/// on disk I/O: call them from a blocking thread.
pub trait SyncStore: Send + Sync + 'static {
    /// Everything stored for the owner of `doc`, if anything.
    fn sync_owner_load(&self, doc: &str) -> Result<Option<SyncOwnerRecord>, StoreError>;

    /// Applies `commit` for `doc` in one durable transaction: reset first,
    /// then append, publisher marks, snapshot, trim.
    fn sync_owner_commit(&self, doc: &str, commit: &SyncOwnerCommit) -> Result<(), StoreError>;

    /// Everything stored for the subscriber of `stream`, if anything.
    fn sync_subscriber_load(
        &self,
        stream: &StreamId,
    ) -> Result<Option<SyncSubscriberRecord>, StoreError>;

    /// Applies `commit` for `stream` in one durable transaction.
    fn sync_subscriber_commit(
        &self,
        stream: &StreamId,
        commit: &SyncSubscriberCommit,
    ) -> Result<(), StoreError>;
}

/// Applies a subscriber commit to an in-memory record (the semantics both
/// backends implement).
pub(crate) fn apply_subscriber_commit(rec: &mut SyncSubscriberRecord, c: &SyncSubscriberCommit) {
    if let Some((epoch, seq)) = c.cursor {
        rec.epoch = epoch;
        rec.seq = seq;
    }
    if let Some(s) = &c.replace_snapshot {
        rec.snapshot = Some(s.clone());
        rec.applied.clear();
    }
    rec.applied.extend(c.append_applied.iter().cloned());
    rec.outbox.extend(c.outbox_add.iter().cloned());
    if let Some(t) = c.outbox_remove_through {
        rec.outbox.retain(|(id, _)| *id > t);
    }
    rec.outbox.retain(|(id, _)| !c.outbox_remove.contains(id));
    rec.outbox.sort_by_key(|(id, _)| *id);
    rec.outbox.dedup_by_key(|(id, _)| *id);
    if let Some(n) = c.next_update_id {
        rec.next_update_id = n;
    }
}

/// Applies an owner commit to an in-memory record.
pub(crate) fn apply_owner_commit(rec: &mut SyncOwnerRecord, c: &SyncOwnerCommit) {
    if c.reset {
        *rec = SyncOwnerRecord::default();
    }
    rec.epoch = c.epoch;
    rec.log.extend(c.append.iter().cloned());
    for (p, high) in &c.publishers {
        match rec.publishers.iter_mut().find(|(q, _)| q == p) {
            Some(e) => e.1 = e.1.max(*high),
            None => rec.publishers.push((p.clone(), *high)),
        }
    }
    if let Some(s) = &c.snapshot {
        rec.snapshot = Some(s.clone());
    }
    if let Some(t) = c.trim_through {
        rec.log.retain(|e| e.seq > t);
    }
}

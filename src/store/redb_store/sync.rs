//! [`SyncStore`] for [`RedbStore`]: the sync channel's tables in the node's
//! redb file. Every commit is `Durability::Immediate` (fsync'd) with
//! two-phase commit. Tables are created on first write; a read before any
//! write finds none and reports nothing stored.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError, WriteTransaction};

use super::{RedbStore, SyncOp};
use crate::store::StoreError;
use crate::store::sync_store::{
    SyncLogEntry, SyncOwnerCommit, SyncOwnerRecord, SyncSnapshotRecord, SyncStore,
    SyncSubscriberCommit, SyncSubscriberRecord,
};
use crate::vocab::StreamId;

/// doc → epoch.
const OWNER_EPOCH: TableDefinition<&str, u64> = TableDefinition::new("sync_owner_epoch");
/// (doc, seq) → encoded log entry.
const OWNER_LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("sync_owner_log");
/// (doc, publisher) → highest update id accepted.
const OWNER_PUB: TableDefinition<(&str, &str), u64> = TableDefinition::new("sync_owner_pub");
/// doc → encoded snapshot (seq, publisher marks, bytes).
const OWNER_SNAP: TableDefinition<&str, &[u8]> = TableDefinition::new("sync_owner_snapshot");
/// stream → (epoch, seq, next update id).
const SUB_CURSOR: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("sync_sub_cursor");
/// stream → base snapshot of the applied state.
const SUB_SNAP: TableDefinition<&str, &[u8]> = TableDefinition::new("sync_sub_snapshot");
/// (stream, index) → applied update on top of the snapshot.
const SUB_APPLIED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("sync_sub_applied");
/// (stream, update id) → publish not yet acknowledged.
const SUB_OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("sync_sub_outbox");

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(StoreError::Corrupt("truncated sync record".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn string(&mut self) -> Result<String, StoreError> {
        let b = self.take(4)?;
        let n = u32::from_be_bytes(b.try_into().unwrap_or([0; 4])) as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| StoreError::Corrupt("sync record: bad utf-8".into()))
    }
}

fn encode_entry(e: &SyncLogEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(e.bytes.len() + e.publisher.len() + 20);
    put_str(&mut out, &e.publisher);
    out.extend_from_slice(&e.update_id.to_be_bytes());
    out.extend_from_slice(&e.accepted_at_ms.to_be_bytes());
    out.extend_from_slice(&e.bytes);
    out
}

fn decode_entry(seq: u64, v: &[u8]) -> Result<SyncLogEntry, StoreError> {
    let mut r = Reader(v);
    let publisher = r.string()?;
    let update_id = r.u64()?;
    let accepted_at_ms = r.u64()?;
    Ok(SyncLogEntry {
        seq,
        publisher,
        update_id,
        accepted_at_ms,
        bytes: r.0.to_vec(),
    })
}

fn encode_snapshot(s: &SyncSnapshotRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.bytes.len() + 16);
    out.extend_from_slice(&s.seq.to_be_bytes());
    out.extend_from_slice(&(s.publishers.len() as u64).to_be_bytes());
    for (p, high) in &s.publishers {
        put_str(&mut out, p);
        out.extend_from_slice(&high.to_be_bytes());
    }
    out.extend_from_slice(&s.bytes);
    out
}

fn decode_snapshot(v: &[u8]) -> Result<SyncSnapshotRecord, StoreError> {
    let mut r = Reader(v);
    let seq = r.u64()?;
    let n = r.u64()?;
    let mut publishers = Vec::new();
    for _ in 0..n.min(1 << 20) {
        let p = r.string()?;
        publishers.push((p, r.u64()?));
    }
    Ok(SyncSnapshotRecord {
        seq,
        bytes: r.0.to_vec(),
        publishers,
    })
}

/// Opens a table for reading; a table never written reads as `None`.
macro_rules! read_table {
    ($txn:expr, $def:expr) => {
        match $txn.open_table($def) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
}

impl SyncStore for RedbStore {
    fn sync_owner_load(&self, doc: &str) -> Result<Option<SyncOwnerRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let epochs = read_table!(txn, OWNER_EPOCH);
        let Some(epoch) = epochs.get(doc)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let mut rec = SyncOwnerRecord {
            epoch,
            ..Default::default()
        };
        let log = txn.open_table(OWNER_LOG)?;
        for item in log.range((doc, 0)..=(doc, u64::MAX))? {
            let (k, v) = item?;
            rec.log.push(decode_entry(k.value().1, v.value())?);
        }
        let pubs = txn.open_table(OWNER_PUB)?;
        for item in pubs.range((doc, "")..)? {
            let (k, v) = item?;
            let (d, p) = k.value();
            if d != doc {
                break;
            }
            rec.publishers.push((p.to_string(), v.value()));
        }
        let snaps = txn.open_table(OWNER_SNAP)?;
        if let Some(v) = snaps.get(doc)? {
            rec.snapshot = Some(decode_snapshot(v.value())?);
        }
        Ok(Some(rec))
    }

    fn sync_owner_commit(&self, doc: &str, commit: &SyncOwnerCommit) -> Result<(), StoreError> {
        self.durable_sync(SyncOp::Owner(doc.to_string(), commit.clone()))
    }

    fn sync_subscriber_load(
        &self,
        stream: &StreamId,
    ) -> Result<Option<SyncSubscriberRecord>, StoreError> {
        let key = stream.as_str();
        let txn = self.db.begin_read()?;
        let cursors = read_table!(txn, SUB_CURSOR);
        let Some((epoch, seq, next_update_id)) = cursors.get(key)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let mut rec = SyncSubscriberRecord {
            epoch,
            seq,
            next_update_id,
            ..Default::default()
        };
        if let Some(v) = txn.open_table(SUB_SNAP)?.get(key)? {
            rec.snapshot = Some(v.value().to_vec());
        }
        for item in txn
            .open_table(SUB_APPLIED)?
            .range((key, 0)..=(key, u64::MAX))?
        {
            rec.applied.push(item?.1.value().to_vec());
        }
        for item in txn
            .open_table(SUB_OUTBOX)?
            .range((key, 0)..=(key, u64::MAX))?
        {
            let (k, v) = item?;
            rec.outbox.push((k.value().1, v.value().to_vec()));
        }
        Ok(Some(rec))
    }

    fn sync_subscriber_commit(
        &self,
        stream: &StreamId,
        c: &SyncSubscriberCommit,
    ) -> Result<(), StoreError> {
        self.durable_sync(SyncOp::Subscriber(stream.clone(), c.clone()))
    }
}

/// Writes one owner commit of `doc` into `txn` (reset first, then append,
/// publisher marks, snapshot, trim); the caller commits.
pub(super) fn owner_commit_in(
    txn: &WriteTransaction,
    doc: &str,
    commit: &SyncOwnerCommit,
) -> Result<(), StoreError> {
    {
        let mut epochs = txn.open_table(OWNER_EPOCH)?;
        let mut log = txn.open_table(OWNER_LOG)?;
        let mut pubs = txn.open_table(OWNER_PUB)?;
        let mut snaps = txn.open_table(OWNER_SNAP)?;
        if commit.reset {
            let seqs: Vec<u64> = log
                .range((doc, 0)..=(doc, u64::MAX))?
                .map(|i| i.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for s in seqs {
                log.remove((doc, s))?;
            }
            let mut names = Vec::new();
            for item in pubs.range((doc, "")..)? {
                let (k, _) = item?;
                let (d, p) = k.value();
                if d != doc {
                    break;
                }
                names.push(p.to_string());
            }
            for p in names {
                pubs.remove((doc, p.as_str()))?;
            }
            snaps.remove(doc)?;
        }
        epochs.insert(doc, commit.epoch)?;
        for e in &commit.append {
            log.insert((doc, e.seq), encode_entry(e).as_slice())?;
        }
        // One mark per publisher and commit (a batch carries one per
        // update).
        let mut highs: std::collections::BTreeMap<&str, u64> = Default::default();
        for (p, high) in &commit.publishers {
            let h = highs.entry(p.as_str()).or_default();
            *h = (*h).max(*high);
        }
        for (p, high) in highs {
            let old = pubs.get((doc, p))?.map_or(0, |v| v.value());
            pubs.insert((doc, p), old.max(high))?;
        }
        if let Some(s) = &commit.snapshot {
            snaps.insert(doc, encode_snapshot(s).as_slice())?;
        }
        if let Some(t) = commit.trim_through {
            let seqs: Vec<u64> = log
                .range((doc, 0)..=(doc, t))?
                .map(|i| i.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for s in seqs {
                log.remove((doc, s))?;
            }
        }
    }
    Ok(())
}

/// Writes one subscriber commit of `stream` into `txn`; the caller commits.
pub(super) fn subscriber_commit_in(
    txn: &WriteTransaction,
    stream: &StreamId,
    c: &SyncSubscriberCommit,
) -> Result<(), StoreError> {
    let key = stream.as_str();
    {
        let mut cursors = txn.open_table(SUB_CURSOR)?;
        let mut snaps = txn.open_table(SUB_SNAP)?;
        let mut applied = txn.open_table(SUB_APPLIED)?;
        let mut outbox = txn.open_table(SUB_OUTBOX)?;
        let (mut epoch, mut seq, mut next) = cursors.get(key)?.map_or((0, 0, 1), |v| v.value());
        if let Some((e, s)) = c.cursor {
            (epoch, seq) = (e, s);
        }
        if let Some(n) = c.next_update_id {
            next = n;
        }
        cursors.insert(key, (epoch, seq, next))?;
        let mut last = applied
            .range((key, 0)..=(key, u64::MAX))?
            .next_back()
            .transpose()?
            .map_or(0, |(k, _)| k.value().1);
        if let Some(s) = &c.replace_snapshot {
            snaps.insert(key, s.as_slice())?;
            let idx: Vec<u64> = applied
                .range((key, 0)..=(key, u64::MAX))?
                .map(|i| i.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for i in idx {
                applied.remove((key, i))?;
            }
        }
        for u in &c.append_applied {
            last += 1;
            applied.insert((key, last), u.as_slice())?;
        }
        for (id, bytes) in &c.outbox_add {
            outbox.insert((key, *id), bytes.as_slice())?;
        }
        if let Some(t) = c.outbox_remove_through {
            let ids: Vec<u64> = outbox
                .range((key, 0)..=(key, t))?
                .map(|i| i.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for id in ids {
                outbox.remove((key, id))?;
            }
        }
        for id in &c.outbox_remove {
            outbox.remove((key, *id))?;
        }
    }
    Ok(())
}

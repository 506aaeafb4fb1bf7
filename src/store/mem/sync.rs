//! [`SyncStore`] for [`MemStore`]: the sync channel's records in memory,
//! **not durable**; one lock makes every commit all-or-nothing.

use std::collections::BTreeMap;

use super::MemStore;
use crate::store::StoreError;
use crate::store::sync_store::{
    SyncOwnerCommit, SyncOwnerRecord, SyncStore, SyncSubscriberCommit, SyncSubscriberRecord,
    apply_owner_commit, apply_subscriber_commit,
};
use crate::vocab::StreamId;

/// The sync channel's maps inside a [`MemStore`].
#[derive(Default)]
pub(super) struct SyncMem {
    owners: BTreeMap<String, SyncOwnerRecord>,
    subscribers: BTreeMap<StreamId, SyncSubscriberRecord>,
}

impl SyncStore for MemStore {
    fn sync_owner_load(&self, doc: &str) -> Result<Option<SyncOwnerRecord>, StoreError> {
        let m = self.sync.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(m.owners.get(doc).cloned())
    }

    fn sync_owner_commit(&self, doc: &str, commit: &SyncOwnerCommit) -> Result<(), StoreError> {
        let mut m = self.sync.lock().map_err(|_| StoreError::Poisoned)?;
        apply_owner_commit(m.owners.entry(doc.to_string()).or_default(), commit);
        Ok(())
    }

    fn sync_subscriber_load(
        &self,
        stream: &StreamId,
    ) -> Result<Option<SyncSubscriberRecord>, StoreError> {
        let m = self.sync.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(m.subscribers.get(stream).cloned())
    }

    fn sync_subscriber_commit(
        &self,
        stream: &StreamId,
        commit: &SyncSubscriberCommit,
    ) -> Result<(), StoreError> {
        let mut m = self.sync.lock().map_err(|_| StoreError::Poisoned)?;
        let rec = m
            .subscribers
            .entry(stream.clone())
            .or_insert_with(|| SyncSubscriberRecord {
                next_update_id: 1,
                ..Default::default()
            });
        apply_subscriber_commit(rec, commit);
        Ok(())
    }
}

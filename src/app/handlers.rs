//! Built-in command handlers the binary registers by name: `echo` and
//! `kv`.
//!
//! Owns their semantics only; the command channel applies them once
//! (`kv` is an [`AtomicHandler`]: its writes commit with each command's
//! dedupe record, so also across crashes). Commands and replies are JSON values (MessagePack on the
//! wire), so `interlocking ctl send` can drive them:
//! - `echo`: replies with the command it was given;
//! - `kv`: `{"op":"put","key":K,"value":V}`, `{"op":"get","key":K}`,
//!   `{"op":"delete","key":K}`; its state is the application table `kv`
//!   (`app/kv` in the node's redb file), so it survives restarts.

use std::sync::Arc;

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::channels::command::{AtomicHandler, CommandContext, CommandHandler};
use crate::store::{AppTxn, RedbStore, Store};

/// Replies with its command.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

#[async_trait]
impl CommandHandler for Echo {
    type Command = Value;
    type Reply = Value;

    async fn handle(&self, cmd: Value) -> Result<Value, String> {
        Ok(cmd)
    }
}

/// The key-value handler's application table (`app/kv` in the node's redb
/// file; see [`AppTxn`]).
pub const KV_TABLE: &str = "kv";

/// Where files written before the atomic style kept the map.
const KV_LEGACY: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// Longest key accepted.
pub const KV_MAX_KEY: usize = 1024;
/// Largest value accepted (its JSON text).
pub const KV_MAX_VALUE: usize = 256 * 1024;

/// One `kv` command.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum KvCommand {
    Put { key: String, value: Value },
    Get { key: String },
    Delete { key: String },
}

/// A durable key-value map in the node's store, applied atomically with
/// each command's dedupe record ([`AtomicHandler`]): exactly once across
/// crashes.
#[derive(Clone)]
pub struct Kv {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").finish_non_exhaustive()
    }
}

impl Kv {
    /// Opens the map in `store`'s file, moving the entries of a file
    /// written before the atomic style (table `kv`) into `app/kv` once.
    pub fn open(store: Arc<RedbStore>) -> Result<Self, String> {
        migrate_legacy(&store).map_err(|e| e.to_string())?;
        Ok(Self { store })
    }

    /// The map in any store (a [`MemStore`](crate::store::MemStore) in
    /// simulations).
    pub fn in_store(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The value under `key`, if any (committed state).
    pub fn get(&self, key: &str) -> Result<Option<Value>, String> {
        match self
            .store
            .app_get(KV_TABLE, key.as_bytes())
            .map_err(|e| e.to_string())?
        {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }

    /// How many keys the map holds.
    pub fn len(&self) -> Result<u64, String> {
        self.store.app_len(KV_TABLE).map_err(|e| e.to_string())
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> Result<bool, String> {
        Ok(self.len()? == 0)
    }
}

/// Applies one command in `txn` (validating before writing).
fn kv_apply(txn: &mut dyn AppTxn, cmd: KvCommand) -> Result<Value, String> {
    let err = |e: crate::store::StoreError| e.to_string();
    match cmd {
        KvCommand::Put { key, value } => {
            check_key(&key)?;
            let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
            if bytes.len() > KV_MAX_VALUE {
                return Err(format!("value over {KV_MAX_VALUE} bytes"));
            }
            let old = txn.insert(KV_TABLE, key.as_bytes(), &bytes).map_err(err)?;
            Ok(json!({ "key": key, "existed": old.is_some() }))
        }
        KvCommand::Get { key } => {
            check_key(&key)?;
            let value: Option<Value> = match txn.get(KV_TABLE, key.as_bytes()).map_err(err)? {
                Some(b) => Some(serde_json::from_slice(&b).map_err(|e| e.to_string())?),
                None => None,
            };
            Ok(json!({ "key": key, "found": value.is_some(), "value": value }))
        }
        KvCommand::Delete { key } => {
            check_key(&key)?;
            let old = txn.remove(KV_TABLE, key.as_bytes()).map_err(err)?;
            Ok(json!({ "key": key, "existed": old.is_some() }))
        }
    }
}

/// Moves a legacy `kv` table into the application table, in one
/// transaction (a crash leaves it either all moved or untouched).
fn migrate_legacy(store: &RedbStore) -> Result<(), crate::store::StoreError> {
    let entries: Vec<(String, Vec<u8>)> = {
        let txn = store.database().begin_read().map_err(redb::Error::from)?;
        match txn.open_table(KV_LEGACY) {
            Ok(t) => t
                .iter()
                .map_err(redb::Error::from)?
                .map(|r| {
                    r.map(|(k, v)| (k.value().to_string(), v.value().to_vec()))
                        .map_err(redb::Error::from)
                })
                .collect::<Result<_, _>>()?,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(redb::Error::from(e).into()),
        }
    };
    store.dedupe_record_with(Box::new(move |txn| {
        for (k, v) in &entries {
            txn.insert(KV_TABLE, k.as_bytes(), v)?;
        }
        Ok(crate::store::AtomicBatch::default())
    }))?;
    let txn = store.database().begin_write().map_err(redb::Error::from)?;
    txn.delete_table(KV_LEGACY).map_err(redb::Error::from)?;
    txn.commit().map_err(redb::Error::from)?;
    Ok(())
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > KV_MAX_KEY {
        return Err(format!("key must be 1–{KV_MAX_KEY} bytes"));
    }
    Ok(())
}

impl AtomicHandler for Kv {
    type Command = Value;
    type Reply = Value;

    fn handle(
        &self,
        txn: &mut dyn AppTxn,
        _ctx: &CommandContext,
        cmd: Value,
    ) -> Result<Value, String> {
        let cmd: KvCommand =
            serde_json::from_value(cmd).map_err(|e| format!("bad kv command: {e}"))?;
        kv_apply(txn, cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AtomicBatch;

    fn run(kv: &Kv, store: &RedbStore, cmd: Value) -> Result<Value, String> {
        let kv = kv.clone();
        let out = std::sync::Arc::new(std::sync::Mutex::new(None));
        let o = out.clone();
        store
            .dedupe_record_with(Box::new(move |txn| {
                let ctx = CommandContext {
                    stream: crate::vocab::StreamId::new("s"),
                    incarnation: 1,
                    message_id: 1,
                    seq: 1,
                    operation_key: None,
                };
                *o.lock().unwrap() = Some(AtomicHandler::handle(&kv, txn, &ctx, cmd));
                Ok(AtomicBatch::default())
            }))
            .unwrap();
        out.lock().unwrap().take().unwrap()
    }

    #[test]
    fn kv_puts_gets_deletes_survives_reopen_and_migrates_the_legacy_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        {
            let store = Arc::new(RedbStore::open(&path).unwrap());
            // A file from before the atomic style.
            let txn = store.database().begin_write().unwrap();
            txn.open_table(KV_LEGACY)
                .unwrap()
                .insert("old", br#""kept""#.as_slice())
                .unwrap();
            txn.commit().unwrap();
            let kv = Kv::open(store.clone()).unwrap();
            assert_eq!(kv.get("old").unwrap(), Some(json!("kept")));
            let r = run(&kv, &store, json!({"op":"put","key":"a","value":{"n":1}})).unwrap();
            assert_eq!(r["existed"], false);
            let r = run(&kv, &store, json!({"op":"get","key":"a"})).unwrap();
            assert_eq!(r["value"], json!({"n":1}));
            let r = run(&kv, &store, json!({"op":"put","key":"b","value":2})).unwrap();
            assert_eq!(r["existed"], false);
            let r = run(&kv, &store, json!({"op":"delete","key":"b"})).unwrap();
            assert_eq!(r["existed"], true);
            assert!(run(&kv, &store, json!({"op":"frob","key":"a"})).is_err());
            assert!(run(&kv, &store, json!({"op":"get","key":""})).is_err());
        }
        let kv = Kv::open(Arc::new(RedbStore::open(&path).unwrap())).unwrap();
        assert_eq!(kv.get("a").unwrap(), Some(json!({"n":1})));
        assert_eq!(kv.len().unwrap(), 2);
    }
}

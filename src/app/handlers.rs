//! Built-in command handlers the binary registers by name: `echo` and
//! `kv`.
//!
//! Owns their semantics only; the command channel gives them at-most-once
//! application. Commands and replies are JSON values (MessagePack on the
//! wire), so `interlocking ctl send` can drive them:
//! - `echo`: replies with the command it was given;
//! - `kv`: `{"op":"put","key":K,"value":V}`, `{"op":"get","key":K}`,
//!   `{"op":"delete","key":K}`; its state is the `kv` table of the node's
//!   redb file, so it survives restarts of the process.

use std::sync::Arc;

use async_trait::async_trait;
use redb::{ReadableDatabase, TableDefinition};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::channels::command::CommandHandler;
use crate::store::RedbStore;

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

/// The key-value handler's own table in the node's redb file.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

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

/// A durable key-value map in the node's redb file.
#[derive(Clone)]
pub struct Kv {
    store: Arc<RedbStore>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").finish_non_exhaustive()
    }
}

impl Kv {
    /// Opens (creating) the `kv` table in `store`'s file.
    pub fn open(store: Arc<RedbStore>) -> Result<Self, String> {
        let txn = store.database().begin_write().map_err(|e| e.to_string())?;
        txn.open_table(KV).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        Ok(Self { store })
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Value>, String> {
        let txn = self
            .store
            .database()
            .begin_read()
            .map_err(|e| e.to_string())?;
        let table = txn.open_table(KV).map_err(|e| e.to_string())?;
        let v = table.get(key).map_err(|e| e.to_string())?;
        match v {
            Some(bytes) => serde_json::from_slice(bytes.value())
                .map(Some)
                .map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }

    /// How many keys the table holds.
    pub fn len(&self) -> Result<u64, String> {
        use redb::ReadableTableMetadata;
        let txn = self
            .store
            .database()
            .begin_read()
            .map_err(|e| e.to_string())?;
        let table = txn.open_table(KV).map_err(|e| e.to_string())?;
        table.len().map_err(|e| e.to_string())
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> Result<bool, String> {
        Ok(self.len()? == 0)
    }

    fn write(&self, key: &str, value: Option<&[u8]>) -> Result<bool, String> {
        let txn = self
            .store
            .database()
            .begin_write()
            .map_err(|e| e.to_string())?;
        let existed = {
            let mut table = txn.open_table(KV).map_err(|e| e.to_string())?;
            let old = match value {
                Some(v) => table.insert(key, v).map_err(|e| e.to_string())?,
                None => table.remove(key).map_err(|e| e.to_string())?,
            };
            old.is_some()
        };
        txn.commit().map_err(|e| e.to_string())?;
        Ok(existed)
    }

    fn apply(&self, cmd: KvCommand) -> Result<Value, String> {
        match cmd {
            KvCommand::Put { key, value } => {
                check_key(&key)?;
                let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
                if bytes.len() > KV_MAX_VALUE {
                    return Err(format!("value over {KV_MAX_VALUE} bytes"));
                }
                let existed = self.write(&key, Some(&bytes))?;
                Ok(json!({ "key": key, "existed": existed }))
            }
            KvCommand::Get { key } => {
                check_key(&key)?;
                let value = self.get(&key)?;
                Ok(json!({ "key": key, "found": value.is_some(), "value": value }))
            }
            KvCommand::Delete { key } => {
                check_key(&key)?;
                let existed = self.write(&key, None)?;
                Ok(json!({ "key": key, "existed": existed }))
            }
        }
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > KV_MAX_KEY {
        return Err(format!("key must be 1–{KV_MAX_KEY} bytes"));
    }
    Ok(())
}

#[async_trait]
impl CommandHandler for Kv {
    type Command = Value;
    type Reply = Value;

    async fn handle(&self, cmd: Value) -> Result<Value, String> {
        let cmd: KvCommand =
            serde_json::from_value(cmd).map_err(|e| format!("bad kv command: {e}"))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.apply(cmd))
            .await
            .map_err(|e| e.to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kv_puts_gets_deletes_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        {
            let kv = Kv::open(Arc::new(RedbStore::open(&path).unwrap())).unwrap();
            let r = kv
                .handle(json!({"op":"put","key":"a","value":{"n":1}}))
                .await
                .unwrap();
            assert_eq!(r["existed"], false);
            let r = kv.handle(json!({"op":"get","key":"a"})).await.unwrap();
            assert_eq!(r["value"], json!({"n":1}));
            let r = kv
                .handle(json!({"op":"put","key":"b","value":2}))
                .await
                .unwrap();
            assert_eq!(r["existed"], false);
            let r = kv.handle(json!({"op":"delete","key":"b"})).await.unwrap();
            assert_eq!(r["existed"], true);
            assert!(kv.handle(json!({"op":"frob","key":"a"})).await.is_err());
            assert!(kv.handle(json!({"op":"get","key":""})).await.is_err());
        }
        let kv = Kv::open(Arc::new(RedbStore::open(&path).unwrap())).unwrap();
        assert_eq!(kv.get("a").unwrap(), Some(json!({"n":1})));
        assert_eq!(kv.len().unwrap(), 1);
    }
}

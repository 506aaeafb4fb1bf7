//! The root-state backend: what a root must remember, behind one trait, so
//! the embedded single-root default and a shared cluster backend serve the
//! same [`crate::root::Root`].
//!
//! Owns the contract of root state (`docs/root.md` §5):
//! * **admission** — issued and used join tokens (a token redeems once,
//!   whichever root sees it), the capabilities granted with each admission;
//! * **revocation** — the revoked node ids;
//! * **rendezvous registry** — what each attached node registered;
//! * **relay dedupe / cached replies** — [`DedupeTable`]'s verdicts,
//!   bounded by count, bytes and age.
//!
//! Reads on the per-frame path ([`RootState::is_revoked`],
//! [`RootState::capabilities`], the registry) are synchronous: a backend
//! answers them from a local mirror it keeps current. Writes and the dedupe
//! verdict are `async`, so a backend may wait on a remote store.
//!
//! [`LocalState`] is the default: tokens, grants and revocations in the
//! state directory's files ([`AdmissionBook`], which an operator's
//! `interlocking token` adds to while the root runs), the registry in
//! memory (nodes register again when they reconnect), and the relay dedupe
//! table mirrored into `root.redb` in the state directory, so a restarted
//! root still answers retries of frames it forwarded before. The redb file
//! is written by one writer thread in group commits (each commit is
//! durable, `Durability::Immediate`); the serving task never waits on disk.
//! A crash loses at most the commit being written — the receiving
//! channel's own dedupe stays the authority for exactly-once, the root's
//! table saves trips.
//!
//! Must not touch: sockets, frames beyond the keys handed in, hub semantics.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::admission::{AdmissionBook, AdmissionError, JoinToken, TokenClaims, unix_ms};
use super::dedupe::{DedupeKey, DedupeTable, EntrySnapshot, Verdict};
use super::rendezvous::Registration;
use crate::sync::lock;
use crate::vocab::{NodeId, Role};

/// The file the default backend keeps relay dedupe in, in the state dir.
pub const STATE_FILE: &str = "root.redb";

/// Most persistence operations queued for the writer thread; past it an
/// operation is dropped (counted, logged) and the in-memory table still
/// answers — the serving task never blocks on disk.
pub const WRITE_QUEUE: usize = 65_536;

/// Most operations one group commit writes.
const BATCH: usize = 4096;

/// The relay dedupe table: encoded [`DedupeKey`] → encoded [`Stored`].
const RELAY_DEDUPE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("relay_dedupe");

/// Bounds of the relay dedupe state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupeBounds {
    /// Most keys remembered.
    pub capacity: usize,
    /// Most bytes of cached replies.
    pub max_bytes: usize,
    /// How long a key is remembered after it was first forwarded.
    pub ttl: Duration,
    /// How long a retry of an unanswered key is dropped.
    pub hold: Duration,
}

/// Where a backend's state lives and how it reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateHealth {
    /// The backend's name (`local`, …).
    pub backend: &'static str,
    /// Whether its store answers now.
    pub ready: bool,
    /// Persistence operations dropped because the write queue was full.
    pub dropped_writes: u64,
}

/// The state a root keeps; see the module docs for the contract.
#[async_trait]
pub trait RootState: Send + Sync + 'static {
    /// Issues a single-use join token for `node` in `role`, valid for `ttl`
    /// from `now`, granting `capabilities`.
    fn issue(
        &self,
        ca_fingerprint: [u8; 32],
        node: &NodeId,
        role: Role,
        ttl: Duration,
        now: SystemTime,
        capabilities: &[String],
    ) -> Result<JoinToken, AdmissionError>;

    /// Redeems `token` for `node` in `role` at `now`: at most one call per
    /// token succeeds, across every root sharing this state.
    async fn redeem(
        &self,
        token: &JoinToken,
        node: &NodeId,
        role: Role,
        now: SystemTime,
    ) -> Result<TokenClaims, AdmissionError>;

    /// Revokes `node` for every root sharing this state.
    async fn revoke(&self, node: &NodeId) -> Result<(), AdmissionError>;

    /// Whether `node` is revoked (from the local mirror).
    fn is_revoked(&self, node: &NodeId) -> bool;

    /// The revoked node ids, sorted.
    fn revoked(&self) -> Vec<NodeId>;

    /// Revocations made elsewhere (another root of a cluster), as they
    /// arrive: the root closes the connections of these nodes. `None`
    /// (the default) when every revocation goes through this root.
    fn revocations(&self) -> Option<tokio::sync::broadcast::Receiver<NodeId>> {
        None
    }

    /// The capabilities `node` may register (from its last admission).
    fn capabilities(&self, node: &NodeId) -> BTreeSet<String>;

    /// Records what `node`, attached to this root, registered.
    fn register(&self, node: &NodeId, registration: Registration);

    /// Forgets `node`'s registration (it detached or was revoked).
    fn unregister(&self, node: &NodeId);

    /// Runs `f` over the registry.
    fn with_registry(&self, f: &mut dyn FnMut(&HashMap<NodeId, Registration>));

    /// The dedupe verdict on a relayed class-A data frame ([`DedupeTable`]).
    async fn relay_verdict(&self, key: DedupeKey, frame: &Bytes, now: Instant) -> Verdict;

    /// Forgets every unanswered relay key towards `to`, whose connection
    /// was renewed (see [`DedupeTable::forget_unanswered_to`]); how many.
    fn relay_forget_unanswered_to(&self, to: &NodeId) -> usize;

    /// The backend's health, for readiness.
    fn health(&self) -> StateHealth;

    /// Writes what is queued and releases the store (the root calls it at
    /// shutdown, so a successor can open the same files).
    async fn close(&self);
}

/// What the redb file holds per key: Unix-ms times and the cached reply.
#[derive(Serialize, Deserialize)]
struct Stored {
    first_ms: u64,
    forwarded_ms: u64,
    #[serde(with = "serde_bytes")]
    reply: Option<Vec<u8>>,
}

enum WriteOp {
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
    Flush(std_mpsc::SyncSender<()>),
}

/// The default backend; see the module docs.
pub struct LocalState {
    book: AdmissionBook,
    registry: Mutex<HashMap<NodeId, Registration>>,
    dedupe: Mutex<DedupeTable>,
    writer: Mutex<Option<Writer>>,
    dropped: std::sync::atomic::AtomicU64,
    /// The instant and Unix-ms time the state was opened at: stored times
    /// are derived from it, so they follow the `now` the caller passes.
    anchor: (Instant, u64),
}

struct Writer {
    tx: std_mpsc::SyncSender<WriteOp>,
    thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for LocalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalState")
            .field("book", &self.book)
            .finish_non_exhaustive()
    }
}

fn state_err(e: impl std::fmt::Display) -> AdmissionError {
    AdmissionError::Internal(format!("root state: {e}"))
}

/// The Unix-ms time of `at`, given that `now` is `wall`.
pub(super) fn to_wall_ms(at: Instant, now: Instant, wall: u64) -> u64 {
    if at >= now {
        wall.saturating_add(at.duration_since(now).as_millis() as u64)
    } else {
        wall.saturating_sub(now.duration_since(at).as_millis() as u64)
    }
}

/// The instant of Unix-ms `ms`, given that `now` is `wall` (`None` if it
/// lies before the process's clock can say).
pub(super) fn from_wall_ms(ms: u64, now: Instant, wall: u64) -> Option<Instant> {
    now.checked_sub(Duration::from_millis(wall.saturating_sub(ms)))
}

impl LocalState {
    /// State in memory only (no state directory): nothing survives a
    /// restart.
    pub fn in_memory(bounds: DedupeBounds) -> Self {
        Self {
            book: AdmissionBook::in_memory(),
            registry: Mutex::new(HashMap::new()),
            dedupe: Mutex::new(table(bounds)),
            writer: Mutex::new(None),
            dropped: Default::default(),
            anchor: (Instant::now(), unix_ms(SystemTime::now())),
        }
    }

    /// State under `dir`: the admission book's files and `root.redb`, whose
    /// relay dedupe keys younger than `bounds.ttl` are loaded (the newest
    /// `bounds.capacity` of them) and the older ones deleted.
    pub fn open(dir: &Path, bounds: DedupeBounds) -> Result<Self, AdmissionError> {
        Self::open_at(dir, bounds, Instant::now(), SystemTime::now())
    }

    /// [`LocalState::open`] at an injected time (`now` is `wall`).
    pub fn open_at(
        dir: &Path,
        bounds: DedupeBounds,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Self, AdmissionError> {
        let book = AdmissionBook::open(dir)?;
        let path: PathBuf = dir.join(STATE_FILE);
        let db = Database::create(&path).map_err(state_err)?;
        let wall = unix_ms(wall);
        let mut live: Vec<(DedupeKey, EntrySnapshot)> = Vec::new();
        let mut stale: Vec<Vec<u8>> = Vec::new();
        {
            let txn = db.begin_write().map_err(state_err)?;
            txn.open_table(RELAY_DEDUPE).map_err(state_err)?;
            txn.commit().map_err(state_err)?;
            let txn = db.begin_read().map_err(state_err)?;
            let t = txn.open_table(RELAY_DEDUPE).map_err(state_err)?;
            for item in t.iter().map_err(state_err)? {
                let (k, v) = item.map_err(state_err)?;
                let decoded = rmp_serde::from_slice::<DedupeKey>(k.value())
                    .ok()
                    .zip(rmp_serde::from_slice::<Stored>(v.value()).ok());
                let restored = decoded.and_then(|(key, s)| {
                    let first = from_wall_ms(s.first_ms, now, wall)?;
                    let fwd = from_wall_ms(s.forwarded_ms, now, wall).unwrap_or(first);
                    (now.saturating_duration_since(first) < bounds.ttl).then(|| {
                        (
                            key,
                            EntrySnapshot {
                                first,
                                forwarded_at: fwd,
                                reply: s.reply.map(Bytes::from),
                            },
                        )
                    })
                });
                match restored {
                    Some(e) => live.push(e),
                    None => stale.push(k.value().to_vec()),
                }
            }
        }
        live.sort_by_key(|(_, e)| e.first);
        let mut dedupe = table(bounds);
        for (key, e) in live {
            dedupe.restore(key, e);
        }
        let evicted = dedupe.take_evicted();
        let (tx, rx) = std_mpsc::sync_channel(WRITE_QUEUE);
        for key in stale {
            let _ = tx.try_send(WriteOp::Del(key));
        }
        for key in evicted {
            if let Ok(k) = rmp_serde::to_vec(&key) {
                let _ = tx.try_send(WriteOp::Del(k));
            }
        }
        let thread = std::thread::Builder::new()
            .name("root-state".into())
            .spawn(move || write_loop(db, rx))
            .map_err(state_err)?;
        tracing::info!(keys = dedupe.len(), file = %path.display(), "root: relay dedupe loaded");
        Ok(Self {
            book,
            registry: Mutex::new(HashMap::new()),
            dedupe: Mutex::new(dedupe),
            writer: Mutex::new(Some(Writer { tx, thread })),
            dropped: Default::default(),
            anchor: (now, wall),
        })
    }

    /// Waits until every queued write is committed (tests, shutdown).
    pub fn flush(&self) {
        let tx = lock(&self.writer).as_ref().map(|w| w.tx.clone());
        if let Some(tx) = tx {
            let (ack, done) = std_mpsc::sync_channel(1);
            if tx.send(WriteOp::Flush(ack)).is_ok() {
                let _ = done.recv();
            }
        }
    }

    /// Closes the redb file now (blocking): queued writes are committed.
    pub fn close_blocking(&self) {
        if let Some(w) = lock(&self.writer).take() {
            drop(w.tx);
            let _ = w.thread.join();
        }
    }

    fn queue(&self, op: WriteOp) {
        let w = lock(&self.writer);
        let Some(w) = w.as_ref() else { return };
        if w.tx.try_send(op).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "root: relay dedupe write queue full; write dropped"
                );
            }
        }
    }
}

impl Drop for LocalState {
    fn drop(&mut self) {
        self.close_blocking();
    }
}

fn table(b: DedupeBounds) -> DedupeTable {
    DedupeTable::new(b.capacity, b.ttl, b.hold)
        .with_max_bytes(b.max_bytes)
        .tracking_evictions()
}

/// The writer thread: one durable commit per batch of queued operations,
/// until the sender is dropped.
fn write_loop(db: Database, rx: std_mpsc::Receiver<WriteOp>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut acks = Vec::new();
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut t = txn.open_table(RELAY_DEDUPE)?;
                for op in ops {
                    match op {
                        WriteOp::Put(k, v) => {
                            t.insert(k.as_slice(), v.as_slice())?;
                        }
                        WriteOp::Del(k) => {
                            t.remove(k.as_slice())?;
                        }
                        WriteOp::Flush(ack) => acks.push(ack),
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, "root: relay dedupe commit failed");
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

#[async_trait]
impl RootState for LocalState {
    fn issue(
        &self,
        ca_fingerprint: [u8; 32],
        node: &NodeId,
        role: Role,
        ttl: Duration,
        now: SystemTime,
        capabilities: &[String],
    ) -> Result<JoinToken, AdmissionError> {
        self.book
            .issue(ca_fingerprint, node, role, ttl, now, capabilities)
    }

    async fn redeem(
        &self,
        token: &JoinToken,
        node: &NodeId,
        role: Role,
        now: SystemTime,
    ) -> Result<TokenClaims, AdmissionError> {
        self.book.redeem(token, node, role, now)
    }

    async fn revoke(&self, node: &NodeId) -> Result<(), AdmissionError> {
        self.book.revoke(node)?;
        self.unregister(node);
        Ok(())
    }

    fn is_revoked(&self, node: &NodeId) -> bool {
        self.book.is_revoked(node)
    }

    fn revoked(&self) -> Vec<NodeId> {
        self.book.revoked()
    }

    fn capabilities(&self, node: &NodeId) -> BTreeSet<String> {
        self.book.capabilities(node)
    }

    fn register(&self, node: &NodeId, registration: Registration) {
        lock(&self.registry).insert(node.clone(), registration);
    }

    fn unregister(&self, node: &NodeId) {
        lock(&self.registry).remove(node);
    }

    fn with_registry(&self, f: &mut dyn FnMut(&HashMap<NodeId, Registration>)) {
        f(&lock(&self.registry))
    }

    async fn relay_verdict(&self, key: DedupeKey, frame: &Bytes, now: Instant) -> Verdict {
        let (from, to, stream, inc, id) = &key;
        let (verdict, changed, evicted) = {
            let mut t = lock(&self.dedupe);
            let (v, changed) = t.on_frame_tracked(from, to, stream, *inc, *id, frame, now);
            let changed = changed.and_then(|k| t.snapshot(&k).map(|s| (k, s)));
            (v, changed, t.take_evicted())
        };
        if lock(&self.writer).is_none() {
            return verdict;
        }
        let (anchor, wall) = self.anchor;
        for k in evicted {
            if let Ok(k) = rmp_serde::to_vec(&k) {
                self.queue(WriteOp::Del(k));
            }
        }
        if let Some((k, s)) = changed {
            let stored = Stored {
                first_ms: to_wall_ms(s.first, anchor, wall),
                forwarded_ms: to_wall_ms(s.forwarded_at, anchor, wall),
                reply: s.reply.map(|b| b.to_vec()),
            };
            if let (Ok(k), Ok(v)) = (rmp_serde::to_vec(&k), rmp_serde::to_vec(&stored)) {
                self.queue(WriteOp::Put(k, v));
            }
        }
        verdict
    }

    fn relay_forget_unanswered_to(&self, to: &NodeId) -> usize {
        let (n, evicted) = {
            let mut t = lock(&self.dedupe);
            let n = t.forget_unanswered_to(to);
            (n, t.take_evicted())
        };
        if lock(&self.writer).is_some() {
            for k in evicted {
                if let Ok(k) = rmp_serde::to_vec(&k) {
                    self.queue(WriteOp::Del(k));
                }
            }
        }
        n
    }

    fn health(&self) -> StateHealth {
        StateHealth {
            backend: "local",
            ready: true,
            dropped_writes: self.dropped.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    async fn close(&self) {
        // The writer commits what is queued; join it off the runtime.
        let writer = lock(&self.writer).take();
        if let Some(w) = writer {
            drop(w.tx);
            let _ = tokio::task::spawn_blocking(move || w.thread.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::StreamId;

    fn bounds() -> DedupeBounds {
        DedupeBounds {
            capacity: 100,
            max_bytes: 1 << 20,
            ttl: Duration::from_secs(30),
            hold: Duration::from_secs(2),
        }
    }

    fn key(from: &str, to: &str, id: u64) -> DedupeKey {
        (
            NodeId::new(from),
            NodeId::new(to),
            StreamId::new("command:m/h"),
            0,
            id,
        )
    }

    #[tokio::test]
    async fn cached_replies_survive_a_reopen_of_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let cmd = Bytes::from_static(b"cmd");
        let reply = Bytes::from_static(b"reply");
        {
            let s = LocalState::open_at(dir.path(), bounds(), t0, w0).unwrap();
            assert_eq!(
                s.relay_verdict(key("m", "h", 1), &cmd, t0).await,
                Verdict::Forward
            );
            assert_eq!(
                s.relay_verdict(key("h", "m", 1), &reply, t0).await,
                Verdict::Forward
            );
            // Unanswered: held after the reopen too.
            assert_eq!(
                s.relay_verdict(key("m", "h", 2), &cmd, t0).await,
                Verdict::Forward
            );
            s.close_blocking();
        }
        let t1 = t0 + Duration::from_secs(1);
        let s = LocalState::open_at(dir.path(), bounds(), t1, w0 + Duration::from_secs(1)).unwrap();
        assert_eq!(
            s.relay_verdict(key("m", "h", 1), &cmd, t1).await,
            Verdict::Replay(reply)
        );
        assert_eq!(
            s.relay_verdict(key("m", "h", 2), &cmd, t1).await,
            Verdict::Drop
        );
        assert_eq!(
            s.relay_verdict(key("m", "h", 3), &cmd, t1).await,
            Verdict::Forward
        );
    }

    #[tokio::test]
    async fn a_reopen_forgets_keys_past_the_ttl_and_beyond_the_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let b = Bytes::from_static(b"x");
        let small = DedupeBounds {
            capacity: 3,
            ..bounds()
        };
        {
            let s = LocalState::open_at(dir.path(), small, t0, w0).unwrap();
            for i in 0..5 {
                let at = t0 + Duration::from_secs(i);
                s.relay_verdict(key("m", "h", i), &b, at).await;
            }
            s.close_blocking();
        }
        // 31 s after t0: key 0 (first at t0) is past the 30 s TTL; keys 1
        // were evicted by capacity already; 2, 3, 4 remain.
        let later = t0 + Duration::from_secs(31);
        let s =
            LocalState::open_at(dir.path(), small, later, w0 + Duration::from_secs(31)).unwrap();
        assert_eq!(lock(&s.dedupe).len(), 3);
        for i in 2..5 {
            assert!(lock(&s.dedupe).snapshot(&key("m", "h", i)).is_some(), "{i}");
        }
        s.close_blocking();
        let rows = {
            let db = Database::create(dir.path().join(STATE_FILE)).unwrap();
            let txn = db.begin_read().unwrap();
            txn.open_table(RELAY_DEDUPE)
                .unwrap()
                .iter()
                .unwrap()
                .count()
        };
        assert_eq!(
            rows, 3,
            "evicted and expired keys are deleted from the file"
        );
        // Past every key's TTL nothing is loaded.
        let much_later = t0 + Duration::from_secs(60);
        let s = LocalState::open_at(dir.path(), small, much_later, w0 + Duration::from_secs(60))
            .unwrap();
        assert!(lock(&s.dedupe).is_empty());
    }

    #[tokio::test]
    async fn admission_is_single_use_and_revocation_unregisters() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalState::open(dir.path(), bounds()).unwrap();
        let (m, now) = (NodeId::new("m"), SystemTime::now());
        let t = s
            .issue([1; 32], &m, Role::Member, Duration::from_secs(60), now, &[])
            .unwrap();
        assert!(s.redeem(&t, &m, Role::Member, now).await.is_ok());
        assert_eq!(
            s.redeem(&t, &m, Role::Member, now).await,
            Err(AdmissionError::Reused)
        );
        s.register(&m, Registration::default());
        s.revoke(&m).await.unwrap();
        assert!(s.is_revoked(&m));
        let mut n = usize::MAX;
        s.with_registry(&mut |r| n = r.len());
        assert_eq!(n, 0);
    }
}

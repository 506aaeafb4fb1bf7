//! The shared root-state backend: several roots of one cluster keep their
//! admission, revocation, registry and relay dedupe state in NATS JetStream
//! key-value buckets (`docs/cluster.md`).
//!
//! Owns [`JetStreamState`] and its buckets (all prefixed `il-`):
//! * `il-tokens` — issued join tokens (SHA-256 of the secret → claims);
//! * `il-used` — redeemed tokens: a redemption wins only by *creating* the
//!   key (`KV create` is revision-checked by the server), so of two roots
//!   redeeming the same token at once exactly one succeeds;
//! * `il-grants` — the capabilities each admitted node may register;
//! * `il-revoked` — revoked node ids, **watched**: a revocation written at
//!   any root reaches every root's mirror and is announced on
//!   [`RootState::revocations`], so the root closes the node's connection;
//! * `il-registry` — which root each attached node is on and what it
//!   registered, with a TTL (entries are refreshed while the node stays);
//! * `il-dedupe` — relay dedupe verdicts and cached replies, bounded by age
//!   (the dedupe TTL) and bytes, watched into each root's local
//!   [`DedupeTable`] so a node that re-homes finds its retries answered.
//!
//! Reads on the per-frame path stay local (mirrors kept current by the
//! watches); writes other than redemption and revocation go through one
//! bounded queue to a writer task that publishes them in batches, so the
//! serving task never waits on NATS. Tokens an operator's
//! `interlocking token` puts in this root's state directory are redeemed
//! from there and still claimed in `il-used`.
//!
//! Health: the backend is ready while the NATS connection is up; while it is
//! down the root serves from its mirrors (degraded: redemption and
//! revocation fail with [`AdmissionError::Internal`]) and it recovers when
//! the client reconnects.
//!
//! Must not touch: sockets other than the NATS client, frames beyond the
//! keys handed in, hub semantics.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::stream::DiscardPolicy;
use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::admission::{
    AdmissionBook, AdmissionError, JoinToken, TokenClaims, check_claims, hex, new_token, unix_ms,
};
use super::dedupe::{DedupeKey, DedupeTable, EntrySnapshot, Verdict};
use super::rendezvous::Registration;
use super::state::{DedupeBounds, RootState, StateHealth, WRITE_QUEUE, from_wall_ms, to_wall_ms};
use crate::sync::lock;
use crate::vocab::{NodeId, Role};

/// How a root joins a cluster (`[root] cluster` in the TOML schema).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The NATS server URL, e.g. `nats://127.0.0.1:4222`.
    pub nats: String,
    /// This root's name in the cluster (unique per root).
    pub name: String,
}

/// How long a registry entry lives without a refresh.
pub const REGISTRY_TTL: Duration = Duration::from_secs(30);

/// The longest value shared in `il-dedupe`; a larger cached reply stays
/// local (counted in [`StateHealth::dropped_writes`]).
pub const MAX_SHARED_VALUE: usize = 512 * 1024;

/// How long one remote operation of a join or revocation may take.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most operations one writer batch publishes before awaiting their acks.
const BATCH: usize = 512;

/// How long connecting to NATS may take at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The buckets, see the module docs.
#[derive(Clone)]
struct Buckets {
    tokens: kv::Store,
    used: kv::Store,
    grants: kv::Store,
    revoked: kv::Store,
    registry: kv::Store,
    dedupe: kv::Store,
}

#[derive(Clone, Copy, Debug)]
enum Bucket {
    Tokens,
    Registry,
    Dedupe,
}

enum Op {
    Put(Bucket, String, Bytes),
    Del(Bucket, String),
    Issued(String),
    Flush(oneshot::Sender<()>),
}

/// A dedupe entry as shared: who wrote it, the key and Unix-ms times.
#[derive(Serialize, Deserialize)]
struct SharedEntry {
    origin: String,
    key: DedupeKey,
    first_ms: u64,
    forwarded_ms: u64,
    #[serde(with = "serde_bytes")]
    reply: Option<Vec<u8>>,
}

/// A registry entry as shared.
#[derive(Serialize, Deserialize)]
struct SharedRegistration {
    node: NodeId,
    root: String,
    addrs: Vec<String>,
    capabilities: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct SharedGrant {
    node: NodeId,
    capabilities: BTreeSet<String>,
}

struct Shared {
    name: String,
    client: async_nats::Client,
    kv: Buckets,
    book: AdmissionBook,
    /// Tokens issued here whose `il-tokens` write is not acknowledged yet.
    pending: Mutex<HashMap<String, TokenClaims>>,
    revoked: Mutex<BTreeSet<NodeId>>,
    grants: Mutex<HashMap<NodeId, BTreeSet<String>>>,
    /// What nodes attached to this root registered.
    registry: Mutex<HashMap<NodeId, Registration>>,
    /// Which root each node of the cluster is attached to (from `il-registry`).
    homes: Mutex<HashMap<NodeId, String>>,
    dedupe: Mutex<DedupeTable>,
    anchor: (Instant, u64),
    dropped: AtomicU64,
    failed: AtomicU64,
    closed: AtomicBool,
    revocations: broadcast::Sender<NodeId>,
    /// Bumped at every (re)connection to NATS.
    connected: watch::Sender<u64>,
}

/// The JetStream backend; see the module docs.
pub struct JetStreamState {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Op>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for JetStreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamState")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

fn internal(e: impl std::fmt::Display) -> AdmissionError {
    AdmissionError::Internal(format!("cluster state: {e}"))
}

/// The KV key of a node id (hex: node ids may hold characters KV keys
/// may not).
fn node_key(node: &NodeId) -> String {
    hex(node.as_str().as_bytes())
}

fn dedupe_key(key: &DedupeKey) -> Option<String> {
    let raw = rmp_serde::to_vec(key).ok()?;
    Some(hex(
        &ring::digest::digest(&ring::digest::SHA256, &raw).as_ref()[..16]
    ))
}

/// Creates (or opens) the KV bucket `name`. The stream is created as
/// `create_key_value` would, without its account query: async-nats 0.51's
/// account record needs fields nats-server 2.9 does not send.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    max_bytes: i64,
    discard: jetstream::stream::DiscardPolicy,
) -> Result<kv::Store, AdmissionError> {
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_bytes,
        max_age,
        max_message_size: MAX_SHARED_VALUE as i32 + 4096,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        discard,
        ..Default::default()
    };
    let created = js.create_stream(config).await.err();
    // Created, or another root created it first (perhaps with other
    // bounds): open it.
    js.get_key_value(name)
        .await
        .map_err(|g| internal(format!("bucket {name}: {g} (create: {created:?})")))
}

impl JetStreamState {
    /// Connects to `cluster.nats`, creates or opens the buckets (bounded by
    /// `bounds`), loads the mirrors and starts the watches and the writer.
    /// `dir`, if given, is the state directory whose operator-issued token
    /// files this root also redeems.
    pub async fn connect(
        cluster: &ClusterConfig,
        dir: Option<&Path>,
        bounds: DedupeBounds,
    ) -> Result<Self, AdmissionError> {
        // Each (re)connection bumps `connected`: the watches start again
        // on it, since their consumers may not survive a server restart.
        let (connected, _) = watch::channel(0u64);
        let bump = connected.clone();
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT,
            async_nats::ConnectOptions::new()
                .name(format!("interlocking-root-{}", cluster.name))
                .event_callback(move |event| {
                    let bump = bump.clone();
                    async move {
                        if matches!(event, async_nats::Event::Connected) {
                            bump.send_modify(|g| *g += 1);
                        }
                    }
                })
                .connect(cluster.nats.as_str()),
        )
        .await
        .map_err(|_| internal(format!("connecting to {}: timed out", cluster.nats)))?
        .map_err(|e| internal(format!("connecting to {}: {e}", cluster.nats)))?;
        let js = jetstream::new(client.clone());
        let none = Duration::ZERO;
        // Admission state refuses writes rather than lose any (`New`); the
        // registry and the dedupe cache drop their oldest entries (`Old`).
        let (new, old) = (DiscardPolicy::New, DiscardPolicy::Old);
        let kv = Buckets {
            tokens: bucket(&js, "il-tokens", none, -1, new).await?,
            used: bucket(&js, "il-used", none, -1, new).await?,
            grants: bucket(&js, "il-grants", none, -1, new).await?,
            revoked: bucket(&js, "il-revoked", none, -1, new).await?,
            registry: bucket(&js, "il-registry", REGISTRY_TTL, -1, old).await?,
            // Room for the cached replies plus the keys' own records.
            dedupe: bucket(
                &js,
                "il-dedupe",
                bounds.ttl,
                (bounds.max_bytes as i64).saturating_add(bounds.capacity as i64 * 512),
                old,
            )
            .await?,
        };
        let book = match dir {
            Some(d) => AdmissionBook::open(d)?,
            None => AdmissionBook::in_memory(),
        };
        let (revocations, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            name: cluster.name.clone(),
            client,
            kv,
            book,
            pending: Mutex::new(HashMap::new()),
            revoked: Mutex::new(BTreeSet::new()),
            grants: Mutex::new(HashMap::new()),
            registry: Mutex::new(HashMap::new()),
            homes: Mutex::new(HashMap::new()),
            dedupe: Mutex::new(
                DedupeTable::new(bounds.capacity, bounds.ttl, bounds.hold)
                    .with_max_bytes(bounds.max_bytes),
            ),
            anchor: (Instant::now(), unix_ms(SystemTime::now())),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            revocations,
            connected,
        });
        // The mirrors of revocations and grants are loaded before serving,
        // so a revoked node is refused from the first frame.
        let mut tasks = Vec::new();
        for (store, apply) in [
            (shared.kv.revoked.clone(), apply_revoked as Apply),
            (shared.kv.grants.clone(), apply_grant as Apply),
            (shared.kv.registry.clone(), apply_home as Apply),
            (shared.kv.dedupe.clone(), apply_dedupe as Apply),
        ] {
            let (ready_tx, ready_rx) = oneshot::channel();
            tasks.push(tokio::spawn(watch_loop(
                shared.clone(),
                store,
                apply,
                Some(ready_tx),
            )));
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, ready_rx).await;
        }
        let (queue, rx) = mpsc::channel(WRITE_QUEUE);
        tasks.push(tokio::spawn(write_loop(shared.clone(), rx)));
        tasks.push(tokio::spawn(refresh_loop(shared.clone())));
        tracing::info!(root = %cluster.name, nats = %cluster.nats, "root: cluster state connected");
        Ok(Self {
            shared,
            queue,
            tasks: Mutex::new(tasks),
        })
    }

    /// This root's name in the cluster.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The cluster root `node` is attached to, per the shared registry.
    pub fn home_of(&self, node: &NodeId) -> Option<String> {
        lock(&self.shared.homes).get(node).cloned()
    }

    /// What this root's dedupe mirror knows of `key` (diagnostics, tests).
    pub fn dedupe_snapshot(&self, key: &DedupeKey) -> Option<EntrySnapshot> {
        lock(&self.shared.dedupe).snapshot(key)
    }

    /// Waits until every queued write is published and acknowledged (or
    /// failed): tokens issued before the call redeem at any root after it.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Op::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    fn queue(&self, op: Op) -> bool {
        if self.shared.closed.load(Ordering::Relaxed) {
            return false;
        }
        if self.queue.try_send(op).is_err() {
            let n = self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "root: cluster write queue full; write dropped"
                );
            }
            return false;
        }
        true
    }

    fn put_registry(&self, node: &NodeId, r: &Registration) {
        let shared = SharedRegistration {
            node: node.clone(),
            root: self.shared.name.clone(),
            addrs: r.addrs.clone(),
            capabilities: r.capabilities.clone(),
        };
        if let Ok(v) = rmp_serde::to_vec(&shared) {
            self.queue(Op::Put(Bucket::Registry, node_key(node), v.into()));
        }
    }

    /// Checks `claims` for `node` in `role` at `now` (the order of
    /// [`AdmissionBook::redeem`] after the single-use claim) and records
    /// the grant.
    async fn admit(
        &self,
        claims: TokenClaims,
        node: &NodeId,
        role: Role,
        now: SystemTime,
    ) -> Result<TokenClaims, AdmissionError> {
        let claims = check_claims(claims, node, role, now, self.is_revoked(node))?;
        let grant = SharedGrant {
            node: node.clone(),
            capabilities: claims.capabilities.clone(),
        };
        let body = serde_json::to_vec(&grant).map_err(internal)?;
        self.remote(self.shared.kv.grants.put(node_key(node), body.into()))
            .await?
            .map_err(internal)?;
        lock(&self.shared.grants).insert(node.clone(), claims.capabilities.clone());
        Ok(claims)
    }

    /// Claims `hash` as used, cluster-wide: `Ok(false)` if another
    /// redemption claimed it first.
    async fn claim(&self, hash: &str, node: &NodeId) -> Result<bool, AdmissionError> {
        let value = Bytes::copy_from_slice(node.as_str().as_bytes());
        match self.remote(self.shared.kv.used.create(hash, value)).await? {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(internal(e)),
        }
    }

    /// Runs a remote operation if NATS is connected, bounded by
    /// [`REMOTE_TIMEOUT`]: while degraded, joins and revocations fail at
    /// once instead of waiting for a reconnect.
    async fn remote<T>(&self, op: impl Future<Output = T>) -> Result<T, AdmissionError> {
        if self.shared.client.connection_state() != async_nats::connection::State::Connected {
            return Err(internal("NATS unavailable (degraded)"));
        }
        tokio::time::timeout(REMOTE_TIMEOUT, op)
            .await
            .map_err(|_| internal("NATS did not answer in time"))
    }
}

type Apply = fn(&Shared, kv::Entry);

fn apply_revoked(s: &Shared, e: kv::Entry) {
    let Ok(node) = std::str::from_utf8(&e.value).map(NodeId::new) else {
        return;
    };
    match e.operation {
        kv::Operation::Put => {
            if lock(&s.revoked).insert(node.clone()) {
                lock(&s.registry).remove(&node);
                let _ = s.revocations.send(node);
            }
        }
        kv::Operation::Delete | kv::Operation::Purge => {}
    }
}

fn apply_grant(s: &Shared, e: kv::Entry) {
    if e.operation != kv::Operation::Put {
        return;
    }
    if let Ok(g) = serde_json::from_slice::<SharedGrant>(&e.value) {
        lock(&s.grants).insert(g.node, g.capabilities);
    }
}

fn apply_home(s: &Shared, e: kv::Entry) {
    match e.operation {
        kv::Operation::Put => {
            if let Ok(r) = rmp_serde::from_slice::<SharedRegistration>(&e.value) {
                lock(&s.homes).insert(r.node, r.root);
            }
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            // The key is the hex of the node id.
            let node = (0..e.key.len())
                .step_by(2)
                .map(|i| {
                    e.key
                        .get(i..i + 2)
                        .and_then(|b| u8::from_str_radix(b, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .and_then(|b| String::from_utf8(b).ok());
            if let Some(n) = node {
                lock(&s.homes).remove(&NodeId::new(n));
            }
        }
    }
}

fn apply_dedupe(s: &Shared, e: kv::Entry) {
    if e.operation != kv::Operation::Put {
        return;
    }
    let Ok(entry) = rmp_serde::from_slice::<SharedEntry>(&e.value) else {
        return;
    };
    // Own entries too: a restarted root with the same name reloads them.
    // `merge` never takes information away from a key already known.
    let now = Instant::now();
    let wall = unix_ms(SystemTime::now());
    let Some(first) = from_wall_ms(entry.first_ms, now, wall) else {
        return;
    };
    let forwarded_at = from_wall_ms(entry.forwarded_ms, now, wall).unwrap_or(first);
    lock(&s.dedupe).merge(
        entry.key,
        EntrySnapshot {
            first,
            forwarded_at,
            reply: entry.reply.map(Bytes::from),
        },
    );
}

/// Mirrors `store` through `apply` until the state closes, watching again
/// (with backoff) whenever the watch ends or fails, and after every
/// reconnection to NATS (the server may have been restarted). `ready` is
/// told once the current values are loaded.
async fn watch_loop(
    s: Arc<Shared>,
    store: kv::Store,
    apply: Apply,
    mut ready: Option<oneshot::Sender<()>>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut reconnected = s.connected.subscribe();
    while !s.closed.load(Ordering::Relaxed) {
        reconnected.mark_unchanged();
        match store.watch_all().await {
            Ok(mut w) => {
                // An empty bucket has nothing to replay.
                if store.status().await.is_ok_and(|st| st.values() == 0)
                    && let Some(t) = ready.take()
                {
                    let _ = t.send(());
                }
                backoff = Duration::from_millis(50);
                loop {
                    let item = tokio::select! {
                        item = w.next() => item,
                        _ = reconnected.changed() => break,
                    };
                    let Some(item) = item else { break };
                    match item {
                        Ok(e) => {
                            let current = e.delta == 0;
                            apply(&s, e);
                            if current && let Some(t) = ready.take() {
                                let _ = t.send(());
                            }
                        }
                        Err(e) => {
                            tracing::debug!(bucket = %store.name, error = %e, "root: cluster watch error");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(bucket = %store.name, error = %e, "root: cluster watch failed");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Publishes queued writes in batches: every put of a batch is in flight
/// at once, then their acknowledgements are awaited.
async fn write_loop(s: Arc<Shared>, mut rx: mpsc::Receiver<Op>) {
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first];
        while ops.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        // The puts of a batch are in flight at once, so their order in the
        // stream is not theirs in the queue: of several writes to one key
        // only the last queued (the newest snapshot) is sent.
        let mut last: HashMap<(u8, &str), usize> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Put(b, k, _) | Op::Del(b, k) => last.insert((*b as u8, k.as_str()), i),
                Op::Issued(h) => last.insert((u8::MAX, h.as_str()), i),
                Op::Flush(_) => None,
            };
        }
        let keep: Vec<bool> = (0..ops.len())
            .map(|i| match &ops[i] {
                Op::Put(b, k, _) | Op::Del(b, k) => last[&(*b as u8, k.as_str())] == i,
                Op::Issued(h) => last[&(u8::MAX, h.as_str())] == i,
                Op::Flush(_) => true,
            })
            .collect();
        drop(last);
        let mut set = tokio::task::JoinSet::new();
        let mut acks = Vec::new();
        for op in ops
            .into_iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(op, _)| op)
        {
            let store = |b: Bucket| match b {
                Bucket::Tokens => s.kv.tokens.clone(),
                Bucket::Registry => s.kv.registry.clone(),
                Bucket::Dedupe => s.kv.dedupe.clone(),
            };
            match op {
                Op::Put(b, k, v) => {
                    let st = store(b);
                    set.spawn(async move {
                        st.put(k, v).await.map(|_| None).map_err(|e| e.to_string())
                    });
                }
                Op::Del(b, k) => {
                    let st = store(b);
                    set.spawn(async move {
                        st.delete(k).await.map(|_| None).map_err(|e| e.to_string())
                    });
                }
                Op::Issued(hash) => {
                    let claims = lock(&s.pending).get(&hash).cloned();
                    let Some(claims) = claims else { continue };
                    let st = s.kv.tokens.clone();
                    set.spawn(async move {
                        let body = serde_json::to_vec(&claims).map_err(|e| e.to_string())?;
                        st.put(&hash, body.into())
                            .await
                            .map(|_| Some(hash))
                            .map_err(|e| e.to_string())
                    });
                }
                Op::Flush(ack) => acks.push(ack),
            }
        }
        while let Some(done) = set.join_next().await {
            match done {
                Ok(Ok(Some(hash))) => {
                    lock(&s.pending).remove(&hash);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    let n = s.failed.fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() {
                        tracing::warn!(failed = n + 1, error = %e, "root: cluster write failed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "root: cluster write task failed"),
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// Refreshes this root's registry entries before their TTL runs out.
async fn refresh_loop(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(REGISTRY_TTL / 3);
    tick.tick().await;
    while !s.closed.load(Ordering::Relaxed) {
        tick.tick().await;
        let entries: Vec<(NodeId, Registration)> = lock(&s.registry)
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        for (node, r) in entries {
            let shared = SharedRegistration {
                node: node.clone(),
                root: s.name.clone(),
                addrs: r.addrs,
                capabilities: r.capabilities,
            };
            if let Ok(v) = rmp_serde::to_vec(&shared)
                && let Err(e) = s.kv.registry.put(node_key(&node), v.into()).await
            {
                tracing::debug!(error = %e, "root: registry refresh failed");
            }
        }
    }
}

#[async_trait]
impl RootState for JetStreamState {
    fn issue(
        &self,
        ca_fingerprint: [u8; 32],
        node: &NodeId,
        role: Role,
        ttl: Duration,
        now: SystemTime,
        capabilities: &[String],
    ) -> Result<JoinToken, AdmissionError> {
        let (token, claims) = new_token(ca_fingerprint, node, role, ttl, now, capabilities)?;
        let hash = token.hash();
        lock(&self.shared.pending).insert(hash.clone(), claims);
        if !self.queue(Op::Issued(hash.clone())) {
            lock(&self.shared.pending).remove(&hash);
            return Err(internal("write queue full"));
        }
        Ok(token)
    }

    async fn redeem(
        &self,
        token: &JoinToken,
        node: &NodeId,
        role: Role,
        now: SystemTime,
    ) -> Result<TokenClaims, AdmissionError> {
        let hash = token.hash();
        let pending = lock(&self.shared.pending).get(&hash).cloned();
        let claims = match pending {
            Some(c) => Some(c),
            None => match self
                .remote(self.shared.kv.tokens.get(hash.as_str()))
                .await?
            {
                Ok(v) => v.and_then(|b| serde_json::from_slice::<TokenClaims>(&b).ok()),
                Err(e) => return Err(internal(e)),
            },
        };
        let Some(claims) = claims else {
            // Not issued through the cluster: a token file an operator put
            // in this root's state directory, or unknown (or used: the
            // issued record is deleted at redemption).
            let local = self.shared.book.redeem(token, node, role, now);
            return match local {
                Err(AdmissionError::Unknown) => {
                    if self
                        .shared
                        .kv
                        .used
                        .get(hash.as_str())
                        .await
                        .map_err(internal)?
                        .is_some()
                    {
                        Err(AdmissionError::Reused)
                    } else {
                        Err(AdmissionError::Unknown)
                    }
                }
                Err(AdmissionError::Reused) => Err(AdmissionError::Reused),
                other => {
                    if !self.claim(&hash, node).await? {
                        return Err(AdmissionError::Reused);
                    }
                    let claims = other?;
                    self.admit(claims, node, role, now).await
                }
            };
        };
        if !self.claim(&hash, node).await? {
            return Err(AdmissionError::Reused);
        }
        lock(&self.shared.pending).remove(&hash);
        self.queue(Op::Del(Bucket::Tokens, hash));
        self.admit(claims, node, role, now).await
    }

    async fn revoke(&self, node: &NodeId) -> Result<(), AdmissionError> {
        let value = Bytes::copy_from_slice(node.as_str().as_bytes());
        self.remote(self.shared.kv.revoked.put(node_key(node), value))
            .await?
            .map_err(internal)?;
        if lock(&self.shared.revoked).insert(node.clone()) {
            let _ = self.shared.revocations.send(node.clone());
        }
        self.unregister(node);
        Ok(())
    }

    fn is_revoked(&self, node: &NodeId) -> bool {
        lock(&self.shared.revoked).contains(node)
    }

    fn revoked(&self) -> Vec<NodeId> {
        lock(&self.shared.revoked).iter().cloned().collect()
    }

    fn revocations(&self) -> Option<broadcast::Receiver<NodeId>> {
        Some(self.shared.revocations.subscribe())
    }

    fn capabilities(&self, node: &NodeId) -> BTreeSet<String> {
        lock(&self.shared.grants)
            .get(node)
            .cloned()
            .unwrap_or_default()
    }

    fn register(&self, node: &NodeId, registration: Registration) {
        self.put_registry(node, &registration);
        lock(&self.shared.homes).insert(node.clone(), self.shared.name.clone());
        lock(&self.shared.registry).insert(node.clone(), registration);
    }

    fn unregister(&self, node: &NodeId) {
        if lock(&self.shared.registry).remove(node).is_some() {
            // Only this root's own entry: the node may be on another now.
            let home = lock(&self.shared.homes).get(node).cloned();
            if home.as_deref() == Some(self.shared.name.as_str()) {
                self.queue(Op::Del(Bucket::Registry, node_key(node)));
            }
        }
    }

    fn with_registry(&self, f: &mut dyn FnMut(&HashMap<NodeId, Registration>)) {
        f(&lock(&self.shared.registry))
    }

    async fn relay_verdict(&self, key: DedupeKey, frame: &Bytes, now: Instant) -> Verdict {
        let (from, to, stream, inc, id) = &key;
        let (verdict, changed) = {
            let mut t = lock(&self.shared.dedupe);
            let (v, changed) = t.on_frame_tracked(from, to, stream, *inc, *id, frame, now);
            (v, changed.and_then(|k| t.snapshot(&k).map(|s| (k, s))))
        };
        if let Some((k, s)) = changed {
            let (anchor, wall) = self.shared.anchor;
            if s.reply.as_ref().is_some_and(|r| r.len() > MAX_SHARED_VALUE) {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return verdict;
            }
            let shared = SharedEntry {
                origin: self.shared.name.clone(),
                first_ms: to_wall_ms(s.first, anchor, wall),
                forwarded_ms: to_wall_ms(s.forwarded_at, anchor, wall),
                reply: s.reply.map(|b| b.to_vec()),
                key: k,
            };
            if let (Some(name), Ok(v)) = (dedupe_key(&shared.key), rmp_serde::to_vec(&shared)) {
                self.queue(Op::Put(Bucket::Dedupe, name, v.into()));
            }
        }
        verdict
    }

    fn relay_forget_unanswered_to(&self, to: &NodeId) -> usize {
        lock(&self.shared.dedupe).forget_unanswered_to(to)
    }

    fn health(&self) -> StateHealth {
        let connected =
            self.shared.client.connection_state() == async_nats::connection::State::Connected;
        StateHealth {
            backend: "jetstream",
            ready: connected,
            dropped_writes: self.shared.dropped.load(Ordering::Relaxed)
                + self.shared.failed.load(Ordering::Relaxed),
        }
    }

    async fn close(&self) {
        if self.shared.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        // Publish what is queued (bounded: NATS may be down), then stop.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.flush()).await;
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.client.flush()).await;
    }
}

impl Drop for JetStreamState {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

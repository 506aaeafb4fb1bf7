//! The command channel actor: the glue between the pure cores
//! ([`Outbox`], [`Dedupe`], [`Sequencer`]), the [`Store`] and a [`Node`].
//!
//! Owns, per command stream, two ractor actors started under the node's
//! `channels` supervisor:
//! - the **sender** ([`CommandChannel::spawn_sender`]; started on the
//!   stream's first command, or at once if the store holds commands of the
//!   stream still pending, so an idle stream costs no actor): accepts commands
//!   from a typed [`CommandSender`], group-commits class A/B commands into
//!   the store's outbox (every submission waiting in the mailbox goes into
//!   one [`Store::append_outbox`]), sends them on the path the routing
//!   authority chose, retransmits on the outbox's timers, resends on a route
//!   change, restores the outbox from the store after a restart, and
//!   resolves each [`Receipt`] with the reply;
//! - the **server** ([`CommandChannel::serve`]): decodes each command
//!   envelope, delivers in sequence order, dedupes (memory and store),
//!   refuses expired commands and commands of a stale authority epoch,
//!   applies the [`CommandHandler`] at most once per message, stores the
//!   reply, and answers with a wire [`Ack`] plus a reply envelope.
//!
//! It does not choose paths (the routing authority does), does not define
//! the store's layout and does not retry by itself beyond the outbox's
//! rules. See `docs/channels.md` for the semantics.
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use interlocking::actors::node::NodeBuilder;
//! use interlocking::channels::command::{
//!     CommandChannel, CommandHandler, CommandSender, SendOptions, SenderConfig, ServeConfig,
//! };
//! use interlocking::store::MemStore;
//! use interlocking::transports::{memory::MemoryNetwork, probe::ProbeConfig, PeerAddr};
//! use interlocking::vocab::{NodeId, PathKind, Role, StreamId};
//!
//! /// The application's handler: doubles a number.
//! struct Doubler;
//!
//! #[async_trait]
//! impl CommandHandler for Doubler {
//!     type Command = u64;
//!     type Reply = u64;
//!     async fn handle(&self, n: u64) -> Result<u64, String> {
//!         Ok(n * 2)
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = MemoryNetwork::new(1);
//! let hub = NodeBuilder::new("hub", Role::Hub)
//!     .memory(&net, PathKind::Quic, ProbeConfig::default())
//!     .spawn()
//!     .await?;
//! let member = NodeBuilder::new("m1", Role::Member)
//!     .memory(&net, PathKind::Quic, ProbeConfig::default())
//!     .dial(PathKind::Quic, PeerAddr::node("hub"))
//!     .spawn()
//!     .await?;
//! let stream = StreamId::new("command:m1/hub");
//! // A real node passes a `RedbStore`; `MemStore` keeps the example quick.
//! CommandChannel::serve(&hub, stream.clone(), Doubler, Arc::new(MemStore::new()), ServeConfig::default())
//!     .await?;
//! let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
//!     &member,
//!     stream,
//!     NodeId::new("hub"),
//!     Arc::new(MemStore::new()),
//!     SenderConfig::default(),
//! )
//! .await?;
//! let receipt = sender.send(21, SendOptions::class_a()).await?; // stored: accepted
//! assert_eq!(receipt.reply().await?, 42); // applied once on the hub
//! member.shutdown().await;
//! hub.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{Check, Dedupe, DedupeConfig, Offer, OrderConfig, Outbox, OutboxConfig, Sequencer};
use super::{Transmit, TransmitKind};
use crate::actors::node::{Node, NodeLink};
use crate::actors::supervisor::{ChildSpec, RestartMode};
use crate::routing::Need;
use crate::store::{AppendOutcome, DedupeRecord, NewOutboxEntry, OutboxBatch, Store};
use crate::sync::{LockRecover, lock};
use crate::vocab::{ChannelKind, NodeId, PathId, StreamId, TrafficClass};
use crate::wire::{Ack, Data, Frame, Reject};

/// Reject code: a command channel could not decode a data frame's payload
/// (defined in [`crate::wire::codes::channels`]).
pub use crate::wire::codes::channels::UNDECODABLE as REJECT_UNDECODABLE;

/// A wall clock in milliseconds since the Unix epoch (injectable for tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system wall clock in milliseconds since the Unix epoch.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// Applies the commands of one stream on the receiving node.
#[async_trait]
pub trait CommandHandler: Send + Sync + 'static {
    /// The command type (MessagePack on the wire).
    type Command: Serialize + DeserializeOwned + Send;
    /// The reply type (MessagePack on the wire).
    type Reply: Serialize + DeserializeOwned + Send;
    /// Applies one command; called at most once per accepted message, in
    /// sequence order.
    async fn handle(&self, cmd: Self::Command) -> Result<Self::Reply, String>;
}

/// Errors a command sender sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command's TTL had passed when it reached the receiver; it was
    /// not executed.
    #[error("command expired")]
    Expired,
    /// The receiver refused it (stale authority epoch, cancelled …); it was
    /// not executed.
    #[error("command rejected: {reason}")]
    Rejected {
        /// Why.
        reason: String,
    },
    /// The outbox credit window is full ([`CommandSender::try_send`]).
    #[error("outbox full")]
    Full,
    /// No path to the target (reserved; the outbox waits for one today).
    #[error("no route to the target")]
    Unroutable,
    /// The handler ran and returned an error.
    #[error("handler failed: {0}")]
    Handler(String),
    /// The store failed, or a command or reply could not be encoded.
    #[error("store: {0}")]
    Store(String),
    /// The channel's actor stopped (or restarted) before answering.
    #[error("channel closed")]
    Closed,
    /// A class-B command left the replay window (it was full) before its
    /// reply arrived: it may or may not have been applied.
    #[error("dropped from the class-B replay window")]
    Dropped,
    /// The operation key was used before by this message, which is no
    /// longer pending: its outcome cannot be reported here.
    #[error("duplicate operation key of message {message_id}")]
    Duplicate {
        /// The message first stored with the key.
        message_id: u64,
    },
}

/// The delivery class of one command (see `docs/channels.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeliveryClass {
    /// Must not lose: durable outbox; the receipt comes after the fsync.
    #[default]
    A,
    /// Nice to replay: kept in a bounded in-memory replay window (never
    /// stored), resent on a route change while in the window; the oldest
    /// is dropped when the window is full and its caller gets
    /// [`CommandError::Dropped`]. Not ordered; lost on a restart.
    B,
    /// Drop allowed: sent once, never stored nor resent, not ordered.
    C,
}

/// Options of one [`CommandSender::send`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// The delivery class.
    pub class: DeliveryClass,
    /// The command expires this long after it was issued (`None`: never).
    pub ttl: Option<Duration>,
    /// Idempotency key: a second command with the same key on the stream
    /// is not stored again.
    pub operation_key: Option<String>,
    /// Whether the command may be resent on another path (see
    /// `docs/channels.md`, classification).
    pub replayable: bool,
}

impl SendOptions {
    /// Class A, replayable, no TTL, no key.
    pub fn class_a() -> Self {
        Self {
            class: DeliveryClass::A,
            replayable: true,
            ..Self::default()
        }
    }

    /// Class B (bounded in-memory replay window), replayable, no TTL.
    pub fn class_b() -> Self {
        Self {
            class: DeliveryClass::B,
            replayable: true,
            ..Self::default()
        }
    }

    /// Sets the delivery class.
    pub fn class(mut self, class: DeliveryClass) -> Self {
        self.class = class;
        self
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the operation key.
    pub fn operation_key(mut self, key: impl Into<String>) -> Self {
        self.operation_key = Some(key.into());
        self
    }
}

/// What an envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvelopeKind {
    /// A command for the handler.
    Command,
    /// The answer to a command or a cancel.
    Reply,
    /// Cancel a not-replayable command whose outcome is unknown.
    Cancel,
}

/// The MessagePack payload of every command-channel [`Data`] frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Command, reply or cancel.
    pub kind: EnvelopeKind,
    /// The message id (assigned by the sender's store).
    pub message_id: u64,
    /// The stream.
    pub stream_id: StreamId,
    /// Wall-clock issue time, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// Time to live in ms; 0 means none.
    pub ttl_ms: u64,
    /// The sender's authority epoch for the stream.
    pub authority_epoch: u64,
    /// The caller's operation key, if any.
    pub operation_key: Option<String>,
    /// The encoded command, or the encoded [`ReplyBody`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl Envelope {
    /// Encodes with rmp-serde.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain structs into a Vec cannot fail.
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    /// Decodes with rmp-serde.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// The outcome a reply envelope carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyBody {
    /// The handler's encoded reply.
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The handler's error.
    Handler(String),
    /// Expired before it was applied.
    Expired,
    /// Refused without applying.
    Rejected(String),
}

/// Tunables of a command sender.
#[derive(Clone)]
#[non_exhaustive]
pub struct SenderConfig {
    /// The outbox (credit window, RTO).
    pub outbox: OutboxConfig,
    /// The authority epoch stamped on every command.
    pub authority_epoch: u64,
    /// The wall clock for `issued_at_ms`.
    pub clock: Clock,
    /// How many class-B commands the in-memory replay window holds
    /// (default 256, at least 1).
    pub replay_window: usize,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            outbox: OutboxConfig::default(),
            authority_epoch: 0,
            clock: system_clock(),
            replay_window: 256,
        }
    }
}

impl SenderConfig {
    /// Sets the outbox tunables.
    pub fn outbox(mut self, outbox: OutboxConfig) -> Self {
        self.outbox = outbox;
        self
    }

    /// Sets the authority epoch.
    pub fn authority_epoch(mut self, epoch: u64) -> Self {
        self.authority_epoch = epoch;
        self
    }

    /// Replaces the wall clock (tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Sets [`SenderConfig::replay_window`] (at least 1).
    pub fn replay_window(mut self, n: usize) -> Self {
        self.replay_window = n.max(1);
        self
    }
}

/// Tunables of a command server.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Dedupe retention.
    pub dedupe: DedupeConfig,
    /// Reorder buffer.
    pub order: OrderConfig,
    /// The wall clock for expiry.
    pub clock: Clock,
    /// How often the server prunes its dedupe records (memory and store) to
    /// the [`DedupeConfig`] retention. Default 30 s.
    pub prune_every: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            dedupe: DedupeConfig::default(),
            order: OrderConfig::default(),
            clock: system_clock(),
            prune_every: Duration::from_secs(30),
        }
    }
}

impl ServeConfig {
    /// Sets the dedupe retention.
    pub fn dedupe(mut self, dedupe: DedupeConfig) -> Self {
        self.dedupe = dedupe;
        self
    }

    /// Sets how often dedupe records are pruned.
    pub fn prune_every(mut self, every: Duration) -> Self {
        self.prune_every = every;
        self
    }

    /// Replaces the wall clock (tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

type ReplyTx = oneshot::Sender<Result<Vec<u8>, CommandError>>;
type AcceptTx =
    oneshot::Sender<Result<(u64, oneshot::Receiver<Result<Vec<u8>, CommandError>>), CommandError>>;

/// One submission waiting for the group commit.
pub struct Submission {
    envelope: Envelope,
    opts: SendOptions,
    accept: AcceptTx,
}

/// Messages of the [`CommandSenderActor`].
pub enum SenderMsg {
    /// A caller's command.
    Submit(Box<Submission>),
    /// Commit every submission collected so far.
    Flush,
    /// The routing authority's current path.
    Route(Option<PathId>),
    /// A frame of the stream arrived.
    Frame(PathId, Frame),
    /// A retransmit timer fired.
    Tick,
}

/// Counters shared by a sender's actor and handle.
#[derive(Debug, Default)]
pub struct SenderStats {
    /// Entries pending in the outbox (in flight or waiting for credit).
    pub pending: AtomicUsize,
    /// Reject frames received on the stream.
    pub rejects: AtomicU64,
    /// Data frames sent (first sends and resends).
    pub transmits: AtomicU64,
}

/// What a sender keeps outside its actor, so a restart of the actor loses
/// none of it.
struct SenderShared {
    /// The last path the route listener saw.
    route: Mutex<Option<PathId>>,
    /// Callers waiting for a reply, by message id. A restarted actor keeps
    /// the waiters of every entry it restores from the store and answers
    /// the others (class B and C, lost with the old incarnation) with
    /// [`CommandError::Closed`].
    waiters: Mutex<HashMap<u64, Vec<ReplyTx>>>,
    /// Serialises the actor's store appends with the next incarnation's
    /// restore: an append that was running when its actor was killed
    /// finishes (the blocking thread cannot be cancelled) before the
    /// restarted actor reads the pending outbox, so no stored entry (and no
    /// sequence number) is missed by the restore.
    store_gate: Arc<tokio::sync::Mutex<()>>,
    /// The next id for unstored (class B and C) commands. Starts at the
    /// wall clock (ms) shifted left by 22 bits, with the top bit set, so
    /// ids neither repeat across restarts of the actor nor (short of four
    /// million unstored commands per elapsed millisecond) of the process,
    /// and never meet the store's ids.
    next_unstored: AtomicU64,
}

impl SenderShared {
    fn new(now_ms: u64) -> Self {
        Self {
            route: Mutex::new(None),
            waiters: Mutex::new(HashMap::new()),
            store_gate: Arc::default(),
            next_unstored: AtomicU64::new((1u64 << 63) | ((now_ms & ((1u64 << 41) - 1)) << 22)),
        }
    }

    fn route(&self) -> Option<PathId> {
        lock(&self.route).clone()
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<ReplyTx>>> {
        lock(&self.waiters)
    }

    fn wait(&self, message_id: u64, tx: ReplyTx) {
        self.waiters().entry(message_id).or_default().push(tx);
    }

    fn resolve(&self, message_id: u64, result: Result<Vec<u8>, CommandError>) {
        let waiting = self.waiters().remove(&message_id).unwrap_or_default();
        for w in waiting {
            let _ = w.send(result.clone());
        }
    }

    fn unstored_id(&self) -> u64 {
        self.next_unstored.fetch_add(1, Ordering::Relaxed)
    }
}

/// Arguments of a [`CommandSenderActor`] (rebuilt on every restart).
pub struct SenderArgs {
    stream: StreamId,
    link: NodeLink,
    store: Arc<dyn Store>,
    config: SenderConfig,
    shared: Arc<SenderShared>,
    stats: Arc<SenderStats>,
}

/// State of a running [`CommandSenderActor`].
pub struct SenderState {
    args: SenderArgs,
    outbox: Outbox,
    path: Option<PathId>,
    /// Envelopes of pending class-A entries and of the class-B window.
    records: HashMap<u64, (Envelope, u8)>,
    /// The class-B replay window: message ids, oldest first.
    window: VecDeque<u64>,
    batch: Vec<Submission>,
    flush_queued: bool,
    timer_at: Option<std::time::Instant>,
    /// Replied entries not yet removed from the store; removed by the next
    /// flush, off the actor's thread.
    acked: Vec<u64>,
}

/// The sending side of one command stream.
pub struct CommandSenderActor;

impl SenderState {
    fn now() -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }

    /// Sends `env` as one data frame on the current path, if any. Every
    /// data frame the sender emits goes through here.
    fn send_envelope(&self, seq: u64, message_id: u64, class: u8, env: &Envelope) {
        let Some(path) = &self.path else {
            return;
        };
        let frame = Frame::Data(Data {
            stream: self.args.stream.clone(),
            seq,
            message_id,
            class,
            payload: Bytes::from(env.encode()),
        });
        self.args.stats.transmits.fetch_add(1, Ordering::Relaxed);
        // A refused send of a kept command stays in the outbox (or window)
        // and is resent later.
        let _ = self.args.link.send(path, frame);
    }

    fn transmit(&self, t: &Transmit) {
        let Some((env, class)) = self.records.get(&t.message_id) else {
            return;
        };
        let mut env = env.clone();
        env.message_id = t.message_id;
        if t.kind == TransmitKind::Cancel {
            env.kind = EnvelopeKind::Cancel;
            env.body.clear();
        }
        self.send_envelope(t.seq, t.message_id, *class, &env);
    }

    fn pump(&mut self, myself: &ActorRef<SenderMsg>) {
        if self.path.is_some() {
            for t in self.outbox.poll_send(Self::now()) {
                self.transmit(&t);
            }
        }
        self.args
            .stats
            .pending
            .store(self.outbox.len(), Ordering::Relaxed);
        self.arm(myself);
    }

    fn arm(&mut self, myself: &ActorRef<SenderMsg>) {
        // Without a path nothing is resent, so no timer: a deadline already
        // passed would fire at once, find no path and re-arm at once — a
        // busy loop that also starves a paused test clock. The next route
        // decision resends every in-flight entry and re-arms.
        if self.path.is_none() {
            return;
        }
        let Some(at) = self.outbox.next_deadline() else {
            return;
        };
        if self.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        self.timer_at = Some(at);
        let after = at.saturating_duration_since(Self::now());
        myself.send_after(after, || SenderMsg::Tick);
    }

    /// Sends an unstored (class B or C) command once, unordered (`seq` 0).
    fn transmit_unstored(&self, id: u64) {
        if let Some((env, class)) = self.records.get(&id) {
            self.send_envelope(0, id, *class, env);
        }
    }

    /// Class C: sent at once with an id outside the store's range and
    /// seq 0 (unordered), never kept; nothing to commit, so no flush to
    /// wait for.
    fn send_unstored(&mut self, s: Submission) {
        let id = self.args.shared.unstored_id();
        let (tx, rx) = oneshot::channel();
        let mut env = s.envelope;
        env.message_id = id;
        if self.path.is_some() {
            self.send_envelope(0, id, TrafficClass::Control.code(), &env);
            self.args.shared.wait(id, tx);
        }
        let _ = s.accept.send(Ok((id, rx)));
    }

    async fn flush(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let class = TrafficClass::Control.code();
        let mut stored = Vec::new();
        for s in batch {
            match s.opts.class {
                DeliveryClass::A => stored.push(s),
                DeliveryClass::B => {
                    // Into the replay window: sent now if there is a path,
                    // again on every route change while it stays there.
                    let id = self.args.shared.unstored_id();
                    let (tx, rx) = oneshot::channel();
                    let mut env = s.envelope;
                    env.message_id = id;
                    self.records.insert(id, (env, class));
                    self.window.push_back(id);
                    self.args.shared.wait(id, tx);
                    self.transmit_unstored(id);
                    let _ = s.accept.send(Ok((id, rx)));
                    while self.window.len() > self.args.config.replay_window.max(1) {
                        if let Some(old) = self.window.pop_front() {
                            self.records.remove(&old);
                            self.args.shared.resolve(old, Err(CommandError::Dropped));
                        }
                    }
                }
                DeliveryClass::C => self.send_unstored(s),
            }
        }
        let acked = std::mem::take(&mut self.acked);
        if stored.is_empty() {
            if !acked.is_empty() {
                let (store, stream) = (self.args.store.clone(), self.args.stream.clone());
                let _ =
                    tokio::task::spawn_blocking(move || store.ack_outbox(&stream, &acked)).await;
            }
            return;
        }
        let batch = OutboxBatch {
            entries: stored
                .iter()
                .map(|s| NewOutboxEntry {
                    stream: self.args.stream.clone(),
                    record: s.envelope.encode(),
                    operation_key: s.opts.operation_key.clone(),
                    class,
                    replayable: s.opts.replayable,
                })
                .collect(),
            cursors: Vec::new(),
            now_ms: (self.args.config.clock)(),
        };
        let (store, stream) = (self.args.store.clone(), self.args.stream.clone());
        // The gate travels into the blocking task: if this actor is killed
        // while the append runs, the next incarnation's restore waits for it.
        let gate = self.args.shared.store_gate.clone().lock_owned().await;
        let result = tokio::task::spawn_blocking(move || {
            let _gate = gate;
            if !acked.is_empty() {
                let _ = store.ack_outbox(&stream, &acked);
            }
            store.append_outbox(&batch)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        match result {
            Err(e) => {
                for s in stored {
                    let _ = s.accept.send(Err(CommandError::Store(e.clone())));
                }
            }
            Ok(outcomes) => {
                for (s, outcome) in stored.into_iter().zip(outcomes) {
                    let (tx, rx) = oneshot::channel();
                    match outcome {
                        AppendOutcome::Stored { message_id, seq } => {
                            self.records.insert(message_id, (s.envelope, class));
                            self.outbox.push(message_id, seq, class, s.opts.replayable);
                            self.args.shared.wait(message_id, tx);
                            let _ = s.accept.send(Ok((message_id, rx)));
                        }
                        AppendOutcome::DuplicateOf { message_id } => {
                            if self.outbox.get(message_id).is_some() {
                                self.args.shared.wait(message_id, tx);
                            } else {
                                let _ = tx.send(Err(CommandError::Duplicate { message_id }));
                            }
                            let _ = s.accept.send(Ok((message_id, rx)));
                        }
                    }
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Data(d) => {
                let Ok(env) = Envelope::decode(&d.payload) else {
                    tracing::warn!(stream = %self.args.stream, "undecodable reply dropped");
                    return;
                };
                if env.kind != EnvelopeKind::Reply {
                    return;
                }
                let id = d.message_id;
                if self.outbox.on_ack(id).is_some() {
                    // Removed from the store by the next flush. Losing an
                    // ack only causes a resend, which the receiver
                    // deduplicates.
                    self.acked.push(id);
                }
                self.records.remove(&id);
                if let Some(at) = self.window.iter().position(|w| *w == id) {
                    self.window.remove(at);
                }
                let result = match rmp_serde::from_slice::<ReplyBody>(&env.body) {
                    Ok(ReplyBody::Ok(b)) => Ok(b),
                    Ok(ReplyBody::Handler(e)) => Err(CommandError::Handler(e)),
                    Ok(ReplyBody::Expired) => Err(CommandError::Expired),
                    Ok(ReplyBody::Rejected(reason)) => Err(CommandError::Rejected { reason }),
                    Err(e) => Err(CommandError::Store(format!("undecodable reply: {e}"))),
                };
                self.args.shared.resolve(id, result);
            }
            Frame::Reject(r) => {
                self.args.stats.rejects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(stream = %self.args.stream, code = r.code, reason = %r.reason, "reject received");
            }
            // The node already reported the ack to routing; the reply
            // settles the entry.
            _ => {}
        }
    }
}

impl Actor for CommandSenderActor {
    type Msg = SenderMsg;
    type State = SenderState;
    type Arguments = SenderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let store = args.store.clone();
        // Waits for an append a killed predecessor left running.
        let gate = args.shared.store_gate.clone().lock_owned().await;
        let pending = tokio::task::spawn_blocking(move || {
            let _gate = gate;
            store.pending_outbox()
        })
        .await??;
        let (outbox, _not_replayed) =
            Outbox::restore(args.stream.clone(), args.config.outbox, &pending);
        // Callers of entries restored here keep waiting (the reply settles
        // them as before); the rest (class B and C of a previous
        // incarnation, whose window died with it) are answered now.
        args.shared.waiters().retain(|id, waiting| {
            if outbox.get(*id).is_some() {
                return true;
            }
            for w in waiting.drain(..) {
                let _ = w.send(Err(CommandError::Closed));
            }
            false
        });
        let mut records = HashMap::new();
        for r in pending.iter().filter(|r| r.stream == args.stream) {
            if let Ok(env) = Envelope::decode(&r.record) {
                records.insert(r.message_id, (env, r.class));
            }
        }
        let path = args.shared.route();
        let mut state = SenderState {
            args,
            outbox,
            path,
            records,
            window: VecDeque::new(),
            batch: Vec::new(),
            flush_queued: false,
            timer_at: None,
            acked: Vec::new(),
        };
        state.pump(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SenderMsg::Submit(s) if s.opts.class == DeliveryClass::C => {
                state.send_unstored(*s);
            }
            SenderMsg::Submit(s) => {
                state.batch.push(*s);
                if !state.flush_queued {
                    state.flush_queued = true;
                    // Queued behind every submission already in the mailbox:
                    // they all go into one append (group commit).
                    myself.cast(SenderMsg::Flush)?;
                }
            }
            SenderMsg::Flush => {
                state.flush_queued = false;
                state.flush().await;
                state.pump(&myself);
            }
            SenderMsg::Route(next) => {
                if next != state.path {
                    state.path = next;
                    if state.path.is_some() {
                        let change = state.outbox.on_route_change(SenderState::now());
                        for t in &change.transmits {
                            state.transmit(t);
                        }
                        for id in &state.window {
                            state.transmit_unstored(*id);
                        }
                    }
                    state.pump(&myself);
                }
            }
            SenderMsg::Frame(_path, frame) => {
                state.on_frame(frame);
                if !state.acked.is_empty() && !state.flush_queued {
                    // Store removals are batched behind the frames already
                    // in the mailbox, like submissions.
                    state.flush_queued = true;
                    myself.cast(SenderMsg::Flush)?;
                }
                state.pump(&myself);
            }
            SenderMsg::Tick => {
                state.timer_at = None;
                if state.path.is_some() {
                    for t in state.outbox.poll_resend(SenderState::now()) {
                        state.transmit(&t);
                    }
                }
                state.pump(&myself);
            }
        }
        Ok(())
    }
}

/// A channel actor reached by its registered name. The last resolved
/// reference is cached, so the per-message path neither allocates the name
/// nor searches ractor's global registry; a cast refused by a stopped
/// (restarted) actor resolves the name again and retries once.
struct ActorSlot<M> {
    name: String,
    cached: Mutex<Option<ActorRef<M>>>,
}

impl<M: ractor::Message> ActorSlot<M> {
    fn new(name: String) -> Self {
        Self {
            name,
            cached: Mutex::new(None),
        }
    }

    /// Casts `msg` to the running actor; false if none is running.
    fn cast(&self, msg: M) -> bool {
        self.try_cast(msg).is_ok()
    }

    /// Casts `msg` to the running actor; gives it back when none is
    /// running (when it can).
    fn try_cast(&self, msg: M) -> Result<(), Option<M>> {
        let mut cached = lock(&self.cached);
        let msg = match cached.as_ref() {
            Some(actor) => match actor.cast(msg) {
                Ok(()) => return Ok(()),
                Err(ractor::MessagingErr::SendErr(msg)) => msg,
                Err(_) => return Err(None),
            },
            None => msg,
        };
        *cached = ractor::registry::where_is(self.name.clone()).map(ActorRef::<M>::from);
        match cached.as_ref() {
            Some(actor) => actor.cast(msg).map_err(|e| match e {
                ractor::MessagingErr::SendErr(msg) => Some(msg),
                _ => None,
            }),
            None => Err(Some(msg)),
        }
    }
}

/// Starts a sender's actor once, when it is first needed: an idle stream
/// (registered, never used, nothing pending in the store) costs no actor,
/// task or mailbox.
struct LazyStart {
    link: NodeLink,
    spec: ChildSpec,
    started: tokio::sync::OnceCell<()>,
}

impl LazyStart {
    /// Starts the actor unless it was started before (the supervisor
    /// restarts it from then on).
    async fn ensure(&self) -> Result<(), SpawnError> {
        self.started
            .get_or_try_init(|| start_child(&self.link, self.spec.clone()))
            .await
            .map(|_| ())
    }
}

/// The typed handle of a command stream's sender.
pub struct CommandSender<C, R> {
    slot: Arc<ActorSlot<SenderMsg>>,
    start: Arc<LazyStart>,
    stream: StreamId,
    stats: Arc<SenderStats>,
    config: SenderConfig,
    _types: PhantomData<fn(C) -> R>,
}

impl<C, R> Clone for CommandSender<C, R> {
    fn clone(&self) -> Self {
        Self {
            slot: self.slot.clone(),
            start: self.start.clone(),
            stream: self.stream.clone(),
            stats: self.stats.clone(),
            config: self.config.clone(),
            _types: PhantomData,
        }
    }
}

/// An accepted command: its id, and its reply to come.
pub struct Receipt<R> {
    message_id: u64,
    reply: oneshot::Receiver<Result<Vec<u8>, CommandError>>,
    _type: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> Receipt<R> {
    /// The message id the store assigned.
    pub fn message_id(&self) -> u64 {
        self.message_id
    }

    /// Waits for the receiver's answer.
    pub async fn reply(self) -> Result<R, CommandError> {
        let bytes = self.reply.await.map_err(|_| CommandError::Closed)??;
        rmp_serde::from_slice(&bytes).map_err(|e| CommandError::Store(e.to_string()))
    }
}

impl<C: Serialize + Send, R: DeserializeOwned> CommandSender<C, R> {
    /// The stream.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// Counters of the sender.
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// Submits a command. For class A the receipt is returned only after
    /// the store's append (fsync); the reply follows via
    /// [`Receipt::reply`]. Waits for credit inside the outbox.
    pub async fn send(&self, cmd: C, opts: SendOptions) -> Result<Receipt<R>, CommandError> {
        let body = rmp_serde::to_vec(&cmd).map_err(|e| CommandError::Store(e.to_string()))?;
        let envelope = Envelope {
            kind: EnvelopeKind::Command,
            message_id: 0,
            stream_id: self.stream.clone(),
            issued_at_ms: (self.config.clock)(),
            ttl_ms: opts.ttl.map_or(0, |t| (t.as_millis() as u64).max(1)),
            authority_epoch: self.config.authority_epoch,
            operation_key: opts.operation_key.clone(),
            body,
        };
        let (accept, accepted) = oneshot::channel();
        let submit = SenderMsg::Submit(Box::new(Submission {
            envelope,
            opts,
            accept,
        }));
        match self.slot.try_cast(submit) {
            Ok(()) => {}
            Err(None) => return Err(CommandError::Closed),
            Err(Some(submit)) => {
                // First use of an idle stream: start its actor.
                self.start
                    .ensure()
                    .await
                    .map_err(|_| CommandError::Closed)?;
                self.slot
                    .try_cast(submit)
                    .map_err(|_| CommandError::Closed)?;
            }
        }
        let (message_id, reply) = accepted.await.map_err(|_| CommandError::Closed)??;
        Ok(Receipt {
            message_id,
            reply,
            _type: PhantomData,
        })
    }

    /// Like [`CommandSender::send`], but fails with [`CommandError::Full`]
    /// at once when the outbox credit window is full.
    pub async fn try_send(&self, cmd: C, opts: SendOptions) -> Result<Receipt<R>, CommandError> {
        if self.stats.pending.load(Ordering::Relaxed) >= self.config.outbox.max_in_flight {
            return Err(CommandError::Full);
        }
        self.send(cmd, opts).await
    }
}

/// Messages of the [`CommandServerActor`].
pub enum ServerMsg {
    /// A frame of the stream arrived on a path.
    Frame(PathId, Frame),
    /// Internal: make the dedupe records of the commands applied since the
    /// last flush durable (one transaction), then send their answers.
    Flush,
}

/// Shared handle of a served stream: its authority epoch and counters.
#[derive(Debug, Default)]
pub struct ServeHandle {
    epoch: AtomicU64,
    applied: AtomicU64,
    undecodable: AtomicU64,
    /// Held for the whole of a dedupe write, even past a kill of the actor
    /// that started it; a restarted actor takes it before reading the store.
    store_gate: Arc<tokio::sync::Mutex<()>>,
}

impl ServeHandle {
    /// Sets the receiver's current authority epoch for the stream: commands
    /// stamped with a lower epoch are rejected.
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    /// The current authority epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Commands the handler was applied to.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Frames refused as undecodable.
    pub fn undecodable(&self) -> u64 {
        self.undecodable.load(Ordering::Relaxed)
    }
}

#[async_trait]
trait ErasedHandler: Send + Sync + 'static {
    async fn apply(&self, body: &[u8]) -> ReplyBody;
}

struct Typed<H>(H);

#[async_trait]
impl<H: CommandHandler> ErasedHandler for Typed<H> {
    async fn apply(&self, body: &[u8]) -> ReplyBody {
        let cmd: H::Command = match rmp_serde::from_slice(body) {
            Ok(c) => c,
            Err(e) => return ReplyBody::Rejected(format!("undecodable command: {e}")),
        };
        match self.0.handle(cmd).await {
            Ok(r) => match rmp_serde::to_vec(&r) {
                Ok(b) => ReplyBody::Ok(b),
                Err(e) => ReplyBody::Handler(format!("unencodable reply: {e}")),
            },
            Err(e) => ReplyBody::Handler(e),
        }
    }
}

/// Arguments of a [`CommandServerActor`] (rebuilt on every restart).
pub struct ServerArgs {
    stream: StreamId,
    link: NodeLink,
    store: Arc<dyn Store>,
    handler: Arc<dyn ErasedHandler>,
    config: ServeConfig,
    handle: Arc<ServeHandle>,
}

/// State of a running [`CommandServerActor`].
pub struct ServerState {
    args: ServerArgs,
    dedupe: Dedupe,
    order: Sequencer<(PathId, Data, Envelope)>,
    /// Dedupe records of commands applied since the last flush.
    records: Vec<DedupeRecord>,
    /// The highest sequence number applied since the last flush.
    cursor: Option<u64>,
    /// Answers held until the records they depend on are durable, in order.
    answers: Vec<(PathId, Data, Vec<u8>)>,
    flush_queued: bool,
    /// When dedupe records were last pruned to the retention.
    last_prune: tokio::time::Instant,
}

/// The receiving side of one command stream.
pub struct CommandServerActor;

impl ServerState {
    fn answer(&self, path: &PathId, d: &Data, reply: &[u8]) {
        let ack = Frame::Ack(Ack {
            stream: d.stream.clone(),
            seq: d.seq,
            message_id: d.message_id,
        });
        let _ = self.args.link.send(path, ack);
        let frame = Frame::Data(Data {
            stream: d.stream.clone(),
            seq: d.seq,
            message_id: d.message_id,
            class: d.class,
            payload: Bytes::copy_from_slice(reply),
        });
        let _ = self.args.link.send(path, frame);
    }

    fn reply_envelope(&self, env: &Envelope, body: &ReplyBody) -> Vec<u8> {
        Envelope {
            kind: EnvelopeKind::Reply,
            message_id: env.message_id,
            stream_id: env.stream_id.clone(),
            issued_at_ms: (self.args.config.clock)(),
            ttl_ms: 0,
            authority_epoch: self.args.handle.epoch(),
            operation_key: None,
            body: rmp_serde::to_vec(body).unwrap_or_default(),
        }
        .encode()
    }

    /// Applies (or refuses) one message in order; returns the stored reply.
    async fn apply(&mut self, d: &Data, env: &Envelope) -> Result<Vec<u8>, ActorProcessingErr> {
        let stream = &self.args.stream;
        if let Check::Seen(reply) = self.dedupe.check(stream, d.message_id) {
            return Ok(reply.to_vec());
        }
        let now_ms = (self.args.config.clock)();
        let body = if env.kind == EnvelopeKind::Cancel {
            ReplyBody::Rejected("cancelled".into())
        } else if env.ttl_ms > 0 && env.issued_at_ms.saturating_add(env.ttl_ms) < now_ms {
            ReplyBody::Expired
        } else if env.authority_epoch < self.args.handle.epoch() {
            ReplyBody::Rejected(format!(
                "stale authority epoch {} < {}",
                env.authority_epoch,
                self.args.handle.epoch()
            ))
        } else {
            let r = self.args.handler.apply(&env.body).await;
            self.args.handle.applied.fetch_add(1, Ordering::Relaxed);
            r
        };
        let reply = self.reply_envelope(env, &body);
        if d.seq == 0 {
            // Class C (unordered, seq 0) is never stored nor resent by the
            // sender, so a durable dedupe record would only cost an fsync
            // per command; the in-memory record still answers a duplicated
            // frame.
            self.dedupe.record(
                stream,
                d.message_id,
                reply.clone(),
                tokio::time::Instant::now().into_std(),
            );
            return Ok(reply);
        }
        // Made durable by the next flush, with every other record applied
        // before it (group commit); its answer waits for that flush.
        self.records.push(DedupeRecord {
            stream: stream.clone(),
            message_id: d.message_id,
            seq: d.seq,
            reply: reply.clone(),
            recorded_at_ms: now_ms,
        });
        self.cursor = Some(self.cursor.map_or(d.seq, |c| c.max(d.seq)));
        self.dedupe.record(
            stream,
            d.message_id,
            reply.clone(),
            tokio::time::Instant::now().into_std(),
        );
        Ok(reply)
    }

    /// Writes the pending dedupe records and cursor in one transaction off
    /// the actor's thread, then sends the answers that waited for them.
    async fn flush(&mut self) -> Result<(), ActorProcessingErr> {
        let records = std::mem::take(&mut self.records);
        let cursor = self.cursor.take();
        if !records.is_empty() || cursor.is_some() {
            let (store, stream) = (self.args.store.clone(), self.args.stream.clone());
            let gate = self.args.handle.store_gate.clone().lock_owned().await;
            tokio::task::spawn_blocking(move || {
                let _gate = gate;
                let cursors: Vec<(StreamId, u64)> =
                    cursor.map(|c| (stream, c)).into_iter().collect();
                store.dedupe_record(&records, &cursors)
            })
            .await??;
        }
        for (path, d, reply) in std::mem::take(&mut self.answers) {
            self.answer(&path, &d, &reply);
        }
        self.prune_if_due().await;
        Ok(())
    }

    /// Every `prune_every`: drops dedupe records older than the retention
    /// or beyond the per-stream bound, in memory and in the store (off the
    /// actor's thread). A failed store prune is retried next time.
    async fn prune_if_due(&mut self) {
        let now = tokio::time::Instant::now();
        if now.duration_since(self.last_prune) < self.args.config.prune_every {
            return;
        }
        self.last_prune = now;
        self.dedupe.prune(now.into_std());
        let retention = self.args.config.dedupe.retention.as_millis() as u64;
        let older_than_ms = (self.args.config.clock)().saturating_sub(retention);
        let keep = self.args.config.dedupe.max_per_stream;
        let store = self.args.store.clone();
        let gate = self.args.handle.store_gate.clone().lock_owned().await;
        let pruned = tokio::task::spawn_blocking(move || {
            let _gate = gate;
            store.dedupe_prune(older_than_ms, keep)
        })
        .await;
        match pruned {
            Ok(Ok(n)) if n > 0 => {
                tracing::debug!(stream = %self.args.stream, pruned = n, "dedupe records pruned")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(stream = %self.args.stream, error = %e, "dedupe prune failed")
            }
            Err(e) => {
                tracing::warn!(stream = %self.args.stream, error = %e, "dedupe prune task failed")
            }
        }
    }

    async fn on_data(&mut self, path: PathId, d: Data) -> Result<(), ActorProcessingErr> {
        let env = match Envelope::decode(&d.payload) {
            Ok(env) if env.kind != EnvelopeKind::Reply && env.stream_id == d.stream => env,
            Ok(_) | Err(_) => {
                self.args.handle.undecodable.fetch_add(1, Ordering::Relaxed);
                let reject = Frame::Reject(Reject {
                    stream: Some(d.stream.clone()),
                    message_id: Some(d.message_id),
                    code: REJECT_UNDECODABLE,
                    reason: "undecodable command envelope".into(),
                });
                let _ = self.args.link.send(&path, reject);
                return Ok(());
            }
        };
        if d.seq == 0 {
            let reply = self.apply(&d, &env).await?;
            self.answer(&path, &d, &reply);
            return Ok(());
        }
        let stream = self.args.stream.clone();
        match self.order.offer(&stream, d.seq, (path, d, env)) {
            Offer::Deliver(items) => {
                for (_, (path, d, env)) in items {
                    let reply = self.apply(&d, &env).await?;
                    self.answers.push((path, d, reply));
                }
            }
            Offer::Delivered((path, d, _)) => {
                // A duplicate: its record may still be in the pending batch,
                // so the answer also waits for the flush.
                if let Check::Seen(reply) = self.dedupe.check(&stream, d.message_id) {
                    let reply = reply.to_vec();
                    self.answers.push((path, d, reply));
                } else if let Ok(Some(reply)) = self.args.store.dedupe_lookup(&stream, d.message_id)
                {
                    self.answers.push((path, d, reply));
                }
            }
            Offer::Buffered | Offer::AlreadyBuffered(_) | Offer::Overflow(_) => {}
        }
        Ok(())
    }
}

impl Actor for CommandServerActor {
    type Msg = ServerMsg;
    type State = ServerState;
    type Arguments = ServerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // A predecessor killed during a flush may still be writing.
        let _gate = args.handle.store_gate.clone().lock_owned().await;
        let records: Vec<DedupeRecord> = args
            .store
            .dedupe_load()?
            .into_iter()
            .filter(|r| r.stream == args.stream)
            .collect();
        let dedupe = Dedupe::restore(
            args.config.dedupe,
            &records,
            tokio::time::Instant::now().into_std(),
            (args.config.clock)(),
        );
        let mut order = Sequencer::new(args.config.order);
        if let Some(cursor) = args.store.cursor(&args.stream)? {
            order.resume(&args.stream, cursor);
        }
        Ok(ServerState {
            args,
            dedupe,
            order,
            records: Vec::new(),
            cursor: None,
            answers: Vec::new(),
            flush_queued: false,
            last_prune: tokio::time::Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ServerMsg::Frame(path, Frame::Data(d)) => {
                state.on_data(path, d).await?;
                if !state.answers.is_empty() && !state.flush_queued {
                    // Queued behind every frame already in the mailbox: they
                    // all share one durable write (group commit).
                    state.flush_queued = true;
                    myself.cast(ServerMsg::Flush)?;
                }
            }
            ServerMsg::Frame(..) => {}
            ServerMsg::Flush => {
                state.flush_queued = false;
                state.flush().await?;
            }
        }
        Ok(())
    }
}

/// Errors starting a command channel actor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The supervisor refused or failed to start the actor.
    #[error("could not start the channel actor: {0}")]
    Start(String),
    /// The routing authority refused the stream.
    #[error(transparent)]
    Node(#[from] crate::actors::node::NodeError),
}

/// The name, within its node, of the sender actor of `stream`: find the
/// running incarnation with [`Node::actor`].
pub fn sender_actor_name(stream: &StreamId) -> String {
    format!("command-sender/{stream}")
}

/// The name, within its node, of the server actor of `stream` (see
/// [`Node::actor`]).
pub fn server_actor_name(stream: &StreamId) -> String {
    format!("command-server/{stream}")
}

/// Starts a channel actor under the node's `channels` supervisor.
async fn start_child(link: &NodeLink, spec: ChildSpec) -> Result<(), SpawnError> {
    link.start_channel(spec).await.map_err(SpawnError::Start)
}

/// Starts command channel actors on a node.
pub struct CommandChannel;

impl CommandChannel {
    /// Sets up the sender of `stream` towards `target`: sets the stream's
    /// inbox, registers the stream with routing, and starts the sender
    /// actor under the node's supervisor — at once if the store holds
    /// pending commands of the stream (they are resent), otherwise on the
    /// first [`CommandSender::send`], so idle streams stay cheap. The
    /// returned handle survives restarts of the actor.
    pub async fn spawn_sender<C, R>(
        node: &Node,
        stream: StreamId,
        target: NodeId,
        store: Arc<dyn Store>,
        config: SenderConfig,
    ) -> Result<CommandSender<C, R>, SpawnError>
    where
        C: Serialize + Send,
        R: DeserializeOwned,
    {
        let name = node.scoped_name(&sender_actor_name(&stream));
        let shared = Arc::new(SenderShared::new((config.clock)()));
        let stats: Arc<SenderStats> = Arc::default();
        let spec = {
            let (link, stream, store, config, shared, stats) = (
                node.link(),
                stream.clone(),
                store.clone(),
                config.clone(),
                shared.clone(),
                stats.clone(),
            );
            ChildSpec::new(name.clone(), RestartMode::Permanent, move || {
                (
                    CommandSenderActor,
                    SenderArgs {
                        stream: stream.clone(),
                        link: link.clone(),
                        store: store.clone(),
                        config: config.clone(),
                        shared: shared.clone(),
                        stats: stats.clone(),
                    },
                )
            })
        };
        let start = Arc::new(LazyStart {
            link: node.link(),
            spec,
            started: tokio::sync::OnceCell::new(),
        });
        // A stream with commands pending in the store starts at once, to
        // resend them; an idle one waits for its first command.
        let pending = {
            let (store, stream) = (store.clone(), stream.clone());
            tokio::task::spawn_blocking(move || {
                store
                    .pending_outbox()
                    .map(|p| p.iter().any(|r| r.stream == stream))
            })
            .await
        };
        if !matches!(pending, Ok(Ok(false))) {
            start.ensure().await?;
        }
        let slot = Arc::new(ActorSlot::new(name));
        let inbox = slot.clone();
        node.set_inbox(
            stream.clone(),
            Arc::new(move |path: &PathId, frame: Frame| {
                // The node already reported the ack to routing and the
                // sender settles entries on the reply: acks need no hop.
                if !matches!(frame, Frame::Ack(_)) {
                    inbox.cast(SenderMsg::Frame(path.clone(), frame));
                }
            }),
        );
        let (listener, listener_shared) = (slot.clone(), shared.clone());
        let cast_route = move |next: Option<PathId>| {
            // Recorded first: an actor restarting right now reads it in
            // `pre_start`, so a decision is never lost between incarnations.
            *listener_shared.route.lock_recover() = next.clone();
            listener.cast(SenderMsg::Route(next));
        };
        let cast = cast_route.clone();
        let initial = node
            .register_stream(
                stream.clone(),
                Need::node(ChannelKind::Command, target),
                move |u| cast(u.decision.next),
            )
            .await?;
        if let Some(r) = initial {
            cast_route(r.path);
        }
        Ok(CommandSender {
            slot,
            start,
            stream,
            stats,
            config,
            _types: PhantomData,
        })
    }

    /// Serves `stream` on this node with `handler`: starts the server actor
    /// under the node's supervisor and sets the stream's inbox. Replies go
    /// back on the path each command arrived on.
    pub async fn serve<H: CommandHandler>(
        node: &Node,
        stream: StreamId,
        handler: H,
        store: Arc<dyn Store>,
        config: ServeConfig,
    ) -> Result<Arc<ServeHandle>, SpawnError> {
        let name = node.scoped_name(&server_actor_name(&stream));
        let handle: Arc<ServeHandle> = Arc::default();
        let handler: Arc<dyn ErasedHandler> = Arc::new(Typed(handler));
        {
            let (link, stream, handle) = (node.link(), stream.clone(), handle.clone());
            let spec = ChildSpec::new(name.clone(), RestartMode::Permanent, move || {
                (
                    CommandServerActor,
                    ServerArgs {
                        stream: stream.clone(),
                        link: link.clone(),
                        store: store.clone(),
                        handler: handler.clone(),
                        config: config.clone(),
                        handle: handle.clone(),
                    },
                )
            });
            start_child(&node.link(), spec).await?;
        }
        let slot = ActorSlot::new(name);
        node.set_inbox(
            stream,
            Arc::new(move |path: &PathId, frame: Frame| {
                slot.cast(ServerMsg::Frame(path.clone(), frame));
            }),
        );
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let env = Envelope {
            kind: EnvelopeKind::Command,
            message_id: 7,
            stream_id: StreamId::new("command:a/b"),
            issued_at_ms: 1,
            ttl_ms: 2,
            authority_epoch: 3,
            operation_key: Some("k".into()),
            body: vec![1, 2, 3],
        };
        assert_eq!(Envelope::decode(&env.encode()), Ok(env));
        assert!(Envelope::decode(&[0xc1, 0xff]).is_err());
    }
}

//! The sending side of one command stream: the [`CommandSenderActor`] and
//! its typed handle [`CommandSender`].
//!
//! The actor group-commits class A commands into the store's outbox (every
//! submission waiting in the mailbox goes into one append), keeps class B
//! in a bounded in-memory replay window, sends class C once, sends on the
//! path the routing authority chose, retransmits on the outbox's timers
//! (sooner when the receiver said busy or not ready), resends on a route
//! change, keeps no more in flight than the receiver's advertised credit,
//! restores its outbox from the store after a restart, and resolves each
//! [`Receipt`]. Every frame it sends carries the stream's sender
//! incarnation; the node's stream session admits only answers that echo it
//! and come from the bound peer.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::api::{CommandError, SendOptions};
use super::config::SenderConfig;
use super::envelope::{Envelope, EnvelopeKind, REJECT_UNDECODABLE, ReplyBody};
use super::records::{Record, Records, envelope_size};
use crate::actors::node::NodeLink;
use crate::actors::session::{Permit, codes};
use crate::channels::kit::{ActorSlot, LazyStart};
use crate::channels::{Outbox, Transmit, TransmitKind};
use crate::store::{AppendOutcome, NewOutboxEntry, OutboxBatch, Store};
use crate::sync::lock;
use crate::transports::SendError;
use crate::vocab::{DeliveryClass, PathId, StreamId};
use crate::wire::{Data, Frame, Reject};

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
    /// A frame of the stream arrived (admitted by its session).
    Frame(PathId, Frame, Permit),
    /// A retransmit or expiry timer fired.
    Tick,
    /// A path to the target came up (a reconnect, a restarted peer).
    PathUp(PathId),
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
    /// Class-C receipts resolved as timed out.
    pub timed_out: AtomicU64,
    /// Idempotency records pruned from the store.
    pub keys_pruned: AtomicU64,
    /// Class-A commands refused with [`CommandError::Full`] because the
    /// outbox held [`SenderConfig::max_outbox`] entries or bytes.
    pub outbox_full: AtomicU64,
}

/// What a sender keeps outside its actor, so a restart of the actor loses
/// none of it.
pub(super) struct SenderShared {
    /// The last path the route listener saw.
    pub(super) route: Mutex<Option<PathId>>,
    /// Callers waiting for a reply, by message id. A restarted actor keeps
    /// the waiters of every entry it restores from the store and answers
    /// the others (class B and C, lost with the old actor) with
    /// [`CommandError::Closed`].
    waiters: Mutex<HashMap<u64, Vec<ReplyTx>>>,
    /// Serialises the actor's store appends with the next actor's restore:
    /// an append that was running when its actor was killed finishes (the
    /// blocking thread cannot be cancelled) before the restarted actor
    /// reads the pending outbox, so no stored entry (and no sequence
    /// number) is missed by the restore.
    store_gate: Arc<tokio::sync::Mutex<()>>,
    /// The next id for unstored (class B and C) commands. Starts at the
    /// wall clock (ms) shifted left by 22 bits, with the top bit set, so
    /// ids neither repeat across restarts of the actor nor (short of four
    /// million unstored commands per elapsed millisecond) of the process,
    /// and never meet the store's ids.
    next_unstored: AtomicU64,
    /// The receiver's credit from its last ack (`u32::MAX`: none yet).
    pub(super) peer_credit: AtomicU32,
    /// When the store's idempotency records were last pruned.
    last_key_prune: Mutex<Option<Instant>>,
}

impl SenderShared {
    pub(super) fn new(now_ms: u64) -> Self {
        Self {
            route: Mutex::new(None),
            waiters: Mutex::new(HashMap::new()),
            store_gate: Arc::default(),
            next_unstored: AtomicU64::new((1u64 << 63) | ((now_ms & ((1u64 << 41) - 1)) << 22)),
            peer_credit: AtomicU32::new(u32::MAX),
            last_key_prune: Mutex::new(None),
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
    pub(super) stream: StreamId,
    pub(super) link: NodeLink,
    pub(super) store: Arc<dyn Store>,
    pub(super) config: SenderConfig,
    pub(super) shared: Arc<SenderShared>,
    pub(super) stats: Arc<SenderStats>,
    /// The stream's sender incarnation, stamped on every frame.
    pub(super) incarnation: u64,
}

/// State of a running [`CommandSenderActor`].
pub struct SenderState {
    args: SenderArgs,
    outbox: Outbox,
    path: Option<PathId>,
    /// Envelopes of pending class-A entries and of the class-B window.
    records: Records,
    /// The class-B replay window: message ids, oldest first.
    window: VecDeque<u64>,
    /// Class-C commands waiting for an answer, by deadline (oldest first).
    class_c: VecDeque<(Instant, u64)>,
    batch: Vec<Submission>,
    flush_queued: bool,
    timer_at: Option<Instant>,
    /// Replied entries not yet removed from the store; removed by the next
    /// flush, off the actor's thread.
    acked: Vec<u64>,
    /// Consecutive busy / not-ready refusals, for the retry back-off.
    refused_streak: u32,
}

/// The sending side of one command stream.
pub struct CommandSenderActor;

/// How often the sender prunes its store's idempotency records.
const KEY_PRUNE_EVERY: Duration = Duration::from_secs(60);

impl SenderState {
    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// Sends `env` as one data frame on the current path. Every data frame
    /// the sender emits goes through here.
    fn send_envelope(
        &self,
        seq: u64,
        message_id: u64,
        traffic: u8,
        delivery: DeliveryClass,
        env: &Envelope,
    ) -> Result<(), CommandError> {
        let Some(path) = &self.path else {
            return Err(CommandError::Unroutable);
        };
        let frame = Frame::Data(Data {
            stream: self.args.stream.clone(),
            incarnation: self.args.incarnation,
            seq,
            message_id,
            class: traffic,
            delivery: delivery.code(),
            payload: Bytes::from(env.encode()),
        });
        self.args.stats.transmits.fetch_add(1, Ordering::Relaxed);
        // A refused send of a kept command stays in the outbox (or window)
        // and is resent later; the caller decides for class C.
        match self.args.link.send(path, frame) {
            Ok(()) => Ok(()),
            Err(SendError::Full { .. }) => Err(CommandError::Full),
            Err(SendError::NoPath { .. }) => Err(CommandError::Unroutable),
            Err(e) => Err(CommandError::Store(e.to_string())),
        }
    }

    fn transmit(&self, t: &Transmit) {
        let Some(r) = self.records.get(&t.message_id) else {
            return;
        };
        let mut env = r.envelope.clone();
        env.message_id = t.message_id;
        if t.kind == TransmitKind::Cancel {
            env.kind = EnvelopeKind::Cancel;
            env.body.clear();
        }
        let _ = self.send_envelope(t.seq, t.message_id, r.traffic, r.delivery, &env);
    }

    fn pump(&mut self, myself: &ActorRef<SenderMsg>) {
        let credit = self.args.shared.peer_credit.load(Ordering::Relaxed);
        if credit != u32::MAX {
            self.outbox.set_peer_credit(credit as usize);
        }
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
        // Without a path nothing is resent, so no retransmit timer: a
        // deadline already passed would fire at once, find no path and
        // re-arm at once — a busy loop that also starves a paused test
        // clock. The next route decision resends every in-flight entry and
        // re-arms. Class-C expiry runs whatever the path.
        let resend = if self.path.is_some() {
            self.outbox.next_deadline()
        } else {
            None
        };
        let expiry = self.class_c.front().map(|(at, _)| *at);
        let Some(at) = [resend, expiry].into_iter().flatten().min() else {
            return;
        };
        if self.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        self.timer_at = Some(at);
        let after = at.saturating_duration_since(Self::now());
        myself.send_after(after, || SenderMsg::Tick);
    }

    /// Resolves every class-C receipt whose answer is overdue.
    fn expire_class_c(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.class_c.front() {
            if at > now {
                break;
            }
            self.class_c.pop_front();
            if self.args.shared.waiters().contains_key(&id) {
                self.args.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                self.args.shared.resolve(id, Err(CommandError::TimedOut));
            }
        }
    }

    /// Sends an unstored class-B command (unordered, `seq` 0).
    fn transmit_unstored(&self, id: u64) {
        if let Some(r) = self.records.get(&id) {
            let _ = self.send_envelope(0, id, r.traffic, r.delivery, &r.envelope);
        }
    }

    /// Class C: sent at once with an id outside the store's range and
    /// seq 0 (unordered), never kept; nothing to commit, so no flush to
    /// wait for. Without a path, or when the path refuses it, the caller
    /// is told at once; otherwise its receipt resolves with the answer or
    /// times out.
    fn send_unstored(&mut self, s: Submission) {
        let cap = self.args.config.max_class_c_waiting;
        if self.class_c.len() >= cap {
            // The deadline queue still holds answered commands until their
            // deadline passes; only those still waiting count against the
            // bound (compacted only when the queue reaches it).
            let waiters = self.args.shared.waiters();
            self.class_c.retain(|(_, id)| waiters.contains_key(id));
        }
        if self.class_c.len() >= cap {
            let _ = s.accept.send(Err(CommandError::Full));
            return;
        }
        let id = self.args.shared.unstored_id();
        let mut env = s.envelope;
        env.message_id = id;
        let traffic = s.opts.traffic.code();
        match self.send_envelope(0, id, traffic, DeliveryClass::C, &env) {
            Ok(()) => {
                let (tx, rx) = oneshot::channel();
                self.args.shared.wait(id, tx);
                let deadline = Self::now() + self.args.config.class_c_timeout;
                self.class_c.push_back((deadline, id));
                let _ = s.accept.send(Ok((id, rx)));
            }
            Err(e) => {
                let _ = s.accept.send(Err(e));
            }
        }
    }

    async fn flush(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let mut stored = Vec::new();
        // The outbox bound: entries and bytes already held plus this batch's.
        let (max_entries, max_bytes) = self.args.config.max_outbox;
        let (mut entries, mut bytes) = (self.outbox.len(), self.records.bytes());
        for s in batch {
            match s.opts.class {
                DeliveryClass::A => {
                    let size = envelope_size(&s.envelope);
                    if entries + 1 > max_entries || bytes + size > max_bytes {
                        self.args.stats.outbox_full.fetch_add(1, Ordering::Relaxed);
                        let _ = s.accept.send(Err(CommandError::Full));
                        continue;
                    }
                    entries += 1;
                    bytes += size;
                    stored.push(s);
                }
                DeliveryClass::B => {
                    // Into the replay window: sent now if there is a path,
                    // again on every route change while it stays there.
                    let id = self.args.shared.unstored_id();
                    let (tx, rx) = oneshot::channel();
                    let mut env = s.envelope;
                    env.message_id = id;
                    self.records.insert(
                        id,
                        Record {
                            envelope: env,
                            traffic: s.opts.traffic.code(),
                            delivery: DeliveryClass::B,
                        },
                    );
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
        let prune_keys_before = self.key_prune_due();
        if stored.is_empty() {
            if !acked.is_empty() || prune_keys_before.is_some() {
                let (store, stream) = (self.args.store.clone(), self.args.stream.clone());
                let pruned = tokio::task::spawn_blocking(move || {
                    if !acked.is_empty() {
                        let _ = store.ack_outbox(&stream, &acked);
                    }
                    prune_keys_before.map(|before| store.idempotency_prune(before))
                })
                .await;
                self.count_pruned(pruned);
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
                    class: s.opts.traffic.code(),
                    replayable: s.opts.replayable,
                })
                .collect(),
            cursors: Vec::new(),
            now_ms: (self.args.config.clock)(),
        };
        let (store, stream) = (self.args.store.clone(), self.args.stream.clone());
        // The gate travels into the blocking task: if this actor is killed
        // while the append runs, the next actor's restore waits for it.
        let gate = self.args.shared.store_gate.clone().lock_owned().await;
        let result = tokio::task::spawn_blocking(move || {
            let _gate = gate;
            if !acked.is_empty() {
                let _ = store.ack_outbox(&stream, &acked);
            }
            let appended = store.append_outbox(&batch);
            let pruned = prune_keys_before.map(|before| store.idempotency_prune(before));
            (appended, pruned)
        })
        .await;
        let result = match result {
            Ok((appended, pruned)) => {
                self.count_pruned::<()>(Ok(pruned));
                appended.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
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
                            let traffic = s.opts.traffic.code();
                            self.records.insert(
                                message_id,
                                Record {
                                    envelope: s.envelope,
                                    traffic,
                                    delivery: DeliveryClass::A,
                                },
                            );
                            self.outbox
                                .push(message_id, seq, traffic, s.opts.replayable);
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

    /// The cut-off (ms since the epoch) for pruning idempotency records,
    /// when a prune is due.
    fn key_prune_due(&self) -> Option<u64> {
        let now = Self::now();
        let mut last = lock(&self.args.shared.last_key_prune);
        if last.is_some_and(|l| now.duration_since(l) < KEY_PRUNE_EVERY) {
            return None;
        }
        *last = Some(now);
        let retention = self.args.config.idempotency_retention.as_millis() as u64;
        Some((self.args.config.clock)().saturating_sub(retention))
    }

    fn count_pruned<E>(&self, pruned: Result<Option<Result<usize, crate::store::StoreError>>, E>) {
        if let Ok(Some(Ok(n))) = pruned {
            self.args
                .stats
                .keys_pruned
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Settles one message: out of the outbox (removed from the store by
    /// the next flush) or the replay window, its waiters answered.
    fn settle(&mut self, id: u64, result: Result<Vec<u8>, CommandError>) {
        if self.outbox.on_ack(id).is_some() {
            // Losing this removal in a crash only causes a resend, which
            // the receiver deduplicates.
            self.acked.push(id);
        }
        self.records.remove(&id);
        if let Some(at) = self.window.iter().position(|w| *w == id) {
            self.window.remove(at);
        }
        self.args.shared.resolve(id, result);
    }

    fn on_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Data(d) => {
                let Ok(env) = Envelope::decode(&d.payload) else {
                    tracing::warn!(stream = %self.args.stream, "undecodable reply dropped");
                    return;
                };
                if env.kind != EnvelopeKind::Reply || env.message_id != d.message_id {
                    return;
                }
                let result = match rmp_serde::from_slice::<ReplyBody>(&env.body) {
                    Ok(ReplyBody::Ok(b)) => Ok(b),
                    Ok(ReplyBody::Handler(e)) => Err(CommandError::Handler(e)),
                    Ok(ReplyBody::Expired) => Err(CommandError::Expired),
                    Ok(ReplyBody::Rejected(reason)) => Err(CommandError::Rejected { reason }),
                    Err(e) => Err(CommandError::Store(format!("undecodable reply: {e}"))),
                };
                self.refused_streak = 0;
                self.settle(d.message_id, result);
            }
            Frame::Reject(r) => self.on_reject(r),
            // Acks are handled on the receive task (credit, liveness).
            _ => {}
        }
    }

    fn on_reject(&mut self, r: Reject) {
        self.args.stats.rejects.fetch_add(1, Ordering::Relaxed);
        let Some(id) = r.message_id else {
            tracing::warn!(stream = %self.args.stream, code = r.code, reason = %r.reason, "reject received");
            return;
        };
        match r.code {
            codes::BUSY | codes::NOT_READY => {
                // The receiver did not take it: retry soon, backing off
                // while the refusals go on; shrink the window on busy.
                if r.code == codes::BUSY {
                    let half = (self.outbox.in_flight() / 2).max(1);
                    self.outbox.set_peer_credit(half);
                    self.args
                        .shared
                        .peer_credit
                        .store(half as u32, Ordering::Relaxed);
                }
                self.refused_streak = self.refused_streak.saturating_add(1);
                // A receiver that is starting is back soon: retry within
                // 8 × `retry_soon`; a busy one gets a longer back-off.
                let cap = if r.code == codes::NOT_READY { 3 } else { 8 };
                let after = self
                    .args
                    .config
                    .retry_soon
                    .saturating_mul(1 << self.refused_streak.min(cap));
                if !self.outbox.retry_after(id, Self::now(), after) && self.window.contains(&id) {
                    self.transmit_unstored(id);
                }
            }
            codes::ANSWER_GONE => self.settle(id, Err(CommandError::OutcomeGone)),
            REJECT_UNDECODABLE | codes::BAD_FRAME => self.settle(
                id,
                Err(CommandError::Rejected {
                    reason: format!("refused by the receiver ({:#06x}): {}", r.code, r.reason),
                }),
            ),
            _ => {
                tracing::warn!(stream = %self.args.stream, code = r.code, reason = %r.reason, "reject received");
            }
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
        let (store, stream) = (args.store.clone(), args.stream.clone());
        // Waits for an append a killed predecessor left running.
        let gate = args.shared.store_gate.clone().lock_owned().await;
        let pending = tokio::task::spawn_blocking(move || {
            let _gate = gate;
            store.pending_outbox_for(&stream)
        })
        .await??;
        let (outbox, _not_replayed) =
            Outbox::restore(args.stream.clone(), args.config.outbox, &pending);
        // Callers of entries restored here keep waiting (the reply settles
        // them as before); the rest (class B and C of a previous actor,
        // whose window died with it) are answered now.
        args.shared.waiters().retain(|id, waiting| {
            if outbox.get(*id).is_some() {
                return true;
            }
            for w in waiting.drain(..) {
                let _ = w.send(Err(CommandError::Closed));
            }
            false
        });
        let mut records = Records::default();
        for r in &pending {
            if let Ok(envelope) = Envelope::decode(&r.record) {
                let record = Record {
                    envelope,
                    traffic: r.class,
                    delivery: DeliveryClass::A,
                };
                records.insert(r.message_id, record);
            }
        }
        let path = args.shared.route();
        let mut state = SenderState {
            args,
            outbox,
            path,
            records,
            window: VecDeque::new(),
            class_c: VecDeque::new(),
            batch: Vec::new(),
            flush_queued: false,
            timer_at: None,
            acked: Vec::new(),
            refused_streak: 0,
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
                state.arm(&myself);
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
            SenderMsg::Frame(_path, frame, permit) => {
                state.on_frame(frame);
                drop(permit);
                if !state.acked.is_empty() && !state.flush_queued {
                    // Store removals are batched behind the frames already
                    // in the mailbox, like submissions.
                    state.flush_queued = true;
                    myself.cast(SenderMsg::Flush)?;
                }
                state.pump(&myself);
            }
            SenderMsg::PathUp(_path) => {
                // A path to the peer came (back) up: the peer is reachable
                // again, perhaps restarted. What was sent while it was away
                // may be lost even on a route that stayed up (a relay that
                // forwarded into the peer's dead connection), so the window
                // is resent now on the current route, with fresh retransmit
                // timers, instead of after backoff. The receiver dedupes.
                if state.path.is_some() {
                    state.refused_streak = 0;
                    let change = state.outbox.on_route_change(SenderState::now());
                    for t in &change.transmits {
                        state.transmit(t);
                    }
                    for id in &state.window {
                        state.transmit_unstored(*id);
                    }
                    state.pump(&myself);
                }
            }
            SenderMsg::Tick => {
                state.timer_at = None;
                let now = SenderState::now();
                state.expire_class_c(now);
                if state.path.is_some() {
                    for t in state.outbox.poll_resend(now) {
                        state.transmit(&t);
                    }
                }
                state.pump(&myself);
            }
        }
        Ok(())
    }
}

/// The typed handle of a command stream's sender.
pub struct CommandSender<C, R> {
    pub(super) slot: Arc<ActorSlot<SenderMsg>>,
    pub(super) start: Arc<LazyStart>,
    pub(super) stream: StreamId,
    pub(super) stats: Arc<SenderStats>,
    pub(super) config: SenderConfig,
    pub(super) incarnation: u64,
    pub(super) _types: PhantomData<fn(C) -> R>,
}

impl<C, R> Clone for CommandSender<C, R> {
    fn clone(&self) -> Self {
        Self {
            slot: self.slot.clone(),
            start: self.start.clone(),
            stream: self.stream.clone(),
            stats: self.stats.clone(),
            config: self.config.clone(),
            incarnation: self.incarnation,
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

    /// The stream's sender incarnation (kept in the store: it changes only
    /// when the store is new or wiped).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Submits a command. For class A the receipt is returned only after
    /// the store's append (fsync); the reply follows via
    /// [`Receipt::reply`]. Waits for credit inside the outbox. Class C
    /// without a path fails at once with [`CommandError::Unroutable`].
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

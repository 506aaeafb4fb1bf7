//! The receiving side of one command stream: the [`CommandServerActor`].
//!
//! It decodes each command envelope, delivers in sequence order, dedupes
//! (memory and store) within the current sender incarnation's keyspace,
//! refuses expired commands and commands of a stale authority epoch,
//! applies the [`CommandHandler`] at most once per message, stores the
//! reply, and answers with a reply envelope, which acknowledges the
//! command; a wire [`Ack`] carrying its inbox credit goes with an answer
//! only when that credit moved or [`ServeConfig::ack_every`] answers went
//! without one. A retransmit it can no longer answer (behind its
//! cursor, record pruned) gets an explicit [`codes::ANSWER_GONE`] reject;
//! a sender incarnation older than the current one gets
//! [`codes::STALE_INCARNATION`]. The node's stream session has already
//! checked that the frame came from the bound peer.
//!
//! Durability of an applied command, by handler style (`docs/channels.md`,
//! "Handler styles"):
//! - an [`AtomicHandler`] is not called when its
//!   command is delivered but in the next flush, inside the store
//!   transaction that writes the dedupe records and cursor
//!   ([`Store::dedupe_record_with`]). The flush is queued behind the frames
//!   already in the mailbox, so a burst shares one transaction and one fsync
//!   (group commit); nothing is applied before it, so nothing can be lost
//!   or doubled by a crash in between;
//! - a [`CommandHandler`] is called on delivery and its record is made
//!   durable right after that one command, before the next frame is
//!   looked at: a crash can re-apply at most the command being applied or
//!   fsync'd at that moment.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use std::collections::HashMap;

use super::api::{AtomicHandler, CommandContext, CommandHandler};
use super::config::ServeConfig;
use super::envelope::{Envelope, EnvelopeKind, REJECT_UNDECODABLE, ReplyBody};
use crate::actors::node::NodeLink;
use crate::actors::session::{Permit, Session, codes};
use crate::channels::{Check, Dedupe, Offer, Sequencer};
use crate::store::{AppTxn, AtomicBatch, DedupeRecord, Store};
use crate::vocab::{PathId, StreamId};
use crate::wire::{Ack, Data, Frame, Reject};

/// The store keyspace of one sender incarnation of `stream`: dedupe
/// records and the delivered cursor of each incarnation are kept apart, so
/// a sender that restarts its ids (a wiped store) never meets the records
/// of its previous life.
pub fn incarnation_key(stream: &StreamId, incarnation: u64) -> StreamId {
    StreamId::new(format!("{stream}#{incarnation:016x}"))
}

/// Messages of the [`CommandServerActor`].
pub enum ServerMsg {
    /// A frame of the stream arrived on a path (admitted by its session).
    Frame(PathId, Frame, Permit),
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
    answer_gone: AtomicU64,
    stale: AtomicU64,
    dedupe_records: AtomicU64,
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

    /// Retransmits answered with [`codes::ANSWER_GONE`].
    pub fn answer_gone(&self) -> u64 {
        self.answer_gone.load(Ordering::Relaxed)
    }

    /// Frames of an older sender incarnation refused.
    pub fn stale(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }

    /// Dedupe records (distinct message ids and their replies) the server
    /// holds in memory now; never above `DedupeConfig::max_per_stream`.
    pub fn dedupe_records(&self) -> u64 {
        self.dedupe_records.load(Ordering::Relaxed)
    }
}

/// A handler of either style, with its types erased.
#[async_trait]
pub(super) trait ErasedHandler: Send + Sync + 'static {
    /// Whether it is an [`AtomicHandler`] (applied in the flush, by
    /// [`ErasedHandler::apply_in`]).
    fn atomic(&self) -> bool;
    /// Applies a [`CommandHandler`]'s command.
    async fn apply(&self, ctx: &CommandContext, body: &[u8]) -> ReplyBody;
    /// Applies an [`AtomicHandler`]'s command inside `txn`.
    fn apply_in(&self, txn: &mut dyn AppTxn, ctx: &CommandContext, body: &[u8]) -> ReplyBody;
}

fn reply_body<R: serde::Serialize>(r: Result<R, String>) -> ReplyBody {
    match r {
        Ok(r) => match rmp_serde::to_vec(&r) {
            Ok(b) => ReplyBody::Ok(b),
            Err(e) => ReplyBody::Handler(format!("unencodable reply: {e}")),
        },
        Err(e) => ReplyBody::Handler(e),
    }
}

/// A [`CommandHandler`], erased.
pub(super) struct Typed<H>(pub(super) H);

#[async_trait]
impl<H: CommandHandler> ErasedHandler for Typed<H> {
    fn atomic(&self) -> bool {
        false
    }

    async fn apply(&self, ctx: &CommandContext, body: &[u8]) -> ReplyBody {
        let cmd: H::Command = match rmp_serde::from_slice(body) {
            Ok(c) => c,
            Err(e) => return ReplyBody::Rejected(format!("undecodable command: {e}")),
        };
        reply_body(self.0.handle_with(ctx, cmd).await)
    }

    fn apply_in(&self, _: &mut dyn AppTxn, _: &CommandContext, _: &[u8]) -> ReplyBody {
        ReplyBody::Handler("not an atomic handler".into())
    }
}

/// An [`AtomicHandler`], erased.
pub(super) struct Atomic<H>(pub(super) H);

#[async_trait]
impl<H: AtomicHandler> ErasedHandler for Atomic<H> {
    fn atomic(&self) -> bool {
        true
    }

    async fn apply(&self, _: &CommandContext, _: &[u8]) -> ReplyBody {
        ReplyBody::Handler("an atomic handler runs inside the store".into())
    }

    fn apply_in(&self, txn: &mut dyn AppTxn, ctx: &CommandContext, body: &[u8]) -> ReplyBody {
        let cmd: H::Command = match rmp_serde::from_slice(body) {
            Ok(c) => c,
            Err(e) => return ReplyBody::Rejected(format!("undecodable command: {e}")),
        };
        reply_body(self.0.handle(txn, ctx, cmd))
    }
}

/// A delivered command of an atomic handler, applied in the next flush.
struct PendingApply {
    ctx: CommandContext,
    reply_stream: StreamId,
    body: Vec<u8>,
    epoch: u64,
    recorded_at_ms: u64,
}

/// An answer waiting for the flush: its reply, or the id of a message an
/// atomic handler applies in that flush.
enum Answer {
    Ready(Vec<u8>),
    Pending(u64),
}

/// The encoded reply envelope of message `message_id`.
fn reply_envelope(
    message_id: u64,
    stream: &StreamId,
    issued_at_ms: u64,
    epoch: u64,
    body: &ReplyBody,
) -> Vec<u8> {
    Envelope {
        kind: EnvelopeKind::Reply,
        message_id,
        stream_id: stream.clone(),
        issued_at_ms,
        ttl_ms: 0,
        authority_epoch: epoch,
        operation_key: None,
        body: rmp_serde::to_vec(body).unwrap_or_default(),
    }
    .encode()
}

/// Applies `pending` in `txn`; returns their records after `records`.
fn apply_pending(
    handler: &dyn ErasedHandler,
    txn: &mut dyn AppTxn,
    key: &StreamId,
    pending: Vec<PendingApply>,
    mut records: Vec<DedupeRecord>,
) -> Vec<DedupeRecord> {
    for p in pending {
        let body = handler.apply_in(txn, &p.ctx, &p.body);
        records.push(DedupeRecord {
            stream: key.clone(),
            message_id: p.ctx.message_id,
            seq: p.ctx.seq,
            reply: reply_envelope(
                p.ctx.message_id,
                &p.reply_stream,
                p.recorded_at_ms,
                p.epoch,
                &body,
            ),
            recorded_at_ms: p.recorded_at_ms,
        });
    }
    records
}

/// Arguments of a [`CommandServerActor`] (rebuilt on every restart).
pub struct ServerArgs {
    pub(super) stream: StreamId,
    pub(super) link: NodeLink,
    pub(super) store: Arc<dyn Store>,
    pub(super) handler: Arc<dyn ErasedHandler>,
    pub(super) config: ServeConfig,
    pub(super) handle: Arc<ServeHandle>,
    pub(super) session: Arc<Session>,
}

/// State of a running [`CommandServerActor`].
pub struct ServerState {
    args: ServerArgs,
    /// The sender incarnation being served (0: none yet).
    incarnation: u64,
    /// Its store keyspace (see [`incarnation_key`]).
    key: StreamId,
    dedupe: Dedupe,
    order: Sequencer<(PathId, Data, Envelope)>,
    /// Dedupe records of commands applied since the last flush.
    records: Vec<DedupeRecord>,
    /// The highest sequence number applied since the last flush.
    cursor: Option<u64>,
    /// Answers held until the records they depend on are durable, in order.
    answers: Vec<(PathId, Data, Answer)>,
    /// Commands of an atomic handler delivered since the last flush, which
    /// applies them.
    pending: Vec<PendingApply>,
    flush_queued: bool,
    /// The credit of the last wire [`Ack`] sent (`None`: none yet).
    advertised: Option<u32>,
    /// Answers sent since that ack.
    unacked: u64,
    /// When dedupe records were last pruned to the retention.
    last_prune: tokio::time::Instant,
}

/// The receiving side of one command stream.
pub struct CommandServerActor;

impl ServerState {
    /// Whether the answer about to be sent also carries a wire [`Ack`]:
    /// the first one, when the credit moved by an eighth of the inbox or
    /// more since the last one advertised, or after
    /// [`ServeConfig::ack_every`] answers without one. A reply alone
    /// acknowledges the command it answers.
    fn ack_due(&self, credit: u32) -> bool {
        let step = (self.args.session.capacity() / 8).max(1) as u64;
        match self.advertised {
            None => true,
            Some(last) => {
                self.unacked + 1 >= u64::from(self.args.config.ack_every.max(1))
                    || u64::from(credit.abs_diff(last)) >= step
            }
        }
    }

    fn answer(&mut self, path: &PathId, d: &Data, reply: &[u8]) {
        let credit = self.args.session.credit();
        if self.ack_due(credit) {
            let ack = Frame::Ack(Ack {
                stream: d.stream.clone(),
                incarnation: d.incarnation,
                seq: d.seq,
                message_id: d.message_id,
                credit,
            });
            let _ = self.args.link.send(path, ack);
            self.advertised = Some(credit);
            self.unacked = 0;
        } else {
            self.unacked += 1;
        }
        let frame = Frame::Data(Data {
            stream: d.stream.clone(),
            incarnation: d.incarnation,
            seq: d.seq,
            message_id: d.message_id,
            class: d.class,
            delivery: d.delivery,
            payload: Bytes::copy_from_slice(reply),
        });
        let _ = self.args.link.send(path, frame);
    }

    fn reply_envelope(&self, env: &Envelope, body: &ReplyBody) -> Vec<u8> {
        reply_envelope(
            env.message_id,
            &env.stream_id,
            (self.args.config.clock)(),
            self.args.handle.epoch(),
            body,
        )
    }

    fn context(&self, d: &Data, env: &Envelope) -> CommandContext {
        CommandContext {
            stream: self.args.stream.clone(),
            incarnation: d.incarnation,
            message_id: d.message_id,
            seq: d.seq,
            operation_key: env.operation_key.clone(),
        }
    }

    /// Applies (or refuses) one message in order; returns the stored reply,
    /// or, for an atomic handler's command, that it is applied in the next
    /// flush.
    async fn apply(&mut self, d: &Data, env: &Envelope) -> Result<Answer, ActorProcessingErr> {
        let stream = &self.key;
        if let Check::Seen(reply) = self.dedupe.check(stream, d.message_id) {
            return Ok(Answer::Ready(reply.to_vec()));
        }
        let now_ms = (self.args.config.clock)();
        let runs = env.kind != EnvelopeKind::Cancel
            && !(env.ttl_ms > 0 && env.issued_at_ms.saturating_add(env.ttl_ms) < now_ms)
            && env.authority_epoch >= self.args.handle.epoch();
        if runs && self.args.handler.atomic() {
            return self.apply_atomic(d, env, now_ms).await;
        }
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
            let r = self
                .args
                .handler
                .apply(&self.context(d, env), &env.body)
                .await;
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
            return Ok(Answer::Ready(reply));
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
        Ok(Answer::Ready(reply))
    }

    /// An atomic handler's command: ordered ones wait for the flush, which
    /// applies them in its transaction; class C (never recorded) gets a
    /// transaction of its own now.
    async fn apply_atomic(
        &mut self,
        d: &Data,
        env: &Envelope,
        now_ms: u64,
    ) -> Result<Answer, ActorProcessingErr> {
        let p = PendingApply {
            ctx: self.context(d, env),
            reply_stream: env.stream_id.clone(),
            body: env.body.to_vec(),
            epoch: self.args.handle.epoch(),
            recorded_at_ms: now_ms,
        };
        if d.seq != 0 {
            self.pending.push(p);
            self.cursor = Some(self.cursor.map_or(d.seq, |c| c.max(d.seq)));
            return Ok(Answer::Pending(d.message_id));
        }
        let (store, handler, key) = (
            self.args.store.clone(),
            self.args.handler.clone(),
            self.key.clone(),
        );
        let batch = tokio::task::spawn_blocking(move || {
            store.dedupe_record_with(Box::new(move |txn| {
                let mut unrecorded = Vec::new();
                for r in apply_pending(handler.as_ref(), txn, &key, vec![p], Vec::new()) {
                    unrecorded.push((r.message_id, r.reply));
                }
                Ok(AtomicBatch {
                    unrecorded,
                    ..AtomicBatch::default()
                })
            }))
        })
        .await??;
        self.args.handle.applied.fetch_add(1, Ordering::Relaxed);
        let reply = batch
            .unrecorded
            .into_iter()
            .next()
            .map(|(_, r)| r)
            .unwrap_or_default();
        self.dedupe.record(
            &self.key,
            d.message_id,
            reply.clone(),
            tokio::time::Instant::now().into_std(),
        );
        Ok(Answer::Ready(reply))
    }

    /// Writes the pending dedupe records and cursor in one transaction off
    /// the actor's thread, then sends the answers that waited for them.
    async fn flush(&mut self) -> Result<(), ActorProcessingErr> {
        let records = std::mem::take(&mut self.records);
        let cursor = self.cursor.take();
        let pending = std::mem::take(&mut self.pending);
        let mut applied: HashMap<u64, Vec<u8>> = HashMap::new();
        if !pending.is_empty() {
            // The atomic handler's effects, their records, the other
            // records and the cursor: one transaction.
            let n = pending.len() as u64;
            let (store, key) = (self.args.store.clone(), self.key.clone());
            let handler = self.args.handler.clone();
            let gate = self.args.handle.store_gate.clone().lock_owned().await;
            let batch = tokio::task::spawn_blocking(move || {
                let _gate = gate;
                store.dedupe_record_with(Box::new(move |txn| {
                    let cursors: Vec<(StreamId, u64)> =
                        cursor.map(|c| (key.clone(), c)).into_iter().collect();
                    let records = apply_pending(handler.as_ref(), txn, &key, pending, records);
                    Ok(AtomicBatch {
                        records,
                        cursors,
                        unrecorded: Vec::new(),
                    })
                }))
            })
            .await??;
            self.args.handle.applied.fetch_add(n, Ordering::Relaxed);
            let now = tokio::time::Instant::now().into_std();
            for r in batch.records {
                self.dedupe
                    .record(&self.key, r.message_id, r.reply.clone(), now);
                applied.insert(r.message_id, r.reply);
            }
        } else if !records.is_empty() || cursor.is_some() {
            let (store, stream) = (self.args.store.clone(), self.key.clone());
            let gate = self.args.handle.store_gate.clone().lock_owned().await;
            tokio::task::spawn_blocking(move || {
                let _gate = gate;
                let cursors: Vec<(StreamId, u64)> =
                    cursor.map(|c| (stream, c)).into_iter().collect();
                store.dedupe_record(&records, &cursors)
            })
            .await??;
        }
        for (path, d, answer) in std::mem::take(&mut self.answers) {
            let reply = match answer {
                Answer::Ready(reply) => reply,
                Answer::Pending(id) => match applied.get(&id) {
                    Some(reply) => reply.clone(),
                    None => match self.dedupe.check(&self.key, id) {
                        Check::Seen(reply) => reply.to_vec(),
                        // Not reached: a pending answer's command was in
                        // this flush or an earlier one.
                        _ => continue,
                    },
                },
            };
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

    fn reject(&self, path: &PathId, d: &Data, code: u16, reason: &str) {
        let reject = Frame::Reject(Reject {
            stream: Some(d.stream.clone()),
            message_id: Some(d.message_id),
            code,
            reason: reason.into(),
        });
        let _ = self.args.link.send(path, reject);
    }

    /// Moves on to a newer sender incarnation: a new sequence and message-id
    /// space, recorded durably before any of its commands is applied.
    async fn adopt(&mut self, incarnation: u64) -> Result<(), ActorProcessingErr> {
        let (store, stream) = (self.args.store.clone(), self.args.stream.clone());
        let key = incarnation_key(&stream, incarnation);
        let gate = self.args.handle.store_gate.clone().lock_owned().await;
        let restored = {
            let key = key.clone();
            tokio::task::spawn_blocking(move || {
                let _gate = gate;
                store.set_peer_incarnation(&stream, incarnation)?;
                Ok::<_, crate::store::StoreError>((
                    store.dedupe_load_for(&key)?,
                    store.cursor(&key)?,
                ))
            })
            .await??
        };
        tracing::info!(stream = %self.args.stream, incarnation = format_args!("{incarnation:#x}"), previous = format_args!("{:#x}", self.incarnation), "new sender incarnation");
        let (records, cursor) = restored;
        self.dedupe = Dedupe::restore(
            self.args.config.dedupe,
            &records,
            tokio::time::Instant::now().into_std(),
            (self.args.config.clock)(),
        );
        self.order = Sequencer::new(self.args.config.order);
        if let Some(c) = cursor {
            self.order.resume(&key, c);
        }
        self.incarnation = incarnation;
        self.key = key;
        self.args.session.advance_incarnation(incarnation);
        Ok(())
    }

    /// Handles one data frame; `permit` (its inbox slot) is released once
    /// the frame is dealt with, or before a durable write, so an answer's
    /// credit counts the frame's slot as free, as it does after the queued
    /// flush.
    async fn on_data(
        &mut self,
        path: PathId,
        d: Data,
        permit: Permit,
    ) -> Result<(), ActorProcessingErr> {
        let mut permit = Some(permit);
        if d.incarnation < self.incarnation {
            self.args.handle.stale.fetch_add(1, Ordering::Relaxed);
            self.reject(
                &path,
                &d,
                codes::STALE_INCARNATION,
                "stale sender incarnation",
            );
            return Ok(());
        }
        let env = match Envelope::decode(&d.payload) {
            Ok(env) if env.kind != EnvelopeKind::Reply && env.stream_id == d.stream => env,
            Ok(_) | Err(_) => {
                self.args.handle.undecodable.fetch_add(1, Ordering::Relaxed);
                self.reject(
                    &path,
                    &d,
                    REJECT_UNDECODABLE,
                    "undecodable command envelope",
                );
                return Ok(());
            }
        };
        if d.incarnation > self.incarnation {
            // Answers still waiting belong to the old incarnation's
            // keyspace: make them durable first.
            self.flush().await?;
            self.adopt(d.incarnation).await?;
        }
        if d.seq == 0 {
            if let Answer::Ready(reply) = self.apply(&d, &env).await? {
                self.answer(&path, &d, &reply);
            }
            return Ok(());
        }
        let narrow = !self.args.handler.atomic();
        let key = self.key.clone();
        match self.order.offer(&key, d.seq, (path, d, env)) {
            Offer::Deliver(items) => {
                for (_, (path, d, env)) in items {
                    let answer = self.apply(&d, &env).await?;
                    self.answers.push((path, d, answer));
                    if narrow && !self.records.is_empty() {
                        // An effect outside the store happened: make its
                        // record durable now, not behind the mailbox.
                        drop(permit.take());
                        self.flush().await?;
                    }
                }
            }
            Offer::Delivered((path, d, _)) => {
                // A duplicate: its record may still be in the pending batch,
                // so the answer also waits for the flush.
                if let Check::Seen(reply) = self.dedupe.check(&key, d.message_id) {
                    let reply = reply.to_vec();
                    self.answers.push((path, d, Answer::Ready(reply)));
                } else if self
                    .pending
                    .iter()
                    .any(|p| p.ctx.message_id == d.message_id)
                {
                    let id = d.message_id;
                    self.answers.push((path, d, Answer::Pending(id)));
                } else if let Ok(Some(reply)) = self.args.store.dedupe_lookup(&key, d.message_id) {
                    self.answers.push((path, d, Answer::Ready(reply)));
                } else {
                    // Applied long ago, record pruned: say so, never silence
                    // (the sender would retransmit it forever).
                    self.args.handle.answer_gone.fetch_add(1, Ordering::Relaxed);
                    self.reject(&path, &d, codes::ANSWER_GONE, "answer no longer retained");
                }
            }
            Offer::Buffered | Offer::AlreadyBuffered(_) => {}
            Offer::Overflow((path, d, _)) => {
                // Too far ahead of the cursor to buffer: the sender still
                // holds it and retries.
                self.reject(&path, &d, codes::BUSY, "reorder buffer full");
            }
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
        let incarnation = args.store.peer_incarnation(&args.stream)?.unwrap_or(0);
        let key = incarnation_key(&args.stream, incarnation);
        let records: Vec<DedupeRecord> = args.store.dedupe_load_for(&key)?;
        let dedupe = Dedupe::restore(
            args.config.dedupe,
            &records,
            tokio::time::Instant::now().into_std(),
            (args.config.clock)(),
        );
        let mut order = Sequencer::new(args.config.order);
        if let Some(cursor) = args.store.cursor(&key)? {
            order.resume(&key, cursor);
        }
        args.session.advance_incarnation(incarnation);
        Ok(ServerState {
            args,
            incarnation,
            key,
            dedupe,
            order,
            records: Vec::new(),
            cursor: None,
            answers: Vec::new(),
            pending: Vec::new(),
            flush_queued: false,
            advertised: None,
            unacked: 0,
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
            ServerMsg::Frame(path, Frame::Data(d), permit) => {
                state.on_data(path, d, permit).await?;
                if !state.answers.is_empty() && !state.flush_queued {
                    // Queued behind every frame already in the mailbox: they
                    // all share one durable write (group commit). Only
                    // atomic applies and duplicates' answers wait here: a
                    // non-atomic handler's records were flushed on apply.
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
        state
            .args
            .handle
            .dedupe_records
            .store(state.dedupe.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

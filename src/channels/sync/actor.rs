//! The sync channel's actor shell: one supervised actor per owned document
//! (`sync-owner/<doc>`) and one per subscribed stream
//! (`sync-subscriber/<stream>`), both children of the node's `channels`
//! supervisor (restart mode permanent).
//!
//! Owns the glue and nothing else: it feeds frames, route changes, timers
//! and the application's publishes to the pure cores ([`Owner`],
//! [`Subscriber`]), makes each core output durable in the
//! [`SyncStore`] (one transaction for everything queued in the mailbox:
//! group commit, on a blocking thread) and only then sends its messages
//! and answers the callers. The subscriber registers its stream with the
//! routing authority (`Need::node(ChannelKind::Sync, owner)`, the sync
//! policy) and re-subscribes on every route change; the owner answers each
//! subscriber on the path its latest frame arrived on. The typed handles
//! live in `super::actor::api`.

mod api;

pub use api::{
    SyncChannel, SyncError, SyncOwner, SyncSubscriber, owner_actor_name, subscriber_actor_name,
};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::broadcast;

use super::document::Document;
use super::owner::{Access, Applied, Owner, OwnerConfig, OwnerEvent, OwnerOutput};
use super::subscriber::{Subscriber, SubscriberConfig, SubscriberEvent, SubscriberOutput};
use super::wire::{Cursor, RefuseCode, SyncMsg};
use crate::actors::node::{NodeLink, REJECT_UNKNOWN_STREAM};
use crate::actors::session::Permit;
use crate::store::SyncStore;
use crate::store::sync_store::SyncSubscriberCommit;
use crate::sync::LockRecover;
use crate::vocab::{DeliveryClass, PathId, StreamId, TrafficClass};
use crate::wire::{Data, Frame};

/// Builds a fresh, empty document (on every start of an actor).
pub type DocFactory<D> = Arc<dyn Fn() -> D + Send + Sync>;

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A sync message as a `Data` frame stamped with the subscriber's
/// incarnation. The delivery class says how it is recovered: a publish is
/// class A (durable outbox), a log update class B (the owner's bounded
/// replay window), everything else class C (sent again when needed).
fn data(stream: &StreamId, incarnation: u64, msg: &SyncMsg) -> Frame {
    data_frame(stream, incarnation, msg, Bytes::from(msg.encode()))
}

/// [`data`] with the message already encoded as `payload`.
fn data_frame(stream: &StreamId, incarnation: u64, msg: &SyncMsg, payload: Bytes) -> Frame {
    let delivery = match msg {
        SyncMsg::Publish { .. } => DeliveryClass::A,
        SyncMsg::Update { .. } | SyncMsg::Snapshot { .. } => DeliveryClass::B,
        _ => DeliveryClass::C,
    };
    Frame::Data(Data {
        stream: stream.clone(),
        incarnation,
        seq: 0,
        message_id: 0,
        class: TrafficClass::Sync as u8,
        delivery: delivery.code(),
        payload,
    })
}

/// Runs a blocking store call, holding `gate` until it has finished (also
/// when the awaiting actor is killed meanwhile).
async fn blocking<T: Send + 'static>(
    gate: &Arc<tokio::sync::Mutex<()>>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ActorProcessingErr> {
    let held = gate.clone().lock_owned().await;
    Ok(tokio::task::spawn_blocking(move || {
        let _held = held;
        f()
    })
    .await?)
}

// ───────────────────────────── owner ─────────────────────────────

/// Timing of the owner actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OwnerTiming {
    /// How often a [`SyncMsg::Head`] goes to every attached subscriber, and
    /// the window's age bound is applied. Default 1 s.
    pub heartbeat: Duration,
}

impl Default for OwnerTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
        }
    }
}

/// State the owner's handle and its actor incarnations share.
pub(crate) struct OwnerShared {
    pub(crate) head: Mutex<Cursor>,
    pub(crate) applied: broadcast::Sender<Applied>,
    pub(crate) events: broadcast::Sender<OwnerEvent>,
    /// Admitted subscribers (re-applied by a restarted actor).
    pub(crate) admitted: Mutex<Vec<(String, Access)>>,
    pub(crate) gate: Arc<tokio::sync::Mutex<()>>,
}

impl OwnerShared {
    pub(crate) fn new() -> Self {
        Self {
            head: Mutex::new(Cursor::NONE),
            applied: broadcast::channel(65_536).0,
            events: broadcast::channel(4096).0,
            admitted: Mutex::new(Vec::new()),
            gate: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

/// Where a publish's cursor goes.
type CursorReply = RpcReplyPort<Result<Cursor, SyncError>>;
/// Where a publish's update id goes.
type IdReply = RpcReplyPort<Result<u64, SyncError>>;

/// A read of the document, run inside the actor.
pub type ReadFn<D> = Box<dyn FnOnce(&D) + Send>;

/// Messages of the owner actor.
pub enum OwnerMsg<D> {
    /// A frame of one of the document's streams, with its inbox credit.
    Frame(StreamId, PathId, Frame, Permit),
    /// The application publishes an update.
    Publish(Vec<u8>, RpcReplyPort<Result<Cursor, SyncError>>),
    /// A subscriber was admitted.
    Admit(String, Access),
    /// Commit what is queued, then send.
    Flush,
    /// Heartbeat timer.
    Heartbeat,
    /// Run a read of the document.
    Read(ReadFn<D>),
}

/// Arguments of the owner actor.
pub struct OwnerArgs<D> {
    pub(crate) doc_id: String,
    pub(crate) link: NodeLink,
    pub(crate) store: Arc<dyn SyncStore>,
    pub(crate) make_doc: DocFactory<D>,
    pub(crate) config: OwnerConfig,
    pub(crate) timing: OwnerTiming,
    pub(crate) shared: Arc<OwnerShared>,
}

/// State of the owner actor.
pub struct OwnerState<D> {
    args: OwnerArgs<D>,
    core: Owner<D>,
    /// The path each subscriber's latest frame came on, and the
    /// incarnation it carried (echoed on everything sent back).
    paths: HashMap<String, (PathId, u64)>,
    pending: OwnerOutput,
    replies: Vec<(CursorReply, Result<Cursor, SyncError>)>,
    flush_queued: bool,
}

/// The owner actor of one document.
pub struct SyncOwnerActor<D>(std::marker::PhantomData<fn() -> D>);

impl<D> Default for SyncOwnerActor<D> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<D: Document> OwnerState<D> {
    fn queue(&mut self, out: OwnerOutput, myself: &ActorRef<OwnerMsg<D>>) {
        let OwnerOutput {
            commit,
            send,
            applied,
            events,
        } = out;
        self.pending.commit.merge(commit);
        self.pending.send.extend(send);
        self.pending.applied.extend(applied);
        self.pending.events.extend(events);
        if !self.flush_queued {
            self.flush_queued = true;
            let _ = myself.cast(OwnerMsg::Flush);
        }
    }

    async fn flush(&mut self) -> Result<(), ActorProcessingErr> {
        self.flush_queued = false;
        let out = std::mem::take(&mut self.pending);
        if !out.commit.is_empty() {
            let (store, doc, commit) = (
                self.args.store.clone(),
                self.args.doc_id.clone(),
                out.commit,
            );
            blocking(&self.args.shared.gate, move || {
                store.sync_owner_commit(&doc, &commit)
            })
            .await??;
        }
        *self.args.shared.head.lock_recover() = self.core.head();
        // A log update goes to every attached subscriber: encode it once
        // (the cursor names it) and build each stream name once per flush.
        let mut encoded: HashMap<Cursor, Bytes> = HashMap::new();
        let mut streams: HashMap<&str, StreamId> = HashMap::new();
        for (peer, msg) in &out.send {
            let Some((path, incarnation)) = self.paths.get(peer.as_str()) else {
                continue; // not attached on any path: it resyncs when it comes
            };
            let payload = match msg {
                SyncMsg::Update { cursor, .. } => encoded
                    .entry(*cursor)
                    .or_insert_with(|| Bytes::from(msg.encode()))
                    .clone(),
                _ => Bytes::from(msg.encode()),
            };
            let stream = streams.entry(peer.as_str()).or_insert_with(|| {
                super::wire::stream_name(self.args.link.id().as_str(), peer, &self.args.doc_id)
            });
            // A lost send is recovered by the subscriber's resync.
            let _ = self
                .args
                .link
                .send(path, data_frame(stream, *incarnation, msg, payload));
        }
        for a in out.applied {
            let _ = self.args.shared.applied.send(a);
        }
        for e in out.events {
            let _ = self.args.shared.events.send(e);
        }
        for (port, r) in self.replies.drain(..) {
            let _ = port.send(r);
        }
        Ok(())
    }

    fn send(&self, peer: &str, msg: &SyncMsg) {
        let Some((path, incarnation)) = self.paths.get(peer) else {
            return; // not attached on any path: it resyncs when it comes
        };
        let stream =
            super::wire::stream_name(self.args.link.id().as_str(), peer, &self.args.doc_id);
        // A lost send is recovered by the subscriber's resync.
        let _ = self.args.link.send(path, data(&stream, *incarnation, msg));
    }

    fn on_frame(
        &mut self,
        stream: StreamId,
        path: PathId,
        frame: Frame,
        myself: &ActorRef<OwnerMsg<D>>,
    ) {
        let Frame::Data(d) = frame else { return };
        let Some((_, subscriber, _)) = super::wire::parse_stream(&stream) else {
            return;
        };
        let subscriber = subscriber.to_string();
        if path.peer.as_str() != subscriber {
            // A peer speaking on another subscriber's stream.
            // (The node's stream session already refuses these; kept as a
            // second line.)
            let msg = SyncMsg::refuse(RefuseCode::NotAdmitted, None, "stream of another node");
            let _ = self
                .args
                .link
                .send(&path, data(&stream, d.incarnation, &msg));
            let _ = self.args.shared.events.send(OwnerEvent::Refused {
                peer: path.peer.to_string(),
                code: RefuseCode::NotAdmitted,
                update_id: None,
            });
            return;
        }
        self.paths
            .insert(subscriber.clone(), (path.clone(), d.incarnation));
        let msg = match SyncMsg::decode(&d.payload) {
            Ok(m) => m,
            Err(e) => {
                let msg = SyncMsg::refuse(RefuseCode::Malformed, None, e.0);
                let _ = self
                    .args
                    .link
                    .send(&path, data(&stream, d.incarnation, &msg));
                return;
            }
        };
        let out = self.core.on_message(&subscriber, msg, wall_ms());
        self.queue(out, myself);
    }
}

impl<D: Document> Actor for SyncOwnerActor<D> {
    type Msg = OwnerMsg<D>;
    type State = OwnerState<D>;
    type Arguments = OwnerArgs<D>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (store, doc) = (args.store.clone(), args.doc_id.clone());
        let record = blocking(&args.shared.gate, move || store.sync_owner_load(&doc)).await??;
        let fresh_epoch = rand::random::<u64>() | 1;
        let (mut core, commit) = Owner::open(
            args.doc_id.clone(),
            args.link.id().to_string(),
            (args.make_doc)(),
            args.config,
            record,
            fresh_epoch,
        )?;
        for (peer, access) in args.shared.admitted.lock_recover().iter() {
            core.admit(peer.clone(), *access);
        }
        let (store, doc) = (args.store.clone(), args.doc_id.clone());
        blocking(&args.shared.gate, move || {
            store.sync_owner_commit(&doc, &commit)
        })
        .await??;
        *args.shared.head.lock_recover() = core.head();
        myself.send_after(args.timing.heartbeat, || OwnerMsg::Heartbeat);
        Ok(OwnerState {
            args,
            core,
            paths: HashMap::new(),
            pending: OwnerOutput::default(),
            replies: Vec::new(),
            flush_queued: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            OwnerMsg::Frame(stream, path, frame, permit) => {
                state.on_frame(stream, path, frame, &myself);
                drop(permit);
            }
            OwnerMsg::Publish(bytes, port) => match state.core.publish_local(bytes, wall_ms()) {
                Ok((cursor, out)) => {
                    state.replies.push((port, Ok(cursor)));
                    state.queue(out, &myself);
                }
                Err(code) => {
                    let _ = port.send(Err(SyncError::Refused(code)));
                }
            },
            OwnerMsg::Admit(peer, access) => state.core.admit(peer, access),
            OwnerMsg::Flush => state.flush().await?,
            OwnerMsg::Heartbeat => {
                let out = state.core.tick(wall_ms());
                state.queue(out, &myself);
                for (peer, msg) in state.core.heartbeat() {
                    state.send(&peer, &msg);
                }
                myself.send_after(state.args.timing.heartbeat, || OwnerMsg::Heartbeat);
            }
            OwnerMsg::Read(f) => f(state.core.doc()),
        }
        Ok(())
    }
}

// ─────────────────────────── subscriber ───────────────────────────

/// Timing of the subscriber actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberTiming {
    /// How often the actor checks the outbox's retransmit timers and
    /// subscribes again if the owner has not answered. Default 250 ms.
    pub tick: Duration,
    /// Subscribe again after hearing nothing from the owner for this long
    /// (its heartbeat stopped: a restart forgot us, or frames are lost).
    /// Default 3 s.
    pub silence: Duration,
}

impl Default for SubscriberTiming {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(250),
            silence: Duration::from_secs(3),
        }
    }
}

/// State the subscriber's handle and its actor incarnations share.
pub(crate) struct SubscriberShared {
    /// This subscriber's incarnation, stamped on its frames (the owner
    /// echoes it; the stream session accepts only frames that do).
    pub(crate) incarnation: u64,
    pub(crate) route: Mutex<Option<PathId>>,
    pub(crate) cursor: Mutex<Cursor>,
    pub(crate) pending_publishes: Mutex<usize>,
    pub(crate) applied: broadcast::Sender<Applied>,
    pub(crate) events: broadcast::Sender<SubscriberEvent>,
    pub(crate) gate: Arc<tokio::sync::Mutex<()>>,
}

impl SubscriberShared {
    pub(crate) fn new(incarnation: u64) -> Self {
        Self {
            incarnation,
            route: Mutex::new(None),
            cursor: Mutex::new(Cursor::NONE),
            pending_publishes: Mutex::new(0),
            applied: broadcast::channel(65_536).0,
            events: broadcast::channel(4096).0,
            gate: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

/// Messages of the subscriber actor.
pub enum SubscriberMsg<D> {
    /// A frame of the stream, with its inbox credit.
    Frame(PathId, Frame, Permit),
    /// The routing authority chose a path (or none).
    Route(Option<PathId>),
    /// The application publishes an update (answered once durable).
    Publish(Vec<u8>, RpcReplyPort<Result<u64, SyncError>>),
    /// Commit what is queued, then send.
    Flush,
    /// Timer: retransmits and re-subscribes.
    Tick,
    /// Run a read of the document.
    Read(ReadFn<D>),
}

/// Arguments of the subscriber actor.
pub struct SubscriberArgs<D> {
    pub(crate) stream: StreamId,
    pub(crate) doc_id: String,
    pub(crate) owner: String,
    pub(crate) link: NodeLink,
    pub(crate) store: Arc<dyn SyncStore>,
    pub(crate) make_doc: DocFactory<D>,
    pub(crate) config: SubscriberConfig,
    pub(crate) timing: SubscriberTiming,
    pub(crate) shared: Arc<SubscriberShared>,
}

/// State of the subscriber actor.
pub struct SubscriberState<D> {
    args: SubscriberArgs<D>,
    core: Subscriber<D>,
    path: Option<PathId>,
    pending: SubscriberOutput,
    publishes: Vec<(u64, Vec<u8>, IdReply)>,
    flush_queued: bool,
    last_heard: tokio::time::Instant,
}

/// The subscriber actor of one stream.
pub struct SyncSubscriberActor<D>(std::marker::PhantomData<fn() -> D>);

impl<D> Default for SyncSubscriberActor<D> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<D: Document> SubscriberState<D> {
    fn send_all(&self, msgs: &[SyncMsg]) {
        let Some(path) = &self.path else { return };
        for m in msgs {
            // Lost sends are recovered by the outbox and by resyncs.
            let frame = data(&self.args.stream, self.args.shared.incarnation, m);
            let _ = self.args.link.send(path, frame);
        }
    }

    fn queue(&mut self, out: SubscriberOutput, myself: &ActorRef<SubscriberMsg<D>>) {
        let SubscriberOutput {
            commit,
            send,
            applied,
            events,
        } = out;
        self.pending.commit.merge(commit);
        self.pending.send.extend(send);
        self.pending.applied.extend(applied);
        self.pending.events.extend(events);
        if !self.flush_queued {
            self.flush_queued = true;
            let _ = myself.cast(SubscriberMsg::Flush);
        }
    }

    async fn flush(&mut self) -> Result<(), ActorProcessingErr> {
        self.flush_queued = false;
        let out = std::mem::take(&mut self.pending);
        let commit: SyncSubscriberCommit = out.commit;
        if !commit.is_empty() {
            let (store, stream) = (self.args.store.clone(), self.args.stream.clone());
            blocking(&self.args.shared.gate, move || {
                store.sync_subscriber_commit(&stream, &commit)
            })
            .await??;
        }
        *self.args.shared.cursor.lock_recover() = self.core.cursor();
        self.send_all(&out.send);
        let now = tokio::time::Instant::now().into_std();
        let mut answered = Vec::new();
        for (id, bytes, port) in std::mem::take(&mut self.publishes) {
            let msgs = self.core.published(id, bytes, now);
            self.send_all(&msgs);
            answered.push((id, port));
        }
        // Counted before the callers hear back: a caller that sees its
        // publish answered also sees it pending until the owner settles it.
        *self.args.shared.pending_publishes.lock_recover() = self.core.pending_publishes();
        for (id, port) in answered {
            let _ = port.send(Ok(id));
        }
        for a in out.applied {
            let _ = self.args.shared.applied.send(a);
        }
        for e in out.events {
            let _ = self.args.shared.events.send(e);
        }
        Ok(())
    }

    fn on_frame(&mut self, path: PathId, frame: Frame, myself: &ActorRef<SubscriberMsg<D>>) {
        let now = tokio::time::Instant::now().into_std();
        match frame {
            Frame::Data(d) => {
                if path.peer.as_str() != self.args.owner {
                    let (msg, event) = self.core.foreign(path.peer.as_str());
                    let frame = data(&self.args.stream, d.incarnation, &msg);
                    let _ = self.args.link.send(&path, frame);
                    let _ = self.args.shared.events.send(event);
                    return;
                }
                self.last_heard = tokio::time::Instant::now();
                match SyncMsg::decode(&d.payload) {
                    Ok(msg) => {
                        let out = self.core.on_message(msg, now);
                        self.queue(out, myself);
                    }
                    Err(e) => {
                        // Never answered: two peers that cannot decode each
                        // other would refuse each other's refusals forever.
                        let _ = self.args.shared.events.send(SubscriberEvent::Refused {
                            code: RefuseCode::Malformed.code(),
                            detail: e.0,
                        });
                    }
                }
            }
            Frame::Reject(r)
                if r.code == REJECT_UNKNOWN_STREAM && path.peer.as_str() == self.args.owner =>
            {
                // The owner's node has no such stream: it does not serve
                // this document to us.
                let _ = self.args.shared.events.send(SubscriberEvent::Refused {
                    code: RefuseCode::UnknownDocument.code(),
                    detail: r.reason,
                });
            }
            _ => {}
        }
    }
}

impl<D: Document> Actor for SyncSubscriberActor<D> {
    type Msg = SubscriberMsg<D>;
    type State = SubscriberState<D>;
    type Arguments = SubscriberArgs<D>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (store, stream) = (args.store.clone(), args.stream.clone());
        let record = blocking(&args.shared.gate, move || {
            store.sync_subscriber_load(&stream)
        })
        .await??;
        let core = Subscriber::open(
            args.doc_id.clone(),
            args.link.id().to_string(),
            args.stream.clone(),
            (args.make_doc)(),
            args.config,
            record,
        )?;
        *args.shared.cursor.lock_recover() = core.cursor();
        *args.shared.pending_publishes.lock_recover() = core.pending_publishes();
        let path = args.shared.route.lock_recover().clone();
        let mut state = SubscriberState {
            args,
            core,
            path: None,
            pending: SubscriberOutput::default(),
            publishes: Vec::new(),
            flush_queued: false,
            last_heard: tokio::time::Instant::now(),
        };
        if path.is_some() {
            state.path = path;
            let msgs = state.core.attach(tokio::time::Instant::now().into_std());
            state.send_all(&msgs);
        }
        myself.send_after(state.args.timing.tick, || SubscriberMsg::Tick);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SubscriberMsg::Frame(path, frame, permit) => {
                state.on_frame(path, frame, &myself);
                drop(permit);
            }
            SubscriberMsg::Route(next) => {
                if next != state.path {
                    state.path = next;
                    if state.path.is_some() {
                        let msgs = state.core.attach(tokio::time::Instant::now().into_std());
                        state.send_all(&msgs);
                    }
                }
            }
            SubscriberMsg::Publish(bytes, port) => match state.core.prepare_publish(&bytes) {
                Ok((id, commit)) => {
                    state.publishes.push((id, bytes, port));
                    state.queue(
                        SubscriberOutput {
                            commit,
                            ..Default::default()
                        },
                        &myself,
                    );
                }
                Err(e) => {
                    let _ = port.send(Err(SyncError::Publish(e)));
                }
            },
            SubscriberMsg::Flush => state.flush().await?,
            SubscriberMsg::Tick => {
                if state.path.is_some() {
                    let mut msgs = state.core.poll(tokio::time::Instant::now().into_std());
                    let silent = state.last_heard.elapsed() > state.args.timing.silence;
                    if !state.core.heard() || silent {
                        state.last_heard = tokio::time::Instant::now();
                        msgs.push(state.core.resubscribe());
                    }
                    state.send_all(&msgs);
                }
                myself.send_after(state.args.timing.tick, || SubscriberMsg::Tick);
            }
            SubscriberMsg::Read(f) => f(state.core.doc()),
        }
        Ok(())
    }
}

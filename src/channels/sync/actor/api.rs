//! The application's handles of a sync channel: [`SyncChannel`] starts
//! them, [`SyncOwner`] and [`SyncSubscriber`] publish, read the document,
//! stream applied updates and events, and tell the current cursor.
//!
//! Owns only the handles' side: every handle survives restarts of its
//! actor (it finds the running incarnation by name) and keeps what must
//! outlive one (the last route, the broadcast channels, the store gate).

use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::broadcast;

use super::{
    DocFactory, OwnerArgs, OwnerMsg, OwnerShared, OwnerTiming, SubscriberArgs, SubscriberMsg,
    SubscriberShared, SubscriberTiming, SyncOwnerActor, SyncSubscriberActor,
};
use crate::actors::node::{Node, NodeLink};
use crate::actors::session::{Binding, Side};
use crate::actors::supervisor::{ChildSpec, RestartMode};
use crate::channels::kit::{self, ActorSlot, SessionSpec};
use crate::channels::sync::document::Document;
use crate::channels::sync::owner::{Access, Applied, OwnerConfig, OwnerEvent};
use crate::channels::sync::subscriber::{PublishError, SubscriberConfig, SubscriberEvent};
use crate::channels::sync::wire::{Cursor, RefuseCode, stream_name};
use crate::routing::Need;
use crate::store::SyncStore;
use crate::sync::LockRecover;
use crate::vocab::{ChannelKind, NodeId, PathId, StreamId};

/// Errors of the sync channel's handles.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// This node already runs the owner of the document (one provider per
    /// document).
    #[error("document {0} already has an owner on this node")]
    AlreadyOwned(String),
    /// The owner refused the update.
    #[error("refused: {0:?}")]
    Refused(RefuseCode),
    /// The subscriber refused the publish locally.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The actor could not be started, or routing refused the stream.
    #[error("could not start: {0}")]
    Start(String),
    /// The actor stopped (or restarted) before answering; a publish may
    /// or may not be durable.
    #[error("channel closed")]
    Closed,
}

/// Frames a sync stream's session holds for its actor at most (a replay
/// batch is [`OwnerConfig::max_replay_batch`] updates).
pub const SYNC_INBOX_CAPACITY: usize = 4096;

/// The name, within its node, of the owner actor of `doc`.
pub fn owner_actor_name(doc: &str) -> String {
    format!("sync-owner/{doc}")
}

/// The name, within its node, of the subscriber actor of `stream`.
pub fn subscriber_actor_name(stream: &StreamId) -> String {
    format!("sync-subscriber/{stream}")
}

fn actor<M: ractor::Message>(name: &str) -> Option<ActorRef<M>> {
    ractor::registry::where_is(name).map(ActorRef::from)
}

async fn call<M: ractor::Message, T: Send + 'static>(
    name: &str,
    make: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
) -> Result<T, SyncError> {
    let a = actor::<M>(name).ok_or(SyncError::Closed)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    a.cast(make(tx.into())).map_err(|_| SyncError::Closed)?;
    rx.await.map_err(|_| SyncError::Closed)
}

/// Starts sync channel owners and subscribers on a node.
pub struct SyncChannel;

impl SyncChannel {
    /// Starts the owner of `doc` on `node` (under its `channels`
    /// supervisor). `make_doc` builds an empty document at every start of
    /// the actor; the state comes back from `store`.
    pub async fn own<D: Document>(
        node: &Node,
        doc: impl Into<String>,
        make_doc: impl Fn() -> D + Send + Sync + 'static,
        store: Arc<dyn SyncStore>,
        config: OwnerConfig,
        timing: OwnerTiming,
    ) -> Result<SyncOwner<D>, SyncError> {
        let doc = doc.into();
        let name = node.scoped_name(&owner_actor_name(&doc));
        if actor::<OwnerMsg<D>>(&name).is_some() {
            return Err(SyncError::AlreadyOwned(doc));
        }
        let shared = Arc::new(OwnerShared::new());
        let make_doc: DocFactory<D> = Arc::new(make_doc);
        let spec = {
            let (link, doc, shared) = (node.link(), doc.clone(), shared.clone());
            ChildSpec::new(name.clone(), RestartMode::Permanent, move || {
                (
                    SyncOwnerActor::<D>::default(),
                    OwnerArgs {
                        doc_id: doc.clone(),
                        link: link.clone(),
                        store: store.clone(),
                        make_doc: make_doc.clone(),
                        config,
                        timing,
                        shared: shared.clone(),
                    },
                )
            })
        };
        kit::start_child(&node.link(), spec).await.map_err(|e| {
            match actor::<OwnerMsg<D>>(&name) {
                Some(_) => SyncError::AlreadyOwned(doc.clone()),
                None => SyncError::Start(e.to_string()),
            }
        })?;
        Ok(SyncOwner {
            slot: Arc::new(ActorSlot::new(name.clone())),
            name,
            doc,
            link: node.link(),
            shared,
            _doc: std::marker::PhantomData,
        })
    }

    /// Subscribes `node` to `doc` owned by `owner`: registers the stream
    /// `sync:<owner>/<node>/<doc>` with the routing authority (sync
    /// policy), sets its inbox and starts the subscriber actor, which
    /// restores its cursor, applied state and outbox from `store`.
    pub async fn subscribe<D: Document>(
        node: &Node,
        owner: impl Into<NodeId>,
        doc: impl Into<String>,
        make_doc: impl Fn() -> D + Send + Sync + 'static,
        store: Arc<dyn SyncStore>,
        config: SubscriberConfig,
        timing: SubscriberTiming,
    ) -> Result<SyncSubscriber<D>, SyncError> {
        let (owner, doc) = (owner.into(), doc.into());
        let stream = stream_name(owner.as_str(), node.id().as_str(), &doc);
        let name = node.scoped_name(&subscriber_actor_name(&stream));
        let shared = Arc::new(SubscriberShared::new(kit::new_incarnation()));
        let make_doc: DocFactory<D> = Arc::new(make_doc);
        let spec = {
            let (link, doc, shared, stream, owner) = (
                node.link(),
                doc.clone(),
                shared.clone(),
                stream.clone(),
                owner.to_string(),
            );
            ChildSpec::new(name.clone(), RestartMode::Permanent, move || {
                (
                    SyncSubscriberActor::<D>::default(),
                    SubscriberArgs {
                        stream: stream.clone(),
                        doc_id: doc.clone(),
                        owner: owner.clone(),
                        link: link.clone(),
                        store: store.clone(),
                        make_doc: make_doc.clone(),
                        config,
                        timing,
                        shared: shared.clone(),
                    },
                )
            })
        };
        kit::start_child(&node.link(), spec)
            .await
            .map_err(|e| SyncError::Start(e.to_string()))?;
        let slot: Arc<ActorSlot<SubscriberMsg<D>>> = Arc::new(ActorSlot::new(name.clone()));
        kit::bind(
            &node.link(),
            SessionSpec {
                stream: stream.clone(),
                binding: Binding {
                    peer: owner.clone(),
                    kind: ChannelKind::Sync,
                    side: Side::Sender,
                },
                capacity: SYNC_INBOX_CAPACITY,
                incarnation: shared.incarnation,
            },
            slot.clone(),
            |_, frame| Some(frame),
            SubscriberMsg::Frame,
        );
        let route_shared = shared.clone();
        kit::follow_route(
            node,
            stream.clone(),
            Need::node(ChannelKind::Sync, owner),
            move |next: Option<PathId>| {
                // Recorded first: a restarting actor reads it in `pre_start`.
                *route_shared.route.lock_recover() = next.clone();
                slot.cast(SubscriberMsg::Route(next));
            },
        )
        .await
        .map_err(|e| SyncError::Start(e.to_string()))?;
        Ok(SyncSubscriber {
            name,
            stream,
            shared,
            _doc: std::marker::PhantomData,
        })
    }
}

/// The owner's handle of one document (cloning shares it).
pub struct SyncOwner<D> {
    name: String,
    slot: Arc<ActorSlot<OwnerMsg<D>>>,
    doc: String,
    link: NodeLink,
    shared: Arc<OwnerShared>,
    _doc: std::marker::PhantomData<fn() -> D>,
}

impl<D> Clone for SyncOwner<D> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            slot: self.slot.clone(),
            doc: self.doc.clone(),
            link: self.link.clone(),
            shared: self.shared.clone(),
            _doc: std::marker::PhantomData,
        }
    }
}

impl<D> Clone for SyncSubscriber<D> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            stream: self.stream.clone(),
            shared: self.shared.clone(),
            _doc: std::marker::PhantomData,
        }
    }
}

impl<D: Document> SyncOwner<D> {
    /// The document's id.
    pub fn doc(&self) -> &str {
        &self.doc
    }

    /// Admits `subscriber` (with `access`) and binds its stream
    /// `sync:<owner>/<subscriber>/<doc>` to it at the owner's node.
    pub fn admit(&self, subscriber: impl Into<NodeId>, access: Access) {
        let subscriber = subscriber.into();
        {
            let mut admitted = self.shared.admitted.lock_recover();
            admitted.retain(|(p, _)| p != subscriber.as_str());
            admitted.push((subscriber.to_string(), access));
        }
        self.slot
            .cast(OwnerMsg::Admit(subscriber.to_string(), access));
        let stream = stream_name(self.link.id().as_str(), subscriber.as_str(), &self.doc);
        let s = stream.clone();
        kit::bind(
            &self.link,
            SessionSpec {
                stream,
                binding: Binding {
                    peer: subscriber,
                    kind: ChannelKind::Sync,
                    side: Side::Receiver,
                },
                capacity: SYNC_INBOX_CAPACITY,
                incarnation: 0,
            },
            self.slot.clone(),
            |_, frame| Some(frame),
            move |path, frame, permit| OwnerMsg::Frame(s.clone(), path, frame, permit),
        );
    }

    /// Publishes an update of the owner; returns its cursor once durable.
    pub async fn publish(&self, update: Vec<u8>) -> Result<Cursor, SyncError> {
        call(&self.name, |port| OwnerMsg::<D>::Publish(update, port)).await?
    }

    /// The newest cursor of the log.
    pub fn cursor(&self) -> Cursor {
        *self.shared.head.lock_recover()
    }

    /// Every update accepted from now on, in log order.
    pub fn applied(&self) -> broadcast::Receiver<Applied> {
        self.shared.applied.subscribe()
    }

    /// Refusals, replays and snapshots sent, from now on.
    pub fn events(&self) -> broadcast::Receiver<OwnerEvent> {
        self.shared.events.subscribe()
    }

    /// Runs `f` on the document inside the actor.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&D) -> R + Send + 'static,
    ) -> Result<R, SyncError> {
        read(&self.name, f, |g| OwnerMsg::Read(g)).await
    }

    /// The registered name of the owner actor (see [`Node::actor`] with
    /// [`owner_actor_name`]).
    pub fn actor_name(&self) -> &str {
        &self.name
    }
}

async fn read<D: 'static, M: ractor::Message, R: Send + 'static>(
    name: &str,
    f: impl FnOnce(&D) -> R + Send + 'static,
    wrap: impl FnOnce(super::ReadFn<D>) -> M,
) -> Result<R, SyncError> {
    let a = actor::<M>(name).ok_or(SyncError::Closed)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let g: super::ReadFn<D> = Box::new(move |d: &D| {
        let _ = tx.send(f(d));
    });
    a.cast(wrap(g)).map_err(|_| SyncError::Closed)?;
    rx.await.map_err(|_| SyncError::Closed)
}

/// A subscriber's handle of one document (cloning shares it).
pub struct SyncSubscriber<D> {
    name: String,
    stream: StreamId,
    shared: Arc<SubscriberShared>,
    _doc: std::marker::PhantomData<fn() -> D>,
}

impl<D: Document> SyncSubscriber<D> {
    /// The stream.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// Publishes an update to the owner; returns its update id once it is
    /// durable in the local outbox (it is delivered when a path exists and
    /// applied here when it comes back in the owner's log).
    pub async fn publish(&self, update: Vec<u8>) -> Result<u64, SyncError> {
        call(&self.name, |port| SubscriberMsg::<D>::Publish(update, port)).await?
    }

    /// The last applied (durable) cursor.
    pub fn cursor(&self) -> Cursor {
        *self.shared.cursor.lock_recover()
    }

    /// The incarnation stamped on this subscriber's frames (new for every
    /// [`SyncChannel::subscribe`]).
    pub fn incarnation(&self) -> u64 {
        self.shared.incarnation
    }

    /// Own publishes not yet settled by the owner.
    pub fn pending_publishes(&self) -> usize {
        *self.shared.pending_publishes.lock_recover()
    }

    /// Every update applied from now on, in log order.
    pub fn applied(&self) -> broadcast::Receiver<Applied> {
        self.shared.applied.subscribe()
    }

    /// Gaps, snapshots, refusals, from now on.
    pub fn events(&self) -> broadcast::Receiver<SubscriberEvent> {
        self.shared.events.subscribe()
    }

    /// Runs `f` on the document inside the actor.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&D) -> R + Send + 'static,
    ) -> Result<R, SyncError> {
        read(&self.name, f, |g| SubscriberMsg::Read(g)).await
    }

    /// The registered name of the subscriber actor.
    pub fn actor_name(&self) -> &str {
        &self.name
    }
}

//! The command channel: the glue between the pure cores
//! ([`Outbox`](crate::channels::Outbox), [`Dedupe`](crate::channels::Dedupe),
//! [`Sequencer`](crate::channels::Sequencer)), the [`Store`] and a [`Node`],
//! built on the [channel kit](crate::channels::kit).
//!
//! Layout: [`api`] (handler trait, options, errors), [`config`],
//! [`envelope`] (the payload encoding), [`sender`], [`server`], and here
//! [`CommandChannel`], which binds a stream's session and starts its actor.
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
//!   its stream is bound to the target node and stamped with the sender's
//!   incarnation, so only the target's answers to this incarnation count;
//! - the **server** ([`CommandChannel::serve`]): decodes each command
//!   envelope, delivers in sequence order, dedupes (memory and store),
//!   refuses expired commands and commands of a stale authority epoch,
//!   applies the [`CommandHandler`] at most once per message (or an
//!   [`AtomicHandler`] inside the transaction that stores its dedupe
//!   record: [`CommandChannel::serve_atomic`]), stores the reply, and
//!   answers with a wire [`Ack`](crate::wire::Ack) plus a reply envelope;
//!   its stream is bound to the one peer allowed to send on it.
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
//! CommandChannel::serve(&hub, stream.clone(), NodeId::new("m1"), Doubler, Arc::new(MemStore::new()), ServeConfig::default())
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

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::actors::node::Node;
use crate::actors::session::{Binding, Side};
use crate::actors::supervisor::{ChildSpec, RestartMode};
use crate::channels::kit::{self, ActorSlot, LazyStart, SessionSpec, SpawnError, new_incarnation};
use crate::routing::Need;
use crate::store::Store;
use crate::sync::LockRecover;
use crate::vocab::{ChannelKind, NodeId, PathId, StreamId};
use crate::wire::Frame;

pub mod api;
pub mod config;
pub mod envelope;
mod records;
pub mod sender;
pub mod server;

pub use crate::vocab::DeliveryClass;
pub use api::{
    AtomicHandler, Clock, CommandContext, CommandError, CommandHandler, SendOptions, system_clock,
};
pub use config::{SenderConfig, ServeConfig};
pub use envelope::{Envelope, EnvelopeKind, REJECT_UNDECODABLE, ReplyBody};
pub use sender::{
    CommandSender, CommandSenderActor, Receipt, SenderArgs, SenderMsg, SenderState, SenderStats,
    Submission,
};
pub use server::{
    CommandServerActor, ServeHandle, ServerArgs, ServerMsg, ServerState, incarnation_key,
};

use sender::SenderShared;
use server::{Atomic, ErasedHandler, Typed};

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

/// Starts command channel actors on a node.
pub struct CommandChannel;

impl CommandChannel {
    /// Sets up the sender of `stream` towards `target`: binds the stream's
    /// session to `target` with this sender's incarnation (read from the
    /// store, or a new one for a new store), registers the stream with
    /// routing, and starts the sender actor under the node's supervisor —
    /// at once if the store holds pending commands of the stream (they are
    /// resent), otherwise on the first [`CommandSender::send`], so idle
    /// streams stay cheap. The returned handle survives restarts of the
    /// actor.
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
        let stats: Arc<sender::SenderStats> = Arc::default();
        // The incarnation, and whether commands are pending (then the actor
        // starts at once, to resend them; an idle stream waits).
        let (incarnation, pending) = {
            let (store, stream) = (store.clone(), stream.clone());
            let fresh = new_incarnation();
            tokio::task::spawn_blocking(move || {
                let inc = store.sender_incarnation(&stream, fresh)?;
                let pending = !store.pending_outbox_for(&stream)?.is_empty();
                Ok::<_, crate::store::StoreError>((inc, pending))
            })
            .await
            .map_err(|e| SpawnError::Store(e.to_string()))?
            .map_err(|e| SpawnError::Store(e.to_string()))?
        };
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
                        incarnation,
                    },
                )
            })
        };
        let start = Arc::new(LazyStart::new(node.link(), spec));
        let slot = Arc::new(ActorSlot::new(name));
        let credit = shared.clone();
        let session = kit::bind(
            &node.link(),
            SessionSpec {
                stream: stream.clone(),
                binding: Binding {
                    peer: target.clone(),
                    kind: ChannelKind::Command,
                    side: Side::Sender,
                },
                capacity: config.inbox_capacity,
                incarnation,
            },
            slot.clone(),
            // Acks are settled on the receive task: their credit bounds
            // what the sender keeps in flight; the reply settles the entry.
            move |_path: &PathId, frame: Frame| match frame {
                Frame::Ack(a) => {
                    credit
                        .peer_credit
                        .store(a.credit, std::sync::atomic::Ordering::Relaxed);
                    None
                }
                other => Some(other),
            },
            SenderMsg::Frame,
        );
        let up = slot.clone();
        session.on_path_up(Box::new(move |path: &PathId| {
            up.cast(SenderMsg::PathUp(path.clone()));
        }));
        if pending {
            start.ensure().await?;
        }
        let (listener, listener_shared) = (slot.clone(), shared.clone());
        kit::follow_route(
            node,
            stream.clone(),
            Need::node(ChannelKind::Command, target),
            move |next: Option<PathId>| {
                // Recorded first: an actor restarting right now reads it in
                // `pre_start`, so a decision is never lost between actors.
                *listener_shared.route.lock_recover() = next.clone();
                listener.cast(SenderMsg::Route(next));
            },
        )
        .await?;
        Ok(CommandSender {
            slot,
            start,
            stream,
            stats,
            config,
            incarnation,
            _types: PhantomData,
        })
    }

    /// Serves `stream` on this node with `handler`, for commands from
    /// `peer` only: binds the stream's session to `peer`, starts the server
    /// actor under the node's supervisor. Frames from any other node are
    /// refused by the session (`NOT_BOUND`) and never reach the handler.
    /// Replies go back on the path each command arrived on.
    ///
    /// The handler's effects are outside the store: see
    /// [`CommandHandler`] for what a crash of this node can do to them, and
    /// [`CommandChannel::serve_atomic`] for effects that commit with the
    /// dedupe record.
    pub async fn serve<H: CommandHandler>(
        node: &Node,
        stream: StreamId,
        peer: NodeId,
        handler: H,
        store: Arc<dyn Store>,
        config: ServeConfig,
    ) -> Result<Arc<ServeHandle>, SpawnError> {
        Self::serve_erased(node, stream, peer, Arc::new(Typed(handler)), store, config).await
    }

    /// Serves `stream` as [`CommandChannel::serve`] does, with a handler
    /// whose effects are writes in `store`, committed in the same durable
    /// transaction as each command's dedupe record and reply: exactly once
    /// across crashes (see [`AtomicHandler`]). `store` must implement
    /// [`Store::dedupe_record_with`] (both backends do).
    pub async fn serve_atomic<H: AtomicHandler>(
        node: &Node,
        stream: StreamId,
        peer: NodeId,
        handler: H,
        store: Arc<dyn Store>,
        config: ServeConfig,
    ) -> Result<Arc<ServeHandle>, SpawnError> {
        Self::serve_erased(node, stream, peer, Arc::new(Atomic(handler)), store, config).await
    }

    async fn serve_erased(
        node: &Node,
        stream: StreamId,
        peer: NodeId,
        handler: Arc<dyn ErasedHandler>,
        store: Arc<dyn Store>,
        config: ServeConfig,
    ) -> Result<Arc<ServeHandle>, SpawnError> {
        let name = node.scoped_name(&server_actor_name(&stream));
        let handle: Arc<ServeHandle> = Arc::default();
        let incarnation = {
            let (store, stream) = (store.clone(), stream.clone());
            tokio::task::spawn_blocking(move || store.peer_incarnation(&stream))
                .await
                .map_err(|e| SpawnError::Store(e.to_string()))?
                .map_err(|e| SpawnError::Store(e.to_string()))?
                .unwrap_or(0)
        };
        let slot = Arc::new(ActorSlot::new(name.clone()));
        let session = kit::bind(
            &node.link(),
            SessionSpec {
                stream: stream.clone(),
                binding: Binding {
                    peer,
                    kind: ChannelKind::Command,
                    side: Side::Receiver,
                },
                capacity: config.inbox_capacity,
                incarnation,
            },
            slot,
            |_path: &PathId, frame: Frame| match frame {
                // The server only takes commands; stray acks and rejects
                // from its peer change nothing.
                Frame::Data(_) => Some(frame),
                _ => None,
            },
            ServerMsg::Frame,
        );
        let spec = {
            let (link, stream, handle) = (node.link(), stream.clone(), handle.clone());
            ChildSpec::new(name, RestartMode::Permanent, move || {
                (
                    CommandServerActor,
                    ServerArgs {
                        stream: stream.clone(),
                        link: link.clone(),
                        store: store.clone(),
                        handler: handler.clone(),
                        config: config.clone(),
                        handle: handle.clone(),
                        session: session.clone(),
                    },
                )
            })
        };
        if let Err(e) = kit::start_child(&node.link(), spec).await {
            node.unbind_stream(&stream);
            return Err(e);
        }
        Ok(handle)
    }
}

//! The channel kit: the lifecycle every channel kind shares.
//!
//! A channel kind (command today; sync and media next) is a pure core plus
//! a thin ractor actor per logical stream. What is not specific to the
//! kind lives here, so a new kind is its core, its messages and a few calls
//! into this module:
//!
//! - [`ActorSlot`]: reach a stream's actor by its registered name, cached,
//!   surviving restarts (the supervisor starts a new incarnation under the
//!   same name);
//! - [`LazyStart`]: start the actor on first use, so an idle stream costs
//!   no actor, task or mailbox;
//! - [`start_child`]: start an actor under the node's `channels`
//!   supervisor, which restarts it and starts it again after its own
//!   restart;
//! - [`bind`]: bind the stream to its peer at the node's dispatch (a
//!   [`Session`]: peer check, incarnation check, bounded inbox credit), with
//!   admitted frames cast to the actor together with their [`Permit`];
//! - [`follow_route`]: register the stream with the routing authority and
//!   be *told* of every path change (never asking per message);
//! - [`new_incarnation`]: the incarnation value of a sender that starts a
//!   fresh sequence space.
//!
//! It owns no semantics: no acks, outbox, cursors or dedupe.
//!
//! Adding a channel kind, in short: write the pure core in
//! `src/channels/<kind>/`; define one message enum for its actor with a
//! variant carrying `(PathId, Frame, Permit)`; in the kind's `spawn` call
//! [`bind`] (with a [`Binding`] naming the peer), [`follow_route`] (casting
//! route changes into the actor) and [`start_child`] or a [`LazyStart`].

use std::sync::{Arc, Mutex};

use ractor::ActorRef;

use crate::actors::node::{Node, NodeError, NodeLink};
use crate::actors::session::{Binding, Inbox, Permit, Session};
use crate::actors::supervisor::ChildSpec;
use crate::routing::Need;
use crate::sync::lock;
use crate::vocab::{PathId, StreamId};
use crate::wire::Frame;

/// A channel actor reached by its registered name. The last resolved
/// reference is cached, so the per-message path neither allocates the name
/// nor searches ractor's global registry; a cast refused by a stopped
/// (restarted) actor resolves the name again and retries once.
pub struct ActorSlot<M> {
    name: String,
    cached: Mutex<Option<ActorRef<M>>>,
}

impl<M: ractor::Message> ActorSlot<M> {
    /// A slot for the actor registered as `name` (process-wide name).
    pub fn new(name: String) -> Self {
        Self {
            name,
            cached: Mutex::new(None),
        }
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Casts `msg` to the running actor; false if none is running.
    pub fn cast(&self, msg: M) -> bool {
        self.try_cast(msg).is_ok()
    }

    /// Casts `msg` to the running actor; gives it back when none is
    /// running (when it can).
    pub fn try_cast(&self, msg: M) -> Result<(), Option<M>> {
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

/// Errors starting a channel's actor or binding its stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The supervisor refused or failed to start the actor.
    #[error("could not start the channel actor: {0}")]
    Start(String),
    /// The routing authority refused the stream.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The store could not be read or written while setting up.
    #[error("store: {0}")]
    Store(String),
}

/// Starts a channel actor under the node's `channels` supervisor.
pub async fn start_child(link: &NodeLink, spec: ChildSpec) -> Result<(), SpawnError> {
    link.start_channel(spec).await.map_err(SpawnError::Start)
}

/// Starts a channel's actor once, when it is first needed: an idle stream
/// (registered, never used, nothing pending in the store) costs no actor,
/// task or mailbox.
pub struct LazyStart {
    link: NodeLink,
    spec: ChildSpec,
    started: tokio::sync::OnceCell<()>,
}

impl LazyStart {
    /// Will start `spec` under `link`'s node on the first [`LazyStart::ensure`].
    pub fn new(link: NodeLink, spec: ChildSpec) -> Self {
        Self {
            link,
            spec,
            started: tokio::sync::OnceCell::new(),
        }
    }

    /// Starts the actor unless it was started before (the supervisor
    /// restarts it from then on).
    pub async fn ensure(&self) -> Result<(), SpawnError> {
        self.started
            .get_or_try_init(|| start_child(&self.link, self.spec.clone()))
            .await
            .map(|_| ())
    }
}

/// How a stream's session is set up by [`bind`].
#[derive(Clone, Debug)]
pub struct SessionSpec {
    /// The stream.
    pub stream: StreamId,
    /// Its binding (peer, kind, side).
    pub binding: Binding,
    /// The inbox capacity in frames.
    pub capacity: usize,
    /// The sender's own incarnation (sender side) or the newest accepted
    /// (receiver side).
    pub incarnation: u64,
}

/// Binds the stream of `spec` at the node's dispatch and casts every
/// admitted frame to the actor in `slot` as `wrap(path, frame, permit)`.
/// Frames for which `inline` returns `None` were handled on the receive
/// task and are not cast.
pub fn bind<M, W, I>(
    link: &NodeLink,
    spec: SessionSpec,
    slot: Arc<ActorSlot<M>>,
    inline: I,
    wrap: W,
) -> Arc<Session>
where
    M: ractor::Message,
    I: Fn(&PathId, Frame) -> Option<Frame> + Send + Sync + 'static,
    W: Fn(PathId, Frame, Permit) -> M + Send + Sync + 'static,
{
    let inbox: Arc<dyn Inbox> = Arc::new(move |path: &PathId, frame: Frame, permit: Permit| {
        if let Some(frame) = inline(path, frame) {
            // A frame for a stopped actor is dropped with its permit; its
            // sender still holds it and resends.
            slot.cast(wrap(path.clone(), frame, permit));
        }
    });
    link.bind_stream(
        spec.stream,
        spec.binding,
        inbox,
        spec.capacity,
        spec.incarnation,
    )
}

/// Registers `stream` with the routing authority for `need` and calls
/// `on_route` with the path right after registration and on every later
/// decision (the channel is told; it never asks per message). A decision
/// that reaches the listener before the registration's answer is never
/// overwritten by that (older) answer.
pub async fn follow_route<F>(
    node: &Node,
    stream: StreamId,
    need: Need,
    on_route: F,
) -> Result<(), SpawnError>
where
    F: Fn(Option<PathId>) + Clone + Send + Sync + 'static,
{
    // `true` once the listener has told a decision; held while telling, so
    // the initial answer and a decision never interleave.
    let told = Arc::new(Mutex::new(false));
    let (cast, listener_told) = (on_route.clone(), told.clone());
    let initial = node
        .register_stream(stream, need, move |u| {
            let mut told = lock(&listener_told);
            *told = true;
            cast(u.decision.next);
        })
        .await?;
    let told = lock(&told);
    if let (false, Some(r)) = (*told, initial) {
        on_route(r.path);
    }
    Ok(())
}

/// A new sender incarnation: the wall clock in microseconds shifted left
/// by 8 bits, plus 8 random bits. Later incarnations compare greater (short
/// of a clock set back, or two incarnations of one stream created within
/// the same microsecond), so a receiver can refuse an older one. The wall
/// clock is read here, not injected: an incarnation must order against
/// incarnations made by other processes.
pub fn new_incarnation() -> u64 {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let noise: u8 = rand::random();
    ((now_us & ((1u64 << 56) - 1)) << 8) | u64::from(noise) | 1
}

//! The node: one process's actor tree, built from `main` in a few lines.
//!
//! Owns wiring, not semantics:
//! - a top [`Supervisor`](super::supervisor::Supervisor) with three children — the
//!   [`RoutingAuthority`](crate::routing::authority::RoutingAuthority), a
//!   `transports` supervisor with one [`TransportActor`] per transport, and a
//!   `channels` supervisor that channel actors are started under;
//! - the stream dispatch, which checks every received frame against its
//!   stream's [`Session`] on the transport's receive task and hands it to the
//!   stream's bounded inbox, and the event pump, which carries facts to the
//!   routing authority;
//! - the shared registries (transports by path kind, sessions by stream,
//!   stream registrations) that outlive any one actor's restart.
//!
//! ```
//! use interlocking::actors::node::NodeBuilder;
//! use interlocking::transports::memory::MemoryNetwork;
//! use interlocking::transports::probe::ProbeConfig;
//! use interlocking::vocab::{PathKind, Role};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = MemoryNetwork::new(7);
//! let hub = NodeBuilder::new("hub", Role::Hub)
//!     .memory(&net, PathKind::Quic, ProbeConfig::default())
//!     .spawn()
//!     .await?;
//! let member = NodeBuilder::new("member", Role::Member)
//!     .memory(&net, PathKind::Quic, ProbeConfig::default())
//!     .dial(PathKind::Quic, interlocking::transports::PeerAddr::node("hub"))
//!     .spawn()
//!     .await?;
//! member.shutdown().await;
//! hub.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::supervisor::{ChildSpec, SupervisorMsg};
use crate::routing::authority::{AuthorityEnv, RouteListener, RouteUpdate, RoutingMsg};
use crate::routing::{Decision, Explanation, Need, Observation, RegisterError, Route};
use crate::sync::{LockRecover, lock};
use crate::transports::{EventSink, Fact, FrameSink, PeerAddr, Transport, TransportEvent};
use crate::vocab::{NodeId, PathId, PathKind, Role, StreamId};
use crate::wire::{Frame, Reject};

pub use super::session::{Binding, Inbox, Permit, Session, Side, codes};

mod builder;
pub use builder::NodeBuilder;

/// Reject code sent back for a frame whose stream is not served here (yet):
/// retryable (see [`codes::NOT_READY`]).
pub const REJECT_UNKNOWN_STREAM: u16 = codes::NOT_READY;

/// Builds a transport, given where to send its events.
pub type BindFn = Arc<
    dyn Fn(EventSink) -> Pin<Box<dyn Future<Output = Result<Arc<dyn Transport>, String>> + Send>>
        + Send
        + Sync,
>;

struct TransportSpec {
    kind: PathKind,
    bind: BindFn,
}

/// Errors from building or talking to a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The actor tree failed to start.
    #[error("node failed to start: {0}")]
    Spawn(String),
    /// The routing authority is not running (restarting or stopped).
    #[error("routing authority unavailable")]
    RoutingUnavailable,
    /// The routing authority refused the registration.
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// State shared by the node's actors and its handle; survives restarts of
/// any single actor.
pub(crate) struct Shared {
    id: NodeId,
    role: Role,
    /// Every bound transport by the kind of path it provides.
    transports: DashMap<PathKind, Arc<dyn Transport>>,
    /// Each bound stream's session: binding, inbox, credit.
    sessions: DashMap<StreamId, Arc<Session>>,
    /// Frames refused by the stream dispatch, by reject code.
    refusals: DashMap<u16, u64>,
    /// When a data-plane ack was last reported to routing, per path.
    last_ack: DashMap<PathId, tokio::time::Instant>,
    /// The running routing authority, if any.
    routing: Mutex<Option<ActorRef<RoutingMsg>>>,
    /// Stream registrations, re-applied by a restarted authority.
    registrations: Mutex<BTreeMap<StreamId, (Need, RouteListener)>>,
    /// Paths currently open, re-added by a restarted authority.
    open_paths: Mutex<BTreeMap<PathId, ()>>,
    /// Every routing decision, for logs and tools.
    decisions: broadcast::Sender<Decision>,
    /// The sender half of the event pump, cloned into each transport.
    events: EventSink,
    /// Prefix of every actor name in this node's tree (`id#instance/`).
    prefix: String,
    /// Every channel actor started on this node: a restarted `channels`
    /// supervisor starts them all again.
    channel_specs: Mutex<Vec<ChildSpec>>,
}

impl Shared {
    fn routing(&self) -> Option<ActorRef<RoutingMsg>> {
        self.routing.lock_recover().clone()
    }

    fn cast(&self, msg: RoutingMsg) {
        if let Some(r) = self.routing() {
            // A stopped authority is being restarted; it re-reads open paths
            // and registrations when it comes back.
            let _ = r.cast(msg);
        }
    }
}

struct Env(Arc<Shared>);

impl AuthorityEnv for Env {
    fn registrations(&self) -> Vec<(StreamId, Need, RouteListener)> {
        let regs = self.0.registrations.lock_recover();
        regs.iter()
            .map(|(s, (n, l))| (s.clone(), n.clone(), l.clone()))
            .collect()
    }
    fn remember(&self, stream: &StreamId, need: &Need, listener: &RouteListener) {
        self.0
            .registrations
            .lock_recover()
            .insert(stream.clone(), (need.clone(), listener.clone()));
    }
    fn forget(&self, stream: &StreamId) {
        self.0.registrations.lock_recover().remove(stream);
    }
    fn open_paths(&self) -> Vec<PathId> {
        let open = lock(&self.0.open_paths);
        open.keys().cloned().collect()
    }
    fn on_decision(&self, decision: &Decision) {
        // No subscriber is fine: the log is optional.
        let _ = self.0.decisions.send(decision.clone());
    }
    fn started(&self, me: ActorRef<RoutingMsg>) {
        *lock(&self.0.routing) = Some(me);
    }
}

/// Messages of a [`TransportActor`].
pub enum TransportMsg {
    /// Open a path to a peer, retrying with backoff until it opens.
    Dial(PeerAddr, u32),
}

/// Keeps one transport bound, dials its peers, and shuts it down on stop.
/// A restart binds a fresh transport and dials again.
pub struct TransportActor;

/// Arguments of a [`TransportActor`].
pub struct TransportArgs {
    shared: Arc<Shared>,
    spec: Arc<TransportSpec>,
    dials: Vec<PeerAddr>,
}

/// State of a running [`TransportActor`].
pub struct TransportState {
    transport: Arc<dyn Transport>,
    shared: Arc<Shared>,
}

/// Backoff between dial attempts: 100 ms doubling to 5 s.
fn dial_backoff(attempt: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(5))
}

impl Actor for TransportActor {
    type Msg = TransportMsg;
    type State = TransportState;
    type Arguments = TransportArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // A predecessor that was killed (not stopped) never ran post_stop:
        // close its transport first so its sockets and tasks are released.
        let stale = args
            .shared
            .transports
            .remove(&args.spec.kind)
            .map(|(_, t)| t);
        if let Some(stale) = stale {
            stale.shutdown().await;
        }
        let transport = (args.spec.bind)(args.shared.events.clone()).await?;
        args.shared
            .transports
            .insert(args.spec.kind, transport.clone());
        for peer in args.dials {
            let _ = myself.cast(TransportMsg::Dial(peer, 0));
        }
        Ok(TransportState {
            transport,
            shared: args.shared,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let kind = state.transport.kind();
        state
            .shared
            .transports
            .remove_if(&kind, |_, t| Arc::ptr_eq(t, &state.transport));
        state.transport.shutdown().await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TransportMsg::Dial(peer, attempt) => {
                if let Err(e) = state.transport.connect(&peer).await {
                    let after = dial_backoff(attempt);
                    tracing::debug!(peer = %peer.node, kind = %state.transport.kind(), error = %e, ?after, "dial failed; retrying");
                    myself.send_after(after, move || TransportMsg::Dial(peer, attempt + 1));
                }
            }
        }
        Ok(())
    }
}

/// Translates a transport fact into a routing observation, if it is one.
fn observation(fact: &Fact) -> Option<Observation> {
    Some(match fact {
        Fact::Up => Observation::Up,
        Fact::Down(cause) => Observation::Down {
            cause: cause.to_string(),
        },
        Fact::ProbeAnswered { rtt } => Observation::ProbeAnswered { rtt: *rtt },
        Fact::ProbeMissed => Observation::ProbeMissed,
        Fact::Rtt(rtt) => Observation::Rtt(*rtt),
        Fact::Loss { lost, sent } => Observation::Loss {
            lost: *lost,
            sent: *sent,
        },
        Fact::QueueDepth { frames, bytes } => Observation::QueueDepth {
            frames: *frames,
            bytes: *bytes,
        },
        Fact::Incident(what) => Observation::Incident { what: what.clone() },
        // The path's health is unchanged; the sessions were told.
        Fact::Frame(_) | Fact::Renewed => return None,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// Data-plane acks on one path are reported to the authority at most this
/// often: they prove liveness, and one per interval is proof enough.
const ACK_REPORT_INTERVAL: Duration = Duration::from_millis(20);

/// The node's stream dispatch: checks every received frame against its
/// stream's session on the transport's receive task and hands it straight
/// to the stream's inbox (no hop through the event pump).
struct Dispatch(std::sync::Weak<Shared>);

impl FrameSink for Dispatch {
    fn frame(&self, path: &PathId, frame: Frame) {
        if let Some(shared) = self.0.upgrade() {
            shared.dispatch(path, frame);
        }
    }
}

impl Shared {
    fn dispatch(&self, path: &PathId, frame: Frame) {
        let stream = match &frame {
            Frame::Data(d) => Some(&d.stream),
            Frame::Ack(a) => Some(&a.stream),
            Frame::Reject(r) => r.stream.as_ref(),
            _ => None,
        };
        let Some(stream) = stream else {
            tracing::debug!(%path, kind = ?frame.kind(), "frame without a stream ignored by the node");
            return;
        };
        if matches!(frame, Frame::Ack(_)) {
            // A data-plane ack from the peer proves the path alive, whatever
            // becomes of the frame.
            self.data_acked(path);
        }
        let session = self.sessions.get(stream).map(|e| e.value().clone());
        if let (Frame::Data(_), Some(s)) = (&frame, &session)
            && s.binding().side == Side::Sender
        {
            // An answer to this node's own stream acknowledges what it
            // answers (a reply carries no separate ack): the same proof.
            self.data_acked(path);
        }
        let Some(session) = session else {
            let stream = stream.clone();
            self.refuse(
                path,
                &stream,
                &frame,
                codes::NOT_READY,
                "stream not served here",
            );
            return;
        };
        let stream = stream.clone();
        if let Err((r, frame)) = session.admit(path, frame) {
            tracing::debug!(%path, %stream, code = r.code, reason = r.reason, "frame refused by the stream session");
            self.refuse(path, &stream, &frame, r.code, r.reason);
        }
    }

    /// Reports `DataAcked` for `path` to the routing authority, at most
    /// once per [`ACK_REPORT_INTERVAL`]: one report per interval is proof
    /// enough.
    fn data_acked(&self, path: &PathId) {
        let now = tokio::time::Instant::now();
        let due = self
            .last_ack
            .get(path)
            .is_none_or(|t| now.duration_since(*t) >= ACK_REPORT_INTERVAL);
        if due {
            self.last_ack.insert(path.clone(), now);
            self.cast(RoutingMsg::Observe(path.clone(), Observation::DataAcked));
        }
    }

    /// Counts a refusal and answers a refused data frame with a [`Reject`]
    /// carrying `code` (acks and rejects are never answered: no loops).
    fn refuse(&self, path: &PathId, stream: &StreamId, frame: &Frame, code: u16, reason: &str) {
        *self.refusals.entry(code).or_insert(0) += 1;
        let Frame::Data(d) = frame else { return };
        if let Some(t) = self.transports.get(&path.kind).map(|t| t.value().clone()) {
            let reject = Frame::Reject(Reject {
                stream: Some(stream.clone()),
                message_id: Some(d.message_id),
                code,
                reason: reason.to_string(),
            });
            // Best effort: a refusal that cannot be sent changes nothing.
            let _ = t.send(&path.peer, reject);
        }
    }
}

/// Carries facts (not frames: those go through [`Dispatch`]) to the
/// routing authority.
async fn pump(shared: Arc<Shared>, mut rx: mpsc::Receiver<TransportEvent>) {
    while let Some(TransportEvent { path, fact }) = rx.recv().await {
        match &fact {
            Fact::Up | Fact::Renewed => {
                if matches!(fact, Fact::Up) {
                    shared.open_paths.lock_recover().insert(path.clone(), ());
                    shared.cast(RoutingMsg::PathAdded(path.clone()));
                }
                // Channels towards that peer resend at once (rare: a path
                // opening or its connection renewed, so a scan of the
                // sessions is cheap enough).
                let up: Vec<Arc<Session>> = shared
                    .sessions
                    .iter()
                    .filter(|s| s.value().binding().peer == path.peer)
                    .map(|s| s.value().clone())
                    .collect();
                for s in up {
                    s.path_up(&path);
                }
            }
            Fact::Down(_) => {
                shared.open_paths.lock_recover().remove(&path);
            }
            Fact::Frame(frame) => {
                // Only a sink without a frame sink queues frames; the
                // node's never does, but handle it the same way.
                shared.dispatch(&path, frame.clone());
                continue;
            }
            _ => {}
        }
        if let Some(obs) = observation(&fact) {
            shared.cast(RoutingMsg::Observe(path, obs));
        }
    }
}

/// A cloneable handle to a node's transports (see [`Node::link`]): sends
/// frames on a path, nothing else.
#[derive(Clone)]
pub struct NodeLink(Arc<Shared>);

impl NodeLink {
    /// The node's id.
    pub fn id(&self) -> &NodeId {
        &self.0.id
    }

    /// Sends `frame` on `path`, like [`Node::send`].
    pub fn send(&self, path: &PathId, frame: Frame) -> Result<(), crate::transports::SendError> {
        match self.0.transports.get(&path.kind).map(|t| t.value().clone()) {
            Some(t) => t.send(&path.peer, frame),
            None => Err(crate::transports::SendError::NoPath {
                peer: path.peer.clone(),
                kind: path.kind,
                frame: Box::new(frame),
            }),
        }
    }
}

impl NodeLink {
    /// See [`Node::bind_stream`].
    pub fn bind_stream(
        &self,
        stream: StreamId,
        binding: Binding,
        inbox: Arc<dyn Inbox>,
        capacity: usize,
        incarnation: u64,
    ) -> Arc<Session> {
        let session = Arc::new(Session::new(binding, inbox, capacity, incarnation));
        self.0.sessions.insert(stream, session.clone());
        session
    }

    /// Starts a channel actor under the node's `channels` supervisor, which
    /// restarts it as its policy says and starts it again if the
    /// supervisor itself is restarted.
    pub async fn start_channel(&self, spec: ChildSpec) -> Result<(), String> {
        let name = format!("{}channels", self.0.prefix);
        let supervisor: ActorRef<SupervisorMsg> = ractor::registry::where_is(name)
            .ok_or("the channels supervisor is not running")?
            .into();
        lock(&self.0.channel_specs).push(spec.clone());
        let started = ractor::call_t!(supervisor, SupervisorMsg::StartChild, 5_000, spec.clone())
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        if started.is_err() {
            lock(&self.0.channel_specs).retain(|s| s.name != spec.name);
        }
        started
    }
}

impl std::fmt::Debug for NodeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeLink").field(&self.0.id).finish()
    }
}

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    shared: Arc<Shared>,
    /// Prefix of every actor name in this node's tree (`id#instance/`).
    prefix: String,
    root: ActorRef<SupervisorMsg>,
    join: JoinHandle<()>,
    pump: JoinHandle<()>,
}

impl Node {
    /// The node's id.
    pub fn id(&self) -> &NodeId {
        &self.shared.id
    }

    /// The node's role.
    pub fn role(&self) -> Role {
        self.shared.role
    }

    /// The transport of `kind`, if bound and running.
    pub fn transport(&self, kind: PathKind) -> Option<Arc<dyn Transport>> {
        self.shared.transports.get(&kind).map(|t| t.value().clone())
    }

    /// Where the transport of `kind` listens, for transports with an address.
    pub fn listen_addr(&self, kind: PathKind) -> Option<std::net::SocketAddr> {
        self.transport(kind).and_then(|t| t.listen_addr())
    }

    /// Sends `frame` on `path` (the path a route update named).
    pub fn send(&self, path: &PathId, frame: Frame) -> Result<(), crate::transports::SendError> {
        match self.transport(path.kind) {
            Some(t) => t.send(&path.peer, frame),
            None => Err(crate::transports::SendError::NoPath {
                peer: path.peer.clone(),
                kind: path.kind,
                frame: Box::new(frame),
            }),
        }
    }

    /// A cloneable handle that sends frames through this node's transports,
    /// for actors that outlive any borrow of the [`Node`] (channels).
    pub fn link(&self) -> NodeLink {
        NodeLink(self.shared.clone())
    }

    /// Binds `stream` to `binding` and routes its admitted frames to
    /// `inbox` (replacing any previous session of the stream); see
    /// [`Session`]. Returns the session, whose credit and incarnation the
    /// channel reads.
    pub fn bind_stream(
        &self,
        stream: StreamId,
        binding: Binding,
        inbox: Arc<dyn Inbox>,
        capacity: usize,
        incarnation: u64,
    ) -> Arc<Session> {
        self.link()
            .bind_stream(stream, binding, inbox, capacity, incarnation)
    }

    /// Unbinds `stream`: its frames are refused from now on.
    pub fn unbind_stream(&self, stream: &StreamId) {
        self.shared.sessions.remove(stream);
    }

    /// The session of `stream`, if bound.
    pub fn session(&self, stream: &StreamId) -> Option<Arc<Session>> {
        self.shared.sessions.get(stream).map(|s| s.value().clone())
    }

    /// Registers a stream with the routing authority. `listener` is told of
    /// every decision about it; the answer is the route right after
    /// registration.
    pub async fn register_stream(
        &self,
        stream: StreamId,
        need: Need,
        listener: impl Fn(RouteUpdate) + Send + Sync + 'static,
    ) -> Result<Option<Route>, NodeError> {
        let routing = self.shared.routing().ok_or(NodeError::RoutingUnavailable)?;
        let listener: RouteListener = Arc::new(listener);
        let answer = ractor::call_t!(
            routing,
            |reply| RoutingMsg::Register {
                stream,
                need,
                listener,
                reply
            },
            5_000
        )
        .map_err(|_| NodeError::RoutingUnavailable)?;
        Ok(answer?)
    }

    /// Explains the current route of `stream`, with the peers whose frames
    /// its session refused as not bound ([`Explanation::refused`]).
    pub async fn explain(&self, stream: &StreamId) -> Result<Option<Explanation>, NodeError> {
        let routing = self.shared.routing().ok_or(NodeError::RoutingUnavailable)?;
        let id = stream.clone();
        let mut e = ractor::call_t!(routing, RoutingMsg::Explain, 5_000, id)
            .map_err(|_| NodeError::RoutingUnavailable)?;
        if let (Some(e), Some(session)) = (e.as_mut(), self.session(stream)) {
            e.refused = session.refused_peers();
        }
        Ok(e)
    }

    /// Advertises the capabilities `node` serves, for capability targets.
    pub fn set_capabilities(&self, node: NodeId, caps: Vec<String>) {
        self.shared.cast(RoutingMsg::SetCapabilities(node, caps));
    }

    /// Subscribes to every routing decision this node makes.
    pub fn decisions(&self) -> broadcast::Receiver<Decision> {
        self.shared.decisions.subscribe()
    }

    /// Data frames refused so far because their stream is not served here.
    pub fn refused_unknown_stream(&self) -> u64 {
        self.refused(codes::NOT_READY)
    }

    /// Frames the stream dispatch refused so far with `code`.
    pub fn refused(&self, code: u16) -> u64 {
        self.shared.refusals.get(&code).map_or(0, |n| *n)
    }

    /// Every refusal count of the stream dispatch, by code.
    pub fn refusals(&self) -> BTreeMap<u16, u64> {
        self.shared
            .refusals
            .iter()
            .map(|e| (*e.key(), *e.value()))
            .collect()
    }

    /// An actor of this node's tree by its name within the node:
    /// `routing`, `transports`, `channels`, `transport/quic`,
    /// `command-sender/<stream>`, `command-server/<stream>`, …
    pub fn actor(&self, name: &str) -> Option<ractor::ActorCell> {
        ractor::registry::where_is(format!("{}{name}", self.prefix))
    }

    /// The registered (process-wide) name of the actor called `name` within
    /// this node's tree; [`Node::actor`] finds it again by `name`.
    pub(crate) fn scoped_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The routing authority running now (a restart replaces it).
    pub fn routing_authority(&self) -> Option<ActorRef<RoutingMsg>> {
        self.shared.routing()
    }

    /// The top supervisor, for starting channel actors and inspecting the tree.
    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.root
    }

    /// Whether the actor tree is still running (false after an escalation
    /// reached the top).
    pub fn is_running(&self) -> bool {
        !self.join.is_finished()
    }

    /// Stops the tree (children first), closes every transport and the
    /// event pump, and returns when all of it has stopped.
    pub async fn shutdown(self) {
        self.root.stop(Some("shutdown".into()));
        // The join handle only errors if the actor task panicked, which the
        // runtime already reported.
        let _ = self.join.await;
        self.pump.abort();
        let _ = self.pump.await;
    }
}

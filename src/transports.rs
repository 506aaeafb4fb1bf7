//! Transports: adapters that move opaque frames between nodes and report
//! facts about the paths they carry.
//!
//! Owns the transport contract ([`Transport`], [`TransportEvent`], [`Fact`])
//! and its implementations: [`memory`] (in-process, seeded faults),
//! [`quic`] (direct, mutual TLS), [`relay`] (through the root) and
//! [`webrtc`] (data channels, signalled through the root) and [`sidecar`]
//! (the relay over a sidecar process's local session).
//!
//! Must not touch: channel semantics (acks, outbox, dedupe, cursors), the
//! store, or routing decisions. A transport never chooses a path; it reports
//! up, down, RTT, loss, queue depth and incidents, and the routing authority
//! decides. Adding a transport is one module plus one registration.
//!
//! Message flow:
//! - a channel sends a [`Frame`] with [`Transport::send`] on the path the
//!   routing authority told it to use;
//! - the transport delivers received frames and facts on the [`EventSink`]
//!   it was built with: frames go straight from its receive task to the
//!   node's stream dispatch (a [`FrameSink`]), facts through a bounded
//!   queue to the routing authority.

pub mod memory;
pub mod probe;
pub mod quic;
pub mod relay;
pub mod sidecar;
pub mod webrtc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::vocab::{NodeId, PathId, PathKind};
use crate::wire::Frame;

/// Takes a transport's received frames on the transport's own receive
/// task, without a queue in between (the node's stream dispatch implements
/// it). It must not block: it checks the frame and hands it to a bounded
/// inbox, or refuses it.
pub trait FrameSink: Send + Sync + 'static {
    /// A frame arrived on `path`.
    fn frame(&self, path: &PathId, frame: Frame);
}

/// The event sink was closed: the node (or test) that read it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event sink is closed")]
pub struct SinkClosed;

/// Where a transport delivers what it receives: facts go into a bounded
/// queue (a slow consumer slows the transport's receive loop instead of
/// growing memory), frames go straight to a [`FrameSink`] when one is set,
/// else into the same queue.
#[derive(Clone)]
pub struct EventSink {
    facts: mpsc::Sender<TransportEvent>,
    frames: Option<Arc<dyn FrameSink>>,
}

impl EventSink {
    /// A sink that queues everything, frames included, on `facts`.
    pub fn new(facts: mpsc::Sender<TransportEvent>) -> Self {
        Self {
            facts,
            frames: None,
        }
    }

    /// A sink that queues facts on `facts` and hands frames to `frames`
    /// synchronously.
    pub fn with_frames(facts: mpsc::Sender<TransportEvent>, frames: Arc<dyn FrameSink>) -> Self {
        Self {
            facts,
            frames: Some(frames),
        }
    }

    /// Delivers one event: a frame to the frame sink at once (if set),
    /// anything else into the queue, waiting for room.
    pub async fn send(&self, event: TransportEvent) -> Result<(), SinkClosed> {
        match (event.fact, &self.frames) {
            (Fact::Frame(frame), Some(sink)) => {
                sink.frame(&event.path, frame);
                Ok(())
            }
            (fact, _) => self
                .facts
                .send(TransportEvent {
                    path: event.path,
                    fact,
                })
                .await
                .map_err(|_| SinkClosed),
        }
    }

    /// Whether the reader of the queue is gone.
    pub fn is_closed(&self) -> bool {
        self.facts.is_closed()
    }

    /// The fact queue and the frame sink, so a wrapper (the application's
    /// metering) can build a sink that observes both and passes them on.
    pub fn parts(&self) -> (mpsc::Sender<TransportEvent>, Option<Arc<dyn FrameSink>>) {
        (self.facts.clone(), self.frames.clone())
    }
}

impl From<mpsc::Sender<TransportEvent>> for EventSink {
    fn from(facts: mpsc::Sender<TransportEvent>) -> Self {
        Self::new(facts)
    }
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("direct_frames", &self.frames.is_some())
            .finish()
    }
}

/// How to reach a peer: its identity and, for transports that dial an
/// address, where to dial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    /// The peer's node id (checked against its credentials where the
    /// transport authenticates).
    pub node: NodeId,
    /// The socket address to dial, for address-based transports.
    pub addr: Option<SocketAddr>,
}

impl PeerAddr {
    /// A peer reachable by identity alone (memory, relay).
    pub fn node(node: impl Into<NodeId>) -> Self {
        Self {
            node: node.into(),
            addr: None,
        }
    }

    /// A peer at a socket address.
    pub fn at(node: impl Into<NodeId>, addr: SocketAddr) -> Self {
        Self {
            node: node.into(),
            addr: Some(addr),
        }
    }
}

/// Why a path went down.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DownCause {
    /// No liveness evidence within the transport's timeout.
    Timeout,
    /// The connection was reset.
    Reset,
    /// The peer closed with a code.
    ClosedByPeer {
        /// The close code (see `docs/wire.md`).
        code: u32,
        /// The peer's reason text.
        reason: String,
    },
    /// This node closed it.
    ClosedLocally,
    /// The TLS handshake or certificate check failed.
    Tls(String),
    /// The peer could not be reached at all.
    Unreachable(String),
}

impl std::fmt::Display for DownCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownCause::Timeout => f.write_str("timeout"),
            DownCause::Reset => f.write_str("reset"),
            DownCause::ClosedByPeer { code, reason } => {
                write!(f, "closed by peer (code {code:#x}: {reason})")
            }
            DownCause::ClosedLocally => f.write_str("closed locally"),
            DownCause::Tls(e) => write!(f, "tls: {e}"),
            DownCause::Unreachable(e) => write!(f, "unreachable: {e}"),
        }
    }
}

/// A fact a transport reports about one path.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Fact {
    /// The path is open and usable.
    Up,
    /// The path is gone.
    Down(DownCause),
    /// The path stayed up but now runs over a new connection to the peer
    /// (the peer reconnected, perhaps after a restart). Frames handed to
    /// the old connection shortly before may never have arrived: whoever
    /// keeps state about frames in flight towards the peer (a sender's
    /// window, a relay's dedupe table) should not count on them.
    Renewed,
    /// A frame arrived on the path.
    Frame(Frame),
    /// A liveness probe was answered after `rtt`.
    ProbeAnswered {
        /// The measured round trip.
        rtt: Duration,
    },
    /// A liveness probe was not answered in time.
    ProbeMissed,
    /// A round-trip sample from the transport's own estimator.
    Rtt(Duration),
    /// Loss counters since the path opened.
    Loss {
        /// Packets or frames lost.
        lost: u64,
        /// Packets or frames sent.
        sent: u64,
    },
    /// Frames and bytes queued for sending on the path.
    QueueDepth {
        /// Frames waiting.
        frames: usize,
        /// Bytes waiting.
        bytes: usize,
    },
    /// Something went wrong that the routing authority should know about
    /// (a refused frame, a protocol violation), though the path may live on.
    Incident(String),
}

/// One fact about one path, as delivered to the node.
#[derive(Clone, Debug)]
pub struct TransportEvent {
    /// The path the fact is about.
    pub path: PathId,
    /// The fact.
    pub fact: Fact,
}

/// Why a frame could not be queued. The frame is handed back so the caller
/// (a channel with an outbox) loses nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// There is no open path to the peer on this transport.
    #[error("no open {kind} path to {peer}")]
    NoPath {
        /// The peer.
        peer: NodeId,
        /// This transport's kind.
        kind: PathKind,
        /// The frame, unsent.
        frame: Box<Frame>,
    },
    /// The path's send queue is over its budget.
    #[error("{kind} send queue to {peer} is full")]
    Full {
        /// The peer.
        peer: NodeId,
        /// This transport's kind.
        kind: PathKind,
        /// The frame, unsent.
        frame: Box<Frame>,
    },
    /// The frame could not be encoded (for example it is over the size limit).
    #[error("frame refused by the codec: {0}")]
    Encode(String),
}

impl SendError {
    /// The unsent frame, if the error kept it.
    pub fn into_frame(self) -> Option<Frame> {
        match self {
            SendError::NoPath { frame, .. } | SendError::Full { frame, .. } => Some(*frame),
            SendError::Encode(_) => None,
        }
    }
}

/// Why a path could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The peer is not known to this transport or not reachable.
    #[error("peer {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    /// The transport needs an address and none was given.
    #[error("no address to dial {0}")]
    NoAddress(NodeId),
    /// The peer was reached but refused or failed authentication.
    #[error("peer {0} refused: {1}")]
    Refused(NodeId, String),
    /// The transport has been shut down.
    #[error("transport is shut down")]
    Shutdown,
}

/// The contract every transport implements.
///
/// A transport carries opaque frames and reports facts; it never decides
/// which path a stream uses. Implementations are cheap to share (`Arc`), and
/// [`Transport::send`] never blocks: it queues or refuses.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The kind of path this transport provides.
    fn kind(&self) -> PathKind;

    /// This node's identity on the transport.
    fn local(&self) -> &NodeId;

    /// The socket address peers can dial, for address-based transports.
    fn listen_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// Opens a path to `peer` (or confirms one is open). `Fact::Up` is
    /// reported when the path opens, whoever opened it.
    async fn connect(&self, peer: &PeerAddr) -> Result<(), ConnectError>;

    /// Queues `frame` for `peer`. Never blocks; a refused frame is handed
    /// back inside the error.
    fn send(&self, peer: &NodeId, frame: Frame) -> Result<(), SendError>;

    /// Closes the path to `peer` with a code, reporting `Fact::Down`.
    async fn close(&self, peer: &NodeId, code: u32, reason: &str);

    /// Closes every path and stops the transport's tasks.
    async fn shutdown(&self);
}

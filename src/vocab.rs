//! Shared vocabulary: node identities, roles, stream ids, path kinds, channel
//! kinds and traffic classes.
//!
//! Owns only plain value types that every layer names. It holds no logic
//! beyond parsing and formatting, and imports nothing else from the crate,
//! so `transports/`, `routing/` and `channels/` can all depend on it without
//! depending on each other.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The identity of a node (hub, root, member, sidecar or browser).
///
/// Cheap to clone: the name is shared. On an authenticated transport the
/// identity comes from the peer's verified certificate, never from a frame.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Creates a node id from its name.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self(Arc::from(name.as_ref()))
    }

    /// The node's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// The role a node plays in a topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// Owns local runtime state, storage and business semantics.
    Hub,
    /// Owns admission, trust issuance, relay and rendezvous.
    Root,
    /// Another runtime node admitted to a hub.
    Member,
    /// A separate process owning remote socket lifecycle for a hub.
    Sidecar,
    /// An external WebRTC/HTTP peer.
    Browser,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Hub => "hub",
            Role::Root => "root",
            Role::Member => "member",
            Role::Sidecar => "sidecar",
            Role::Browser => "browser",
        })
    }
}

/// One way of reaching a peer. A stream's policy orders these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PathKind {
    /// A WebRTC data channel between the two peers.
    WebrtcData,
    /// WebRTC media terminated by the two peers.
    WebrtcMedia,
    /// Direct QUIC between the two nodes.
    Quic,
    /// QUIC to the root, forwarded by the root to the peer.
    Relay,
    /// Through a local sidecar process that owns the remote socket.
    Sidecar,
}

impl PathKind {
    /// Every path kind, in declaration order.
    pub const ALL: [PathKind; 5] = [
        PathKind::WebrtcData,
        PathKind::WebrtcMedia,
        PathKind::Quic,
        PathKind::Relay,
        PathKind::Sidecar,
    ];

    /// Whether the path reaches the peer without an intermediary node.
    pub fn is_direct(self) -> bool {
        !matches!(self, PathKind::Relay)
    }

    /// The name used in logs, configuration and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::WebrtcData => "webrtc-data",
            PathKind::WebrtcMedia => "webrtc-media",
            PathKind::Quic => "quic",
            PathKind::Relay => "relay",
            PathKind::Sidecar => "sidecar",
        }
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One concrete path: a kind of path towards one peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PathId {
    /// The node at the other end.
    pub peer: NodeId,
    /// How it is reached.
    pub kind: PathKind,
}

impl PathId {
    /// Creates a path id.
    pub fn new(peer: impl Into<NodeId>, kind: PathKind) -> Self {
        Self {
            peer: peer.into(),
            kind,
        }
    }
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.kind, self.peer)
    }
}

/// The kind of logical channel a stream belongs to; selects its policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChannelKind {
    /// Commands with acks, outbox and idempotency.
    Command,
    /// Cursor-ordered document sync.
    Sync,
    /// Loss-tolerant media.
    Media,
    /// Events (duplicate ids ignored).
    Event,
    /// Presence (may drop).
    Presence,
}

impl ChannelKind {
    /// The name used in stream ids and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Command => "command",
            ChannelKind::Sync => "sync",
            ChannelKind::Media => "media",
            ChannelKind::Event => "event",
            ChannelKind::Presence => "presence",
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of one logical stream, e.g. `command:hub-1/member-7`.
///
/// Cheap to clone. The text is the identity; [`StreamId::between`] builds the
/// conventional form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// Creates a stream id from its text.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The conventional id `kind:owner/peer[/name]` of a stream of `kind`
    /// between `owner` and `peer`.
    pub fn between(kind: ChannelKind, owner: &NodeId, peer: &NodeId, name: Option<&str>) -> Self {
        match name {
            Some(n) => Self::new(format!("{kind}:{owner}/{peer}/{n}")),
            None => Self::new(format!("{kind}:{owner}/{peer}")),
        }
    }

    /// The stream id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for StreamId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// Traffic classes sharing one connection. Control never waits behind bulk.
///
/// The numeric value is the class's code on the wire and its priority
/// order: lower is more urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
#[non_exhaustive]
pub enum TrafficClass {
    /// Highest priority, ack required, never dropped.
    Control = 0,
    /// Media control (signalling, tier changes).
    MediaControl = 1,
    /// Relayed route traffic; backpressures its producer.
    Route = 2,
    /// Sync updates; oldest non-critical dropped over budget.
    Sync = 3,
    /// Integration traffic; buffered, then oldest dropped.
    Integration = 4,
}

impl TrafficClass {
    /// Every class, most urgent first.
    pub const ALL: [TrafficClass; 5] = [
        TrafficClass::Control,
        TrafficClass::MediaControl,
        TrafficClass::Route,
        TrafficClass::Sync,
        TrafficClass::Integration,
    ];

    /// The class's wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The class for a wire code, if known.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(code as usize).copied()
    }
}

/// The delivery class of one message (`docs/channels.md`): what the
/// channel promises when paths fail. Separate from the [`TrafficClass`],
/// which says how urgent the frame is on a shared connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum DeliveryClass {
    /// Must not lose: durable outbox, acked, resent until answered, deduped.
    A = 0,
    /// Nice to replay: a bounded in-memory replay window, resent on a route
    /// change while in it; lost on a restart.
    B = 1,
    /// Drop allowed: sent once, never stored nor resent.
    C = 2,
}

impl DeliveryClass {
    /// The class's wire code (`Data.delivery`).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The class for a wire code, if known.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::A),
            1 => Some(Self::B),
            2 => Some(Self::C),
            _ => None,
        }
    }
}

//! The frame types: what one envelope on the wire can say.
//!
//! Owns the shape of every frame kind and its wire code. Encoding and
//! decoding live in [`super::codec`]; meaning (acks, dedupe, routing) lives in
//! the layers above, which read these fields but never change the format.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::vocab::{NodeId, Role, StreamId};

/// The protocol version this build speaks (header byte 4 of every frame).
pub const PROTOCOL_VERSION: u8 = 2;

/// The wire code of each frame kind (header byte 5 of every frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameKind {
    /// [`Hello`]: who is speaking, sent first on every connection.
    Hello = 1,
    /// [`Probe`]: liveness probe.
    Probe = 2,
    /// [`ProbeAck`]: the answer to a probe.
    ProbeAck = 3,
    /// [`Data`]: one message of a logical stream.
    Data = 4,
    /// [`Ack`]: acknowledgement of a data frame.
    Ack = 5,
    /// [`Reject`]: a refusal with a reason code.
    Reject = 6,
    /// [`Close`]: the sender is closing the connection or path.
    Close = 7,
    /// [`Relay`]: an encoded inner frame forwarded through the root.
    Relay = 8,
    /// [`RelayRefused`]: the root will not forward to a destination.
    RelayRefused = 9,
    /// [`Register`]: rendezvous — the sender's direct addresses and capabilities.
    Register = 10,
    /// [`Lookup`]: rendezvous — how to reach a node or a capability.
    Lookup = 11,
    /// [`LookupReply`]: rendezvous — the answer to a [`Lookup`].
    LookupReply = 12,
    /// [`Signal`]: rendezvous — an opaque signalling message (e.g. WebRTC).
    Signal = 13,
    /// [`JoinRequest`]: admission — a join token and a public key.
    JoinRequest = 14,
    /// [`JoinGranted`]: admission — the issued certificate.
    JoinGranted = 15,
    /// [`JoinRefused`]: admission — a typed refusal.
    JoinRefused = 16,
}

impl FrameKind {
    /// Every kind, in code order.
    pub const ALL: [FrameKind; 16] = [
        FrameKind::Hello,
        FrameKind::Probe,
        FrameKind::ProbeAck,
        FrameKind::Data,
        FrameKind::Ack,
        FrameKind::Reject,
        FrameKind::Close,
        FrameKind::Relay,
        FrameKind::RelayRefused,
        FrameKind::Register,
        FrameKind::Lookup,
        FrameKind::LookupReply,
        FrameKind::Signal,
        FrameKind::JoinRequest,
        FrameKind::JoinGranted,
        FrameKind::JoinRefused,
    ];

    /// The kind for a wire code, if known.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| *k as u8 == code)
    }
}

/// Sent first by each side of a connection: names the speaker and its role.
///
/// On an authenticated transport the receiver checks `node` against the
/// identity in the peer's certificate; a mismatch is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's node id.
    pub node: NodeId,
    /// The sender's role.
    pub role: Role,
    /// Bit set of optional features the sender supports (none defined yet: 0).
    pub features: u64,
    /// An admission token, when the sender is joining (root admission).
    pub token: Option<String>,
}

/// A liveness probe; the receiver answers with a [`ProbeAck`] echoing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// Chosen by the sender to match the answer.
    pub nonce: u64,
    /// The sender's clock when sent, in microseconds since its own epoch;
    /// only the sender interprets it.
    pub sent_at_us: u64,
}

/// The answer to a [`Probe`], echoing its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeAck {
    /// The probe's nonce.
    pub nonce: u64,
    /// The probe's `sent_at_us`, unchanged.
    pub sent_at_us: u64,
}

/// One message of a logical stream. The payload is opaque to every layer
/// below the channel that owns the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    /// The logical stream.
    pub stream: StreamId,
    /// The sending channel's incarnation: a fresh value whenever the sender
    /// starts a new sequence and message-id space (a new store). Replies
    /// echo the incarnation of the message they answer.
    pub incarnation: u64,
    /// Per-stream sequence number assigned by the sender's channel.
    pub seq: u64,
    /// The message's id, unique within the stream; the dedupe key.
    pub message_id: u64,
    /// The traffic class, as its wire code (see [`crate::vocab::TrafficClass`]).
    pub class: u8,
    /// The delivery class: 0 = A (must not lose), 1 = B (nice to replay),
    /// 2 = C (drop allowed); see [`crate::vocab::DeliveryClass`].
    pub delivery: u8,
    /// The channel's payload.
    pub payload: Bytes,
}

/// Acknowledges a [`Data`] frame of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The stream of the acknowledged frame.
    pub stream: StreamId,
    /// The acknowledged frame's incarnation (echoed).
    pub incarnation: u64,
    /// The acknowledged frame's sequence number.
    pub seq: u64,
    /// The acknowledged frame's message id.
    pub message_id: u64,
    /// The receiver's credit: how many more frames of this stream it can
    /// take into its inbox now. The sender keeps no more than this many
    /// frames in flight beyond the acknowledged one.
    pub credit: u32,
}

/// A refusal: the sender will not process something the receiver sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// The stream concerned, if the refusal is about one stream.
    pub stream: Option<StreamId>,
    /// The message concerned, if the refusal is about one message.
    pub message_id: Option<u64>,
    /// The reason code (see `docs/wire.md`).
    pub code: u16,
    /// A human-readable explanation.
    pub reason: String,
}

/// The sender is closing; the receiver should not expect more frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    /// The close code (see `docs/wire.md`).
    pub code: u32,
    /// A human-readable explanation.
    pub reason: String,
}

/// A frame forwarded through the root (`docs/root.md` §3).
///
/// The sender sets `to`; the root overwrites `from` with the identity of
/// the sender's verified certificate before forwarding, so a receiver can
/// trust `from` as far as it trusts the root. `frame` is one complete
/// encoded frame (prefix included) that the root does not interpret, apart
/// from reading the envelope of an inner `Data` frame for dedupe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    /// The destination node.
    pub to: NodeId,
    /// The origin node (set by the root).
    pub from: NodeId,
    /// One encoded inner frame.
    pub frame: Bytes,
}

/// The root refuses to forward to `to` (not admitted, offline, revoked,
/// over budget); `code` is one of `docs/wire.md` §7.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRefused {
    /// The destination that was refused.
    pub to: NodeId,
    /// The reason code.
    pub code: u16,
    /// A human-readable explanation.
    pub reason: String,
}

/// Rendezvous: the sender registers the direct addresses it can be dialled
/// at (`host:port` strings) and the capabilities it serves, replacing any
/// earlier registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// Direct addresses, e.g. `"192.0.2.7:4433"`.
    pub addrs: Vec<String>,
    /// Capability names served by the sender.
    pub capabilities: Vec<String>,
}

/// Rendezvous: asks the root how to reach `node`, or which online node
/// serves `capability` (exactly one of the two is set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    /// Chosen by the asker to match the reply.
    pub request_id: u64,
    /// The node asked about.
    pub node: Option<NodeId>,
    /// The capability asked about.
    pub capability: Option<String>,
}

/// Rendezvous: the answer to a [`Lookup`]. `code` 0 means found (`node`,
/// `addrs` and `capabilities` describe an admitted, online node); any other
/// code is a refusal from `docs/wire.md` §7 and the other fields are empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupReply {
    /// The [`Lookup`]'s `request_id`.
    pub request_id: u64,
    /// 0 when found, else a refusal code.
    pub code: u16,
    /// The node found.
    pub node: Option<NodeId>,
    /// Its registered direct addresses.
    pub addrs: Vec<String>,
    /// Its registered capabilities.
    pub capabilities: Vec<String>,
}

/// Rendezvous: an opaque signalling message between two admitted nodes,
/// forwarded by the root like [`Relay`] (`from` set by the root). `kind`
/// names the signalling protocol message, e.g. `"webrtc/offer"`,
/// `"webrtc/answer"`, `"webrtc/candidate"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// The destination node.
    pub to: NodeId,
    /// The origin node (set by the root).
    pub from: NodeId,
    /// The signalling message kind.
    pub kind: String,
    /// The signalling payload (opaque to the root).
    pub payload: Bytes,
}

/// Admission: sent by a joining node on the join ALPN. `public_key` is the
/// DER SubjectPublicKeyInfo of the key the certificate is to bind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token's string form.
    pub token: String,
    /// The node id the token was issued for.
    pub node: NodeId,
    /// The role the token was issued for.
    pub role: Role,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Bytes,
}

/// Admission: the node certificate issued for a [`JoinRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinGranted {
    /// The node certificate (DER).
    pub cert: Bytes,
    /// The root CA certificate (DER).
    pub ca: Bytes,
    /// When the certificate expires, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Admission: the [`JoinRequest`] was refused; `code` from `docs/wire.md` §7.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRefused {
    /// The reason code.
    pub code: u16,
    /// A human-readable explanation.
    pub reason: String,
}

/// Every frame that can be on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Probe`].
    Probe(Probe),
    /// See [`ProbeAck`].
    ProbeAck(ProbeAck),
    /// See [`Data`].
    Data(Data),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Reject`].
    Reject(Reject),
    /// See [`Close`].
    Close(Close),
    /// See [`Relay`].
    Relay(Relay),
    /// See [`RelayRefused`].
    RelayRefused(RelayRefused),
    /// See [`Register`].
    Register(Register),
    /// See [`Lookup`].
    Lookup(Lookup),
    /// See [`LookupReply`].
    LookupReply(LookupReply),
    /// See [`Signal`].
    Signal(Signal),
    /// See [`JoinRequest`].
    JoinRequest(JoinRequest),
    /// See [`JoinGranted`].
    JoinGranted(JoinGranted),
    /// See [`JoinRefused`].
    JoinRefused(JoinRefused),
}

impl Frame {
    /// The frame's kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::Probe(_) => FrameKind::Probe,
            Frame::ProbeAck(_) => FrameKind::ProbeAck,
            Frame::Data(_) => FrameKind::Data,
            Frame::Ack(_) => FrameKind::Ack,
            Frame::Reject(_) => FrameKind::Reject,
            Frame::Close(_) => FrameKind::Close,
            Frame::Relay(_) => FrameKind::Relay,
            Frame::RelayRefused(_) => FrameKind::RelayRefused,
            Frame::Register(_) => FrameKind::Register,
            Frame::Lookup(_) => FrameKind::Lookup,
            Frame::LookupReply(_) => FrameKind::LookupReply,
            Frame::Signal(_) => FrameKind::Signal,
            Frame::JoinRequest(_) => FrameKind::JoinRequest,
            Frame::JoinGranted(_) => FrameKind::JoinGranted,
            Frame::JoinRefused(_) => FrameKind::JoinRefused,
        }
    }
}

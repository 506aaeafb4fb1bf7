//! The frame types: what one envelope on the wire can say.
//!
//! Owns the shape of every frame kind and its wire code. Encoding and
//! decoding live in [`super::codec`]; meaning (acks, dedupe, routing) lives in
//! the layers above, which read these fields but never change the format.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::vocab::{NodeId, Role, StreamId};

/// The protocol version this build speaks (header byte 4 of every frame).
pub const PROTOCOL_VERSION: u8 = 1;

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
}

impl FrameKind {
    /// Every kind, in code order.
    pub const ALL: [FrameKind; 7] = [
        FrameKind::Hello,
        FrameKind::Probe,
        FrameKind::ProbeAck,
        FrameKind::Data,
        FrameKind::Ack,
        FrameKind::Reject,
        FrameKind::Close,
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
    /// Per-stream sequence number assigned by the sender's channel.
    pub seq: u64,
    /// The message's id, unique within the stream; the dedupe key.
    pub message_id: u64,
    /// The traffic class, as its wire code (see [`crate::vocab::TrafficClass`]).
    pub class: u8,
    /// The channel's payload.
    pub payload: Bytes,
}

/// Acknowledges a [`Data`] frame of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The stream of the acknowledged frame.
    pub stream: StreamId,
    /// The acknowledged frame's sequence number.
    pub seq: u64,
    /// The acknowledged frame's message id.
    pub message_id: u64,
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
        }
    }
}

//! The command channel's payloads: the [`Envelope`] every command-channel
//! `Data` frame carries, and the [`ReplyBody`] of a reply
//! (`docs/channels.md` and `docs/wire.md` give their exact encoding).

use serde::{Deserialize, Serialize};

use crate::vocab::StreamId;

/// Reject code: a command channel could not decode a data frame's payload
/// (defined in [`crate::wire::codes::channels`]).
pub use crate::wire::codes::channels::UNDECODABLE as REJECT_UNDECODABLE;

/// What an envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvelopeKind {
    /// A command for the handler.
    Command,
    /// The answer to a command or a cancel.
    Reply,
    /// Cancel a not-replayable command whose outcome is unknown.
    Cancel,
}

/// The MessagePack payload of every command-channel [`Data`](crate::wire::Data) frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Command, reply or cancel.
    pub kind: EnvelopeKind,
    /// The message id (assigned by the sender's store).
    pub message_id: u64,
    /// The stream.
    pub stream_id: StreamId,
    /// Wall-clock issue time, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// Time to live in ms; 0 means none.
    pub ttl_ms: u64,
    /// The sender's authority epoch for the stream.
    pub authority_epoch: u64,
    /// The caller's operation key, if any.
    pub operation_key: Option<String>,
    /// The encoded command, or the encoded [`ReplyBody`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl Envelope {
    /// Encodes with rmp-serde.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain structs into a Vec cannot fail.
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    /// Decodes with rmp-serde.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// The outcome a reply envelope carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyBody {
    /// The handler's encoded reply.
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The handler's error.
    Handler(String),
    /// Expired before it was applied.
    Expired,
    /// Refused without applying.
    Rejected(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let env = Envelope {
            kind: EnvelopeKind::Command,
            message_id: 7,
            stream_id: StreamId::new("command:a/b"),
            issued_at_ms: 1,
            ttl_ms: 2,
            authority_epoch: 3,
            operation_key: Some("k".into()),
            body: vec![1, 2, 3],
        };
        assert_eq!(Envelope::decode(&env.encode()), Ok(env));
        assert!(Envelope::decode(&[0xc1, 0xff]).is_err());
    }
}

//! The sync channel's wire messages ([`SyncMsg`]), refusal codes
//! ([`RefuseCode`]), cursors ([`Cursor`]) and the stream naming rule.
//!
//! Owns the byte layout documented in `docs/sync.md`: every message is the
//! MessagePack (rmp-serde, compact form) encoding of one [`SyncMsg`],
//! carried as the payload of a `Data` frame on the stream
//! `sync:<owner>/<subscriber>/<doc>`. Decoding is total: any input either
//! decodes or yields a [`WireError`].

use crate::wire::codes::sync as codes;
use serde::{Deserialize, Serialize};

use crate::vocab::StreamId;

/// A position in an owner's log: the log's epoch and the sequence number
/// of the last update included. Epoch 0 means "nothing applied yet".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Cursor {
    /// The owner's log epoch (changes when the log is reset; never 0 for a
    /// real log).
    pub epoch: u64,
    /// The sequence number in that epoch (from 1, no gaps).
    pub seq: u64,
}

impl Cursor {
    /// The cursor of a subscriber that has applied nothing.
    pub const NONE: Cursor = Cursor { epoch: 0, seq: 0 };

    /// A cursor.
    pub fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

/// Why a sync peer refused something. The codes are defined in
/// [`crate::wire::codes::sync`] (`docs/wire.md`, `0x0320..=0x032f`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum RefuseCode {
    /// The owner does not serve this document.
    UnknownDocument = codes::UNKNOWN_DOCUMENT,
    /// The presented cursor is ahead of the owner's log.
    CursorFromFuture = codes::CURSOR_FROM_FUTURE,
    /// The presented cursor belongs to another epoch of the log.
    WrongEpoch = codes::WRONG_EPOCH,
    /// An update or snapshot is larger than the configured limit.
    Oversized = codes::OVERSIZED,
    /// The document could not apply an update.
    UndecodableUpdate = codes::UNDECODABLE_UPDATE,
    /// The document could not load a snapshot.
    CorruptSnapshot = codes::CORRUPT_SNAPSHOT,
    /// The sender is not this document's owner (one provider per document).
    NotOwner = codes::NOT_OWNER,
    /// The peer is not admitted to this document (or may not publish).
    NotAdmitted = codes::NOT_ADMITTED,
    /// A message that could not be decoded at all.
    Malformed = codes::MALFORMED,
}

impl RefuseCode {
    /// Every code, for docs and tests.
    pub const ALL: [RefuseCode; 9] = [
        RefuseCode::UnknownDocument,
        RefuseCode::CursorFromFuture,
        RefuseCode::WrongEpoch,
        RefuseCode::Oversized,
        RefuseCode::UndecodableUpdate,
        RefuseCode::CorruptSnapshot,
        RefuseCode::NotOwner,
        RefuseCode::NotAdmitted,
        RefuseCode::Malformed,
    ];

    /// The wire value.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code for a wire value, if known.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// One sync message; see `docs/sync.md` for who sends which and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMsg {
    /// Subscriber → owner: attach (or re-attach) to `doc`, presenting the
    /// last applied cursor.
    Subscribe {
        /// The document's id.
        doc: String,
        /// The subscriber's last durable cursor ([`Cursor::NONE`] if none).
        cursor: Cursor,
    },
    /// Owner → subscriber: one log entry.
    Update {
        /// Its cursor.
        cursor: Cursor,
        /// Who published it.
        publisher: String,
        /// The publisher's id of it.
        update_id: u64,
        /// The opaque update.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Subscriber → owner: an update to sequence.
    Publish {
        /// The publisher's id (per stream, from 1, in order).
        update_id: u64,
        /// The opaque update.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Owner → subscriber: every publish with an id `<= through` is settled
    /// (durably in the log, or refused).
    PublishAck {
        /// The highest settled update id of this publisher.
        through: u64,
    },
    /// Owner → subscriber: one chunk of a snapshot whose state is the log
    /// up to `cursor`; updates after it follow as [`SyncMsg::Update`].
    Snapshot {
        /// The last update the snapshot contains.
        cursor: Cursor,
        /// The recipient's highest update id contained in it.
        acked_through: u64,
        /// The whole snapshot's length in bytes.
        total_len: u64,
        /// This chunk's offset in the snapshot.
        offset: u64,
        /// The chunk.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Subscriber → owner: "I am at `cursor`, send what follows" (after a
    /// gap, or when told of a newer head).
    Resync {
        /// The subscriber's last applied cursor.
        cursor: Cursor,
    },
    /// Owner → subscriber: the head of the log (heartbeat, and the end of a
    /// replay batch).
    Head {
        /// The owner's newest cursor.
        cursor: Cursor,
    },
    /// Either way: a refusal.
    Refuse {
        /// A [`RefuseCode`] value.
        code: u16,
        /// The publish concerned, if any.
        update_id: Option<u64>,
        /// A human-readable explanation.
        detail: String,
    },
}

/// A sync payload that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("undecodable sync message: {0}")]
pub struct WireError(pub String);

impl SyncMsg {
    /// Encodes with rmp-serde (compact: structs as arrays).
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain values into a Vec cannot fail.
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    /// Decodes one message; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut cur = std::io::Cursor::new(bytes);
        let msg = SyncMsg::deserialize(&mut rmp_serde::Deserializer::new(&mut cur))
            .map_err(|e| WireError(e.to_string()))?;
        if cur.position() == bytes.len() as u64 {
            Ok(msg)
        } else {
            Err(WireError("trailing bytes".into()))
        }
    }

    /// A refusal message.
    pub fn refuse(code: RefuseCode, update_id: Option<u64>, detail: impl Into<String>) -> Self {
        SyncMsg::Refuse {
            code: code.code(),
            update_id,
            detail: detail.into(),
        }
    }
}

/// The stream of `doc` between `owner` and `subscriber`:
/// `sync:<owner>/<subscriber>/<doc>`.
pub fn stream_name(owner: &str, subscriber: &str, doc: &str) -> StreamId {
    StreamId::new(format!("sync:{owner}/{subscriber}/{doc}"))
}

/// Splits a sync stream name into `(owner, subscriber, doc)`; the document
/// id may itself contain `/`.
pub fn parse_stream(stream: &StreamId) -> Option<(&str, &str, &str)> {
    let rest = stream.as_str().strip_prefix("sync:")?;
    let (owner, rest) = rest.split_once('/')?;
    let (subscriber, doc) = rest.split_once('/')?;
    if owner.is_empty() || subscriber.is_empty() || doc.is_empty() {
        return None;
    }
    Some((owner, subscriber, doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip() {
        let s = stream_name("hub", "m1", "notes/today");
        assert_eq!(s.as_str(), "sync:hub/m1/notes/today");
        assert_eq!(parse_stream(&s), Some(("hub", "m1", "notes/today")));
        assert_eq!(parse_stream(&StreamId::new("sync:hub/m1")), None);
        assert_eq!(parse_stream(&StreamId::new("command:a/b/c")), None);
    }

    #[test]
    fn codes_are_in_the_channels_range_and_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for c in RefuseCode::ALL {
            assert!((0x0320..=0x032f).contains(&c.code()), "{c:?}");
            assert!(seen.insert(c.code()));
            assert_eq!(RefuseCode::from_code(c.code()), Some(c));
        }
        assert_eq!(RefuseCode::from_code(0x0300), None);
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        let ok = SyncMsg::Resync {
            cursor: Cursor::new(3, 4),
        };
        assert_eq!(SyncMsg::decode(&ok.encode()), Ok(ok));
        assert!(SyncMsg::decode(&[0xc1]).is_err());
        assert!(SyncMsg::decode(&[]).is_err());
        let mut b = SyncMsg::Head {
            cursor: Cursor::new(1, 2),
        }
        .encode();
        b.push(0);
        assert!(SyncMsg::decode(&b).is_err());
    }
}

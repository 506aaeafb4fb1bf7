//! Every numeric code of the protocol: the single source of truth.
//!
//! One number space serves `Reject.code` (u16), `Close.code` (u32), the
//! refusal codes of `RelayRefused`, `LookupReply` and `JoinRefused`, QUIC
//! application close codes and QUIC STOP_SENDING / RESET_STREAM codes.
//! Each value means one thing, is defined here once, and appears once in
//! the table of `docs/wire.md` §7 (a test checks both, and that no code
//! constant is defined anywhere else in the crate). The modules that raise
//! a code re-export its group under their own paths:
//! [`crate::transports::quic::codes`] is [`quic`], [`crate::root::codes`]
//! is [`root`].
//!
//! | range             | owner                                               |
//! |-------------------|-----------------------------------------------------|
//! | `0x0000`          | [`NO_ERROR`]: orderly close                         |
//! | `0x0001..=0x00ff` | reserved (general)                                  |
//! | `0x0100..=0x01ff` | the wire codec (the constants at this level)        |
//! | `0x0200..=0x020f` | the QUIC transport ([`quic`])                       |
//! | `0x0210..=0x021f` | the root: relay, rendezvous, admission ([`root`])   |
//! | `0x0220..=0x022f` | the WebRTC transport and signalling ([`webrtc`])    |
//! | `0x0230..=0x023f` | the sidecar's local endpoint ([`sidecar`])          |
//! | `0x0240..=0x02ff` | reserved for transports                             |
//! | `0x0300..=0x030f` | channels ([`channels`])                             |
//! | `0x0310..=0x031f` | stream sessions ([`stream`])                        |
//! | `0x0320..=0x032f` | the sync channel ([`sync`])                         |
//! | `0x0330..=0x033f` | the media channel ([`media`])                       |
//! | `0x0340..=0x03ff` | reserved for routing and channels                   |
//! | `0x0400..=0xffff` | reserved                                            |
//!
//! Not in this space: QUIC transport error codes, which a peer sees in a
//! CONNECTION_CLOSE of type `0x1c` (this space uses type `0x1d`). The TLS
//! handshake's refusals arrive that way as `CRYPTO_ERROR` = `0x100 +` the
//! TLS alert (RFC 9001 §4.8): see [`quic::WRONG_ALPN`] and
//! [`quic::UNTRUSTED_CERTIFICATE`], and `docs/wire.md` §7.2.

/// Orderly close; not an error.
pub const NO_ERROR: u16 = 0x0000;
/// The body did not decode as the kind's struct, or had trailing bytes.
pub const MALFORMED: u16 = 0x0100;
/// The length prefix exceeded the receiver's `max_frame_len` (or the
/// sender's, when encoding).
pub const TOO_LARGE: u16 = 0x0101;
/// The version byte is not [`PROTOCOL_VERSION`](crate::wire::PROTOCOL_VERSION).
pub const UNSUPPORTED_VERSION: u16 = 0x0102;
/// The kind byte is not a known [`FrameKind`](crate::wire::FrameKind) code.
pub const UNKNOWN_KIND: u16 = 0x0103;
/// The length prefix was 0 or 1: too short to hold version and kind.
pub const TOO_SHORT: u16 = 0x0104;
/// The input ended before the frame its prefix announced was complete.
pub const TRUNCATED: u16 = 0x0105;
/// A buffer meant to hold exactly one frame held more bytes after it.
pub const TRAILING_BYTES: u16 = 0x0106;
/// A `Data` frame's traffic class is not one of the classes of
/// `docs/wire.md` §5 (codes 5–255).
pub const UNKNOWN_CLASS: u16 = 0x0107;

/// First code of the range reserved for transports (QUIC transport, root).
pub const TRANSPORT_RANGE_START: u16 = 0x0200;
/// Last code of the range reserved for transports.
pub const TRANSPORT_RANGE_END: u16 = 0x02ff;

pub mod quic {
    //! Codes of the QUIC transport (`0x0200..=0x020f`), re-exported as
    //! [`crate::transports::quic::codes`].
    //!
    //! Codec errors on a stream are sent with the codec's own codes as the
    //! stream's STOP_SENDING code. Handshake refusals happen inside TLS,
    //! before any application code can be sent: the peer sees the QUIC
    //! `CRYPTO_ERROR` for the TLS alert (`0x100 + alert`, RFC 9001 §4.8);
    //! [`WRONG_ALPN`] and [`UNTRUSTED_CERTIFICATE`] name those refusals in
    //! counters, logs and facts.

    /// Connection closed because the endpoint is shutting down.
    pub const SHUTDOWN: u16 = 0x200;
    /// Handshake refused: the peer offered no ALPN this node speaks (on the
    /// wire: TLS alert 120, QUIC `CRYPTO_ERROR` `0x178`).
    pub const WRONG_ALPN: u16 = 0x201;
    /// Handshake refused: missing, invalid, expired or untrusted
    /// certificate (on the wire: the TLS alert as QUIC `CRYPTO_ERROR`
    /// `0x100 + alert`: 42 `bad_certificate` `0x12a`, 45
    /// `certificate_expired` `0x12d`, 48 `unknown_ca` `0x130`, 116
    /// `certificate_required` `0x174`, …).
    pub const UNTRUSTED_CERTIFICATE: u16 = 0x202;
    /// Connection closed: the verified certificate names no node.
    pub const NO_IDENTITY: u16 = 0x203;
    /// Connection closed: a `Hello` named a node or a role other than the
    /// peer certificate's.
    pub const HELLO_MISMATCH: u16 = 0x204;
    /// Stream stopped: a `Data` frame for a logical stream the peer is not
    /// admitted to.
    pub const NOT_ADMITTED: u16 = 0x205;
    /// Connection closed in favour of the other connection between the
    /// same two nodes (simultaneous dial or reconnect).
    pub const DUPLICATE_CONNECTION: u16 = 0x206;
    /// Stream stopped: the peer opened a bidirectional stream, which the
    /// node endpoint does not use.
    pub const UNEXPECTED_STREAM: u16 = 0x207;
    /// Connection closed: no `Hello` arrived within the hello time limit
    /// after the handshake.
    pub const HELLO_MISSING: u16 = 0x208;
}

pub mod root {
    //! Codes of the root (`0x0210..=0x021f`, `docs/root.md`), sent in
    //! `JoinRefused`, `RelayRefused`, `LookupReply`, `Reject` (refused
    //! `Register`) and as QUIC close codes; re-exported as
    //! [`crate::root::codes`].

    /// The destination of a relay, signal or lookup is not an admitted node.
    pub const NOT_ADMITTED: u16 = 0x210;
    /// The destination is admitted but not connected to the root.
    pub const OFFLINE: u16 = 0x211;
    /// The node's certificate (or the token's node) is revoked; also the
    /// QUIC close code for a revoked node's connection.
    pub const REVOKED: u16 = 0x212;
    /// The route class's budget towards the destination is exhausted; the
    /// frame was not forwarded (backpressure).
    pub const OVER_BUDGET: u16 = 0x213;
    /// No online node serves the capability asked about.
    pub const NO_CAPABILITY: u16 = 0x214;
    /// A `Register` is larger than a `LookupReply` can carry, or lists more
    /// addresses or capabilities than the root keeps.
    pub const REGISTER_TOO_LARGE: u16 = 0x215;
    /// A `Register` address is not a socket address (`ip:port`).
    pub const BAD_ADDRESS: u16 = 0x216;
    /// A `Register` claims a capability the node's admission does not list.
    pub const CAPABILITY_NOT_ALLOWED: u16 = 0x217;
    /// The join token is unknown (never issued, forged, or malformed).
    pub const TOKEN_UNKNOWN: u16 = 0x218;
    /// The join token has expired.
    pub const TOKEN_EXPIRED: u16 = 0x219;
    /// The join token was already used.
    pub const TOKEN_REUSED: u16 = 0x21a;
    /// The join request names another node than the token.
    pub const NODE_MISMATCH: u16 = 0x21b;
    /// The join request names another role than the token.
    pub const ROLE_MISMATCH: u16 = 0x21c;
    /// The request is unusable: a join request with a bad public key or a
    /// wrong first frame, or a `Lookup` naming neither or both of node and
    /// capability.
    pub const BAD_REQUEST: u16 = 0x21d;
    /// The root failed to issue or persist (internal error).
    pub const INTERNAL: u16 = 0x21e;
    /// A renewal (a `JoinRequest` with an empty token) without a valid node
    /// certificate of the named node and role on the join connection.
    pub const NOT_RENEWABLE: u16 = 0x21f;
}

/// The WebRTC transport and its signalling (`docs/webrtc.md`): refusals of
/// signalling messages and browser admission, range `0x0220..=0x022f`.
pub mod webrtc {
    /// The payload is not a valid message of its kind, or the kind is unknown.
    pub const MALFORMED: u16 = 0x220;
    /// The message belongs to an older generation (or session) than the
    /// current one and was dropped.
    pub const STALE_GENERATION: u16 = 0x221;
    /// The message names a session this node does not have.
    pub const UNKNOWN_SESSION: u16 = 0x222;
    /// The SDP could not be parsed or applied.
    pub const BAD_SDP: u16 = 0x223;
    /// The sender is not admitted to negotiate with this node.
    pub const NOT_ADMITTED: u16 = 0x224;
    /// The ICE candidate could not be parsed or applied.
    pub const BAD_CANDIDATE: u16 = 0x225;
    /// Both sides offered at once and this side's offer wins (glare rule).
    pub const GLARE: u16 = 0x226;
    /// A browser join token is unknown, already used or expired.
    pub const TOKEN_REFUSED: u16 = 0x227;
    /// A browser's DTLS fingerprint differs from the one bound at admission.
    pub const FINGERPRINT_MISMATCH: u16 = 0x228;
    /// The peer opened a data channel this transport does not serve.
    pub const UNEXPECTED_CHANNEL: u16 = 0x229;
    /// The signalling payload is over the transport's limit (64 KiB).
    pub const TOO_LARGE: u16 = 0x22a;
}

/// The sidecar's local endpoint (`docs/sidecar.md`): refusals of a local
/// session or of one frame on it, range `0x0230..=0x023f`. Sent as
/// `Close { code, reason }` (the session ends) or as `Reject { stream:
/// None, message_id: None, code, reason }` (one frame refused, the session
/// lives on).
pub mod sidecar {
    /// Close: the local client did not present this start's secret, or its
    /// uid is not the sidecar's.
    pub const UNAUTHENTICATED: u16 = 0x230;
    /// Close: two local sessions are open already (an old and a new hub
    /// during a handoff); a third is refused.
    pub const SESSIONS_FULL: u16 = 0x231;
    /// Close: the remote (root) session closed or was lost; the hub must
    /// re-establish its session (the sidecar never resumes behind it).
    pub const REMOTE_CLOSED: u16 = 0x232;
    /// Close: the remote session did not come up within the sidecar's
    /// wait; reconnect later.
    pub const REMOTE_DOWN: u16 = 0x233;
    /// Reject: the frame names another node than the hub this sidecar
    /// serves as its sender (`Relay.from`, `Signal.from`).
    pub const NOT_OWN_IDENTITY: u16 = 0x234;
    /// Reject: this kind of frame is not carried to the root (e.g. `Data`,
    /// `Ack`, `Join*` outside a relay envelope, or a second `Hello`).
    pub const KIND_REFUSED: u16 = 0x235;
    /// Reject: the remote session's send queue is full; the frame was not
    /// sent (the hub's outbox resends what matters).
    pub const QUEUE_FULL: u16 = 0x236;
}

pub mod channels {
    //! Codes of the channels (`0x0300..=0x030f`).

    /// `Reject`: a command channel could not decode a data frame's payload.
    pub const UNDECODABLE: u16 = 0x301;
}

pub mod stream {
    //! Codes of stream sessions (`0x0310..=0x031f`): refusals of a frame
    //! by the stream session it is addressed to, sent as `Reject` with the
    //! frame's stream and message id; re-exported as
    //! [`crate::actors::session::codes`].

    /// The frame names a stream this node has bound to another peer.
    pub const NOT_BOUND: u16 = 0x310;
    /// The stream's inbox is full; retry after a short delay (no frame was
    /// lost: the sender still holds it).
    pub const BUSY: u16 = 0x311;
    /// The frame carries a sender incarnation older than the one this
    /// receiver has moved on to, or a reply for another incarnation than
    /// the sender's own.
    pub const STALE_INCARNATION: u16 = 0x312;
    /// No stream of that name is being served here (yet): the node may be
    /// starting, or the stream is unknown. Retryable.
    pub const NOT_READY: u16 = 0x313;
    /// A retransmit of a message the receiver applied long ago and whose
    /// answer it no longer retains: the outcome cannot be reported again.
    pub const ANSWER_GONE: u16 = 0x314;
    /// The frame is malformed for its stream (e.g. an unknown delivery
    /// class).
    pub const BAD_FRAME: u16 = 0x315;
}

/// Refusals of the sync channel (`docs/sync.md`), range `0x0320..=0x032f`,
/// sent in its `Refuse` message.
pub mod sync {
    /// The owner does not serve this document.
    pub const UNKNOWN_DOCUMENT: u16 = 0x320;
    /// The presented cursor is ahead of the owner's log.
    pub const CURSOR_FROM_FUTURE: u16 = 0x321;
    /// The presented cursor belongs to another epoch of the log.
    pub const WRONG_EPOCH: u16 = 0x322;
    /// An update or snapshot is larger than the configured limit.
    pub const OVERSIZED: u16 = 0x323;
    /// The document could not apply an update.
    pub const UNDECODABLE_UPDATE: u16 = 0x324;
    /// The document could not load a snapshot.
    pub const CORRUPT_SNAPSHOT: u16 = 0x325;
    /// The sender is not this document's owner (one provider per document).
    pub const NOT_OWNER: u16 = 0x326;
    /// The peer is not admitted to this document (or may not publish).
    pub const NOT_ADMITTED: u16 = 0x327;
    /// A sync message that could not be decoded at all.
    pub const MALFORMED: u16 = 0x328;
}

/// Refusals of the media channel (`docs/media.md`), range
/// `0x0330..=0x033f`, answered to a consumer's request for a source.
pub mod media {
    /// No source of that name is registered on this node.
    pub const UNKNOWN_SOURCE: u16 = 0x330;
    /// The consumer is not admitted to that source.
    pub const NOT_ADMITTED: u16 = 0x331;
    /// The consumer has no WebRTC session with the terminating node.
    pub const NO_SESSION: u16 = 0x332;
    /// The terminating node could not add the source's tracks.
    pub const TRACK_REFUSED: u16 = 0x333;
    /// Too many media streams on this node (`MediaConfig::max_streams`).
    pub const TOO_MANY_STREAMS: u16 = 0x334;
}

/// One code of the table: its value, its constant's name and the group
/// (module) that defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    /// The numeric value.
    pub value: u16,
    /// The constant's name.
    pub name: &'static str,
    /// The group: `"codec"`, `"quic"`, `"root"`, `"webrtc"`, `"sidecar"`, `"channels"`, `"stream"`, `"sync"`, `"media"`.
    pub group: &'static str,
}

macro_rules! table {
    ($($group:literal : $($path:ident)::+),* $(,)?) => {
        /// Every code, in value order within its group.
        pub const ALL: &[Code] = &[
            $(Code { value: $($path)::+, name: last!($($path)::+), group: $group }),*
        ];
    };
}

macro_rules! last {
    ($head:ident :: $($rest:ident)::+) => { last!($($rest)::+) };
    ($name:ident) => { stringify!($name) };
}

table![
    "codec": NO_ERROR,
    "codec": MALFORMED,
    "codec": TOO_LARGE,
    "codec": UNSUPPORTED_VERSION,
    "codec": UNKNOWN_KIND,
    "codec": TOO_SHORT,
    "codec": TRUNCATED,
    "codec": TRAILING_BYTES,
    "codec": UNKNOWN_CLASS,
    "quic": quic::SHUTDOWN,
    "quic": quic::WRONG_ALPN,
    "quic": quic::UNTRUSTED_CERTIFICATE,
    "quic": quic::NO_IDENTITY,
    "quic": quic::HELLO_MISMATCH,
    "quic": quic::NOT_ADMITTED,
    "quic": quic::DUPLICATE_CONNECTION,
    "quic": quic::UNEXPECTED_STREAM,
    "quic": quic::HELLO_MISSING,
    "root": root::NOT_ADMITTED,
    "root": root::OFFLINE,
    "root": root::REVOKED,
    "root": root::OVER_BUDGET,
    "root": root::NO_CAPABILITY,
    "root": root::REGISTER_TOO_LARGE,
    "root": root::BAD_ADDRESS,
    "root": root::CAPABILITY_NOT_ALLOWED,
    "root": root::TOKEN_UNKNOWN,
    "root": root::TOKEN_EXPIRED,
    "root": root::TOKEN_REUSED,
    "root": root::NODE_MISMATCH,
    "root": root::ROLE_MISMATCH,
    "root": root::BAD_REQUEST,
    "root": root::INTERNAL,
    "root": root::NOT_RENEWABLE,
    "webrtc": webrtc::MALFORMED,
    "webrtc": webrtc::STALE_GENERATION,
    "webrtc": webrtc::UNKNOWN_SESSION,
    "webrtc": webrtc::BAD_SDP,
    "webrtc": webrtc::NOT_ADMITTED,
    "webrtc": webrtc::BAD_CANDIDATE,
    "webrtc": webrtc::GLARE,
    "webrtc": webrtc::TOKEN_REFUSED,
    "webrtc": webrtc::FINGERPRINT_MISMATCH,
    "webrtc": webrtc::UNEXPECTED_CHANNEL,
    "webrtc": webrtc::TOO_LARGE,
    "sidecar": sidecar::UNAUTHENTICATED,
    "sidecar": sidecar::SESSIONS_FULL,
    "sidecar": sidecar::REMOTE_CLOSED,
    "sidecar": sidecar::REMOTE_DOWN,
    "sidecar": sidecar::NOT_OWN_IDENTITY,
    "sidecar": sidecar::KIND_REFUSED,
    "sidecar": sidecar::QUEUE_FULL,
    "channels": channels::UNDECODABLE,
    "stream": stream::NOT_BOUND,
    "stream": stream::BUSY,
    "stream": stream::STALE_INCARNATION,
    "stream": stream::NOT_READY,
    "stream": stream::ANSWER_GONE,
    "stream": stream::BAD_FRAME,
    "sync": sync::UNKNOWN_DOCUMENT,
    "sync": sync::CURSOR_FROM_FUTURE,
    "sync": sync::WRONG_EPOCH,
    "sync": sync::OVERSIZED,
    "sync": sync::UNDECODABLE_UPDATE,
    "sync": sync::CORRUPT_SNAPSHOT,
    "sync": sync::NOT_OWNER,
    "sync": sync::NOT_ADMITTED,
    "sync": sync::MALFORMED,
    "media": media::UNKNOWN_SOURCE,
    "media": media::NOT_ADMITTED,
    "media": media::NO_SESSION,
    "media": media::TRACK_REFUSED,
    "media": media::TOO_MANY_STREAMS,
];

/// The code with this value, if one is defined.
pub fn lookup(value: u16) -> Option<&'static Code> {
    ALL.iter().find(|c| c.value == value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// `(group, NAME, value)` of every `pub const NAME: u16 = 0x…;` in this
    /// file's source, with the group taken from the enclosing `pub mod`.
    fn declared_here() -> Vec<(String, String, u16)> {
        let src = include_str!("codes.rs");
        let mut group = "codec".to_string();
        let mut out = Vec::new();
        for line in src.lines() {
            let t = line.trim();
            if t.starts_with("mod tests") {
                break;
            }
            if let Some(m) = t.strip_prefix("pub mod ") {
                group = m.trim_end_matches(" {").to_string();
            }
            if let Some(rest) = t.strip_prefix("pub const ")
                && let Some((name, value)) = rest.split_once(": u16 = 0x")
            {
                let v = u16::from_str_radix(value.trim_end_matches(';'), 16).unwrap();
                out.push((group.clone(), name.to_string(), v));
            }
        }
        out
    }

    #[test]
    fn every_declared_code_is_in_the_table_once() {
        let declared: BTreeSet<(String, String, u16)> = declared_here()
            .into_iter()
            .filter(|(_, n, _)| !n.ends_with("_RANGE_START") && !n.ends_with("_RANGE_END"))
            .collect();
        let listed: BTreeSet<(String, String, u16)> = ALL
            .iter()
            .map(|c| (c.group.to_string(), c.name.to_string(), c.value))
            .collect();
        assert_eq!(declared, listed, "codes.rs constants vs ALL");
        assert_eq!(listed.len(), ALL.len(), "a code listed twice");
        let mut by_value: BTreeMap<u16, &Code> = BTreeMap::new();
        for c in ALL {
            if let Some(other) = by_value.insert(c.value, c) {
                panic!("{:#06x} is both {other:?} and {c:?}", c.value);
            }
        }
    }

    #[test]
    fn codes_sit_in_their_groups_ranges() {
        for c in ALL {
            let range = match c.group {
                "codec" if c.value == 0 => 0..=0,
                "codec" => 0x100..=0x1ff,
                "quic" => 0x200..=0x20f,
                "root" => 0x210..=0x21f,
                "webrtc" => 0x220..=0x22f,
                "sidecar" => 0x230..=0x23f,
                "channels" => 0x300..=0x30f,
                "stream" => 0x310..=0x31f,
                "sync" => 0x320..=0x32f,
                "media" => 0x330..=0x33f,
                other => panic!("unknown group {other}"),
            };
            assert!(range.contains(&c.value), "{c:?} outside {range:?}");
        }
        assert_eq!(lookup(0x314).map(|c| c.name), Some("ANSWER_GONE"));
        assert_eq!(lookup(0x3ff), None);
    }

    /// The rows of the code table in `docs/wire.md` §7: `(value, name,
    /// group)` from lines `| `0x0210` | `NOT_ADMITTED` | root | …`.
    fn doc_rows() -> Vec<(u16, String, String)> {
        let doc = include_str!("../../docs/wire.md");
        let start = doc
            .find("<!-- codes: begin -->")
            .expect("docs/wire.md marks its code table");
        let end = doc.find("<!-- codes: end -->").expect("table end marker");
        doc[start..end]
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let value = cells.get(1)?.trim_matches('`').strip_prefix("0x")?;
                let value = u16::from_str_radix(value, 16).ok()?;
                let name = cells.get(2)?.trim_matches('`').to_string();
                let group = cells.get(3)?.to_string();
                Some((value, name, group))
            })
            .collect()
    }

    #[test]
    fn the_document_table_is_this_table() {
        let rows = doc_rows();
        let want: Vec<(u16, String, String)> = ALL
            .iter()
            .map(|c| (c.value, c.name.to_string(), c.group.to_string()))
            .collect();
        let got: BTreeSet<_> = rows.iter().cloned().collect();
        assert_eq!(
            got.len(),
            rows.len(),
            "a code appears twice in docs/wire.md"
        );
        assert_eq!(got, want.into_iter().collect::<BTreeSet<_>>());
    }

    /// Every file under `src/`, recursively.
    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn no_code_is_defined_outside_this_module() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        let mut offenders = Vec::new();
        for f in files {
            // STUN/TURN method and attribute numbers are IANA registry
            // values of another protocol (RFC 8489, RFC 8656), not codes
            // of this one.
            if f.ends_with("wire/codes.rs") || f.ends_with("turn/stun.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let t = line.trim();
                // A u16 constant with a literal value is a code in this
                // crate; so is a hex literal given as a `code`.
                let is_code_const = t.contains("const ")
                    && t.split_once(": u16 = ")
                        .is_some_and(|(_, v)| v.starts_with(|c: char| c.is_ascii_digit()));
                let is_code_literal = t.contains("code: 0x") || t.contains("code = 0x");
                if is_code_const || is_code_literal {
                    offenders.push(format!("{}:{}: {t}", f.display(), i + 1));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "codes belong in src/wire/codes.rs:\n{}",
            offenders.join("\n")
        );
    }
}

//! The frame codec: length prefix, version byte, kind byte, MessagePack body.
//!
//! Owns the byte layout of one frame, the size limit, and the error (and
//! close) codes for every malformed input. It is pure: no I/O, no clock, no
//! tasks; the async adapters in [`super::io`] drive it over streams. It must
//! not interpret frames (acks, dedupe, routing belong to the layers above).
//!
//! # Layout
//!
//! ```text
//! +----------------+---------+------+---------------------------+
//! | L: u32 BE      | version | kind | body: MessagePack (L - 2) |
//! | 4 bytes        | 1 byte  | 1 b  |                           |
//! +----------------+---------+------+---------------------------+
//! ```
//!
//! `L` counts the bytes after the prefix (version + kind + body), so a frame
//! occupies `4 + L` bytes. `L` must satisfy `2 <= L <= max_frame_len`; it is
//! checked before anything else is read or allocated.
//!
//! The body is the frame kind's struct as a MessagePack **array** of its
//! fields in declaration order, exactly as `rmp_serde::encode::write` emits
//! it (not the named-map form):
//!
//! * `u8`/`u16`/`u32`/`u64` → the shortest MessagePack unsigned encoding
//!   (positive fixint `0x00..=0x7f`, `uint8 0xcc`, `uint16 0xcd`,
//!   `uint32 0xce`, `uint64 0xcf`; big-endian).
//! * `NodeId`, `StreamId`, `String` → `str` (fixstr `0xa0..=0xbf`, `str8
//!   0xd9`, `str16 0xda`, `str32 0xdb`), UTF-8.
//! * [`Role`] (a unit-only enum) → `str` holding the
//!   variant's snake_case name: `"hub"`, `"root"`, `"member"`, `"sidecar"`,
//!   `"browser"`. rmp-serde writes unit variants as their name, not as an
//!   index and not as a map.
//! * `Option<T>` → `nil` (`0xc0`) for `None`, otherwise `T` itself (no
//!   wrapper).
//! * `Bytes` payload → `bin` (`bin8 0xc4`, `bin16 0xc5`, `bin32 0xc6`).
//!
//! The decoder is strict about shape and lenient about integer width: the
//! body must be an array with exactly the kind's number of fields, strings
//! must be `str`, the payload must be `bin`, options must be `nil` or the
//! inner type, and nothing may follow the array. Any MessagePack integer
//! format is accepted for integer fields as long as the value is
//! non-negative and fits the field.
//!
//! `docs/wire.md` is the normative description with hex examples.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use thiserror::Error;

use super::frame::{
    Ack, Close, Data, Frame, FrameKind, Hello, JoinGranted, JoinRefused, JoinRequest, Lookup,
    LookupReply, PROTOCOL_VERSION, Probe, ProbeAck, Register, Reject, Relay, RelayRefused, Signal,
};
use crate::vocab::{Role, StreamId, TrafficClass};

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Bytes of the whole header: prefix, version and kind.
pub const HEADER_LEN: usize = 6;

/// The default limit on `L` (the bytes after the length prefix): 1 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1_048_576;

/// The smallest valid `L`: the version and kind bytes with an empty body
/// (which is itself never a valid body, but is a well-formed header).
pub const MIN_FRAME_LEN: usize = 2;

/// The codec's codes live with every other code in [`super::codes`].
pub use super::codes;

/// Codec settings shared by encoder and decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecConfig {
    /// The largest accepted `L` (bytes after the 4-byte length prefix:
    /// version, kind and body). Frames above it are refused when encoding
    /// and rejected from the prefix alone when decoding. Values above
    /// `u32::MAX` behave as `u32::MAX`.
    pub max_frame_len: usize,
}

impl CodecConfig {
    /// A config with the given `max_frame_len`.
    pub const fn new(max_frame_len: usize) -> Self {
        Self { max_frame_len }
    }

    /// The effective limit on `L` (never above `u32::MAX`).
    fn limit(&self) -> usize {
        self.max_frame_len.min(u32::MAX as usize)
    }
}

impl Default for CodecConfig {
    /// `max_frame_len` = [`DEFAULT_MAX_FRAME_LEN`] (1 MiB).
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

/// Why a frame could not be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The frame's `L` (bytes after the prefix) is above the limit. Nothing
    /// was appended to the buffer.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The frame's `L`.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A [`Data`] frame's `class` is not a traffic class of
    /// `docs/wire.md` §5: a sender never sends codes 5–255. Nothing was
    /// appended to the buffer.
    #[error("unknown traffic class {class}")]
    UnknownClass {
        /// The class of the refused frame.
        class: u8,
    },
    /// The MessagePack serializer failed (not expected for the frame types;
    /// kept so encoding is total). Nothing was appended to the buffer.
    #[error("cannot serialize {kind:?} frame: {detail}")]
    Serialize {
        /// The frame's kind.
        kind: FrameKind,
        /// The serializer's message.
        detail: String,
    },
}

impl EncodeError {
    /// The code to refuse or close with (see [`codes`]).
    pub fn reject_code(&self) -> u16 {
        match self {
            EncodeError::TooLarge { .. } => codes::TOO_LARGE,
            EncodeError::UnknownClass { .. } => codes::UNKNOWN_CLASS,
            EncodeError::Serialize { .. } => codes::MALFORMED,
        }
    }

    /// [`Self::reject_code`] widened for [`Close`] frames and transport
    /// close codes.
    pub fn close_code(&self) -> u32 {
        u32::from(self.reject_code())
    }
}

/// Why bytes could not be decoded into a frame.
///
/// Header errors are reported as soon as the offending byte is available
/// and in this order: [`TooShort`](Self::TooShort), [`TooLarge`](Self::TooLarge),
/// [`UnsupportedVersion`](Self::UnsupportedVersion),
/// [`UnknownKind`](Self::UnknownKind); then, once the body is complete,
/// [`Malformed`](Self::Malformed). After any error the byte stream cannot be
/// resynchronised: close it with [`close_code`](Self::close_code).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside the frame. Only [`decode_frame`] (given one
    /// complete frame) and the stream adapters (at end of stream) report
    /// it; [`FrameDecoder::decode`] returns `Ok(None)` instead.
    #[error("truncated frame: need {needed} bytes, got {got}")]
    Truncated {
        /// Bytes the frame needs as far as known: 4 while the prefix itself
        /// is incomplete, `4 + L` after.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The length prefix `L` is above the limit; reported from the prefix
    /// alone, before the body is awaited or any memory reserved for it.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced `L`.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The length prefix `L` is 0 or 1: no room for version and kind.
    #[error("frame length {len} is shorter than the 2-byte header")]
    TooShort {
        /// The announced `L`.
        len: usize,
    },
    /// The version byte is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion {
        /// The version byte received.
        version: u8,
    },
    /// The kind byte is not a known [`FrameKind`] code.
    #[error("unknown frame kind {kind}")]
    UnknownKind {
        /// The kind byte received.
        kind: u8,
    },
    /// The body is not a valid MessagePack encoding of the kind's struct
    /// (wrong shape, wrong types, out-of-range values, invalid UTF-8,
    /// unknown role name, truncated values, or trailing bytes after it).
    #[error("malformed {kind:?} frame: {detail}")]
    Malformed {
        /// The frame's kind.
        kind: FrameKind,
        /// What was wrong.
        detail: String,
    },
    /// A [`Data`] frame's `class` is not a traffic class of
    /// `docs/wire.md` §5 (codes 5–255 are refused, not passed on).
    #[error("unknown traffic class {class}")]
    UnknownClass {
        /// The class byte received.
        class: u8,
    },
    /// [`decode_frame`] was given bytes after one complete frame.
    #[error("{extra} trailing bytes after the frame")]
    TrailingBytes {
        /// How many bytes followed the frame.
        extra: usize,
    },
}

impl DecodeError {
    /// The code to refuse with in a [`Reject`] (see [`codes`]).
    pub fn reject_code(&self) -> u16 {
        match self {
            DecodeError::Truncated { .. } => codes::TRUNCATED,
            DecodeError::TooLarge { .. } => codes::TOO_LARGE,
            DecodeError::TooShort { .. } => codes::TOO_SHORT,
            DecodeError::UnsupportedVersion { .. } => codes::UNSUPPORTED_VERSION,
            DecodeError::UnknownKind { .. } => codes::UNKNOWN_KIND,
            DecodeError::Malformed { .. } => codes::MALFORMED,
            DecodeError::TrailingBytes { .. } => codes::TRAILING_BYTES,
            DecodeError::UnknownClass { .. } => codes::UNKNOWN_CLASS,
        }
    }

    /// [`Self::reject_code`] widened for [`Close`] frames and transport
    /// close codes.
    pub fn close_code(&self) -> u32 {
        u32::from(self.reject_code())
    }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Appends one encoded frame to `buf`.
///
/// Computes the exact size first, refuses frames whose `L` is above
/// `cfg.max_frame_len` without touching `buf`, reserves once, then
/// serializes the body straight into `buf` and writes the length prefix.
///
/// ```
/// use bytes::BytesMut;
/// use interlocking::wire::{CodecConfig, Frame, Probe, encode};
///
/// let mut buf = BytesMut::new();
/// encode(&Frame::Probe(Probe { nonce: 1, sent_at_us: 2 }), &mut buf, &CodecConfig::default())?;
/// assert_eq!(&buf[..], &[0, 0, 0, 5, 2, 2, 0x92, 1, 2]);
/// # Ok::<(), interlocking::wire::EncodeError>(())
/// ```
pub fn encode(frame: &Frame, buf: &mut BytesMut, cfg: &CodecConfig) -> Result<(), EncodeError> {
    let max = cfg.limit();
    let kind = frame.kind();
    if let Frame::Data(d) = frame
        && TrafficClass::from_code(d.class).is_none()
    {
        return Err(EncodeError::UnknownClass { class: d.class });
    }
    let predicted = encoded_len(frame);
    if predicted - PREFIX_LEN > max {
        return Err(EncodeError::TooLarge {
            len: predicted - PREFIX_LEN,
            max,
        });
    }
    let start = buf.len();
    buf.reserve(predicted);
    buf.put_slice(&[0, 0, 0, 0, PROTOCOL_VERSION, kind as u8]);
    let written = {
        let mut w = (&mut *buf).writer();
        match frame {
            Frame::Hello(f) => write_body(&mut w, f),
            Frame::Probe(f) => write_body(&mut w, f),
            Frame::ProbeAck(f) => write_body(&mut w, f),
            Frame::Data(f) => write_body(&mut w, f),
            Frame::Ack(f) => write_body(&mut w, f),
            Frame::Reject(f) => write_body(&mut w, f),
            Frame::Close(f) => write_body(&mut w, f),
            Frame::Relay(f) => write_body(&mut w, f),
            Frame::RelayRefused(f) => write_body(&mut w, f),
            Frame::Register(f) => write_body(&mut w, f),
            Frame::Lookup(f) => write_body(&mut w, f),
            Frame::LookupReply(f) => write_body(&mut w, f),
            Frame::Signal(f) => write_body(&mut w, f),
            Frame::JoinRequest(f) => write_body(&mut w, f),
            Frame::JoinGranted(f) => write_body(&mut w, f),
            Frame::JoinRefused(f) => write_body(&mut w, f),
        }
    };
    if let Err(e) = written {
        buf.truncate(start);
        return Err(EncodeError::Serialize {
            kind,
            detail: e.to_string(),
        });
    }
    let len = buf.len() - start - PREFIX_LEN;
    debug_assert_eq!(len + PREFIX_LEN, predicted, "encoded_len disagrees");
    if len > max {
        buf.truncate(start);
        return Err(EncodeError::TooLarge { len, max });
    }
    // `len <= max <= u32::MAX`, so the cast is lossless.
    buf[start..start + PREFIX_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Encodes one frame into a new, exactly sized buffer.
pub fn encode_to_bytes(frame: &Frame, cfg: &CodecConfig) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::new();
    encode(frame, &mut buf, cfg)?;
    Ok(buf.freeze())
}

/// The exact number of bytes [`encode`] appends for `frame`, prefix
/// included (`4 + L`), whatever the limit.
pub fn encoded_len(frame: &Frame) -> usize {
    let body = match frame {
        Frame::Hello(h) => {
            1 + str_len(h.node.as_str())
                + str_len(role_name(h.role))
                + uint_len(h.features)
                + h.token.as_deref().map_or(1, str_len)
        }
        Frame::Probe(p) => 1 + uint_len(p.nonce) + uint_len(p.sent_at_us),
        Frame::ProbeAck(p) => 1 + uint_len(p.nonce) + uint_len(p.sent_at_us),
        Frame::Data(d) => {
            1 + str_len(d.stream.as_str())
                + uint_len(d.incarnation)
                + uint_len(d.seq)
                + uint_len(d.message_id)
                + uint_len(u64::from(d.class))
                + uint_len(u64::from(d.delivery))
                + bin_len(d.payload.len())
        }
        Frame::Ack(a) => {
            1 + str_len(a.stream.as_str())
                + uint_len(a.incarnation)
                + uint_len(a.seq)
                + uint_len(a.message_id)
                + uint_len(u64::from(a.credit))
        }
        Frame::Reject(r) => {
            1 + r.stream.as_ref().map_or(1, |s| str_len(s.as_str()))
                + r.message_id.map_or(1, uint_len)
                + uint_len(u64::from(r.code))
                + str_len(&r.reason)
        }
        Frame::Close(c) => 1 + uint_len(u64::from(c.code)) + str_len(&c.reason),
        Frame::Relay(r) => {
            1 + str_len(r.to.as_str()) + str_len(r.from.as_str()) + bin_len(r.frame.len())
        }
        Frame::RelayRefused(r) => {
            1 + str_len(r.to.as_str()) + uint_len(u64::from(r.code)) + str_len(&r.reason)
        }
        Frame::Register(r) => 1 + strs_len(&r.addrs) + strs_len(&r.capabilities),
        Frame::Lookup(l) => {
            1 + uint_len(l.request_id)
                + l.node.as_ref().map_or(1, |n| str_len(n.as_str()))
                + l.capability.as_deref().map_or(1, str_len)
        }
        Frame::LookupReply(r) => {
            1 + uint_len(r.request_id)
                + uint_len(u64::from(r.code))
                + r.node.as_ref().map_or(1, |n| str_len(n.as_str()))
                + strs_len(&r.addrs)
                + strs_len(&r.capabilities)
        }
        Frame::Signal(s) => {
            1 + str_len(s.to.as_str())
                + str_len(s.from.as_str())
                + str_len(&s.kind)
                + bin_len(s.payload.len())
        }
        Frame::JoinRequest(j) => {
            1 + str_len(&j.token)
                + str_len(j.node.as_str())
                + str_len(role_name(j.role))
                + bin_len(j.public_key.len())
        }
        Frame::JoinGranted(j) => {
            1 + bin_len(j.cert.len()) + bin_len(j.ca.len()) + uint_len(j.expires_at_ms)
        }
        Frame::JoinRefused(j) => 1 + uint_len(u64::from(j.code)) + str_len(&j.reason),
    };
    HEADER_LEN + body
}

fn write_body<T: Serialize>(
    w: &mut impl std::io::Write,
    value: &T,
) -> Result<(), rmp_serde::encode::Error> {
    rmp_serde::encode::write(w, value)
}

/// The name rmp-serde writes for a role (its serde snake_case name).
fn role_name(role: Role) -> &'static str {
    match role {
        Role::Hub => "hub",
        Role::Root => "root",
        Role::Member => "member",
        Role::Sidecar => "sidecar",
        Role::Browser => "browser",
    }
}

fn uint_len(v: u64) -> usize {
    match v {
        0..=0x7f => 1,
        0x80..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

fn str_len(s: &str) -> usize {
    let n = s.len();
    n + match n {
        0..=31 => 1,
        32..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    }
}

/// An array of strings: its header and every element.
fn strs_len(v: &[String]) -> usize {
    let header = match v.len() {
        0..=15 => 1,
        16..=0xffff => 3,
        _ => 5,
    };
    header + v.iter().map(|s| str_len(s)).sum::<usize>()
}

fn bin_len(n: usize) -> usize {
    n + match n {
        0..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// What the header says so far.
enum Header {
    /// The header is incomplete; the frame needs at least this many bytes
    /// in total.
    Incomplete { needed: usize },
    /// The header is complete and valid.
    Complete { len: usize, kind: FrameKind },
}

/// Parses and checks the header, as far as `buf` goes. Never reads past
/// the 6 header bytes.
fn parse_header(buf: &[u8], max: usize) -> Result<Header, DecodeError> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        return Ok(Header::Incomplete { needed: PREFIX_LEN });
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len < MIN_FRAME_LEN {
        return Err(DecodeError::TooShort { len });
    }
    if len > max {
        return Err(DecodeError::TooLarge { len, max });
    }
    let needed = PREFIX_LEN + len;
    let Some(&version) = buf.get(PREFIX_LEN) else {
        return Ok(Header::Incomplete { needed });
    };
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let Some(&code) = buf.get(PREFIX_LEN + 1) else {
        return Ok(Header::Incomplete { needed });
    };
    match FrameKind::from_code(code) {
        Some(kind) => Ok(Header::Complete { len, kind }),
        None => Err(DecodeError::UnknownKind { kind: code }),
    }
}

/// Decodes exactly one complete frame from `bytes`.
///
/// Fails with [`DecodeError::Truncated`] if `bytes` is shorter than the frame
/// its prefix announces and with [`DecodeError::TrailingBytes`] if longer.
/// The payload of a [`Data`] frame is copied out of `bytes`.
///
/// ```
/// use interlocking::wire::{CodecConfig, Frame, Probe, decode_frame};
///
/// let frame = decode_frame(&[0, 0, 0, 5, 2, 2, 0x92, 1, 2], &CodecConfig::default())?;
/// assert_eq!(frame, Frame::Probe(Probe { nonce: 1, sent_at_us: 2 }));
/// # Ok::<(), interlocking::wire::DecodeError>(())
/// ```
pub fn decode_frame(bytes: &[u8], cfg: &CodecConfig) -> Result<Frame, DecodeError> {
    let got = bytes.len();
    match parse_header(bytes, cfg.limit())? {
        Header::Incomplete { needed } => Err(DecodeError::Truncated { needed, got }),
        Header::Complete { len, kind } => {
            let total = PREFIX_LEN + len;
            if got < total {
                return Err(DecodeError::Truncated { needed: total, got });
            }
            if got > total {
                return Err(DecodeError::TrailingBytes { extra: got - total });
            }
            decode_body(kind, &bytes[HEADER_LEN..], Bytes::copy_from_slice)
        }
    }
}

/// A pure, incremental frame decoder for a byte stream.
///
/// Feed it the stream's bytes in a [`BytesMut`] as they arrive; each
/// [`decode`](Self::decode) call takes at most one complete frame off the
/// front. It never allocates for a frame that is not yet complete, and
/// [`Data`] payloads share the buffer's memory instead of being copied.
///
/// ```
/// use bytes::BytesMut;
/// use interlocking::wire::{CodecConfig, Frame, FrameDecoder, Probe};
///
/// let mut dec = FrameDecoder::new(CodecConfig::default());
/// let mut buf = BytesMut::from(&[0u8, 0, 0, 5, 2, 2, 0x92][..]);
/// assert_eq!(dec.decode(&mut buf)?, None); // two body bytes missing
/// buf.extend_from_slice(&[1, 2]);
/// assert_eq!(dec.decode(&mut buf)?, Some(Frame::Probe(Probe { nonce: 1, sent_at_us: 2 })));
/// assert!(buf.is_empty());
/// # Ok::<(), interlocking::wire::DecodeError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct FrameDecoder {
    /// The limits this stream is held to.
    cfg: CodecConfig,
}

impl FrameDecoder {
    /// A decoder holding frames to `cfg`.
    pub fn new(cfg: CodecConfig) -> Self {
        Self { cfg }
    }

    /// The decoder's configuration.
    pub fn config(&self) -> &CodecConfig {
        &self.cfg
    }

    /// Takes one frame off the front of `buf` if it is complete.
    ///
    /// Returns `Ok(None)` when more bytes are needed (nothing consumed) and
    /// `Ok(Some(frame))` after consuming exactly that frame's bytes. Header
    /// errors are returned as soon as the offending header byte is present,
    /// without waiting for the body. On error nothing is consumed; the
    /// stream cannot be resynchronised and should be closed with the error's
    /// [`close_code`](DecodeError::close_code).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let (len, kind) = match parse_header(buf, self.cfg.limit())? {
            Header::Incomplete { .. } => return Ok(None),
            Header::Complete { len, kind } => (len, kind),
        };
        let total = PREFIX_LEN + len;
        if buf.len() < total {
            return Ok(None);
        }
        let body = &buf[HEADER_LEN..total];
        let body_start = body.as_ptr() as usize;
        let mut payload_at = None;
        let mut frame = decode_body(kind, body, |p| {
            let at = p.as_ptr() as usize - body_start + HEADER_LEN;
            payload_at = Some(at..at + p.len());
            Bytes::new()
        })?;
        match (&mut frame, payload_at) {
            (Frame::Data(d), Some(range)) if !range.is_empty() => {
                let whole = buf.split_to(total).freeze();
                d.payload = whole.slice(range);
            }
            // Moving the start is free; splitting would share the buffer.
            _ => buf.advance(total),
        }
        Ok(Some(frame))
    }

    /// How many more bytes `buf` needs before [`decode`](Self::decode) can
    /// make progress, as far as the header tells (at least 1 while a frame
    /// is incomplete; 0 when a complete frame or an error is waiting).
    /// Never more than `4 + max_frame_len`.
    pub fn bytes_needed(&self, buf: &[u8]) -> usize {
        match parse_header(buf, self.cfg.limit()) {
            Ok(Header::Incomplete { needed }) => needed.saturating_sub(buf.len()).max(1),
            Ok(Header::Complete { len, .. }) => (PREFIX_LEN + len).saturating_sub(buf.len()),
            Err(_) => 0,
        }
    }
}

/// The MessagePack type a body field must have.
#[derive(Clone, Copy, Debug)]
enum Field {
    /// Any integer format (range checked by serde).
    Int,
    /// `str`.
    Str,
    /// `bin`.
    Bin,
    /// `nil` or `str`.
    OptStr,
    /// `nil` or an integer.
    OptInt,
    /// An array (any array header) of `str`.
    StrArr,
}

/// The field types of each kind's body, in declaration order.
fn schema(kind: FrameKind) -> &'static [Field] {
    use Field::*;
    match kind {
        FrameKind::Hello => &[Str, Str, Int, OptStr],
        FrameKind::Probe | FrameKind::ProbeAck => &[Int, Int],
        FrameKind::Data => &[Str, Int, Int, Int, Int, Int, Bin],
        FrameKind::Ack => &[Str, Int, Int, Int, Int],
        FrameKind::Reject => &[OptStr, OptInt, Int, Str],
        FrameKind::Close => &[Int, Str],
        FrameKind::Relay => &[Str, Str, Bin],
        FrameKind::RelayRefused => &[Str, Int, Str],
        FrameKind::Register => &[StrArr, StrArr],
        FrameKind::Lookup => &[Int, OptStr, OptStr],
        FrameKind::LookupReply => &[Int, Int, OptStr, StrArr, StrArr],
        FrameKind::Signal => &[Str, Str, Str, Bin],
        FrameKind::JoinRequest => &[Str, Str, Str, Bin],
        FrameKind::JoinGranted => &[Bin, Bin, Int],
        FrameKind::JoinRefused => &[Int, Str],
    }
}

/// A bounds-checked reader over a body.
struct Scan<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Scan<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        match self.buf.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(format!(
                "value at offset {} needs {n} bytes, {} left",
                self.pos,
                self.buf.len().saturating_sub(self.pos)
            )),
        }
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    /// Reads a big-endian unsigned length of `width` bytes (1, 2 or 4).
    fn len(&mut self, width: usize) -> Result<usize, String> {
        let b = self.take(width)?;
        Ok(b.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x)))
    }

    /// Checks and skips one value of type `field`.
    fn field(&mut self, index: usize, field: Field) -> Result<(), String> {
        let at = self.pos;
        let m = self.byte()?;
        let ok = match (field, m) {
            (Field::OptStr | Field::OptInt, 0xc0) => return Ok(()),
            // positive / negative fixint
            (Field::Int | Field::OptInt, 0x00..=0x7f | 0xe0..=0xff) => return Ok(()),
            // uint8..uint64, int8..int64
            (Field::Int | Field::OptInt, 0xcc | 0xd0) => self.take(1).map(drop),
            (Field::Int | Field::OptInt, 0xcd | 0xd1) => self.take(2).map(drop),
            (Field::Int | Field::OptInt, 0xce | 0xd2) => self.take(4).map(drop),
            (Field::Int | Field::OptInt, 0xcf | 0xd3) => self.take(8).map(drop),
            (Field::Str | Field::OptStr, 0xa0..=0xbf) => self.take(usize::from(m & 0x1f)).map(drop),
            (Field::Str | Field::OptStr, 0xd9) => self.len(1).and_then(|n| self.take(n).map(drop)),
            (Field::Str | Field::OptStr, 0xda) => self.len(2).and_then(|n| self.take(n).map(drop)),
            (Field::Str | Field::OptStr, 0xdb) => self.len(4).and_then(|n| self.take(n).map(drop)),
            (Field::Bin, 0xc4) => self.len(1).and_then(|n| self.take(n).map(drop)),
            (Field::Bin, 0xc5) => self.len(2).and_then(|n| self.take(n).map(drop)),
            (Field::Bin, 0xc6) => self.len(4).and_then(|n| self.take(n).map(drop)),
            // Every element consumes at least one byte, so a huge claimed
            // count fails as soon as the body runs out.
            (Field::StrArr, 0x90..=0x9f) => self.strs(index, usize::from(m & 0x0f)),
            (Field::StrArr, 0xdc) => self.len(2).and_then(|n| self.strs(index, n)),
            (Field::StrArr, 0xdd) => self.len(4).and_then(|n| self.strs(index, n)),
            _ => Err(format!(
                "field {index} at offset {at}: marker 0x{m:02x} is not a valid {field:?}"
            )),
        };
        ok.map_err(|e| format!("field {index}: {e}"))
    }
}

impl Scan<'_> {
    /// Checks and skips `n` `str` values (the elements of a `StrArr`).
    fn strs(&mut self, index: usize, n: usize) -> Result<(), String> {
        for i in 0..n {
            self.field(index, Field::Str)
                .map_err(|e| format!("element {i}: {e}"))?;
        }
        Ok(())
    }
}

/// Checks the body's shape against the kind's schema without allocating:
/// one array of exactly the right number of fields of the right MessagePack
/// types, every length within the body, nothing after it.
fn check_shape(kind: FrameKind, body: &[u8]) -> Result<(), String> {
    let fields = schema(kind);
    let mut s = Scan { buf: body, pos: 0 };
    let m = s.byte().map_err(|_| "empty body".to_string())?;
    let n = match m {
        0x90..=0x9f => usize::from(m & 0x0f),
        0xdc => s.len(2)?,
        0xdd => s.len(4)?,
        _ => return Err(format!("body starts with marker 0x{m:02x}, not an array")),
    };
    if n != fields.len() {
        return Err(format!("array of {n} fields, expected {}", fields.len()));
    }
    for (i, f) in fields.iter().enumerate() {
        s.field(i, *f)?;
    }
    if s.pos != body.len() {
        return Err(format!("{} trailing bytes after body", body.len() - s.pos));
    }
    Ok(())
}

/// The wire form of [`Data`] while decoding: the payload borrowed from the
/// input so the caller decides whether to copy or share it.
#[derive(serde::Deserialize)]
struct DataRef<'a> {
    stream: StreamId,
    incarnation: u64,
    seq: u64,
    message_id: u64,
    class: u8,
    delivery: u8,
    #[serde(borrow)]
    payload: &'a [u8],
}

/// Decodes a body of `kind`. `payload` turns the borrowed [`Data`] payload
/// into `Bytes`.
fn decode_body<'a>(
    kind: FrameKind,
    body: &'a [u8],
    payload: impl FnOnce(&'a [u8]) -> Bytes,
) -> Result<Frame, DecodeError> {
    let malformed = |detail: String| DecodeError::Malformed { kind, detail };
    check_shape(kind, body).map_err(malformed)?;
    fn de<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
        rmp_serde::from_slice(body).map_err(|e| e.to_string())
    }
    let frame = match kind {
        FrameKind::Hello => de::<Hello>(body).map(Frame::Hello),
        FrameKind::Probe => de::<Probe>(body).map(Frame::Probe),
        FrameKind::ProbeAck => de::<ProbeAck>(body).map(Frame::ProbeAck),
        FrameKind::Data => de::<DataRef<'a>>(body).map(|d| {
            Frame::Data(Data {
                stream: d.stream,
                incarnation: d.incarnation,
                seq: d.seq,
                message_id: d.message_id,
                class: d.class,
                delivery: d.delivery,
                payload: payload(d.payload),
            })
        }),
        FrameKind::Ack => de::<Ack>(body).map(Frame::Ack),
        FrameKind::Reject => de::<Reject>(body).map(Frame::Reject),
        FrameKind::Close => de::<Close>(body).map(Frame::Close),
        FrameKind::Relay => de::<Relay>(body).map(Frame::Relay),
        FrameKind::RelayRefused => de::<RelayRefused>(body).map(Frame::RelayRefused),
        FrameKind::Register => de::<Register>(body).map(Frame::Register),
        FrameKind::Lookup => de::<Lookup>(body).map(Frame::Lookup),
        FrameKind::LookupReply => de::<LookupReply>(body).map(Frame::LookupReply),
        FrameKind::Signal => de::<Signal>(body).map(Frame::Signal),
        FrameKind::JoinRequest => de::<JoinRequest>(body).map(Frame::JoinRequest),
        FrameKind::JoinGranted => de::<JoinGranted>(body).map(Frame::JoinGranted),
        FrameKind::JoinRefused => de::<JoinRefused>(body).map(Frame::JoinRefused),
    };
    let frame = frame.map_err(malformed)?;
    // Strictness about the traffic class lives here too, so no layer above
    // ever sees a class outside `docs/wire.md` §5.
    if let Frame::Data(d) = &frame
        && TrafficClass::from_code(d.class).is_none()
    {
        return Err(DecodeError::UnknownClass { class: d.class });
    }
    Ok(frame)
}

#[cfg(test)]
mod tests;

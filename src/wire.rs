//! The wire: frame types and their versioned, size-limited codec.
//!
//! Owns the bytes-on-the-wire format and nothing else. It imports only
//! [`crate::vocab`]; every other layer depends on it, not the reverse.
//!
//! * [`frame`]: what a frame can say (one struct per [`FrameKind`]).
//! * [`codec`]: the byte layout, size limit, errors and close codes
//!   (pure, no I/O). `docs/wire.md` is the normative description.
//! * [`codes`]: every numeric code of the protocol, in one table.
//! * [`io`]: async adapters running the codec over tokio streams.

#![warn(missing_docs)]

pub mod codec;
pub mod codes;
pub mod frame;
pub mod io;

pub use codec::{
    CodecConfig, DEFAULT_MAX_FRAME_LEN, DecodeError, EncodeError, FrameDecoder, HEADER_LEN,
    MIN_FRAME_LEN, PREFIX_LEN, decode_frame, encode, encode_to_bytes, encoded_len,
};
pub use frame::*;
pub use io::{MIN_READ, ReadError, WriteError, read_frame, write_frame, write_frame_buf};

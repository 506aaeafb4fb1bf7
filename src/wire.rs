//! The wire: frame types and their versioned, size-limited codec.
//!
//! Owns the bytes-on-the-wire format and nothing else. It imports only
//! [`crate::vocab`]; every other layer depends on it, not the reverse.

pub mod frame;

pub use frame::*;

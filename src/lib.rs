//! interlocking (crate doc written in the foundation work).

pub mod vocab;
pub mod wire;

//! interlocking (crate doc written in the foundation work).

pub mod routing;
pub mod vocab;
pub mod wire;

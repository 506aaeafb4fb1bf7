//! Actors: the supervision tree and its lifecycle.
//!
//! Owns who starts, restarts and stops whom: a generic [`supervisor`] with
//! OTP-style restart intensity, the pure [`restart`] policy it consults, a
//! [`task`] actor that puts a plain async loop under it, and
//! the [`node`] that builds a process's tree (routing authority, transports,
//! channels) from `main` in a few lines. It owns no protocol semantics: it
//! wires the layers together and keeps them running.

pub mod node;
pub mod restart;
pub mod session;
pub mod supervisor;
pub mod task;

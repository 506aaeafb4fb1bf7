//! The `Hello` rule of the QUIC transport (`docs/wire.md` §7.4): what a
//! connection's receivers check the peer's `Hello` against.
//!
//! Owns the per-connection check state; the transport's read loops and
//! connection driver apply it.

use std::sync::atomic::AtomicBool;

use quinn::Connection;

use crate::trust;
use crate::vocab::Role;

/// What a connection's receiver checks the peer's `Hello` against.
pub(super) struct HelloCheck {
    /// The role in the peer certificate's subject `OU`, if it has one.
    pub(super) role: Option<Role>,
    /// Whether a matching `Hello` has arrived.
    pub(super) seen: AtomicBool,
}

/// The role in a connection's verified peer certificate.
pub(super) fn peer_role(conn: &Connection) -> Option<Role> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    trust::role_from_certificate(certs.first()?).ok()
}

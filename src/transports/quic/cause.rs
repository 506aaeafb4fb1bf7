//! What a quinn connection error means for a path: its [`DownCause`], the
//! TLS alert behind a refused handshake, and the peer's node id from its
//! verified certificate.

use quinn::{Connection, ConnectionError};

use crate::transports::DownCause;
use crate::trust;
use crate::vocab::NodeId;

/// Maps how a connection ended to the cause reported upward.
pub(super) fn down_cause(e: &ConnectionError) -> DownCause {
    match e {
        ConnectionError::TimedOut => DownCause::Timeout,
        ConnectionError::Reset => DownCause::Reset,
        ConnectionError::LocallyClosed => DownCause::ClosedLocally,
        ConnectionError::ApplicationClosed(c) => DownCause::ClosedByPeer {
            code: c.error_code.into_inner() as u32,
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        },
        ConnectionError::ConnectionClosed(c) => {
            let code = u64::from(c.error_code);
            if (0x100..0x200).contains(&code) {
                DownCause::Tls(format!("peer sent TLS alert {}: {c}", code - 0x100))
            } else {
                DownCause::ClosedByPeer {
                    code: code as u32,
                    reason: String::from_utf8_lossy(&c.reason).into_owned(),
                }
            }
        }
        ConnectionError::TransportError(t) => {
            let code = u64::from(t.code);
            if (0x100..0x200).contains(&code) {
                DownCause::Tls(t.to_string())
            } else {
                DownCause::Reset
            }
        }
        other => DownCause::Unreachable(other.to_string()),
    }
}

/// The TLS alert behind a handshake failure, if it was one.
pub(super) fn tls_alert(e: &ConnectionError) -> Option<u8> {
    let code = match e {
        ConnectionError::TransportError(t) => u64::from(t.code),
        ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return None,
    };
    (0x100..0x200).contains(&code).then(|| (code - 0x100) as u8)
}

/// Whether a TLS alert is about certificates.
pub(super) fn is_certificate_alert(alert: u8) -> bool {
    // bad_certificate 42 … certificate_unknown 46, unknown_ca 48,
    // access_denied 49, decrypt_error 51, certificate_required 116.
    matches!(alert, 42..=46 | 48 | 49 | 51 | 116)
}

/// The node id in a connection's verified peer certificate.
pub(super) fn peer_node(conn: &Connection) -> Result<NodeId, trust::TrustError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or(trust::TrustError::NoIdentity)?;
    let leaf = certs.first().ok_or(trust::TrustError::NoIdentity)?;
    trust::node_from_certificate(leaf)
}

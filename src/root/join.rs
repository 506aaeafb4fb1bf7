//! The joining side of admission: redeem a join token for a node
//! certificate.
//!
//! Owns one short exchange on the root's join endpoint (`docs/root.md` §2):
//! generate a key pair locally, open a server-authenticated TLS connection
//! (ALPN `interlocking-join/1`) that trusts the root only if its chain holds
//! the CA whose fingerprint the token carries, send `JoinRequest` with the
//! public key, and read `JoinGranted` or `JoinRefused`. The private key
//! never leaves the node.
//!
//! [`renew`] is the same exchange for a node that holds a valid
//! certificate: it presents that certificate on the join connection, sends
//! an empty token and a fresh public key, and gets a new certificate with a
//! new lifetime (`docs/root.md` §2.3).
//!
//! Must not touch: the node's transports (the caller builds them from the
//! returned identity).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::admission::{AdmissionError, JoinToken};
use crate::trust::{self, NodeIdentity, TrustRoots};
use crate::vocab::{NodeId, Role};
use crate::wire::{CodecConfig, Frame, FrameDecoder, JoinRequest, read_frame, write_frame};

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The root refused the request with a typed reason.
    #[error("join refused: {0}")]
    Refused(#[from] AdmissionError),
    /// The root could not be reached, or did not prove it holds the CA the
    /// token names.
    #[error("root unreachable or not authenticated: {0}")]
    Unreachable(String),
    /// The root answered something other than the join protocol allows.
    #[error("join protocol error: {0}")]
    Protocol(String),
}

/// What a successful join returns.
#[derive(Clone, Debug)]
pub struct Joined {
    /// The node's credentials: the issued certificate, the CA, the key.
    pub identity: NodeIdentity,
    /// The roots to trust for mutual TLS with the root and other nodes.
    pub roots: TrustRoots,
    /// When the certificate expires.
    pub expires_at: SystemTime,
}

/// Joins through the root's join endpoint at `join_addr` (the root's node
/// id is `root`) with `token`, as `node` in `role`. Bounded by `timeout`.
pub async fn join(
    join_addr: SocketAddr,
    root: &NodeId,
    token: &str,
    node: &NodeId,
    role: Role,
    timeout: Duration,
) -> Result<Joined, JoinError> {
    let parsed: JoinToken = token.parse()?;
    exchange(
        join_addr,
        root,
        parsed.ca_fingerprint,
        token.trim(),
        None,
        node,
        role,
        timeout,
    )
    .await
}

/// Renews `identity`'s certificate through the root's join endpoint at
/// `join_addr` before it expires: the current certificate authenticates
/// the request (an expired or revoked one is refused), the new certificate
/// is for a freshly generated key. Bounded by `timeout`.
pub async fn renew(
    join_addr: SocketAddr,
    root: &NodeId,
    identity: &NodeIdentity,
    timeout: Duration,
) -> Result<Joined, JoinError> {
    let ca = identity
        .cert_chain
        .get(1)
        .ok_or_else(|| JoinError::Protocol("the identity holds no CA certificate".into()))?;
    exchange(
        join_addr,
        root,
        trust::fingerprint(ca),
        "",
        Some(identity),
        &identity.node,
        identity.role,
        timeout,
    )
    .await
}

/// One join exchange: `token` (empty for a renewal, which presents
/// `present`) for a certificate of a fresh key.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    join_addr: SocketAddr,
    root: &NodeId,
    ca_fingerprint: [u8; 32],
    token: &str,
    present: Option<&NodeIdentity>,
    node: &NodeId,
    role: Role,
    timeout: Duration,
) -> Result<Joined, JoinError> {
    let key = rcgen::KeyPair::generate().map_err(|e| JoinError::Protocol(e.to_string()))?;
    let tls = trust::join_client_config_as(ca_fingerprint, present)
        .map_err(|e| JoinError::Protocol(e.to_string()))?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| JoinError::Protocol(e.to_string()))?;
    let local = if join_addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let mut ep =
        quinn::Endpoint::client(local).map_err(|e| JoinError::Unreachable(e.to_string()))?;
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let codec = CodecConfig::default();
    let request = Frame::JoinRequest(JoinRequest {
        token: token.to_string(),
        node: node.clone(),
        role,
        public_key: Bytes::from(rcgen::PublicKeyData::subject_public_key_info(&key)),
    });
    let exchange = async {
        let conn = ep
            .connect(join_addr, &trust::server_name(root))
            .map_err(|e| JoinError::Unreachable(e.to_string()))?
            .await
            .map_err(|e| JoinError::Unreachable(e.to_string()))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| JoinError::Unreachable(e.to_string()))?;
        write_frame(&mut send, &request, &codec)
            .await
            .map_err(|e| JoinError::Unreachable(e.to_string()))?;
        let _ = send.finish();
        let mut buf = BytesMut::new();
        let mut decoder = FrameDecoder::new(codec);
        let answer = read_frame(&mut recv, &mut buf, &mut decoder)
            .await
            .map_err(|e| JoinError::Protocol(e.to_string()))?;
        conn.close(quinn::VarInt::from(0u8), b"done");
        Ok::<_, JoinError>(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| JoinError::Unreachable("join timed out".into()))??;
    ep.close(quinn::VarInt::from(0u8), b"done");
    match answer {
        Some(Frame::JoinGranted(g)) => {
            let ca = CertificateDer::from(g.ca.to_vec());
            if trust::fingerprint(&ca) != ca_fingerprint {
                return Err(JoinError::Protocol("granted CA is not the token's".into()));
            }
            let cert = CertificateDer::from(g.cert.to_vec());
            if trust::node_from_certificate(&cert).ok().as_ref() != Some(node) {
                return Err(JoinError::Protocol("certificate names another node".into()));
            }
            Ok(Joined {
                identity: NodeIdentity {
                    node: node.clone(),
                    role,
                    cert_chain: vec![cert, ca.clone()],
                    key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                },
                roots: TrustRoots::new(vec![ca]),
                expires_at: UNIX_EPOCH + Duration::from_millis(g.expires_at_ms),
            })
        }
        Some(Frame::JoinRefused(r)) => Err(JoinError::Refused(AdmissionError::from_refusal(
            r.code, &r.reason, node, role,
        ))),
        Some(other) => Err(JoinError::Protocol(format!(
            "unexpected {:?} frame",
            other.kind()
        ))),
        None => Err(JoinError::Protocol("root closed without answering".into())),
    }
}

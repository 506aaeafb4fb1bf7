//! Stateless-reset keys that survive restarts.
//!
//! Owns deriving the key quinn signs stateless-reset tokens with (RFC 9000
//! §10.3) from the node's private key. quinn's default key is random per
//! endpoint, so a restarted process cannot produce a token its
//! predecessor's peers recognise: they keep a dead connection until the
//! idle timeout. With a key derived from the identity, a restarted process
//! on the same address answers the first packet of such a connection with
//! a reset the peer accepts, and the peer re-dials at once. The same goes
//! for the connection-id generator's key: quinn only resets packets whose
//! connection id it recognises as one it could have issued.

use std::sync::Arc;

use crate::trust::NodeIdentity;

/// Domain separation: the key is used for nothing else.
const LABEL: &[u8] = b"interlocking/1 stateless-reset key";

/// The reset key of a node: HMAC-SHA256 keyed with a fixed label over
/// `secret` if given (a secret kept in the node's state dir, e.g. the
/// root's CA key when its own certificate is reissued at every start), else
/// over the node's private key. Deterministic, and revealing it reveals
/// nothing about the secret.
pub(crate) fn reset_key(identity: &NodeIdentity, secret: Option<&[u8]>) -> ring::hmac::Key {
    let label = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, LABEL);
    let tag = ring::hmac::sign(&label, secret.unwrap_or(identity.key.secret_der()));
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, tag.as_ref())
}

/// Domain separation of the connection-id key.
const CID_LABEL: &[u8] = b"interlocking/1 connection-id key";

/// The key of the connection-id generator, derived like the reset key.
/// quinn drops a short-header packet whose connection id its generator does
/// not validate before it considers a reset, and its default generator's
/// key is random per endpoint: a restarted process must recognise the ids
/// its predecessor issued to answer them with a reset.
fn cid_key(identity: &NodeIdentity, secret: Option<&[u8]>) -> u64 {
    let label = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, CID_LABEL);
    let tag = ring::hmac::sign(&label, secret.unwrap_or(identity.key.secret_der()));
    let mut key = [0u8; 8];
    key.copy_from_slice(&tag.as_ref()[..8]);
    u64::from_le_bytes(key)
}

/// The endpoint configuration of a node: quinn's defaults with the derived
/// reset key and connection-id key.
pub(crate) fn endpoint_config(
    identity: &NodeIdentity,
    secret: Option<&[u8]>,
) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key(identity, secret)));
    let key = cid_key(identity, secret);
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(key)));
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::CertificateAuthority;
    use crate::vocab::{NodeId, Role};

    #[test]
    fn same_identity_same_key_other_identity_other_key() {
        let ca = CertificateAuthority::generate("reset-test").unwrap();
        let hub = ca.issue_node(&NodeId::new("hub"), Role::Hub).unwrap();
        let again = NodeIdentity::from_bytes(&hub.to_bytes()).unwrap();
        let other = ca.issue_node(&NodeId::new("m1"), Role::Member).unwrap();
        let tag = |id: &NodeIdentity, secret: Option<&[u8]>| {
            ring::hmac::sign(&reset_key(id, secret), b"cid")
                .as_ref()
                .to_vec()
        };
        assert_eq!(tag(&hub, None), tag(&again, None));
        assert_ne!(tag(&hub, None), tag(&other, None));
        // A kept secret wins over the (reissued) identity.
        assert_eq!(tag(&hub, Some(b"kept")), tag(&other, Some(b"kept")));
    }
}

//! The certificate profile: what an issued leaf certificate carries beyond
//! rcgen's defaults, which public keys the root signs for, and the
//! precision of validity times (`docs/wire.md` §7.1).
//!
//! Owns only pure helpers used by [`super::CertificateAuthority`]; no TLS
//! configuration, no I/O.

use std::time::{Duration, SystemTime};

use super::TrustError;

/// `t` rounded down to a whole second since the Unix epoch (the precision
/// of X.509 validity times).
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    std::time::UNIX_EPOCH + Duration::from_secs(secs)
}

/// A public key type accepted in `JoinRequest.public_key`
/// (`docs/root.md` §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyType {
    /// ECDSA on NIST P-256 (`id-ecPublicKey`, `prime256v1`).
    EcdsaP256,
    /// ECDSA on NIST P-384 (`id-ecPublicKey`, `secp384r1`).
    EcdsaP384,
    /// Ed25519 (`id-Ed25519`, RFC 8410).
    Ed25519,
}

/// The type of the DER SubjectPublicKeyInfo `spki_der`, if it is one the
/// root signs certificates for: ECDSA P-256, ECDSA P-384 or Ed25519, with
/// a well-formed key. Anything else (RSA, other curves, trailing bytes) is
/// refused with [`TrustError::Parse`].
pub fn key_type(spki_der: &[u8]) -> Result<KeyType, TrustError> {
    use x509_parser::prelude::FromDer;
    let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| TrustError::Parse(format!("public key: {e}")))?;
    if !rest.is_empty() {
        return Err(TrustError::Parse(
            "public key: bytes after the SubjectPublicKeyInfo".into(),
        ));
    }
    let alg = spki.algorithm.algorithm.to_id_string();
    let param = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let key = &spki.subject_public_key.data;
    let (kind, len) = match (alg.as_str(), param.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => (KeyType::EcdsaP256, 65),
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => (KeyType::EcdsaP384, 97),
        ("1.3.101.112", None) => (KeyType::Ed25519, 32),
        _ => {
            return Err(TrustError::Parse(format!(
                "public key algorithm {alg} ({}) is not accepted: use ECDSA P-256, P-384 or Ed25519",
                param.as_deref().unwrap_or("no parameters")
            )));
        }
    };
    let uncompressed = kind == KeyType::Ed25519 || key.first() == Some(&0x04);
    if key.len() != len || !uncompressed {
        return Err(TrustError::Parse(format!(
            "public key: {kind:?} key of {} bytes, expected {len}{}",
            key.len(),
            if kind == KeyType::Ed25519 {
                ""
            } else {
                " (uncompressed point)"
            }
        )));
    }
    Ok(kind)
}

/// OID of the BasicConstraints extension (RFC 5280 §4.2.1.9).
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];

/// OID of the subject key identifier extension (RFC 5280 §4.2.1.2).
const OID_SUBJECT_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 14];

/// BasicConstraints of a leaf: critical, `SEQUENCE {}` (cA takes its
/// DEFAULT, FALSE, and is therefore absent in DER).
pub(super) fn leaf_basic_constraints() -> rcgen::CustomExtension {
    let mut ext = rcgen::CustomExtension::from_oid_content(OID_BASIC_CONSTRAINTS, vec![0x30, 0x00]);
    ext.set_criticality(true);
    ext
}

/// The subject key identifier of a public key: the first 20 bytes of the
/// SHA-256 of its DER SubjectPublicKeyInfo, as an OCTET STRING (the same
/// method rcgen uses for the CA certificate).
pub(super) fn subject_key_identifier(spki_der: &[u8]) -> rcgen::CustomExtension {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let mut content = vec![0x04, 20];
    content.extend_from_slice(&digest.as_ref()[..20]);
    rcgen::CustomExtension::from_oid_content(OID_SUBJECT_KEY_IDENTIFIER, content)
}

//! Trust: node certificates, the certificate authority that issues them, and
//! the rustls configurations that enforce mutual authentication.
//!
//! Owns how a node proves who it is on an authenticated transport: a node's
//! identity is carried in its certificate (a URI subject alternative name
//! `interlocking:node/<id>` plus a DNS name derived from the id, see
//! [`server_name`]) and is read back from the *verified* certificate with
//! [`node_from_certificate`] — never from a frame.
//!
//! [`CertificateAuthority`] creates a CA and node certificates with rcgen;
//! the root service ([`crate::root`]) issues through it: for a key it never
//! sees ([`CertificateAuthority::issue_for_key`], used by admission) or, out
//! of band, with a key it generates ([`CertificateAuthority::issue_node`]).
//! Certificates carry a validity window that TLS checks on every
//! handshake. The join ALPN ([`JOIN_ALPN`]) uses server-only
//! authentication: [`join_client_config`] trusts the server whose chain
//! contains the CA with a given SHA-256 fingerprint (the one in the join
//! token), and [`join_server_config`] asks for no client certificate.
//!
//! Must not touch: sockets, frames, channels, routing. Transports call in
//! here to build their TLS configuration; nothing here calls a transport.
//!
//! TLS policy: TLS 1.3 only, ALPN [`ALPN`], 0-RTT off, client certificates
//! required and verified against the same roots as server certificates.
//! rustls is built with the ring provider only; [`ensure_crypto_provider`]
//! installs it as the process default once, before any configuration is
//! built (see `DESIGN.md` §9).

use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::vocab::{NodeId, Role};

mod profile;

pub use profile::{KeyType, key_type, whole_seconds};
use profile::{leaf_basic_constraints, subject_key_identifier};

/// The ALPN protocol id of this protocol version (`docs/wire.md` §1).
pub const ALPN: &[u8] = b"interlocking/2";

/// The ALPN of the admission protocol (`docs/root.md` §2): server-only TLS,
/// one `JoinRequest` answered by `JoinGranted` or `JoinRefused`.
pub const JOIN_ALPN: &[u8] = b"interlocking-join/1";

/// The prefix of the URI subject alternative name that carries a node id.
pub const NODE_URI_PREFIX: &str = "interlocking:node/";

/// The DNS suffix of the name derived from a node id (see [`server_name`]).
pub const NODE_DNS_SUFFIX: &str = "node.interlocking";

/// Why a trust operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("tls configuration refused: {0}")]
    Tls(#[from] rustls::Error),
    /// The verifier could not be built (for example, no roots).
    #[error("verifier: {0}")]
    Verifier(String),
    /// The certificate could not be parsed.
    #[error("certificate could not be parsed: {0}")]
    Parse(String),
    /// The certificate names no node.
    #[error("certificate carries no node identity")]
    NoIdentity,
}

/// Installs rustls' ring crypto provider as the process default, once.
///
/// Called by every configuration builder here; harmless if another part of
/// the process installed a provider first.
pub fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn provider() -> Arc<CryptoProvider> {
    ensure_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The DNS name that stands for `node` in certificates and as the TLS
/// server name: the id's bytes in lower-case hex, cut into labels of at most
/// 60 characters, followed by [`NODE_DNS_SUFFIX`]. Ids longer than 60 bytes
/// use `h` followed by the hex SHA-256 of the id instead, so any node id
/// maps to a valid DNS name.
pub fn server_name(node: &NodeId) -> String {
    let bytes = node.as_str().as_bytes();
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let body = if bytes.is_empty() {
        "empty".to_string()
    } else if bytes.len() <= 60 {
        hex(bytes)
    } else {
        format!(
            "h{}",
            hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
        )
    };
    let mut out = String::new();
    for chunk in body.as_bytes().chunks(60) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('.');
    }
    out.push_str(NODE_DNS_SUFFIX);
    out
}

/// The URI subject alternative name that carries `node`: [`NODE_URI_PREFIX`]
/// followed by the id, percent-encoded outside `A–Z a–z 0–9 - . _ ~`.
pub fn node_uri(node: &NodeId) -> String {
    let mut out = String::from(NODE_URI_PREFIX);
    for b in node.as_str().bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Reads the node id from a certificate's URI subject alternative name.
///
/// Call it only on a certificate the TLS layer has verified (for QUIC: the
/// first certificate of the connection's peer identity).
pub fn node_from_certificate(cert: &CertificateDer<'_>) -> Result<NodeId, TrustError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TrustError::Parse(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| TrustError::Parse(e.to_string()))?
        .ok_or(TrustError::NoIdentity)?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(rest) = uri.strip_prefix(NODE_URI_PREFIX)
        {
            let id = percent_decode(rest).ok_or(TrustError::NoIdentity)?;
            if id.is_empty() {
                return Err(TrustError::NoIdentity);
            }
            return Ok(NodeId::new(id));
        }
    }
    Err(TrustError::NoIdentity)
}

/// Reads the role from a certificate's subject `OU` (`hub`, `root`,
/// `member`, `sidecar`, `browser`), as issued by [`CertificateAuthority`].
///
/// Call it only on a verified certificate.
pub fn role_from_certificate(cert: &CertificateDer<'_>) -> Result<Role, TrustError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TrustError::Parse(e.to_string()))?;
    let mut units = parsed.subject().iter_organizational_unit();
    let ou = units
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or(TrustError::NoIdentity)?;
    if units.next().is_some() {
        return Err(TrustError::Parse("more than one OU".into()));
    }
    Role::ALL
        .iter()
        .copied()
        .find(|r| r.to_string() == ou)
        .ok_or_else(|| TrustError::Parse(format!("unknown role {ou:?}")))
}

/// A node's credentials: its certificate chain (leaf first) and private key.
#[derive(Debug)]
pub struct NodeIdentity {
    /// The node the certificate names.
    pub node: NodeId,
    /// The role it was issued for (recorded in the subject's OU).
    pub role: Role,
    /// The certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            role: self.role,
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The wire form of [`NodeIdentity::to_bytes`].
#[derive(serde::Serialize, serde::Deserialize)]
struct IdentityBytes {
    node: NodeId,
    role: Role,
    #[serde(with = "serde_bytes_vec")]
    chain: Vec<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
}

mod serde_bytes_vec {
    pub fn serialize<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<serde_bytes::ByteBuf> =
            v.iter().cloned().map(serde_bytes::ByteBuf::from).collect();
        serde::Serialize::serialize(&v, s)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<serde_bytes::ByteBuf> = serde::Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(|b| b.into_vec()).collect())
    }
}

impl NodeIdentity {
    /// Encodes the identity (certificate chain and **private key**) as
    /// MessagePack, to hand it to another process of the same deployment
    /// (tests, tools). Keep the bytes as secret as the key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = IdentityBytes {
            node: self.node.clone(),
            role: self.role,
            chain: self.cert_chain.iter().map(|c| c.to_vec()).collect(),
            key: self.key.secret_der().to_vec(),
        };
        // Encoding plain structs into a Vec cannot fail.
        rmp_serde::to_vec(&wire).unwrap_or_default()
    }

    /// Decodes [`NodeIdentity::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        let wire: IdentityBytes =
            rmp_serde::from_slice(bytes).map_err(|e| TrustError::Parse(e.to_string()))?;
        Ok(Self {
            node: wire.node,
            role: wire.role,
            cert_chain: wire.chain.into_iter().map(CertificateDer::from).collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(wire.key)),
        })
    }
}

/// The certificates a node trusts as issuers of peer certificates.
#[derive(Clone, Debug, Default)]
pub struct TrustRoots {
    /// Trusted CA certificates.
    pub roots: Vec<CertificateDer<'static>>,
}

impl TrustRoots {
    /// Roots made of the given CA certificates.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Self {
        Self { roots }
    }

    fn store(&self) -> Result<Arc<RootCertStore>, TrustError> {
        let mut store = RootCertStore::empty();
        for r in &self.roots {
            store.add(r.clone())?;
        }
        Ok(Arc::new(store))
    }
}

/// A certificate authority that issues node certificates (rcgen).
pub struct CertificateAuthority {
    name: String,
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// The SHA-256 of a DER certificate (a CA fingerprint).
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Clock skew tolerated on `notBefore` of issued certificates.
const BACKDATE: Duration = Duration::from_secs(300);

fn node_params(
    node: &NodeId,
    role: Role,
    spki_der: &[u8],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, TrustError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, node.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.to_string());
    params.subject_alt_names = vec![
        SanType::URI(node_uri(node).as_str().try_into()?),
        SanType::DnsName(server_name(node).as_str().try_into()?),
    ];
    // Not a CA. rcgen's `IsCa::ExplicitNoCa` writes BasicConstraints as
    // `SEQUENCE { BOOLEAN FALSE }`, which is not DER (a value equal to the
    // DEFAULT must be omitted) and strict parsers refuse it; `IsCa::NoCa`
    // writes neither BasicConstraints nor a subject key identifier. So the
    // leaf carries both as explicit extensions: BasicConstraints as the
    // empty SEQUENCE (cA FALSE by default, valid DER), critical, and the
    // subject key identifier of `docs/wire.md` §7.1.
    params.is_ca = IsCa::NoCa;
    params.custom_extensions = vec![leaf_basic_constraints(), subject_key_identifier(spki_der)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    let mut serial = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut serial[..]);
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    Ok(params)
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a new self-signed CA named `name` (ECDSA P-256).
    pub fn generate(name: &str) -> Result<Self, TrustError> {
        ensure_crypto_provider();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "interlocking");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            name: name.to_string(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Roots trusting exactly this CA.
    pub fn roots(&self) -> TrustRoots {
        TrustRoots::new(vec![self.cert.clone()])
    }

    /// Issues a certificate for `node` in `role`, usable both as TLS server
    /// and client certificate, with a fresh key, valid for ten years (tests
    /// and out-of-band issuance; admission uses
    /// [`CertificateAuthority::issue_for_key`] with a short lifetime).
    pub fn issue_node(&self, node: &NodeId, role: Role) -> Result<NodeIdentity, TrustError> {
        let now = SystemTime::now();
        self.issue_node_valid(
            node,
            role,
            now - BACKDATE,
            now + Duration::from_secs(10 * 365 * 86_400),
        )
    }

    /// Like [`CertificateAuthority::issue_node`] with an explicit validity
    /// window (a window in the past makes an expired certificate).
    pub fn issue_node_valid(
        &self,
        node: &NodeId,
        role: Role,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<NodeIdentity, TrustError> {
        let key = KeyPair::generate()?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let params = node_params(node, role, &spki, not_before, not_after)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(NodeIdentity {
            node: node.clone(),
            role,
            cert_chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// Issues a certificate naming `node` in `role` for the public key
    /// `spki_der` (DER SubjectPublicKeyInfo; the private key never leaves
    /// its owner), valid from a few minutes ago for `lifetime`. Returns the
    /// certificate and its `notAfter`.
    pub fn issue_for_key(
        &self,
        node: &NodeId,
        role: Role,
        spki_der: &[u8],
        lifetime: Duration,
    ) -> Result<(CertificateDer<'static>, SystemTime), TrustError> {
        key_type(spki_der)?;
        let key = rcgen::SubjectPublicKeyInfo::from_der(spki_der)?;
        let now = SystemTime::now();
        // X.509 times have whole seconds: cut `notAfter` to the second so
        // the returned time (`JoinGranted.expires_at_ms`) equals it exactly.
        let not_after = whole_seconds(now + lifetime);
        let params = node_params(node, role, spki_der, now - BACKDATE, not_after)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.der().clone(), not_after))
    }

    /// The CA's SHA-256 fingerprint (see [`fingerprint`]).
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert)
    }

    /// The CA's private key (PKCS#8 DER), for persisting it.
    pub fn key_der(&self) -> Vec<u8> {
        self.issuer.key().serialize_der()
    }

    /// Rebuilds a CA from its certificate and PKCS#8 key (as persisted from
    /// [`CertificateAuthority::certificate`] and
    /// [`CertificateAuthority::key_der`]).
    pub fn from_der(name: &str, cert: &[u8], key_pkcs8: &[u8]) -> Result<Self, TrustError> {
        ensure_crypto_provider();
        let key = KeyPair::try_from(key_pkcs8)?;
        let cert = CertificateDer::from(cert.to_vec());
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        Ok(Self {
            name: name.to_string(),
            cert,
            issuer,
        })
    }
}

/// A rustls server configuration: TLS 1.3 only, client certificates
/// required and chained to `roots`, ALPN [`ALPN`], no 0-RTT.
pub fn server_config(
    identity: &NodeIdentity,
    roots: &TrustRoots,
) -> Result<rustls::ServerConfig, TrustError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.store()?, provider.clone())
        .build()
        .map_err(|e| TrustError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    // No session resumption: every handshake verifies the certificate the
    // peer holds now (a resumed session would carry the identity of the
    // first handshake past that certificate's expiry).
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// A rustls client configuration: TLS 1.3 only, server certificates chained
/// to `roots`, presenting `identity`, ALPN [`ALPN`], no 0-RTT.
pub fn client_config(
    identity: &NodeIdentity,
    roots: &TrustRoots,
) -> Result<rustls::ClientConfig, TrustError> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots.store()?)
        .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = false;
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// A rustls server configuration for the join ALPN: TLS 1.3, server
/// certificate `identity`, ALPN [`JOIN_ALPN`] only, and an **optional**
/// client certificate: a joiner presents none (its join token
/// authenticates it); a node renewing its certificate presents its current
/// one, which must chain to `roots` and be within its validity (checked in
/// the handshake, like on the node endpoint).
pub fn join_server_config(
    identity: &NodeIdentity,
    roots: &TrustRoots,
) -> Result<rustls::ServerConfig, TrustError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.store()?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TrustError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    cfg.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// A rustls client configuration for joining: TLS 1.3, ALPN [`JOIN_ALPN`],
/// no client certificate, and a server accepted only if its chain carries
/// a CA certificate whose SHA-256 is `ca_fingerprint` and the leaf verifies
/// against that CA (full WebPKI verification, server name included).
pub fn join_client_config(ca_fingerprint: [u8; 32]) -> Result<rustls::ClientConfig, TrustError> {
    join_client_config_as(ca_fingerprint, None)
}

/// [`join_client_config`], presenting `identity` as the client certificate
/// when given (a renewal).
pub fn join_client_config_as(
    ca_fingerprint: [u8; 32],
    identity: Option<&NodeIdentity>,
) -> Result<rustls::ClientConfig, TrustError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: ca_fingerprint,
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some(id) => builder.with_client_auth_cert(id.cert_chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    cfg.enable_early_data = false;
    Ok(cfg)
}

/// Trusts the CA certificate with a pinned fingerprint found in the
/// server's own chain, then verifies the chain against it with WebPKI.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_round_trips_through_der_and_signs_foreign_keys() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let again =
            CertificateAuthority::from_der("test-ca", ca.certificate(), &ca.key_der()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        let key = KeyPair::generate().unwrap();
        let node = NodeId::new("m1");
        let (cert, _) = again
            .issue_for_key(
                &node,
                Role::Member,
                &rcgen::PublicKeyData::subject_public_key_info(&key),
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(node_from_certificate(&cert).unwrap(), node);
        join_client_config(ca.fingerprint()).unwrap();
    }

    #[test]
    fn accepted_key_types_are_exactly_p256_p384_and_ed25519() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let node = NodeId::new("m1");
        for (alg, want) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyType::EcdsaP256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyType::EcdsaP384),
            (&rcgen::PKCS_ED25519, KeyType::Ed25519),
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
            assert_eq!(key_type(&spki).unwrap(), want);
            let (cert, _) = ca
                .issue_for_key(&node, Role::Member, &spki, Duration::from_secs(60))
                .unwrap();
            assert_eq!(node_from_certificate(&cert).unwrap(), node);
            // Trailing bytes and a cut key are refused.
            let mut long = spki.clone();
            long.push(0);
            assert!(key_type(&long).is_err());
            assert!(key_type(&spki[..spki.len() - 1]).is_err());
        }
        // rsaEncryption with a (tiny) key: a well-formed SPKI of a refused type.
        let rsa = [
            0x30, 0x1a, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
            0x01, 0x05, 0x00, 0x03, 0x09, 0x00, 0x30, 0x06, 0x02, 0x01, 0x03, 0x02, 0x01, 0x03,
        ];
        let err = key_type(&rsa).unwrap_err().to_string();
        assert!(err.contains("1.2.840.113549.1.1.1"), "{err}");
        assert!(
            ca.issue_for_key(&node, Role::Member, &rsa, Duration::from_secs(60))
                .is_err()
        );
        assert!(key_type(b"not der").is_err());
    }

    #[test]
    fn whole_seconds_cuts_the_fraction() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        assert_eq!(
            whole_seconds(t),
            std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
    }

    #[test]
    fn issued_certificate_names_its_node() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        for id in ["hub-1", "m/7 ü", "x"] {
            let node = NodeId::new(id);
            let ident = ca.issue_node(&node, Role::Member).unwrap();
            assert_eq!(node_from_certificate(&ident.cert_chain[0]).unwrap(), node);
        }
        assert!(node_from_certificate(ca.certificate()).is_err());
        for role in Role::ALL {
            let ident = ca.issue_node(&NodeId::new("r"), role).unwrap();
            assert_eq!(role_from_certificate(&ident.cert_chain[0]).unwrap(), role);
        }
        assert!(role_from_certificate(ca.certificate()).is_err());
    }

    #[test]
    fn server_name_is_a_valid_dns_name() {
        for id in ["hub-1", "m/7 ü", &"long".repeat(40)] {
            let name = server_name(&NodeId::new(id));
            assert!(
                rustls::pki_types::ServerName::try_from(name.clone()).is_ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn identity_round_trips_through_bytes() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let ident = ca.issue_node(&NodeId::new("m1"), Role::Member).unwrap();
        let back = NodeIdentity::from_bytes(&ident.to_bytes()).unwrap();
        assert_eq!(back.node, ident.node);
        assert_eq!(back.role, ident.role);
        assert_eq!(back.cert_chain, ident.cert_chain);
        assert_eq!(back.key.secret_der(), ident.key.secret_der());
        client_config(&back, &ca.roots()).unwrap();
        assert!(NodeIdentity::from_bytes(&[0xc1]).is_err());
    }

    #[test]
    fn configs_build() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let ident = ca.issue_node(&NodeId::new("a"), Role::Hub).unwrap();
        server_config(&ident, &ca.roots()).unwrap();
        client_config(&ident, &ca.roots()).unwrap();
    }
}

//! Every certificate the project issues is strict DER and follows the
//! profile of `docs/wire.md` §7.1, checked with a strict parser (pyca's
//! `asn1`, the parser behind Python's `cryptography`), not with the lenient
//! ones rustls and x509-parser use: the CA, node certificates issued out of
//! band, certificates issued at admission for a foreign key, and the
//! certificates a running root actually serves on its join endpoint and its
//! node endpoint (captured from real TLS handshakes on loopback).
//!
//! The parser is checked to refuse the encoding this crate used to emit
//! (BasicConstraints `SEQUENCE { BOOLEAN FALSE }`, a DEFAULT value encoded),
//! so the test would fail if that encoding came back.

// The derive macros of `asn1` return its (large) `ParseError` by value.
#![allow(clippy::result_large_err)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::rootkit::{LIMIT, joined, root};
use interlocking::trust::{self, CertificateAuthority, node_uri, server_name};
use interlocking::vocab::{NodeId, Role};
use rustls::pki_types::CertificateDer;

// ---- X.509 (RFC 5280) as strict DER structures ------------------------------

#[derive(asn1::Asn1Read)]
struct Certificate<'a> {
    tbs: TbsCertificate<'a>,
    signature_algorithm: AlgorithmIdentifier<'a>,
    #[allow(dead_code)]
    signature: asn1::BitString<'a>,
}

#[derive(asn1::Asn1Read)]
struct TbsCertificate<'a> {
    #[explicit(0)]
    #[default(0u8)]
    version: u8,
    serial: asn1::BigUint<'a>,
    signature: AlgorithmIdentifier<'a>,
    issuer: Name<'a>,
    validity: Validity,
    subject: Name<'a>,
    spki: SubjectPublicKeyInfo<'a>,
    #[implicit(1)]
    issuer_unique_id: Option<asn1::BitString<'a>>,
    #[implicit(2)]
    subject_unique_id: Option<asn1::BitString<'a>>,
    #[explicit(3)]
    extensions: Option<asn1::SequenceOf<'a, Extension<'a>>>,
}

type Name<'a> = asn1::SequenceOf<'a, asn1::SetOf<'a, AttributeTypeAndValue<'a>>>;

#[derive(asn1::Asn1Read)]
struct AttributeTypeAndValue<'a> {
    oid: asn1::ObjectIdentifier,
    value: asn1::Utf8String<'a>,
}

#[derive(asn1::Asn1Read, PartialEq, Eq)]
struct AlgorithmIdentifier<'a> {
    oid: asn1::ObjectIdentifier,
    params: Option<asn1::Tlv<'a>>,
}

#[derive(asn1::Asn1Read)]
struct Validity {
    not_before: Time,
    not_after: Time,
}

#[derive(asn1::Asn1Read)]
enum Time {
    Utc(asn1::UtcTime),
    Generalized(asn1::X509GeneralizedTime),
}

#[derive(asn1::Asn1Read)]
struct SubjectPublicKeyInfo<'a> {
    algorithm: AlgorithmIdentifier<'a>,
    #[allow(dead_code)]
    key: asn1::BitString<'a>,
}

#[derive(asn1::Asn1Read)]
struct Extension<'a> {
    oid: asn1::ObjectIdentifier,
    #[default(false)]
    critical: bool,
    value: &'a [u8],
}

#[derive(asn1::Asn1Read)]
struct BasicConstraints {
    #[default(false)]
    ca: bool,
    path_len: Option<u64>,
}

#[derive(asn1::Asn1Read)]
enum GeneralName<'a> {
    #[implicit(2)]
    Dns(asn1::IA5String<'a>),
    #[implicit(6)]
    Uri(asn1::IA5String<'a>),
}

#[derive(asn1::Asn1Read)]
struct AuthorityKeyIdentifier<'a> {
    #[implicit(0)]
    key_identifier: Option<&'a [u8]>,
    #[implicit(1)]
    issuer: Option<asn1::SequenceOf<'a, GeneralName<'a>>>,
    #[implicit(2)]
    serial: Option<asn1::BigUint<'a>>,
}

const BASIC_CONSTRAINTS: asn1::ObjectIdentifier = asn1::oid!(2, 5, 29, 19);
const KEY_USAGE: asn1::ObjectIdentifier = asn1::oid!(2, 5, 29, 15);
const EXT_KEY_USAGE: asn1::ObjectIdentifier = asn1::oid!(2, 5, 29, 37);
const SUBJECT_ALT_NAME: asn1::ObjectIdentifier = asn1::oid!(2, 5, 29, 17);
const SUBJECT_KEY_ID: asn1::ObjectIdentifier = asn1::oid!(2, 5, 29, 14);
const AUTHORITY_KEY_ID: asn1::ObjectIdentifier = asn1::oid!(2, 5, 29, 35);
const SERVER_AUTH: asn1::ObjectIdentifier = asn1::oid!(1, 3, 6, 1, 5, 5, 7, 3, 1);
const CLIENT_AUTH: asn1::ObjectIdentifier = asn1::oid!(1, 3, 6, 1, 5, 5, 7, 3, 2);
const ECDSA_SHA256: asn1::ObjectIdentifier = asn1::oid!(1, 2, 840, 10045, 4, 3, 2);
const EC_PUBLIC_KEY: asn1::ObjectIdentifier = asn1::oid!(1, 2, 840, 10045, 2, 1);
const COMMON_NAME: asn1::ObjectIdentifier = asn1::oid!(2, 5, 4, 3);
const ORG_UNIT: asn1::ObjectIdentifier = asn1::oid!(2, 5, 4, 11);
const ORG: asn1::ObjectIdentifier = asn1::oid!(2, 5, 4, 10);

/// What the profile check found in one certificate.
#[derive(Debug, Default)]
struct Profile {
    ca: bool,
    key_usage: Vec<u8>,
    eku: Vec<asn1::ObjectIdentifier>,
    uris: Vec<String>,
    dns: Vec<String>,
    names: Vec<(asn1::ObjectIdentifier, String)>,
    issuer: Vec<(asn1::ObjectIdentifier, String)>,
    ski: Option<Vec<u8>>,
    aki: Option<Vec<u8>>,
    not_after: u64,
}

fn secs(t: &Time) -> u64 {
    let dt = match t {
        Time::Utc(u) => u.as_datetime().clone(),
        Time::Generalized(g) => g.as_datetime().clone(),
    };
    // Days from civil (proleptic Gregorian), enough for 1970..9999.
    let (y, m, d) = (
        i64::from(dt.year()),
        i64::from(dt.month()),
        i64::from(dt.day()),
    );
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400
        + i64::from(dt.hour()) * 3600
        + i64::from(dt.minute()) * 60
        + i64::from(dt.second())) as u64
}

/// Parses `der` strictly and checks the structural rules every issued
/// certificate must follow; returns what it carries.
fn strict(der: &[u8]) -> Result<Profile, String> {
    let cert = asn1::parse_single::<Certificate<'_>>(der).map_err(|e| format!("{e:?}"))?;
    let tbs = &cert.tbs;
    if tbs.version != 2 {
        return Err(format!("version {} (want v3 = 2)", tbs.version));
    }
    let serial = tbs.serial.as_bytes();
    if serial.len() > 20 {
        return Err(format!("serial of {} bytes", serial.len()));
    }
    if tbs.signature != cert.signature_algorithm || tbs.signature.oid != ECDSA_SHA256 {
        return Err("signature algorithm is not ecdsa-with-SHA256 in both places".into());
    }
    if tbs.signature.params.is_some() {
        return Err("ecdsa-with-SHA256 must have absent parameters".into());
    }
    if tbs.spki.algorithm.oid != EC_PUBLIC_KEY {
        return Err("issued keys are EC keys here".into());
    }
    if tbs.issuer_unique_id.is_some() || tbs.subject_unique_id.is_some() {
        return Err("unique ids are not used".into());
    }
    for t in [&tbs.validity.not_before, &tbs.validity.not_after] {
        // RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime after.
        let year = match t {
            Time::Utc(u) => u.as_datetime().year(),
            Time::Generalized(g) => {
                let y = g.as_datetime().year();
                if y < 2050 {
                    return Err(format!("GeneralizedTime for year {y}"));
                }
                y
            }
        };
        if year < 1970 {
            return Err(format!("validity year {year}"));
        }
    }
    let mut p = Profile {
        not_after: secs(&tbs.validity.not_after),
        ..Profile::default()
    };
    for rdn in tbs.subject.clone() {
        for atv in rdn {
            p.names.push((atv.oid, atv.value.as_str().to_string()));
        }
    }
    for rdn in tbs.issuer.clone() {
        for atv in rdn {
            p.issuer.push((atv.oid, atv.value.as_str().to_string()));
        }
    }
    let exts = tbs.extensions.clone().ok_or("no extensions")?;
    let mut seen = Vec::new();
    for ext in exts {
        if seen.contains(&ext.oid) {
            return Err(format!("extension {} twice", ext.oid));
        }
        seen.push(ext.oid.clone());
        let name = ext.oid.to_string();
        let err = |e: asn1::ParseError| format!("extension {name}: {e:?}");
        match ext.oid {
            o if o == BASIC_CONSTRAINTS => {
                let bc = asn1::parse_single::<BasicConstraints>(ext.value).map_err(err)?;
                if !ext.critical {
                    return Err("BasicConstraints not critical".into());
                }
                if bc.path_len.is_some() {
                    return Err("path length constraint set".into());
                }
                p.ca = bc.ca;
            }
            o if o == KEY_USAGE => {
                let bits = asn1::parse_single::<asn1::BitString<'_>>(ext.value).map_err(err)?;
                let bytes = bits.as_bytes();
                // DER named bit list: no trailing zero bits.
                let last = (0..bytes.len() * 8 - bits.padding_bits() as usize)
                    .rev()
                    .find(|&i| bits.has_bit_set(i));
                if last.map(|l| l + 1) != Some(bytes.len() * 8 - bits.padding_bits() as usize) {
                    return Err("KeyUsage has trailing zero bits".into());
                }
                if !ext.critical {
                    return Err("KeyUsage not critical".into());
                }
                p.key_usage = (0..9)
                    .filter(|&i| bits.has_bit_set(i))
                    .map(|i| i as u8)
                    .collect();
            }
            o if o == EXT_KEY_USAGE => {
                let eku =
                    asn1::parse_single::<asn1::SequenceOf<'_, asn1::ObjectIdentifier>>(ext.value)
                        .map_err(err)?;
                p.eku = eku.collect();
            }
            o if o == SUBJECT_ALT_NAME => {
                let names = asn1::parse_single::<asn1::SequenceOf<'_, GeneralName<'_>>>(ext.value)
                    .map_err(err)?;
                for n in names {
                    match n {
                        GeneralName::Dns(s) => p.dns.push(s.as_str().to_string()),
                        GeneralName::Uri(s) => p.uris.push(s.as_str().to_string()),
                    }
                }
            }
            o if o == SUBJECT_KEY_ID => {
                let id = asn1::parse_single::<&[u8]>(ext.value).map_err(err)?;
                p.ski = Some(id.to_vec());
            }
            o if o == AUTHORITY_KEY_ID => {
                let aki =
                    asn1::parse_single::<AuthorityKeyIdentifier<'_>>(ext.value).map_err(err)?;
                if aki.issuer.is_some() || aki.serial.is_some() {
                    return Err("AuthorityKeyIdentifier names issuer/serial".into());
                }
                p.aki = aki.key_identifier.map(<[u8]>::to_vec);
            }
            other => return Err(format!("unexpected extension {other}")),
        }
    }
    Ok(p)
}

/// Checks `der` against the node (leaf) profile for `node` in `role`,
/// issued by `ca`.
fn assert_leaf(der: &CertificateDer<'_>, node: &NodeId, role: Role, ca: &CertificateDer<'_>) {
    let p = strict(der).unwrap_or_else(|e| panic!("certificate of {node} is not strict DER: {e}"));
    let ca_p = strict(ca).expect("CA is strict DER");
    assert!(!p.ca, "{node}: a leaf must not be a CA");
    assert_eq!(p.key_usage, vec![0], "{node}: digitalSignature only");
    assert_eq!(p.eku, vec![SERVER_AUTH, CLIENT_AUTH], "{node}: EKUs");
    assert_eq!(p.uris, vec![node_uri(node)], "{node}: URI SAN");
    assert_eq!(p.dns, vec![server_name(node)], "{node}: DNS SAN");
    assert_eq!(
        p.names,
        vec![
            (COMMON_NAME, node.as_str().to_string()),
            (ORG_UNIT, role.to_string())
        ],
        "{node}: subject"
    );
    assert_eq!(p.issuer, ca_p.names, "{node}: issuer is the CA's subject");
    assert_eq!(p.ski.as_ref().map(Vec::len), Some(20), "{node}: SKI");
    assert_eq!(p.aki, ca_p.ski, "{node}: AKI is the CA's key id");
    assert_eq!(trust::node_from_certificate(der).unwrap(), *node);
}

fn assert_ca(der: &CertificateDer<'_>) {
    let p = strict(der).unwrap_or_else(|e| panic!("CA is not strict DER: {e}"));
    assert!(p.ca, "the CA is a CA");
    // digitalSignature (0), keyCertSign (5), cRLSign (6)
    assert_eq!(p.key_usage, vec![0, 5, 6]);
    assert!(p.eku.is_empty() && p.uris.is_empty() && p.dns.is_empty());
    assert_eq!(p.ski.as_ref().map(Vec::len), Some(20));
    assert!(p.names.contains(&(ORG, "interlocking".to_string())));
}

#[test]
fn the_strict_parser_refuses_an_encoded_default() {
    // The encoding the crate emitted before: BasicConstraints with an
    // explicit `cA FALSE`.
    let ca = CertificateAuthority::generate("t").unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["x.example".to_string()]).unwrap();
    // Written by hand (rcgen ≥ 0.14.10 no longer emits it for
    // `IsCa::ExplicitNoCa`): BasicConstraints ::= SEQUENCE { cA BOOLEAN
    // FALSE }, the DEFAULT encoded.
    params.is_ca = rcgen::IsCa::NoCa;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 19],
            vec![0x30, 0x03, 0x01, 0x01, 0x00],
        ));
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.certificate(), {
        rcgen::KeyPair::try_from(ca.key_der().as_slice()).unwrap()
    })
    .unwrap();
    let old = params.signed_by(&key, &issuer).unwrap();
    let err = strict(old.der()).expect_err("an encoded DEFAULT is not DER");
    assert!(err.contains("EncodedDefault"), "{err}");
    // ...and the lenient parser the crate reads identities with takes it, which is why a strict
    // parser is needed here.
    assert!(lenient_parser_accepts(old.der()));
}

/// Whether x509-parser (lenient, as the crate's own identity reader uses)
/// parses the certificate.
fn lenient_parser_accepts(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok()
}

#[test]
fn ca_and_out_of_band_certificates_are_strict_der() {
    let ca = CertificateAuthority::generate("interlocking root CA").unwrap();
    assert_ca(ca.certificate());
    let again = CertificateAuthority::from_der("x", ca.certificate(), &ca.key_der()).unwrap();
    for (id, role) in [
        ("hub-1", Role::Hub),
        ("m/7 ü", Role::Member),
        ("root", Role::Root),
        ("s", Role::Sidecar),
        (&*"long".repeat(40), Role::Browser),
    ] {
        let node = NodeId::new(id);
        let ident = again.issue_node(&node, role).unwrap();
        assert_leaf(&ident.cert_chain[0], &node, role, ca.certificate());
        assert_eq!(&ident.cert_chain[1], ca.certificate());
        let now = SystemTime::now();
        let expired = again
            .issue_node_valid(
                &node,
                role,
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
            )
            .unwrap();
        assert_leaf(&expired.cert_chain[0], &node, role, ca.certificate());
    }
}

#[test]
fn admission_certificates_are_strict_der_and_end_on_a_whole_second() {
    let ca = CertificateAuthority::generate("interlocking root CA").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let node = NodeId::new("m1");
    let (cert, not_after) = ca
        .issue_for_key(
            &node,
            Role::Member,
            &rcgen::PublicKeyData::subject_public_key_info(&key),
            Duration::from_millis(86_400_123),
        )
        .unwrap();
    assert_leaf(&cert, &node, Role::Member, ca.certificate());
    let at = not_after.duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(at.subsec_nanos(), 0, "notAfter has whole seconds");
    assert_eq!(strict(&cert).unwrap().not_after, at.as_secs());
}

/// Opens a QUIC connection with `client` to `addr` as `server_name` and
/// returns the chain the server presented.
async fn served_chain(
    client: rustls::ClientConfig,
    addr: std::net::SocketAddr,
    server_name: &str,
) -> Vec<CertificateDer<'static>> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = tokio::time::timeout(LIMIT, ep.connect(addr, server_name).unwrap())
        .await
        .expect("handshake within the limit")
        .expect("handshake succeeds");
    let chain = conn
        .peer_identity()
        .expect("server presented certificates")
        .downcast::<Vec<CertificateDer<'static>>>()
        .expect("rustls certificate chain");
    conn.close(0u8.into(), b"done");
    ep.close(0u8.into(), b"done");
    *chain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_served_and_granted_by_a_running_root_are_strict_der() {
    let root = root().await;
    let ca = root.certificate_authority();
    let ca_der = ca.certificate().clone();
    assert_ca(&ca_der);
    // Granted at admission (over the join endpoint), with its chain.
    let a = joined(&root, "a", Role::Hub).await;
    assert_leaf(
        &a.identity.cert_chain[0],
        &NodeId::new("a"),
        Role::Hub,
        &ca_der,
    );
    assert_eq!(a.identity.cert_chain[1], ca_der);
    let granted = strict(&a.identity.cert_chain[0]).unwrap();
    assert_eq!(
        granted.not_after,
        a.expires_at.duration_since(UNIX_EPOCH).unwrap().as_secs()
    );
    assert_eq!(
        a.expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
        0,
        "expires_at_ms is notAfter exactly"
    );
    // The chain the root serves on its join endpoint...
    let join_chain = served_chain(
        trust::join_client_config(ca.fingerprint()).unwrap(),
        root.join_addr(),
        &server_name(root.node()),
    )
    .await;
    // ...and on its node endpoint (mutual TLS, ALPN interlocking/2).
    let node_chain = served_chain(
        trust::client_config(&a.identity, &a.roots).unwrap(),
        root.local_addr(),
        &server_name(root.node()),
    )
    .await;
    assert_eq!(join_chain, node_chain, "one identity on both endpoints");
    assert_eq!(join_chain.len(), 2, "leaf and CA");
    assert_leaf(&join_chain[0], root.node(), Role::Root, &ca_der);
    assert_eq!(join_chain[1], ca_der);
    root.shutdown().await;
}

//! The root's join endpoint as `docs/root.md` §2.2 describes it, driven by
//! a bare quinn client on loopback: a request that does not arrive within
//! the time limit, a stream finished inside the request, a first frame that
//! is not a `JoinRequest`, and a public key of a refused type are each
//! answered `JoinRefused` with `BAD_REQUEST` (`0x021d`), never silence; a
//! request followed by more bytes and no FIN is answered as usual. Every
//! wait is bounded.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::rootkit::LIMIT;
use interlocking::root::{Root, RootConfig, RootHandle, codes};
use interlocking::trust;
use interlocking::vocab::{NodeId, Role};
use interlocking::wire::{
    CodecConfig, Frame, FrameDecoder, Hello, JoinRequest, encode_to_bytes, read_frame,
};

async fn root(join_timeout: Duration) -> RootHandle {
    Root::spawn(RootConfig {
        join_timeout,
        ..RootConfig::default()
    })
    .await
    .unwrap()
}

/// Opens a join connection and stream to `root`, writes `bytes`, finishes
/// the stream if `finish`, and returns the root's answer and how long it
/// took.
async fn exchange(root: &RootHandle, bytes: &[u8], finish: bool) -> (Frame, Duration) {
    let tls = trust::join_client_config(root.certificate_authority().fingerprint()).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = tokio::time::timeout(
        LIMIT,
        ep.connect(root.join_addr(), &trust::server_name(root.node()))
            .unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let start = tokio::time::Instant::now();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    let (mut buf, mut dec) = (BytesMut::new(), FrameDecoder::default());
    let answer = tokio::time::timeout(LIMIT, read_frame(&mut recv, &mut buf, &mut dec))
        .await
        .expect("answered within the limit")
        .unwrap()
        .expect("an answer frame");
    let took = start.elapsed();
    conn.close(0u8.into(), b"done");
    ep.close(0u8.into(), b"done");
    (answer, took)
}

fn encoded(f: &Frame) -> Vec<u8> {
    encode_to_bytes(f, &CodecConfig::default())
        .unwrap()
        .to_vec()
}

fn request(token: &str, key: Vec<u8>) -> Vec<u8> {
    encoded(&Frame::JoinRequest(JoinRequest {
        token: token.to_string(),
        node: NodeId::new("m1"),
        role: Role::Member,
        public_key: Bytes::from(key),
    }))
}

fn refused_code(f: &Frame) -> (u16, String) {
    match f {
        Frame::JoinRefused(r) => (r.code, r.reason.clone()),
        other => panic!("expected JoinRefused, got {other:?}"),
    }
}

fn p256_key() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::PublicKeyData::subject_public_key_info(&key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_completes_is_refused_after_the_limit() {
    let limit = Duration::from_millis(300);
    let root = root(limit).await;
    let token = root
        .issue_token(&NodeId::new("m1"), Role::Member, None)
        .unwrap()
        .to_string();
    let bytes = request(&token, p256_key());
    let (answer, took) = exchange(&root, &bytes[..10], false).await;
    let (code, reason) = refused_code(&answer);
    assert_eq!(code, codes::BAD_REQUEST);
    assert!(reason.contains("no JoinRequest within"), "{reason}");
    assert!(took >= limit, "answered after {took:?}, before the limit");
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_stream_finished_inside_the_request_is_refused_at_once() {
    let root = root(LIMIT).await;
    let token = root
        .issue_token(&NodeId::new("m1"), Role::Member, None)
        .unwrap()
        .to_string();
    let bytes = request(&token, p256_key());
    let (answer, _) = exchange(&root, &bytes[..bytes.len() - 1], true).await;
    let (code, reason) = refused_code(&answer);
    assert_eq!(code, codes::BAD_REQUEST);
    assert!(reason.contains("truncated"), "{reason}");
    // Not a JoinRequest: refused the same way.
    let hello = encoded(&Frame::Hello(Hello {
        node: NodeId::new("m1"),
        role: Role::Member,
        features: 0,
        token: None,
    }));
    let (answer, _) = exchange(&root, &hello, true).await;
    assert_eq!(refused_code(&answer).0, codes::BAD_REQUEST);
    // The token was never presented, so it still admits.
    let (answer, _) = exchange(&root, &bytes, true).await;
    assert!(matches!(answer, Frame::JoinGranted(_)), "{answer:?}");
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_need_not_be_finished_and_extra_bytes_are_ignored() {
    let root = root(LIMIT).await;
    let token = root
        .issue_token(&NodeId::new("m1"), Role::Member, None)
        .unwrap()
        .to_string();
    let mut bytes = request(&token, p256_key());
    bytes.extend_from_slice(&[0xde, 0xad]);
    let (answer, _) = exchange(&root, &bytes, false).await;
    let Frame::JoinGranted(g) = answer else {
        panic!("expected JoinGranted, got {answer:?}")
    };
    assert_eq!(g.expires_at_ms % 1000, 0, "notAfter has whole seconds");
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_key_of_a_refused_type_is_a_bad_request_and_uses_the_token() {
    let root = root(LIMIT).await;
    let token = root
        .issue_token(&NodeId::new("m1"), Role::Member, None)
        .unwrap()
        .to_string();
    // rsaEncryption: well-formed, but not a type the root signs for.
    let rsa = vec![
        0x30, 0x1a, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
        0x05, 0x00, 0x03, 0x09, 0x00, 0x30, 0x06, 0x02, 0x01, 0x03, 0x02, 0x01, 0x03,
    ];
    let (answer, _) = exchange(&root, &request(&token, rsa), true).await;
    let (code, reason) = refused_code(&answer);
    assert_eq!(code, codes::BAD_REQUEST);
    assert!(reason.contains("not accepted"), "{reason}");
    // Single use: the token is spent even though nothing was issued.
    let (answer, _) = exchange(&root, &request(&token, p256_key()), true).await;
    assert_eq!(refused_code(&answer).0, codes::TOKEN_REUSED);
    // Ed25519 and P-384 keys are accepted.
    for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
        let token = root
            .issue_token(&NodeId::new("m1"), Role::Member, None)
            .unwrap()
            .to_string();
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let (answer, _) = exchange(&root, &request(&token, spki), true).await;
        assert!(matches!(answer, Frame::JoinGranted(_)), "{answer:?}");
    }
    root.shutdown().await;
}

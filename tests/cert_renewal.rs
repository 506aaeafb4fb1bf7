//! Certificates over time (`docs/root.md` §2.3): a node renews its
//! certificate at the root's join endpoint with the certificate it holds,
//! and its QUIC transport presents the renewed one from then on without
//! dropping the connection it has; once the old certificate has expired, a
//! new connection succeeds with the renewed one. A renewal without a
//! certificate, with an expired one or for a revoked node is refused with
//! its typed reason. Real QUIC on loopback; every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use common::contract::{data, recv_data, until, wait_up};
use common::rootkit::{LIMIT, direct, root};
use interlocking::root::{AdmissionError, JoinError, codes, renew};
use interlocking::transports::{Fact, Transport};
use interlocking::trust;
use interlocking::vocab::{NodeId, Role};
use interlocking::wire::{
    CodecConfig, Frame, FrameDecoder, JoinRequest, encode_to_bytes, read_frame,
};

fn not_after(identity: &trust::NodeIdentity) -> SystemTime {
    let (_, cert) = x509_parser::parse_x509_certificate(identity.cert_chain[0].as_ref()).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_keeps_the_connection_and_serves_the_next_one() {
    let root = root().await;
    let ca = root.certificate_authority();
    let now = SystemTime::now();
    // The member's current certificate runs out in 3 s.
    let old = ca
        .issue_node_valid(
            &NodeId::new("m1"),
            Role::Member,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3),
        )
        .unwrap();
    let hub_id = ca.issue_node(&NodeId::new("hub"), Role::Hub).unwrap();
    let (hub, mut hub_rx) = direct(hub_id, ca.roots());
    let (m1, mut m1_rx) = direct(old.clone(), ca.roots());
    m1.connect(&hub.peer_addr()).await.expect("connects");
    wait_up(&mut hub_rx, &NodeId::new("m1")).await;
    wait_up(&mut m1_rx, &NodeId::new("hub")).await;

    let renewed = renew(root.join_addr(), root.node(), &old, LIMIT)
        .await
        .expect("renewal granted");
    assert_eq!(renewed.identity.node, NodeId::new("m1"));
    assert_eq!(renewed.identity.role, Role::Member);
    assert_ne!(renewed.identity.cert_chain[0], old.cert_chain[0]);
    assert!(renewed.expires_at > not_after(&old) + Duration::from_secs(3600));
    assert_eq!(root.counters().renewals, 1);
    m1.renew_identity(&renewed.identity)
        .expect("same node and role");

    // The old certificate expires; the connection it opened stays up.
    let expired = not_after(&old) + Duration::from_secs(1);
    tokio::time::timeout(LIMIT, async {
        while SystemTime::now() < expired {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the old certificate expires");
    let hub_path = NodeId::new("hub");
    m1.send(&hub_path, data("command:m1/hub", 0, 1, 16))
        .expect("sent on the open connection");
    assert_eq!(
        recv_data(&mut hub_rx, &NodeId::new("m1"), "command:m1/hub", 1).await,
        vec![1]
    );

    // A new connection, after the old certificate's end, uses the renewed
    // one: the hub accepts it.
    m1.redial(&NodeId::new("hub"), "test: a new handshake");
    until(&mut hub_rx, LIMIT, |e| {
        e.path.peer == NodeId::new("m1") && matches!(e.fact, Fact::Up | Fact::Renewed)
    })
    .await;
    until(&mut m1_rx, LIMIT, |e| {
        e.path.peer == NodeId::new("hub") && matches!(e.fact, Fact::Up | Fact::Renewed)
    })
    .await;
    m1.send(&hub_path, data("command:m1/hub", 0, 2, 16))
        .expect("sent on the new connection");
    assert_eq!(
        recv_data(&mut hub_rx, &NodeId::new("m1"), "command:m1/hub", 1).await,
        vec![2]
    );

    // The transport refuses another node's identity.
    let other = ca.issue_node(&NodeId::new("m2"), Role::Member).unwrap();
    assert!(m1.renew_identity(&other).is_err());
    hub.shutdown().await;
    m1.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revoked_and_missing_certificates_are_not_renewed() {
    let root = root().await;
    let ca = root.certificate_authority();
    let now = SystemTime::now();

    // Expired: the handshake itself refuses the certificate.
    let expired = ca
        .issue_node_valid(
            &NodeId::new("m1"),
            Role::Member,
            now - Duration::from_secs(120),
            now - Duration::from_secs(60),
        )
        .unwrap();
    let err = renew(root.join_addr(), root.node(), &expired, LIMIT)
        .await
        .expect_err("an expired certificate does not renew");
    assert!(
        matches!(err, JoinError::Unreachable(_) | JoinError::Protocol(_)),
        "{err:?}"
    );

    // Revoked: refused with its code.
    let valid = ca.issue_node(&NodeId::new("m2"), Role::Member).unwrap();
    root.revoke(&NodeId::new("m2")).await.unwrap();
    let err = renew(root.join_addr(), root.node(), &valid, LIMIT)
        .await
        .expect_err("a revoked node does not renew");
    assert!(
        matches!(&err, JoinError::Refused(AdmissionError::Revoked(n)) if n.as_str() == "m2"),
        "{err:?}"
    );

    // No certificate with an empty token: NOT_RENEWABLE.
    let tls = trust::join_client_config(ca.fingerprint()).unwrap();
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
    let key = rcgen::KeyPair::generate().unwrap();
    let request = Frame::JoinRequest(JoinRequest {
        token: String::new(),
        node: NodeId::new("m3"),
        role: Role::Member,
        public_key: Bytes::from(rcgen::PublicKeyData::subject_public_key_info(&key)),
    });
    send.write_all(&encode_to_bytes(&request, &CodecConfig::default()).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let (mut buf, mut dec) = (BytesMut::new(), FrameDecoder::default());
    let answer = tokio::time::timeout(LIMIT, read_frame(&mut recv, &mut buf, &mut dec))
        .await
        .unwrap()
        .unwrap();
    match answer {
        Some(Frame::JoinRefused(r)) => assert_eq!(r.code, codes::NOT_RENEWABLE, "{r:?}"),
        other => panic!("expected JoinRefused, got {other:?}"),
    }
    assert_eq!(root.counters().renewals, 0);
    ep.close(0u8.into(), b"done");
    root.shutdown().await;
}

/// Revocation reaches direct connections: the root announces its list to
/// every online node (`docs/root.md` §2.4), and a hub applying it closes a
/// revoked member's direct connection and refuses its re-dial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_at_the_root_closes_and_refuses_a_direct_connection() {
    let root = root().await;
    let hub = common::rootkit::joined(&root, "hub", Role::Hub).await;
    let m1 = common::rootkit::joined(&root, "m1", Role::Member).await;
    let (hub_quic, mut hub_rx) = direct(hub.identity.clone(), hub.roots.clone());
    let (hub_relay, _hub_relay_rx) = common::rootkit::relay(&root, hub.identity, hub.roots);
    let watcher = tokio::spawn(interlocking::app::renewal::watch_revocations(
        root.node().clone(),
        Arc::new(std::sync::Mutex::new(Some(hub_quic.clone()))),
        Arc::new(std::sync::Mutex::new(Some(hub_relay.clone()))),
    ));
    hub_relay.register(vec![], vec![]).await.unwrap();
    common::rootkit::wait_online(&root, "hub", true).await;

    let (m1_quic, mut m1_rx) = direct(m1.identity, m1.roots);
    m1_quic
        .connect(&hub_quic.peer_addr())
        .await
        .expect("connects");
    wait_up(&mut hub_rx, &NodeId::new("m1")).await;
    wait_up(&mut m1_rx, &NodeId::new("hub")).await;

    root.revoke(&NodeId::new("m1")).await.unwrap();
    // The hub closes m1's connection once the list arrives...
    until(&mut hub_rx, LIMIT, |e| {
        e.path.peer == NodeId::new("m1") && matches!(e.fact, Fact::Down(_))
    })
    .await;
    // ...and refuses it from then on: m1 re-dials (its connection was
    // dropped, not closed by it) and each attempt is refused, none up.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while hub_quic.counters().refused_revoked < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no re-dial refused");
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(50), hub_rx.recv()).await {
            assert!(
                !(ev.path.peer == NodeId::new("m1") && matches!(ev.fact, Fact::Up)),
                "a revoked member came up again"
            );
        }
    }
    watcher.abort();
    m1_quic.shutdown().await;
    hub_quic.shutdown().await;
    hub_relay.shutdown().await;
    root.shutdown().await;
}

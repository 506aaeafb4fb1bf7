//! What `docs/wire.md` §7 promises a peer on the QUIC node endpoint, checked
//! with bare quinn connections on 127.0.0.1 that send what a well-behaved
//! node never would: the `Hello` rule (first on the control stream, node
//! and role checked against the certificate, required within a time
//! limit), a stream finished inside a frame (connection closed with
//! `TRUNCATED`) versus one reset inside a frame (dropped, connection open),
//! an unknown traffic class refused by the codec (never delivered), and the
//! TLS alert an expired certificate gets (`0x12d`). Every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use common::contract::{data, data_bytes_with_class, recv_data, until, wait_up};
use common::rawquic::{LIMIT, answered, closed_with, code_of, connect_from, encoded, hello};
use interlocking::transports::quic::{QuicConfig, QuicTransport, codes};
use interlocking::transports::{Fact, Transport, TransportEvent};
use interlocking::trust::{self, CertificateAuthority, NodeIdentity};
use interlocking::vocab::{NodeId, Role};
use interlocking::wire::{self, Frame, FrameDecoder, Hello};
use tokio::sync::mpsc;

struct Server {
    t: Arc<QuicTransport>,
    rx: mpsc::Receiver<TransportEvent>,
    id: NodeId,
}

fn server(ca: &CertificateAuthority, hello_timeout: Duration) -> Server {
    let id = NodeId::new("server");
    let ident = ca.issue_node(&id, Role::Hub).unwrap();
    let mut cfg = QuicConfig::new(ident, ca.roots());
    cfg.hello_timeout = hello_timeout;
    let (tx, rx) = mpsc::channel(65536);
    Server {
        t: QuicTransport::bind(cfg, tx).unwrap(),
        rx,
        id,
    }
}

/// A bare, authenticated connection to `server` with `ident`.
async fn raw(ident: &NodeIdentity, ca: &CertificateAuthority, s: &Server) -> quinn::Connection {
    connect_from(ident, ca, [127, 0, 0, 1].into(), s.t.local_addr(), &s.id).await
}

/// Waits for the server to report an incident about `peer` and returns it.
async fn incident(s: &mut Server, peer: &str) -> String {
    let peer = NodeId::new(peer);
    let (ev, _) = until(&mut s.rx, LIMIT, |e| {
        e.path.peer == peer && matches!(e.fact, Fact::Incident(_))
    })
    .await;
    match ev.fact {
        Fact::Incident(what) => what,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_comes_first_on_the_control_stream_and_names_node_and_role() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut s = server(&ca, LIMIT);
    let ident = ca.issue_node(&NodeId::new("m1"), Role::Member).unwrap();
    let conn = raw(&ident, &ca, &s).await;
    wait_up(&mut s.rx, &NodeId::new("m1")).await;
    // The server sends a control-class Data at once; the Hello is ahead of it.
    s.t.send(&NodeId::new("m1"), data("command:server/m1", 0, 7, 8))
        .unwrap();
    let mut recv = tokio::time::timeout(LIMIT, conn.accept_uni())
        .await
        .unwrap()
        .unwrap();
    let (mut buf, mut dec) = (BytesMut::new(), FrameDecoder::default());
    let first = wire::read_frame(&mut recv, &mut buf, &mut dec)
        .await
        .unwrap();
    assert_eq!(
        first,
        Some(Frame::Hello(Hello {
            node: s.id.clone(),
            role: Role::Hub,
            features: 0,
            token: None,
        }))
    );
    let second = wire::read_frame(&mut recv, &mut buf, &mut dec)
        .await
        .unwrap();
    assert!(
        matches!(&second, Some(Frame::Data(d)) if d.seq == 7),
        "{second:?}"
    );
    s.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_the_certificate_node_but_another_role_closes_the_connection() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut s = server(&ca, LIMIT);
    let ident = ca.issue_node(&NodeId::new("m1"), Role::Member).unwrap();
    let conn = raw(&ident, &ca, &s).await;
    let mut st = conn.open_uni().await.unwrap();
    st.write_all(&hello("m1", Role::Hub)).await.unwrap();
    assert_eq!(closed_with(&conn).await, u64::from(codes::HELLO_MISMATCH));
    assert!(incident(&mut s, "m1").await.contains("hub"));
    assert_eq!(s.t.counters().refused_hello_mismatch, 1);
    s.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_hello_is_closed_after_the_limit_and_one_with_it_stays() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut s = server(&ca, Duration::from_millis(300));
    let good = ca.issue_node(&NodeId::new("good"), Role::Member).unwrap();
    let good = raw(&good, &ca, &s).await;
    let mut st = good.open_uni().await.unwrap();
    st.write_all(&hello("good", Role::Member)).await.unwrap();
    // The server reads this connection before the silent one exists, so
    // its hello deadline passes first.
    answered(&good, 1).await;
    let silent = ca.issue_node(&NodeId::new("silent"), Role::Member).unwrap();
    let silent = raw(&silent, &ca, &s).await;
    assert_eq!(closed_with(&silent).await, u64::from(codes::HELLO_MISSING));
    assert!(incident(&mut s, "silent").await.contains("no hello"));
    assert_eq!(
        good.close_reason(),
        None,
        "the connection with a Hello stays"
    );
    answered(&good, 2).await;
    assert_eq!(s.t.counters().refused_hello_missing, 1);
    s.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_finished_inside_a_frame_closes_the_connection_with_truncated() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut s = server(&ca, LIMIT);
    let ident = ca.issue_node(&NodeId::new("m1"), Role::Member).unwrap();
    let conn = raw(&ident, &ca, &s).await;
    let mut st = conn.open_uni().await.unwrap();
    st.write_all(&hello("m1", Role::Member)).await.unwrap();
    // A stream reset inside a frame is not a framing error: dropped, the
    // connection stays.
    let frame = encoded(&data("command:m1/server", 0, 1, 64));
    let mut reset = conn.open_uni().await.unwrap();
    reset.write_all(&frame[..20]).await.unwrap();
    reset.reset(0u8.into()).unwrap();
    let mut whole = conn.open_uni().await.unwrap();
    whole
        .write_all(&encoded(&data("command:m1/server", 0, 2, 64)))
        .await
        .unwrap();
    assert_eq!(
        recv_data(&mut s.rx, &NodeId::new("m1"), "command:m1/server", 1).await,
        vec![2]
    );
    assert_eq!(conn.close_reason(), None);
    // A stream finished inside a frame is.
    let mut cut = conn.open_uni().await.unwrap();
    cut.write_all(&frame[..20]).await.unwrap();
    cut.finish().unwrap();
    assert_eq!(closed_with(&conn).await, u64::from(wire::codes::TRUNCATED));
    assert!(incident(&mut s, "m1").await.contains("truncated"));
    assert_eq!(s.t.counters().refused_truncated, 1);
    s.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_frame_of_an_unknown_class_is_refused_and_never_delivered() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut s = server(&ca, LIMIT);
    let ident = ca.issue_node(&NodeId::new("m1"), Role::Member).unwrap();
    let conn = raw(&ident, &ca, &s).await;
    let mut st = conn.open_uni().await.unwrap();
    st.write_all(&hello("m1", Role::Member)).await.unwrap();
    let mut bad = conn.open_uni().await.unwrap();
    bad.write_all(&data_bytes_with_class("command:m1/server", 9, 1, 8))
        .await
        .unwrap();
    let code = tokio::time::timeout(LIMIT, bad.stopped())
        .await
        .unwrap()
        .unwrap()
        .expect("stopped with a code");
    assert_eq!(code.into_inner(), u64::from(wire::codes::UNKNOWN_CLASS));
    // The next frame on a fresh stream is the first Data the server sees.
    let mut ok = conn.open_uni().await.unwrap();
    ok.write_all(&encoded(&data("command:m1/server", 0, 2, 8)))
        .await
        .unwrap();
    let (ev, _) = until(&mut s.rx, LIMIT, |e| {
        matches!(e.fact, Fact::Frame(Frame::Data(_)))
    })
    .await;
    assert!(matches!(ev.fact, Fact::Frame(Frame::Data(d)) if d.seq == 2 && d.class == 0));
    s.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_gets_tls_alert_45_as_quic_code_0x12d() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let s = server(&ca, LIMIT);
    let now = SystemTime::now();
    let expired = ca
        .issue_node_valid(
            &NodeId::new("old"),
            Role::Member,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let tls = trust::client_config(&expired, &ca.roots()).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let connecting = ep
        .connect(s.t.local_addr(), &trust::server_name(&s.id))
        .unwrap();
    // TLS 1.3: the client may finish before the server checks its
    // certificate, then sees the server's alert.
    let err = match tokio::time::timeout(LIMIT, connecting).await.unwrap() {
        Err(e) => e,
        Ok(conn) => tokio::time::timeout(LIMIT, conn.closed()).await.unwrap(),
    };
    assert_eq!(code_of(&err), Some(0x100 + 45), "{err:?}");
    // The server counts after sending its alert; counters have no event.
    for _ in 0..1000 {
        if s.t.counters().refused_certificate == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.t.counters().refused_certificate, 1);
    s.t.shutdown().await;
}

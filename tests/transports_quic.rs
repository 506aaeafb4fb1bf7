//! The QUIC transport over real UDP on 127.0.0.1 with mutual TLS: the shared
//! contract, several nodes, refusals of bad input, path down and reconnect,
//! and control frames overtaking bulk. Every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::contract::{self, Side, data, recv_data, until, wait_down, wait_up};
use interlocking::transports::probe::ProbeConfig;
use interlocking::transports::quic::faults::FaultHandle;
use interlocking::transports::quic::{Backoff, QuicConfig, QuicCounters, QuicTransport, codes};
use interlocking::transports::{
    ConnectError, DownCause, Fact, PeerAddr, Transport, TransportEvent,
};
use interlocking::trust::{self, CertificateAuthority};
use interlocking::vocab::{NodeId, Role};
use interlocking::wire::{self, CodecConfig, Frame, Hello};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(10);

fn config(ca: &CertificateAuthority, name: &str) -> QuicConfig {
    let ident = ca.issue_node(&NodeId::new(name), Role::Member).unwrap();
    let mut cfg = QuicConfig::new(ident, ca.roots());
    cfg.probe = ProbeConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    };
    cfg.idle_timeout = Duration::from_millis(1500);
    cfg.keep_alive = Duration::from_millis(300);
    cfg.reconnect = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
        multiplier: 2.0,
        jitter: 0.5,
        max_attempts: None,
    };
    cfg.seed = 3;
    cfg
}

struct Node {
    t: Arc<QuicTransport>,
    rx: mpsc::Receiver<TransportEvent>,
    id: NodeId,
}

fn start(cfg: QuicConfig) -> Node {
    let (tx, rx) = mpsc::channel(65536);
    let id = cfg.identity.node.clone();
    let t = QuicTransport::bind(cfg, tx).unwrap();
    Node { t, rx, id }
}

fn node(ca: &CertificateAuthority, name: &str) -> Node {
    start(config(ca, name))
}

impl Node {
    fn addr(&self) -> PeerAddr {
        self.t.peer_addr()
    }
}

/// A bare quinn client endpoint, for sending what a well-behaved node never
/// would.
fn raw_client(tls: rustls::ClientConfig) -> quinn::Endpoint {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    ep
}

/// An authenticated bare connection to `server` as node `name`.
async fn raw_conn(ca: &CertificateAuthority, name: &str, server: &Node) -> quinn::Connection {
    let ident = ca.issue_node(&NodeId::new(name), Role::Member).unwrap();
    let ep = raw_client(trust::client_config(&ident, &ca.roots()).unwrap());
    ep.connect(server.t.local_addr(), &trust::server_name(&server.id))
        .unwrap()
        .await
        .unwrap()
}

/// Connects `c` to `server` and checks frames still flow both ways.
async fn traffic_flows(server: &mut Node, c: &mut Node, seq: u64) {
    c.t.connect(&server.addr()).await.unwrap();
    c.t.send(&server.id, data("command:c/s", 0, seq, 16))
        .unwrap();
    assert_eq!(
        recv_data(&mut server.rx, &c.id, "command:c/s", 1).await,
        vec![seq]
    );
}

/// The close code (transport or application) a connection ended with.
fn close_code(e: &quinn::ConnectionError) -> Option<u64> {
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => Some(u64::from(c.error_code)),
        quinn::ConnectionError::TransportError(t) => Some(u64::from(t.code)),
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

/// Dials with `tls` and returns the code the handshake or connection ended
/// with.
async fn refused_code(tls: rustls::ClientConfig, server: &Node) -> u64 {
    let ep = raw_client(tls);
    let connecting = ep
        .connect(server.t.local_addr(), &trust::server_name(&server.id))
        .unwrap();
    let err = match tokio::time::timeout(LIMIT, connecting).await.unwrap() {
        Err(e) => e,
        Ok(conn) => tokio::time::timeout(LIMIT, conn.closed()).await.unwrap(),
    };
    close_code(&err).unwrap_or_else(|| panic!("no code in {err:?}"))
}

/// Opens a uni stream, writes `bytes`, and returns the STOP_SENDING code.
async fn stop_code(conn: &quinn::Connection, bytes: &[u8]) -> u64 {
    let mut s = conn.open_uni().await.unwrap();
    let _ = s.write_all(bytes).await;
    let code = tokio::time::timeout(LIMIT, s.stopped())
        .await
        .unwrap()
        .unwrap()
        .expect("stream stopped with a code");
    code.into_inner()
}

/// Waits (bounded) until the node's counters satisfy `pred`: counters have
/// no event of their own, and the refusing side may count a moment after
/// the refused side saw the close.
async fn counted(t: &QuicTransport, pred: impl Fn(&QuicCounters) -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !pred(&t.counters()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "counters never matched: {:?}",
            t.counters()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn encoded(frame: &Frame) -> Vec<u8> {
    wire::encode_to_bytes(frame, &CodecConfig::default())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_passes_the_transport_contract() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let a = node(&ca, "a");
    let b = node(&ca, "b");
    let side = |n: Node| Side {
        addr: n.addr(),
        t: n.t,
        rx: n.rx,
    };
    contract::run(side(a), side(b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_frames_with_mutual_tls() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut nodes = [node(&ca, "n1"), node(&ca, "n2"), node(&ca, "n3")];
    for i in 0..3 {
        for j in (i + 1)..3 {
            let addr = nodes[j].addr();
            nodes[i].t.connect(&addr).await.unwrap();
        }
    }
    for n in nodes.iter_mut() {
        let mut up = std::collections::BTreeSet::new();
        while up.len() < 2 {
            let (ev, _) = until(&mut n.rx, LIMIT, |e| matches!(e.fact, Fact::Up)).await;
            up.insert(ev.path.peer);
        }
        assert!(!up.contains(&n.id));
    }
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                let to = nodes[j].id.clone();
                let stream = format!("command:{}/{}", nodes[i].id, to);
                for seq in 0..10 {
                    nodes[i].t.send(&to, data(&stream, 3, seq, 32)).unwrap();
                }
            }
        }
    }
    // Each node collects everything addressed to it, whatever the order
    // between senders; per sender the frames are in order.
    for n in nodes.iter_mut() {
        let mut got: std::collections::BTreeMap<NodeId, Vec<u64>> = Default::default();
        while got.values().map(Vec::len).sum::<usize>() < 20 {
            let (ev, _) = until(&mut n.rx, LIMIT, |e| {
                matches!(e.fact, Fact::Frame(Frame::Data(_)))
            })
            .await;
            if let Fact::Frame(Frame::Data(d)) = ev.fact {
                assert_eq!(
                    d.stream.as_str(),
                    format!("command:{}/{}", ev.path.peer, n.id)
                );
                got.entry(ev.path.peer).or_default().push(d.seq);
            }
        }
        assert_eq!(got.len(), 2);
        for seqs in got.values() {
            assert_eq!(seqs, &(0..10).collect::<Vec<_>>());
        }
    }
    for n in &nodes {
        assert_eq!(n.t.peers().len(), 2);
    }
    for n in &nodes {
        n.t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_is_refused() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let other = CertificateAuthority::generate("other").unwrap();
    let mut server = node(&ca, "server");
    let stranger = node(&other, "stranger");
    let err = stranger.t.connect(&server.addr()).await.unwrap_err();
    assert!(matches!(err, ConnectError::Refused(..)), "{err:?}");
    // A certificate from another CA, presented to the server by a client
    // that trusts the server: the server refuses it.
    let ident = other
        .issue_node(&NodeId::new("stranger"), Role::Member)
        .unwrap();
    let mut tls = trust::client_config(&ident, &ca.roots()).unwrap();
    tls.alpn_protocols = vec![trust::ALPN.to_vec()];
    let code = refused_code(tls, &server).await;
    assert_eq!(code, 0x100 + 48, "unknown_ca alert");
    counted(&server.t, |c| c.refused_certificate >= 2).await;
    let mut c = node(&ca, "c");
    traffic_flows(&mut server, &mut c, 1).await;
    assert!(server.t.peers() == vec![c.id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_alpn_is_refused_and_others_keep_working() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut server = node(&ca, "server");
    let mut c = node(&ca, "c");
    traffic_flows(&mut server, &mut c, 1).await;
    let ident = ca.issue_node(&NodeId::new("x"), Role::Member).unwrap();
    let mut tls = trust::client_config(&ident, &ca.roots()).unwrap();
    tls.alpn_protocols = vec![b"wrong/1".to_vec()];
    assert_eq!(refused_code(tls, &server).await, 0x100 + 120);
    counted(&server.t, |c| c.refused_alpn == 1).await;
    c.t.send(&server.id, data("command:c/s", 0, 2, 16)).unwrap();
    assert_eq!(
        recv_data(&mut server.rx, &c.id, "command:c/s", 1).await,
        vec![2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_client_certificate_is_refused() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut server = node(&ca, "server");
    let mut c = node(&ca, "c");
    traffic_flows(&mut server, &mut c, 1).await;
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        r.add(ca.certificate().clone()).unwrap();
        r
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![trust::ALPN.to_vec()];
    assert_eq!(
        refused_code(tls, &server).await,
        0x100 + 116,
        "certificate_required"
    );
    counted(&server.t, |c| c.refused_certificate == 1).await;
    c.t.send(&server.id, data("command:c/s", 0, 2, 16)).unwrap();
    assert_eq!(
        recv_data(&mut server.rx, &c.id, "command:c/s", 1).await,
        vec![2]
    );
}

/// Sends `bytes` on a fresh stream of an authenticated bare connection and
/// checks the stop code, then that `c`'s traffic still flows.
async fn bad_stream_is_stopped(bytes: Vec<u8>, code: u16, admission: bool) -> QuicCounters {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut cfg = config(&ca, "server");
    if admission {
        cfg.admission = Some(Arc::new(
            |peer: &NodeId, stream: &interlocking::vocab::StreamId| {
                stream.as_str().contains(peer.as_str())
            },
        ));
    }
    let mut server = start(cfg);
    let mut c = node(&ca, "c");
    traffic_flows(&mut server, &mut c, 1).await;
    let evil = raw_conn(&ca, "evil", &server).await;
    let (ev, _) = until(&mut server.rx, LIMIT, |e| {
        matches!(e.fact, Fact::Up) && e.path.peer.as_str() == "evil"
    })
    .await;
    assert_eq!(ev.path.peer.as_str(), "evil");
    assert_eq!(stop_code(&evil, &bytes).await, u64::from(code));
    // The refusal is reported as an incident about that peer.
    until(&mut server.rx, LIMIT, |e| {
        e.path.peer.as_str() == "evil"
            && matches!(&e.fact, Fact::Incident(s) if s.contains(&format!("{code:#x}")))
    })
    .await;
    // The connection itself lives on and so does everyone else's traffic.
    assert!(evil.close_reason().is_none());
    c.t.send(&server.id, data("command:c/s", 0, 2, 16)).unwrap();
    assert_eq!(
        recv_data(&mut server.rx, &c.id, "command:c/s", 1).await,
        vec![2]
    );
    let counters = server.t.counters();
    server.t.shutdown().await;
    counters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_stop_the_stream_with_malformed() {
    // A valid header whose body is not MessagePack of a Probe.
    let bytes = vec![
        0,
        0,
        0,
        6,
        wire::PROTOCOL_VERSION,
        2,
        0xc1,
        0xc1,
        0xc1,
        0xc1,
    ];
    let c = bad_stream_is_stopped(bytes, wire::codes::MALFORMED, false).await;
    assert_eq!(c.refused_malformed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_stops_the_stream_with_too_large() {
    let bytes = vec![0x7f, 0xff, 0xff, 0xff, 1, 4];
    let c = bad_stream_is_stopped(bytes, wire::codes::TOO_LARGE, false).await;
    assert_eq!(c.refused_too_large, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_version_stops_the_stream_with_unsupported_version() {
    let mut bytes = encoded(&data("command:evil/server", 0, 1, 8));
    bytes[4] = 9;
    let c = bad_stream_is_stopped(bytes, wire::codes::UNSUPPORTED_VERSION, false).await;
    assert_eq!(c.refused_version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_for_a_stream_not_admitted_stops_the_stream() {
    let bytes = encoded(&data("command:c/server", 0, 1, 8));
    let c = bad_stream_is_stopped(bytes, codes::NOT_ADMITTED, true).await;
    assert_eq!(c.refused_not_admitted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_naming_another_node_closes_the_connection() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut server = node(&ca, "server");
    let mut c = node(&ca, "c");
    traffic_flows(&mut server, &mut c, 1).await;
    let evil = raw_conn(&ca, "evil", &server).await;
    let hello = Frame::Hello(Hello {
        node: NodeId::new("c"),
        role: Role::Member,
        features: 0,
        token: None,
    });
    let mut s = evil.open_uni().await.unwrap();
    s.write_all(&encoded(&hello)).await.unwrap();
    let err = tokio::time::timeout(LIMIT, evil.closed()).await.unwrap();
    assert_eq!(close_code(&err), Some(u64::from(codes::HELLO_MISMATCH)));
    counted(&server.t, |c| c.refused_hello_mismatch == 1).await;
    c.t.send(&server.id, data("command:c/s", 0, 2, 16)).unwrap();
    assert_eq!(
        recv_data(&mut server.rx, &c.id, "command:c/s", 1).await,
        vec![2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_peer_endpoint_is_down_and_reconnect_brings_it_back() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut a = node(&ca, "a");
    let b_cfg = config(&ca, "b");
    let mut b = start(b_cfg.clone());
    let b_addr = b.addr();
    a.t.connect(&b_addr).await.unwrap();
    wait_up(&mut a.rx, &b.id).await;
    wait_up(&mut b.rx, &a.id).await;
    // Kill b: its endpoint closes every connection.
    b.t.shutdown().await;
    match wait_down(&mut a.rx, &b.id).await {
        DownCause::ClosedByPeer { code, .. } => assert_eq!(code, u32::from(codes::SHUTDOWN)),
        other => panic!("unexpected cause {other:?}"),
    }
    drop(b);
    // Restart b on the same address; a re-dials on its own.
    let mut cfg = b_cfg;
    cfg.listen = b_addr.addr.unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut b2 = loop {
        let (tx, rx) = mpsc::channel(65536);
        match QuicTransport::bind(cfg.clone(), tx) {
            Ok(t) => {
                break Node {
                    t,
                    rx,
                    id: NodeId::new("b"),
                };
            }
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("rebind: {e}"),
        }
    };
    wait_up(&mut a.rx, &b2.id).await;
    wait_up(&mut b2.rx, &a.id).await;
    assert!(a.t.counters().reconnect_attempts >= 1);
    a.t.send(&b2.id, data("command:a/b", 0, 5, 8)).unwrap();
    assert_eq!(
        recv_data(&mut b2.rx, &a.id, "command:a/b", 1).await,
        vec![5]
    );
    a.t.shutdown().await;
    b2.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_path_misses_probes_times_out_and_recovers() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let faults = FaultHandle::new(1);
    let (tx, rx) = mpsc::channel(65536);
    let a_cfg = config(&ca, "a");
    let mut a = Node {
        t: QuicTransport::bind_with_faults(a_cfg, tx, faults.clone()).unwrap(),
        rx,
        id: NodeId::new("a"),
    };
    let mut b = node(&ca, "b");
    a.t.connect(&b.addr()).await.unwrap();
    wait_up(&mut a.rx, &b.id).await;
    until(&mut a.rx, LIMIT, |e| {
        matches!(e.fact, Fact::ProbeAnswered { .. })
    })
    .await;
    faults.set_blackhole(true);
    until(&mut a.rx, LIMIT, |e| matches!(e.fact, Fact::ProbeMissed)).await;
    assert_eq!(wait_down(&mut a.rx, &b.id).await, DownCause::Timeout);
    assert_eq!(wait_down(&mut b.rx, &a.id).await, DownCause::Timeout);
    assert!(faults.dropped() > 0);
    faults.set_blackhole(false);
    wait_up(&mut a.rx, &b.id).await;
    wait_up(&mut b.rx, &a.id).await;
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_are_reported_as_facts() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut a = node(&ca, "a");
    let b = node(&ca, "b");
    a.t.connect(&b.addr()).await.unwrap();
    until(&mut a.rx, LIMIT, |e| matches!(e.fact, Fact::Rtt(_))).await;
    until(
        &mut a.rx,
        LIMIT,
        |e| matches!(e.fact, Fact::Loss { sent, .. } if sent > 0),
    )
    .await;
    until(&mut a.rx, LIMIT, |e| {
        matches!(e.fact, Fact::QueueDepth { .. })
    })
    .await;
    until(&mut a.rx, LIMIT, |e| {
        matches!(e.fact, Fact::ProbeAnswered { .. })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frames_overtake_a_saturating_bulk_stream() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let a = node(&ca, "a");
    let mut b = node(&ca, "b");
    a.t.connect(&b.addr()).await.unwrap();
    wait_up(&mut b.rx, &a.id).await;
    const BULK: u64 = 200;
    // Queue a burst of bulk (integration class, 64 KiB each) first, then
    // one control frame.
    for seq in 0..BULK {
        a.t.send(&b.id, data("integration:a/b", 4, seq, 64 * 1024))
            .unwrap();
    }
    a.t.send(&b.id, data("command:a/b", 0, 0, 16)).unwrap();
    let mut bulk_before_control = None;
    let mut bulk = 0u64;
    while bulk < BULK {
        let (ev, _) = until(&mut b.rx, Duration::from_secs(30), |e| {
            matches!(e.fact, Fact::Frame(Frame::Data(_)))
        })
        .await;
        if let Fact::Frame(Frame::Data(d)) = ev.fact {
            if d.class == 0 {
                bulk_before_control = Some(bulk);
            } else {
                assert_eq!(d.seq, bulk, "bulk in order");
                bulk += 1;
            }
        }
    }
    let before = bulk_before_control.expect("control frame arrived during the bulk transfer");
    eprintln!("control frame arrived after {before} of {BULK} bulk frames");
    // Without priorities it would queue behind all of them.
    assert!(
        before < BULK / 2,
        "control queued behind {before} bulk frames"
    );
}

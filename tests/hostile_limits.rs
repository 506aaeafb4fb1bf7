//! Hostile input against the QUIC node endpoint's connection limits
//! (`docs/limits.md` §1), over real QUIC on loopback: a flood of
//! connections from one address is refused past
//! `QuicLimits::connections_per_address` with QUIC `CONNECTION_REFUSED`
//! and counted, a peer from another address is served during the flood,
//! and the address is served again once its connections end; the total
//! limit likewise. A stream flood is held to `QuicLimits::streams_uni` (the
//! peer gets no credit for more) and `streams_bidi` (each refused with
//! `UNEXPECTED_STREAM` and counted); a slow reader that never drains is
//! held to the `QueueBudget` (typed `SendError::Full`, counted) while a
//! well-behaved peer is served; a slow reader of a drop-oldest class
//! (integration) gets the newest frames, in order, and the dropped ones
//! are counted. Every wait is bounded.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::contract::{data, recv_data};
use common::contract::{until, wait_up};
use common::rawquic::{LIMIT, answered, code_of, connecting, connecting_tuned, encoded, hello};
use interlocking::transports::quic::{
    ClassBudgets, QueueBudget, QuicConfig, QuicLimits, QuicTransport,
};
use interlocking::transports::{Fact, PeerAddr, SendError, Transport, TransportEvent};
use interlocking::trust::CertificateAuthority;
use interlocking::vocab::{NodeId, Role, TrafficClass};
use tokio::sync::mpsc;

/// QUIC transport error `CONNECTION_REFUSED` (RFC 9000 §20.1).
const CONNECTION_REFUSED: u64 = 0x2;

const FLOODER: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

struct Victim {
    t: Arc<QuicTransport>,
    rx: mpsc::Receiver<TransportEvent>,
    id: NodeId,
}

fn victim(ca: &CertificateAuthority, limits: QuicLimits) -> Victim {
    victim_with(ca, |cfg| cfg.limits = limits)
}

/// A victim hub whose configuration `tune` adjusts.
fn victim_with(ca: &CertificateAuthority, tune: impl FnOnce(&mut QuicConfig)) -> Victim {
    let id = NodeId::new("victim");
    let mut cfg = QuicConfig::new(ca.issue_node(&id, Role::Hub).unwrap(), ca.roots());
    tune(&mut cfg);
    let (tx, rx) = mpsc::channel(65536);
    Victim {
        t: QuicTransport::bind(cfg, tx).unwrap(),
        rx,
        id,
    }
}

/// A well-behaved member connection: authenticated, `Hello` sent first.
struct Peer {
    ep: quinn::Endpoint,
    conn: quinn::Connection,
    _control: quinn::SendStream,
}

impl Peer {
    /// Closes the connection and waits (bounded) until the close is sent.
    async fn close(self) {
        self.conn.close(0u8.into(), b"bye");
        tokio::time::timeout(LIMIT, self.ep.wait_idle())
            .await
            .expect("close sent in time");
    }
}

/// Opens a connection as `name` from `from`, sends its `Hello` and waits
/// until the victim reports it up.
async fn good(ca: &CertificateAuthority, v: &mut Victim, name: &str, from: [u8; 4]) -> Peer {
    let ident = ca.issue_node(&NodeId::new(name), Role::Member).unwrap();
    let (ep, c) = connecting(&ident, ca, IpAddr::from(from), v.t.local_addr(), &v.id);
    let conn = tokio::time::timeout(LIMIT, c)
        .await
        .expect("handshake in time")
        .expect("handshake succeeds");
    let mut control = conn.open_uni().await.unwrap();
    control.write_all(&hello(name, Role::Member)).await.unwrap();
    wait_up(&mut v.rx, &NodeId::new(name)).await;
    Peer {
        ep,
        conn,
        _control: control,
    }
}

/// A slow reader `slow` from the flooder's address: authenticated, its
/// `Hello` sent (the control stream is returned to keep it open), receive
/// windows of `window` bytes; it reads nothing unless the test does.
async fn slow_reader(
    ca: &CertificateAuthority,
    v: &mut Victim,
    window: u32,
) -> (quinn::Endpoint, quinn::Connection, quinn::SendStream) {
    let ident = ca.issue_node(&NodeId::new("slow"), Role::Member).unwrap();
    let (ep, c) = connecting_tuned(
        &ident,
        ca,
        IpAddr::from(FLOODER),
        v.t.local_addr(),
        &v.id,
        |t| {
            t.stream_receive_window(window.into());
            t.receive_window(window.into());
        },
    );
    let conn = tokio::time::timeout(LIMIT, c).await.unwrap().unwrap();
    let mut control = conn.open_uni().await.unwrap();
    control
        .write_all(&hello("slow", Role::Member))
        .await
        .unwrap();
    wait_up(&mut v.rx, &NodeId::new("slow")).await;
    (ep, conn, control)
}

/// Tries a connection as `name` from `from`; returns the code it was
/// refused with, or `None` if it was accepted.
async fn attempt(ca: &CertificateAuthority, v: &Victim, name: &str, from: [u8; 4]) -> Option<u64> {
    let ident = ca.issue_node(&NodeId::new(name), Role::Member).unwrap();
    let (_ep, c) = connecting(&ident, ca, IpAddr::from(from), v.t.local_addr(), &v.id);
    match tokio::time::timeout(LIMIT, c)
        .await
        .expect("answer in time")
    {
        Ok(conn) => {
            conn.close(0u8.into(), b"bye");
            None
        }
        Err(e) => Some(code_of(&e).unwrap_or_else(|| panic!("no code in {e:?}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_refused_and_other_addresses_are_served() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut v = victim(
        &ca,
        QuicLimits {
            connections_per_address: 3,
            ..QuicLimits::default()
        },
    );
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(good(&ca, &mut v, &format!("flood-{i}"), FLOODER).await);
    }
    for i in 3..10 {
        assert_eq!(
            attempt(&ca, &v, &format!("flood-{i}"), FLOODER).await,
            Some(CONNECTION_REFUSED),
            "connection {i} from the flooding address"
        );
    }
    assert_eq!(v.t.counters().refused_connections_per_address, 7);
    // During the flood, a peer from another address is served.
    let other = good(&ca, &mut v, "member", OTHER).await;
    answered(&other.conn, 1).await;
    // The flooder's connections end; the victim frees their slots.
    for p in held {
        p.close().await;
    }
    for i in 0..3 {
        let peer = NodeId::new(format!("flood-{i}"));
        until(&mut v.rx, LIMIT, |e| {
            e.path.peer == peer && matches!(e.fact, Fact::Down(_))
        })
        .await;
    }
    // The slot is given back when the victim's connection task sees the
    // close; retry (bounded) until it has.
    let mut served = false;
    for i in 0..200 {
        if attempt(&ca, &v, &format!("later-{i}"), FLOODER)
            .await
            .is_none()
        {
            served = true;
            break;
        }
    }
    assert!(
        served,
        "the address is served again after its connections end"
    );
    // The well-behaved peer was never disturbed.
    answered(&other.conn, 2).await;
    assert!(other.conn.close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_total_limit_are_refused_and_counted() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut v = victim(
        &ca,
        QuicLimits {
            connections_total: 2,
            ..QuicLimits::default()
        },
    );
    let a = good(&ca, &mut v, "a", FLOODER).await;
    let _b = good(&ca, &mut v, "b", OTHER).await;
    assert_eq!(
        attempt(&ca, &v, "c", [127, 0, 0, 3]).await,
        Some(CONNECTION_REFUSED)
    );
    let c = v.t.counters();
    assert_eq!(
        (
            c.refused_connections_total,
            c.refused_connections_per_address
        ),
        (1, 0)
    );
    answered(&a.conn, 7).await;
}

/// `UNEXPECTED_STREAM` (`docs/wire.md` §7): a bidirectional stream on the
/// node endpoint.
const UNEXPECTED_STREAM: u32 = 0x0207;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_is_held_to_the_stream_limits_and_other_peers_are_served() {
    const UNI: u32 = 16;
    const BIDI_TRIES: u64 = 12;
    const CHURN: u64 = 300;
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut v = victim(
        &ca,
        QuicLimits {
            streams_uni: UNI,
            streams_bidi: 2,
            ..QuicLimits::default()
        },
    );
    // `good` holds the flooder's Hello stream open: one of its UNI.
    let flooder = good(&ca, &mut v, "flooder", FLOODER).await;
    let other = good(&ca, &mut v, "member", OTHER).await;
    // Every other stream the limit allows, each left inside a frame.
    let partial = &encoded(&data("flood", 2, 0, 64))[..3];
    let mut held = Vec::new();
    for _ in 1..UNI {
        let mut s = tokio::time::timeout(LIMIT, flooder.conn.open_uni())
            .await
            .expect("credit for a stream within the limit")
            .unwrap();
        s.write_all(partial).await.unwrap();
        held.push(s);
    }
    // One more: the victim advertised no credit for it (quinn refuses to
    // open it; a peer sending on it anyway gets STREAM_LIMIT_ERROR).
    assert!(
        tokio::time::timeout(std::time::Duration::ZERO, flooder.conn.open_uni())
            .await
            .is_err(),
        "no stream beyond streams_uni"
    );
    // Bidirectional streams: each refused, one after the other.
    for i in 0..BIDI_TRIES {
        let (mut send, _recv) = tokio::time::timeout(LIMIT, flooder.conn.open_bi())
            .await
            .expect("bidi credit comes back after each refusal")
            .unwrap();
        send.write_all(b"x").await.unwrap();
        let stopped = tokio::time::timeout(LIMIT, send.stopped())
            .await
            .expect("refused in time");
        assert_eq!(
            stopped.unwrap(),
            Some(quinn::VarInt::from_u32(UNEXPECTED_STREAM)),
            "bidi stream {i}"
        );
    }
    assert_eq!(v.t.counters().refused_unexpected_stream, BIDI_TRIES);
    // During the flood, the other peer is served.
    answered(&other.conn, 1).await;
    // The flooder gives its streams up; the victim hands the credit back
    // and serves a churn of many short streams, each one frame.
    for mut s in held {
        s.reset(0u8.into()).unwrap();
    }
    for seq in 0..CHURN {
        let mut s = tokio::time::timeout(LIMIT, flooder.conn.open_uni())
            .await
            .expect("credit returned as streams end")
            .unwrap();
        s.write_all(&encoded(&data("churn", 2, seq, 16)))
            .await
            .unwrap();
        s.finish().unwrap();
    }
    let mut got = recv_data(&mut v.rx, &NodeId::new("flooder"), "churn", CHURN as usize).await;
    got.sort_unstable();
    assert_eq!(got, (0..CHURN).collect::<Vec<_>>());
    answered(&flooder.conn, 2).await;
    answered(&other.conn, 3).await;
    let c = v.t.counters();
    assert_eq!((c.refused_malformed, c.refused_truncated), (0, 0));
    assert!(other.conn.close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_held_to_the_queue_budget_and_other_peers_are_served() {
    /// The slow reader's receive window (stream and connection).
    const WINDOW: u32 = 64 * 1024;
    const LEN: usize = 4096;
    const BUDGET: QueueBudget = QueueBudget {
        frames: 32,
        bytes: 1 << 20,
    };
    const ATTEMPTS: u64 = 3000;
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut v = victim_with(&ca, |cfg| cfg.queue = ClassBudgets::uniform(BUDGET));
    // The slow reader: authenticated, says Hello, never reads a stream.
    let slow_id = NodeId::new("slow");
    let (_slow_ep, slow, _control) = slow_reader(&ca, &mut v, WINDOW).await;
    // The well-behaved peer: a QUIC transport of its own.
    let good_id = NodeId::new("member");
    let mut cfg = QuicConfig::new(ca.issue_node(&good_id, Role::Member).unwrap(), ca.roots());
    cfg.listen = (OTHER, 0).into();
    let (tx, mut good_rx) = mpsc::channel(65536);
    let good_t = QuicTransport::bind(cfg, tx).unwrap();
    good_t
        .connect(&PeerAddr::at(v.id.clone(), v.t.local_addr()))
        .await
        .unwrap();
    wait_up(&mut v.rx, &good_id).await;
    // The victim sends to the slow reader as fast as it can.
    let (mut accepted, mut full, mut calm) = (0u64, 0u64, 0u64);
    for seq in 0..ATTEMPTS {
        match v.t.send(&slow_id, data("flood", 2, seq, LEN)) {
            Ok(()) => accepted += 1,
            Err(SendError::Full { peer, .. }) => {
                assert_eq!(peer, slow_id);
                full += 1;
            }
            Err(e) => panic!("frame {seq}: {e:?}"),
        }
        if seq % 30 == 0 {
            // Each frame to the good peer arrives while the flood goes on.
            v.t.send(&good_id, data("calm", 2, calm, 64))
                .expect("the good peer's queue has room");
            assert_eq!(recv_data(&mut good_rx, &v.id, "calm", 1).await, vec![calm]);
            calm += 1;
        }
        tokio::task::yield_now().await;
    }
    // What the victim took on is its queue plus what the reader's window
    // let quinn write: never more, however long the flood.
    let bound = BUDGET.frames as u64 + u64::from(WINDOW) / LEN as u64 + 1;
    assert!(
        accepted <= bound,
        "accepted {accepted} frames for a reader that never reads (bound {bound})"
    );
    assert_eq!(accepted + full, ATTEMPTS);
    assert_eq!(v.t.counters().refused_queue_full, full);
    // The slow reader goes; the victim lets go of its queue, and the good
    // peer is still served.
    slow.close(0u8.into(), b"bye");
    until(&mut v.rx, LIMIT, |e| {
        e.path.peer == slow_id && matches!(e.fact, Fact::Down(_))
    })
    .await;
    assert!(matches!(
        v.t.send(&slow_id, data("flood", 2, 0, LEN)),
        Err(SendError::NoPath { .. })
    ));
    v.t.send(&good_id, data("calm", 2, calm, 64)).unwrap();
    assert_eq!(recv_data(&mut good_rx, &v.id, "calm", 1).await, vec![calm]);
    good_t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_started_faster_than_the_rate_are_refused_and_counted() {
    const RATE: u32 = 2;
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut v = victim(
        &ca,
        QuicLimits {
            connections_per_second_per_address: RATE,
            ..QuicLimits::default()
        },
    );
    // A burst of the rate is served (each connection closed again)...
    for i in 0..RATE {
        assert_eq!(attempt(&ca, &v, &format!("burst-{i}"), FLOODER).await, None);
    }
    // ...the next ones from that address are refused before their
    // handshake (the bucket refills at RATE a second: a few at most get
    // through while these run).
    let mut refused = 0;
    for i in 0..10 {
        if attempt(&ca, &v, &format!("over-{i}"), FLOODER).await == Some(CONNECTION_REFUSED) {
            refused += 1;
        }
    }
    assert!(refused >= 5, "{refused} of 10 refused over the rate");
    assert_eq!(v.t.counters().refused_connection_rate, refused);
    // Another address is served meanwhile.
    let other = good(&ca, &mut v, "member", OTHER).await;
    answered(&other.conn, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_drop_oldest_class_gets_the_newest_frames_in_order() {
    const WINDOW: u32 = 64 * 1024;
    const LEN: usize = 4096;
    const ATTEMPTS: u64 = 2000;
    /// `TrafficClass::Integration`: buffered, then oldest dropped.
    const INTEGRATION: u8 = 4;
    let budget = QueueBudget {
        frames: 32,
        bytes: 1 << 20,
    };
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut v = victim_with(&ca, |cfg| {
        cfg.queue = ClassBudgets::default().with_budget(TrafficClass::Integration, budget)
    });
    let slow_id = NodeId::new("slow");
    let (_ep, slow, _control) = slow_reader(&ca, &mut v, WINDOW).await;
    // The victim sends as fast as it can to a reader that does not read
    // yet: the class makes room by dropping its oldest frames.
    let (mut accepted, mut full, mut last_ok) = (0u64, 0u64, None);
    for seq in 0..ATTEMPTS {
        match v.t.send(&slow_id, data("bulk", INTEGRATION, seq, LEN)) {
            Ok(()) => {
                accepted += 1;
                last_ok = Some(seq);
            }
            Err(SendError::Full { .. }) => full += 1,
            Err(e) => panic!("frame {seq}: {e:?}"),
        }
        tokio::task::yield_now().await;
    }
    let dropped = v.t.counters().dropped_oldest;
    let bound = budget.frames as u64 + u64::from(WINDOW) / LEN as u64 + 1;
    assert!(
        dropped >= accepted.saturating_sub(bound),
        "accepted {accepted}, dropped {dropped}: more held than the budget (bound {bound})"
    );
    assert!(dropped > 0, "a reader that never reads made the class drop");
    assert_eq!(v.t.counters().refused_queue_full, full);
    // Now the reader reads: what it gets is in order, ends with the newest
    // accepted frame, and is exactly what was accepted and not dropped.
    let last_ok = last_ok.expect("some frames were accepted");
    let (tx, mut seqs) = mpsc::unbounded_channel();
    let reader = {
        let slow = slow.clone();
        tokio::spawn(async move {
            while let Ok(mut recv) = slow.accept_uni().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = bytes::BytesMut::new();
                    let mut dec = interlocking::wire::FrameDecoder::new(Default::default());
                    while let Ok(Some(f)) =
                        interlocking::wire::read_frame(&mut recv, &mut buf, &mut dec).await
                    {
                        if let interlocking::wire::Frame::Data(d) = f
                            && d.stream.as_str() == "bulk"
                        {
                            let _ = tx.send(d.seq);
                        }
                    }
                });
            }
        })
    };
    let mut got = Vec::new();
    while got.last() != Some(&last_ok) {
        let seq = tokio::time::timeout(LIMIT, seqs.recv())
            .await
            .unwrap_or_else(|_| panic!("newest frame {last_ok} never arrived; got {}", got.len()))
            .expect("reader running");
        got.push(seq);
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "order kept: {got:?}");
    assert_eq!(
        got.len() as u64,
        accepted - dropped,
        "written = accepted − dropped"
    );
    assert_eq!(v.t.counters().dropped_stale, 0);
    reader.abort();
}

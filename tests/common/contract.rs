//! The transport contract as executable checks: one suite, run against
//! every transport (memory in virtual time, QUIC over real loopback UDP).
//! Every wait is bounded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use interlocking::transports::{DownCause, Fact, PeerAddr, SendError, Transport, TransportEvent};
use interlocking::vocab::{NodeId, StreamId};
use interlocking::wire::{Data, Frame};
use tokio::sync::mpsc;

/// One transport under test with its event receiver and dialable address.
pub struct Side {
    /// The transport.
    pub t: Arc<dyn Transport>,
    /// Its events.
    pub rx: mpsc::Receiver<TransportEvent>,
    /// How to dial it.
    pub addr: PeerAddr,
}

/// A data frame of traffic `class` with sequence number `seq`; control
/// frames are delivery class A (the root dedupes them), others class C.
pub fn data(stream: &str, class: u8, seq: u64, len: usize) -> Frame {
    let mut payload = vec![0u8; len.max(8)];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    Frame::Data(Data {
        stream: StreamId::new(stream),
        incarnation: 1,
        seq,
        message_id: seq,
        class,
        delivery: if class == 0 { 0 } else { 2 },
        payload: Bytes::from(payload),
    })
}

/// Receives events until `pred` matches one; panics after `limit`.
pub async fn until(
    rx: &mut mpsc::Receiver<TransportEvent>,
    limit: Duration,
    pred: impl Fn(&TransportEvent) -> bool,
) -> (TransportEvent, Vec<TransportEvent>) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("event did not arrive within {limit:?}; saw {seen:?}"))
            .expect("sink closed");
        if pred(&ev) {
            return (ev, seen);
        }
        seen.push(ev);
    }
}

/// Waits for `Up` about `peer`.
pub async fn wait_up(rx: &mut mpsc::Receiver<TransportEvent>, peer: &NodeId) {
    until(rx, Duration::from_secs(10), |e| {
        &e.path.peer == peer && matches!(e.fact, Fact::Up)
    })
    .await;
}

/// Waits for `Down` about `peer` and returns its cause.
pub async fn wait_down(rx: &mut mpsc::Receiver<TransportEvent>, peer: &NodeId) -> DownCause {
    let (ev, _) = until(rx, Duration::from_secs(10), |e| {
        &e.path.peer == peer && matches!(e.fact, Fact::Down(_))
    })
    .await;
    match ev.fact {
        Fact::Down(c) => c,
        _ => unreachable!(),
    }
}

/// Receives `n` data frames of `stream` from `peer`; returns their seqs.
pub async fn recv_data(
    rx: &mut mpsc::Receiver<TransportEvent>,
    peer: &NodeId,
    stream: &str,
    n: usize,
) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let (ev, _) = until(
            rx,
            Duration::from_secs(10),
            |e| matches!(&e.fact, Fact::Frame(Frame::Data(d)) if d.stream.as_str() == stream),
        )
        .await;
        assert_eq!(&ev.path.peer, peer);
        if let Fact::Frame(Frame::Data(d)) = ev.fact {
            seqs.push(d.seq);
        }
    }
    seqs
}

/// Contract: `connect` reports `Up` on both sides.
pub async fn connect_reports_up_on_both_sides(a: &mut Side, b: &mut Side) {
    a.t.connect(&b.addr).await.expect("connect");
    wait_up(&mut a.rx, &b.addr.node).await;
    wait_up(&mut b.rx, &a.addr.node).await;
    // Connecting again is a no-op that succeeds.
    a.t.connect(&b.addr).await.expect("second connect");
}

/// Contract: frames of one class arrive in order, both ways.
pub async fn delivers_in_order(a: &mut Side, b: &mut Side) {
    for seq in 0..50 {
        a.t.send(&b.addr.node, data("command:a/b", 0, seq, 16))
            .expect("send a→b");
    }
    for seq in 0..20 {
        b.t.send(&a.addr.node, data("command:b/a", 0, seq, 16))
            .expect("send b→a");
    }
    let got = recv_data(&mut b.rx, &a.addr.node, "command:a/b", 50).await;
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    let got = recv_data(&mut a.rx, &b.addr.node, "command:b/a", 20).await;
    assert_eq!(got, (0..20).collect::<Vec<_>>());
}

/// Contract: sending without a path hands the frame back.
pub fn send_without_path_hands_the_frame_back(a: &Side) {
    let frame = data("command:a/nobody", 0, 7, 16);
    let err =
        a.t.send(&NodeId::new("nobody"), frame.clone())
            .expect_err("no path");
    assert!(matches!(err, SendError::NoPath { .. }), "{err:?}");
    assert_eq!(err.into_frame(), Some(frame));
}

/// Contract: `close` reports `Down(ClosedLocally)` here and
/// `Down(ClosedByPeer)` with the code on the other side.
pub async fn close_reports_down_on_both_sides(a: &mut Side, b: &mut Side) {
    a.t.close(&b.addr.node, 0x42, "bye").await;
    assert_eq!(
        wait_down(&mut a.rx, &b.addr.node).await,
        DownCause::ClosedLocally
    );
    match wait_down(&mut b.rx, &a.addr.node).await {
        DownCause::ClosedByPeer { code, .. } => assert_eq!(code, 0x42),
        other => panic!("unexpected cause {other:?}"),
    }
    let err =
        a.t.send(&b.addr.node, data("command:a/b", 0, 1, 8))
            .expect_err("closed");
    assert!(matches!(err, SendError::NoPath { .. }));
}

/// The whole contract, in order, on a fresh pair.
pub async fn run(mut a: Side, mut b: Side) {
    send_without_path_hands_the_frame_back(&a);
    connect_reports_up_on_both_sides(&mut a, &mut b).await;
    delivers_in_order(&mut a, &mut b).await;
    close_reports_down_on_both_sides(&mut a, &mut b).await;
    a.t.shutdown().await;
    b.t.shutdown().await;
}

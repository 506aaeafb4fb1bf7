//! The memory transport: delivery, seeded faults, determinism, partitions,
//! flaps and closes — all in tokio's paused virtual time.

use std::time::Duration;

use bytes::Bytes;
use interlocking::transports::memory::{FlapSchedule, LinkFaults, MemoryNetwork, Outcome};
use interlocking::transports::probe::ProbeConfig;
use interlocking::transports::{DownCause, Fact, PeerAddr, Transport, TransportEvent};
use interlocking::vocab::{NodeId, PathKind, StreamId};
use interlocking::wire::{Data, Frame, FrameKind};
use tokio::sync::mpsc;

fn data(seq: u64) -> Frame {
    Frame::Data(Data {
        stream: StreamId::new("command:a/b"),
        incarnation: 1,
        seq,
        message_id: seq,
        class: 0,
        delivery: 0,
        payload: Bytes::from(seq.to_be_bytes().to_vec()),
    })
}

fn probe_cfg() -> ProbeConfig {
    ProbeConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    }
}

/// Receives events until `pred` matches one, failing after `limit` of
/// virtual time. Returns the matching event and everything before it.
async fn until(
    rx: &mut mpsc::Receiver<TransportEvent>,
    limit: Duration,
    pred: impl Fn(&TransportEvent) -> bool,
) -> (TransportEvent, Vec<TransportEvent>) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("event did not arrive within the limit")
            .expect("sink closed");
        if pred(&ev) {
            return (ev, seen);
        }
        seen.push(ev);
    }
}

/// Data frames received within `window` of virtual time.
async fn drain_data(rx: &mut mpsc::Receiver<TransportEvent>, window: Duration) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + window;
    let mut seqs = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if let Fact::Frame(Frame::Data(d)) = ev.fact {
            seqs.push(d.seq);
        }
    }
    seqs
}

#[tokio::test(start_paused = true)]
async fn connect_reports_up_on_both_sides_and_delivers_in_order() {
    let net = MemoryNetwork::new(1);
    let (atx, mut arx) = mpsc::channel(1024);
    let (btx, mut brx) = mpsc::channel(1024);
    let a = net.bind("a", PathKind::Quic, atx, probe_cfg());
    let _b = net.bind("b", PathKind::Quic, btx, probe_cfg());
    a.connect(&PeerAddr::node("b")).await.unwrap();
    let (up_a, _) = until(&mut arx, Duration::from_secs(1), |e| {
        matches!(e.fact, Fact::Up)
    })
    .await;
    assert_eq!(up_a.path.peer, NodeId::new("b"));
    let (up_b, _) = until(&mut brx, Duration::from_secs(1), |e| {
        matches!(e.fact, Fact::Up)
    })
    .await;
    assert_eq!(up_b.path.peer, NodeId::new("a"));
    assert_eq!(up_b.path.kind, PathKind::Quic);

    for seq in 0..50 {
        a.send(&NodeId::new("b"), data(seq)).unwrap();
    }
    let got = drain_data(&mut brx, Duration::from_millis(50)).await;
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn sending_without_a_path_hands_the_frame_back() {
    let net = MemoryNetwork::new(1);
    let (atx, _arx) = mpsc::channel(16);
    let a = net.bind("a", PathKind::Quic, atx, probe_cfg());
    let err = a.send(&NodeId::new("nobody"), data(9)).unwrap_err();
    assert_eq!(err.into_frame(), Some(data(9)));
    assert!(a.connect(&PeerAddr::node("nobody")).await.is_err());
}

async fn faulty_run(seed: u64) -> (Vec<interlocking::transports::memory::TraceEntry>, Vec<u64>) {
    let net = MemoryNetwork::new(seed);
    net.set_default_faults(LinkFaults {
        latency: Duration::from_millis(2),
        jitter: Duration::from_millis(3),
        loss: 0.2,
        duplicate: 0.05,
        reorder: 0.1,
        reorder_delay: Duration::from_millis(10),
    });
    let (atx, _arx) = mpsc::channel(4096);
    let (btx, mut brx) = mpsc::channel(4096);
    let slow = ProbeConfig {
        interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(3600),
    };
    let a = net.bind("a", PathKind::Quic, atx, slow);
    let _b = net.bind("b", PathKind::Quic, btx, slow);
    a.connect(&PeerAddr::node("b")).await.unwrap();
    for seq in 0..500 {
        a.send(&NodeId::new("b"), data(seq)).unwrap();
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let got = drain_data(&mut brx, Duration::from_millis(100)).await;
    let trace = net
        .trace()
        .into_iter()
        .filter(|t| t.from == NodeId::new("a") && t.frame == FrameKind::Data)
        .collect();
    (trace, got)
}

#[tokio::test(start_paused = true)]
async fn same_seed_gives_the_same_trace_and_faults_show_up() {
    let (t1, got1) = faulty_run(0xfeed).await;
    let (t2, got2) = faulty_run(0xfeed).await;
    assert_eq!(t1, t2, "same seed must give the same trace");
    assert_eq!(got1, got2, "same seed must give the same delivery order");

    let lost = t1.iter().filter(|t| t.outcomes == [Outcome::Lost]).count();
    let dup = t1.iter().filter(|t| t.outcomes.len() == 2).count();
    assert!((60..=140).contains(&lost), "~20% of 500 lost, got {lost}");
    assert!((5..=50).contains(&dup), "~5% of 400 duplicated, got {dup}");
    let delivered: usize = t1
        .iter()
        .map(|t| {
            t.outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Delivered(_)))
                .count()
        })
        .sum();
    assert_eq!(got1.len(), delivered, "every scheduled copy arrives");
    assert!(
        got1.windows(2).any(|w| w[1] < w[0]),
        "jitter and reordering must reorder some frames"
    );

    let (t3, _) = faulty_run(0xbeef).await;
    assert_ne!(t1, t3, "another seed gives another trace");
}

#[tokio::test(start_paused = true)]
async fn partition_makes_probes_miss_and_heal_brings_answers_back() {
    let net = MemoryNetwork::new(3);
    let (atx, mut arx) = mpsc::channel(1024);
    let (btx, _brx) = mpsc::channel(1024);
    let a = net.bind("a", PathKind::Quic, atx, probe_cfg());
    let _b = net.bind("b", PathKind::Quic, btx, probe_cfg());
    a.connect(&PeerAddr::node("b")).await.unwrap();
    until(&mut arx, Duration::from_secs(1), |e| {
        matches!(e.fact, Fact::ProbeAnswered { .. })
    })
    .await;

    let (a_id, b_id) = (NodeId::new("a"), NodeId::new("b"));
    net.partition(PathKind::Quic, &a_id, &b_id);
    let cut = tokio::time::Instant::now();
    let (_, before) = until(&mut arx, Duration::from_secs(2), |e| {
        matches!(e.fact, Fact::ProbeMissed)
    })
    .await;
    // A miss is declared one timeout after the first unanswered probe.
    let waited = cut.elapsed();
    assert!(
        waited <= probe_cfg().interval + probe_cfg().timeout,
        "{waited:?}"
    );
    assert!(
        waited >= probe_cfg().timeout - probe_cfg().interval,
        "{waited:?}"
    );
    assert!(before.iter().all(|e| !matches!(e.fact, Fact::Frame(_))));
    assert!(
        a.send(&b_id, data(1)).is_ok(),
        "a partition is silent: sends still queue"
    );

    net.heal(PathKind::Quic, &a_id, &b_id);
    until(&mut arx, Duration::from_secs(2), |e| {
        matches!(e.fact, Fact::ProbeAnswered { .. })
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn flap_schedule_blackholes_frames_in_down_phases() {
    let net = MemoryNetwork::new(4);
    let (atx, _arx) = mpsc::channel(4096);
    let (btx, mut brx) = mpsc::channel(4096);
    let quiet = ProbeConfig {
        interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(3600),
    };
    let a = net.bind("a", PathKind::Relay, atx, quiet);
    let _b = net.bind("b", PathKind::Relay, btx, quiet);
    a.connect(&PeerAddr::node("b")).await.unwrap();
    let start = tokio::time::Instant::now();
    net.set_flap(
        PathKind::Relay,
        &NodeId::new("a"),
        &NodeId::new("b"),
        Some(FlapSchedule {
            start,
            up: Duration::from_millis(100),
            down: Duration::from_millis(100),
        }),
    );
    // One frame every 10 ms for 400 ms: phases up, down, up, down.
    for seq in 0..40u64 {
        a.send(&NodeId::new("b"), data(seq)).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = drain_data(&mut brx, Duration::from_millis(50)).await;
    let expected: Vec<u64> = (0..40).filter(|s| (s / 10) % 2 == 0).collect();
    assert_eq!(got, expected);
}

#[tokio::test(start_paused = true)]
async fn close_reports_down_locally_and_closed_by_peer_remotely() {
    let net = MemoryNetwork::new(5);
    let (atx, mut arx) = mpsc::channel(1024);
    let (btx, mut brx) = mpsc::channel(1024);
    let a = net.bind("a", PathKind::Quic, atx, probe_cfg());
    let _b = net.bind("b", PathKind::Quic, btx, probe_cfg());
    a.connect(&PeerAddr::node("b")).await.unwrap();
    a.close(&NodeId::new("b"), 0x42, "bye").await;
    let (down, _) = until(&mut arx, Duration::from_secs(1), |e| {
        matches!(e.fact, Fact::Down(_))
    })
    .await;
    assert!(matches!(down.fact, Fact::Down(DownCause::ClosedLocally)));
    let (down, _) = until(&mut brx, Duration::from_secs(1), |e| {
        matches!(e.fact, Fact::Down(_))
    })
    .await;
    match down.fact {
        Fact::Down(DownCause::ClosedByPeer { code, reason }) => {
            assert_eq!(code, 0x42);
            assert_eq!(reason, "bye");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(a.send(&NodeId::new("b"), data(1)).is_err());
}

mod common;

#[tokio::test(start_paused = true)]
async fn memory_passes_the_transport_contract() {
    let net = MemoryNetwork::new(9);
    let (atx, arx) = mpsc::channel(4096);
    let (btx, brx) = mpsc::channel(4096);
    let a = net.bind("a", PathKind::Quic, atx, probe_cfg());
    let b = net.bind("b", PathKind::Quic, btx, probe_cfg());
    common::contract::run(
        common::contract::Side {
            t: a,
            rx: arx,
            addr: PeerAddr::node("a"),
        },
        common::contract::Side {
            t: b,
            rx: brx,
            addr: PeerAddr::node("b"),
        },
    )
    .await;
}

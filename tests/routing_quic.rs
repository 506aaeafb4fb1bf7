//! The node tree over real loopback QUIC with mutual TLS: a stream routes
//! over the direct path, data is acked end to end, a blackholed socket fails
//! the path through missed probes, healing recovers it, and a killed
//! transport actor is restarted on the same address and re-dials.

use interlocking::actors::session::{Binding, DEFAULT_INBOX_CAPACITY, Permit, Side};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::routing::authority::RouteUpdate;
use interlocking::routing::{Need, RoutingConfig, Rule};
use interlocking::transports::PeerAddr;
use interlocking::transports::probe::ProbeConfig;
use interlocking::transports::quic::QuicConfig;
use interlocking::transports::quic::faults::FaultHandle;
use interlocking::trust::CertificateAuthority;
use interlocking::vocab::{ChannelKind, NodeId, PathId, PathKind, Role, StreamId};
use interlocking::wire::{Ack, Data, Frame};

type Updates = Arc<Mutex<Vec<RouteUpdate>>>;

/// Polls (bounded, 10 ms real-time steps) until an update matches.
async fn wait_for(
    updates: &Updates,
    limit: Duration,
    pred: impl Fn(&RouteUpdate) -> bool,
) -> RouteUpdate {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(u) = updates.lock().unwrap().iter().find(|u| pred(u)).cloned() {
            return u;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no matching update within {limit:?}: {:?}",
            updates
                .lock()
                .unwrap()
                .iter()
                .map(|u| u.decision.to_string())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn quic_config(ca: &CertificateAuthority, node: &str, role: Role) -> QuicConfig {
    let mut c = QuicConfig::new(ca.issue_node(&NodeId::new(node), role).unwrap(), ca.roots());
    c.probe = ProbeConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    };
    c
}

async fn nodes(ca: &CertificateAuthority, faults: &FaultHandle) -> (Node, Node) {
    let hub = NodeBuilder::new("hub", Role::Hub)
        .routing(RoutingConfig::default())
        .quic(quic_config(ca, "hub", Role::Hub))
        .spawn()
        .await
        .unwrap();
    let addr = hub.listen_addr(PathKind::Quic).expect("quic listens");
    let member = NodeBuilder::new("m1", Role::Member)
        .quic_with_faults(quic_config(ca, "m1", Role::Member), faults.clone())
        .dial(PathKind::Quic, PeerAddr::at("hub", addr))
        .spawn()
        .await
        .unwrap();
    (hub, member)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_quic_route_fails_on_blackhole_recovers_and_survives_a_transport_restart() {
    let ca = CertificateAuthority::generate("test-ca").unwrap();
    let faults = FaultHandle::new(21);
    let (hub, member) = nodes(&ca, &faults).await;
    let stream = StreamId::new("command:m1/hub");
    let quic = PathId::new("hub", PathKind::Quic);

    // The hub acks every data frame on the path it arrived on.
    let hub_tx = hub.transport(PathKind::Quic).unwrap();
    hub.bind_stream(
        stream.clone(),
        Binding {
            peer: NodeId::new("m1"),
            kind: ChannelKind::Command,
            side: Side::Receiver,
        },
        Arc::new(move |p: &PathId, f: Frame, _permit: Permit| {
            if let Frame::Data(d) = f {
                let ack = Frame::Ack(Ack {
                    stream: d.stream,
                    incarnation: d.incarnation,
                    seq: d.seq,
                    message_id: d.message_id,
                    credit: 64,
                });
                let _ = hub_tx.send(&p.peer, ack);
            }
        }),
        DEFAULT_INBOX_CAPACITY,
        0,
    );
    let updates: Updates = Arc::default();
    let sink = updates.clone();
    member
        .register_stream(
            stream.clone(),
            Need::node(ChannelKind::Command, NodeId::new("hub")),
            move |u| sink.lock().unwrap().push(u),
        )
        .await
        .unwrap();
    wait_for(&updates, Duration::from_secs(5), |u| {
        u.decision.next.as_ref() == Some(&quic)
    })
    .await;

    // One data frame, acked by the hub, completes the make-before-break.
    let data = Frame::Data(Data {
        stream: stream.clone(),
        incarnation: 1,
        seq: 1,
        message_id: 1,
        class: 0,
        delivery: 0,
        payload: Bytes::from_static(b"x"),
    });
    member.send(&quic, data).unwrap();
    wait_for(&updates, Duration::from_secs(5), |u| {
        u.decision.rule == Rule::TransitionComplete
    })
    .await;

    // Blackhole the member's socket: missed probes fail the only path.
    updates.lock().unwrap().clear();
    faults.set_blackhole(true);
    let failed = wait_for(&updates, Duration::from_secs(5), |u| {
        u.decision.next.is_none()
    })
    .await;
    assert_eq!(failed.decision.previous.as_ref(), Some(&quic));
    assert!(
        failed.decision.cause.to_string().contains("miss"),
        "{}",
        failed.decision
    );

    // Heal: evidence returns and the stream recovers onto quic.
    faults.set_blackhole(false);
    wait_for(&updates, Duration::from_secs(10), |u| {
        u.decision.next.as_ref() == Some(&quic)
    })
    .await;

    // Kill the member's transport actor: its supervisor restarts it, the
    // new transport re-dials, and the stream is routed over quic again.
    let before = member.actor("transport/quic").expect("transport actor");
    updates.lock().unwrap().clear();
    before.kill();
    let mut restarted = None;
    for _ in 0..500 {
        if let Some(cell) = member.actor("transport/quic")
            && cell.get_id() != before.get_id()
        {
            restarted = Some(cell);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(restarted.is_some(), "transport actor restarted");
    wait_for(&updates, Duration::from_secs(15), |u| {
        u.decision.next.as_ref() == Some(&quic)
    })
    .await;
    assert!(member.is_running() && hub.is_running());

    member.shutdown().await;
    hub.shutdown().await;
}

//! The relay transport through a real root over loopback QUIC: frames and
//! end-to-end probes both ways, refusal of non-admitted destinations,
//! root-side dedupe of retried class-A frames, rendezvous then a direct
//! dial, and the root going away while a direct path keeps delivering.
//! Every wait is bounded.

mod common;

use interlocking::actors::session::{Binding, DEFAULT_INBOX_CAPACITY, Permit, Side};
use std::time::Duration;

use bytes::Bytes;
use common::contract::{data, data_bytes_with_class, recv_data, until, wait_down, wait_up};
use common::rootkit::{LIMIT, direct, joined, joined_with, relay, root, via_root, wait_online};
use interlocking::root::codes;
use interlocking::transports::relay::LookupError;
use interlocking::transports::{ConnectError, Fact, PeerAddr, Transport};
use interlocking::vocab::{NodeId, Role, StreamId};
use interlocking::wire::{Data, Frame, Relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_both_ways_and_probes_are_answered() {
    let root = root().await;
    let a = joined(&root, "a", Role::Hub).await;
    let b = joined(&root, "b", Role::Member).await;
    let (ta, mut ra) = relay(&root, a.identity, a.roots);
    let (tb, mut rb) = relay(&root, b.identity, b.roots);
    // b must be online at the root before a can reach it.
    tb.register(vec![], vec![]).await.unwrap();
    wait_online(&root, "b", true).await;
    ta.connect(&via_root("b"))
        .await
        .expect("a reaches b through the root");
    wait_up(&mut ra, &NodeId::new("b")).await;
    for seq in 0..20 {
        ta.send(&NodeId::new("b"), data("command:a/b", 4, seq, 32))
            .unwrap();
    }
    // b learns of the path from the first relayed frame.
    wait_up(&mut rb, &NodeId::new("a")).await;
    assert_eq!(
        recv_data(&mut rb, &NodeId::new("a"), "command:a/b", 20).await,
        (0..20).collect::<Vec<_>>()
    );
    for seq in 0..5 {
        tb.send(&NodeId::new("a"), data("command:b/a", 4, seq, 32))
            .unwrap();
    }
    assert_eq!(
        recv_data(&mut ra, &NodeId::new("b"), "command:b/a", 5).await,
        (0..5).collect::<Vec<_>>()
    );
    // A spoofed `from` is overwritten by the root with the certificate's.
    let inner =
        interlocking::wire::encode_to_bytes(&data("command:a/b", 4, 99, 8), &Default::default())
            .unwrap();
    ta.link()
        .send(
            root.node(),
            Frame::Relay(Relay {
                to: NodeId::new("b"),
                from: NodeId::new("mallory"),
                frame: inner,
            }),
        )
        .unwrap();
    assert_eq!(
        recv_data(&mut rb, &NodeId::new("a"), "command:a/b", 1).await,
        vec![99]
    );
    // End-to-end probes through the root are answered on both sides.
    for (rx, peer) in [(&mut ra, "b"), (&mut rb, "a")] {
        let (ev, _) = until(rx, LIMIT, |e| {
            e.path.peer.as_str() == peer && matches!(e.fact, Fact::ProbeAnswered { .. })
        })
        .await;
        assert_eq!(ev.path.kind, interlocking::vocab::PathKind::Relay);
    }
    assert!(root.counters().relayed >= 25);
    ta.shutdown().await;
    tb.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_a_node_that_is_not_admitted_is_refused() {
    let root = root().await;
    let a = joined(&root, "a", Role::Hub).await;
    let (ta, mut ra) = relay(&root, a.identity, a.roots);
    // connect: the rendezvous lookup is refused with a typed code.
    match ta.connect(&via_root("ghost")).await {
        Err(ConnectError::Refused(node, why)) => {
            assert_eq!(node.as_str(), "ghost");
            assert!(why.contains("0x210"), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(
        ta.lookup_node(&NodeId::new("ghost")).await,
        Err(LookupError::Refused(codes::NOT_ADMITTED))
    ));
    // A relay frame sent anyway (bypassing connect) is refused back with
    // RelayRefused 0x210, reported as an incident on the relay path.
    let inner =
        interlocking::wire::encode_to_bytes(&data("command:a/ghost", 0, 1, 8), &Default::default())
            .unwrap();
    ta.link()
        .send(
            root.node(),
            Frame::Relay(Relay {
                to: NodeId::new("ghost"),
                from: NodeId::new("a"),
                frame: inner,
            }),
        )
        .unwrap();
    let (ev, _) = until(&mut ra, LIMIT, |e| {
        e.path.peer.as_str() == "ghost"
            && matches!(&e.fact, Fact::Incident(w) if w.contains("0x210"))
    })
    .await;
    assert_eq!(ev.path.kind, interlocking::vocab::PathKind::Relay);
    assert!(root.counters().relay_refused >= 1);
    assert_eq!(root.counters().relayed, 0);
    ta.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_drops_a_retried_class_a_frame_and_replays_its_reply() {
    let root = root().await;
    let a = joined(&root, "a", Role::Hub).await;
    let b = joined(&root, "b", Role::Member).await;
    let (ta, mut ra) = relay(&root, a.identity, a.roots);
    let (tb, mut rb) = relay(&root, b.identity, b.roots);
    tb.register(vec![], vec![]).await.unwrap();
    wait_online(&root, "b", true).await;
    ta.connect(&via_root("b")).await.unwrap();
    wait_up(&mut ra, &NodeId::new("b")).await;
    let command = |message_id: u64, seq: u64| {
        Frame::Data(Data {
            stream: StreamId::new("command:a/b"),
            incarnation: 1,
            seq,
            message_id,
            class: 0, // control: class-A commands
            delivery: 0,
            payload: Bytes::from_static(b"open the valve"),
        })
    };
    let b_id = NodeId::new("b");
    ta.send(&b_id, command(7, 1)).unwrap();
    ta.send(&b_id, command(7, 1)).unwrap(); // the retry
    ta.send(&b_id, command(8, 2)).unwrap();
    // Frames of one class keep their order through the root, so once
    // message 8 arrived the retry of 7 would have arrived before it.
    let mut ids = Vec::new();
    while !ids.contains(&8) {
        let (ev, _) = until(&mut rb, LIMIT, |e| {
            matches!(e.fact, Fact::Frame(Frame::Data(_)))
        })
        .await;
        if let Fact::Frame(Frame::Data(d)) = ev.fact {
            ids.push(d.message_id);
        }
    }
    assert_eq!(ids, vec![7, 8]);
    assert_eq!(root.counters().deduped, 1);
    // Other delivery classes are not deduped by the root.
    ta.send(&b_id, data("sync:a/b", 3, 9, 8)).unwrap();
    ta.send(&b_id, data("sync:a/b", 3, 9, 8)).unwrap();
    assert_eq!(
        recv_data(&mut rb, &NodeId::new("a"), "sync:a/b", 2).await,
        vec![9, 9]
    );
    assert_eq!(root.counters().deduped, 1);

    // b's reply to 7 carries the same stream and message id the other way:
    // it is forwarded, not mistaken for a duplicate of the command...
    let reply = Frame::Data(Data {
        stream: StreamId::new("command:a/b"),
        incarnation: 1,
        seq: 1,
        message_id: 7,
        class: 0,
        delivery: 0,
        payload: Bytes::from_static(b"valve open"),
    });
    tb.send(&NodeId::new("a"), reply.clone()).unwrap();
    let (ev, _) = until(
        &mut ra,
        LIMIT,
        |e| matches!(&e.fact, Fact::Frame(Frame::Data(d)) if d.message_id == 7),
    )
    .await;
    assert!(matches!(ev.fact, Fact::Frame(f) if f == reply));
    // ...and a later retry of 7 is answered by the root from that reply,
    // without reaching b again.
    ta.send(&b_id, command(7, 1)).unwrap();
    let (ev, _) = until(
        &mut ra,
        LIMIT,
        |e| matches!(&e.fact, Fact::Frame(Frame::Data(d)) if d.message_id == 7),
    )
    .await;
    assert!(
        matches!(ev.fact, Fact::Frame(f) if f == reply),
        "replayed reply"
    );
    assert_eq!(root.counters().deduped, 2);
    ta.send(&b_id, command(10, 3)).unwrap();
    let (ev, _) = until(&mut rb, LIMIT, |e| {
        matches!(e.fact, Fact::Frame(Frame::Data(_)))
    })
    .await;
    assert!(
        matches!(ev.fact, Fact::Frame(Frame::Data(d)) if d.message_id == 10),
        "b saw no second copy of 7"
    );
    ta.shutdown().await;
    tb.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_then_direct_dial() {
    let root = root().await;
    let hub = joined(&root, "hub", Role::Hub).await;
    let member = joined_with(&root, "m1", Role::Member, &["camera"]).await;
    let (hub_relay, _hub_rx) = relay(&root, hub.identity.clone(), hub.roots.clone());
    let (m_relay, _m_rx) = relay(&root, member.identity.clone(), member.roots.clone());
    let (m_direct, mut m_direct_rx) = direct(member.identity, member.roots);
    let (hub_direct, mut hub_direct_rx) = direct(hub.identity, hub.roots);
    m_relay
        .register(
            vec![m_direct.local_addr().to_string()],
            vec!["camera".into()],
        )
        .await
        .unwrap();
    // The registration may still be in flight: ask until it is seen.
    let found = tokio::time::timeout(LIMIT, async {
        loop {
            match hub_relay.lookup_capability("camera").await {
                Ok(r) => break r,
                Err(LookupError::Refused(codes::NO_CAPABILITY)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("lookup failed: {e}"),
            }
        }
    })
    .await
    .expect("capability found in time");
    assert_eq!(found.node.as_str(), "m1");
    assert_eq!(found.capabilities, vec!["camera".to_string()]);
    // Signalling through the rendezvous: the root vouches for `from`.
    let mut signals = m_relay.signals();
    hub_relay
        .link()
        .send(
            root.node(),
            Frame::Signal(interlocking::wire::Signal {
                to: NodeId::new("m1"),
                from: NodeId::new("mallory"),
                kind: "webrtc/offer".into(),
                payload: Bytes::from_static(b"v=0"),
            }),
        )
        .unwrap();
    hub_relay
        .signal(
            &NodeId::new("m1"),
            "webrtc/candidate",
            Bytes::from_static(b"c"),
        )
        .await
        .unwrap();
    for kind in ["webrtc/offer", "webrtc/candidate"] {
        let sig = tokio::time::timeout(LIMIT, signals.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((sig.from.as_str(), sig.kind.as_str()), ("hub", kind));
    }
    let by_node = hub_relay.lookup_node(&NodeId::new("m1")).await.unwrap();
    assert_eq!(by_node.addrs, found.addrs);
    let addr = found.addrs[0].parse().unwrap();
    hub_direct
        .connect(&PeerAddr::at("m1", addr))
        .await
        .expect("direct dial");
    wait_up(&mut hub_direct_rx, &NodeId::new("m1")).await;
    hub_direct
        .send(&NodeId::new("m1"), data("command:hub/m1", 0, 1, 8))
        .unwrap();
    assert_eq!(
        recv_data(&mut m_direct_rx, &NodeId::new("hub"), "command:hub/m1", 1).await,
        vec![1]
    );
    for t in [&hub_relay, &m_relay] {
        t.shutdown().await;
    }
    hub_direct.shutdown().await;
    m_direct.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_root_downs_relayed_paths_while_direct_continues() {
    let root = root().await;
    let a = joined(&root, "a", Role::Hub).await;
    let b = joined(&root, "b", Role::Member).await;
    let (ra_t, mut ra) = relay(&root, a.identity.clone(), a.roots.clone());
    let (rb_t, mut rb) = relay(&root, b.identity.clone(), b.roots.clone());
    let (da, mut da_rx) = direct(a.identity, a.roots);
    let (db, mut db_rx) = direct(b.identity, b.roots);
    rb_t.register(vec![db.local_addr().to_string()], vec![])
        .await
        .unwrap();
    wait_online(&root, "b", true).await;
    ra_t.connect(&via_root("b")).await.unwrap();
    wait_up(&mut ra, &NodeId::new("b")).await;
    ra_t.send(&NodeId::new("b"), data("command:a/b", 0, 1, 8))
        .unwrap();
    assert_eq!(
        recv_data(&mut rb, &NodeId::new("a"), "command:a/b", 1).await,
        vec![1]
    );
    da.connect(&db.peer_addr()).await.unwrap();
    wait_up(&mut da_rx, &NodeId::new("b")).await;

    root.shutdown().await;

    // Both relayed paths go down...
    wait_down(&mut ra, &NodeId::new("b")).await;
    wait_down(&mut rb, &NodeId::new("a")).await;
    let refused = ra_t
        .send(&NodeId::new("b"), data("command:a/b", 0, 2, 8))
        .expect_err("no relayed path without the root");
    assert!(
        refused.into_frame().is_some(),
        "the frame is handed back to queue"
    );
    // ...while the direct path keeps delivering.
    for seq in 10..20 {
        da.send(&NodeId::new("b"), data("command:a/b", 0, seq, 8))
            .unwrap();
    }
    assert_eq!(
        recv_data(&mut db_rx, &NodeId::new("a"), "command:a/b", 10).await,
        (10..20).collect::<Vec<_>>()
    );
    ra_t.shutdown().await;
    rb_t.shutdown().await;
    da.shutdown().await;
    db.shutdown().await;
}

/// A free loopback UDP address (bound and released), so a node's QUIC
/// endpoint can be dialled at a known address.
fn free_addr() -> std::net::SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_stream_fails_over_to_direct_when_the_root_dies() {
    use common::rootkit::quic_config;
    use interlocking::actors::node::NodeBuilder;
    use interlocking::routing::{Need, RoutingConfig};
    use interlocking::transports::relay::RelayConfig;
    use interlocking::vocab::{ChannelKind, PathId, PathKind};

    let root = root().await;
    let hub = joined(&root, "hub", Role::Hub).await;
    let member = joined(&root, "m1", Role::Member).await;
    // Relay preferred, so the stream starts on the relay path.
    let mut routing = RoutingConfig::default();
    routing.command.order = vec![PathKind::Relay, PathKind::Quic];
    routing.command.freeze = Duration::from_millis(200);
    let relay_cfg = |j: &interlocking::root::Joined| {
        let mut c = RelayConfig::new(
            quic_config(j.identity.clone(), j.roots.clone()),
            root.peer_addr(),
        );
        c.probe = common::rootkit::fast_probe();
        c
    };
    let m_addr = free_addr();
    let mut m_quic = quic_config(member.identity.clone(), member.roots.clone());
    m_quic.listen = m_addr;
    let (inbox_tx, mut inbox) = tokio::sync::mpsc::unbounded_channel();
    let m = NodeBuilder::new("m1", Role::Member)
        .routing(routing.clone())
        .quic(m_quic)
        .relay(relay_cfg(&member))
        .spawn()
        .await
        .unwrap();
    let stream = StreamId::new("command:hub/m1");
    m.bind_stream(
        stream.clone(),
        Binding {
            peer: NodeId::new("hub"),
            kind: ChannelKind::Command,
            side: Side::Receiver,
        },
        std::sync::Arc::new(move |path: &PathId, frame: Frame, _permit: Permit| {
            let _ = inbox_tx.send((path.clone(), frame));
        }),
        DEFAULT_INBOX_CAPACITY,
        0,
    );
    // The member's relay dials the root by itself: it becomes reachable.
    wait_online(&root, "m1", true).await;
    let h = NodeBuilder::new("hub", Role::Hub)
        .routing(routing)
        .quic(quic_config(hub.identity.clone(), hub.roots.clone()))
        .relay(relay_cfg(&hub))
        .dial(PathKind::Relay, PeerAddr::node("m1"))
        .dial(PathKind::Quic, PeerAddr::at("m1", m_addr))
        .spawn()
        .await
        .unwrap();
    let (route_tx, mut routes) = tokio::sync::mpsc::unbounded_channel();
    h.register_stream(
        stream.clone(),
        Need::node(ChannelKind::Command, "m1"),
        move |u| {
            let _ = route_tx.send(u.decision.next.clone());
        },
    )
    .await
    .unwrap();
    let relay_path = PathId::new(NodeId::new("m1"), PathKind::Relay);
    let quic_path = PathId::new(NodeId::new("m1"), PathKind::Quic);
    // Both paths up: the stream settles on the relay.
    tokio::time::timeout(LIMIT, async {
        loop {
            let route = h.explain(&stream).await.unwrap().and_then(|e| e.path);
            if route.as_ref() == Some(&relay_path) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), routes.recv()).await;
        }
    })
    .await
    .expect("the stream is routed over the relay");
    h.send(&relay_path, data("command:hub/m1", 0, 1, 8))
        .unwrap();
    let (path, _) = tokio::time::timeout(LIMIT, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(path, PathId::new(NodeId::new("hub"), PathKind::Relay));

    root.shutdown().await;

    // The relay path fails; the authority moves the stream to direct QUIC.
    tokio::time::timeout(LIMIT, async {
        while routes.recv().await.expect("listener alive") != Some(quic_path.clone()) {}
    })
    .await
    .expect("the stream fails over to the direct path");
    h.send(&quic_path, data("command:hub/m1", 0, 2, 8)).unwrap();
    let (path, _) = tokio::time::timeout(LIMIT, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(path, PathId::new(NodeId::new("hub"), PathKind::Quic));
    h.shutdown().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_route_budget_are_refused_back_while_control_flows() {
    use interlocking::root::{Root, RootConfig};
    use interlocking::transports::quic::{ClassBudgets, QueueBudget};
    use interlocking::vocab::TrafficClass;

    let root = Root::spawn(RootConfig {
        probe: common::rootkit::fast_probe(),
        queue: ClassBudgets::default().with_budget(
            TrafficClass::Route,
            QueueBudget {
                frames: 64,
                bytes: 4096,
            },
        ),
        ..RootConfig::default()
    })
    .await
    .unwrap();
    let a = joined(&root, "a", Role::Hub).await;
    let b = joined(&root, "b", Role::Member).await;
    let (ta, mut ra) = relay(&root, a.identity, a.roots);
    let (tb, mut rb) = relay(&root, b.identity, b.roots);
    wait_online(&root, "b", true).await;
    ta.connect(&via_root("b")).await.unwrap();
    wait_up(&mut ra, &NodeId::new("b")).await;
    // A frame larger than the whole budget can never be queued: refused
    // back with OVER_BUDGET, and the path stays up.
    ta.send(&NodeId::new("b"), data("sync:a/b", 3, 1, 8000))
        .unwrap();
    until(&mut ra, LIMIT, |e| {
        e.path.peer.as_str() == "b"
            && matches!(&e.fact, Fact::Incident(w) if w.contains(&format!("{:#x}", codes::OVER_BUDGET)))
    })
    .await;
    assert_eq!(ta.peers(), vec![NodeId::new("b")]);
    // Control still answers and small frames still pass.
    assert_eq!(
        ta.lookup_node(&NodeId::new("b"))
            .await
            .unwrap()
            .node
            .as_str(),
        "b"
    );
    ta.send(&NodeId::new("b"), data("sync:a/b", 3, 2, 100))
        .unwrap();
    assert_eq!(
        recv_data(&mut rb, &NodeId::new("a"), "sync:a/b", 1).await,
        vec![2]
    );
    ta.shutdown().await;
    tb.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_frame_of_an_unknown_class_is_refused_back_and_never_delivered() {
    let root = root().await;
    let a = joined(&root, "a", Role::Hub).await;
    let b = joined(&root, "b", Role::Member).await;
    let (ta, mut ra) = relay(&root, a.identity, a.roots);
    let (tb, mut rb) = relay(&root, b.identity, b.roots);
    tb.register(vec![], vec![]).await.unwrap();
    wait_online(&root, "b", true).await;
    ta.connect(&via_root("b")).await.unwrap();
    wait_up(&mut ra, &NodeId::new("b")).await;
    // Traffic class 9 does not exist (`docs/wire.md` §5): the relay
    // transport refuses to send it…
    assert!(matches!(
        ta.send(&NodeId::new("b"), data("command:a/b", 9, 1, 8)),
        Err(interlocking::transports::SendError::Encode(_))
    ));
    // …so a misbehaving peer's bytes are injected on the root link.
    ta.link()
        .send(
            root.node(),
            Frame::Relay(Relay {
                to: NodeId::new("b"),
                from: NodeId::new("a"),
                frame: Bytes::from(data_bytes_with_class("command:a/b", 9, 1, 8)),
            }),
        )
        .unwrap();
    let (ev, _) = until(&mut ra, LIMIT, |e| {
        matches!(&e.fact, Fact::Frame(Frame::Reject(_)))
    })
    .await;
    assert_eq!(ev.path.peer, NodeId::new("b"));
    let Fact::Frame(Frame::Reject(r)) = ev.fact else {
        unreachable!()
    };
    assert_eq!(r.code, interlocking::wire::codes::UNKNOWN_CLASS);
    assert!(r.reason.contains("9"), "{}", r.reason);
    // The next valid frame is the first b delivers.
    ta.send(&NodeId::new("b"), data("command:a/b", 4, 2, 8))
        .unwrap();
    assert_eq!(
        recv_data(&mut rb, &NodeId::new("a"), "command:a/b", 1).await,
        vec![2]
    );
    ta.shutdown().await;
    tb.shutdown().await;
    root.shutdown().await;
}

//! Stream sessions over real QUIC and the root's relay on loopback: a third
//! admitted node injecting commands into another member's stream and
//! forging replies, directly and through the relay, is refused with
//! `NOT_BOUND` at the receiving node's dispatch; nothing it sent is
//! applied, and every class-A command of the real member is applied once.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::rootkit::{LIMIT, fast_probe, joined, quic_config, root, wait_online};
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::actors::session::codes;
use interlocking::channels::command::{
    Envelope, EnvelopeKind, ReplyBody, SenderConfig, ServeConfig,
};
use interlocking::channels::{CommandChannel, CommandHandler, CommandSender, SendOptions};
use interlocking::root::{Joined, RootHandle};
use interlocking::routing::RoutingConfig;
use interlocking::store::MemStore;
use interlocking::transports::PeerAddr;
use interlocking::transports::relay::RelayConfig;
use interlocking::vocab::{NodeId, PathId, PathKind, Role, StreamId};
use interlocking::wire::{Data, Frame};

#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<Vec<u64>>>);

#[async_trait]
impl CommandHandler for Ledger {
    type Command = u64;
    type Reply = u64;
    async fn handle(&self, n: u64) -> Result<u64, String> {
        self.0.lock().unwrap().push(n);
        Ok(n * 2)
    }
}

fn free_addr() -> std::net::SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

async fn node(
    root: &RootHandle,
    j: &Joined,
    name: &str,
    role: Role,
    listen: Option<std::net::SocketAddr>,
    dials: &[(PathKind, PeerAddr)],
) -> Node {
    let mut quic = quic_config(j.identity.clone(), j.roots.clone());
    if let Some(addr) = listen {
        quic.listen = addr;
    }
    let mut relay = RelayConfig::new(
        quic_config(j.identity.clone(), j.roots.clone()),
        root.peer_addr(),
    );
    relay.probe = fast_probe();
    let mut b = NodeBuilder::new(name, role)
        .routing(RoutingConfig::default())
        .quic(quic)
        .relay(relay);
    for (kind, peer) in dials {
        b = b.dial(*kind, peer.clone());
    }
    b.spawn().await.unwrap()
}

fn frame(stream: &StreamId, seq: u64, kind: EnvelopeKind, body: Vec<u8>) -> Frame {
    let env = Envelope {
        kind,
        message_id: seq,
        stream_id: stream.clone(),
        issued_at_ms: 0,
        ttl_ms: 0,
        authority_epoch: 0,
        operation_key: None,
        body,
    };
    Frame::Data(Data {
        stream: stream.clone(),
        incarnation: u64::MAX,
        seq,
        message_id: seq,
        class: 0,
        delivery: 0,
        payload: Bytes::from(env.encode()),
    })
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(LIMIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within {LIMIT:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_admitted_node_is_refused_directly_and_through_the_relay() {
    let root = root().await;
    let (hub_j, m1_j, evil_j) = (
        joined(&root, "hub", Role::Hub).await,
        joined(&root, "m1", Role::Member).await,
        joined(&root, "m2", Role::Member).await,
    );
    let (hub_addr, m1_addr) = (free_addr(), free_addr());
    let hub = node(&root, &hub_j, "hub", Role::Hub, Some(hub_addr), &[]).await;
    let stream = StreamId::new("command:m1/hub");
    let ledger = Ledger::default();
    let serve = CommandChannel::serve(
        &hub,
        stream.clone(),
        NodeId::new("m1"),
        ledger.clone(),
        Arc::new(MemStore::new()),
        ServeConfig::default(),
    )
    .await
    .unwrap();
    let m1 = node(
        &root,
        &m1_j,
        "m1",
        Role::Member,
        Some(m1_addr),
        &[
            (PathKind::Quic, PeerAddr::at("hub", hub_addr)),
            (PathKind::Relay, PeerAddr::node("hub")),
        ],
    )
    .await;
    let evil = node(
        &root,
        &evil_j,
        "m2",
        Role::Member,
        None,
        &[
            (PathKind::Quic, PeerAddr::at("hub", hub_addr)),
            (PathKind::Relay, PeerAddr::node("hub")),
            (PathKind::Quic, PeerAddr::at("m1", m1_addr)),
            (PathKind::Relay, PeerAddr::node("m1")),
        ],
    )
    .await;
    for n in ["hub", "m1", "m2"] {
        wait_online(&root, n, true).await;
    }

    // m2 injects commands into m1's stream, ten on each path.
    let mut sent = 0;
    for kind in [PathKind::Quic, PathKind::Relay] {
        let path = PathId::new("hub", kind);
        let mut n = 0;
        tokio::time::timeout(LIMIT, async {
            while n < 10 {
                let body = rmp_serde::to_vec(&(500 + sent)).unwrap();
                if evil
                    .send(&path, frame(&stream, sent + 1, EnvelopeKind::Command, body))
                    .is_ok()
                {
                    n += 1;
                    sent += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{kind} path from m2 to the hub opened"));
    }
    until("20 injected commands refused", || {
        hub.refused(codes::NOT_BOUND) == 20
    })
    .await;
    assert_eq!(serve.applied(), 0);

    // m1 sends class-A commands while m2 forges replies for every id it
    // could use, on both paths to m1.
    let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
        &m1,
        stream.clone(),
        NodeId::new("hub"),
        Arc::new(MemStore::new()),
        SenderConfig::default(),
    )
    .await
    .unwrap();
    let forged = rmp_serde::to_vec(&ReplyBody::Ok(rmp_serde::to_vec(&0u64).unwrap())).unwrap();
    let mut forged_sent = 0u64;
    for kind in [PathKind::Quic, PathKind::Relay] {
        let path = PathId::new("m1", kind);
        for id in 1..=20u64 {
            let mut f = frame(&stream, id, EnvelopeKind::Reply, forged.clone());
            if let Frame::Data(d) = &mut f {
                d.incarnation = sender.incarnation();
            }
            if evil.send(&path, f).is_ok() {
                forged_sent += 1;
            }
        }
    }
    let mut receipts = Vec::new();
    for n in 1..=20u64 {
        receipts.push((n, sender.send(n, SendOptions::class_a()).await.unwrap()));
    }
    for (n, r) in receipts {
        let reply = tokio::time::timeout(LIMIT, r.reply()).await;
        assert_eq!(
            reply,
            Ok(Ok(n * 2)),
            "command {n} applied by the hub, not forged"
        );
    }
    until("forged replies refused", || {
        m1.refused(codes::NOT_BOUND) == forged_sent
    })
    .await;
    assert!(forged_sent > 0);
    assert_eq!(*ledger.0.lock().unwrap(), (1..=20).collect::<Vec<_>>());
    for n in [evil, m1, hub] {
        n.shutdown().await;
    }
}

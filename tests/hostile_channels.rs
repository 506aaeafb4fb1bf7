//! Hostile input that reaches past the transport, over real QUIC and a real
//! root on loopback (`docs/limits.md` §2, classes 31 and 32):
//!
//! * a spoofed sender on the relay: an admitted node sends `Relay` frames
//!   whose `from` names another member; the root restamps every one with
//!   the authenticated sender (counted), so the hub refuses them as
//!   `NOT_BOUND` on the named member's stream and applies none, while the
//!   real member is served during and after;
//! * a huge number of distinct message ids on one stream: the command
//!   server's dedupe records stay at `DedupeConfig::max_per_stream`
//!   however many ids arrive, and another stream is served during and
//!   after.
//!
//! Every wait is bounded.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::rootkit::{LIMIT, fast_probe, joined, quic_config, relay, root, wait_online};
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::actors::session::codes;
use interlocking::channels::command::{Envelope, EnvelopeKind, SenderConfig, ServeConfig};
use interlocking::channels::{
    CommandChannel, CommandHandler, CommandSender, DedupeConfig, SendOptions,
};
use interlocking::root::{Joined, RootHandle};
use interlocking::routing::RoutingConfig;
use interlocking::store::MemStore;
use interlocking::transports::relay::RelayConfig;
use interlocking::transports::{PeerAddr, Transport};
use interlocking::vocab::{NodeId, PathId, PathKind, Role, StreamId};
use interlocking::wire::{CodecConfig, Data, Frame, Relay, encode_to_bytes};
use rand::{Rng, SeedableRng};

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

/// A node with a direct QUIC transport (listening on `listen` if given)
/// and a relay transport through `root`.
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

/// A command frame of `stream` with sequence `seq` and message id `id`.
fn command(stream: &StreamId, seq: u64, id: u64, n: u64) -> Frame {
    let env = Envelope {
        kind: EnvelopeKind::Command,
        message_id: id,
        stream_id: stream.clone(),
        issued_at_ms: 0,
        ttl_ms: 0,
        authority_epoch: 0,
        operation_key: None,
        body: rmp_serde::to_vec(&n).unwrap(),
    };
    Frame::Data(Data {
        stream: stream.clone(),
        incarnation: u64::MAX,
        seq,
        message_id: id,
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

/// A hub serving `command:m1/hub` for m1 and a member m1 dialling it
/// directly and through the root.
struct Pair {
    hub: Node,
    m1: Node,
    serve: Arc<interlocking::channels::command::ServeHandle>,
    ledger: Ledger,
    stream: StreamId,
}

async fn pair(root: &RootHandle, serve_config: ServeConfig) -> Pair {
    let (hub_j, m1_j) = (
        joined(root, "hub", Role::Hub).await,
        joined(root, "m1", Role::Member).await,
    );
    let hub_addr = free_addr();
    let hub = node(root, &hub_j, "hub", Role::Hub, Some(hub_addr), &[]).await;
    let stream = StreamId::new("command:m1/hub");
    let ledger = Ledger::default();
    let serve = CommandChannel::serve(
        &hub,
        stream.clone(),
        NodeId::new("m1"),
        ledger.clone(),
        Arc::new(MemStore::new()),
        serve_config,
    )
    .await
    .unwrap();
    let m1 = node(
        root,
        &m1_j,
        "m1",
        Role::Member,
        None,
        &[
            (PathKind::Quic, PeerAddr::at("hub", hub_addr)),
            (PathKind::Relay, PeerAddr::node("hub")),
        ],
    )
    .await;
    for n in ["hub", "m1"] {
        wait_online(root, n, true).await;
    }
    Pair {
        hub,
        m1,
        serve,
        ledger,
        stream,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_sender_on_the_relay_is_restamped_and_never_delivered_as_the_other() {
    const SPOOFED: u64 = 20;
    let root = root().await;
    let p = pair(&root, ServeConfig::default()).await;
    let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
        &p.m1,
        p.stream.clone(),
        NodeId::new("hub"),
        Arc::new(MemStore::new()),
        SenderConfig::default(),
    )
    .await
    .unwrap();
    // m1 is served before the attack.
    let r = sender.send(1, SendOptions::class_a()).await.unwrap();
    assert_eq!(tokio::time::timeout(LIMIT, r.reply()).await, Ok(Ok(2)));
    // m2, admitted, sends relay frames that claim to come from m1, each a
    // command on m1's stream.
    let m2 = joined(&root, "m2", Role::Member).await;
    let (mallory, _mallory_rx) = relay(&root, m2.identity, m2.roots);
    mallory.register(vec![], vec![]).await.unwrap();
    wait_online(&root, "m2", true).await;
    let codec = CodecConfig::default();
    for i in 0..SPOOFED {
        let inner = encode_to_bytes(&command(&p.stream, 1 + i, 1000 + i, 500 + i), &codec).unwrap();
        mallory
            .link()
            .send(
                root.node(),
                Frame::Relay(Relay {
                    to: NodeId::new("hub"),
                    from: NodeId::new("m1"),
                    frame: inner,
                }),
            )
            .unwrap();
        // m1 is served during the attack.
        if i % 5 == 0 {
            let n = 10 + i;
            let r = sender.send(n, SendOptions::class_a()).await.unwrap();
            assert_eq!(tokio::time::timeout(LIMIT, r.reply()).await, Ok(Ok(n * 2)));
        }
    }
    // Every spoofed frame reached the hub as m2's, and was refused there:
    // m2 is not bound to m1's stream.
    until("the spoofed frames restamped at the root", || {
        root.counters().restamped == SPOOFED
    })
    .await;
    until("the spoofed frames refused as NOT_BOUND at the hub", || {
        p.hub.refused(codes::NOT_BOUND) == SPOOFED
    })
    .await;
    // m1 is served after the attack; nothing m2 sent was applied.
    let r = sender.send(99, SendOptions::class_a()).await.unwrap();
    assert_eq!(tokio::time::timeout(LIMIT, r.reply()).await, Ok(Ok(198)));
    assert_eq!(*p.ledger.0.lock().unwrap(), vec![1, 10, 15, 20, 25, 99]);
    assert_eq!(p.serve.applied(), 6);
    mallory.shutdown().await;
    p.m1.shutdown().await;
    p.hub.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_message_ids_keeps_dedupe_at_its_bound() {
    const MAX: usize = 256;
    const BURSTS: u64 = 40;
    const PER_BURST: u64 = 250;
    let seed = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x17_d15c);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let root = root().await;
    let p = pair(
        &root,
        ServeConfig::default().dedupe(DedupeConfig::default().max_per_stream(MAX)),
    )
    .await;
    // A second stream of m1's, served by a well-behaved sender.
    let calm = StreamId::new("command:m1/hub/calm");
    CommandChannel::serve(
        &p.hub,
        calm.clone(),
        NodeId::new("m1"),
        Ledger::default(),
        Arc::new(MemStore::new()),
        ServeConfig::default(),
    )
    .await
    .unwrap();
    let calm_sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
        &p.m1,
        calm.clone(),
        NodeId::new("hub"),
        Arc::new(MemStore::new()),
        SenderConfig::default(),
    )
    .await
    .unwrap();
    // m1 floods its stream with commands, each under a new random message
    // id (in order, so every one is applied and recorded).
    let path = PathId::new("hub", PathKind::Quic);
    let sent = AtomicU64::new(0);
    let mut peak = 0;
    for burst in 0..BURSTS {
        for _ in 0..PER_BURST {
            let seq = sent.load(Ordering::Relaxed) + 1;
            let id = rng.random::<u64>() >> 1;
            tokio::time::timeout(LIMIT, async {
                while p.m1.send(&path, command(&p.stream, seq, id, seq)).is_err() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: the direct path to the hub opened"));
            sent.fetch_add(1, Ordering::Relaxed);
        }
        let want = sent.load(Ordering::Relaxed);
        until(&format!("seed {seed}: burst {burst} applied"), || {
            p.serve.applied() == want
        })
        .await;
        peak = peak.max(p.serve.dedupe_records());
        assert!(
            p.serve.dedupe_records() <= MAX as u64,
            "seed {seed}: {} dedupe records after {want} distinct ids",
            p.serve.dedupe_records()
        );
        if burst % 10 == 0 {
            let r = calm_sender
                .send(burst, SendOptions::class_a())
                .await
                .unwrap();
            assert_eq!(
                tokio::time::timeout(LIMIT, r.reply()).await,
                Ok(Ok(burst * 2))
            );
        }
    }
    assert_eq!(peak, MAX as u64, "seed {seed}: the bound was reached");
    assert_eq!(p.serve.applied(), BURSTS * PER_BURST);
    let r = calm_sender.send(7, SendOptions::class_a()).await.unwrap();
    assert_eq!(tokio::time::timeout(LIMIT, r.reply()).await, Ok(Ok(14)));
    p.m1.shutdown().await;
    p.hub.shutdown().await;
    root.shutdown().await;
}

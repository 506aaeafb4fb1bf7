//! The sync channel over real loopback QUIC (mutual TLS) with a root relay
//! as the fallback: a hub and two members edit one `yrs` text while m1's
//! direct path is blackholed (fault socket) and later restored; the stream
//! fails over to the relay and back, and all three end with identical text,
//! every edit once, nothing applied twice. `SYNC_QUIC_SEED` picks the edits.

mod common;
mod sync_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::rootkit::{fast_probe, joined, quic_config, root};
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::sync::actor::{OwnerTiming, SubscriberTiming};
use interlocking::channels::sync::{
    Access, Applied, Document, OwnerConfig, SubscriberConfig, SyncChannel, SyncSubscriber,
    stream_name,
};
use interlocking::routing::RoutingConfig;
use interlocking::store::MemStore;
use interlocking::transports::PeerAddr;
use interlocking::transports::quic::faults::FaultHandle;
use interlocking::transports::relay::RelayConfig;
use interlocking::vocab::{PathKind, Role};
use rand::{Rng, SeedableRng};
use sync_support::ytext::{Editor, YText};

fn routing() -> RoutingConfig {
    let mut r = RoutingConfig::default();
    // Return to the direct path soon after it heals.
    r.sync.freeze = Duration::from_secs(1);
    r
}

async fn path_of(node: &Node, stream: &interlocking::vocab::StreamId) -> Option<PathKind> {
    node.explain(stream)
        .await
        .ok()
        .flatten()
        .and_then(|e| e.path)
        .map(|p| p.kind)
}

async fn wait_path(node: &Node, stream: &interlocking::vocab::StreamId, kind: PathKind) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while path_of(node, stream).await != Some(kind) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stream} never moved to {kind:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_survive_a_blackholed_direct_path_over_the_relay_and_back() {
    let seed = std::env::var("SYNC_QUIC_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("SYNC_QUIC_SEED={seed}");
    let root = root().await;
    let ids = [
        ("hub", Role::Hub),
        ("m1", Role::Member),
        ("m2", Role::Member),
    ];
    let mut joined_ids = Vec::new();
    for (n, r) in &ids {
        joined_ids.push(joined(&root, n, *r).await);
    }
    let relay_cfg = |j: &interlocking::root::Joined| {
        let mut c = RelayConfig::new(
            quic_config(j.identity.clone(), j.roots.clone()),
            root.peer_addr(),
        );
        c.probe = fast_probe();
        c
    };
    let hub = NodeBuilder::new("hub", Role::Hub)
        .routing(routing())
        .quic(quic_config(
            joined_ids[0].identity.clone(),
            joined_ids[0].roots.clone(),
        ))
        .relay(relay_cfg(&joined_ids[0]))
        .spawn()
        .await
        .unwrap();
    let hub_addr = hub.listen_addr(PathKind::Quic).expect("hub listens");
    let faults = FaultHandle::new(seed);
    let mut members = Vec::new();
    for (i, name) in ["m1", "m2"].into_iter().enumerate() {
        let j = &joined_ids[i + 1];
        let quic = quic_config(j.identity.clone(), j.roots.clone());
        let b = NodeBuilder::new(name, Role::Member).routing(routing());
        let b = if name == "m1" {
            b.quic_with_faults(quic, faults.clone())
        } else {
            b.quic(quic)
        };
        let m = b
            .relay(relay_cfg(j))
            .dial(PathKind::Quic, PeerAddr::at("hub", hub_addr))
            .dial(PathKind::Relay, PeerAddr::node("hub"))
            .spawn()
            .await
            .unwrap();
        members.push(m);
    }
    let owner = SyncChannel::own(
        &hub,
        "notes",
        YText::default,
        Arc::new(MemStore::new()),
        OwnerConfig::default(),
        OwnerTiming::default(),
    )
    .await
    .unwrap();
    owner.admit("m1", Access::ReadWrite);
    owner.admit("m2", Access::ReadWrite);
    let mut owner_applied = owner.applied();
    let mut subs: Vec<SyncSubscriber<YText>> = Vec::new();
    for m in &members {
        subs.push(
            SyncChannel::subscribe(
                m,
                "hub",
                "notes",
                YText::default,
                Arc::new(MemStore::new()),
                SubscriberConfig::default(),
                SubscriberTiming::default(),
            )
            .await
            .unwrap(),
        );
    }
    let mut applied: Vec<_> = subs.iter().map(|s| s.applied()).collect();
    let m1_stream = stream_name("hub", "m1", "notes");
    wait_path(&members[0], &m1_stream, PathKind::Quic).await;

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut editors = [Editor::new(1), Editor::new(2), Editor::new(3)];
    let mut typed = Vec::new();
    let mut k = 0u32;
    let mut edit = async |rng: &mut rand_chacha::ChaCha8Rng, typed: &mut Vec<char>| {
        let c = char::from_u32(0x4E00 + k).unwrap();
        k += 1;
        typed.push(c);
        let who = rng.random_range(0..3usize);
        let pick = rng.random::<u64>();
        if who == 0 {
            let snap = owner.read(|d| d.snapshot()).await.unwrap();
            editors[0].merge(&snap);
            owner
                .publish(editors[0].insert(pick, &c.to_string()))
                .await
                .unwrap();
        } else {
            let s = &subs[who - 1];
            let snap = s.read(|d| d.snapshot()).await.unwrap();
            editors[who].merge(&snap);
            s.publish(editors[who].insert(pick, &c.to_string()))
                .await
                .unwrap();
        }
    };
    for _ in 0..40 {
        edit(&mut rng, &mut typed).await;
    }
    faults.set_blackhole(true);
    // Edits go on while the direct path dies and the relay takes over.
    for _ in 0..40 {
        edit(&mut rng, &mut typed).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_path(&members[0], &m1_stream, PathKind::Relay).await;
    for _ in 0..40 {
        edit(&mut rng, &mut typed).await;
    }
    faults.set_blackhole(false);
    for _ in 0..40 {
        edit(&mut rng, &mut typed).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_path(&members[0], &m1_stream, PathKind::Quic).await;
    for _ in 0..40 {
        edit(&mut rng, &mut typed).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !subs
        .iter()
        .all(|s| s.cursor() == owner.cursor() && s.pending_publishes() == 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: no convergence: owner {} subs {:?}",
            owner.cursor(),
            subs.iter().map(|s| s.cursor()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = owner.read(|d| d.text()).await.unwrap();
    for s in &subs {
        assert_eq!(s.read(|d| d.text()).await.unwrap(), text, "seed {seed}");
    }
    let mut got: Vec<char> = text.chars().collect();
    got.sort_unstable();
    typed.sort_unstable();
    assert_eq!(got, typed, "seed {seed}: every edit once");
    let mut all: Vec<Vec<Applied>> = Vec::new();
    for rx in applied.iter_mut() {
        let mut v = Vec::new();
        while let Ok(a) = rx.try_recv() {
            v.push(a);
        }
        all.push(v);
    }
    let mut o = Vec::new();
    while let Ok(a) = owner_applied.try_recv() {
        o.push(a);
    }
    assert_eq!(o.len(), typed.len(), "seed {seed}");
    all.push(o);
    for v in &all {
        let mut ids = BTreeSet::new();
        for w in v.windows(2) {
            assert!(
                w[0].cursor < w[1].cursor,
                "seed {seed}: applied out of order"
            );
        }
        for a in v {
            assert!(
                ids.insert((a.publisher.clone(), a.update_id)),
                "seed {seed}: twice"
            );
        }
    }
    let switches: Vec<_> = members[0]
        .explain(&m1_stream)
        .await
        .unwrap()
        .unwrap()
        .decisions
        .iter()
        .map(|d| d.next.as_ref().map(|p| p.kind))
        .collect();
    println!(
        "seed {seed}: m1 route decisions {switches:?}, text of {} chars",
        text.chars().count()
    );
    for m in members {
        m.shutdown().await;
    }
    hub.shutdown().await;
    root.shutdown().await;
}

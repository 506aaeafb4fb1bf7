//! The sync channel end to end over the memory transport, in paused
//! virtual time: a hub owning a `yrs` text and two members editing it
//! concurrently under seeded chaos (loss, duplication, reordering,
//! partitions); catch-up by snapshot + diff; an owner actor restart on a
//! real redb file; bad input answered by typed refusals.

mod sync_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::sync::actor::{OwnerTiming, SubscriberTiming};
use interlocking::channels::sync::{
    Access, Applied, Cursor, OwnerConfig, OwnerEvent, RefuseCode, SubscriberConfig,
    SubscriberEvent, SyncChannel, SyncError, SyncMsg, SyncOwner, SyncSubscriber, WindowConfig,
    stream_name,
};
use interlocking::routing::RoutingConfig;
use interlocking::store::{MemStore, RedbStore, SyncStore};
use interlocking::transports::PeerAddr;
use interlocking::transports::memory::{LinkFaults, MemoryNetwork};
use interlocking::transports::probe::ProbeConfig;
use interlocking::vocab::{NodeId, PathId, PathKind, Role, TrafficClass};
use interlocking::wire::{Data, Frame};
use rand::{Rng, SeedableRng};
use sync_support::ytext::{Editor, YText};
use tokio::sync::broadcast;

const PROBE: ProbeConfig = ProbeConfig {
    interval: Duration::from_millis(100),
    timeout: Duration::from_millis(300),
};
const KINDS: [PathKind; 2] = [PathKind::Quic, PathKind::Relay];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

async fn node(net: &MemoryNetwork, id: &str, role: Role, dial: &[&str]) -> Node {
    let mut routing = RoutingConfig::default();
    routing.health.misses_to_fail = 5;
    let mut b = NodeBuilder::new(id, role).routing(routing);
    for k in KINDS {
        b = b.memory(net, k, PROBE);
    }
    for peer in dial {
        for k in KINDS {
            b = b.dial(k, PeerAddr::node(*peer));
        }
    }
    b.spawn().await.unwrap()
}

/// A hub and members `m1`, `m2` dialing it on two path kinds.
async fn topology(net: &MemoryNetwork) -> (Node, Node, Node) {
    let hub = node(net, "hub", Role::Hub, &[]).await;
    let m1 = node(net, "m1", Role::Member, &["hub"]).await;
    let m2 = node(net, "m2", Role::Member, &["hub"]).await;
    // Virtual time: let the paths open.
    tokio::time::sleep(Duration::from_secs(1)).await;
    (hub, m1, m2)
}

fn drain<T: Clone>(rx: &mut broadcast::Receiver<T>, into: &mut Vec<T>) {
    loop {
        match rx.try_recv() {
            Ok(v) => into.push(v),
            Err(broadcast::error::TryRecvError::Lagged(n)) => panic!("lagged by {n}"),
            Err(_) => return,
        }
    }
}

/// Waits (bounded, in virtual time) until `done` holds.
async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn caught_up(owner: &SyncOwner<YText>, subs: &[&SyncSubscriber<YText>]) -> bool {
    subs.iter()
        .all(|s| s.cursor() == owner.cursor() && s.pending_publishes() == 0)
}

fn check_applied(name: &str, applied: &[Applied], seed: u64) {
    let mut ids = BTreeSet::new();
    for w in applied.windows(2) {
        assert!(
            w[0].cursor < w[1].cursor,
            "{name} applied {} then {} (seed {seed})",
            w[0].cursor,
            w[1].cursor
        );
    }
    for a in applied {
        assert!(
            ids.insert((a.publisher.clone(), a.update_id)),
            "{name} applied {}#{} twice (seed {seed})",
            a.publisher,
            a.update_id
        );
    }
}

#[tokio::test(start_paused = true)]
async fn hub_and_two_members_edit_one_text_under_chaos_and_converge() {
    let seed = env_u64("SYNC_SEED").unwrap_or_else(rand::random);
    let edits = env_u64("SYNC_EDITS").unwrap_or(150);
    println!("SYNC_SEED={seed} SYNC_EDITS={edits}");
    let net = MemoryNetwork::new(seed);
    let (hub, m1, m2) = topology(&net).await;
    let chaos = LinkFaults {
        latency: Duration::from_millis(2),
        jitter: Duration::from_millis(3),
        loss: 0.10,
        duplicate: 0.05,
        reorder: 0.10,
        reorder_delay: Duration::from_millis(15),
    };
    for m in ["m1", "m2"] {
        for k in KINDS {
            net.set_faults_both(k, &NodeId::new("hub"), &NodeId::new(m), chaos.clone());
        }
    }
    // A small window, so that partitioned members also catch up by
    // snapshot + diff.
    let config = OwnerConfig::default().window(WindowConfig::default().max_entries(30));
    let owner = SyncChannel::own(
        &hub,
        "notes",
        YText::default,
        Arc::new(MemStore::new()),
        config,
        OwnerTiming::default(),
    )
    .await
    .unwrap();
    owner.admit(&hub, "m1", Access::ReadWrite);
    owner.admit(&hub, "m2", Access::ReadWrite);
    let mut owner_applied_rx = owner.applied();
    let mut subs = Vec::new();
    for m in [&m1, &m2] {
        let s = SyncChannel::subscribe(
            m,
            "hub",
            "notes",
            YText::default,
            Arc::new(MemStore::new()),
            SubscriberConfig::default(),
            SubscriberTiming::default(),
        )
        .await
        .unwrap();
        subs.push(s);
    }
    let mut applied_rx: Vec<_> = subs.iter().map(|s| s.applied()).collect();
    let mut events_rx: Vec<_> = subs.iter().map(|s| s.events()).collect();
    let mut editors = [Editor::new(1), Editor::new(2), Editor::new(3)];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut typed = String::new();
    let mut partitioned: Option<(&str, u32)> = None;
    for k in 0..edits {
        // Partitions: cut one member from the hub on every path for a while.
        match partitioned {
            Some((m, 0)) => {
                for kind in KINDS {
                    net.heal(kind, &NodeId::new("hub"), &NodeId::new(m));
                }
                partitioned = None;
            }
            Some((m, left)) => partitioned = Some((m, left - 1)),
            None if rng.random_bool(0.04) => {
                let m = if rng.random_bool(0.5) { "m1" } else { "m2" };
                for kind in KINDS {
                    net.partition(kind, &NodeId::new("hub"), &NodeId::new(m));
                }
                partitioned = Some((m, rng.random_range(5..30)));
            }
            None => {}
        }
        let c = char::from_u32(0x4E00 + k as u32).unwrap();
        typed.push(c);
        let who = rng.random_range(0..3usize);
        let pick = rng.random::<u64>();
        if who == 0 {
            let snap = owner
                .read(|d| interlocking::channels::sync::Document::snapshot(d))
                .await
                .unwrap();
            editors[0].merge(&snap);
            let u = editors[0].insert(pick, &c.to_string());
            owner.publish(u).await.unwrap();
        } else {
            let s = &subs[who - 1];
            let snap = s
                .read(|d| interlocking::channels::sync::Document::snapshot(d))
                .await
                .unwrap();
            editors[who].merge(&snap);
            let u = editors[who].insert(pick, &c.to_string());
            s.publish(u).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
    }
    if let Some((m, _)) = partitioned {
        for kind in KINDS {
            net.heal(kind, &NodeId::new("hub"), &NodeId::new(m));
        }
    }
    let refs: Vec<&SyncSubscriber<YText>> = subs.iter().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while !caught_up(&owner, &refs).await {
        if tokio::time::Instant::now() > deadline {
            let mut events = Vec::new();
            drain(&mut events_rx[0], &mut events);
            panic!(
                "no convergence (seed {seed}): owner {} subs {:?} pending {:?}; m1 events (last 10) {:?}",
                owner.cursor(),
                subs.iter().map(|s| s.cursor()).collect::<Vec<_>>(),
                subs.iter()
                    .map(|s| s.pending_publishes())
                    .collect::<Vec<_>>(),
                events.iter().rev().take(10).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hub_text = owner.read(|d| d.text()).await.unwrap();
    for (i, s) in subs.iter().enumerate() {
        let text = s.read(|d| d.text()).await.unwrap();
        assert_eq!(text, hub_text, "member {} differs (seed {seed})", i + 1);
    }
    // Every edit is in the text exactly once, nothing else is.
    let mut got: Vec<char> = hub_text.chars().collect();
    let mut want: Vec<char> = typed.chars().collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "edits lost or doubled (seed {seed})");
    let mut owner_applied = Vec::new();
    drain(&mut owner_applied_rx, &mut owner_applied);
    assert_eq!(owner_applied.len() as u64, edits, "seed {seed}");
    check_applied("hub", &owner_applied, seed);
    let (mut gaps, mut snapshots) = (0, 0);
    for i in 0..2 {
        let mut applied = Vec::new();
        drain(&mut applied_rx[i], &mut applied);
        check_applied(&format!("m{}", i + 1), &applied, seed);
        let mut events = Vec::new();
        drain(&mut events_rx[i], &mut events);
        gaps += events
            .iter()
            .filter(|e| matches!(e, SubscriberEvent::Gap { .. }))
            .count();
        snapshots += events
            .iter()
            .filter(|e| matches!(e, SubscriberEvent::SnapshotLoaded { .. }))
            .count();
    }
    println!(
        "gaps reported {gaps}, snapshots loaded {snapshots}, text {} chars",
        hub_text.chars().count()
    );
    assert!(gaps > 0, "10 % loss reported no gap (seed {seed})");
    for n in [m1, m2, hub] {
        n.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_member_receives_the_hubs_updates_and_its_own_publishes_come_back() {
    let net = MemoryNetwork::new(1);
    let (hub, m1, m2) = topology(&net).await;
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
    owner.admit(&hub, "m1", Access::ReadWrite);
    let s = SyncChannel::subscribe(
        &m1,
        "hub",
        "notes",
        YText::default,
        Arc::new(MemStore::new()),
        SubscriberConfig::default(),
        SubscriberTiming::default(),
    )
    .await
    .unwrap();
    let mut ed = Editor::new(9);
    owner.publish(ed.insert(0, "a")).await.unwrap();
    let id = s.publish(ed.insert(1, "b")).await.unwrap();
    assert_eq!(id, 1);
    until("m1 catches up", Duration::from_secs(30), async || {
        s.cursor().seq == 2 && s.pending_publishes() == 0
    })
    .await;
    assert_eq!(s.read(|d| d.text()).await.unwrap(), "ab");
    assert_eq!(owner.read(|d| d.text()).await.unwrap(), "ab");
    for n in [m1, m2, hub] {
        n.shutdown().await;
    }
}

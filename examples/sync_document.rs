//! A sync channel with a real CRDT: a hub owns a `yrs` (Yjs) text, two
//! members edit it concurrently over the memory transport with 10 % loss,
//! duplication and reordering, one member is cut off for a while, and all
//! three end with the same text.
//!
//! Run with `cargo run --example sync_document`.

#[allow(dead_code)] // the tests use all of it, this example not
#[path = "../tests/sync_support/ytext.rs"]
mod ytext;

use std::sync::Arc;
use std::time::Duration;

use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::sync::actor::{OwnerTiming, SubscriberTiming};
use interlocking::channels::sync::{
    Access, Document, OwnerConfig, SubscriberConfig, SubscriberEvent, SyncChannel, WindowConfig,
};
use interlocking::store::MemStore;
use interlocking::transports::PeerAddr;
use interlocking::transports::memory::{LinkFaults, MemoryNetwork};
use interlocking::transports::probe::ProbeConfig;
use interlocking::vocab::{NodeId, PathKind, Role};
use ytext::{Editor, YText};

async fn node(net: &MemoryNetwork, id: &str, role: Role, dial: Option<&str>) -> Node {
    let probe = ProbeConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    };
    let mut b = NodeBuilder::new(id, role).memory(net, PathKind::Quic, probe);
    if let Some(peer) = dial {
        b = b.dial(PathKind::Quic, PeerAddr::node(peer));
    }
    b.spawn().await.expect("node starts")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let net = MemoryNetwork::new(42);
    let hub = node(&net, "hub", Role::Hub, None).await;
    let m1 = node(&net, "m1", Role::Member, Some("hub")).await;
    let m2 = node(&net, "m2", Role::Member, Some("hub")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lossy = LinkFaults {
        loss: 0.10,
        duplicate: 0.10,
        reorder: 0.10,
        ..LinkFaults::default()
    };
    for m in ["m1", "m2"] {
        net.set_faults_both(
            PathKind::Quic,
            &NodeId::new("hub"),
            &NodeId::new(m),
            lossy.clone(),
        );
    }

    // The hub owns the document; a small replay window, so the member cut
    // off below catches up by snapshot + diff.
    let config = OwnerConfig::default().window(WindowConfig::default().max_entries(8));
    let owner = SyncChannel::own(
        &hub,
        "notes",
        YText::default,
        Arc::new(MemStore::new()),
        config,
        OwnerTiming::default(),
    )
    .await?;
    owner.admit("m1", Access::ReadWrite);
    owner.admit("m2", Access::ReadWrite);
    let mut subs = Vec::new();
    for m in [&m1, &m2] {
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
            .await?,
        );
    }
    let mut m2_events = subs[1].events();

    // Each participant edits its own yrs copy (prepending a word) and
    // publishes the update that edit produced.
    let mut editors = [Editor::new(1), Editor::new(2), Editor::new(3)];
    let words = ["alpha ", "beta ", "gamma ", "delta ", "eps "];
    for round in 0..30u64 {
        if round == 5 {
            println!("m2 cut off from the hub");
            net.partition(PathKind::Quic, &NodeId::new("hub"), &NodeId::new("m2"));
        }
        if round == 25 {
            println!("m2 back");
            net.heal(PathKind::Quic, &NodeId::new("hub"), &NodeId::new("m2"));
        }
        let word = words[(round % 5) as usize];
        let who = (round % 3) as usize;
        if who == 0 {
            editors[0].merge(&owner.read(|d| d.snapshot()).await?);
            owner.publish(editors[0].insert(0, word)).await?;
        } else {
            let s = &subs[who - 1];
            editors[who].merge(&s.read(|d| d.snapshot()).await?);
            s.publish(editors[who].insert(0, word)).await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while subs
        .iter()
        .any(|s| s.cursor() != owner.cursor() || s.pending_publishes() > 0)
    {
        if tokio::time::Instant::now() > deadline {
            return Err("members did not catch up within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = owner.read(|d| d.text()).await?;
    println!("hub  {} {text:?}", owner.cursor());
    for (i, s) in subs.iter().enumerate() {
        let t = s.read(|d| d.text()).await?;
        println!("m{}   {} {t:?}", i + 1, s.cursor());
        assert_eq!(t, text);
    }
    while let Ok(e) = m2_events.try_recv() {
        if let SubscriberEvent::SnapshotLoaded { from, to, bytes } = e {
            println!("m2 caught up by snapshot {from} -> {to} ({bytes} bytes) + diff");
        }
    }
    for n in [m1, m2, hub] {
        n.shutdown().await;
    }
    Ok(())
}

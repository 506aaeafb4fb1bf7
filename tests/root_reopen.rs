//! A relayed path is reopened when its peer is back at the root, however
//! long it was away: the member's relay drops the path on the root's
//! "offline" refusal and looks the peer up again with backoff (real root,
//! real QUIC on loopback).

mod common;

use std::time::Duration;

use common::rootkit::{LIMIT, joined, relay, root, via_root, wait_online};
use interlocking::transports::{Fact, Transport, TransportEvent};
use interlocking::vocab::{PathId, PathKind, Role};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Waits (bounded) for a fact on `path` matching `want`.
async fn fact(
    rx: &mut mpsc::Receiver<TransportEvent>,
    path: &PathId,
    what: &str,
    want: impl Fn(&Fact) -> bool,
) {
    let end = Instant::now() + LIMIT;
    loop {
        let ev = tokio::time::timeout_at(end, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("events end");
        if &ev.path == path && want(&ev.fact) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_path_reopens_after_the_peer_was_offline_for_more_than_ten_seconds() {
    let root = root().await;
    let hub_id = joined(&root, "hub", Role::Hub).await;
    let m1_id = joined(&root, "m1", Role::Member).await;
    let (hub, _hub_rx) = relay(&root, hub_id.identity.clone(), hub_id.roots.clone());
    let (m1, mut m1_rx) = relay(&root, m1_id.identity.clone(), m1_id.roots.clone());
    wait_online(&root, "hub", true).await;
    m1.connect(&via_root("hub")).await.unwrap();
    let to_hub = PathId::new("hub", PathKind::Relay);
    fact(&mut m1_rx, &to_hub, "relay path up", |f| {
        matches!(f, Fact::Up)
    })
    .await;
    fact(&mut m1_rx, &to_hub, "an end-to-end answer", |f| {
        matches!(f, Fact::ProbeAnswered { .. })
    })
    .await;

    // The hub goes away for longer than the 10 s the issue saw.
    hub.shutdown().await;
    drop(hub);
    wait_online(&root, "hub", false).await;
    fact(&mut m1_rx, &to_hub, "relay path down", |f| {
        matches!(f, Fact::Down(_))
    })
    .await;
    let away = Instant::now() + Duration::from_secs(11);
    while let Ok(Some(ev)) = tokio::time::timeout_at(away, m1_rx.recv()).await {
        assert!(
            !(ev.path == to_hub && matches!(ev.fact, Fact::Up)),
            "path reported up while the hub is away"
        );
    }

    // Back (same identity): the member's path reopens on its own, within
    // the re-lookup backoff (at most 1 s) of the hub being online again.
    let (_hub, _hub_rx) = relay(&root, hub_id.identity, hub_id.roots);
    wait_online(&root, "hub", true).await;
    let online = Instant::now();
    fact(&mut m1_rx, &to_hub, "relay path up again", |f| {
        matches!(f, Fact::Up)
    })
    .await;
    let reopened = online.elapsed();
    fact(&mut m1_rx, &to_hub, "an end-to-end answer again", |f| {
        matches!(f, Fact::ProbeAnswered { .. })
    })
    .await;
    eprintln!("hub online again -> relay path reopened after {reopened:?}");
    assert!(reopened <= Duration::from_millis(1_500), "{reopened:?}");
    assert!(m1.root_connected());
}

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
async fn until(what: &str, limit: Duration, done: impl AsyncFnMut() -> bool) {
    assert!(wait(limit, done).await, "timed out waiting for {what}");
}

/// Whether `done` came to hold within `limit` (virtual time).
async fn wait(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
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
    owner.admit("m1", Access::ReadWrite);
    owner.admit("m2", Access::ReadWrite);
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
            let snap = owner.read(snapshot_of).await.unwrap();
            editors[0].merge(&snap);
            let u = editors[0].insert(pick, &c.to_string());
            owner.publish(u).await.unwrap();
        } else {
            let s = &subs[who - 1];
            let snap = s.read(snapshot_of).await.unwrap();
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
    owner.admit("m1", Access::ReadWrite);
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

fn snapshot_of(d: &YText) -> Vec<u8> {
    interlocking::channels::sync::Document::snapshot(d)
}

async fn subscriber(node: &Node, store: Arc<dyn SyncStore>) -> SyncSubscriber<YText> {
    SyncChannel::subscribe(
        node,
        "hub",
        "notes",
        YText::default,
        store,
        SubscriberConfig::default(),
        SubscriberTiming::default(),
    )
    .await
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_cursor_older_than_the_window_gets_snapshot_plus_diff() {
    let net = MemoryNetwork::new(2);
    let (hub, m1, m2) = topology(&net).await;
    let config = OwnerConfig::default().window(WindowConfig::default().max_entries(20));
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
    owner.admit("m1", Access::ReadOnly);
    let s = subscriber(&m1, Arc::new(MemStore::new())).await;
    let mut ed = Editor::new(5);
    for i in 0..5 {
        owner.publish(ed.insert(i, "x")).await.unwrap();
    }
    until("m1 at 5", Duration::from_secs(30), async || {
        s.cursor().seq == 5
    })
    .await;
    let mut events = s.events();
    let mut applied = s.applied();
    let mut owner_events = owner.events();
    for kind in KINDS {
        net.partition(kind, &NodeId::new("hub"), &NodeId::new("m1"));
    }
    // Snapshots are taken at 21, 42, 63, 84, 105: 110 leaves a diff of 5.
    for i in 5..110 {
        owner.publish(ed.insert(i, "y")).await.unwrap();
    }
    for kind in KINDS {
        net.heal(kind, &NodeId::new("hub"), &NodeId::new("m1"));
    }
    until("m1 at 110", Duration::from_secs(60), async || {
        s.cursor().seq == 110
    })
    .await;
    let (mut ev, mut ap, mut oev) = (Vec::new(), Vec::new(), Vec::new());
    drain(&mut events, &mut ev);
    drain(&mut applied, &mut ap);
    drain(&mut owner_events, &mut oev);
    let loaded: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            SubscriberEvent::SnapshotLoaded { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(loaded.len(), 1, "{ev:?}");
    assert_eq!(loaded[0].0.seq, 5);
    assert_eq!(loaded[0].1.seq, 105);
    assert!(
        oev.iter()
            .any(|e| matches!(e, OwnerEvent::SnapshotSent { peer, diff: 5, .. } if peer == "m1")),
        "{oev:?}"
    );
    // After the snapshot, exactly the diff was applied one by one.
    let seqs: Vec<u64> = ap.iter().map(|a| a.cursor.seq).filter(|s| *s > 5).collect();
    assert_eq!(seqs, (106..=110).collect::<Vec<_>>());
    assert_eq!(
        s.read(|d| d.text()).await.unwrap(),
        owner.read(|d| d.text()).await.unwrap()
    );
    for n in [m1, m2, hub] {
        n.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_restarted_owner_actor_resumes_its_log_from_the_redb_file() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<RedbStore> = Arc::new(RedbStore::open(dir.path().join("hub.redb")).unwrap());
    let net = MemoryNetwork::new(3);
    let (hub, m1, m2) = topology(&net).await;
    let owner = SyncChannel::own(
        &hub,
        "notes",
        YText::default,
        store.clone(),
        OwnerConfig::default(),
        OwnerTiming::default(),
    )
    .await
    .unwrap();
    owner.admit("m1", Access::ReadWrite);
    let s = subscriber(&m1, Arc::new(MemStore::new())).await;
    let mut applied = s.applied();
    let mut ed = Editor::new(6);
    for i in 0..10 {
        owner.publish(ed.insert(i, "a")).await.unwrap();
    }
    until("m1 at 10", Duration::from_secs(30), async || {
        s.cursor().seq == 10
    })
    .await;
    let epoch = owner.cursor().epoch;
    let before = owner.read(|d| d.text()).await.unwrap();
    // Kill the owner actor: its supervisor restarts it from the file.
    let name = interlocking::channels::sync::actor::owner_actor_name("notes");
    let cell = hub.actor(&name).unwrap();
    cell.kill();
    until(
        "a new owner incarnation",
        Duration::from_secs(30),
        async || {
            hub.actor(&name)
                .is_some_and(|c| c.get_id() != cell.get_id())
        },
    )
    .await;
    assert_eq!(owner.read(|d| d.text()).await.unwrap(), before);
    assert_eq!(owner.cursor(), Cursor::new(epoch, 10));
    // Publishes continue the same log; m1 (which the new incarnation does
    // not know is attached) notices the silence and resubscribes.
    let mine = s.publish(ed.insert(0, "m")).await.unwrap();
    for i in 0..5 {
        owner.publish(ed.insert(i, "b")).await.unwrap();
    }
    until("m1 at 16", Duration::from_secs(60), async || {
        s.cursor().seq == 16 && s.pending_publishes() == 0
    })
    .await;
    let mut ap = Vec::new();
    drain(&mut applied, &mut ap);
    check_applied("m1", &ap, 3);
    assert_eq!(ap.len(), 16, "every update applied once across the restart");
    assert!(
        ap.iter()
            .any(|a| a.publisher == "m1" && a.update_id == mine)
    );
    assert_eq!(s.cursor().epoch, epoch);
    // The file holds the whole log, in one epoch.
    let rec = store.sync_owner_load("notes").unwrap().unwrap();
    assert_eq!(rec.epoch, epoch);
    assert_eq!(rec.log.len(), 16);
    assert_eq!(
        s.read(|d| d.text()).await.unwrap(),
        owner.read(|d| d.text()).await.unwrap()
    );
    for n in [m1, m2, hub] {
        n.shutdown().await;
    }
}

fn raw(stream: &str, incarnation: u64, msg: &SyncMsg) -> Frame {
    Frame::Data(Data {
        stream: interlocking::vocab::StreamId::new(stream),
        incarnation,
        delivery: 2,
        seq: 0,
        message_id: 0,
        class: TrafficClass::Sync as u8,
        payload: Bytes::from(msg.encode()),
    })
}

#[tokio::test(start_paused = true)]
async fn bad_input_gets_typed_refusals_and_nothing_accepted_is_lost() {
    let net = MemoryNetwork::new(4);
    let hub = node(&net, "hub", Role::Hub, &[]).await;
    let m1 = node(&net, "m1", Role::Member, &["hub"]).await;
    let m2 = node(&net, "m2", Role::Member, &["hub"]).await;
    let evil = node(&net, "evil", Role::Member, &["m1"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
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
    owner.admit("m2", Access::ReadOnly);
    // One provider per document.
    let second = SyncChannel::own(
        &hub,
        "notes",
        YText::default,
        Arc::new(MemStore::new()),
        OwnerConfig::default(),
        OwnerTiming::default(),
    )
    .await;
    assert!(matches!(second, Err(SyncError::AlreadyOwned(d)) if d == "notes"));
    let s1 = subscriber(&m1, Arc::new(MemStore::new())).await;
    let s2 = subscriber(&m2, Arc::new(MemStore::new())).await;
    let mut ed = Editor::new(7);
    owner.publish(ed.insert(0, "ok")).await.unwrap();
    until("both at 1", Duration::from_secs(30), async || {
        s1.cursor().seq == 1 && s2.cursor().seq == 1
    })
    .await;
    let mut e1 = s1.events();
    let mut e2 = s2.events();

    // Undecodable update from an admitted publisher: refused, leaves the
    // outbox; the next publish goes through.
    let bad = s1.publish(vec![0xff, 0x00, 0x13]).await.unwrap();
    let good = s1.publish(ed.insert(2, "!")).await.unwrap();
    // Oversized: refused locally before it is stored.
    assert!(matches!(
        s1.publish(vec![1; (256 << 10) + 1]).await,
        Err(SyncError::Publish(_))
    ));
    // A read-only subscriber may not publish.
    let ro = s2.publish(ed.insert(0, "?")).await.unwrap();
    until("settled", Duration::from_secs(30), async || {
        s1.pending_publishes() == 0 && s2.pending_publishes() == 0 && s1.cursor().seq == 2
    })
    .await;
    // Unknown document: the owner's node has no such stream.
    let s3 = SyncChannel::subscribe(
        &m1,
        "hub",
        "nope",
        YText::default,
        Arc::new(MemStore::new()),
        SubscriberConfig::default(),
        SubscriberTiming::default(),
    )
    .await
    .unwrap();
    let mut e3 = s3.events();
    // A cursor from the future and one of another epoch, sent raw on m1's
    // stream: refused, then m1 is reset to the owner's state.
    let head = owner.cursor();
    let stream = stream_name("hub", "m1", "notes");
    let to_hub = PathId::new("hub", PathKind::Quic);
    let inc = s1.incarnation();
    m1.send(
        &to_hub,
        raw(
            stream.as_str(),
            inc,
            &SyncMsg::Resync {
                cursor: Cursor::new(head.epoch, 99),
            },
        ),
    )
    .unwrap();
    m1.send(
        &to_hub,
        raw(
            stream.as_str(),
            inc,
            &SyncMsg::Resync {
                cursor: Cursor::new(head.epoch ^ 1, 1),
            },
        ),
    )
    .unwrap();
    // A hostile oversized publish, raw (the handle would refuse it).
    m1.send(
        &to_hub,
        raw(
            stream.as_str(),
            inc,
            &SyncMsg::Publish {
                update_id: 50,
                bytes: vec![1; (256 << 10) + 1],
            },
        ),
    )
    .unwrap();
    // A corrupt snapshot "from the owner" in a new epoch.
    hub.send(
        &PathId::new("m1", PathKind::Quic),
        raw(
            stream.as_str(),
            inc,
            &SyncMsg::Snapshot {
                cursor: Cursor::new(head.epoch ^ 2, 9),
                acked_through: 0,
                total_len: 3,
                offset: 0,
                bytes: vec![9, 9, 9],
            },
        ),
    )
    .unwrap();
    // Another node claiming to own m1's document: m1's stream session is
    // bound to the hub and refuses it before the channel sees it.
    let not_bound = || {
        m1.session(&stream).map_or(0, |s| {
            s.counters()
                .not_bound
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    };
    assert_eq!(not_bound(), 0);
    evil.send(
        &PathId::new("m1", PathKind::Quic),
        raw(
            stream.as_str(),
            inc,
            &SyncMsg::Update {
                cursor: Cursor::new(head.epoch, 3),
                publisher: "evil".into(),
                update_id: 1,
                bytes: ed.insert(0, "EVIL"),
            },
        ),
    )
    .unwrap();

    let mut ev1 = Vec::new();
    let mut codes: BTreeSet<u16> = BTreeSet::new();
    let seen = wait(Duration::from_secs(30), async || {
        drain(&mut e1, &mut ev1);
        codes = ev1
            .iter()
            .filter_map(|e| match e {
                SubscriberEvent::Refused { code, .. }
                | SubscriberEvent::PublishRefused { code, .. } => Some(*code),
                SubscriberEvent::CorruptSnapshot { .. } => Some(RefuseCode::CorruptSnapshot.code()),
                _ => None,
            })
            .collect();
        [
            RefuseCode::UndecodableUpdate,
            RefuseCode::CursorFromFuture,
            RefuseCode::WrongEpoch,
            RefuseCode::Oversized,
            RefuseCode::CorruptSnapshot,
        ]
        .iter()
        .all(|c| codes.contains(&c.code()))
    })
    .await;
    assert!(seen, "refusals seen: {codes:x?} in {ev1:?}");
    until(
        "the foreign owner refused",
        Duration::from_secs(10),
        async || not_bound() == 1,
    )
    .await;
    // The refused claim is visible in the stream's explanation.
    let e = m1
        .explain(&stream)
        .await
        .unwrap()
        .expect("m1 explains its stream");
    assert_eq!(e.refused.len(), 1, "{e}");
    assert_eq!(e.refused[0].peer.as_str(), "evil");
    assert_eq!(e.refused[0].bound_to.as_str(), "hub");
    assert_eq!(
        e.refused[0].code,
        interlocking::wire::codes::stream::NOT_BOUND
    );
    assert_eq!(e.refused[0].frames, 1);
    let text = e.to_string();
    assert!(
        text.contains("refused 1 frame(s) from evil (0x0310): the stream is bound to hub"),
        "{text}"
    );
    assert!(ev1.iter().any(|e| matches!(e, SubscriberEvent::PublishRefused { update_id, code } if *update_id == bad && *code == RefuseCode::UndecodableUpdate.code())), "{ev1:?}");
    let mut ev2 = Vec::new();
    until("read-only refusal", Duration::from_secs(10), async || {
        drain(&mut e2, &mut ev2);
        ev2.iter().any(|e| matches!(e, SubscriberEvent::PublishRefused { update_id, code } if *update_id == ro && *code == RefuseCode::NotAdmitted.code()))
    })
    .await;
    let mut ev3 = Vec::new();
    until("unknown document", Duration::from_secs(10), async || {
        drain(&mut e3, &mut ev3);
        ev3.iter().any(|e| matches!(e, SubscriberEvent::Refused { code, .. } if *code == RefuseCode::UnknownDocument.code()))
    })
    .await;
    // Nothing accepted was lost, nothing refused was applied.
    until("m1 back at the head", Duration::from_secs(30), async || {
        s1.cursor() == owner.cursor()
    })
    .await;
    let text = owner.read(|d| d.text()).await.unwrap();
    assert_eq!(text, "ok!");
    assert_eq!(s1.read(|d| d.text()).await.unwrap(), text);
    assert_eq!(s2.read(|d| d.text()).await.unwrap(), text);
    assert_eq!(
        owner.cursor().seq,
        2,
        "only the two good updates are in the log"
    );
    let _ = good;
    for n in [evil, m1, m2, hub] {
        n.shutdown().await;
    }
}

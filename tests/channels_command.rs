//! The command channel actor over the memory transport in tokio's paused
//! virtual time: exactly-once, in-order application under loss,
//! duplication and reordering; expiry; stale epochs; undecodable payloads.
//!
//! `CMD_SEED` picks the fault seed, `CMD_N` the number of commands of the
//! chaos test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::command::{
    SenderConfig, ServeConfig, ServeHandle, incarnation_key, system_clock,
};
use interlocking::channels::{
    CommandChannel, CommandError, CommandHandler, CommandSender, DedupeConfig, OutboxConfig,
    SendOptions,
};
use interlocking::routing::RoutingConfig;
use interlocking::store::{MemStore, Store};
use interlocking::transports::PeerAddr;
use interlocking::transports::memory::{LinkFaults, MemoryNetwork};
use interlocking::transports::probe::ProbeConfig;
use interlocking::vocab::{NodeId, PathId, PathKind, Role, StreamId};
use interlocking::wire::{Data, Frame};

const PROBE: ProbeConfig = ProbeConfig {
    interval: Duration::from_millis(100),
    timeout: Duration::from_millis(300),
};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn pair(net: &MemoryNetwork) -> (Node, Node) {
    let mut routing = RoutingConfig::default();
    routing.health.misses_to_fail = 5;
    let hub = NodeBuilder::new("hub", Role::Hub)
        .routing(routing.clone())
        .memory(net, PathKind::Quic, PROBE)
        .memory(net, PathKind::Relay, PROBE)
        .spawn()
        .await
        .unwrap();
    let member = NodeBuilder::new("m1", Role::Member)
        .routing(routing)
        .memory(net, PathKind::Quic, PROBE)
        .memory(net, PathKind::Relay, PROBE)
        .dial(PathKind::Quic, PeerAddr::node("hub"))
        .dial(PathKind::Relay, PeerAddr::node("hub"))
        .spawn()
        .await
        .unwrap();
    // Let the paths open and the authority pick one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    (hub, member)
}

/// Records every application: (command index) in application order.
#[derive(Clone, Default)]
struct Ledger {
    applied: Arc<Mutex<Vec<u64>>>,
    runs: Arc<AtomicU64>,
}

#[async_trait]
impl CommandHandler for Ledger {
    type Command = u64;
    type Reply = u64;
    async fn handle(&self, cmd: u64) -> Result<u64, String> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.applied.lock().unwrap().push(cmd);
        if cmd == u64::MAX {
            return Err("refused by handler".into());
        }
        Ok(cmd * 2)
    }
}

struct Setup {
    hub: Node,
    member: Node,
    sender: CommandSender<u64, u64>,
    ledger: Ledger,
    serve: Arc<ServeHandle>,
}

async fn setup(net: &MemoryNetwork, sender_cfg: SenderConfig, serve_cfg: ServeConfig) -> Setup {
    let (hub, member) = pair(net).await;
    let stream = StreamId::new("command:m1/hub");
    let ledger = Ledger::default();
    let hub_store: Arc<dyn Store> = Arc::new(MemStore::new());
    let member_store: Arc<dyn Store> = Arc::new(MemStore::new());
    let serve = CommandChannel::serve(
        &hub,
        stream.clone(),
        NodeId::new("m1"),
        ledger.clone(),
        hub_store,
        serve_cfg,
    )
    .await
    .unwrap();
    let sender = CommandChannel::spawn_sender(
        &member,
        stream,
        NodeId::new("hub"),
        member_store,
        sender_cfg,
    )
    .await
    .unwrap();
    Setup {
        hub,
        member,
        sender,
        ledger,
        serve,
    }
}

impl Setup {
    async fn shutdown(self) {
        self.member.shutdown().await;
        self.hub.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn class_a_commands_apply_exactly_once_in_order_under_chaos() {
    let seed = env_u64("CMD_SEED", 20_261_123);
    let n = env_u64("CMD_N", 10_000);
    let net = MemoryNetwork::new(seed);
    net.record_trace(false);
    net.set_default_faults(LinkFaults {
        loss: 0.2,
        duplicate: 0.05,
        reorder: 0.1,
        reorder_delay: Duration::from_millis(5),
        ..LinkFaults::default()
    });
    let cfg = SenderConfig::default().outbox(
        OutboxConfig::default()
            .max_in_flight(512)
            .rto(Duration::from_millis(200), Duration::from_secs(2)),
    );
    let s = setup(&net, cfg, ServeConfig::default()).await;

    // Concurrent submissions in waves: each wave lands in the mailbox
    // together and is group-committed.
    let mut receipts = Vec::with_capacity(n as usize);
    let mut i = 0;
    while i < n {
        let mut wave = tokio::task::JoinSet::new();
        for k in i..(i + 100).min(n) {
            let sender = s.sender.clone();
            wave.spawn(async move { (k, sender.send(k, SendOptions::class_a()).await) });
        }
        while let Some(r) = wave.join_next().await {
            let (k, r) = r.unwrap();
            let receipt = r.unwrap_or_else(|e| panic!("seed {seed}: send {k} refused: {e}"));
            receipts.push((receipt.message_id(), k, receipt));
        }
        i = (i + 100).min(n);
    }
    receipts.sort_by_key(|(id, _, _)| *id);
    let expected: Vec<u64> = receipts.iter().map(|(_, k, _)| *k).collect();
    for (_, k, receipt) in receipts {
        let reply = tokio::time::timeout(Duration::from_secs(600), receipt.reply())
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: no reply for {k}"));
        assert_eq!(reply, Ok(k * 2), "seed {seed}: reply of {k}");
    }
    let applied = s.ledger.applied.lock().unwrap().clone();
    assert_eq!(applied.len() as u64, n, "seed {seed}: applications");
    assert_eq!(
        applied, expected,
        "seed {seed}: every accepted command applied exactly once, in message order"
    );
    assert_eq!(s.serve.applied(), n, "seed {seed}");
    assert_eq!(
        s.sender.stats().pending.load(Ordering::Relaxed),
        0,
        "seed {seed}: outbox drained"
    );
    s.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn expired_command_is_answered_expired_and_not_run() {
    let net = MemoryNetwork::new(1);
    // The receiver's wall clock is an hour ahead of the sender's.
    let ahead = system_clock();
    let serve_cfg = ServeConfig::default().clock(Arc::new(move || ahead() + 3_600_000));
    let s = setup(&net, SenderConfig::default(), serve_cfg).await;
    let r = s
        .sender
        .send(1, SendOptions::class_a().ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(r.reply().await, Err(CommandError::Expired));
    assert_eq!(s.ledger.runs.load(Ordering::Relaxed), 0);
    // Without a TTL the same clocks are fine.
    let r = s.sender.send(2, SendOptions::class_a()).await.unwrap();
    assert_eq!(r.reply().await, Ok(4));
    s.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stale_epoch_is_rejected_and_handler_errors_come_back() {
    let net = MemoryNetwork::new(2);
    let s = setup(
        &net,
        SenderConfig::default().authority_epoch(3),
        ServeConfig::default(),
    )
    .await;
    s.serve.set_epoch(5);
    let r = s.sender.send(1, SendOptions::class_a()).await.unwrap();
    assert!(
        matches!(r.reply().await, Err(CommandError::Rejected { .. })),
        "stale epoch must be rejected"
    );
    assert_eq!(s.ledger.runs.load(Ordering::Relaxed), 0);
    s.serve.set_epoch(3);
    let r = s
        .sender
        .send(u64::MAX, SendOptions::class_a())
        .await
        .unwrap();
    assert_eq!(
        r.reply().await,
        Err(CommandError::Handler("refused by handler".into()))
    );
    let r = s.sender.send(7, SendOptions::class_a()).await.unwrap();
    assert_eq!(r.reply().await, Ok(14));
    s.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn undecodable_payload_gets_a_reject_and_the_channel_keeps_working() {
    let net = MemoryNetwork::new(3);
    let s = setup(&net, SenderConfig::default(), ServeConfig::default()).await;
    let r = s.sender.send(1, SendOptions::class_a()).await.unwrap();
    assert_eq!(r.reply().await, Ok(2));
    let garbage = Frame::Data(Data {
        stream: s.sender.stream().clone(),
        incarnation: s.sender.incarnation(),
        seq: 2,
        message_id: 999,
        class: 0,
        delivery: 0,
        payload: Bytes::from_static(&[0xc1, 0xff, 0x00]),
    });
    s.member
        .send(&PathId::new("hub", PathKind::Quic), garbage)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.serve.undecodable(), 1);
    assert_eq!(s.sender.stats().rejects.load(Ordering::Relaxed), 1);
    // seq 2 was not consumed by the garbage: the next command applies.
    let r = s.sender.send(2, SendOptions::class_a()).await.unwrap();
    assert_eq!(r.reply().await, Ok(4));
    assert_eq!(*s.ledger.applied.lock().unwrap(), vec![1, 2]);
    s.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn operation_key_dedupes_and_try_send_reports_full() {
    let net = MemoryNetwork::new(4);
    let cfg = SenderConfig::default().outbox(OutboxConfig::default().max_in_flight(1));
    let s = setup(&net, cfg, ServeConfig::default()).await;
    let a = s
        .sender
        .send(5, SendOptions::class_a().operation_key("op-1"))
        .await
        .unwrap();
    assert_eq!(
        s.sender.try_send(6, SendOptions::class_a()).await.err(),
        Some(CommandError::Full)
    );
    let b = s
        .sender
        .send(5, SendOptions::class_a().operation_key("op-1"))
        .await
        .unwrap();
    assert_eq!(a.message_id(), b.message_id());
    assert_eq!(a.reply().await, Ok(10));
    assert_eq!(b.reply().await, Ok(10));
    assert_eq!(s.ledger.runs.load(Ordering::Relaxed), 1);
    s.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn dedupe_records_are_pruned_to_the_configured_bound() {
    let net = MemoryNetwork::new(31);
    let (hub, member) = pair(&net).await;
    let stream = StreamId::new("command:m1/hub");
    let hub_store = MemStore::new();
    let serve_cfg = ServeConfig::default()
        .dedupe(DedupeConfig::default().max_per_stream(5))
        .prune_every(Duration::from_secs(1));
    CommandChannel::serve(
        &hub,
        stream.clone(),
        NodeId::new("m1"),
        Ledger::default(),
        Arc::new(hub_store.clone()),
        serve_cfg,
    )
    .await
    .unwrap();
    let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
        &member,
        stream.clone(),
        NodeId::new("hub"),
        Arc::new(MemStore::new()),
        SenderConfig::default(),
    )
    .await
    .unwrap();
    // The server keeps each sender incarnation's records apart.
    let key = incarnation_key(&stream, sender.incarnation());
    let records = |s: &MemStore| s.dedupe_load_for(&key).unwrap().len();
    for k in 1..=30 {
        let r = sender.send(k, SendOptions::class_a()).await.unwrap();
        assert_eq!(r.reply().await, Ok(k * 2));
    }
    assert_eq!(records(&hub_store), 30, "no prune before the interval");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The next flush after the interval prunes to the per-stream bound.
    let r = sender.send(31, SendOptions::class_a()).await.unwrap();
    assert_eq!(r.reply().await, Ok(62));
    assert_eq!(records(&hub_store), 5);
    // The stream goes on in order after the prune.
    let r = sender.send(32, SendOptions::class_a()).await.unwrap();
    assert_eq!(r.reply().await, Ok(64));
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn class_a_outbox_is_bounded_in_entries_and_bytes_and_says_full() {
    let net = MemoryNetwork::new(4);
    let (hub, member) = pair(&net).await;
    // A peer nobody serves: every class-A command stays in the outbox.
    let sender = |name: &str, entries: usize, bytes: usize| {
        CommandChannel::spawn_sender::<u64, u64>(
            &member,
            StreamId::new(format!("command:m1/{name}")),
            NodeId::new(name),
            Arc::new(MemStore::new()) as Arc<dyn Store>,
            SenderConfig::default().max_outbox(entries, bytes),
        )
    };
    let by_count = sender("absent-1", 3, usize::MAX).await.unwrap();
    for i in 0..3 {
        by_count.send(i, SendOptions::class_a()).await.unwrap();
    }
    assert_eq!(
        by_count.send(3, SendOptions::class_a()).await.err(),
        Some(CommandError::Full)
    );
    assert_eq!(by_count.stats().outbox_full.load(Ordering::Relaxed), 1);
    assert_eq!(by_count.stats().pending.load(Ordering::Relaxed), 3);
    // Class C is not stored: the outbox bound does not refuse it.
    assert_eq!(
        by_count.send(4, SendOptions::class_c()).await.err(),
        Some(CommandError::Unroutable)
    );
    // By bytes: a u64 body is at most 9 bytes, each record 64 more.
    let by_bytes = sender("absent-2", 1000, 4 * 73).await.unwrap();
    let mut accepted = 0;
    for i in 0..10 {
        match by_bytes.send(i, SendOptions::class_a()).await {
            Ok(_) => accepted += 1,
            Err(CommandError::Full) => {}
            Err(e) => panic!("command {i}: {e:?}"),
        }
    }
    assert!(
        (4..10).contains(&accepted),
        "accepted {accepted} within 292 bytes"
    );
    assert_eq!(
        by_bytes.stats().outbox_full.load(Ordering::Relaxed),
        10 - accepted
    );
    member.shutdown().await;
    hub.shutdown().await;
}

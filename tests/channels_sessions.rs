//! Stream sessions over the memory transport in tokio's paused virtual
//! time: a third node injecting commands and forging replies is refused and
//! changes nothing; a sender whose store is wiped starts a new incarnation
//! whose commands apply once; a retransmit the receiver can no longer
//! answer gets an explicit answer; a flood against a slow handler stays
//! bounded while another stream is served; class-C receipts always resolve.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::actors::session::codes;
use interlocking::channels::command::{
    Envelope, EnvelopeKind, ReplyBody, SenderConfig, ServeConfig,
};
use interlocking::channels::{
    CommandChannel, CommandError, CommandHandler, CommandSender, DedupeConfig, SendOptions,
};
use interlocking::routing::RoutingConfig;
use interlocking::store::MemStore;
use interlocking::transports::PeerAddr;
use interlocking::transports::memory::{LinkFaults, MemoryNetwork};
use interlocking::transports::probe::ProbeConfig;
use interlocking::vocab::{NodeId, PathId, PathKind, Role, StreamId};
use interlocking::wire::{Data, Frame};

const PROBE: ProbeConfig = ProbeConfig {
    interval: Duration::from_millis(100),
    timeout: Duration::from_millis(300),
};

async fn node(net: &MemoryNetwork, id: &str, role: Role, dial: Option<&str>) -> Node {
    let mut routing = RoutingConfig::default();
    routing.health.misses_to_fail = 5;
    let mut b = NodeBuilder::new(id, role)
        .routing(routing)
        .memory(net, PathKind::Quic, PROBE);
    if let Some(peer) = dial {
        b = b.dial(PathKind::Quic, PeerAddr::node(peer));
    }
    b.spawn().await.unwrap()
}

/// Doubles its input; records every application.
#[derive(Clone)]
struct Ledger {
    applied: Arc<Mutex<Vec<u64>>>,
    /// While set, `handle` waits (a slow handler).
    gate: Arc<tokio::sync::Semaphore>,
    slow: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            applied: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            slow: Arc::default(),
        }
    }
}

#[async_trait]
impl CommandHandler for Ledger {
    type Command = u64;
    type Reply = u64;
    async fn handle(&self, n: u64) -> Result<u64, String> {
        if self.slow.load(Ordering::SeqCst) {
            let _permit = self.gate.acquire().await.map_err(|e| e.to_string())?;
        }
        self.applied.lock().unwrap().push(n);
        Ok(n * 2)
    }
}

fn command_frame(
    stream: &StreamId,
    incarnation: u64,
    seq: u64,
    id: u64,
    kind: EnvelopeKind,
    body: Vec<u8>,
) -> Frame {
    let env = Envelope {
        kind,
        message_id: id,
        stream_id: stream.clone(),
        issued_at_ms: 0,
        ttl_ms: 0,
        authority_epoch: 0,
        operation_key: None,
        body,
    };
    Frame::Data(Data {
        stream: stream.clone(),
        incarnation,
        seq,
        message_id: id,
        class: 0,
        delivery: 0,
        payload: Bytes::from(env.encode()),
    })
}

/// The process's resident set size in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Waits (in virtual time) until `cond` holds, at most `limit`.
async fn until(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_third_node_can_neither_inject_commands_nor_forge_replies() {
    let net = MemoryNetwork::new(11);
    let hub = node(&net, "hub", Role::Hub, None).await;
    let m1 = node(&net, "m1", Role::Member, Some("hub")).await;
    let evil = node(&net, "m2", Role::Member, Some("hub")).await;
    let evil_to_m1 = node(&net, "m3", Role::Member, Some("m1")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
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

    // Before m1 ever runs, m2 writes sequence numbers 1..=30 into m1's
    // stream, with any incarnation it likes.
    let to_hub = PathId::new("hub", PathKind::Quic);
    for seq in 1..=30u64 {
        let body = rmp_serde::to_vec(&(1000 + seq)).unwrap();
        let f = command_frame(&stream, u64::MAX, seq, seq, EnvelopeKind::Command, body);
        evil.send(&to_hub, f).unwrap();
    }
    until(Duration::from_secs(5), "30 refusals", || {
        hub.refused(codes::NOT_BOUND) == 30
    })
    .await;
    assert_eq!(serve.applied(), 0, "nothing injected was applied");
    assert_eq!(
        hub.session(&stream).unwrap().incarnation(),
        0,
        "no incarnation adopted"
    );

    let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
        &m1,
        stream.clone(),
        NodeId::new("hub"),
        Arc::new(MemStore::new()),
        SenderConfig::default(),
    )
    .await
    .unwrap();
    // While m1 works, m3 forges replies to every message id m1 could use,
    // claiming each was applied with the value 0.
    let to_m1 = PathId::new("m1", PathKind::Quic);
    let forged_body = rmp_serde::to_vec(&ReplyBody::Ok(rmp_serde::to_vec(&0u64).unwrap())).unwrap();
    for id in 1..=30u64 {
        let f = command_frame(
            &stream,
            sender.incarnation(),
            id,
            id,
            EnvelopeKind::Reply,
            forged_body.clone(),
        );
        evil_to_m1.send(&to_m1, f).unwrap();
    }
    let mut receipts = Vec::new();
    for n in 1..=30u64 {
        receipts.push((n, sender.send(n, SendOptions::class_a()).await.unwrap()));
    }
    for (n, r) in receipts {
        assert_eq!(r.reply().await, Ok(n * 2), "command {n} really applied");
    }
    until(Duration::from_secs(5), "forged replies refused", || {
        m1.refused(codes::NOT_BOUND) == 30
    })
    .await;
    assert_eq!(
        *ledger.applied.lock().unwrap(),
        (1..=30).collect::<Vec<_>>()
    );
    assert_eq!(serve.applied(), 30);
    for n in [evil_to_m1, evil, m1, hub] {
        n.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_sender_with_a_wiped_store_starts_a_new_incarnation_that_applies_once() {
    // Each life of m1 is a new node on a network of its own (re-binding one
    // node id on one memory network is not supported), reaching the hub
    // over a path kind of its own.
    let lives = [PathKind::WebrtcData, PathKind::Quic, PathKind::Relay];
    let nets: Vec<MemoryNetwork> = (0..3).map(|i| MemoryNetwork::new(120 + i)).collect();
    let mut routing = RoutingConfig::default();
    routing.health.misses_to_fail = 5;
    let mut hub = NodeBuilder::new("hub", Role::Hub).routing(routing.clone());
    for (net, kind) in nets.iter().zip(lives) {
        hub = hub.memory(net, kind, PROBE);
    }
    let hub = hub.spawn().await.unwrap();
    let ledger = Ledger::default();
    let stream = StreamId::new("command:m1/hub");
    CommandChannel::serve(
        &hub,
        stream.clone(),
        NodeId::new("m1"),
        ledger.clone(),
        Arc::new(MemStore::new()),
        ServeConfig::default(),
    )
    .await
    .unwrap();
    let mut incarnations = Vec::new();
    for (life, (net, kind)) in nets.iter().zip(lives).enumerate() {
        let life = life as u64;
        let m1 = NodeBuilder::new("m1", Role::Member)
            .routing(routing.clone())
            .memory(net, kind, PROBE)
            .dial(kind, PeerAddr::node("hub"))
            .spawn()
            .await
            .unwrap();
        // A new, empty store every life: ids and sequence numbers restart.
        let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
            &m1,
            stream.clone(),
            NodeId::new("hub"),
            Arc::new(MemStore::new()),
            SenderConfig::default(),
        )
        .await
        .unwrap();
        incarnations.push(sender.incarnation());
        for k in 1..=5u64 {
            let n = life * 100 + k;
            let r = sender.send(n, SendOptions::class_a()).await.unwrap();
            assert_eq!(r.message_id(), k, "a wiped store restarts its ids");
            let reply = tokio::time::timeout(Duration::from_secs(30), r.reply()).await;
            assert_eq!(
                reply,
                Ok(Ok(n * 2)),
                "life {life}: applied, not an old reply (transmits {}, admitted {}, hub {:?}, m1 {:?})",
                sender.stats().transmits.load(Ordering::Relaxed),
                hub.session(&stream)
                    .unwrap()
                    .counters()
                    .admitted
                    .load(Ordering::Relaxed),
                hub.refusals(),
                m1.refusals(),
            );
        }
        m1.shutdown().await;
    }
    assert!(
        incarnations.windows(2).all(|w| w[0] < w[1]),
        "{incarnations:x?}"
    );
    let want: Vec<u64> = (0..3)
        .flat_map(|l| (1..=5).map(move |k| l * 100 + k))
        .collect();
    assert_eq!(*ledger.applied.lock().unwrap(), want);
    assert_eq!(hub.session(&stream).unwrap().incarnation(), incarnations[2]);
    hub.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn older_incarnations_and_pruned_retransmits_get_explicit_answers() {
    let net = MemoryNetwork::new(13);
    let hub = node(&net, "hub", Role::Hub, None).await;
    let m1 = node(&net, "m1", Role::Member, Some("hub")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stream = StreamId::new("command:m1/hub");
    let ledger = Ledger::default();
    let serve = CommandChannel::serve(
        &hub,
        stream.clone(),
        NodeId::new("m1"),
        ledger.clone(),
        Arc::new(MemStore::new()),
        ServeConfig::default()
            .dedupe(DedupeConfig::default().max_per_stream(5))
            .prune_every(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
        &m1,
        stream.clone(),
        NodeId::new("hub"),
        Arc::new(MemStore::new()),
        SenderConfig::default(),
    )
    .await
    .unwrap();
    for n in 1..=20u64 {
        let r = sender.send(n, SendOptions::class_a()).await.unwrap();
        assert_eq!(r.reply().await, Ok(n * 2));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = sender.send(21, SendOptions::class_a()).await.unwrap();
    assert_eq!(r.reply().await, Ok(42));
    // A retransmit of message 1 (seq 1), behind the cursor, its record
    // pruned: answered ANSWER_GONE, not applied, not silent.
    let to_hub = PathId::new("hub", PathKind::Quic);
    let body = rmp_serde::to_vec(&1u64).unwrap();
    let inc = sender.incarnation();
    m1.send(
        &to_hub,
        command_frame(&stream, inc, 1, 1, EnvelopeKind::Command, body.clone()),
    )
    .unwrap();
    until(Duration::from_secs(5), "an explicit answer", || {
        serve.answer_gone() == 1
    })
    .await;
    until(Duration::from_secs(5), "the sender hears it", || {
        sender.stats().rejects.load(Ordering::Relaxed) == 1
    })
    .await;
    // An older incarnation is refused at the hub's session.
    m1.send(
        &to_hub,
        command_frame(&stream, inc - 1, 22, 22, EnvelopeKind::Command, body),
    )
    .unwrap();
    until(Duration::from_secs(5), "stale refused", || {
        hub.refused(codes::STALE_INCARNATION) == 1
    })
    .await;
    assert_eq!(serve.applied(), 21);
    assert_eq!(ledger.applied.lock().unwrap().len(), 21);
    m1.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_flood_against_a_slow_handler_stays_bounded_and_other_streams_are_served() {
    let net = MemoryNetwork::new(14);
    let hub = node(&net, "hub", Role::Hub, None).await;
    let m1 = node(&net, "m1", Role::Member, Some("hub")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let flooded = StreamId::new("command:m1/hub/flooded");
    let calm = StreamId::new("command:m1/hub/calm");
    let slow = Ledger::default();
    slow.slow.store(true, Ordering::SeqCst);
    let capacity = 64;
    let flooded_serve = CommandChannel::serve(
        &hub,
        flooded.clone(),
        NodeId::new("m1"),
        slow.clone(),
        Arc::new(MemStore::new()),
        ServeConfig::default().inbox_capacity(capacity),
    )
    .await
    .unwrap();
    CommandChannel::serve(
        &hub,
        calm.clone(),
        NodeId::new("m1"),
        Ledger::default(),
        Arc::new(MemStore::new()),
        ServeConfig::default(),
    )
    .await
    .unwrap();
    let calm_sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
        &m1,
        calm.clone(),
        NodeId::new("hub"),
        Arc::new(MemStore::new()),
        SenderConfig::default(),
    )
    .await
    .unwrap();
    // The member floods the stream as fast as it can (unordered frames, so
    // every one reaches the handler's queue), far beyond its capacity.
    let to_hub = PathId::new("hub", PathKind::Quic);
    let sent = AtomicU64::new(0);
    let session = hub.session(&flooded).unwrap();
    let mut max_queued = 0;
    let rss_before = rss();
    let mut rss_peak = rss_before;
    for burst in 0..50u64 {
        for i in 0..200u64 {
            let id = (1 << 63) | (burst * 200 + i);
            let body = rmp_serde::to_vec(&(burst * 200 + i)).unwrap();
            let mut f = command_frame(&flooded, 7, 0, id, EnvelopeKind::Command, body);
            // 4 KiB a frame: unbounded, the flood would hold 40 MiB.
            if let Frame::Data(d) = &mut f {
                let mut env = Envelope::decode(&d.payload).unwrap();
                env.operation_key = Some("x".repeat(4096));
                d.payload = Bytes::from(env.encode());
            }
            if m1.send(&to_hub, f).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        max_queued = max_queued.max(session.queued());
        rss_peak = rss_peak.max(rss());
        // The calm stream is served throughout.
        if burst % 10 == 0 {
            let r = calm_sender
                .send(burst, SendOptions::class_a())
                .await
                .unwrap();
            assert_eq!(r.reply().await, Ok(burst * 2));
        }
    }
    assert!(max_queued <= capacity, "queued {max_queued} > {capacity}");
    let busy = hub.refused(codes::BUSY);
    assert!(busy > 0, "the full inbox refused with BUSY");
    assert!(flooded_serve.applied() <= 1, "the slow handler is stuck");
    // Released, the handler drains what was admitted; nothing beyond.
    slow.slow.store(false, Ordering::SeqCst);
    slow.gate.add_permits(1 << 20);
    let admitted = session.counters().admitted.load(Ordering::Relaxed);
    until(Duration::from_secs(30), "the admitted frames drain", || {
        flooded_serve.applied() == admitted
    })
    .await;
    assert_eq!(admitted + busy, sent.load(Ordering::Relaxed));
    // Reported, not asserted: RSS is the whole test process's.
    eprintln!(
        "flood of {} frames: RSS before {} KiB, peak {} KiB (+{} KiB), after {} KiB; {busy} refused busy",
        sent.load(Ordering::Relaxed),
        rss_before / 1024,
        rss_peak / 1024,
        rss_peak.saturating_sub(rss_before) / 1024,
        rss() / 1024
    );
    m1.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn class_c_receipts_resolve_under_loss_and_without_a_path() {
    let net = MemoryNetwork::new(15);
    let hub = node(&net, "hub", Role::Hub, None).await;
    let m1 = node(&net, "m1", Role::Member, Some("hub")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stream = StreamId::new("command:m1/hub");
    CommandChannel::serve(
        &hub,
        stream.clone(),
        NodeId::new("m1"),
        Ledger::default(),
        Arc::new(MemStore::new()),
        ServeConfig::default(),
    )
    .await
    .unwrap();
    let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
        &m1,
        stream.clone(),
        NodeId::new("hub"),
        Arc::new(MemStore::new()),
        SenderConfig::default().class_c_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let lossy = LinkFaults {
        loss: 0.3,
        ..LinkFaults::default()
    };
    net.set_faults_both(
        PathKind::Quic,
        &NodeId::new("m1"),
        &NodeId::new("hub"),
        lossy,
    );
    let mut receipts = Vec::new();
    for n in 0..200u64 {
        receipts.push((n, sender.send(n, SendOptions::class_c()).await.unwrap()));
    }
    let (mut answered, mut timed_out) = (0, 0);
    for (n, r) in receipts {
        match tokio::time::timeout(Duration::from_secs(5), r.reply()).await {
            Ok(Ok(v)) => {
                assert_eq!(v, n * 2);
                answered += 1;
            }
            Ok(Err(CommandError::TimedOut)) => timed_out += 1,
            other => panic!("command {n}: unexpected {other:?}"),
        }
    }
    assert_eq!(answered + timed_out, 200);
    assert!(
        answered > 50 && timed_out > 20,
        "answered {answered}, timed out {timed_out}"
    );
    assert_eq!(sender.stats().timed_out.load(Ordering::Relaxed), timed_out);

    // Without any path, class C is refused at once.
    net.set_faults_both(
        PathKind::Quic,
        &NodeId::new("m1"),
        &NodeId::new("hub"),
        LinkFaults::default(),
    );
    net.partition(PathKind::Quic, &NodeId::new("m1"), &NodeId::new("hub"));
    let mut decisions = m1.decisions();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = tokio::time::timeout_at(deadline, decisions.recv())
            .await
            .unwrap()
            .unwrap();
        if d.stream == stream && d.next.is_none() {
            break;
        }
    }
    assert_eq!(
        sender.send(1, SendOptions::class_c()).await.err(),
        Some(CommandError::Unroutable)
    );
    m1.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn answered_class_c_commands_do_not_count_against_the_waiting_bound() {
    // Regression: answered class-C commands stayed counted until their
    // deadline, so more than `max_class_c_waiting` within the timeout made
    // every later send `Full` (a sustained 410 commands/s stalled for good).
    let net = MemoryNetwork::new(17);
    let hub = node(&net, "hub", Role::Hub, None).await;
    let m1 = node(&net, "m1", Role::Member, Some("hub")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stream = StreamId::new("command:m1/hub");
    CommandChannel::serve(
        &hub,
        stream.clone(),
        NodeId::new("m1"),
        Ledger::default(),
        Arc::new(MemStore::new()),
        ServeConfig::default(),
    )
    .await
    .unwrap();
    let cap = 64;
    let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
        &m1,
        stream.clone(),
        NodeId::new("hub"),
        Arc::new(MemStore::new()),
        {
            let mut c = SenderConfig::default();
            c.max_class_c_waiting = cap;
            c
        },
    )
    .await
    .unwrap();
    for n in 0..3 * cap as u64 {
        let r = sender.send(n, SendOptions::class_c()).await;
        let r = r.unwrap_or_else(|e| panic!("command {n}: {e}"));
        assert_eq!(r.reply().await.unwrap(), 2 * n);
    }
    // Still bounded: with every frame lost, `cap` wait and the next is Full.
    let lost = LinkFaults {
        loss: 1.0,
        ..LinkFaults::default()
    };
    net.set_faults_both(
        PathKind::Quic,
        &NodeId::new("m1"),
        &NodeId::new("hub"),
        lost,
    );
    let mut waiting = Vec::new();
    for n in 0..cap as u64 {
        waiting.push(sender.send(n, SendOptions::class_c()).await.unwrap());
    }
    assert_eq!(
        sender.send(0, SendOptions::class_c()).await.err(),
        Some(CommandError::Full)
    );
    drop(waiting);
    m1.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_is_not_serving_yet_is_retried_soon_not_after_the_rto() {
    let net = MemoryNetwork::new(16);
    let hub = node(&net, "hub", Role::Hub, None).await;
    let m1 = node(&net, "m1", Role::Member, Some("hub")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stream = StreamId::new("command:m1/hub");
    let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
        &m1,
        stream.clone(),
        NodeId::new("hub"),
        Arc::new(MemStore::new()),
        SenderConfig::default(),
    )
    .await
    .unwrap();
    // The hub is up but does not serve the stream yet (a restart that has
    // not reached its channels): it answers NOT_READY.
    let r = sender.send(21, SendOptions::class_a()).await.unwrap();
    until(Duration::from_secs(5), "a not-ready answer", || {
        hub.refused(codes::NOT_READY) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let retries_before = hub.refused(codes::NOT_READY);
    assert!(
        retries_before >= 2,
        "retried soon after NOT_READY: {retries_before}"
    );
    let served_at = tokio::time::Instant::now();
    CommandChannel::serve(
        &hub,
        stream.clone(),
        NodeId::new("m1"),
        Ledger::default(),
        Arc::new(MemStore::new()),
        ServeConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(r.reply().await, Ok(42));
    let waited = served_at.elapsed();
    // The outbox's RTO starts at 1 s and doubles; the not-ready retry
    // backs off from 50 ms and is capped by the RTO.
    assert!(
        waited < Duration::from_millis(1500),
        "reply {waited:?} after serving"
    );
    m1.shutdown().await;
    hub.shutdown().await;
}

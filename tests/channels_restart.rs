//! Supervision of the command channel actors, in tokio's paused virtual
//! time over the memory transport, with a `MemStore` shared across every
//! restart (as a redb file would be):
//!
//! - the sender actor killed while commands wait behind a partitioned path
//!   is restarted by its supervisor, restores its pending entries from the
//!   store, and after the heal every accepted command is applied exactly
//!   once; receipts taken from the dead incarnation still get the reply;
//! - the sender actor killed *during* a group commit: the next incarnation
//!   waits for the orphaned append before restoring, so its entry is not
//!   skipped (a skipped entry leaves a sequence gap that stalls the stream
//!   for good: the hang of the first attempt at this test);
//! - the member's transport actor, or the hub's server actor, killed
//!   mid-stream (three times) loses nothing;
//! - class B: bounded in-memory replay window (replayed on a route change,
//!   oldest dropped with `CommandError::Dropped`, never stored).
//!
//! Every wait is bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::command::{
    SenderConfig, ServeConfig, sender_actor_name, server_actor_name,
};
use interlocking::channels::{
    CommandChannel, CommandError, CommandHandler, CommandSender, OutboxConfig, SendOptions,
};
use interlocking::routing::RoutingConfig;
use interlocking::store::{
    AppendOutcome, DedupeRecord, MemStore, OutboxBatch, OutboxRecord, Store, StoreError,
};
use interlocking::transports::PeerAddr;
use interlocking::transports::memory::{LinkFaults, MemoryNetwork};
use interlocking::transports::probe::ProbeConfig;
use interlocking::vocab::{NodeId, PathKind, Role, StreamId};
use tokio::time::timeout;

const PROBE: ProbeConfig = ProbeConfig {
    interval: Duration::from_millis(100),
    timeout: Duration::from_millis(300),
};
const BOUND: Duration = Duration::from_secs(120);

/// Counts every application of each command.
#[derive(Clone, Default)]
struct Ledger {
    applied: Arc<Mutex<BTreeMap<u64, u32>>>,
    runs: Arc<AtomicU64>,
}

impl Ledger {
    fn snapshot(&self) -> BTreeMap<u64, u32> {
        self.applied.lock().unwrap().clone()
    }
}

#[async_trait]
impl CommandHandler for Ledger {
    type Command = u64;
    type Reply = u64;
    async fn handle(&self, cmd: u64) -> Result<u64, String> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        *self.applied.lock().unwrap().entry(cmd).or_default() += 1;
        Ok(cmd * 2)
    }
}

/// A `MemStore` whose appends can be held (to kill the sender mid-commit).
#[derive(Clone, Default)]
struct HeldStore {
    inner: MemStore,
    hold: Arc<AtomicBool>,
    entered: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
}

impl Store for HeldStore {
    fn append_outbox(&self, batch: &OutboxBatch) -> Result<Vec<AppendOutcome>, StoreError> {
        if self.hold.swap(false, Ordering::SeqCst) {
            self.entered.store(true, Ordering::SeqCst);
            // Bounded: a real thread releases it.
            for _ in 0..5_000 {
                if self.release.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.inner.append_outbox(batch)
    }
    fn ack_outbox(&self, s: &StreamId, ids: &[u64]) -> Result<usize, StoreError> {
        self.inner.ack_outbox(s, ids)
    }
    fn pending_outbox(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        self.inner.pending_outbox()
    }
    fn pending_outbox_for(&self, s: &StreamId) -> Result<Vec<OutboxRecord>, StoreError> {
        self.inner.pending_outbox_for(s)
    }
    fn sender_incarnation(&self, s: &StreamId, fresh: u64) -> Result<u64, StoreError> {
        self.inner.sender_incarnation(s, fresh)
    }
    fn peer_incarnation(&self, s: &StreamId) -> Result<Option<u64>, StoreError> {
        self.inner.peer_incarnation(s)
    }
    fn set_peer_incarnation(&self, s: &StreamId, i: u64) -> Result<(), StoreError> {
        self.inner.set_peer_incarnation(s, i)
    }
    fn dedupe_load_for(&self, s: &StreamId) -> Result<Vec<DedupeRecord>, StoreError> {
        self.inner.dedupe_load_for(s)
    }
    fn next_ids(&self, s: &StreamId) -> Result<(u64, u64), StoreError> {
        self.inner.next_ids(s)
    }
    fn idempotency_prune(&self, t: u64) -> Result<usize, StoreError> {
        self.inner.idempotency_prune(t)
    }
    fn dedupe_lookup(&self, s: &StreamId, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.dedupe_lookup(s, id)
    }
    fn dedupe_record(&self, r: &[DedupeRecord], c: &[(StreamId, u64)]) -> Result<(), StoreError> {
        self.inner.dedupe_record(r, c)
    }
    fn dedupe_load(&self) -> Result<Vec<DedupeRecord>, StoreError> {
        self.inner.dedupe_load()
    }
    fn dedupe_prune(&self, t: u64, k: usize) -> Result<usize, StoreError> {
        self.inner.dedupe_prune(t, k)
    }
    fn set_cursor(&self, s: &StreamId, c: u64) -> Result<(), StoreError> {
        self.inner.set_cursor(s, c)
    }
    fn cursor(&self, s: &StreamId) -> Result<Option<u64>, StoreError> {
        self.inner.cursor(s)
    }
}

struct Setup {
    net: MemoryNetwork,
    hub: Node,
    member: Node,
    stream: StreamId,
    sender: CommandSender<u64, u64>,
    ledger: Ledger,
}

async fn setup(
    seed: u64,
    kinds: &[PathKind],
    member_store: Arc<dyn Store>,
    cfg: SenderConfig,
) -> Setup {
    let net = MemoryNetwork::new(seed);
    let mut routing = RoutingConfig::default();
    routing.health.misses_to_fail = 5;
    let mut hub = NodeBuilder::new("hub", Role::Hub).routing(routing.clone());
    let mut member = NodeBuilder::new("m1", Role::Member).routing(routing);
    for &kind in kinds {
        hub = hub.memory(&net, kind, PROBE);
        member = member
            .memory(&net, kind, PROBE)
            .dial(kind, PeerAddr::node("hub"));
    }
    let hub = hub.spawn().await.unwrap();
    let member = member.spawn().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stream = StreamId::new("command:m1/hub");
    let ledger = Ledger::default();
    let hub_store: Arc<dyn Store> = Arc::new(MemStore::new());
    CommandChannel::serve(
        &hub,
        stream.clone(),
        NodeId::new("m1"),
        ledger.clone(),
        hub_store,
        ServeConfig::default(),
    )
    .await
    .unwrap();
    let sender = CommandChannel::spawn_sender(
        &member,
        stream.clone(),
        NodeId::new("hub"),
        member_store,
        cfg,
    )
    .await
    .unwrap();
    Setup {
        net,
        hub,
        member,
        stream,
        sender,
        ledger,
    }
}

fn fast_outbox() -> SenderConfig {
    SenderConfig::default().outbox(
        OutboxConfig::default()
            .max_in_flight(64)
            .rto(Duration::from_millis(200), Duration::from_secs(1)),
    )
}

/// Kills the node's actor `name` and waits (bounded) for its restart.
async fn kill_and_await_restart(node: &Node, name: &str) {
    let before = node
        .actor(name)
        .unwrap_or_else(|| panic!("no actor {name}"));
    before.kill();
    for _ in 0..2_000 {
        if let Some(cell) = node.actor(name)
            && cell.get_id() != before.get_id()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("actor {name} was not restarted");
}

/// Waits (bounded) until the sender's outbox is empty.
async fn drained(s: &Setup) {
    for _ in 0..1_200 {
        if s.sender.stats().pending.load(Ordering::Relaxed) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "outbox not drained: {} pending",
        s.sender.stats().pending.load(Ordering::Relaxed)
    );
}

/// Waits (bounded, virtual time) until the store holds no pending entry:
/// acked entries leave the store in the sender's next flush, after the
/// reply has settled them in memory.
async fn store_drained(store: &dyn Store) {
    for _ in 0..100 {
        if store.pending_outbox().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("store still holds {:?}", store.pending_outbox().unwrap());
}

/// Every accepted command applied exactly once; nothing applied that was
/// not submitted; nothing applied twice.
fn assert_ledger(ledger: &Ledger, accepted: &BTreeSet<u64>, submitted: &BTreeSet<u64>) {
    let applied = ledger.snapshot();
    for k in accepted {
        assert_eq!(
            applied.get(k),
            Some(&1),
            "accepted {k} applied exactly once"
        );
    }
    for (k, n) in &applied {
        assert!(submitted.contains(k), "{k} applied but never submitted");
        assert_eq!(*n, 1, "{k} applied {n} times");
    }
}

#[tokio::test(start_paused = true)]
async fn killed_sender_restores_from_the_store_and_applies_every_accepted_command_once() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let s = setup(11, &[PathKind::Quic], store.clone(), fast_outbox()).await;
    let (m1, hub) = (NodeId::new("m1"), NodeId::new("hub"));
    let name = sender_actor_name(&s.stream);
    let mut submitted = BTreeSet::new();
    let mut accepted = BTreeSet::new();
    let opts = |k: u64| SendOptions::class_a().operation_key(format!("cmd-{k}"));

    // A few go through before the cut.
    for k in 1..=10 {
        submitted.insert(k);
        let r = s.sender.send(k, opts(k)).await.unwrap();
        assert_eq!(timeout(BOUND, r.reply()).await.unwrap(), Ok(k * 2));
        accepted.insert(k);
    }

    // The path is cut: the next commands are accepted (stored) but stuck.
    s.net.partition(PathKind::Quic, &m1, &hub);
    let mut receipts = Vec::new();
    for k in 11..=60 {
        submitted.insert(k);
        receipts.push((k, s.sender.send(k, opts(k)).await.unwrap()));
        accepted.insert(k);
    }
    assert_eq!(store.pending_outbox().unwrap().len(), 50);

    // Submissions racing with the kill: each is either accepted (stored)
    // or answered `Closed` (its outcome unknown; it may still be stored).
    let mut racing = tokio::task::JoinSet::new();
    for k in 61..=100 {
        submitted.insert(k);
        let sender = s.sender.clone();
        racing.spawn(async move { (k, sender.send(k, opts(k)).await) });
    }
    tokio::task::yield_now().await;
    kill_and_await_restart(&s.member, &name).await;
    while let Some(r) = timeout(BOUND, racing.join_next()).await.unwrap() {
        match r.unwrap() {
            (k, Ok(receipt)) => {
                accepted.insert(k);
                receipts.push((k, receipt));
            }
            (_, Err(CommandError::Closed)) => {}
            (k, Err(e)) => panic!("send {k}: unexpected {e}"),
        }
    }

    // The restarted incarnation accepts new commands behind the cut.
    for k in 101..=120 {
        submitted.insert(k);
        receipts.push((k, s.sender.send(k, opts(k)).await.unwrap()));
        accepted.insert(k);
    }

    // Long enough for missed probes to fail the only path: the stream has
    // no route while entries are in flight (the sender must then idle, not
    // spin on its retransmit timer — the spin starved the paused clock and
    // hung the first attempt at this test). Kill it once more, then heal.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let explained = s.member.explain(&s.stream).await.unwrap();
    assert_eq!(explained.and_then(|e| e.path), None, "no route while cut");
    kill_and_await_restart(&s.member, &name).await;
    s.net.heal(PathKind::Quic, &m1, &hub);

    // Receipts from dead incarnations get the real reply: their waiters
    // live outside the actor and their entries were restored.
    for (k, r) in receipts {
        let reply = timeout(BOUND, r.reply()).await.expect("bounded reply");
        assert_eq!(reply, Ok(k * 2), "reply of {k}");
    }
    drained(&s).await;
    store_drained(store.as_ref()).await;
    assert_ledger(&s.ledger, &accepted, &submitted);
    // Everything stored was delivered, including racing sends answered
    // `Closed` whose append had committed.
    let (next_seq, _) = store.next_ids(&s.stream).unwrap();
    assert_eq!(s.ledger.snapshot().len() as u64, next_seq - 1);

    // A re-send of an accepted key is deduplicated, not applied again.
    let again = s.sender.send(42, opts(42)).await.unwrap();
    assert!(matches!(
        timeout(BOUND, again.reply()).await.unwrap(),
        Err(CommandError::Duplicate { .. })
    ));
    assert_ledger(&s.ledger, &accepted, &submitted);
    s.member.shutdown().await;
    s.hub.shutdown().await;
}

// Real time: in paused time tokio does not auto-advance while a blocking
// task runs, so the supervisor's restart backoff could never elapse during
// the held append and the race this test is about could not happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_killed_during_a_group_commit_restores_the_orphaned_append() {
    let held = HeldStore::default();
    let store: Arc<dyn Store> = Arc::new(held.clone());
    let s = setup(12, &[PathKind::Quic], store.clone(), fast_outbox()).await;
    let name = sender_actor_name(&s.stream);
    let r = s.sender.send(1, SendOptions::class_a()).await.unwrap();
    assert_eq!(timeout(BOUND, r.reply()).await.unwrap(), Ok(2));

    // Command 2's append is held on its blocking thread; the actor dies.
    held.hold.store(true, Ordering::SeqCst);
    let sender = s.sender.clone();
    let orphan = tokio::spawn(async move { sender.send(2, SendOptions::class_a()).await });
    for _ in 0..5_000 {
        if held.entered.load(Ordering::SeqCst) {
            break;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(held.entered.load(Ordering::SeqCst), "append entered");
    let release = held.release.clone();
    // Released well after the supervisor's restart backoff (50 ms): a
    // restarted actor that did not wait would have restored without it.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        release.store(true, Ordering::SeqCst);
    });
    kill_and_await_restart(&s.member, &name).await;
    releaser.join().unwrap();

    // Its caller never heard "accepted": the outcome is unknown to it.
    assert_eq!(
        timeout(BOUND, orphan).await.unwrap().unwrap().err(),
        Some(CommandError::Closed)
    );
    // But the append committed, and the restarted actor restored it (it
    // waited for the append): command 2 is applied, and the stream has no
    // sequence gap, so command 3 is applied after it.
    let r = s.sender.send(3, SendOptions::class_a()).await.unwrap();
    assert_eq!(
        timeout(Duration::from_secs(20), r.reply())
            .await
            .expect("no stall: a sequence gap would hold every later command"),
        Ok(6)
    );
    drained(&s).await;
    let applied = s.ledger.snapshot();
    assert_eq!(applied, BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
    s.member.shutdown().await;
    s.hub.shutdown().await;
}

/// Sends `n` commands concurrently over 20 ms links and kills the actor
/// `name` of the member or hub three times while they flow; every command
/// must be answered and applied exactly once.
async fn kill_mid_stream(seed: u64, name: &str, on_hub: bool) {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let s = setup(seed, &[PathKind::Quic], store.clone(), fast_outbox()).await;
    let latency = LinkFaults {
        latency: Duration::from_millis(20),
        ..LinkFaults::default()
    };
    let (m1, hub) = (NodeId::new("m1"), NodeId::new("hub"));
    s.net
        .set_faults_both(PathKind::Quic, &m1, &hub, latency.clone());
    let n = 600u64;
    let submitted: BTreeSet<u64> = (1..=n).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 1..=n {
        let sender = s.sender.clone();
        tasks.spawn(async move {
            let r = sender.send(k, SendOptions::class_a()).await?;
            Ok::<_, CommandError>((k, r.reply().await?))
        });
    }
    for after in [60, 250, 400] {
        for _ in 0..20_000 {
            if s.ledger.runs.load(Ordering::Relaxed) >= after {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            s.ledger.runs.load(Ordering::Relaxed) < n,
            "killed mid-stream"
        );
        let node = if on_hub { &s.hub } else { &s.member };
        kill_and_await_restart(node, name).await;
    }
    let mut accepted = BTreeSet::new();
    while let Some(r) = timeout(BOUND, tasks.join_next()).await.unwrap() {
        let (k, reply) = r.unwrap().expect("every command answered");
        assert_eq!(reply, k * 2);
        accepted.insert(k);
    }
    assert_eq!(accepted.len() as u64, n);
    drained(&s).await;
    assert_ledger(&s.ledger, &accepted, &submitted);
    s.member.shutdown().await;
    s.hub.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn killed_server_actor_restores_dedupe_and_cursor_and_loses_nothing() {
    let name = server_actor_name(&StreamId::new("command:m1/hub"));
    kill_mid_stream(15, &name, true).await;
}

// The member's transport actor, three times (the memory transport of a
// killed *listening* side is not re-dialled by its peer; QUIC re-dials, see
// docs/channels.md).
#[tokio::test(start_paused = true)]
async fn killed_transport_actors_lose_nothing() {
    kill_mid_stream(13, "transport/quic", false).await;
}

// The hub's `channels` supervisor itself: it starts every channel actor of
// the node again (the server's dedupe and cursor come back from the store).
#[tokio::test(start_paused = true)]
async fn killed_channels_supervisor_restarts_its_channels_and_loses_nothing() {
    kill_mid_stream(16, "channels", true).await;
}

#[tokio::test(start_paused = true)]
async fn class_b_replays_within_its_window_on_a_route_change_and_drops_the_oldest() {
    let store = MemStore::new();
    let cfg = fast_outbox().replay_window(4);
    let s = setup(
        14,
        &[PathKind::Quic, PathKind::Relay],
        Arc::new(store.clone()),
        cfg,
    )
    .await;
    let route = s.member.explain(&s.stream).await.unwrap().expect("routed");
    // Cut whichever path carries the stream: the next frames are lost.
    let used = route.path.expect("a path").kind;
    s.net
        .partition(used, &NodeId::new("m1"), &NodeId::new("hub"));
    let mut receipts = Vec::new();
    for k in 1..=6 {
        receipts.push((k, s.sender.send(k, SendOptions::class_b()).await.unwrap()));
    }
    // Never written to the store.
    store_drained(&store).await;
    assert_eq!(store.next_ids(&s.stream).unwrap(), (1, 1));
    // The window holds 4: the two oldest were dropped and their callers told.
    let mut replies = BTreeMap::new();
    for (k, r) in receipts {
        replies.insert(k, timeout(BOUND, r.reply()).await.expect("bounded"));
    }
    assert_eq!(replies[&1], Err(CommandError::Dropped));
    assert_eq!(replies[&2], Err(CommandError::Dropped));
    for k in 3..=6 {
        // Replayed on the other path after the failover.
        assert_eq!(replies[&k], Ok(k * 2), "class B {k}");
    }
    assert_eq!(
        s.ledger.snapshot(),
        BTreeMap::from([(3, 1), (4, 1), (5, 1), (6, 1)])
    );
    // A restart loses the window: its callers get `Closed`, never a hang.
    s.net.partition(
        if used == PathKind::Quic {
            PathKind::Relay
        } else {
            PathKind::Quic
        },
        &NodeId::new("m1"),
        &NodeId::new("hub"),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lost = s.sender.send(7, SendOptions::class_b()).await.unwrap();
    kill_and_await_restart(&s.member, &sender_actor_name(&s.stream)).await;
    assert_eq!(
        timeout(BOUND, lost.reply()).await.unwrap(),
        Err(CommandError::Closed)
    );
    s.member.shutdown().await;
    s.hub.shutdown().await;
}

//! Whole-system simulation driver (issue #16): a hub and members over the
//! memory transport, two paths each (`Quic` for the direct path, `Relay`
//! standing for the relay through the root: the root itself runs over QUIC
//! only, see the report), under tokio's paused clock, with a seeded
//! schedule of faults and crashes, then checked.
//!
//! Owns the schedule, the members' traffic and the checks; every behaviour
//! comes from the crate. One run is a pure function of its seed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::command::{
    AtomicHandler, CommandContext, SenderConfig, ServeConfig, sender_actor_name, server_actor_name,
};
use interlocking::channels::{
    CommandChannel, CommandError, CommandSender, OutboxConfig, SendOptions,
};
use interlocking::routing::{Need, RoutingConfig};
use interlocking::store::{AppTxn, MemStore, Store};
use interlocking::transports::PeerAddr;
use interlocking::transports::memory::{FlapSchedule, LinkFaults, MemoryNetwork};
use interlocking::transports::probe::ProbeConfig;
use interlocking::vocab::{ChannelKind, NodeId, PathId, PathKind, Role, StreamId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Probe timing of every node.
pub const PROBE: ProbeConfig = ProbeConfig {
    interval: Duration::from_millis(100),
    timeout: Duration::from_millis(300),
};

/// The hub's ledger table: (member, k) → times applied.
pub const LEDGER: &str = "sim-ledger";

/// Counts each applied command in the hub's store, atomically with its
/// dedupe record; replies `k * 2`.
pub struct SimLedger;

impl AtomicHandler for SimLedger {
    type Command = u64;
    type Reply = u64;
    fn handle(&self, txn: &mut dyn AppTxn, ctx: &CommandContext, k: u64) -> Result<u64, String> {
        let key = ledger_key(ctx.stream.as_str(), k);
        let n = match txn.get(LEDGER, &key).map_err(|e| e.to_string())? {
            Some(v) => u32::from_be_bytes(v.try_into().map_err(|_| "bad count")?),
            None => 0,
        };
        txn.insert(LEDGER, &key, &(n + 1).to_be_bytes())
            .map_err(|e| e.to_string())?;
        Ok(k * 2)
    }
}

fn ledger_key(stream: &str, k: u64) -> Vec<u8> {
    let mut key = stream.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&k.to_be_bytes());
    key
}

/// How big one run is.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Members sending to the hub.
    pub members: usize,
    /// Commands per member.
    pub commands: u64,
    /// Time between two commands of one member.
    pub interval: Duration,
    /// Scheduled events (faults and crashes).
    pub events: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            members: 2,
            commands: 40,
            interval: Duration::from_millis(150),
            events: 12,
        }
    }
}

/// What one run did and saw.
#[derive(Debug, Default)]
pub struct SimReport {
    /// Commands accepted by the members' senders.
    pub accepted: u64,
    /// Accepted but never applied.
    pub lost: u64,
    /// Extra applications beyond the first.
    pub duplicated: u64,
    /// Replies that were not `k * 2`.
    pub wrong_replies: u64,
    /// Commands whose receipt a sender-actor kill closed (applied all the
    /// same: the ledger counts them).
    pub unanswered: u64,
    /// How long each cut direct path carried the stream (partitions).
    pub failovers: Vec<Duration>,
    /// Events by kind.
    pub events: BTreeMap<&'static str, u32>,
}

fn routing() -> RoutingConfig {
    let mut c = RoutingConfig::default();
    c.health.misses_to_fail = 3;
    c
}

fn stream_of(member: usize) -> StreamId {
    StreamId::new(format!("command:m{member}/hub"))
}

/// Starts the hub on `store`. A memory transport dials once and never
/// again, so a restarted hub dials its members itself (as they would redial
/// a restarted hub over QUIC); dialling an open path changes nothing.
async fn spawn_hub(net: &MemoryNetwork, store: &Arc<dyn Store>, members: usize) -> Node {
    let mut hub = NodeBuilder::new("hub", Role::Hub)
        .routing(routing())
        .memory(net, PathKind::Quic, PROBE)
        .memory(net, PathKind::Relay, PROBE);
    for m in 1..=members {
        for kind in [PathKind::Quic, PathKind::Relay] {
            hub = hub.dial(kind, PeerAddr::node(NodeId::new(format!("m{m}"))));
        }
    }
    let hub = hub.spawn().await.expect("hub starts");
    for m in 1..=members {
        CommandChannel::serve_atomic(
            &hub,
            stream_of(m),
            NodeId::new(format!("m{m}")),
            SimLedger,
            store.clone(),
            ServeConfig::default(),
        )
        .await
        .expect("hub serves");
    }
    hub
}

/// The member's current route to the hub (`None`: none).
type Route = Arc<Mutex<Option<PathId>>>;

/// How long a stream may stay on a cut path: the first unanswered probe
/// goes out within one interval, is missed one timeout later, and each
/// further miss adds an interval; plus the worst scheduled latency, jitter
/// and reorder delay of the answers that were already on their way.
pub fn failover_bound() -> Duration {
    let misses = routing().health.misses_to_fail;
    PROBE.interval + PROBE.timeout + PROBE.interval * (misses - 1) + Duration::from_millis(100)
}

/// Kills the actor `name` of `node` if it runs (its supervisor restarts it).
fn kill(node: &Node, name: &str) -> bool {
    match node.actor(name) {
        Some(cell) => {
            cell.kill();
            true
        }
        None => false,
    }
}

/// Runs one seeded scenario to the end and checks it. Call under a paused
/// clock.
pub async fn run(seed: u64, cfg: SimConfig) -> SimReport {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let net = MemoryNetwork::new(seed);
    // Long soaks: the delivery trace is not needed, keep memory bounded.
    net.record_trace(false);
    let hub_store: Arc<dyn Store> = Arc::new(MemStore::new());
    let mut hub = Some(spawn_hub(&net, &hub_store, cfg.members).await);
    let mut members = Vec::new();
    let mut senders = Vec::new();
    let mut routes: Vec<Route> = Vec::new();
    for m in 1..=cfg.members {
        let node = NodeBuilder::new(NodeId::new(format!("m{m}")), Role::Member)
            .routing(routing())
            .memory(&net, PathKind::Quic, PROBE)
            .memory(&net, PathKind::Relay, PROBE)
            .dial(PathKind::Quic, PeerAddr::node("hub"))
            .dial(PathKind::Relay, PeerAddr::node("hub"))
            .spawn()
            .await
            .expect("member starts");
        let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
            &node,
            stream_of(m),
            NodeId::new("hub"),
            Arc::new(MemStore::new()),
            SenderConfig::default().outbox(
                OutboxConfig::default()
                    .max_in_flight(64)
                    .rto(Duration::from_millis(200), Duration::from_secs(1)),
            ),
        )
        .await
        .expect("sender starts");
        // Where the member's routing sends hub-bound command streams now.
        let route: Route = Arc::default();
        let sink = route.clone();
        node.register_stream(
            StreamId::new(format!("watch:m{m}/hub")),
            Need::node(ChannelKind::Command, NodeId::new("hub")),
            move |u| *sink.lock().unwrap() = u.decision.next.clone(),
        )
        .await
        .expect("routing runs");
        routes.push(route);
        members.push(node);
        senders.push(sender);
    }
    let mut report = SimReport::default();

    // The members' traffic: k = 1..=commands each, paced; replies checked.
    let mut traffic = Vec::new();
    for (i, sender) in senders.iter().enumerate() {
        let (sender, n, every) = (sender.clone(), cfg.commands, cfg.interval);
        traffic.push(tokio::spawn(async move {
            let mut receipts = Vec::new();
            let mut unanswered = 0u64;
            for k in 1..=n {
                tokio::time::sleep(every).await;
                // A send the restarting actor could not take is sent again
                // under the same operation key: stored once either way.
                let mut tries = 0;
                loop {
                    let opts = SendOptions::class_a().operation_key(format!("k{k}"));
                    match sender.send(k, opts).await {
                        Ok(r) => {
                            receipts.push((k, r));
                            break;
                        }
                        Err(CommandError::Closed) if tries < 100 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(CommandError::Duplicate { .. }) => {
                            unanswered += 1;
                            break;
                        }
                        Err(e) => panic!("member {}: send {k}: {e}", i + 1),
                    }
                }
            }
            let mut wrong = 0u64;
            for (k, r) in receipts {
                match tokio::time::timeout(Duration::from_secs(300), r.reply()).await {
                    Ok(Ok(v)) if v == k * 2 => {}
                    Ok(Ok(_)) => wrong += 1,
                    // The sender actor was killed after storing it: its
                    // restarted incarnation still delivers it (the ledger
                    // shows), but this receipt is gone.
                    Ok(Err(CommandError::Closed)) => unanswered += 1,
                    Ok(Err(e)) => panic!("member {}: reply {k}: {e}", i + 1),
                    Err(_) => panic!("member {}: no reply for {k} in 300 s", i + 1),
                }
            }
            (n, wrong, unanswered, sender)
        }));
    }

    // The schedule: faults and crashes at seeded moments.
    let kinds = [PathKind::Quic, PathKind::Relay];
    let verbose = std::env::var("SIM_SEED").is_ok();
    let started = tokio::time::Instant::now();
    let hub_id = NodeId::new("hub");
    for _ in 0..cfg.events {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1_200))).await;
        let m = rng.random_range(1..=cfg.members);
        let member = NodeId::new(format!("m{m}"));
        let kind = kinds[rng.random_range(0..2)];
        let what = match rng.random_range(0..8) {
            0 | 1 => {
                let f = LinkFaults {
                    latency: Duration::from_millis(rng.random_range(1..30)),
                    jitter: Duration::from_millis(rng.random_range(0..20)),
                    loss: rng.random_range(0.0..0.2),
                    duplicate: rng.random_range(0.0..0.1),
                    reorder: rng.random_range(0.0..0.2),
                    reorder_delay: Duration::from_millis(rng.random_range(1..40)),
                };
                net.set_faults_both(kind, &hub_id, &member, f);
                "faults"
            }
            2 => {
                // Only the direct path: the relay stays as the way round.
                let dark = Duration::from_millis(rng.random_range(800..3_000));
                let cut = tokio::time::Instant::now();
                net.partition(PathKind::Quic, &hub_id, &member);
                // The member's routing leaves the dead path within the
                // detection bound (probe interval, timeout, misses).
                let direct = PathId::new("hub", PathKind::Quic);
                while routes[m - 1].lock().unwrap().as_ref() == Some(&direct) {
                    let took = cut.elapsed();
                    assert!(
                        took <= failover_bound(),
                        "seed {seed}: m{m} still on the cut direct path after {took:?}                          (bound {:?})",
                        failover_bound()
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                report.failovers.push(cut.elapsed());
                tokio::time::sleep(dark.saturating_sub(cut.elapsed())).await;
                net.heal(PathKind::Quic, &hub_id, &member);
                "partition"
            }
            3 => {
                let flap = FlapSchedule {
                    start: tokio::time::Instant::now(),
                    up: Duration::from_millis(rng.random_range(100..800)),
                    down: Duration::from_millis(rng.random_range(100..800)),
                };
                net.set_flap(PathKind::Quic, &hub_id, &member, Some(flap));
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3_000))).await;
                net.set_flap(PathKind::Quic, &hub_id, &member, None);
                "flap"
            }
            4 => {
                if let Some(h) = &hub {
                    kill(h, &server_actor_name(&stream_of(m)));
                }
                "kill-server"
            }
            5 => {
                kill(&members[m - 1], &sender_actor_name(&stream_of(m)));
                "kill-sender"
            }
            6 => {
                // A node restart on the same store.
                if let Some(h) = hub.take() {
                    h.shutdown().await;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
                hub = Some(spawn_hub(&net, &hub_store, cfg.members).await);
                "restart-hub"
            }
            _ => {
                net.set_faults_both(kind, &hub_id, &member, LinkFaults::default());
                "calm"
            }
        };
        *report.events.entry(what).or_default() += 1;
        if verbose {
            eprintln!(
                "sim seed {seed}: {:?}: {what} m{m} {kind:?}",
                started.elapsed()
            );
        }
    }
    // Faults end; everything accepted must arrive.
    for m in 1..=cfg.members {
        let member = NodeId::new(format!("m{m}"));
        for kind in kinds {
            net.set_faults_both(kind, &hub_id, &member, LinkFaults::default());
            net.heal(kind, &hub_id, &member);
            net.set_flap(kind, &hub_id, &member, None);
        }
    }
    for t in traffic {
        let (n, wrong, unanswered, sender) = t.await.expect("traffic task");
        report.accepted += n;
        report.wrong_replies += wrong;
        report.unanswered += unanswered;
        // Receipts lost to a sender kill: wait for its outbox to drain.
        let mut waited = 0;
        while sender.stats().pending.load(Ordering::Relaxed) > 0 {
            assert!(waited < 3_000, "seed {seed}: outbox not drained in 300 s");
            waited += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for m in 1..=cfg.members {
        let stream = stream_of(m);
        for k in 1..=cfg.commands {
            let key = ledger_key(stream.as_str(), k);
            match hub_store.app_get(LEDGER, &key).expect("ledger read") {
                None => report.lost += 1,
                Some(v) => {
                    let n = u32::from_be_bytes(v.try_into().expect("count"));
                    report.duplicated += u64::from(n.saturating_sub(1));
                }
            }
        }
    }
    let total = hub_store.app_len(LEDGER).expect("ledger len");
    assert!(
        total <= report.accepted,
        "seed {seed}: {total} ledger keys for {} accepted",
        report.accepted
    );
    for m in members {
        m.shutdown().await;
    }
    if let Some(h) = hub {
        h.shutdown().await;
    }
    report
}

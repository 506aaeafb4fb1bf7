//! The hub–root–member demo topology, shared by `examples/hub_root_member.rs`,
//! `examples/bench.rs` and the tests that run it (`#[path]`-included; it is
//! not part of the library).
//!
//! Owns the wiring of one whole system out of the crate's parts — nothing
//! else: every behaviour shown comes from the library. A root, a hub and
//! members on one loopback, each its own node with its own QUIC endpoint,
//! joined through the root's admission and sending class-A commands to a
//! recording handler ([`Ledger`]) on the hub; the stream prefers the direct
//! QUIC path and falls back to the relay through the root. A seeded chaos
//! schedule blackholes the members' direct paths (a fault-injecting socket
//! beneath quinn) and restores them.
#![allow(dead_code)] // each including crate uses a different part

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::command::{
    CommandChannel, CommandHandler, CommandSender, SendOptions, SenderConfig, ServeConfig,
};
use interlocking::root::{Root, RootConfig, RootHandle, join};
use interlocking::routing::{Decision, RoutingConfig, Rule};
use interlocking::store::RedbStore;

use interlocking::transports::PeerAddr;
use interlocking::transports::quic::QuicConfig;
use interlocking::transports::quic::faults::FaultHandle;
use interlocking::transports::relay::RelayConfig;
use interlocking::vocab::{ChannelKind, NodeId, PathKind, Role, StreamId};

/// How to run [`hub_root_member`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Seeds the chaos schedule and the fault sockets.
    pub seed: u64,
    /// How many members send commands to the hub.
    pub members: usize,
    /// Blackhole the direct path this many times (0: no chaos).
    pub chaos_cycles: u32,
    /// Without chaos: how long the members send.
    pub duration: Duration,
    /// Time between two commands of one member.
    pub interval: Duration,
    /// Routing policies of every node.
    pub routing: RoutingConfig,
    /// Quiet spell before each blackholing, drawn from this range (ms).
    pub quiet_ms: (u64, u64),
    /// How long each blackholing lasts, drawn from this range (ms).
    pub dark_ms: (u64, u64),
    /// Blackhole members in turn (member 1, 2, …) instead of at random.
    pub round_robin: bool,
    /// After each restore, wait until the stream is back on direct before
    /// the next cycle (off: measure failovers only, cycles overlap less).
    pub wait_for_return: bool,
    /// Where the nodes keep their redb files (a fresh folder per run is
    /// made inside it and removed at the end).
    pub state_dir: PathBuf,
}

impl Options {
    /// Two members, one command per 20 ms each, no chaos, a quick routing
    /// policy ([`quick_policy`]) and state in the system's temp folder.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            members: 2,
            chaos_cycles: 0,
            duration: Duration::from_secs(5),
            interval: Duration::from_millis(20),
            routing: quick_policy(),
            quiet_ms: (500, 2_000),
            dark_ms: (1_000, 2_500),
            round_robin: false,
            wait_for_return: true,
            state_dir: std::env::temp_dir(),
        }
    }
}

/// The production defaults with a short command freeze (2 s, growing with
/// flaps up to 8 s) and hold-down (1 s), so a demo shows several failovers
/// and returns within a minute.
pub fn quick_policy() -> RoutingConfig {
    let mut r = RoutingConfig::default();
    r.command.freeze = Duration::from_secs(2);
    r.command.hold_down = Duration::from_secs(1);
    r.command.flap.cap = Duration::from_secs(8);
    r
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
}

impl Percentiles {
    fn of(mut ms: Vec<u64>) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_unstable();
        let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
        Self {
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

/// What a run measured. Printed as one JSON object by the example.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The chaos seed.
    pub seed: u64,
    /// Commands durably accepted by the members' outboxes.
    pub commands_sent: u64,
    /// Distinct commands the hub's handler applied.
    pub commands_applied: u64,
    /// Accepted commands never applied.
    pub lost: u64,
    /// Applications beyond the first of one command.
    pub duplicates_applied: u64,
    /// Route switches of the members' streams.
    pub path_switches: u64,
    /// Failovers to the relay.
    pub failovers: u64,
    /// Voluntary returns to the direct path.
    pub returns_to_direct: u64,
    /// Voluntary returns decided before the freeze deadline (must be 0).
    pub returns_inside_freeze: u64,
    /// From blackholing a member's direct path to the first reply it gets
    /// for a command applied via the relay.
    pub failover_ms: Percentiles,
    /// Every failover sample, in cycle order (ms).
    pub failover_samples_ms: Vec<u64>,
    /// Replies received by blackholed members after their failover and
    /// before the heal: they can only have come over the relay.
    pub replies_while_dark: u64,
    /// Time the members' streams spent on the relay, summed.
    pub time_on_relay_ms: u64,
    /// How many times a direct path was blackholed.
    pub blackholings: u64,
    /// Wall-clock length of the run.
    pub run_ms: u64,
    /// From the members' first commands until every stream was on its
    /// direct path.
    pub settle_ms: u64,
    /// From blackholing a member's direct path to the routing decision
    /// that left it (failover or no path): detection plus decision.
    pub detection_ms: Percentiles,
    /// Every detection sample, in cycle order (ms).
    pub detection_samples_ms: Vec<u64>,
}

/// A command of the demo: which member sent it and its number.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Move {
    /// The sending member.
    pub member: String,
    /// 1, 2, 3 … per member.
    pub k: u64,
}

/// The hub's handler: records every application in a ledger.
#[derive(Clone, Default)]
pub struct Ledger {
    applied: Arc<Mutex<HashMap<(String, u64), u64>>>,
}

impl Ledger {
    /// (distinct commands applied, applications beyond the first).
    pub fn counts(&self) -> (u64, u64) {
        let applied = lock(&self.applied);
        let dups = applied.values().map(|n| n - 1).sum();
        (applied.len() as u64, dups)
    }

    /// Whether command `k` of `member` was applied.
    pub fn contains(&self, member: &str, k: u64) -> bool {
        let applied = lock(&self.applied);
        applied.contains_key(&(member.to_string(), k))
    }
}

#[async_trait]
impl CommandHandler for Ledger {
    type Command = Move;
    type Reply = u64;

    async fn handle(&self, cmd: Move) -> Result<u64, String> {
        let mut applied = lock(&self.applied);
        *applied.entry((cmd.member, cmd.k)).or_insert(0) += 1;
        Ok(cmd.k)
    }
}

/// Locks `m`, recovering from poisoning (a panicked holder leaves the data
/// as it was).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A boxed error for the topology's set-up steps.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The library's defaults throughout: probes, reconnect backoff, idle and
/// handshake timeouts (the figures this topology reports are the ones a user
/// gets without tuning).
fn quic_config(
    identity: interlocking::trust::NodeIdentity,
    roots: interlocking::trust::TrustRoots,
) -> QuicConfig {
    QuicConfig::new(identity, roots)
}

struct Member {
    name: String,
    node: Node,
    stream: StreamId,
    faults: FaultHandle,
    sender: CommandSender<Move, u64>,
}

/// Joins `name` through the root's admission and builds its node: direct
/// QUIC (optionally over a fault socket) plus the relay through the root.
async fn admitted(
    root: &RootHandle,
    name: &str,
    role: Role,
    routing: &RoutingConfig,
    faults: Option<FaultHandle>,
) -> Result<NodeBuilder, Error> {
    let node = NodeId::new(name);
    let token = root.issue_token(&node, role, None)?.to_string();
    let joined = join(
        root.join_addr(),
        root.node(),
        &token,
        &node,
        role,
        Duration::from_secs(10),
    )
    .await?;
    let quic = quic_config(joined.identity.clone(), joined.roots.clone());
    let relay = RelayConfig::new(quic.clone(), root.peer_addr());
    let builder = NodeBuilder::new(name, role).routing(routing.clone());
    let builder = match faults {
        Some(f) => builder.quic_with_faults(quic, f),
        None => builder.quic(quic),
    };
    Ok(builder.relay(relay))
}

/// Per-stream route bookkeeping from the decision log.
#[derive(Default)]
struct RouteLog {
    kind: Option<PathKind>,
    on_relay_since: Option<Instant>,
    on_relay: Duration,
    /// The freeze deadline set by the last switch.
    freeze_until: Option<std::time::Instant>,
    /// When the stream last failed over to the relay.
    failed_over_at: Option<Instant>,
    /// When a decision (at its own instant) last took the stream off the
    /// direct path, since the current blackholing.
    left_direct_at: Option<std::time::Instant>,
}

/// Reads route decisions into the report as they arrive.
struct Observer<'a, L: Fn(String)> {
    log: &'a L,
    started: Instant,
    decisions: tokio::sync::mpsc::UnboundedReceiver<Decision>,
    routes: BTreeMap<StreamId, RouteLog>,
    report: Report,
}

impl<L: Fn(String)> Observer<'_, L> {
    /// Takes in every decision that has arrived.
    fn pump(&mut self) {
        while let Ok(d) = self.decisions.try_recv() {
            self.take(d);
        }
    }

    fn take(&mut self, d: Decision) {
        let now = Instant::now();
        (self.log)(format!(
            "{:>8.3}s  {d}",
            now.duration_since(self.started).as_secs_f64()
        ));
        let r = self.routes.entry(d.stream.clone()).or_default();
        let next_kind = d.next.as_ref().map(|p| p.kind);
        let was_direct = d.previous.as_ref().map(|p| p.kind) == Some(PathKind::Quic);
        if was_direct && next_kind != Some(PathKind::Quic) && r.left_direct_at.is_none() {
            r.left_direct_at = Some(d.at);
        }
        if d.is_switch() {
            self.report.path_switches += 1;
            if d.rule == Rule::ReturnToPreferred {
                if next_kind == Some(PathKind::Quic) {
                    self.report.returns_to_direct += 1;
                }
                if r.freeze_until.is_some_and(|f| d.at < f) {
                    self.report.returns_inside_freeze += 1;
                }
            }
            if d.rule == Rule::Failover && next_kind == Some(PathKind::Relay) {
                self.report.failovers += 1;
                r.failed_over_at = Some(now);
            }
            r.freeze_until = d.freeze_until;
        }
        if next_kind != r.kind {
            if let Some(since) = r.on_relay_since.take() {
                r.on_relay += now - since;
            }
            if next_kind == Some(PathKind::Relay) {
                r.on_relay_since = Some(now);
            }
            r.kind = next_kind;
        }
    }

    fn kind(&self, stream: &StreamId) -> Option<PathKind> {
        self.routes.get(stream).and_then(|r| r.kind)
    }

    /// Steps (10 ms at a time) until `until`, or until `done` holds.
    async fn run_until(&mut self, until: Instant, mut done: impl FnMut(&Self) -> bool) {
        while Instant::now() < until {
            self.pump();
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.pump();
    }
}

/// Runs the hub–root–member topology and reports what happened. `log`
/// receives one human line per route decision and chaos event.
pub async fn hub_root_member(opts: Options, log: impl Fn(String)) -> Result<Report, Error> {
    interlocking::trust::ensure_crypto_provider();
    let started = Instant::now();
    let dir = opts.state_dir.join(format!(
        "interlocking-hrm-{}-{}",
        std::process::id(),
        opts.seed
    ));
    std::fs::create_dir_all(&dir)?;
    let result = run(&opts, &dir, &log, started).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(
    opts: &Options,
    dir: &std::path::Path,
    log: &impl Fn(String),
    started: Instant,
) -> Result<Report, Error> {
    let root = Root::spawn(RootConfig::default()).await?;

    let hub = admitted(&root, "hub", Role::Hub, &opts.routing, None)
        .await?
        .spawn()
        .await?;
    let hub_addr = hub
        .listen_addr(PathKind::Quic)
        .ok_or("hub has no QUIC address")?;
    let hub_store = Arc::new(RedbStore::open(dir.join("hub.redb"))?);
    let ledger = Ledger::default();

    let mut members = Vec::new();
    for i in 1..=opts.members {
        let name = format!("member-{i}");
        // `docs/wire.md` §4.1: `<kind>:<sender>/<receiver>`; the hub serves
        // one command stream per member.
        let stream = StreamId::between(
            ChannelKind::Command,
            &NodeId::new(name.as_str()),
            &NodeId::new("hub"),
            None,
        );
        CommandChannel::serve(
            &hub,
            stream.clone(),
            NodeId::new(&name),
            ledger.clone(),
            hub_store.clone(),
            ServeConfig::default(),
        )
        .await?;
        let faults = FaultHandle::new(opts.seed ^ i as u64);
        let node = admitted(
            &root,
            &name,
            Role::Member,
            &opts.routing,
            Some(faults.clone()),
        )
        .await?
        .dial(PathKind::Quic, PeerAddr::at("hub", hub_addr))
        .dial(PathKind::Relay, PeerAddr::node("hub"))
        .spawn()
        .await?;
        let store = Arc::new(RedbStore::open(dir.join(format!("{name}.redb")))?);
        let sender = CommandChannel::spawn_sender::<Move, u64>(
            &node,
            stream.clone(),
            NodeId::new("hub"),
            store,
            SenderConfig::default(),
        )
        .await?;
        members.push(Member {
            name,
            node,
            stream,
            faults,
            sender,
        });
    }

    // Route decisions of every member's stream, as they happen.
    let (dtx, decisions) = tokio::sync::mpsc::unbounded_channel::<Decision>();
    for m in &members {
        let mut rx = m.node.decisions();
        let dtx = dtx.clone();
        let stream = m.stream.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(d) if d.stream == stream => {
                        if dtx.send(d).is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
    drop(dtx);

    // Members send until told to stop; replies are awaited in the
    // background and timestamped.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let replies: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let mut senders = Vec::new();
    for m in &members {
        let (sender, name, stop, replies, interval) = (
            m.sender.clone(),
            m.name.clone(),
            stop.clone(),
            replies.clone(),
            opts.interval,
        );
        senders.push(tokio::spawn(async move {
            let mut accepted = 0u64;
            let mut waiting = Vec::new();
            let mut tick = tokio::time::interval(interval);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let cmd = Move {
                    member: name.clone(),
                    k: accepted + 1,
                };
                if let Ok(receipt) = sender.send(cmd, SendOptions::class_a()).await {
                    accepted += 1;
                    let (replies, name) = (replies.clone(), name.clone());
                    waiting.push(tokio::spawn(async move {
                        let ok = receipt.reply().await.is_ok();
                        if ok {
                            lock(&replies).push((name, Instant::now()));
                        }
                    }));
                }
            }
            (accepted, waiting)
        }));
    }

    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut obs = Observer {
        log,
        started,
        decisions,
        routes: BTreeMap::new(),
        report: Report {
            seed: opts.seed,
            ..Report::default()
        },
    };

    // Settle: every stream on its direct path.
    let streams: Vec<StreamId> = members.iter().map(|m| m.stream.clone()).collect();
    let sending = Instant::now();
    obs.run_until(sending + Duration::from_secs(15), |o| {
        streams.iter().all(|s| o.kind(s) == Some(PathKind::Quic))
    })
    .await;
    if let Some(s) = streams.iter().find(|s| obs.kind(s) != Some(PathKind::Quic)) {
        return Err(format!(
            "streams did not settle on the direct path within 15 s ({s} on {:?})",
            obs.kind(s)
        )
        .into());
    }
    obs.report.settle_ms = sending.elapsed().as_millis() as u64;

    if opts.chaos_cycles == 0 {
        obs.run_until(Instant::now() + opts.duration, |_| false)
            .await;
    }
    let mut failover_ms = Vec::new();
    let mut detection_ms = Vec::new();
    for cycle in 1..=opts.chaos_cycles {
        // A seeded quiet spell, then one member's direct path goes dark.
        let quiet = Duration::from_millis(rng.random_range(opts.quiet_ms.0..=opts.quiet_ms.1));
        let dark = Duration::from_millis(rng.random_range(opts.dark_ms.0..=opts.dark_ms.1));
        let victim = if opts.round_robin {
            &members[(cycle as usize - 1) % members.len()]
        } else {
            &members[rng.random_range(0..members.len())]
        };
        obs.run_until(Instant::now() + quiet, |_| false).await;
        log(format!(
            "{:>8.3}s  chaos {cycle}/{}: {}'s direct path blackholed for {dark:?}",
            started.elapsed().as_secs_f64(),
            opts.chaos_cycles,
            victim.name,
        ));
        lock(&replies).clear();
        victim.faults.set_blackhole(true);
        obs.report.blackholings += 1;
        let cut = Instant::now();
        if let Some(r) = obs.routes.get_mut(&victim.stream) {
            r.failed_over_at = None;
            r.left_direct_at = None;
        }
        // The first reply to the victim after its failover is a command
        // applied via the relay.
        let relayed_reply = |o: &Observer<'_, _>| {
            let fo = o.routes.get(&victim.stream)?.failed_over_at?;
            let replies = lock(&replies);
            replies
                .iter()
                .find(|(m, at)| *m == victim.name && *at >= fo)
                .map(|(_, at)| at.duration_since(cut))
        };
        let mut measured = None;
        obs.run_until(cut + dark, |o| {
            measured = measured.or_else(|| relayed_reply(o));
            false
        })
        .await;
        victim.faults.set_blackhole(false);
        let healed = Instant::now();
        if let Some(fo) = obs
            .routes
            .get(&victim.stream)
            .and_then(|r| r.failed_over_at)
        {
            let replies = lock(&replies);
            obs.report.replies_while_dark += replies
                .iter()
                .filter(|(m, at)| *m == victim.name && *at >= fo && *at < healed)
                .count() as u64;
        }
        log(format!(
            "{:>8.3}s  chaos {cycle}/{}: {}'s direct path restored",
            started.elapsed().as_secs_f64(),
            opts.chaos_cycles,
            victim.name
        ));
        // Wait (bounded) for the victim's stream to return to direct, or
        // only for its failover to be measured.
        let wait_return = opts.wait_for_return;
        obs.run_until(Instant::now() + Duration::from_secs(60), |o| {
            measured = measured.or_else(|| relayed_reply(o));
            if wait_return {
                o.kind(&victim.stream) == Some(PathKind::Quic)
            } else {
                measured.is_some()
                    || o.routes
                        .get(&victim.stream)
                        .is_some_and(|r| r.failed_over_at.is_none())
            }
        })
        .await;
        if let Some(ms) = measured {
            failover_ms.push(ms.as_millis() as u64);
        }
        if let Some(at) = obs
            .routes
            .get(&victim.stream)
            .and_then(|r| r.left_direct_at)
        {
            let ms = at.saturating_duration_since(cut.into_std()).as_millis() as u64;
            detection_ms.push(ms);
        }
    }

    // Stop sending, then wait (bounded) for every accepted command's reply.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut waiting = Vec::new();
    for s in senders {
        let (accepted, w) = s.await?;
        obs.report.commands_sent += accepted;
        waiting.extend(w);
    }
    let drain = async {
        for w in waiting {
            let _ = w.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), drain)
        .await
        .is_err()
    {
        log("some replies did not arrive within 60 s of the end".to_string());
    }
    obs.pump();
    let mut report = std::mem::take(&mut obs.report);
    let (applied, dups) = ledger.counts();
    report.commands_applied = applied;
    report.duplicates_applied = dups;
    report.lost = report.commands_sent.saturating_sub(applied);
    let now = Instant::now();
    report.time_on_relay_ms = obs
        .routes
        .values()
        .map(|r| r.on_relay + r.on_relay_since.map(|s| now - s).unwrap_or_default())
        .sum::<Duration>()
        .as_millis() as u64;
    report.failover_ms = Percentiles::of(failover_ms.clone());
    report.failover_samples_ms = failover_ms;
    report.detection_ms = Percentiles::of(detection_ms.clone());
    report.detection_samples_ms = detection_ms;
    report.run_ms = started.elapsed().as_millis() as u64;

    for m in members {
        m.node.shutdown().await;
    }
    hub.shutdown().await;
    root.shutdown().await;
    Ok(report)
}

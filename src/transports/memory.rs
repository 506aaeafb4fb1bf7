//! The in-memory transport: any number of nodes in one process, with seeded
//! per-link fault injection.
//!
//! Owns simulated links between [`MemoryTransport`]s bound on one
//! [`MemoryNetwork`]: latency and jitter, loss, duplication, reordering,
//! partition and heal, and flap schedules. It is real transport code — it
//! implements [`Transport`], probes liveness with [`Prober`] and reports the
//! same facts a socket transport would — used by deterministic tests,
//! examples and simulations. It runs on tokio's clock, so under a paused
//! clock a whole scenario runs in virtual time.
//!
//! Determinism: every directed link has its own RNG seeded from the network
//! seed and the link's endpoints, and one delivery task that releases frames
//! in (delivery time, send order) order. The same seed and the same sends
//! give the same [`TraceEntry`] log.
//!
//! A memory transport stands for one path kind: bind one per kind to give a
//! node several paths (say `Quic` and `Relay`) to the same peer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::probe::{ProbeConfig, Prober};
use super::{
    ConnectError, DownCause, EventSink, Fact, PeerAddr, SendError, Transport, TransportEvent,
};
use crate::sync::lock;
use crate::vocab::{NodeId, PathId, PathKind};
use crate::wire::{Frame, FrameKind, ProbeAck};

/// Faults applied to frames on one directed link.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkFaults {
    /// Base one-way delay.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per frame.
    pub jitter: Duration,
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability that a frame is held back by `reorder_delay`, letting
    /// later frames overtake it.
    pub reorder: f64,
    /// Extra delay of a reordered frame.
    pub reorder_delay: Duration,
}

impl Default for LinkFaults {
    fn default() -> Self {
        Self {
            latency: Duration::from_micros(200),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
        }
    }
}

/// A link that goes down and up on a fixed period, starting up at `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlapSchedule {
    /// When the schedule begins (the link is up from then for `up`).
    pub start: Instant,
    /// Time up in each period.
    pub up: Duration,
    /// Time down (blackholed) in each period.
    pub down: Duration,
}

impl FlapSchedule {
    /// Whether the link is down at `now` under this schedule.
    pub fn is_down(&self, now: Instant) -> bool {
        if now < self.start {
            return false;
        }
        let period = self.up + self.down;
        if period.is_zero() {
            return false;
        }
        let into = now.duration_since(self.start).as_nanos() % period.as_nanos();
        into >= self.up.as_nanos()
    }
}

/// What happened to one frame at the moment it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered after the given delay (one entry per copy).
    Delivered(Duration),
    /// Lost to random loss.
    Lost,
    /// Dropped because the link was partitioned or in a flap's down phase.
    Blackholed,
}

/// One record of the delivery trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    /// Time since the network was created.
    pub at: Duration,
    /// The path kind of the link.
    pub kind: PathKind,
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// Per-link send counter.
    pub seq: u64,
    /// The kind of frame sent.
    pub frame: FrameKind,
    /// What happened to each copy.
    pub outcomes: Vec<Outcome>,
}

type LinkKey = (PathKind, NodeId, NodeId);

/// One scheduled delivery: released at `at`, ties broken by `order`.
struct Scheduled {
    at: Instant,
    order: u64,
    frame: Frame,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

struct Link {
    faults: LinkFaults,
    partitioned: bool,
    flap: Option<FlapSchedule>,
    rng: ChaCha8Rng,
    seq: u64,
    /// Feeds the link's delivery task.
    tx: mpsc::UnboundedSender<Scheduled>,
    task: JoinHandle<()>,
}

struct Net {
    seed: u64,
    created: Instant,
    default_faults: LinkFaults,
    transports: HashMap<(PathKind, NodeId), Weak<Inner>>,
    links: HashMap<LinkKey, Link>,
    trace: Vec<TraceEntry>,
    record_trace: bool,
}

/// A simulated network that memory transports bind to.
///
/// Cheap to clone; clones share the network.
#[derive(Clone)]
pub struct MemoryNetwork {
    net: Arc<Mutex<Net>>,
}

impl MemoryNetwork {
    /// A network whose link RNGs derive from `seed`. Links start with
    /// [`LinkFaults::default`] (a small latency, no faults).
    pub fn new(seed: u64) -> Self {
        Self {
            net: Arc::new(Mutex::new(Net {
                seed,
                created: Instant::now(),
                default_faults: LinkFaults::default(),
                transports: HashMap::new(),
                links: HashMap::new(),
                trace: Vec::new(),
                record_trace: true,
            })),
        }
    }

    /// The seed the network was created with.
    pub fn seed(&self) -> u64 {
        self.lock().seed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Net> {
        lock(&self.net)
    }

    /// Sets the faults that links created from now on start with.
    pub fn set_default_faults(&self, faults: LinkFaults) {
        self.lock().default_faults = faults;
    }

    /// Turns recording of the delivery trace on or off (on by default; long
    /// runs may turn it off to bound memory).
    pub fn record_trace(&self, on: bool) {
        self.lock().record_trace = on;
    }

    /// Binds a transport of `kind` for `node`, delivering its events to
    /// `events`.
    pub fn bind(
        &self,
        node: impl Into<NodeId>,
        kind: PathKind,
        events: impl Into<EventSink>,
        probe: ProbeConfig,
    ) -> Arc<MemoryTransport> {
        let node = node.into();
        let events = events.into();
        let inner = Arc::new(Inner {
            node: node.clone(),
            kind,
            events,
            probe,
            network: self.clone(),
            peers: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        self.lock()
            .transports
            .insert((kind, node), Arc::downgrade(&inner));
        Arc::new(MemoryTransport { inner })
    }

    /// Sets the faults of the directed link `from → to` of `kind`.
    pub fn set_faults(&self, kind: PathKind, from: &NodeId, to: &NodeId, faults: LinkFaults) {
        self.with_link(kind, from, to, |l| l.faults = faults);
    }

    /// Sets the faults of both directions between `a` and `b`.
    pub fn set_faults_both(&self, kind: PathKind, a: &NodeId, b: &NodeId, faults: LinkFaults) {
        self.set_faults(kind, a, b, faults.clone());
        self.set_faults(kind, b, a, faults);
    }

    /// Blackholes both directions between `a` and `b` until [`heal`](Self::heal).
    pub fn partition(&self, kind: PathKind, a: &NodeId, b: &NodeId) {
        self.with_link(kind, a, b, |l| l.partitioned = true);
        self.with_link(kind, b, a, |l| l.partitioned = true);
    }

    /// Ends a partition between `a` and `b`.
    pub fn heal(&self, kind: PathKind, a: &NodeId, b: &NodeId) {
        self.with_link(kind, a, b, |l| l.partitioned = false);
        self.with_link(kind, b, a, |l| l.partitioned = false);
    }

    /// Makes both directions between `a` and `b` follow a flap schedule
    /// (`None` removes it).
    pub fn set_flap(&self, kind: PathKind, a: &NodeId, b: &NodeId, flap: Option<FlapSchedule>) {
        self.with_link(kind, a, b, |l| l.flap = flap);
        self.with_link(kind, b, a, |l| l.flap = flap);
    }

    fn with_link(&self, kind: PathKind, from: &NodeId, to: &NodeId, f: impl FnOnce(&mut Link)) {
        let mut guard = self.lock();
        f(self.link(&mut guard, kind, from, to));
    }

    /// The delivery trace so far.
    pub fn trace(&self) -> Vec<TraceEntry> {
        self.lock().trace.clone()
    }

    fn lookup(&self, kind: PathKind, node: &NodeId) -> Option<Arc<Inner>> {
        self.lock()
            .transports
            .get(&(kind, node.clone()))
            .and_then(Weak::upgrade)
    }

    /// Applies the link's faults to `frame` and schedules its copies.
    fn transmit(&self, kind: PathKind, from: &NodeId, to: &NodeId, frame: Frame) {
        let mut guard = self.lock();
        let net = &mut *guard;
        let now = Instant::now();
        let at = now.duration_since(net.created);
        let record = net.record_trace;
        let link = self.link(net, kind, from, to);
        link.seq += 1;
        let seq = link.seq;
        let down = link.partitioned || link.flap.is_some_and(|f| f.is_down(now));
        let mut outcomes = Vec::with_capacity(1);
        let frame_kind = frame.kind();
        if down {
            outcomes.push(Outcome::Blackholed);
        } else if link.rng.random_bool(link.faults.loss.clamp(0.0, 1.0)) {
            outcomes.push(Outcome::Lost);
        } else {
            let copies = if link.rng.random_bool(link.faults.duplicate.clamp(0.0, 1.0)) {
                2
            } else {
                1
            };
            for copy in 0..copies {
                let mut delay = link.faults.latency;
                if !link.faults.jitter.is_zero() {
                    let j = link
                        .rng
                        .random_range(0..=link.faults.jitter.as_micros() as u64);
                    delay += Duration::from_micros(j);
                }
                if link.rng.random_bool(link.faults.reorder.clamp(0.0, 1.0)) {
                    delay += link.faults.reorder_delay;
                }
                outcomes.push(Outcome::Delivered(delay));
                // The delivery task lives as long as the network; if it is
                // gone the network is being torn down and the frame with it.
                let _ = link.tx.send(Scheduled {
                    at: now + delay,
                    order: seq * 2 + copy,
                    frame: frame.clone(),
                });
            }
        }
        if record {
            net.trace.push(TraceEntry {
                at,
                kind,
                from: from.clone(),
                to: to.clone(),
                seq,
                frame: frame_kind,
                outcomes,
            });
        }
    }

    /// The directed link `from → to`, created with the default faults and
    /// its own delivery task on first use.
    fn link<'a>(
        &self,
        net: &'a mut Net,
        kind: PathKind,
        from: &NodeId,
        to: &NodeId,
    ) -> &'a mut Link {
        let key = (kind, from.clone(), to.clone());
        let seed = link_seed(net.seed, &key);
        let default_faults = net.default_faults.clone();
        net.links.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(deliver_loop(
                Arc::downgrade(&self.net),
                kind,
                from.clone(),
                to.clone(),
                rx,
            ));
            Link {
                faults: default_faults,
                partitioned: false,
                flap: None,
                rng: ChaCha8Rng::seed_from_u64(seed),
                seq: 0,
                tx,
                task,
            }
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for link in self.links.values() {
            link.task.abort();
        }
    }
}

/// A stable per-link seed (FNV-1a over the network seed and the link's
/// endpoints), independent of the standard library's hasher.
fn link_seed(seed: u64, (kind, from, to): &LinkKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&seed.to_le_bytes());
    eat(kind.as_str().as_bytes());
    eat(&[0]);
    eat(from.as_str().as_bytes());
    eat(&[0]);
    eat(to.as_str().as_bytes());
    h
}

/// Releases one directed link's frames in (delivery time, send order).
async fn deliver_loop(
    net: Weak<Mutex<Net>>,
    kind: PathKind,
    from: NodeId,
    to: NodeId,
    mut rx: mpsc::UnboundedReceiver<Scheduled>,
) {
    let mut heap: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
    loop {
        let next = heap.peek().map(|Reverse(s)| s.at);
        tokio::select! {
            biased;
            item = rx.recv() => match item {
                Some(s) => heap.push(Reverse(s)),
                None => return,
            },
            _ = sleep_until_opt(next) => {
                let Some(Reverse(s)) = heap.pop() else { continue };
                let Some(net) = net.upgrade() else { return };
                let network = MemoryNetwork { net };
                let Some(dest) = network.lookup(kind, &to) else { continue };
                dest.receive(&from, s.frame).await;
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Per-peer state of one transport: the probe task and how to feed it.
struct PeerEntry {
    acks: mpsc::UnboundedSender<(Instant, ProbeAck)>,
    prober: JoinHandle<()>,
}

struct Inner {
    node: NodeId,
    kind: PathKind,
    events: EventSink,
    probe: ProbeConfig,
    network: MemoryNetwork,
    peers: Mutex<HashMap<NodeId, PeerEntry>>,
    closed: AtomicBool,
}

impl Inner {
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, PeerEntry>> {
        lock(&self.peers)
    }

    fn path(&self, peer: &NodeId) -> PathId {
        PathId::new(peer.clone(), self.kind)
    }

    async fn report(&self, peer: &NodeId, fact: Fact) {
        // The node that consumes events may be shutting down; a fact nobody
        // listens to any more is dropped with it.
        let _ = self
            .events
            .send(TransportEvent {
                path: self.path(peer),
                fact,
            })
            .await;
    }

    /// Opens the local half of a path to `peer`; returns whether it was new.
    fn open(&self, peer: &NodeId) -> bool {
        let mut peers = self.peers();
        if peers.contains_key(peer) || self.closed.load(Ordering::Acquire) {
            return false;
        }
        let (acks, rx) = mpsc::unbounded_channel();
        let prober = tokio::spawn(probe_loop(
            self.network.clone(),
            self.kind,
            self.node.clone(),
            peer.clone(),
            self.events.clone(),
            self.probe,
            rx,
        ));
        peers.insert(peer.clone(), PeerEntry { acks, prober });
        true
    }

    /// Closes the local half of a path; returns whether it was open.
    fn shut(&self, peer: &NodeId) -> bool {
        match self.peers().remove(peer) {
            Some(entry) => {
                entry.prober.abort();
                true
            }
            None => false,
        }
    }

    /// A frame arrived from `from` on this transport's link.
    async fn receive(&self, from: &NodeId, frame: Frame) {
        let ack_tx = match self.peers().get(from) {
            Some(entry) => entry.acks.clone(),
            // No open path from that peer: the frame falls on the floor,
            // as on a socket that has been closed.
            None => return,
        };
        match frame {
            Frame::Probe(p) => {
                let ack = ProbeAck {
                    nonce: p.nonce,
                    sent_at_us: p.sent_at_us,
                };
                self.network
                    .transmit(self.kind, &self.node, from, Frame::ProbeAck(ack));
            }
            Frame::ProbeAck(ack) => {
                let _ = ack_tx.send((Instant::now(), ack));
            }
            frame => self.report(from, Fact::Frame(frame)).await,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, entry) in self.peers().drain() {
            entry.prober.abort();
        }
    }
}

/// Probes one peer on the transport's interval and reports answers and
/// misses.
async fn probe_loop(
    network: MemoryNetwork,
    kind: PathKind,
    me: NodeId,
    peer: NodeId,
    events: EventSink,
    config: ProbeConfig,
    mut acks: mpsc::UnboundedReceiver<(Instant, ProbeAck)>,
) {
    let start = Instant::now();
    let mut prober = Prober::new(config, start.into_std());
    let path = PathId::new(peer.clone(), kind);
    loop {
        let deadline = Instant::from_std(prober.next_deadline());
        let fact = tokio::select! {
            biased;
            ack = acks.recv() => {
                let Some((at, ack)) = ack else { return };
                prober.on_ack(at.into_std(), &ack).map(|rtt| Fact::ProbeAnswered { rtt })
            }
            _ = tokio::time::sleep_until(deadline) => {
                let actions = prober.poll(Instant::now().into_std());
                if let Some(probe) = actions.send {
                    network.transmit(kind, &me, &peer, Frame::Probe(probe));
                }
                for _ in 0..actions.missed {
                    let event = TransportEvent { path: path.clone(), fact: Fact::ProbeMissed };
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                None
            }
        };
        if let Some(fact) = fact {
            let event = TransportEvent {
                path: path.clone(),
                fact,
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// One node's memory transport of one path kind.
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

impl MemoryTransport {
    /// The network this transport is bound to.
    pub fn network(&self) -> &MemoryNetwork {
        &self.inner.network
    }

    /// The peers with an open path.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.inner.peers().keys().cloned().collect();
        v.sort();
        v
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn kind(&self) -> PathKind {
        self.inner.kind
    }

    fn local(&self) -> &NodeId {
        &self.inner.node
    }

    async fn connect(&self, peer: &PeerAddr) -> Result<(), ConnectError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ConnectError::Shutdown);
        }
        let remote = self
            .inner
            .network
            .lookup(self.inner.kind, &peer.node)
            .filter(|r| !r.closed.load(Ordering::Acquire))
            .ok_or_else(|| {
                ConnectError::Unreachable(peer.node.clone(), "no such node on this network".into())
            })?;
        if self.inner.open(&peer.node) {
            self.inner.report(&peer.node, Fact::Up).await;
        }
        if remote.open(&self.inner.node) {
            remote.report(&self.inner.node, Fact::Up).await;
        }
        Ok(())
    }

    fn send(&self, peer: &NodeId, frame: Frame) -> Result<(), SendError> {
        if !self.inner.peers().contains_key(peer) {
            return Err(SendError::NoPath {
                peer: peer.clone(),
                kind: self.inner.kind,
                frame: Box::new(frame),
            });
        }
        self.inner
            .network
            .transmit(self.inner.kind, &self.inner.node, peer, frame);
        Ok(())
    }

    async fn close(&self, peer: &NodeId, code: u32, reason: &str) {
        if self.inner.shut(peer) {
            self.inner
                .report(peer, Fact::Down(DownCause::ClosedLocally))
                .await;
        }
        if let Some(remote) = self.inner.network.lookup(self.inner.kind, peer)
            && remote.shut(&self.inner.node)
        {
            let cause = DownCause::ClosedByPeer {
                code,
                reason: reason.to_string(),
            };
            remote.report(&self.inner.node, Fact::Down(cause)).await;
        }
    }

    async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let peers: Vec<NodeId> = self.inner.peers().keys().cloned().collect();
        for peer in peers {
            self.close(&peer, 0, "shutdown").await;
        }
    }
}

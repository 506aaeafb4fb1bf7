//! The relay transport: reaches peers *through the root*.
//!
//! Owns one node's link to the root and the relayed paths over it. The link
//! is an ordinary [`QuicTransport`] (mutual TLS, reconnect with backoff)
//! whose only peer is the root; this module adds what makes a path out of
//! it (`docs/root.md` §3):
//! * [`Transport::connect`] asks the root (rendezvous `Lookup`) whether the
//!   peer is admitted and online, and reports [`Fact::Up`] for
//!   `PathId(peer, Relay)` if so; a refusal is a typed
//!   [`ConnectError::Refused`] with the root's code;
//! * frames to a peer are encoded and wrapped in `Relay { to }`; incoming
//!   `Relay { from }` frames are unwrapped and reported as
//!   [`Fact::Frame`] on `PathId(from, Relay)` (the first one from a new
//!   peer also reports [`Fact::Up`]);
//! * each relayed peer is probed end to end (`Probe` / `ProbeAck` inside
//!   `Relay`), so a relayed path's health is the health of the whole way;
//! * `RelayRefused { to }` from the root is an incident on that path, and
//!   the path goes down if the refusal says the peer is gone; a peer that
//!   was connected is then looked up again with backoff (100 ms doubling
//!   to 1 s) until the root says it is back, and its path reopens;
//! * losing the root connection — closed, reset, or `root_misses` probes
//!   missed in a row — reports [`Fact::Down`] for every relayed peer (and
//!   re-dials the root); when the link is back, peers that were connected
//!   are looked up and reported up again.
//!
//! It also carries the node's rendezvous requests ([`RelayTransport::register`],
//! [`RelayTransport::lookup_node`], [`RelayTransport::lookup_capability`])
//! and signalling messages ([`RelayTransport::signal`],
//! [`RelayTransport::signals`]) for WebRTC negotiation later.
//!
//! The link need not be this process's own QUIC connection: a hub whose
//! remote sockets are owned by a sidecar process runs the same relay over
//! the sidecar's local session ([`RelayTransport::over_link`] with a
//! [`RootLink`] from [`super::sidecar`]); its relayed paths then have path
//! kind [`PathKind::Sidecar`].
//!
//! Must not touch: channels, the store, routing decisions.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::probe::{ProbeConfig, Prober};
use super::quic::{QuicConfig, QuicError, QuicTransport};
use super::{
    ConnectError, DownCause, EventSink, Fact, PeerAddr, SendError, Transport, TransportEvent,
};
use crate::sync::lock;
use crate::trust::NodeIdentity;
use crate::vocab::{NodeId, PathId, PathKind};
use crate::wire::{
    CodecConfig, Frame, Lookup, LookupReply, ProbeAck, Register, Reject, Relay, Signal,
    decode_frame, encode_to_bytes,
};

/// Refusal codes of the root that mean the relayed peer is gone (its path
/// goes down): not admitted, offline, revoked (`docs/wire.md` §7).
const PEER_GONE: [u16; 3] = [0x210, 0x211, 0x212];

/// The link to the root a relay runs over: this node's own QUIC
/// connection ([`QuicTransport`]) or a sidecar's local session
/// ([`super::sidecar::SidecarLink`]). Its only peer is the root; it reports
/// `Up`, `Down`, probe facts and frames about that one peer.
pub trait RootLink: Transport {
    /// The peers with an open connection (the root, or nobody).
    fn connected(&self) -> Vec<NodeId>;
    /// Drops the connection to `peer` so that it is re-established (the
    /// link stopped answering before its idle timeout).
    fn redial(&self, peer: &NodeId, reason: &str);
    /// Presents a renewed certificate from now on, where the link holds
    /// this node's certificate itself (a sidecar's link does not: the
    /// sidecar process holds it and reads the renewed file).
    fn renew_identity(&self, identity: &NodeIdentity) -> Result<(), String> {
        let _ = identity;
        Ok(())
    }
}

impl RootLink for QuicTransport {
    fn connected(&self) -> Vec<NodeId> {
        self.peers()
    }

    fn redial(&self, peer: &NodeId, reason: &str) {
        QuicTransport::redial(self, peer, reason)
    }

    fn renew_identity(&self, identity: &NodeIdentity) -> Result<(), String> {
        QuicTransport::renew_identity(self, identity).map_err(|e| e.to_string())
    }
}

/// Default [`RelayConfig::root_misses`].
pub const DEFAULT_ROOT_MISSES: u32 = 8;

/// Configuration of a [`RelayTransport`].
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The link to the root: this node's credentials, the roots, backoff
    /// and idle timeouts (its `probe` probes the root itself).
    pub quic: QuicConfig,
    /// The root's node id and node-endpoint address.
    pub root: PeerAddr,
    /// End-to-end probing of each relayed peer.
    pub probe: ProbeConfig,
    /// How long a rendezvous lookup may take.
    pub lookup_timeout: Duration,
    /// Dial the root as soon as the transport is bound (retrying with the
    /// link's backoff until it answers), so that peers can reach this node
    /// through the root before it sends anything. Default `true`.
    pub eager: bool,
    /// This many probes of the root link missed in a row take the link
    /// down: every relayed path is reported down and the link is re-dialled
    /// (0 is treated as 1). Default 8 (about 1 s with the default probes):
    /// later than the routing core fails each relayed path on its own
    /// end-to-end probes (5 misses), because tearing the link down costs a
    /// new handshake and every relayed path at once, so a CPU stall of the
    /// root must not trigger it.
    pub root_misses: u32,
}

impl RelayConfig {
    /// A configuration reaching `root` with the link `quic`, default
    /// probes and a 5 s lookup timeout.
    pub fn new(quic: QuicConfig, root: PeerAddr) -> Self {
        Self {
            quic,
            root,
            probe: ProbeConfig::default(),
            lookup_timeout: Duration::from_secs(5),
            eager: true,
            root_misses: DEFAULT_ROOT_MISSES,
        }
    }
}

/// Why a rendezvous lookup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The root answered with a refusal code (`docs/wire.md` §7).
    #[error("root refused the lookup with code {0:#x}")]
    Refused(u16),
    /// The root could not be reached or did not answer in time.
    #[error("root unreachable: {0}")]
    Unreachable(String),
}

/// A rendezvous answer: how to reach a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendezvous {
    /// The node found.
    pub node: NodeId,
    /// Its registered direct addresses (`ip:port`).
    pub addrs: Vec<String>,
    /// Its registered capabilities.
    pub capabilities: Vec<String>,
}

struct PeerState {
    acks: mpsc::UnboundedSender<ProbeAck>,
    task: JoinHandle<()>,
}

struct Inner {
    node: NodeId,
    root: PeerAddr,
    config: RelayConfig,
    codec: CodecConfig,
    events: EventSink,
    /// The path kind of the relayed paths: `Relay`, or `Sidecar` when the
    /// link is a sidecar's local session.
    kind: PathKind,
    link: Arc<dyn RootLink>,
    peers: Mutex<HashMap<NodeId, PeerState>>,
    wanted: Mutex<HashSet<NodeId>>,
    /// Peers a [`reopen`] task is looking up, so there is one per peer.
    reopening: Mutex<HashSet<NodeId>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<LookupReply>>>,
    next_request: AtomicU64,
    root_up: watch::Sender<bool>,
    closed: AtomicBool,
    shutdown: watch::Sender<bool>,
    registration: Mutex<Option<Register>>,
    register_refused: watch::Sender<Option<(u16, String)>>,
    signals: broadcast::Sender<Signal>,
    dial_lock: tokio::sync::Mutex<()>,
    reached: AtomicBool,
}

/// The relay transport of one node. See the module docs.
pub struct RelayTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RelayTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTransport")
            .field("node", &self.inner.node)
            .field("root", &self.inner.root.node)
            .finish_non_exhaustive()
    }
}

impl RelayTransport {
    /// Presents a renewed certificate on the link to the root from now on
    /// (see [`QuicTransport::renew_identity`]).
    pub fn renew_identity(&self, identity: &NodeIdentity) -> Result<(), String> {
        self.inner.link.renew_identity(identity)
    }

    /// Binds the link's endpoint and starts the relay; the root is dialled
    /// on the first [`Transport::connect`] or rendezvous request. Must be
    /// called inside a tokio runtime.
    pub fn bind(config: RelayConfig, events: impl Into<EventSink>) -> Result<Arc<Self>, QuicError> {
        let (tx, rx) = mpsc::channel(8192);
        let link = QuicTransport::bind(config.quic.clone(), tx)?;
        Ok(Self::over_link(config, link, rx, PathKind::Relay, events))
    }

    /// Runs the relay over `link` (whose events arrive on `link_events`),
    /// reporting relayed paths of kind `kind`. `config.quic` gives this
    /// node's id, the codec and the reconnect backoff; its other settings
    /// are the link's business. Must be called inside a tokio runtime.
    pub fn over_link(
        config: RelayConfig,
        link: Arc<dyn RootLink>,
        link_events: mpsc::Receiver<TransportEvent>,
        kind: PathKind,
        events: impl Into<EventSink>,
    ) -> Arc<Self> {
        let events = events.into();
        let rx = link_events;
        let codec = config.quic.codec;
        let (root_up, _) = watch::channel(false);
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            node: config.quic.identity.node.clone(),
            root: config.root.clone(),
            config,
            codec,
            events,
            kind,
            link,
            peers: Mutex::new(HashMap::new()),
            wanted: Mutex::new(HashSet::new()),
            reopening: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            root_up,
            closed: AtomicBool::new(false),
            shutdown,
            registration: Mutex::new(None),
            register_refused: watch::channel(None).0,
            signals: broadcast::channel(256).0,
            dial_lock: tokio::sync::Mutex::new(()),
            reached: AtomicBool::new(false),
        });
        tokio::spawn(link_loop(inner.clone(), rx));
        if inner.config.eager {
            tokio::spawn(dial_root(inner.clone()));
        }
        Arc::new(Self { inner })
    }

    /// Whether the link to the root is up.
    pub fn root_connected(&self) -> bool {
        *self.inner.root_up.borrow()
    }

    /// Watches whether the link to the root is up.
    pub fn root_link(&self) -> watch::Receiver<bool> {
        self.inner.root_up.subscribe()
    }

    /// The relayed peers with an open path, sorted.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = lock(&self.inner.peers).keys().cloned().collect();
        v.sort();
        v
    }

    /// The link to the root (diagnostics, tests).
    pub fn link(&self) -> &Arc<dyn RootLink> {
        &self.inner.link
    }

    /// Registers this node's direct addresses and capabilities with the
    /// root's rendezvous (replacing any earlier registration; repeated
    /// automatically when the link comes back).
    pub async fn register(
        &self,
        addrs: Vec<String>,
        capabilities: Vec<String>,
    ) -> Result<(), LookupError> {
        let reg = Register {
            addrs,
            capabilities,
        };
        *lock(&self.inner.registration) = Some(reg.clone());
        self.inner.register_refused.send_replace(None);
        self.inner.ensure_root().await?;
        self.inner
            .link
            .send(&self.inner.root.node, Frame::Register(reg))
            .map_err(|e| LookupError::Unreachable(e.to_string()))
    }

    /// The root's refusal of the latest [`RelayTransport::register`], if it
    /// refused it: `(code, reason)` with a code of `docs/wire.md` §7
    /// (`0x215` too large, `0x216` bad address, `0x217` capability not
    /// granted). `None` while no refusal came; the root does not confirm an
    /// accepted registration.
    pub fn register_refusal(&self) -> watch::Receiver<Option<(u16, String)>> {
        self.inner.register_refused.subscribe()
    }

    /// Sends a signalling message to `to` through the root (`kind` e.g.
    /// `webrtc/offer`; `payload` opaque to the root). The root refuses
    /// non-admitted destinations with `RelayRefused`, reported as an
    /// incident on the relay path to `to`.
    pub async fn signal(&self, to: &NodeId, kind: &str, payload: Bytes) -> Result<(), SendError> {
        self.inner
            .ensure_root()
            .await
            .map_err(|e| SendError::Encode(e.to_string()))?;
        let frame = Frame::Signal(Signal {
            to: to.clone(),
            from: self.inner.node.clone(),
            kind: kind.to_string(),
            payload,
        });
        self.inner.link.send(&self.inner.root.node, frame)
    }

    /// Signalling messages received from peers (`from` as authenticated by
    /// the root). Slow receivers lose the oldest messages.
    pub fn signals(&self) -> broadcast::Receiver<Signal> {
        self.inner.signals.subscribe()
    }

    /// Asks the root how to reach `node` (admitted and online).
    pub async fn lookup_node(&self, node: &NodeId) -> Result<Rendezvous, LookupError> {
        self.inner.lookup(Some(node.clone()), None).await
    }

    /// Asks the root which online node serves `capability`.
    pub async fn lookup_capability(&self, capability: &str) -> Result<Rendezvous, LookupError> {
        self.inner.lookup(None, Some(capability.to_string())).await
    }
}

impl Inner {
    fn path(&self, peer: &NodeId) -> PathId {
        PathId::new(peer.clone(), self.kind)
    }

    async fn report(&self, peer: &NodeId, fact: Fact) {
        let _ = self
            .events
            .send(TransportEvent {
                path: self.path(peer),
                fact,
            })
            .await;
    }

    /// Makes sure the link to the root is up. One dial at a time: two
    /// concurrent dials would open duplicate connections that the QUIC
    /// transport then has to close. Once the root has been reached, the
    /// link re-dials by itself after a loss; this waits for that (up to the
    /// lookup timeout) before dialling again.
    async fn ensure_root(&self) -> Result<(), LookupError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LookupError::Unreachable("relay is shut down".into()));
        }
        let _one_dial = self.dial_lock.lock().await;
        if self.link.connected().contains(&self.root.node) {
            return Ok(());
        }
        if self.reached.load(Ordering::Acquire) {
            let mut up = self.root_up.subscribe();
            let back = tokio::time::timeout(self.config.lookup_timeout, up.wait_for(|u| *u)).await;
            if matches!(back, Ok(Ok(_))) || self.link.connected().contains(&self.root.node) {
                return Ok(());
            }
        }
        self.link
            .connect(&self.root)
            .await
            .map_err(|e| LookupError::Unreachable(e.to_string()))?;
        self.reached.store(true, Ordering::Release);
        Ok(())
    }

    async fn lookup(
        &self,
        node: Option<NodeId>,
        capability: Option<String>,
    ) -> Result<Rendezvous, LookupError> {
        self.ensure_root().await?;
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(request_id, tx);
        let frame = Frame::Lookup(Lookup {
            request_id,
            node,
            capability,
        });
        if let Err(e) = self.link.send(&self.root.node, frame) {
            lock(&self.pending).remove(&request_id);
            return Err(LookupError::Unreachable(e.to_string()));
        }
        let reply = tokio::time::timeout(self.config.lookup_timeout, rx).await;
        lock(&self.pending).remove(&request_id);
        match reply {
            Ok(Ok(r)) if r.code == 0 => Ok(Rendezvous {
                node: r.node.unwrap_or_else(|| NodeId::new("")),
                addrs: r.addrs,
                capabilities: r.capabilities,
            }),
            Ok(Ok(r)) => Err(LookupError::Refused(r.code)),
            Ok(Err(_)) => Err(LookupError::Unreachable("root link lost".into())),
            Err(_) => Err(LookupError::Unreachable("lookup timed out".into())),
        }
    }

    /// Opens the relayed path to `peer` (reports Up) unless it is open.
    async fn open(self: &Arc<Self>, peer: &NodeId) {
        let up = {
            let mut peers = lock(&self.peers);
            if peers.contains_key(peer) || self.closed.load(Ordering::Acquire) {
                false
            } else {
                let (acks, rx) = mpsc::unbounded_channel();
                let task = tokio::spawn(probe_loop(self.clone(), peer.clone(), rx));
                peers.insert(peer.clone(), PeerState { acks, task });
                true
            }
        };
        if up {
            tracing::info!(node = %self.node, peer = %peer, "relay: path up");
            self.report(peer, Fact::Up).await;
        }
    }

    /// Closes the relayed path to `peer` (reports Down) if it is open.
    async fn drop_peer(&self, peer: &NodeId, cause: DownCause) {
        let state = lock(&self.peers).remove(peer);
        if let Some(state) = state {
            state.task.abort();
            tracing::info!(node = %self.node, peer = %peer, cause = %cause, "relay: path down");
            self.report(peer, Fact::Down(cause)).await;
        }
    }

    /// Wraps `frame` for `peer` and queues it on the link.
    fn send_wrapped(&self, peer: &NodeId, frame: Frame) -> Result<(), SendError> {
        let bytes =
            encode_to_bytes(&frame, &self.codec).map_err(|e| SendError::Encode(e.to_string()))?;
        let relay = Frame::Relay(Relay {
            to: peer.clone(),
            from: self.node.clone(),
            frame: bytes,
        });
        self.link.send(&self.root.node, relay).map_err(|e| {
            let full = matches!(e, SendError::Full { .. });
            let (peer, kind, frame) = (peer.clone(), self.kind, Box::new(frame));
            if full {
                SendError::Full { peer, kind, frame }
            } else {
                SendError::NoPath { peer, kind, frame }
            }
        })
    }
}

/// Dials the root until the link is up once (the link re-dials by itself
/// after that), backing off as the link's reconnect policy says.
async fn dial_root(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let backoff = inner.config.quic.reconnect;
    let mut attempt = 0u32;
    while !inner.closed.load(Ordering::Acquire) {
        match inner.ensure_root().await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(node = %inner.node, attempt, error = %e, "relay: root not reachable yet");
            }
        }
        let delay = backoff.delay(attempt, &mut rand::rng());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Probes one relayed peer end to end until its path closes.
async fn probe_loop(inner: Arc<Inner>, peer: NodeId, mut acks: mpsc::UnboundedReceiver<ProbeAck>) {
    let mut prober = Prober::new(inner.config.probe, Instant::now().into_std());
    loop {
        let deadline = Instant::from_std(prober.next_deadline());
        // Biased: an answer already received is taken before the timer.
        tokio::select! {
            biased;
            ack = acks.recv() => match ack {
                Some(ack) => {
                    if let Some(rtt) = prober.on_ack(Instant::now().into_std(), &ack) {
                        inner.report(&peer, Fact::ProbeAnswered { rtt }).await;
                    }
                }
                None => return,
            },
            _ = tokio::time::sleep_until(deadline) => {
                let actions = prober.poll(Instant::now().into_std());
                if let Some(p) = actions.send {
                    let _ = inner.send_wrapped(&peer, Frame::Probe(p));
                }
                for _ in 0..actions.missed {
                    inner.report(&peer, Fact::ProbeMissed).await;
                }
            }
        }
    }
}

/// After the root link came back: looks `peer` up until the root says it is
/// online (it may reconnect later than this node), with backoff from
/// 100 ms to 2 s. Gives up when the peer is no longer wanted, its path is
/// open, the root link is down again (the next link-up starts over) or the
/// transport is shut down.
async fn reopen(inner: Arc<Inner>, peer: NodeId) {
    if !lock(&inner.reopening).insert(peer.clone()) {
        return;
    }
    let mut shutdown = inner.shutdown.subscribe();
    let mut delay = REOPEN_FIRST;
    loop {
        if inner.closed.load(Ordering::Acquire)
            || !lock(&inner.wanted).contains(&peer)
            || lock(&inner.peers).contains_key(&peer)
            || !*inner.root_up.borrow()
        {
            break;
        }
        if inner.lookup(Some(peer.clone()), None).await.is_ok() {
            inner.open(&peer).await;
            break;
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(REOPEN_MAX);
    }
    lock(&inner.reopening).remove(&peer);
}

/// First delay between re-lookups of a peer the root said is gone.
const REOPEN_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between re-lookups: a peer back at the root is reached
/// again at most this long after (one small lookup per peer per second
/// while it is away).
const REOPEN_MAX: Duration = Duration::from_secs(1);

/// Takes the root link down after too many missed probes: the relayed
/// paths are reported down at once and the link is closed so that it
/// re-dials (a restarted root resets it even sooner, see the QUIC
/// transport's reset key).
async fn root_link_lost(inner: &Arc<Inner>, misses: u32) {
    tracing::warn!(node = %inner.node, misses, "relay: root link missed its probes; re-dialling");
    inner.root_up.send_replace(false);
    lock(&inner.pending).clear();
    let peers: Vec<NodeId> = lock(&inner.peers).keys().cloned().collect();
    for peer in peers {
        inner.drop_peer(&peer, DownCause::Timeout).await;
    }
    inner
        .link
        .redial(&inner.root.node, "root link missed its probes");
}

/// Reads the link's events: unwraps relayed frames, answers lookups,
/// tracks the root connection.
async fn link_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<TransportEvent>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut misses = 0u32;
    loop {
        let ev = tokio::select! {
            _ = shutdown.changed() => return,
            ev = rx.recv() => match ev { Some(ev) => ev, None => return },
        };
        if ev.path.peer != inner.root.node {
            continue;
        }
        match ev.fact {
            Fact::ProbeAnswered { .. } => misses = 0,
            Fact::ProbeMissed => {
                misses = misses.saturating_add(1);
                if misses == inner.config.root_misses.max(1) && *inner.root_up.borrow() {
                    root_link_lost(&inner, misses).await;
                }
            }
            Fact::Up | Fact::Renewed => {
                // Renewed: the root connection was replaced (the root
                // restarted, say); register and reopen as after an Up.
                misses = 0;
                inner.root_up.send_replace(true);
                let reg = lock(&inner.registration).clone();
                if let Some(reg) = reg {
                    let _ = inner.link.send(&inner.root.node, Frame::Register(reg));
                }
                let wanted: Vec<NodeId> = lock(&inner.wanted).iter().cloned().collect();
                for peer in wanted {
                    tokio::spawn(reopen(inner.clone(), peer));
                }
            }
            Fact::Down(cause) => {
                inner.root_up.send_replace(false);
                lock(&inner.pending).clear();
                let peers: Vec<NodeId> = lock(&inner.peers).keys().cloned().collect();
                for peer in peers {
                    inner.drop_peer(&peer, cause.clone()).await;
                }
            }
            Fact::Frame(Frame::Relay(r)) => on_relay(&inner, r).await,
            Fact::Frame(Frame::Signal(sig)) => {
                let _ = inner.signals.send(sig);
            }
            Fact::Frame(Frame::Reject(r))
                if r.stream.is_none()
                    && crate::wire::codes::lookup(r.code).is_some_and(|c| c.group == "sidecar") =>
            {
                // A sidecar refused one frame of this node's (it names no
                // peer): the frame was not sent; a class-A frame is resent
                // by its outbox. Not a registration refusal.
                tracing::warn!(node = %inner.node, code = r.code, reason = %r.reason, "relay: the sidecar refused a frame");
            }
            Fact::Frame(Frame::Reject(r)) if r.stream.is_none() => {
                // The root refuses a `Register` this way (`docs/root.md` §4).
                tracing::warn!(node = %inner.node, code = r.code, reason = %r.reason, "relay: the root refused the registration");
                inner
                    .register_refused
                    .send_replace(Some((r.code, r.reason)));
            }
            Fact::Frame(Frame::LookupReply(reply)) => {
                if let Some(tx) = lock(&inner.pending).remove(&reply.request_id) {
                    let _ = tx.send(reply);
                }
            }
            Fact::Frame(Frame::RelayRefused(r)) => {
                let what = format!(
                    "root refused relay to {} with code {:#x}: {}",
                    r.to, r.code, r.reason
                );
                tracing::warn!(node = %inner.node, "{what}");
                inner.report(&r.to, Fact::Incident(what)).await;
                if PEER_GONE.contains(&r.code) {
                    let peer = r.to.clone();
                    inner
                        .drop_peer(
                            &r.to,
                            DownCause::ClosedByPeer {
                                code: u32::from(r.code),
                                reason: r.reason,
                            },
                        )
                        .await;
                    // Gone for now: look it up again (with backoff) so the
                    // path reopens as soon as the peer is back at the root,
                    // whichever link comes back first.
                    tokio::spawn(reopen(inner.clone(), peer));
                }
            }
            _ => {}
        }
    }
}

/// Handles one relayed frame from the root.
async fn on_relay(inner: &Arc<Inner>, r: Relay) {
    let from = r.from;
    let frame = match decode_frame(&r.frame, &inner.codec) {
        Ok(f) => f,
        Err(e) => {
            // Refused with the codec's code, back to the sender through the
            // root: a relayed frame is never dropped in silence.
            let _ = inner.send_wrapped(
                &from,
                Frame::Reject(Reject {
                    stream: None,
                    message_id: None,
                    code: e.reject_code(),
                    reason: e.to_string(),
                }),
            );
            inner
                .report(
                    &from,
                    Fact::Incident(format!("undecodable relayed frame: {e}")),
                )
                .await;
            return;
        }
    };
    inner.open(&from).await;
    match frame {
        Frame::Probe(p) => {
            let ack = Frame::ProbeAck(ProbeAck {
                nonce: p.nonce,
                sent_at_us: p.sent_at_us,
            });
            let _ = inner.send_wrapped(&from, ack);
        }
        Frame::ProbeAck(ack) => {
            if let Some(state) = lock(&inner.peers).get(&from) {
                let _ = state.acks.send(ack);
            }
        }
        Frame::Hello(_) | Frame::Close(_) => {}
        other => inner.report(&from, Fact::Frame(other)).await,
    }
}

#[async_trait]
impl Transport for RelayTransport {
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
        if lock(&self.inner.peers).contains_key(&peer.node) {
            return Ok(());
        }
        match self.inner.lookup(Some(peer.node.clone()), None).await {
            Ok(_) => {
                lock(&self.inner.wanted).insert(peer.node.clone());
                self.inner.open(&peer.node).await;
                Ok(())
            }
            Err(LookupError::Refused(code)) => Err(ConnectError::Refused(
                peer.node.clone(),
                format!("root refused with code {code:#x}"),
            )),
            Err(LookupError::Unreachable(e)) => {
                Err(ConnectError::Unreachable(peer.node.clone(), e))
            }
        }
    }

    fn send(&self, peer: &NodeId, frame: Frame) -> Result<(), SendError> {
        if !lock(&self.inner.peers).contains_key(peer) {
            return Err(SendError::NoPath {
                peer: peer.clone(),
                kind: self.inner.kind,
                frame: Box::new(frame),
            });
        }
        self.inner.send_wrapped(peer, frame)
    }

    async fn close(&self, peer: &NodeId, _code: u32, _reason: &str) {
        lock(&self.inner.wanted).remove(peer);
        self.inner.drop_peer(peer, DownCause::ClosedLocally).await;
    }

    async fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        lock(&self.inner.wanted).clear();
        let peers: Vec<NodeId> = lock(&self.inner.peers).keys().cloned().collect();
        for peer in peers {
            self.inner.drop_peer(&peer, DownCause::ClosedLocally).await;
        }
        let _ = self.inner.shutdown.send(true);
        self.inner.link.shutdown().await;
    }
}

#[async_trait]
impl super::webrtc::SignalLink for RelayTransport {
    async fn send_signal(&self, to: &NodeId, kind: &str, payload: Bytes) -> Result<(), String> {
        self.signal(to, kind, payload)
            .await
            .map_err(|e| e.to_string())
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<Signal>> {
        Some(self.signals())
    }
}

//! The WebRTC transport: data-channel paths (`webrtc-data`) between nodes,
//! negotiated through the root's rendezvous, and to browsers.
//!
//! Owns one peer connection per peer (`session`: webrtc 0.21 over the
//! sans-IO `rtc` crate), its negotiated data channels (one per traffic
//! class, reliable and ordered), the frame codec over them, liveness probes
//! and the facts it reports: `Up` when every channel is open, `Down` when
//! the session ends, RTT, queue depth (queued plus SCTP-buffered bytes) and
//! ICE/DTLS state changes, restarts and signalling refusals as incidents.
//!
//! Negotiation ([`signalling`], `docs/webrtc.md`): offers, answers and
//! trickled candidates travel as `Signal` frames through a [`SignalLink`]
//! (the relay transport's link to the root); each carries a session and a
//! generation so stale messages are refused; glare is resolved by node-id
//! order; on ICE trouble the offerer restarts ICE up to
//! [`IceConfig::restarts`] times before a fresh negotiation. One channel's
//! trouble never rebuilds the peer connection.
//!
//! Must not touch: channels, the store, routing decisions.

mod control;
pub mod faults;
pub mod media;
mod session;
pub mod signalling;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::probe::ProbeConfig;
use super::{ConnectError, EventSink, PeerAddr, SendError, Transport};
use crate::sync::lock;
use crate::vocab::{NodeId, PathKind};
use crate::wire::{CodecConfig, Frame};
pub use control::BrowserOffer;
use control::{Ctl, Peer};
pub use faults::WebrtcFaults;
pub use media::{MediaError, MediaFacts, MediaKind, MediaOut};
pub use session::{CHANNELS, MAX_MESSAGE, label};
pub use signalling::{SignalError, SignalLink, SignalSlot, codes};

/// Who may negotiate with this node (beyond the root's own admission).
pub type Admit = Arc<dyn Fn(&NodeId) -> bool + Send + Sync>;

/// ICE timing and the restart policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IceConfig {
    /// No ICE traffic for this long: `disconnected`.
    pub disconnected_timeout: Duration,
    /// Disconnected for this long: `failed`.
    pub failed_timeout: Duration,
    /// ICE keepalive interval.
    pub keepalive: Duration,
    /// ICE restarts tried on trouble before a fresh negotiation (AdaOS: 3).
    pub restarts: u32,
    /// How long one ICE restart may take to reconnect.
    pub restart_timeout: Duration,
}

impl Default for IceConfig {
    fn default() -> Self {
        Self {
            disconnected_timeout: Duration::from_secs(3),
            failed_timeout: Duration::from_secs(8),
            keepalive: Duration::from_millis(500),
            restarts: 3,
            restart_timeout: Duration::from_secs(3),
        }
    }
}

/// Configuration of a [`WebrtcTransport`].
#[derive(Clone)]
pub struct WebrtcConfig {
    /// This node's id (as the root knows it).
    pub node: NodeId,
    /// The local address ICE binds (one UDP socket per peer connection).
    pub bind: IpAddr,
    /// Liveness probes over the control channel.
    pub probe: ProbeConfig,
    /// Frame size limits (the same codec as every transport).
    pub codec: CodecConfig,
    /// ICE timing and restart policy.
    pub ice: IceConfig,
    /// How long a negotiation may take before it is abandoned.
    pub connect_timeout: Duration,
    /// Longest wait between fresh negotiations to a wanted peer.
    pub reconnect_max: Duration,
    /// Bytes a session may queue for bulk classes before `send` refuses
    /// with `Full` (control frames are never refused for space).
    pub queue_budget: usize,
    /// Which peers may offer to this node (default: everyone the root
    /// forwards, i.e. every admitted node).
    pub admit: Admit,
    /// A fault switch beneath the UDP sockets (tests, chaos runs).
    pub faults: Option<WebrtcFaults>,
}

impl std::fmt::Debug for WebrtcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebrtcConfig")
            .field("node", &self.node)
            .field("bind", &self.bind)
            .field("ice", &self.ice)
            .finish_non_exhaustive()
    }
}

impl WebrtcConfig {
    /// Defaults for `node` on 127.0.0.1: 500 ms probes, 3 ICE restarts,
    /// 10 s negotiations, an 8 MiB bulk budget, every admitted peer.
    pub fn new(node: impl Into<NodeId>) -> Self {
        Self {
            node: node.into(),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            probe: ProbeConfig::default(),
            codec: CodecConfig::default(),
            ice: IceConfig::default(),
            connect_timeout: Duration::from_secs(10),
            reconnect_max: Duration::from_secs(2),
            queue_budget: 8 << 20,
            admit: Arc::new(|_| true),
            faults: None,
        }
    }
}

/// The WebRTC transport a node has bound now (a restart binds a new one):
/// how a hub's page server reaches it to answer browsers.
#[derive(Clone, Default)]
pub struct WebrtcHandle(Arc<Mutex<Option<Arc<WebrtcTransport>>>>);

impl WebrtcHandle {
    /// An empty handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Points the handle at `t`.
    pub fn set(&self, t: Arc<WebrtcTransport>) {
        *lock(&self.0) = Some(t);
    }

    /// The transport bound now, if any.
    pub fn get(&self) -> Option<Arc<WebrtcTransport>> {
        lock(&self.0).clone()
    }
}

/// Counters of one transport (diagnostics, tests, figures).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebrtcCounters {
    /// Signalling messages refused, by code.
    pub refused: std::collections::BTreeMap<u16, u64>,
    /// ICE restarts started.
    pub ice_restarts: u64,
    /// Fresh negotiations started (offers of a new session).
    pub negotiations: u64,
    /// Sessions that reached `Up`.
    pub sessions_up: u64,
}

pub(crate) struct Inner {
    config: WebrtcConfig,
    events: EventSink,
    link: Arc<dyn SignalLink>,
    peers: Mutex<HashMap<NodeId, Peer>>,
    wanted: Mutex<HashSet<NodeId>>,
    refused: Mutex<HashMap<NodeId, SignalError>>,
    counters: Mutex<WebrtcCounters>,
    setup_times: Mutex<HashMap<NodeId, Duration>>,
    ctl: mpsc::Sender<Ctl>,
    changed: watch::Sender<u64>,
    next_session: AtomicU64,
    closed: AtomicBool,
    shutdown: watch::Sender<bool>,
}

impl Inner {
    fn is_up(&self, peer: &NodeId) -> bool {
        lock(&self.peers).get(peer).is_some_and(|p| p.up)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The WebRTC transport of one node. See the module docs.
pub struct WebrtcTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WebrtcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebrtcTransport")
            .field("node", &self.inner.config.node)
            .finish_non_exhaustive()
    }
}

impl WebrtcTransport {
    /// Starts the transport: negotiates through `link`, reports on
    /// `events`. Must be called inside a tokio runtime.
    pub fn bind(
        config: WebrtcConfig,
        link: Arc<dyn SignalLink>,
        events: impl Into<EventSink>,
    ) -> Arc<Self> {
        let events = events.into();
        let (ctl, rx) = mpsc::channel(4096);
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let inner = Arc::new(Inner {
            config,
            events,
            link,
            peers: Mutex::new(HashMap::new()),
            wanted: Mutex::new(HashSet::new()),
            refused: Mutex::new(HashMap::new()),
            counters: Mutex::new(WebrtcCounters::default()),
            setup_times: Mutex::new(HashMap::new()),
            ctl,
            changed: watch::channel(0).0,
            next_session: AtomicU64::new(epoch),
            closed: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
        });
        tokio::spawn(control::run(inner.clone(), rx));
        Arc::new(Self { inner })
    }

    /// Peers with an open path, sorted.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = lock(&self.inner.peers)
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// The counters so far.
    pub fn counters(&self) -> WebrtcCounters {
        lock(&self.inner.counters).clone()
    }

    /// How long the last session with `peer` took from its first offer (or
    /// answer) to every channel open.
    pub fn setup_time(&self, peer: &NodeId) -> Option<Duration> {
        lock(&self.inner.setup_times).get(peer).copied()
    }

    /// Adds a VP8 video and an Opus audio track named `stream` to the
    /// current session with `peer` (the `webrtc-media` path). The peer
    /// negotiates them with its next offer; until then
    /// [`MediaOut::ready`] is false and writes are refused.
    pub async fn add_media(&self, peer: &NodeId, stream: &str) -> Result<MediaOut, MediaError> {
        let found = lock(&self.inner.peers)
            .get(peer)
            .map(|p| (p.pc.clone(), p.tally.clone(), p.st.session));
        let Some((pc, tally, session)) = found else {
            return Err(MediaError::NoSession(peer.to_string()));
        };
        MediaOut::add(pc, tally, session, stream).await
    }

    /// The current session id with `peer`, if any (media tracks belong to
    /// one session).
    pub fn session_of(&self, peer: &NodeId) -> Option<u64> {
        lock(&self.inner.peers).get(peer).map(|p| p.st.session)
    }

    /// Answers a browser's offer (non-trickle: the answer carries every
    /// candidate). The caller (the hub's page server) has admitted the
    /// browser as `offer.node` and checked its token; a later offer for the
    /// same node must carry the same DTLS fingerprint.
    pub async fn answer_browser(&self, offer: BrowserOffer) -> Result<String, SignalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner
            .ctl
            .send(Ctl::Browser(offer, tx))
            .await
            .map_err(|_| SignalError::new(codes::MALFORMED, "transport is shut down"))?;
        match tokio::time::timeout(self.inner.config.connect_timeout, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(SignalError::new(
                codes::MALFORMED,
                "no answer within the negotiation timeout",
            )),
        }
    }
}

#[async_trait]
impl Transport for WebrtcTransport {
    fn kind(&self) -> PathKind {
        PathKind::WebrtcData
    }

    fn local(&self) -> &NodeId {
        &self.inner.config.node
    }

    async fn connect(&self, peer: &PeerAddr) -> Result<(), ConnectError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(ConnectError::Shutdown);
        }
        if inner.is_up(&peer.node) {
            return Ok(());
        }
        let mut changed = inner.changed.subscribe();
        lock(&inner.wanted).insert(peer.node.clone());
        lock(&inner.refused).remove(&peer.node);
        inner
            .ctl
            .send(Ctl::Connect(peer.node.clone()))
            .await
            .map_err(|_| ConnectError::Shutdown)?;
        let wait = async {
            loop {
                if inner.is_up(&peer.node) {
                    return Ok(());
                }
                if let Some(e) = lock(&inner.refused).remove(&peer.node) {
                    lock(&inner.wanted).remove(&peer.node);
                    return Err(ConnectError::Refused(peer.node.clone(), e.to_string()));
                }
                if changed.changed().await.is_err() {
                    return Err(ConnectError::Shutdown);
                }
            }
        };
        match tokio::time::timeout(inner.config.connect_timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Unreachable(
                peer.node.clone(),
                "no webrtc session within the negotiation timeout".into(),
            )),
        }
    }

    fn send(&self, peer: &NodeId, frame: Frame) -> Result<(), SendError> {
        let io = lock(&self.inner.peers)
            .get(peer)
            .filter(|p| p.up)
            .map(|p| p.io.clone());
        let Some(io) = io else {
            return Err(SendError::NoPath {
                peer: peer.clone(),
                kind: PathKind::WebrtcData,
                frame: Box::new(frame),
            });
        };
        io.enqueue(&frame).map_err(|e| match e {
            session::Refused::Full => SendError::Full {
                peer: peer.clone(),
                kind: PathKind::WebrtcData,
                frame: Box::new(frame),
            },
            session::Refused::Encode(e) => SendError::Encode(e),
        })
    }

    async fn close(&self, peer: &NodeId, code: u32, reason: &str) {
        lock(&self.inner.wanted).remove(peer);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = Ctl::Close(peer.clone(), code, reason.to_string(), tx);
        if self.inner.ctl.send(msg).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    async fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        lock(&self.inner.wanted).clear();
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inner.ctl.send(Ctl::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
        let _ = self.inner.shutdown.send(true);
        self.inner.bump();
    }
}

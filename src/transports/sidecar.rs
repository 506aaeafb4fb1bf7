//! The sidecar link, hub side: the hub's way to the root when a separate
//! sidecar process owns the remote socket (`docs/sidecar.md`).
//!
//! Owns one local session to the sidecar's Unix domain socket and makes a
//! [`RootLink`] of it, so the hub runs its ordinary relay logic over it
//! ([`bind`]: a [`RelayTransport`] whose paths have kind
//! [`PathKind::Sidecar`]). Everything with meaning stays above, in the hub:
//! the relay envelope, end-to-end probes of relayed peers, rendezvous, and
//! the channels' outbox, dedupe and cursors. The link:
//! * authenticates with the sidecar's per-start secret (read from
//!   `secret` in the sidecar's directory at every dial, so a restarted
//!   sidecar is reached with its new secret) and waits for the sidecar's
//!   `Hello`, which it sends only while the remote session is up;
//! * reports the root as `Up` while the local session lives and `Down`
//!   with the sidecar's close code when it ends (the sidecar closes the
//!   local side when the remote side closes, so the relay re-establishes
//!   its paths instead of resuming behind the hub's back);
//! * probes the local hop and, once reached, re-dials with backoff after
//!   every loss (a killed and restarted sidecar is found again).
//!
//! Must not touch: channels, the store, routing decisions.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::probe::{ProbeConfig, Prober};
use super::quic::Backoff;
use super::relay::{RelayConfig, RelayTransport, RootLink};
use super::{
    ConnectError, DownCause, EventSink, Fact, PeerAddr, SendError, Transport, TransportEvent,
};
use crate::sync::lock;
use crate::vocab::{NodeId, PathId, PathKind, Role};
use crate::wire::{Close, CodecConfig, Frame, FrameDecoder, Hello, read_frame, write_frame};

/// The socket's file name in the sidecar's directory.
pub const SOCKET_FILE: &str = "sidecar.sock";
/// The per-start secret's file name (mode 0600, hex).
pub const SECRET_FILE: &str = "secret";
/// The sidecar's diagnostics file name (JSON of [`SidecarStatus`]).
pub const STATUS_FILE: &str = "status.json";

/// The Unix socket of the sidecar whose directory is `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// The secret file of the sidecar whose directory is `dir`.
pub fn secret_path(dir: &Path) -> PathBuf {
    dir.join(SECRET_FILE)
}

/// The diagnostics file of the sidecar whose directory is `dir`.
pub fn status_path(dir: &Path) -> PathBuf {
    dir.join(STATUS_FILE)
}

/// What a sidecar reports about the remote session it holds (written to
/// [`STATUS_FILE`] about once a probe interval; shown by the hub's control
/// API as `sidecar`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SidecarStatus {
    /// The sidecar's process id.
    pub pid: u32,
    /// The hub it serves (the only identity it presents).
    pub node: String,
    /// The root it holds the session to.
    pub root: String,
    /// Whether the remote session is up.
    pub remote_up: bool,
    /// How many times the remote session came up after the first time.
    pub reconnects: u64,
    /// The remote session's last probe round trip, in microseconds.
    pub rtt_us: Option<u64>,
    /// Local sessions open now (at most two).
    pub sessions: usize,
    /// Local clients refused since start (bad secret or uid, a third
    /// session, remote down).
    pub refused_sessions: u64,
    /// Frames refused with a typed reason since start.
    pub refused_frames: u64,
    /// Frames carried hub → root since start.
    pub to_root: u64,
    /// Frames carried root → hub since start.
    pub to_hub: u64,
    /// When the hub certificate the sidecar presents expires (ms since the
    /// Unix epoch); follows the hub's renewals.
    #[serde(default)]
    pub cert_expires_ms: Option<u64>,
    /// Milliseconds since the Unix epoch when this was written.
    pub written_at_ms: u64,
}

impl SidecarStatus {
    /// Reads the status file of the sidecar whose directory is `dir`.
    pub fn read(dir: &Path) -> Option<SidecarStatus> {
        let text = std::fs::read(status_path(dir)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// Configuration of a [`SidecarLink`].
#[derive(Clone, Debug)]
pub struct SidecarLinkConfig {
    /// The hub (this node): the identity it announces, which the sidecar
    /// checks against the one it holds.
    pub node: NodeId,
    /// The root, the link's only peer.
    pub root: NodeId,
    /// The sidecar's directory (socket, secret, status).
    pub dir: PathBuf,
    /// The codec of the local session.
    pub codec: CodecConfig,
    /// Probing of the local hop.
    pub probe: ProbeConfig,
    /// Re-dialling the socket after a loss.
    pub reconnect: Backoff,
    /// How long the sidecar may take to answer `Hello` (it waits for its
    /// remote session up to its own limit before answering).
    pub hello_timeout: Duration,
    /// The sidecar's diagnostics as its last [`STATUS_SIGNAL`] frame on the
    /// local session said (shared by every clone of this config, so it
    /// outlives a re-dial).
    pub diagnostics: Arc<Mutex<Option<SidecarStatus>>>,
}

/// The `Signal` kind of the sidecar's diagnostics on a local session:
/// `to` and `from` are the hub, `payload` a MessagePack [`SidecarStatus`]
/// (a map keyed by field name), sent at least every probe interval. The
/// sidecar never carries a frame of a `sidecar/` kind from the root, so
/// no other node can pose as the sidecar (`docs/sidecar.md` §3).
pub const STATUS_SIGNAL: &str = "sidecar/status";

impl SidecarLinkConfig {
    /// A link for `node` to `root` through the sidecar in `dir`, with
    /// default probes, 50 ms–1 s backoff and a 10 s hello wait.
    pub fn new(node: impl Into<NodeId>, root: impl Into<NodeId>, dir: impl Into<PathBuf>) -> Self {
        Self {
            node: node.into(),
            root: root.into(),
            dir: dir.into(),
            codec: CodecConfig::default(),
            probe: ProbeConfig::default(),
            reconnect: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_secs(1),
                multiplier: 2.0,
                jitter: 0.2,
                max_attempts: None,
            },
            hello_timeout: Duration::from_secs(10),
            diagnostics: Arc::default(),
        }
    }
}

/// Binds the sidecar path: the hub's relay logic over a [`SidecarLink`],
/// reporting paths of kind [`PathKind::Sidecar`]. `relay.quic` gives the
/// node id, codec and backoff; `link` the local session.
pub fn bind(
    relay: RelayConfig,
    link: SidecarLinkConfig,
    events: impl Into<EventSink>,
) -> Arc<RelayTransport> {
    let (link, rx) = SidecarLink::new(link);
    RelayTransport::over_link(relay, link, rx, PathKind::Sidecar, events)
}

/// Why a local session could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The socket or the secret file could not be reached.
    #[error("sidecar not reachable: {0}")]
    Unreachable(String),
    /// The sidecar refused with a code of `docs/wire.md` §7.
    #[error("sidecar refused with code {code:#x}: {reason}")]
    Refused {
        /// The code.
        code: u32,
        /// The sidecar's reason.
        reason: String,
    },
    /// The sidecar answered something else than `Hello` or `Close`, for
    /// another identity, or not in time.
    #[error("sidecar protocol: {0}")]
    Protocol(String),
}

struct Session {
    id: u64,
    tx: mpsc::Sender<Frame>,
    /// Ends the session's tasks (redial, shutdown).
    stop: watch::Sender<bool>,
}

struct Inner {
    cfg: SidecarLinkConfig,
    events: mpsc::Sender<TransportEvent>,
    session: Mutex<Option<Session>>,
    next_session: AtomicU64,
    closed: AtomicBool,
    reached: AtomicBool,
    redialling: AtomicBool,
    dial: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
}

/// The hub's local session to its sidecar, as a [`RootLink`]. See the
/// module docs.
pub struct SidecarLink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SidecarLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarLink")
            .field("node", &self.inner.cfg.node)
            .field("dir", &self.inner.cfg.dir)
            .finish_non_exhaustive()
    }
}

/// A spawned task whose future type must not contain itself.
type BoxedTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Frames queued for the local session before `send` refuses with `Full`.
const SEND_QUEUE: usize = 4096;

impl SidecarLink {
    /// A link (not yet dialled) and the receiver of its events.
    pub fn new(cfg: SidecarLinkConfig) -> (Arc<Self>, mpsc::Receiver<TransportEvent>) {
        let (events, rx) = mpsc::channel(8192);
        let inner = Arc::new(Inner {
            cfg,
            events,
            session: Mutex::new(None),
            next_session: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            reached: AtomicBool::new(false),
            redialling: AtomicBool::new(false),
            dial: tokio::sync::Mutex::new(()),
            shutdown: watch::channel(false).0,
        });
        (Arc::new(Self { inner }), rx)
    }

    /// The sidecar's diagnostics: its last [`STATUS_SIGNAL`] frame, or,
    /// before one arrived, its status file.
    pub fn status(&self) -> Option<SidecarStatus> {
        lock(&self.inner.cfg.diagnostics)
            .clone()
            .or_else(|| SidecarStatus::read(&self.inner.cfg.dir))
    }
}

/// Opens and authenticates one local session (`docs/sidecar.md` §3).
pub async fn handshake(
    cfg: &SidecarLinkConfig,
) -> Result<(UnixStream, BytesMut, FrameDecoder), LinkError> {
    let secret = std::fs::read_to_string(secret_path(&cfg.dir))
        .map_err(|e| LinkError::Unreachable(format!("secret: {e}")))?;
    let mut stream = UnixStream::connect(socket_path(&cfg.dir))
        .await
        .map_err(|e| LinkError::Unreachable(format!("socket: {e}")))?;
    let hello = Frame::Hello(Hello {
        node: cfg.node.clone(),
        role: Role::Hub,
        features: 0,
        token: Some(secret.trim().to_string()),
    });
    write_frame(&mut stream, &hello, &cfg.codec)
        .await
        .map_err(|e| LinkError::Unreachable(e.to_string()))?;
    let mut buf = BytesMut::new();
    let mut decoder = FrameDecoder::new(cfg.codec);
    let answer = tokio::time::timeout(
        cfg.hello_timeout,
        read_frame(&mut stream, &mut buf, &mut decoder),
    )
    .await
    .map_err(|_| LinkError::Protocol("no answer to hello in time".into()))?
    .map_err(|e| LinkError::Unreachable(e.to_string()))?;
    match answer {
        Some(Frame::Hello(h)) if h.role == Role::Sidecar && h.node == cfg.node => {
            Ok((stream, buf, decoder))
        }
        Some(Frame::Hello(h)) => Err(LinkError::Protocol(format!(
            "sidecar answered as {} ({}), not for {}",
            h.node, h.role, cfg.node
        ))),
        Some(Frame::Close(c)) => Err(LinkError::Refused {
            code: c.code,
            reason: c.reason,
        }),
        Some(other) => Err(LinkError::Protocol(format!(
            "{:?} before the sidecar's hello",
            other.kind()
        ))),
        None => Err(LinkError::Unreachable("sidecar closed the socket".into())),
    }
}

impl Inner {
    async fn report(&self, fact: Fact) {
        let _ = self
            .events
            .send(TransportEvent {
                path: PathId::new(self.cfg.root.clone(), PathKind::Sidecar),
                fact,
            })
            .await;
    }

    /// One dial: opens a session unless one is open.
    async fn dial(self: &Arc<Self>) -> Result<(), LinkError> {
        let _one = self.dial.lock().await;
        if lock(&self.session).is_some() {
            return Ok(());
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(LinkError::Unreachable("link is shut down".into()));
        }
        let (stream, buf, decoder) = handshake(&self.cfg).await?;
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let (stop, stopped) = watch::channel(false);
        *lock(&self.session) = Some(Session { id, tx, stop });
        self.reached.store(true, Ordering::Release);
        tracing::info!(node = %self.cfg.node, session = id, "sidecar: local session up");
        self.report(Fact::Up).await;
        tokio::spawn(run_session(
            self.clone(),
            id,
            stream,
            buf,
            decoder,
            rx,
            stopped,
        ));
        Ok(())
    }

    /// After a loss: re-dials with backoff until a session is open again
    /// or the link is shut down. One such loop at a time.
    fn redial_loop(self: Arc<Self>) -> BoxedTask {
        Box::pin(self.redial_loop_inner())
    }

    async fn redial_loop_inner(self: Arc<Self>) {
        if self.redialling.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut shutdown = self.shutdown.subscribe();
        let mut attempt = 0u32;
        while !self.closed.load(Ordering::Acquire) {
            match self.dial().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(node = %self.cfg.node, attempt, error = %e, "sidecar: not back yet")
                }
            }
            let delay = self.cfg.reconnect.delay(attempt, &mut rand::rng());
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.redialling.store(false, Ordering::Release);
    }
}

/// Drives one local session: writes queued frames, reads the sidecar's,
/// probes the local hop; reports `Down` when it ends and starts re-dialling.
async fn run_session(
    inner: Arc<Inner>,
    id: u64,
    stream: UnixStream,
    mut buf: BytesMut,
    mut decoder: FrameDecoder,
    mut rx: mpsc::Receiver<Frame>,
    mut stopped: watch::Receiver<bool>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let codec = inner.cfg.codec;
    let (probe_tx, mut probe_rx) = mpsc::channel::<Frame>(16);
    // The writer: the hub's frames in the order they were queued.
    let write_task = tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                biased;
                f = probe_rx.recv() => f,
                f = rx.recv() => f,
            };
            let Some(frame) = frame else { return };
            if write_frame(&mut writer, &frame, &codec).await.is_err() {
                return;
            }
        }
    });
    let mut prober = Prober::new(inner.cfg.probe, Instant::now().into_std());
    let cause = loop {
        let deadline = Instant::from_std(prober.next_deadline());
        tokio::select! {
            biased;
            _ = stopped.changed() => break DownCause::ClosedLocally,
            read = read_frame(&mut reader, &mut buf, &mut decoder) => match read {
                Ok(Some(Frame::ProbeAck(ack))) => {
                    if let Some(rtt) = prober.on_ack(Instant::now().into_std(), &ack) {
                        inner.report(Fact::ProbeAnswered { rtt }).await;
                    }
                }
                Ok(Some(Frame::Close(Close { code, reason }))) => {
                    break DownCause::ClosedByPeer { code, reason };
                }
                Ok(Some(Frame::Signal(s))) if s.kind == STATUS_SIGNAL => {
                    match rmp_serde::from_slice::<SidecarStatus>(&s.payload) {
                        Ok(st) => *lock(&inner.cfg.diagnostics) = Some(st),
                        Err(e) => tracing::warn!(error = %e, "sidecar: undecodable status"),
                    }
                }
                Ok(Some(frame)) => inner.report(Fact::Frame(frame)).await,
                Ok(None) => break DownCause::Reset,
                Err(e) => break DownCause::Unreachable(e.to_string()),
            },
            _ = tokio::time::sleep_until(deadline) => {
                let actions = prober.poll(Instant::now().into_std());
                if let Some(p) = actions.send {
                    let _ = probe_tx.try_send(Frame::Probe(p));
                }
                for _ in 0..actions.missed {
                    inner.report(Fact::ProbeMissed).await;
                }
            }
        }
    };
    write_task.abort();
    {
        let mut s = lock(&inner.session);
        if s.as_ref().is_some_and(|s| s.id == id) {
            *s = None;
        }
    }
    // What the sidecar said is not current any more.
    *lock(&inner.cfg.diagnostics) = None;
    tracing::info!(node = %inner.cfg.node, session = id, cause = %cause, "sidecar: local session down");
    inner.report(Fact::Down(cause)).await;
    if !inner.closed.load(Ordering::Acquire) && inner.reached.load(Ordering::Acquire) {
        // Boxed: dial → run_session → redial_loop → dial is a cycle of
        // futures whose types would otherwise contain themselves.
        tokio::spawn(inner.clone().redial_loop());
    }
}

#[async_trait]
impl Transport for SidecarLink {
    fn kind(&self) -> PathKind {
        PathKind::Sidecar
    }

    fn local(&self) -> &NodeId {
        &self.inner.cfg.node
    }

    async fn connect(&self, peer: &PeerAddr) -> Result<(), ConnectError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ConnectError::Shutdown);
        }
        if peer.node != self.inner.cfg.root {
            return Err(ConnectError::Unreachable(
                peer.node.clone(),
                "a sidecar link reaches only its root".into(),
            ));
        }
        match self.inner.dial().await {
            Ok(()) => Ok(()),
            Err(LinkError::Refused { code, reason }) => Err(ConnectError::Refused(
                peer.node.clone(),
                format!("sidecar refused with code {code:#x}: {reason}"),
            )),
            Err(e) => Err(ConnectError::Unreachable(peer.node.clone(), e.to_string())),
        }
    }

    fn send(&self, peer: &NodeId, frame: Frame) -> Result<(), SendError> {
        let tx = match lock(&self.inner.session).as_ref() {
            Some(s) if *peer == self.inner.cfg.root => s.tx.clone(),
            _ => {
                return Err(SendError::NoPath {
                    peer: peer.clone(),
                    kind: PathKind::Sidecar,
                    frame: Box::new(frame),
                });
            }
        };
        tx.try_send(frame).map_err(|e| {
            let full = matches!(e, mpsc::error::TrySendError::Full(_));
            let frame = Box::new(e.into_inner());
            let (peer, kind) = (peer.clone(), PathKind::Sidecar);
            if full {
                SendError::Full { peer, kind, frame }
            } else {
                SendError::NoPath { peer, kind, frame }
            }
        })
    }

    async fn close(&self, peer: &NodeId, _code: u32, reason: &str) {
        RootLink::redial(self, peer, reason);
    }

    async fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.inner.shutdown.send(true);
        if let Some(s) = lock(&self.inner.session).as_ref() {
            let _ = s.stop.send(true);
        }
    }
}

impl RootLink for SidecarLink {
    fn connected(&self) -> Vec<NodeId> {
        match lock(&self.inner.session).as_ref() {
            Some(_) => vec![self.inner.cfg.root.clone()],
            None => Vec::new(),
        }
    }

    fn redial(&self, _peer: &NodeId, reason: &str) {
        if let Some(s) = lock(&self.inner.session).as_ref() {
            tracing::info!(node = %self.inner.cfg.node, reason, "sidecar: dropping the local session to re-dial");
            let _ = s.stop.send(true);
        }
    }
}

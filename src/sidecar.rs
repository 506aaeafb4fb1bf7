//! The sidecar service: a separate process that owns a hub's remote socket
//! and none of its semantics (`docs/sidecar.md`).
//!
//! Owns, for exactly one hub (whose identity it loads from the hub's state
//! directory and is the only one it ever presents):
//! * the remote session to the root — a [`QuicTransport`] with the hub's
//!   credentials, its reconnect loop, its heartbeats (probes; `root_misses`
//!   in a row drop and re-dial the session) and its wire diagnostics
//!   ([`SidecarStatus`], written to `status.json`);
//! * the local endpoint: a Unix domain socket (directory 0700, socket
//!   0600) where a hub process authenticates with the per-start secret
//!   (file `secret`, 0600, new at every start) and a peer uid equal to the
//!   sidecar's; at most [`MAX_SESSIONS`] local sessions (old and new hub
//!   during a handoff), a third is refused with `SESSIONS_FULL`.
//!
//! Rules, enforced here by construction:
//! * the only frames it writes to the root are frames a hub sent it
//!   ([`FromHub`], built only by [`FromHub::check`] from a frame read from a
//!   local session): it never creates, drops, reorders or rewrites a frame
//!   of a relayed stream; a frame it will not carry is refused back to the
//!   hub with a typed `Reject` (`docs/wire.md` §7, group `sidecar`);
//! * the only frames it writes to a hub are the root's frames
//!   ([`FromRoot`], built only from the remote session's events, in order)
//!   and the local session's own `Hello`, `ProbeAck` (of the hub's local
//!   probes), `Reject` and `Close`;
//! * `Relay.from` and `Signal.from` must name the hub it serves;
//! * when the remote session closes, every local session is closed with
//!   `REMOTE_CLOSED`, so the hub re-establishes its paths;
//! * a local session is accepted only while the remote session is up.
//!
//! Must not touch: outbox, dedupe, cursors, classification, degraded
//! modes, routing decisions — the hub keeps all of them.
//!
//! ```compile_fail
//! // The sidecar has no API that sends a frame of its own: a `FromHub`
//! // (the only thing it writes to the root) cannot be made outside this
//! // module, so an ack the hub never sent cannot be produced.
//! use interlocking::sidecar::FromHub;
//! use interlocking::wire::{Ack, Frame};
//! let invented = FromHub(Frame::Ack(Ack {
//!     stream: "command:m1/hub".into(), incarnation: 1, seq: 1, message_id: 1, credit: 1,
//! }));
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::sync::lock;
use crate::transports::quic::{QuicConfig, QuicError, QuicTransport};
use crate::transports::relay::DEFAULT_ROOT_MISSES;
pub use crate::transports::sidecar::{
    STATUS_SIGNAL, SidecarStatus, secret_path, socket_path, status_path,
};
use crate::transports::{Fact, PeerAddr, SendError, Transport, TransportEvent};
use crate::trust::NodeIdentity;
use crate::vocab::{NodeId, Role};
use crate::wire::codes::sidecar as codes;
use crate::wire::{
    Close, CodecConfig, Frame, FrameDecoder, Hello, ProbeAck, Reject, Signal, read_frame,
    write_frame,
};

/// Local sessions at once: an old and a new hub process during a handoff.
pub const MAX_SESSIONS: usize = 2;

/// Frames queued towards one local session; a full queue backpressures
/// the remote session's reader (nothing is dropped).
const SESSION_QUEUE: usize = 4096;

/// Configuration of a [`Sidecar`].
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    /// The remote session: the hub's credentials, probes, backoff. Its
    /// identity is the hub's and the only one the sidecar presents.
    pub quic: QuicConfig,
    /// The root's node endpoint.
    pub root: PeerAddr,
    /// The directory of the socket, secret and status files (created 0700).
    pub dir: PathBuf,
    /// This many remote probes missed in a row drop and re-dial the
    /// remote session (0 is treated as 1).
    pub root_misses: u32,
    /// How long a new local session waits for the remote session before
    /// it is refused with `REMOTE_DOWN`.
    pub remote_wait: Duration,
    /// How long a local client may take to send its `Hello`.
    pub hello_timeout: Duration,
    /// When the hub's certificate in `quic` expires, for the status file
    /// (`None`: not shown until [`Sidecar::renew_identity`]).
    pub cert_expires: Option<SystemTime>,
}

impl SidecarConfig {
    /// A sidecar for the hub whose remote session is `quic`, reaching
    /// `root`, with its files in `dir`.
    pub fn new(quic: QuicConfig, root: PeerAddr, dir: impl Into<PathBuf>) -> Self {
        Self {
            quic,
            root,
            dir: dir.into(),
            root_misses: DEFAULT_ROOT_MISSES,
            remote_wait: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(5),
            cert_expires: None,
        }
    }
}

/// Why a sidecar could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// The directory, secret or socket could not be set up.
    #[error("sidecar files in {0}: {1}")]
    Files(PathBuf, std::io::Error),
    /// The remote session's endpoint could not be bound.
    #[error(transparent)]
    Quic(#[from] QuicError),
}

/// A frame a hub sent on a local session, checked to be carried to the
/// root unchanged. Only [`FromHub::check`] makes one.
#[derive(Debug)]
pub struct FromHub(Frame);

/// Why a hub's frame is not carried: the typed reason sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The frame names another sender than the hub.
    NotOwnIdentity(NodeId),
    /// The kind is not carried to the root.
    KindRefused(crate::wire::FrameKind),
}

impl Refusal {
    fn reject(&self) -> Reject {
        let (code, reason) = match self {
            Refusal::NotOwnIdentity(n) => (
                codes::NOT_OWN_IDENTITY,
                format!("sender {n} is not the hub this sidecar serves"),
            ),
            Refusal::KindRefused(k) => (
                codes::KIND_REFUSED,
                format!("{k:?} is not carried to the root"),
            ),
        };
        Reject {
            stream: None,
            message_id: None,
            code,
            reason,
        }
    }
}

impl FromHub {
    /// Checks a frame read from the hub `hub`'s local session: the frames
    /// a hub sends its root (relay envelopes and signals in its own name,
    /// rendezvous) are carried; anything else is refused.
    pub fn check(frame: Frame, hub: &NodeId) -> Result<FromHub, Refusal> {
        match &frame {
            Frame::Relay(r) if r.from != *hub => Err(Refusal::NotOwnIdentity(r.from.clone())),
            Frame::Signal(s) if s.from != *hub => Err(Refusal::NotOwnIdentity(s.from.clone())),
            Frame::Relay(_) | Frame::Signal(_) | Frame::Register(_) | Frame::Lookup(_) => {
                Ok(FromHub(frame))
            }
            other => Err(Refusal::KindRefused(other.kind())),
        }
    }

    /// The frame, as the hub sent it.
    pub fn frame(&self) -> &Frame {
        &self.0
    }
}

/// A frame the root sent on the remote session, for the hub. Only the
/// remote session's reader makes one.
#[derive(Debug)]
pub struct FromRoot(Frame);

/// What the sidecar writes to a local session.
#[derive(Debug)]
enum ToHub {
    Root(FromRoot),
    ProbeAck(ProbeAck),
    Reject(Reject),
    /// Diagnostics, sent as a [`STATUS_SIGNAL`] signal.
    Status(Box<SidecarStatus>),
}

struct LocalSession {
    id: u64,
    tx: mpsc::Sender<ToHub>,
    close: watch::Sender<Option<(u16, String)>>,
}

struct Counters {
    reconnects: AtomicU64,
    refused_sessions: AtomicU64,
    refused_frames: AtomicU64,
    to_root: AtomicU64,
    to_hub: AtomicU64,
    rtt_us: AtomicU64,
}

struct Inner {
    cfg: SidecarConfig,
    hub: NodeId,
    codec: CodecConfig,
    secret: String,
    uid: u32,
    link: Arc<QuicTransport>,
    remote_up: watch::Sender<bool>,
    sessions: Mutex<Vec<LocalSession>>,
    next_session: AtomicU64,
    counters: Counters,
    shutdown: watch::Sender<bool>,
    /// The hub certificate's expiry (ms since the epoch; 0: unknown).
    cert_expires_ms: AtomicU64,
}

/// A running sidecar. See the module docs.
pub struct Sidecar {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("hub", &self.inner.hub)
            .field("dir", &self.inner.cfg.dir)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn files_err(dir: &Path) -> impl Fn(std::io::Error) -> SidecarError + '_ {
    move |e| SidecarError::Files(dir.to_path_buf(), e)
}

/// Writes `text` to `path` with mode 0600 (through a temporary file, so a
/// reader never sees half a secret).
fn write_private(path: &Path, text: &str, durable: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    if durable {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Compares without an early exit, so timing does not tell how much of a
/// guessed secret was right.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sidecar {
    /// Creates the directory, a new secret and the socket, binds the
    /// remote session's endpoint and starts dialling the root.
    pub async fn start(cfg: SidecarConfig) -> Result<Sidecar, SidecarError> {
        crate::trust::ensure_crypto_provider();
        let dir = cfg.dir.clone();
        std::fs::create_dir_all(&dir).map_err(files_err(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(files_err(&dir))?;
        let mut raw = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut raw[..]);
        let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        // The socket first: a hub dialling between the two files finds the
        // old secret refused and retries, never a socket with no secret.
        let sock = socket_path(&dir);
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).map_err(files_err(&dir))?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .map_err(files_err(&dir))?;
        write_private(&secret_path(&dir), &secret, true).map_err(files_err(&dir))?;
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let (tx, rx) = mpsc::channel(8192);
        let link = QuicTransport::bind(cfg.quic.clone(), tx)?;
        let inner = Arc::new(Inner {
            hub: cfg.quic.identity.node.clone(),
            codec: cfg.quic.codec,
            secret,
            uid,
            link,
            remote_up: watch::channel(false).0,
            sessions: Mutex::new(Vec::new()),
            next_session: AtomicU64::new(1),
            counters: Counters {
                reconnects: AtomicU64::new(0),
                refused_sessions: AtomicU64::new(0),
                refused_frames: AtomicU64::new(0),
                to_root: AtomicU64::new(0),
                to_hub: AtomicU64::new(0),
                rtt_us: AtomicU64::new(u64::MAX),
            },
            shutdown: watch::channel(false).0,
            cert_expires_ms: AtomicU64::new(cfg.cert_expires.map_or(0, epoch_ms)),
            cfg,
        });
        let tasks = vec![
            tokio::spawn(dial_root(inner.clone())),
            tokio::spawn(remote_loop(inner.clone(), rx)),
            tokio::spawn(accept_loop(inner.clone(), listener)),
            tokio::spawn(status_loop(inner.clone())),
        ];
        tracing::info!(hub = %inner.hub, dir = %dir.display(), "sidecar: started");
        Ok(Sidecar { inner, tasks })
    }

    /// The hub this sidecar serves.
    pub fn hub(&self) -> &NodeId {
        &self.inner.hub
    }

    /// The local endpoint.
    pub fn socket_path(&self) -> PathBuf {
        socket_path(&self.inner.cfg.dir)
    }

    /// Watches whether the remote session is up.
    pub fn remote_up(&self) -> watch::Receiver<bool> {
        self.inner.remote_up.subscribe()
    }

    /// The current diagnostics.
    pub fn status(&self) -> SidecarStatus {
        self.inner.status()
    }

    /// Closes the local sessions and the remote session, removes the socket.
    /// Hands the hub's renewed identity to the remote session: the open
    /// session keeps running, every later connection to the root presents
    /// the new certificate. Refused unless it is the hub's own node and
    /// role (the sidecar never presents another node's identity).
    pub fn renew_identity(
        &self,
        identity: &NodeIdentity,
        expires: SystemTime,
    ) -> Result<(), SidecarError> {
        self.inner.link.renew_identity(identity)?;
        self.inner
            .cert_expires_ms
            .store(epoch_ms(expires), Ordering::Relaxed);
        Ok(())
    }

    pub async fn shutdown(self) {
        let _ = self.inner.shutdown.send(true);
        self.inner
            .close_all(codes::REMOTE_CLOSED, "sidecar stopping");
        self.inner.link.shutdown().await;
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(socket_path(&self.inner.cfg.dir));
    }
}

impl Inner {
    fn status(&self) -> SidecarStatus {
        let c = &self.counters;
        let rtt = c.rtt_us.load(Ordering::Relaxed);
        SidecarStatus {
            pid: std::process::id(),
            node: self.hub.to_string(),
            root: self.cfg.root.node.to_string(),
            remote_up: *self.remote_up.borrow(),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            rtt_us: (rtt != u64::MAX).then_some(rtt),
            sessions: lock(&self.sessions).len(),
            refused_sessions: c.refused_sessions.load(Ordering::Relaxed),
            refused_frames: c.refused_frames.load(Ordering::Relaxed),
            to_root: c.to_root.load(Ordering::Relaxed),
            to_hub: c.to_hub.load(Ordering::Relaxed),
            cert_expires_ms: Some(self.cert_expires_ms.load(Ordering::Relaxed))
                .filter(|ms| *ms > 0),
            written_at_ms: epoch_ms(SystemTime::now()),
        }
    }

    /// Closes every local session with `code`.
    fn close_all(&self, code: u16, reason: &str) {
        for s in lock(&self.sessions).iter() {
            let _ = s.close.send(Some((code, reason.to_string())));
        }
    }

    /// The newest local session's queue: the root's frames go to the hub
    /// that connected last (the new process during a handoff).
    fn newest(&self) -> Option<mpsc::Sender<ToHub>> {
        lock(&self.sessions).last().map(|s| s.tx.clone())
    }
}

/// Dials the root until the remote session is up once; the QUIC transport
/// re-dials by itself after that.
async fn dial_root(inner: Arc<Inner>) {
    let backoff = inner.cfg.quic.reconnect;
    let mut attempt = 0u32;
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        match inner.link.connect(&inner.cfg.root).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(attempt, error = %e, "sidecar: root not reachable yet"),
        }
        let delay = backoff.delay(attempt, &mut rand::rng());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Reads the remote session's events in order: tracks up/down and probe
/// health, hands the root's frames to the newest local session (waiting
/// for room: backpressure, never a drop).
async fn remote_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<TransportEvent>) {
    let mut misses = 0u32;
    let mut ups = 0u64;
    while let Some(ev) = rx.recv().await {
        if ev.path.peer != inner.cfg.root.node {
            continue;
        }
        match ev.fact {
            Fact::Up => {
                misses = 0;
                ups += 1;
                if ups > 1 {
                    inner.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(hub = %inner.hub, "sidecar: remote session up");
                inner.remote_up.send_replace(true);
            }
            Fact::Down(cause) => {
                inner.remote_up.send_replace(false);
                tracing::warn!(hub = %inner.hub, cause = %cause, "sidecar: remote session down; closing local sessions");
                inner.close_all(
                    codes::REMOTE_CLOSED,
                    &format!("remote session down: {cause}"),
                );
            }
            Fact::ProbeAnswered { rtt } => {
                misses = 0;
                let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX - 1);
                inner.counters.rtt_us.store(us, Ordering::Relaxed);
            }
            Fact::ProbeMissed => {
                misses = misses.saturating_add(1);
                if misses == inner.cfg.root_misses.max(1) && *inner.remote_up.borrow() {
                    tracing::warn!(hub = %inner.hub, misses, "sidecar: remote probes missed; re-dialling");
                    inner.remote_up.send_replace(false);
                    inner.close_all(codes::REMOTE_CLOSED, "remote session missed its probes");
                    inner.link.redial(&inner.cfg.root.node, "missed probes");
                }
            }
            Fact::Frame(Frame::Signal(s)) if s.kind.starts_with("sidecar/") => {
                // Only the sidecar speaks for the sidecar: a root-side
                // frame of its kinds is never carried to the hub.
                inner
                    .counters
                    .refused_frames
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(hub = %inner.hub, from = %s.from, kind = %s.kind, "sidecar: a sidecar-kind signal from the root refused");
            }
            Fact::Frame(frame) => {
                if let Some(tx) = inner.newest()
                    && tx.send(ToHub::Root(FromRoot(frame))).await.is_ok()
                {
                    inner.counters.to_hub.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: UnixListener) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(local_session(inner.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(error = %e, "sidecar: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Refuses a local client with `code` and closes its socket.
async fn refuse(inner: &Inner, mut stream: UnixStream, code: u16, reason: &str) {
    inner
        .counters
        .refused_sessions
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(code, reason, "sidecar: local session refused");
    let close = Frame::Close(Close {
        code: u32::from(code),
        reason: reason.to_string(),
    });
    let _ = write_frame(&mut stream, &close, &inner.codec).await;
}

/// One local session: authentication, then frames both ways until either
/// side closes.
async fn local_session(inner: Arc<Inner>, mut stream: UnixStream) {
    let codec = inner.codec;
    let uid_ok = stream.peer_cred().is_ok_and(|c| c.uid() == inner.uid);
    let mut buf = BytesMut::new();
    let mut decoder = FrameDecoder::new(codec);
    let hello = tokio::time::timeout(
        inner.cfg.hello_timeout,
        read_frame(&mut stream, &mut buf, &mut decoder),
    )
    .await;
    let authentic = match hello {
        Ok(Ok(Some(Frame::Hello(h)))) => {
            h.node == inner.hub
                && h.role == Role::Hub
                && h.token
                    .as_deref()
                    .is_some_and(|t| same_secret(t, &inner.secret))
        }
        _ => false,
    };
    if !uid_ok || !authentic {
        return refuse(
            &inner,
            stream,
            codes::UNAUTHENTICATED,
            "secret or uid refused",
        )
        .await;
    }
    let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
    let (close, mut closed) = watch::channel(None);
    let id = inner.next_session.fetch_add(1, Ordering::Relaxed);
    let admitted = {
        let mut sessions = lock(&inner.sessions);
        let room = sessions.len() < MAX_SESSIONS;
        if room {
            sessions.push(LocalSession {
                id,
                tx: tx.clone(),
                close,
            });
        }
        room
    };
    if !admitted {
        return refuse(
            &inner,
            stream,
            codes::SESSIONS_FULL,
            "two local sessions are open",
        )
        .await;
    }
    let remove = |inner: &Inner| lock(&inner.sessions).retain(|s| s.id != id);
    let mut up = inner.remote_up.subscribe();
    let ready = tokio::time::timeout(inner.cfg.remote_wait, up.wait_for(|u| *u))
        .await
        .is_ok_and(|r| r.is_ok());
    if !ready {
        remove(&inner);
        return refuse(
            &inner,
            stream,
            codes::REMOTE_DOWN,
            "the remote session is not up",
        )
        .await;
    }
    let answer = Frame::Hello(Hello {
        node: inner.hub.clone(),
        role: Role::Sidecar,
        features: 0,
        token: None,
    });
    if write_frame(&mut stream, &answer, &codec).await.is_err() {
        remove(&inner);
        return;
    }
    tracing::info!(hub = %inner.hub, session = id, "sidecar: local session up");
    let (mut reader, mut writer) = stream.into_split();
    // The writer: the root's frames in arrival order, and this session's
    // own answers; a close request ends it with a `Close`.
    let write_task = tokio::spawn(async move {
        loop {
            let out = tokio::select! {
                biased;
                c = closed.wait_for(|c| c.is_some()) => {
                    Err(c.map(|c| c.clone().unwrap_or_default()).unwrap_or_default())
                }
                out = rx.recv() => Ok(out),
            };
            let out = match out {
                Ok(out) => out,
                Err((code, reason)) => {
                    let close = Frame::Close(Close {
                        code: u32::from(code),
                        reason,
                    });
                    let _ = write_frame(&mut writer, &close, &codec).await;
                    return;
                }
            };
            let frame = match out {
                Some(ToHub::Root(FromRoot(f))) => f,
                Some(ToHub::ProbeAck(a)) => Frame::ProbeAck(a),
                Some(ToHub::Reject(r)) => Frame::Reject(r),
                Some(ToHub::Status(st)) => match rmp_serde::to_vec_named(&*st) {
                    Ok(payload) => Frame::Signal(Signal {
                        to: st.node.as_str().into(),
                        from: st.node.as_str().into(),
                        kind: STATUS_SIGNAL.into(),
                        payload: payload.into(),
                    }),
                    Err(_) => continue,
                },
                None => return,
            };
            if write_frame(&mut writer, &frame, &codec).await.is_err() {
                return;
            }
        }
    });
    loop {
        let frame = match read_frame(&mut reader, &mut buf, &mut decoder).await {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => break,
        };
        match frame {
            Frame::Probe(p) => {
                let _ = tx.try_send(ToHub::ProbeAck(ProbeAck {
                    nonce: p.nonce,
                    sent_at_us: p.sent_at_us,
                }));
            }
            Frame::Close(_) => break,
            other => match FromHub::check(other, &inner.hub) {
                Ok(fwd) => match inner.link.send(&inner.cfg.root.node, fwd.0) {
                    Ok(()) => {
                        inner.counters.to_root.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(SendError::Full { .. }) => {
                        inner
                            .counters
                            .refused_frames
                            .fetch_add(1, Ordering::Relaxed);
                        let _ = tx
                            .send(ToHub::Reject(Reject {
                                stream: None,
                                message_id: None,
                                code: codes::QUEUE_FULL,
                                reason: "the remote session's send queue is full".into(),
                            }))
                            .await;
                    }
                    Err(_) => {
                        // The remote session is gone: the hub must
                        // re-establish, not have frames vanish.
                        if let Some(s) = lock(&inner.sessions).iter().find(|s| s.id == id) {
                            let _ = s
                                .close
                                .send(Some((codes::REMOTE_CLOSED, "remote session down".into())));
                        }
                        break;
                    }
                },
                Err(refusal) => {
                    inner
                        .counters
                        .refused_frames
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(hub = %inner.hub, ?refusal, "sidecar: frame refused");
                    let _ = tx.send(ToHub::Reject(refusal.reject())).await;
                }
            },
        }
    }
    remove(&inner);
    // Let the writer flush a pending close, bounded.
    let _ = tokio::time::timeout(Duration::from_millis(200), write_task).await;
    tracing::info!(hub = %inner.hub, session = id, "sidecar: local session closed");
}

/// Writes the diagnostics file about once a probe interval.
async fn status_loop(inner: Arc<Inner>) {
    let path = status_path(&inner.cfg.dir);
    let every = inner
        .cfg
        .quic
        .probe
        .interval
        .max(Duration::from_millis(100));
    loop {
        let status = inner.status();
        if let Ok(json) = serde_json::to_string(&status) {
            // Diagnostics: no fsync, a torn write is just skipped by readers.
            let _ = write_private(&path, &json, false);
        }
        // And to every local session, as a frame (a full queue skips one).
        for s in lock(&inner.sessions).iter() {
            let _ = s.tx.try_send(ToHub::Status(Box::new(status.clone())));
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ack, Data, Lookup, Relay, Signal};
    use bytes::Bytes;

    fn hub() -> NodeId {
        NodeId::new("hub")
    }

    #[test]
    fn only_the_hubs_own_root_frames_are_carried() {
        let relay = |from: &str| {
            Frame::Relay(Relay {
                to: NodeId::new("m1"),
                from: NodeId::new(from),
                frame: Bytes::from_static(b"opaque"),
            })
        };
        let carried = FromHub::check(relay("hub"), &hub()).unwrap();
        assert_eq!(carried.frame(), &relay("hub"), "carried unchanged");
        assert_eq!(
            FromHub::check(relay("m2"), &hub()).unwrap_err(),
            Refusal::NotOwnIdentity(NodeId::new("m2"))
        );
        let signal = Frame::Signal(Signal {
            to: NodeId::new("m1"),
            from: NodeId::new("root"),
            kind: "webrtc/offer".into(),
            payload: Bytes::new(),
        });
        assert!(matches!(
            FromHub::check(signal, &hub()),
            Err(Refusal::NotOwnIdentity(_))
        ));
        let lookup = Frame::Lookup(Lookup {
            request_id: 1,
            node: Some(NodeId::new("m1")),
            capability: None,
        });
        assert!(FromHub::check(lookup, &hub()).is_ok());
        let ack = Frame::Ack(Ack {
            stream: "command:m1/hub".into(),
            incarnation: 1,
            seq: 1,
            message_id: 1,
            credit: 1,
        });
        let data = Frame::Data(Data {
            stream: "command:hub/m1".into(),
            incarnation: 1,
            seq: 1,
            message_id: 1,
            class: 0,
            delivery: 0,
            payload: Bytes::new(),
        });
        for f in [ack, data] {
            let kind = f.kind();
            assert_eq!(
                FromHub::check(f, &hub()).unwrap_err(),
                Refusal::KindRefused(kind)
            );
        }
        let r = Refusal::KindRefused(crate::wire::FrameKind::Ack).reject();
        assert_eq!(
            (r.code, r.stream, r.message_id),
            (codes::KIND_REFUSED, None, None)
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abcd", "abcd"));
        assert!(!same_secret("abcd", "abce"));
        assert!(!same_secret("abcd", "abc"));
        assert!(!same_secret("", "a"));
    }
}

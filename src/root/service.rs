//! The root service: admission endpoint, relay forwarding, rendezvous
//! registry and relay dedupe, as tasks around one QUIC transport.
//!
//! Owns the root's sockets and its runtime tables (who is online, what they
//! registered, recently forwarded class-A keys). Two endpoints:
//! * the **node endpoint** (`local_addr`): the ordinary QUIC transport with
//!   mutual TLS (ALPN `interlocking/2`) against the root CA; a revoked
//!   node's connection is closed with [`codes::REVOKED`] as soon as it is
//!   up, and every frame it sends before that is ignored;
//! * the **join endpoint** (`join_addr`): a second QUIC endpoint with
//!   server-only TLS on ALPN `interlocking-join/1`, one bidirectional
//!   stream per join: `JoinRequest` in, `JoinGranted` or `JoinRefused` out.
//!
//! A second port keeps the node endpoint's rule simple (client certificate
//! always required) instead of relaxing it per ALPN.
//!
//! Supervision: the serving loop and the join loop are supervised tasks
//! ([`task_spec`]) under the same [`Supervisor`] and [`RestartPolicy`] as
//! every node's actors: a panicking loop is restarted with backoff (the
//! event queue survives it); past the restart intensity the supervisor
//! escalates, and the root then closes its node endpoint, so nodes see it
//! gone and fail over, instead of talking to a root that no longer
//! forwards.
//!
//! Must not touch: hub semantics (no outbox, no handler execution, no
//! channel state). The root reads the envelope of relayed inner `Data`
//! frames for dedupe and nothing else of them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use quinn::crypto::rustls::QuicServerConfig;
use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::admission::{AdmissionError, JoinToken, codes};
use super::cluster::{ClusterConfig, JetStreamState};
use super::dedupe::Verdict;
use super::rendezvous;
use super::state::{DedupeBounds, LocalState, RootState, StateHealth};
use crate::actors::restart::RestartPolicy;
use crate::actors::supervisor::{RestartMode, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::task::task_spec;
use crate::sync::lock;
use crate::transports::probe::ProbeConfig;
use crate::transports::quic::{ClassBudgets, QuicConfig, QuicError, QuicLimits, QuicTransport};
use crate::transports::{Fact, PeerAddr, SendError, Transport, TransportEvent};
use crate::trust::{self, CertificateAuthority, TrustError, TrustRoots};
use crate::vocab::{DeliveryClass, NodeId, Role};
use crate::wire::{CodecConfig, Frame, Reject, Relay, RelayRefused, Signal, decode_frame};

mod join_endpoint;
use join_endpoint::join_loop;

/// Configuration of a [`Root`].
#[derive(Clone, Debug)]
pub struct RootConfig {
    /// The root's node id (its certificate names it; nodes dial it by it).
    pub node: NodeId,
    /// Where the node endpoint (mutual TLS) listens.
    pub listen: SocketAddr,
    /// Where the join endpoint (server-only TLS) listens.
    pub join_listen: SocketAddr,
    /// Where the CA, tokens and revocations persist (`None`: memory only,
    /// a fresh CA per start).
    pub state_dir: Option<PathBuf>,
    /// Lifetime of certificates issued at admission (default 24 h).
    pub cert_lifetime: Duration,
    /// Default lifetime of join tokens (default 15 min).
    pub token_ttl: Duration,
    /// Most `(from, to, stream, message_id)` keys the relay dedupe table keeps.
    pub dedupe_capacity: usize,
    /// Bytes of cached relayed replies at most (default 64 MiB).
    pub dedupe_max_bytes: usize,
    /// How long a relayed class-A key is remembered (default 30 s).
    pub dedupe_ttl: Duration,
    /// How long a retry of a relayed frame that has no reply yet is dropped
    /// (the original is in flight) before it is forwarded again.
    pub dedupe_hold: Duration,
    /// Send queues of the node endpoint per traffic class and node
    /// (`DESIGN.md` §5). The route class's budget is the relay's
    /// per-destination budget (default 4096 frames / 64 MiB); a relayed
    /// frame over it is refused back to its sender with
    /// [`codes::OVER_BUDGET`].
    pub queue: ClassBudgets,
    /// Liveness probing of node connections.
    pub probe: ProbeConfig,
    /// QUIC idle timeout of node connections.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// Frame size limit.
    pub codec: CodecConfig,
    /// Restart policy of the root's tasks.
    pub restart: RestartPolicy,
    /// Time limit of each step of a join (`docs/root.md` §2.2): the
    /// handshake, opening the bidirectional stream, the `JoinRequest`
    /// arriving, and the joiner closing after the answer (default 10 s).
    pub join_timeout: Duration,
    /// Connection, stream and flow-control limits of the node endpoint
    /// (`docs/limits.md`).
    pub limits: QuicLimits,
    /// How long a node's `Hello` may take after its handshake (default 10 s).
    pub hello_timeout: Duration,
    /// How long a node endpoint handshake may take (default 1 s).
    pub handshake_timeout: Duration,
    /// Share root state with the other roots of a cluster through NATS
    /// JetStream (`docs/cluster.md`); `None` (default): this root's own
    /// state directory only.
    pub cluster: Option<ClusterConfig>,
}

impl Default for RootConfig {
    fn default() -> Self {
        Self {
            node: NodeId::new("root"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            join_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir: None,
            cert_lifetime: Duration::from_secs(24 * 3600),
            token_ttl: Duration::from_secs(15 * 60),
            dedupe_capacity: 65_536,
            dedupe_max_bytes: super::dedupe::DEFAULT_MAX_BYTES,
            dedupe_ttl: Duration::from_secs(30),
            dedupe_hold: Duration::from_secs(2),
            queue: ClassBudgets::default(),
            probe: ProbeConfig::default(),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            codec: CodecConfig::default(),
            restart: RestartPolicy::default(),
            join_timeout: Duration::from_secs(10),
            limits: QuicLimits::default(),
            hello_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(1),
            cluster: None,
        }
    }
}

/// Why the root could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// The admission book or CA could not be loaded or stored.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// Certificates or TLS configuration failed.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The node endpoint could not be bound.
    #[error(transparent)]
    Quic(#[from] QuicError),
    /// The join endpoint could not be bound, or state could not be read.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The root's supervisor could not be started.
    #[error("supervisor: {0}")]
    Spawn(String),
}

/// Counters of the root's work (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RootCounters {
    /// Join requests granted (renewals included).
    pub joins_granted: u64,
    /// Of those, certificate renewals.
    pub renewals: u64,
    /// Join requests refused.
    pub joins_refused: u64,
    /// Frames forwarded (relay and signal).
    pub relayed: u64,
    /// Frames refused back to their sender.
    pub relay_refused: u64,
    /// Relayed class-A data frames dropped as duplicates.
    pub deduped: u64,
    /// Connections closed because the node is revoked.
    pub revoked_closed: u64,
    /// Relay and signal frames whose `from` named another node than the
    /// authenticated sender: restamped with the sender, never delivered as
    /// the named node.
    pub restamped: u64,
}

#[derive(Default)]
struct Counters {
    joins_granted: AtomicU64,
    renewals: AtomicU64,
    joins_refused: AtomicU64,
    relayed: AtomicU64,
    relay_refused: AtomicU64,
    deduped: AtomicU64,
    revoked_closed: AtomicU64,
    restamped: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Inner {
    config: RootConfig,
    ca: Arc<CertificateAuthority>,
    state: Arc<dyn RootState>,
    quic: Arc<QuicTransport>,
    online: Mutex<HashSet<NodeId>>,
    known: Mutex<HashSet<NodeId>>,
    counters: Counters,
}

/// Loads the root CA from `dir` (`ca.der`, `ca.key.der`), creating and
/// storing a new one if there is none. Shared by the root and the
/// `interlocking token` command.
pub fn open_ca(dir: &Path) -> Result<CertificateAuthority, RootError> {
    const NAME: &str = "interlocking root CA";
    std::fs::create_dir_all(dir)?;
    let cert_path = dir.join("ca.der");
    let key_path = dir.join("ca.key.der");
    if cert_path.exists() && key_path.exists() {
        let cert = std::fs::read(&cert_path)?;
        let key = std::fs::read(&key_path)?;
        return Ok(CertificateAuthority::from_der(NAME, &cert, &key)?);
    }
    let ca = CertificateAuthority::generate(NAME)?;
    let tmp = dir.join(".ca.key.der.tmp");
    std::fs::write(&tmp, ca.key_der())?;
    std::fs::rename(&tmp, &key_path)?;
    let tmp = dir.join(".ca.der.tmp");
    std::fs::write(&tmp, ca.certificate().as_ref())?;
    std::fs::rename(&tmp, &cert_path)?;
    Ok(ca)
}

/// The root service. See the module docs.
#[derive(Debug)]
pub struct Root;

impl Root {
    /// Loads or creates the CA and admission book, binds both endpoints and
    /// starts serving. Must be called inside a tokio runtime.
    pub async fn spawn(config: RootConfig) -> Result<RootHandle, RootError> {
        trust::ensure_crypto_provider();
        let bounds = DedupeBounds {
            capacity: config.dedupe_capacity,
            max_bytes: config.dedupe_max_bytes,
            ttl: config.dedupe_ttl,
            hold: config.dedupe_hold,
        };
        let ca = match &config.state_dir {
            Some(dir) => open_ca(dir)?,
            None => CertificateAuthority::generate("interlocking root CA")?,
        };
        let state: Arc<dyn RootState> = match (&config.cluster, &config.state_dir) {
            (Some(cluster), dir) => {
                Arc::new(JetStreamState::connect(cluster, dir.as_deref(), bounds).await?)
            }
            (None, Some(dir)) => Arc::new(LocalState::open(dir, bounds)?),
            (None, None) => Arc::new(LocalState::in_memory(bounds)),
        };
        let revocations = state.revocations();
        let identity = ca.issue_node(&config.node, Role::Root)?;
        let mut quic_cfg = QuicConfig::new(identity.clone(), ca.roots());
        quic_cfg.listen = config.listen;
        quic_cfg.probe = config.probe;
        quic_cfg.idle_timeout = config.idle_timeout;
        quic_cfg.keep_alive = config.keep_alive;
        quic_cfg.codec = config.codec;
        quic_cfg.queue = config.queue;
        quic_cfg.limits = config.limits;
        quic_cfg.hello_timeout = config.hello_timeout;
        quic_cfg.handshake_timeout = config.handshake_timeout;
        quic_cfg.reconnect.max_attempts = Some(0);
        // The root's certificate is reissued at every start; its CA key is
        // what persists (in `state_dir`), so the reset key comes from it and
        // a restarted root resets its predecessor's connections at once.
        quic_cfg.reset_secret = Some(ca.key_der());
        let (tx, rx) = mpsc::channel(8192);
        let quic = QuicTransport::bind(quic_cfg, tx)?;

        let join_tls = trust::join_server_config(&identity, &ca.roots())?;
        let join_quic =
            QuicServerConfig::try_from(join_tls).map_err(|e| QuicError::Crypto(e.to_string()))?;
        let join_ep = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(join_quic)),
            config.join_listen,
        )?;

        let inner = Arc::new(Inner {
            config,
            ca: Arc::new(ca),
            state,
            quic,
            online: Mutex::new(HashSet::new()),
            known: Mutex::new(HashSet::new()),
            counters: Counters::default(),
        });
        let (stop, _) = watch::channel(false);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        // Actor names are process-global in ractor; the instance number lets
        // several roots with the same id live in one process (tests).
        static INSTANCE: AtomicU64 = AtomicU64::new(1);
        let prefix = format!(
            "{}#{}/root/",
            inner.config.node,
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        );
        let serving = {
            let (inner, stop) = (inner.clone(), stop.subscribe());
            task_spec(
                format!("{prefix}serve"),
                RestartMode::Transient,
                move || serve(inner.clone(), rx.clone(), stop.clone()),
            )
        };
        let joining = {
            let (inner, ep, stop) = (inner.clone(), join_ep.clone(), stop.subscribe());
            task_spec(format!("{prefix}join"), RestartMode::Transient, move || {
                join_loop(inner.clone(), ep.clone(), stop.clone())
            })
        };
        let mut children = vec![serving, joining];
        if let Some(rx) = revocations {
            // Supervised like the other loops; each (re)start listens
            // with a fresh receiver from then on.
            let (inner, stop) = (inner.clone(), stop.subscribe());
            children.push(task_spec(
                format!("{prefix}revocations"),
                RestartMode::Transient,
                move || close_revoked(inner.clone(), rx.resubscribe(), stop.clone()),
            ));
        }
        let (supervisor, exited) = Actor::spawn(
            Some(format!("{prefix}supervisor")),
            Supervisor,
            SupervisorArgs {
                policy: inner.config.restart,
                children,
            },
        )
        .await
        .map_err(|e| RootError::Spawn(e.to_string()))?;
        // Past the restart intensity the supervisor fails: close the node
        // endpoint so nodes fail over (a requested stop is not a failure).
        let watcher = {
            let (inner, stopping) = (inner.clone(), stop.subscribe());
            tokio::spawn(async move {
                let _ = exited.await;
                if !*stopping.borrow() {
                    tracing::error!(root = %inner.config.node, "root: supervisor escalated; closing the node endpoint");
                    inner.quic.shutdown().await;
                }
            })
        };
        tracing::info!(root = %inner.config.node, addr = %inner.quic.local_addr(), join = ?join_ep.local_addr(), "root: serving");
        Ok(RootHandle {
            inner,
            join_ep,
            stop,
            supervisor,
            watcher: Mutex::new(Some(watcher)),
        })
    }
}

/// A running root. Dropping it does not stop it; call
/// [`RootHandle::shutdown`].
pub struct RootHandle {
    inner: Arc<Inner>,
    join_ep: quinn::Endpoint,
    stop: watch::Sender<bool>,
    supervisor: ActorRef<SupervisorMsg>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RootHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootHandle")
            .field("node", &self.inner.config.node)
            .field("addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl RootHandle {
    /// The root's node id.
    pub fn node(&self) -> &NodeId {
        &self.inner.config.node
    }

    /// The node endpoint's address (mutual TLS).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.quic.local_addr()
    }

    /// The node endpoint as a dialable peer (for the relay transport).
    pub fn peer_addr(&self) -> PeerAddr {
        PeerAddr::at(self.inner.config.node.clone(), self.local_addr())
    }

    /// The join endpoint's address (server-only TLS, `interlocking-join/1`).
    pub fn join_addr(&self) -> SocketAddr {
        self.join_ep
            .local_addr()
            .unwrap_or(self.inner.config.join_listen)
    }

    /// The roots a node needs to trust the root and its peers.
    pub fn trust_roots(&self) -> TrustRoots {
        self.inner.ca.roots()
    }

    /// The root CA (for out-of-band issuance by operators and tests).
    pub fn certificate_authority(&self) -> Arc<CertificateAuthority> {
        self.inner.ca.clone()
    }

    /// Issues a single-use join token for `node` in `role`, valid for `ttl`
    /// (default [`RootConfig::token_ttl`]). Its string form is what an
    /// operator hands to the node.
    pub fn issue_token(
        &self,
        node: &NodeId,
        role: Role,
        ttl: Option<Duration>,
    ) -> Result<JoinToken, AdmissionError> {
        self.issue_token_with(node, role, ttl, &[])
    }

    /// Like [`RootHandle::issue_token`], granting `capabilities`: the node,
    /// once admitted with this token, may register exactly these for
    /// rendezvous (`docs/root.md` §4).
    pub fn issue_token_with(
        &self,
        node: &NodeId,
        role: Role,
        ttl: Option<Duration>,
        capabilities: &[String],
    ) -> Result<JoinToken, AdmissionError> {
        self.inner.state.issue(
            self.inner.ca.fingerprint(),
            node,
            role,
            ttl.unwrap_or(self.inner.config.token_ttl),
            SystemTime::now(),
            capabilities,
        )
    }

    /// Revokes `node`: its connection is closed with [`codes::REVOKED`],
    /// new connections are closed as soon as they are up, relays to and
    /// from it are refused, and its tokens no longer redeem.
    pub async fn revoke(&self, node: &NodeId) -> Result<(), AdmissionError> {
        self.inner.state.revoke(node).await?;
        if lock(&self.inner.online).remove(node) {
            bump(&self.inner.counters.revoked_closed);
            self.inner
                .quic
                .close(node, u32::from(codes::REVOKED), "revoked")
                .await;
        }
        announce_revocations(&self.inner);
        Ok(())
    }

    /// Whether `node` is revoked.
    pub fn is_revoked(&self, node: &NodeId) -> bool {
        self.inner.state.is_revoked(node)
    }

    /// The root-state backend's health (for readiness).
    pub fn state_health(&self) -> StateHealth {
        self.inner.state.health()
    }

    /// Nodes connected now, sorted.
    pub fn online(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = lock(&self.inner.online).iter().cloned().collect();
        v.sort();
        v
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> RootCounters {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RootCounters {
            joins_granted: g(&c.joins_granted),
            renewals: g(&c.renewals),
            joins_refused: g(&c.joins_refused),
            relayed: g(&c.relayed),
            relay_refused: g(&c.relay_refused),
            deduped: g(&c.deduped),
            revoked_closed: g(&c.revoked_closed),
            restamped: g(&c.restamped),
        }
    }

    /// The counters of the root's node endpoint (connection limits,
    /// refused streams and frames).
    pub fn quic_counters(&self) -> crate::transports::quic::QuicCounters {
        self.inner.quic.counters()
    }

    /// Closes both endpoints and every connection and stops the tasks.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        self.join_ep
            .close(quinn::VarInt::from(0x200u16), b"shutdown");
        self.inner.quic.shutdown().await;
        let _ = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        let watcher = lock(&self.watcher).take();
        if let Some(w) = watcher {
            let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
        }
        // Commit queued state and release its files for a successor.
        self.inner.state.close().await;
    }
}

/// Closes the connections of nodes revoked elsewhere (another root of the
/// cluster), as the state backend announces them.
async fn close_revoked(
    inner: Arc<Inner>,
    mut rx: tokio::sync::broadcast::Receiver<NodeId>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let node = tokio::select! {
            _ = stop.changed() => return,
            r = rx.recv() => match r {
                Ok(n) => n,
                // Missed some: close every online node that is revoked.
                Err(RecvError::Lagged(_)) => {
                    let online: Vec<NodeId> = lock(&inner.online).iter().cloned().collect();
                    for n in online.into_iter().filter(|n| inner.state.is_revoked(n)) {
                        close_revoked_node(&inner, &n).await;
                    }
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        close_revoked_node(&inner, &node).await;
    }
}

async fn close_revoked_node(inner: &Inner, node: &NodeId) {
    // The nodes of this root learn it too (their direct connections).
    announce_revocations(inner);
    if lock(&inner.online).remove(node) {
        bump(&inner.counters.revoked_closed);
        tracing::warn!(node = %node, code = codes::REVOKED, "root: node revoked in the cluster; closing");
        inner
            .quic
            .close(node, u32::from(codes::REVOKED), "revoked")
            .await;
    }
}

/// Why a destination cannot be reached through the root, if it cannot.
fn destination_refusal(inner: &Inner, to: &NodeId) -> Option<(u16, String)> {
    if inner.state.is_revoked(to) {
        return Some((codes::REVOKED, format!("{to} is revoked")));
    }
    if lock(&inner.online).contains(to) {
        return None;
    }
    if lock(&inner.known).contains(to) {
        Some((codes::OFFLINE, format!("{to} is not connected to the root")))
    } else {
        Some((codes::NOT_ADMITTED, format!("{to} is not an admitted node")))
    }
}

/// Reads the node endpoint's events and acts on them. The queue is shared
/// with the supervisor so a restarted task picks it up where it was.
async fn serve(
    inner: Arc<Inner>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<TransportEvent>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = rx.lock().await;
    loop {
        let ev = tokio::select! {
            _ = stop.changed() => return,
            ev = rx.recv() => match ev { Some(ev) => ev, None => return },
        };
        let peer = ev.path.peer;
        match ev.fact {
            Fact::Up => {
                if inner.state.is_revoked(&peer) {
                    bump(&inner.counters.revoked_closed);
                    tracing::warn!(node = %peer, code = codes::REVOKED, "root: revoked node refused");
                    inner
                        .quic
                        .close(&peer, u32::from(codes::REVOKED), "revoked")
                        .await;
                    continue;
                }
                lock(&inner.known).insert(peer.clone());
                lock(&inner.online).insert(peer.clone());
                send_revocations(&inner, &peer);
            }
            Fact::Down(_) => {
                lock(&inner.online).remove(&peer);
                inner.state.unregister(&peer);
            }
            Fact::Renewed => {
                // The node reconnected (perhaps restarted): what was
                // forwarded to its old connection and never answered may
                // be lost, so retries of it must be forwarded again, not
                // held back as "in flight".
                let n = inner.state.relay_forget_unanswered_to(&peer);
                tracing::debug!(node = %peer, forgotten = n, "root: connection renewed; unanswered relay keys forgotten");
            }
            Fact::Frame(frame) => on_frame(&inner, peer, frame).await,
            _ => {}
        }
    }
}

/// The `Signal` kind by which the root tells a node its revocation list
/// (`docs/root.md` §2.4).
pub const REVOKED_SIGNAL: &str = "root/revoked";

/// The most bytes of revoked node ids one announcement carries (it stays
/// under the signalling payload limit); newer revocations beyond it are
/// still enforced by the root itself.
const MAX_REVOKED_ANNOUNCEMENT: usize = 60 * 1024;

/// Sends the current revocation list to `peer`, so its direct connections
/// refuse revoked nodes too.
fn send_revocations(inner: &Inner, peer: &NodeId) {
    let mut list = inner.state.revoked();
    if list.is_empty() {
        // Lists only grow: an empty one tells a node nothing.
        return;
    }
    let mut bytes = 0;
    list.retain(|n| {
        bytes += n.as_str().len() + 5;
        bytes <= MAX_REVOKED_ANNOUNCEMENT
    });
    let Ok(payload) = rmp_serde::to_vec(&list) else {
        return;
    };
    let _ = inner.quic.send(
        peer,
        Frame::Signal(Signal {
            to: peer.clone(),
            from: inner.config.node.clone(),
            kind: REVOKED_SIGNAL.into(),
            payload: Bytes::from(payload),
        }),
    );
}

/// Sends the revocation list to every online node.
fn announce_revocations(inner: &Inner) {
    let online: Vec<NodeId> = lock(&inner.online).iter().cloned().collect();
    for peer in online {
        send_revocations(inner, &peer);
    }
}

/// Sends a refusal back to `peer` (control class: never behind relays).
fn refuse(inner: &Inner, peer: &NodeId, to: NodeId, code: u16, reason: String) {
    bump(&inner.counters.relay_refused);
    tracing::debug!(from = %peer, to = %to, code, reason = %reason, "root: relay refused");
    let _ = inner
        .quic
        .send(peer, Frame::RelayRefused(RelayRefused { to, code, reason }));
}

/// The dedupe verdict on an encoded inner frame from `from` to `to`: only
/// class-A data frames (by their `delivery` field) are looked at.
async fn dedupe(inner: &Inner, from: &NodeId, to: &NodeId, frame: &Bytes) -> Verdict {
    match decode_frame(frame, &inner.config.codec) {
        Ok(Frame::Data(d)) if d.delivery == DeliveryClass::A.code() => {
            let key = (
                from.clone(),
                to.clone(),
                d.stream,
                d.incarnation,
                d.message_id,
            );
            inner
                .state
                .relay_verdict(key, frame, std::time::Instant::now())
                .await
        }
        _ => Verdict::Forward,
    }
}

/// Forwards `frame` to `to`, or refuses it back to `from`.
fn forward(inner: &Inner, from: &NodeId, to: NodeId, frame: Frame) {
    match inner.quic.send(&to, frame) {
        Ok(()) => bump(&inner.counters.relayed),
        Err(SendError::Full { .. }) => refuse(
            inner,
            from,
            to,
            codes::OVER_BUDGET,
            "route budget exhausted".into(),
        ),
        Err(e) => refuse(inner, from, to, codes::OFFLINE, e.to_string()),
    }
}

async fn on_frame(inner: &Arc<Inner>, peer: NodeId, frame: Frame) {
    if !lock(&inner.online).contains(&peer) {
        // Revoked (being closed) or not yet up: nothing it says counts.
        return;
    }
    match frame {
        Frame::Relay(Relay { to, from, frame }) => {
            if from != peer {
                bump(&inner.counters.restamped);
            }
            if let Some((code, reason)) = destination_refusal(inner, &to) {
                return refuse(inner, &peer, to, code, reason);
            }
            match dedupe(inner, &peer, &to, &frame).await {
                Verdict::Forward => {}
                Verdict::Drop => {
                    bump(&inner.counters.deduped);
                    return;
                }
                Verdict::Replay(reply) => {
                    // Answer the retry with the reply the destination gave.
                    bump(&inner.counters.deduped);
                    let back = Frame::Relay(Relay {
                        to: peer.clone(),
                        from: to.clone(),
                        frame: reply,
                    });
                    return forward(inner, &peer, peer.clone(), back);
                }
            }
            let out = Frame::Relay(Relay {
                to: to.clone(),
                from: peer.clone(),
                frame,
            });
            forward(inner, &peer, to, out);
        }
        Frame::Signal(Signal {
            to,
            from,
            kind,
            payload,
        }) => {
            if from != peer {
                bump(&inner.counters.restamped);
            }
            if let Some((code, reason)) = destination_refusal(inner, &to) {
                return refuse(inner, &peer, to, code, reason);
            }
            let out = Frame::Signal(Signal {
                to: to.clone(),
                from: peer.clone(),
                kind,
                payload,
            });
            forward(inner, &peer, to, out);
        }
        Frame::Register(r) => {
            let allowed = inner.state.capabilities(&peer);
            match rendezvous::check_register(&peer, &r, &allowed, &inner.config.codec) {
                Ok(reg) => inner.state.register(&peer, reg),
                Err((code, reason)) => {
                    // The earlier registration (if any) stays.
                    tracing::warn!(node = %peer, code, reason = %reason, "root: register refused");
                    let _ = inner.quic.send(
                        &peer,
                        Frame::Reject(Reject {
                            stream: None,
                            message_id: None,
                            code,
                            reason,
                        }),
                    );
                }
            }
        }
        Frame::Lookup(l) => {
            let mut reply = None;
            inner.state.with_registry(&mut |registry| {
                reply = Some(rendezvous::answer(
                    &l,
                    registry,
                    |n| destination_refusal(inner, n).map(|(code, _)| code),
                    |n| inner.state.is_revoked(n),
                ))
            });
            let Some(reply) = reply else { return };
            if let Err(SendError::Encode(e)) =
                inner.quic.send(&peer, Frame::LookupReply(reply.clone()))
            {
                tracing::error!(node = %peer, error = %e, "root: lookup reply unsendable; refused instead");
                let _ = inner
                    .quic
                    .send(&peer, Frame::LookupReply(rendezvous::unsendable(&reply)));
            }
        }
        _ => {}
    }
}

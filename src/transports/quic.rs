//! The QUIC transport: one quinn endpoint per node, mutual TLS, one
//! connection per peer pair shared by every logical stream.
//!
//! Owns QUIC sockets and connections: dialling and accepting, the
//! certificate-derived peer identity, per-traffic-class send streams with
//! quinn stream priorities (control first), liveness probes over QUIC
//! datagrams, quinn's RTT/loss statistics and send-queue depth reported as
//! facts, re-dialling lost connections with jittered exponential backoff,
//! and refusing bad input with the close codes of `docs/wire.md` §7
//! ([`codes`]).
//!
//! Must not touch: channels, the store or routing. It moves opaque frames
//! and reports [`Fact`]s; the routing authority decides what they mean. The
//! only stream-level knowledge it has is the optional [`Admission`] check,
//! a predicate supplied by the node.
//!
//! Wire use (normative text in `docs/wire.md` §1):
//! * ALPN `interlocking/2`, TLS 1.3, client certificates required; the
//!   peer's [`NodeId`] comes from its verified certificate
//!   ([`crate::trust::node_from_certificate`]).
//! * Each side sends on unidirectional streams it opens, one per traffic
//!   class ([`TrafficClass`]), opened lazily; the control stream is opened
//!   at connection start and carries a [`Hello`] first. A receiver does not
//!   need to know which stream is which class: every stream is a plain
//!   concatenation of frames.
//! * `Probe`/`ProbeAck` travel as QUIC datagrams, one encoded frame each.
//! * `Relay` frames travel on the route class's stream, so relayed traffic
//!   is held to the route budget and never delays control frames.
//! * If both sides dial at once, the connection dialled by the lower node
//!   id survives; the other is closed with [`codes::DUPLICATE_CONNECTION`].

pub mod faults;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, VarInt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::probe::{ProbeConfig, Prober};
use super::{
    ConnectError, DownCause, EventSink, Fact, PeerAddr, SendError, Transport, TransportEvent,
};
use crate::sync::lock;
use crate::trust::{self, NodeIdentity, TrustRoots};
use crate::vocab::{NodeId, PathId, PathKind, StreamId, TrafficClass};
use crate::wire::{
    CodecConfig, DecodeError, Frame, FrameDecoder, Hello, ProbeAck, ReadError, decode_frame,
    encode_to_bytes, read_frame,
};

/// Close and stop codes assigned to the QUIC transport, in the transport
/// range `0x200–0x2ff` of `docs/wire.md` §7.
///
/// Codec errors on a stream are reported with the codec's own codes
/// (`0x100–0x106`, [`crate::wire::codes`]) as the stream's STOP_SENDING
/// code. Handshake refusals happen inside TLS, before any application code
/// can be sent: the peer sees the QUIC `CRYPTO_ERROR` for the TLS alert
/// (`0x100 + alert`, RFC 9001 §4.8); [`WRONG_ALPN`](codes::WRONG_ALPN) and
/// [`UNTRUSTED_CERTIFICATE`](codes::UNTRUSTED_CERTIFICATE) name those
/// refusals in counters, logs and facts.
pub mod codes {
    /// Connection closed because the endpoint is shutting down.
    pub const SHUTDOWN: u16 = 0x200;
    /// Handshake refused: the peer offered no ALPN this node speaks (on the
    /// wire: TLS alert 120, QUIC code `0x178`).
    pub const WRONG_ALPN: u16 = 0x201;
    /// Handshake refused: missing, invalid or untrusted certificate (on the
    /// wire: TLS alert 116 `certificate_required`, 48 `unknown_ca`, 42
    /// `bad_certificate`…, QUIC code `0x100 + alert`).
    pub const UNTRUSTED_CERTIFICATE: u16 = 0x202;
    /// Connection closed: the verified certificate names no node.
    pub const NO_IDENTITY: u16 = 0x203;
    /// Connection closed: a `Hello` named a node other than the
    /// certificate's.
    pub const HELLO_MISMATCH: u16 = 0x204;
    /// Stream stopped: a `Data` frame for a logical stream the peer is not
    /// admitted to.
    pub const NOT_ADMITTED: u16 = 0x205;
    /// Connection closed in favour of the other connection between the
    /// same two nodes (simultaneous dial or reconnect).
    pub const DUPLICATE_CONNECTION: u16 = 0x206;
    /// Stream stopped: the peer opened a bidirectional stream, which
    /// version 1 does not use.
    pub const UNEXPECTED_STREAM: u16 = 0x207;
}

/// Decides whether `peer` may send on a logical stream. Returning `false`
/// stops the QUIC stream that carried the frame with
/// [`codes::NOT_ADMITTED`].
pub type Admission = Arc<dyn Fn(&NodeId, &StreamId) -> bool + Send + Sync>;

/// Jittered exponential backoff for re-dialling a lost connection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the first re-dial.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Growth factor per failed attempt.
    pub multiplier: f64,
    /// Fraction of each delay drawn at random: the delay is
    /// `d * (1 - jitter * u)` with `u` uniform in `[0, 1)`.
    pub jitter: f64,
    /// Give up after this many attempts (`None`: until closed).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based), with `rng` supplying
    /// the jitter. Never above [`Backoff::max`].
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let base =
            self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let base = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0) * rng.random::<f64>();
        Duration::from_secs_f64(base * (1.0 - jitter))
    }
}

/// Per-class send-queue budget; a frame over it is refused with
/// [`SendError::Full`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueBudget {
    /// Frames waiting per class and peer.
    pub frames: usize,
    /// Bytes waiting per class and peer.
    pub bytes: usize,
}

impl Default for QueueBudget {
    fn default() -> Self {
        Self {
            frames: 4096,
            bytes: 16 * 1024 * 1024,
        }
    }
}

/// Configuration of a [`QuicTransport`].
#[derive(Clone)]
pub struct QuicConfig {
    /// This node's credentials; its node id is the transport's identity.
    pub identity: NodeIdentity,
    /// The CAs whose certificates peers must present.
    pub roots: TrustRoots,
    /// Where to listen (`127.0.0.1:0` in tests).
    pub listen: SocketAddr,
    /// Liveness probing.
    pub probe: ProbeConfig,
    /// Frame size limit.
    pub codec: CodecConfig,
    /// Re-dial policy.
    pub reconnect: Backoff,
    /// Send-queue budget per class and peer.
    pub queue: QueueBudget,
    /// QUIC idle timeout: no packet for this long means [`DownCause::Timeout`].
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval (below `idle_timeout`).
    pub keep_alive: Duration,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// Seed of the backoff jitter.
    pub seed: u64,
    /// Which logical streams each peer may send on (`None`: all).
    pub admission: Option<Admission>,
}

impl std::fmt::Debug for QuicConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicConfig")
            .field("node", &self.identity.node)
            .field("listen", &self.listen)
            .field("probe", &self.probe)
            .field("reconnect", &self.reconnect)
            .finish_non_exhaustive()
    }
}

impl QuicConfig {
    /// A configuration with defaults: listen on `127.0.0.1:0`, default
    /// probes, codec and backoff, 10 s idle timeout, 1 s keep-alive.
    pub fn new(identity: NodeIdentity, roots: TrustRoots) -> Self {
        Self {
            identity,
            roots,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            probe: ProbeConfig::default(),
            codec: CodecConfig::default(),
            reconnect: Backoff::default(),
            queue: QueueBudget::default(),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            seed: 0,
            admission: None,
        }
    }
}

/// Why a QUIC transport could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// The TLS configuration was refused.
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
    /// quinn refused the TLS configuration.
    #[error("quic crypto configuration: {0}")]
    Crypto(String),
    /// The socket could not be bound.
    #[error("bind failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters of refused input and connection events (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuicCounters {
    /// Connections accepted and authenticated.
    pub accepted: u64,
    /// Handshakes refused for a wrong ALPN.
    pub refused_alpn: u64,
    /// Handshakes refused for a missing or untrusted certificate.
    pub refused_certificate: u64,
    /// Handshakes that failed otherwise (timeout, transport error).
    pub handshake_failed: u64,
    /// Connections closed because the certificate names no node.
    pub refused_no_identity: u64,
    /// Connections closed for a `Hello` naming another node.
    pub refused_hello_mismatch: u64,
    /// Streams stopped for undecodable bytes (malformed, truncated…).
    pub refused_malformed: u64,
    /// Streams stopped for an oversize frame.
    pub refused_too_large: u64,
    /// Streams stopped for an unknown protocol version.
    pub refused_version: u64,
    /// Streams stopped for a frame on a stream the peer is not admitted to.
    pub refused_not_admitted: u64,
    /// Streams stopped because the peer opened a bidirectional stream.
    pub refused_unexpected_stream: u64,
    /// Datagrams dropped as undecodable or not a probe.
    pub bad_datagrams: u64,
    /// Connections closed as duplicates.
    pub duplicates_closed: u64,
    /// Re-dial attempts.
    pub reconnect_attempts: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused_alpn: AtomicU64,
    refused_certificate: AtomicU64,
    handshake_failed: AtomicU64,
    refused_no_identity: AtomicU64,
    refused_hello_mismatch: AtomicU64,
    refused_malformed: AtomicU64,
    refused_too_large: AtomicU64,
    refused_version: AtomicU64,
    refused_not_admitted: AtomicU64,
    refused_unexpected_stream: AtomicU64,
    bad_datagrams: AtomicU64,
    duplicates_closed: AtomicU64,
    reconnect_attempts: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> QuicCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        QuicCounters {
            accepted: g(&self.accepted),
            refused_alpn: g(&self.refused_alpn),
            refused_certificate: g(&self.refused_certificate),
            handshake_failed: g(&self.handshake_failed),
            refused_no_identity: g(&self.refused_no_identity),
            refused_hello_mismatch: g(&self.refused_hello_mismatch),
            refused_malformed: g(&self.refused_malformed),
            refused_too_large: g(&self.refused_too_large),
            refused_version: g(&self.refused_version),
            refused_not_admitted: g(&self.refused_not_admitted),
            refused_unexpected_stream: g(&self.refused_unexpected_stream),
            bad_datagrams: g(&self.bad_datagrams),
            duplicates_closed: g(&self.duplicates_closed),
            reconnect_attempts: g(&self.reconnect_attempts),
        }
    }
}

/// Frames and bytes queued on one class sender.
#[derive(Default)]
struct Depth {
    frames: AtomicUsize,
    bytes: AtomicUsize,
}

struct ClassSender {
    tx: mpsc::UnboundedSender<Bytes>,
    depth: Arc<Depth>,
}

struct PeerConn {
    generation: u64,
    conn: Connection,
    dialer: NodeId,
    senders: [Option<ClassSender>; 5],
}

/// The quinn stream priority of a class: control highest.
fn priority(class: TrafficClass) -> i32 {
    (TrafficClass::ALL.len() as i32 - class.code() as i32) * 10
}

struct Inner {
    node: NodeId,
    config: QuicConfig,
    events: EventSink,
    endpoint: quinn::Endpoint,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<NodeId, PeerConn>>,
    dialled: Mutex<HashMap<NodeId, SocketAddr>>,
    reconnecting: Mutex<HashSet<NodeId>>,
    rng: Mutex<ChaCha8Rng>,
    counters: Counters,
    closed: AtomicBool,
    generation: AtomicU64,
    shutdown: watch::Sender<bool>,
}

/// The QUIC transport of one node.
pub struct QuicTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// Builds the quinn transport parameters of `config`.
fn transport_params(config: &QuicConfig) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(config.idle_timeout).ok());
    t.keep_alive_interval(Some(config.keep_alive));
    t.max_concurrent_bidi_streams(VarInt::from_u32(4));
    t.max_concurrent_uni_streams(VarInt::from_u32(64));
    Arc::new(t)
}

/// Builds the quinn server configuration of `config`.
fn quinn_server_config(config: &QuicConfig) -> Result<quinn::ServerConfig, QuicError> {
    let tls = trust::server_config(&config.identity, &config.roots)?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Crypto(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport_params(config));
    Ok(server)
}

/// Builds the quinn client configuration of `config`.
fn quinn_client_config(config: &QuicConfig) -> Result<quinn::ClientConfig, QuicError> {
    let tls = trust::client_config(&config.identity, &config.roots)?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Crypto(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport_params(config));
    Ok(client)
}

impl QuicTransport {
    /// Binds a QUIC endpoint on `config.listen` (server and client on the
    /// same socket) and starts accepting. Must be called inside a tokio
    /// runtime.
    pub fn bind(config: QuicConfig, events: impl Into<EventSink>) -> Result<Arc<Self>, QuicError> {
        let socket = std::net::UdpSocket::bind(config.listen)?;
        Self::bind_socket(config, events.into(), socket, None)
    }

    /// Like [`QuicTransport::bind`], with a fault-injecting socket beneath
    /// quinn controlled through `faults`.
    pub fn bind_with_faults(
        config: QuicConfig,
        events: impl Into<EventSink>,
        faults: faults::FaultHandle,
    ) -> Result<Arc<Self>, QuicError> {
        let socket = std::net::UdpSocket::bind(config.listen)?;
        Self::bind_socket(config, events.into(), socket, Some(faults))
    }

    fn bind_socket(
        config: QuicConfig,
        events: EventSink,
        socket: std::net::UdpSocket,
        faults: Option<faults::FaultHandle>,
    ) -> Result<Arc<Self>, QuicError> {
        trust::ensure_crypto_provider();
        let server = quinn_server_config(&config)?;
        let client = quinn_client_config(&config)?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let mut endpoint = match faults {
            None => quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(server),
                socket,
                runtime,
            )?,
            Some(handle) => {
                let inner_socket = runtime.wrap_udp_socket(socket)?;
                let socket = Arc::new(faults::FaultySocket::new(inner_socket, handle));
                quinn::Endpoint::new_with_abstract_socket(
                    quinn::EndpointConfig::default(),
                    Some(server),
                    socket,
                    runtime,
                )?
            }
        };
        endpoint.set_default_client_config(client);
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            node: config.identity.node.clone(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(config.seed)),
            config,
            events,
            endpoint,
            runtime: tokio::runtime::Handle::current(),
            peers: Mutex::new(HashMap::new()),
            dialled: Mutex::new(HashMap::new()),
            reconnecting: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            shutdown,
        });
        tokio::spawn(accept_loop(inner.clone()));
        Ok(Arc::new(Self { inner }))
    }

    /// The socket address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner
            .endpoint
            .local_addr()
            .unwrap_or_else(|_| self.inner.config.listen)
    }

    /// This node's dialable address.
    pub fn peer_addr(&self) -> PeerAddr {
        PeerAddr::at(self.inner.node.clone(), self.local_addr())
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> QuicCounters {
        self.inner.counters.snapshot()
    }

    /// The peers with an open connection, sorted.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = lock(&self.inner.peers).keys().cloned().collect();
        v.sort();
        v
    }

    /// The live quinn connection to `peer`, if any (for diagnostics and
    /// tests).
    pub fn connection(&self, peer: &NodeId) -> Option<Connection> {
        lock(&self.inner.peers).get(peer).map(|p| p.conn.clone())
    }
}

/// Maps how a connection ended to the cause reported upward.
fn down_cause(e: &ConnectionError) -> DownCause {
    match e {
        ConnectionError::TimedOut => DownCause::Timeout,
        ConnectionError::Reset => DownCause::Reset,
        ConnectionError::LocallyClosed => DownCause::ClosedLocally,
        ConnectionError::ApplicationClosed(c) => DownCause::ClosedByPeer {
            code: c.error_code.into_inner() as u32,
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        },
        ConnectionError::ConnectionClosed(c) => {
            let code = u64::from(c.error_code);
            if (0x100..0x200).contains(&code) {
                DownCause::Tls(format!("peer sent TLS alert {}: {c}", code - 0x100))
            } else {
                DownCause::ClosedByPeer {
                    code: code as u32,
                    reason: String::from_utf8_lossy(&c.reason).into_owned(),
                }
            }
        }
        ConnectionError::TransportError(t) => {
            let code = u64::from(t.code);
            if (0x100..0x200).contains(&code) {
                DownCause::Tls(t.to_string())
            } else {
                DownCause::Reset
            }
        }
        other => DownCause::Unreachable(other.to_string()),
    }
}

/// The TLS alert behind a handshake failure, if it was one.
fn tls_alert(e: &ConnectionError) -> Option<u8> {
    let code = match e {
        ConnectionError::TransportError(t) => u64::from(t.code),
        ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return None,
    };
    (0x100..0x200).contains(&code).then(|| (code - 0x100) as u8)
}

/// Whether a TLS alert is about certificates.
fn is_certificate_alert(alert: u8) -> bool {
    // bad_certificate 42 … certificate_unknown 46, unknown_ca 48,
    // access_denied 49, decrypt_error 51, certificate_required 116.
    matches!(alert, 42..=46 | 48 | 49 | 51 | 116)
}

/// The node id in a connection's verified peer certificate.
fn peer_node(conn: &Connection) -> Result<NodeId, trust::TrustError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or(trust::TrustError::NoIdentity)?;
    let leaf = certs.first().ok_or(trust::TrustError::NoIdentity)?;
    trust::node_from_certificate(leaf)
}

impl Inner {
    fn path(&self, peer: &NodeId) -> PathId {
        PathId::new(peer.clone(), PathKind::Quic)
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

    /// Dials `node` at `addr` and installs the connection.
    async fn dial(self: &Arc<Self>, node: &NodeId, addr: SocketAddr) -> Result<(), ConnectError> {
        let connecting = self
            .endpoint
            .connect(addr, &trust::server_name(node))
            .map_err(|e| ConnectError::Unreachable(node.clone(), e.to_string()))?;
        let conn = match tokio::time::timeout(self.config.handshake_timeout, connecting).await {
            Err(_) => {
                return Err(ConnectError::Unreachable(
                    node.clone(),
                    "handshake timed out".into(),
                ));
            }
            Ok(Err(e)) => {
                return Err(match tls_alert(&e) {
                    Some(_) => ConnectError::Refused(node.clone(), e.to_string()),
                    None => ConnectError::Unreachable(node.clone(), e.to_string()),
                });
            }
            Ok(Ok(conn)) => conn,
        };
        match peer_node(&conn) {
            Ok(peer) if &peer == node => {}
            Ok(peer) => {
                conn.close(VarInt::from(codes::HELLO_MISMATCH), b"unexpected node");
                return Err(ConnectError::Refused(
                    node.clone(),
                    format!("certificate names {peer}"),
                ));
            }
            Err(e) => {
                bump(&self.counters.refused_no_identity);
                conn.close(VarInt::from(codes::NO_IDENTITY), b"no node identity");
                return Err(ConnectError::Refused(node.clone(), e.to_string()));
            }
        }
        let dialer = self.node.clone();
        self.install(conn, node.clone(), dialer).await;
        Ok(())
    }

    /// Makes `conn` the connection to `peer` unless a preferred one exists;
    /// reports `Up` when the path was not open.
    async fn install(self: &Arc<Self>, conn: Connection, peer: NodeId, dialer: NodeId) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let preferred = std::cmp::min(&self.node, &peer).clone();
        let up = {
            let mut peers = lock(&self.peers);
            if self.closed.load(Ordering::Acquire) {
                conn.close(VarInt::from(codes::SHUTDOWN), b"shutdown");
                return;
            }
            let entry = PeerConn {
                generation,
                conn: conn.clone(),
                dialer: dialer.clone(),
                senders: Default::default(),
            };
            match peers.get(&peer) {
                Some(existing) if existing.conn.close_reason().is_none() => {
                    let keep_new = existing.dialer == dialer
                        || (dialer == preferred && existing.dialer != preferred);
                    bump(&self.counters.duplicates_closed);
                    if keep_new {
                        tracing::debug!(peer = %peer, "quic: replacing connection with a newer or preferred one");
                        existing
                            .conn
                            .close(VarInt::from(codes::DUPLICATE_CONNECTION), b"duplicate");
                        peers.insert(peer.clone(), entry);
                        false
                    } else {
                        tracing::debug!(peer = %peer, "quic: closing duplicate connection");
                        conn.close(VarInt::from(codes::DUPLICATE_CONNECTION), b"duplicate");
                        return;
                    }
                }
                Some(_) => {
                    peers.insert(peer.clone(), entry);
                    false
                }
                None => {
                    peers.insert(peer.clone(), entry);
                    true
                }
            }
        };
        if up {
            tracing::info!(node = %self.node, peer = %peer, remote = %conn.remote_address(), "quic: path up");
            self.report(&peer, Fact::Up).await;
        }
        // The control stream opens first and says hello.
        let hello = Frame::Hello(Hello {
            node: self.node.clone(),
            role: self.config.identity.role,
            features: 0,
            token: None,
        });
        let _ = self.enqueue(&peer, TrafficClass::Control, hello);
        tokio::spawn(boxed_drive(self.clone(), conn, peer, generation));
    }

    /// Queues `frame` on `peer`'s stream of `class`.
    fn enqueue(&self, peer: &NodeId, class: TrafficClass, frame: Frame) -> Result<(), SendError> {
        let bytes = match encode_to_bytes(&frame, &self.config.codec) {
            Ok(b) => b,
            Err(e) => return Err(SendError::Encode(e.to_string())),
        };
        let mut peers = lock(&self.peers);
        let Some(entry) = peers.get_mut(peer) else {
            return Err(SendError::NoPath {
                peer: peer.clone(),
                kind: PathKind::Quic,
                frame: Box::new(frame),
            });
        };
        let slot = &mut entry.senders[class.code() as usize];
        if slot.as_ref().is_none_or(|s| s.tx.is_closed()) {
            let (tx, rx) = mpsc::unbounded_channel();
            let depth = Arc::new(Depth::default());
            self.runtime.spawn(write_loop(
                entry.conn.clone(),
                class,
                rx,
                depth.clone(),
                self.node.clone(),
                peer.clone(),
            ));
            *slot = Some(ClassSender { tx, depth });
        }
        let Some(sender) = slot.as_ref() else {
            unreachable!("sender slot was just filled")
        };
        let budget = self.config.queue;
        let frames = sender.depth.frames.load(Ordering::Relaxed);
        let queued = sender.depth.bytes.load(Ordering::Relaxed);
        if frames + 1 > budget.frames || queued + bytes.len() > budget.bytes {
            return Err(SendError::Full {
                peer: peer.clone(),
                kind: PathKind::Quic,
                frame: Box::new(frame),
            });
        }
        sender.depth.frames.fetch_add(1, Ordering::Relaxed);
        sender.depth.bytes.fetch_add(bytes.len(), Ordering::Relaxed);
        let len = bytes.len();
        if sender.tx.send(bytes).is_err() {
            sender.depth.frames.fetch_sub(1, Ordering::Relaxed);
            sender.depth.bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(SendError::NoPath {
                peer: peer.clone(),
                kind: PathKind::Quic,
                frame: Box::new(frame),
            });
        }
        Ok(())
    }

    /// Frames and bytes queued towards `peer`, all classes.
    fn queue_depth(&self, peer: &NodeId) -> (usize, usize) {
        let peers = lock(&self.peers);
        let Some(entry) = peers.get(peer) else {
            return (0, 0);
        };
        entry.senders.iter().flatten().fold((0, 0), |(f, b), s| {
            (
                f + s.depth.frames.load(Ordering::Relaxed),
                b + s.depth.bytes.load(Ordering::Relaxed),
            )
        })
    }

    /// A connection's driver ended: report down if it was the current one
    /// and re-dial peers this node dialled.
    async fn connection_ended(self: &Arc<Self>, peer: NodeId, generation: u64, cause: DownCause) {
        let current = {
            let mut peers = lock(&self.peers);
            if peers.get(&peer).map(|p| p.generation) == Some(generation) {
                peers.remove(&peer);
                true
            } else {
                false
            }
        };
        if !current {
            return;
        }
        tracing::info!(node = %self.node, peer = %peer, cause = %cause, "quic: path down");
        self.report(&peer, Fact::Down(cause)).await;
        if !self.closed.load(Ordering::Acquire) && lock(&self.dialled).contains_key(&peer) {
            tokio::spawn(boxed_reconnect(self.clone(), peer));
        }
    }

    /// Refuses a stream: stops it with `code`, counts, logs and reports.
    async fn refuse_stream(
        &self,
        peer: &NodeId,
        recv: &mut quinn::RecvStream,
        code: u16,
        counter: &AtomicU64,
        what: &str,
    ) {
        bump(counter);
        let _ = recv.stop(VarInt::from(code));
        tracing::warn!(node = %self.node, peer = %peer, code = code, stream = %recv.id(), refused = what, "quic: stream refused");
        self.report(
            peer,
            Fact::Incident(format!("stream refused with code {code:#x}: {what}")),
        )
        .await;
    }
}

/// Accepts incoming connections until shutdown.
async fn accept_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            _ = shutdown.changed() => return,
            i = inner.endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { return };
        tokio::spawn(handshake(inner.clone(), incoming));
    }
}

/// Completes one incoming handshake and installs the connection.
async fn handshake(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.accept() {
        Err(e) => Err(Some(e)),
        Ok(connecting) => {
            match tokio::time::timeout(inner.config.handshake_timeout, connecting).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(Some(e)),
                Err(_) => Err(None),
            }
        }
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(Some(e)) => {
            let (counter, code, what) = match tls_alert(&e) {
                Some(120) => (
                    &inner.counters.refused_alpn,
                    codes::WRONG_ALPN,
                    "wrong ALPN",
                ),
                Some(a) if is_certificate_alert(a) => (
                    &inner.counters.refused_certificate,
                    codes::UNTRUSTED_CERTIFICATE,
                    "missing or untrusted certificate",
                ),
                _ => (&inner.counters.handshake_failed, 0, "handshake failed"),
            };
            bump(counter);
            tracing::warn!(node = %inner.node, remote = %remote, code = code, error = %e, refused = what, "quic: handshake refused");
            return;
        }
        Err(None) => {
            bump(&inner.counters.handshake_failed);
            tracing::warn!(node = %inner.node, remote = %remote, "quic: handshake timed out");
            return;
        }
    };
    let peer = match peer_node(&conn) {
        Ok(p) => p,
        Err(e) => {
            bump(&inner.counters.refused_no_identity);
            tracing::warn!(node = %inner.node, remote = %remote, error = %e, code = codes::NO_IDENTITY, "quic: connection refused");
            conn.close(VarInt::from(codes::NO_IDENTITY), b"no node identity");
            return;
        }
    };
    bump(&inner.counters.accepted);
    let dialer = peer.clone();
    inner.install(conn, peer, dialer).await;
}

/// Drives one connection: accepts its streams, answers and sends probes,
/// reports statistics, and reports down when it ends.
async fn drive(inner: Arc<Inner>, conn: Connection, peer: NodeId, generation: u64) {
    let probe = inner.config.probe;
    let mut prober = Prober::new(probe, Instant::now().into_std());
    let mut stats = tokio::time::interval(probe.interval);
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = inner.shutdown.subscribe();
    let codec = inner.config.codec;
    let cause = loop {
        let deadline = Instant::from_std(prober.next_deadline());
        tokio::select! {
            _ = shutdown.changed() => break DownCause::ClosedLocally,
            s = conn.accept_uni() => match s {
                Ok(recv) => {
                    tokio::spawn(read_loop(inner.clone(), conn.clone(), peer.clone(), recv));
                }
                Err(e) => break down_cause(&e),
            },
            b = conn.accept_bi() => match b {
                Ok((mut send, mut recv)) => {
                    let _ = send.reset(VarInt::from(codes::UNEXPECTED_STREAM));
                    inner.refuse_stream(&peer, &mut recv, codes::UNEXPECTED_STREAM,
                        &inner.counters.refused_unexpected_stream, "bidirectional stream").await;
                }
                Err(e) => break down_cause(&e),
            },
            d = conn.read_datagram() => match d {
                Ok(bytes) => match decode_frame(&bytes, &codec) {
                    Ok(Frame::Probe(p)) => {
                        let ack = Frame::ProbeAck(ProbeAck { nonce: p.nonce, sent_at_us: p.sent_at_us });
                        if let Ok(b) = encode_to_bytes(&ack, &codec) {
                            let _ = conn.send_datagram(b);
                        }
                    }
                    Ok(Frame::ProbeAck(ack)) => {
                        if let Some(rtt) = prober.on_ack(Instant::now().into_std(), &ack) {
                            inner.report(&peer, Fact::ProbeAnswered { rtt }).await;
                        }
                    }
                    other => {
                        bump(&inner.counters.bad_datagrams);
                        let what = match other { Ok(f) => format!("{:?} frame in a datagram", f.kind()), Err(e) => e.to_string() };
                        tracing::warn!(node = %inner.node, peer = %peer, refused = %what, "quic: datagram dropped");
                    }
                },
                Err(e) => break down_cause(&e),
            },
            _ = tokio::time::sleep_until(deadline) => {
                let actions = prober.poll(Instant::now().into_std());
                if let Some(p) = actions.send
                    && let Ok(b) = encode_to_bytes(&Frame::Probe(p), &codec)
                {
                    let _ = conn.send_datagram(b);
                }
                for _ in 0..actions.missed {
                    inner.report(&peer, Fact::ProbeMissed).await;
                }
            }
            _ = stats.tick() => {
                let s = conn.stats();
                inner.report(&peer, Fact::Rtt(conn.rtt())).await;
                inner.report(&peer, Fact::Loss { lost: s.path.lost_packets, sent: s.path.sent_packets }).await;
                let (frames, bytes) = inner.queue_depth(&peer);
                inner.report(&peer, Fact::QueueDepth { frames, bytes }).await;
            }
        }
    };
    inner.connection_ended(peer, generation, cause).await;
}

/// Reads frames from one incoming stream and reports them.
async fn read_loop(inner: Arc<Inner>, conn: Connection, peer: NodeId, mut recv: quinn::RecvStream) {
    let mut buf = BytesMut::new();
    let mut decoder = FrameDecoder::new(inner.config.codec);
    loop {
        match read_frame(&mut recv, &mut buf, &mut decoder).await {
            Ok(None) => return,
            Ok(Some(Frame::Hello(h))) => {
                if h.node != peer {
                    bump(&inner.counters.refused_hello_mismatch);
                    tracing::warn!(node = %inner.node, peer = %peer, hello = %h.node, code = codes::HELLO_MISMATCH, "quic: hello names another node; connection closed");
                    conn.close(
                        VarInt::from(codes::HELLO_MISMATCH),
                        b"hello names another node",
                    );
                    return;
                }
            }
            Ok(Some(Frame::Probe(p))) => {
                let ack = Frame::ProbeAck(ProbeAck {
                    nonce: p.nonce,
                    sent_at_us: p.sent_at_us,
                });
                if let Ok(b) = encode_to_bytes(&ack, &inner.config.codec) {
                    let _ = conn.send_datagram(b);
                }
            }
            Ok(Some(Frame::ProbeAck(_))) => {}
            Ok(Some(Frame::Data(d))) => {
                if let Some(admit) = &inner.config.admission
                    && !admit(&peer, &d.stream)
                {
                    let what = format!("not admitted to stream {}", d.stream);
                    inner
                        .refuse_stream(
                            &peer,
                            &mut recv,
                            codes::NOT_ADMITTED,
                            &inner.counters.refused_not_admitted,
                            &what,
                        )
                        .await;
                    return;
                }
                inner.report(&peer, Fact::Frame(Frame::Data(d))).await;
            }
            Ok(Some(frame)) => inner.report(&peer, Fact::Frame(frame)).await,
            Err(ReadError::Decode(e)) => {
                let counter = match &e {
                    DecodeError::TooLarge { .. } => &inner.counters.refused_too_large,
                    DecodeError::UnsupportedVersion { .. } => &inner.counters.refused_version,
                    _ => &inner.counters.refused_malformed,
                };
                let code = e.close_code() as u16;
                inner
                    .refuse_stream(&peer, &mut recv, code, counter, &e.to_string())
                    .await;
                return;
            }
            Err(_) => return,
        }
    }
}

/// Frames handed to quinn per write call, at most.
const WRITE_BATCH: usize = 64;

/// Writes one class's queued frames on its own unidirectional stream.
async fn write_loop(
    conn: Connection,
    class: TrafficClass,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    depth: Arc<Depth>,
    node: NodeId,
    peer: NodeId,
) {
    let mut stream = match conn.open_uni().await {
        Ok(s) => s,
        Err(_) => return,
    };
    let _ = stream.set_priority(priority(class));
    // Every frame already queued goes to quinn in one call: one stream lock
    // and one connection wake-up per batch instead of per frame, so small
    // frames share packets.
    let mut batch: Vec<Bytes> = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let (frames, len) = (batch.len(), batch.iter().map(Bytes::len).sum::<usize>());
        let result = stream.write_all_chunks(&mut batch).await;
        batch.clear();
        depth.frames.fetch_sub(frames, Ordering::Relaxed);
        depth.bytes.fetch_sub(len, Ordering::Relaxed);
        if let Err(e) = result {
            tracing::warn!(node = %node, peer = %peer, class = ?class, error = %e, "quic: send stream ended");
            rx.close();
            while let Some(b) = rx.recv().await {
                depth.frames.fetch_sub(1, Ordering::Relaxed);
                depth.bytes.fetch_sub(b.len(), Ordering::Relaxed);
            }
            return;
        }
    }
    let _ = stream.finish();
}

type SendFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// [`drive`] behind a box: breaks the type cycle install → drive →
/// re-dial → install so the futures stay `Send`.
fn boxed_drive(inner: Arc<Inner>, conn: Connection, peer: NodeId, generation: u64) -> SendFuture {
    Box::pin(drive(inner, conn, peer, generation))
}

/// [`reconnect_loop`] behind a box (see [`boxed_drive`]).
fn boxed_reconnect(inner: Arc<Inner>, peer: NodeId) -> SendFuture {
    Box::pin(reconnect_loop(inner, peer))
}

/// Re-dials a lost peer with jittered exponential backoff until it is back,
/// closed, or the attempts run out.
async fn reconnect_loop(inner: Arc<Inner>, peer: NodeId) {
    if !lock(&inner.reconnecting).insert(peer.clone()) {
        return;
    }
    let mut shutdown = inner.shutdown.subscribe();
    let backoff = inner.config.reconnect;
    let mut attempt = 0u32;
    loop {
        if backoff.max_attempts.is_some_and(|m| attempt >= m) {
            inner
                .report(
                    &peer,
                    Fact::Incident(format!("gave up re-dialling after {attempt} attempts")),
                )
                .await;
            break;
        }
        let delay = backoff.delay(attempt, &mut *lock(&inner.rng));
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        if inner.closed.load(Ordering::Acquire) || lock(&inner.peers).contains_key(&peer) {
            break;
        }
        let Some(addr) = lock(&inner.dialled).get(&peer).copied() else {
            break;
        };
        bump(&inner.counters.reconnect_attempts);
        attempt += 1;
        match inner.dial(&peer, addr).await {
            Ok(()) => break,
            Err(e) => {
                tracing::debug!(node = %inner.node, peer = %peer, attempt, error = %e, "quic: re-dial failed");
            }
        }
    }
    lock(&inner.reconnecting).remove(&peer);
}

#[async_trait]
impl Transport for QuicTransport {
    fn kind(&self) -> PathKind {
        PathKind::Quic
    }

    fn listen_addr(&self) -> Option<SocketAddr> {
        Some(self.local_addr())
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
        let addr = peer
            .addr
            .ok_or_else(|| ConnectError::NoAddress(peer.node.clone()))?;
        lock(&self.inner.dialled).insert(peer.node.clone(), addr);
        self.inner.dial(&peer.node, addr).await
    }

    fn send(&self, peer: &NodeId, frame: Frame) -> Result<(), SendError> {
        let class = match &frame {
            Frame::Data(d) => TrafficClass::from_code(d.class).unwrap_or(TrafficClass::Integration),
            // Relayed traffic has its own class and budget, below control:
            // a full relay queue backpressures the relay, never control.
            Frame::Relay(_) => TrafficClass::Route,
            _ => TrafficClass::Control,
        };
        self.inner.enqueue(peer, class, frame)
    }

    async fn close(&self, peer: &NodeId, code: u32, reason: &str) {
        lock(&self.inner.dialled).remove(peer);
        let entry = lock(&self.inner.peers).remove(peer);
        if let Some(entry) = entry {
            entry.conn.close(VarInt::from_u32(code), reason.as_bytes());
            self.inner
                .report(peer, Fact::Down(DownCause::ClosedLocally))
                .await;
        }
    }

    async fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        lock(&self.inner.dialled).clear();
        let peers: Vec<(NodeId, PeerConn)> = lock(&self.inner.peers).drain().collect();
        for (peer, entry) in peers {
            entry.conn.close(VarInt::from(codes::SHUTDOWN), b"shutdown");
            self.inner
                .report(&peer, Fact::Down(DownCause::ClosedLocally))
                .await;
        }
        let _ = self.inner.shutdown.send(true);
        self.inner
            .endpoint
            .close(VarInt::from(codes::SHUTDOWN), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_bounded_and_jittered() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for attempt in 0..20 {
            let d = b.delay(attempt, &mut rng);
            let base = (0.1 * 2f64.powi(attempt as i32)).min(1.0);
            assert!(d.as_secs_f64() <= base + 1e-9, "{attempt}: {d:?}");
            assert!(d.as_secs_f64() >= base * 0.5 - 1e-9, "{attempt}: {d:?}");
        }
        let mut a = ChaCha8Rng::seed_from_u64(1);
        let mut c = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(b.delay(3, &mut a), b.delay(3, &mut c));
    }

    #[test]
    fn control_has_the_highest_priority() {
        let p: Vec<i32> = TrafficClass::ALL.iter().map(|c| priority(*c)).collect();
        assert!(p.windows(2).all(|w| w[0] > w[1]));
    }
}

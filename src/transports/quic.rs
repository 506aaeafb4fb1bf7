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
//!
//! Submodules: `lifecycle` (accept, handshake, drive, re-dial), `streams`
//! (the read and write loops), `queue` (per-class send queues and their
//! over-budget behaviour), `slots` (connection limits), `log_budget`
//! (refusal warnings per second), `hello`, `cause`, `config`, `counters`,
//! `faults`, `reset`.

mod cause;
mod config;
mod counters;
pub mod faults;
mod hello;
mod lifecycle;
mod log_budget;

pub use counters::QuicCounters;
use counters::{Counters, bump};
use hello::HelloCheck;
mod queue;
mod reset;
mod slots;
mod streams;
use lifecycle::{accept_loop, boxed_drive, boxed_reconnect};
use slots::Slots;
use streams::write_loop;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, VarInt};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;

use super::{
    ConnectError, DownCause, EventSink, Fact, PeerAddr, SendError, Transport, TransportEvent,
};
use crate::sync::lock;
use crate::trust::{self, NodeIdentity};
use crate::vocab::{NodeId, PathId, PathKind, TrafficClass};
use crate::wire::codes::root::REVOKED;
use crate::wire::{Frame, Hello, ProbeAck, encode_to_bytes};

/// Close and stop codes of the QUIC transport (`docs/wire.md` §7), defined
/// in [`crate::wire::codes::quic`].
pub use crate::wire::codes::quic as codes;

use cause::{peer_node, tls_alert};
pub use config::{Admission, Backoff, QueueBudget, QuicConfig, QuicError, QuicLimits};
pub use queue::{ClassBudget, ClassBudgets, OverBudget, QueueState};
use queue::{ClassQueue, Drops};

/// One class's queue towards a peer; dropping it (the connection entry
/// going away) closes the queue and so ends its write loop.
struct ClassSender {
    queue: Arc<ClassQueue>,
}

impl Drop for ClassSender {
    fn drop(&mut self) {
        self.queue.close();
    }
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
    /// The client side's TLS configuration (this node's certificate):
    /// replaced by [`QuicTransport::renew_identity`].
    client: Mutex<quinn::ClientConfig>,
    runtime: tokio::runtime::Handle,
    /// Peers the root has revoked: refused at the handshake, closed when
    /// the list arrives ([`QuicTransport::refuse_revoked`]).
    revoked: Mutex<HashSet<NodeId>>,
    peers: Mutex<HashMap<NodeId, PeerConn>>,
    dialled: Mutex<HashMap<NodeId, SocketAddr>>,
    reconnecting: Mutex<HashSet<NodeId>>,
    rng: Mutex<ChaCha8Rng>,
    counters: Counters,
    /// How many refusal warnings are logged per second.
    log_budget: log_budget::LogBudget,
    /// Connection slots per address and in total ([`QuicLimits`]).
    slots: Slots,
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
    // The RTT assumed before the first sample: quinn's 333 ms makes a lost
    // or unanswered Initial wait ~1 s for its retransmission; 100 ms retries
    // at ~0.3 s and ~1 s, inside the 1 s handshake timeout, so a re-dial
    // reaches a peer that starts listening within about a second.
    t.initial_rtt(Duration::from_millis(100));
    let l = config.limits;
    t.max_concurrent_bidi_streams(VarInt::from_u32(l.streams_bidi));
    t.max_concurrent_uni_streams(VarInt::from_u32(l.streams_uni));
    t.stream_receive_window(VarInt::from_u32(l.stream_window));
    t.receive_window(VarInt::from_u32(l.connection_window));
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
                reset::endpoint_config(&config.identity, config.reset_secret.as_deref()),
                Some(server),
                socket,
                runtime,
            )?,
            Some(handle) => {
                let inner_socket = runtime.wrap_udp_socket(socket)?;
                let socket = Arc::new(faults::FaultySocket::new(inner_socket, handle));
                quinn::Endpoint::new_with_abstract_socket(
                    reset::endpoint_config(&config.identity, config.reset_secret.as_deref()),
                    Some(server),
                    socket,
                    runtime,
                )?
            }
        };
        endpoint.set_default_client_config(client.clone());
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            node: config.identity.node.clone(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(config.seed)),
            config,
            events,
            endpoint,
            client: Mutex::new(client),
            runtime: tokio::runtime::Handle::current(),
            revoked: Mutex::new(HashSet::new()),
            peers: Mutex::new(HashMap::new()),
            dialled: Mutex::new(HashMap::new()),
            reconnecting: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            log_budget: log_budget::LogBudget::new(log_budget::PER_SECOND),
            slots: Slots::default(),
            closed: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            shutdown,
        });
        tokio::spawn(accept_loop(inner.clone()));
        Ok(Arc::new(Self { inner }))
    }

    /// Presents `identity` (a renewed certificate of the same node and role,
    /// e.g. from [`crate::root::renew`]) from now on: to every connection
    /// accepted or dialled after the call. Connections already open keep
    /// running (TLS authenticates once, at the handshake), so no stream is
    /// dropped by a renewal.
    pub fn renew_identity(&self, identity: &NodeIdentity) -> Result<(), QuicError> {
        let mine = &self.inner.config.identity;
        if identity.node != mine.node || identity.role != mine.role {
            return Err(QuicError::Crypto(format!(
                "a renewed identity must be {} ({}), not {} ({})",
                mine.node, mine.role, identity.node, identity.role
            )));
        }
        let mut config = self.inner.config.clone();
        config.identity = identity.clone();
        let server = quinn_server_config(&config)?;
        let client = quinn_client_config(&config)?;
        self.inner.endpoint.set_server_config(Some(server));
        *lock(&self.inner.client) = client;
        tracing::info!(node = %self.inner.node, "quic: renewed certificate in use for new connections");
        Ok(())
    }

    /// Takes `revoked` as the root's current revocation list: connections
    /// from or to any of them are refused from now on (closed with
    /// [`REVOKED`] right after the handshake), and open ones are closed.
    /// Returns how many open connections were closed. The root's own
    /// transport enforces its list itself; a node learns it from the root
    /// (`docs/root.md` §2.4).
    pub async fn refuse_revoked(&self, revoked: &[NodeId]) -> usize {
        let open: Vec<NodeId> = {
            let mut set = lock(&self.inner.revoked);
            set.clear();
            set.extend(revoked.iter().cloned());
            let peers = lock(&self.inner.peers);
            revoked
                .iter()
                .filter(|n| peers.contains_key(*n))
                .cloned()
                .collect()
        };
        for peer in &open {
            bump(&self.inner.counters.refused_revoked);
            tracing::warn!(node = %self.inner.node, peer = %peer, "quic: closing the connection of a revoked peer");
            Transport::close(self, peer, u32::from(REVOKED), "revoked").await;
        }
        open.len()
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

    /// Closes the connection to `peer` (if any) so that it is reported down
    /// and, if this node dialled it, re-dialled with the reconnect backoff.
    /// For a connection that stopped answering but has not yet reached the
    /// idle timeout.
    pub fn redial(&self, peer: &NodeId, reason: &str) {
        if let Some(entry) = lock(&self.inner.peers).get(peer) {
            entry
                .conn
                .close(VarInt::from(codes::SHUTDOWN), reason.as_bytes());
        }
    }

    /// The live quinn connection to `peer`, if any (for diagnostics and
    /// tests).
    pub fn connection(&self, peer: &NodeId) -> Option<Connection> {
        lock(&self.inner.peers).get(peer).map(|p| p.conn.clone())
    }
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
        let client = lock(&self.client).clone();
        let connecting = self
            .endpoint
            .connect_with(client, addr, &trust::server_name(node))
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
            Ok(peer) if lock(&self.revoked).contains(&peer) => {
                bump(&self.counters.refused_revoked);
                conn.close(VarInt::from(REVOKED), b"revoked");
                return Err(ConnectError::Refused(node.clone(), "revoked".into()));
            }
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
        let hello = encode_to_bytes(
            &Frame::Hello(Hello {
                node: self.node.clone(),
                role: self.config.identity.role,
                features: 0,
                token: None,
            }),
            &self.config.codec,
        )
        .unwrap_or_default();
        let up = {
            let mut peers = lock(&self.peers);
            if self.closed.load(Ordering::Acquire) {
                conn.close(VarInt::from(codes::SHUTDOWN), b"shutdown");
                return;
            }
            // The control stream opens first and says hello: the Hello is
            // queued on it before any other frame can be.
            let mut senders: [Option<ClassSender>; 5] = Default::default();
            senders[TrafficClass::Control.code() as usize] =
                Some(self.class_sender(&conn, TrafficClass::Control, &peer, Some(&hello)));
            let entry = PeerConn {
                generation,
                conn: conn.clone(),
                dialer: dialer.clone(),
                senders,
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
                        Some(Fact::Renewed)
                    } else {
                        tracing::debug!(peer = %peer, "quic: closing duplicate connection");
                        conn.close(VarInt::from(codes::DUPLICATE_CONNECTION), b"duplicate");
                        return;
                    }
                }
                Some(_) => {
                    // The old connection is closed (its Down is on its
                    // way, or reported): this one is news only to whoever
                    // kept frames in flight on it.
                    peers.insert(peer.clone(), entry);
                    Some(Fact::Renewed)
                }
                None => {
                    peers.insert(peer.clone(), entry);
                    Some(Fact::Up)
                }
            }
        };
        match up {
            Some(Fact::Up) => {
                tracing::info!(node = %self.node, peer = %peer, remote = %conn.remote_address(), "quic: path up");
                self.report(&peer, Fact::Up).await;
            }
            Some(fact) => {
                tracing::info!(node = %self.node, peer = %peer, remote = %conn.remote_address(), "quic: connection renewed");
                self.report(&peer, fact).await;
            }
            None => {}
        }
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
        if slot.as_ref().is_none_or(|s| s.queue.is_closed()) {
            *slot = Some(self.class_sender(&entry.conn, class, peer, None));
        }
        let Some(sender) = slot.as_ref() else {
            unreachable!("sender slot was just filled")
        };
        match sender.queue.push(bytes) {
            Ok(0) => {}
            Ok(dropped) => {
                self.counters
                    .dropped_oldest
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                metrics::counter!("interlocking_queue_drops_total", "cause" => "over_budget")
                    .increment(dropped as u64);
            }
            Err(queue::Refused::Full) => {
                bump(&self.counters.refused_queue_full);
                metrics::counter!("interlocking_limit_refusals_total", "limit" => "queue_budget")
                    .increment(1);
                return Err(SendError::Full {
                    peer: peer.clone(),
                    kind: PathKind::Quic,
                    frame: Box::new(frame),
                });
            }
            Err(queue::Refused::Closed) => {
                return Err(SendError::NoPath {
                    peer: peer.clone(),
                    kind: PathKind::Quic,
                    frame: Box::new(frame),
                });
            }
        }
        Ok(())
    }

    /// Starts the writer of `class` towards `peer` on `conn`, with `first`
    /// queued ahead of anything else.
    fn class_sender(
        &self,
        conn: &Connection,
        class: TrafficClass,
        peer: &NodeId,
        first: Option<&Bytes>,
    ) -> ClassSender {
        let queue = Arc::new(ClassQueue::new(self.config.queue.get(class)));
        if let Some(b) = first {
            // The first frame (the Hello) is control: never over budget on
            // an empty queue.
            let _ = queue.push(b.clone());
        }
        self.runtime.spawn(write_loop(
            conn.clone(),
            class,
            queue.clone(),
            self.counters.dropped_stale.clone(),
            self.node.clone(),
            peer.clone(),
        ));
        ClassSender { queue }
    }

    /// Frames and bytes queued towards `peer`, all classes.
    fn queue_depth(&self, peer: &NodeId) -> (usize, usize) {
        let peers = lock(&self.peers);
        let Some(entry) = peers.get(peer) else {
            return (0, 0);
        };
        entry.senders.iter().flatten().fold((0, 0), |(f, b), s| {
            let (qf, qb) = s.queue.depth();
            (f + qf, b + qb)
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
        log_budget::budgeted_warn!(self.log_budget, node = %self.node, peer = %peer, code = code, stream = %recv.id(), refused = what, "quic: stream refused");
        self.report(
            peer,
            Fact::Incident(format!("stream refused with code {code:#x}: {what}")),
        )
        .await;
    }
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

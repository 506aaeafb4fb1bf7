//! The QUIC transport's settings ([`QuicConfig`] and its parts) and the
//! error of building it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::transports::probe::ProbeConfig;
use crate::trust::{self, NodeIdentity, TrustRoots};
use crate::vocab::{NodeId, StreamId};
use crate::wire::CodecConfig;

/// Decides whether `peer` may send on a logical stream. Returning `false`
/// stops the QUIC stream that carried the frame with
/// [`super::codes::NOT_ADMITTED`].
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
            max: Duration::from_secs(1),
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

/// Frames and bytes that may wait in one send queue (one traffic class
/// towards one peer; see [`super::ClassBudget`] for what happens over it).
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

/// What one QUIC endpoint accepts from the outside at most
/// (`docs/limits.md`). A connection over a count limit is refused before
/// its handshake with the QUIC transport error `CONNECTION_REFUSED`
/// (`0x2`) and counted ([`super::QuicCounters`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuicLimits {
    /// Connections (in handshake or established) from one IP address.
    /// Default 64.
    pub connections_per_address: usize,
    /// Connections (in handshake or established) in total. Default 4096.
    pub connections_total: usize,
    /// New connections one IP address may start per second (a token
    /// bucket of this many, refilled at this rate; 0: unlimited). Bounds
    /// the handshake work one address can cause. Default 32.
    pub connections_per_second_per_address: u32,
    /// Unidirectional streams a peer may have open at once (QUIC
    /// `initial_max_streams_uni`). Default 64.
    pub streams_uni: u32,
    /// Bidirectional streams a peer may open at once (each is refused with
    /// `UNEXPECTED_STREAM`; QUIC `initial_max_streams_bidi`). Default 4.
    pub streams_bidi: u32,
    /// Bytes a peer may have in flight unread on one stream (QUIC
    /// `initial_max_stream_data`). Default 1 250 000.
    pub stream_window: u32,
    /// Bytes a peer may have in flight unread on the whole connection
    /// (QUIC `initial_max_data`). Default 16 MiB.
    pub connection_window: u32,
}

impl Default for QuicLimits {
    fn default() -> Self {
        Self {
            connections_per_address: 64,
            connections_total: 4096,
            connections_per_second_per_address: 32,
            streams_uni: 64,
            streams_bidi: 4,
            stream_window: 1_250_000,
            connection_window: 16 * 1024 * 1024,
        }
    }
}

/// Configuration of a [`QuicTransport`](super::QuicTransport).
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
    /// Send-queue budget and over-budget behaviour per traffic class and
    /// peer (`DESIGN.md` §5).
    pub queue: super::ClassBudgets,
    /// QUIC idle timeout: no packet for this long means [`DownCause::Timeout`](crate::transports::DownCause::Timeout).
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval (below `idle_timeout`).
    pub keep_alive: Duration,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// Seed of the backoff jitter.
    pub seed: u64,
    /// Which logical streams each peer may send on (`None`: all).
    pub admission: Option<Admission>,
    /// How long after the handshake the peer's `Hello` may take; a
    /// connection without one by then is closed with
    /// [`super::codes::HELLO_MISSING`] (`docs/wire.md` §7.4).
    pub hello_timeout: Duration,
    /// The secret the stateless-reset key is derived from (`None`: the
    /// identity's private key). Must outlive restarts for a restarted
    /// process to reset its predecessor's connections: set it when the
    /// identity is reissued at every start.
    pub reset_secret: Option<Vec<u8>>,
    /// Connection, stream and flow-control limits.
    pub limits: QuicLimits,
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
    /// probes, codec and backoff (200 ms doubling to 1 s), 10 s idle
    /// timeout, 1 s keep-alive, 1 s handshake timeout. Dead connections are
    /// noticed by probes (routing) and stateless resets (the reset key is
    /// derived from `identity`), not by the idle timeout.
    pub fn new(identity: NodeIdentity, roots: TrustRoots) -> Self {
        Self {
            identity,
            roots,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            probe: ProbeConfig::default(),
            codec: CodecConfig::default(),
            reconnect: Backoff::default(),
            queue: super::ClassBudgets::default(),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            seed: 0,
            admission: None,
            hello_timeout: Duration::from_secs(10),
            reset_secret: None,
            limits: QuicLimits::default(),
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

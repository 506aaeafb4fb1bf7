//! A fault-injecting UDP socket beneath quinn, for real-network tests.
//!
//! Owns dropping datagrams on purpose: [`FaultySocket`] wraps the runtime's
//! socket and, steered through a shared [`FaultHandle`], blackholes every
//! datagram (both directions) or drops a seeded random fraction of those
//! sent. It is the cheapest way to cut one direct path in chaos tests on
//! machines without `tc netem` (see `DESIGN.md` §9).
//!
//! Must not touch: anything above the socket. quinn sees only a lossy
//! network and reacts as it would to a real one.

use crate::sync::LockRecover;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct State {
    blackhole: AtomicBool,
    /// Probability of dropping a sent datagram, as `f64` bits.
    loss_bits: AtomicU64,
    dropped: AtomicU64,
    rng: Mutex<ChaCha8Rng>,
}

/// Steers the faults of one or more [`FaultySocket`]s. Cheap to clone;
/// clones share the state.
#[derive(Clone)]
pub struct FaultHandle {
    state: Arc<State>,
}

impl fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultHandle")
            .field("blackhole", &self.is_blackholed())
            .field("loss", &self.loss())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl FaultHandle {
    /// A handle with no faults whose random drops derive from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(State {
                blackhole: AtomicBool::new(false),
                loss_bits: AtomicU64::new(0f64.to_bits()),
                dropped: AtomicU64::new(0),
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            }),
        }
    }

    /// Drops every datagram sent or received while `on`.
    pub fn set_blackhole(&self, on: bool) {
        self.state.blackhole.store(on, Ordering::Release);
    }

    /// Whether the socket is blackholed.
    pub fn is_blackholed(&self) -> bool {
        self.state.blackhole.load(Ordering::Acquire)
    }

    /// Drops each sent datagram with probability `loss` (clamped to 0–1).
    pub fn set_loss(&self, loss: f64) {
        self.state
            .loss_bits
            .store(loss.clamp(0.0, 1.0).to_bits(), Ordering::Release);
    }

    /// The current loss probability.
    pub fn loss(&self) -> f64 {
        f64::from_bits(self.state.loss_bits.load(Ordering::Acquire))
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }

    fn drop_send(&self) -> bool {
        if self.is_blackholed() {
            return true;
        }
        let loss = self.loss();
        loss > 0.0 && self.state.rng.lock_recover().random_bool(loss)
    }
}

/// A UDP socket that loses datagrams as its [`FaultHandle`] says.
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    faults: FaultHandle,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl FaultySocket {
    /// Wraps `inner` (from [`quinn::Runtime::wrap_udp_socket`]).
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, faults: FaultHandle) -> Self {
        Self { inner, faults }
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.faults.drop_send() {
            self.faults.state.dropped.fetch_add(1, Ordering::Relaxed);
            // Lost on the way: the sender cannot tell.
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) if self.faults.is_blackholed() => {
                    self.faults
                        .state
                        .dropped
                        .fetch_add(n as u64, Ordering::Relaxed);
                    // Poll again so the waker stays registered.
                }
                other => return other,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

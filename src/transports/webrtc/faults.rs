//! A fault-injecting UDP socket beneath the WebRTC stack, for tests and
//! chaos runs: the same role as [`crate::transports::quic::faults`] has for
//! QUIC, one layer down from the data channels so that ICE, DTLS and SCTP
//! see the fault exactly as they would see a dead network.
//!
//! Owns a [`Runtime`] that delegates everything to webrtc's tokio runtime
//! except [`Runtime::wrap_udp_socket`], whose sockets consult a shared
//! [`WebrtcFaults`] handle: while blackholed, every datagram sent is
//! swallowed and every datagram received is discarded; with a loss set,
//! that fraction of the datagrams *sent* is swallowed, chosen by a seeded
//! generator (the media tests' lossy path). Nothing else.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// A switch shared by every socket of the runtimes built from it.
#[derive(Clone, Debug, Default)]
pub struct WebrtcFaults {
    inner: Arc<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    blackhole: AtomicBool,
    dropped: AtomicU64,
    /// Datagrams sent that are swallowed, per million.
    loss_ppm: AtomicU64,
    /// The seeded generator's state (splitmix64).
    rng: AtomicU64,
}

impl WebrtcFaults {
    /// A handle with no fault active.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts (`true`) or stops (`false`) swallowing every datagram.
    pub fn set_blackhole(&self, on: bool) {
        self.inner.blackhole.store(on, Ordering::Release);
    }

    /// Whether datagrams are being swallowed.
    pub fn blackholed(&self) -> bool {
        self.inner.blackhole.load(Ordering::Acquire)
    }

    /// Swallows `fraction` (0.0–1.0) of the datagrams sent from now on,
    /// chosen by a generator seeded with `seed` (0.0 stops it).
    pub fn set_loss(&self, fraction: f64, seed: u64) {
        self.inner.rng.store(seed, Ordering::Release);
        let ppm = (fraction.clamp(0.0, 1.0) * 1e6) as u64;
        self.inner.loss_ppm.store(ppm, Ordering::Release);
    }

    /// Whether the next datagram sent is lost to the seeded loss.
    fn lose(&self) -> bool {
        let ppm = self.inner.loss_ppm.load(Ordering::Acquire);
        if ppm == 0 {
            return false;
        }
        // splitmix64 step.
        let mut z = self
            .inner
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::AcqRel)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % 1_000_000 < ppm
    }

    /// Datagrams swallowed so far, both directions.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// A webrtc runtime whose UDP sockets obey this handle.
    pub fn runtime(&self) -> Arc<dyn Runtime> {
        Arc::new(FaultyRuntime {
            inner: TokioRuntime,
            faults: self.clone(),
        })
    }
}

/// The tokio runtime with fault-injecting UDP sockets.
struct FaultyRuntime {
    inner: TokioRuntime,
    faults: WebrtcFaults,
}

impl fmt::Debug for FaultyRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyRuntime").finish_non_exhaustive()
    }
}

impl Runtime for FaultyRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let inner = self.inner.wrap_udp_socket(socket)?;
        Ok(Arc::new(FaultySocket {
            inner,
            faults: self.faults.clone(),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn name(&self) -> &'static str {
        "tokio-faults"
    }
}

/// A UDP socket that swallows datagrams while its handle says so.
struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    faults: WebrtcFaults,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        if self.faults.blackholed() || self.faults.lose() {
            self.faults.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Ok(transmit.contents.len()));
        }
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Bounded: at most this many ready batches are discarded per call;
        // then the task is woken again so it cannot starve its executor.
        for _ in 0..64 {
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) if self.faults.blackholed() => {
                    self.faults
                        .inner
                        .dropped
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

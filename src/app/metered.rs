//! Transport metering for `/metrics`: a [`Transport`] wrapper counting
//! what a node sends, and an event-sink relay counting what it receives.
//!
//! Owns the metric names of the data plane (`docs/control.md` §metrics):
//! frames by direction, path kind and frame kind; data payload bytes;
//! refusals (reject frames) by code; the last RTT per path. It changes no
//! frame and makes no decision.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::transports::{
    ConnectError, EventSink, Fact, FrameSink, PeerAddr, SendError, Transport, TransportEvent,
};
use crate::vocab::{NodeId, PathId, PathKind};
use crate::wire::{Frame, FrameKind};

/// The metric label of a frame kind.
pub fn kind_label(frame: &Frame) -> &'static str {
    match frame.kind() {
        FrameKind::Hello => "hello",
        FrameKind::Probe => "probe",
        FrameKind::ProbeAck => "probe_ack",
        FrameKind::Data => "data",
        FrameKind::Ack => "ack",
        FrameKind::Reject => "reject",
        FrameKind::Close => "close",
        FrameKind::Relay => "relay",
        FrameKind::RelayRefused => "relay_refused",
        _ => "other",
    }
}

fn record(direction: &'static str, path: PathKind, frame: &Frame) {
    let p = path.as_str();
    metrics::counter!("interlocking_frames_total", "direction" => direction, "path" => p, "kind" => kind_label(frame))
        .increment(1);
    match frame {
        Frame::Data(d) => {
            metrics::counter!("interlocking_payload_bytes_total", "direction" => direction, "path" => p)
                .increment(d.payload.len() as u64);
        }
        Frame::Reject(r) => {
            metrics::counter!("interlocking_refusals_total", "direction" => direction, "code" => format!("{:#06x}", r.code))
                .increment(1);
        }
        _ => {}
    }
}

/// Wraps a transport: every frame sent through it is counted.
pub struct Metered {
    inner: Arc<dyn Transport>,
}

impl Metered {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn Transport>) -> Arc<dyn Transport> {
        Arc::new(Self { inner })
    }
}

#[async_trait]
impl Transport for Metered {
    fn kind(&self) -> PathKind {
        self.inner.kind()
    }

    fn local(&self) -> &NodeId {
        self.inner.local()
    }

    fn listen_addr(&self) -> Option<SocketAddr> {
        self.inner.listen_addr()
    }

    async fn connect(&self, peer: &PeerAddr) -> Result<(), ConnectError> {
        self.inner.connect(peer).await
    }

    fn send(&self, peer: &NodeId, frame: Frame) -> Result<(), SendError> {
        let kind = self.inner.kind();
        let label = kind_label(&frame);
        let data = match &frame {
            Frame::Data(d) => Some(d.payload.len() as u64),
            _ => None,
        };
        let reject = match &frame {
            Frame::Reject(r) => Some(r.code),
            _ => None,
        };
        let sent = self.inner.send(peer, frame);
        match &sent {
            Ok(()) => {
                metrics::counter!("interlocking_frames_total", "direction" => "out", "path" => kind.as_str(), "kind" => label)
                    .increment(1);
                if let Some(n) = data {
                    metrics::counter!("interlocking_payload_bytes_total", "direction" => "out", "path" => kind.as_str())
                        .increment(n);
                }
                if let Some(code) = reject {
                    metrics::counter!("interlocking_refusals_total", "direction" => "out", "code" => format!("{code:#06x}"))
                        .increment(1);
                }
            }
            Err(e) => {
                let why = match e {
                    SendError::NoPath { .. } => "no_path",
                    SendError::Full { .. } => "full",
                    _ => "encode",
                };
                metrics::counter!("interlocking_send_errors_total", "path" => kind.as_str(), "error" => why)
                    .increment(1);
            }
        }
        sent
    }

    async fn close(&self, peer: &NodeId, code: u32, reason: &str) {
        self.inner.close(peer, code, reason).await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

/// Counts each frame, then hands it to the node's frame sink, on the
/// transport's receive task like the sink it wraps.
struct CountingFrames {
    kind: PathKind,
    inner: Arc<dyn FrameSink>,
}

impl FrameSink for CountingFrames {
    fn frame(&self, path: &PathId, frame: Frame) {
        record("in", self.kind, &frame);
        self.inner.frame(path, frame);
    }
}

fn observe_fact(kind: PathKind, ev: &TransportEvent) {
    match &ev.fact {
        Fact::Frame(f) => record("in", kind, f),
        Fact::ProbeAnswered { rtt } | Fact::Rtt(rtt) => {
            metrics::gauge!("interlocking_rtt_seconds", "path" => kind.as_str(), "peer" => ev.path.peer.to_string())
                .set(rtt.as_secs_f64());
        }
        Fact::Up => {
            metrics::counter!("interlocking_path_events_total", "path" => kind.as_str(), "event" => "up")
                .increment(1);
        }
        Fact::Down(_) => {
            metrics::counter!("interlocking_path_events_total", "path" => kind.as_str(), "event" => "down")
                .increment(1);
        }
        _ => {}
    }
}

/// A sink that counts every event of a transport of `kind`, then passes it
/// on to `sink`: frames straight to its frame sink (no queue added on their
/// way), facts through a small relay task into its queue (bounded like it:
/// a slow node slows the transport).
pub fn metered_sink(kind: PathKind, sink: EventSink) -> EventSink {
    let (facts, frames) = sink.parts();
    let (tx, mut rx) = mpsc::channel::<TransportEvent>(1024);
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            observe_fact(kind, &ev);
            if facts.send(ev).await.is_err() {
                return;
            }
        }
    });
    match frames {
        Some(inner) => EventSink::with_frames(tx, Arc::new(CountingFrames { kind, inner })),
        None => EventSink::new(tx),
    }
}

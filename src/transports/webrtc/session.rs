//! One peer connection and its data channels: building it, the per-channel
//! writer and reader tasks, and the probe task of an open path.
//!
//! Owns the byte-level use of the channels: every frame is encoded with the
//! crate's codec and sent as one or more data-channel messages (chunks of at
//! most [`MAX_MESSAGE`] bytes, a frame always starting a message); the
//! receiver feeds messages into a [`FrameDecoder`], so size limits are the
//! codec's. Channel `i` carries data frames of traffic class `i`; channel 0
//! also carries every non-data frame (probes, acks, rejects, close).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{Registry, Slot};
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use tokio::sync::mpsc;
use tokio::time::Instant;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceConnectionState, RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    SettingEngineBuilder,
};

use super::WebrtcConfig;
use super::control::Ctl;
use super::media::{ReportTap, RtcpTally};
use crate::transports::probe::Prober;
use crate::transports::{EventSink, Fact, TransportEvent};
use crate::vocab::{NodeId, PathId, PathKind, TrafficClass};
use crate::wire::{CodecConfig, Frame, FrameDecoder, ProbeAck, Reject, encode_to_bytes};

/// Data channels per peer connection: one per traffic class.
pub const CHANNELS: usize = TrafficClass::ALL.len();

/// The largest data-channel message sent (bytes); larger frames are split.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// The label of channel `i` (negotiated out of band with stream id `i`).
pub fn label(i: usize) -> String {
    format!("il/{i}")
}

/// The channel a frame travels on.
pub fn channel_of(frame: &Frame) -> usize {
    match frame {
        Frame::Data(d) => usize::from(d.class).min(CHANNELS - 1),
        _ => 0,
    }
}

/// Why a frame could not be queued on a session.
pub enum Refused {
    /// Over the byte budget.
    Full,
    /// The codec refused it.
    Encode(String),
}

/// The sending side of one session, shared by `Transport::send`, the
/// readers (probe answers, rejects) and the probe task.
pub struct SessionIo {
    pub peer: NodeId,
    pub session: u64,
    codec: CodecConfig,
    budget: usize,
    out: Vec<mpsc::UnboundedSender<(Bytes, bool)>>,
    queued_bytes: AtomicUsize,
    queued_frames: AtomicUsize,
    /// Channels whose writer has stopped (closed): their class falls back
    /// to channel 0 so the path keeps delivering.
    dead: [AtomicBool; CHANNELS],
    pub acks: mpsc::Sender<ProbeAck>,
}

impl SessionIo {
    /// Encodes `frame` and queues its messages on its channel.
    pub fn enqueue(&self, frame: &Frame) -> Result<(), Refused> {
        let bytes =
            encode_to_bytes(frame, &self.codec).map_err(|e| Refused::Encode(e.to_string()))?;
        let queued = self.queued_bytes.load(Ordering::Acquire);
        let mut index = channel_of(frame);
        // Control frames may use twice the budget, never more: a peer
        // that stops reading cannot grow this queue without bound.
        let limit = if index == 0 {
            2 * self.budget
        } else {
            self.budget
        };
        if queued + bytes.len() > limit {
            return Err(Refused::Full);
        }
        if self.dead[index].load(Ordering::Acquire) {
            index = 0;
        }
        let ch = &self.out[index];
        self.queued_bytes.fetch_add(bytes.len(), Ordering::AcqRel);
        self.queued_frames.fetch_add(1, Ordering::AcqRel);
        let mut at = 0;
        while at < bytes.len() {
            let end = (at + MAX_MESSAGE).min(bytes.len());
            // A closed channel means the session is being torn down; the
            // frame is lost with it, as on any path that goes down.
            let _ = ch.send((bytes.slice(at..end), end == bytes.len()));
            at = end;
        }
        Ok(())
    }

    /// Frames and bytes queued and not yet handed to the channels.
    pub fn queued(&self) -> (usize, usize) {
        (
            self.queued_frames.load(Ordering::Acquire),
            self.queued_bytes.load(Ordering::Acquire),
        )
    }
}

/// A built peer connection with its channels and tasks.
pub struct Built {
    pub pc: Arc<dyn PeerConnection>,
    pub tally: Arc<RtcpTally>,
    pub channels: Vec<Arc<dyn DataChannel>>,
    pub io: Arc<SessionIo>,
    pub acks: mpsc::Receiver<ProbeAck>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Forwards peer-connection events of one session to the control loop.
struct Handler {
    ctl: mpsc::Sender<Ctl>,
    peer: NodeId,
    session: u64,
}

#[async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self
                .ctl
                .send(Ctl::LocalCandidate(self.peer.clone(), self.session, init))
                .await;
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        let _ = self
            .ctl
            .send(Ctl::IceState(self.peer.clone(), self.session, state))
            .await;
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self
            .ctl
            .send(Ctl::PcState(self.peer.clone(), self.session, state))
            .await;
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self
                .ctl
                .send(Ctl::Gathered(self.peer.clone(), self.session))
                .await;
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        // Every channel this transport serves is negotiated out of band; a
        // channel opened in band by the peer is refused.
        let label = dc.label().await.unwrap_or_default();
        let _ = dc.close().await;
        let _ = self
            .ctl
            .send(Ctl::UnexpectedChannel(
                self.peer.clone(),
                self.session,
                label,
            ))
            .await;
    }
}

/// Builds the peer connection of `session` with `peer`, its negotiated
/// channels (before any negotiation, as DESIGN.md §9 requires) and their
/// writer and reader tasks.
pub async fn build(
    config: &WebrtcConfig,
    ctl: mpsc::Sender<Ctl>,
    events: EventSink,
    peer: &NodeId,
    session: u64,
) -> Result<Built, String> {
    let c = &config.ice;
    let setting = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
        .with_host_acceptance_min_wait(Some(Duration::ZERO))
        .with_include_loopback_candidate(true)
        .with_ice_timeouts(
            Some(c.disconnected_timeout),
            Some(c.failed_timeout),
            Some(c.keepalive),
        )
        .build();
    let handler = Arc::new(Handler {
        ctl: ctl.clone(),
        peer: peer.clone(),
        session,
    });
    // Codecs and RTCP (NACK, receiver reports) for media tracks
    // (`media.rs`); a data-only session offers no media section, so this
    // changes nothing on its wire.
    let mut engine = MediaEngine::default();
    engine
        .register_default_codecs()
        .map_err(|e| format!("codecs: {e}"))?;
    let tally = Arc::new(RtcpTally::default());
    let registry = register_default_interceptors(Registry::new(), &mut engine)
        .map_err(|e| format!("interceptors: {e}"))?
        // Last in the chain: every other interceptor has read the RTCP.
        .with(Slot::from(14_000), ReportTap::new(tally.clone()));
    let mut builder = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting)
        .with_handler(handler)
        .with_udp_addrs(vec![std::net::SocketAddr::new(config.bind, 0)]);
    if let Some(f) = &config.faults {
        builder = builder.with_runtime(f.runtime());
    }
    let pc: Arc<dyn PeerConnection> = Arc::new(builder.build().await.map_err(|e| e.to_string())?);
    let mut channels = Vec::with_capacity(CHANNELS);
    for i in 0..CHANNELS {
        let init = RTCDataChannelInit {
            ordered: true,
            negotiated: Some(i as u16),
            ..Default::default()
        };
        match pc.create_data_channel(&label(i), Some(init)).await {
            Ok(dc) => channels.push(dc),
            Err(e) => {
                let _ = pc.close().await;
                return Err(format!("data channel {i}: {e}"));
            }
        }
    }
    let (ack_tx, acks) = mpsc::channel(64);
    let mut outs = Vec::with_capacity(CHANNELS);
    let mut rxs = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        let (tx, rx) = mpsc::unbounded_channel();
        outs.push(tx);
        rxs.push(rx);
    }
    let io = Arc::new(SessionIo {
        peer: peer.clone(),
        session,
        codec: config.codec,
        budget: config.queue_budget,
        out: outs,
        queued_bytes: AtomicUsize::new(0),
        queued_frames: AtomicUsize::new(0),
        dead: std::array::from_fn(|_| AtomicBool::new(false)),
        acks: ack_tx,
    });
    let mut tasks = Vec::new();
    for (i, rx) in rxs.into_iter().enumerate() {
        tasks.push(tokio::spawn(writer(channels[i].clone(), i, rx, io.clone())));
        tasks.push(tokio::spawn(reader(
            channels[i].clone(),
            i,
            io.clone(),
            ctl.clone(),
            events.clone(),
        )));
    }
    Ok(Built {
        pc,
        tally,
        channels,
        io,
        acks,
        tasks,
    })
}

/// Hands queued messages to one channel, in order.
async fn writer(
    dc: Arc<dyn DataChannel>,
    index: usize,
    mut rx: mpsc::UnboundedReceiver<(Bytes, bool)>,
    io: Arc<SessionIo>,
) {
    while let Some((chunk, last)) = rx.recv().await {
        let n = chunk.len();
        let sent = dc.send(BytesMut::from(&chunk[..])).await;
        io.queued_bytes.fetch_sub(n, Ordering::AcqRel);
        if last {
            io.queued_frames.fetch_sub(1, Ordering::AcqRel);
        }
        if sent.is_err() {
            // The channel is closed (its reader reports it); later frames
            // of its class go on channel 0.
            io.dead[index].store(true, Ordering::Release);
            return;
        }
    }
}

/// Reads one channel: decodes frames, answers probes, refuses garbage.
async fn reader(
    dc: Arc<dyn DataChannel>,
    index: usize,
    io: Arc<SessionIo>,
    ctl: mpsc::Sender<Ctl>,
    events: EventSink,
) {
    let path = PathId::new(io.peer.clone(), PathKind::WebrtcData);
    let mut decoder = FrameDecoder::new(io.codec);
    let mut buf = BytesMut::new();
    while let Some(event) = dc.poll().await {
        match event {
            DataChannelEvent::OnOpen => {
                let _ = ctl
                    .send(Ctl::ChannelOpen(io.peer.clone(), io.session, index))
                    .await;
            }
            DataChannelEvent::OnClose => break,
            DataChannelEvent::OnMessage(msg) => {
                buf.extend_from_slice(&msg.data);
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(frame)) => {
                            if let Some(fact) = on_frame(&io, &ctl, frame).await {
                                let ev = TransportEvent {
                                    path: path.clone(),
                                    fact,
                                };
                                if events.send(ev).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // A frame always starts a message: drop what is
                            // buffered and resynchronise at the next one.
                            buf.clear();
                            let reject = Frame::Reject(Reject {
                                stream: None,
                                message_id: None,
                                code: e.reject_code(),
                                reason: format!("undecodable frame on {}: {e}", label(index)),
                            });
                            let _ = io.enqueue(&reject);
                            let what = format!(
                                "refused an undecodable frame from {} on {} ({:#06x}): {e}",
                                io.peer,
                                label(index),
                                e.reject_code()
                            );
                            tracing::debug!("webrtc: {what}");
                            let ev = TransportEvent {
                                path: path.clone(),
                                fact: Fact::Incident(what),
                            };
                            let _ = events.send(ev).await;
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    io.dead[index].store(true, Ordering::Release);
    let _ = ctl
        .send(Ctl::ChannelClosed(io.peer.clone(), io.session, index))
        .await;
}

/// Handles transport-level frames; returns the fact to report, if any.
async fn on_frame(io: &SessionIo, ctl: &mpsc::Sender<Ctl>, frame: Frame) -> Option<Fact> {
    match frame {
        Frame::Probe(p) => {
            let _ = io.enqueue(&Frame::ProbeAck(ProbeAck {
                nonce: p.nonce,
                sent_at_us: p.sent_at_us,
            }));
            None
        }
        Frame::ProbeAck(a) => {
            let _ = io.acks.try_send(a);
            None
        }
        Frame::Close(c) => {
            let _ = ctl
                .send(Ctl::PeerClosed(
                    io.peer.clone(),
                    io.session,
                    c.code,
                    c.reason,
                ))
                .await;
            None
        }
        Frame::Hello(_) => None,
        other => Some(Fact::Frame(other)),
    }
}

/// Probes an open session and reports round trips, misses and queue depth.
pub async fn probe_loop(
    config: WebrtcConfig,
    io: Arc<SessionIo>,
    channels: Vec<Arc<dyn DataChannel>>,
    mut acks: mpsc::Receiver<ProbeAck>,
    events: EventSink,
) {
    let path = PathId::new(io.peer.clone(), PathKind::WebrtcData);
    let report = |fact| {
        let ev = TransportEvent {
            path: path.clone(),
            fact,
        };
        let events = events.clone();
        async move { events.send(ev).await.is_ok() }
    };
    let mut prober = Prober::new(config.probe, Instant::now().into_std());
    loop {
        let deadline = Instant::from_std(prober.next_deadline());
        tokio::select! {
            ack = acks.recv() => match ack {
                Some(ack) => {
                    if let Some(rtt) = prober.on_ack(Instant::now().into_std(), &ack)
                        && !report(Fact::ProbeAnswered { rtt }).await
                    {
                        return;
                    }
                }
                None => return,
            },
            _ = tokio::time::sleep_until(deadline) => {
                let actions = prober.poll(Instant::now().into_std());
                if let Some(p) = actions.send {
                    let _ = io.enqueue(&Frame::Probe(p));
                    let (frames, mut bytes) = io.queued();
                    for dc in &channels {
                        bytes += dc.outstanding_bytes().await.unwrap_or(0);
                    }
                    if !report(Fact::QueueDepth { frames, bytes }).await {
                        return;
                    }
                }
                for _ in 0..actions.missed {
                    if !report(Fact::ProbeMissed).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Waits (bounded by `limit`) until every byte handed to `channels` has
/// been acknowledged by the peer's SCTP stack.
pub async fn flushed(channels: &[Arc<dyn DataChannel>], io: &SessionIo, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let mut outstanding = io.queued().1;
        for dc in channels {
            outstanding += dc.outstanding_bytes().await.unwrap_or(0);
        }
        if outstanding == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

//! Media tracks on a peer's connection (the `webrtc-media` path): adding a
//! VP8 video and an Opus audio track to an existing session, writing
//! encoded samples to them, and reading the path facts the peer's RTCP
//! receiver reports give (loss, RTT) with the bytes sent.
//!
//! Owns only the byte side of media: which source a peer may receive, the
//! pacing and the tier are the media channel's (`src/channels/media/`).
//! The tracks live as long as the session: a fresh session (a new peer
//! connection) has none until they are added again, and every write to
//! the old ones fails with [`MediaError::Closed`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::statistics::StatsSelector;
use rtc::statistics::report::RTCStatsReportEntry;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::peer_connection::PeerConnection;
use webrtc::rtp_transceiver::RtpSender;

/// The two kinds of media track a session can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MediaKind {
    /// VP8 video, 90 kHz RTP clock.
    Video,
    /// Opus audio, 48 kHz RTP clock, two channels.
    Audio,
}

/// Why a media operation on the transport failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// No session with the peer (the browser has not connected, or its
    /// session ended).
    #[error("no webrtc session with {0}")]
    NoSession(String),
    /// The peer connection refused the track.
    #[error("track refused: {0}")]
    Track(String),
    /// The track is not negotiated yet (the peer has not answered for it).
    #[error("track not negotiated yet")]
    NotNegotiated,
    /// The session the tracks belonged to has ended.
    #[error("session closed: {0}")]
    Closed(String),
}

/// Path facts of one media session, from the peer's RTCP receiver reports
/// and the local outbound counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MediaFacts {
    /// Fraction of packets lost: the largest of the receiver reports
    /// since the previous look (0.0–1.0).
    pub loss: f64,
    /// Round-trip time from the last receiver report, if any.
    pub rtt: Option<Duration>,
    /// Payload bytes sent so far on every track.
    pub bytes_sent: u64,
    /// Reception reports seen so far (on every track).
    pub reports: u64,
    /// NACKs received so far.
    pub nacks: u64,
}

/// What the consumer's RTCP said since the last look: filled by
/// [`ReportTap`] on the connection's inbound RTCP, read by
/// [`MediaOut::facts`].
#[derive(Debug, Default)]
pub(crate) struct RtcpTally {
    /// The largest `fraction lost` (1/256 units) of any reception report
    /// since the last [`MediaOut::facts`].
    max_fraction: AtomicU32,
    /// Reception reports seen in all.
    reports: AtomicU64,
    /// NACK packets seen in all.
    nacks: AtomicU64,
}

/// An interceptor at the end of the inbound chain that reads every RTCP
/// receiver/sender report's reception blocks and NACKs into a
/// [`RtcpTally`] and passes every packet on unchanged. (webrtc-rs 0.21's
/// `remote-inbound-rtp` statistics stayed empty against Chromium, so the
/// reports are read here.)
pub(crate) struct ReportTap {
    tally: Arc<RtcpTally>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl ReportTap {
    pub(crate) fn new(tally: Arc<RtcpTally>) -> Self {
        Self {
            tally,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }

    fn blocks(&self, reports: &[rtc::rtcp::reception_report::ReceptionReport]) {
        for r in reports {
            self.tally
                .max_fraction
                .fetch_max(u32::from(r.fraction_lost), Ordering::AcqRel);
            self.tally.reports.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ReportTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for p in packets {
                let any = p.as_any();
                if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                    self.blocks(&rr.reports);
                } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                    self.blocks(&sr.reports);
                } else if any.is::<TransportLayerNack>() {
                    self.tally.nacks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for ReportTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// One track and its sender.
struct Track {
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    /// The negotiated payload type (0 = not known yet).
    payload_type: AtomicU8,
}

/// The media tracks added to one peer's session.
pub struct MediaOut {
    pc: Arc<dyn PeerConnection>,
    tally: Arc<RtcpTally>,
    session: u64,
    video: Track,
    audio: Track,
    /// Samples written (both tracks), for diagnostics.
    written: AtomicU64,
}

impl std::fmt::Debug for MediaOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaOut")
            .field("session", &self.session)
            .field("written", &self.written.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn codec(kind: MediaKind) -> RTCRtpCodec {
    match kind {
        MediaKind::Video => RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        MediaKind::Audio => RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
    }
}

async fn add(
    pc: &Arc<dyn PeerConnection>,
    stream: &str,
    kind: MediaKind,
) -> Result<Track, MediaError> {
    let ssrc: u32 = rand::random::<u32>() | 1;
    let (rtp_kind, name) = match kind {
        MediaKind::Video => (RtpCodecKind::Video, "video"),
        MediaKind::Audio => (RtpCodecKind::Audio, "audio"),
    };
    let track = TrackLocalStaticSample::new(
        Instant::now(),
        MediaStreamTrack::new(
            stream.to_owned(),
            format!("{stream}/{name}"),
            format!("{stream}/{name}"),
            rtp_kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec(kind),
                ..Default::default()
            }],
        ),
    )
    .map_err(|e| MediaError::Track(e.to_string()))?;
    let track = Arc::new(track);
    let sender = pc
        .add_track(track.clone() as Arc<dyn TrackLocal>)
        .await
        .map_err(|e| MediaError::Track(e.to_string()))?;
    Ok(Track {
        track,
        sender,
        ssrc,
        payload_type: AtomicU8::new(0),
    })
}

impl MediaOut {
    /// Adds a video and an audio track named `stream` to `pc` (the
    /// session `session`); the peer negotiates them with its next offer.
    pub(crate) async fn add(
        pc: Arc<dyn PeerConnection>,
        tally: Arc<RtcpTally>,
        session: u64,
        stream: &str,
    ) -> Result<Self, MediaError> {
        let video = add(&pc, stream, MediaKind::Video).await?;
        let audio = match add(&pc, stream, MediaKind::Audio).await {
            Ok(a) => a,
            Err(e) => {
                let _ = pc.remove_track(&video.sender).await;
                return Err(e);
            }
        };
        Ok(Self {
            pc,
            tally,
            session,
            video,
            audio,
            written: AtomicU64::new(0),
        })
    }

    /// The session the tracks belong to.
    pub fn session(&self) -> u64 {
        self.session
    }

    fn track(&self, kind: MediaKind) -> &Track {
        match kind {
            MediaKind::Video => &self.video,
            MediaKind::Audio => &self.audio,
        }
    }

    async fn payload_type(&self, kind: MediaKind) -> Result<u8, MediaError> {
        let t = self.track(kind);
        let known = t.payload_type.load(Ordering::Acquire);
        if known != 0 {
            return Ok(known);
        }
        let params = t
            .sender
            .get_parameters()
            .await
            .map_err(|e| MediaError::Closed(e.to_string()))?;
        let pt = params
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
            .ok_or(MediaError::NotNegotiated)?;
        t.payload_type.store(pt, Ordering::Release);
        Ok(pt)
    }

    /// Whether both tracks are negotiated (a first write would reach the
    /// peer). A source should start from a key frame once this is true.
    pub async fn ready(&self) -> bool {
        self.payload_type(MediaKind::Video).await.is_ok()
            && self.payload_type(MediaKind::Audio).await.is_ok()
    }

    /// Writes one encoded sample (a VP8 frame or an Opus packet) lasting
    /// `duration` to the track of `kind`.
    pub async fn write(
        &self,
        kind: MediaKind,
        data: Bytes,
        duration: Duration,
    ) -> Result<(), MediaError> {
        let pt = self.payload_type(kind).await?;
        let t = self.track(kind);
        t.track
            .sample_writer(t.ssrc, pt)
            .write_sample(&Sample {
                data,
                duration,
                ..Sample::new(Instant::now())
            })
            .await
            .map_err(|e| MediaError::Closed(e.to_string()))?;
        self.written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Samples written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// The path facts now: the largest loss any receiver report gave since
    /// the previous call, and the outbound counters.
    pub async fn facts(&self) -> MediaFacts {
        let report = self.pc.get_stats(Instant::now(), StatsSelector::None).await;
        let mut f = MediaFacts {
            loss: f64::from(self.tally.max_fraction.swap(0, Ordering::AcqRel)) / 256.0,
            reports: self.tally.reports.load(Ordering::Relaxed),
            nacks: self.tally.nacks.load(Ordering::Relaxed),
            ..MediaFacts::default()
        };
        for e in report.iter() {
            match e {
                RTCStatsReportEntry::RemoteInboundRtp(r) if r.round_trip_time > 0.0 => {
                    let rtt = Duration::from_secs_f64(r.round_trip_time);
                    f.rtt = Some(f.rtt.map_or(rtt, |o| o.max(rtt)));
                }
                RTCStatsReportEntry::OutboundRtp(o) => {
                    f.bytes_sent += o.sent_rtp_stream_stats.bytes_sent;
                }
                _ => {}
            }
        }
        f
    }

    /// Removes both tracks from the session (the peer sees them end with
    /// its next negotiation).
    pub async fn remove(&self) {
        let _ = self.pc.remove_track(&self.video.sender).await;
        let _ = self.pc.remove_track(&self.audio.sender).await;
    }
}

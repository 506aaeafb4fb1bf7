//! The media actor: one per logical media stream (a source sent to one
//! consumer), supervised under the node's `channels` supervisor.
//!
//! Message flow:
//! - `Tick(kind)`: write the next sample of `kind` to its track and
//!   schedule the next tick at the sample's end (a deadline, so pacing does
//!   not drift); nothing is written before both tracks are negotiated, so
//!   the first frame the consumer gets is a key frame;
//! - `Facts`: read the path facts (RTCP receiver reports, bytes sent),
//!   feed them to the pure [`TierCore`] and apply its decisions (the source
//!   is told, video stops at audio-only, everything at paused);
//! - a write refused because the session ended stops the actor for good
//!   (the stream's state says why); a restart after a failure starts from
//!   a fresh source, so again from a key frame.
//!
//! Owns nothing durable: media has no outbox and no replay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use super::source::{MediaSource, SourceFactory};
use super::tiers::{PathSample, Tier, TierConfig, TierCore, TierDecision};
use crate::sync::lock;
use crate::transports::webrtc::{MediaError, MediaKind, MediaOut};

/// What the stream's handle and `explain` can read while it runs.
#[derive(Debug)]
pub struct StreamState {
    /// The tier now.
    pub tier: Tier,
    /// The last tier decisions, oldest first.
    pub decisions: Vec<TierDecision>,
    /// Samples written (video, audio).
    pub written: (u64, u64),
    /// When the first video sample was written.
    pub first_video: Option<Instant>,
    /// The last path facts read.
    pub last: PathSample,
    /// Payload bytes sent on both tracks, at the last facts.
    pub bytes_sent: u64,
    /// Why the stream stopped, if it did.
    pub ended: Option<String>,
    /// Starts of the actor (1 + restarts).
    pub starts: u64,
}

/// State shared by the actor's incarnations and the handle.
#[derive(Debug)]
pub struct Shared {
    pub(super) state: Mutex<StreamState>,
}

impl Shared {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(StreamState {
                tier: Tier::Full,
                decisions: Vec::new(),
                written: (0, 0),
                first_video: None,
                last: PathSample::default(),
                bytes_sent: 0,
                ended: None,
                starts: 0,
            }),
        })
    }
}

/// Messages of the media actor.
#[derive(Debug)]
pub enum MediaMsg {
    /// Time for the next sample of this kind.
    Tick(MediaKind),
    /// Time to read the path facts.
    Facts,
}

/// Arguments of one start.
pub struct MediaArgs {
    pub(super) out: Arc<MediaOut>,
    pub(super) source: SourceFactory,
    pub(super) tiers: TierConfig,
    pub(super) facts_every: Duration,
    pub(super) shared: Arc<Shared>,
}

/// The actor (behaviour only).
#[derive(Default)]
pub struct MediaActor;

/// The actor's state.
pub struct MediaState {
    out: Arc<MediaOut>,
    source: Box<dyn MediaSource>,
    core: TierCore,
    facts_every: Duration,
    shared: Arc<Shared>,
    /// Whether both tracks are negotiated.
    ready: bool,
    /// The deadline of the next tick of each kind (video, audio).
    due: [Option<Instant>; 2],
    /// Bytes sent at the previous facts sample, and when.
    last_bytes: (u64, Instant),
}

/// How often to look again whether the tracks are negotiated.
const READY_POLL: Duration = Duration::from_millis(20);

fn index(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Video => 0,
        MediaKind::Audio => 1,
    }
}

impl MediaState {
    fn end(&self, myself: &ActorRef<MediaMsg>, why: String) {
        lock(&self.shared.state).ended = Some(why);
        myself.stop(Some("media stream ended".into()));
    }
}

impl Actor for MediaActor {
    type Msg = MediaMsg;
    type State = MediaState;
    type Arguments = MediaArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut core = TierCore::new(args.tiers);
        let mut source = (args.source)();
        {
            let mut st = lock(&args.shared.state);
            st.starts += 1;
            // A restart resumes the tier reached so far (no decision:
            // nothing changed on the path).
            core = core.resumed_at(st.tier);
            source.set_tier(st.tier);
        }
        myself.send_message(MediaMsg::Tick(MediaKind::Video))?;
        myself.send_message(MediaMsg::Tick(MediaKind::Audio))?;
        myself.send_after(args.facts_every, || MediaMsg::Facts);
        Ok(MediaState {
            out: args.out,
            source,
            core,
            facts_every: args.facts_every,
            shared: args.shared,
            ready: false,
            due: [None, None],
            last_bytes: (0, Instant::now()),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MediaMsg::Tick(kind) => tick(&myself, st, kind).await,
            MediaMsg::Facts => {
                facts(st).await;
                myself.send_after(st.facts_every, || MediaMsg::Facts);
            }
        }
        Ok(())
    }
}

async fn tick(myself: &ActorRef<MediaMsg>, st: &mut MediaState, kind: MediaKind) {
    if !st.ready {
        st.ready = st.out.ready().await;
        if !st.ready {
            myself.send_after(READY_POLL, move || MediaMsg::Tick(kind));
            return;
        }
    }
    let tier = st.core.tier();
    let sending = match kind {
        MediaKind::Video => tier.video(),
        MediaKind::Audio => tier.audio(),
    };
    let now = Instant::now();
    let wait = if sending {
        let sample = match st.source.next_sample(kind) {
            Ok(Some(s)) => s,
            Ok(None) => return st.end(myself, "source ended".into()),
            Err(e) => return st.end(myself, format!("source: {e}")),
        };
        let duration = sample.duration;
        match st.out.write(kind, sample.data, duration).await {
            Ok(()) => {
                let mut s = lock(&st.shared.state);
                match kind {
                    MediaKind::Video => {
                        s.written.0 += 1;
                        s.first_video.get_or_insert(now);
                    }
                    MediaKind::Audio => s.written.1 += 1,
                }
            }
            Err(MediaError::Closed(e)) => return st.end(myself, format!("session closed: {e}")),
            // Loss-tolerant: a sample that could not go is skipped.
            Err(_) => {}
        }
        duration
    } else {
        // Not sent at this tier: look again in a while.
        Duration::from_millis(100)
    };
    let i = index(kind);
    let due = st.due[i].map_or(now, |d| d.max(now - wait)) + wait;
    st.due[i] = Some(due);
    let delay = due.saturating_duration_since(Instant::now());
    myself.send_after(delay, move || MediaMsg::Tick(kind));
}

async fn facts(st: &mut MediaState) {
    let f = st.out.facts().await;
    let now = Instant::now();
    let (bytes, at) = st.last_bytes;
    let secs = now.saturating_duration_since(at).as_secs_f64().max(0.001);
    let bitrate = (f.bytes_sent.saturating_sub(bytes) as f64 * 8.0 / secs) as u64;
    st.last_bytes = (f.bytes_sent, now);
    tracing::debug!(loss = f.loss, rtt = ?f.rtt, reports = f.reports, nacks = f.nacks, bitrate, "media: path facts");
    let sample = PathSample {
        loss: f.loss,
        rtt: f.rtt,
        bitrate,
    };
    st.core.observe(now.into_std(), sample);
    let mut s = lock(&st.shared.state);
    s.last = sample;
    s.bytes_sent = f.bytes_sent;
    while let Some(d) = st.core.poll_decision() {
        tracing::info!(decision = %d, "media: tier change");
        st.source.set_tier(d.to);
        s.tier = d.to;
        if s.decisions.len() >= 32 {
            s.decisions.remove(0);
        }
        s.decisions.push(d);
    }
}

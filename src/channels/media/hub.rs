//! The deciding side of media: [`MediaHub`] holds a node's registered
//! sources and who may receive each (admission), answers a consumer's
//! request for a source by name — refused with a typed code, or started as
//! a supervised `MediaActor` writing to tracks it adds to the consumer's
//! WebRTC session — and reports every stream ([`MediaStatus`], `explain`)
//! and the node's media readiness branch ([`MediaReadiness`]).
//!
//! Who terminates (whose peer connection carries the tracks) and who
//! decided (whose admission let them) are both recorded per stream; today
//! both are this node (hub-terminated media).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::actor::{MediaActor, MediaArgs, Shared};
use super::source::SourceFactory;
use super::tiers::{Tier, TierConfig};
use crate::actors::node::{Node, NodeLink};
use crate::actors::supervisor::{ChildSpec, RestartMode};
use crate::channels::kit;
use crate::sync::lock;
use crate::transports::webrtc::{MediaError, WebrtcHandle};
use crate::vocab::NodeId;
use crate::wire::codes::media as codes;

/// Limits and timing of a node's media streams.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MediaConfig {
    /// Streams at most (each an actor and two tracks); more are refused
    /// with `TOO_MANY_STREAMS`.
    pub max_streams: usize,
    /// How often path facts are read and fed to the tier ladder.
    pub facts_every: Duration,
    /// The tier ladder.
    pub tiers: TierConfig,
}

impl Default for MediaConfig {
    /// 64 streams, facts every 500 ms, the default ladder.
    fn default() -> Self {
        Self {
            max_streams: 64,
            facts_every: Duration::from_millis(500),
            tiers: TierConfig::default(),
        }
    }
}

/// Who may receive a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Every consumer with a session.
    Everyone,
    /// Only these consumers.
    Only(BTreeSet<NodeId>),
}

/// A refused request, with its code (`docs/wire.md` §7, `0x0330..`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("media refused ({code:#06x}): {reason}")]
pub struct MediaRefusal {
    /// The code, one of [`crate::wire::codes::media`].
    pub code: u16,
    /// Why, for people.
    pub reason: String,
}

impl MediaRefusal {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// One stream as reported (tests, pages, `explain`).
#[derive(Clone, Debug, PartialEq)]
pub struct MediaStatus {
    /// `media:<source>/<consumer>`.
    pub stream: String,
    /// The source's name.
    pub source: String,
    /// The consumer.
    pub consumer: NodeId,
    /// The node whose peer connection carries the tracks.
    pub terminates: NodeId,
    /// The node whose admission decided.
    pub decided: NodeId,
    /// The path kind the media travels on.
    pub path: &'static str,
    /// The tier now.
    pub tier: Tier,
    /// Tier decisions, oldest first, as text with their cause.
    pub decisions: Vec<String>,
    /// Tier changes so far.
    pub changes: u64,
    /// Samples written (video, audio).
    pub written: (u64, u64),
    /// Request → first video sample written.
    pub first_video_after: Option<Duration>,
    /// Why it ended, if it did.
    pub ended: Option<String>,
}

impl std::fmt::Display for MediaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: tier {} on {} (terminated by {}, decided by {}: admitted), {} tier changes",
            self.stream, self.tier, self.path, self.terminates, self.decided, self.changes
        )?;
        for d in &self.decisions {
            write!(f, "\n  {d}")?;
        }
        if let Some(e) = &self.ended {
            write!(f, "\n  ended: {e}")?;
        }
        Ok(())
    }
}

/// The media branch of a node's readiness: never part of core readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaReadiness {
    /// Streams running.
    pub running: usize,
    /// Streams below the full tier (degraded, still serving).
    pub degraded: usize,
    /// Streams that ended with a failure (session closed, source error).
    pub failed: usize,
}

impl MediaReadiness {
    /// Whether every running stream is at full tier and none failed.
    pub fn nominal(&self) -> bool {
        self.degraded == 0 && self.failed == 0
    }
}

struct Source {
    factory: SourceFactory,
    admission: Admission,
}

struct Stream {
    source: String,
    consumer: NodeId,
    shared: Arc<Shared>,
    requested: tokio::time::Instant,
    actor: String,
}

/// A node's media sources, admission and streams (see the module docs).
pub struct MediaHub {
    id: NodeId,
    link: NodeLink,
    prefix: String,
    webrtc: WebrtcHandle,
    config: MediaConfig,
    sources: Mutex<BTreeMap<String, Source>>,
    streams: Mutex<BTreeMap<(String, NodeId), Stream>>,
    refused: Mutex<BTreeMap<u16, u64>>,
}

/// The stream name of `source` sent to `consumer`.
pub fn stream_name(source: &str, consumer: &NodeId) -> String {
    format!("media:{source}/{consumer}")
}

impl MediaHub {
    /// Media for `node`, terminated on its WebRTC transport `webrtc`
    /// (from [`crate::actors::node::NodeBuilder::webrtc_handle`]).
    pub fn new(node: &Node, webrtc: WebrtcHandle, config: MediaConfig) -> Arc<Self> {
        Arc::new(Self {
            id: node.id().clone(),
            link: node.link(),
            prefix: node.scoped_name(""),
            webrtc,
            config,
            sources: Mutex::new(BTreeMap::new()),
            streams: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(BTreeMap::new()),
        })
    }

    /// Registers (or replaces) the source `name`, made by `factory`, for
    /// the consumers `admission` lets in.
    pub fn register(&self, name: impl Into<String>, factory: SourceFactory, admission: Admission) {
        lock(&self.sources).insert(name.into(), Source { factory, admission });
    }

    /// Refusals so far, by code.
    pub fn refused(&self) -> BTreeMap<u16, u64> {
        lock(&self.refused).clone()
    }

    fn refuse(&self, code: u16, reason: String) -> MediaRefusal {
        *lock(&self.refused).entry(code).or_default() += 1;
        MediaRefusal::new(code, reason)
    }

    /// `consumer` asks for `source`: admitted, its tracks added to the
    /// consumer's WebRTC session and its actor started (the consumer then
    /// renegotiates to receive them). Asking again for a running stream is
    /// answered at once.
    pub async fn request(&self, consumer: &NodeId, source: &str) -> Result<(), MediaRefusal> {
        let factory = {
            let sources = lock(&self.sources);
            let Some(s) = sources.get(source) else {
                drop(sources);
                return Err(self.refuse(codes::UNKNOWN_SOURCE, format!("no source {source:?}")));
            };
            if let Admission::Only(set) = &s.admission
                && !set.contains(consumer)
            {
                drop(sources);
                return Err(self.refuse(
                    codes::NOT_ADMITTED,
                    format!("{consumer} is not admitted to {source:?}"),
                ));
            }
            s.factory.clone()
        };
        let key = (source.to_string(), consumer.clone());
        {
            let mut streams = lock(&self.streams);
            // An ended stream's entry gives way to a new request.
            streams.retain(|_, s| lock(&s.shared.state).ended.is_none());
            if streams.contains_key(&key) {
                return Ok(());
            }
            if streams.len() >= self.config.max_streams {
                drop(streams);
                return Err(self.refuse(
                    codes::TOO_MANY_STREAMS,
                    format!("{} media streams already", self.config.max_streams),
                ));
            }
        }
        let requested = tokio::time::Instant::now();
        let Some(t) = self.webrtc.get() else {
            return Err(self.refuse(codes::NO_SESSION, "no WebRTC transport bound".into()));
        };
        let name = stream_name(source, consumer);
        let out = match t.add_media(consumer, &name).await {
            Ok(o) => Arc::new(o),
            Err(MediaError::NoSession(e)) => return Err(self.refuse(codes::NO_SESSION, e)),
            Err(e) => return Err(self.refuse(codes::TRACK_REFUSED, e.to_string())),
        };
        let shared = Shared::new();
        // A session's tracks are added once: the incarnation is part of
        // the actor's name so a later request after a new session starts
        // a new actor beside the ended one's (stopped) name.
        let actor = format!("{}media/{name}/{}", self.prefix, out.session());
        let spec = {
            let (shared, tiers, every) =
                (shared.clone(), self.config.tiers, self.config.facts_every);
            ChildSpec::new(actor.clone(), RestartMode::Transient, move || {
                (
                    MediaActor,
                    MediaArgs {
                        out: out.clone(),
                        source: factory.clone(),
                        tiers,
                        facts_every: every,
                        shared: shared.clone(),
                    },
                )
            })
        };
        kit::start_child(&self.link, spec)
            .await
            .map_err(|e| self.refuse(codes::TRACK_REFUSED, e.to_string()))?;
        lock(&self.streams).insert(
            key,
            Stream {
                source: source.to_string(),
                consumer: consumer.clone(),
                shared,
                requested,
                actor,
            },
        );
        Ok(())
    }

    /// Stops sending `source` to `consumer` (a revoked admission); true if
    /// it was running. The tracks stay negotiated and go silent.
    pub fn stop(&self, consumer: &NodeId, source: &str) -> bool {
        let s = lock(&self.streams).remove(&(source.to_string(), consumer.clone()));
        let Some(s) = s else { return false };
        lock(&s.shared.state).ended = Some("stopped by the hub".into());
        if let Some(a) = ractor::registry::where_is(s.actor.clone()) {
            a.stop(Some("revoked".into()));
        }
        true
    }

    /// Every stream's status, by stream name.
    pub fn status(&self) -> Vec<MediaStatus> {
        lock(&self.streams)
            .values()
            .map(|s| {
                let st = lock(&s.shared.state);
                MediaStatus {
                    stream: stream_name(&s.source, &s.consumer),
                    source: s.source.clone(),
                    consumer: s.consumer.clone(),
                    terminates: self.id.clone(),
                    decided: self.id.clone(),
                    path: "webrtc-media",
                    tier: st.tier,
                    decisions: st.decisions.iter().map(ToString::to_string).collect(),
                    changes: st.decisions.last().map_or(0, |d| d.changes),
                    written: st.written,
                    first_video_after: st.first_video.map(|t| t - s.requested),
                    ended: st.ended.clone(),
                }
            })
            .collect()
    }

    /// The status of `source` sent to `consumer`.
    pub fn explain(&self, consumer: &NodeId, source: &str) -> Option<MediaStatus> {
        let name = stream_name(source, consumer);
        self.status().into_iter().find(|s| s.stream == name)
    }

    /// When each recorded tier change of `source` to `consumer` happened,
    /// oldest first.
    pub fn decision_times(&self, consumer: &NodeId, source: &str) -> Vec<std::time::Instant> {
        lock(&self.streams)
            .get(&(source.to_string(), consumer.clone()))
            .map(|s| {
                lock(&s.shared.state)
                    .decisions
                    .iter()
                    .map(|d| d.at)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Payload bytes sent so far by the running streams (as of their last
    /// facts, every [`MediaConfig::facts_every`]).
    pub fn bytes_sent(&self) -> u64 {
        lock(&self.streams)
            .values()
            .map(|s| lock(&s.shared.state).bytes_sent)
            .sum()
    }

    /// The media readiness branch (never part of core readiness).
    pub fn readiness(&self) -> MediaReadiness {
        let all = self.status();
        MediaReadiness {
            running: all.iter().filter(|s| s.ended.is_none()).count(),
            degraded: all
                .iter()
                .filter(|s| s.ended.is_none() && s.tier != Tier::Full)
                .count(),
            failed: all.iter().filter(|s| s.ended.is_some()).count(),
        }
    }
}

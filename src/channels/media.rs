//! The media channel (`docs/media.md`): live VP8 video and Opus audio from
//! a registered source to a consumer (a browser page) over WebRTC media
//! tracks, loss-tolerant and latency first — no outbox, no replay,
//! degradation before failover, and never part of core readiness.
//!
//! Owns: the [`MediaSource`] trait and a looping IVF/Ogg [`FileSource`]
//! ([`source`]); the pure degradation ladder ([`tiers`]: full → reduced →
//! audio-only → paused, with hysteresis); the per-stream actor (pacing,
//! path facts, tier changes); and [`MediaHub`]: sources, admission,
//! requests refused with typed codes (`0x0330..=0x033f`), status and
//! readiness. The byte side (tracks, RTCP facts) is the WebRTC transport's
//! (`src/transports/webrtc/media.rs`); the browser's request arrives
//! through the page server (`POST /media`, `src/web.rs`).

mod actor;
pub mod hub;
pub mod source;
pub mod tiers;

pub use actor::StreamState;
pub use hub::{Admission, MediaConfig, MediaHub, MediaReadiness, MediaRefusal, MediaStatus};
pub use source::{FileSource, MediaSample, MediaSource, SourceError, SourceFactory};
pub use tiers::{PathSample, Tier, TierCause, TierConfig, TierCore, TierDecision};

//! Path health: what the routing core believes about one path, derived from
//! the facts transports report.
//!
//! Owns the observation type, the health thresholds and the per-path
//! evidence record that turns observations into a [`PathHealth`] at a given
//! `now`. It must not know about streams, policies or decisions, and it never
//! reads a clock: time only enters through the `now` arguments.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::decision::Cause;

/// Default time without evidence after which a path is stale.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(5);
/// Default number of consecutive missed probes that fail a path (with the
/// default 100 ms probes: a cut is declared 0.65–0.75 s after it happens,
/// and 5 % loss each way fails a healthy path about once in 3 hours; see
/// `docs/routing.md`).
pub const DEFAULT_MISSES_TO_FAIL: u32 = 5;
/// Default queue budget in frames (the control class's pending budget).
pub const DEFAULT_QUEUE_BUDGET_FRAMES: usize = 256;
/// Default queue budget in bytes (8 MiB, the control class's pending budget).
pub const DEFAULT_QUEUE_BUDGET_BYTES: usize = 8 * 1024 * 1024;
/// Default time a queue must stay over budget before the path is pressured.
pub const DEFAULT_PRESSURED_FOR: Duration = Duration::from_secs(2);
/// Default number of consecutive pieces of evidence (answered probes, acks)
/// a path needs since its last miss or failure before a voluntary switch may
/// go to it.
pub const DEFAULT_RECOVERY_EVIDENCE: u32 = 3;
/// Default age beyond which a path's last evidence is too old for a
/// voluntary switch to go to it (one default probe timeout: older evidence
/// means a probe is in flight whose fate is unknown).
pub const DEFAULT_FRESH_WITHIN: Duration = Duration::from_millis(250);

/// Thresholds that turn observations into health states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthConfig {
    /// A path with no evidence (Up, ProbeAnswered, DataAcked) for this long
    /// is stale.
    pub stale_after: Duration,
    /// This many consecutive `ProbeMissed` fail a path (0 is treated as 1).
    pub misses_to_fail: u32,
    /// Queue depth over this many frames counts as over budget.
    pub queue_budget_frames: usize,
    /// Queue depth over this many bytes counts as over budget.
    pub queue_budget_bytes: usize,
    /// A queue over budget continuously for this long makes the path
    /// pressured.
    pub pressured_for: Duration,
    /// A voluntary switch (return to preferred, handover) goes only to a
    /// path with this many consecutive pieces of evidence since its last
    /// missed probe or failure (0 is treated as 1).
    pub recovery_evidence: u32,
    /// A voluntary switch goes only to a path whose last evidence is at most
    /// this old; otherwise the stream waits for the next evidence on it.
    pub fresh_within: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            stale_after: DEFAULT_STALE_AFTER,
            misses_to_fail: DEFAULT_MISSES_TO_FAIL,
            queue_budget_frames: DEFAULT_QUEUE_BUDGET_FRAMES,
            queue_budget_bytes: DEFAULT_QUEUE_BUDGET_BYTES,
            pressured_for: DEFAULT_PRESSURED_FOR,
            recovery_evidence: DEFAULT_RECOVERY_EVIDENCE,
            fresh_within: DEFAULT_FRESH_WITHIN,
        }
    }
}

/// A fact a transport reports about one path. Transports report facts; the
/// core decides what they mean.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Observation {
    /// The path is up (connected, handshake done). Evidence of liveness.
    Up,
    /// The path went down. Fails it at once.
    Down {
        /// What the transport saw, e.g. "reset by peer".
        cause: String,
    },
    /// A liveness probe was answered. Evidence; resets the miss count.
    ProbeAnswered {
        /// The probe's round-trip time.
        rtt: Duration,
    },
    /// A liveness probe went unanswered. `misses_to_fail` in a row fail the
    /// path.
    ProbeMissed,
    /// A data frame on this path was acknowledged. Evidence, exactly like an
    /// answered probe; also completes a make-before-break transition.
    DataAcked,
    /// A round-trip time sample. Recorded for explanations only.
    Rtt(Duration),
    /// A loss sample. Recorded for explanations only.
    Loss {
        /// Frames lost in the sample.
        lost: u64,
        /// Frames sent in the sample.
        sent: u64,
    },
    /// The current send queue depth of the path.
    QueueDepth {
        /// Queued frames.
        frames: usize,
        /// Queued bytes.
        bytes: usize,
    },
    /// An incident (protocol error, certificate problem, ...). Fails the
    /// path at once.
    Incident {
        /// What happened.
        what: String,
    },
}

/// The health of one path at one instant.
///
/// Ordered from best to worst; when several conditions hold, the worst one is
/// reported (failed, then stale, then pressured).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PathHealth {
    /// Recent evidence and a queue within budget.
    Healthy,
    /// The queue has been over budget for `pressured_for`. Still usable.
    Pressured,
    /// No evidence for `stale_after`. Still usable, as a last resort.
    Stale,
    /// Down, incident, removed, or too many probes missed. Not usable until
    /// new evidence arrives.
    Failed,
}

impl PathHealth {
    /// Whether a stream may use a path in this state.
    pub fn is_usable(self) -> bool {
        !matches!(self, PathHealth::Failed)
    }

    /// The name used in logs and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            PathHealth::Healthy => "healthy",
            PathHealth::Pressured => "pressured",
            PathHealth::Stale => "stale",
            PathHealth::Failed => "failed",
        }
    }
}

impl fmt::Display for PathHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the core remembers about one path.
#[derive(Clone, Debug)]
pub(crate) struct PathState {
    /// Last Up / ProbeAnswered / DataAcked (or the time the path was added):
    /// staleness is measured from here.
    last_evidence: Instant,
    /// Why the path is failed, if it is. Cleared only by evidence.
    failure: Option<Cause>,
    /// Consecutive missed probes since the last evidence.
    misses: u32,
    /// Consecutive pieces of evidence since the last miss or failure.
    evidence_run: u32,
    /// Since when every queue-depth report has been over budget.
    over_budget_since: Option<Instant>,
    /// When the path last turned healthy through an input; hold-down is
    /// measured from here. Meaningful only while the path is healthy.
    healthy_since: Instant,
    /// Last RTT sample, for explanations.
    pub(crate) rtt: Option<Duration>,
    /// Last loss sample `(lost, sent)`, for explanations.
    pub(crate) loss: Option<(u64, u64)>,
    /// The currently scheduled health-change deadline, if any (the core
    /// keeps its timer set in step with this).
    pub(crate) timer: Option<Instant>,
}

impl PathState {
    /// A path that was just reported: counts as evidence at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            last_evidence: now,
            failure: None,
            misses: 0,
            evidence_run: 1,
            over_budget_since: None,
            healthy_since: now,
            rtt: None,
            loss: None,
            timer: None,
        }
    }

    /// The path's health at `now`.
    pub(crate) fn health(&self, now: Instant, cfg: &HealthConfig) -> PathHealth {
        if self.failure.is_some() {
            PathHealth::Failed
        } else if now >= self.stale_since(cfg) {
            PathHealth::Stale
        } else if self.pressured_since(cfg).is_some_and(|p| now >= p) {
            PathHealth::Pressured
        } else {
            PathHealth::Healthy
        }
    }

    /// When the path has been continuously healthy since, if it is healthy.
    pub(crate) fn healthy_since(&self, now: Instant, cfg: &HealthConfig) -> Option<Instant> {
        (self.health(now, cfg) == PathHealth::Healthy).then_some(self.healthy_since)
    }

    /// The instant at which the path is (or will be) stale without further
    /// evidence.
    pub(crate) fn stale_since(&self, cfg: &HealthConfig) -> Instant {
        self.last_evidence + cfg.stale_after
    }

    /// The instant at which the path is (or will be) pressured if the queue
    /// stays over budget.
    pub(crate) fn pressured_since(&self, cfg: &HealthConfig) -> Option<Instant> {
        self.over_budget_since.map(|s| s + cfg.pressured_for)
    }

    /// Why the path is failed, if it is.
    pub(crate) fn failure(&self) -> Option<&Cause> {
        self.failure.as_ref()
    }

    /// Consecutive missed probes.
    pub(crate) fn misses(&self) -> u32 {
        self.misses
    }

    /// Whether a voluntary switch may go to this path at `now`: enough
    /// evidence in a row since its last miss or failure, and the last of it
    /// recent. A path that is still cut but not yet declared failed has
    /// neither (its probes are overdue or missed), so a stream never
    /// returns to it.
    pub(crate) fn fresh(&self, now: Instant, cfg: &HealthConfig) -> bool {
        self.misses == 0
            && self.evidence_run >= cfg.recovery_evidence.max(1)
            && now.saturating_duration_since(self.last_evidence) <= cfg.fresh_within
    }

    /// The last evidence (Up, ProbeAnswered, DataAcked, or the time the
    /// path was added).
    pub(crate) fn last_evidence(&self) -> Instant {
        self.last_evidence
    }

    /// What stream evaluation depends on: a change here means the streams on
    /// this path's peer must be evaluated again.
    pub(crate) fn signature(
        &self,
        now: Instant,
        cfg: &HealthConfig,
    ) -> (PathHealth, Option<Instant>) {
        (self.health(now, cfg), self.healthy_since(now, cfg))
    }

    /// The next instant after `now` at which the health changes by itself
    /// (stale, pressured), if any. Failed paths change only on input.
    pub(crate) fn next_change(&self, now: Instant, cfg: &HealthConfig) -> Option<Instant> {
        if self.failure.is_some() {
            return None;
        }
        [Some(self.stale_since(cfg)), self.pressured_since(cfg)]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min()
    }

    /// Applies one observation at `now`.
    pub(crate) fn apply(&mut self, now: Instant, obs: Observation, cfg: &HealthConfig) {
        let was = self.health(now, cfg);
        match obs {
            Observation::Up | Observation::DataAcked => self.evidence(now),
            Observation::ProbeAnswered { rtt } => {
                self.rtt = Some(rtt);
                self.evidence(now);
            }
            Observation::Down { cause } => self.fail(Cause::Down(cause)),
            Observation::Incident { what } => self.fail(Cause::Incident(what)),
            Observation::ProbeMissed => {
                self.evidence_run = 0;
                self.misses = self.misses.saturating_add(1);
                if self.misses >= cfg.misses_to_fail.max(1) && self.failure.is_none() {
                    self.failure = Some(Cause::ProbesMissed(self.misses));
                }
            }
            Observation::Rtt(rtt) => self.rtt = Some(rtt),
            Observation::Loss { lost, sent } => self.loss = Some((lost, sent)),
            Observation::QueueDepth { frames, bytes } => {
                let over = frames > cfg.queue_budget_frames || bytes > cfg.queue_budget_bytes;
                if over {
                    self.over_budget_since.get_or_insert(now);
                } else {
                    self.over_budget_since = None;
                }
            }
        }
        // Time only ever makes a path worse; the only way back to healthy is
        // an input, so this is where every healthy interval starts.
        if was != PathHealth::Healthy && self.health(now, cfg) == PathHealth::Healthy {
            self.healthy_since = now;
        }
    }

    fn evidence(&mut self, now: Instant) {
        self.last_evidence = now;
        self.misses = 0;
        self.evidence_run = self.evidence_run.saturating_add(1);
        self.failure = None;
    }

    fn fail(&mut self, cause: Cause) {
        self.evidence_run = 0;
        self.failure = Some(cause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn fresh_path_is_healthy_then_stale_without_evidence() {
        let cfg = HealthConfig::default();
        let t0 = Instant::now();
        let p = PathState::new(t0);
        assert_eq!(p.health(t0, &cfg), PathHealth::Healthy);
        assert_eq!(p.health(t0 + s(4), &cfg), PathHealth::Healthy);
        assert_eq!(p.health(t0 + s(5), &cfg), PathHealth::Stale);
        assert_eq!(p.next_change(t0, &cfg), Some(t0 + s(5)));
    }

    #[test]
    fn misses_fail_and_acks_reset_the_count() {
        let cfg = HealthConfig {
            misses_to_fail: 3,
            ..HealthConfig::default()
        };
        let t0 = Instant::now();
        let mut p = PathState::new(t0);
        p.apply(t0, Observation::ProbeMissed, &cfg);
        p.apply(t0, Observation::ProbeMissed, &cfg);
        p.apply(t0, Observation::DataAcked, &cfg);
        p.apply(t0, Observation::ProbeMissed, &cfg);
        p.apply(t0, Observation::ProbeMissed, &cfg);
        assert_eq!(p.health(t0, &cfg), PathHealth::Healthy);
        p.apply(t0, Observation::ProbeMissed, &cfg);
        assert_eq!(p.health(t0, &cfg), PathHealth::Failed);
        assert_eq!(p.failure(), Some(&Cause::ProbesMissed(3)));
        p.apply(t0 + s(1), Observation::ProbeAnswered { rtt: s(0) }, &cfg);
        assert_eq!(p.health(t0 + s(1), &cfg), PathHealth::Healthy);
        assert_eq!(p.healthy_since(t0 + s(2), &cfg), Some(t0 + s(1)));
    }

    #[test]
    fn pressured_only_after_continuous_overload() {
        let cfg = HealthConfig::default();
        let t0 = Instant::now();
        let mut p = PathState::new(t0);
        let over = Observation::QueueDepth {
            frames: 1000,
            bytes: 0,
        };
        let under = Observation::QueueDepth {
            frames: 1,
            bytes: 1,
        };
        p.apply(t0, over.clone(), &cfg);
        p.apply(t0 + s(1), under.clone(), &cfg);
        p.apply(t0 + s(1), over.clone(), &cfg);
        assert_eq!(p.health(t0 + s(2), &cfg), PathHealth::Healthy);
        assert_eq!(p.health(t0 + s(3), &cfg), PathHealth::Pressured);
        p.apply(t0 + s(4), under, &cfg);
        assert_eq!(p.health(t0 + s(4), &cfg), PathHealth::Healthy);
        assert_eq!(p.healthy_since(t0 + s(4), &cfg), Some(t0 + s(4)));
        // Bytes alone also count.
        p.apply(t0 + s(4), Observation::DataAcked, &cfg);
        p.apply(
            t0 + s(4),
            Observation::QueueDepth {
                frames: 0,
                bytes: 9 * 1024 * 1024,
            },
            &cfg,
        );
        assert_eq!(p.next_change(t0 + s(4), &cfg), Some(t0 + s(6)));
    }

    #[test]
    fn failed_path_needs_evidence_and_stale_beats_pressured() {
        let cfg = HealthConfig::default();
        let t0 = Instant::now();
        let mut p = PathState::new(t0);
        p.apply(
            t0,
            Observation::Incident {
                what: "bad cert".into(),
            },
            &cfg,
        );
        assert_eq!(p.health(t0 + s(60), &cfg), PathHealth::Failed);
        assert_eq!(p.next_change(t0, &cfg), None);
        p.apply(t0 + s(60), Observation::Up, &cfg);
        p.apply(
            t0 + s(60),
            Observation::QueueDepth {
                frames: 999,
                bytes: 0,
            },
            &cfg,
        );
        assert_eq!(p.health(t0 + s(63), &cfg), PathHealth::Pressured);
        assert_eq!(p.health(t0 + s(65), &cfg), PathHealth::Stale);
    }
}

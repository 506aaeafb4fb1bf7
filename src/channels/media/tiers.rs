//! The degradation ladder of one media stream: a pure state machine (no
//! tokio, no sockets) fed with path facts and an explicit `now`, giving
//! tier decisions with their cause.
//!
//! Tiers, best first: [`Tier::Full`] → [`Tier::Reduced`] (lower bitrate)
//! → [`Tier::AudioOnly`] → [`Tier::Paused`]. A sample of path facts is
//! *bad* when loss or RTT is over the tier's limits, *good* when both are
//! under the (lower) recovery limits, otherwise neutral. The stream steps
//! down one tier after [`TierConfig::down_after`] consecutive bad samples
//! and up one tier after [`TierConfig::up_after`] consecutive good ones;
//! at most one change happens per [`TierConfig::hold`] (hysteresis: the
//! two sets of limits and the hold keep it from flapping). Paused is the
//! lowest useful tier failing: [`TierCore::failed_over`] says when it has
//! lasted [`TierConfig::fail_after`], the moment a stream should fail over
//! to its next path.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// One tier of the ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Video at full bitrate, and audio.
    Full,
    /// Video at reduced bitrate, and audio.
    Reduced,
    /// Audio only.
    AudioOnly,
    /// Nothing is sent.
    Paused,
}

impl Tier {
    /// One step down (Paused stays).
    pub fn lower(self) -> Self {
        match self {
            Tier::Full => Tier::Reduced,
            Tier::Reduced => Tier::AudioOnly,
            _ => Tier::Paused,
        }
    }

    /// One step up (Full stays).
    pub fn higher(self) -> Self {
        match self {
            Tier::Paused => Tier::AudioOnly,
            Tier::AudioOnly => Tier::Reduced,
            _ => Tier::Full,
        }
    }

    /// Whether video is sent at this tier.
    pub fn video(self) -> bool {
        matches!(self, Tier::Full | Tier::Reduced)
    }

    /// Whether audio is sent at this tier.
    pub fn audio(self) -> bool {
        self != Tier::Paused
    }

    /// The tier's name as shown on pages and in `explain`.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Full => "full",
            Tier::Reduced => "reduced",
            Tier::AudioOnly => "audio-only",
            Tier::Paused => "paused",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One sample of path facts (from RTCP receiver reports).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PathSample {
    /// Fraction of packets lost (0.0–1.0).
    pub loss: f64,
    /// Round-trip time, if measured.
    pub rtt: Option<Duration>,
    /// Bits per second sent since the previous sample.
    pub bitrate: u64,
}

/// Thresholds and timing of the ladder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TierConfig {
    /// A sample with more loss than this is bad.
    pub bad_loss: f64,
    /// A sample with less loss than this can be good.
    pub good_loss: f64,
    /// A sample with a longer RTT than this is bad.
    pub bad_rtt: Duration,
    /// A sample with a shorter RTT than this can be good.
    pub good_rtt: Duration,
    /// Consecutive bad samples before a step down.
    pub down_after: u32,
    /// Consecutive good samples before a step up.
    pub up_after: u32,
    /// At most one tier change per this period.
    pub hold: Duration,
    /// Paused this long: the path has failed for media.
    pub fail_after: Duration,
    /// Decisions kept for `explain`.
    pub history: usize,
}

impl Default for TierConfig {
    /// 10 % loss or 400 ms RTT is bad; under 2 % and 250 ms is good; two
    /// bad samples step down, four good ones step up; one change per 3 s
    /// (the media freeze); paused for 10 s is a failure; 32 decisions kept.
    fn default() -> Self {
        Self {
            bad_loss: 0.10,
            good_loss: 0.02,
            bad_rtt: Duration::from_millis(400),
            good_rtt: Duration::from_millis(250),
            down_after: 2,
            up_after: 4,
            hold: Duration::from_secs(3),
            fail_after: Duration::from_secs(10),
            history: 32,
        }
    }
}

/// Why a tier changed.
#[derive(Clone, Debug, PartialEq)]
pub enum TierCause {
    /// Consecutive samples over the bad limits; the last one.
    Degraded(PathSample),
    /// Consecutive samples under the good limits; the last one.
    Recovered(PathSample),
}

impl fmt::Display for TierCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, s) = match self {
            TierCause::Degraded(s) => ("path degraded", s),
            TierCause::Recovered(s) => ("path recovered", s),
        };
        write!(f, "{what}: loss {:.1} %", s.loss * 100.0)?;
        if let Some(rtt) = s.rtt {
            write!(f, ", rtt {} ms", rtt.as_millis())?;
        }
        write!(f, ", {} kbit/s", s.bitrate / 1000)
    }
}

/// One recorded tier change.
#[derive(Clone, Debug, PartialEq)]
pub struct TierDecision {
    /// When.
    pub at: Instant,
    /// The tier before.
    pub from: Tier,
    /// The tier after.
    pub to: Tier,
    /// Why.
    pub cause: TierCause,
    /// Changes so far, this one included.
    pub changes: u64,
}

impl fmt::Display for TierDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tier {} -> {} (#{}): {}",
            self.from, self.to, self.changes, self.cause
        )
    }
}

/// The ladder of one stream. Feed [`TierCore::observe`]; drain
/// [`TierCore::poll_decision`].
#[derive(Clone, Debug)]
pub struct TierCore {
    config: TierConfig,
    tier: Tier,
    bad: u32,
    good: u32,
    last_change: Option<Instant>,
    paused_since: Option<Instant>,
    changes: u64,
    pending: VecDeque<TierDecision>,
    history: VecDeque<TierDecision>,
}

impl TierCore {
    /// A stream starting at [`Tier::Full`].
    pub fn new(config: TierConfig) -> Self {
        Self {
            config,
            tier: Tier::Full,
            bad: 0,
            good: 0,
            last_change: None,
            paused_since: None,
            changes: 0,
            pending: VecDeque::new(),
            history: VecDeque::new(),
        }
    }

    /// The same ladder resuming at `tier` (an actor restarted mid-stream);
    /// no decision is recorded, nothing changed on the path.
    pub fn resumed_at(mut self, tier: Tier) -> Self {
        self.tier = tier;
        self
    }

    /// The tier now.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Tier changes so far.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The last decisions, oldest first (at most [`TierConfig::history`]).
    pub fn history(&self) -> impl Iterator<Item = &TierDecision> {
        self.history.iter()
    }

    fn is_bad(&self, s: &PathSample) -> bool {
        s.loss > self.config.bad_loss || s.rtt.is_some_and(|r| r > self.config.bad_rtt)
    }

    fn is_good(&self, s: &PathSample) -> bool {
        s.loss < self.config.good_loss && s.rtt.is_none_or(|r| r < self.config.good_rtt)
    }

    /// Takes one sample of path facts at `now`.
    pub fn observe(&mut self, now: Instant, s: PathSample) {
        if self.is_bad(&s) {
            self.bad += 1;
            self.good = 0;
        } else if self.is_good(&s) {
            self.good += 1;
            self.bad = 0;
        } else {
            self.bad = 0;
            self.good = 0;
        }
        let held = self
            .last_change
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.hold);
        if held {
            return;
        }
        let next = if self.bad >= self.config.down_after && self.tier != Tier::Paused {
            Some((self.tier.lower(), TierCause::Degraded(s)))
        } else if self.good >= self.config.up_after && self.tier != Tier::Full {
            Some((self.tier.higher(), TierCause::Recovered(s)))
        } else {
            None
        };
        if let Some((to, cause)) = next {
            self.changes += 1;
            let d = TierDecision {
                at: now,
                from: self.tier,
                to,
                cause,
                changes: self.changes,
            };
            self.tier = to;
            self.last_change = Some(now);
            self.bad = 0;
            self.good = 0;
            self.paused_since = (to == Tier::Paused).then_some(now);
            if self.history.len() >= self.config.history.max(1) {
                self.history.pop_front();
            }
            self.history.push_back(d.clone());
            self.pending.push_back(d);
        }
    }

    /// The next decision not yet drained.
    pub fn poll_decision(&mut self) -> Option<TierDecision> {
        self.pending.pop_front()
    }

    /// When a held change could happen next (the end of the hold), if a
    /// change was made.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.last_change.map(|t| t + self.config.hold)
    }

    /// Whether the stream has been paused for [`TierConfig::fail_after`]
    /// at `now`: the lowest useful tier failed, fail over.
    pub fn failed_over(&self, now: Instant) -> bool {
        self.paused_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.config.fail_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn bad() -> PathSample {
        PathSample {
            loss: 0.3,
            rtt: Some(Duration::from_millis(50)),
            bitrate: 300_000,
        }
    }

    fn good() -> PathSample {
        PathSample {
            loss: 0.0,
            rtt: Some(Duration::from_millis(20)),
            bitrate: 300_000,
        }
    }

    #[test]
    fn steps_down_one_tier_per_hold_and_back_up() {
        let mut c = TierCore::new(TierConfig::default());
        let t0 = Instant::now();
        let step = Duration::from_millis(500);
        let mut tiers = Vec::new();
        // 12 s of bad samples every 500 ms.
        for i in 0..24 {
            c.observe(t0 + step * i, bad());
            while let Some(d) = c.poll_decision() {
                assert!(matches!(d.cause, TierCause::Degraded(_)));
                tiers.push((d.at - t0, d.to));
            }
        }
        assert_eq!(
            tiers.iter().map(|t| t.1).collect::<Vec<_>>(),
            [Tier::Reduced, Tier::AudioOnly, Tier::Paused]
        );
        for w in tiers.windows(2) {
            assert!(w[1].0 - w[0].0 >= Duration::from_secs(3), "{tiers:?}");
        }
        assert!(c.failed_over(t0 + step * 24 + Duration::from_secs(10)));
        let base = t0 + step * 24;
        let mut up = Vec::new();
        for i in 0..40 {
            c.observe(base + step * i, good());
            while let Some(d) = c.poll_decision() {
                up.push(d.to);
            }
        }
        assert_eq!(up, [Tier::AudioOnly, Tier::Reduced, Tier::Full]);
        assert!(!c.failed_over(base + step * 40));
        assert_eq!(c.changes(), 6);
        assert_eq!(c.history().count(), 6);
    }

    #[test]
    fn neutral_samples_hold_the_tier_and_reset_counts() {
        let mut c = TierCore::new(TierConfig::default());
        let t0 = Instant::now();
        let mid = PathSample {
            loss: 0.05,
            rtt: None,
            bitrate: 0,
        };
        for i in 0..100u32 {
            let s = if i % 2 == 0 { bad() } else { mid };
            c.observe(t0 + Duration::from_millis(500) * i, s);
        }
        assert_eq!(c.tier(), Tier::Full);
        assert!(c.poll_decision().is_none());
        // RTT alone can degrade.
        let slow = PathSample {
            loss: 0.0,
            rtt: Some(Duration::from_secs(1)),
            bitrate: 0,
        };
        c.observe(t0 + Duration::from_secs(60), slow);
        c.observe(t0 + Duration::from_secs(61), slow);
        assert_eq!(c.tier(), Tier::Reduced);
    }

    /// Property: under any seeded sequence of samples and time steps,
    /// consecutive changes are at least one hold apart, each moves one
    /// tier, and down-steps follow bad samples only.
    #[test]
    fn never_more_than_one_change_per_hold_under_random_paths() {
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let config = TierConfig::default();
            let mut c = TierCore::new(config);
            let mut now = Instant::now();
            let mut last: Option<Instant> = None;
            for _ in 0..500 {
                now += Duration::from_millis(rng.random_range(10..2000));
                let s = PathSample {
                    loss: rng.random_range(0.0..0.5),
                    rtt: Some(Duration::from_millis(rng.random_range(1..800))),
                    bitrate: 0,
                };
                let before = c.tier();
                c.observe(now, s);
                while let Some(d) = c.poll_decision() {
                    assert_eq!(d.from, before, "seed {seed}");
                    assert!(d.to == before.lower() || d.to == before.higher());
                    if let Some(l) = last {
                        assert!(d.at - l >= config.hold, "seed {seed}: {d}");
                    }
                    last = Some(d.at);
                }
            }
        }
    }
}

//! Path policies: which path kinds a stream may use and in what order, how
//! long a switch freezes the route, when to hand over, and flap damping.
//!
//! Owns the policy and configuration types, their defaults (DESIGN §5) and
//! the effective-freeze arithmetic. It must not hold any state about paths or
//! streams; the core reads policies, never the reverse.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::health::HealthConfig;
use crate::vocab::{ChannelKind, PathKind};

/// Freeze after a switch of a command stream.
pub const COMMAND_FREEZE: Duration = Duration::from_secs(10);
/// Freeze after a switch of a sync stream.
pub const SYNC_FREEZE: Duration = Duration::from_secs(15);
/// Freeze after a switch of a media stream.
pub const MEDIA_FREEZE: Duration = Duration::from_secs(3);
/// Freeze after a switch of an event stream.
pub const EVENT_FREEZE: Duration = Duration::from_secs(10);
/// Freeze after a switch of a presence stream.
pub const PRESENCE_FREEZE: Duration = Duration::from_secs(5);
/// How long a better path must be continuously healthy before a voluntary
/// switch to it.
pub const DEFAULT_HOLD_DOWN: Duration = Duration::from_secs(3);
/// How long the current path may be stale before a handover.
pub const DEFAULT_HANDOVER_ON_STALE: Duration = Duration::from_secs(2);
/// How long the current path may be pressured before a handover.
pub const DEFAULT_HANDOVER_ON_PRESSURED: Duration = Duration::from_secs(5);
/// Switches older than this are forgotten by flap damping.
pub const DEFAULT_FLAP_WINDOW: Duration = Duration::from_secs(600);
/// Growth factor of the freeze per unit of flap penalty beyond the first.
pub const DEFAULT_FLAP_MULTIPLIER: f64 = 2.0;
/// Upper bound of a damped freeze.
pub const DEFAULT_FLAP_CAP: Duration = Duration::from_secs(120);
/// Half-life of one switch's weight in the flap penalty.
pub const DEFAULT_FLAP_DECAY: Duration = Duration::from_secs(60);
/// How soon after a failover on missed probes an answer from the path it
/// left undoes the failover.
pub const DEFAULT_UNDO_WITHIN: Duration = Duration::from_millis(300);
/// Decisions kept per stream for [`crate::routing::RoutingCore::explain`].
pub const DEFAULT_HISTORY: usize = 16;

/// When a stream leaves a usable but weak current path for a healthy one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// Hand over once the current path has been stale this long (`None`:
    /// stay on a stale path until it fails).
    pub on_stale: Option<Duration>,
    /// Hand over once the current path has been pressured this long
    /// (`None`: stay on a pressured path until it fails).
    pub on_pressured: Option<Duration>,
}

impl Default for Handover {
    fn default() -> Self {
        Self {
            on_stale: Some(DEFAULT_HANDOVER_ON_STALE),
            on_pressured: Some(DEFAULT_HANDOVER_ON_PRESSURED),
        }
    }
}

/// Flap damping: the freeze grows with every recent switch and relaxes again
/// when the stream is quiet (after Envoy's outlier ejection time and BGP
/// route flap damping).
///
/// Each switch within `window` weighs `0.5^(age / decay)`; the penalty is the
/// sum of the weights, including the switch being made (weight 1). The
/// effective freeze is `freeze * multiplier^(penalty - 1)`, at most `cap`
/// and never less than the policy's freeze.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlapDamping {
    /// Switches older than this no longer count at all.
    pub window: Duration,
    /// Growth per unit of penalty beyond the first switch (1.0 disables
    /// damping).
    pub multiplier: f64,
    /// Upper bound of the effective freeze.
    pub cap: Duration,
    /// Half-life of a switch's weight (zero: only the current switch
    /// counts).
    pub decay: Duration,
}

impl Default for FlapDamping {
    fn default() -> Self {
        Self {
            window: DEFAULT_FLAP_WINDOW,
            multiplier: DEFAULT_FLAP_MULTIPLIER,
            cap: DEFAULT_FLAP_CAP,
            decay: DEFAULT_FLAP_DECAY,
        }
    }
}

impl FlapDamping {
    /// No damping: the freeze is always the policy's freeze.
    pub fn disabled() -> Self {
        Self {
            multiplier: 1.0,
            ..Self::default()
        }
    }

    /// The penalty at `now` of the switches at `switches` (which should
    /// include the switch being made at `now`).
    pub fn penalty(&self, switches: impl IntoIterator<Item = Instant>, now: Instant) -> f64 {
        switches
            .into_iter()
            .map(|t| now.saturating_duration_since(t))
            .filter(|age| *age <= self.window)
            .map(|age| {
                if self.decay.is_zero() {
                    if age.is_zero() { 1.0 } else { 0.0 }
                } else {
                    0.5f64.powf(age.as_secs_f64() / self.decay.as_secs_f64())
                }
            })
            .sum()
    }

    /// The freeze to apply after a switch at `now`, given the policy's
    /// `base` freeze and the stream's recent switch times (including this
    /// one). Rounded to whole milliseconds.
    pub fn effective_freeze(
        &self,
        base: Duration,
        switches: impl IntoIterator<Item = Instant>,
        now: Instant,
    ) -> Duration {
        let excess = (self.penalty(switches, now) - 1.0).max(0.0);
        let millis = base.as_secs_f64() * 1000.0 * self.multiplier.powf(excess);
        let grown = if millis.is_finite() && millis < self.cap.as_secs_f64() * 1000.0 {
            Duration::from_millis(millis.round() as u64)
        } else {
            self.cap
        };
        grown.max(base)
    }
}

/// How one stream chooses among its paths.
///
/// ```
/// use std::time::{Duration, Instant};
/// use interlocking::routing::{FlapDamping, Handover, Need, Policy, RoutingConfig, RoutingCore};
/// use interlocking::vocab::{ChannelKind, PathKind, StreamId};
///
/// // Commands: a sidecar-owned socket first, then direct QUIC, then the relay;
/// // never more than 60 s off the preferred path without saying so.
/// let command = Policy::new(
///     [PathKind::Sidecar, PathKind::Quic, PathKind::Relay],
///     Duration::from_secs(10),
/// )
/// .with_hold_down(Duration::from_secs(5))
/// .with_handover(Handover { on_stale: Some(Duration::from_secs(1)), on_pressured: None })
/// .with_max_on_fallback(Duration::from_secs(60));
/// let config = RoutingConfig::default().with_policy(ChannelKind::Command, command);
/// config.validate().expect("consistent policies");
/// let mut core = RoutingCore::new(config);
///
/// // One stream with its own policy: direct paths only, gentler damping.
/// let lan_only = Policy::for_channel(ChannelKind::Sync)
///     .direct_only()
///     .with_flap(FlapDamping { multiplier: 1.5, ..FlapDamping::default() });
/// core.register(
///     Instant::now(),
///     StreamId::new("sync:hub/m7/doc-42"),
///     Need::node(ChannelKind::Sync, "m7").with_policy(lan_only),
/// )
/// .unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Path kinds in preference order; kinds not listed are never used.
    pub order: Vec<PathKind>,
    /// Minimum time after a switch before a voluntary switch.
    pub freeze: Duration,
    /// How long a better path must be continuously healthy before a
    /// voluntary switch to it.
    pub hold_down: Duration,
    /// When to leave a stale or pressured current path.
    pub handover: Handover,
    /// How the freeze grows with repeated switches.
    pub flap: FlapDamping,
    /// Never select a path that is not direct ([`PathKind::is_direct`]),
    /// even if it is the only usable one.
    pub direct_only: bool,
    /// After this long on a non-preferred path (or without a path), the
    /// stream is assessed degraded.
    pub max_on_fallback: Option<Duration>,
    /// A failover on missed probes is undone (rule `FailoverUndone`, no
    /// freeze, no flap penalty) when the path it left answers within this
    /// long; at most once per `freeze`. Zero disables undoing.
    #[serde(default = "default_undo_within")]
    pub undo_within: Duration,
}

fn default_undo_within() -> Duration {
    DEFAULT_UNDO_WITHIN
}

impl Policy {
    /// A policy with the given order and freeze and default everything else.
    pub fn new(order: impl Into<Vec<PathKind>>, freeze: Duration) -> Self {
        Self {
            order: order.into(),
            freeze,
            hold_down: DEFAULT_HOLD_DOWN,
            handover: Handover::default(),
            flap: FlapDamping::default(),
            direct_only: false,
            max_on_fallback: None,
            undo_within: DEFAULT_UNDO_WITHIN,
        }
    }

    /// The default policy of a channel kind (DESIGN §5).
    pub fn for_channel(kind: ChannelKind) -> Self {
        use PathKind::*;
        match kind {
            ChannelKind::Command => Self::new([WebrtcData, Quic, Relay], COMMAND_FREEZE),
            ChannelKind::Sync => Self::new([WebrtcData, Quic, Relay], SYNC_FREEZE),
            ChannelKind::Media => Self::new([WebrtcMedia, Relay], MEDIA_FREEZE),
            ChannelKind::Event => Self::new([WebrtcData, Quic, Relay], EVENT_FREEZE),
            ChannelKind::Presence => Self::new([WebrtcData, Quic, Relay], PRESENCE_FREEZE),
        }
    }

    /// Sets the hold-down.
    pub fn with_hold_down(mut self, hold_down: Duration) -> Self {
        self.hold_down = hold_down;
        self
    }

    /// Sets the handover conditions.
    pub fn with_handover(mut self, handover: Handover) -> Self {
        self.handover = handover;
        self
    }

    /// Sets the flap damping.
    pub fn with_flap(mut self, flap: FlapDamping) -> Self {
        self.flap = flap;
        self
    }

    /// Restricts the stream to direct paths.
    pub fn direct_only(mut self) -> Self {
        self.direct_only = true;
        self
    }

    /// Sets how soon an answer from the path a failover left undoes it.
    pub fn with_undo_within(mut self, undo_within: Duration) -> Self {
        self.undo_within = undo_within;
        self
    }

    /// Sets the longest tolerated time on a fallback path.
    pub fn with_max_on_fallback(mut self, limit: Duration) -> Self {
        self.max_on_fallback = Some(limit);
        self
    }

    /// Whether the policy allows `kind` at all.
    pub fn allows(&self, kind: PathKind) -> bool {
        self.order.contains(&kind) && (!self.direct_only || kind.is_direct())
    }

    /// The allowed kinds, most preferred first.
    pub fn allowed(&self) -> impl Iterator<Item = PathKind> + '_ {
        self.order
            .iter()
            .copied()
            .filter(|k| !self.direct_only || k.is_direct())
    }

    /// Checks the policy for contradictions.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.order.is_empty() {
            return Err(PolicyError::EmptyOrder);
        }
        for (i, k) in self.order.iter().enumerate() {
            if self.order[..i].contains(k) {
                return Err(PolicyError::DuplicateKind(*k));
            }
        }
        if self.allowed().next().is_none() {
            return Err(PolicyError::NoDirectKind);
        }
        if !self.flap.multiplier.is_finite() || self.flap.multiplier < 1.0 {
            return Err(PolicyError::BadMultiplier(self.flap.multiplier));
        }
        Ok(())
    }
}

/// Why a policy was refused.
#[derive(Clone, Debug, PartialEq, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The order lists no path kind.
    #[error("policy order is empty")]
    EmptyOrder,
    /// A path kind appears twice in the order.
    #[error("path kind {0} appears twice in the policy order")]
    DuplicateKind(PathKind),
    /// `direct_only` is set but the order lists no direct kind.
    #[error("policy is direct-only but its order lists no direct path kind")]
    NoDirectKind,
    /// The flap multiplier is below 1 or not finite.
    #[error("flap multiplier {0} must be finite and at least 1")]
    BadMultiplier(f64),
}

/// The routing core's configuration: health thresholds and one policy per
/// channel kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingConfig {
    /// Health thresholds, shared by every path.
    pub health: HealthConfig,
    /// Policy of command streams.
    pub command: Policy,
    /// Policy of sync streams.
    pub sync: Policy,
    /// Policy of media streams.
    pub media: Policy,
    /// Policy of event streams.
    pub event: Policy,
    /// Policy of presence streams.
    pub presence: Policy,
    /// Decisions kept per stream for explanations.
    pub history: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            health: HealthConfig::default(),
            command: Policy::for_channel(ChannelKind::Command),
            sync: Policy::for_channel(ChannelKind::Sync),
            media: Policy::for_channel(ChannelKind::Media),
            event: Policy::for_channel(ChannelKind::Event),
            presence: Policy::for_channel(ChannelKind::Presence),
            history: DEFAULT_HISTORY,
        }
    }
}

impl RoutingConfig {
    /// The policy of a channel kind.
    pub fn policy(&self, kind: ChannelKind) -> &Policy {
        match kind {
            ChannelKind::Command => &self.command,
            ChannelKind::Sync => &self.sync,
            ChannelKind::Media => &self.media,
            ChannelKind::Event => &self.event,
            ChannelKind::Presence => &self.presence,
        }
    }

    /// The policy of a channel kind, for changing it.
    pub fn policy_mut(&mut self, kind: ChannelKind) -> &mut Policy {
        match kind {
            ChannelKind::Command => &mut self.command,
            ChannelKind::Sync => &mut self.sync,
            ChannelKind::Media => &mut self.media,
            ChannelKind::Event => &mut self.event,
            ChannelKind::Presence => &mut self.presence,
        }
    }

    /// Replaces the policy of a channel kind.
    pub fn with_policy(mut self, kind: ChannelKind, policy: Policy) -> Self {
        *self.policy_mut(kind) = policy;
        self
    }

    /// Checks every policy.
    pub fn validate(&self) -> Result<(), PolicyError> {
        [
            &self.command,
            &self.sync,
            &self.media,
            &self.event,
            &self.presence,
        ]
        .into_iter()
        .try_for_each(Policy::validate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design_table() {
        let c = RoutingConfig::default();
        assert_eq!(
            c.command.order,
            [PathKind::WebrtcData, PathKind::Quic, PathKind::Relay]
        );
        assert_eq!(c.command.freeze, Duration::from_secs(10));
        assert_eq!(c.sync.freeze, Duration::from_secs(15));
        assert_eq!(c.media.order, [PathKind::WebrtcMedia, PathKind::Relay]);
        assert_eq!(c.media.freeze, Duration::from_secs(3));
        assert_eq!(c.event.freeze, Duration::from_secs(10));
        assert_eq!(c.presence.freeze, Duration::from_secs(5));
        assert_eq!(c.command.hold_down, Duration::from_secs(3));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn validation_refuses_contradictions() {
        let p = Policy::new([PathKind::Relay], COMMAND_FREEZE).direct_only();
        assert_eq!(p.validate(), Err(PolicyError::NoDirectKind));
        let p = Policy::new([PathKind::Quic, PathKind::Quic], COMMAND_FREEZE);
        assert_eq!(
            p.validate(),
            Err(PolicyError::DuplicateKind(PathKind::Quic))
        );
        assert_eq!(
            Policy::new([], COMMAND_FREEZE).validate(),
            Err(PolicyError::EmptyOrder)
        );
    }

    #[test]
    fn freeze_grows_with_recent_switches_and_relaxes() {
        let f = FlapDamping::default();
        let base = Duration::from_secs(10);
        let t0 = Instant::now();
        assert_eq!(f.effective_freeze(base, [t0], t0), base);
        // Two switches at the same instant: penalty 2 -> freeze doubles.
        assert_eq!(f.effective_freeze(base, [t0, t0], t0), 2 * base);
        // A switch one half-life ago weighs 0.5.
        let t1 = t0 + DEFAULT_FLAP_DECAY;
        let half = f.effective_freeze(base, [t0, t1], t1);
        assert_eq!(half, Duration::from_millis(14_142));
        // Capped.
        let many = vec![t0; 20];
        assert_eq!(f.effective_freeze(base, many, t0), DEFAULT_FLAP_CAP);
        // Outside the window: forgotten.
        let late = t0 + DEFAULT_FLAP_WINDOW + Duration::from_secs(1);
        assert_eq!(f.effective_freeze(base, [t0, t0, late], late), base);
        // Disabled damping never grows.
        let d = FlapDamping::disabled();
        assert_eq!(d.effective_freeze(base, [t0, t0, t0], t0), base);
    }
}

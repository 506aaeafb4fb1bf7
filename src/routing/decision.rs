//! What the routing core says: rules, causes, assessments, decisions, the
//! current route and explanations.
//!
//! Owns these output types and their human-readable forms. It must not decide
//! anything: the types here are produced by [`crate::routing::core`] and only
//! formatted here.

use std::fmt;
use std::time::{Duration, Instant};

use super::health::PathHealth;
use crate::vocab::{ChannelKind, NodeId, PathId, PathKind, StreamId};

/// How a stream is doing, as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Assessment {
    /// On the most preferred path kind that exists towards the target, and
    /// that path has carried an acknowledged frame.
    Nominal,
    /// Just switched (make-before-break): the new path has not yet carried an
    /// acknowledged frame.
    Transitioning,
    /// On a usable path that is not the most preferred existing kind.
    Fallback,
    /// No usable path, or longer than `max_on_fallback` on a fallback.
    Degraded,
}

impl Assessment {
    /// The name used in logs and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            Assessment::Nominal => "nominal",
            Assessment::Transitioning => "transitioning",
            Assessment::Fallback => "fallback",
            Assessment::Degraded => "degraded",
        }
    }
}

impl fmt::Display for Assessment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule a decision applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// First path selected for a stream that never had one.
    Initial,
    /// The current path failed (or was removed, or stopped being a
    /// candidate) and another usable path was selected at once, frozen or
    /// not.
    Failover,
    /// Voluntary: the current path was stale for `handover.on_stale`; a
    /// path healthy for `hold_down` was selected after the freeze.
    HandoverStale,
    /// Voluntary: the current path was pressured for
    /// `handover.on_pressured`; a path healthy for `hold_down` was selected
    /// after the freeze.
    HandoverPressured,
    /// Voluntary: a more preferred path has been healthy for `hold_down` and
    /// the freeze has passed.
    ReturnToPreferred,
    /// No usable path: the stream is unroutable (`next` is `None`) and
    /// degraded.
    NoPath,
    /// A path became usable for a stream that had none.
    Recovered,
    /// The stream has been on a fallback longer than `max_on_fallback`.
    Degraded,
    /// The path selected last carried an acknowledged frame: the
    /// make-before-break transition is complete.
    TransitionComplete,
    /// The assessment changed without a path change because the set of
    /// paths changed (e.g. a more preferred kind appeared or went away).
    Reassessed,
    /// A failover on missed probes was premature: the path it left answered
    /// again within the policy's `undo_within`. The stream goes back at once
    /// and the failover's freeze and flap penalty are withdrawn.
    FailoverUndone,
}

impl Rule {
    /// The name used in logs and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Initial => "initial",
            Rule::Failover => "failover",
            Rule::HandoverStale => "handover-stale",
            Rule::HandoverPressured => "handover-pressured",
            Rule::ReturnToPreferred => "return-to-preferred",
            Rule::NoPath => "no-path",
            Rule::Recovered => "recovered",
            Rule::Degraded => "degraded",
            Rule::TransitionComplete => "transition-complete",
            Rule::Reassessed => "reassessed",
            Rule::FailoverUndone => "failover-undone",
        }
    }

    /// Whether the rule is a voluntary switch (held by freeze and
    /// hold-down).
    pub fn is_voluntary(self) -> bool {
        matches!(
            self,
            Rule::HandoverStale | Rule::HandoverPressured | Rule::ReturnToPreferred
        )
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The observation or condition that triggered a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The stream was just registered.
    Registered,
    /// A path became usable.
    PathUsable(PathId),
    /// The transport reported the path down.
    Down(String),
    /// The transport reported an incident on the path.
    Incident(String),
    /// This many consecutive probes went unanswered.
    ProbesMissed(u32),
    /// The transport reported the path gone.
    Removed(String),
    /// The node no longer advertises the capability the stream targets.
    CapabilityWithdrawn {
        /// The node.
        node: NodeId,
        /// The capability.
        capability: String,
    },
    /// The current path has been stale this long.
    Stale {
        /// The stale path.
        path: PathId,
        /// How long it has been stale.
        for_: Duration,
    },
    /// The current path has been pressured this long.
    Pressured {
        /// The pressured path.
        path: PathId,
        /// How long it has been pressured.
        for_: Duration,
    },
    /// A more preferred path has been healthy this long.
    PreferredHealthy {
        /// The preferred path.
        path: PathId,
        /// How long it has been healthy.
        for_: Duration,
    },
    /// No candidate path is usable.
    NoUsablePath {
        /// The stream's target, as text.
        target: String,
        /// Whether the policy excluded relayed paths.
        direct_only: bool,
    },
    /// A frame on the path was acknowledged.
    DataAcked(PathId),
    /// On fallback this long, over the limit.
    FallbackTooLong {
        /// Time on fallback.
        for_: Duration,
        /// The policy's `max_on_fallback`.
        limit: Duration,
    },
    /// The most preferred existing path kind changed.
    PreferenceChanged {
        /// The most preferred existing kind now, if any.
        preferred: Option<PathKind>,
    },
    /// The path a failover left answered again soon after.
    HealedAfter {
        /// The path that healed.
        path: PathId,
        /// Time from the failover to the evidence.
        after: Duration,
    },
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Registered => f.write_str("stream registered"),
            Cause::PathUsable(p) => write!(f, "{p} usable"),
            Cause::Down(c) => write!(f, "down: {c}"),
            Cause::Incident(w) => write!(f, "incident: {w}"),
            Cause::ProbesMissed(n) => write!(f, "{n} probes missed"),
            Cause::Removed(c) => write!(f, "path removed: {c}"),
            Cause::CapabilityWithdrawn { node, capability } => {
                write!(f, "{node} no longer offers {capability}")
            }
            Cause::Stale { path, for_ } => write!(f, "{path} stale for {}", secs(*for_)),
            Cause::Pressured { path, for_ } => {
                write!(f, "{path} pressured for {}", secs(*for_))
            }
            Cause::PreferredHealthy { path, for_ } => {
                write!(f, "{path} healthy for {}", secs(*for_))
            }
            Cause::NoUsablePath {
                target,
                direct_only,
            } => {
                write!(f, "no usable path to {target}")?;
                if *direct_only {
                    f.write_str(" (direct only)")?;
                }
                Ok(())
            }
            Cause::DataAcked(p) => write!(f, "data acked on {p}"),
            Cause::FallbackTooLong { for_, limit } => write!(
                f,
                "on fallback for {} (limit {})",
                secs(*for_),
                secs(*limit)
            ),
            Cause::PreferenceChanged { preferred } => match preferred {
                Some(k) => write!(f, "preferred kind now {k}"),
                None => f.write_str("no preferred kind"),
            },
            Cause::HealedAfter { path, after } => write!(
                f,
                "{path} answered {}ms after the failover",
                after.as_millis()
            ),
        }
    }
}

/// One routing decision: a structured event saying what changed for a
/// stream and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The stream.
    pub stream: StreamId,
    /// The stream's channel kind (selects its policy).
    pub channel: ChannelKind,
    /// When the decision was made.
    pub at: Instant,
    /// The active path before.
    pub previous: Option<PathId>,
    /// The active path after (`None`: unroutable).
    pub next: Option<PathId>,
    /// The rule applied.
    pub rule: Rule,
    /// What triggered it.
    pub cause: Cause,
    /// Paths selected for this stream so far (1 after the initial
    /// selection).
    pub attempt: u64,
    /// Changes of active path so far, not counting the initial selection.
    pub switches: u64,
    /// Until when voluntary switches are held.
    pub freeze_until: Option<Instant>,
    /// The stream's assessment after the decision.
    pub assessment: Assessment,
}

impl Decision {
    /// Whether the active path changed, not counting the initial selection
    /// (the same changes that [`Decision::switches`] counts).
    pub fn is_switch(&self) -> bool {
        self.previous != self.next && self.rule != Rule::Initial
    }
}

fn path_or_none(p: &Option<PathId>) -> String {
    p.as_ref()
        .map_or_else(|| "none".to_owned(), PathId::to_string)
}

impl fmt::Display for Decision {
    /// One line, e.g. `command:hub/m1 quic@m1 -> relay@m1 (failover: 3
    /// probes missed) freeze until +10.0s, transitioning`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.stream)?;
        if self.previous != self.next {
            write!(
                f,
                "{} -> {}",
                path_or_none(&self.previous),
                path_or_none(&self.next)
            )?;
        } else {
            f.write_str(&path_or_none(&self.next))?;
        }
        write!(f, " ({}: {})", self.rule, self.cause)?;
        if let Some(until) = self.freeze_until.filter(|u| *u > self.at) {
            write!(f, " freeze until +{}", secs(until - self.at))?;
        }
        write!(f, ", {}", self.assessment)
    }
}

/// A stream's current route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The one active path (`None`: unroutable).
    pub path: Option<PathId>,
    /// The stream's assessment.
    pub assessment: Assessment,
    /// When the active path was selected (or lost).
    pub since: Instant,
    /// Until when voluntary switches are held.
    pub freeze_until: Option<Instant>,
    /// Paths selected so far.
    pub attempt: u64,
    /// Changes of active path so far, not counting the initial selection.
    pub switches: u64,
}

/// One candidate path of a stream, as seen by [`Explanation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The path.
    pub path: PathId,
    /// Its health.
    pub health: PathHealth,
    /// Since when it has been healthy, if it is.
    pub healthy_since: Option<Instant>,
    /// Consecutive missed probes.
    pub misses: u32,
    /// Last RTT sample.
    pub rtt: Option<Duration>,
}

/// Why a stream is where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The stream.
    pub stream: StreamId,
    /// When the explanation was made.
    pub at: Instant,
    /// The active path.
    pub path: Option<PathId>,
    /// The active path's health.
    pub path_health: Option<PathHealth>,
    /// The stream's assessment.
    pub assessment: Assessment,
    /// Until when voluntary switches are held.
    pub freeze_until: Option<Instant>,
    /// How long the stream has been off its preferred path (including time
    /// without a path), if it is.
    pub on_fallback_for: Option<Duration>,
    /// Candidate paths in preference order.
    pub candidates: Vec<Candidate>,
    /// The stream's last decisions, oldest first.
    pub decisions: Vec<Decision>,
    /// Peers whose frames on this stream were refused because the stream
    /// is bound to another peer (a second node claiming to own a sync
    /// document, say), latest first. The routing core leaves it empty; the
    /// node fills it from the stream's session.
    pub refused: Vec<RefusedPeer>,
}

/// A peer whose frames on a stream were refused (see
/// [`Explanation::refused`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedPeer {
    /// The peer.
    pub peer: NodeId,
    /// How many frames were refused.
    pub frames: u64,
    /// The reject code they were answered with.
    pub code: u16,
    /// The peer the stream is bound to.
    pub bound_to: NodeId,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.stream, path_or_none(&self.path))?;
        if let Some(h) = self.path_health {
            write!(f, " ({h})")?;
        }
        write!(f, ", {}", self.assessment)?;
        if let Some(u) = self.freeze_until.filter(|u| *u > self.at) {
            write!(f, ", frozen for {}", secs(u - self.at))?;
        }
        if let Some(d) = self.on_fallback_for {
            write!(f, ", on fallback for {}", secs(d))?;
        }
        writeln!(f)?;
        for c in &self.candidates {
            writeln!(f, "  candidate {} {}", c.path, c.health)?;
        }
        for d in &self.decisions {
            writeln!(
                f,
                "  -{}: {d}",
                secs(self.at.saturating_duration_since(d.at))
            )?;
        }
        for r in &self.refused {
            writeln!(
                f,
                "  refused {} frame(s) from {} (0x{:04x}): the stream is bound to {}",
                r.frames, r.peer, r.code, r.bound_to
            )?;
        }
        Ok(())
    }
}

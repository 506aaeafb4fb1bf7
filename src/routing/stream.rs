//! One stream's route state machine: candidate paths, selection, freeze,
//! hold-down, handover, make-before-break and assessment.
//!
//! Owns the per-stream route state and the evaluation of one stream against
//! a read-only [`View`] of paths and capabilities. It must not touch the
//! core's indexes, timer sets or decision queue: an evaluation returns at
//! most one decision and leaves the stream's next wake-up instant in
//! [`RouteState::wake`] for the core to file.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use super::core::{Need, Target};
use super::decision::{Assessment, Candidate, Cause, Decision, Route, Rule};
use super::health::{HealthConfig, PathHealth, PathState};
use super::policy::{Policy, RoutingConfig};
use crate::vocab::{NodeId, PathId, PathKind, StreamId};

/// Switch times kept for flap damping at most (older ones weigh nearly
/// nothing anyway).
const MAX_SWITCH_MEMORY: usize = 64;

/// What a stream evaluation may read.
pub(crate) struct View<'a> {
    pub paths: &'a BTreeMap<PathId, PathState>,
    pub removed: &'a BTreeMap<PathId, String>,
    pub nodes_with: &'a BTreeMap<String, BTreeSet<NodeId>>,
    pub config: &'a RoutingConfig,
}

/// A registered stream.
pub(crate) struct StreamState {
    /// What the stream asked for; never changes after registration.
    pub need: Need,
    /// Everything evaluation changes.
    pub rt: RouteState,
}

/// The mutable part of a stream.
pub(crate) struct RouteState {
    /// The public view of the route.
    pub route: Route,
    /// Switched, and no ack seen on the new path since.
    pub transitioning: bool,
    /// Whether a path was ever selected (Initial vs Recovered).
    ever_routed: bool,
    /// Whether the current unroutable state was already announced.
    unroutable_announced: bool,
    /// Since when the stream has been off its preferred path kind.
    pub fallback_since: Option<Instant>,
    /// Recent switch times, for flap damping.
    switch_times: VecDeque<Instant>,
    /// The last decisions, for explanations.
    pub history: VecDeque<Decision>,
    /// When the stream must be evaluated again without any input.
    pub wake: Option<Instant>,
    /// A voluntary switch is due to this path except that its evidence is
    /// not fresh: the next evidence on it evaluates the stream again.
    pub awaiting: Option<PathId>,
    /// The last failover on missed probes, while it may still be undone.
    undo: Option<Undo>,
    /// When a failover was last undone (one undo per freeze).
    last_undo: Option<Instant>,
}

/// What undoing a premature failover restores.
#[derive(Clone, Debug)]
struct Undo {
    /// The path the failover left.
    from: PathId,
    /// The path it went to.
    to: PathId,
    /// When.
    at: Instant,
    /// The freeze deadline before the failover.
    freeze_before: Option<Instant>,
}

impl StreamState {
    pub(crate) fn new(need: Need, now: Instant) -> Self {
        Self {
            need,
            rt: RouteState {
                route: Route {
                    path: None,
                    assessment: Assessment::Degraded,
                    since: now,
                    freeze_until: None,
                    attempt: 0,
                    switches: 0,
                },
                transitioning: false,
                ever_routed: false,
                unroutable_announced: false,
                fallback_since: None,
                switch_times: VecDeque::new(),
                history: VecDeque::new(),
                wake: None,
                awaiting: None,
                undo: None,
                last_undo: None,
            },
        }
    }
}

/// The policy in force for a stream.
pub(crate) fn policy_of<'a>(need: &'a Need, config: &'a RoutingConfig) -> &'a Policy {
    need.policy
        .as_ref()
        .unwrap_or_else(|| config.policy(need.channel))
}

/// One candidate path with its state at the evaluation instant.
pub(crate) struct Cand<'a> {
    pub path: PathId,
    pub state: &'a PathState,
    pub health: PathHealth,
}

impl Cand<'_> {
    pub(crate) fn public(&self, now: Instant, hc: &HealthConfig) -> Candidate {
        Candidate {
            path: self.path.clone(),
            health: self.health,
            healthy_since: self.state.healthy_since(now, hc),
            misses: self.state.misses(),
            rtt: self.state.rtt,
        }
    }
}

/// The stream's candidate paths in preference order: for each target node
/// (a capability's nodes by `NodeId`, the node of the active path first),
/// the existing paths whose kind the policy allows, in policy order.
pub(crate) fn candidates<'v>(
    need: &Need,
    policy: &Policy,
    bound: Option<&NodeId>,
    view: &View<'v>,
    now: Instant,
) -> Vec<Cand<'v>> {
    let nodes: Vec<&NodeId> = match &need.target {
        Target::Node(n) => vec![n],
        Target::Capability(c) => {
            let mut v: Vec<&NodeId> = view
                .nodes_with
                .get(c)
                .map(|s| s.iter().collect())
                .unwrap_or_default();
            if let Some(i) = bound.and_then(|b| v.iter().position(|n| *n == b)) {
                let b = v.remove(i);
                v.insert(0, b);
            }
            v
        }
    };
    let hc = &view.config.health;
    let mut out = Vec::new();
    for node in nodes {
        for kind in policy.allowed() {
            let path = PathId {
                peer: node.clone(),
                kind,
            };
            if let Some((path, state)) = view.paths.get_key_value(&path) {
                out.push(Cand {
                    path: path.clone(),
                    state,
                    health: state.health(now, hc),
                });
            }
        }
    }
    out
}

/// The best usable candidate: healthiest first (healthy, then pressured,
/// then stale), then in preference order.
fn best(cands: &[Cand<'_>]) -> Option<usize> {
    cands
        .iter()
        .enumerate()
        .filter(|(_, c)| c.health.is_usable())
        .min_by_key(|(j, c)| (c.health, *j))
        .map(|(j, _)| j)
}

/// The most preferred existing kind towards `node`.
fn preferred_kind(cands: &[Cand<'_>], node: &NodeId) -> Option<PathKind> {
    cands
        .iter()
        .find(|c| &c.path.peer == node)
        .map(|c| c.path.kind)
}

/// When the current path's weakness triggers a handover, if it does.
fn handover_at(cur: &Cand<'_>, policy: &Policy, hc: &HealthConfig) -> Option<(Rule, Instant)> {
    match cur.health {
        PathHealth::Stale => policy
            .handover
            .on_stale
            .map(|x| (Rule::HandoverStale, cur.state.stale_since(hc) + x)),
        PathHealth::Pressured => policy.handover.on_pressured.and_then(|x| {
            cur.state
                .pressured_since(hc)
                .map(|p| (Rule::HandoverPressured, p + x))
        }),
        _ => None,
    }
}

/// A voluntary switch due now, if any: held by the freeze, and only towards a
/// path healthy for `hold_down`.
fn voluntary(
    rt: &mut RouteState,
    policy: &Policy,
    cands: &[Cand<'_>],
    i: usize,
    now: Instant,
    hc: &HealthConfig,
) -> Option<(Option<usize>, Rule, Cause)> {
    if rt.route.freeze_until.is_some_and(|f| now < f) {
        return None;
    }
    let cur = &cands[i];
    let handover = handover_at(cur, policy, hc).filter(|(_, at)| now >= *at);
    let target = cands.iter().enumerate().find_map(|(j, c)| {
        if j == i || (j > i && handover.is_none()) {
            return None;
        }
        let since = c.state.healthy_since(now, hc)?;
        (since + policy.hold_down <= now).then_some((j, since))
    });
    let (j, since) = target?;
    // Held down long enough, but is it answering right now? A path that is
    // cut but not yet declared failed has overdue probes: wait for its next
    // evidence instead of returning to it.
    if !cands[j].state.fresh(now, hc) {
        rt.awaiting = Some(cands[j].path.clone());
        return None;
    }
    let (rule, cause) = match handover {
        Some((Rule::HandoverStale, _)) => {
            let from = cur.state.stale_since(hc);
            (
                Rule::HandoverStale,
                Cause::Stale {
                    path: cur.path.clone(),
                    for_: now.saturating_duration_since(from),
                },
            )
        }
        Some((rule, _)) => {
            let from = cur.state.pressured_since(hc).unwrap_or(now);
            (
                rule,
                Cause::Pressured {
                    path: cur.path.clone(),
                    for_: now.saturating_duration_since(from),
                },
            )
        }
        None => (
            Rule::ReturnToPreferred,
            Cause::PreferredHealthy {
                path: cands[j].path.clone(),
                for_: now.saturating_duration_since(since),
            },
        ),
    };
    Some((Some(j), rule, cause))
}

/// Undoing the last failover, if the path it left has answered since
/// (within the policy's `undo_within`, checked by the caller).
fn undo_due(rt: &RouteState, cands: &[Cand<'_>]) -> Option<(Option<usize>, Rule, Cause)> {
    let u = rt.undo.as_ref()?;
    let j = cands.iter().position(|c| c.path == u.from)?;
    let c = &cands[j];
    let evidence = c.state.last_evidence();
    (c.health == PathHealth::Healthy && evidence >= u.at).then(|| {
        (
            Some(j),
            Rule::FailoverUndone,
            Cause::HealedAfter {
                path: u.from.clone(),
                after: evidence.saturating_duration_since(u.at),
            },
        )
    })
}

/// Why the current path must be left at once.
fn leave_cause(view: &View<'_>, need: &Need, path: &PathId, cur: Option<&Cand<'_>>) -> Cause {
    match cur {
        Some(c) => c
            .state
            .failure()
            .cloned()
            .unwrap_or_else(|| Cause::Down("failed".into())),
        None if !view.paths.contains_key(path) => Cause::Removed(
            view.removed
                .get(path)
                .cloned()
                .unwrap_or_else(|| "gone".into()),
        ),
        None => match &need.target {
            Target::Capability(capability) => Cause::CapabilityWithdrawn {
                node: path.peer.clone(),
                capability: capability.clone(),
            },
            Target::Node(_) => Cause::Removed("no longer a candidate".into()),
        },
    }
}

/// Evaluates one stream at `now`: leaves a failed path at once, applies a
/// due voluntary switch, updates the assessment, and schedules the next
/// wake-up. Returns the decision made, if any.
pub(crate) fn evaluate(
    sid: &StreamId,
    need: &Need,
    rt: &mut RouteState,
    view: &View<'_>,
    now: Instant,
    registering: bool,
) -> Option<Decision> {
    let policy = policy_of(need, view.config);
    let hc = &view.config.health;
    let bound = rt.route.path.as_ref().map(|p| p.peer.clone());
    let mut cands = candidates(need, policy, bound.as_ref(), view, now);
    let cur_pos = rt
        .route
        .path
        .as_ref()
        .and_then(|p| cands.iter().position(|c| &c.path == p));
    let before = rt.route.assessment;
    rt.awaiting = None;
    if rt
        .undo
        .as_ref()
        .is_some_and(|u| now > u.at + policy.undo_within || rt.route.path.as_ref() != Some(&u.to))
    {
        rt.undo = None;
    }

    let current = rt.route.path.clone();
    let action = match (&current, cur_pos) {
        (Some(_), Some(i)) if cands[i].health.is_usable() => {
            undo_due(rt, &cands).or_else(|| voluntary(rt, policy, &cands, i, now, hc))
        }
        (Some(p), _) => {
            let cause = leave_cause(view, need, p, cur_pos.map(|i| &cands[i]));
            Some(match best(&cands) {
                Some(j) => (Some(j), Rule::Failover, cause),
                None => (None, Rule::NoPath, cause),
            })
        }
        (None, _) => match best(&cands) {
            Some(j) => {
                let rule = if rt.ever_routed {
                    Rule::Recovered
                } else {
                    Rule::Initial
                };
                let cause = if registering {
                    Cause::Registered
                } else {
                    Cause::PathUsable(cands[j].path.clone())
                };
                Some((Some(j), rule, cause))
            }
            None if !rt.unroutable_announced => Some((
                None,
                Rule::NoPath,
                Cause::NoUsablePath {
                    target: need.target.to_string(),
                    direct_only: policy.direct_only,
                },
            )),
            None => None,
        },
    };

    let previous = rt.route.path.clone();
    let mut made = None;
    if let Some((next, rule, cause)) = action {
        let next = next.map(|j| cands[j].path.clone());
        let freeze_before = rt.route.freeze_until;
        let undone = if rule == Rule::FailoverUndone {
            rt.undo.take()
        } else {
            None
        };
        apply_switch(rt, policy, next, rule, now);
        rt.undo = None;
        if let Some(u) = undone {
            // Premature: withdraw the failover's freeze and flap weight.
            if let Some(pos) = rt.switch_times.iter().rposition(|t| *t == u.at) {
                rt.switch_times.remove(pos);
            }
            rt.route.freeze_until = u.freeze_before;
            rt.last_undo = Some(now);
        } else if rule == Rule::Failover
            && matches!(cause, Cause::ProbesMissed(_))
            && !policy.undo_within.is_zero()
            && rt.last_undo.is_none_or(|t| now >= t + policy.freeze)
        {
            if let (Some(from), Some(to)) = (previous.clone(), rt.route.path.clone()) {
                rt.undo = Some(Undo {
                    from,
                    to,
                    at: now,
                    freeze_before,
                });
            }
        }
        made = Some((rule, cause));
        let moved_node =
            previous.as_ref().map(|p| &p.peer) != rt.route.path.as_ref().map(|p| &p.peer);
        if moved_node && matches!(need.target, Target::Capability(_)) {
            let bound = rt.route.path.as_ref().map(|p| p.peer.clone());
            cands = candidates(need, policy, bound.as_ref(), view, now);
        }
    }

    // Off the preferred kind (or without a path) starts the fallback clock.
    match &rt.route.path {
        Some(p) if preferred_kind(&cands, &p.peer) == Some(p.kind) => rt.fallback_since = None,
        _ => {
            rt.fallback_since.get_or_insert(now);
        }
    }
    rt.route.assessment = assess(rt, policy, now);

    if made.is_none() && rt.route.assessment != before {
        let current = rt.route.path.clone();
        made = Some(if rt.route.assessment == Assessment::Degraded {
            let since = rt.fallback_since.unwrap_or(now);
            (
                Rule::Degraded,
                Cause::FallbackTooLong {
                    for_: now.saturating_duration_since(since),
                    limit: policy.max_on_fallback.unwrap_or_default(),
                },
            )
        } else if before == Assessment::Transitioning && !rt.transitioning {
            let path = current.expect("a transitioning stream has a path");
            (Rule::TransitionComplete, Cause::DataAcked(path))
        } else {
            let preferred = current.and_then(|p| preferred_kind(&cands, &p.peer));
            (Rule::Reassessed, Cause::PreferenceChanged { preferred })
        });
    }

    rt.wake = next_wake(rt, policy, &cands, now, hc);

    made.map(|(rule, cause)| Decision {
        stream: sid.clone(),
        channel: need.channel,
        at: now,
        previous,
        next: rt.route.path.clone(),
        rule,
        cause,
        attempt: rt.route.attempt,
        switches: rt.route.switches,
        freeze_until: rt.route.freeze_until,
        assessment: rt.route.assessment,
    })
}

/// Records a change of active path (or the announcement that there is none).
fn apply_switch(
    rt: &mut RouteState,
    policy: &Policy,
    next: Option<PathId>,
    rule: Rule,
    now: Instant,
) {
    if next == rt.route.path {
        // Only the "unroutable" announcement of a stream without a path.
        rt.unroutable_announced = true;
        return;
    }
    if rule != Rule::Initial {
        rt.route.switches += 1;
    }
    if rule != Rule::Initial && rule != Rule::FailoverUndone {
        rt.switch_times.push_back(now);
        while rt.switch_times.len() > MAX_SWITCH_MEMORY
            || rt
                .switch_times
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > policy.flap.window)
        {
            rt.switch_times.pop_front();
        }
    }
    if next.is_some() {
        rt.route.attempt += 1;
        rt.ever_routed = true;
        rt.unroutable_announced = false;
        rt.transitioning = true;
        if rule != Rule::Initial && rule != Rule::FailoverUndone {
            let freeze =
                policy
                    .flap
                    .effective_freeze(policy.freeze, rt.switch_times.iter().copied(), now);
            rt.route.freeze_until = Some(now + freeze);
        }
    } else {
        rt.transitioning = false;
        rt.unroutable_announced = true;
    }
    rt.route.path = next;
    rt.route.since = now;
}

/// The stream's assessment at `now`.
fn assess(rt: &RouteState, policy: &Policy, now: Instant) -> Assessment {
    if rt.route.path.is_none() || over_fallback_limit(rt, policy, now) {
        Assessment::Degraded
    } else if rt.transitioning {
        Assessment::Transitioning
    } else if rt.fallback_since.is_some() {
        Assessment::Fallback
    } else {
        Assessment::Nominal
    }
}

fn over_fallback_limit(rt: &RouteState, policy: &Policy, now: Instant) -> bool {
    match (rt.fallback_since, policy.max_on_fallback) {
        (Some(since), Some(limit)) => now >= since + limit,
        _ => false,
    }
}

/// The next instant after `now` at which the stream's situation changes
/// without any input: the fallback limit, or a voluntary switch becoming
/// allowed (freeze over, hold-down done, handover trigger reached).
fn next_wake(
    rt: &RouteState,
    policy: &Policy,
    cands: &[Cand<'_>],
    now: Instant,
    hc: &HealthConfig,
) -> Option<Instant> {
    let cur = rt.route.path.as_ref()?;
    let mut times = Vec::new();
    if rt.route.assessment != Assessment::Degraded {
        if let (Some(since), Some(limit)) = (rt.fallback_since, policy.max_on_fallback) {
            times.push(since + limit);
        }
    }
    if let Some(i) = cands.iter().position(|c| &c.path == cur) {
        let freeze = rt.route.freeze_until.unwrap_or(now);
        let trigger = handover_at(&cands[i], policy, hc).map(|(_, at)| at);
        for (j, c) in cands.iter().enumerate() {
            let Some(since) = c.state.healthy_since(now, hc).filter(|_| j != i) else {
                continue;
            };
            let ready = (since + policy.hold_down).max(freeze);
            if j < i {
                times.push(ready);
            } else if let Some(at) = trigger {
                times.push(ready.max(at));
            }
        }
    }
    times.into_iter().filter(|t| *t > now).min()
}

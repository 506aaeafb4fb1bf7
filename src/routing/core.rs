//! The routing core: the sans-IO state machine that the RoutingAuthority
//! actor drives.
//!
//! Owns the path table, capability advertisements, registered streams, the
//! indexes that keep every input proportional to the streams towards the
//! affected peer, the timer sets behind [`RoutingCore::poll_timeout`], and
//! the decision queue. It must not do IO, spawn, sleep or read the clock;
//! one stream's logic lives in the private `stream` module.
//!
//! Drain rule: after any input, call [`RoutingCore::poll_decision`] until it
//! returns `None`, then arm a timer for [`RoutingCore::poll_timeout`] and call
//! [`RoutingCore::handle_timeout`] when it fires. Decisions queue up until
//! drained. Time never goes backwards: a `now` earlier than one already seen
//! is treated as the latest one seen.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Instant;

use thiserror::Error;

use super::decision::{Decision, Explanation, Route};
use super::health::{Observation, PathHealth, PathState};
use super::policy::{Policy, PolicyError, RoutingConfig};
use super::stream::{self, StreamState, View};
use crate::vocab::{ChannelKind, NodeId, PathId, StreamId};

/// Whom a stream wants to reach.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Target {
    /// One node.
    Node(NodeId),
    /// Any node advertising this capability (see
    /// [`RoutingCore::set_capabilities`]). The node of the active path is
    /// kept while it advertises the capability and has a usable path;
    /// otherwise nodes are tried in `NodeId` order.
    Capability(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(n) => write!(f, "{n}"),
            Target::Capability(c) => write!(f, "capability {c}"),
        }
    }
}

/// What a stream needs: its channel kind (which selects its policy), its
/// target, and optionally a policy of its own.
#[derive(Clone, Debug, PartialEq)]
pub struct Need {
    /// The channel kind; selects the policy from [`RoutingConfig`].
    pub channel: ChannelKind,
    /// Whom to reach.
    pub target: Target,
    /// A per-stream policy overriding the channel kind's.
    pub policy: Option<Policy>,
}

impl Need {
    /// A need for a channel to one node, with the channel kind's policy.
    pub fn node(channel: ChannelKind, node: impl Into<NodeId>) -> Self {
        Self {
            channel,
            target: Target::Node(node.into()),
            policy: None,
        }
    }

    /// A need for a channel to any node offering `capability`.
    pub fn capability(channel: ChannelKind, capability: impl Into<String>) -> Self {
        Self {
            channel,
            target: Target::Capability(capability.into()),
            policy: None,
        }
    }

    /// Overrides the policy for this stream only.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }
}

/// Why [`RoutingCore::register`] refused a stream.
#[derive(Clone, Debug, PartialEq, Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// A stream with this id is already registered.
    #[error("stream {0} is already registered")]
    AlreadyRegistered(StreamId),
    /// The stream's policy (its own or its channel kind's) is invalid.
    #[error("stream {stream} has an invalid policy: {source}")]
    InvalidPolicy {
        /// The stream.
        stream: StreamId,
        /// What is wrong with the policy.
        #[source]
        source: PolicyError,
    },
}

/// The routing authority's pure core. See the [module docs](self).
pub struct RoutingCore {
    /// Thresholds and policies.
    config: RoutingConfig,
    /// Every path a transport reported and has not removed.
    paths: BTreeMap<PathId, PathState>,
    /// Why a path was last removed, so a failover can say so.
    removed: BTreeMap<PathId, String>,
    /// Capabilities each node advertises.
    caps_of: BTreeMap<NodeId, BTreeSet<String>>,
    /// Nodes advertising each capability (ordered: capability targets try
    /// nodes in `NodeId` order).
    nodes_with: BTreeMap<String, BTreeSet<NodeId>>,
    /// Registered streams.
    streams: BTreeMap<StreamId, StreamState>,
    /// Streams targeting each node: an input on one peer's path touches
    /// only these (plus the capability streams below).
    pub(super) by_node: BTreeMap<NodeId, BTreeSet<StreamId>>,
    /// Streams targeting each capability.
    by_capability: BTreeMap<String, BTreeSet<StreamId>>,
    /// Streams waiting for an ack on the path they just switched to.
    pub(super) transitioning: BTreeMap<PathId, BTreeSet<StreamId>>,
    /// Streams whose voluntary switch to a path waits for fresh evidence on
    /// it (see `HealthConfig::fresh_within`).
    awaiting: BTreeMap<PathId, BTreeSet<StreamId>>,
    /// When a path's health changes by itself (stale, pressured).
    path_timers: BTreeSet<(Instant, PathId)>,
    /// When a stream must be evaluated again without input.
    pub(super) stream_timers: BTreeSet<(Instant, StreamId)>,
    /// Streams to evaluate at the next `now` (capability changes carry no
    /// `now`).
    dirty: BTreeSet<StreamId>,
    /// Decisions not yet drained.
    decisions: VecDeque<Decision>,
    /// The latest `now` seen; time never goes backwards.
    last_now: Option<Instant>,
}

impl RoutingCore {
    /// A core with no paths and no streams. Policies are checked when a
    /// stream that uses them is registered.
    pub fn new(config: RoutingConfig) -> Self {
        Self {
            config,
            paths: BTreeMap::new(),
            removed: BTreeMap::new(),
            caps_of: BTreeMap::new(),
            nodes_with: BTreeMap::new(),
            streams: BTreeMap::new(),
            by_node: BTreeMap::new(),
            by_capability: BTreeMap::new(),
            transitioning: BTreeMap::new(),
            awaiting: BTreeMap::new(),
            path_timers: BTreeSet::new(),
            stream_timers: BTreeSet::new(),
            dirty: BTreeSet::new(),
            decisions: VecDeque::new(),
            last_now: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// Number of registered streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// A transport reports that a path to a peer exists. A new path counts
    /// as evidence at `now` (healthy, hold-down starts now); reporting an
    /// existing path again is the same as [`Observation::Up`].
    pub fn path_added(&mut self, now: Instant, path: PathId) {
        let now = self.clock(now);
        if self.paths.contains_key(&path) {
            self.observe(now, &path, Observation::Up);
            return;
        }
        self.removed.remove(&path);
        self.paths.insert(path.clone(), PathState::new(now));
        self.reschedule_path(&path, now);
        let affected = self.streams_towards(&path.peer);
        self.evaluate_set(affected, now);
    }

    /// A transport reports that a path is gone. Streams on it fail over at
    /// once, with `cause` as the reason.
    pub fn path_removed(&mut self, now: Instant, path: &PathId, cause: String) {
        let now = self.clock(now);
        let Some(state) = self.paths.remove(path) else {
            return;
        };
        if let Some(t) = state.timer {
            self.path_timers.remove(&(t, path.clone()));
        }
        self.removed.insert(path.clone(), cause);
        let affected = self.streams_towards(&path.peer);
        self.evaluate_set(affected, now);
    }

    /// A transport reports a fact about a path. Observations on paths that
    /// were never added (or were removed) are ignored.
    pub fn observe(&mut self, now: Instant, path: &PathId, obs: Observation) {
        let now = self.clock(now);
        let hc = &self.config.health;
        let Some(state) = self.paths.get(path) else {
            return;
        };
        let before = state.signature(now, hc);
        // Streams that switched to this path before this ack: the ack
        // completes their make-before-break transition.
        let mut affected = BTreeSet::new();
        if matches!(obs, Observation::DataAcked) {
            if let Some(waiting) = self.transitioning.remove(path) {
                for sid in &waiting {
                    if let Some(st) = self.streams.get_mut(sid) {
                        st.rt.transitioning = false;
                    }
                }
                affected = waiting;
            }
        }
        if matches!(
            obs,
            Observation::Up | Observation::ProbeAnswered { .. } | Observation::DataAcked
        ) {
            if let Some(waiting) = self.awaiting.get(path) {
                affected.extend(waiting.iter().cloned());
            }
        }
        let hc = &self.config.health;
        let state = self.paths.get_mut(path).expect("checked above");
        state.apply(now, obs, hc);
        let changed = state.signature(now, hc) != before;
        self.reschedule_path(path, now);
        if changed {
            affected.extend(self.streams_towards(&path.peer));
        }
        self.evaluate_set(affected, now);
    }

    /// A node advertises exactly these capabilities (replacing what it
    /// advertised before). Streams whose capability appeared or disappeared
    /// on the node are evaluated at the next input; [`Self::poll_timeout`]
    /// returns the latest `now` seen so the driver calls
    /// [`Self::handle_timeout`] at once.
    pub fn set_capabilities(&mut self, node: NodeId, caps: Vec<String>) {
        let new: BTreeSet<String> = caps.into_iter().collect();
        let old = self.caps_of.remove(&node).unwrap_or_default();
        for c in old.difference(&new) {
            if let Some(nodes) = self.nodes_with.get_mut(c) {
                nodes.remove(&node);
                if nodes.is_empty() {
                    self.nodes_with.remove(c);
                }
            }
            if let Some(s) = self.by_capability.get(c) {
                self.dirty.extend(s.iter().cloned());
            }
        }
        for c in new.difference(&old) {
            self.nodes_with
                .entry(c.clone())
                .or_default()
                .insert(node.clone());
            if let Some(s) = self.by_capability.get(c) {
                self.dirty.extend(s.iter().cloned());
            }
        }
        if !new.is_empty() {
            self.caps_of.insert(node, new);
        }
    }

    /// Registers a stream and selects its first path (rule `Initial`), or
    /// announces that it has none (rule `NoPath`).
    pub fn register(
        &mut self,
        now: Instant,
        stream: StreamId,
        need: Need,
    ) -> Result<(), RegisterError> {
        let now = self.clock(now);
        if self.streams.contains_key(&stream) {
            return Err(RegisterError::AlreadyRegistered(stream));
        }
        stream::policy_of(&need, &self.config)
            .validate()
            .map_err(|source| RegisterError::InvalidPolicy {
                stream: stream.clone(),
                source,
            })?;
        match &need.target {
            Target::Node(n) => self.by_node.entry(n.clone()).or_default(),
            Target::Capability(c) => self.by_capability.entry(c.clone()).or_default(),
        }
        .insert(stream.clone());
        self.streams
            .insert(stream.clone(), StreamState::new(need, now));
        self.evaluate_one(&stream, now, true);
        Ok(())
    }

    /// Forgets a stream. No decision is made; its history is dropped.
    pub fn unregister(&mut self, stream: &StreamId) {
        let Some(st) = self.streams.remove(stream) else {
            return;
        };
        match &st.need.target {
            Target::Node(n) => remove_from(&mut self.by_node, n, stream),
            Target::Capability(c) => remove_from(&mut self.by_capability, c, stream),
        }
        if st.rt.transitioning {
            if let Some(p) = &st.rt.route.path {
                remove_from(&mut self.transitioning, p, stream);
            }
        }
        if let Some(w) = st.rt.wake {
            self.stream_timers.remove(&(w, stream.clone()));
        }
        if let Some(p) = &st.rt.awaiting {
            remove_from(&mut self.awaiting, p, stream);
        }
        self.dirty.remove(stream);
    }

    /// Processes every deadline at or before `now`: paths turning stale or
    /// pressured, freezes and hold-downs ending, handover triggers, fallback
    /// limits.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        let mut affected = std::mem::take(&mut self.dirty);
        while let Some((t, path)) = self.path_timers.first().cloned() {
            if t > now {
                break;
            }
            self.path_timers.pop_first();
            if let Some(state) = self.paths.get_mut(&path) {
                state.timer = None;
            }
            self.reschedule_path(&path, now);
            affected.extend(self.streams_towards(&path.peer));
        }
        while let Some((t, sid)) = self.stream_timers.first().cloned() {
            if t > now {
                break;
            }
            self.stream_timers.pop_first();
            if let Some(st) = self.streams.get_mut(&sid) {
                st.rt.wake = None;
            }
            affected.insert(sid);
        }
        self.evaluate_set(affected, now);
    }

    /// The next decision, oldest first.
    pub fn poll_decision(&mut self) -> Option<Decision> {
        self.decisions.pop_front()
    }

    /// The instant at which [`Self::handle_timeout`] must be called next, if
    /// any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let dirty = if self.dirty.is_empty() {
            None
        } else {
            self.last_now
        };
        [
            self.path_timers.first().map(|(t, _)| *t),
            self.stream_timers.first().map(|(t, _)| *t),
            dirty,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A stream's current route (as of the last input).
    pub fn route(&self, stream: &StreamId) -> Option<&Route> {
        self.streams.get(stream).map(|s| &s.rt.route)
    }

    /// Why a stream is where it is: its path, assessment, freeze, time on
    /// fallback, candidates and last decisions.
    pub fn explain(&self, stream: &StreamId, now: Instant) -> Option<Explanation> {
        let st = self.streams.get(stream)?;
        let view = self.view();
        let hc = &self.config.health;
        let policy = stream::policy_of(&st.need, &self.config);
        let route = &st.rt.route;
        let bound = route.path.as_ref().map(|p| &p.peer);
        let cands = stream::candidates(&st.need, policy, bound, &view, now);
        Some(Explanation {
            stream: stream.clone(),
            at: now,
            path: route.path.clone(),
            path_health: route
                .path
                .as_ref()
                .and_then(|p| self.paths.get(p))
                .map(|s| s.health(now, hc)),
            assessment: route.assessment,
            freeze_until: route.freeze_until,
            on_fallback_for: st
                .rt
                .fallback_since
                .map(|s| now.saturating_duration_since(s)),
            candidates: cands.iter().map(|c| c.public(now, hc)).collect(),
            decisions: st.rt.history.iter().cloned().collect(),
            refused: Vec::new(),
        })
    }

    /// A path's health at `now`, if the path exists.
    pub fn path_health(&self, path: &PathId, now: Instant) -> Option<PathHealth> {
        self.paths
            .get(path)
            .map(|s| s.health(now, &self.config.health))
    }

    /// Every known path, in `PathId` order.
    pub fn paths(&self) -> impl Iterator<Item = &PathId> {
        self.paths.keys()
    }

    fn clock(&mut self, now: Instant) -> Instant {
        let now = self.last_now.map_or(now, |l| l.max(now));
        self.last_now = Some(now);
        if !self.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.dirty);
            self.evaluate_set(dirty, now);
        }
        now
    }

    fn view(&self) -> View<'_> {
        View {
            paths: &self.paths,
            removed: &self.removed,
            nodes_with: &self.nodes_with,
            config: &self.config,
        }
    }

    /// Streams that a change on a path towards `node` may concern.
    pub(super) fn streams_towards(&self, node: &NodeId) -> BTreeSet<StreamId> {
        let mut out = self.by_node.get(node).cloned().unwrap_or_default();
        for c in self.caps_of.get(node).into_iter().flatten() {
            if let Some(s) = self.by_capability.get(c) {
                out.extend(s.iter().cloned());
            }
        }
        out
    }

    fn reschedule_path(&mut self, path: &PathId, now: Instant) {
        let Some(state) = self.paths.get_mut(path) else {
            return;
        };
        let next = state.next_change(now, &self.config.health);
        if state.timer != next {
            if let Some(t) = state.timer {
                self.path_timers.remove(&(t, path.clone()));
            }
            if let Some(t) = next {
                self.path_timers.insert((t, path.clone()));
            }
            state.timer = next;
        }
    }

    /// Evaluates streams in `StreamId` order (deterministic output).
    fn evaluate_set(&mut self, set: BTreeSet<StreamId>, now: Instant) {
        for sid in &set {
            self.evaluate_one(sid, now, false);
        }
    }

    fn evaluate_one(&mut self, sid: &StreamId, now: Instant, registering: bool) {
        let view = View {
            paths: &self.paths,
            removed: &self.removed,
            nodes_with: &self.nodes_with,
            config: &self.config,
        };
        let Some(st) = self.streams.get_mut(sid) else {
            return;
        };
        let waiting_before = waiting_on(st);
        let wake_before = st.rt.wake;
        let awaiting_before = st.rt.awaiting.clone();
        let decision = stream::evaluate(sid, &st.need, &mut st.rt, &view, now, registering);
        let waiting_after = waiting_on(st);
        let wake_after = st.rt.wake;
        let awaiting_after = st.rt.awaiting.clone();
        if awaiting_before != awaiting_after {
            if let Some(p) = awaiting_before {
                remove_from(&mut self.awaiting, &p, sid);
            }
            if let Some(p) = awaiting_after {
                self.awaiting.entry(p).or_default().insert(sid.clone());
            }
        }
        if let Some(d) = &decision {
            if self.config.history > 0 {
                st.rt.history.push_back(d.clone());
                while st.rt.history.len() > self.config.history {
                    st.rt.history.pop_front();
                }
            }
        }
        if waiting_before != waiting_after {
            if let Some(p) = waiting_before {
                remove_from(&mut self.transitioning, &p, sid);
            }
            if let Some(p) = waiting_after {
                self.transitioning.entry(p).or_default().insert(sid.clone());
            }
        }
        if wake_before != wake_after {
            if let Some(w) = wake_before {
                self.stream_timers.remove(&(w, sid.clone()));
            }
            if let Some(w) = wake_after {
                self.stream_timers.insert((w, sid.clone()));
            }
        }
        if let Some(d) = decision {
            self.decisions.push_back(d);
        }
    }
}

/// The path a stream waits on for its transition-completing ack.
fn waiting_on(st: &StreamState) -> Option<PathId> {
    if st.rt.transitioning {
        st.rt.route.path.clone()
    } else {
        None
    }
}

fn remove_from<K: Ord>(index: &mut BTreeMap<K, BTreeSet<StreamId>>, key: &K, sid: &StreamId) {
    if let Some(set) = index.get_mut(key) {
        set.remove(sid);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

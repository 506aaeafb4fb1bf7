//! The `RoutingAuthority` actor: a thin shell around [`RoutingCore`].
//!
//! Owns feeding the pure core with observations and registrations (stamped
//! with tokio's clock, so a paused clock steps it), arming one timer for the
//! core's next deadline, and pushing every decision out: one structured
//! tracing event per decision, the stream's listener (the channel is *told*;
//! it never asks per message), and the node's decision log.
//!
//! It holds no routing logic of its own. Registrations live in the node's
//! shared registry, so a restarted authority re-registers every stream and
//! re-adds every open path in `pre_start` and carries on.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use super::{
    Decision, Explanation, Need, Observation, RegisterError, Route, RoutingConfig, RoutingCore,
};
use crate::vocab::{NodeId, PathId, StreamId};

/// What a stream's listener is told when its route changes.
#[derive(Clone, Debug)]
pub struct RouteUpdate {
    /// The stream.
    pub stream: StreamId,
    /// The decision that changed it (path, assessment, rule, cause).
    pub decision: Decision,
}

/// Called by the authority with every decision about one stream. It must
/// not block: typically it casts a message to the channel's actor.
pub type RouteListener = Arc<dyn Fn(RouteUpdate) + Send + Sync>;

/// Messages of the [`RoutingAuthority`] actor.
// `Register` carries a whole `Need` (with its optional policy); it is sent
// once per stream, so its size costs nothing on the hot path (`Observe`).
#[allow(clippy::large_enum_variant)]
pub enum RoutingMsg {
    /// A path to a peer opened.
    PathAdded(PathId),
    /// A path to a peer is gone.
    PathRemoved(PathId, String),
    /// A fact about a path, translated from a transport event.
    Observe(PathId, Observation),
    /// A node's advertised capabilities.
    SetCapabilities(NodeId, Vec<String>),
    /// Register a stream; replies with its initial route.
    Register {
        /// The stream.
        stream: StreamId,
        /// What it needs.
        need: Need,
        /// Who to tell about route changes.
        listener: RouteListener,
        /// The answer: the route right after registration.
        reply: RpcReplyPort<Result<Option<Route>, RegisterError>>,
    },
    /// Forget a stream.
    Unregister(StreamId),
    /// Explain a stream's route.
    Explain(StreamId, RpcReplyPort<Option<Explanation>>),
    /// Internal: the core's deadline has come.
    Tick,
}

/// Hooks the authority uses to reach the rest of its node, provided by the
/// node so that routing imports nothing above it.
pub trait AuthorityEnv: Send + Sync + 'static {
    /// Streams registered before a restart, to register again.
    fn registrations(&self) -> Vec<(StreamId, Need, RouteListener)>;
    /// Remembers a registration across restarts.
    fn remember(&self, stream: &StreamId, need: &Need, listener: &RouteListener);
    /// Forgets a registration.
    fn forget(&self, stream: &StreamId);
    /// Paths open right now (to re-add after a restart).
    fn open_paths(&self) -> Vec<PathId>;
    /// Called with every decision, after the stream's listener.
    fn on_decision(&self, decision: &Decision);
    /// Called with this actor's reference once it has started.
    fn started(&self, me: ActorRef<RoutingMsg>);
}

/// Arguments of the [`RoutingAuthority`].
pub struct AuthorityArgs {
    /// The policy configuration.
    pub config: RoutingConfig,
    /// The node's hooks.
    pub env: Arc<dyn AuthorityEnv>,
}

/// State of a running authority.
pub struct AuthorityState {
    core: RoutingCore,
    env: Arc<dyn AuthorityEnv>,
    listeners: std::collections::HashMap<StreamId, RouteListener>,
    /// The deadline a `Tick` is already scheduled for.
    armed: Option<Instant>,
}

/// The routing authority actor. See the module docs.
pub struct RoutingAuthority;

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl AuthorityState {
    fn drain(&mut self) {
        while let Some(decision) = self.core.poll_decision() {
            tracing::info!(
                target: "interlocking::routing",
                stream = %decision.stream,
                previous = ?decision.previous.as_ref().map(|p| p.to_string()),
                next = ?decision.next.as_ref().map(|p| p.to_string()),
                rule = ?decision.rule,
                cause = %decision.cause,
                attempt = decision.attempt,
                switches = decision.switches,
                assessment = ?decision.assessment,
                "route decision"
            );
            if let Some(listener) = self.listeners.get(&decision.stream) {
                listener(RouteUpdate {
                    stream: decision.stream.clone(),
                    decision: decision.clone(),
                });
            }
            self.env.on_decision(&decision);
        }
    }

    fn arm(&mut self, myself: &ActorRef<RoutingMsg>) {
        let Some(deadline) = self.core.poll_timeout() else {
            return;
        };
        let deadline = Instant::from_std(deadline);
        if self
            .armed
            .is_some_and(|a| a <= deadline && a > Instant::now())
        {
            return;
        }
        self.armed = Some(deadline);
        let after = deadline.saturating_duration_since(Instant::now());
        myself.send_after(after.max(Duration::from_micros(1)), || RoutingMsg::Tick);
    }
}

impl Actor for RoutingAuthority {
    type Msg = RoutingMsg;
    type State = AuthorityState;
    type Arguments = AuthorityArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = AuthorityState {
            core: RoutingCore::new(args.config),
            env: args.env,
            listeners: Default::default(),
            armed: None,
        };
        let t = now();
        for path in state.env.open_paths() {
            state.core.path_added(t, path.clone());
            state.core.observe(t, &path, Observation::Up);
        }
        for (stream, need, listener) in state.env.registrations() {
            state.listeners.insert(stream.clone(), listener);
            // Registrations come from a map keyed by stream: no duplicates.
            let _ = state.core.register(t, stream, need);
        }
        state.drain();
        state.arm(&myself);
        state.env.started(myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let t = now();
        match msg {
            RoutingMsg::PathAdded(path) => state.core.path_added(t, path),
            RoutingMsg::PathRemoved(path, cause) => state.core.path_removed(t, &path, cause),
            RoutingMsg::Observe(path, obs) => state.core.observe(t, &path, obs),
            RoutingMsg::SetCapabilities(node, caps) => state.core.set_capabilities(node, caps),
            RoutingMsg::Register {
                stream,
                need,
                listener,
                reply,
            } => {
                let result = state.core.register(t, stream.clone(), need.clone());
                if result.is_ok() {
                    state.env.remember(&stream, &need, &listener);
                    state.listeners.insert(stream.clone(), listener);
                }
                state.drain();
                let _ = reply.send(result.map(|()| state.core.route(&stream).cloned()));
            }
            RoutingMsg::Unregister(stream) => {
                state.core.unregister(&stream);
                state.listeners.remove(&stream);
                state.env.forget(&stream);
            }
            RoutingMsg::Explain(stream, reply) => {
                let _ = reply.send(state.core.explain(&stream, t));
            }
            RoutingMsg::Tick => {
                state.armed = None;
                state.core.handle_timeout(t);
            }
        }
        state.drain();
        state.arm(&myself);
        Ok(())
    }
}

//! A generic supervisor actor: starts named children, restarts them with
//! backoff when they fail, and escalates when they fail too often.
//!
//! Owns child lifecycle only — never the children's state. A child that must
//! survive its own restart keeps what matters outside itself (in the store,
//! or in a shared registry it re-reads in `pre_start`). ractor's default of
//! stopping the supervisor when a child dies is overridden here.
//!
//! Message flow:
//! - `StartChild` spawns a child linked to this supervisor;
//! - a child's failure arrives as a supervision event; the child's
//!   [`RestartTracker`] answers restart-after-backoff (a delayed
//!   `Restart` message to ourselves) or escalate (this supervisor fails, so
//!   its own parent sees the failure);
//! - on stop, children are stopped and awaited before the supervisor exits.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use tokio::time::Instant;

use super::restart::{RestartDecision, RestartPolicy, RestartTracker};

/// Starts one child linked to the given supervisor cell.
pub type StartFn = Arc<
    dyn Fn(ActorCell) -> Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>
        + Send
        + Sync,
>;

/// When a child is restarted (OTP's restart types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartMode {
    /// Always restarted, even after a normal exit.
    Permanent,
    /// Restarted only after a failure (panic or error).
    Transient,
    /// Never restarted.
    Temporary,
}

/// How to start and restart one child.
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique among the supervisor's children; also the actor's registered
    /// name, so the child can be found again after a restart.
    pub name: String,
    /// When to restart it.
    pub mode: RestartMode,
    /// Spawns it.
    pub start: StartFn,
}

impl ChildSpec {
    /// A child of actor type `A`, built afresh by `make` on every (re)start.
    pub fn new<A, F>(name: impl Into<String>, mode: RestartMode, make: F) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let name = name.into();
        let actor_name = name.clone();
        let make = Arc::new(make);
        Self {
            name,
            mode,
            start: Arc::new(move |sup: ActorCell| {
                let (actor, args) = make();
                let actor_name = actor_name.clone();
                Box::pin(async move {
                    let (r, _) = A::spawn_linked(Some(actor_name), actor, args, sup).await?;
                    Ok(r.get_cell())
                })
            }),
        }
    }
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .finish()
    }
}

/// A child as the supervisor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildStatus {
    /// The child's name.
    pub name: String,
    /// Whether it is running now.
    pub running: bool,
    /// Restarts made since the supervisor started.
    pub restarts: u32,
}

/// Messages of the [`Supervisor`] actor.
pub enum SupervisorMsg {
    /// Start a child; replies once it is running (or failed to start).
    StartChild(ChildSpec, RpcReplyPort<Result<(), String>>),
    /// Stop a child for good.
    StopChild(String),
    /// Internal: a backoff has passed, restart this child.
    Restart(String),
    /// Report every child's status.
    Children(RpcReplyPort<Vec<ChildStatus>>),
}

/// Arguments of the [`Supervisor`] actor.
pub struct SupervisorArgs {
    /// The policy applied to each child independently.
    pub policy: RestartPolicy,
    /// Children started, in order, before the supervisor reports started.
    pub children: Vec<ChildSpec>,
}

struct Slot {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    tracker: RestartTracker,
    restarts: u32,
}

/// State of a running [`Supervisor`].
pub struct SupervisorState {
    policy: RestartPolicy,
    children: BTreeMap<String, Slot>,
    /// Which child a running actor is, to read supervision events.
    by_id: HashMap<ActorId, String>,
}

/// The supervisor actor. See the module docs.
pub struct Supervisor;

impl SupervisorState {
    async fn start(&mut self, myself: &ActorCell, spec: ChildSpec) -> Result<(), SpawnErr> {
        let name = spec.name.clone();
        // A child orphaned by a predecessor that was killed (killing skips
        // `post_stop`, which stops children) still holds the name: end it
        // first so the fresh child can take it.
        if let Some(orphan) = ractor::registry::where_is(name.clone())
            && !self.by_id.contains_key(&orphan.get_id())
        {
            tracing::warn!(child = %name, "stopping an orphaned child before starting it again");
            let _ = orphan.kill_and_wait(Some(Duration::from_secs(5))).await;
        }
        let cell = (spec.start)(myself.clone()).await?;
        self.by_id.insert(cell.get_id(), name.clone());
        let slot = self.children.entry(name).or_insert_with(|| Slot {
            spec,
            cell: None,
            tracker: RestartTracker::new(self.policy),
            restarts: 0,
        });
        slot.cell = Some(cell);
        Ok(())
    }

    /// Handles the exit of a child; `Err` escalates.
    fn on_exit(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: ActorId,
        failed: bool,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        let Some(name) = self.by_id.remove(&id) else {
            return Ok(());
        };
        self.on_child_exit(myself, name, failed, why)
    }

    /// Applies the restart mode and policy to an exited child; `Err` escalates.
    fn on_child_exit(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        name: String,
        failed: bool,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        let Some(slot) = self.children.get_mut(&name) else {
            return Ok(());
        };
        slot.cell = None;
        let restart = match slot.spec.mode {
            RestartMode::Permanent => true,
            RestartMode::Transient => failed,
            RestartMode::Temporary => false,
        };
        if !restart {
            tracing::debug!(child = %name, %why, "child exited; not restarted");
            self.children.remove(&name);
            return Ok(());
        }
        match slot.tracker.on_exit(Instant::now().into_std()) {
            RestartDecision::Restart { after, attempt } => {
                tracing::warn!(child = %name, %why, attempt, ?after, "child exited; restarting");
                let n = name.clone();
                myself.send_after(after, move || SupervisorMsg::Restart(n));
                Ok(())
            }
            RestartDecision::Escalate { restarts, within } => {
                tracing::error!(child = %name, %why, restarts, ?within, "restart intensity exceeded; escalating");
                myself.stop_children(Some(format!("escalated: {name}")));
                Err(
                    format!("child {name} exceeded {restarts} restarts within {within:?}: {why}")
                        .into(),
                )
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            policy: args.policy,
            children: BTreeMap::new(),
            by_id: HashMap::new(),
        };
        for spec in args.children {
            let name = spec.name.clone();
            if let Err(e) = state.start(&myself.get_cell(), spec).await {
                myself.stop_children(None);
                return Err(format!("child {name} failed to start: {e}").into());
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartChild(spec, reply) => {
                let result = if state.children.contains_key(&spec.name) {
                    Err(format!("a child named {} exists", spec.name))
                } else {
                    state
                        .start(&myself.get_cell(), spec)
                        .await
                        .map_err(|e| e.to_string())
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::StopChild(name) => {
                if let Some(slot) = state.children.remove(&name)
                    && let Some(cell) = slot.cell
                {
                    state.by_id.remove(&cell.get_id());
                    cell.stop(Some("stopped by supervisor".into()));
                }
            }
            SupervisorMsg::Restart(name) => {
                let Some(slot) = state.children.get_mut(&name) else {
                    return Ok(());
                };
                if slot.cell.is_some() {
                    return Ok(());
                }
                slot.restarts += 1;
                let spec = slot.spec.clone();
                if let Err(e) = state.start(&myself.get_cell(), spec).await {
                    // A failed restart counts as another exit of the child.
                    state.on_child_exit(&myself, name, true, format!("restart failed: {e}"))?;
                }
            }
            SupervisorMsg::Children(reply) => {
                let list = state
                    .children
                    .iter()
                    .map(|(name, slot)| ChildStatus {
                        name: name.clone(),
                        running: slot.cell.is_some(),
                        restarts: slot.restarts,
                    })
                    .collect();
                let _ = reply.send(list);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                state.on_exit(&myself, cell.get_id(), true, err.to_string())
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => state.on_exit(
                &myself,
                cell.get_id(),
                false,
                reason.unwrap_or_else(|| "normal exit".into()),
            ),
            _ => Ok(()),
        }
    }
}

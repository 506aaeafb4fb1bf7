//! A supervised task: one long-running future as a ractor actor, so a plain
//! async loop (the root's serving and join loops) lives under the same
//! [`Supervisor`](super::supervisor::Supervisor) and [`RestartPolicy`]
//! as every actor of a node.
//!
//! Owns the running future's abort handle and nothing else: the future's
//! state lives where it put it (a restarted loop must find it there, e.g. a
//! shared event queue). The future panicking fails the actor, so its
//! supervisor restarts it (a fresh future from the same `make`) with backoff,
//! or escalates past the restart intensity; the future returning ends the
//! actor normally; stopping the actor aborts the future.
//!
//! [`RestartPolicy`]: super::restart::RestartPolicy

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::AbortHandle;

use super::supervisor::{ChildSpec, RestartMode};

/// Builds the task's future afresh on every (re)start.
pub type TaskFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The actor running one task. See the module docs.
pub struct TaskActor;

/// Arguments of a [`TaskActor`].
pub struct TaskArgs {
    /// Builds the future to run.
    pub make: TaskFn,
}

/// Messages of a [`TaskActor`] (internal: sent by its own watcher).
pub enum TaskMsg {
    /// The future ended: `None` when it returned, else its panic message.
    Exited(Option<String>),
}

/// State of a running [`TaskActor`].
pub struct TaskState {
    make: TaskFn,
    running: Option<AbortHandle>,
}

/// A child spec for a supervised task named `name`. Use
/// [`RestartMode::Transient`] for a loop that returns when it is told to
/// stop (restarted only after a panic).
pub fn task_spec<F, Fut>(name: impl Into<String>, mode: RestartMode, make: F) -> ChildSpec
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let make: TaskFn = Arc::new(move || Box::pin(make()));
    ChildSpec::new(name, mode, move || {
        (TaskActor, TaskArgs { make: make.clone() })
    })
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into()),
        Err(e) => e.to_string(),
    }
}

impl Actor for TaskActor {
    type Msg = TaskMsg;
    type State = TaskState;
    type Arguments = TaskArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(TaskState {
            make: args.make,
            running: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let task = tokio::spawn((state.make)());
        state.running = Some(task.abort_handle());
        tokio::spawn(async move {
            let exit = match task.await {
                Ok(()) => None,
                Err(e) if e.is_cancelled() => return,
                Err(e) => Some(panic_message(e)),
            };
            let _ = myself.cast(TaskMsg::Exited(exit));
        });
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(task) = state.running.take() {
            task.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TaskMsg::Exited(None) => {
                state.running = None;
                myself.stop(Some("task returned".into()));
                Ok(())
            }
            TaskMsg::Exited(Some(panic)) => {
                state.running = None;
                Err(format!("task panicked: {panic}").into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::actors::restart::RestartPolicy;
    use crate::actors::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};

    fn policy(max_restarts: u32) -> RestartPolicy {
        RestartPolicy {
            max_restarts,
            within: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
        }
    }

    /// A task that panics `panics` times, then waits until stopped.
    async fn supervise(max_restarts: u32, panics: u32) -> (u32, bool) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let runs = Arc::new(AtomicU32::new(0));
        let (idle_tx, mut idle_rx) = tokio::sync::mpsc::unbounded_channel();
        let spec = {
            let runs = runs.clone();
            task_spec(
                format!("task-test-{n}"),
                RestartMode::Transient,
                move || {
                    let (runs, idle_tx) = (runs.clone(), idle_tx.clone());
                    async move {
                        if runs.fetch_add(1, Ordering::SeqCst) < panics {
                            panic!("run failed");
                        }
                        let _ = idle_tx.send(());
                        std::future::pending::<()>().await;
                    }
                },
            )
        };
        let (sup, join) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                policy: policy(max_restarts),
                children: vec![spec],
            },
        )
        .await
        .expect("spawn");
        // The idle signal only, not the channel closing: an escalated
        // supervisor drops the spec (and its senders) as it ends.
        let escalated = tokio::select! {
            Some(()) = idle_rx.recv() => false,
            _ = join => true,
        };
        if !escalated {
            let children = ractor::call!(sup, SupervisorMsg::Children).expect("children");
            assert_eq!(children[0].restarts, panics);
            sup.stop_and_wait(None, None).await.expect("stop");
        }
        (runs.load(Ordering::SeqCst), escalated)
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_by_its_supervisor() {
        assert_eq!(supervise(3, 2).await, (3, false));
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_restart_intensity_the_supervisor_escalates() {
        // One first run plus two restarts, then the third panic escalates.
        assert_eq!(supervise(2, 10).await, (3, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_ends_without_a_restart() {
        let (sup, _join) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                policy: policy(3),
                children: vec![task_spec(
                    "task-test-returns",
                    RestartMode::Transient,
                    || async {},
                )],
            },
        )
        .await
        .expect("spawn");
        for _ in 0..100 {
            let children = ractor::call!(sup, SupervisorMsg::Children).expect("children");
            if children.is_empty() {
                sup.stop_and_wait(None, None).await.expect("stop");
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the finished task is still listed");
    }
}

//! Supervision: restart with backoff, keeping the registered name; escalation
//! past the restart intensity; shutdown stops the whole tree. Paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use interlocking::actors::restart::RestartPolicy;
use interlocking::actors::supervisor::{
    ChildSpec, RestartMode, Supervisor, SupervisorArgs, SupervisorMsg,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus};

/// A child that counts its starts and panics when told to.
struct Crashy;

enum CrashyMsg {
    Panic,
}

impl Actor for Crashy {
    type Msg = CrashyMsg;
    type State = ();
    type Arguments = Arc<AtomicU32>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        starts: Self::Arguments,
    ) -> Result<(), ActorProcessingErr> {
        starts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CrashyMsg::Panic => panic!("told to crash"),
        }
    }
}

fn policy() -> RestartPolicy {
    RestartPolicy {
        max_restarts: 3,
        within: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
    }
}

fn crashy(name: &str, starts: &Arc<AtomicU32>) -> ChildSpec {
    let starts = starts.clone();
    ChildSpec::new(name, RestartMode::Permanent, move || {
        (Crashy, starts.clone())
    })
}

/// Waits in virtual time (bounded) until `name` is registered and running.
async fn running(name: &str) -> ActorRef<CrashyMsg> {
    for _ in 0..200 {
        if let Some(cell) = ractor::registry::where_is(name)
            && cell.get_status() == ActorStatus::Running
        {
            return cell.into();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} is not running after 2 s of virtual time");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_child_is_restarted_after_backoff_under_its_name() {
    let starts = Arc::new(AtomicU32::new(0));
    let (sup, join) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            policy: policy(),
            children: vec![crashy("sup-test/restart", &starts)],
        },
    )
    .await
    .unwrap();
    let child = running("sup-test/restart").await;
    assert_eq!(starts.load(Ordering::SeqCst), 1);

    let before = tokio::time::Instant::now();
    child.cast(CrashyMsg::Panic).unwrap();
    for _ in 0..100 {
        if child.get_status() == ActorStatus::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(child.get_status(), ActorStatus::Stopped);
    let again = running("sup-test/restart").await;
    assert_ne!(again.get_id(), child.get_id(), "a new actor took the name");
    assert_eq!(starts.load(Ordering::SeqCst), 2);
    assert!(
        before.elapsed() >= policy().backoff_initial,
        "restart waited for the backoff"
    );
    let status = ractor::call_t!(sup, SupervisorMsg::Children, 1000).unwrap();
    assert_eq!(status.len(), 1);
    assert!(status[0].running);
    assert_eq!(status[0].restarts, 1);

    sup.stop(None);
    join.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_child_that_keeps_panicking_escalates_instead_of_looping() {
    let starts = Arc::new(AtomicU32::new(0));
    let (sup, join) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            policy: policy(),
            children: vec![crashy("sup-test/escalate", &starts)],
        },
    )
    .await
    .unwrap();
    // Bounded: the policy allows 3 restarts, the 4th crash escalates.
    for _ in 0..10 {
        if join.is_finished() {
            break;
        }
        match ractor::registry::where_is("sup-test/escalate") {
            Some(cell) if cell.get_status() == ActorStatus::Running => {
                let child: ActorRef<CrashyMsg> = cell.into();
                let _ = child.cast(CrashyMsg::Panic);
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(join.is_finished(), "the supervisor escalated by failing");
    assert_eq!(
        starts.load(Ordering::SeqCst),
        4,
        "1 start + 3 restarts, no more"
    );
    assert_eq!(sup.get_status(), ActorStatus::Stopped);
    assert!(ractor::registry::where_is("sup-test/escalate").is_none());
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_child_and_returns() {
    let starts = Arc::new(AtomicU32::new(0));
    let inner = {
        let starts = starts.clone();
        ChildSpec::new("sup-test/inner", RestartMode::Permanent, move || {
            (
                Supervisor,
                SupervisorArgs {
                    policy: policy(),
                    children: vec![crashy("sup-test/leaf", &starts)],
                },
            )
        })
    };
    let (sup, join) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            policy: policy(),
            children: vec![inner],
        },
    )
    .await
    .unwrap();
    let leaf = running("sup-test/leaf").await;
    sup.stop(None);
    tokio::time::timeout(Duration::from_secs(5), join)
        .await
        .expect("shutdown returned")
        .unwrap();
    assert_eq!(leaf.get_status(), ActorStatus::Stopped);
    assert!(ractor::registry::where_is("sup-test/inner").is_none());
    assert!(ractor::registry::where_is("sup-test/leaf").is_none());
    assert_eq!(starts.load(Ordering::SeqCst), 1, "stopping is not a crash");
}

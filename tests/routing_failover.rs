//! The routing authority in a real node tree over the memory transport, in
//! tokio's paused virtual time: a partitioned preferred path fails over
//! within the bound that the probe interval and miss count imply, the
//! decision explains why, and the stream returns only after freeze and
//! hold-down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::routing::authority::RouteUpdate;
use interlocking::routing::{Assessment, Need, RoutingConfig, Rule};
use interlocking::transports::PeerAddr;
use interlocking::transports::memory::MemoryNetwork;
use interlocking::transports::probe::ProbeConfig;
use interlocking::vocab::{ChannelKind, NodeId, PathId, PathKind, Role, StreamId};

const PROBE: ProbeConfig = ProbeConfig {
    interval: Duration::from_millis(100),
    timeout: Duration::from_millis(300),
};

fn config() -> RoutingConfig {
    let mut c = RoutingConfig::default();
    c.health.misses_to_fail = 3;
    c
}

async fn pair(net: &MemoryNetwork) -> (Node, Node) {
    let hub = NodeBuilder::new("hub", Role::Hub)
        .routing(config())
        .memory(net, PathKind::Quic, PROBE)
        .memory(net, PathKind::Relay, PROBE)
        .spawn()
        .await
        .unwrap();
    let member = NodeBuilder::new("m1", Role::Member)
        .routing(config())
        .memory(net, PathKind::Quic, PROBE)
        .memory(net, PathKind::Relay, PROBE)
        .dial(PathKind::Quic, PeerAddr::node("hub"))
        .dial(PathKind::Relay, PeerAddr::node("hub"))
        .spawn()
        .await
        .unwrap();
    (hub, member)
}

type Updates = Arc<Mutex<Vec<(tokio::time::Instant, RouteUpdate)>>>;

/// Steps virtual time in 10 ms increments (bounded) until `pred` holds.
async fn wait_for(
    updates: &Updates,
    limit: Duration,
    pred: impl Fn(&RouteUpdate) -> bool,
) -> (tokio::time::Instant, RouteUpdate) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = updates
            .lock()
            .unwrap()
            .iter()
            .find(|(_, u)| pred(u))
            .cloned()
        {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no matching route update within {limit:?}: {:#?}",
            updates
                .lock()
                .unwrap()
                .iter()
                .map(|(_, u)| u.decision.to_string())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn partitioned_preferred_path_fails_over_within_the_detection_bound_and_returns_after_freeze()
{
    let net = MemoryNetwork::new(11);
    let (hub, member) = pair(&net).await;
    let stream = StreamId::new("command:hub/m1");
    let updates: Updates = Arc::default();
    let sink = updates.clone();
    hub.register_stream(
        stream.clone(),
        Need::node(ChannelKind::Command, NodeId::new("m1")),
        move |u| sink.lock().unwrap().push((tokio::time::Instant::now(), u)),
    )
    .await
    .unwrap();
    let quic = PathId::new("m1", PathKind::Quic);
    let relay = PathId::new("m1", PathKind::Relay);

    // Both paths open; the stream settles on the preferred one (quic; no
    // webrtc-data exists here).
    wait_for(&updates, Duration::from_secs(2), |u| {
        u.decision.next.as_ref() == Some(&quic)
    })
    .await;
    // Let a freeze from the initial selection run out before cutting.
    tokio::time::sleep(Duration::from_secs(15)).await;
    updates.lock().unwrap().clear();

    let cut = tokio::time::Instant::now();
    net.partition(PathKind::Quic, &NodeId::new("hub"), &NodeId::new("m1"));
    let (at, failover) = wait_for(&updates, Duration::from_secs(5), |u| {
        u.decision.rule == Rule::Failover
    })
    .await;
    assert_eq!(failover.decision.previous.as_ref(), Some(&quic));
    assert_eq!(failover.decision.next.as_ref(), Some(&relay));
    // Detection bound: the first unanswered probe is sent within one
    // interval of the cut and is missed one timeout later; each further
    // probe adds one interval until `misses_to_fail` misses accumulate.
    let misses = config().health.misses_to_fail;
    let bound =
        PROBE.interval + PROBE.timeout + PROBE.interval * (misses - 1) + Duration::from_millis(20);
    let took = at - cut;
    assert!(took <= bound, "failover took {took:?}, bound {bound:?}");
    assert!(
        took >= PROBE.timeout,
        "cannot fail before a probe times out: {took:?}"
    );
    let cause = failover.decision.cause.to_string();
    assert!(
        cause.contains("miss"),
        "cause names the missed probes: {cause}"
    );

    let why = hub
        .explain(&stream)
        .await
        .unwrap()
        .expect("stream is registered");
    assert_eq!(why.path.as_ref(), Some(&relay));
    let last = why
        .decisions
        .iter()
        .rev()
        .find(|d| d.rule == Rule::Failover)
        .expect("failover is in the log");
    assert_eq!(last.previous.as_ref(), Some(&quic));
    let freeze_until = why.freeze_until.expect("a failover starts a freeze");

    // Heal once the failover can no longer be undone (an answer within the
    // policy's `undo_within` would take the stream straight back, see
    // tests/routing_recovery.rs): the voluntary return then waits for the
    // freeze and the hold-down of the preferred path.
    let undo = interlocking::routing::Policy::for_channel(ChannelKind::Command).undo_within;
    tokio::time::sleep(undo + Duration::from_millis(100)).await;
    net.heal(PathKind::Quic, &NodeId::new("hub"), &NodeId::new("m1"));
    let (back_at, back) = wait_for(&updates, Duration::from_secs(60), |u| {
        u.decision.rule == Rule::ReturnToPreferred
    })
    .await;
    assert_eq!(back.decision.next.as_ref(), Some(&quic));
    assert!(
        back_at.into_std() >= freeze_until,
        "returned at {:?} before the freeze ended",
        back_at - cut
    );
    let hold_down = config().command.hold_down;
    assert!(back_at - cut >= hold_down, "hold-down respected");
    assert!(matches!(
        back.decision.assessment,
        Assessment::Transitioning | Assessment::Nominal
    ));

    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_routing_authority_keeps_streams_and_paths() {
    let net = MemoryNetwork::new(12);
    let (hub, member) = pair(&net).await;
    let stream = StreamId::new("command:hub/m1");
    let updates: Updates = Arc::default();
    let sink = updates.clone();
    hub.register_stream(
        stream.clone(),
        Need::node(ChannelKind::Command, NodeId::new("m1")),
        move |u| sink.lock().unwrap().push((tokio::time::Instant::now(), u)),
    )
    .await
    .unwrap();
    let quic = PathId::new("m1", PathKind::Quic);
    wait_for(&updates, Duration::from_secs(2), |u| {
        u.decision.next.as_ref() == Some(&quic)
    })
    .await;

    let authority = hub.routing_authority().expect("authority running");
    authority.kill();
    updates.lock().unwrap().clear();
    // The supervisor restarts it after its backoff; it re-registers the
    // stream, re-adds open paths, and tells the listener again.
    let (_, again) = wait_for(&updates, Duration::from_secs(5), |u| {
        u.decision.next.as_ref() == Some(&quic)
    })
    .await;
    assert_eq!(again.stream, stream);
    let why = hub
        .explain(&stream)
        .await
        .unwrap()
        .expect("still registered");
    assert_eq!(why.path.as_ref(), Some(&quic));
    let restarted = hub.routing_authority().expect("authority running again");
    assert_ne!(restarted.get_id(), authority.get_id());
    assert!(hub.is_running());

    member.shutdown().await;
    hub.shutdown().await;
}

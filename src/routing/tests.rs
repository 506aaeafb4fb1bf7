//! Unit tests of the routing core's less travelled rules (the main
//! behaviours are in `tests/routing_core.rs`).

use std::time::{Duration, Instant};

use super::*;
use crate::vocab::{ChannelKind, NodeId, PathId, PathKind, StreamId};

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn drain(core: &mut RoutingCore) -> Vec<Decision> {
    std::iter::from_fn(|| core.poll_decision()).collect()
}

fn p(node: &str, kind: PathKind) -> PathId {
    PathId::new(node, kind)
}

#[test]
fn register_twice_or_with_a_bad_policy_is_refused() {
    let t0 = Instant::now();
    let mut core = RoutingCore::new(RoutingConfig::default());
    let id = StreamId::new("command:hub/m1");
    core.register(t0, id.clone(), Need::node(ChannelKind::Command, "m1"))
        .unwrap();
    assert_eq!(
        core.register(t0, id.clone(), Need::node(ChannelKind::Command, "m1")),
        Err(RegisterError::AlreadyRegistered(id))
    );
    let bad = Policy::new([PathKind::Relay], s(1)).direct_only();
    let err = core
        .register(
            t0,
            "command:hub/m2".into(),
            Need::node(ChannelKind::Command, "m2").with_policy(bad),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        RegisterError::InvalidPolicy {
            source: PolicyError::NoDirectKind,
            ..
        }
    ));
    assert_eq!(core.stream_count(), 1);
}

#[test]
fn unroutable_stream_recovers_when_a_path_appears() {
    let t0 = Instant::now();
    let mut core = RoutingCore::new(RoutingConfig::default());
    let id = StreamId::new("sync:hub/m1");
    core.register(t0, id.clone(), Need::node(ChannelKind::Sync, "m1"))
        .unwrap();
    let d = drain(&mut core);
    assert_eq!(d[0].rule, Rule::NoPath);
    assert_eq!(
        d[0].to_string(),
        "sync:hub/m1 none (no-path: no usable path to m1), degraded"
    );
    // Never routed before: the first path is the initial selection.
    core.path_added(t0 + s(1), p("m1", PathKind::Relay));
    let d = drain(&mut core);
    assert_eq!(d[0].rule, Rule::Initial);
    assert_eq!(d[0].freeze_until, None);
    core.observe(
        t0 + s(2),
        &p("m1", PathKind::Relay),
        Observation::Down { cause: "x".into() },
    );
    assert_eq!(drain(&mut core)[0].rule, Rule::NoPath);
    // Unroutable is announced once, not on every input.
    core.observe(
        t0 + s(3),
        &p("m1", PathKind::Relay),
        Observation::ProbeMissed,
    );
    assert!(drain(&mut core).is_empty());
    core.observe(t0 + s(4), &p("m1", PathKind::Relay), Observation::Up);
    let d = drain(&mut core);
    assert_eq!(d[0].rule, Rule::Recovered);
    assert_eq!(d[0].switches, 2);
    // Second switch two seconds after the first: the 15 s freeze nearly
    // doubles (penalty 1 + 0.5^(2/60)).
    let freeze = d[0].freeze_until.unwrap() - (t0 + s(4));
    assert!(freeze > s(29) && freeze < s(30), "{freeze:?}");
}

#[test]
fn preferred_kind_appearing_turns_nominal_into_fallback() {
    let t0 = Instant::now();
    let mut core = RoutingCore::new(RoutingConfig::default());
    let relay = p("m1", PathKind::Relay);
    let quic = p("m1", PathKind::Quic);
    core.path_added(t0, relay.clone());
    let id = StreamId::new("command:hub/m1");
    core.register(t0, id.clone(), Need::node(ChannelKind::Command, "m1"))
        .unwrap();
    core.observe(t0, &relay, Observation::DataAcked);
    let d = drain(&mut core);
    assert_eq!(d[1].assessment, Assessment::Nominal);
    core.path_added(t0 + s(1), quic.clone());
    let d = drain(&mut core);
    assert_eq!(d[0].rule, Rule::Reassessed);
    assert_eq!(d[0].assessment, Assessment::Fallback);
    assert_eq!(
        d[0].cause,
        Cause::PreferenceChanged {
            preferred: Some(PathKind::Quic)
        }
    );
    // No freeze after the initial selection: only hold-down holds the return.
    assert_eq!(core.poll_timeout(), Some(t0 + s(4)));
    core.handle_timeout(t0 + s(4));
    // Held down, but quic's only evidence is 3 s old: the return waits for
    // fresh answers, three in a row (adding the path counted as one).
    assert!(drain(&mut core).is_empty());
    let rtt = Observation::ProbeAnswered {
        rtt: Duration::from_millis(5),
    };
    core.observe(t0 + s(4), &quic, rtt.clone());
    assert!(drain(&mut core).is_empty());
    core.observe(t0 + s(4), &quic, rtt);
    let d = drain(&mut core);
    assert_eq!(d[0].rule, Rule::ReturnToPreferred);
    assert_eq!(d[0].next, Some(quic));
}

#[test]
fn capability_target_sticks_to_its_node_and_leaves_on_withdrawal() {
    let t0 = Instant::now();
    let mut core = RoutingCore::new(RoutingConfig::default());
    for n in ["m1", "m2"] {
        core.path_added(t0, p(n, PathKind::Quic));
        core.set_capabilities(NodeId::new(n), vec!["gpu".into()]);
    }
    let id = StreamId::new("command:hub/gpu");
    core.register(
        t0,
        id.clone(),
        Need::capability(ChannelKind::Command, "gpu"),
    )
    .unwrap();
    assert_eq!(drain(&mut core)[0].next, Some(p("m1", PathKind::Quic)));
    core.observe(
        t0 + s(1),
        &p("m1", PathKind::Quic),
        Observation::Incident {
            what: "crash".into(),
        },
    );
    assert_eq!(drain(&mut core)[0].next, Some(p("m2", PathKind::Quic)));
    // m1 back: the stream stays on the node it is bound to.
    core.observe(t0 + s(2), &p("m1", PathKind::Quic), Observation::Up);
    for t in 3..60 {
        for n in ["m1", "m2"] {
            core.observe(t0 + s(t), &p(n, PathKind::Quic), Observation::DataAcked);
        }
        core.handle_timeout(t0 + s(t));
    }
    let d = drain(&mut core);
    assert!(d.iter().all(|d| !d.is_switch()), "{d:#?}");
    // m2 stops offering the capability: evaluated at the next timeout.
    core.set_capabilities(NodeId::new("m2"), vec![]);
    assert_eq!(core.poll_timeout(), Some(t0 + s(59)));
    core.handle_timeout(t0 + s(59));
    let d = drain(&mut core);
    assert_eq!(d[0].rule, Rule::Failover);
    assert_eq!(d[0].next, Some(p("m1", PathKind::Quic)));
    assert_eq!(d[0].cause.to_string(), "m2 no longer offers gpu");
}

#[test]
fn explanation_lists_candidates_and_history() {
    let t0 = Instant::now();
    let mut config = RoutingConfig::default();
    config.health.misses_to_fail = 3;
    let mut core = RoutingCore::new(config);
    let quic = p("m1", PathKind::Quic);
    let relay = p("m1", PathKind::Relay);
    core.path_added(t0, quic.clone());
    core.path_added(t0, relay.clone());
    let id = StreamId::new("command:hub/m1");
    core.register(t0, id.clone(), Need::node(ChannelKind::Command, "m1"))
        .unwrap();
    core.observe(t0 + s(1), &quic, Observation::ProbeMissed);
    core.observe(t0 + s(2), &quic, Observation::ProbeMissed);
    core.observe(t0 + s(3), &quic, Observation::ProbeMissed);
    let e = core.explain(&id, t0 + s(4)).unwrap();
    assert_eq!(e.path, Some(relay.clone()));
    assert_eq!(e.path_health, Some(PathHealth::Healthy));
    assert_eq!(e.assessment, Assessment::Transitioning);
    assert_eq!(e.freeze_until, Some(t0 + s(13)));
    assert_eq!(e.on_fallback_for, Some(s(1)));
    assert_eq!(e.candidates.len(), 2);
    assert_eq!(e.candidates[0].path, quic);
    assert_eq!(e.candidates[0].health, PathHealth::Failed);
    assert_eq!(e.candidates[0].misses, 3);
    assert_eq!(e.decisions.len(), 2);
    let text = e.to_string();
    assert!(text.contains("frozen for 9.0s"), "{text}");
    assert!(text.contains("(failover: 3 probes missed)"), "{text}");
}

#[test]
fn history_is_bounded_and_unregister_forgets() {
    let t0 = Instant::now();
    let config = RoutingConfig {
        history: 2,
        ..RoutingConfig::default()
    };
    let mut core = RoutingCore::new(config);
    let quic = p("m1", PathKind::Quic);
    let relay = p("m1", PathKind::Relay);
    core.path_added(t0, quic.clone());
    core.path_added(t0, relay.clone());
    let id = StreamId::new("command:hub/m1");
    core.register(t0, id.clone(), Need::node(ChannelKind::Command, "m1"))
        .unwrap();
    for (i, path) in [&quic, &relay, &quic].into_iter().enumerate() {
        let t = t0 + s(i as u64 + 1);
        core.observe(t, path, Observation::Down { cause: "x".into() });
        let other = if path == &quic { &relay } else { &quic };
        core.observe(t, other, Observation::Up);
    }
    assert_eq!(core.explain(&id, t0 + s(5)).unwrap().decisions.len(), 2);
    assert!(core.poll_timeout().is_some());
    core.unregister(&id);
    assert!(core.route(&id).is_none());
    assert_eq!(core.stream_count(), 0);
    assert!(core.transitioning.is_empty());
    assert!(core.stream_timers.is_empty());
    assert!(core.by_node.is_empty());
}

#[test]
fn inputs_on_one_peer_touch_only_its_streams() {
    let t0 = Instant::now();
    let mut core = RoutingCore::new(RoutingConfig::default());
    for n in ["m1", "m2"] {
        core.path_added(t0, p(n, PathKind::Quic));
        core.path_added(t0, p(n, PathKind::Relay));
        let id = StreamId::new(format!("command:hub/{n}"));
        core.register(t0, id, Need::node(ChannelKind::Command, n))
            .unwrap();
    }
    drain(&mut core);
    assert_eq!(
        core.streams_towards(&NodeId::new("m2")),
        [StreamId::new("command:hub/m2")].into_iter().collect()
    );
    core.observe(
        t0 + s(1),
        &p("m2", PathKind::Quic),
        Observation::Down { cause: "x".into() },
    );
    let d = drain(&mut core);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].stream, StreamId::new("command:hub/m2"));
    assert_eq!(
        core.route(&"command:hub/m1".into()).unwrap().path,
        Some(p("m1", PathKind::Quic))
    );
}

#[test]
fn time_never_goes_backwards() {
    let t0 = Instant::now();
    let mut core = RoutingCore::new(RoutingConfig::default());
    let quic = p("m1", PathKind::Quic);
    core.path_added(t0 + s(10), quic.clone());
    core.register(
        t0,
        "command:hub/m1".into(),
        Need::node(ChannelKind::Command, "m1"),
    )
    .unwrap();
    let d = drain(&mut core);
    assert_eq!(d[0].at, t0 + s(10));
}

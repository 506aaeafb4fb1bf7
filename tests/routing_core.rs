//! Behaviour of the pure routing core, driven with stepped time: the clock
//! jumps to the next deadline (`poll_timeout`) and never sleeps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use interlocking::routing::{
    Assessment, Cause, Decision, Need, Observation, PathHealth, Policy, RoutingConfig, RoutingCore,
    Rule, Target,
};
use interlocking::vocab::{ChannelKind, NodeId, PathId, PathKind, StreamId};
use proptest::prelude::*;

const MAX_STEPS: usize = 100_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A core, a fake clock and the decisions seen so far.
struct Sim {
    core: RoutingCore,
    t0: Instant,
    now: Instant,
    log: Vec<Decision>,
}

impl Sim {
    fn new(config: RoutingConfig) -> Self {
        let t0 = Instant::now();
        Self {
            core: RoutingCore::new(config),
            t0,
            now: t0,
            log: Vec::new(),
        }
    }

    fn at(&self, d: Duration) -> Instant {
        self.t0 + d
    }

    fn drain(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        while let Some(d) = self.core.poll_decision() {
            out.push(d);
        }
        self.log.extend(out.iter().cloned());
        out
    }

    /// Advances the clock to `t0 + d`, handling every deadline on the way at
    /// exactly its instant. A livelock fails the test instead of hanging.
    fn run_to(&mut self, d: Duration) -> Vec<Decision> {
        let target = self.at(d);
        let mut out = Vec::new();
        for _ in 0..MAX_STEPS {
            match self.core.poll_timeout() {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.core.handle_timeout(self.now);
                    out.extend(self.drain());
                    assert!(
                        self.core.poll_timeout().is_none_or(|n| n > self.now),
                        "deadline not consumed"
                    );
                }
                _ => {
                    self.now = self.now.max(target);
                    return out;
                }
            }
        }
        panic!("livelock: more than {MAX_STEPS} timeouts");
    }

    fn add(&mut self, d: Duration, path: &PathId) -> Vec<Decision> {
        let mut out = self.run_to(d);
        self.core.path_added(self.now, path.clone());
        out.extend(self.drain());
        out
    }

    fn obs(&mut self, d: Duration, path: &PathId, o: Observation) -> Vec<Decision> {
        let mut out = self.run_to(d);
        self.core.observe(self.now, path, o);
        out.extend(self.drain());
        out
    }

    fn register(&mut self, d: Duration, stream: &StreamId, need: Need) -> Vec<Decision> {
        let mut out = self.run_to(d);
        self.core.register(self.now, stream.clone(), need).unwrap();
        out.extend(self.drain());
        out
    }

    /// Answers a probe on each path every `every` in `(from, to]`.
    fn keepalive(&mut self, from: Duration, to: Duration, every: Duration, paths: &[&PathId]) {
        let mut t = from + every;
        while t <= to {
            for p in paths {
                self.obs(t, p, Observation::ProbeAnswered { rtt: ms(20) });
            }
            t += every;
        }
    }

    fn since_t0(&self, t: Instant) -> Duration {
        t - self.t0
    }
}

fn quic() -> PathId {
    PathId::new("m1", PathKind::Quic)
}

fn relay() -> PathId {
    PathId::new("m1", PathKind::Relay)
}

fn down(why: &str) -> Observation {
    Observation::Down { cause: why.into() }
}

fn command() -> StreamId {
    StreamId::new("command:hub/m1")
}

/// quic + relay to m1, one command stream on quic with its transition done.
fn on_quic(config: RoutingConfig) -> Sim {
    let mut sim = Sim::new(config);
    sim.add(s(0), &quic());
    sim.add(s(0), &relay());
    let d = sim.register(s(0), &command(), Need::node(ChannelKind::Command, "m1"));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].rule, Rule::Initial);
    assert_eq!(d[0].next, Some(quic()));
    sim.obs(s(0), &quic(), Observation::DataAcked);
    sim
}

fn switches(log: &[Decision]) -> Vec<&Decision> {
    log.iter().filter(|d| d.is_switch()).collect()
}

#[test]
fn failed_current_path_is_left_at_once_even_while_frozen() {
    let mut sim = on_quic(RoutingConfig::default());
    let d = sim.obs(s(1), &quic(), down("reset by peer"));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].rule, Rule::Failover);
    assert_eq!(d[0].next, Some(relay()));
    assert_eq!(d[0].freeze_until, Some(sim.at(s(11))));
    sim.obs(s(2), &quic(), Observation::Up);
    // Frozen until 11 s, and quic is not yet held down: the relay failing
    // still moves the stream at once.
    let d = sim.obs(
        s(3),
        &relay(),
        Observation::Incident {
            what: "certificate expired".into(),
        },
    );
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].rule, Rule::Failover);
    assert_eq!(d[0].at, sim.at(s(3)));
    assert_eq!(d[0].previous, Some(relay()));
    assert_eq!(d[0].next, Some(quic()));
    assert_eq!(d[0].cause, Cause::Incident("certificate expired".into()));
    assert_eq!(d[0].switches, 2);
    assert_eq!(d[0].attempt, 3);
}

#[test]
fn removed_path_is_left_at_once_with_its_cause() {
    let mut sim = on_quic(RoutingConfig::default());
    sim.run_to(s(1));
    sim.core
        .path_removed(sim.now, &quic(), "transport closed".into());
    let d = sim.drain();
    assert_eq!(d[0].rule, Rule::Failover);
    assert_eq!(d[0].cause, Cause::Removed("transport closed".into()));
    assert_eq!(d[0].next, Some(relay()));
}

#[test]
fn no_voluntary_switch_inside_freeze_and_return_after_freeze() {
    let mut sim = on_quic(RoutingConfig::default());
    sim.obs(s(1), &quic(), down("reset"));
    sim.obs(s(2), &quic(), Observation::Up);
    sim.keepalive(s(2), s(20), ms(500), &[&quic(), &relay()]);
    let sw = switches(&sim.log);
    assert_eq!(sw.len(), 2, "{sw:#?}");
    // quic healthy since 2 s (hold-down done at 5 s), freeze ends at 11 s.
    assert_eq!(sw[1].rule, Rule::ReturnToPreferred);
    assert_eq!(sim.since_t0(sw[1].at), s(11));
    assert_eq!(sw[1].next, Some(quic()));
    assert!(sw[1].to_string().contains("quic@m1 healthy for 9.0s"));
}

#[test]
fn return_waits_for_hold_down_after_the_freeze() {
    let mut sim = on_quic(RoutingConfig::default());
    sim.obs(s(1), &quic(), down("reset"));
    sim.keepalive(s(1), s(10), ms(500), &[&relay()]);
    // quic comes back at 10 s and blips at 11.5 s: hold-down restarts.
    sim.obs(s(10), &quic(), Observation::Up);
    sim.obs(ms(11_500), &quic(), down("blip"));
    sim.obs(ms(11_700), &quic(), Observation::Up);
    sim.keepalive(ms(11_700), s(20), ms(500), &[&quic(), &relay()]);
    let sw = switches(&sim.log);
    // Failover at 1 s; the relay stays; return at 11.7 + 3 = 14.7 s.
    assert_eq!(sw.len(), 2, "{sw:#?}");
    assert_eq!(sw[1].rule, Rule::ReturnToPreferred);
    assert_eq!(sim.since_t0(sw[1].at), ms(14_700));
}

/// Flaps the first path of `order` every 200 ms for 60 s; the second path
/// stays healthy. Returns the decisions.
fn flap(channel: ChannelKind, flapping: PathId, steady: PathId, hold_down: Duration) -> Sim {
    let mut config = RoutingConfig::default();
    config.policy_mut(channel).hold_down = hold_down;
    // The flapping path's only evidence is `Up`: one piece counts, so that
    // hold-down and damping alone decide.
    config.health.recovery_evidence = 1;
    let mut sim = Sim::new(config);
    sim.add(s(0), &flapping);
    sim.add(s(0), &steady);
    let stream = StreamId::new(format!("{channel}:hub/m1"));
    sim.register(s(0), &stream, Need::node(channel, "m1"));
    for k in 1..=300u64 {
        let t = ms(200 * k);
        let o = if k % 2 == 1 {
            down("flap")
        } else {
            Observation::Up
        };
        sim.obs(t, &flapping, o);
        sim.obs(t, &steady, Observation::ProbeAnswered { rtt: ms(30) });
    }
    sim.run_to(s(60));
    sim
}

fn assert_damped(sim: &Sim) {
    let sw = switches(&sim.log);
    // At most one switch inside any freeze window, and only a failover.
    for (i, d) in sw.iter().enumerate() {
        let Some(until) = d.freeze_until.filter(|u| *u > d.at) else {
            continue;
        };
        let inside: Vec<_> = sw[i + 1..].iter().filter(|e| e.at < until).collect();
        assert!(inside.len() <= 1, "{inside:#?}");
        assert!(inside.iter().all(|e| e.rule == Rule::Failover));
    }
    // Voluntary returns come further and further apart.
    let returns: Vec<Instant> = sw
        .iter()
        .filter(|d| d.rule.is_voluntary())
        .map(|d| d.at)
        .collect();
    let gaps: Vec<Duration> = returns.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] > g[0]), "gaps {gaps:?}");
    // The freeze grows with the penalty: every later failover is frozen
    // longer than the first switch.
    let freezes: Vec<Duration> = sw
        .iter()
        .filter(|d| d.rule == Rule::Failover)
        .filter_map(|d| d.freeze_until.map(|u| u - d.at))
        .collect();
    assert!(freezes[1..].iter().all(|f| *f > freezes[0]), "{freezes:?}");
}

#[test]
fn flapping_link_is_damped() {
    // Hold-down 0 so that the damping alone holds the stream.
    let sim = flap(ChannelKind::Command, quic(), relay(), Duration::ZERO);
    assert_damped(&sim);
    let sw = switches(&sim.log);
    assert!(sw.len() <= 6, "{} switches for 300 flaps", sw.len());
    let returns = sw.iter().filter(|d| d.rule.is_voluntary()).count();
    assert!(returns >= 2);

    let media = flap(
        ChannelKind::Media,
        PathId::new("m1", PathKind::WebrtcMedia),
        relay(),
        Duration::ZERO,
    );
    assert_damped(&media);
    let returns: Vec<_> = switches(&media.log)
        .into_iter()
        .filter(|d| d.rule.is_voluntary())
        .collect();
    assert!(returns.len() >= 3, "{returns:#?}");
    assert!(switches(&media.log).len() <= 14);
}

#[test]
fn flapping_link_never_passes_hold_down() {
    let sim = flap(
        ChannelKind::Command,
        quic(),
        relay(),
        Policy::for_channel(ChannelKind::Command).hold_down,
    );
    let sw = switches(&sim.log);
    assert_eq!(sw.len(), 1, "{sw:#?}");
    assert_eq!(sw[0].rule, Rule::Failover);
}

#[test]
fn direct_only_never_selects_relay() {
    let mut config = RoutingConfig::default();
    config.command = config.command.direct_only();
    let mut sim = Sim::new(config);
    sim.add(s(0), &relay());
    let d = sim.register(s(0), &command(), Need::node(ChannelKind::Command, "m1"));
    assert_eq!(d[0].rule, Rule::NoPath);
    assert_eq!(d[0].next, None);
    assert_eq!(d[0].assessment, Assessment::Degraded);
    assert!(
        d[0].to_string()
            .contains("no usable path to m1 (direct only)")
    );

    let d = sim.add(s(1), &quic());
    assert_eq!(d[0].rule, Rule::Initial);
    assert_eq!(d[0].next, Some(quic()));
    let d = sim.obs(s(2), &quic(), down("gone"));
    assert_eq!(d[0].rule, Rule::NoPath);
    assert_eq!(d[0].next, None);
    assert_eq!(
        sim.core.path_health(&relay(), sim.now),
        Some(PathHealth::Healthy)
    );
    sim.keepalive(s(2), s(30), s(1), &[&relay()]);
    assert!(sim.log.iter().all(|d| d.next != Some(relay())));
    let route = sim.core.route(&command()).unwrap();
    assert_eq!(route.path, None);
    assert_eq!(route.assessment, Assessment::Degraded);
}

#[test]
fn fallback_limit_degrades_exactly_at_the_deadline() {
    let mut config = RoutingConfig::default();
    config.health.stale_after = s(3600);
    config.command = config.command.with_max_on_fallback(s(30));
    let mut sim = on_quic(config);
    sim.obs(s(1), &quic(), down("reset"));
    let d = sim.obs(s(2), &relay(), Observation::DataAcked);
    assert_eq!(d[0].rule, Rule::TransitionComplete);
    assert_eq!(d[0].assessment, Assessment::Fallback);
    let deadline = sim.at(s(31));
    assert_eq!(sim.core.poll_timeout(), Some(deadline));
    sim.core.handle_timeout(deadline - ms(1));
    assert!(sim.drain().is_empty());
    sim.core.handle_timeout(deadline);
    let d = sim.drain();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].rule, Rule::Degraded);
    assert_eq!(d[0].at, deadline);
    assert_eq!(d[0].assessment, Assessment::Degraded);
    assert_eq!(
        d[0].cause,
        Cause::FallbackTooLong {
            for_: s(30),
            limit: s(30)
        }
    );
    let e = sim.core.explain(&command(), deadline).unwrap();
    assert_eq!(e.on_fallback_for, Some(s(30)));
}

#[test]
fn probe_misses_fail_a_path_unless_acks_arrive_between() {
    let mut config = RoutingConfig::default();
    config.health.misses_to_fail = 3;
    let mut sim = on_quic(config);
    for t in [100, 200] {
        sim.obs(ms(t), &quic(), Observation::ProbeMissed);
    }
    // Data-plane acks are liveness: the count starts again.
    sim.obs(ms(250), &quic(), Observation::DataAcked);
    for t in [300, 400] {
        sim.obs(ms(t), &quic(), Observation::ProbeMissed);
    }
    assert!(switches(&sim.log).is_empty());
    assert_eq!(
        sim.core.path_health(&quic(), sim.now),
        Some(PathHealth::Healthy)
    );
    let d = sim.obs(ms(500), &quic(), Observation::ProbeMissed);
    assert_eq!(d[0].rule, Rule::Failover);
    assert_eq!(d[0].cause, Cause::ProbesMissed(3));
    assert_eq!(
        d[0].to_string(),
        "command:hub/m1 quic@m1 -> relay@m1 (failover: 3 probes missed) \
         freeze until +10.0s, transitioning"
    );
}

#[test]
fn stale_current_path_is_handed_over() {
    let mut sim = on_quic(RoutingConfig::default());
    // Only the relay shows evidence; quic is stale at 5 s, handover after
    // 2 s more.
    sim.keepalive(s(0), s(10), ms(500), &[&relay()]);
    let sw = switches(&sim.log);
    assert_eq!(sw.len(), 1);
    assert_eq!(sw[0].rule, Rule::HandoverStale);
    assert_eq!(sim.since_t0(sw[0].at), s(7));
    assert_eq!(
        sw[0].cause,
        Cause::Stale {
            path: quic(),
            for_: s(2)
        }
    );
    assert_eq!(sw[0].next, Some(relay()));
}

#[test]
fn pressured_current_path_is_handed_over() {
    let mut sim = on_quic(RoutingConfig::default());
    sim.obs(
        s(1),
        &quic(),
        Observation::QueueDepth {
            frames: 300,
            bytes: 0,
        },
    );
    // Over budget from 1 s, pressured at 3 s, handover 5 s later at 8 s.
    sim.keepalive(s(0), s(12), ms(500), &[&relay(), &quic()]);
    let sw = switches(&sim.log);
    assert_eq!(sw.len(), 1);
    assert_eq!(sw[0].rule, Rule::HandoverPressured);
    assert_eq!(sim.since_t0(sw[0].at), s(8));
    assert_eq!(sw[0].next, Some(relay()));
}

#[test]
fn transitioning_until_the_new_path_acks() {
    let mut sim = Sim::new(RoutingConfig::default());
    sim.add(s(0), &quic());
    sim.add(s(0), &relay());
    let d = sim.register(s(0), &command(), Need::node(ChannelKind::Command, "m1"));
    assert_eq!(d[0].assessment, Assessment::Transitioning);
    // An ack on another path does not complete the transition.
    assert!(sim.obs(ms(10), &relay(), Observation::DataAcked).is_empty());
    let d = sim.obs(ms(20), &quic(), Observation::DataAcked);
    assert_eq!(d[0].rule, Rule::TransitionComplete);
    assert_eq!(d[0].assessment, Assessment::Nominal);
    assert_eq!(d[0].cause, Cause::DataAcked(quic()));

    let d = sim.obs(s(1), &quic(), down("reset"));
    assert_eq!(d[0].assessment, Assessment::Transitioning);
    let d = sim.obs(ms(1_100), &relay(), Observation::DataAcked);
    assert_eq!(d[0].rule, Rule::TransitionComplete);
    assert_eq!(d[0].assessment, Assessment::Fallback);
}

// ---------------------------------------------------------------------------
// Property test over random observation sequences.

const NODES: [&str; 2] = ["m1", "m2"];
const KINDS: [PathKind; 4] = [
    PathKind::WebrtcData,
    PathKind::Quic,
    PathKind::Relay,
    PathKind::WebrtcMedia,
];

fn all_paths() -> Vec<PathId> {
    NODES
        .iter()
        .flat_map(|n| KINDS.iter().map(move |k| PathId::new(*n, *k)))
        .collect()
}

fn stream_specs() -> Vec<(StreamId, Need)> {
    let fast = Policy::new(
        [PathKind::WebrtcData, PathKind::Quic, PathKind::Relay],
        s(3),
    )
    .with_hold_down(s(1))
    .with_max_on_fallback(s(5));
    vec![
        (
            "command:hub/m1".into(),
            Need::node(ChannelKind::Command, "m1"),
        ),
        ("sync:hub/m2".into(), Need::node(ChannelKind::Sync, "m2")),
        ("media:hub/m1".into(), Need::node(ChannelKind::Media, "m1")),
        (
            "event:hub/gpu".into(),
            Need::capability(ChannelKind::Event, "gpu"),
        ),
        (
            "command:hub/m2/direct".into(),
            Need::node(ChannelKind::Command, "m2").with_policy(fast.clone().direct_only()),
        ),
        (
            "presence:hub/m1/fast".into(),
            Need::node(ChannelKind::Presence, "m1").with_policy(fast),
        ),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Add(usize),
    Remove(usize),
    Observe(usize, u8),
    Step(u64),
    Caps(usize, bool),
    Register(usize),
    Unregister(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..8usize).prop_map(Op::Add),
        1 => (0..8usize).prop_map(Op::Remove),
        10 => (0..8usize, 0..10u8).prop_map(|(p, o)| Op::Observe(p, o)),
        6 => (0..4_000u64).prop_map(Op::Step),
        1 => (0..2usize, any::<bool>()).prop_map(|(n, b)| Op::Caps(n, b)),
        2 => (0..6usize).prop_map(Op::Register),
        1 => (0..6usize).prop_map(Op::Unregister),
    ]
}

fn observation(code: u8) -> Observation {
    match code {
        0 => Observation::Up,
        1 => down("random"),
        2 => Observation::ProbeAnswered { rtt: ms(15) },
        3 | 4 => Observation::ProbeMissed,
        5 => Observation::DataAcked,
        6 => Observation::QueueDepth {
            frames: 1_000,
            bytes: 0,
        },
        7 => Observation::QueueDepth {
            frames: 0,
            bytes: 0,
        },
        8 => Observation::Incident {
            what: "random".into(),
        },
        _ => Observation::Rtt(ms(40)),
    }
}

fn prop_config() -> RoutingConfig {
    let mut c = RoutingConfig::default();
    c.health.stale_after = s(2);
    c.health.pressured_for = s(1);
    c.command.freeze = s(3);
    c.command.hold_down = s(1);
    c.command.handover.on_stale = Some(ms(500));
    c.sync.max_on_fallback = Some(s(4));
    c
}

/// What the test knows about the streams, to check decisions against.
#[derive(Default)]
struct Checker {
    registered: BTreeMap<StreamId, Need>,
    current: BTreeMap<StreamId, Option<PathId>>,
    frozen_until: BTreeMap<StreamId, Instant>,
    all: Vec<Decision>,
}

impl Checker {
    fn drain(&mut self, core: &mut RoutingCore, now: Instant) -> Result<(), TestCaseError> {
        while let Some(d) = core.poll_decision() {
            prop_assert!(self.registered.contains_key(&d.stream));
            prop_assert!(!d.cause.to_string().is_empty());
            prop_assert!(!d.rule.as_str().is_empty());
            prop_assert_eq!(d.at, now);
            let prev = self.current.get(&d.stream).cloned().flatten();
            prop_assert_eq!(&d.previous, &prev, "decision continuity: {}", d);
            if d.rule.is_voluntary() {
                if let Some(until) = self.frozen_until.get(&d.stream) {
                    prop_assert!(d.at >= *until, "voluntary switch inside freeze: {}", d);
                }
            }
            if let Some(until) = d.freeze_until {
                self.frozen_until.insert(d.stream.clone(), until);
            }
            self.current.insert(d.stream.clone(), d.next.clone());
            self.all.push(d);
        }
        Ok(())
    }
}

/// Runs `ops` from `t0`, checking invariants after every step; returns all
/// decisions.
fn run(ops: &[Op], t0: Instant) -> Result<Vec<Decision>, TestCaseError> {
    let paths = all_paths();
    let specs = stream_specs();
    let config = prop_config();
    let mut core = RoutingCore::new(config.clone());
    let mut now = t0;
    let mut caps: BTreeMap<usize, bool> = BTreeMap::new();
    let mut ck = Checker::default();
    for op in ops {
        match op {
            Op::Add(p) => core.path_added(now, paths[*p].clone()),
            Op::Remove(p) => core.path_removed(now, &paths[*p], "random".into()),
            Op::Observe(p, o) => core.observe(now, &paths[*p], observation(*o)),
            Op::Step(dt) => {
                let target = now + ms(*dt);
                for _ in 0..MAX_STEPS {
                    match core.poll_timeout() {
                        Some(t) if t <= target => {
                            prop_assert!(t >= now, "deadline in the past");
                            now = t;
                            core.handle_timeout(now);
                            prop_assert!(core.poll_timeout().is_none_or(|n| n > now));
                            ck.drain(&mut core, now)?;
                        }
                        _ => break,
                    }
                }
                now = target;
            }
            Op::Caps(n, on) => {
                caps.insert(*n, *on);
                let list = if *on { vec!["gpu".to_owned()] } else { vec![] };
                core.set_capabilities(NodeId::new(NODES[*n]), list);
                core.handle_timeout(now);
            }
            Op::Register(i) => {
                let (sid, need) = specs[*i].clone();
                let res = core.register(now, sid.clone(), need.clone());
                prop_assert_eq!(res.is_ok(), !ck.registered.contains_key(&sid));
                ck.registered.insert(sid.clone(), need);
                ck.current.entry(sid).or_insert(None);
            }
            Op::Unregister(i) => {
                let sid = &specs[*i].0;
                core.unregister(sid);
                ck.registered.remove(sid);
                ck.current.remove(sid);
                ck.frozen_until.remove(sid);
            }
        }
        ck.drain(&mut core, now)?;
        for (sid, need) in &ck.registered {
            let route = core.route(sid).expect("registered");
            prop_assert_eq!(&route.path, ck.current.get(sid).unwrap_or(&None));
            let Some(p) = &route.path else {
                prop_assert_eq!(route.assessment, Assessment::Degraded);
                continue;
            };
            // The active path is one of the stream's candidates.
            let policy = need
                .policy
                .clone()
                .unwrap_or_else(|| config.policy(need.channel).clone());
            prop_assert!(policy.allows(p.kind), "{} not allowed for {}", p, sid);
            prop_assert!(core.paths().any(|q| q == p), "{} does not exist", p);
            prop_assert_ne!(core.path_health(p, now), Some(PathHealth::Failed));
            match &need.target {
                Target::Node(n) => prop_assert_eq!(&p.peer, n),
                _ => {
                    let i = NODES.iter().position(|n| *n == p.peer.as_str()).unwrap();
                    prop_assert!(caps.get(&i) == Some(&true), "{} does not offer gpu", p.peer);
                }
            }
        }
    }
    Ok(ck.all)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_observations_keep_the_invariants(ops in prop::collection::vec(op(), 1..300)) {
        let t0 = Instant::now();
        let first = run(&ops, t0)?;
        let second = run(&ops, t0)?;
        prop_assert_eq!(first, second, "same inputs, different decisions");
    }
}

//! Recovery under the library's default probe and health settings, in the
//! pure routing core with stepped time (nothing sleeps): the real `Prober`
//! state machine probes a modelled link (seeded delay, loss and cuts) and
//! its answers and misses are fed to the core as a transport would.
//!
//! Covers: a cut is failed over within 1 s (p99) under the defaults; 5 %
//! loss each way rarely fails a healthy path; a return never goes to a link
//! that is still cut; a premature failover is undone without a freeze
//! penalty; a 1.5 s down / 0.5 s up flap is detected and damped.

use std::time::{Duration, Instant};

use interlocking::routing::{
    Cause, Decision, Need, Observation, PathHealth, RoutingConfig, RoutingCore, Rule,
};
use interlocking::transports::probe::{ProbeConfig, Prober};
use interlocking::vocab::{ChannelKind, PathId, PathKind, StreamId};
use interlocking::wire::ProbeAck;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Steps of one simulation at most: a livelock fails instead of hanging.
const MAX_STEPS: usize = 5_000_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn quic() -> PathId {
    PathId::new("m1", PathKind::Quic)
}

fn relay() -> PathId {
    PathId::new("m1", PathKind::Relay)
}

fn stream() -> StreamId {
    StreamId::new("command:hub/m1")
}

/// The direct link: cut intervals, loss per leg and one-way delay.
struct Link {
    /// `[from, to)` offsets from t0 during which nothing gets through.
    cuts: Vec<(Duration, Duration)>,
    /// Probability that one leg (probe or answer) is lost.
    loss: f64,
    /// One-way delay: `base ± jitter`, drawn per leg.
    delay: (Duration, Duration),
}

impl Link {
    fn up(&self, at: Duration) -> bool {
        !self.cuts.iter().any(|(a, b)| at >= *a && at < *b)
    }
}

/// A core fed by a prober on the direct path; the relay answers every
/// 100 ms (it is not under test).
struct World {
    core: RoutingCore,
    prober: Prober,
    link: Link,
    rng: ChaCha8Rng,
    t0: Instant,
    now: Instant,
    /// Answers in flight: arrival instant and the answer.
    answers: Vec<(Instant, ProbeAck)>,
    next_relay: Instant,
    log: Vec<Decision>,
    /// Misses and answers observed on the direct path, with their instants.
    quic_obs: Vec<(Instant, bool)>,
}

impl World {
    fn new(config: RoutingConfig, probe: ProbeConfig, link: Link, seed: u64) -> Self {
        let t0 = Instant::now();
        let mut core = RoutingCore::new(config);
        core.path_added(t0, quic());
        core.path_added(t0, relay());
        core.register(t0, stream(), Need::node(ChannelKind::Command, "m1"))
            .unwrap();
        core.observe(t0, &quic(), Observation::DataAcked);
        let mut w = Self {
            core,
            prober: Prober::new(probe, t0),
            link,
            rng: ChaCha8Rng::seed_from_u64(seed),
            t0,
            now: t0,
            answers: Vec::new(),
            next_relay: t0,
            log: Vec::new(),
            quic_obs: Vec::new(),
        };
        w.drain();
        assert_eq!(w.path(), Some(quic()));
        w
    }

    fn drain(&mut self) {
        while let Some(d) = self.core.poll_decision() {
            self.log.push(d);
        }
    }

    fn path(&self) -> Option<PathId> {
        self.core.route(&stream()).and_then(|r| r.path.clone())
    }

    fn offset(&self, t: Instant) -> Duration {
        t - self.t0
    }

    fn leg(&mut self) -> Duration {
        let (base, jitter) = self.link.delay;
        let j = jitter.as_secs_f64() * (2.0 * self.rng.random::<f64>() - 1.0);
        Duration::from_secs_f64((base.as_secs_f64() + j).max(0.0))
    }

    fn lost(&mut self) -> bool {
        self.rng.random::<f64>() < self.link.loss
    }

    /// Runs to `t0 + until`, event by event.
    fn run_to(&mut self, until: Duration) {
        let end = self.t0 + until;
        for _ in 0..MAX_STEPS {
            let next = [
                Some(self.prober.next_deadline()),
                self.answers.iter().map(|(t, _)| *t).min(),
                self.core.poll_timeout(),
                Some(self.next_relay),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("the prober always has a deadline");
            if next > end {
                self.now = end;
                return;
            }
            self.now = self.now.max(next);
            let now = self.now;
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
            }
            // Answers that arrived, before misses declared at the same instant.
            let (due, later): (Vec<_>, Vec<_>) =
                self.answers.drain(..).partition(|(t, _)| *t <= now);
            self.answers = later;
            for (_, ack) in due {
                if let Some(rtt) = self.prober.on_ack(now, &ack) {
                    self.core
                        .observe(now, &quic(), Observation::ProbeAnswered { rtt });
                    self.quic_obs.push((now, true));
                }
            }
            let actions = self.prober.poll(now);
            for _ in 0..actions.missed {
                self.core.observe(now, &quic(), Observation::ProbeMissed);
                self.quic_obs.push((now, false));
            }
            if let Some(p) = actions.send {
                let out = self.leg();
                let back = self.leg();
                let sent = self.offset(now);
                let through =
                    self.link.up(sent) && self.link.up(sent + out) && !self.lost() && !self.lost();
                if through {
                    let ack = ProbeAck {
                        nonce: p.nonce,
                        sent_at_us: p.sent_at_us,
                    };
                    self.answers.push((now + out + back, ack));
                }
            }
            if self.next_relay <= now {
                self.core
                    .observe(now, &relay(), Observation::ProbeAnswered { rtt: ms(30) });
                self.next_relay = now + ms(100);
            }
            self.drain();
        }
        panic!("livelock: more than {MAX_STEPS} steps");
    }

    fn switches(&self) -> Vec<&Decision> {
        self.log.iter().filter(|d| d.is_switch()).collect()
    }
}

/// The link: 50 ± 20 ms one way.
fn wan(cuts: Vec<(Duration, Duration)>, loss: f64) -> Link {
    Link {
        cuts,
        loss,
        delay: (ms(50), ms(20)),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn defaults_fail_a_cut_path_over_within_a_second() {
    let seed = 21;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut samples = Vec::new();
    for i in 0..200u64 {
        // A random phase of the cut against the probe schedule.
        let cut = ms(2_000 + rng.random_range(0..1_000));
        let link = wan(vec![(cut, cut + ms(3_000))], 0.0);
        let mut w = World::new(
            RoutingConfig::default(),
            ProbeConfig::default(),
            link,
            seed ^ i,
        );
        w.run_to(cut + ms(3_000));
        let fo = w
            .log
            .iter()
            .find(|d| d.rule == Rule::Failover)
            .unwrap_or_else(|| panic!("seed {seed}/{i}: no failover within a 3 s cut"));
        assert_eq!(fo.next, Some(relay()), "seed {seed}/{i}");
        samples.push(w.offset(fo.at) - cut);
    }
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    eprintln!("failover after a cut, defaults, 200 cuts: p50 {p50:?} p99 {p99:?}");
    assert!(p99 <= ms(1_000), "seed {seed}: p99 {p99:?} (p50 {p50:?})");
}

#[test]
fn defaults_rarely_fail_a_healthy_path_under_five_percent_loss() {
    let seed = 5;
    let hour = Duration::from_secs(3_600);
    let mut w = World::new(
        RoutingConfig::default(),
        ProbeConfig::default(),
        wan(Vec::new(), 0.05),
        seed,
    );
    w.run_to(hour);
    let misses = w.quic_obs.iter().filter(|(_, ok)| !ok).count();
    let failovers = w.log.iter().filter(|d| d.rule == Rule::Failover).count();
    eprintln!("an hour at 5 % loss each way: {misses} probes missed, {failovers} failovers");
    // About 9.75 % of probes are lost; a failure needs six in a row
    // (0.0975^6 per probe, 36 000 probes: 0.03 expected).
    assert!(
        misses > 2_000,
        "seed {seed}: the loss model lost only {misses}"
    );
    assert!(
        failovers <= 2,
        "seed {seed}: {failovers} false failovers in an hour"
    );
    assert_eq!(w.path(), Some(quic()), "seed {seed}");
}

#[test]
fn a_return_never_goes_to_a_link_that_is_still_cut() {
    // First cut at 1 s: failover, frozen for 10 s. The second cut starts
    // 600 ms before the freeze ends: the path is not yet declared failed
    // when the return falls due, but its probes are overdue.
    let seed = 6;
    let mut probe_world = World::new(
        RoutingConfig::default(),
        ProbeConfig::default(),
        wan(vec![(ms(1_000), ms(2_000))], 0.0),
        seed,
    );
    probe_world.run_to(ms(3_000));
    let fo = probe_world.switches()[0].clone();
    assert_eq!(fo.rule, Rule::Failover, "seed {seed}");
    let freeze_end = probe_world.offset(fo.freeze_until.unwrap());
    let second = (freeze_end - ms(600), freeze_end + ms(3_000));

    let mut w = World::new(
        RoutingConfig::default(),
        ProbeConfig::default(),
        wan(vec![(ms(1_000), ms(2_000)), second], 0.0),
        seed,
    );
    w.run_to(second.1 + ms(6_000));
    let sw: Vec<Decision> = w.switches().into_iter().cloned().collect();
    for d in &sw {
        if d.next == Some(quic()) {
            let at = w.offset(d.at);
            assert!(
                w.link.up(at),
                "seed {seed}: returned to quic at {at:?}, inside a cut: {sw:#?}"
            );
            // The last thing quic reported before the return was an answer.
            let last = w.quic_obs.iter().rev().find(|(t, _)| *t <= d.at);
            assert!(last.is_some_and(|(_, ok)| *ok), "seed {seed}: {d}");
        }
    }
    // One failover for the first cut, and the return only after the
    // second cut ended (hold-down from the first answers after it).
    assert_eq!(sw.len(), 2, "seed {seed}: {sw:#?}");
    assert_eq!(sw[1].rule, Rule::ReturnToPreferred);
    let back = w.offset(sw[1].at);
    assert!(
        back >= second.1 + ms(3_000),
        "seed {seed}: back at {back:?}"
    );
    assert!(
        back <= second.1 + ms(3_500),
        "seed {seed}: back at {back:?}"
    );
}

/// quic and relay, stream on quic, transition done; probes answered by hand.
fn on_quic() -> (RoutingCore, Instant) {
    let t0 = Instant::now();
    let mut core = RoutingCore::new(RoutingConfig::default());
    core.path_added(t0, quic());
    core.path_added(t0, relay());
    core.register(t0, stream(), Need::node(ChannelKind::Command, "m1"))
        .unwrap();
    core.observe(t0, &quic(), Observation::DataAcked);
    while core.poll_decision().is_some() {}
    (core, t0)
}

fn drain(core: &mut RoutingCore) -> Vec<Decision> {
    std::iter::from_fn(|| core.poll_decision()).collect()
}

fn miss_out(core: &mut RoutingCore, at: Instant) -> Vec<Decision> {
    let n = core.config().health.misses_to_fail;
    for _ in 0..n {
        core.observe(at, &quic(), Observation::ProbeMissed);
    }
    drain(core)
}

fn answer(core: &mut RoutingCore, at: Instant) -> Vec<Decision> {
    core.observe(at, &quic(), Observation::ProbeAnswered { rtt: ms(20) });
    drain(core)
}

#[test]
fn a_failover_decided_after_the_path_healed_is_undone_without_penalty() {
    let (mut core, t0) = on_quic();
    let d = miss_out(&mut core, t0 + ms(1_000));
    assert_eq!(d[0].rule, Rule::Failover);
    assert_eq!(d[0].freeze_until, Some(t0 + ms(11_000)));
    // An answer that was already on its way: the failover was premature.
    let d = answer(&mut core, t0 + ms(1_050));
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].rule, Rule::FailoverUndone);
    assert_eq!(d[0].previous, Some(relay()));
    assert_eq!(d[0].next, Some(quic()));
    assert_eq!(
        d[0].freeze_until, None,
        "the failover's freeze is withdrawn"
    );
    assert_eq!(
        d[0].cause,
        Cause::HealedAfter {
            path: quic(),
            after: ms(50)
        }
    );
    let text = core.explain(&stream(), t0 + ms(1_100)).unwrap().to_string();
    assert!(
        text.contains("failover-undone: quic@m1 answered 50ms after the failover"),
        "{text}"
    );
    // No flap penalty: a real failover 29 s later is frozen for exactly the
    // base 10 s (with the first failover still counted it would be ~16 s).
    for k in 1..=280 {
        answer(&mut core, t0 + ms(1_000 + 100 * k));
    }
    let d = miss_out(&mut core, t0 + ms(30_000));
    assert_eq!(d[0].rule, Rule::Failover);
    assert_eq!(d[0].freeze_until, Some(t0 + ms(40_000)));
    // An answer after the grace is not a premature failover: stay put.
    let d = answer(&mut core, t0 + ms(30_400));
    assert!(d.iter().all(|d| !d.is_switch()), "{d:#?}");
    assert_eq!(core.route(&stream()).unwrap().path, Some(relay()));
}

#[test]
fn a_second_premature_failover_within_a_freeze_is_not_undone() {
    let (mut core, t0) = on_quic();
    miss_out(&mut core, t0 + ms(1_000));
    assert_eq!(
        answer(&mut core, t0 + ms(1_100))[0].rule,
        Rule::FailoverUndone
    );
    for k in 1..=5 {
        answer(&mut core, t0 + ms(1_100 + 100 * k));
    }
    // The same again 2 s later: the link is flapping, not slow to answer.
    miss_out(&mut core, t0 + ms(3_000));
    let d = answer(&mut core, t0 + ms(3_100));
    assert!(d.iter().all(|d| !d.is_switch()), "{d:#?}");
    assert_eq!(core.route(&stream()).unwrap().path, Some(relay()));
    assert_eq!(
        core.path_health(&quic(), t0 + ms(3_100)),
        Some(PathHealth::Healthy)
    );
}

/// 1.5 s down, 0.5 s up, from 1 s to `end`.
fn flap_cuts(end: Duration) -> Vec<(Duration, Duration)> {
    let mut cuts = Vec::new();
    let mut t = ms(1_000);
    while t < end {
        cuts.push((t, t + ms(1_500)));
        t += ms(2_000);
    }
    cuts
}

#[test]
fn a_slow_flap_is_detected_and_damped_under_the_defaults() {
    let seed = 7;
    let end = Duration::from_secs(120);
    let cuts = flap_cuts(end);
    let mut w = World::new(
        RoutingConfig::default(),
        ProbeConfig::default(),
        wan(cuts.clone(), 0.0),
        seed,
    );
    w.run_to(end);
    let sw = w.switches();
    // Detected: each 1.5 s down is shorter than the ~2.2 s the old defaults
    // (500 ms probes, 1 s timeout, 3 misses) needed to fail a path; under
    // the defaults the first one is failed over within a second.
    let first = sw
        .first()
        .unwrap_or_else(|| panic!("seed {seed}: flap never detected"));
    assert_eq!(first.rule, Rule::Failover);
    assert!(w.offset(first.at) <= ms(2_000), "seed {seed}: {first}");
    // Damped: 0.5 s up never passes the 3 s hold-down, so the stream stays
    // on the relay: one switch for 60 flaps.
    assert_eq!(sw.len(), 1, "seed {seed}: {sw:#?}");

    // Without hold-down only the damping holds it: returns grow further
    // apart and no freeze window holds more than one (failover) switch.
    let mut config = RoutingConfig::default();
    config.command.hold_down = Duration::ZERO;
    let mut w = World::new(config, ProbeConfig::default(), wan(cuts, 0.0), seed);
    w.run_to(end);
    let sw = w.switches();
    let returns: Vec<Instant> = sw
        .iter()
        .filter(|d| d.rule.is_voluntary())
        .map(|d| d.at)
        .collect();
    assert!(returns.len() >= 2, "seed {seed}: {sw:#?}");
    let gaps: Vec<Duration> = returns.windows(2).map(|p| p[1] - p[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "seed {seed}: gaps {gaps:?}"
    );
    for (i, d) in sw.iter().enumerate() {
        let Some(until) = d.freeze_until.filter(|u| *u > d.at) else {
            continue;
        };
        let inside: Vec<_> = sw[i + 1..].iter().filter(|e| e.at < until).collect();
        assert!(inside.len() <= 1, "seed {seed}: {inside:#?}");
        assert!(inside.iter().all(|e| e.rule == Rule::Failover));
    }
    // The policy's own bound: a failover and a return per effective freeze
    // (at least the 10 s base), plus the first failover.
    let bound = 2 * (end.as_secs() / 10) as usize + 1;
    assert!(sw.len() <= bound, "seed {seed}: {} switches", sw.len());
    // Every return went to quic while it was up.
    for d in sw.iter().filter(|d| d.rule.is_voluntary()) {
        assert!(w.link.up(w.offset(d.at)), "seed {seed}: {d}");
    }
}

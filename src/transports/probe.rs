//! Liveness probing as a pure state machine, shared by every transport.
//!
//! Owns when to send a probe, which probes are outstanding and when one
//! counts as missed. It performs no I/O and reads no clock: the transport
//! feeds `now` and sends what [`Prober::poll`] asks for. Counting misses into
//! "failed" is the routing authority's job, not this module's.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::{Probe, ProbeAck};

/// How often to probe and how long to wait for an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Time between probes.
    pub interval: Duration,
    /// How long a probe may stay unanswered before it counts as missed.
    pub timeout: Duration,
}

/// Default time between probes (`docs/routing.md`, "Detection defaults").
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Default time a probe may stay unanswered before it counts as missed.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(250);

impl Default for ProbeConfig {
    /// 100 ms between probes, 250 ms to answer. With the routing core's
    /// default of 5 misses to fail, a cut path is declared failed 0.65 to
    /// 0.75 s after the cut; the reasoning and cost are in
    /// `docs/routing.md`.
    fn default() -> Self {
        Self {
            interval: DEFAULT_PROBE_INTERVAL,
            timeout: DEFAULT_PROBE_TIMEOUT,
        }
    }
}

/// What the transport must do after [`Prober::poll`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeActions {
    /// A probe to send now, if one is due.
    pub send: Option<Probe>,
    /// How many outstanding probes have just been declared missed.
    pub missed: u32,
}

/// Per-path probe schedule and outstanding probes.
#[derive(Debug)]
pub struct Prober {
    config: ProbeConfig,
    /// The origin of `sent_at_us`; only this prober interprets it.
    epoch: Instant,
    next_nonce: u64,
    next_send: Instant,
    /// Probes sent and not yet answered nor missed, oldest first: nonce,
    /// when sent, and the instant its timeout runs from (the send time, or
    /// the wake-up after a stall of this process).
    outstanding: VecDeque<(u64, Instant, Instant)>,
    /// The deadline [`Prober::next_deadline`] last asked to be polled at.
    due: Instant,
}

/// At most this many probes are remembered as outstanding; older ones are
/// declared missed. Bounds memory when a path is silent.
const MAX_OUTSTANDING: usize = 64;

impl Prober {
    /// A prober whose first probe is due at `now`.
    pub fn new(config: ProbeConfig, now: Instant) -> Self {
        Self {
            config,
            epoch: now,
            next_nonce: 1,
            next_send: now,
            outstanding: VecDeque::new(),
            due: now,
        }
    }

    /// The configuration.
    pub fn config(&self) -> ProbeConfig {
        self.config
    }

    /// Advances to `now`: declares overdue probes missed and emits the next
    /// probe if it is due.
    ///
    /// A poll more than one timeout after the deadline it was due at means
    /// this process stalled (CPU starvation, a paused VM), not the path:
    /// answers may be sitting unread. The outstanding probes then get a
    /// full timeout from the wake-up, so they are judged on time the process
    /// was actually running.
    pub fn poll(&mut self, now: Instant) -> ProbeActions {
        let mut actions = ProbeActions::default();
        let stall = now.saturating_duration_since(self.due);
        if stall > self.config.timeout {
            for (_, _, from) in &mut self.outstanding {
                *from = now;
            }
        }
        while let Some(&(_, _, sent)) = self.outstanding.front() {
            if now.saturating_duration_since(sent) >= self.config.timeout
                || self.outstanding.len() > MAX_OUTSTANDING
            {
                self.outstanding.pop_front();
                actions.missed += 1;
            } else {
                break;
            }
        }
        if now >= self.next_send {
            let nonce = self.next_nonce;
            self.next_nonce += 1;
            self.outstanding.push_back((nonce, now, now));
            self.next_send = now + self.config.interval;
            let sent_at_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
            actions.send = Some(Probe { nonce, sent_at_us });
        }
        self.due = self.next_deadline();
        actions
    }

    /// Records an answer; returns the round trip if it answers an
    /// outstanding probe (late or unknown answers return `None`). The round
    /// trip runs from the probe's actual send time.
    pub fn on_ack(&mut self, now: Instant, ack: &ProbeAck) -> Option<Duration> {
        let pos = self
            .outstanding
            .iter()
            .position(|(n, _, _)| *n == ack.nonce)?;
        let (_, sent, _) = self.outstanding.remove(pos)?;
        Some(now.saturating_duration_since(sent))
    }

    /// The next instant at which [`Prober::poll`] has something to do.
    pub fn next_deadline(&self) -> Instant {
        let miss = self
            .outstanding
            .front()
            .map(|(_, _, from)| *from + self.config.timeout);
        match miss {
            Some(m) if m < self.next_send => m,
            _ => self.next_send,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ProbeConfig {
        ProbeConfig {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(250),
        }
    }

    #[test]
    fn first_probe_is_due_at_once_then_every_interval() {
        let t0 = Instant::now();
        let mut p = Prober::new(cfg(), t0);
        let a = p.poll(t0);
        assert_eq!(a.send.map(|p| p.nonce), Some(1));
        assert_eq!(p.next_deadline(), t0 + Duration::from_millis(100));
        assert_eq!(
            p.poll(t0 + Duration::from_millis(50)),
            ProbeActions::default()
        );
        let b = p.poll(t0 + Duration::from_millis(100));
        assert_eq!(b.send.map(|p| p.nonce), Some(2));
    }

    #[test]
    fn answered_probe_yields_rtt_and_is_not_missed() {
        let t0 = Instant::now();
        let mut p = Prober::new(cfg(), t0);
        let probe = p.poll(t0).send.unwrap();
        let ack = ProbeAck {
            nonce: probe.nonce,
            sent_at_us: probe.sent_at_us,
        };
        assert_eq!(
            p.on_ack(t0 + Duration::from_millis(7), &ack),
            Some(Duration::from_millis(7))
        );
        assert_eq!(p.on_ack(t0 + Duration::from_millis(8), &ack), None);
        assert_eq!(p.poll(t0 + Duration::from_millis(300)).missed, 0);
    }

    #[test]
    fn unanswered_probe_is_missed_after_timeout() {
        let t0 = Instant::now();
        let mut p = Prober::new(cfg(), t0);
        p.poll(t0);
        assert_eq!(p.poll(t0 + Duration::from_millis(249)).missed, 0);
        assert_eq!(p.poll(t0 + Duration::from_millis(250)).missed, 1);
    }

    #[test]
    fn a_stall_of_the_process_is_not_a_missed_probe() {
        let t0 = Instant::now();
        let mut p = Prober::new(cfg(), t0);
        p.poll(t0);
        // Polled on time: missed after the timeout.
        let mut q = Prober::new(cfg(), t0);
        q.poll(t0);
        q.poll(t0 + Duration::from_millis(100));
        q.poll(t0 + Duration::from_millis(200));
        assert_eq!(q.poll(t0 + Duration::from_millis(250)).missed, 1);
        // Woken 900 ms late: nothing is missed yet, the probes get their
        // timeout counted from the wake-up.
        let late = t0 + Duration::from_millis(1_000);
        let a = p.poll(late);
        assert_eq!(a.missed, 0);
        assert!(a.send.is_some());
        assert_eq!(p.poll(late + Duration::from_millis(249)).missed, 0);
        // Both the probe from before the stall and the one sent at the
        // wake-up are missed one timeout after the wake-up.
        assert_eq!(p.poll(late + Duration::from_millis(250)).missed, 2);
    }

    #[test]
    fn deadline_is_the_earlier_of_next_send_and_next_miss() {
        let t0 = Instant::now();
        let mut p = Prober::new(
            ProbeConfig {
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(200),
            },
            t0,
        );
        p.poll(t0);
        assert_eq!(p.next_deadline(), t0 + Duration::from_millis(200));
    }
}

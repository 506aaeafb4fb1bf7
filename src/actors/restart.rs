//! The restart policy of a supervisor, as a pure type stepped by `now`.
//!
//! Owns "restart after how long, or give up and escalate?" — OTP's restart
//! intensity (at most N restarts within a period) with exponential backoff
//! between restarts. It reads no clock and spawns nothing; the supervisor
//! actor feeds it child exits and acts on its answers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a supervisor restarts a failing child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// At most this many restarts of one child within `within`...
    pub max_restarts: u32,
    /// ...before the supervisor escalates to its own parent.
    pub within: Duration,
    /// Delay before the first restart in a burst.
    pub backoff_initial: Duration,
    /// Upper bound of the doubling backoff.
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    /// Five restarts within 30 s, backoff 50 ms doubling to 5 s.
    fn default() -> Self {
        Self {
            max_restarts: 5,
            within: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// What to do about a child that just exited abnormally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart it after `after`; this is restart number `attempt` in the
    /// current window.
    Restart {
        /// Backoff before the restart.
        after: Duration,
        /// 1-based count of restarts within the window, this one included.
        attempt: u32,
    },
    /// The restart intensity is exceeded: stop restarting and escalate.
    Escalate {
        /// Restarts already made within the window.
        restarts: u32,
        /// The window.
        within: Duration,
    },
}

/// Restart history of one child.
#[derive(Clone, Debug)]
pub struct RestartTracker {
    policy: RestartPolicy,
    /// Times of restarts inside the current window, oldest first.
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    /// A tracker with no history.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// Records an abnormal exit at `now` and decides.
    pub fn on_exit(&mut self, now: Instant) -> RestartDecision {
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) >= self.policy.within {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        let done = self.recent.len() as u32;
        if done >= self.policy.max_restarts {
            return RestartDecision::Escalate {
                restarts: done,
                within: self.policy.within,
            };
        }
        self.recent.push_back(now);
        let shift = done.min(30);
        let after = self
            .policy
            .backoff_initial
            .saturating_mul(1u32 << shift)
            .min(self.policy.backoff_max);
        RestartDecision::Restart {
            after,
            attempt: done + 1,
        }
    }

    /// Restarts counted in the window ending at `now`.
    pub fn restarts_within(&self, now: Instant) -> u32 {
        self.recent
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < self.policy.within)
            .count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 3,
            within: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(300),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(policy());
        let afters: Vec<_> = (0..3)
            .map(|i| match t.on_exit(t0 + Duration::from_secs(i)) {
                RestartDecision::Restart { after, .. } => after,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            afters,
            vec![
                Duration::from_millis(100),
                Duration::from_millis(200),
                Duration::from_millis(300)
            ]
        );
    }

    #[test]
    fn too_many_restarts_in_the_window_escalate() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(policy());
        for i in 0..3 {
            assert!(matches!(
                t.on_exit(t0 + Duration::from_millis(i)),
                RestartDecision::Restart { .. }
            ));
        }
        assert_eq!(
            t.on_exit(t0 + Duration::from_secs(1)),
            RestartDecision::Escalate {
                restarts: 3,
                within: Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn old_restarts_leave_the_window_and_backoff_resets() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(policy());
        for i in 0..3 {
            t.on_exit(t0 + Duration::from_millis(i));
        }
        assert_eq!(t.restarts_within(t0 + Duration::from_secs(5)), 3);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(t.restarts_within(later), 0);
        assert_eq!(
            t.on_exit(later),
            RestartDecision::Restart {
                after: Duration::from_millis(100),
                attempt: 1
            }
        );
    }
}

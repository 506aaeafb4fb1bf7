//! A budget for the warnings outside peers can cause: every refusal is
//! counted (`QuicCounters`), but only so many per second are also logged,
//! so a flood of bad connections or streams cannot flood the log (and the
//! disk and CPU behind it). Pure: the time is passed in.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// Warnings logged per window at most; the rest are summed up in the next
/// one logged.
pub(super) const PER_SECOND: u32 = 20;

/// Admits at most `limit` warnings per second.
pub(super) struct LogBudget {
    limit: u32,
    state: Mutex<Window>,
}

struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// What a caller may log now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Log it; `suppressed` warnings were dropped before it.
    Log { suppressed: u64 },
    /// Do not log it (it is counted for the next one logged).
    Quiet,
}

impl LogBudget {
    pub(super) fn new(limit: u32) -> Self {
        Self {
            limit,
            state: Mutex::new(Window {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a warning at `now` may be logged.
    pub(super) fn admit(&self, now: Instant) -> Verdict {
        let mut w = lock(&self.state);
        if w.start
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged < self.limit {
            w.logged += 1;
            Verdict::Log {
                suppressed: std::mem::take(&mut w.suppressed),
            }
        } else {
            w.suppressed += 1;
            Verdict::Quiet
        }
    }
}

/// `tracing::warn!` through `$budget`: the event gets a `suppressed`
/// field with the number of warnings left out before it.
macro_rules! budgeted_warn {
    ($budget:expr, $($arg:tt)+) => {
        if let $crate::transports::quic::log_budget::Verdict::Log { suppressed } =
            $budget.admit(std::time::Instant::now())
        {
            tracing::warn!(suppressed, $($arg)+);
        }
    };
}
pub(super) use budgeted_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_limit_per_second_and_the_rest_summed_up() {
        let b = LogBudget::new(2);
        let t = Instant::now();
        assert_eq!(b.admit(t), Verdict::Log { suppressed: 0 });
        assert_eq!(b.admit(t), Verdict::Log { suppressed: 0 });
        for _ in 0..5 {
            assert_eq!(b.admit(t + Duration::from_millis(500)), Verdict::Quiet);
        }
        let next = t + Duration::from_secs(1);
        assert_eq!(b.admit(next), Verdict::Log { suppressed: 5 });
        assert_eq!(b.admit(next), Verdict::Log { suppressed: 0 });
        assert_eq!(b.admit(next), Verdict::Quiet);
    }
}

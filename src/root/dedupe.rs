//! Root-side dedupe of relayed class-A frames: a bounded table keyed by
//! `(stream_id, message_id)` with a time to live.
//!
//! Owns only "have I forwarded this key recently". Pure: the caller passes
//! `now`, so retention is testable without sleeping. Retention (also in
//! `docs/root.md` §5): a key is remembered for `ttl` after it was first
//! forwarded, and at most `capacity` keys are kept; when full, the oldest
//! key is forgotten first. A retry arriving after its key was forgotten is
//! forwarded again — the receiver's own dedupe (channels) remains the
//! authority; this table only saves the second trip through the root.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::vocab::StreamId;

/// The dedupe key of a relayed data frame.
pub type DedupeKey = (StreamId, u64);

/// A bounded, time-limited set of recently forwarded keys.
#[derive(Debug)]
pub struct DedupeTable {
    capacity: usize,
    ttl: Duration,
    seen: HashMap<DedupeKey, Instant>,
    order: VecDeque<(DedupeKey, Instant)>,
}

impl DedupeTable {
    /// A table remembering at most `capacity` keys for `ttl` each.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `key` at `now`. Returns `true` the first time (forward it),
    /// `false` for a duplicate still within retention (drop it).
    pub fn first_seen(&mut self, key: DedupeKey, now: Instant) -> bool {
        self.expire(now);
        if self.seen.contains_key(&key) {
            return false;
        }
        while self.order.len() >= self.capacity {
            if let Some((old, _)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key.clone(), now);
        self.order.push_back((key, now));
        true
    }

    /// Forgets keys older than the TTL.
    fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            if let Some((key, _)) = self.order.pop_front() {
                self.seen.remove(&key);
            }
        }
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str, id: u64) -> DedupeKey {
        (StreamId::new(s), id)
    }

    #[test]
    fn duplicates_within_ttl_are_dropped_then_forgotten() {
        let t0 = Instant::now();
        let mut t = DedupeTable::new(10, Duration::from_secs(5));
        assert!(t.first_seen(key("s", 1), t0));
        assert!(!t.first_seen(key("s", 1), t0 + Duration::from_secs(4)));
        assert!(t.first_seen(key("s", 2), t0));
        assert!(t.first_seen(key("other", 1), t0));
        assert!(t.first_seen(key("s", 1), t0 + Duration::from_secs(5)));
    }

    #[test]
    fn capacity_bounds_the_table_oldest_first() {
        let t0 = Instant::now();
        let mut t = DedupeTable::new(3, Duration::from_secs(60));
        for i in 0..5 {
            assert!(t.first_seen(key("s", i), t0));
        }
        assert_eq!(t.len(), 3);
        assert!(t.first_seen(key("s", 0), t0), "oldest was evicted");
        assert!(!t.first_seen(key("s", 4), t0), "newest is kept");
    }
}

//! The owner's bounded replay window ([`ReplayWindow`]): the newest log
//! entries, bounded by count, bytes and age ([`WindowConfig`]).
//!
//! Owns the bounds and nothing else: which entries to evict is decided
//! here, what to do before an eviction (take a snapshot so that no entry
//! after the snapshot is ever evicted) is the owner core's job.

use std::collections::VecDeque;

use crate::store::sync_store::SyncLogEntry;

/// Bounds of the replay window; an entry leaves when any bound is passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WindowConfig {
    /// At most this many entries. Default 10 000.
    pub max_entries: usize,
    /// At most this many update bytes in total. Default 8 MiB.
    pub max_bytes: usize,
    /// Entries older than this many ms leave. Default 10 minutes.
    pub max_age_ms: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 8 << 20,
            max_age_ms: 10 * 60 * 1000,
        }
    }
}

impl WindowConfig {
    /// Sets [`WindowConfig::max_entries`] (at least 1).
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// Sets [`WindowConfig::max_bytes`].
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// Sets [`WindowConfig::max_age_ms`].
    pub fn max_age_ms(mut self, ms: u64) -> Self {
        self.max_age_ms = ms;
        self
    }
}

/// The newest entries of an owner's log, oldest first.
#[derive(Clone, Debug, Default)]
pub struct ReplayWindow {
    config: WindowConfig,
    entries: VecDeque<SyncLogEntry>,
    bytes: usize,
}

impl ReplayWindow {
    /// An empty window.
    pub fn new(config: WindowConfig) -> Self {
        Self {
            config,
            entries: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Appends the next entry (its `seq` must follow the last one's).
    pub fn push(&mut self, entry: SyncLogEntry) {
        debug_assert!(self.entries.back().is_none_or(|l| l.seq + 1 == entry.seq));
        self.bytes += entry.bytes.len();
        self.entries.push_back(entry);
    }

    /// The oldest entry if a bound is passed at `now_ms`.
    pub fn over_bounds(&self, now_ms: u64) -> Option<&SyncLogEntry> {
        let front = self.entries.front()?;
        let over = self.entries.len() > self.config.max_entries
            || self.bytes > self.config.max_bytes
            || now_ms.saturating_sub(front.accepted_at_ms) > self.config.max_age_ms;
        over.then_some(front)
    }

    /// Removes the oldest entry.
    pub fn pop(&mut self) -> Option<SyncLogEntry> {
        let e = self.entries.pop_front()?;
        self.bytes -= e.bytes.len();
        Some(e)
    }

    /// The oldest retained sequence number, if any.
    pub fn first_seq(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// Whether every entry after `seq` up to `head` is retained.
    pub fn covers_after(&self, seq: u64, head: u64) -> bool {
        seq >= head || self.first_seq().is_some_and(|f| f <= seq + 1)
    }

    /// Up to `max` entries after `seq`, in order.
    pub fn after(&self, seq: u64, max: usize) -> impl Iterator<Item = &SyncLogEntry> {
        let skip = self
            .first_seq()
            .map_or(0, |f| (seq + 1).saturating_sub(f) as usize);
        self.entries.iter().skip(skip).take(max)
    }

    /// How many entries are retained.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is retained.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total update bytes retained.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, len: usize, at: u64) -> SyncLogEntry {
        SyncLogEntry {
            seq,
            publisher: "p".into(),
            update_id: seq,
            accepted_at_ms: at,
            bytes: vec![0; len],
        }
    }

    #[test]
    fn each_bound_evicts_the_oldest() {
        let mut w = ReplayWindow::new(WindowConfig::default().max_entries(2));
        for s in 1..=3 {
            w.push(entry(s, 1, 0));
        }
        assert_eq!(w.over_bounds(0).map(|e| e.seq), Some(1));
        w.pop();
        assert_eq!(w.over_bounds(0), None);

        let mut w = ReplayWindow::new(WindowConfig::default().max_bytes(10));
        w.push(entry(1, 6, 0));
        assert_eq!(w.over_bounds(0), None);
        w.push(entry(2, 6, 0));
        assert_eq!(w.over_bounds(0).map(|e| e.seq), Some(1));

        let mut w = ReplayWindow::new(WindowConfig::default().max_age_ms(100));
        w.push(entry(1, 1, 1_000));
        assert_eq!(w.over_bounds(1_100), None);
        assert_eq!(w.over_bounds(1_101).map(|e| e.seq), Some(1));
    }

    #[test]
    fn after_and_coverage() {
        let mut w = ReplayWindow::new(WindowConfig::default());
        for s in 5..=9 {
            w.push(entry(s, 1, 0));
        }
        let got: Vec<u64> = w.after(6, 2).map(|e| e.seq).collect();
        assert_eq!(got, vec![7, 8]);
        assert!(w.covers_after(4, 9));
        assert!(!w.covers_after(3, 9));
        assert!(w.covers_after(9, 9));
        assert_eq!(w.after(9, 10).count(), 0);
    }
}

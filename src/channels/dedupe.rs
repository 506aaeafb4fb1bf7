//! [`Dedupe`]: the receiver's memory of applied messages and their replies.
//!
//! Owns, per stream, `message_id → (reply, recorded at)` with bounded
//! retention, so a duplicate gets the original reply without the handler
//! running again. It does not persist anything: the actor writes the same
//! record to the store ([`crate::store::Store::dedupe_record`]) in the step
//! that applies the message, and rebuilds this map with [`Dedupe::restore`]
//! after a restart. It does not order messages (see [`super::order`]).
//!
//! Retention is bounded two ways, whichever removes first: by age
//! ([`DedupeConfig::retention`], default 10 minutes, applied by
//! [`Dedupe::prune`]) and by count per stream
//! ([`DedupeConfig::max_per_stream`], default 100 000, the lowest message
//! ids go first, applied on every record). **A duplicate that arrives after
//! its record was dropped is not recognised here**; on an ordered stream the
//! sequencer still refuses it (its seq is behind the delivered cursor), on
//! an unordered one it would be applied again.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::store::DedupeRecord;
use crate::vocab::StreamId;

/// Retention of a [`Dedupe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DedupeConfig {
    /// Records older than this are dropped by [`Dedupe::prune`]. Default
    /// 10 minutes.
    pub retention: Duration,
    /// At most this many records per stream (per-producer high-water
    /// mark); the lowest message ids are dropped first. Default 100 000.
    pub max_per_stream: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(600),
            max_per_stream: 100_000,
        }
    }
}

impl DedupeConfig {
    /// Sets [`DedupeConfig::retention`].
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    /// Sets [`DedupeConfig::max_per_stream`] (at least 1).
    pub fn max_per_stream(mut self, n: usize) -> Self {
        self.max_per_stream = n.max(1);
        self
    }
}

/// The answer of [`Dedupe::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check<'a> {
    /// Not seen (or no longer retained): apply it.
    New,
    /// Already applied: answer with this stored reply, do not apply.
    Seen(&'a [u8]),
}

#[derive(Clone, Debug)]
struct Entry {
    reply: Vec<u8>,
    at: Instant,
}

/// Receiver-side dedupe keyed by `(stream, message_id)`.
#[derive(Clone, Debug, Default)]
pub struct Dedupe {
    config: DedupeConfig,
    streams: HashMap<StreamId, BTreeMap<u64, Entry>>,
}

impl Dedupe {
    /// An empty dedupe.
    pub fn new(config: DedupeConfig) -> Self {
        Self {
            config,
            streams: HashMap::new(),
        }
    }

    /// Rebuilds the dedupe from the store's records after a restart.
    /// `now` and `now_ms` are the same moment on the monotonic and the wall
    /// clock, so stored wall-clock stamps map back onto `Instant`s.
    pub fn restore(
        config: DedupeConfig,
        records: &[DedupeRecord],
        now: Instant,
        now_ms: u64,
    ) -> Self {
        let mut d = Self::new(config);
        for r in records {
            let age = Duration::from_millis(now_ms.saturating_sub(r.recorded_at_ms));
            let at = now.checked_sub(age).unwrap_or(now);
            d.record(&r.stream, r.message_id, r.reply.clone(), at);
        }
        d
    }

    /// Whether the message was already applied, and its reply if so.
    pub fn check(&self, stream: &StreamId, message_id: u64) -> Check<'_> {
        match self.streams.get(stream).and_then(|s| s.get(&message_id)) {
            Some(e) => Check::Seen(&e.reply),
            None => Check::New,
        }
    }

    /// Records an applied message and its reply. Returns `false` (and keeps
    /// the original reply) if it was already recorded. Enforces the
    /// per-stream bound.
    pub fn record(
        &mut self,
        stream: &StreamId,
        message_id: u64,
        reply: Vec<u8>,
        now: Instant,
    ) -> bool {
        let max = self.config.max_per_stream;
        let s = self.streams.entry(stream.clone()).or_default();
        if s.contains_key(&message_id) {
            return false;
        }
        s.insert(message_id, Entry { reply, at: now });
        while s.len() > max {
            s.pop_first();
        }
        true
    }

    /// Drops records older than the retention; returns how many.
    pub fn prune(&mut self, now: Instant) -> usize {
        let retention = self.config.retention;
        let mut removed = 0;
        for s in self.streams.values_mut() {
            let before = s.len();
            s.retain(|_, e| now.saturating_duration_since(e.at) < retention);
            removed += before - s.len();
        }
        self.streams.retain(|_, s| !s.is_empty());
        removed
    }

    /// The retention in force.
    pub fn config(&self) -> &DedupeConfig {
        &self.config
    }

    /// How many records are retained in total.
    pub fn len(&self) -> usize {
        self.streams.values().map(BTreeMap::len).sum()
    }

    /// Whether no record is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_gets_the_original_reply() {
        let s = StreamId::new("command:a/b");
        let now = Instant::now();
        let mut d = Dedupe::new(DedupeConfig::default());
        assert_eq!(d.check(&s, 7), Check::New);
        assert!(d.record(&s, 7, b"first".to_vec(), now));
        assert!(!d.record(&s, 7, b"second".to_vec(), now));
        assert_eq!(d.check(&s, 7), Check::Seen(b"first"));
        assert_eq!(d.check(&StreamId::new("command:a/c"), 7), Check::New);
    }

    #[test]
    fn retention_by_age_and_by_count() {
        let s = StreamId::new("command:a/b");
        let t0 = Instant::now();
        let cfg = DedupeConfig::default()
            .retention(Duration::from_secs(10))
            .max_per_stream(3);
        let mut d = Dedupe::new(cfg);
        for id in 1..=4 {
            d.record(&s, id, vec![], t0 + Duration::from_secs(id));
        }
        assert_eq!(
            d.check(&s, 1),
            Check::New,
            "count bound dropped the lowest id"
        );
        assert_eq!(d.len(), 3);
        assert_eq!(d.prune(t0 + Duration::from_millis(12_500)), 1); // id 2 is 10.5 s old
        assert_eq!(d.check(&s, 2), Check::New);
        assert!(matches!(d.check(&s, 3), Check::Seen(_)));
    }

    #[test]
    fn restore_maps_wall_clock_ages() {
        let s = StreamId::new("command:a/b");
        let rec = |id, at| DedupeRecord {
            stream: s.clone(),
            message_id: id,
            seq: id,
            reply: vec![id as u8],
            recorded_at_ms: at,
        };
        let now = Instant::now();
        let cfg = DedupeConfig::default().retention(Duration::from_secs(60));
        let mut d = Dedupe::restore(cfg, &[rec(1, 1_000), rec(2, 100_000)], now, 120_000);
        assert_eq!(d.check(&s, 2), Check::Seen(&[2]));
        assert_eq!(d.prune(now), 1, "the record 119 s old is past retention");
        assert_eq!(d.check(&s, 1), Check::New);
    }
}

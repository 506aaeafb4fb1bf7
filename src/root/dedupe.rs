//! Root-side dedupe and replay of relayed class-A frames: a bounded,
//! time-limited table keyed by direction, stream and message id.
//!
//! Owns only "have I forwarded this frame recently, and what came back for
//! it". Pure: the caller passes `now`, so retention is testable without
//! sleeping. Retention (also in `docs/root.md` §5):
//! - a key `(from, to, stream, incarnation, message_id)` is remembered for
//!   `ttl` after it was first forwarded; at most `capacity` keys and
//!   `max_bytes` of cached replies are kept, the oldest forgotten first (a
//!   new sender incarnation is a new id space, so its ids never meet the
//!   replies cached for an older one);
//! - the first frame that comes back the other way with the same stream
//!   and message id (the receiver's reply) is cached with the key;
//! - a retry of a key whose reply is cached is answered from the cache and
//!   not forwarded; a retry of a key still unanswered is dropped while it
//!   is younger than `hold` (the original is in flight) and forwarded again
//!   after that, so a frame lost beyond the root is recovered by the
//!   sender's next retry rather than after the whole `ttl`.
//!
//! The receiving channel's own dedupe stays the authority for
//! exactly-once; this table saves trips through the root.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::vocab::{NodeId, StreamId};

/// The dedupe key of a relayed data frame: direction, stream, sender
/// incarnation, message id.
pub type DedupeKey = (NodeId, NodeId, StreamId, u64, u64);

/// The default bound on cached reply bytes (64 MiB).
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

/// What to do with a relayed class-A data frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it.
    Forward,
    /// Drop it: a retry of a frame still in flight.
    Drop,
    /// Do not forward; send this cached reply back to the sender.
    Replay(Bytes),
}

#[derive(Debug)]
struct Entry {
    /// When the key was first forwarded (its age counts from here).
    first: Instant,
    /// When the key was last forwarded.
    forwarded_at: Instant,
    /// The encoded reply that came back for it, if any.
    reply: Option<Bytes>,
}

/// A bounded, time-limited table of recently forwarded keys and replies.
#[derive(Debug)]
pub struct DedupeTable {
    capacity: usize,
    max_bytes: usize,
    /// Bytes of cached replies held now.
    bytes: usize,
    ttl: Duration,
    hold: Duration,
    seen: HashMap<DedupeKey, Entry>,
    /// Keys in first-forwarded order, for expiry and eviction.
    order: VecDeque<(DedupeKey, Instant)>,
    /// Forgotten keys not yet taken by [`DedupeTable::take_evicted`], when
    /// tracking is on (a persisting owner deletes them from its store).
    evicted: Option<Vec<DedupeKey>>,
}

/// One remembered key as a persisting owner stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySnapshot {
    /// When the key was first forwarded.
    pub first: Instant,
    /// When it was last forwarded.
    pub forwarded_at: Instant,
    /// The reply cached for it, if any.
    pub reply: Option<Bytes>,
}

impl DedupeTable {
    /// A table remembering at most `capacity` keys for `ttl` each, dropping
    /// retries of unanswered keys for `hold` after they were forwarded.
    pub fn new(capacity: usize, ttl: Duration, hold: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            max_bytes: DEFAULT_MAX_BYTES,
            bytes: 0,
            ttl,
            hold,
            seen: HashMap::new(),
            order: VecDeque::new(),
            evicted: None,
        }
    }

    /// Keeps the keys the table forgets (expired or evicted) until
    /// [`DedupeTable::take_evicted`] takes them; at most `capacity` plus
    /// the keys forgotten since the last take are held.
    pub fn tracking_evictions(mut self) -> Self {
        self.evicted = Some(Vec::new());
        self
    }

    /// The keys forgotten since the last call (empty unless tracking).
    pub fn take_evicted(&mut self) -> Vec<DedupeKey> {
        self.evicted
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The state of `key`, if remembered.
    pub fn snapshot(&self, key: &DedupeKey) -> Option<EntrySnapshot> {
        self.seen.get(key).map(|e| EntrySnapshot {
            first: e.first,
            forwarded_at: e.forwarded_at,
            reply: e.reply.clone(),
        })
    }

    /// Puts back a key loaded from storage. Keys must come oldest `first`
    /// first; the capacity and byte bounds hold as for new keys (the
    /// oldest are forgotten). A key already remembered is left as it is.
    pub fn restore(&mut self, key: DedupeKey, entry: EntrySnapshot) {
        if self.seen.contains_key(&key) {
            return;
        }
        while self.order.len() >= self.capacity {
            self.evict_oldest();
        }
        if let Some(r) = &entry.reply {
            self.bytes += r.len();
        }
        self.order.push_back((key.clone(), entry.first));
        self.seen.insert(
            key,
            Entry {
                first: entry.first,
                forwarded_at: entry.forwarded_at,
                reply: entry.reply,
            },
        );
        while self.bytes > self.max_bytes && self.order.len() > 1 {
            self.evict_oldest();
        }
    }

    /// Like [`DedupeTable::restore`], for an entry another root shared: a
    /// key already remembered without a reply takes the entry's reply.
    pub fn merge(&mut self, key: DedupeKey, entry: EntrySnapshot) {
        let Some(existing) = self.seen.get_mut(&key) else {
            return self.restore(key, entry);
        };
        if existing.reply.is_none()
            && let Some(r) = entry.reply
        {
            self.bytes += r.len();
            existing.reply = Some(r);
            while self.bytes > self.max_bytes && self.order.len() > 1 {
                self.evict_oldest();
            }
        }
    }

    /// Bounds the bytes of cached replies (at least one reply is kept).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Bytes of cached replies held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Decides about a data frame from `from` to `to` of the sender
    /// incarnation `incarnation` (its encoded bytes are `frame`) at `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_frame(
        &mut self,
        from: &NodeId,
        to: &NodeId,
        stream: &StreamId,
        incarnation: u64,
        message_id: u64,
        frame: &Bytes,
        now: Instant,
    ) -> Verdict {
        self.on_frame_tracked(from, to, stream, incarnation, message_id, frame, now)
            .0
    }

    /// Like [`DedupeTable::on_frame`], also naming the key whose entry the
    /// call created or changed (to persist it), if any.
    #[allow(clippy::too_many_arguments)]
    pub fn on_frame_tracked(
        &mut self,
        from: &NodeId,
        to: &NodeId,
        stream: &StreamId,
        incarnation: u64,
        message_id: u64,
        frame: &Bytes,
        now: Instant,
    ) -> (Verdict, Option<DedupeKey>) {
        self.expire(now);
        let key = (
            from.clone(),
            to.clone(),
            stream.clone(),
            incarnation,
            message_id,
        );
        if let Some(entry) = self.seen.get_mut(&key) {
            if let Some(reply) = &entry.reply {
                return (Verdict::Replay(reply.clone()), None);
            }
            if now.saturating_duration_since(entry.forwarded_at) < self.hold {
                return (Verdict::Drop, None);
            }
            entry.forwarded_at = now;
            return (Verdict::Forward, Some(key));
        }
        let reverse = (
            to.clone(),
            from.clone(),
            stream.clone(),
            incarnation,
            message_id,
        );
        if let Some(entry) = self.seen.get_mut(&reverse) {
            // The answer to a forwarded frame: remember it for retries.
            if entry.reply.is_none() {
                self.bytes += frame.len();
                entry.reply = Some(frame.clone());
                while self.bytes > self.max_bytes && self.order.len() > 1 {
                    self.evict_oldest();
                }
                let changed = self.seen.contains_key(&reverse).then_some(reverse);
                return (Verdict::Forward, changed);
            }
            return (Verdict::Forward, None);
        }
        while self.order.len() >= self.capacity {
            self.evict_oldest();
        }
        self.seen.insert(
            key.clone(),
            Entry {
                first: now,
                forwarded_at: now,
                reply: None,
            },
        );
        self.order.push_back((key.clone(), now));
        (Verdict::Forward, Some(key))
    }

    /// Forgets every unanswered key towards `to` (its connection was
    /// renewed: what went to the old one may be lost, so a retry must be
    /// forwarded, not dropped as in flight). Cached replies stay. Returns
    /// how many keys were forgotten.
    pub fn forget_unanswered_to(&mut self, to: &NodeId) -> usize {
        let before = self.seen.len();
        let evicted = &mut self.evicted;
        self.seen.retain(|k, e| {
            let keep = &k.1 != to || e.reply.is_some();
            if !keep && let Some(ev) = evicted.as_mut() {
                ev.push(k.clone());
            }
            keep
        });
        let seen = &self.seen;
        self.order.retain(|(k, _)| seen.contains_key(k));
        before - self.seen.len()
    }

    /// Forgets keys first forwarded longer than the TTL ago.
    fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            self.evict_oldest();
        }
    }

    /// Forgets the oldest key and its cached reply.
    fn evict_oldest(&mut self) {
        if let Some((key, _)) = self.order.pop_front() {
            if let Some(Entry { reply: Some(r), .. }) = self.seen.remove(&key) {
                self.bytes -= r.len();
            }
            if let Some(evicted) = &mut self.evicted {
                evicted.push(key);
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

    fn n(s: &str) -> NodeId {
        NodeId::new(s)
    }

    fn table() -> DedupeTable {
        DedupeTable::new(10, Duration::from_secs(30), Duration::from_secs(2))
    }

    #[test]
    fn a_reply_is_forwarded_and_answers_later_retries() {
        let t0 = Instant::now();
        let mut t = table();
        let s = StreamId::new("command:m/h");
        let cmd = Bytes::from_static(b"cmd");
        let reply = Bytes::from_static(b"reply");
        assert_eq!(
            t.on_frame(&n("m"), &n("h"), &s, 0, 1, &cmd, t0),
            Verdict::Forward
        );
        // The reply travels the other way with the same stream and id.
        assert_eq!(
            t.on_frame(&n("h"), &n("m"), &s, 0, 1, &reply, t0),
            Verdict::Forward
        );
        // A retry of the command is answered from the cache.
        assert_eq!(
            t.on_frame(
                &n("m"),
                &n("h"),
                &s,
                0,
                1,
                &cmd,
                t0 + Duration::from_secs(1)
            ),
            Verdict::Replay(reply)
        );
    }

    #[test]
    fn a_renewed_connection_lets_unanswered_retries_through_and_keeps_replies() {
        let t0 = Instant::now();
        let mut t = table();
        let s = StreamId::new("command:m/h");
        let (cmd, reply) = (Bytes::from_static(b"cmd"), Bytes::from_static(b"reply"));
        // 1 answered, 2 unanswered towards h; 3 unanswered towards m.
        assert_eq!(
            t.on_frame(&n("m"), &n("h"), &s, 0, 1, &cmd, t0),
            Verdict::Forward
        );
        assert_eq!(
            t.on_frame(&n("h"), &n("m"), &s, 0, 1, &reply, t0),
            Verdict::Forward
        );
        assert_eq!(
            t.on_frame(&n("m"), &n("h"), &s, 0, 2, &cmd, t0),
            Verdict::Forward
        );
        assert_eq!(
            t.on_frame(&n("h"), &n("m"), &s, 0, 3, &cmd, t0),
            Verdict::Forward
        );
        let soon = t0 + Duration::from_millis(100);
        assert_eq!(
            t.on_frame(&n("m"), &n("h"), &s, 0, 2, &cmd, soon),
            Verdict::Drop
        );

        assert_eq!(t.forget_unanswered_to(&n("h")), 1);
        assert_eq!(t.len(), 2);
        // The retry of 2 goes to h's new connection; 1 is still answered
        // from the cache; 3 (towards m) is still held.
        assert_eq!(
            t.on_frame(&n("m"), &n("h"), &s, 0, 2, &cmd, soon),
            Verdict::Forward
        );
        assert_eq!(
            t.on_frame(&n("m"), &n("h"), &s, 0, 1, &cmd, soon),
            Verdict::Replay(reply)
        );
        assert_eq!(
            t.on_frame(&n("h"), &n("m"), &s, 0, 3, &cmd, soon),
            Verdict::Drop
        );
    }

    #[test]
    fn an_unanswered_retry_is_held_then_forwarded_again() {
        let t0 = Instant::now();
        let mut t = table();
        let s = StreamId::new("command:m/h");
        let cmd = Bytes::from_static(b"cmd");
        assert_eq!(
            t.on_frame(&n("m"), &n("h"), &s, 0, 1, &cmd, t0),
            Verdict::Forward
        );
        let soon = t0 + Duration::from_secs(1);
        assert_eq!(
            t.on_frame(&n("m"), &n("h"), &s, 0, 1, &cmd, soon),
            Verdict::Drop
        );
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            t.on_frame(&n("m"), &n("h"), &s, 0, 1, &cmd, later),
            Verdict::Forward
        );
        // The hold restarts from the re-forward.
        assert_eq!(
            t.on_frame(
                &n("m"),
                &n("h"),
                &s,
                0,
                1,
                &cmd,
                later + Duration::from_millis(500)
            ),
            Verdict::Drop
        );
    }

    #[test]
    fn keys_expire_after_the_ttl_and_capacity_evicts_oldest_first() {
        let t0 = Instant::now();
        let mut t = DedupeTable::new(3, Duration::from_secs(5), Duration::from_secs(5));
        let s = StreamId::new("s");
        let b = Bytes::new();
        for i in 0..5 {
            assert_eq!(
                t.on_frame(&n("a"), &n("b"), &s, 0, i, &b, t0),
                Verdict::Forward
            );
        }
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.on_frame(&n("a"), &n("b"), &s, 0, 4, &b, t0),
            Verdict::Drop
        );
        assert_eq!(
            t.on_frame(&n("a"), &n("b"), &s, 0, 0, &b, t0),
            Verdict::Forward,
            "evicted"
        );
        let late = t0 + Duration::from_secs(5);
        assert_eq!(
            t.on_frame(&n("a"), &n("b"), &s, 0, 4, &b, late),
            Verdict::Forward,
            "expired"
        );
    }

    #[test]
    fn other_streams_and_directions_are_independent() {
        let t0 = Instant::now();
        let mut t = table();
        let b = Bytes::new();
        let (s1, s2) = (StreamId::new("s1"), StreamId::new("s2"));
        assert_eq!(
            t.on_frame(&n("a"), &n("b"), &s1, 0, 1, &b, t0),
            Verdict::Forward
        );
        assert_eq!(
            t.on_frame(&n("a"), &n("b"), &s2, 0, 1, &b, t0),
            Verdict::Forward
        );
        assert_eq!(
            t.on_frame(&n("a"), &n("c"), &s1, 0, 1, &b, t0),
            Verdict::Forward
        );
    }
}

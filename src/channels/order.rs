//! [`Sequencer`]: in-order delivery for ordered channels.
//!
//! Owns, per stream, the next expected sequence number and a bounded
//! reorder buffer: frames ahead of a gap wait until it fills, frames behind
//! the next expected number are duplicates. It holds items of any type and
//! applies nothing; the actor persists the delivered sequence as the
//! stream's cursor (in the same store transaction as the dedupe record) and
//! calls [`Sequencer::resume`] with it after a restart. The buffer is not
//! durable: whatever was buffered is resent by the sender, which only
//! forgets what was acked.

use std::collections::{BTreeMap, HashMap};

use crate::vocab::StreamId;

/// Bounds of a [`Sequencer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OrderConfig {
    /// At most this many frames buffered per stream, and a frame more than
    /// this far ahead of the next expected one is refused. Default 1024.
    pub max_buffered: usize,
}

impl Default for OrderConfig {
    fn default() -> Self {
        Self { max_buffered: 1024 }
    }
}

impl OrderConfig {
    /// Sets [`OrderConfig::max_buffered`] (at least 1).
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.max_buffered = n.max(1);
        self
    }
}

/// The answer of [`Sequencer::offer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// Deliver these now, in this order (the offered frame and any buffered
    /// ones it unblocked).
    Deliver(Vec<(u64, T)>),
    /// Held until the gap before it fills.
    Buffered,
    /// Its sequence is behind the next expected one: it was delivered
    /// before. Answer it from the dedupe record; never apply it.
    Delivered(T),
    /// The same sequence number is already buffered; dropped.
    AlreadyBuffered(T),
    /// Too far ahead or the buffer is full; dropped (the sender resends).
    Overflow(T),
}

#[derive(Clone, Debug)]
struct StreamOrder<T> {
    next: u64,
    buffer: BTreeMap<u64, T>,
}

impl<T> Default for StreamOrder<T> {
    fn default() -> Self {
        Self {
            next: 1,
            buffer: BTreeMap::new(),
        }
    }
}

/// Per-stream in-order delivery; sequence numbers start at 1.
#[derive(Clone, Debug)]
pub struct Sequencer<T> {
    config: OrderConfig,
    streams: HashMap<StreamId, StreamOrder<T>>,
}

impl<T> Sequencer<T> {
    /// An empty sequencer: every stream expects sequence 1.
    pub fn new(config: OrderConfig) -> Self {
        Self {
            config,
            streams: HashMap::new(),
        }
    }

    /// After a restart: everything up to `delivered_through` (the stored
    /// cursor) was delivered. Clears the stream's buffer.
    pub fn resume(&mut self, stream: &StreamId, delivered_through: u64) {
        self.streams.insert(
            stream.clone(),
            StreamOrder {
                next: delivered_through + 1,
                buffer: BTreeMap::new(),
            },
        );
    }

    /// The next sequence number the stream will deliver.
    pub fn next_expected(&self, stream: &StreamId) -> u64 {
        self.streams.get(stream).map_or(1, |s| s.next)
    }

    /// How many frames of the stream are buffered.
    pub fn buffered(&self, stream: &StreamId) -> usize {
        self.streams.get(stream).map_or(0, |s| s.buffer.len())
    }

    /// A frame with sequence `seq` arrived.
    pub fn offer(&mut self, stream: &StreamId, seq: u64, item: T) -> Offer<T> {
        let max = self.config.max_buffered;
        let s = self.streams.entry(stream.clone()).or_default();
        if seq < s.next {
            return Offer::Delivered(item);
        }
        if seq > s.next {
            if s.buffer.contains_key(&seq) {
                return Offer::AlreadyBuffered(item);
            }
            if seq - s.next > max as u64 || s.buffer.len() >= max {
                return Offer::Overflow(item);
            }
            s.buffer.insert(seq, item);
            return Offer::Buffered;
        }
        let mut out = vec![(seq, item)];
        s.next += 1;
        while let Some(next) = s.buffer.remove(&s.next) {
            out.push((s.next, next));
            s.next += 1;
        }
        Offer::Deliver(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_holds_then_releases_in_order() {
        let s = StreamId::new("command:a/b");
        let mut q = Sequencer::new(OrderConfig::default());
        assert_eq!(q.offer(&s, 2, 'b'), Offer::Buffered);
        assert_eq!(q.offer(&s, 3, 'c'), Offer::Buffered);
        assert_eq!(q.offer(&s, 3, 'c'), Offer::AlreadyBuffered('c'));
        assert_eq!(
            q.offer(&s, 1, 'a'),
            Offer::Deliver(vec![(1, 'a'), (2, 'b'), (3, 'c')])
        );
        assert_eq!(q.offer(&s, 2, 'b'), Offer::Delivered('b'));
        assert_eq!(q.next_expected(&s), 4);
    }

    #[test]
    fn buffer_is_bounded() {
        let s = StreamId::new("command:a/b");
        let mut q = Sequencer::new(OrderConfig::default().max_buffered(2));
        assert_eq!(q.offer(&s, 4, 4), Offer::Overflow(4), "too far ahead");
        assert_eq!(q.offer(&s, 2, 2), Offer::Buffered);
        assert_eq!(q.offer(&s, 3, 3), Offer::Buffered);
        assert_eq!(q.buffered(&s), 2);
    }

    #[test]
    fn resume_from_cursor() {
        let s = StreamId::new("command:a/b");
        let mut q = Sequencer::new(OrderConfig::default());
        q.offer(&s, 5, ());
        q.resume(&s, 7);
        assert_eq!(q.buffered(&s), 0);
        assert_eq!(q.offer(&s, 7, ()), Offer::Delivered(()));
        assert_eq!(q.offer(&s, 8, ()), Offer::Deliver(vec![(8, ())]));
    }
}

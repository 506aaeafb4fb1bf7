//! [`Outbox`]: the sender-side state of one command stream.
//!
//! Owns, per stream, the accepted-but-unacked commands in sequence order,
//! the credit window, retransmit timers with backoff, and what a route
//! change or a restart does to each entry. It does not store anything (the
//! actor appends to the [`crate::store::Store`] *before* calling
//! [`Outbox::push`], and acks there after [`Outbox::on_ack`]), does not
//! encode frames and does not pick paths.
//!
//! Replay rules:
//! - a **replayable** command is retransmitted after its RTO on the same
//!   path and resent at once on a new path after a route change or restart;
//! - a **not replayable** command is retransmitted after its RTO on the same
//!   path only (the receiver deduplicates it there). After a route change or
//!   a restart it is never sent again as a command: it becomes a *cancel*
//!   for the same `(seq, message_id)` — the receiver either answers with
//!   the stored reply (the command had been applied) or records it as
//!   cancelled (it never will be) — and its caller is told at once that
//!   the outcome is unknown ([`RouteChange::not_replayed`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::store::OutboxRecord;
use crate::vocab::StreamId;

/// Tunables of an [`Outbox`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// Credit window: at most this many entries in flight (sent, unacked).
    /// Default 256 (the control class's pending budget).
    pub max_in_flight: usize,
    /// The first retransmit timeout after a send. Default 1 s.
    pub rto_initial: Duration,
    /// The retransmit timeout never grows past this. Default 30 s.
    pub rto_max: Duration,
    /// Each retransmit multiplies the timeout by this. Default 2.
    pub backoff_factor: u32,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            rto_initial: Duration::from_secs(1),
            rto_max: Duration::from_secs(30),
            backoff_factor: 2,
        }
    }
}

impl OutboxConfig {
    /// Sets [`OutboxConfig::max_in_flight`] (at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Sets the initial and maximal retransmit timeouts.
    pub fn rto(mut self, initial: Duration, max: Duration) -> Self {
        self.rto_initial = initial;
        self.rto_max = max.max(initial);
        self
    }

    /// Sets [`OutboxConfig::backoff_factor`] (at least 1).
    pub fn backoff_factor(mut self, f: u32) -> Self {
        self.backoff_factor = f.max(1);
        self
    }
}

/// What a transmission carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransmitKind {
    /// The command itself (first send or retransmission).
    Command,
    /// A cancel for a not-replayable command whose outcome is unknown.
    Cancel,
}

/// One frame the actor must send now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transmit {
    /// The message id.
    pub message_id: u64,
    /// The per-stream sequence number.
    pub seq: u64,
    /// Command or cancel.
    pub kind: TransmitKind,
    /// 1 for the first transmission, then 2, 3 …
    pub attempt: u32,
}

/// One accepted, unacknowledged command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEntry {
    /// The message id.
    pub message_id: u64,
    /// The per-stream sequence number.
    pub seq: u64,
    /// The traffic class's wire code.
    pub class: u8,
    /// Whether it may be resent on another path.
    pub replayable: bool,
    /// Command, or cancel once a not-replayable command lost its path.
    pub kind: TransmitKind,
    /// When it was first sent (this incarnation of the outbox).
    pub first_sent: Option<Instant>,
    /// When it was last sent; `None` while waiting for credit.
    pub last_sent: Option<Instant>,
    /// How many times it was sent.
    pub attempts: u32,
    /// The current retransmit timeout.
    pub rto: Duration,
}

impl PendingEntry {
    /// When the retransmit timer of an in-flight entry fires.
    fn deadline(&self) -> Option<Instant> {
        self.last_sent.map(|l| l + self.rto)
    }

    fn transmit(&mut self, now: Instant) -> Transmit {
        self.first_sent.get_or_insert(now);
        self.last_sent = Some(now);
        self.attempts += 1;
        Transmit {
            message_id: self.message_id,
            seq: self.seq,
            kind: self.kind,
            attempt: self.attempts,
        }
    }
}

/// What a route change asks of the actor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteChange {
    /// Frames to send on the new path now, in sequence order.
    pub transmits: Vec<Transmit>,
    /// Not-replayable commands that were in flight: their callers learn now
    /// that the outcome is unknown; a cancel is among `transmits`.
    pub not_replayed: Vec<u64>,
}

/// The sender-side state of one command stream.
#[derive(Clone, Debug)]
pub struct Outbox {
    stream: StreamId,
    config: OutboxConfig,
    /// Every pending entry by sequence number.
    entries: BTreeMap<u64, PendingEntry>,
    /// Message id → sequence number.
    seq_of: BTreeMap<u64, u64>,
    /// Sequence numbers waiting for credit (never sent in this incarnation),
    /// so a send never rescans the in-flight entries.
    waiting: BTreeSet<u64>,
    /// Retransmit deadlines of in-flight entries, earliest first.
    timers: BTreeSet<(Instant, u64)>,
    /// The receiver's last advertised credit, if any (see
    /// [`Outbox::set_peer_credit`]).
    peer_credit: Option<usize>,
}

impl Outbox {
    /// An empty outbox for `stream`.
    pub fn new(stream: StreamId, config: OutboxConfig) -> Self {
        Self {
            stream,
            config,
            entries: BTreeMap::new(),
            seq_of: BTreeMap::new(),
            waiting: BTreeSet::new(),
            timers: BTreeSet::new(),
            peer_credit: None,
        }
    }

    /// Rebuilds the outbox of `stream` after a restart from the store's
    /// pending list (records of other streams are ignored). Replayable
    /// entries wait to be sent again; not-replayable ones become cancels and
    /// are returned, so their callers can be told the outcome is unknown.
    pub fn restore(
        stream: StreamId,
        config: OutboxConfig,
        pending: &[OutboxRecord],
    ) -> (Self, Vec<u64>) {
        let mut outbox = Self::new(stream.clone(), config);
        let mut not_replayed = Vec::new();
        for r in pending.iter().filter(|r| r.stream == stream) {
            outbox.push(r.message_id, r.seq, r.class, r.replayable);
            if !r.replayable {
                if let Some(e) = outbox.entries.get_mut(&r.seq) {
                    e.kind = TransmitKind::Cancel;
                }
                not_replayed.push(r.message_id);
            }
        }
        (outbox, not_replayed)
    }

    /// The stream this outbox belongs to.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// Adds a command the store has durably accepted. It is sent by the
    /// next [`Outbox::poll_send`] when credit allows. Pushing an id twice
    /// is ignored.
    pub fn push(&mut self, message_id: u64, seq: u64, class: u8, replayable: bool) {
        if self.seq_of.contains_key(&message_id) || self.entries.contains_key(&seq) {
            return;
        }
        self.seq_of.insert(message_id, seq);
        self.waiting.insert(seq);
        self.entries.insert(
            seq,
            PendingEntry {
                message_id,
                seq,
                class,
                replayable,
                kind: TransmitKind::Command,
                first_sent: None,
                last_sent: None,
                attempts: 0,
                rto: self.config.rto_initial,
            },
        );
    }

    /// Marks as sent, and returns, the waiting entries the credit window
    /// allows, in sequence order (this is where a send happens).
    pub fn poll_send(&mut self, now: Instant) -> Vec<Transmit> {
        let credit = self.window().saturating_sub(self.in_flight());
        let mut out = Vec::with_capacity(credit.min(self.waiting.len()));
        while out.len() < credit {
            let Some(seq) = self.waiting.pop_first() else {
                break;
            };
            let Some(e) = self.entries.get_mut(&seq) else {
                continue;
            };
            out.push(e.transmit(now));
            if let Some(d) = e.deadline() {
                self.timers.insert((d, seq));
            }
        }
        out
    }

    /// An ack arrived: removes and returns the entry, or `None` if unknown
    /// (a duplicate ack). The actor then acks it in the store.
    pub fn on_ack(&mut self, message_id: u64) -> Option<PendingEntry> {
        let seq = self.seq_of.remove(&message_id)?;
        let e = self.entries.remove(&seq)?;
        match e.deadline() {
            Some(d) => self.timers.remove(&(d, seq)),
            None => self.waiting.remove(&seq),
        };
        Some(e)
    }

    /// The routing authority moved the stream to another path: resend every
    /// in-flight replayable command now (with a fresh RTO) and turn every
    /// in-flight not-replayable command into a cancel. Waiting entries are
    /// left for [`Outbox::poll_send`].
    pub fn on_route_change(&mut self, now: Instant) -> RouteChange {
        let mut change = RouteChange::default();
        let rto = self.config.rto_initial;
        let mut in_flight: Vec<u64> = self.timers.iter().map(|(_, seq)| *seq).collect();
        in_flight.sort_unstable();
        self.timers.clear();
        for seq in in_flight {
            let Some(e) = self.entries.get_mut(&seq) else {
                continue;
            };
            if !e.replayable && e.kind == TransmitKind::Command {
                e.kind = TransmitKind::Cancel;
                change.not_replayed.push(e.message_id);
            }
            e.rto = rto;
            change.transmits.push(e.transmit(now));
            if let Some(d) = e.deadline() {
                self.timers.insert((d, seq));
            }
        }
        change
    }

    /// Retransmits, on the current path, every in-flight entry whose RTO has
    /// passed, and backs its RTO off.
    pub fn poll_resend(&mut self, now: Instant) -> Vec<Transmit> {
        let (factor, max) = (self.config.backoff_factor, self.config.rto_max);
        let mut due = Vec::new();
        while let Some(&(d, seq)) = self.timers.first() {
            if d > now {
                break;
            }
            self.timers.pop_first();
            due.push(seq);
        }
        // Sequence order, as the receiver delivers in order.
        due.sort_unstable();
        let mut out = Vec::with_capacity(due.len());
        for seq in due {
            let Some(e) = self.entries.get_mut(&seq) else {
                continue;
            };
            out.push(e.transmit(now));
            e.rto = e.rto.saturating_mul(factor).min(max);
            if let Some(d) = e.deadline() {
                self.timers.insert((d, seq));
            }
        }
        out
    }

    /// The receiver advertised room for `credit` more frames (in an ack):
    /// from now on at most `max(credit, 1)` entries are in flight (and never
    /// more than [`OutboxConfig::max_in_flight`]). One stays allowed so a
    /// full receiver is still probed and can advertise room again.
    pub fn set_peer_credit(&mut self, credit: usize) {
        self.peer_credit = Some(credit.max(1));
    }

    /// How many entries may be in flight now.
    pub fn window(&self) -> usize {
        self.config
            .max_in_flight
            .min(self.peer_credit.unwrap_or(usize::MAX))
    }

    /// The receiver refused an in-flight entry without taking it (busy, not
    /// ready): retransmit it `after` from `now` instead of at its RTO, and
    /// back off from there. Returns false if the entry is not in flight.
    pub fn retry_after(&mut self, message_id: u64, now: Instant, after: Duration) -> bool {
        let Some(&seq) = self.seq_of.get(&message_id) else {
            return false;
        };
        let Some(e) = self.entries.get_mut(&seq) else {
            return false;
        };
        let Some(old) = e.deadline() else {
            return false;
        };
        self.timers.remove(&(old, seq));
        e.last_sent = Some(now);
        e.rto = after.min(self.config.rto_max).max(Duration::from_millis(1));
        if let Some(d) = e.deadline() {
            self.timers.insert((d, seq));
        }
        true
    }

    /// When [`Outbox::poll_resend`] next has work, if ever (for the actor's
    /// timer).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(d, _)| *d)
    }

    /// The entry with this message id, if pending.
    pub fn get(&self, message_id: u64) -> Option<&PendingEntry> {
        self.entries.get(self.seq_of.get(&message_id)?)
    }

    /// Pending entries in sequence order.
    pub fn entries(&self) -> impl Iterator<Item = &PendingEntry> {
        self.entries.values()
    }

    /// How many entries are in flight (sent, unacked).
    pub fn in_flight(&self) -> usize {
        self.timers.len()
    }

    /// How many entries are pending (in flight or waiting for credit).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(window: usize) -> Outbox {
        Outbox::new(
            StreamId::new("command:a/b"),
            OutboxConfig::default()
                .max_in_flight(window)
                .rto(Duration::from_secs(1), Duration::from_secs(4)),
        )
    }

    #[test]
    fn credit_window_limits_in_flight_and_sends_in_seq_order() {
        let t0 = Instant::now();
        let mut o = outbox(2);
        for (id, seq) in [(10, 1), (11, 2), (12, 3)] {
            o.push(id, seq, 0, true);
        }
        let first: Vec<u64> = o.poll_send(t0).iter().map(|t| t.seq).collect();
        assert_eq!(first, vec![1, 2]);
        assert!(o.poll_send(t0).is_empty());
        assert_eq!(o.on_ack(10).map(|e| e.seq), Some(1));
        assert_eq!(o.on_ack(10), None, "duplicate ack is ignored");
        let next: Vec<u64> = o.poll_send(t0).iter().map(|t| t.seq).collect();
        assert_eq!(next, vec![3]);
        assert_eq!(o.in_flight(), 2);
    }

    #[test]
    fn resend_after_rto_with_backoff_capped() {
        let t0 = Instant::now();
        let mut o = outbox(8);
        o.push(1, 1, 0, true);
        o.poll_send(t0);
        assert!(o.poll_resend(t0 + Duration::from_millis(999)).is_empty());
        let r = o.poll_resend(t0 + Duration::from_secs(1));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].attempt, 2);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(o.next_deadline(), Some(t1 + Duration::from_secs(2)));
        assert!(o.poll_resend(t1 + Duration::from_millis(1999)).is_empty());
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(o.poll_resend(t2).len(), 1);
        let t3 = t2 + Duration::from_secs(4);
        assert_eq!(o.poll_resend(t3).len(), 1);
        // capped at rto_max = 4 s
        assert_eq!(o.next_deadline(), Some(t3 + Duration::from_secs(4)));
    }

    #[test]
    fn route_change_resends_replayable_and_cancels_the_rest() {
        let t0 = Instant::now();
        let mut o = outbox(2);
        o.push(1, 1, 0, true);
        o.push(2, 2, 0, false);
        o.push(3, 3, 0, false); // waits for credit: never sent, not affected
        o.poll_send(t0);
        let change = o.on_route_change(t0 + Duration::from_millis(10));
        assert_eq!(change.not_replayed, vec![2]);
        let kinds: Vec<(u64, TransmitKind)> =
            change.transmits.iter().map(|t| (t.seq, t.kind)).collect();
        assert_eq!(
            kinds,
            vec![(1, TransmitKind::Command), (2, TransmitKind::Cancel)]
        );
        // the waiting one goes out as a command on the new path
        o.on_ack(1);
        let sent = o.poll_send(t0 + Duration::from_millis(20));
        assert_eq!(sent[0].seq, 3);
        assert_eq!(sent[0].kind, TransmitKind::Command);
    }

    #[test]
    fn restore_resumes_replayable_and_cancels_not_replayable() {
        let s = StreamId::new("command:a/b");
        let rec = |id, seq, replayable| OutboxRecord {
            stream: s.clone(),
            message_id: id,
            seq,
            record: vec![],
            operation_key: None,
            class: 0,
            replayable,
        };
        let mut other = rec(9, 1, true);
        other.stream = StreamId::new("command:a/c");
        let pending = vec![rec(5, 1, true), rec(6, 2, false), other];
        let (mut o, not_replayed) = Outbox::restore(s, OutboxConfig::default(), &pending);
        assert_eq!(not_replayed, vec![6]);
        assert_eq!(o.len(), 2);
        let sent: Vec<(u64, TransmitKind)> = o
            .poll_send(Instant::now())
            .iter()
            .map(|t| (t.message_id, t.kind))
            .collect();
        assert_eq!(
            sent,
            vec![(5, TransmitKind::Command), (6, TransmitKind::Cancel)]
        );
    }
}

//! Property: any interleaving of send, ack, loss, duplication, reordering,
//! route changes, time steps, dedupe pruning and restarts of either side
//! applies each accepted command exactly once, in sequence order per
//! stream (not-replayable commands: at most once, and their final reply
//! says which); nothing that was not accepted is applied.
//!
//! The model wires the pure cores (`Outbox`, `Dedupe`, `Sequencer`) to a
//! `Store` the way the channel actor will: a send is accepted only when the
//! store append returns; the receiver applies a command, records its reply
//! and cursor in its store in the same step, then acks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use interlocking::channels::{
    Check, Dedupe, DedupeConfig, Offer, OrderConfig, Outbox, OutboxConfig, Sequencer, Transmit,
    TransmitKind,
};
use interlocking::store::{
    AppendOutcome, DedupeRecord, MemStore, NewOutboxEntry, OutboxBatch, RedbStore, Store,
};
use interlocking::vocab::StreamId;
use proptest::prelude::*;

const STREAMS: [&str; 2] = ["command:s/r/a", "command:s/r/b"];
const REPLY_CANCELLED: &[u8] = b"cancelled";
const REPLY_EXPIRED: &[u8] = b"expired";

/// A backend that can be "restarted" (closed and reopened).
trait Backend: Sized {
    type S: Store;
    fn store(&self) -> &Self::S;
    fn reopen(self) -> Self;
}

impl Backend for MemStore {
    type S = MemStore;
    fn store(&self) -> &MemStore {
        self
    }
    fn reopen(self) -> Self {
        self
    }
}

struct RedbFile(Option<RedbStore>, PathBuf);

impl Backend for RedbFile {
    type S = RedbStore;
    fn store(&self) -> &RedbStore {
        self.0.as_ref().expect("open")
    }
    fn reopen(mut self) -> Self {
        drop(self.0.take());
        self.0 = Some(RedbStore::open(&self.1).expect("reopen"));
        self
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Send a group of commands in one append (group commit).
    Send(Vec<(usize, bool, Option<u8>)>),
    Deliver(usize),
    Drop(usize),
    Duplicate(usize),
    DeliverAck(usize),
    DropAck(usize),
    DuplicateAck(usize),
    Tick(u64),
    RouteChange,
    RestartSender,
    RestartReceiver,
    PruneDedupe,
}

fn op() -> impl Strategy<Value = Op> {
    let send = prop::collection::vec(
        (
            0..STREAMS.len(),
            prop::bool::weighted(0.75),
            prop::option::weighted(0.3, 0u8..4),
        ),
        1..4,
    )
    .prop_map(Op::Send);
    prop_oneof![
        4 => send,
        5 => any::<usize>().prop_map(Op::Deliver),
        2 => any::<usize>().prop_map(Op::Drop),
        2 => any::<usize>().prop_map(Op::Duplicate),
        4 => any::<usize>().prop_map(Op::DeliverAck),
        2 => any::<usize>().prop_map(Op::DropAck),
        1 => any::<usize>().prop_map(Op::DuplicateAck),
        3 => (0u64..3000).prop_map(Op::Tick),
        1 => Just(Op::RouteChange),
        1 => Just(Op::RestartSender),
        1 => Just(Op::RestartReceiver),
        1 => Just(Op::PruneDedupe),
    ]
}

#[derive(Clone, Debug)]
struct DataMsg {
    stream: StreamId,
    transmit: Transmit,
}

#[derive(Clone, Debug)]
struct AckMsg {
    stream: StreamId,
    message_id: u64,
    reply: Vec<u8>,
}

struct World<B: Backend> {
    t0: Instant,
    now: Instant,
    sender: Option<B>,
    receiver: Option<B>,
    outboxes: BTreeMap<StreamId, Outbox>,
    dedupe: Dedupe,
    order: Sequencer<DataMsg>,
    data: Vec<DataMsg>,
    acks: Vec<AckMsg>,
    /// message id → (stream, seq, replayable, operation key)
    accepted: BTreeMap<u64, (StreamId, u64, bool, Option<u8>)>,
    /// what the receiver's handler applied, in order
    ledger: Vec<(StreamId, u64, u64)>,
    /// final replies the sender's callers got
    replies: BTreeMap<u64, Vec<u8>>,
    not_replayed: BTreeSet<u64>,
}

fn outbox_config() -> OutboxConfig {
    OutboxConfig::default()
        .max_in_flight(3)
        .rto(Duration::from_millis(500), Duration::from_secs(4))
}

fn dedupe_config() -> DedupeConfig {
    DedupeConfig::default()
        .retention(Duration::from_secs(5))
        .max_per_stream(4)
}

impl<B: Backend> World<B> {
    fn new(sender: B, receiver: B) -> Self {
        let now = Instant::now();
        Self {
            t0: now,
            now,
            sender: Some(sender),
            receiver: Some(receiver),
            outboxes: STREAMS
                .iter()
                .map(|s| {
                    (
                        StreamId::new(s),
                        Outbox::new(StreamId::new(s), outbox_config()),
                    )
                })
                .collect(),
            dedupe: Dedupe::new(dedupe_config()),
            order: Sequencer::new(OrderConfig::default().max_buffered(4)),
            data: vec![],
            acks: vec![],
            accepted: BTreeMap::new(),
            ledger: vec![],
            replies: BTreeMap::new(),
            not_replayed: BTreeSet::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        1_000_000 + (self.now - self.t0).as_millis() as u64
    }

    fn sstore(&self) -> &B::S {
        self.sender.as_ref().unwrap().store()
    }

    fn rstore(&self) -> &B::S {
        self.receiver.as_ref().unwrap().store()
    }

    fn transmit(&mut self, stream: &StreamId, ts: Vec<Transmit>) {
        self.data.extend(ts.into_iter().map(|transmit| DataMsg {
            stream: stream.clone(),
            transmit,
        }));
    }

    fn pump_sender(&mut self) {
        let now = self.now;
        let mut out = vec![];
        for (s, o) in &mut self.outboxes {
            let mut ts = o.poll_resend(now);
            ts.extend(o.poll_send(now));
            out.push((s.clone(), ts));
        }
        for (s, ts) in out {
            self.transmit(&s, ts);
        }
    }

    fn send(&mut self, group: &[(usize, bool, Option<u8>)]) {
        let batch = OutboxBatch {
            entries: group
                .iter()
                .map(|(s, replayable, key)| NewOutboxEntry {
                    stream: StreamId::new(STREAMS[*s]),
                    record: vec![],
                    operation_key: key.map(|k| format!("op-{k}")),
                    class: 0,
                    replayable: *replayable,
                })
                .collect(),
            cursors: vec![],
            now_ms: self.now_ms(),
        };
        let outcomes = self.sstore().append_outbox(&batch).expect("append");
        assert_eq!(outcomes.len(), group.len());
        for ((s, replayable, key), outcome) in group.iter().zip(outcomes) {
            let stream = StreamId::new(STREAMS[*s]);
            match outcome {
                AppendOutcome::Stored { message_id, seq } => {
                    let prev = self
                        .accepted
                        .insert(message_id, (stream.clone(), seq, *replayable, *key));
                    assert!(prev.is_none(), "message id {message_id} reused");
                    self.outboxes
                        .get_mut(&stream)
                        .unwrap()
                        .push(message_id, seq, 0, *replayable);
                }
                AppendOutcome::DuplicateOf { message_id } => {
                    let (s2, _, _, k2) = &self.accepted[&message_id];
                    assert_eq!((s2, k2), (&stream, key), "duplicate of another key");
                }
                _ => unreachable!(),
            }
        }
        self.pump_sender();
    }

    fn receive(&mut self, msg: DataMsg) {
        let stream = msg.stream.clone();
        let seq = msg.transmit.seq;
        match self.order.offer(&stream, seq, msg) {
            Offer::Deliver(items) => {
                for (_, m) in items {
                    self.apply(m);
                }
            }
            Offer::Delivered(m) => {
                let reply = match self.dedupe.check(&m.stream, m.transmit.message_id) {
                    Check::Seen(r) => r.to_vec(),
                    Check::New => REPLY_EXPIRED.to_vec(),
                };
                self.ack(&m, reply);
            }
            Offer::Buffered | Offer::AlreadyBuffered(_) | Offer::Overflow(_) => {}
        }
    }

    /// The receiver's step for an in-order message: apply (or cancel),
    /// record reply + cursor durably, then ack.
    fn apply(&mut self, m: DataMsg) {
        let id = m.transmit.message_id;
        if let Check::Seen(r) = self.dedupe.check(&m.stream, id) {
            let r = r.to_vec();
            self.ack(&m, r);
            return;
        }
        let reply = match m.transmit.kind {
            TransmitKind::Command => {
                self.ledger.push((m.stream.clone(), m.transmit.seq, id));
                format!("ok:{id}").into_bytes()
            }
            TransmitKind::Cancel => REPLY_CANCELLED.to_vec(),
        };
        let record = DedupeRecord {
            stream: m.stream.clone(),
            message_id: id,
            seq: m.transmit.seq,
            reply: reply.clone(),
            recorded_at_ms: self.now_ms(),
        };
        self.rstore()
            .dedupe_record(&[record], &[(m.stream.clone(), m.transmit.seq)])
            .expect("dedupe_record");
        self.dedupe.record(&m.stream, id, reply.clone(), self.now);
        self.ack(&m, reply);
    }

    fn ack(&mut self, m: &DataMsg, reply: Vec<u8>) {
        self.acks.push(AckMsg {
            stream: m.stream.clone(),
            message_id: m.transmit.message_id,
            reply,
        });
    }

    fn on_ack(&mut self, a: AckMsg) {
        if self
            .outboxes
            .get_mut(&a.stream)
            .unwrap()
            .on_ack(a.message_id)
            .is_some()
        {
            self.sstore()
                .ack_outbox(&a.stream, &[a.message_id])
                .expect("ack_outbox");
            let prev = self.replies.insert(a.message_id, a.reply);
            assert!(prev.is_none(), "caller answered twice");
        }
        self.pump_sender();
    }

    fn restart_sender(&mut self) {
        let b = self.sender.take().unwrap().reopen();
        self.sender = Some(b);
        let pending = self.sstore().pending_outbox().expect("pending");
        for s in STREAMS {
            let (o, nr) = Outbox::restore(StreamId::new(s), outbox_config(), &pending);
            self.outboxes.insert(StreamId::new(s), o);
            self.not_replayed.extend(nr);
        }
        self.pump_sender();
    }

    fn restart_receiver(&mut self) {
        let b = self.receiver.take().unwrap().reopen();
        self.receiver = Some(b);
        let records = self.rstore().dedupe_load().expect("load");
        self.dedupe = Dedupe::restore(dedupe_config(), &records, self.now, self.now_ms());
        self.order = Sequencer::new(OrderConfig::default().max_buffered(4));
        for s in STREAMS {
            let s = StreamId::new(s);
            if let Some(c) = self.rstore().cursor(&s).expect("cursor") {
                self.order.resume(&s, c);
            }
        }
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Send(group) => self.send(group),
            Op::Deliver(i) if !self.data.is_empty() => {
                let m = self.data.remove(i % self.data.len());
                self.receive(m);
            }
            Op::Drop(i) if !self.data.is_empty() => {
                self.data.remove(i % self.data.len());
            }
            Op::Duplicate(i) if !self.data.is_empty() => {
                let m = self.data[i % self.data.len()].clone();
                self.data.push(m);
            }
            Op::DeliverAck(i) if !self.acks.is_empty() => {
                let a = self.acks.remove(i % self.acks.len());
                self.on_ack(a);
            }
            Op::DropAck(i) if !self.acks.is_empty() => {
                self.acks.remove(i % self.acks.len());
            }
            Op::DuplicateAck(i) if !self.acks.is_empty() => {
                let a = self.acks[i % self.acks.len()].clone();
                self.acks.push(a);
            }
            Op::Tick(ms) => {
                self.now += Duration::from_millis(*ms);
                self.pump_sender();
            }
            Op::RouteChange => {
                let now = self.now;
                let mut out = vec![];
                for (s, o) in &mut self.outboxes {
                    let change = o.on_route_change(now);
                    self.not_replayed.extend(change.not_replayed);
                    out.push((s.clone(), change.transmits));
                }
                for (s, ts) in out {
                    self.transmit(&s, ts);
                }
            }
            Op::RestartSender => self.restart_sender(),
            Op::RestartReceiver => self.restart_receiver(),
            Op::PruneDedupe => {
                let cfg = dedupe_config();
                let cutoff = self
                    .now_ms()
                    .saturating_sub(cfg.retention.as_millis() as u64);
                self.rstore()
                    .dedupe_prune(cutoff, cfg.max_per_stream)
                    .expect("prune");
                self.dedupe.prune(self.now);
            }
            _ => {}
        }
    }

    /// No more faults: time passes, everything in flight arrives in order.
    fn drain(&mut self) {
        for _ in 0..200 {
            if self.outboxes.values().all(Outbox::is_empty)
                && self.data.is_empty()
                && self.acks.is_empty()
            {
                return;
            }
            self.now += Duration::from_secs(5);
            self.pump_sender();
            for m in std::mem::take(&mut self.data) {
                self.receive(m);
            }
            for a in std::mem::take(&mut self.acks) {
                self.on_ack(a);
            }
        }
        panic!(
            "did not drain: {} pending",
            self.outboxes.values().map(Outbox::len).sum::<usize>()
        );
    }

    fn check(&self) {
        assert!(self.sstore().pending_outbox().unwrap().is_empty());
        // each applied once, in seq order per stream, only accepted ones
        let mut applied = BTreeSet::new();
        let mut last: BTreeMap<&StreamId, u64> = BTreeMap::new();
        for (stream, seq, id) in &self.ledger {
            assert!(applied.insert(*id), "message {id} applied twice");
            let (s, aseq, _, _) = self.accepted.get(id).expect("applied but never accepted");
            assert_eq!((s, aseq), (stream, seq));
            let prev = last.insert(stream, *seq).unwrap_or(0);
            assert!(*seq > prev, "{stream}: seq {seq} applied after {prev}");
        }
        for (id, (_, _, replayable, _)) in &self.accepted {
            let reply = self
                .replies
                .get(id)
                .expect("every accepted command is answered");
            let ok = format!("ok:{id}").into_bytes();
            if *replayable && !self.not_replayed.contains(id) {
                assert!(applied.contains(id), "accepted command {id} never applied");
            }
            if reply == &ok {
                assert!(applied.contains(id));
            } else if reply == REPLY_CANCELLED {
                assert!(!applied.contains(id), "{id} cancelled yet applied");
            }
        }
        // a replayable command is never cancelled, so all of them apply
        for id in &self.not_replayed {
            assert!(
                !self.accepted[id].2,
                "replayable {id} reported not replayed"
            );
        }
    }
}

fn run<B: Backend>(sender: B, receiver: B, ops: &[Op]) {
    let mut w = World::new(sender, receiver);
    for op in ops {
        w.step(op);
    }
    w.drain();
    w.check();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn exactly_once_mem_store(ops in prop::collection::vec(op(), 0..120)) {
        run(MemStore::new(), MemStore::new(), &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn exactly_once_redb_store(ops in prop::collection::vec(op(), 0..60)) {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let path = dir.path().join(name);
            RedbFile(Some(RedbStore::open(&path).unwrap()), path)
        };
        run(open("sender.redb"), open("receiver.redb"), &ops);
    }
}

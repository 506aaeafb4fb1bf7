//! Property: any interleaving of send, ack, loss, duplication, reordering,
//! route changes, time steps, dedupe pruning, restarts of either side and
//! losses of the sender's store applies each accepted command exactly once,
//! in sequence order per stream and sender incarnation (not-replayable
//! commands: at most once, and their final reply says which); nothing that
//! was not accepted is applied; a command whose sender lost its store before
//! it was answered is applied at most once; once the receiver has applied a
//! command of a newer sender incarnation, no frame of an older one is
//! applied.
//!
//! The model wires the pure cores (`Outbox`, `Dedupe`, `Sequencer`) to a
//! `Store` the way the channel actors do (`src/channels/command/`): a send
//! is accepted only when the store append returns; every frame and answer
//! carries the sender's incarnation (kept in the sender's store, a new one
//! when the store is lost); the sender takes only answers of its own
//! incarnation; the receiver refuses frames of an incarnation older than the
//! newest it has adopted, adopts a newer one durably before applying any of
//! its commands, and keeps dedupe records and the cursor per incarnation
//! (`incarnation_key`); it applies a command, records its reply and cursor
//! in its store in the same step, then answers — a retransmit behind the
//! cursor whose record is gone gets an explicit "answer gone".

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use interlocking::channels::command::server::incarnation_key;
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
const REPLY_GONE: &[u8] = b"answer gone";

/// A backend that can be "restarted" (closed and reopened) or lost.
trait Backend: Sized {
    type S: Store;
    fn store(&self) -> &Self::S;
    fn reopen(self) -> Self;
    /// The store is lost: a new, empty one in its place.
    fn wipe(self) -> Self;
}

impl Backend for MemStore {
    type S = MemStore;
    fn store(&self) -> &MemStore {
        self
    }
    fn reopen(self) -> Self {
        self
    }
    fn wipe(self) -> Self {
        MemStore::new()
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
    fn wipe(mut self) -> Self {
        drop(self.0.take());
        std::fs::remove_file(&self.1).expect("remove the store file");
        self.0 = Some(RedbStore::open(&self.1).expect("create"));
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
    /// The sender's store is lost (disk replaced): a new incarnation.
    WipeSender,
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
        1 => Just(Op::WipeSender),
        1 => Just(Op::PruneDedupe),
    ]
}

#[derive(Clone, Debug)]
struct DataMsg {
    stream: StreamId,
    incarnation: u64,
    transmit: Transmit,
}

#[derive(Clone, Debug)]
struct AckMsg {
    stream: StreamId,
    incarnation: u64,
    message_id: u64,
    reply: Vec<u8>,
}

/// A command as the sender's callers know it: (sender incarnation, message id).
type Cmd = (u64, u64);

/// The receiver's state of one stream, as its server actor holds it.
struct Receiving {
    /// Newest sender incarnation adopted (0: none yet).
    incarnation: u64,
    dedupe: Dedupe,
    order: Sequencer<DataMsg>,
}

struct World<B: Backend> {
    t0: Instant,
    now: Instant,
    sender: Option<B>,
    receiver: Option<B>,
    /// Source of fresh incarnations, growing like the real clock-based ones.
    lives: u64,
    /// The sender's incarnation per stream (from its store).
    incarnations: BTreeMap<StreamId, u64>,
    outboxes: BTreeMap<StreamId, Outbox>,
    receiving: BTreeMap<StreamId, Receiving>,
    data: Vec<DataMsg>,
    acks: Vec<AckMsg>,
    /// command → (stream, seq, replayable, operation key)
    accepted: BTreeMap<Cmd, (StreamId, u64, bool, Option<u8>)>,
    /// accepted, then lost unanswered with the sender's store
    lost_with_store: BTreeSet<Cmd>,
    /// what the receiver's handler applied, in order: (stream, seq, command)
    ledger: Vec<(StreamId, u64, Cmd)>,
    /// final replies the sender's callers got
    replies: BTreeMap<Cmd, Vec<u8>>,
    not_replayed: BTreeSet<Cmd>,
    /// frames refused as of an older incarnation
    stale: u64,
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

fn order() -> Sequencer<DataMsg> {
    Sequencer::new(OrderConfig::default().max_buffered(4))
}

impl<B: Backend> World<B> {
    fn new(sender: B, receiver: B) -> Self {
        let now = Instant::now();
        let mut w = Self {
            t0: now,
            now,
            sender: Some(sender),
            receiver: Some(receiver),
            lives: 0,
            incarnations: BTreeMap::new(),
            outboxes: BTreeMap::new(),
            receiving: BTreeMap::new(),
            data: vec![],
            acks: vec![],
            accepted: BTreeMap::new(),
            lost_with_store: BTreeSet::new(),
            ledger: vec![],
            replies: BTreeMap::new(),
            not_replayed: BTreeSet::new(),
            stale: 0,
        };
        w.start_sender();
        w.restart_receiver();
        w
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
        let incarnation = self.incarnations[stream];
        self.data.extend(ts.into_iter().map(|transmit| DataMsg {
            stream: stream.clone(),
            incarnation,
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
            let inc = self.incarnations[&stream];
            match outcome {
                AppendOutcome::Stored { message_id, seq } => {
                    let prev = self
                        .accepted
                        .insert((inc, message_id), (stream.clone(), seq, *replayable, *key));
                    assert!(prev.is_none(), "command {inc:x}/{message_id} reused");
                    self.outboxes
                        .get_mut(&stream)
                        .unwrap()
                        .push(message_id, seq, 0, *replayable);
                }
                AppendOutcome::DuplicateOf { message_id } => {
                    let (s2, _, _, k2) = &self.accepted[&(inc, message_id)];
                    assert_eq!((s2, k2), (&stream, key), "duplicate of another key");
                }
                _ => unreachable!(),
            }
        }
        self.pump_sender();
    }

    /// The receiver's session and server: refuse an older incarnation,
    /// adopt a newer one durably, then order and apply within its keyspace.
    fn receive(&mut self, msg: DataMsg) {
        let stream = msg.stream.clone();
        let current = self.receiving[&stream].incarnation;
        if msg.incarnation < current {
            self.stale += 1;
            return;
        }
        if msg.incarnation > current {
            self.adopt(&stream, msg.incarnation);
        }
        let key = incarnation_key(&stream, msg.incarnation);
        let seq = msg.transmit.seq;
        let offer = self
            .receiving
            .get_mut(&stream)
            .unwrap()
            .order
            .offer(&key, seq, msg);
        match offer {
            Offer::Deliver(items) => {
                for (_, m) in items {
                    self.apply(m);
                }
            }
            Offer::Delivered(m) => {
                let id = m.transmit.message_id;
                let reply = match self.receiving[&stream].dedupe.check(&key, id) {
                    Check::Seen(r) => r.to_vec(),
                    Check::New => self
                        .rstore()
                        .dedupe_lookup(&key, id)
                        .expect("lookup")
                        // Applied, record pruned: "answer gone", never silence.
                        .unwrap_or_else(|| REPLY_GONE.to_vec()),
                };
                self.ack(&m, reply);
            }
            Offer::Buffered | Offer::AlreadyBuffered(_) | Offer::Overflow(_) => {}
        }
    }

    /// A newer sender incarnation: recorded durably, then its own (empty
    /// or restored) dedupe records and cursor.
    fn adopt(&mut self, stream: &StreamId, incarnation: u64) {
        self.rstore()
            .set_peer_incarnation(stream, incarnation)
            .expect("set_peer_incarnation");
        let r = self.restore_receiving(stream);
        assert_eq!(r.incarnation, incarnation);
        self.receiving.insert(stream.clone(), r);
    }

    fn restore_receiving(&self, stream: &StreamId) -> Receiving {
        let incarnation = self
            .rstore()
            .peer_incarnation(stream)
            .expect("peer_incarnation")
            .unwrap_or(0);
        let key = incarnation_key(stream, incarnation);
        let records = self.rstore().dedupe_load_for(&key).expect("load");
        let dedupe = Dedupe::restore(dedupe_config(), &records, self.now, self.now_ms());
        let mut order = order();
        if let Some(c) = self.rstore().cursor(&key).expect("cursor") {
            order.resume(&key, c);
        }
        Receiving {
            incarnation,
            dedupe,
            order,
        }
    }

    /// The receiver's step for an in-order message: apply (or cancel),
    /// record reply + cursor durably, then ack.
    fn apply(&mut self, m: DataMsg) {
        let id = m.transmit.message_id;
        let key = incarnation_key(&m.stream, m.incarnation);
        if let Check::Seen(r) = self.receiving[&m.stream].dedupe.check(&key, id) {
            let r = r.to_vec();
            self.ack(&m, r);
            return;
        }
        let reply = match m.transmit.kind {
            TransmitKind::Command => {
                self.ledger
                    .push((m.stream.clone(), m.transmit.seq, (m.incarnation, id)));
                format!("ok:{id}").into_bytes()
            }
            TransmitKind::Cancel => REPLY_CANCELLED.to_vec(),
        };
        let record = DedupeRecord {
            stream: key.clone(),
            message_id: id,
            seq: m.transmit.seq,
            reply: reply.clone(),
            recorded_at_ms: self.now_ms(),
        };
        self.rstore()
            .dedupe_record(&[record], &[(key.clone(), m.transmit.seq)])
            .expect("dedupe_record");
        let now = self.now;
        self.receiving
            .get_mut(&m.stream)
            .unwrap()
            .dedupe
            .record(&key, id, reply.clone(), now);
        self.ack(&m, reply);
    }

    fn ack(&mut self, m: &DataMsg, reply: Vec<u8>) {
        self.acks.push(AckMsg {
            stream: m.stream.clone(),
            incarnation: m.incarnation,
            message_id: m.transmit.message_id,
            reply,
        });
    }

    fn on_ack(&mut self, a: AckMsg) {
        // The session takes only answers echoing the sender's incarnation.
        if a.incarnation != self.incarnations[&a.stream] {
            return;
        }
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
            let prev = self.replies.insert((a.incarnation, a.message_id), a.reply);
            assert!(prev.is_none(), "caller answered twice");
        }
        self.pump_sender();
    }

    /// The sender's actors start: their incarnation from the store (a
    /// fresh one if the store has none), their outboxes from its pending
    /// entries.
    fn start_sender(&mut self) {
        let pending = self.sstore().pending_outbox().expect("pending");
        for s in STREAMS {
            let stream = StreamId::new(s);
            self.lives += 1;
            let fresh = (self.lives << 8) | 1;
            let inc = self
                .sstore()
                .sender_incarnation(&stream, fresh)
                .expect("sender_incarnation");
            if let Some(old) = self.incarnations.insert(stream.clone(), inc) {
                assert!(inc >= old, "{stream}: incarnation went back");
            }
            let (o, nr) = Outbox::restore(stream.clone(), outbox_config(), &pending);
            self.outboxes.insert(stream, o);
            self.not_replayed.extend(nr.into_iter().map(|id| (inc, id)));
        }
        self.pump_sender();
    }

    fn restart_sender(&mut self) {
        let b = self.sender.take().unwrap().reopen();
        self.sender = Some(b);
        self.start_sender();
    }

    /// The sender's store is lost: what it had accepted and not yet
    /// answered is lost with it (its callers are gone too); frames already
    /// in flight stay in the network.
    fn wipe_sender(&mut self) {
        let b = self.sender.take().unwrap().wipe();
        self.sender = Some(b);
        let unanswered: Vec<Cmd> = self
            .accepted
            .keys()
            .filter(|c| !self.replies.contains_key(c))
            .copied()
            .collect();
        self.lost_with_store.extend(unanswered);
        let before = self.incarnations.clone();
        self.start_sender();
        for (s, inc) in &self.incarnations {
            assert!(
                inc > &before[s],
                "{s}: a lost store must give a new incarnation"
            );
        }
    }

    fn restart_receiver(&mut self) {
        if let Some(b) = self.receiver.take() {
            self.receiver = Some(b.reopen());
        }
        for s in STREAMS {
            let s = StreamId::new(s);
            let r = self.restore_receiving(&s);
            self.receiving.insert(s, r);
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
                    let inc = self.incarnations[s];
                    self.not_replayed
                        .extend(change.not_replayed.into_iter().map(|id| (inc, id)));
                    out.push((s.clone(), change.transmits));
                }
                for (s, ts) in out {
                    self.transmit(&s, ts);
                }
            }
            Op::RestartSender => self.restart_sender(),
            Op::RestartReceiver => self.restart_receiver(),
            Op::WipeSender => self.wipe_sender(),
            Op::PruneDedupe => {
                let cfg = dedupe_config();
                let cutoff = self
                    .now_ms()
                    .saturating_sub(cfg.retention.as_millis() as u64);
                self.rstore()
                    .dedupe_prune(cutoff, cfg.max_per_stream)
                    .expect("prune");
                let now = self.now;
                for r in self.receiving.values_mut() {
                    r.dedupe.prune(now);
                }
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
        // each applied once, in seq order per stream and incarnation, only
        // accepted ones, never an older incarnation after a newer one
        let mut applied = BTreeSet::new();
        let mut last: BTreeMap<&StreamId, (u64, u64)> = BTreeMap::new();
        for (stream, seq, cmd) in &self.ledger {
            let (inc, id) = cmd;
            assert!(applied.insert(*cmd), "command {inc:x}/{id} applied twice");
            let (s, aseq, _, _) = self.accepted.get(cmd).expect("applied but never accepted");
            assert_eq!((s, aseq), (stream, seq));
            let (pinc, pseq) = last.insert(stream, (*inc, *seq)).unwrap_or((0, 0));
            assert!(
                *inc > pinc || (*inc == pinc && *seq > pseq),
                "{stream}: {inc:x}/seq {seq} applied after {pinc:x}/seq {pseq}"
            );
        }
        for (cmd, (_, _, replayable, _)) in &self.accepted {
            if self.lost_with_store.contains(cmd) {
                // Its sender is gone; applied at most once (checked above).
                continue;
            }
            let reply = self
                .replies
                .get(cmd)
                .expect("every accepted command is answered");
            let ok = format!("ok:{}", cmd.1).into_bytes();
            if *replayable && !self.not_replayed.contains(cmd) {
                assert!(
                    applied.contains(cmd),
                    "accepted command {cmd:?} never applied"
                );
            }
            if reply == &ok {
                assert!(applied.contains(cmd));
            } else if reply == REPLY_CANCELLED {
                assert!(!applied.contains(cmd), "{cmd:?} cancelled yet applied");
            }
        }
        // a replayable command is never cancelled, so all of them apply
        for cmd in &self.not_replayed {
            assert!(
                !self.accepted[cmd].2,
                "replayable {cmd:?} reported not replayed"
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

/// The scenario the property covers, spelled out: a command applied, its
/// duplicate still in flight when the sender's store is lost; the new
/// incarnation's first command (message id 1 again) is applied, and the old
/// duplicate arriving after it is refused as stale, not applied again.
/// The old answer, still in flight, is ignored by the new incarnation.
#[test]
fn a_lost_sender_store_starts_a_new_incarnation_and_its_old_frames_are_refused() {
    let mut w = World::new(MemStore::new(), MemStore::new());
    let first = w.incarnations[&StreamId::new(STREAMS[0])];
    for op in [
        Op::Send(vec![(0, true, None)]),
        Op::Duplicate(0),
        Op::Deliver(0),
        Op::WipeSender,
        Op::Send(vec![(0, true, None)]),
    ] {
        w.step(&op);
    }
    let second = w.incarnations[&StreamId::new(STREAMS[0])];
    assert!(second > first);
    // In flight: the old duplicate, then the new incarnation's command.
    assert_eq!(
        w.data.iter().map(|m| m.incarnation).collect::<Vec<_>>(),
        vec![first, second]
    );
    w.step(&Op::Deliver(1));
    w.step(&Op::Deliver(0));
    assert_eq!(w.stale, 1, "the old duplicate is refused");
    w.drain();
    w.check();
    let applied: Vec<Cmd> = w.ledger.iter().map(|(_, _, c)| *c).collect();
    assert_eq!(applied, vec![(first, 1), (second, 1)]);
    // Its answer was still in flight when the store went: applied once,
    // its caller gone with the store.
    assert_eq!(w.lost_with_store, BTreeSet::from([(first, 1)]));
    assert!(!w.replies.contains_key(&(first, 1)));
    assert_eq!(w.replies[&(second, 1)], b"ok:1");
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

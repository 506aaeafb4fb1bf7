//! Property test of the sync cores ([`Owner`], [`Subscriber`]) with their
//! stores: random interleavings of publishes (owner and two subscribers),
//! delivery, loss, duplication and reordering of every message, time
//! steps, heartbeats, re-attaches and restarts of any side from its store;
//! then a drain without faults. Invariants: every replica ends with the
//! owner's state, no update is applied twice by anyone (across restarts),
//! and every durable publish is in the owner's log exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use interlocking::channels::sync::{
    Access, AppendLog, Cursor, Document, Owner, OwnerConfig, Subscriber, SubscriberConfig, SyncMsg,
    WindowConfig,
};
use interlocking::store::{MemStore, SyncStore};
use interlocking::vocab::StreamId;
use proptest::prelude::*;

const SUBS: [&str; 2] = ["m1", "m2"];

#[derive(Clone, Debug)]
enum Op {
    OwnerPublish,
    Publish(usize),
    Deliver(usize),
    Drop(usize),
    Dup(usize),
    Swap(usize, usize),
    Time(u64),
    Heartbeat,
    Attach(usize),
    RestartSub(usize),
    RestartOwner,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::OwnerPublish),
        3 => (0..2usize).prop_map(Op::Publish),
        8 => any::<usize>().prop_map(Op::Deliver),
        2 => any::<usize>().prop_map(Op::Drop),
        1 => any::<usize>().prop_map(Op::Dup),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Swap(a, b)),
        1 => (1..3_000u64).prop_map(Op::Time),
        1 => Just(Op::Heartbeat),
        1 => (0..2usize).prop_map(Op::Attach),
        1 => (0..2usize).prop_map(Op::RestartSub),
        1 => Just(Op::RestartOwner),
    ]
}

/// `to` is "hub" or a subscriber; `from` likewise.
struct Msg {
    to: String,
    from: String,
    msg: SyncMsg,
}

struct World {
    start: Instant,
    now_ms: u64,
    owner: Owner<AppendLog>,
    owner_store: MemStore,
    subs: Vec<Subscriber<AppendLog>>,
    sub_stores: Vec<MemStore>,
    net: Vec<Msg>,
    /// Per subscriber, the cursors it applied (across restarts).
    applied: Vec<Vec<Cursor>>,
    /// Publishes made durable by each subscriber: (update id, bytes).
    durable: Vec<BTreeMap<u64, Vec<u8>>>,
    owner_published: Vec<Vec<u8>>,
    counter: u64,
    /// Whether each subscriber heard from the owner since the last round
    /// of the drain (the actor's silence timer).
    heard: [bool; 2],
}

fn config() -> OwnerConfig {
    OwnerConfig::default()
        .window(WindowConfig::default().max_entries(5))
        .snapshot_chunk(24)
}

fn sub_config() -> SubscriberConfig {
    SubscriberConfig::default().compact_every(4)
}

fn stream(i: usize) -> StreamId {
    StreamId::new(format!("sync:hub/{}/doc", SUBS[i]))
}

impl World {
    fn new() -> Self {
        let owner_store = MemStore::new();
        let owner = Self::open_owner(&owner_store);
        let sub_stores = vec![MemStore::new(), MemStore::new()];
        let subs = (0..2).map(|i| Self::open_sub(i, &sub_stores[i])).collect();
        Self {
            start: Instant::now(),
            now_ms: 1_000_000,
            owner,
            owner_store,
            subs,
            sub_stores,
            net: Vec::new(),
            applied: vec![Vec::new(), Vec::new()],
            durable: vec![BTreeMap::new(), BTreeMap::new()],
            owner_published: Vec::new(),
            counter: 0,
            heard: [false; 2],
        }
    }

    fn open_owner(store: &MemStore) -> Owner<AppendLog> {
        let rec = store.sync_owner_load("doc").unwrap();
        let (mut o, commit) =
            Owner::open("doc", "hub", AppendLog::default(), config(), rec, 4242).unwrap();
        store.sync_owner_commit("doc", &commit).unwrap();
        for s in SUBS {
            o.admit(s, Access::ReadWrite);
        }
        o
    }

    fn open_sub(i: usize, store: &MemStore) -> Subscriber<AppendLog> {
        let rec = store.sync_subscriber_load(&stream(i)).unwrap();
        Subscriber::open(
            "doc",
            SUBS[i],
            stream(i),
            AppendLog::default(),
            sub_config(),
            rec,
        )
        .unwrap()
    }

    fn instant(&self) -> Instant {
        self.start + Duration::from_millis(self.now_ms - 1_000_000)
    }

    fn owner_out(&mut self, out: interlocking::channels::sync::OwnerOutput) {
        self.owner_store
            .sync_owner_commit("doc", &out.commit)
            .unwrap();
        for (to, msg) in out.send {
            self.net.push(Msg {
                to,
                from: "hub".into(),
                msg,
            });
        }
    }

    fn send_to_owner(&mut self, i: usize, msgs: Vec<SyncMsg>) {
        for msg in msgs {
            self.net.push(Msg {
                to: "hub".into(),
                from: SUBS[i].into(),
                msg,
            });
        }
    }

    fn sub_out(&mut self, i: usize, out: interlocking::channels::sync::SubscriberOutput) {
        self.sub_stores[i]
            .sync_subscriber_commit(&stream(i), &out.commit)
            .unwrap();
        self.applied[i].extend(out.applied.iter().map(|a| a.cursor));
        self.send_to_owner(i, out.send);
    }

    fn step(&mut self, op: Op) {
        let now = self.instant();
        match op {
            Op::OwnerPublish => {
                self.counter += 1;
                let b = format!("hub-{}", self.counter).into_bytes();
                let (_, out) = self.owner.publish_local(b.clone(), self.now_ms).unwrap();
                self.owner_published.push(b);
                self.owner_out(out);
            }
            Op::Publish(i) => {
                self.counter += 1;
                let b = format!("{}-{}", SUBS[i], self.counter).into_bytes();
                let (id, commit) = self.subs[i].prepare_publish(&b).unwrap();
                self.sub_stores[i]
                    .sync_subscriber_commit(&stream(i), &commit)
                    .unwrap();
                self.durable[i].insert(id, b.clone());
                let msgs = self.subs[i].published(id, b, now);
                self.send_to_owner(i, msgs);
            }
            Op::Deliver(k) => {
                if !self.net.is_empty() {
                    let m = self.net.remove(k % self.net.len());
                    self.deliver(m);
                }
            }
            Op::Drop(k) => {
                if !self.net.is_empty() {
                    self.net.remove(k % self.net.len());
                }
            }
            Op::Dup(k) => {
                if !self.net.is_empty() {
                    let m = &self.net[k % self.net.len()];
                    let copy = Msg {
                        to: m.to.clone(),
                        from: m.from.clone(),
                        msg: m.msg.clone(),
                    };
                    self.net.push(copy);
                }
            }
            Op::Swap(a, b) => {
                if !self.net.is_empty() {
                    let n = self.net.len();
                    self.net.swap(a % n, b % n);
                }
            }
            Op::Time(ms) => {
                self.now_ms += ms;
                let now = self.instant();
                let out = self.owner.tick(self.now_ms);
                self.owner_out(out);
                for i in 0..2 {
                    let msgs = self.subs[i].poll(now);
                    self.send_to_owner(i, msgs);
                }
            }
            Op::Heartbeat => {
                for (to, msg) in self.owner.heartbeat() {
                    self.net.push(Msg {
                        to,
                        from: "hub".into(),
                        msg,
                    });
                }
            }
            Op::Attach(i) => {
                let msgs = self.subs[i].attach(now);
                self.send_to_owner(i, msgs);
            }
            Op::RestartSub(i) => {
                self.subs[i] = Self::open_sub(i, &self.sub_stores[i]);
                let msgs = self.subs[i].attach(now);
                self.send_to_owner(i, msgs);
            }
            Op::RestartOwner => {
                self.owner = Self::open_owner(&self.owner_store);
            }
        }
    }

    fn deliver(&mut self, m: Msg) {
        let now = self.instant();
        if m.to == "hub" {
            let out = self.owner.on_message(&m.from, m.msg, self.now_ms);
            self.owner_out(out);
        } else {
            let i = SUBS.iter().position(|s| *s == m.to).unwrap();
            self.heard[i] = true;
            let out = self.subs[i].on_message(m.msg, now);
            self.sub_out(i, out);
        }
    }

    /// Delivers everything without faults until nothing moves (bounded).
    fn drain(&mut self) {
        for _ in 0..400 {
            let mut delivered = 0;
            while !self.net.is_empty() {
                let m = self.net.remove(0);
                delivered += 1;
                if delivered > 20_000 {
                    let kinds: Vec<String> = self
                        .net
                        .iter()
                        .take(12)
                        .map(|m| format!("{}->{}: {:?}", m.from, m.to, m.msg))
                        .collect();
                    panic!(
                        "no quiescence: head {} subs {:?}; {kinds:#?}",
                        self.owner.head(),
                        self.subs.iter().map(|s| s.cursor()).collect::<Vec<_>>()
                    );
                }
                self.deliver(m);
            }
            let settled = self.subs.iter().all(|s| s.pending_publishes() == 0)
                && self.subs.iter().all(|s| {
                    caught_up(s.cursor(), self.owner.head()) && s.doc() == self.owner.doc()
                });
            if settled {
                return;
            }
            self.step(Op::Time(31_000));
            for i in 0..2 {
                if !self.subs[i].heard() || !self.heard[i] {
                    // The actor's silence timer: subscribe again.
                    let msg = self.subs[i].resubscribe();
                    self.send_to_owner(i, vec![msg]);
                }
                self.heard[i] = false;
            }
            self.step(Op::Heartbeat);
        }
    }
}

/// At the head (an empty log is the same in every epoch).
fn caught_up(c: Cursor, head: Cursor) -> bool {
    c == head || (head.seq == 0 && c.seq == 0)
}

fn check(world: &World) -> Result<(), TestCaseError> {
    let log = &world.owner.doc().entries;
    for (i, s) in world.subs.iter().enumerate() {
        prop_assert!(
            caught_up(s.cursor(), world.owner.head()),
            "subscriber {} at {} of {}",
            i,
            s.cursor(),
            world.owner.head()
        );
        prop_assert_eq!(s.doc(), world.owner.doc(), "subscriber {} state", i);
        prop_assert_eq!(s.pending_publishes(), 0, "subscriber {} outbox", i);
        // Applied at most once: cursors strictly increase across restarts.
        for w in world.applied[i].windows(2) {
            prop_assert!(
                w[0] < w[1],
                "subscriber {} applied {} then {}",
                i,
                w[0],
                w[1]
            );
        }
        // The stored state rebuilds the same document.
        let mut again = World::open_sub(i, &world.sub_stores[i]);
        prop_assert_eq!(again.doc(), world.owner.doc());
        prop_assert!(caught_up(again.cursor(), world.owner.head()));
        let _ = again.attach(Instant::now());
    }
    let mut seen = BTreeSet::new();
    for e in log {
        prop_assert!(
            seen.insert(e.clone()),
            "{:?} is in the log twice",
            String::from_utf8_lossy(e)
        );
    }
    for (i, d) in world.durable.iter().enumerate() {
        for b in d.values() {
            prop_assert!(
                seen.contains(b),
                "durable publish {:?} of {} lost",
                String::from_utf8_lossy(b),
                i
            );
        }
    }
    for b in &world.owner_published {
        prop_assert!(seen.contains(b));
    }
    let total = world.durable.iter().map(|d| d.len()).sum::<usize>() + world.owner_published.len();
    prop_assert_eq!(log.len(), total, "nothing but the publishes is in the log");
    // The owner rebuilt from its store is the same.
    let again = World::open_owner(&world.owner_store);
    prop_assert_eq!(again.doc(), world.owner.doc());
    prop_assert_eq!(again.head(), world.owner.head());
    let _ = AppendLog::default().snapshot();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("SYNC_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256), ..ProptestConfig::default() })]

    #[test]
    fn every_replica_converges_with_nothing_lost_or_applied_twice(
        ops in proptest::collection::vec(op(), 1..200)
    ) {
        let mut world = World::new();
        for i in 0..2 {
            let now = world.instant();
            let msgs = world.subs[i].attach(now);
            world.send_to_owner(i, msgs);
        }
        for op in ops {
            world.step(op);
        }
        world.drain();
        check(&world)?;
    }
}

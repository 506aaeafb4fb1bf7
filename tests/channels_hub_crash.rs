//! Crash test of the *receiving* side with real processes (issue #16): a
//! hub process serving one command stream on a real redb file is killed
//! with SIGKILL 20 times in quick succession while a member (this parent
//! process, real loopback QUIC) sends class-A commands at about 100/s, and
//! is restarted on the same file and the same address each time. Kills
//! land at seeded-random points, often during the burst in which the
//! member resends its whole window to the freshly restarted hub.
//!
//! Two handler styles, one test each:
//! - atomic ([`AtomicHandler`]): the ledger of applied commands is an
//!   application table in the hub's redb store, written in the same
//!   transaction as each command's dedupe record. Checked: every accepted
//!   command applied exactly once, every reply right;
//! - outside the store ([`CommandHandler`]): each applied command is
//!   appended to a ledger file and fsync'd. Checked: none lost, and at most
//!   one applied twice per kill (the narrow window `docs/channels.md`
//!   states).
//!
//! Self re-exec as in `channels_crash.rs` (helpers in `tests/common/child.rs`):
//! the parent runs this binary again with `--exact child_hub` and
//! `INTERLOCKING_HUB_CHILD=1`; parameters travel in `HUB_*` variables.
//! `HUB_SEED` picks the kill points, `HUB_KILLS` their number.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use interlocking::actors::node::NodeBuilder;
use interlocking::channels::command::{AtomicHandler, CommandContext, SenderConfig, ServeConfig};
use interlocking::channels::{
    CommandChannel, CommandHandler, CommandSender, OutboxConfig, SendOptions,
};
use interlocking::store::{AppTxn, MemStore, RedbStore, Store};
use interlocking::transports::PeerAddr;
use interlocking::transports::quic::{Backoff, QuicConfig};
use interlocking::trust::{CertificateAuthority, NodeIdentity, TrustRoots};
use interlocking::vocab::{NodeId, PathKind, Role, StreamId};
use rand::{Rng, SeedableRng};
use rustls::pki_types::CertificateDer;

mod common;
use common::child::{ChildTest, env_u64, probe, var};

const CHILD_VAR: &str = "INTERLOCKING_HUB_CHILD";
const STREAM: &str = "command:m1/hub";
/// The atomic ledger's application table.
const LEDGER: &str = "ledger";

/// Counts each applied k in the hub's store, with the dedupe record.
struct StoreLedger;

impl AtomicHandler for StoreLedger {
    type Command = u64;
    type Reply = u64;
    fn handle(&self, txn: &mut dyn AppTxn, _ctx: &CommandContext, k: u64) -> Result<u64, String> {
        let key = k.to_be_bytes();
        let n = match txn.get(LEDGER, &key).map_err(|e| e.to_string())? {
            Some(v) => u32::from_be_bytes(v.try_into().map_err(|_| "bad count")?),
            None => 0,
        };
        txn.insert(LEDGER, &key, &(n + 1).to_be_bytes())
            .map_err(|e| e.to_string())?;
        Ok(k * 2)
    }
}

/// Appends each applied k to a file and fsyncs it: an effect outside the
/// store.
struct FileLedger(Mutex<std::fs::File>);

#[async_trait]
impl CommandHandler for FileLedger {
    type Command = u64;
    type Reply = u64;
    async fn handle(&self, k: u64) -> Result<u64, String> {
        let mut f = self.0.lock().unwrap();
        writeln!(f, "{k}").map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        Ok(k * 2)
    }
}

/// The child process: the hub.
#[test]
fn child_hub() {
    if std::env::var(CHILD_VAR).as_deref() != Ok("1") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let identity =
            NodeIdentity::from_bytes(&std::fs::read(var("HUB_IDENTITY")).unwrap()).unwrap();
        let roots = TrustRoots::new(vec![CertificateDer::from(
            std::fs::read(var("HUB_ROOTS")).unwrap(),
        )]);
        let mut quic = QuicConfig::new(identity, roots);
        quic.listen = var("HUB_LISTEN").parse().unwrap();
        quic.probe = probe();
        let hub = NodeBuilder::new("hub", Role::Hub)
            .quic(quic)
            .spawn()
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(var("HUB_DB")).unwrap());
        let (stream, peer) = (StreamId::new(STREAM), NodeId::new("m1"));
        let cfg = ServeConfig::default();
        if var("HUB_MODE") == "atomic" {
            CommandChannel::serve_atomic(&hub, stream, peer, StoreLedger, store, cfg).await
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(var("HUB_LEDGER"))
                .unwrap();
            let ledger = FileLedger(Mutex::new(file));
            CommandChannel::serve(&hub, stream, peer, ledger, store, cfg).await
        }
        .unwrap();
        println!("ready");
        // Until SIGKILLed (bounded, should the parent die first).
        tokio::time::sleep(Duration::from_secs(300)).await;
    });
}

/// What one run saw.
struct Outcome {
    accepted: u64,
    applied: BTreeMap<u64, u32>,
    kills: usize,
    elapsed: Duration,
}

/// Runs the experiment with the hub's handler in `mode`.
fn experiment(mode: &str, seed: u64) -> Outcome {
    let kills = env_u64("HUB_KILLS", 20) as usize;
    let started = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("hub-crash-ca").unwrap();
    let identity_file = dir.path().join("hub.identity");
    let roots_file = dir.path().join("ca.der");
    let hub_identity = ca.issue_node(&NodeId::new("hub"), Role::Hub).unwrap();
    std::fs::write(&identity_file, hub_identity.to_bytes()).unwrap();
    std::fs::write(&roots_file, ca.certificate().as_ref()).unwrap();
    // A free loopback port, reused by every incarnation of the hub.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let db = dir.path().join("hub.redb");
    let ledger_file = dir.path().join("ledger.txt");
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let env = [
        ("HUB_DB", path(&db)),
        ("HUB_LISTEN", addr.to_string()),
        ("HUB_IDENTITY", path(&identity_file)),
        ("HUB_ROOTS", path(&roots_file)),
        ("HUB_MODE", mode.to_string()),
        ("HUB_LEDGER", path(&ledger_file)),
    ];

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let replied = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (member, pacer) = rt.block_on(async {
        let mut quic = QuicConfig::new(
            ca.issue_node(&NodeId::new("m1"), Role::Member).unwrap(),
            ca.roots(),
        );
        quic.probe = probe();
        quic.reconnect = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(300),
            ..Backoff::default()
        };
        let member = NodeBuilder::new("m1", Role::Member)
            .quic(quic)
            .dial(PathKind::Quic, PeerAddr::at("hub", addr))
            .spawn()
            .await
            .unwrap();
        let cfg = SenderConfig::default().outbox(
            OutboxConfig::default()
                .max_in_flight(256)
                .rto(Duration::from_millis(200), Duration::from_secs(1)),
        );
        let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
            &member,
            StreamId::new(STREAM),
            NodeId::new("hub"),
            Arc::new(MemStore::new()),
            cfg,
        )
        .await
        .unwrap();
        // About 100 commands/s until told to stop; each reply checked.
        let (replied, accepted, stop) = (replied.clone(), accepted.clone(), stop.clone());
        let pacer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut waiters = Vec::new();
            let mut k = 0u64;
            while !stop.load(Ordering::SeqCst) && k < 100_000 {
                tick.tick().await;
                k += 1;
                let r = sender
                    .send(k, SendOptions::class_a())
                    .await
                    .unwrap_or_else(|e| panic!("send {k}: {e}"));
                accepted.store(k, Ordering::SeqCst);
                let replied = replied.clone();
                waiters.push(tokio::spawn(async move {
                    let v = r.reply().await.unwrap_or_else(|e| panic!("reply {k}: {e}"));
                    assert_eq!(v, k * 2, "reply of {k}");
                    replied.fetch_add(1, Ordering::SeqCst);
                }));
            }
            for w in waiters {
                tokio::time::timeout(Duration::from_secs(60), w)
                    .await
                    .expect("every reply within 60 s")
                    .unwrap();
            }
        });
        (member, pacer)
    });

    let mut kill_points = Vec::new();
    for round in 0..=kills {
        let hub = ChildTest::spawn("child_hub", CHILD_VAR, &env);
        hub.wait_for("ready", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("seed {seed}: round {round}: {e}"));
        if round == kills {
            stop.store(true, Ordering::SeqCst);
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(90), pacer)
                    .await
                    .unwrap_or_else(|_| panic!("seed {seed}: replies not all in"))
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            });
            // Every reply was sent after its record was durable.
            hub.kill();
            break;
        }
        // 0: kill during the resend burst; else after that many replies.
        let wait_replies = if rng.random_bool(0.3) {
            0
        } else {
            rng.random_range(1..=30)
        };
        let delay = Duration::from_micros(rng.random_range(0..20_000));
        let target = replied.load(Ordering::SeqCst) + wait_replies;
        let deadline = Instant::now() + Duration::from_secs(20);
        while replied.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "seed {seed}: round {round}: no progress within 20 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(delay);
        hub.kill();
        kill_points.push((wait_replies, delay.as_millis()));
    }
    rt.block_on(member.shutdown());
    let accepted = accepted.load(Ordering::SeqCst);
    let mut applied: BTreeMap<u64, u32> = BTreeMap::new();
    if mode == "atomic" {
        let store = RedbStore::open(&db).unwrap();
        let n = store.app_len(LEDGER).unwrap();
        for k in 1..=accepted {
            if let Some(v) = store.app_get(LEDGER, &k.to_be_bytes()).unwrap() {
                applied.insert(k, u32::from_be_bytes(v.try_into().unwrap()));
            }
        }
        assert_eq!(n, applied.len() as u64, "seed {seed}: unknown ledger keys");
    } else {
        for line in std::fs::read_to_string(&ledger_file).unwrap().lines() {
            let k: u64 = line.trim().parse().unwrap();
            *applied.entry(k).or_default() += 1;
        }
    }
    eprintln!("seed {seed}: {mode}: kills at (replies waited, ms after) {kill_points:?}");
    Outcome {
        accepted,
        applied,
        kills,
        elapsed: started.elapsed(),
    }
}

/// Accepted commands never applied.
fn lost(o: &Outcome) -> Vec<u64> {
    (1..=o.accepted)
        .filter(|k| !o.applied.contains_key(k))
        .collect()
}

/// Commands applied more than once, with their count.
fn doubled(o: &Outcome) -> Vec<(u64, u32)> {
    o.applied
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, n)| (*k, *n))
        .collect()
}

fn report(mode: &str, seed: u64, o: &Outcome) {
    let extra: u32 = doubled(o).iter().map(|(_, n)| n - 1).sum();
    eprintln!(
        "seed {seed}: {mode} handler: {} accepted, {} lost, {extra} applied twice, \
         {} unexpected, across {} SIGKILLs of the hub, in {:?}",
        o.accepted,
        lost(o).len(),
        o.applied.keys().filter(|k| **k > o.accepted).count(),
        o.kills,
        o.elapsed
    );
}

#[test]
fn sigkilled_hub_with_atomic_handler_applies_every_command_exactly_once() {
    if std::env::var(CHILD_VAR).is_ok() {
        return;
    }
    let seed = env_u64("HUB_SEED", 20_261_202);
    let o = experiment("atomic", seed);
    report("atomic", seed, &o);
    assert!(o.kills >= 20 || env_u64("HUB_KILLS", 20) < 20);
    assert_eq!(lost(&o), Vec::<u64>::new(), "seed {seed}: lost");
    assert_eq!(doubled(&o), Vec::new(), "seed {seed}: applied twice");
    assert!(o.applied.keys().all(|k| *k <= o.accepted));
}

#[test]
fn sigkilled_hub_with_outside_effects_loses_none_and_repeats_at_most_one_per_kill() {
    if std::env::var(CHILD_VAR).is_ok() {
        return;
    }
    let seed = env_u64("HUB_SEED", 20_261_202);
    let o = experiment("file", seed);
    report("outside-store", seed, &o);
    assert_eq!(lost(&o), Vec::<u64>::new(), "seed {seed}: lost");
    let extra: u32 = doubled(&o).iter().map(|(_, n)| n - 1).sum();
    assert!(
        extra as usize <= o.kills,
        "seed {seed}: {extra} repeats over {} kills: {:?}",
        o.kills,
        doubled(&o)
    );
}

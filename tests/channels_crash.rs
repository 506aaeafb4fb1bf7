//! Crash test with real processes: a sender process sending class-A
//! commands over a real redb file and real loopback QUIC is killed with
//! SIGKILL at seeded-random points, restarted on the same file each time,
//! and finally lets finish. The hub runs in this (parent) process; its
//! handler counts every application in a ledger.
//!
//! Self re-exec: the parent runs this test binary again with
//! `--exact child_sender` and `INTERLOCKING_CRASH_CHILD=1`; the child's
//! parameters travel in `CRASH_*` variables (redb path, hub address, the
//! member's identity and the CA certificate as files, first and last k).
//! `child_sender` returns at once without the variable.
//!
//! The child sends k = first..=N with operation key `cmd-k`, printing
//! `accepted k` after each `send` returned (durably stored), then waits for
//! every reply and for its outbox to drain and prints `done`. A restarted
//! child resumes its pending outbox by itself and sends again from the
//! highest k the parent saw accepted + 1: a k stored but not yet printed is
//! deduplicated by its operation key.
//!
//! `CRASH_SEED` picks the kill points, `CRASH_N` the number of commands.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use interlocking::actors::node::NodeBuilder;
use interlocking::channels::command::{SenderConfig, ServeConfig};
use interlocking::channels::{
    CommandChannel, CommandError, CommandHandler, CommandSender, OutboxConfig, SendOptions,
};
use interlocking::store::{MemStore, RedbStore, Store};
use interlocking::transports::PeerAddr;
use interlocking::transports::quic::QuicConfig;
use interlocking::trust::{CertificateAuthority, NodeIdentity, TrustRoots};
use interlocking::vocab::{NodeId, PathKind, Role, StreamId};
use rand::{Rng, SeedableRng};
use rustls::pki_types::CertificateDer;

mod common;
use common::child::{env_u64, probe, var};

const CHILD_VAR: &str = "INTERLOCKING_CRASH_CHILD";
const STREAM: &str = "command:m1/hub";

/// Concurrent sends per wave in the child.
const WAVE: usize = 8;

/// Runs the futures concurrently (each on its own task); results in order.
async fn futures_join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// The child process: the member node and its sender.
#[test]
fn child_sender() {
    if std::env::var(CHILD_VAR).as_deref() != Ok("1") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(child_main());
}

async fn child_main() {
    let db = PathBuf::from(var("CRASH_DB"));
    let hub_addr: std::net::SocketAddr = var("CRASH_HUB").parse().unwrap();
    let identity =
        NodeIdentity::from_bytes(&std::fs::read(var("CRASH_IDENTITY")).unwrap()).unwrap();
    let roots = TrustRoots::new(vec![CertificateDer::from(
        std::fs::read(var("CRASH_ROOTS")).unwrap(),
    )]);
    let first: u64 = var("CRASH_FIRST").parse().unwrap();
    let last: u64 = var("CRASH_LAST").parse().unwrap();

    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&db).unwrap());
    // Keys a killed predecessor stored, to report re-sends deduplicated.
    let stored_keys: std::collections::HashSet<String> = store
        .pending_outbox()
        .unwrap()
        .into_iter()
        .filter_map(|r| r.operation_key)
        .collect();
    let mut quic = QuicConfig::new(identity, roots);
    quic.probe = probe();
    let member = NodeBuilder::new("m1", Role::Member)
        .quic(quic)
        .dial(PathKind::Quic, PeerAddr::at("hub", hub_addr))
        .spawn()
        .await
        .unwrap();
    let cfg = SenderConfig::default().outbox(
        OutboxConfig::default()
            .max_in_flight(128)
            .rto(Duration::from_millis(200), Duration::from_secs(1)),
    );
    let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
        &member,
        StreamId::new(STREAM),
        NodeId::new("hub"),
        store,
        cfg,
    )
    .await
    .unwrap();
    // Entries a killed predecessor stored are restored by the actor itself.
    let restored = sender
        .stats()
        .pending
        .load(std::sync::atomic::Ordering::Relaxed);
    println!("restored {restored}");
    // Waves of concurrent sends (one group commit each), printed in k
    // order: a kill can land with stored but unprinted commands.
    let mut receipts = Vec::new();
    let mut k = first;
    while k <= last {
        let wave: Vec<u64> = (k..=last).take(WAVE).collect();
        let sends = wave.iter().map(|&k| {
            let sender = sender.clone();
            async move {
                let opts = SendOptions::class_a().operation_key(format!("cmd-{k}"));
                (k, sender.send(k, opts).await)
            }
        });
        let results = futures_join_all(sends).await;
        // A caller slow to record acceptance: a kill landing here leaves
        // stored commands the parent never saw accepted.
        tokio::time::sleep(Duration::from_millis(3)).await;
        for (k, r) in results {
            let r = r.unwrap_or_else(|e| panic!("send {k}: {e}"));
            println!("accepted {k}");
            if stored_keys.contains(&format!("cmd-{k}")) {
                // Stored before the kill, never printed: the key found the
                // restored entry instead of storing it again.
                println!("deduplicated {k}");
            }
            receipts.push((k, r));
        }
        k += wave.len() as u64;
    }
    for (k, r) in receipts {
        match tokio::time::timeout(Duration::from_secs(30), r.reply()).await {
            Ok(Ok(v)) => assert_eq!(v, k * 2, "reply of {k}"),
            // Stored by a killed predecessor and settled since.
            Ok(Err(CommandError::Duplicate { .. })) => println!("duplicate {k}"),
            Ok(Err(e)) => panic!("reply of {k}: {e}"),
            Err(_) => panic!("no reply for {k} within 30 s"),
        }
    }
    // Entries restored from a predecessor have no receipt here.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sender
        .stats()
        .pending
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
    {
        assert!(tokio::time::Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("done");
    member.shutdown().await;
}

#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<BTreeMap<u64, u32>>>);

#[async_trait]
impl CommandHandler for Ledger {
    type Command = u64;
    type Reply = u64;
    async fn handle(&self, k: u64) -> Result<u64, String> {
        *self.0.lock().unwrap().entry(k).or_default() += 1;
        Ok(k * 2)
    }
}

enum Line {
    Accepted(u64),
    Restored(u64),
    Duplicate,
    Done,
    Eof,
}

/// One child run: started, read line by line (bounded), killed after
/// `kill_after` accepted lines (or let finish when `None`).
struct Run {
    accepted: Vec<u64>,
    restored: u64,
    duplicates: u64,
    finished: bool,
}

fn run_child(
    env: &[(&str, String)],
    first: u64,
    last: u64,
    kill_after: Option<(usize, Duration)>,
    seed: u64,
) -> Run {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child_sender", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .env("CRASH_FIRST", first.to_string())
        .env("CRASH_LAST", last.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The harness prints `test child_sender ... ` without a newline
            // before the first line of the child's own output.
            if let Some((_, k)) = line.rsplit_once("accepted ") {
                let _ = tx.send(Line::Accepted(k.trim().parse().unwrap()));
            } else if let Some((_, n)) = line.rsplit_once("restored ") {
                let _ = tx.send(Line::Restored(n.trim().parse().unwrap()));
            } else if line.contains("duplicate ") || line.contains("deduplicated ") {
                let _ = tx.send(Line::Duplicate);
            } else if line.trim_end().ends_with("done") {
                let _ = tx.send(Line::Done);
            }
        }
        let _ = tx.send(Line::Eof);
    });
    let mut run = Run {
        accepted: Vec::new(),
        restored: 0,
        duplicates: 0,
        finished: false,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((n, delay)) = kill_after
            && run.accepted.len() >= n
        {
            // A random moment after the n-th line; SIGKILL on unix.
            std::thread::sleep(delay);
            child.kill().unwrap();
            // Lines the child printed before it died were accepted too.
            while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
                match line {
                    Line::Accepted(k) => run.accepted.push(k),
                    Line::Restored(n) => run.restored += n,
                    Line::Duplicate => run.duplicates += 1,
                    Line::Done => run.finished = true,
                    Line::Eof => break,
                }
            }
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Line::Accepted(k)) => run.accepted.push(k),
            Ok(Line::Restored(n)) => run.restored += n,
            Ok(Line::Duplicate) => run.duplicates += 1,
            Ok(Line::Done) => run.finished = true,
            Ok(Line::Eof) => break,
            Err(_) => {
                let _ = child.kill();
                panic!("seed {seed}: child did not progress within 60 s");
            }
        }
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    if kill_after.is_none() {
        assert!(
            status.success() && run.finished,
            "seed {seed}: final child failed: {status}"
        );
    }
    run
}

#[test]
fn sigkilled_sender_process_loses_no_accepted_command_and_applies_none_twice() {
    if std::env::var(CHILD_VAR).is_ok() {
        return;
    }
    let seed = env_u64("CRASH_SEED", 20_261_123);
    let n = env_u64("CRASH_N", 400);
    let kills = env_u64("CRASH_KILLS", 6) as usize;
    let started = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("crash-ca").unwrap();
    let member = ca.issue_node(&NodeId::new("m1"), Role::Member).unwrap();
    let identity_file = dir.path().join("m1.identity");
    let roots_file = dir.path().join("ca.der");
    std::fs::write(&identity_file, member.to_bytes()).unwrap();
    std::fs::write(&roots_file, ca.certificate().as_ref()).unwrap();

    let ledger = Ledger::default();
    let hub = rt.block_on(async {
        let mut quic = QuicConfig::new(
            ca.issue_node(&NodeId::new("hub"), Role::Hub).unwrap(),
            ca.roots(),
        );
        quic.probe = probe();
        let hub = NodeBuilder::new("hub", Role::Hub)
            .quic(quic)
            .spawn()
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        CommandChannel::serve(
            &hub,
            StreamId::new(STREAM),
            NodeId::new("m1"),
            ledger.clone(),
            store,
            ServeConfig::default(),
        )
        .await
        .unwrap();
        hub
    });
    let hub_addr = hub.listen_addr(PathKind::Quic).expect("hub listens");
    let env = [
        (
            "CRASH_DB",
            dir.path().join("m1.redb").to_string_lossy().into_owned(),
        ),
        ("CRASH_HUB", hub_addr.to_string()),
        (
            "CRASH_IDENTITY",
            identity_file.to_string_lossy().into_owned(),
        ),
        ("CRASH_ROOTS", roots_file.to_string_lossy().into_owned()),
    ];

    let mut printed: Vec<u64> = Vec::new();
    let mut highest = 0u64;
    let mut kill_points = Vec::new();
    let (mut restored, mut duplicates) = (0, 0);
    for round in 0..=kills {
        let kill_after = (round < kills).then(|| {
            (
                rng.random_range(5..=(n as usize / (kills + 1)).max(6)),
                Duration::from_micros(rng.random_range(0..20_000)),
            )
        });
        let run = run_child(&env, highest + 1, n, kill_after, seed);
        if let Some((after, _)) = kill_after {
            assert!(
                !run.finished,
                "seed {seed}: round {round} finished before its kill"
            );
            kill_points.push((highest + 1, after));
        }
        let expected: Vec<u64> = (highest + 1..).take(run.accepted.len()).collect();
        assert_eq!(
            run.accepted, expected,
            "seed {seed}: round {round} accepted in order"
        );
        highest += run.accepted.len() as u64;
        restored += run.restored;
        duplicates += run.duplicates;
        printed.extend(run.accepted);
    }
    assert!(kill_points.len() >= 5, "seed {seed}: at least 5 kills");

    let applied = ledger.0.lock().unwrap().clone();
    for k in &printed {
        assert_eq!(
            applied.get(k),
            Some(&1),
            "seed {seed}: accepted {k} must be applied exactly once (kills at {kill_points:?})"
        );
    }
    for (k, times) in &applied {
        assert!(
            (1..=n).contains(k),
            "seed {seed}: {k} applied but never sent"
        );
        assert_eq!(*times, 1, "seed {seed}: {k} applied {times} times");
    }
    // Every k from 1 to N was sent by some run, so all are applied.
    assert_eq!(
        applied.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "seed {seed}: kills at {kill_points:?}"
    );
    eprintln!(
        "seed {seed}: {n} commands, kills after (first k, accepted lines) {kill_points:?}; \
         {restored} entries restored by restarted children, {duplicates} re-sends \
         deduplicated by operation key; {:?}",
        started.elapsed()
    );
    rt.block_on(hub.shutdown());
}

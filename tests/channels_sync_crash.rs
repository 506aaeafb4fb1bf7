//! A sync subscriber killed with SIGKILL resumes from its durable cursor
//! without applying anything twice, and loses none of its publishes: real
//! processes, loopback QUIC with mutual TLS, a real redb file.
//!
//! The test binary re-executes itself (`--exact child_subscriber`,
//! `INTERLOCKING_SYNC_CHILD=1`, parameters in `SYNC_CRASH_*` variables). The
//! child subscribes `m1` to the hub's document (an [`AppendLog`], so a
//! double or missing application shows in its state), prints `applied <seq>`
//! for every update it applied (after the cursor and state were committed)
//! and publishes its own updates `m1-<k>`, printing `published <k>` once each
//! is durable. The parent (the hub) keeps publishing, kills the child with
//! SIGKILL a seeded-random 0–20 ms after a seeded-random number of lines,
//! restarts it on the same file, and finally lets it catch up and exit. It
//! then checks: no seq printed twice across all children, the child's
//! stored state (read back from its redb file) is exactly the owner's log,
//! every printed publish is in the log, and no update id of m1 is in the log
//! twice. `SYNC_CRASH_SEED`, `SYNC_CRASH_KILLS` (default 5).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use interlocking::actors::node::NodeBuilder;
use interlocking::channels::sync::actor::{OwnerTiming, SubscriberTiming};
use interlocking::channels::sync::{
    Access, AppendLog, Document, OwnerConfig, SubscriberConfig, SyncChannel, WindowConfig,
    stream_name,
};
use interlocking::store::{MemStore, RedbStore, SyncStore};
use interlocking::transports::PeerAddr;
use interlocking::transports::probe::ProbeConfig;
use interlocking::transports::quic::QuicConfig;
use interlocking::trust::{CertificateAuthority, NodeIdentity, TrustRoots};
use interlocking::vocab::{NodeId, PathKind, Role};
use rand::{Rng, SeedableRng};
use rustls::pki_types::CertificateDer;

const CHILD_VAR: &str = "INTERLOCKING_SYNC_CHILD";
const DOC: &str = "log";

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child: {name} not set"))
}

fn probe() -> ProbeConfig {
    ProbeConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
    }
}

#[test]
fn child_subscriber() {
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
    let db = PathBuf::from(var("SYNC_CRASH_DB"));
    let hub_addr: std::net::SocketAddr = var("SYNC_CRASH_HUB").parse().unwrap();
    let identity =
        NodeIdentity::from_bytes(&std::fs::read(var("SYNC_CRASH_IDENTITY")).unwrap()).unwrap();
    let roots = TrustRoots::new(vec![CertificateDer::from(
        std::fs::read(var("SYNC_CRASH_ROOTS")).unwrap(),
    )]);
    let first: u64 = var("SYNC_CRASH_FIRST").parse().unwrap();
    let last: u64 = var("SYNC_CRASH_LAST").parse().unwrap();
    let target: u64 = var("SYNC_CRASH_TARGET").parse().unwrap();
    let store = Arc::new(RedbStore::open(&db).unwrap());
    let mut quic = QuicConfig::new(identity, roots);
    quic.probe = probe();
    let member = NodeBuilder::new("m1", Role::Member)
        .quic(quic)
        .dial(PathKind::Quic, PeerAddr::at("hub", hub_addr))
        .spawn()
        .await
        .unwrap();
    let sub = SyncChannel::subscribe(
        &member,
        "hub",
        DOC,
        AppendLog::default,
        store,
        SubscriberConfig::default().compact_every(50),
        SubscriberTiming::default(),
    )
    .await
    .unwrap();
    println!("resumed at {}", sub.cursor().seq);
    let mut applied = sub.applied();
    let printer = tokio::spawn(async move {
        while let Ok(a) = applied.recv().await {
            println!("applied {}", a.cursor.seq);
        }
    });
    for k in first..=last {
        sub.publish(format!("m1-{k}").into_bytes()).await.unwrap();
        println!("published {k}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sub.cursor().seq < target || sub.pending_publishes() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "child did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the printer see the last applied updates.
    tokio::time::sleep(Duration::from_millis(100)).await;
    printer.abort();
    println!("done");
    member.shutdown().await;
}

enum Line {
    Applied(u64),
    Published(u64),
    Done,
    Eof,
}

#[derive(Default)]
struct Run {
    applied: Vec<u64>,
    published: Vec<u64>,
    lines: usize,
    finished: bool,
}

fn run_child(
    env: &[(&str, String)],
    first: u64,
    last: u64,
    target: u64,
    kill_after: Option<(usize, Duration)>,
    seed: u64,
) -> Run {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "child_subscriber",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_VAR, "1")
    .env("SYNC_CRASH_FIRST", first.to_string())
    .env("SYNC_CRASH_LAST", last.to_string())
    .env("SYNC_CRASH_TARGET", target.to_string())
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
            let parsed = if let Some((_, k)) = line.rsplit_once("applied ") {
                k.trim().parse().ok().map(Line::Applied)
            } else if let Some((_, k)) = line.rsplit_once("published ") {
                k.trim().parse().ok().map(Line::Published)
            } else if line.trim_end().ends_with("done") {
                Some(Line::Done)
            } else {
                None
            };
            if let Some(l) = parsed {
                let _ = tx.send(l);
            }
        }
        let _ = tx.send(Line::Eof);
    });
    let mut run = Run::default();
    let take = |run: &mut Run, line: Line| -> bool {
        match line {
            Line::Applied(s) => run.applied.push(s),
            Line::Published(k) => run.published.push(k),
            Line::Done => run.finished = true,
            Line::Eof => return false,
        }
        run.lines += 1;
        true
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some((n, delay)) = kill_after
            && run.lines >= n
        {
            std::thread::sleep(delay);
            child.kill().unwrap();
            while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
                if !take(&mut run, line) {
                    break;
                }
            }
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if !take(&mut run, line) {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("seed {seed}: child did not progress within 90 s");
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
fn sigkilled_subscriber_resumes_from_its_cursor_without_reapplying_or_losing_publishes() {
    if std::env::var(CHILD_VAR).is_ok() {
        return;
    }
    let seed = std::env::var("SYNC_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_261_202u64);
    let kills: usize = std::env::var("SYNC_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!("SYNC_CRASH_SEED={seed} SYNC_CRASH_KILLS={kills}");
    let started = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("sync-crash-ca").unwrap();
    let member = ca.issue_node(&NodeId::new("m1"), Role::Member).unwrap();
    let identity_file = dir.path().join("m1.identity");
    let roots_file = dir.path().join("ca.der");
    std::fs::write(&identity_file, member.to_bytes()).unwrap();
    std::fs::write(&roots_file, ca.certificate().as_ref()).unwrap();
    let (hub, owner) = rt.block_on(async {
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
        // A window of 300: a child that missed more gets snapshot + diff.
        let config = OwnerConfig::default().window(WindowConfig::default().max_entries(300));
        let owner = SyncChannel::own(
            &hub,
            DOC,
            AppendLog::default,
            Arc::new(MemStore::new()),
            config,
            OwnerTiming::default(),
        )
        .await
        .unwrap();
        owner.admit("m1", Access::ReadWrite);
        (hub, owner)
    });
    let mut owner_applied = owner.applied();
    let hub_addr = hub.listen_addr(PathKind::Quic).expect("hub listens");
    let db = dir.path().join("m1.redb");
    let env = [
        ("SYNC_CRASH_DB", db.to_string_lossy().into_owned()),
        ("SYNC_CRASH_HUB", hub_addr.to_string()),
        (
            "SYNC_CRASH_IDENTITY",
            identity_file.to_string_lossy().into_owned(),
        ),
        (
            "SYNC_CRASH_ROOTS",
            roots_file.to_string_lossy().into_owned(),
        ),
    ];
    const PER_ROUND_HUB: u64 = 400;
    const PER_ROUND_CHILD: u64 = 40;
    let mut hub_published = 0u64;
    let mut printed_applied: Vec<u64> = Vec::new();
    let mut printed_published: Vec<u64> = Vec::new();
    let mut next_k = 1u64;
    let mut kill_points = Vec::new();
    for round in 0..=kills {
        // The hub publishes while the child is down and while it runs.
        let burst = rt.spawn({
            let owner = owner.clone();
            async move {
                for i in 0..PER_ROUND_HUB {
                    owner
                        .publish(format!("hub-{round}-{i}").into_bytes())
                        .await
                        .unwrap();
                    if i % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        });
        let mut burst = Some(burst);
        if round == kills
            && let Some(b) = burst.take()
        {
            rt.block_on(b).unwrap();
        }
        hub_published += PER_ROUND_HUB;
        let kill_after = (round < kills).then(|| {
            (
                rng.random_range(20..400),
                Duration::from_micros(rng.random_range(0..20_000)),
            )
        });
        // The child waits for the whole log: every hub update, every publish
        // its predecessors made durable (printed or not: the file's next
        // update id says how many) and its own.
        let durable_before = RedbStore::open(&db)
            .unwrap()
            .sync_subscriber_load(&stream_name("hub", "m1", DOC))
            .unwrap()
            .map_or(0, |r| r.next_update_id.saturating_sub(1));
        let target = hub_published + durable_before + PER_ROUND_CHILD;
        let run = run_child(
            &env,
            next_k,
            next_k + PER_ROUND_CHILD - 1,
            target,
            kill_after,
            seed,
        );
        if let Some(b) = burst.take() {
            rt.block_on(b).unwrap();
            kill_points.push((round, run.lines));
        }
        let expected: Vec<u64> = (next_k..).take(run.published.len()).collect();
        assert_eq!(run.published, expected, "seed {seed}: publishes in order");
        next_k += run.published.len() as u64;
        printed_published.extend(run.published);
        printed_applied.extend(run.applied);
    }
    // Nothing applied twice across all incarnations.
    let mut seen = BTreeSet::new();
    for s in &printed_applied {
        assert!(
            seen.insert(*s),
            "seed {seed}: seq {s} applied twice (kills {kill_points:?})"
        );
    }
    // The child's stored state is exactly the owner's log.
    let owner_log = rt.block_on(owner.read(|d| d.entries.clone())).unwrap();
    let rec = RedbStore::open(&db)
        .unwrap()
        .sync_subscriber_load(&stream_name("hub", "m1", DOC))
        .unwrap()
        .expect("the child stored its state");
    let mut replica = AppendLog::default();
    if let Some(s) = &rec.snapshot {
        replica.load(s).unwrap();
    }
    for u in &rec.applied {
        replica.apply(u).unwrap();
    }
    assert_eq!(
        rec.seq,
        owner_log.len() as u64,
        "seed {seed}: stored cursor"
    );
    assert!(
        replica.entries == owner_log,
        "seed {seed}: the stored state differs from the owner's log"
    );
    // Every durable publish is in the log; no update id of m1 twice.
    let log: BTreeSet<Vec<u8>> = owner_log.iter().cloned().collect();
    for k in &printed_published {
        assert!(
            log.contains(format!("m1-{k}").as_bytes()),
            "seed {seed}: publish {k} lost"
        );
    }
    let mut ids = BTreeSet::new();
    while let Ok(a) = owner_applied.try_recv() {
        if a.publisher == "m1" {
            assert!(
                ids.insert(a.update_id),
                "seed {seed}: m1#{} twice",
                a.update_id
            );
        }
    }
    assert!(kill_points.len() >= 5 || kills < 5, "seed {seed}: kills");
    eprintln!(
        "seed {seed}: {} log entries, {} applied lines, {} publishes, kills after lines {kill_points:?}, {:?}",
        owner_log.len(),
        printed_applied.len(),
        printed_published.len(),
        started.elapsed()
    );
    rt.block_on(hub.shutdown());
}

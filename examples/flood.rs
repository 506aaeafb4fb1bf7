//! Flood measurement (issue #17, `docs/limits.md` §5): a victim hub in a
//! child process (its own RSS), a well-behaved peer measuring its round
//! trip (a `Probe` on its stream, the `ProbeAck` datagram back) without and
//! with one flooding peer, in the same run, for each flood case:
//!
//! * `connections`: 8 tasks connecting, saying `Hello` and closing, as fast
//!   as they can, from the good peer's address too (`127.0.0.1`);
//! * `streams`: 4 tasks opening a stream per frame, as fast as they can;
//! * `slow-handler`: one stream sending 1 KiB frames as fast as it can to a
//!   victim whose handler takes one frame per 100 µs;
//! * `slowloris`: a reader that never drains, the victim sending 4 KiB
//!   frames to it non-stop (held by its `QueueBudget`);
//!
//! and `distinct-ids`: the dedupe core's RSS for one million distinct
//! message ids bounded by `DedupeConfig::max_per_stream` (default) against
//! the same core unbounded.
//!
//! The flooder runs in a process of its own; with `taskset` and two CPUs
//! it is pinned to CPU 1 while the victim and the good peer share CPU 0
//! (`FLOOD_PIN=0`: unpinned, everything competing for every CPU).
//!
//! `cargo run --release --example flood` (`FLOOD_ROUNDS`, default 7;
//! `FLOOD_SECS` of attack per round, default 2).

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use interlocking::channels::{Dedupe, DedupeConfig};
use interlocking::transports::quic::{QuicConfig, QuicTransport};
use interlocking::transports::{Fact, SendError, Transport};
use interlocking::trust::{self, CertificateAuthority, NodeIdentity};
use interlocking::vocab::{NodeId, Role, StreamId};
use interlocking::wire::{self, CodecConfig, Data, Frame, Hello, Probe};
use tokio::io::AsyncBufReadExt;

const CASES: [&str; 4] = ["connections", "streams", "slow-handler", "slowloris"];
const PINGS: usize = 300;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn encoded(f: &Frame) -> Vec<u8> {
    wire::encode_to_bytes(f, &CodecConfig::default())
        .unwrap()
        .to_vec()
}

fn data(stream: &str, seq: u64, len: usize) -> Frame {
    Frame::Data(Data {
        stream: StreamId::new(stream),
        incarnation: 1,
        seq,
        message_id: seq,
        class: 2,
        delivery: 2,
        payload: Bytes::from(vec![7u8; len]),
    })
}

fn hello(node: &str) -> Vec<u8> {
    encoded(&Frame::Hello(Hello {
        node: NodeId::new(node),
        role: Role::Member,
        features: 0,
        token: None,
    }))
}

/// RSS of `pid` in KiB (Linux).
fn rss_kib(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn ca_from(dir: &std::path::Path) -> CertificateAuthority {
    CertificateAuthority::from_der(
        "flood CA",
        &std::fs::read(dir.join("ca.der")).unwrap(),
        &std::fs::read(dir.join("ca.key.der")).unwrap(),
    )
    .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match args.get(1).map(String::as_str) {
        Some("victim") => rt.block_on(victim(&args[2], std::path::Path::new(&args[3]))),
        Some("dedupe") => dedupe_child(args[2].parse().unwrap()),
        Some("flooder") => rt.block_on(flooder(&args[2], &args[3], std::path::Path::new(&args[4]))),
        _ => rt.block_on(parent()),
    }
}

/// The victim hub: prints its address, serves until killed.
async fn victim(mode: &str, dir: &std::path::Path) {
    let ca = ca_from(dir);
    let id = NodeId::new("victim");
    let cfg = QuicConfig::new(ca.issue_node(&id, Role::Hub).unwrap(), ca.roots());
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let t = QuicTransport::bind(cfg, tx).unwrap();
    println!("addr {}", t.local_addr());
    let slow_handler = mode == "slow-handler";
    let slowloris = mode == "slowloris";
    while let Some(ev) = rx.recv().await {
        if slow_handler && matches!(ev.fact, Fact::Frame(_)) {
            // A handler busy 100 µs per frame.
            let until = Instant::now() + Duration::from_micros(100);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        if slowloris && ev.path.peer.as_str() == "slow" && matches!(ev.fact, Fact::Up) {
            let t = t.clone();
            tokio::spawn(async move {
                let peer = NodeId::new("slow");
                for seq in 0.. {
                    match t.send(&peer, data("flood", seq, 4096)) {
                        Ok(()) => {}
                        Err(SendError::Full { .. }) => {
                            tokio::time::sleep(Duration::from_millis(1)).await
                        }
                        Err(_) => return,
                    }
                    if seq % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            });
        }
    }
}

fn dedupe_child(max: usize) {
    let pid = std::process::id();
    let before = rss_kib(pid);
    let mut d = Dedupe::new(DedupeConfig::default().max_per_stream(max));
    let stream = StreamId::new("command:m1/hub");
    let now = Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..1_000_000 {
        // xorshift: distinct-looking ids, seeded.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d.record(&stream, x, vec![0u8; 16], now);
    }
    println!("{} {} {}", before, rss_kib(pid), d.len());
}

struct Peer {
    _ep: quinn::Endpoint,
    conn: quinn::Connection,
    stream: quinn::SendStream,
}

fn endpoint(
    ident: &NodeIdentity,
    ca: &CertificateAuthority,
    tune: impl FnOnce(&mut quinn::TransportConfig),
) -> quinn::Endpoint {
    let tls = trust::client_config(ident, &ca.roots()).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0)).unwrap();
    let mut transport = quinn::TransportConfig::default();
    tune(&mut transport);
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport));
    ep.set_default_client_config(client);
    ep
}

async fn peer(
    ident: &NodeIdentity,
    ca: &CertificateAuthority,
    addr: SocketAddr,
    tune: impl FnOnce(&mut quinn::TransportConfig),
) -> Option<Peer> {
    let ep = endpoint(ident, ca, tune);
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        ep.connect(addr, &trust::server_name(&NodeId::new("victim")))
            .ok()?,
    )
    .await
    .ok()?
    .ok()?;
    let mut stream = conn.open_uni().await.ok()?;
    stream
        .write_all(&hello(&ident.node.to_string()))
        .await
        .ok()?;
    Some(Peer {
        _ep: ep,
        conn,
        stream,
    })
}

/// `PINGS` sequential round trips; their p50 and p99 in µs.
async fn rtts(p: &mut Peer, nonce: &mut u64) -> (f64, f64) {
    let mut v = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        *nonce += 1;
        let start = Instant::now();
        p.stream
            .write_all(&encoded(&Frame::Probe(Probe {
                nonce: *nonce,
                sent_at_us: 1,
            })))
            .await
            .unwrap();
        loop {
            let got = tokio::time::timeout(Duration::from_secs(10), p.conn.read_datagram())
                .await
                .expect("ack within 10 s")
                .unwrap();
            if let Ok(Frame::ProbeAck(a)) = wire::decode_frame(&got, &CodecConfig::default())
                && a.nonce == *nonce
            {
                break;
            }
        }
        v.push(start.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(f64::total_cmp);
    (v[PINGS / 2], v[PINGS * 99 / 100])
}

/// Starts the flood of `case` against `addr`; it runs until `stop`.
fn attack(
    case: &'static str,
    addr: SocketAddr,
    ca: Arc<CertificateAuthority>,
    idents: Arc<Vec<NodeIdentity>>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    match case {
        "connections" => {
            for t in 0..8usize {
                let (ca, idents, stop) = (ca.clone(), idents.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let id = &idents[i % idents.len()];
                        i += 8;
                        if let Some(p) = peer(id, &ca, addr, |_| {}).await {
                            p.conn.close(0u8.into(), b"bye");
                        }
                    }
                }));
            }
        }
        "streams" => {
            for t in 0..4usize {
                let (ca, idents, stop) = (ca.clone(), idents.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let Some(p) = peer(&idents[t], &ca, addr, |_| {}).await else {
                        return;
                    };
                    let frame = encoded(&data("flood", 1, 64));
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) = p.conn.open_uni().await else {
                            return;
                        };
                        let _ = s.write_all(&frame).await;
                        let _ = s.finish();
                    }
                    p.conn.close(0u8.into(), b"bye");
                }));
            }
        }
        "slow-handler" => {
            let (ca, idents, stop) = (ca.clone(), idents.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let Some(mut p) = peer(&idents[0], &ca, addr, |_| {}).await else {
                    return;
                };
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    if p.stream
                        .write_all(&encoded(&data("flood", seq, 1024)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                p.conn.close(0u8.into(), b"bye");
            }));
        }
        "slowloris" => {
            let (ca, stop) = (ca.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let slow = ca.issue_node(&NodeId::new("slow"), Role::Member).unwrap();
                let Some(p) = peer(&slow, &ca, addr, |t| {
                    t.stream_receive_window(quinn::VarInt::from_u32(64 * 1024));
                    t.receive_window(quinn::VarInt::from_u32(64 * 1024));
                })
                .await
                else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                p.conn.close(0u8.into(), b"bye");
            }));
        }
        _ => unreachable!(),
    }
    tasks
}

/// The flooding peer in a process of its own (so it does not share the
/// good peer's runtime): floods `case` against `addr` until its stdin
/// closes (the parent ends the round).
async fn flooder(case: &str, addr: &str, dir: &std::path::Path) {
    let case: &'static str = CASES
        .into_iter()
        .find(|c| *c == case)
        .expect("a flood case");
    let addr: SocketAddr = addr.parse().unwrap();
    let ca = Arc::new(ca_from(dir));
    let idents: Arc<Vec<NodeIdentity>> = Arc::new(
        (0..16)
            .map(|i| {
                ca.issue_node(&NodeId::new(format!("flood-{i}")), Role::Member)
                    .unwrap()
            })
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = attack(case, addr, ca, idents, stop.clone());
    println!("flooding");
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = stdin.next_line().await {}
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
}

/// Where each process runs: with `taskset` and at least two CPUs the
/// victim and the good peer share CPU 0 and the flooder has CPU 1 to
/// itself (as if it were another machine); otherwise unpinned.
fn pinned() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
        && env_u64("FLOOD_PIN", 1) == 1
        && Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// `exe args`, under `taskset -c cpu` when pinning.
fn command(cpu: Option<&str>, args: &[&str]) -> Command {
    let exe = std::env::current_exe().unwrap();
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu]).arg(exe).args(args);
            c
        }
        None => {
            let mut c = Command::new(exe);
            c.args(args);
            c
        }
    }
}

/// One round's figures.
#[derive(Clone, Copy, Default)]
struct Round {
    base: (f64, f64),
    during: (f64, f64),
    rss: (u64, u64, u64),
}

async fn round(case: &'static str, dir: &std::path::Path, secs: u64) -> Round {
    let ca = Arc::new(ca_from(dir));
    let pin = pinned();
    let mut child: Child = command(pin.then_some("0"), &["victim", case, dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = tokio::process::ChildStdout::from_std(child.stdout.take().unwrap()).unwrap();
    let mut lines = tokio::io::BufReader::new(out).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let addr: SocketAddr = line.strip_prefix("addr ").unwrap().parse().unwrap();
    let good = ca.issue_node(&NodeId::new("good"), Role::Member).unwrap();
    let mut p = peer(&good, &ca, addr, |_| {})
        .await
        .expect("good peer connects");
    let mut nonce = 0;
    let _ = rtts(&mut p, &mut nonce).await; // warm-up
    let base = rtts(&mut p, &mut nonce).await;
    let before = rss_kib(pid);
    let mut flood = command(
        pin.then_some("1"),
        &["flooder", case, &addr.to_string(), dir.to_str().unwrap()],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let out = tokio::process::ChildStdout::from_std(flood.stdout.take().unwrap()).unwrap();
    let started = tokio::io::BufReader::new(out).lines().next_line().await;
    assert_eq!(started.unwrap().as_deref(), Some("flooding"));
    // Let the flood build up, then measure during it.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut peak = before;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(rss_kib(pid));
    }
    let during = rtts(&mut p, &mut nonce).await;
    peak = peak.max(rss_kib(pid));
    drop(flood.stdin.take()); // ends the flood
    let _ = flood.wait();
    // After: the victim has let go of the flooder (idle timeout 10 s at
    // most; a close is seen at once), and still serves the good peer.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = rtts(&mut p, &mut nonce).await;
    let after = rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    Round {
        base,
        during,
        rss: (before, peak, after),
    }
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn fmt_us((m, lo, hi): (f64, f64, f64)) -> String {
    format!("{m:.0} ({lo:.0}–{hi:.0})")
}

async fn parent() {
    let rounds = env_u64("FLOOD_ROUNDS", 7) as usize;
    let secs = env_u64("FLOOD_SECS", 2);
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("flood CA").unwrap();
    std::fs::write(dir.path().join("ca.der"), ca.certificate().as_ref()).unwrap();
    std::fs::write(dir.path().join("ca.key.der"), ca.key_der()).unwrap();
    // The parent (the good peer) shares CPU 0 with the victim.
    if pinned() {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
        println!(
            "flood: pinned: victim and good peer on CPU 0, the flooder (own process) on CPU 1"
        );
    } else {
        println!(
            "flood: not pinned (FLOOD_PIN=0, one CPU or no taskset): the flooder competes for the victim's CPUs"
        );
    }
    println!(
        "flood: {rounds} rounds per case, {secs} s of attack each; good peer RTT in µs over {PINGS} sequential probes; median (min–max) over rounds"
    );
    println!(
        "| case | RTT p50 without | RTT p50 during | RTT p99 without | RTT p99 during | p99 ratio | victim RSS KiB before / peak during / after |"
    );
    println!("|---|---|---|---|---|---|---|");
    for case in CASES {
        let mut rs = Vec::new();
        for _ in 0..rounds {
            rs.push(round(case, dir.path(), secs).await);
        }
        let col = |f: &dyn Fn(&Round) -> f64| stats(rs.iter().map(f).collect());
        let ratio = col(&|r| r.during.1 / r.base.1);
        let rss = |f: &dyn Fn(&Round) -> u64| stats(rs.iter().map(|r| f(r) as f64).collect()).0;
        println!(
            "| {case} | {} | {} | {} | {} | {:.2} ({:.2}–{:.2}) | {:.0} / {:.0} / {:.0} |",
            fmt_us(col(&|r| r.base.0)),
            fmt_us(col(&|r| r.during.0)),
            fmt_us(col(&|r| r.base.1)),
            fmt_us(col(&|r| r.during.1)),
            ratio.0,
            ratio.1,
            ratio.2,
            rss(&|r| r.rss.0),
            rss(&|r| r.rss.1),
            rss(&|r| r.rss.2),
        );
    }
    // Distinct ids: the dedupe core, bounded against unbounded.
    for (label, max) in [
        (
            "bounded (max_per_stream 100 000)",
            DedupeConfig::default().max_per_stream,
        ),
        ("unbounded (baseline)", usize::MAX),
    ] {
        let mut grow = Vec::new();
        let mut held = 0;
        for _ in 0..rounds {
            let out = Command::new(std::env::current_exe().unwrap())
                .args(["dedupe", &max.to_string()])
                .output()
                .unwrap();
            let s = String::from_utf8(out.stdout).unwrap();
            let v: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
            grow.push(v[1].saturating_sub(v[0]) as f64);
            held = v[2];
        }
        let (m, lo, hi) = stats(grow);
        println!(
            "distinct-ids, 1 000 000 ids, {label}: {held} records held, RSS growth {m:.0} KiB ({lo:.0}–{hi:.0})"
        );
    }
}

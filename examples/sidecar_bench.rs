//! What the sidecar costs: commands per second and request/reply RTT of
//! class-C commands member → hub over three ways in the same run, against
//! one root on loopback:
//! * `direct`: the member dials the hub's QUIC listener;
//! * `relay`: through the root, the hub owning its QUIC link to the root;
//! * `sidecar`: through the root, a sidecar owning the hub's link and the
//!   hub reaching it over the sidecar's Unix socket (the sidecar runs in
//!   this process here; the hop and the code are the ones a separate
//!   process uses).
//!
//! `relay` is the baseline the sidecar must be compared with (the same way
//! through the root, one local hop more); `direct` is printed for scale.
//! Each figure is the median of `--rounds` rounds (default 7) of `--secs`
//! seconds (default 2) with min–max; the three ways alternate within a
//! round. Run: `cargo run --release --example sidecar_bench -- [--rounds N]
//! [--secs S]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::command::{SenderConfig, ServeConfig};
use interlocking::channels::{CommandChannel, CommandHandler, CommandSender, SendOptions};
use interlocking::root::{Joined, Root, RootConfig, RootHandle, join};
use interlocking::routing::{Policy, RoutingConfig};
use interlocking::sidecar::{Sidecar, SidecarConfig};
use interlocking::store::{MemStore, Store};
use interlocking::transports::quic::QuicConfig;
use interlocking::transports::relay::RelayConfig;
use interlocking::transports::sidecar::SidecarLinkConfig;
use interlocking::transports::{PeerAddr, Transport};
use interlocking::vocab::{ChannelKind, NodeId, PathKind, Role, StreamId};
use serde_bytes::ByteBuf;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Sender = CommandSender<ByteBuf, u64>;

/// Commands outstanding in a throughput run.
const WINDOW: usize = 64;
/// Round trips per RTT round.
const PINGS: usize = 2000;

struct Sink;

#[async_trait]
impl CommandHandler for Sink {
    type Command = ByteBuf;
    type Reply = u64;
    async fn handle(&self, cmd: ByteBuf) -> Result<u64, String> {
        Ok(cmd.len() as u64)
    }
}

async fn joined(root: &RootHandle, name: &str, role: Role) -> Result<Joined, BoxError> {
    let node = NodeId::new(name);
    let token = root.issue_token_with(&node, role, None, &[])?.to_string();
    Ok(join(
        root.join_addr(),
        root.node(),
        &token,
        &node,
        role,
        Duration::from_secs(10),
    )
    .await?)
}

fn relay_config(root: &RootHandle, j: &Joined) -> RelayConfig {
    RelayConfig::new(
        QuicConfig::new(j.identity.clone(), j.roots.clone()),
        root.peer_addr(),
    )
}

/// Serves `stream` on `hub` and returns the member's sender once one
/// command went through.
async fn stream(hub: &Node, member: &Node, hub_id: &str, name: &str) -> Result<Sender, BoxError> {
    let stream = StreamId::new(format!("command:{}/{hub_id}/{name}", member.id()));
    let store = || -> Arc<dyn Store> { Arc::new(MemStore::new()) };
    CommandChannel::serve(
        hub,
        stream.clone(),
        member.id().clone(),
        Sink,
        store(),
        ServeConfig::default(),
    )
    .await?;
    let sender: Sender = CommandChannel::spawn_sender(
        member,
        stream,
        NodeId::new(hub_id),
        store(),
        SenderConfig::default(),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = async {
            let r = sender
                .send(ByteBuf::from(vec![1]), SendOptions::class_c())
                .await?;
            r.reply().await
        };
        if let Ok(Ok(1)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
            return Ok(sender);
        }
        if Instant::now() > deadline {
            return Err(format!("{name}: the stream never carried a command").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn throughput(sender: &Sender, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let body = ByteBuf::from(vec![0xAB; 256]);
    let tasks: Vec<_> = (0..WINDOW)
        .map(|_| {
            let (s, stop, done, body) = (sender.clone(), stop.clone(), done.clone(), body.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(r) = s.send(body.clone(), SendOptions::class_c()).await
                        && r.reply().await.is_ok()
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (c1, t1) = (done.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// p50 RTT in microseconds.
async fn rtt_p50(sender: &Sender) -> f64 {
    let body = ByteBuf::from(vec![0xAB; 256]);
    let mut v = Vec::with_capacity(PINGS);
    for i in 0..PINGS + PINGS / 10 {
        let t0 = Instant::now();
        let ok = match sender.send(body.clone(), SendOptions::class_c()).await {
            Ok(r) => r.reply().await.is_ok(),
            Err(_) => false,
        };
        if ok && i >= PINGS / 10 {
            v.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    v.sort_by(f64::total_cmp);
    // No answer at all this round: reported as NaN, not a panic.
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn figure(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    interlocking::trust::ensure_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: f64| -> f64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rounds, secs) = (arg("--rounds", 7.0).max(1.0) as usize, arg("--secs", 2.0));
    let root = Root::spawn(RootConfig::default()).await?;
    let dir = tempfile::tempdir()?;

    // hub-a: its own QUIC listener and relay link; m1 direct, m2 relay.
    let a = joined(&root, "hub-a", Role::Hub).await?;
    let hub_a = NodeBuilder::new("hub-a", Role::Hub)
        .quic(QuicConfig::new(a.identity.clone(), a.roots.clone()))
        .relay(relay_config(&root, &a))
        .spawn()
        .await?;
    let addr = hub_a
        .listen_addr(PathKind::Quic)
        .ok_or("hub-a does not listen")?;
    let m1 = joined(&root, "m1", Role::Member).await?;
    let m1 = NodeBuilder::new("m1", Role::Member)
        .quic(QuicConfig::new(m1.identity.clone(), m1.roots.clone()))
        .dial(PathKind::Quic, PeerAddr::at("hub-a", addr))
        .spawn()
        .await?;
    let m2j = joined(&root, "m2", Role::Member).await?;
    let m2 = NodeBuilder::new("m2", Role::Member)
        .relay(relay_config(&root, &m2j))
        .dial(PathKind::Relay, PeerAddr::node("hub-a"))
        .spawn()
        .await?;

    // hub-b: its link to the root owned by a sidecar; m3 through the root.
    let b = joined(&root, "hub-b", Role::Hub).await?;
    let sc_dir = dir.path().join("sc");
    let sidecar = Sidecar::start(SidecarConfig::new(
        QuicConfig::new(b.identity.clone(), b.roots.clone()),
        root.peer_addr(),
        &sc_dir,
    ))
    .await?;
    let (rc, lc) = (
        relay_config(&root, &b),
        SidecarLinkConfig::new("hub-b", root.node().clone(), &sc_dir),
    );
    let routing = RoutingConfig::default().with_policy(
        ChannelKind::Command,
        Policy::new([PathKind::Sidecar], Duration::from_secs(10)),
    );
    let hub_b = NodeBuilder::new("hub-b", Role::Hub)
        .routing(routing)
        .transport(PathKind::Sidecar, move |sink| {
            let t: Arc<dyn Transport> =
                interlocking::transports::sidecar::bind(rc.clone(), lc.clone(), sink);
            async move { Ok(t) }
        })
        .spawn()
        .await?;
    let m3j = joined(&root, "m3", Role::Member).await?;
    let m3 = NodeBuilder::new("m3", Role::Member)
        .relay(relay_config(&root, &m3j))
        .dial(PathKind::Relay, PeerAddr::node("hub-b"))
        .spawn()
        .await?;

    let ways = [
        ("direct", stream(&hub_a, &m1, "hub-a", "direct").await?),
        ("relay", stream(&hub_a, &m2, "hub-a", "relay").await?),
        ("sidecar", stream(&hub_b, &m3, "hub-b", "sidecar").await?),
    ];
    let mut tput: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut rtt: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for r in 0..rounds {
        for (i, (_, s)) in ways.iter().enumerate() {
            tput[i].push(throughput(s, secs).await);
            rtt[i].push(rtt_p50(s).await);
        }
        eprintln!("round {}/{rounds} done", r + 1);
    }
    println!(
        "{:<8} {:>22} {:>24}",
        "way", "commands/s (min–max)", "RTT p50 µs (min–max)"
    );
    let mut med = Vec::new();
    for (i, (name, _)) in ways.iter().enumerate() {
        let (t, tmin, tmax) = figure(tput[i].clone());
        let (l, lmin, lmax) = figure(rtt[i].clone());
        med.push((t, l));
        println!("{name:<8} {t:>9.0} ({tmin:.0}–{tmax:.0}) {l:>11.0} ({lmin:.0}–{lmax:.0})");
    }
    println!(
        "sidecar vs relay: {:.2}x throughput, {:+.0} µs p50; sidecar vs direct: {:.2}x, {:+.0} µs",
        med[2].0 / med[1].0,
        med[2].1 - med[1].1,
        med[2].0 / med[0].0,
        med[2].1 - med[0].1
    );
    let st = sidecar.status();
    println!(
        "sidecar: remote rtt {:?} µs, {} frames to the root, {} to the hub, {} reconnects",
        st.rtt_us, st.to_root, st.to_hub, st.reconnects
    );
    for n in [m1, m2, m3, hub_a, hub_b] {
        n.shutdown().await;
    }
    sidecar.shutdown().await;
    root.shutdown().await;
    Ok(())
}

//! Sync channel figures against raw baselines, on loopback QUIC (mutual
//! TLS) with real redb files, in one run:
//!
//! 1. **fan-out**: updates/s from one publisher (the hub's owner,
//!    `SYNC_BENCH_INFLIGHT` = 64 concurrent `publish` calls,
//!    group-committed) to 3 subscribers, until
//!    every subscriber has applied (and durably stored) every update, ÷ raw
//!    quinn sending the same encoded `Data` frames to 3 peers;
//! 2. **catch-up** of a subscriber that missed 100 000 updates of 100 B:
//!    by cursor replay (window larger than the log) and by snapshot + diff
//!    (window of 1 000), time to the last update applied (the sync rows'
//!    bytes on the wire are not measured yet; the baseline's frame bytes
//!    are printed), against a raw redb read of the same 100 000 records plus a raw
//!    quinn send of the same frames to one peer.
//! 3. **resume**: a subscriber node (its redb file kept) stops, the owner
//!    publishes 10 updates it misses, the node starts again; time from its
//!    start to the first new update applied, p50/p99 over
//!    `SYNC_BENCH_RESUMES` (default 30) resumes per run, against raw quinn
//!    opening a new connection and reading one frame from the server.
//!
//! Every figure is the median [min–max] of `SYNC_BENCH_RUNS` (default 7)
//! runs. Run with `cargo run --release --example sync_bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::sync::actor::{OwnerTiming, SubscriberTiming};
use interlocking::channels::sync::{
    Access, AppendLog, Cursor, OwnerConfig, SubscriberConfig, SyncChannel, SyncMsg, SyncOwner,
    SyncSubscriber, WindowConfig, stream_name,
};
use interlocking::store::RedbStore;
use interlocking::transports::PeerAddr;
use interlocking::transports::probe::ProbeConfig;
use interlocking::transports::quic::QuicConfig;
use interlocking::trust::{self, CertificateAuthority};
use interlocking::vocab::{NodeId, PathKind, Role, TrafficClass};
use interlocking::wire::codec::{CodecConfig, FrameDecoder, encoded_len};
use interlocking::wire::io::{read_frame, write_frame_buf};
use interlocking::wire::{Data, Frame};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
const SIZE: usize = 100;
/// Concurrent `publish` calls (each waits for its update to be durable
/// before the next): `SYNC_BENCH_INFLIGHT`, default 64.
fn publishers() -> u64 {
    count("SYNC_BENCH_INFLIGHT", 64).max(1)
}

fn runs() -> usize {
    std::env::var("SYNC_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
}

fn summary(v: Vec<f64>) -> String {
    summary_p(v, 1)
}

fn summary_p(mut v: Vec<f64>, p: usize) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = v[v.len() / 2];
    format!(
        "{med:.p$} [{:.p$}–{:.p$}]",
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0)
    )
}

fn quic(ca: &CertificateAuthority, id: &str, role: Role) -> Result<QuicConfig, BoxError> {
    let mut c = QuicConfig::new(ca.issue_node(&NodeId::new(id), role)?, ca.roots());
    c.probe = ProbeConfig {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(1000),
    };
    Ok(c)
}

fn payload(i: u64) -> Vec<u8> {
    let mut b = format!("{i:020}").into_bytes();
    b.resize(SIZE, 0x5a);
    b
}

/// The frame an owner sends for log entry `seq`.
fn update_frame(epoch: u64, seq: u64, bytes: Vec<u8>) -> Frame {
    let msg = SyncMsg::Update {
        cursor: Cursor::new(epoch, seq),
        publisher: "hub".into(),
        update_id: seq,
        bytes,
    };
    Frame::Data(Data {
        stream: stream_name("hub", "m1", "bench"),
        incarnation: 1,
        seq: 0,
        message_id: 0,
        class: TrafficClass::Sync.code(),
        delivery: 1,
        payload: Bytes::from(msg.encode()),
    })
}

async fn hub(
    ca: &CertificateAuthority,
    dir: &std::path::Path,
    window: usize,
) -> Result<(Node, SyncOwner<AppendLog>), BoxError> {
    let hub = NodeBuilder::new("hub", Role::Hub)
        .quic(quic(ca, "hub", Role::Hub)?)
        .spawn()
        .await?;
    let store = Arc::new(RedbStore::open(dir.join(format!("hub-{window}.redb")))?);
    let config = OwnerConfig::default().window(WindowConfig::default().max_entries(window));
    let owner = SyncChannel::own(
        &hub,
        "bench",
        AppendLog::default,
        store,
        config,
        OwnerTiming::default(),
    )
    .await?;
    Ok((hub, owner))
}

async fn member(
    ca: &CertificateAuthority,
    dir: &std::path::Path,
    name: &str,
    hub: &Node,
) -> Result<(Node, SyncSubscriber<AppendLog>), BoxError> {
    let store = Arc::new(RedbStore::open(dir.join(format!("{name}.redb")))?);
    member_on(ca, store, name, hub).await
}

/// [`member`] on an open store (kept across restarts of the node).
async fn member_on(
    ca: &CertificateAuthority,
    store: Arc<RedbStore>,
    name: &str,
    hub: &Node,
) -> Result<(Node, SyncSubscriber<AppendLog>), BoxError> {
    let addr = hub
        .listen_addr(PathKind::Quic)
        .ok_or("hub does not listen")?;
    let node = NodeBuilder::new(name, Role::Member)
        .quic(quic(ca, name, Role::Member)?)
        .dial(PathKind::Quic, PeerAddr::at("hub", addr))
        .spawn()
        .await?;
    let sub = SyncChannel::subscribe(
        &node,
        "hub",
        "bench",
        AppendLog::default,
        store,
        SubscriberConfig::default().compact_every(10_000),
        SubscriberTiming::default(),
    )
    .await?;
    Ok((node, sub))
}

/// Publishes `n` updates from [`publishers`] concurrent callers.
async fn publish(owner: &SyncOwner<AppendLog>, base: u64, n: u64) -> Result<(), BoxError> {
    let mut tasks = Vec::new();
    let publishers = publishers();
    for p in 0..publishers {
        let owner = owner.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < n {
                owner.publish(payload(base + i)).await?;
                i += publishers;
            }
            Ok::<(), interlocking::channels::sync::SyncError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn wait_for(
    subs: &[&SyncSubscriber<AppendLog>],
    seq: u64,
    limit: Duration,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + limit;
    while subs.iter().any(|s| s.cursor().seq < seq) {
        if Instant::now() > deadline {
            return Err(format!(
                "subscribers at {:?}, want {seq}",
                subs.iter().map(|s| s.cursor().seq).collect::<Vec<_>>()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

struct RawPeers {
    server: quinn::Endpoint,
    clients: Vec<(quinn::Endpoint, quinn::Connection)>,
    server_conns: Vec<quinn::Connection>,
}

async fn raw_peers(ca: &CertificateAuthority, n: usize) -> Result<RawPeers, BoxError> {
    trust::ensure_crypto_provider();
    let sid = NodeId::new("raw-hub");
    let server_tls = trust::server_config(&ca.issue_node(&sid, Role::Hub)?, &ca.roots())?;
    let server_cfg =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    let mut clients = Vec::new();
    let mut server_conns = Vec::new();
    for i in 0..n {
        let cid = ca.issue_node(&NodeId::new(format!("raw-m{i}")), Role::Member)?;
        let client_tls = trust::client_config(&cid, &ca.roots())?;
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(client_tls)?,
        )));
        let connecting = client.connect(addr, &trust::server_name(&sid))?;
        let incoming = server.accept().await.ok_or("no incoming")?;
        let (conn, server_conn) = tokio::join!(connecting, incoming);
        clients.push((client, conn?));
        server_conns.push(server_conn?);
    }
    Ok(RawPeers {
        server,
        clients,
        server_conns,
    })
}

/// Sends `frames` to every peer on one uni stream each; returns when every
/// peer has read all of them.
async fn raw_send(peers: &RawPeers, frames: Arc<Vec<Frame>>) -> Result<Duration, BoxError> {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (conn, (_, client)) in peers.server_conns.iter().zip(&peers.clients) {
        let (conn, client, frames) = (conn.clone(), client.clone(), frames.clone());
        tasks.push(tokio::spawn(async move {
            let mut send = conn.open_uni().await?;
            let writer = tokio::spawn({
                let frames = frames.clone();
                async move {
                    let (cfg, mut buf) = (CodecConfig::default(), BytesMut::new());
                    for f in frames.iter() {
                        write_frame_buf(&mut send, f, &mut buf, &cfg).await?;
                    }
                    send.finish()?;
                    Ok::<_, BoxError>(())
                }
            });
            let mut recv = client.accept_uni().await?;
            let mut decoder = FrameDecoder::new(CodecConfig::default());
            let mut buf = BytesMut::new();
            let mut got = 0;
            while got < frames.len() {
                match read_frame(&mut recv, &mut buf, &mut decoder).await? {
                    Some(_) => got += 1,
                    None => break,
                }
            }
            writer.await??;
            Ok::<usize, BoxError>(got)
        }));
    }
    for t in tasks {
        let got = t.await??;
        if got != frames.len() {
            return Err("raw peer got fewer frames".into());
        }
    }
    Ok(t0.elapsed())
}

async fn fanout(ca: &CertificateAuthority) -> Result<(), BoxError> {
    let fanout_updates = count("SYNC_BENCH_FANOUT", 20_000);
    let dir = tempfile::tempdir()?;
    let (hub, owner) = hub(ca, dir.path(), 10_000).await?;
    let mut members = Vec::new();
    for i in 1..=3 {
        let name = format!("m{i}");
        owner.admit(name.as_str(), Access::ReadOnly);
        members.push(member(ca, dir.path(), &name, &hub).await?);
    }
    let subs: Vec<&SyncSubscriber<AppendLog>> = members.iter().map(|(_, s)| s).collect();
    // Warm up: attach every subscriber.
    publish(&owner, 0, 100).await?;
    wait_for(&subs, 100, Duration::from_secs(30)).await?;
    let peers = raw_peers(ca, 3).await?;
    let mut base = 100;
    let (mut ours, mut raw, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs() {
        let t0 = Instant::now();
        publish(&owner, base, fanout_updates).await?;
        wait_for(&subs, base + fanout_updates, Duration::from_secs(120)).await?;
        let rate = fanout_updates as f64 / t0.elapsed().as_secs_f64();
        let frames: Vec<Frame> = (0..fanout_updates)
            .map(|i| update_frame(owner.cursor().epoch, base + i + 1, payload(base + i)))
            .collect();
        let t = raw_send(&peers, Arc::new(frames)).await?;
        let raw_rate = fanout_updates as f64 / t.as_secs_f64();
        base += fanout_updates;
        ours.push(rate);
        raw.push(raw_rate);
        ratio.push(rate / raw_rate);
    }
    println!(
        "fan-out to 3 subscribers, {fanout_updates} updates of {SIZE} B, {} in flight: sync {} updates/s; raw quinn {} updates/s; ratio {}",
        publishers(),
        summary(ours),
        summary(raw),
        summary_p(ratio, 3)
    );
    drop(peers.server);
    for (n, _) in members {
        n.shutdown().await;
    }
    hub.shutdown().await;
    Ok(())
}

const RAW_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raw_log");

async fn catchup(ca: &CertificateAuthority) -> Result<(), BoxError> {
    let catchup_updates = count("SYNC_BENCH_CATCHUP", 100_000);
    let dir = tempfile::tempdir()?;
    // The raw baseline's records: the same 100 000 × 100 B in a redb table.
    let db = redb::Database::create(dir.path().join("raw.redb"))?;
    {
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(RAW_LOG)?;
            for i in 0..catchup_updates {
                t.insert(i + 1, payload(i).as_slice())?;
            }
        }
        txn.commit()?;
    }
    let peers = raw_peers(ca, 1).await?;
    let mut raw_t = Vec::new();
    let mut raw_bytes = 0usize;
    for _ in 0..runs() {
        let t0 = Instant::now();
        let txn = db.begin_read()?;
        let table = txn.open_table(RAW_LOG)?;
        let mut frames = Vec::with_capacity(catchup_updates as usize);
        for item in table.iter()? {
            let (k, v) = item?;
            frames.push(update_frame(1, k.value(), v.value().to_vec()));
        }
        raw_bytes = frames.iter().map(encoded_len).sum();
        let read = t0.elapsed();
        let sent = raw_send(&peers, Arc::new(frames)).await?;
        raw_t.push((read + sent).as_secs_f64() * 1000.0);
    }
    println!(
        "catch-up baseline (raw redb read + raw quinn send of {catchup_updates} frames): {} ms, {raw_bytes} frame bytes",
        summary(raw_t)
    );
    for (mode, window) in [("cursor replay", 200_000usize), ("snapshot + diff", 1_000)] {
        let (hub, owner) = hub(ca, dir.path(), window).await?;
        publish(&owner, 0, catchup_updates).await?;
        let mut times = Vec::new();
        for run in 0..runs() {
            let name = format!("c{}{run}", window);
            owner.admit(name.as_str(), Access::ReadOnly);
            let t0 = Instant::now();
            let (node, sub) = member(ca, dir.path(), &name, &hub).await?;
            wait_for(&[&sub], catchup_updates, Duration::from_secs(300)).await?;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            node.shutdown().await;
        }
        println!(
            "catch-up of {catchup_updates} missed updates by {mode}: {} ms (bytes on the wire not measured)",
            summary(times)
        );
        hub.shutdown().await;
    }
    drop(peers.server);
    Ok(())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Time from the start of a subscriber node that was away to the first
/// update applied that it had missed.
async fn resume(ca: &CertificateAuthority) -> Result<(), BoxError> {
    let resumes = count("SYNC_BENCH_RESUMES", 30);
    let dir = tempfile::tempdir()?;
    let (hub, owner) = hub(ca, dir.path(), 10_000).await?;
    owner.admit("r1", Access::ReadOnly);
    // The redb file stays open across the node's restarts (a node that
    // stops lets go of its actors asynchronously).
    let store = Arc::new(RedbStore::open(dir.path().join("r1.redb"))?);
    let (node, sub) = member_on(ca, store.clone(), "r1", &hub).await?;
    publish(&owner, 0, 10).await?;
    wait_for(&[&sub], 10, Duration::from_secs(30)).await?;
    drop(sub);
    node.shutdown().await;
    let peers = raw_peers(ca, 1).await?;
    let mut base = 10;
    let (mut p50, mut p99, mut raw50, mut raw99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs() {
        let mut times = Vec::new();
        for _ in 0..resumes {
            // Missed while away.
            publish(&owner, base, 10).await?;
            let t0 = Instant::now();
            let (node, sub) = member_on(ca, store.clone(), "r1", &hub).await?;
            wait_for(&[&sub], base + 1, Duration::from_secs(30)).await?;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            // Let it catch up fully before it goes away again.
            wait_for(&[&sub], base + 10, Duration::from_secs(30)).await?;
            drop(sub);
            node.shutdown().await;
            base += 10;
        }
        p50.push(percentile(&mut times, 0.5));
        p99.push(percentile(&mut times, 0.99));
        let mut raw_times = Vec::new();
        for _ in 0..resumes {
            raw_times.push(raw_reconnect(ca, &peers).await?.as_secs_f64() * 1000.0);
        }
        raw50.push(percentile(&mut raw_times, 0.5));
        raw99.push(percentile(&mut raw_times, 0.99));
    }
    println!(
        "resume ({resumes} per run; polled every 2 ms): start of the subscriber node → first missed update applied: p50 {} ms, p99 {} ms; raw quinn connect + first frame read: p50 {} ms, p99 {} ms",
        summary_p(p50, 2),
        summary_p(p99, 2),
        summary_p(raw50, 2),
        summary_p(raw99, 2)
    );
    drop(peers.server);
    hub.shutdown().await;
    Ok(())
}

/// Raw quinn: a new client endpoint connects (mutual TLS) and reads one
/// update frame the server sends on a uni stream.
async fn raw_reconnect(ca: &CertificateAuthority, peers: &RawPeers) -> Result<Duration, BoxError> {
    let t0 = Instant::now();
    let sid = NodeId::new("raw-hub");
    let cid = ca.issue_node(&NodeId::new("raw-r"), Role::Member)?;
    let client_tls = trust::client_config(&cid, &ca.roots())?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client_tls)?,
    )));
    let connecting = client.connect(peers.server.local_addr()?, &trust::server_name(&sid))?;
    let incoming = peers.server.accept().await.ok_or("no incoming")?;
    let (conn, server_conn) = tokio::join!(connecting, incoming);
    let (conn, server_conn) = (conn?, server_conn?);
    let frame = update_frame(1, 1, payload(1));
    let writer = tokio::spawn(async move {
        let mut send = server_conn.open_uni().await?;
        let (cfg, mut buf) = (CodecConfig::default(), BytesMut::new());
        write_frame_buf(&mut send, &frame, &mut buf, &cfg).await?;
        send.finish()?;
        send.stopped().await.ok();
        Ok::<_, BoxError>(())
    });
    let mut recv = conn.accept_uni().await?;
    let mut decoder = FrameDecoder::new(CodecConfig::default());
    let mut buf = BytesMut::new();
    read_frame(&mut recv, &mut buf, &mut decoder)
        .await?
        .ok_or("no frame")?;
    let t = t0.elapsed();
    conn.close(0u32.into(), b"done");
    writer.await??;
    client.wait_idle().await;
    Ok(t)
}

fn main() -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ca = CertificateAuthority::generate("sync-bench-ca")?;
        println!("runs per figure: {} (median [min–max])", runs());
        let only = std::env::var("SYNC_BENCH_ONLY").unwrap_or_default();
        if only.is_empty() || only == "fanout" {
            fanout(&ca).await?;
        }
        if only.is_empty() || only == "resume" {
            resume(&ca).await?;
        }
        if only.is_empty() || only == "catchup" {
            catchup(&ca).await?;
        }
        Ok(())
    })
}

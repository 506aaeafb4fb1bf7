//! The performance bench: the full stack against raw baselines, measured in
//! the same run on the same loopback.
//!
//! Run: `cargo run --release --example bench -- [--json] [--rounds N]
//! [--secs S] [--only throughput|latency|durable|failover|scale]`
//!
//! 1. **Throughput**: class-C commands through the full stack (sender actor
//!    → the routing authority's chosen path → QUIC transport → server actor
//!    → handler → reply), 256 B and 16 KiB payloads, `WINDOW` commands
//!    outstanding; against raw quinn carrying the same frames (the crate's
//!    codec, the same envelopes) on one bidirectional stream with the same
//!    window, mutual TLS with the same configs and ALPN.
//! 2. **Latency**: request/reply RTT of one class-C command at a time
//!    through the full stack against a raw-quinn ping-pong of the same
//!    frames.
//! 3. **Durability**: class-A commands accepted per second (accepted = the
//!    store's fsync'd group commit returned), 64 concurrent senders on one
//!    stream, against raw redb transactions writing the same rows with the
//!    same durability and the same drain-everything-waiting batching.
//! 4. **Failover**: 20 blackholings of members' direct paths in the
//!    hub–root–member topology, default policy: time to the first reply of a
//!    command applied via the relay (`failover_p50_ms`, `failover_p99_ms`).
//! 5. **Scale**: process RSS per idle registered command stream
//!    ([`CommandChannel::spawn_sender`], no traffic) for 10 000 and 100 000
//!    streams, each measured in a fresh child process.
//!
//! Every measurement runs `--rounds` rounds (default 7 of `--secs` 2 s,
//! 5 000 round trips per latency round; framework and
//! baseline alternate, so background load hits both alike); the median is
//! reported with the min–max spread. With `--json` the last line of output
//! is one JSON object.

#[path = "../tests/demo/topology.rs"]
mod topology;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::command::{
    Envelope, EnvelopeKind, ReplyBody, SenderConfig, ServeConfig,
};
use interlocking::channels::{CommandChannel, CommandHandler, CommandSender, SendOptions};
use interlocking::store::{MemStore, RedbStore, Store};
use interlocking::transports::PeerAddr;
use interlocking::transports::quic::QuicConfig;
use interlocking::trust::{self, CertificateAuthority};
use interlocking::vocab::{NodeId, PathKind, Role, StreamId, TrafficClass};
use interlocking::wire::{CodecConfig, Data, Frame, FrameDecoder, read_frame, write_frame_buf};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde_bytes::ByteBuf;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Sender = CommandSender<ByteBuf, u64>;

/// Commands outstanding in the throughput runs (the outbox's default
/// credit window).
const WINDOW: usize = 256;
/// Concurrent class-A senders in the durability runs.
const DURABLE_SENDERS: usize = 64;
/// Payload of the latency and durability runs.
const SMALL: usize = 256;
/// Round trips per latency round.
const PINGS: usize = 5000;

struct Args {
    json: bool,
    rounds: usize,
    secs: f64,
    only: Option<String>,
    /// Profiling aid: skip the raw baselines (ratios become meaningless).
    skip_raw: bool,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    Args {
        json: argv.iter().any(|a| a == "--json"),
        rounds: value("--rounds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(7)
            .max(1),
        secs: value("--secs").and_then(|v| v.parse().ok()).unwrap_or(2.0),
        only: value("--only"),
        skip_raw: argv.iter().any(|a| a == "--skip-raw"),
    }
}

// ---------------------------------------------------------------- figures

/// The median of several rounds and their spread.
#[derive(Clone, Copy, Debug)]
struct Figure {
    median: f64,
    min: f64,
    max: f64,
}

impl Figure {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    fn json(&self) -> Value {
        json!({ "median": round(self.median), "min": round(self.min), "max": round(self.max) })
    }

    fn spread(&self) -> String {
        format!("{:.0}–{:.0}", self.min, self.max)
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

// ------------------------------------------------------------- the stack

/// Answers every command with its length.
struct Sink;

#[async_trait]
impl CommandHandler for Sink {
    type Command = ByteBuf;
    type Reply = u64;
    async fn handle(&self, cmd: ByteBuf) -> Result<u64, String> {
        Ok(cmd.len() as u64)
    }
}

fn class_c() -> SendOptions {
    SendOptions::class_c()
}

/// A hub and a member on loopback QUIC, the member dialling the hub.
struct Stack {
    hub: Node,
    member: Node,
    dir: tempfile::TempDir,
    streams: AtomicU64,
}

impl Stack {
    async fn start(ca: &CertificateAuthority) -> Result<Self, BoxError> {
        let config = |node: &str, role| -> Result<QuicConfig, BoxError> {
            Ok(QuicConfig::new(
                ca.issue_node(&NodeId::new(node), role)?,
                ca.roots(),
            ))
        };
        let hub = NodeBuilder::new("hub", Role::Hub)
            .quic(config("hub", Role::Hub)?)
            .spawn()
            .await?;
        let addr = hub
            .listen_addr(PathKind::Quic)
            .ok_or("hub does not listen")?;
        let member = NodeBuilder::new("m1", Role::Member)
            .quic(config("m1", Role::Member)?)
            .dial(PathKind::Quic, PeerAddr::at("hub", addr))
            .spawn()
            .await?;
        Ok(Self {
            hub,
            member,
            dir: tempfile::tempdir()?,
            streams: AtomicU64::new(0),
        })
    }

    fn redb(&self, name: &str) -> Result<Arc<RedbStore>, BoxError> {
        let n = self.streams.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(RedbStore::open(
            self.dir.path().join(format!("{name}-{n}.redb")),
        )?))
    }

    /// A served stream and its sender; the hub persists with redb, the
    /// member with `member_store`. Returns once a command went through.
    async fn stream(
        &self,
        name: &str,
        member_store: Arc<dyn Store>,
        hub_store: Arc<dyn Store>,
    ) -> Result<Sender, BoxError> {
        let n = self.streams.fetch_add(1, Ordering::Relaxed);
        let stream = StreamId::new(format!("command:m1/hub/{name}-{n}"));
        CommandChannel::serve(
            &self.hub,
            stream.clone(),
            NodeId::new("m1"),
            Sink,
            hub_store,
            ServeConfig::default(),
        )
        .await?;
        let sender: Sender = CommandChannel::spawn_sender(
            &self.member,
            stream,
            NodeId::new("hub"),
            member_store,
            SenderConfig::default(),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let probe = async {
                let r = sender.send(ByteBuf::from(vec![1]), class_c()).await?;
                r.reply().await
            };
            if let Ok(Ok(1)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
                return Ok(sender);
            }
            if Instant::now() > deadline {
                return Err("the stream never carried a command".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(self) {
        self.member.shutdown().await;
        self.hub.shutdown().await;
    }
}

/// Runs `workers` copies of `work` until stopped, counting successes from
/// `warmup` on for `secs`; returns successes per second.
async fn closed_loop<F, Fut>(workers: usize, warmup: Duration, secs: f64, work: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (work, stop, done) = (work.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if work().await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(warmup).await;
    let (c0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (c1, t1) = (done.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

async fn stack_throughput(sender: &Sender, size: usize, secs: f64) -> f64 {
    let sender = sender.clone();
    let body = ByteBuf::from(vec![0xAB; size]);
    closed_loop(WINDOW, Duration::from_millis(300), secs, move || {
        let (sender, body) = (sender.clone(), body.clone());
        async move {
            match sender.send(body, class_c()).await {
                Ok(r) => r.reply().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

async fn stack_rtts(sender: &Sender) -> Vec<f64> {
    let body = ByteBuf::from(vec![0xAB; SMALL]);
    let mut rtts = Vec::with_capacity(PINGS);
    for i in 0..PINGS + PINGS / 10 {
        let t0 = Instant::now();
        let ok = match sender.send(body.clone(), class_c()).await {
            Ok(r) => r.reply().await.is_ok(),
            Err(_) => false,
        };
        if ok && i >= PINGS / 10 {
            rtts.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    rtts
}

/// Accepted class-A commands per second, and the mean group-commit batch.
async fn stack_durable(stack: &Stack, secs: f64) -> Result<(f64, f64), BoxError> {
    let store = stack.redb("durable")?;
    // The receiver keeps its dedupe in memory here so its own fsyncs do not
    // compete for the disk the sender's group commit is measured on.
    let sender = stack
        .stream("durable", store.clone(), Arc::new(MemStore::new()))
        .await?;
    let body = ByteBuf::from(vec![0xCD; SMALL]);
    let commits0 = store.durable_commits();
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    let rate = closed_loop(
        DURABLE_SENDERS,
        Duration::from_millis(300),
        secs,
        move || {
            let (sender, body, counted) = (sender.clone(), body.clone(), counted.clone());
            async move {
                let ok = sender.send(body, SendOptions::class_a()).await.is_ok();
                counted.fetch_add(u64::from(ok), Ordering::Relaxed);
                ok
            }
        },
    )
    .await;
    let commits = (store.durable_commits() - commits0).max(1);
    Ok((
        rate,
        accepted.load(Ordering::Relaxed) as f64 / commits as f64,
    ))
}

// ------------------------------------------------------------ raw quinn

/// A raw quinn client connected to a raw quinn server that answers every
/// command frame with the reply frame a command server would send.
struct Raw {
    conn: quinn::Connection,
    _server: quinn::Endpoint,
    _client: quinn::Endpoint,
}

impl Raw {
    async fn start(ca: &CertificateAuthority) -> Result<Self, BoxError> {
        trust::ensure_crypto_provider();
        let server_id = NodeId::new("raw-hub");
        let sid = ca.issue_node(&server_id, Role::Hub)?;
        let cid = ca.issue_node(&NodeId::new("raw-m1"), Role::Member)?;
        let server_tls = trust::server_config(&sid, &ca.roots())?;
        let client_tls = trust::client_config(&cid, &ca.roots())?;
        let server_cfg =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(client_tls)?,
        )));
        let addr = server.local_addr()?;
        let accept = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(raw_serve(send, recv));
                    }
                });
            }
        });
        let conn = client
            .connect(addr, &trust::server_name(&server_id))?
            .await?;
        Ok(Self {
            conn,
            _server: server,
            _client: client,
        })
    }
}

/// The command frame a sender puts on the wire for `body`.
fn command_frame(stream: &StreamId, id: u64, body: &ByteBuf) -> Frame {
    let env = Envelope {
        kind: EnvelopeKind::Command,
        message_id: id,
        stream_id: stream.clone(),
        issued_at_ms: now_ms(),
        ttl_ms: 0,
        authority_epoch: 0,
        operation_key: None,
        body: rmp_serde::to_vec(body).unwrap_or_default(),
    };
    Frame::Data(Data {
        stream: stream.clone(),
        incarnation: 1,
        seq: 0,
        message_id: id,
        class: TrafficClass::Control.code(),
        delivery: 0,
        payload: Bytes::from(env.encode()),
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The raw server: decodes each command like a command server (frame,
/// envelope, command), answers with the same reply envelope.
async fn raw_serve(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let cfg = CodecConfig::default();
    let mut decoder = FrameDecoder::new(cfg);
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    while let Ok(Some(frame)) = read_frame(&mut recv, &mut buf, &mut decoder).await {
        let Frame::Data(d) = frame else { continue };
        let Ok(env) = Envelope::decode(&d.payload) else {
            continue;
        };
        let Ok(cmd) = rmp_serde::from_slice::<ByteBuf>(&env.body) else {
            continue;
        };
        let body = ReplyBody::Ok(rmp_serde::to_vec(&(cmd.len() as u64)).unwrap_or_default());
        let reply = Envelope {
            kind: EnvelopeKind::Reply,
            message_id: env.message_id,
            stream_id: env.stream_id,
            issued_at_ms: now_ms(),
            ttl_ms: 0,
            authority_epoch: 0,
            operation_key: None,
            body: rmp_serde::to_vec(&body).unwrap_or_default(),
        };
        let frame = Frame::Data(Data {
            stream: d.stream,
            incarnation: 1,
            seq: d.seq,
            message_id: d.message_id,
            class: d.class,
            delivery: 0,
            payload: Bytes::from(reply.encode()),
        });
        if write_frame_buf(&mut send, &frame, &mut out, &cfg)
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = send.finish();
}

/// Decodes a reply frame down to the handler's answer, like a sender.
fn raw_reply(frame: Frame) -> Option<u64> {
    let Frame::Data(d) = frame else { return None };
    let env = Envelope::decode(&d.payload).ok()?;
    match rmp_serde::from_slice::<ReplyBody>(&env.body).ok()? {
        ReplyBody::Ok(b) => rmp_serde::from_slice(&b).ok(),
        _ => None,
    }
}

async fn raw_throughput(raw: &Raw, size: usize, secs: f64) -> Result<f64, BoxError> {
    let (mut send, mut recv) = raw.conn.open_bi().await?;
    let window = Arc::new(Semaphore::new(WINDOW));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = {
        let (window, stop) = (window.clone(), stop.clone());
        tokio::spawn(async move {
            let (stream, body) = (StreamId::new("raw"), ByteBuf::from(vec![0xAB; size]));
            let (cfg, mut out) = (CodecConfig::default(), BytesMut::new());
            let mut id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(permit) = window.acquire().await else {
                    break;
                };
                permit.forget();
                id += 1;
                let frame = command_frame(&stream, (1 << 63) | id, &body);
                if write_frame_buf(&mut send, &frame, &mut out, &cfg)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = send.finish();
        })
    };
    let reader = {
        let (window, done) = (window.clone(), done.clone());
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::new(CodecConfig::default());
            let mut buf = BytesMut::new();
            while let Ok(Some(frame)) = read_frame(&mut recv, &mut buf, &mut decoder).await {
                if raw_reply(frame).is_some() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                window.add_permits(1);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (c1, t1) = (done.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    reader.await?;
    Ok((c1 - c0) as f64 / (t1 - t0).as_secs_f64())
}

async fn raw_rtts(raw: &Raw) -> Result<Vec<f64>, BoxError> {
    let (mut send, mut recv) = raw.conn.open_bi().await?;
    let (stream, body) = (StreamId::new("raw"), ByteBuf::from(vec![0xAB; SMALL]));
    let cfg = CodecConfig::default();
    let mut decoder = FrameDecoder::new(cfg);
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    let mut rtts = Vec::with_capacity(PINGS);
    for i in 0..(PINGS + PINGS / 10) as u64 {
        let t0 = Instant::now();
        write_frame_buf(
            &mut send,
            &command_frame(&stream, (1 << 63) | i, &body),
            &mut out,
            &cfg,
        )
        .await?;
        let frame = read_frame(&mut recv, &mut buf, &mut decoder)
            .await?
            .ok_or("raw server closed")?;
        raw_reply(frame).ok_or("bad raw reply")?;
        if i >= (PINGS / 10) as u64 {
            rtts.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = send.finish();
    Ok(rtts)
}

// -------------------------------------------------------------- raw redb

const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
const OUTBOX_IDS: TableDefinition<(&str, u64), u64> = TableDefinition::new("outbox_ids");
const NEXT_SEQ: TableDefinition<&str, u64> = TableDefinition::new("next_seq");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

type Append = (Vec<u8>, oneshot::Sender<u64>);

/// One writer thread group-commits everything waiting, with the store's
/// durability (`Immediate`, two-phase commit) and the store's rows (outbox
/// value in the store's layout, id index, sequence and id counters).
fn raw_redb_writer(db: Database, mut rx: mpsc::UnboundedReceiver<Append>, commits: Arc<AtomicU64>) {
    let stream = "command:raw/durable";
    let (mut next_id, mut next_seq) = (1u64, 1u64);
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut ids = Vec::with_capacity(batch.len());
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.set_two_phase_commit(true);
            {
                let mut outbox = txn.open_table(OUTBOX)?;
                let mut index = txn.open_table(OUTBOX_IDS)?;
                for (record, _) in &batch {
                    let (id, seq) = (next_id, next_seq);
                    next_id += 1;
                    next_seq += 1;
                    let mut v = Vec::with_capacity(14 + record.len());
                    v.extend_from_slice(&id.to_be_bytes());
                    v.push(TrafficClass::Control.code());
                    v.push(1);
                    v.extend_from_slice(&u32::MAX.to_be_bytes());
                    v.extend_from_slice(record);
                    outbox.insert((stream, seq), v.as_slice())?;
                    index.insert((stream, id), seq)?;
                    ids.push(id);
                }
                txn.open_table(NEXT_SEQ)?.insert(stream, next_seq)?;
                txn.open_table(META)?.insert("next_message_id", next_id)?;
            }
            txn.commit()?;
            Ok(())
        })();
        if result.is_err() {
            return;
        }
        commits.fetch_add(1, Ordering::Relaxed);
        for ((_, tx), id) in batch.into_iter().zip(ids) {
            let _ = tx.send(id);
        }
    }
}

async fn raw_durable(path: std::path::PathBuf, secs: f64) -> Result<(f64, f64), BoxError> {
    let db = Database::create(path)?;
    {
        let txn = db.begin_write()?;
        txn.open_table(OUTBOX)?;
        txn.open_table(OUTBOX_IDS)?;
        txn.open_table(NEXT_SEQ)?;
        txn.open_table(META)?;
        // Touch the tables so the first measured commit is like the rest.
        let _ = txn.open_table(META)?.get("next_message_id")?;
        txn.commit()?;
    }
    let (tx, rx) = mpsc::unbounded_channel::<Append>();
    let commits = Arc::new(AtomicU64::new(0));
    let writer = {
        let commits = commits.clone();
        std::thread::spawn(move || raw_redb_writer(db, rx, commits))
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    let body = ByteBuf::from(vec![0xCD; SMALL]);
    let stream = StreamId::new("command:raw/durable");
    let rate = closed_loop(
        DURABLE_SENDERS,
        Duration::from_millis(300),
        secs,
        move || {
            let (tx, body, stream, counted) =
                (tx.clone(), body.clone(), stream.clone(), counted.clone());
            async move {
                // The record is the encoded envelope, as the sender stores it.
                let env = Envelope {
                    kind: EnvelopeKind::Command,
                    message_id: 0,
                    stream_id: stream,
                    issued_at_ms: now_ms(),
                    ttl_ms: 0,
                    authority_epoch: 0,
                    operation_key: None,
                    body: rmp_serde::to_vec(&body).unwrap_or_default(),
                };
                let (done, wait) = oneshot::channel();
                if tx.send((env.encode(), done)).is_err() {
                    return false;
                }
                let ok = wait.await.is_ok();
                counted.fetch_add(u64::from(ok), Ordering::Relaxed);
                ok
            }
        },
    )
    .await;
    // The closure (and with it the last sender) is gone: the writer ends.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    let n = commits.load(Ordering::Relaxed).max(1);
    Ok((rate, accepted.load(Ordering::Relaxed) as f64 / n as f64))
}

// ----------------------------------------------------------------- scale

/// Resident set size of this process, from `/proc/self/statm`.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // 4 KiB pages (x86-64 and aarch64 Linux defaults).
    pages * 4096
}

/// In a child process: one node, `n` idle command senders; prints one JSON
/// line with the RSS before and after.
async fn scale_child(n: usize) -> Result<(), BoxError> {
    let ca = CertificateAuthority::generate("bench-ca")?;
    let node = NodeBuilder::new("scale", Role::Member)
        .quic(QuicConfig::new(
            ca.issue_node(&NodeId::new("scale"), Role::Member)?,
            ca.roots(),
        ))
        .spawn()
        .await?;
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let mut senders: Vec<Sender> = Vec::with_capacity(n);
    // Warm every code path once, then measure.
    let warm: Sender = CommandChannel::spawn_sender(
        &node,
        StreamId::new("command:scale/warm"),
        NodeId::new("hub"),
        store.clone(),
        SenderConfig::default(),
    )
    .await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes();
    let t0 = Instant::now();
    for i in 0..n {
        senders.push(
            CommandChannel::spawn_sender(
                &node,
                StreamId::new(format!("command:scale/{i}")),
                NodeId::new("hub"),
                store.clone(),
                SenderConfig::default(),
            )
            .await?,
        );
    }
    let spawn_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes();
    println!(
        "{}",
        json!({ "n": n, "rss_before": before, "rss_after": after, "spawn_secs": spawn_secs })
    );
    Ok(())
}

fn scale(n: usize) -> Result<Value, BoxError> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--scale-child", &n.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "scale child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().ok_or("scale child printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

// ------------------------------------------------------------------ main

/// Blackholings of the direct path in the failover measurement.
const BLACKHOLINGS: usize = 20;

/// What [`failover`] measured.
struct Failover {
    /// Per blackholing: ms from the blackholing to the first command
    /// applied via the relay.
    ms: Vec<f64>,
    /// Commands accepted but never applied.
    lost: u64,
    /// Per blackholing: ms from the blackholing to the routing decision
    /// that left the direct path.
    decision_ms: Vec<f64>,
}

/// Part 4: the hub–root–member topology (`interlocking::topology`) with
/// one member per blackholing, each sending a class-A command every 100 ms
/// under the **default** routing policy and the library's default probe
/// and QUIC settings. Members are blackholed in turn
/// (one at a time, 0.2–0.6 s apart, dark for 1.5–2 s); each sample is the
/// time from the blackholing to the first reply of a command applied via
/// the relay. One member per blackholing keeps flap damping (a per-stream
/// penalty) out of the figure; the topology test covers repeated flaps.
async fn failover(
    _ca: &CertificateAuthority,
    blackholings: usize,
) -> Result<Option<Failover>, BoxError> {
    let mut opts = topology::Options::new(11);
    opts.members = blackholings;
    opts.chaos_cycles = blackholings as u32;
    opts.interval = Duration::from_millis(100);
    opts.routing = interlocking::routing::RoutingConfig::default();
    opts.quiet_ms = (200, 600);
    opts.dark_ms = (1_500, 2_000);
    opts.round_robin = true;
    opts.wait_for_return = false;
    let report = topology::hub_root_member(opts, |_| {})
        .await
        .map_err(|e| -> BoxError { e.to_string().into() })?;
    eprintln!(
        "failover: {} blackholings, {} failovers, {} sent, {} applied, {} duplicates",
        report.blackholings,
        report.failovers,
        report.commands_sent,
        report.commands_applied,
        report.duplicates_applied
    );
    Ok(Some(Failover {
        ms: report
            .failover_samples_ms
            .iter()
            .map(|m| *m as f64)
            .collect(),
        lost: report.lost + report.duplicates_applied,
        decision_ms: report
            .detection_samples_ms
            .iter()
            .map(|m| *m as f64)
            .collect(),
    }))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    json!({ "cpu": cpu, "cores": cores, "os": std::env::consts::OS, "loadavg_1m_at_start": load })
}

fn main() -> Result<(), BoxError> {
    let argv: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(i) = argv.iter().position(|a| a == "--scale-child") {
        let n = argv.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(1000);
        return runtime.block_on(scale_child(n));
    }
    runtime.block_on(run(args()))
}

async fn run(args: Args) -> Result<(), BoxError> {
    let want = |part: &str| args.only.as_deref().is_none_or(|o| o == part);
    let started = Instant::now();
    let machine = machine();
    let say = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    let ca = CertificateAuthority::generate("bench-ca")?;
    let stack = Stack::start(&ca).await?;
    let raw = Raw::start(&ca).await?;
    let mut out = serde_json::Map::new();
    let mut table: Vec<(String, String, String, String, String)> = Vec::new();

    if want("throughput") {
        let hub_store = stack.redb("hub")?;
        let sender = stack
            .stream("throughput", Arc::new(MemStore::new()), hub_store)
            .await?;
        for (size, tag) in [(256usize, "256"), (16 * 1024, "16k")] {
            let (mut fw, mut rw) = (Vec::new(), Vec::new());
            for r in 0..args.rounds {
                fw.push(stack_throughput(&sender, size, args.secs).await);
                rw.push(if args.skip_raw {
                    1.0
                } else {
                    raw_throughput(&raw, size, args.secs).await?
                });
                say(format!(
                    "throughput {tag} round {r}: stack {:.0}/s raw {:.0}/s",
                    fw[r], rw[r]
                ));
            }
            let (fw, rw) = (Figure::of(fw), Figure::of(rw));
            let ratio = fw.median / rw.median;
            out.insert(format!("throughput_{tag}_msgs_s"), json!(round(fw.median)));
            out.insert(
                format!("raw_throughput_{tag}_msgs_s"),
                json!(round(rw.median)),
            );
            out.insert(
                format!("throughput_ratio_{tag}"),
                json!((ratio * 1000.0).round() / 1000.0),
            );
            out.insert(format!("throughput_{tag}_spread"), fw.json());
            out.insert(format!("raw_throughput_{tag}_spread"), rw.json());
            let mb = |x: f64| x * size as f64 / 1e6;
            table.push((
                format!("throughput {tag} (cmd/s)"),
                format!(
                    "{:.0} [{}] {:.1} MB/s",
                    fw.median,
                    fw.spread(),
                    mb(fw.median)
                ),
                format!(
                    "{:.0} [{}] {:.1} MB/s",
                    rw.median,
                    rw.spread(),
                    mb(rw.median)
                ),
                format!("{ratio:.2}"),
                "≥ 0.90".into(),
            ));
        }
    }

    if want("latency") {
        let hub_store = stack.redb("hub")?;
        let sender = stack
            .stream("latency", Arc::new(MemStore::new()), hub_store)
            .await?;
        let (mut p50, mut p99, mut r50, mut r99) = (vec![], vec![], vec![], vec![]);
        for r in 0..args.rounds {
            let mut s = stack_rtts(&sender).await;
            let mut w = raw_rtts(&raw).await?;
            s.sort_by(f64::total_cmp);
            w.sort_by(f64::total_cmp);
            p50.push(percentile(&s, 0.5));
            p99.push(percentile(&s, 0.99));
            r50.push(percentile(&w, 0.5));
            r99.push(percentile(&w, 0.99));
            say(format!(
                "latency round {r}: stack p50 {:.0} p99 {:.0} µs; raw p50 {:.0} p99 {:.0} µs",
                p50[r], p99[r], r50[r], r99[r]
            ));
        }
        let (p50, p99, r50, r99) = (
            Figure::of(p50),
            Figure::of(p99),
            Figure::of(r50),
            Figure::of(r99),
        );
        out.insert("rtt_p50_us".into(), json!(round(p50.median)));
        out.insert("rtt_p99_us".into(), json!(round(p99.median)));
        out.insert("raw_rtt_p50_us".into(), json!(round(r50.median)));
        out.insert("raw_rtt_p99_us".into(), json!(round(r99.median)));
        out.insert("rtt_p50_spread".into(), p50.json());
        out.insert("rtt_p99_spread".into(), p99.json());
        out.insert("raw_rtt_p50_spread".into(), r50.json());
        out.insert("raw_rtt_p99_spread".into(), r99.json());
        table.push((
            "RTT p50 (µs)".into(),
            format!("{:.0} [{}]", p50.median, p50.spread()),
            format!("{:.0} [{}]", r50.median, r50.spread()),
            format!("+{:.0} µs", p50.median - r50.median),
            "≤ +30 µs".into(),
        ));
        table.push((
            "RTT p99 (µs)".into(),
            format!("{:.0} [{}]", p99.median, p99.spread()),
            format!("{:.0} [{}]", r99.median, r99.spread()),
            format!("+{:.0} µs", p99.median - r99.median),
            "—".into(),
        ));
    }

    if want("durable") {
        let (mut fw, mut rw, mut fb, mut rb) = (vec![], vec![], vec![], vec![]);
        for r in 0..args.rounds {
            let (rate, batch) = stack_durable(&stack, args.secs).await?;
            fw.push(rate);
            fb.push(batch);
            let path = stack.dir.path().join(format!("raw-durable-{r}.redb"));
            let (rate, batch) = raw_durable(path, args.secs).await?;
            rw.push(rate);
            rb.push(batch);
            say(format!(
                "durable round {r}: stack {:.0}/s (batch {:.1}) raw {:.0}/s (batch {:.1})",
                fw[r], fb[r], rw[r], rb[r]
            ));
        }
        let (fw, rw, fb, rb) = (
            Figure::of(fw),
            Figure::of(rw),
            Figure::of(fb),
            Figure::of(rb),
        );
        let ratio = fw.median / rw.median;
        out.insert("durable_cmds_s".into(), json!(round(fw.median)));
        out.insert("raw_durable_cmds_s".into(), json!(round(rw.median)));
        out.insert(
            "durable_ratio".into(),
            json!((ratio * 1000.0).round() / 1000.0),
        );
        out.insert("durable_spread".into(), fw.json());
        out.insert("raw_durable_spread".into(), rw.json());
        out.insert("durable_batch_mean".into(), json!(round(fb.median)));
        out.insert("raw_durable_batch_mean".into(), json!(round(rb.median)));
        table.push((
            "durable class A (cmd/s)".into(),
            format!("{:.0} [{}] batch {:.1}", fw.median, fw.spread(), fb.median),
            format!("{:.0} [{}] batch {:.1}", rw.median, rw.spread(), rb.median),
            format!("{ratio:.2}"),
            "≥ 0.80".into(),
        ));
    }

    if want("failover") {
        match failover(&ca, BLACKHOLINGS).await? {
            Some(f) if !f.ms.is_empty() => {
                let mut ms = f.ms.clone();
                ms.sort_by(f64::total_cmp);
                let (p50, p99) = (percentile(&ms, 0.5), percentile(&ms, 0.99));
                out.insert("failover_p50_ms".into(), json!(round(p50)));
                out.insert("failover_p99_ms".into(), json!(round(p99)));
                out.insert("failover_lost".into(), json!(f.lost));
                out.insert(
                    "failover".into(),
                    json!({ "samples_ms": f.ms.iter().map(|x| round(*x)).collect::<Vec<_>>(), "lost": f.lost }),
                );
                table.push((
                    "failover p50/p99 (ms)".into(),
                    format!("{p50:.0} / {p99:.0}, {} lost", f.lost),
                    "—".into(),
                    "—".into(),
                    "p99 ≤ 1000 ms, 0 lost".into(),
                ));
                let mut dm = f.decision_ms.clone();
                dm.sort_by(f64::total_cmp);
                if !dm.is_empty() {
                    let (d50, d99) = (percentile(&dm, 0.5), percentile(&dm, 0.99));
                    out.insert("failover_decision_p50_ms".into(), json!(round(d50)));
                    out.insert("failover_decision_p99_ms".into(), json!(round(d99)));
                    table.push((
                        format!("cut → decision p50/p99 (ms, {} cuts)", dm.len()),
                        format!("{d50:.0} / {d99:.0}"),
                        "—".into(),
                        "—".into(),
                        "p99 ≤ 1000 ms".into(),
                    ));
                }
            }
            _ => {
                out.insert("failover".into(), Value::Null);
                table.push((
                    "failover p50/p99 (ms)".into(),
                    "pending relay transport".into(),
                    "—".into(),
                    "—".into(),
                    "p99 ≤ 1000 ms, 0 lost".into(),
                ));
            }
        }
    }
    stack.shutdown().await;
    drop(raw);

    if want("scale") {
        let mut per = serde_json::Map::new();
        let mut last = 0.0;
        for n in [10_000usize, 100_000] {
            let v = scale(n)?;
            let grown =
                v["rss_after"].as_f64().unwrap_or(0.0) - v["rss_before"].as_f64().unwrap_or(0.0);
            let bytes = grown / n as f64;
            say(format!(
                "scale {n}: {:.0} bytes/stream, spawned in {:.1} s",
                bytes,
                v["spawn_secs"].as_f64().unwrap_or(0.0)
            ));
            per.insert(
                format!("bytes_per_idle_stream_{}k", n / 1000),
                json!(bytes.round()),
            );
            per.insert(
                format!("spawn_secs_{}k", n / 1000),
                json!(round(v["spawn_secs"].as_f64().unwrap_or(0.0))),
            );
            table.push((
                format!("idle stream, {}k (bytes)", n / 1000),
                format!("{bytes:.0}"),
                "—".into(),
                "—".into(),
                "≤ 4096".into(),
            ));
            last = bytes;
        }
        out.insert("bytes_per_idle_stream".into(), json!(last.round()));
        out.extend(per);
    }

    out.insert("rounds".into(), json!(args.rounds));
    out.insert("secs_per_round".into(), json!(args.secs));
    out.insert(
        "elapsed_s".into(),
        json!(round(started.elapsed().as_secs_f64())),
    );
    out.insert("machine".into(), machine);
    if args.json {
        println!("{}", Value::Object(out));
    } else {
        println!(
            "{:<26} {:<38} {:<30} {:<10} target",
            "measure", "full stack (median [min–max])", "raw baseline", "ratio"
        );
        for (a, b, c, d, e) in &table {
            println!("{a:<26} {b:<38} {c:<30} {d:<10} {e}");
        }
        println!("elapsed {:.0} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

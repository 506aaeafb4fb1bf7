//! The performance bench: the full stack against raw baselines, measured in
//! the same run on the same loopback.
//!
//! Run: `cargo run --release --example bench -- [--json] [--rounds N]
//! [--secs S] [--only throughput|latency|durable|failover|scale]
//! [--acks-each] [--skip-raw]`
//!
//! 1. **Throughput**: class-C commands through the full stack (sender actor
//!    → the routing authority's chosen path → QUIC transport → server actor
//!    → handler → reply), 256 B and 16 KiB payloads, `WINDOW` commands
//!    outstanding; against raw quinn carrying the same frames (the crate's
//!    codec, the same envelopes) on one bidirectional stream with the same
//!    window, mutual TLS with the same configs and ALPN, writes coalesced
//!    on both sides (every frame ready is encoded into one reused buffer
//!    and handed to quinn in one write); and against the one-way framed
//!    ceiling: the same command frames with the same window, released by
//!    cumulative acks (one per batch the server read) instead of replies.
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
use interlocking::wire::{
    Ack, CodecConfig, Data, Frame, FrameDecoder, encode, read_frame, write_frame_buf,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde_bytes::ByteBuf;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};

mod failover;
mod figures;
mod raw_quinn;
mod raw_redb;
mod scale;
mod stack;
#[path = "../../tests/demo/topology.rs"]
mod topology;

use failover::*;
use figures::*;
use raw_quinn::*;
use raw_redb::*;
use scale::*;
use stack::*;

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
    /// Also measure the stack acking every answer (`ack_every(1)`).
    acks_each: bool,
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
        acks_each: argv.iter().any(|a| a == "--acks-each"),
    }
}

// ------------------------------------------------------------------ main

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
        // `--acks-each`: the same stack with an ack for every answer (the
        // behaviour before batched acks), alternating in the same rounds.
        let each = if args.acks_each {
            let store = stack.redb("hub")?;
            Some(
                stack
                    .stream_with(
                        "acks-each",
                        Arc::new(MemStore::new()),
                        store,
                        ServeConfig::default().ack_every(1),
                    )
                    .await?,
            )
        } else {
            None
        };
        for (size, tag) in [(256usize, "256"), (16 * 1024, "16k")] {
            let (mut fw, mut rw, mut ow) = (Vec::new(), Vec::new(), Vec::new());
            let mut ew = Vec::new();
            for r in 0..args.rounds {
                fw.push(stack_throughput(&sender, size, args.secs).await);
                if let Some(each) = &each {
                    ew.push(stack_throughput(each, size, args.secs).await);
                    say(format!(
                        "throughput {tag} round {r}: stack, ack every answer {:.0}/s",
                        ew[r]
                    ));
                }
                let (req, one) = if args.skip_raw {
                    (1.0, 1.0)
                } else {
                    (
                        raw_throughput(&raw, size, args.secs).await?,
                        raw_one_way(&raw, size, args.secs).await?,
                    )
                };
                rw.push(req);
                ow.push(one);
                say(format!(
                    "throughput {tag} round {r}: stack {:.0}/s raw {:.0}/s one-way {:.0}/s",
                    fw[r], rw[r], ow[r]
                ));
            }
            let (fw, rw, ow) = (Figure::of(fw), Figure::of(rw), Figure::of(ow));
            let ratio = fw.median / rw.median;
            let ceiling = fw.median / ow.median;
            if !ew.is_empty() {
                let ew = Figure::of(ew);
                out.insert(format!("acks_each_{tag}_msgs_s"), json!(round(ew.median)));
                out.insert(format!("acks_each_{tag}_spread"), ew.json());
                table.push((
                    format!("batched vs each ack {tag}"),
                    format!("{:.0} [{}]", fw.median, fw.spread()),
                    format!("{:.0} [{}] ack each", ew.median, ew.spread()),
                    format!("{:.2}", fw.median / ew.median),
                    "—".into(),
                ));
            }
            out.insert(format!("raw_one_way_{tag}_msgs_s"), json!(round(ow.median)));
            out.insert(format!("raw_one_way_{tag}_spread"), ow.json());
            out.insert(
                format!("one_way_ratio_{tag}"),
                json!((ceiling * 1000.0).round() / 1000.0),
            );
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
            table.push((
                format!("vs one-way ceiling {tag}"),
                format!("{:.0} [{}]", fw.median, fw.spread()),
                format!("{:.0} [{}] one-way", ow.median, ow.spread()),
                format!("{ceiling:.2}"),
                "reported".into(),
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

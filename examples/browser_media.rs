//! A hub serving live media to browsers (`docs/media.md`).
//!
//! Default: starts a hub with its page server and a `camera` source (a
//! test pattern and a tone, encoded at start-up by Debian's ffmpeg), issues
//! a browser token and prints the page's URL; the page shows the video
//! with the tier and path the hub reports. Runs until Ctrl-C (or `--for S`
//! seconds).
//!
//! `--rounds N` (figures): N fresh headless Chromium pages one after the
//! other, each admitted and asking for the source; prints, median [min–max]
//! and p99 over the rounds, the time from the page's request (`/media`) to
//! its first decoded frame, beside the baseline of the same run: page start
//! to data channels open. Then the hub process's CPU while one page plays
//! a `--kbps` (default 1000) stream for `--secs` (default 10) s, against
//! the idle hub over the same time, as CPU % per Mbit/s sent.
//!
//! Run: `cargo run --release --example browser_media -- [--rounds N]`.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::CommandHandler;
use interlocking::channels::media::{Admission, FileSource, MediaConfig, MediaHub};
use interlocking::store::{RedbStore, Store};
use interlocking::transports::webrtc::WebrtcConfig;
use interlocking::vocab::{NodeId, Role};
use interlocking::web::{self, WebConfig, WebServer};
use serde_json::Value;
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
struct Echo;

#[async_trait]
impl CommandHandler for Echo {
    type Command = u64;
    type Reply = u64;

    async fn handle(&self, k: u64) -> Result<u64, String> {
        Ok(k)
    }
}

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// Four seconds of a 640×480 test pattern at `kbps` (VP8, IVF), the same
/// at a quarter of it (the reduced tier), and a tone (Opus, Ogg).
fn encode(dir: &std::path::Path, kbps: u64) -> Result<(Bytes, Bytes, Bytes), BoxError> {
    let p = |n: &str| dir.join(n).display().to_string();
    let run = |args: Vec<String>| -> Result<(), BoxError> {
        let out = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(&args)
            .output()
            .map_err(|e| format!("ffmpeg ({e}): apt-get install ffmpeg"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
        }
        Ok(())
    };
    for (name, rate) in [("full.ivf", kbps), ("reduced.ivf", kbps / 4)] {
        let v = "-f lavfi -i testsrc=size=640x480:rate=30 -t 4 -c:v libvpx -g 30 -deadline realtime -cpu-used 8";
        let mut a: Vec<String> = v.split(' ').map(String::from).collect();
        a.extend([
            "-b:v".into(),
            format!("{rate}k"),
            "-minrate".into(),
            format!("{rate}k"),
            "-maxrate".into(),
            format!("{rate}k"),
            p(name),
        ]);
        run(a)?;
    }
    let a = "-f lavfi -i sine=frequency=440:sample_rate=48000 -t 4 -c:a libopus -b:a 48k -page_duration 20000";
    let mut a: Vec<String> = a.split(' ').map(String::from).collect();
    a.push(p("tone.ogg"));
    run(a)?;
    let read = |n: &str| std::fs::read(dir.join(n)).map(Bytes::from);
    Ok((read("full.ivf")?, read("tone.ogg")?, read("reduced.ivf")?))
}

struct Hub {
    node: Node,
    web: WebServer,
    media: Arc<MediaHub>,
    store: Arc<dyn Store>,
}

async fn hub(dir: &std::path::Path, kbps: u64) -> Result<Hub, BoxError> {
    let (ivf, ogg, reduced) = encode(dir, kbps)?;
    let builder = NodeBuilder::new("hub", Role::Hub).webrtc(WebrtcConfig::new("hub"));
    let handle = builder.webrtc_handle();
    let node = builder.spawn().await?;
    let media = MediaHub::new(&node, handle.clone(), MediaConfig::default());
    let factory = FileSource::factory(ivf, ogg, Some(reduced))?;
    media.register("camera", factory.clone(), Admission::Everyone);
    media.register(
        "private",
        factory,
        Admission::Only(BTreeSet::from([NodeId::new("nobody")])),
    );
    let web = web::serve_with_media(
        node.id().clone(),
        handle,
        WebConfig::default(),
        media.clone(),
    )
    .await?;
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.join("hub.redb"))?);
    Ok(Hub {
        node,
        web,
        media,
        store,
    })
}

async fn token(h: &Hub) -> Result<String, BoxError> {
    Ok(h.web
        .gate()
        .issue(&h.node, Echo, h.store.clone(), Duration::from_secs(600))
        .await?)
}

/// Headless Chromium (DESIGN.md §9 flags, fresh profile), killed on drop.
struct Chromium {
    child: Child,
    /// Kept so the profile directory lives as long as the browser.
    _profile: tempfile::TempDir,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium(url: &str) -> Result<Chromium, BoxError> {
    let profile = tempfile::tempdir()?;
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Chromium {
        child,
        _profile: profile,
    })
}

async fn report_endpoint() -> Result<(String, mpsc::Receiver<Value>), BoxError> {
    let (tx, rx) = mpsc::channel(64);
    let app = Router::new().route(
        "/report",
        post(move |body: String| {
            let tx = tx.clone();
            async move {
                let _ = tx
                    .send(serde_json::from_str(&body).unwrap_or(Value::Null))
                    .await;
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/report", l.local_addr()?);
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok((url, rx))
}

/// This process's CPU time so far (user + system, from /proc).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name's closing parenthesis; utime and stime
    // are fields 14 and 15 of the whole line, in clock ticks (100 Hz).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // `rest` starts at field 3 (the state).
    let ticks = field(14 - 3) + field(15 - 3);
    Duration::from_millis(ticks * 10)
}

/// The next report from a page not reported before (a page's report can
/// arrive twice); bounded by 60 s.
async fn next_report(
    rx: &mut mpsc::Receiver<Value>,
    seen: &mut BTreeSet<String>,
) -> Result<Value, BoxError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| "no report from a new page in 60 s")?
            .ok_or("report endpoint closed")?;
        let stream = r["streams"][0]["stream"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if seen.insert(stream) {
            return Ok(r);
        }
    }
}

fn spread(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "median {:.0} ms [{:.0}–{:.0}], p99 {:.0} ms, n={}",
        p(0.5),
        v[0],
        v[v.len() - 1],
        p(0.99),
        v.len()
    )
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let kbps = arg("--kbps").unwrap_or(1000);
    let h = hub(dir.path(), kbps).await?;
    let Some(rounds) = arg("--rounds") else {
        let t = token(&h).await?;
        println!(
            "open http://{}/media.html?token={t}&sources=camera,private&watch=1 \
             (single-use token; the page shows the video, its tier and path)",
            h.web.addr()
        );
        let run = async {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                for s in h.media.status() {
                    println!("{s}");
                }
            }
        };
        let limit = Duration::from_secs(arg("--for").unwrap_or(u64::MAX / 4));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = tokio::time::sleep(limit) => {}
            _ = run => {}
        }
        h.node.shutdown().await;
        return Ok(());
    };
    let (report, mut rx) = report_endpoint().await?;
    let (mut first, mut connect) = (Vec::new(), Vec::new());
    let mut seen = BTreeSet::new();
    for round in 0..rounds {
        let t = token(&h).await?;
        let url = format!(
            "http://{}/media.html?token={t}&sources=camera&report={report}&for=20000",
            h.web.addr()
        );
        let _browser = chromium(&url)?;
        let r = next_report(&mut rx, &mut seen).await?;
        let (Some(ff), Some(asked), Some(c)) = (
            r["first_frame_ms"].as_f64(),
            r["streams"][0]["asked_ms"].as_f64(),
            r["connected_ms"].as_f64(),
        ) else {
            return Err(format!("round {round}: {r}").into());
        };
        eprintln!(
            "round {round}: request -> first frame {:.0} ms, connect {c:.0} ms",
            ff - asked
        );
        first.push(ff - asked);
        connect.push(c);
        let consumer = r["status"][0]["stream"].as_str().unwrap_or_default();
        let consumer = consumer.rsplit('/').next().unwrap_or_default();
        h.media.stop(&NodeId::new(consumer), "camera");
    }
    println!("request -> first decoded frame: {}", spread(first));
    println!(
        "baseline, page start -> data channels open: {}",
        spread(connect)
    );
    // CPU: idle hub, then one page playing.
    let secs = Duration::from_secs(arg("--secs").unwrap_or(10));
    let (c0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(secs).await;
    let idle = (cpu_time() - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let t = token(&h).await?;
    let url = format!(
        "http://{}/media.html?token={t}&sources=camera&report={report}&watch=1&every=1000",
        h.web.addr()
    );
    let _browser = chromium(&url)?;
    next_report(&mut rx, &mut seen).await?;
    let bytes0 = h.media.bytes_sent();
    let (c0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(secs).await;
    let busy = (cpu_time() - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let mbps = (h.media.bytes_sent() - bytes0) as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e6;
    println!(
        "hub CPU: {:.1} % streaming {mbps:.2} Mbit/s, {:.1} % idle (same run): {:.1} % per Mbit/s",
        busy * 100.0,
        idle * 100.0,
        (busy - idle) * 100.0 / mbps.max(0.001)
    );
    h.node.shutdown().await;
    Ok(())
}

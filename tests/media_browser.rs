//! Media to a real browser: Debian's headless Chromium is admitted, asks
//! the hub for sources by name and renegotiates to receive them. An
//! unknown source and a source it is not admitted to are refused with the
//! media codes (0x0330, 0x0331); the admitted one plays: `getStats()`
//! shows decoded VP8 frames and received Opus packets within a bounded
//! time, and the hub's status names who terminates, who decided, the tier
//! and the path. The media is made at run time with Debian's ffmpeg (a
//! test pattern and a sine tone), nothing is downloaded. Every wait is
//! bounded.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::browser::{chromium, report_endpoint};
use interlocking::actors::node::Node;
use interlocking::actors::node::NodeBuilder;
use interlocking::channels::CommandHandler;
use interlocking::channels::media::{Admission, FileSource, MediaConfig, MediaHub, Tier};
use interlocking::store::{RedbStore, Store};
use interlocking::transports::probe::ProbeConfig;
use interlocking::transports::webrtc::{WebrtcConfig, WebrtcFaults};
use interlocking::vocab::{NodeId, Role};
use interlocking::web::{self, WebConfig, WebServer};
use interlocking::wire::codes::media as codes;

const LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Default)]
struct Echo;

#[async_trait]
impl CommandHandler for Echo {
    type Command = u64;
    type Reply = u64;

    async fn handle(&self, k: u64) -> Result<u64, String> {
        Ok(k)
    }
}

/// Encodes two seconds of a test pattern (VP8 in IVF, at `kbps`) and of
/// a sine tone (Opus in Ogg, one 20 ms packet per page) with ffmpeg.
fn media(dir: &std::path::Path) -> (Bytes, Bytes, Bytes) {
    let run = |args: &[&str]| {
        let out = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run ffmpeg ({e}): apt-get install ffmpeg (scripts/test does)")
            });
        assert!(
            out.status.success(),
            "ffmpeg: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |n: &str| dir.join(n).display().to_string();
    for (name, kbps) in [("full.ivf", "400k"), ("reduced.ivf", "60k")] {
        run(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=30",
            "-t",
            "2",
            "-c:v",
            "libvpx",
            "-b:v",
            kbps,
            "-g",
            "30",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            &p(name),
        ]);
    }
    run(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "2",
        "-c:a",
        "libopus",
        "-b:a",
        "48k",
        "-page_duration",
        "20000",
        &p("tone.ogg"),
    ]);
    let read = |n: &str| Bytes::from(std::fs::read(dir.join(n)).unwrap());
    (read("full.ivf"), read("tone.ogg"), read("reduced.ivf"))
}

struct Hub {
    node: Node,
    web: WebServer,
    media: Arc<MediaHub>,
    token: String,
    _dir: tempfile::TempDir,
}

/// A hub serving the page, with sources `camera` (everyone) and `secret`
/// (only `browser-999`), and one browser token.
async fn hub(faults: Option<WebrtcFaults>) -> Hub {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let (ivf, ogg, reduced) = media(dir.path());
    let mut cfg = WebrtcConfig::new("hub");
    cfg.probe = ProbeConfig {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(800),
    };
    cfg.faults = faults;
    let builder = NodeBuilder::new("hub", Role::Hub).webrtc(cfg);
    let handle = builder.webrtc_handle();
    let node = builder.spawn().await.unwrap();
    let media = MediaHub::new(&node, handle.clone(), MediaConfig::default());
    let factory = FileSource::factory(ivf, ogg, Some(reduced)).unwrap();
    media.register("camera", factory.clone(), Admission::Everyone);
    media.register(
        "secret",
        factory,
        Admission::Only(BTreeSet::from([NodeId::new("browser-999")])),
    );
    let web = web::serve_with_media(
        node.id().clone(),
        handle,
        WebConfig::default(),
        media.clone(),
    )
    .await
    .unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path().join("hub.redb")).unwrap());
    let token = web
        .gate()
        .issue(&node, Echo, store, Duration::from_secs(30))
        .await
        .unwrap();
    Hub {
        node,
        web,
        media,
        token,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_receives_admitted_media_and_is_refused_unknown_or_unadmitted_sources() {
    let h = hub(None).await;
    let (report, mut rx) = report_endpoint().await;
    let url = format!(
        "http://{}/media.html?token={}&sources=nope,secret,camera&report={report}&for=30000",
        h.web.addr(),
        h.token
    );
    let _browser = chromium(&url);
    let r = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no report within {LIMIT:?}; media {:?}", h.media.status()))
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let refused: Vec<(String, u64)> = r["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["source"].as_str().unwrap().to_string(),
                x["code"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            ("nope".to_string(), u64::from(codes::UNKNOWN_SOURCE)),
            ("secret".to_string(), u64::from(codes::NOT_ADMITTED)),
        ]
    );
    assert_eq!(h.media.refused().get(&codes::UNKNOWN_SOURCE), Some(&1));
    assert_eq!(h.media.refused().get(&codes::NOT_ADMITTED), Some(&1));
    let stats = &r["stats"];
    assert!(stats["framesDecoded"].as_u64().unwrap() > 0, "{r}");
    assert!(stats["audioPackets"].as_u64().unwrap() > 0, "{r}");
    let status = &r["status"][0];
    assert_eq!(status["tier"], "full", "{r}");
    assert_eq!(status["path"], "webrtc-media");
    assert_eq!(status["terminates"], "hub");
    assert_eq!(status["decided"], "hub");
    let s = h
        .media
        .explain(&NodeId::new("browser-1"), "camera")
        .expect("stream");
    assert_eq!(s.tier, Tier::Full);
    assert!(s.written.0 > 0 && s.written.1 > 0, "{s:?}");
    assert!(s.first_video_after.is_some());
    let ready = h.media.readiness();
    assert_eq!((ready.running, ready.failed), (1, 0));
    eprintln!(
        "first decoded frame {:.0} ms after page start; {s}",
        r["first_frame_ms"].as_f64().unwrap_or(-1.0)
    );
    h.web.shutdown();
    h.node.shutdown().await;
}

/// Waits until `done` holds for the hub's status of the camera stream,
/// looking every 100 ms, at most `limit` (a bounded number of looks).
async fn until(
    h: &Hub,
    limit: Duration,
    what: &str,
    done: impl Fn(&interlocking::channels::media::MediaStatus) -> bool,
) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..(limit.as_millis() / 100) {
        every.tick().await;
        if let Some(s) = h.media.explain(&NodeId::new("browser-1"), "camera")
            && done(&s)
        {
            return;
        }
    }
    panic!("{what}: not within {limit:?}; {:?}", h.media.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_below_the_hubs_sockets_lowers_the_tier_and_healing_raises_it_one_change_per_hold() {
    let seed: u64 = std::env::var("MEDIA_LOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("loss seed {seed} (MEDIA_LOSS_SEED={seed} repeats it)");
    let faults = WebrtcFaults::new();
    let h = hub(Some(faults.clone())).await;
    let (report, _rx) = report_endpoint().await;
    let url = format!(
        "http://{}/media.html?token={}&sources=camera&report={report}&watch=1&every=250",
        h.web.addr(),
        h.token
    );
    let _browser = chromium(&url);
    let hold = MediaConfig::default().tiers.hold;
    until(&h, LIMIT, "frames written at full tier", |s| {
        s.tier == Tier::Full && s.written.0 > 30
    })
    .await;
    faults.set_loss(0.3, seed);
    until(&h, LIMIT, "tier down to audio-only under 30 % loss", |s| {
        s.tier >= Tier::AudioOnly
    })
    .await;
    faults.set_loss(0.0, seed);
    until(&h, LIMIT, "tier back to full after healing", |s| {
        s.tier == Tier::Full
    })
    .await;
    let s = h
        .media
        .explain(&NodeId::new("browser-1"), "camera")
        .unwrap();
    eprintln!("{s}");
    assert!(
        s.decisions.iter().any(|d| d.contains("path degraded")),
        "{s}"
    );
    assert!(
        s.decisions.iter().any(|d| d.contains("path recovered")),
        "{s}"
    );
    assert!(s.changes >= 4, "{s}");
    // At most one change per hold period: the ladder's own records.
    let at = h.media.decision_times(&NodeId::new("browser-1"), "camera");
    for w in at.windows(2) {
        assert!(w[1] - w[0] >= hold, "changes {:?} apart: {s}", w[1] - w[0]);
    }
    // Media trouble never made the node's core not ready.
    assert!(h.node.is_running());
    h.web.shutdown();
    h.node.shutdown().await;
}

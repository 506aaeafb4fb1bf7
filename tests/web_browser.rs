//! Browsers: Debian's headless Chromium loads the hub's page, is admitted
//! with a single-use browser join token, opens the data channels and sends
//! 100 commands to a handler on the hub (100 correct replies, each command
//! applied once); garbage on the data channel gets a typed refusal while
//! the page keeps being served; reused and expired tokens are refused; the
//! hub closing the browser's peer mid-run is recovered by a fresh session
//! with every command applied once; a page allowed only relayed
//! candidates reaches the hub through the root's TURN server with
//! credentials minted at its admission.
//! The page reports to this test's own loopback endpoint. Every wait is
//! bounded.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::browser::{chromium, report_endpoint};
use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::CommandHandler;
use interlocking::store::{RedbStore, Store};
use interlocking::transports::Transport;
use interlocking::transports::probe::ProbeConfig;
use interlocking::transports::webrtc::{WebrtcConfig, WebrtcHandle, codes};
use interlocking::vocab::NodeId;
use interlocking::vocab::Role;
use interlocking::web::{self, WebConfig, WebServer};
use serde_json::Value;
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(60);

/// Doubles its command and counts applications per command.
#[derive(Clone, Default)]
struct Doubler {
    applied: Arc<Mutex<HashMap<u64, u64>>>,
}

#[async_trait]
impl CommandHandler for Doubler {
    type Command = u64;
    type Reply = u64;

    async fn handle(&self, k: u64) -> Result<u64, String> {
        *self.applied.lock().unwrap().entry(k).or_insert(0) += 1;
        Ok(2 * k)
    }
}

struct Hub {
    node: Node,
    web: WebServer,
    webrtc: WebrtcHandle,
    store: Arc<dyn Store>,
    handler: Doubler,
    _dir: tempfile::TempDir,
}

async fn hub() -> Hub {
    hub_with(WebConfig::default()).await
}

async fn hub_with(web_config: WebConfig) -> Hub {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cfg = WebrtcConfig::new("hub");
    cfg.probe = ProbeConfig {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(800),
    };
    let builder = NodeBuilder::new("hub", Role::Hub).webrtc(cfg);
    let handle = builder.webrtc_handle();
    let node = builder.spawn().await.unwrap();
    let web = web::serve(node.id().clone(), handle.clone(), web_config)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path().join("hub.redb")).unwrap());
    Hub {
        node,
        web,
        webrtc: handle,
        store,
        handler: Doubler::default(),
        _dir: dir,
    }
}

/// A single-use browser join token for `hub`'s handler, valid for `ttl`.
async fn issue_token(hub: &Hub, ttl: Duration) -> String {
    hub.web
        .gate()
        .issue(&hub.node, hub.handler.clone(), hub.store.clone(), ttl)
        .await
        .unwrap()
}

async fn page(hub: &Hub, report: &str, rx: &mut mpsc::Receiver<Value>, query: &str) -> Value {
    let url = format!("http://{}/?report={report}&{query}", hub.web.addr());
    let _browser = chromium(&url);
    wait_report(hub, rx).await
}

async fn wait_report(hub: &Hub, rx: &mut mpsc::Receiver<Value>) -> Value {
    match tokio::time::timeout(LIMIT, rx.recv()).await {
        Ok(r) => r.expect("report endpoint open"),
        Err(_) => panic!(
            "the page did not report within {LIMIT:?}; hub refusals {:?}, applied {:?}",
            hub.node.refusals(),
            hub.handler.applied.lock().unwrap()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_is_admitted_and_gets_100_replies_garbage_is_refused_tokens_are_single_use() {
    let hub = hub().await;
    let (report, mut rx) = report_endpoint().await;
    let ttl = Duration::from_secs(60);
    let token = issue_token(&hub, ttl).await;

    let r = page(
        &hub,
        &report,
        &mut rx,
        &format!("token={token}&n=100&garbage=1"),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["replies"], 100, "{r}");
    assert_eq!(r["correct"], 100, "{r}");
    let garbage = r["garbage_code"]
        .as_u64()
        .expect("a typed refusal of the garbage");
    assert!(
        (0x0100..0x0200).contains(&garbage),
        "codec refusal code: {r}"
    );
    assert_eq!(r["after_garbage"], 2000, "the page is still served: {r}");
    eprintln!(
        "page load -> first reply: {:.1} ms",
        r["first_reply_ms"].as_f64().unwrap()
    );
    {
        let applied = hub.handler.applied.lock().unwrap();
        assert_eq!(applied.len(), 101);
        assert!(applied.values().all(|n| *n == 1), "{applied:?}");
    }

    // The same token again: refused.
    let r = page(&hub, &report, &mut rx, &format!("token={token}&n=1")).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error_code"], u64::from(codes::TOKEN_REFUSED), "{r}");
    // An expired token: refused.
    let expired = issue_token(&hub, Duration::ZERO).await;
    let r = page(&hub, &report, &mut rx, &format!("token={expired}&n=1")).await;
    assert_eq!(r["error_code"], u64::from(codes::TOKEN_REFUSED), "{r}");
    assert_eq!(hub.handler.applied.lock().unwrap().len(), 101);

    hub.web.shutdown();
    hub.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_closing_the_browser_peer_mid_run_is_recovered_and_every_command_applied_once() {
    let hub = hub().await;
    let (report, mut rx) = report_endpoint().await;
    let token = issue_token(&hub, Duration::from_secs(60)).await;
    let url = format!(
        "http://{}/?report={report}&token={token}&n=100&pace=10",
        hub.web.addr()
    );
    let _browser = chromium(&url);

    // Mid-run: once 30 commands were applied, the hub closes the peer.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while hub.handler.applied.lock().unwrap().len() < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "30 commands not applied within {LIMIT:?}; applied {:?}",
            hub.handler.applied.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rtc = hub.webrtc.get().expect("the hub's WebRTC transport");
    let sessions_before = rtc.counters().sessions_up;
    rtc.close(
        &NodeId::new("browser-1"),
        0,
        "test: the hub closes the peer",
    )
    .await;

    let r = wait_report(&hub, &mut rx).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["replies"], 100, "{r}");
    assert_eq!(r["correct"], 100, "{r}");
    let applied = hub.handler.applied.lock().unwrap().clone();
    assert_eq!(applied.len(), 100, "{applied:?}");
    assert!(
        applied.values().all(|n| *n == 1),
        "applied twice: {applied:?}"
    );
    assert!(
        rtc.counters().sessions_up > sessions_before,
        "the page came back on a fresh session: {:?}",
        rtc.counters()
    );
    eprintln!(
        "hub closed the peer: longest gap between two replies {:.1} ms",
        r["max_gap_ms"].as_f64().unwrap()
    );
    hub.web.shutdown();
    hub.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_page_is_carried_by_the_roots_turn_server() {
    use interlocking::turn::{TurnConfig, TurnServer};
    let secret = b"operator's shared TURN secret".to_vec();
    let turn = TurnServer::bind(TurnConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        secret.clone(),
    ))
    .await
    .unwrap();
    let hub = hub_with(WebConfig {
        turn: Some(web::TurnGrant {
            urls: vec![turn.url()],
            secret,
            ttl: Duration::from_secs(600),
        }),
        ..WebConfig::default()
    })
    .await;
    let (report, mut rx) = report_endpoint().await;
    let token = issue_token(&hub, Duration::from_secs(60)).await;
    let r = page(
        &hub,
        &report,
        &mut rx,
        &format!("token={token}&n=20&relay=1"),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}; turn {:?}", turn.counters());
    assert_eq!(r["correct"], 20, "{r}");
    assert_eq!(r["candidate"], "relay", "{r}");
    let n = turn.counters();
    assert!(n.allocations >= 1, "{n:?}");
    assert!(n.to_peer_bytes > 0 && n.to_client_bytes > 0, "{n:?}");
    eprintln!("TURN relayed page: {n:?}");
    hub.web.shutdown();
    hub.node.shutdown().await;
}

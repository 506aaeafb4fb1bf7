//! A command stream between two Rust nodes on `webrtc-data`, with the
//! default policy order webrtc-data → quic → relay, on real loopback
//! sockets and a real root. ICE is blocked (the member's WebRTC UDP
//! sockets blackholed): the stream fails over to QUIC; QUIC is blackholed
//! too: it fails over to the relay; both heal: it returns to webrtc-data,
//! never inside a freeze. Every command is applied exactly once.

use std::sync::Arc;
use std::time::Duration;

use interlocking::actors::node::{Node, NodeBuilder};
use interlocking::channels::command::{CommandChannel, SendOptions, SenderConfig, ServeConfig};
use interlocking::root::{Root, RootConfig, RootHandle, join};
use interlocking::routing::{Decision, Rule};
use interlocking::store::RedbStore;
#[path = "demo/topology.rs"]
mod topology;

use interlocking::transports::PeerAddr;
use interlocking::transports::probe::ProbeConfig;
use interlocking::transports::quic::faults::FaultHandle;
use interlocking::transports::quic::{Backoff, QuicConfig};
use interlocking::transports::relay::RelayConfig;
use interlocking::transports::webrtc::{IceConfig, WebrtcConfig, WebrtcFaults};
use interlocking::vocab::{NodeId, PathKind, Role, StreamId};
use tokio::sync::broadcast;
use tokio::time::Instant;
use topology::{Ledger, Move, quick_policy};

fn probe() -> ProbeConfig {
    ProbeConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    }
}

fn webrtc(name: &str, faults: Option<WebrtcFaults>) -> WebrtcConfig {
    let mut c = WebrtcConfig::new(name);
    c.probe = probe();
    c.ice = IceConfig {
        disconnected_timeout: Duration::from_millis(800),
        failed_timeout: Duration::from_secs(3),
        keepalive: Duration::from_millis(200),
        restarts: 3,
        restart_timeout: Duration::from_secs(1),
    };
    c.connect_timeout = Duration::from_secs(5);
    c.faults = faults;
    c
}

async fn node(
    root: &RootHandle,
    name: &str,
    role: Role,
    quic_faults: FaultHandle,
    rtc_faults: Option<WebrtcFaults>,
) -> NodeBuilder {
    let id = NodeId::new(name);
    let token = root.issue_token(&id, role, None).unwrap().to_string();
    let joined = join(
        root.join_addr(),
        root.node(),
        &token,
        &id,
        role,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut quic = QuicConfig::new(joined.identity, joined.roots);
    quic.probe = probe();
    quic.reconnect = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        multiplier: 2.0,
        jitter: 0.5,
        max_attempts: None,
    };
    let mut relay = RelayConfig::new(quic.clone(), root.peer_addr());
    relay.probe = probe();
    NodeBuilder::new(name, role)
        .routing(quick_policy())
        .relay(relay)
        .quic_with_faults(quic, quic_faults)
        .webrtc(webrtc(name, rtc_faults))
}

/// Reads decisions about `stream` until it is routed on `kind`; returns
/// every decision seen on the way (bounded by `limit`).
async fn route_to(
    rx: &mut broadcast::Receiver<Decision>,
    stream: &StreamId,
    kind: PathKind,
    limit: Duration,
) -> Vec<Decision> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let d = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(d)) => d,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => panic!("decision log closed: {e}"),
            Err(_) => panic!("{stream} not routed on {kind} within {limit:?}; saw {seen:#?}"),
        };
        if &d.stream != stream {
            continue;
        }
        let done = d.next.as_ref().is_some_and(|p| p.kind == kind);
        seen.push(d);
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_blocked_fails_over_to_quic_then_relay_and_returns_after_the_freeze() {
    interlocking::trust::ensure_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let root = Root::spawn(RootConfig {
        probe: probe(),
        ..RootConfig::default()
    })
    .await
    .unwrap();
    let hub: Node = node(&root, "hub", Role::Hub, FaultHandle::new(1), None)
        .await
        .spawn()
        .await
        .unwrap();
    let hub_addr = hub.listen_addr(PathKind::Quic).unwrap();
    let stream = StreamId::new("command:member/hub");
    let ledger = Ledger::default();
    let hub_store = Arc::new(RedbStore::open(dir.path().join("hub.redb")).unwrap());
    CommandChannel::serve(
        &hub,
        stream.clone(),
        NodeId::new("member"),
        ledger.clone(),
        hub_store,
        ServeConfig::default(),
    )
    .await
    .unwrap();

    let quic_faults = FaultHandle::new(2);
    let rtc_faults = WebrtcFaults::new();
    let member = node(
        &root,
        "member",
        Role::Member,
        quic_faults.clone(),
        Some(rtc_faults.clone()),
    )
    .await
    .dial(PathKind::WebrtcData, PeerAddr::node("hub"))
    .dial(PathKind::Quic, PeerAddr::at("hub", hub_addr))
    .dial(PathKind::Relay, PeerAddr::node("hub"))
    .spawn()
    .await
    .unwrap();
    let mut decisions = member.decisions();
    let store = Arc::new(RedbStore::open(dir.path().join("member.redb")).unwrap());
    let sender = CommandChannel::spawn_sender::<Move, u64>(
        &member,
        stream.clone(),
        NodeId::new("hub"),
        store,
        SenderConfig::default(),
    )
    .await
    .unwrap();

    // A steady stream of class-A commands, replies awaited in background.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pump = {
        let (sender, stop) = (sender.clone(), stop.clone());
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            let mut k = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && k < 5_000 {
                tick.tick().await;
                let cmd = Move {
                    member: "member".into(),
                    k: k + 1,
                };
                if let Ok(receipt) = sender.send(cmd, SendOptions::class_a()).await {
                    k += 1;
                    waiting.push(tokio::spawn(receipt.reply()));
                }
            }
            (k, waiting)
        })
    };

    route_to(
        &mut decisions,
        &stream,
        PathKind::WebrtcData,
        Duration::from_secs(20),
    )
    .await;

    // ICE blocked: webrtc-data → quic.
    rtc_faults.set_blackhole(true);
    let seen = route_to(
        &mut decisions,
        &stream,
        PathKind::Quic,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(seen.last().unwrap().rule, Rule::Failover, "{seen:#?}");
    // QUIC blocked too: quic → relay.
    quic_faults.set_blackhole(true);
    let seen = route_to(
        &mut decisions,
        &stream,
        PathKind::Relay,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(seen.last().unwrap().rule, Rule::Failover, "{seen:#?}");
    // Both heal: back to webrtc-data, only after the freeze.
    rtc_faults.set_blackhole(false);
    quic_faults.set_blackhole(false);
    let seen = route_to(
        &mut decisions,
        &stream,
        PathKind::WebrtcData,
        Duration::from_secs(40),
    )
    .await;
    for d in seen.iter().filter(|d| d.rule == Rule::ReturnToPreferred) {
        let prev = seen
            .iter()
            .rev()
            .find(|p| p.is_switch() && p.at < d.at && p.freeze_until.is_some());
        if let Some(f) = prev.and_then(|p| p.freeze_until) {
            assert!(d.at >= f, "return inside the freeze: {seen:#?}");
        }
    }
    assert!(rtc_faults.dropped() > 0);

    // Stop; every accepted command is answered and applied once.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, waiting) = pump.await.unwrap();
    for w in waiting {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("reply within 30 s")
            .unwrap()
            .expect("command applied");
    }
    let (applied, dups) = ledger.counts();
    assert!(sent > 50, "sent {sent}");
    assert_eq!(applied, sent, "lost {}", sent - applied);
    assert_eq!(dups, 0);
    member.shutdown().await;
    hub.shutdown().await;
    root.shutdown().await;
}

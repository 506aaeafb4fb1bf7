//! The WebRTC transport between Rust nodes on loopback, signalled through a
//! real root: the shared transport contract, glare, ICE restart under a
//! blackholed UDP socket, and bad signalling refused with typed codes.
//! Every wait is bounded.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::contract::{self, Side, data, recv_data, until, wait_up};
use common::rootkit::{self, LIMIT};
use interlocking::root::RootHandle;
use interlocking::transports::probe::ProbeConfig;
use interlocking::transports::relay::RelayTransport;
use interlocking::transports::webrtc::signalling::{
    self, Candidate, Description, KIND_ANSWER, KIND_CANDIDATE, KIND_OFFER, Refusal, SignalMsg,
};
use interlocking::transports::webrtc::{
    IceConfig, WebrtcConfig, WebrtcFaults, WebrtcTransport, codes,
};
use interlocking::transports::{Fact, PeerAddr, Transport, TransportEvent};
use interlocking::vocab::{NodeId, Role};
use tokio::sync::mpsc;

struct Peer {
    relay: Arc<RelayTransport>,
    t: Arc<WebrtcTransport>,
    rx: mpsc::Receiver<TransportEvent>,
    id: NodeId,
}

fn fast(name: &str) -> WebrtcConfig {
    let mut c = WebrtcConfig::new(name);
    c.probe = ProbeConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(400),
    };
    c.ice = IceConfig {
        disconnected_timeout: Duration::from_millis(800),
        failed_timeout: Duration::from_secs(3),
        keepalive: Duration::from_millis(200),
        restarts: 3,
        restart_timeout: Duration::from_secs(2),
    };
    c
}

/// Joins `name` at `root` and starts its relay and WebRTC transports; the
/// relay's own events are drained in the background.
async fn peer(root: &RootHandle, name: &str, config: WebrtcConfig) -> Peer {
    let joined = rootkit::joined(root, name, Role::Member).await;
    let (relay, mut relay_rx) = rootkit::relay(root, joined.identity, joined.roots);
    tokio::spawn(async move { while relay_rx.recv().await.is_some() {} });
    let (tx, rx) = mpsc::channel(65536);
    let t = WebrtcTransport::bind(config, relay.clone(), tx);
    rootkit::wait_online(root, name, true).await;
    Peer {
        relay,
        t,
        rx,
        id: NodeId::new(name),
    }
}

/// Receives the next signalling refusal sent to `relay` (bounded).
async fn next_refusal(
    signals: &mut tokio::sync::broadcast::Receiver<interlocking::wire::Signal>,
) -> Refusal {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let sig = tokio::time::timeout_at(deadline, signals.recv())
            .await
            .expect("a refusal within the limit")
            .expect("signal stream open");
        if let Ok(SignalMsg::Refused(r)) = SignalMsg::decode(&sig.kind, &sig.payload) {
            return r;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_passes_the_transport_contract() {
    let root = rootkit::root().await;
    let a = peer(&root, "a", fast("a")).await;
    let b = peer(&root, "b", fast("b")).await;
    let side = |p: Peer| Side {
        addr: PeerAddr::node(p.id.clone()),
        t: p.t,
        rx: p.rx,
    };
    let (ra, rb) = (a.relay.clone(), b.relay.clone());
    contract::run(side(a), side(b)).await;
    ra.shutdown().await;
    rb.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_and_every_class_cross_the_data_channels() {
    let root = rootkit::root().await;
    let a = peer(&root, "a", fast("a")).await;
    let mut b = peer(&root, "b", fast("b")).await;
    a.t.connect(&PeerAddr::node("b")).await.unwrap();
    wait_up(&mut b.rx, &a.id).await;
    // 200 KiB: split into many data-channel messages, reassembled by the
    // codec's decoder; classes 0..=4 each on their own channel.
    for class in 0..5u8 {
        let stream = format!("sync:a/b/{class}");
        for seq in 0..3 {
            a.t.send(&b.id, data(&stream, class, seq, 200 * 1024))
                .unwrap();
        }
    }
    let mut got: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    while got.values().map(Vec::len).sum::<usize>() < 15 {
        let (ev, _) = until(&mut b.rx, LIMIT, |e| {
            matches!(e.fact, Fact::Frame(interlocking::wire::Frame::Data(_)))
        })
        .await;
        if let Fact::Frame(interlocking::wire::Frame::Data(d)) = ev.fact {
            assert_eq!(d.payload.len(), 200 * 1024);
            got.entry(d.stream.to_string()).or_default().push(d.seq);
        }
    }
    for class in 0..5u8 {
        assert_eq!(got[&format!("sync:a/b/{class}")], vec![0, 1, 2], "{got:?}");
    }
    // Over the codec's limit: refused at send, nothing queued.
    let err =
        a.t.send(&b.id, data("sync:a/b/0", 0, 9, 2 << 20))
            .unwrap_err();
    assert!(
        matches!(err, interlocking::transports::SendError::Encode(_)),
        "{err:?}"
    );
    let setup = a.t.setup_time(&b.id).expect("setup time recorded");
    assert!(setup < LIMIT, "{setup:?}");
    a.t.shutdown().await;
    b.t.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glare_is_resolved_by_node_id_order_into_one_session() {
    let root = rootkit::root().await;
    let mut a = peer(&root, "a", fast("a")).await;
    let mut b = peer(&root, "b", fast("b")).await;
    let (ta, tb) = (a.t.clone(), b.t.clone());
    let (pa, pb) = (PeerAddr::node("a"), PeerAddr::node("b"));
    let (ca, cb) = tokio::join!(ta.connect(&pb), tb.connect(&pa));
    ca.unwrap();
    cb.unwrap();
    wait_up(&mut a.rx, &b.id).await;
    wait_up(&mut b.rx, &a.id).await;
    // Both offered; "b" (polite) yielded to "a"'s offer.
    assert_eq!(a.t.counters().negotiations, 1, "{:?}", a.t.counters());
    assert!(b.t.counters().negotiations >= 1);
    a.t.send(&b.id, data("command:a/b", 0, 1, 16)).unwrap();
    b.t.send(&a.id, data("command:b/a", 0, 2, 16)).unwrap();
    assert_eq!(recv_data(&mut b.rx, &a.id, "command:a/b", 1).await, vec![1]);
    assert_eq!(recv_data(&mut a.rx, &b.id, "command:b/a", 1).await, vec![2]);
    a.t.shutdown().await;
    b.t.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_socket_is_healed_by_ice_restart_without_a_new_session() {
    let root = rootkit::root().await;
    let faults = WebrtcFaults::new();
    let mut cfg = fast("a");
    cfg.faults = Some(faults.clone());
    let mut a = peer(&root, "a", cfg).await;
    let mut b = peer(&root, "b", fast("b")).await;
    a.t.connect(&PeerAddr::node("b")).await.unwrap();
    wait_up(&mut b.rx, &a.id).await;
    wait_up(&mut a.rx, &b.id).await;

    faults.set_blackhole(true);
    let (ev, _) = until(
        &mut a.rx,
        LIMIT,
        |e| matches!(&e.fact, Fact::Incident(w) if w.starts_with("ice restart 1/3")),
    )
    .await;
    assert_eq!(ev.path.peer, b.id);
    faults.set_blackhole(false);
    let (_, seen) = until(
        &mut a.rx,
        Duration::from_secs(20),
        |e| matches!(&e.fact, Fact::Incident(w) if w.contains("reconnected")),
    )
    .await;
    assert!(
        !seen.iter().any(|e| matches!(e.fact, Fact::Down(_))),
        "the path stayed up through the restart: {seen:?}"
    );
    assert!(faults.dropped() > 0);
    assert!(a.t.counters().ice_restarts >= 1);
    assert_eq!(a.t.counters().negotiations, 1, "no fresh negotiation");
    a.t.send(&b.id, data("command:a/b", 0, 5, 16)).unwrap();
    assert_eq!(recv_data(&mut b.rx, &a.id, "command:a/b", 1).await, vec![5]);
    a.t.shutdown().await;
    b.t.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signalling_is_refused_with_typed_codes() {
    let root = rootkit::root().await;
    let mut b = peer(&root, "b", fast("b")).await;
    let mut only_a = fast("c");
    only_a.admit = Arc::new(|n: &NodeId| n.as_str() == "a");
    let c = peer(&root, "c", only_a).await;
    let mut m = peer(&root, "m", fast("m")).await;
    let mut refusals = m.relay.signals();
    // A real session m→b, to aim stale messages at.
    m.t.connect(&PeerAddr::node("b")).await.unwrap();
    wait_up(&mut m.rx, &b.id).await;
    wait_up(&mut b.rx, &m.id).await;

    let send = |to: &str, kind: &str, payload: Bytes| {
        let (relay, to, kind) = (m.relay.clone(), NodeId::new(to), kind.to_string());
        async move { relay.signal(&to, &kind, payload).await.unwrap() }
    };
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".to_string();
    let offer = |session, generation, sdp: &str| {
        SignalMsg::Offer(Description {
            session,
            generation,
            sdp: sdp.to_string(),
            ice_restart: false,
        })
        .encode()
    };

    // Undecodable payload.
    send("b", KIND_OFFER, Bytes::from_static(b"\xc1\xc1")).await;
    assert_eq!(next_refusal(&mut refusals).await.code, codes::MALFORMED);
    // Unknown kind.
    send("b", "webrtc/hello", offer(1, 1, &sdp)).await;
    assert_eq!(next_refusal(&mut refusals).await.code, codes::MALFORMED);
    // Malformed SDP in an otherwise fresh offer.
    send("b", KIND_OFFER, offer(u64::MAX, 1, "this is not sdp")).await;
    assert_eq!(next_refusal(&mut refusals).await.code, codes::BAD_SDP);
    // An offer of an older session than the live one: stale.
    send("b", KIND_OFFER, offer(1, 1, &sdp)).await;
    let r = next_refusal(&mut refusals).await;
    assert_eq!(r.code, codes::STALE_GENERATION, "{r:?}");
    // A candidate for a session b does not have.
    let cand = SignalMsg::Candidate(Candidate {
        session: 42,
        generation: 1,
        candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_mline_index: Some(0),
        ufrag: None,
    });
    send("b", KIND_CANDIDATE, cand.encode()).await;
    assert_eq!(
        next_refusal(&mut refusals).await.code,
        codes::UNKNOWN_SESSION
    );
    // An answer nobody asked for.
    let answer = SignalMsg::Answer(Description {
        session: 42,
        generation: 1,
        sdp: sdp.clone(),
        ice_restart: false,
    });
    send("b", KIND_ANSWER, answer.encode()).await;
    assert_eq!(
        next_refusal(&mut refusals).await.code,
        codes::UNKNOWN_SESSION
    );
    // An offer to a node that only admits "a".
    send("c", KIND_OFFER, offer(7, 1, &sdp)).await;
    assert_eq!(next_refusal(&mut refusals).await.code, codes::NOT_ADMITTED);
    // m's transport itself is refused by c with the same code.
    let err = m.t.connect(&PeerAddr::node("c")).await.unwrap_err();
    assert!(err.to_string().contains("0x0224"), "{err}");

    // Every refusal is an incident b reported, and the live session
    // survived all of it.
    let counted = b.t.counters().refused;
    for code in [
        codes::MALFORMED,
        codes::BAD_SDP,
        codes::STALE_GENERATION,
        codes::UNKNOWN_SESSION,
    ] {
        assert!(
            counted.get(&code).copied().unwrap_or(0) >= 1,
            "{code:#x}: {counted:?}"
        );
    }
    assert!(
        c.t.counters()
            .refused
            .get(&codes::NOT_ADMITTED)
            .copied()
            .unwrap_or(0)
            >= 2
    );
    m.t.send(&b.id, data("command:m/b", 0, 3, 16)).unwrap();
    assert_eq!(recv_data(&mut b.rx, &m.id, "command:m/b", 1).await, vec![3]);
    assert_eq!(b.t.peers(), vec![m.id.clone()]);
    let _ = signalling::MAX_SIGNAL_LEN;
    m.t.shutdown().await;
    b.t.shutdown().await;
    c.t.shutdown().await;
    root.shutdown().await;
}

/// A bare webrtc peer connection playing the page's part of the browser
/// path: the transport's five negotiated channels, a non-trickle offer.
async fn page_offer() -> (
    Arc<dyn webrtc::peer_connection::PeerConnection>,
    Vec<Arc<dyn webrtc::data_channel::DataChannel>>,
    String,
) {
    use webrtc::data_channel::RTCDataChannelInit;
    use webrtc::peer_connection::{
        PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    };
    struct Gather(mpsc::Sender<()>);
    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Gather {
        async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
            if s == RTCIceGatheringState::Complete {
                let _ = self.0.send(()).await;
            }
        }
    }
    let (tx, mut gathered) = mpsc::channel(4);
    let setting = webrtc::peer_connection::SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .with_include_loopback_candidate(true)
        .build();
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_setting_engine(setting)
            .with_handler(Arc::new(Gather(tx)))
            .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
            .build()
            .await
            .unwrap(),
    );
    let mut channels = Vec::new();
    for i in 0..5u16 {
        let init = RTCDataChannelInit {
            negotiated: Some(i),
            ..Default::default()
        };
        channels.push(
            pc.create_data_channel(&format!("il/{i}"), Some(init))
                .await
                .unwrap(),
        );
    }
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer).await.unwrap();
    tokio::time::timeout(LIMIT, gathered.recv()).await.unwrap();
    let sdp = pc.local_description().await.unwrap().sdp;
    (pc, channels, sdp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_trickle_offer_is_answered_and_its_fingerprint_bound() {
    use interlocking::transports::webrtc::BrowserOffer;
    use webrtc::peer_connection::RTCSessionDescription;
    let root = rootkit::root().await;
    let mut hub = peer(&root, "hub", fast("hub")).await;
    let page = NodeId::new("browser-1");
    let (pc, _channels, sdp) = page_offer().await;
    let offer = |session, generation, sdp: &str| BrowserOffer {
        node: page.clone(),
        session,
        generation,
        sdp: sdp.to_string(),
    };
    let answer = hub.t.answer_browser(offer(10, 1, &sdp)).await.unwrap();
    assert!(answer.contains("a=candidate:"), "answer carries candidates");
    pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();
    wait_up(&mut hub.rx, &page).await;
    assert_eq!(hub.t.peers(), vec![page.clone()]);

    // Another page claiming the same admitted session: its connection has
    // another DTLS certificate, so its fingerprint is refused.
    let (other, _c2, sdp2) = page_offer().await;
    let err = hub.t.answer_browser(offer(11, 1, &sdp2)).await.unwrap_err();
    assert_eq!(err.code, codes::FINGERPRINT_MISMATCH, "{err}");
    // An old session of the bound page is stale.
    let err = hub.t.answer_browser(offer(9, 1, &sdp)).await.unwrap_err();
    assert_eq!(err.code, codes::STALE_GENERATION, "{err}");
    // Garbage SDP is a typed refusal too, and the bound page keeps its path.
    let err = hub
        .t
        .answer_browser(offer(12, 1, "not sdp"))
        .await
        .unwrap_err();
    assert_eq!(err.code, codes::BAD_SDP, "{err}");
    assert_eq!(hub.t.peers(), vec![page.clone()]);
    let _ = other.close().await;
    let _ = pc.close().await;
    hub.t.shutdown().await;
    root.shutdown().await;
}

//! The sidecar in process, against a real root over loopback QUIC: the
//! hub's relay runs over the sidecar's local session (path kind `sidecar`)
//! both ways; a local client without the secret is refused; a third local
//! session is refused; frames the sidecar would have to invent or forward
//! under another identity are refused with typed codes and never reach the
//! peer; the root going away closes the local side; the sidecar's
//! diagnostics reach the hub as status frames on the local session, and a
//! member cannot pose as the sidecar with one. Every wait is bounded.

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use common::contract::{data, recv_data, wait_down, wait_up};
use common::rootkit::{LIMIT, joined, quic_config, relay, root, via_root, wait_online};
use interlocking::sidecar::{Sidecar, SidecarConfig};
use interlocking::transports::relay::{RelayConfig, RelayTransport};
use interlocking::transports::sidecar::{
    STATUS_SIGNAL, SidecarLinkConfig, SidecarStatus, bind, handshake, secret_path, socket_path,
};
use interlocking::transports::{DownCause, Fact, Transport, TransportEvent};
use interlocking::vocab::{NodeId, PathKind, Role};
use interlocking::wire::codes::sidecar as codes;
use interlocking::wire::{
    Ack, CodecConfig, Frame, FrameDecoder, Hello, Relay, encode_to_bytes, read_frame, write_frame,
};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

struct World {
    root: interlocking::root::RootHandle,
    sidecar: Sidecar,
    hub: Arc<RelayTransport>,
    hub_rx: mpsc::Receiver<TransportEvent>,
    member: Arc<RelayTransport>,
    member_rx: mpsc::Receiver<TransportEvent>,
    dir: tempfile::TempDir,
    /// The hub side's view of the sidecar's status frames.
    diagnostics: Arc<std::sync::Mutex<Option<SidecarStatus>>>,
}

async fn world() -> World {
    let root = root().await;
    let hub_creds = joined(&root, "hub", Role::Hub).await;
    let m = joined(&root, "m1", Role::Member).await;
    let dir = tempfile::tempdir().unwrap();
    let quic = quic_config(hub_creds.identity.clone(), hub_creds.roots.clone());
    let sidecar = Sidecar::start(SidecarConfig::new(
        quic.clone(),
        root.peer_addr(),
        dir.path().join("sc"),
    ))
    .await
    .expect("sidecar starts");
    let mut up = sidecar.remote_up();
    tokio::time::timeout(LIMIT, up.wait_for(|u| *u))
        .await
        .expect("remote session up")
        .unwrap();
    let (tx, hub_rx) = mpsc::channel(65536);
    let mut rc = RelayConfig::new(quic, root.peer_addr());
    rc.probe = common::rootkit::fast_probe();
    let mut lc = SidecarLinkConfig::new("hub", root.node().clone(), dir.path().join("sc"));
    lc.probe = common::rootkit::fast_probe();
    let diagnostics = lc.diagnostics.clone();
    let hub = bind(rc, lc, tx);
    let (member, member_rx) = relay(&root, m.identity, m.roots);
    member.register(vec![], vec![]).await.unwrap();
    wait_online(&root, "m1", true).await;
    wait_online(&root, "hub", true).await;
    World {
        root,
        sidecar,
        hub,
        hub_rx,
        member,
        member_rx,
        dir,
        diagnostics,
    }
}

/// A raw local client: Hello with `secret`, the sidecar's answer.
async fn raw(dir: &Path, node: &str, secret: &str) -> (UnixStream, Option<Frame>) {
    let mut s = UnixStream::connect(socket_path(dir)).await.unwrap();
    let hello = Frame::Hello(Hello {
        node: NodeId::new(node),
        role: Role::Hub,
        features: 0,
        token: Some(secret.to_string()),
    });
    write_frame(&mut s, &hello, &CodecConfig::default())
        .await
        .unwrap();
    let answer = next(&mut s).await;
    (s, answer)
}

async fn next(s: &mut UnixStream) -> Option<Frame> {
    let mut buf = BytesMut::new();
    let mut dec = FrameDecoder::new(CodecConfig::default());
    tokio::time::timeout(LIMIT, read_frame(s, &mut buf, &mut dec))
        .await
        .expect("an answer in time")
        .ok()
        .flatten()
}

fn close_code(f: &Option<Frame>) -> Option<u32> {
    match f {
        Some(Frame::Close(c)) => Some(c.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_reaches_a_member_through_the_sidecar_both_ways() {
    let mut w = world().await;
    assert_eq!(w.hub.kind(), PathKind::Sidecar);
    w.hub
        .connect(&via_root("m1"))
        .await
        .expect("hub reaches m1");
    wait_up(&mut w.hub_rx, &NodeId::new("m1")).await;
    for seq in 0..50 {
        w.hub
            .send(&NodeId::new("m1"), data("command:hub/m1", 4, seq, 64))
            .unwrap();
    }
    wait_up(&mut w.member_rx, &NodeId::new("hub")).await;
    assert_eq!(
        recv_data(&mut w.member_rx, &NodeId::new("hub"), "command:hub/m1", 50).await,
        (0..50).collect::<Vec<_>>(),
        "every frame once, in order"
    );
    for seq in 0..20 {
        w.member
            .send(&NodeId::new("hub"), data("command:m1/hub", 4, seq, 64))
            .unwrap();
    }
    assert_eq!(
        recv_data(&mut w.hub_rx, &NodeId::new("m1"), "command:m1/hub", 20).await,
        (0..20).collect::<Vec<_>>()
    );
    let st = w.sidecar.status();
    assert!(
        st.remote_up && st.sessions == 1 && st.to_root >= 50 && st.to_hub >= 20,
        "{st:?}"
    );
    w.member.shutdown().await;
    w.hub.shutdown().await;
    w.sidecar.shutdown().await;
    w.root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_a_third_session_are_refused() {
    let w = world().await;
    let sc = w.dir.path().join("sc");
    // The hub's own link is session 1.
    w.hub.connect(&via_root("m1")).await.unwrap();
    // Without the secret: refused.
    let (_s, a) = raw(&sc, "hub", "not-the-secret").await;
    assert_eq!(close_code(&a), Some(u32::from(codes::UNAUTHENTICATED)));
    // With the secret but another node's name: refused.
    let secret = std::fs::read_to_string(secret_path(&sc)).unwrap();
    let (_s, a) = raw(&sc, "m1", &secret).await;
    assert_eq!(close_code(&a), Some(u32::from(codes::UNAUTHENTICATED)));
    // The secret file and socket are the user's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&secret_path(&sc)), 0o600);
    assert_eq!(mode(&socket_path(&sc)), 0o600);
    assert_eq!(mode(&sc), 0o700);
    // Session 2 (a new hub during a handoff) is accepted...
    let (_second, a) = raw(&sc, "hub", &secret).await;
    assert!(
        matches!(a, Some(Frame::Hello(ref h)) if h.role == Role::Sidecar),
        "{a:?}"
    );
    // ...and a third is refused with a typed code.
    let (_third, a) = raw(&sc, "hub", &secret).await;
    assert_eq!(close_code(&a), Some(u32::from(codes::SESSIONS_FULL)));
    assert!(w.sidecar.status().refused_sessions >= 3);
    w.sidecar.shutdown().await;
    w.root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_the_sidecar_would_have_to_invent_is_refused_and_never_forwarded() {
    let mut w = world().await;
    let sc = w.dir.path().join("sc");
    let secret = std::fs::read_to_string(secret_path(&sc)).unwrap();
    let (mut s, a) = raw(&sc, "hub", &secret).await;
    assert!(matches!(a, Some(Frame::Hello(_))));
    let codec = CodecConfig::default();
    // An ack outside a relay envelope: the sidecar would have to make up
    // where it goes and in whose name. Refused.
    let ack = Frame::Ack(Ack {
        stream: "command:m1/hub".into(),
        incarnation: 1,
        seq: 0,
        message_id: 1,
        credit: 8,
    });
    write_frame(&mut s, &ack, &codec).await.unwrap();
    match next(&mut s).await {
        Some(Frame::Reject(r)) => assert_eq!(r.code, codes::KIND_REFUSED),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A relayed frame in another node's name: refused.
    let inner = encode_to_bytes(&data("command:x/m1", 4, 7, 8), &codec).unwrap();
    let spoof = Frame::Relay(Relay {
        to: NodeId::new("m1"),
        from: NodeId::new("root"),
        frame: inner,
    });
    write_frame(&mut s, &spoof, &codec).await.unwrap();
    match next(&mut s).await {
        Some(Frame::Reject(r)) => assert_eq!(r.code, codes::NOT_OWN_IDENTITY),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The hub's own frame goes through, and it is the first the member
    // sees: nothing refused was forwarded (the way is ordered).
    let inner = encode_to_bytes(&data("command:hub/m1", 4, 42, 8), &codec).unwrap();
    let own = Frame::Relay(Relay {
        to: NodeId::new("m1"),
        from: NodeId::new("hub"),
        frame: inner,
    });
    write_frame(&mut s, &own, &codec).await.unwrap();
    let (ev, _) = common::contract::until(&mut w.member_rx, LIMIT, |e| {
        matches!(e.fact, interlocking::transports::Fact::Frame(_))
    })
    .await;
    match ev.fact {
        interlocking::transports::Fact::Frame(Frame::Data(d)) => {
            assert_eq!((d.stream.as_str(), d.seq), ("command:hub/m1", 42));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(w.sidecar.status().refused_frames, 2);
    w.sidecar.shutdown().await;
    w.root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_side_closing_closes_the_local_side() {
    let mut w = world().await;
    w.hub.connect(&via_root("m1")).await.unwrap();
    wait_up(&mut w.hub_rx, &NodeId::new("m1")).await;
    let cfg = SidecarLinkConfig::new("hub", w.root.node().clone(), w.dir.path().join("sc"));
    let (mut raw_session, _, _) = handshake(&cfg).await.expect("a second session");
    w.root.shutdown().await;
    // The raw session is closed with REMOTE_CLOSED...
    assert_eq!(
        close_code(&next(&mut raw_session).await),
        Some(u32::from(codes::REMOTE_CLOSED))
    );
    // ...and the hub's relayed path goes down (it re-establishes, the
    // sidecar never resumes behind its back).
    let cause = wait_down(&mut w.hub_rx, &NodeId::new("m1")).await;
    assert!(
        matches!(cause, DownCause::ClosedByPeer { code, .. } if code == u32::from(codes::REMOTE_CLOSED))
            || !matches!(cause, DownCause::ClosedLocally),
        "{cause:?}"
    );
    w.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_reach_the_hub_as_frames_and_no_peer_can_forge_them() {
    let mut w = world().await;
    w.hub
        .connect(&via_root("m1"))
        .await
        .expect("hub reaches m1");
    wait_up(&mut w.hub_rx, &NodeId::new("m1")).await;
    let framed = |w: &World| w.diagnostics.lock().unwrap().clone();
    // The sidecar's status arrives on the local session: the hub's copy is
    // the sidecar's own (its pid, the hub it serves, the remote session up).
    let deadline = tokio::time::Instant::now() + LIMIT;
    let st = loop {
        if let Some(st) = framed(&w).filter(|s| s.remote_up && s.sessions == 1) {
            break st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no status frame in time"
        );
        // Sent every probe interval (100 ms at least): look again shortly.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!((st.pid, st.node.as_str()), (std::process::id(), "hub"));
    // A member sends a signal of the sidecar's kind to the hub through the
    // root: the sidecar refuses to carry it, the hub never sees it.
    let refused = w.sidecar.status().refused_frames;
    let forged = SidecarStatus {
        pid: 1,
        node: "hub".into(),
        remote_up: false,
        ..SidecarStatus::default()
    };
    w.member
        .signal(
            &NodeId::new("hub"),
            STATUS_SIGNAL,
            rmp_serde::to_vec_named(&forged).unwrap().into(),
        )
        .await
        .unwrap();
    // The sidecar refuses it (counted); it never reaches the hub.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while w.sidecar.status().refused_frames < refused + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forged status was not refused in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    while let Ok(ev) = w.hub_rx.try_recv() {
        assert!(
            !matches!(&ev.fact, Fact::Frame(Frame::Signal(s)) if s.kind == STATUS_SIGNAL),
            "the hub got a forged status: {ev:?}"
        );
    }
    let now = framed(&w).expect("status");
    assert_ne!(now.pid, 1, "the forged status never reached the hub");
    w.member.shutdown().await;
    w.hub.shutdown().await;
    w.sidecar.shutdown().await;
    w.root.shutdown().await;
}

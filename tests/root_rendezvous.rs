//! Rendezvous through a real root on loopback (`docs/root.md` §4): a
//! `Register` is checked (granted capabilities only, dialable addresses,
//! bounded counts, small enough for the `LookupReply` that carries it) and
//! refused with a `Reject` and a code otherwise; every `Lookup` is
//! answered, with a code when there is nothing to say, including one that
//! names both a node and a capability. Capabilities are granted by the join
//! token, from `RootHandle::issue_token_with` or the operator's
//! `interlocking token --capability`. Every wait is bounded.

mod common;

use std::time::Duration;

use common::contract::until;
use common::rootkit::{LIMIT, direct, joined, joined_with, relay, root, wait_online};
use interlocking::root::{Root, RootConfig, RootHandle, codes, join};
use interlocking::transports::relay::{LookupError, RelayTransport};
use interlocking::transports::{Fact, Transport, TransportEvent};
use interlocking::vocab::{NodeId, Role};
use interlocking::wire::{
    CodecConfig, Frame, Lookup, LookupReply, PREFIX_LEN, Register, encoded_len,
};
use tokio::sync::mpsc;

/// Registers and waits for the root's refusal code.
async fn refused(t: &RelayTransport, addrs: Vec<String>, caps: Vec<String>) -> u16 {
    let mut refusal = t.register_refusal();
    t.register(addrs, caps).await.unwrap();
    let got = tokio::time::timeout(LIMIT, refusal.wait_for(|r| r.is_some()))
        .await
        .expect("refused in time")
        .unwrap()
        .clone();
    got.unwrap().0
}

/// Registers and waits until a lookup of the node shows the registration.
async fn accepted(asker: &RelayTransport, t: &RelayTransport, node: &str, addrs: Vec<String>) {
    t.register(addrs.clone(), vec![]).await.unwrap();
    tokio::time::timeout(LIMIT, async {
        loop {
            if let Ok(r) = asker.lookup_node(&NodeId::new(node)).await
                && r.addrs == addrs
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("registration seen in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_granted_capabilities_register_and_the_lowest_id_cannot_steal_one() {
    let root = root().await;
    let cam = joined_with(&root, "m1", Role::Member, &["camera"]).await;
    // "a" sorts before "m1": before the grant check it won every lookup.
    let thief = joined(&root, "a", Role::Member).await;
    let hub = joined(&root, "hub", Role::Hub).await;
    let (tc, _rc) = relay(&root, cam.identity, cam.roots);
    let (tt, _rt) = relay(&root, thief.identity, thief.roots);
    let (th, _rh) = relay(&root, hub.identity, hub.roots);
    assert_eq!(
        refused(&tt, vec![], vec!["camera".into()]).await,
        codes::CAPABILITY_NOT_ALLOWED
    );
    assert_eq!(
        refused(&tc, vec![], vec!["camera".into(), "mic".into()]).await,
        codes::CAPABILITY_NOT_ALLOWED,
        "every claimed capability must be granted"
    );
    assert!(matches!(
        th.lookup_capability("camera").await,
        Err(LookupError::Refused(codes::NO_CAPABILITY))
    ));
    tc.register(vec!["127.0.0.1:4000".into()], vec!["camera".into()])
        .await
        .unwrap();
    let found = tokio::time::timeout(LIMIT, async {
        loop {
            match th.lookup_capability("camera").await {
                Ok(r) => break r,
                Err(LookupError::Refused(c)) if c == codes::NO_CAPABILITY => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(found.node, NodeId::new("m1"));
    assert_eq!(found.addrs, vec!["127.0.0.1:4000".to_string()]);
    assert_eq!(*tc.register_refusal().borrow(), None);
    for t in [tc, tt, th] {
        t.shutdown().await;
    }
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_addresses_and_too_many_entries_are_refused_and_keep_the_old_registration() {
    let root = root().await;
    let m = joined(&root, "m1", Role::Member).await;
    let hub = joined(&root, "hub", Role::Hub).await;
    let (tm, _rm) = relay(&root, m.identity, m.roots);
    let (th, _rh) = relay(&root, hub.identity, hub.roots);
    let good = vec!["127.0.0.1:4000".to_string()];
    accepted(&th, &tm, "m1", good.clone()).await;
    for bad in ["h:1", "127.0.0.1", "127.0.0.1:0", "0.0.0.0:9"] {
        assert_eq!(
            refused(&tm, vec![bad.into()], vec![]).await,
            codes::BAD_ADDRESS,
            "{bad}"
        );
    }
    let many: Vec<String> = (1..=17).map(|p| format!("127.0.0.1:{p}")).collect();
    assert_eq!(refused(&tm, many, vec![]).await, codes::REGISTER_TOO_LARGE);
    // A refused Register changed nothing.
    assert_eq!(
        th.lookup_node(&NodeId::new("m1")).await.unwrap().addrs,
        good
    );
    tm.shutdown().await;
    th.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_that_a_lookup_reply_could_not_carry_is_refused() {
    // Large enough for admission (JoinGranted carries two certificates).
    let limit = 2048;
    let root = Root::spawn(RootConfig {
        codec: CodecConfig::new(limit),
        ..RootConfig::default()
    })
    .await
    .unwrap();
    // Capabilities long enough that the Register fits the root's limit but
    // the LookupReply carrying it (request id, code, node id added) does not.
    let node = NodeId::new("m1");
    let reply_len = |caps: &[String]| {
        encoded_len(&Frame::LookupReply(LookupReply {
            request_id: u64::MAX,
            code: u16::MAX,
            node: Some(node.clone()),
            addrs: vec![],
            capabilities: caps.to_vec(),
        })) - PREFIX_LEN
    };
    let register_len = |caps: &[String]| {
        encoded_len(&Frame::Register(Register {
            addrs: vec![],
            capabilities: caps.to_vec(),
        })) - PREFIX_LEN
    };
    let caps: Vec<String> = (1..=32usize)
        .flat_map(|count| (1..=120usize).map(move |len| (count, len)))
        .map(|(count, len)| {
            (0..count)
                .map(|i| format!("{i:02}{}", "x".repeat(len)))
                .collect::<Vec<_>>()
        })
        .find(|c| register_len(c) <= limit && reply_len(c) > limit)
        .expect("such a size exists");
    let caps_ref: Vec<&str> = caps.iter().map(String::as_str).collect();
    let m = joined_with(&root, "m1", Role::Member, &caps_ref).await;
    let (tm, _rm) = relay(&root, m.identity, m.roots);
    assert_eq!(refused(&tm, vec![], caps).await, codes::REGISTER_TOO_LARGE);
    // The node stays reachable: lookups of it are answered.
    let hub = joined(&root, "hub", Role::Hub).await;
    let (th, _rh) = relay(&root, hub.identity, hub.roots);
    wait_online(&root, "m1", true).await;
    let r = th.lookup_node(&node).await.unwrap();
    assert!(r.capabilities.is_empty());
    tm.shutdown().await;
    th.shutdown().await;
    root.shutdown().await;
}

/// Sends `l` to the root on a direct connection and returns its answer.
async fn ask(
    t: &dyn Transport,
    rx: &mut mpsc::Receiver<TransportEvent>,
    root: &RootHandle,
    l: Lookup,
) -> LookupReply {
    let id = l.request_id;
    t.send(root.node(), Frame::Lookup(l)).unwrap();
    let (ev, _) = until(
        rx,
        LIMIT,
        |e| matches!(&e.fact, Fact::Frame(Frame::LookupReply(r)) if r.request_id == id),
    )
    .await;
    match ev.fact {
        Fact::Frame(Frame::LookupReply(r)) => r,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_naming_both_or_neither_is_answered_bad_request() {
    let root = root().await;
    let a = joined(&root, "a", Role::Hub).await;
    let (t, mut rx) = direct(a.identity, a.roots);
    t.connect(&root.peer_addr()).await.unwrap();
    wait_online(&root, "a", true).await;
    for (id, node, capability) in [
        (1, Some(NodeId::new("a")), Some("cam".to_string())),
        (2, None, None),
    ] {
        let r = ask(
            &*t,
            &mut rx,
            &root,
            Lookup {
                request_id: id,
                node,
                capability,
            },
        )
        .await;
        assert_eq!(r.code, codes::BAD_REQUEST, "request {id}");
        assert!(r.node.is_none() && r.addrs.is_empty() && r.capabilities.is_empty());
    }
    let r = ask(
        &*t,
        &mut rx,
        &root,
        Lookup {
            request_id: 3,
            node: Some(NodeId::new("a")),
            capability: None,
        },
    )
    .await;
    assert_eq!((r.code, r.node), (0, Some(NodeId::new("a"))));
    t.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_grants_capabilities_with_the_token_command() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::spawn(RootConfig {
        state_dir: Some(dir.path().to_path_buf()),
        ..RootConfig::default()
    })
    .await
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_interlocking"))
        .args(["token", "--state-dir"])
        .arg(dir.path())
        .args(["--node", "m9", "--role", "member"])
        .args(["--capability", "camera", "--capability", "mic"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let node = NodeId::new("m9");
    let m = join(
        root.join_addr(),
        root.node(),
        token.trim(),
        &node,
        Role::Member,
        LIMIT,
    )
    .await
    .unwrap();
    let (tm, _rm) = relay(&root, m.identity, m.roots);
    assert_eq!(
        refused(&tm, vec![], vec!["speaker".into()]).await,
        codes::CAPABILITY_NOT_ALLOWED
    );
    let hub = joined(&root, "hub", Role::Hub).await;
    let (th, _rh) = relay(&root, hub.identity, hub.roots);
    tm.register(vec![], vec!["mic".into(), "camera".into()])
        .await
        .unwrap();
    let found = tokio::time::timeout(LIMIT, async {
        loop {
            if let Ok(r) = th.lookup_capability("mic").await {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(found.node, node);
    // A bad name is refused by the command itself.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_interlocking"))
        .args(["token", "--state-dir"])
        .arg(dir.path())
        .args(["--node", "m8", "--role", "member", "--capability", "a b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    tm.shutdown().await;
    th.shutdown().await;
    root.shutdown().await;
}

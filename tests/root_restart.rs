//! Killing the root mid-run while a class-A command stream can only go
//! through the relay: commands accepted meanwhile queue in the sender's
//! durable outbox, and when the root is back (same state folder, same
//! address) the relay paths come back and every accepted command is applied
//! exactly once. Real loopback QUIC; every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::rootkit::{LIMIT, fast_probe, joined, quic_config};
use interlocking::actors::node::NodeBuilder;
use interlocking::channels::command::{
    CommandChannel, CommandHandler, CommandSender, SendOptions, SenderConfig, ServeConfig,
};
use interlocking::root::{Root, RootConfig};
use interlocking::routing::RoutingConfig;
use interlocking::store::MemStore;
use interlocking::transports::PeerAddr;
use interlocking::transports::relay::RelayConfig;
use interlocking::vocab::{NodeId, PathKind, Role, StreamId};

/// Counts applications per command.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<BTreeMap<u64, u32>>>);

#[async_trait]
impl CommandHandler for Ledger {
    type Command = u64;
    type Reply = u64;
    async fn handle(&self, k: u64) -> Result<u64, String> {
        *self.0.lock().unwrap().entry(k).or_insert(0) += 1;
        Ok(k)
    }
}

fn free_addr() -> std::net::SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_class_a_commands_queue_while_the_root_is_down_and_apply_once_after() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let state = tempfile::tempdir().unwrap();
    let config = RootConfig {
        listen: free_addr(),
        join_listen: free_addr(),
        state_dir: Some(state.path().to_path_buf()),
        probe: fast_probe(),
        idle_timeout: Duration::from_millis(1500),
        keep_alive: Duration::from_millis(300),
        ..RootConfig::default()
    };
    let root = Root::spawn(config.clone()).await.unwrap();
    let hub_id = joined(&root, "hub", Role::Hub).await;
    let m1_id = joined(&root, "m1", Role::Member).await;

    // The relay is the only path these streams may use.
    let mut routing = RoutingConfig::default();
    routing.command.order = vec![PathKind::Relay];
    let relay_cfg = |j: &interlocking::root::Joined| {
        let mut c = RelayConfig::new(
            quic_config(j.identity.clone(), j.roots.clone()),
            root.peer_addr(),
        );
        c.probe = fast_probe();
        c
    };
    let hub = NodeBuilder::new("hub", Role::Hub)
        .routing(routing.clone())
        .relay(relay_cfg(&hub_id))
        .spawn()
        .await
        .unwrap();
    let member = NodeBuilder::new("m1", Role::Member)
        .routing(routing)
        .relay(relay_cfg(&m1_id))
        .dial(PathKind::Relay, PeerAddr::node("hub"))
        .spawn()
        .await
        .unwrap();
    let stream = StreamId::new("command:m1/hub");
    let ledger = Ledger::default();
    CommandChannel::serve(
        &hub,
        stream.clone(),
        NodeId::new("m1"),
        ledger.clone(),
        Arc::new(MemStore::new()),
        ServeConfig::default(),
    )
    .await
    .unwrap();
    let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
        &member,
        stream.clone(),
        NodeId::new("hub"),
        Arc::new(MemStore::new()),
        SenderConfig::default(),
    )
    .await
    .unwrap();

    // Before: commands go through the root.
    for k in 1..=10 {
        let r = sender.send(k, SendOptions::class_a()).await.unwrap();
        assert_eq!(tokio::time::timeout(LIMIT, r.reply()).await.unwrap(), Ok(k));
    }

    // The root dies: the relay path goes down, and commands accepted now
    // wait in the outbox.
    root.shutdown().await;
    drop(root);
    tokio::time::timeout(LIMIT, async {
        while member
            .explain(&stream)
            .await
            .unwrap()
            .and_then(|e| e.path)
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stream loses its only path");
    let mut waiting = Vec::new();
    for k in 11..=30 {
        waiting.push((k, sender.send(k, SendOptions::class_a()).await.unwrap()));
    }
    assert_eq!(
        ledger.0.lock().unwrap().len(),
        10,
        "nothing applied while the root is down"
    );

    // The root comes back with the same state and address; the relay links
    // re-dial it and the queued commands are delivered.
    // The old endpoints release their sockets once their tasks have wound
    // down; retry the bind for a bounded while.
    let mut root = None;
    for _ in 0..100 {
        match Root::spawn(config.clone()).await {
            Ok(r) => {
                root = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let root = root.expect("the root restarts on its address");
    for (k, r) in waiting {
        let reply = tokio::time::timeout(Duration::from_secs(20), r.reply())
            .await
            .unwrap_or_else(|_| panic!("command {k} answered after the root came back"));
        assert_eq!(reply, Ok(k));
    }
    let applied = ledger.0.lock().unwrap().clone();
    assert_eq!(applied.len(), 30, "every accepted command applied");
    assert!(applied.values().all(|n| *n == 1), "none twice: {applied:?}");

    member.shutdown().await;
    hub.shutdown().await;
    root.shutdown().await;
}

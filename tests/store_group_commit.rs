//! Group commit across streams: concurrent class-A traffic of several
//! streams on one node shares fsyncs, on real redb files.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use interlocking::actors::node::NodeBuilder;
use interlocking::channels::command::{SenderConfig, ServeConfig};
use interlocking::channels::{CommandChannel, CommandHandler, CommandSender, SendOptions};
use interlocking::store::{RedbStore, Store};
use interlocking::transports::PeerAddr;
use interlocking::transports::memory::MemoryNetwork;
use interlocking::transports::probe::ProbeConfig;
use interlocking::vocab::{NodeId, PathKind, Role, StreamId};

struct Double;

#[async_trait]
impl CommandHandler for Double {
    type Command = u64;
    type Reply = u64;
    async fn handle(&self, n: u64) -> Result<u64, String> {
        Ok(n * 2)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fsync_covers_the_batches_of_several_streams() {
    const STREAMS: u64 = 8;
    const PER_STREAM: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let member_store = Arc::new(RedbStore::open(dir.path().join("member.redb")).unwrap());
    let hub_store = Arc::new(RedbStore::open(dir.path().join("hub.redb")).unwrap());
    let net = MemoryNetwork::new(5);
    let probe = ProbeConfig::default();
    let hub = NodeBuilder::new("hub", Role::Hub)
        .memory(&net, PathKind::Quic, probe)
        .spawn()
        .await
        .unwrap();
    let member = NodeBuilder::new("m1", Role::Member)
        .memory(&net, PathKind::Quic, probe)
        .dial(PathKind::Quic, PeerAddr::node("hub"))
        .spawn()
        .await
        .unwrap();
    let mut senders = Vec::new();
    for i in 0..STREAMS {
        let stream = StreamId::new(format!("command:m1/hub/s{i}"));
        CommandChannel::serve(
            &hub,
            stream.clone(),
            NodeId::new("m1"),
            Double,
            hub_store.clone() as Arc<dyn Store>,
            ServeConfig::default(),
        )
        .await
        .unwrap();
        let sender: CommandSender<u64, u64> = CommandChannel::spawn_sender(
            &member,
            stream,
            NodeId::new("hub"),
            member_store.clone() as Arc<dyn Store>,
            SenderConfig::default(),
        )
        .await
        .unwrap();
        senders.push(sender);
    }
    let (member_before, hub_before) = (member_store.durable_commits(), hub_store.durable_commits());
    let (member_ops_before, hub_ops_before) = (member_store.grouped_ops(), hub_store.grouped_ops());
    // Each stream sends one command at a time, so a stream's own batches
    // hold one command: only sharing across streams can save fsyncs.
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|s| {
            tokio::spawn(async move {
                for n in 0..PER_STREAM {
                    let r = s.send(n, SendOptions::class_a()).await.unwrap();
                    let reply = tokio::time::timeout(Duration::from_secs(20), r.reply()).await;
                    assert_eq!(reply.unwrap(), Ok(n * 2));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let member_commits = member_store.durable_commits() - member_before;
    let member_ops = member_store.grouped_ops() - member_ops_before;
    let hub_commits = hub_store.durable_commits() - hub_before;
    let hub_ops = hub_store.grouped_ops() - hub_ops_before;
    let total = STREAMS * PER_STREAM;
    eprintln!(
        "member: {member_ops} appends in {member_commits} fsyncs; hub: {hub_ops} dedupe writes in {hub_commits} fsyncs"
    );
    assert_eq!(member_ops, total, "one append per command");
    assert!(
        member_commits * 10 < member_ops * 9,
        "appends of {STREAMS} streams shared fsyncs: {member_ops} ops in {member_commits} commits"
    );
    assert!(hub_ops >= total / 2, "the hub recorded its dedupe writes");
    assert!(
        hub_commits * 10 < hub_ops * 9,
        "dedupe writes of {STREAMS} streams shared fsyncs: {hub_ops} ops in {hub_commits} commits"
    );
    member.shutdown().await;
    hub.shutdown().await;
}

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

/// The sync channel's owner and subscriber commits of many documents join
/// the same group commit as the command streams, and each lands whole.
#[test]
fn sync_commits_of_many_documents_share_fsyncs_and_each_lands_whole() {
    use interlocking::store::SyncStore;
    use interlocking::store::sync_store::{SyncLogEntry, SyncOwnerCommit, SyncSubscriberCommit};
    const DOCS: u64 = 8;
    const PER_DOC: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let (commits_before, ops_before) = (store.durable_commits(), store.grouped_ops());
    let mut threads = Vec::new();
    for d in 0..DOCS {
        let owner_store = store.clone();
        threads.push(std::thread::spawn(move || {
            let store = owner_store;
            let doc = format!("doc{d}");
            for seq in 1..=PER_DOC {
                let commit = SyncOwnerCommit {
                    epoch: 7,
                    append: vec![SyncLogEntry {
                        seq,
                        publisher: "hub".into(),
                        update_id: seq,
                        accepted_at_ms: 1,
                        bytes: vec![d as u8; 100],
                    }],
                    publishers: vec![("hub".into(), seq)],
                    ..Default::default()
                };
                store.sync_owner_commit(&doc, &commit).unwrap();
            }
        }));
        let sub_store = store.clone();
        threads.push(std::thread::spawn(move || {
            let store = sub_store;
            let stream = StreamId::new(format!("sync:hub/m1/doc{d}"));
            for seq in 1..=PER_DOC {
                let commit = SyncSubscriberCommit {
                    cursor: Some((7, seq)),
                    append_applied: vec![vec![d as u8; 100]],
                    ..Default::default()
                };
                store.sync_subscriber_commit(&stream, &commit).unwrap();
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let commits = store.durable_commits() - commits_before;
    let ops = store.grouped_ops() - ops_before;
    eprintln!("{ops} sync commits in {commits} fsyncs");
    assert_eq!(
        ops,
        2 * DOCS * PER_DOC,
        "every sync commit went through the group"
    );
    assert!(
        commits * 10 < ops * 9,
        "sync commits of {DOCS} documents shared fsyncs: {ops} ops in {commits} commits"
    );
    drop(store);
    // Reopened from the file: every document's log and cursor is whole.
    let store = RedbStore::open(&path).unwrap();
    for d in 0..DOCS {
        let rec = store.sync_owner_load(&format!("doc{d}")).unwrap().unwrap();
        assert_eq!(rec.epoch, 7);
        assert_eq!(
            rec.log.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=PER_DOC).collect::<Vec<_>>()
        );
        assert!(rec.log.iter().all(|e| e.bytes == vec![d as u8; 100]));
        assert_eq!(rec.publishers, vec![("hub".to_string(), PER_DOC)]);
        let stream = StreamId::new(format!("sync:hub/m1/doc{d}"));
        let sub = store.sync_subscriber_load(&stream).unwrap().unwrap();
        assert_eq!((sub.epoch, sub.seq), (7, PER_DOC));
        assert_eq!(sub.applied.len() as u64, PER_DOC);
    }
}

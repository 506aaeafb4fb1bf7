//! The `Store` contract, checked against both backends, plus what only the
//! redb backend can show: reopening the same file and group commit.

use interlocking::store::{
    AppendOutcome, AtomicBatch, DedupeRecord, MemStore, NewOutboxEntry, OutboxBatch, RedbStore,
    Store, StoreError,
};
use interlocking::vocab::StreamId;

fn entry(stream: &str, body: &[u8], key: Option<&str>) -> NewOutboxEntry {
    NewOutboxEntry {
        stream: StreamId::new(stream),
        record: body.to_vec(),
        operation_key: key.map(str::to_owned),
        class: 0,
        replayable: true,
    }
}

fn batch(entries: Vec<NewOutboxEntry>) -> OutboxBatch {
    OutboxBatch {
        entries,
        cursors: vec![],
        now_ms: 1_000,
    }
}

fn contract(store: &dyn Store) {
    let a = StreamId::new("command:n/a");
    let b = StreamId::new("command:n/b");
    assert_eq!(store.next_ids(&a).unwrap(), (1, 1));

    // ids: node-wide message ids, per-stream seqs; idempotency in the batch
    let out = store
        .append_outbox(&OutboxBatch {
            entries: vec![
                entry("command:n/a", b"a1", Some("k")),
                entry("command:n/b", b"b1", Some("k")),
                entry("command:n/a", b"a2", None),
                entry("command:n/a", b"a-dup", Some("k")),
            ],
            cursors: vec![(a.clone(), 42)],
            now_ms: 1_000,
        })
        .unwrap();
    assert_eq!(
        out,
        vec![
            AppendOutcome::Stored {
                message_id: 1,
                seq: 1
            },
            AppendOutcome::Stored {
                message_id: 2,
                seq: 1
            },
            AppendOutcome::Stored {
                message_id: 3,
                seq: 2
            },
            AppendOutcome::DuplicateOf { message_id: 1 },
        ]
    );
    assert_eq!(store.cursor(&a).unwrap(), Some(42));
    assert_eq!(store.next_ids(&a).unwrap(), (3, 4));
    assert_eq!(store.next_ids(&b).unwrap(), (2, 4));

    let pending = store.pending_outbox().unwrap();
    let order: Vec<(&str, u64, &[u8])> = pending
        .iter()
        .map(|r| (r.stream.as_str(), r.seq, r.record.as_slice()))
        .collect();
    assert_eq!(
        order,
        vec![
            ("command:n/a", 1, &b"a1"[..]),
            ("command:n/a", 2, &b"a2"[..]),
            ("command:n/b", 1, &b"b1"[..]),
        ]
    );
    assert_eq!(pending[0].operation_key.as_deref(), Some("k"));

    // acks remove; unknown and repeated ids are ignored
    assert_eq!(store.ack_outbox(&a, &[1, 99]).unwrap(), 1);
    assert_eq!(store.ack_outbox(&a, &[1]).unwrap(), 0);
    assert_eq!(store.pending_outbox().unwrap().len(), 2);

    // the idempotency record outlives the ack until pruned
    let again = store
        .append_outbox(&batch(vec![entry("command:n/a", b"x", Some("k"))]))
        .unwrap();
    assert_eq!(again, vec![AppendOutcome::DuplicateOf { message_id: 1 }]);
    assert_eq!(store.idempotency_prune(1_001).unwrap(), 2);
    let fresh = store
        .append_outbox(&batch(vec![entry("command:n/a", b"x", Some("k"))]))
        .unwrap();
    assert_eq!(
        fresh,
        vec![AppendOutcome::Stored {
            message_id: 4,
            seq: 3
        }]
    );

    // dedupe: first reply wins, lookup, prune by age and by count
    let rec = |s: &StreamId, id: u64, at: u64| DedupeRecord {
        stream: s.clone(),
        message_id: id,
        seq: id,
        reply: format!("r{id}").into_bytes(),
        recorded_at_ms: at,
    };
    store
        .dedupe_record(
            &[
                rec(&a, 1, 10),
                rec(&a, 2, 20),
                rec(&a, 3, 30),
                rec(&b, 1, 5),
            ],
            &[(a.clone(), 3)],
        )
        .unwrap();
    let mut other = rec(&a, 1, 99);
    other.reply = b"other".to_vec();
    store.dedupe_record(&[other], &[]).unwrap();
    assert_eq!(store.dedupe_lookup(&a, 1).unwrap(), Some(b"r1".to_vec()));
    assert_eq!(store.dedupe_lookup(&a, 9).unwrap(), None);
    assert_eq!(store.cursor(&a).unwrap(), Some(3));
    assert_eq!(store.dedupe_load().unwrap().len(), 4);
    // keep 2 per stream (drops a/1), and nothing older than 6 ms (drops b/1)
    assert_eq!(store.dedupe_prune(6, 2).unwrap(), 2);
    let left: Vec<(String, u64)> = store
        .dedupe_load()
        .unwrap()
        .into_iter()
        .map(|r| (r.stream.to_string(), r.message_id))
        .collect();
    assert_eq!(
        left,
        vec![("command:n/a".into(), 2), ("command:n/a".into(), 3)]
    );

    store.set_cursor(&b, 7).unwrap();
    assert_eq!(store.cursor(&b).unwrap(), Some(7));
    assert_eq!(store.cursor(&StreamId::new("none")).unwrap(), None);
}

/// Application writes commit with the records and cursor, or not at all.
fn atomic_contract(store: &dyn Store) {
    let s = StreamId::new("command:n/atomic");
    let record = |id: u64| DedupeRecord {
        stream: s.clone(),
        message_id: id,
        seq: id,
        reply: vec![id as u8],
        recorded_at_ms: 1_000,
    };
    assert_eq!(store.app_get("t", b"k").unwrap(), None);
    assert_eq!(store.app_len("t").unwrap(), 0);
    let (r1, s1) = (record(1), s.clone());
    let batch = store
        .dedupe_record_with(Box::new(move |txn| {
            assert_eq!(txn.insert("t", b"k", b"v1")?, None);
            // The transaction sees its own writes.
            assert_eq!(txn.insert("t", b"k", b"v2")?, Some(b"v1".to_vec()));
            txn.insert("t", b"gone", b"x")?;
            assert_eq!(txn.remove("t", b"gone")?, Some(b"x".to_vec()));
            Ok(AtomicBatch {
                records: vec![r1],
                cursors: vec![(s1, 1)],
                unrecorded: vec![],
            })
        }))
        .unwrap();
    assert_eq!(batch.records.len(), 1);
    assert_eq!(store.app_get("t", b"k").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(store.app_get("t", b"gone").unwrap(), None);
    assert_eq!(store.app_len("t").unwrap(), 1);
    assert_eq!(store.dedupe_lookup(&s, 1).unwrap(), Some(vec![1]));
    assert_eq!(store.cursor(&s).unwrap(), Some(1));
    // An error aborts the writes, the records and the cursor.
    let (r2, s2) = (record(2), s.clone());
    let failed = store.dedupe_record_with(Box::new(move |txn| {
        txn.insert("t", b"k", b"v3")?;
        let _ = (r2, s2);
        Err(StoreError::Corrupt("handler gave up".into()))
    }));
    assert!(failed.is_err());
    assert_eq!(store.app_get("t", b"k").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(store.dedupe_lookup(&s, 2).unwrap(), None);
    assert_eq!(store.cursor(&s).unwrap(), Some(1));
    // Table names are bounded.
    assert!(store.app_get("", b"k").is_err());
    assert!(store.app_get(&"x".repeat(65), b"k").is_err());
}

#[test]
fn mem_store_meets_the_contract() {
    contract(&MemStore::new());
    atomic_contract(&MemStore::new());
}

#[test]
fn redb_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(&RedbStore::open(dir.path().join("node.redb")).unwrap());
    atomic_contract(&RedbStore::open(dir.path().join("atomic.redb")).unwrap());
}

#[test]
fn redb_reopen_finds_pending_entries_counters_and_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let a = StreamId::new("command:n/a");
    {
        let store = RedbStore::open(&path).unwrap();
        store
            .append_outbox(&batch(vec![
                entry("command:n/a", b"one", Some("op-1")),
                entry("command:n/a", b"two", None),
                entry("command:n/a", b"three", None),
            ]))
            .unwrap();
        store.ack_outbox(&a, &[2]).unwrap();
        store
            .dedupe_record(
                &[DedupeRecord {
                    stream: a.clone(),
                    message_id: 77,
                    seq: 1,
                    reply: b"done".to_vec(),
                    recorded_at_ms: 5,
                }],
                &[(a.clone(), 1)],
            )
            .unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    let pending: Vec<(u64, u64, Vec<u8>)> = store
        .pending_outbox()
        .unwrap()
        .into_iter()
        .map(|r| (r.message_id, r.seq, r.record))
        .collect();
    // the ack was not durable by default; it became durable with the
    // dedupe_record commit after it, so only 1 and 3 remain
    assert_eq!(
        pending,
        vec![(1, 1, b"one".to_vec()), (3, 3, b"three".to_vec())]
    );
    assert_eq!(store.next_ids(&a).unwrap(), (4, 4));
    assert_eq!(store.dedupe_lookup(&a, 77).unwrap(), Some(b"done".to_vec()));
    assert_eq!(store.cursor(&a).unwrap(), Some(1));
    // ids never repeat; the idempotency record survived
    let out = store
        .append_outbox(&batch(vec![
            entry("command:n/a", b"four", None),
            entry("command:n/a", b"again", Some("op-1")),
        ]))
        .unwrap();
    assert_eq!(
        out,
        vec![
            AppendOutcome::Stored {
                message_id: 4,
                seq: 4
            },
            AppendOutcome::DuplicateOf { message_id: 1 },
        ]
    );
}

#[test]
fn redb_group_commit_is_one_durable_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("node.redb")).unwrap();
    let before = store.durable_commits();
    let entries: Vec<NewOutboxEntry> = (0..64)
        .map(|i| entry(&format!("command:n/{}", i % 4), &[i as u8], None))
        .collect();
    let out = store.append_outbox(&batch(entries)).unwrap();
    assert_eq!(out.len(), 64);
    assert!(
        out.iter()
            .all(|o| matches!(o, AppendOutcome::Stored { .. }))
    );
    assert_eq!(
        store.durable_commits() - before,
        1,
        "one fsync for 64 sends"
    );
    assert_eq!(store.pending_outbox().unwrap().len(), 64);
    // acks are not fsync'd by default
    store
        .ack_outbox(&StreamId::new("command:n/0"), &[1, 5, 9])
        .unwrap();
    assert_eq!(store.durable_commits() - before, 1);
}

//! Unit tests of the sync cores: replay vs snapshot + diff, refusals,
//! dedupe of publishes, gaps, snapshots, restore from stored records.

use std::time::Instant;

use super::document::AppendLog;
use super::owner::{Access, Owner, OwnerConfig, OwnerEvent, OwnerOutput};
use super::subscriber::{Subscriber, SubscriberConfig, SubscriberEvent, SubscriberOutput};
use super::window::WindowConfig;
use super::wire::{Cursor, RefuseCode, SyncMsg};
use crate::store::sync_store::{SyncOwnerRecord, apply_owner_commit};
use crate::vocab::StreamId;

const EPOCH: u64 = 77;

fn owner(window: usize) -> (Owner<AppendLog>, SyncOwnerRecord) {
    let config = OwnerConfig::default().window(WindowConfig::default().max_entries(window));
    let (mut o, commit) =
        Owner::open("doc", "hub", AppendLog::default(), config, None, EPOCH).unwrap();
    let mut rec = SyncOwnerRecord::default();
    apply_owner_commit(&mut rec, &commit);
    o.admit("m1", Access::ReadWrite);
    o.admit("ro", Access::ReadOnly);
    (o, rec)
}

fn subscriber() -> Subscriber<AppendLog> {
    Subscriber::open(
        "doc",
        "m1",
        StreamId::new("sync:hub/m1/doc"),
        AppendLog::default(),
        SubscriberConfig::default(),
        None,
    )
    .unwrap()
}

fn to(out: &OwnerOutput, peer: &str) -> Vec<SyncMsg> {
    out.send
        .iter()
        .filter(|(p, _)| p == peer)
        .map(|(_, m)| m.clone())
        .collect()
}

fn refusals(msgs: &[SyncMsg]) -> Vec<u16> {
    msgs.iter()
        .filter_map(|m| match m {
            SyncMsg::Refuse { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

fn feed(s: &mut Subscriber<AppendLog>, msgs: Vec<SyncMsg>) -> Vec<SubscriberOutput> {
    msgs.into_iter()
        .map(|m| s.on_message(m, Instant::now()))
        .collect()
}

fn publish_n(o: &mut Owner<AppendLog>, rec: &mut SyncOwnerRecord, n: u64) {
    for i in 0..n {
        let (_, out) = o
            .publish_local(format!("u{i}").into_bytes(), 1_000)
            .unwrap();
        apply_owner_commit(rec, &out.commit);
    }
}

#[test]
fn a_cursor_inside_the_window_gets_exactly_the_updates_after_it() {
    let (mut o, mut rec) = owner(100);
    publish_n(&mut o, &mut rec, 10);
    let out = o.on_message(
        "m1",
        SyncMsg::Subscribe {
            doc: "doc".into(),
            cursor: Cursor::new(EPOCH, 4),
        },
        1_000,
    );
    let seqs: Vec<u64> = to(&out, "m1")
        .iter()
        .filter_map(|m| match m {
            SyncMsg::Update { cursor, .. } => Some(cursor.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (5..=10).collect::<Vec<_>>());
    assert!(matches!(to(&out, "m1").last(), Some(SyncMsg::Head { cursor }) if cursor.seq == 10));
}

#[test]
fn a_cursor_older_than_the_window_gets_snapshot_plus_diff() {
    let (mut o, mut rec) = owner(4);
    publish_n(&mut o, &mut rec, 10);
    let snap = o
        .snapshot_cursor()
        .expect("a snapshot was taken before evicting");
    assert!(o.window().first_seq().unwrap() <= snap.seq + 1);
    // The stored record matches: snapshot + log reach the head.
    assert_eq!(rec.snapshot.as_ref().map(|s| s.seq), Some(snap.seq));
    let mut s = subscriber();
    // Present a real but old cursor (applied seq 1 earlier).
    let first = o.on_message(
        "m1",
        SyncMsg::Subscribe {
            doc: "doc".into(),
            cursor: Cursor::NONE,
        },
        1_000,
    );
    assert!(matches!(
        o.on_message(
            "m1",
            SyncMsg::Resync {
                cursor: Cursor::new(EPOCH, 1)
            },
            1_000
        )
        .events
        .last(),
        Some(OwnerEvent::SnapshotSent { .. })
    ));
    let outs = feed(&mut s, to(&first, "m1"));
    assert!(outs.iter().any(|o| {
        o.events
            .iter()
            .any(|e| matches!(e, SubscriberEvent::SnapshotLoaded { .. }))
    }));
    assert_eq!(s.cursor(), o.head());
    assert_eq!(s.doc(), o.doc());
}

#[test]
fn a_cursor_from_the_future_or_another_epoch_is_refused_then_reset_by_snapshot() {
    let (mut o, mut rec) = owner(100);
    publish_n(&mut o, &mut rec, 3);
    for (cursor, code) in [
        (Cursor::new(EPOCH, 9), RefuseCode::CursorFromFuture),
        (Cursor::new(EPOCH + 1, 2), RefuseCode::WrongEpoch),
    ] {
        let out = o.on_message(
            "m1",
            SyncMsg::Subscribe {
                doc: "doc".into(),
                cursor,
            },
            1_000,
        );
        let msgs = to(&out, "m1");
        assert_eq!(refusals(&msgs), vec![code.code()]);
        assert!(msgs.iter().any(|m| matches!(m, SyncMsg::Snapshot { .. })));
        // A subscriber that was at that cursor adopts the owner's state.
        let mut s = Subscriber::open(
            "doc",
            "m1",
            StreamId::new("sync:hub/m1/doc"),
            AppendLog {
                entries: vec![b"stale".to_vec()],
            },
            SubscriberConfig::default(),
            Some(crate::store::sync_store::SyncSubscriberRecord {
                epoch: cursor.epoch,
                seq: cursor.seq,
                snapshot: Some(
                    AppendLog {
                        entries: vec![b"stale".to_vec()],
                    }
                    .snapshot_bytes(),
                ),
                next_update_id: 1,
                ..Default::default()
            }),
        )
        .unwrap();
        feed(&mut s, msgs);
        assert_eq!(s.cursor(), o.head());
        assert_eq!(s.doc(), o.doc());
    }
}

trait SnapBytes {
    fn snapshot_bytes(&self) -> Vec<u8>;
}
impl SnapBytes for AppendLog {
    fn snapshot_bytes(&self) -> Vec<u8> {
        use super::document::Document;
        self.snapshot()
    }
}

#[test]
fn bad_input_gets_typed_refusals_and_loses_nothing_accepted() {
    let (mut o, mut rec) = owner(100);
    publish_n(&mut o, &mut rec, 2);
    let before = o.doc().clone();
    let cases: Vec<(&str, SyncMsg, RefuseCode)> = vec![
        (
            "m1",
            SyncMsg::Subscribe {
                doc: "other".into(),
                cursor: Cursor::NONE,
            },
            RefuseCode::UnknownDocument,
        ),
        (
            "stranger",
            SyncMsg::Subscribe {
                doc: "doc".into(),
                cursor: Cursor::NONE,
            },
            RefuseCode::NotAdmitted,
        ),
        (
            "ro",
            SyncMsg::Publish {
                update_id: 1,
                bytes: b"x".to_vec(),
            },
            RefuseCode::NotAdmitted,
        ),
        (
            "m1",
            SyncMsg::Publish {
                update_id: 1,
                bytes: vec![1; (256 << 10) + 1],
            },
            RefuseCode::Oversized,
        ),
        (
            "m1",
            SyncMsg::Publish {
                update_id: 2,
                bytes: Vec::new(),
            },
            RefuseCode::UndecodableUpdate,
        ),
        (
            "m1",
            SyncMsg::Update {
                cursor: Cursor::new(EPOCH, 3),
                publisher: "m1".into(),
                update_id: 1,
                bytes: b"x".to_vec(),
            },
            RefuseCode::NotOwner,
        ),
    ];
    for (peer, msg, code) in cases {
        let out = o.on_message(peer, msg, 1_000);
        assert_eq!(refusals(&to(&out, peer)), vec![code.code()], "{code:?}");
        assert!(out.commit.append.is_empty(), "{code:?} appended");
    }
    assert_eq!(o.doc(), &before);
    assert_eq!(o.head().seq, 2);
    // The refused ids are settled: the next publish goes through.
    let out = o.on_message(
        "m1",
        SyncMsg::Publish {
            update_id: 3,
            bytes: b"ok".to_vec(),
        },
        1_000,
    );
    assert_eq!(out.commit.append.len(), 1);
    assert!(to(&out, "m1").contains(&SyncMsg::PublishAck { through: 3 }));
}

#[test]
fn publishes_are_deduped_and_sequenced_per_publisher() {
    let (mut o, _) = owner(100);
    let p = |id: u64| SyncMsg::Publish {
        update_id: id,
        bytes: format!("p{id}").into_bytes(),
    };
    // 2 before 1: held, then both in order.
    assert!(o.on_message("m1", p(2), 0).commit.append.is_empty());
    let out = o.on_message("m1", p(1), 0);
    let ids: Vec<u64> = out.commit.append.iter().map(|e| e.update_id).collect();
    assert_eq!(ids, vec![1, 2]);
    // Duplicates: acked again, never appended.
    for id in [1, 2] {
        let out = o.on_message("m1", p(id), 0);
        assert!(out.commit.append.is_empty());
        assert!(to(&out, "m1").contains(&SyncMsg::PublishAck { through: 2 }));
    }
    assert_eq!(o.doc().entries, vec![b"p1".to_vec(), b"p2".to_vec()]);
}

#[test]
fn a_gap_is_never_silent_and_reordered_updates_apply_once_in_order() {
    let mut s = subscriber();
    let u = |seq: u64| SyncMsg::Update {
        cursor: Cursor::new(EPOCH, seq),
        publisher: "hub".into(),
        update_id: seq,
        bytes: format!("u{seq}").into_bytes(),
    };
    let out = s.on_message(u(1), Instant::now());
    assert_eq!(out.applied.len(), 1);
    let out = s.on_message(u(3), Instant::now());
    assert!(out.applied.is_empty());
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e, SubscriberEvent::Gap { at, got } if at.seq == 1 && got.seq == 3))
    );
    assert!(out.send.contains(&SyncMsg::Resync {
        cursor: Cursor::new(EPOCH, 1)
    }));
    let out = s.on_message(u(2), Instant::now());
    let seqs: Vec<u64> = out.applied.iter().map(|a| a.cursor.seq).collect();
    assert_eq!(seqs, vec![2, 3]);
    assert!(s.on_message(u(2), Instant::now()).applied.is_empty());
    assert_eq!(s.doc().entries.len(), 3);
    // The commit carries the cursor with the applied state.
    assert_eq!(out.commit.cursor, Some((EPOCH, 3)));
    assert_eq!(out.commit.append_applied.len(), 2);
}

#[test]
fn a_corrupt_snapshot_is_refused_and_the_state_kept() {
    let mut s = subscriber();
    s.on_message(
        SyncMsg::Update {
            cursor: Cursor::new(EPOCH, 1),
            publisher: "hub".into(),
            update_id: 1,
            bytes: b"a".to_vec(),
        },
        Instant::now(),
    );
    let out = s.on_message(
        SyncMsg::Snapshot {
            cursor: Cursor::new(EPOCH + 1, 5),
            acked_through: 0,
            total_len: 3,
            offset: 0,
            bytes: vec![0, 0, 9],
        },
        Instant::now(),
    );
    assert_eq!(
        refusals(&out.send),
        vec![RefuseCode::CorruptSnapshot.code()]
    );
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e, SubscriberEvent::CorruptSnapshot { .. }))
    );
    assert_eq!(s.cursor(), Cursor::new(EPOCH, 1));
    assert_eq!(s.doc().entries, vec![b"a".to_vec()]);
    assert!(out.commit.is_empty());
}

#[test]
fn snapshots_larger_than_a_chunk_are_reassembled() {
    let config = OwnerConfig::default()
        .snapshot_chunk(7)
        .window(WindowConfig::default().max_entries(2));
    let (mut o, _) = Owner::open("doc", "hub", AppendLog::default(), config, None, EPOCH).unwrap();
    o.admit("m1", Access::ReadWrite);
    for i in 0..20 {
        o.publish_local(format!("entry-{i}").into_bytes(), 0)
            .unwrap();
    }
    let out = o.on_message(
        "m1",
        SyncMsg::Subscribe {
            doc: "doc".into(),
            cursor: Cursor::NONE,
        },
        0,
    );
    let chunks = to(&out, "m1")
        .iter()
        .filter(|m| matches!(m, SyncMsg::Snapshot { .. }))
        .count();
    assert!(chunks > 3, "{chunks} chunks");
    let mut s = subscriber();
    feed(&mut s, to(&out, "m1"));
    assert_eq!(s.doc(), o.doc());
    assert_eq!(s.cursor(), o.head());
}

#[test]
fn own_publishes_leave_the_outbox_when_settled_and_return_in_the_log() {
    let (mut o, _) = owner(100);
    let mut s = subscriber();
    let now = Instant::now();
    let (id, commit) = s.prepare_publish(b"mine").unwrap();
    assert_eq!(commit.outbox_add.len(), 1);
    let sent = s.published(id, b"mine".to_vec(), now);
    assert_eq!(sent.len(), 1);
    // Not applied locally before the owner sequences it.
    assert!(s.doc().entries.is_empty());
    let mut out = OwnerOutput::default();
    let sub = s.attach(now);
    for m in sub.into_iter().chain(sent) {
        let o2 = o.on_message("m1", m, 0);
        out.send.extend(o2.send);
    }
    feed(&mut s, to(&out, "m1"));
    assert_eq!(s.pending_publishes(), 0);
    assert_eq!(s.doc().entries, vec![b"mine".to_vec()]);
    assert!(s.prepare_publish(&vec![0; (256 << 10) + 1]).is_err());
}

#[test]
fn an_owner_reopened_from_its_record_continues_the_same_log() {
    let (mut o, mut rec) = owner(3);
    publish_n(&mut o, &mut rec, 8);
    let out = o.on_message(
        "m1",
        SyncMsg::Publish {
            update_id: 1,
            bytes: b"m".to_vec(),
        },
        0,
    );
    apply_owner_commit(&mut rec, &out.commit);
    let (mut again, _) = Owner::open(
        "doc",
        "hub",
        AppendLog::default(),
        OwnerConfig::default().window(WindowConfig::default().max_entries(3)),
        Some(rec),
        999,
    )
    .unwrap();
    assert_eq!(again.head(), o.head());
    assert_eq!(again.doc(), o.doc());
    again.admit("m1", Access::ReadWrite);
    // The publisher mark survived: a resend is a duplicate.
    let out = again.on_message(
        "m1",
        SyncMsg::Publish {
            update_id: 1,
            bytes: b"m".to_vec(),
        },
        0,
    );
    assert!(out.commit.append.is_empty());
}

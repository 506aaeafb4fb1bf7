//! The raw-redb baseline of the durability run: the store's rows written
//! with the store's durability and drain-everything group commit.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(crate) const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
pub(crate) const OUTBOX_IDS: TableDefinition<(&str, u64), u64> = TableDefinition::new("outbox_ids");
pub(crate) const NEXT_SEQ: TableDefinition<&str, u64> = TableDefinition::new("next_seq");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(crate) type Append = (Vec<u8>, oneshot::Sender<u64>);

/// One writer thread group-commits everything waiting, with the store's
/// durability (`Immediate`, two-phase commit) and the store's rows (outbox
/// value in the store's layout, id index, sequence and id counters).
pub(crate) fn raw_redb_writer(
    db: Database,
    mut rx: mpsc::UnboundedReceiver<Append>,
    commits: Arc<AtomicU64>,
) {
    let stream = "command:raw/durable";
    let (mut next_id, mut next_seq) = (1u64, 1u64);
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut ids = Vec::with_capacity(batch.len());
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.set_two_phase_commit(true);
            {
                let mut outbox = txn.open_table(OUTBOX)?;
                let mut index = txn.open_table(OUTBOX_IDS)?;
                for (record, _) in &batch {
                    let (id, seq) = (next_id, next_seq);
                    next_id += 1;
                    next_seq += 1;
                    let mut v = Vec::with_capacity(14 + record.len());
                    v.extend_from_slice(&id.to_be_bytes());
                    v.push(TrafficClass::Control.code());
                    v.push(1);
                    v.extend_from_slice(&u32::MAX.to_be_bytes());
                    v.extend_from_slice(record);
                    outbox.insert((stream, seq), v.as_slice())?;
                    index.insert((stream, id), seq)?;
                    ids.push(id);
                }
                txn.open_table(NEXT_SEQ)?.insert(stream, next_seq)?;
                txn.open_table(META)?.insert("next_message_id", next_id)?;
            }
            txn.commit()?;
            Ok(())
        })();
        if result.is_err() {
            return;
        }
        commits.fetch_add(1, Ordering::Relaxed);
        for ((_, tx), id) in batch.into_iter().zip(ids) {
            let _ = tx.send(id);
        }
    }
}

pub(crate) async fn raw_durable(
    path: std::path::PathBuf,
    secs: f64,
) -> Result<(f64, f64), BoxError> {
    let db = Database::create(path)?;
    {
        let txn = db.begin_write()?;
        txn.open_table(OUTBOX)?;
        txn.open_table(OUTBOX_IDS)?;
        txn.open_table(NEXT_SEQ)?;
        txn.open_table(META)?;
        // Touch the tables so the first measured commit is like the rest.
        let _ = txn.open_table(META)?.get("next_message_id")?;
        txn.commit()?;
    }
    let (tx, rx) = mpsc::unbounded_channel::<Append>();
    let commits = Arc::new(AtomicU64::new(0));
    let writer = {
        let commits = commits.clone();
        std::thread::spawn(move || raw_redb_writer(db, rx, commits))
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    let body = ByteBuf::from(vec![0xCD; SMALL]);
    let stream = StreamId::new("command:raw/durable");
    let rate = closed_loop(
        DURABLE_SENDERS,
        Duration::from_millis(300),
        secs,
        move || {
            let (tx, body, stream, counted) =
                (tx.clone(), body.clone(), stream.clone(), counted.clone());
            async move {
                // The record is the encoded envelope, as the sender stores it.
                let env = Envelope {
                    kind: EnvelopeKind::Command,
                    message_id: 0,
                    stream_id: stream,
                    issued_at_ms: now_ms(),
                    ttl_ms: 0,
                    authority_epoch: 0,
                    operation_key: None,
                    body: rmp_serde::to_vec(&body).unwrap_or_default(),
                };
                let (done, wait) = oneshot::channel();
                if tx.send((env.encode(), done)).is_err() {
                    return false;
                }
                let ok = wait.await.is_ok();
                counted.fetch_add(u64::from(ok), Ordering::Relaxed);
                ok
            }
        },
    )
    .await;
    // The closure (and with it the last sender) is gone: the writer ends.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    let n = commits.load(Ordering::Relaxed).max(1);
    Ok((rate, accepted.load(Ordering::Relaxed) as f64 / n as f64))
}

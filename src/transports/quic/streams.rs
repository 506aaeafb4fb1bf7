//! The two loops of a QUIC connection's streams: reading frames from one
//! incoming stream (decode, hello check, probes answered, facts and frames
//! reported), and writing one traffic class's queued frames on its own
//! unidirectional stream, coalesced into batched writes.

#[allow(clippy::wildcard_imports)]
use super::*;
use bytes::BytesMut;

use crate::wire::{DecodeError, FrameDecoder, ReadError, read_frame};

/// Reads frames from one incoming stream and reports them.
pub(super) async fn read_loop(
    inner: Arc<Inner>,
    conn: Connection,
    peer: NodeId,
    hello: Arc<HelloCheck>,
    mut recv: quinn::RecvStream,
) {
    let mut buf = BytesMut::new();
    let mut decoder = FrameDecoder::new(inner.config.codec);
    loop {
        match read_frame(&mut recv, &mut buf, &mut decoder).await {
            Ok(None) => return,
            Ok(Some(Frame::Hello(h))) => {
                if h.node != peer || Some(h.role) != hello.role {
                    bump(&inner.counters.refused_hello_mismatch);
                    tracing::warn!(node = %inner.node, peer = %peer, hello = %h.node, role = %h.role, certificate_role = ?hello.role, code = codes::HELLO_MISMATCH, "quic: hello names another node or role; connection closed");
                    conn.close(
                        VarInt::from(codes::HELLO_MISMATCH),
                        b"hello names another node or role",
                    );
                    inner
                        .report(
                            &peer,
                            Fact::Incident(format!("hello as {} ({})", h.node, h.role)),
                        )
                        .await;
                    return;
                }
                hello.seen.store(true, Ordering::Release);
            }
            Ok(Some(Frame::Probe(p))) => {
                let ack = Frame::ProbeAck(ProbeAck {
                    nonce: p.nonce,
                    sent_at_us: p.sent_at_us,
                });
                if let Ok(b) = encode_to_bytes(&ack, &inner.config.codec) {
                    let _ = conn.send_datagram(b);
                }
            }
            Ok(Some(Frame::ProbeAck(_))) => {}
            Ok(Some(Frame::Data(d))) => {
                if let Some(admit) = &inner.config.admission
                    && !admit(&peer, &d.stream)
                {
                    let what = format!("not admitted to stream {}", d.stream);
                    inner
                        .refuse_stream(
                            &peer,
                            &mut recv,
                            codes::NOT_ADMITTED,
                            &inner.counters.refused_not_admitted,
                            &what,
                        )
                        .await;
                    return;
                }
                inner.report(&peer, Fact::Frame(Frame::Data(d))).await;
            }
            Ok(Some(frame)) => inner.report(&peer, Fact::Frame(frame)).await,
            Err(ReadError::Decode(e @ DecodeError::Truncated { .. })) => {
                // The peer finished the stream inside a frame: its framing
                // is broken, and stopping a finished stream would show it
                // nothing, so the connection is closed (`docs/wire.md` §7.3).
                bump(&inner.counters.refused_truncated);
                log_budget::budgeted_warn!(inner.log_budget, node = %inner.node, peer = %peer, stream = %recv.id(), code = crate::wire::codes::TRUNCATED, error = %e, "quic: stream finished inside a frame; connection closed");
                conn.close(
                    VarInt::from(crate::wire::codes::TRUNCATED),
                    b"stream finished inside a frame",
                );
                inner
                    .report(&peer, Fact::Incident(format!("truncated stream: {e}")))
                    .await;
                return;
            }
            Err(ReadError::Decode(e)) => {
                let counter = match &e {
                    DecodeError::TooLarge { .. } => &inner.counters.refused_too_large,
                    DecodeError::UnsupportedVersion { .. } => &inner.counters.refused_version,
                    _ => &inner.counters.refused_malformed,
                };
                let code = e.close_code() as u16;
                inner
                    .refuse_stream(&peer, &mut recv, code, counter, &e.to_string())
                    .await;
                return;
            }
            Err(_) => return,
        }
    }
}

/// Frames handed to quinn per write call, at most.
const WRITE_BATCH: usize = 64;

/// Writes one class's queued frames on its own unidirectional stream,
/// until its queue is closed (the connection entry went away) or the
/// stream fails (then the queue is closed, so producers see `NoPath`).
pub(super) async fn write_loop(
    conn: Connection,
    class: TrafficClass,
    queue: Arc<ClassQueue>,
    stale: Arc<AtomicU64>,
    node: NodeId,
    peer: NodeId,
) {
    let mut stream = match conn.open_uni().await {
        Ok(s) => s,
        Err(_) => {
            queue.close();
            return;
        }
    };
    let _ = stream.set_priority(priority(class));
    // Every frame already queued goes to quinn in one call: one stream lock
    // and one connection wake-up per batch instead of per frame, so small
    // frames share packets.
    let mut batch: Vec<Bytes> = Vec::with_capacity(WRITE_BATCH);
    let mut drops = Drops::default();
    while queue
        .take(&mut batch, WRITE_BATCH, &mut drops)
        .await
        .is_some()
    {
        if drops.stale > 0 {
            stale.fetch_add(drops.stale as u64, Ordering::Relaxed);
            metrics::counter!("interlocking_queue_drops_total", "cause" => "stale")
                .increment(drops.stale as u64);
            drops.stale = 0;
        }
        let (frames, len) = (batch.len(), batch.iter().map(Bytes::len).sum::<usize>());
        let result = stream.write_all_chunks(&mut batch).await;
        batch.clear();
        queue.written(frames, len);
        if let Err(e) = result {
            tracing::warn!(node = %node, peer = %peer, class = ?class, error = %e, "quic: send stream ended");
            queue.close();
            return;
        }
    }
    let _ = stream.finish();
}

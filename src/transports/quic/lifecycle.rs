//! A connection's life in the QUIC transport: accepting (connection
//! limits, then the handshake and the peer's certificate), driving an
//! established connection (its streams, datagrams, probes and close) and
//! re-dialling a lost peer with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use quinn::{Connection, VarInt};
use tokio::time::Instant;

use super::cause::{down_cause, is_certificate_alert, peer_node, tls_alert};
use super::counters::bump;
use super::hello::{HelloCheck, peer_role};
use super::slots::{self, SlotRefusal};
use super::streams::read_loop;
use super::{Inner, codes, log_budget};
use crate::sync::lock;
use crate::transports::probe::Prober;
use crate::transports::{DownCause, Fact};
use crate::vocab::NodeId;
use crate::wire::codes::root::REVOKED;
use crate::wire::{Frame, ProbeAck, decode_frame, encode_to_bytes};

/// Accepts incoming connections until shutdown.
pub(super) async fn accept_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            _ = shutdown.changed() => return,
            i = inner.endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { return };
        let ip = incoming.remote_address().ip();
        match inner.slots.take(ip, &inner.config.limits) {
            Ok(slot) => {
                tokio::spawn(handshake(inner.clone(), incoming, slot));
            }
            Err(limit) => {
                let counter = match limit {
                    SlotRefusal::PerAddress => &inner.counters.refused_connections_per_address,
                    SlotRefusal::Total => &inner.counters.refused_connections_total,
                    SlotRefusal::Rate => &inner.counters.refused_connection_rate,
                };
                bump(counter);
                metrics::counter!("interlocking_limit_refusals_total", "limit" => limit.as_str())
                    .increment(1);
                log_budget::budgeted_warn!(inner.log_budget, node = %inner.node, remote = %incoming.remote_address(), limit = limit.as_str(), "quic: connection refused over limit");
                incoming.refuse();
            }
        }
    }
}

/// Completes one incoming handshake and installs the connection.
async fn handshake(inner: Arc<Inner>, incoming: quinn::Incoming, slot: slots::Slot) {
    let remote = incoming.remote_address();
    let conn = match incoming.accept() {
        Err(e) => Err(Some(e)),
        Ok(connecting) => {
            match tokio::time::timeout(inner.config.handshake_timeout, connecting).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(Some(e)),
                Err(_) => Err(None),
            }
        }
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(Some(e)) => {
            let (counter, code, what) = match tls_alert(&e) {
                Some(120) => (
                    &inner.counters.refused_alpn,
                    codes::WRONG_ALPN,
                    "wrong ALPN",
                ),
                Some(a) if is_certificate_alert(a) => (
                    &inner.counters.refused_certificate,
                    codes::UNTRUSTED_CERTIFICATE,
                    "missing or untrusted certificate",
                ),
                _ => (&inner.counters.handshake_failed, 0, "handshake failed"),
            };
            bump(counter);
            log_budget::budgeted_warn!(inner.log_budget, node = %inner.node, remote = %remote, code = code, error = %e, refused = what, "quic: handshake refused");
            return;
        }
        Err(None) => {
            bump(&inner.counters.handshake_failed);
            log_budget::budgeted_warn!(inner.log_budget, node = %inner.node, remote = %remote, "quic: handshake timed out");
            return;
        }
    };
    let peer = match peer_node(&conn) {
        Ok(p) => p,
        Err(e) => {
            bump(&inner.counters.refused_no_identity);
            log_budget::budgeted_warn!(inner.log_budget, node = %inner.node, remote = %remote, error = %e, code = codes::NO_IDENTITY, "quic: connection refused");
            conn.close(VarInt::from(codes::NO_IDENTITY), b"no node identity");
            return;
        }
    };
    if lock(&inner.revoked).contains(&peer) {
        bump(&inner.counters.refused_revoked);
        tracing::warn!(node = %inner.node, peer = %peer, code = REVOKED, "quic: revoked peer refused");
        conn.close(VarInt::from(REVOKED), b"revoked");
        return;
    }
    bump(&inner.counters.accepted);
    // The slot is held until the connection ends, whoever closes it.
    let closed = conn.clone();
    tokio::spawn(async move {
        closed.closed().await;
        drop(slot);
    });
    let dialer = peer.clone();
    inner.install(conn, peer, dialer).await;
}

/// Drives one connection: accepts its streams, answers and sends probes,
/// reports statistics, and reports down when it ends.
async fn drive(inner: Arc<Inner>, conn: Connection, peer: NodeId, generation: u64) {
    let probe = inner.config.probe;
    let mut prober = Prober::new(probe, Instant::now().into_std());
    let mut stats = tokio::time::interval(probe.interval);
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = inner.shutdown.subscribe();
    let codec = inner.config.codec;
    let hello = Arc::new(HelloCheck {
        role: peer_role(&conn),
        seen: AtomicBool::new(false),
    });
    let hello_deadline = Instant::now() + inner.config.hello_timeout;
    let mut hello_checked = false;
    let cause = loop {
        let deadline = Instant::from_std(prober.next_deadline());
        // Biased: input that has already arrived (answers above all) is
        // taken before the probe timer, so a late wake-up never declares
        // a probe missed whose answer is waiting to be read.
        tokio::select! {
            biased;
            _ = shutdown.changed() => break DownCause::ClosedLocally,
            _ = tokio::time::sleep_until(hello_deadline), if !hello_checked => {
                hello_checked = true;
                if !hello.seen.load(Ordering::Acquire) {
                    bump(&inner.counters.refused_hello_missing);
                    tracing::warn!(node = %inner.node, peer = %peer, code = codes::HELLO_MISSING, "quic: no hello in time; connection closed");
                    conn.close(VarInt::from(codes::HELLO_MISSING), b"no hello");
                    inner.report(&peer, Fact::Incident(format!("no hello within {:?}", inner.config.hello_timeout))).await;
                }
            }
            s = conn.accept_uni() => match s {
                Ok(recv) => {
                    tokio::spawn(read_loop(inner.clone(), conn.clone(), peer.clone(), hello.clone(), recv));
                }
                Err(e) => break down_cause(&e),
            },
            b = conn.accept_bi() => match b {
                Ok((mut send, mut recv)) => {
                    let _ = send.reset(VarInt::from(codes::UNEXPECTED_STREAM));
                    inner.refuse_stream(&peer, &mut recv, codes::UNEXPECTED_STREAM,
                        &inner.counters.refused_unexpected_stream, "bidirectional stream").await;
                }
                Err(e) => break down_cause(&e),
            },
            d = conn.read_datagram() => match d {
                Ok(bytes) => match decode_frame(&bytes, &codec) {
                    Ok(Frame::Probe(p)) => {
                        let ack = Frame::ProbeAck(ProbeAck { nonce: p.nonce, sent_at_us: p.sent_at_us });
                        if let Ok(b) = encode_to_bytes(&ack, &codec) {
                            let _ = conn.send_datagram(b);
                        }
                    }
                    Ok(Frame::ProbeAck(ack)) => {
                        if let Some(rtt) = prober.on_ack(Instant::now().into_std(), &ack) {
                            inner.report(&peer, Fact::ProbeAnswered { rtt }).await;
                        }
                    }
                    other => {
                        bump(&inner.counters.bad_datagrams);
                        let what = match other { Ok(f) => format!("{:?} frame in a datagram", f.kind()), Err(e) => e.to_string() };
                        log_budget::budgeted_warn!(inner.log_budget, node = %inner.node, peer = %peer, refused = %what, "quic: datagram dropped");
                    }
                },
                Err(e) => break down_cause(&e),
            },
            _ = tokio::time::sleep_until(deadline) => {
                let actions = prober.poll(Instant::now().into_std());
                if let Some(p) = actions.send
                    && let Ok(b) = encode_to_bytes(&Frame::Probe(p), &codec)
                {
                    let _ = conn.send_datagram(b);
                }
                for _ in 0..actions.missed {
                    inner.report(&peer, Fact::ProbeMissed).await;
                }
            }
            _ = stats.tick() => {
                let s = conn.stats();
                inner.report(&peer, Fact::Rtt(conn.rtt())).await;
                inner.report(&peer, Fact::Loss { lost: s.path.lost_packets, sent: s.path.sent_packets }).await;
                let (frames, bytes) = inner.queue_depth(&peer);
                inner.report(&peer, Fact::QueueDepth { frames, bytes }).await;
            }
        }
    };
    inner.connection_ended(peer, generation, cause).await;
}

type SendFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// [`drive`] behind a box: breaks the type cycle install → drive →
/// re-dial → install so the futures stay `Send`.
pub(super) fn boxed_drive(
    inner: Arc<Inner>,
    conn: Connection,
    peer: NodeId,
    generation: u64,
) -> SendFuture {
    Box::pin(drive(inner, conn, peer, generation))
}

/// [`reconnect_loop`] behind a box (see [`boxed_drive`]).
pub(super) fn boxed_reconnect(inner: Arc<Inner>, peer: NodeId) -> SendFuture {
    Box::pin(reconnect_loop(inner, peer))
}

/// Re-dials a lost peer with jittered exponential backoff until it is back,
/// closed, or the attempts run out.
async fn reconnect_loop(inner: Arc<Inner>, peer: NodeId) {
    if !lock(&inner.reconnecting).insert(peer.clone()) {
        return;
    }
    let mut shutdown = inner.shutdown.subscribe();
    let backoff = inner.config.reconnect;
    let mut attempt = 0u32;
    loop {
        if backoff.max_attempts.is_some_and(|m| attempt >= m) {
            inner
                .report(
                    &peer,
                    Fact::Incident(format!("gave up re-dialling after {attempt} attempts")),
                )
                .await;
            break;
        }
        let delay = backoff.delay(attempt, &mut *lock(&inner.rng));
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        if inner.closed.load(Ordering::Acquire) || lock(&inner.peers).contains_key(&peer) {
            break;
        }
        let Some(addr) = lock(&inner.dialled).get(&peer).copied() else {
            break;
        };
        bump(&inner.counters.reconnect_attempts);
        attempt += 1;
        match inner.dial(&peer, addr).await {
            Ok(()) => break,
            Err(e) => {
                tracing::debug!(node = %inner.node, peer = %peer, attempt, error = %e, "quic: re-dial failed");
            }
        }
    }
    lock(&inner.reconnecting).remove(&peer);
}

//! The QUIC transport's counters of refused input and connection events.
//!
//! Owns only the atomic counters and their snapshot; the transport bumps
//! them where it refuses or accepts something (`docs/wire.md` §7).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of refused input and connection events (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuicCounters {
    /// Connections accepted and authenticated.
    pub accepted: u64,
    /// Handshakes refused for a wrong ALPN.
    pub refused_alpn: u64,
    /// Handshakes refused for a missing or untrusted certificate.
    pub refused_certificate: u64,
    /// Handshakes that failed otherwise (timeout, transport error).
    pub handshake_failed: u64,
    /// Connections closed because the certificate names no node.
    pub refused_no_identity: u64,
    /// Connections refused or closed because the peer is revoked (the
    /// root's list, [`super::QuicTransport::refuse_revoked`]).
    pub refused_revoked: u64,
    /// Connections closed for a `Hello` naming another node or role.
    pub refused_hello_mismatch: u64,
    /// Connections closed because no `Hello` arrived in time.
    pub refused_hello_missing: u64,
    /// Connections closed because the peer finished a stream inside a frame.
    pub refused_truncated: u64,
    /// Streams stopped for undecodable bytes (malformed, truncated…).
    pub refused_malformed: u64,
    /// Streams stopped for an oversize frame.
    pub refused_too_large: u64,
    /// Streams stopped for an unknown protocol version.
    pub refused_version: u64,
    /// Streams stopped for a frame on a stream the peer is not admitted to.
    pub refused_not_admitted: u64,
    /// Streams stopped because the peer opened a bidirectional stream.
    pub refused_unexpected_stream: u64,
    /// Datagrams dropped as undecodable or not a probe.
    pub bad_datagrams: u64,
    /// Connections closed as duplicates.
    pub duplicates_closed: u64,
    /// Re-dial attempts.
    pub reconnect_attempts: u64,
    /// Connections refused before their handshake: the remote address
    /// already had `QuicLimits::connections_per_address`.
    pub refused_connections_per_address: u64,
    /// Connections refused before their handshake: the endpoint already
    /// had `QuicLimits::connections_total`.
    pub refused_connections_total: u64,
    /// Frames refused to a local sender because the peer's queue of that
    /// class was at its [`super::QueueBudget`] (a slow reader).
    pub refused_queue_full: u64,
    /// Connections refused before their handshake: the remote address
    /// started more than `QuicLimits::connections_per_second_per_address`.
    pub refused_connection_rate: u64,
    /// Queued frames of a drop-oldest class (sync, integration, media
    /// control) dropped to make room for newer ones ([`super::ClassBudget`]).
    pub dropped_oldest: u64,
    /// Queued frames of a drop-oldest class dropped at write time because
    /// they waited past their class's `stale_after`.
    pub dropped_stale: u64,
}

/// The live counters (see [`QuicCounters`] for their meaning).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) accepted: AtomicU64,
    pub(super) refused_alpn: AtomicU64,
    pub(super) refused_certificate: AtomicU64,
    pub(super) handshake_failed: AtomicU64,
    pub(super) refused_no_identity: AtomicU64,
    pub(super) refused_revoked: AtomicU64,
    pub(super) refused_hello_mismatch: AtomicU64,
    pub(super) refused_hello_missing: AtomicU64,
    pub(super) refused_truncated: AtomicU64,
    pub(super) refused_malformed: AtomicU64,
    pub(super) refused_too_large: AtomicU64,
    pub(super) refused_version: AtomicU64,
    pub(super) refused_not_admitted: AtomicU64,
    pub(super) refused_unexpected_stream: AtomicU64,
    pub(super) bad_datagrams: AtomicU64,
    pub(super) duplicates_closed: AtomicU64,
    pub(super) reconnect_attempts: AtomicU64,
    pub(super) refused_connections_per_address: AtomicU64,
    pub(super) refused_connections_total: AtomicU64,
    pub(super) refused_queue_full: AtomicU64,
    pub(super) refused_connection_rate: AtomicU64,
    pub(super) dropped_oldest: AtomicU64,
    /// Shared with the write loops, which drop stale frames.
    pub(super) dropped_stale: Arc<AtomicU64>,
}

impl QuicCounters {
    /// Every refusal counter with its `reason` label, as `/metrics` reports
    /// them (`interlocking_quic_refusals_total{reason=...}`).
    pub fn refusals(&self) -> [(&'static str, u64); 17] {
        [
            ("alpn", self.refused_alpn),
            ("certificate", self.refused_certificate),
            ("handshake_failed", self.handshake_failed),
            ("no_identity", self.refused_no_identity),
            ("hello_mismatch", self.refused_hello_mismatch),
            ("hello_missing", self.refused_hello_missing),
            ("truncated", self.refused_truncated),
            ("malformed", self.refused_malformed),
            ("too_large", self.refused_too_large),
            ("version", self.refused_version),
            ("not_admitted", self.refused_not_admitted),
            ("unexpected_stream", self.refused_unexpected_stream),
            ("bad_datagram", self.bad_datagrams),
            (
                "connections_per_address",
                self.refused_connections_per_address,
            ),
            ("connections_total", self.refused_connections_total),
            ("queue_full", self.refused_queue_full),
            ("connection_rate", self.refused_connection_rate),
        ]
    }
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(super) fn snapshot(&self) -> QuicCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        QuicCounters {
            accepted: g(&self.accepted),
            refused_alpn: g(&self.refused_alpn),
            refused_certificate: g(&self.refused_certificate),
            handshake_failed: g(&self.handshake_failed),
            refused_no_identity: g(&self.refused_no_identity),
            refused_revoked: g(&self.refused_revoked),
            refused_hello_mismatch: g(&self.refused_hello_mismatch),
            refused_hello_missing: g(&self.refused_hello_missing),
            refused_truncated: g(&self.refused_truncated),
            refused_malformed: g(&self.refused_malformed),
            refused_too_large: g(&self.refused_too_large),
            refused_version: g(&self.refused_version),
            refused_not_admitted: g(&self.refused_not_admitted),
            refused_unexpected_stream: g(&self.refused_unexpected_stream),
            bad_datagrams: g(&self.bad_datagrams),
            duplicates_closed: g(&self.duplicates_closed),
            reconnect_attempts: g(&self.reconnect_attempts),
            refused_connections_per_address: g(&self.refused_connections_per_address),
            refused_connections_total: g(&self.refused_connections_total),
            refused_queue_full: g(&self.refused_queue_full),
            refused_connection_rate: g(&self.refused_connection_rate),
            dropped_oldest: g(&self.dropped_oldest),
            dropped_stale: g(&self.dropped_stale),
        }
    }
}

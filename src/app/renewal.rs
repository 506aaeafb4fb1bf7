//! Certificates over time for a running hub or member: renewal
//! (`docs/root.md` §2.3) and the root's revocation list (§2.4).
//!
//! Owns when to renew — a pure schedule over the certificate's validity and
//! an injected `now` — the retries of the renewal exchange, and handing a
//! renewed identity on: to `identity.bin` in the state directory first (so
//! a restart uses it), then to the shared identity the transport factories
//! read at every (re)start, then to the live QUIC and relay transports;
//! and handing the revocation list the root announces over the relay link
//! to the QUIC transport, so direct connections refuse revoked peers.
//! Must not touch: channels and their streams (open connections keep
//! running through a renewal).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::root::{AdmissionError, JoinError, REVOKED_SIGNAL, renew};
use crate::sync::lock;
use crate::transports::quic::QuicTransport;
use crate::transports::relay::RelayTransport;
use crate::trust::NodeIdentity;
use crate::vocab::NodeId;

/// When and how often to try.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RenewPolicy {
    /// Renew once this fraction of the lifetime has passed (default 2/3).
    pub at_fraction: f64,
    /// First retry after a failed attempt (default 1 s), doubling...
    pub retry_initial: Duration,
    /// ...up to this (default 60 s), and never later than a tenth of the
    /// time left.
    pub retry_max: Duration,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        Self {
            at_fraction: 2.0 / 3.0,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// How long from `now` until a certificate valid from `not_before` to
/// `not_after` is due for renewal (zero when due already).
pub fn until_due(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    policy: &RenewPolicy,
) -> Duration {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let due = not_before + lifetime.mul_f64(policy.at_fraction.clamp(0.0, 1.0));
    due.duration_since(now).unwrap_or_default()
}

/// How long from `now` until a certificate the node has held since
/// `held_since` is due: as [`until_due`], counted from the later of its
/// `not_before` and `held_since`. The root backdates `not_before` by five
/// minutes against clock skew, so for a short lifetime the certificate's
/// own validity would make it due at once, again and again.
pub fn until_due_held(
    not_before: SystemTime,
    not_after: SystemTime,
    held_since: SystemTime,
    now: SystemTime,
    policy: &RenewPolicy,
) -> Duration {
    until_due(not_before.max(held_since), not_after, now, policy)
}

/// The wait before retry `attempt` (1, 2, …) of a failed renewal, with
/// `left` until the certificate expires.
pub fn retry_after(attempt: u32, left: Duration, policy: &RenewPolicy) -> Duration {
    let doubled = policy
        .retry_initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    doubled
        .min(policy.retry_max)
        .min(left / 10)
        .max(Duration::from_millis(100))
}

/// Whether a refusal is final: renewing again cannot succeed, the node
/// must join again with a token.
fn is_final(e: &JoinError) -> bool {
    matches!(
        e,
        JoinError::Refused(AdmissionError::Revoked(_) | AdmissionError::NotRenewable(_))
    )
}

/// What the renewer needs of the running node.
pub(crate) struct Renewer {
    /// The root's join endpoint and id.
    pub join: SocketAddr,
    /// The root's node id.
    pub root: NodeId,
    /// `identity.bin`.
    pub path: PathBuf,
    /// The identity the transport factories read.
    pub identity: Arc<Mutex<NodeIdentity>>,
    /// When the current certificate expires (shown in the status).
    pub expires: Arc<Mutex<SystemTime>>,
    /// The live transports.
    pub quic: Arc<Mutex<Option<Arc<QuicTransport>>>>,
    /// The live relay.
    pub relay: Arc<Mutex<Option<Arc<RelayTransport>>>>,
    /// When to renew.
    pub policy: RenewPolicy,
}

impl Renewer {
    /// Renews for as long as the node runs (abort the task to stop it).
    pub async fn run(self) {
        let mut attempt = 0u32;
        // Since when the current certificate is held (for one read from the
        // state directory: since this start).
        let mut held_since = SystemTime::now();
        loop {
            let current = lock(&self.identity).clone();
            let (not_before, not_after) = match super::identity::validity(&current) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "certificate renewal: cannot read the certificate's validity");
                    return;
                }
            };
            let now = SystemTime::now();
            let wait = match attempt {
                0 => until_due_held(not_before, not_after, held_since, now, &self.policy),
                n => retry_after(
                    n,
                    not_after.duration_since(now).unwrap_or_default(),
                    &self.policy,
                ),
            };
            tokio::time::sleep(wait).await;
            match renew(self.join, &self.root, &current, Duration::from_secs(10)).await {
                Ok(joined) => {
                    attempt = 0;
                    held_since = SystemTime::now();
                    if let Err(e) = self.install(&joined.identity, joined.expires_at) {
                        tracing::error!(error = %e, "certificate renewal: renewed, not installed");
                    }
                }
                Err(e) if is_final(&e) => {
                    tracing::error!(error = %e, "certificate renewal refused; the node must join again with a token before its certificate expires");
                    return;
                }
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(error = %e, attempt, "certificate renewal failed; retrying");
                }
            }
        }
    }

    fn install(&self, identity: &NodeIdentity, expires: SystemTime) -> Result<(), String> {
        super::identity::store(&self.path, identity)?;
        *lock(&self.identity) = identity.clone();
        *lock(&self.expires) = expires;
        let quic = lock(&self.quic).clone();
        if let Some(q) = quic {
            q.renew_identity(identity).map_err(|e| e.to_string())?;
        }
        let relay = lock(&self.relay).clone();
        if let Some(r) = relay {
            r.renew_identity(identity)?;
        }
        tracing::info!(node = %identity.node, expires = ?expires, "certificate renewed");
        metrics::counter!("interlocking_certificate_renewals_total").increment(1);
        Ok(())
    }
}

/// Applies the revocation lists the root announces (a `Signal` of kind
/// [`REVOKED_SIGNAL`] whose `from` is the root: the root stamps `from`, so
/// no other node can send one) to the live QUIC transport, for as long as
/// the node runs. Follows a restarted relay transport.
pub async fn watch_revocations(
    root: NodeId,
    quic: Arc<Mutex<Option<Arc<QuicTransport>>>>,
    relay: Arc<Mutex<Option<Arc<RelayTransport>>>>,
) {
    loop {
        let current = lock(&relay).clone();
        let Some(current) = current else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut rx = current.signals();
        let watched = Arc::downgrade(&current);
        drop(current);
        loop {
            let sig = match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Ok(sig)) => sig,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
                Err(_) => {
                    // A restarted relay transport replaced this one.
                    let now = lock(&relay).clone();
                    match (now, watched.upgrade()) {
                        (Some(a), Some(b)) if Arc::ptr_eq(&a, &b) => continue,
                        _ => break,
                    }
                }
            };
            if sig.kind != REVOKED_SIGNAL || sig.from != root {
                continue;
            }
            let list: Vec<NodeId> = match rmp_serde::from_slice(&sig.payload) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable revocation list from the root");
                    continue;
                }
            };
            let q = lock(&quic).clone();
            if let Some(q) = q {
                let closed = q.refuse_revoked(&list).await;
                tracing::info!(
                    revoked = list.len(),
                    closed,
                    "revocation list from the root applied"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_lifetime() {
        let p = RenewPolicy::default();
        // A 24 h certificate issued at 0: due at 16 h.
        let (nb, na) = (at(0), at(24 * 3600));
        assert_eq!(until_due(nb, na, at(0), &p), Duration::from_secs(16 * 3600));
        assert_eq!(
            until_due(nb, na, at(3600), &p),
            Duration::from_secs(15 * 3600)
        );
        assert_eq!(until_due(nb, na, at(16 * 3600), &p), Duration::ZERO);
        assert_eq!(until_due(nb, na, at(30 * 3600), &p), Duration::ZERO);
        // A clock before not_before waits the whole way.
        assert_eq!(
            until_due(at(100), at(400), at(0), &p),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn a_short_backdated_certificate_is_due_two_thirds_after_it_was_received() {
        let p = RenewPolicy::default();
        // Issued at 1000 for 6 s, backdated 300 s: due at 1004, not at once.
        let (nb, na) = (at(700), at(1006));
        assert_eq!(until_due(nb, na, at(1000), &p), Duration::ZERO);
        assert_eq!(
            until_due_held(nb, na, at(1000), at(1000), &p),
            Duration::from_secs(4)
        );
        // Held since before its not_before: the certificate's own validity.
        assert_eq!(
            until_due_held(
                at(0),
                at(24 * 3600),
                at(0) - Duration::from_secs(5),
                at(0),
                &p
            ),
            Duration::from_secs(16 * 3600)
        );
    }

    #[test]
    fn retries_back_off_and_stay_well_inside_the_time_left() {
        let p = RenewPolicy::default();
        let day = Duration::from_secs(24 * 3600);
        let waits: Vec<u64> = (1..=8).map(|n| retry_after(n, day, &p).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        // With 30 s left, never more than 3 s between attempts.
        assert_eq!(
            retry_after(8, Duration::from_secs(30), &p),
            Duration::from_secs(3)
        );
        // Never a busy loop.
        assert_eq!(
            retry_after(1, Duration::ZERO, &p),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn revocation_and_not_renewable_are_final() {
        assert!(is_final(&JoinError::Refused(AdmissionError::Revoked(
            NodeId::new("m")
        ))));
        assert!(is_final(&JoinError::Refused(AdmissionError::NotRenewable(
            "x".into()
        ))));
        assert!(!is_final(&JoinError::Unreachable("down".into())));
    }
}

//! Connection slots: how many connections (in handshake or established)
//! one IP address and the whole endpoint hold, and how fast one address may
//! start new ones, against [`QuicLimits`].
//!
//! Owns only the counts and the per-address token buckets; a [`Slot`] gives
//! its place back when dropped, so every exit of a handshake or connection
//! frees it. A bucket that has refilled is forgotten, so the table holds
//! only addresses that connected within about a second, and never more
//! than [`MAX_TRACKED`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Addresses whose connection rate is tracked at most; past it (after
/// forgetting refilled buckets) a new address is refused as over the rate.
const MAX_TRACKED: usize = 65_536;

use super::QuicLimits;

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotRefusal {
    /// [`QuicLimits::connections_per_address`].
    PerAddress,
    /// [`QuicLimits::connections_total`].
    Total,
    /// [`QuicLimits::connections_per_second_per_address`].
    Rate,
}

impl SlotRefusal {
    /// The `limit` label of `interlocking_limit_refusals_total`.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SlotRefusal::PerAddress => "connections_per_address",
            SlotRefusal::Total => "connections_total",
            SlotRefusal::Rate => "connection_rate",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Tokens left per address and when they were last refilled.
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

/// The endpoint's connection counts.
#[derive(Clone, Default)]
pub(super) struct Slots(Arc<Mutex<Counts>>);

/// One held connection slot; dropping it frees it.
pub(super) struct Slot {
    slots: Slots,
    ip: IpAddr,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a connection from `ip`, or says which limit is full.
    pub(super) fn take(&self, ip: IpAddr, limits: &QuicLimits) -> Result<Slot, SlotRefusal> {
        self.take_at(ip, limits, Instant::now())
    }

    /// [`Slots::take`] at `now`.
    fn take_at(&self, ip: IpAddr, limits: &QuicLimits, now: Instant) -> Result<Slot, SlotRefusal> {
        let mut c = self.lock();
        if c.total >= limits.connections_total {
            return Err(SlotRefusal::Total);
        }
        if c.per_ip.get(&ip).copied().unwrap_or(0) >= limits.connections_per_address {
            return Err(SlotRefusal::PerAddress);
        }
        let rate = f64::from(limits.connections_per_second_per_address);
        if rate > 0.0 {
            let refill = |(tokens, at): (f64, Instant)| {
                (tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(rate)
            };
            if c.buckets.len() >= MAX_TRACKED && !c.buckets.contains_key(&ip) {
                c.buckets.retain(|_, b| refill(*b) < rate);
                if c.buckets.len() >= MAX_TRACKED {
                    return Err(SlotRefusal::Rate);
                }
            }
            let tokens = c.buckets.get(&ip).map_or(rate, |b| refill(*b));
            if tokens < 1.0 {
                return Err(SlotRefusal::Rate);
            }
            c.buckets.insert(ip, (tokens - 1.0, now));
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        *n += 1;
        c.total += 1;
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }

    /// Connections held (total, from `ip`).
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> (usize, usize) {
        let c = self.lock();
        (c.total, c.per_ip.get(&ip).copied().unwrap_or(0))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_address_and_in_total_and_freed_on_drop() {
        let limits = QuicLimits {
            connections_per_address: 2,
            connections_total: 3,
            connections_per_second_per_address: 0,
            ..QuicLimits::default()
        };
        let slots = Slots::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = slots.take(a, &limits).unwrap();
        let _a2 = slots.take(a, &limits).unwrap();
        assert_eq!(slots.take(a, &limits).err(), Some(SlotRefusal::PerAddress));
        let _b1 = slots.take(b, &limits).unwrap();
        assert_eq!(slots.take(b, &limits).err(), Some(SlotRefusal::Total));
        drop(a1);
        assert_eq!(slots.held(a), (2, 1));
        let _a3 = slots.take(a, &limits).unwrap();
        assert_eq!(slots.held(a), (3, 2));
    }

    #[test]
    fn new_connections_from_one_address_are_held_to_the_rate() {
        let limits = QuicLimits {
            connections_per_second_per_address: 4,
            ..QuicLimits::default()
        };
        let slots = Slots::default();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let t0 = Instant::now();
        // A burst of the rate, then refused until tokens come back.
        for _ in 0..4 {
            drop(slots.take_at(a, &limits, t0).unwrap());
        }
        assert_eq!(slots.take_at(a, &limits, t0).err(), Some(SlotRefusal::Rate));
        // Another address has its own bucket.
        assert!(slots.take_at(b, &limits, t0).is_ok());
        // A quarter second later one token is back.
        let later = t0 + std::time::Duration::from_millis(250);
        assert!(slots.take_at(a, &limits, later).is_ok());
        assert_eq!(
            slots.take_at(a, &limits, later).err(),
            Some(SlotRefusal::Rate)
        );
    }
}

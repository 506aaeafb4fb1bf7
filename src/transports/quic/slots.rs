//! Connection slots: how many connections (in handshake or established)
//! one IP address and the whole endpoint hold, against [`QuicLimits`].
//!
//! Owns only the counts; a [`Slot`] gives its place back when dropped, so
//! every exit of a handshake or connection frees it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::QuicLimits;

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotRefusal {
    /// [`QuicLimits::connections_per_address`].
    PerAddress,
    /// [`QuicLimits::connections_total`].
    Total,
}

impl SlotRefusal {
    /// The `limit` label of `interlocking_limit_refusals_total`.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SlotRefusal::PerAddress => "connections_per_address",
            SlotRefusal::Total => "connections_total",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
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
        let mut c = self.lock();
        if c.total >= limits.connections_total {
            return Err(SlotRefusal::Total);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= limits.connections_per_address {
            return Err(SlotRefusal::PerAddress);
        }
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
}

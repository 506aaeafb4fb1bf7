//! Crate-private synchronisation helpers.
//!
//! Owns one rule: a `std::sync::Mutex` poisoned by a panicking holder is
//! still used. Every lock in the crate guards plain data whose invariants
//! hold between statements, and supervised actors are expected to panic and
//! restart without taking shared registries down with them.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the guard if a previous holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`] as a method, for call chains.
pub(crate) trait LockRecover<T> {
    /// Locks, recovering the guard if a previous holder panicked.
    fn lock_recover(&self) -> MutexGuard<'_, T>;
}

impl<T> LockRecover<T> for Mutex<T> {
    fn lock_recover(&self) -> MutexGuard<'_, T> {
        lock(self)
    }
}

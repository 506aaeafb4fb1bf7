//! The root: session admission, trust issuance, relay, rendezvous and
//! root-side dedupe for eligible streams (`docs/root.md`).
//!
//! Owns the root service role of `DESIGN.md` §2 and §6:
//! * [`admission`]: join tokens (single use, TTL, bound to node and role),
//!   the revocation list, their persistence and typed refusals;
//! * [`service`]: the [`Root`] service — a join endpoint issuing short-lived
//!   node certificates, a mutual-TLS node endpoint that forwards `Relay` and
//!   `Signal` frames between admitted nodes under the route class's budget,
//!   the rendezvous registry (`Register` / `Lookup`), and the
//!   [`dedupe::DedupeTable`] for relayed class-A frames;
//! * [`rendezvous`]: the checks on `Register` (size, addresses, granted
//!   capabilities) and the answer to every `Lookup`;
//! * [`state`]: the [`state::RootState`] backend trait (admission,
//!   revocation, registry, relay dedupe) and its default [`state::LocalState`]
//!   (state dir files plus `root.redb` for relay dedupe);
//! * [`cluster`]: [`cluster::JetStreamState`], the root state shared by
//!   several roots in NATS JetStream key-value buckets (`docs/cluster.md`);
//! * [`mod@join`]: the joining node's side of admission ([`join()`]).
//!
//! The relay *transport* that nodes use to reach peers through the root is
//! [`crate::transports::relay`].
//!
//! Must not touch: hub semantics — no outbox, no handler execution, no
//! channel state, no routing decisions. The root never interprets relayed
//! payloads.

pub mod admission;
pub mod cluster;
pub mod dedupe;
pub mod join;
pub mod rendezvous;
pub mod service;
pub mod state;

pub use admission::{AdmissionBook, AdmissionError, JoinToken, codes};
pub use join::{JoinError, Joined, join, renew};
pub use service::{REVOKED_SIGNAL, Root, RootConfig, RootCounters, RootError, RootHandle, open_ca};

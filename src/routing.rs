//! The routing authority's pure core: per logical stream, the one active
//! path, fallback, handover, freeze, degradation, and why.
//!
//! Owns path health (from the facts transports report), per-channel path
//! policies, and the per-stream route state machine with its decision log.
//! It must not touch sockets, tasks, threads or the clock: it is sans-IO in
//! the style of `quinn-proto`. Every input carries an explicit `now`;
//! outputs are drained:
//!
//! - inputs: [`RoutingCore::path_added`], [`RoutingCore::path_removed`],
//!   [`RoutingCore::observe`], [`RoutingCore::set_capabilities`],
//!   [`RoutingCore::register`], [`RoutingCore::unregister`],
//!   [`RoutingCore::handle_timeout`];
//! - outputs: [`RoutingCore::poll_decision`] until `None`, then
//!   [`RoutingCore::poll_timeout`] for the instant at which
//!   `handle_timeout` must be called next;
//! - queries: [`RoutingCore::route`], [`RoutingCore::explain`],
//!   [`RoutingCore::path_health`].
//!
//! The `RoutingAuthority` actor is a shell that feeds this core and forwards
//! its decisions; it holds no routing logic of its own. `docs/routing.md`
//! describes the model, the defaults and how to write a policy.
//!
//! Layout:
//! - [`health`]: path health states, thresholds and the observation type;
//! - [`policy`]: per-channel policies, flap damping and the configuration;
//! - [`decision`]: rules, causes, assessments, decisions and explanations;
//! - [`core`]: the [`RoutingCore`] state machine and its indexes;
//! - `stream` (private): one stream's evaluation (selection, freeze, handover).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use interlocking::routing::{Need, Observation, RoutingConfig, RoutingCore, Rule};
//! use interlocking::vocab::{ChannelKind, NodeId, PathId, PathKind, StreamId};
//!
//! let t0 = Instant::now();
//! let mut core = RoutingCore::new(RoutingConfig::default());
//! let quic = PathId::new("m1", PathKind::Quic);
//! let relay = PathId::new("m1", PathKind::Relay);
//! core.path_added(t0, quic.clone());
//! core.path_added(t0, relay.clone());
//!
//! let stream = StreamId::new("command:hub/m1");
//! core.register(t0, stream.clone(), Need::node(ChannelKind::Command, NodeId::new("m1")))
//!     .unwrap();
//! assert_eq!(core.poll_decision().unwrap().rule, Rule::Initial);
//!
//! // The direct path goes down: the stream fails over to the relay at once.
//! let t1 = t0 + Duration::from_secs(1);
//! core.observe(t1, &quic, Observation::Down { cause: "reset by peer".into() });
//! let d = core.poll_decision().unwrap();
//! assert_eq!(d.rule, Rule::Failover);
//! assert_eq!(d.next, Some(relay));
//! assert_eq!(
//!     d.to_string(),
//!     "command:hub/m1 quic@m1 -> relay@m1 (failover: down: reset by peer) \
//!      freeze until +10.0s, transitioning"
//! );
//! ```

pub mod authority;
pub mod core;
pub mod decision;
pub mod health;
pub mod policy;
mod stream;

pub use self::core::{Need, RegisterError, RoutingCore, Target};
pub use self::decision::{
    Assessment, Candidate, Cause, Decision, Explanation, RefusedPeer, Route, Rule,
};
pub use self::health::{HealthConfig, Observation, PathHealth};
pub use self::policy::{FlapDamping, Handover, Policy, PolicyError, RoutingConfig};

#[cfg(test)]
mod tests;

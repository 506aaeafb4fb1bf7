//! # interlocking
//!
//! A framework for systems made of a **hub**, a **root**, **members** and
//! **browsers** whose connections fail, flap and recover. *Logical channels*
//! carry meaning (ordering, acks, durable outbox, idempotency, cursors); a
//! **routing authority** decides, per logical stream, the one active path,
//! its fallback, when to hand over, how long to freeze after a failover and
//! when the stream is degraded — and can explain each decision;
//! **transports** only move opaque frames and report facts.
//!
//! Like a railway interlocking, the authority sets one route at a time,
//! locks it, and refuses conflicting moves.
//!
//! ## Layout
//!
//! | module | owns | must not touch |
//! | --- | --- | --- |
//! | [`vocab`] | shared value types: node, stream and path ids, path kinds, channel kinds, traffic classes | any logic or other module |
//! | [`wire`] | the frame envelope and its versioned, size-limited codec (`docs/wire.md`) | what frames mean |
//! | [`transports`] | the transport contract and its adapters (memory with seeded faults, QUIC with mutual TLS, relay through the root, WebRTC, the relay over a sidecar's local session): connect, send, close, facts up | channels, store, routing decisions |
//! | [`trust`] | the certificate authority, node certificates (validity windows, issuance for a node's own key), mutual-TLS configs (TLS 1.3, ALPN `interlocking/2`), the join ALPN's server-only configs, node identity from a verified certificate | sockets, frames, channels, routing |
//! | [`turn`] | a TURN server (RFC 8656 over UDP) the root runs for WebRTC peers without a direct path; credentials minted from a shared secret (TURN REST API scheme) | frames, channels, routing |
//! | [`routing`] | the pure routing core (paths, health, policy, freeze, decisions) and the `RoutingAuthority` actor shell around it (`docs/routing.md`) | sockets, tokio inside the core, channel semantics |
//! | [`channels`] | channel semantics as pure cores: the sender outbox (credit window, resend, route-change replay), receiver dedupe, in-order delivery (`docs/channels.md`); the channel kit every kind's actor is built with (slot, lazy start, supervision, session binding, route subscription); the command channel; the media channel (sources, admission, the pure tier ladder, `docs/media.md`) | sockets, path choice |
//! | [`store`] | durability behind the [`store::Store`] trait: redb (group-committed outbox, idempotency records, dedupe replies, cursors) and an in-memory store for simulations | channel logic, transports |
//! | [`root`] | the root service: admission (single-use join tokens, short-lived certificates, revocation), relay forwarding between admitted nodes, rendezvous, dedupe of relayed class-A frames (persisted in `root.redb`), all state behind [`root::state::RootState`] (`docs/root.md`), shared by several roots through NATS JetStream in [`root::cluster`] (`docs/cluster.md`) | hub semantics: outbox, handlers, channel state, routing decisions |
//! | [`sidecar`] | the sidecar service: a hub's remote session to the root (reconnect, heartbeats, wire diagnostics) and the local endpoint (Unix socket, per-start secret, at most two sessions) through which the hub exchanges frames with it, unchanged (`docs/sidecar.md`) | outbox, dedupe, cursors, classification, degraded modes, routing decisions, any frame of its own in a relayed stream |
//! | [`config`] | a node's TOML configuration: schema, semantic checks, errors naming file, line and key (`docs/config.md`) | sockets, running parts |
//! | [`app`] | the entry point a config drives: builds a root, hub or member as a process, built-in handlers (`echo`, `kv`), credentials kept in the state dir, graceful stop | protocol semantics |
//! | [`control`] | the control API (axum): health, readiness tree and degraded modes, routes, `why`, peers, channels, Prometheus metrics, the dashboard, and its client (`docs/control.md`) | routing decisions, frames |
//! | [`actors`] | the supervision tree: restart policy, generic supervisor, supervised tasks (a plain async loop as a child, e.g. the root's), the node that wires routing, transports and channels together; stream sessions (every received frame checked against its stream's peer, incarnation and inbox credit on the transport's receive task); the fact pump to the routing authority | protocol semantics |
//!
//! ## A node in a few lines
//!
//! ```
//! use interlocking::actors::node::NodeBuilder;
//! use interlocking::routing::Need;
//! use interlocking::transports::{memory::MemoryNetwork, probe::ProbeConfig, PeerAddr};
//! use interlocking::vocab::{ChannelKind, PathKind, Role, StreamId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = MemoryNetwork::new(42);
//! let hub = NodeBuilder::new("hub", Role::Hub)
//!     .memory(&net, PathKind::Quic, ProbeConfig::default())
//!     .spawn()
//!     .await?;
//! let member = NodeBuilder::new("m1", Role::Member)
//!     .memory(&net, PathKind::Quic, ProbeConfig::default())
//!     .dial(PathKind::Quic, PeerAddr::node("hub"))
//!     .spawn()
//!     .await?;
//! let stream = StreamId::new("command:m1/hub");
//! let need = Need::node(ChannelKind::Command, "hub");
//! let _initial = member
//!     .register_stream(stream.clone(), need, |update| println!("{}", update.decision))
//!     .await?;
//! member.shutdown().await;
//! hub.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod actors;
pub mod app;
pub mod channels;
pub mod config;
pub mod control;
pub mod root;
pub mod routing;
pub mod sidecar;
pub mod store;
mod sync;
pub mod transports;
pub mod trust;
pub mod turn;
pub mod vocab;
pub mod web;
pub mod wire;

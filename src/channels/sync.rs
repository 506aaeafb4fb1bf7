//! The sync channel: one document kept in step between its owner (the
//! cursor authority, usually the hub) and its subscribers, whatever the
//! paths do. See `docs/sync.md`.
//!
//! Owns the sync semantics, split as the other channels are:
//! - pure, sans-IO cores: [`owner::Owner`] (cursors, dedupe of publishes,
//!   the bounded [`window::ReplayWindow`], replay vs snapshot + diff,
//!   refusals) and [`subscriber::Subscriber`] (in-order apply, gap
//!   detection, snapshot loading, the durable publish outbox);
//! - the wire messages ([`wire::SyncMsg`]) carried in `Data` frames;
//! - the application contract ([`document::Document`]);
//! - the actor shell ([`actor`]): one supervised actor per owned document
//!   and per subscribed stream, the store ([`crate::store::SyncStore`]),
//!   the routing authority (sync policy) and the typed handles
//!   [`actor::SyncOwner`] and [`actor::SyncSubscriber`].
//!
//! It does not choose paths (the routing authority does) and never
//! decodes document bytes.

pub mod actor;
pub mod document;
pub mod owner;
pub mod subscriber;
pub mod window;
pub mod wire;

#[cfg(test)]
mod tests;

pub use actor::{SyncChannel, SyncError, SyncOwner, SyncSubscriber};
pub use document::{AppendLog, DocError, Document};
pub use owner::{Access, Applied, Owner, OwnerConfig, OwnerEvent, OwnerOutput};
pub use subscriber::{Subscriber, SubscriberConfig, SubscriberEvent, SubscriberOutput};
pub use window::{ReplayWindow, WindowConfig};
pub use wire::{Cursor, RefuseCode, SyncMsg, stream_name};

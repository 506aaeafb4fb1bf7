//! Logical channels: the pure cores that give commands their delivery
//! semantics (see `docs/channels.md`).
//!
//! Owns the sender's outbox state ([`outbox`]), the receiver's dedupe
//! ([`dedupe`]) and in-order delivery ([`order`]), the [`kit`] every channel
//! kind's actor is built with (slot, lazy start, supervision, session
//! binding, route subscription), and the [`command`] channel. These cores are sans-IO:
//! no tokio, no sockets, no store calls — every input carries an explicit
//! `now`, every output is a value the channel actor acts on (send a frame,
//! write the store, answer a caller). They must not touch transports,
//! routing decisions or the store's layout; the actor glues them to
//! [`crate::store::Store`] and to the routing authority.

pub mod command;
pub mod dedupe;
pub mod kit;
pub mod media;
pub mod order;
pub mod outbox;
pub mod sync;

pub use command::{
    CommandChannel, CommandError, CommandHandler, CommandSender, DeliveryClass, Receipt,
    SendOptions,
};
pub use dedupe::{Check, Dedupe, DedupeConfig};
pub use kit::SpawnError;
pub use order::{Offer, OrderConfig, Sequencer};
pub use outbox::{Outbox, OutboxConfig, PendingEntry, RouteChange, Transmit, TransmitKind};

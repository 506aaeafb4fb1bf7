//! Tunables of a command stream's sender and server.

use std::time::Duration;

use super::api::{Clock, system_clock};
use crate::actors::session::DEFAULT_INBOX_CAPACITY;
use crate::channels::{DedupeConfig, OrderConfig, OutboxConfig};

/// Tunables of a command sender.
#[derive(Clone)]
#[non_exhaustive]
pub struct SenderConfig {
    /// The outbox (credit window, RTO).
    pub outbox: OutboxConfig,
    /// The authority epoch stamped on every command.
    pub authority_epoch: u64,
    /// The wall clock for `issued_at_ms`.
    pub clock: Clock,
    /// How many class-B commands the in-memory replay window holds
    /// (default 256, at least 1).
    pub replay_window: usize,
    /// How long a class-C receipt waits for its answer before it resolves
    /// as [`CommandError::TimedOut`](super::CommandError::TimedOut)
    /// (default 10 s).
    pub class_c_timeout: Duration,
    /// How many class-C commands may wait for an answer at once; beyond
    /// it `send` refuses with [`CommandError::Full`](super::CommandError::Full)
    /// (default 4096).
    pub max_class_c_waiting: usize,
    /// How many reply frames the sender's inbox holds (default 1024).
    pub inbox_capacity: usize,
    /// How long operation keys are remembered (default 24 h): the sender
    /// prunes older idempotency records, after which the same key is new.
    pub idempotency_retention: Duration,
    /// The outbox bound, `(entries, bytes)` (default 65 536 entries /
    /// 256 MiB of command bodies and keys): a class-A command that would
    /// take the stream's outbox past either is refused at `send` with
    /// [`CommandError::Full`](super::CommandError::Full) (retryable: room
    /// comes back as entries are answered), nothing stored, counted in
    /// `SenderStats::outbox_full`. Class B is bounded by
    /// [`SenderConfig::replay_window`], class C by
    /// [`SenderConfig::max_class_c_waiting`].
    pub max_outbox: (usize, usize),
    /// How soon a command refused as busy or not ready is retried
    /// (default 50 ms, doubling per consecutive refusal: up to 8 × for not
    /// ready, 256 × for busy, never beyond the outbox's maximum RTO).
    pub retry_soon: Duration,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            outbox: OutboxConfig::default(),
            authority_epoch: 0,
            clock: system_clock(),
            replay_window: 256,
            class_c_timeout: Duration::from_secs(10),
            max_class_c_waiting: 4096,
            inbox_capacity: DEFAULT_INBOX_CAPACITY,
            idempotency_retention: Duration::from_secs(24 * 3600),
            retry_soon: Duration::from_millis(50),
            max_outbox: (65_536, 256 << 20),
        }
    }
}

impl SenderConfig {
    /// Sets [`SenderConfig::max_outbox`] (each at least 1).
    pub fn max_outbox(mut self, entries: usize, bytes: usize) -> Self {
        self.max_outbox = (entries.max(1), bytes.max(1));
        self
    }

    /// Sets the outbox tunables.
    pub fn outbox(mut self, outbox: OutboxConfig) -> Self {
        self.outbox = outbox;
        self
    }

    /// Sets the authority epoch.
    pub fn authority_epoch(mut self, epoch: u64) -> Self {
        self.authority_epoch = epoch;
        self
    }

    /// Replaces the wall clock (tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Sets [`SenderConfig::replay_window`] (at least 1).
    pub fn replay_window(mut self, n: usize) -> Self {
        self.replay_window = n.max(1);
        self
    }

    /// Sets [`SenderConfig::class_c_timeout`].
    pub fn class_c_timeout(mut self, timeout: Duration) -> Self {
        self.class_c_timeout = timeout;
        self
    }

    /// Sets [`SenderConfig::idempotency_retention`].
    pub fn idempotency_retention(mut self, retention: Duration) -> Self {
        self.idempotency_retention = retention;
        self
    }
}

/// Tunables of a command server.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Dedupe retention.
    pub dedupe: DedupeConfig,
    /// Reorder buffer.
    pub order: OrderConfig,
    /// The wall clock for expiry.
    pub clock: Clock,
    /// How often the server prunes its dedupe records (memory and store) to
    /// the [`DedupeConfig`] retention. Default 30 s.
    pub prune_every: Duration,
    /// How many command frames the stream's inbox holds before the node
    /// refuses more with a retryable busy reject (default 1024). Acks
    /// advertise the room left as credit.
    pub inbox_capacity: usize,
    /// A reply acknowledges the command it answers; a separate wire `Ack`
    /// (carrying the inbox credit) goes with it only for the first answer,
    /// when the credit moved by an eighth of the inbox or more since the
    /// last one advertised, or after this many answers without one
    /// (default 32, at least 1; 1 acks every answer).
    pub ack_every: u32,
}

/// Default of [`ServeConfig::ack_every`].
pub const DEFAULT_ACK_EVERY: u32 = 32;

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            dedupe: DedupeConfig::default(),
            order: OrderConfig::default(),
            clock: system_clock(),
            prune_every: Duration::from_secs(30),
            inbox_capacity: DEFAULT_INBOX_CAPACITY,
            ack_every: DEFAULT_ACK_EVERY,
        }
    }
}

impl ServeConfig {
    /// Sets the dedupe retention.
    pub fn dedupe(mut self, dedupe: DedupeConfig) -> Self {
        self.dedupe = dedupe;
        self
    }

    /// Sets [`ServeConfig::ack_every`] (at least 1).
    pub fn ack_every(mut self, answers: u32) -> Self {
        self.ack_every = answers.max(1);
        self
    }

    /// Sets [`ServeConfig::inbox_capacity`] (at least 1).
    pub fn inbox_capacity(mut self, frames: usize) -> Self {
        self.inbox_capacity = frames.max(1);
        self
    }

    /// Sets how often dedupe records are pruned.
    pub fn prune_every(mut self, every: Duration) -> Self {
        self.prune_every = every;
        self
    }

    /// Replaces the wall clock (tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

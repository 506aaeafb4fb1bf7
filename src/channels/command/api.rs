//! The command channel's application API: the handler traits (effects
//! outside the store: [`CommandHandler`]; effects in the store, committed
//! with the dedupe record: [`AtomicHandler`]), send options, errors and the
//! wall clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::AppTxn;
use crate::vocab::{DeliveryClass, StreamId, TrafficClass};

/// A wall clock in milliseconds since the Unix epoch (injectable for tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system wall clock in milliseconds since the Unix epoch.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// Who one command is, for handlers that make their effects idempotent
/// themselves: the same command resent (after any crash) has the same
/// context.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandContext {
    /// The logical stream.
    pub stream: StreamId,
    /// The sender's incarnation: message ids and sequence numbers are
    /// unique within it.
    pub incarnation: u64,
    /// The sender's message id (unique per sender node and incarnation).
    pub message_id: u64,
    /// The sequence number on the stream (0: class C, unordered).
    pub seq: u64,
    /// The sender's operation key, if it set one.
    pub operation_key: Option<String>,
}

/// Applies the commands of one stream on the receiving node, with effects
/// **outside** the node's store (a file, another service, memory).
///
/// Guarantee (see `docs/channels.md`, "Handler styles"): called at most
/// once per accepted message while the node runs; across a crash of the
/// receiving node, a command applied in the last moments before the crash
/// (after `handle` returned, before its dedupe record was fsync'd) is
/// applied again after the restart. Make such effects idempotent with
/// [`CommandContext`] ([`CommandHandler::handle_with`]), or use
/// [`AtomicHandler`] when the effect can live in the store.
#[async_trait]
pub trait CommandHandler: Send + Sync + 'static {
    /// The command type (MessagePack on the wire).
    type Command: Serialize + DeserializeOwned + Send;
    /// The reply type (MessagePack on the wire).
    type Reply: Serialize + DeserializeOwned + Send;
    /// Applies one command; called at most once per accepted message, in
    /// sequence order (but see the trait's note on crashes).
    async fn handle(&self, cmd: Self::Command) -> Result<Self::Reply, String>;

    /// Applies one command knowing who it is; what the channel calls. The
    /// default forgets the context and calls [`CommandHandler::handle`].
    async fn handle_with(
        &self,
        ctx: &CommandContext,
        cmd: Self::Command,
    ) -> Result<Self::Reply, String> {
        let _ = ctx;
        self.handle(cmd).await
    }
}

/// Applies the commands of one stream with effects **inside** the node's
/// store: its writes go through `txn` and commit in the same durable
/// transaction as the command's dedupe record, reply and delivered cursor.
///
/// Guarantee: exactly once, across crashes of either node — after any
/// crash a command is either applied with its record or not at all (then
/// it is resent and applied). Runs on a blocking thread inside the store's
/// write transaction, so it must be quick and must not wait on the
/// network; several commands (of this and other streams) may share one
/// transaction (group commit), and `txn` shows the earlier ones' writes.
/// Writes made before returning `Err` commit with the error reply:
/// validate first, then write.
pub trait AtomicHandler: Send + Sync + 'static {
    /// The command type (MessagePack on the wire).
    type Command: Serialize + DeserializeOwned + Send;
    /// The reply type (MessagePack on the wire).
    type Reply: Serialize + DeserializeOwned + Send;
    /// Applies one command in `txn`, in sequence order.
    fn handle(
        &self,
        txn: &mut dyn AppTxn,
        ctx: &CommandContext,
        cmd: Self::Command,
    ) -> Result<Self::Reply, String>;
}

/// Errors a command sender sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command's TTL had passed when it reached the receiver; it was
    /// not executed.
    #[error("command expired")]
    Expired,
    /// The receiver refused it (stale authority epoch, cancelled …); it was
    /// not executed.
    #[error("command rejected: {reason}")]
    Rejected {
        /// Why.
        reason: String,
    },
    /// The outbox credit window is full ([`CommandSender::try_send`](super::CommandSender::try_send)),
    /// or the path's send queue refused a class-C command.
    #[error("outbox full")]
    Full,
    /// No path to the target: a class-C command is not kept, so without a
    /// path it is not sent at all (class A and B wait for a path instead).
    #[error("no route to the target")]
    Unroutable,
    /// A class-C command got no answer within the sender's
    /// [`SenderConfig::class_c_timeout`](super::SenderConfig::class_c_timeout):
    /// it may or may not have been applied.
    #[error("no answer in time")]
    TimedOut,
    /// The receiver applied this message long ago and no longer retains its
    /// answer (a retransmit behind its cursor after its record was pruned):
    /// the outcome cannot be reported.
    #[error("the receiver no longer retains the answer")]
    OutcomeGone,
    /// The handler ran and returned an error.
    #[error("handler failed: {0}")]
    Handler(String),
    /// The store failed, or a command or reply could not be encoded.
    #[error("store: {0}")]
    Store(String),
    /// The channel's actor stopped (or restarted) before answering.
    #[error("channel closed")]
    Closed,
    /// A class-B command left the replay window (it was full) before its
    /// reply arrived: it may or may not have been applied.
    #[error("dropped from the class-B replay window")]
    Dropped,
    /// The operation key was used before by this message, which is no
    /// longer pending: its outcome cannot be reported here.
    #[error("duplicate operation key of message {message_id}")]
    Duplicate {
        /// The message first stored with the key.
        message_id: u64,
    },
}

/// Options of one [`CommandSender::send`](super::CommandSender::send).
///
/// There is no default: every command names its delivery class
/// ([`SendOptions::class_a`], [`SendOptions::class_b`],
/// [`SendOptions::class_c`]). The traffic class (how urgent the frame is on
/// a shared connection) is [`TrafficClass::Control`] unless set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendOptions {
    /// The delivery class.
    pub class: DeliveryClass,
    /// The traffic class its frames ride on.
    pub traffic: TrafficClass,
    /// The command expires this long after it was issued (`None`: never).
    pub ttl: Option<Duration>,
    /// Idempotency key: a second command with the same key on the stream
    /// is not stored again.
    pub operation_key: Option<String>,
    /// Whether the command may be resent on another path (see
    /// `docs/channels.md`, classification).
    pub replayable: bool,
}

impl SendOptions {
    fn of(class: DeliveryClass) -> Self {
        Self {
            class,
            traffic: TrafficClass::Control,
            ttl: None,
            operation_key: None,
            replayable: true,
        }
    }

    /// Class A (durable outbox, exactly once), replayable, no TTL, no key.
    pub fn class_a() -> Self {
        Self::of(DeliveryClass::A)
    }

    /// Class B (bounded in-memory replay window), replayable, no TTL.
    pub fn class_b() -> Self {
        Self::of(DeliveryClass::B)
    }

    /// Class C (sent once, never kept; the receipt resolves as answered,
    /// [`CommandError::Unroutable`], [`CommandError::Full`] or
    /// [`CommandError::TimedOut`]).
    pub fn class_c() -> Self {
        Self::of(DeliveryClass::C)
    }

    /// Sets the delivery class.
    pub fn class(mut self, class: DeliveryClass) -> Self {
        self.class = class;
        self
    }

    /// Sets the traffic class.
    pub fn traffic(mut self, traffic: TrafficClass) -> Self {
        self.traffic = traffic;
        self
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the operation key.
    pub fn operation_key(mut self, key: impl Into<String>) -> Self {
        self.operation_key = Some(key.into());
        self
    }

    /// Marks the command not replayable: after a route change or restart
    /// its outcome is settled by a cancel instead of a resend.
    pub fn not_replayable(mut self) -> Self {
        self.replayable = false;
        self
    }
}

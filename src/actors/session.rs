//! Stream sessions: the place where a frame meets its channel.
//!
//! Owns the binding of each logical stream on this node to (peer node,
//! channel kind, side, sender incarnation), the bounded inbox credit of the
//! stream, and the refusal of every frame that does not match its binding.
//! The node's dispatch ([`super::node`]) calls [`Session::admit`] on the
//! transport's receive task for every frame that names a stream; only an
//! admitted frame reaches the channel's [`Inbox`], together with a
//! [`Permit`] that holds one unit of the stream's inbox credit until the
//! channel has processed it.
//!
//! It does not know what frames mean (that is the channel's job) and never
//! blocks: a full inbox refuses with the retryable [`codes::BUSY`] instead
//! of queueing without limit. See `docs/channels.md`, "Stream sessions".

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::vocab::{ChannelKind, NodeId, PathId};
use crate::wire::Frame;

/// Reject codes of the stream-session layer (`docs/wire.md`, code table).
pub mod codes {
    /// The frame names a stream this node has bound to another peer.
    pub const NOT_BOUND: u16 = 0x0310;
    /// The stream's inbox is full; retry after a short delay (no frame was
    /// lost: the sender still holds it).
    pub const BUSY: u16 = 0x0311;
    /// The frame carries a sender incarnation older than the one this
    /// receiver has moved on to, or a reply for another incarnation than
    /// the sender's own.
    pub const STALE_INCARNATION: u16 = 0x0312;
    /// No stream of that name is being served here (yet): the node may be
    /// starting, or the stream is unknown. Retryable.
    pub const NOT_READY: u16 = 0x0313;
    /// A retransmit of a message the receiver applied long ago and whose
    /// answer it no longer retains: the outcome cannot be reported again.
    pub const ANSWER_GONE: u16 = 0x0314;
    /// The frame is malformed for its stream (e.g. an unknown delivery
    /// class).
    pub const BAD_FRAME: u16 = 0x0315;
}

/// Which end of a stream this node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// This node originates the stream's messages (e.g. a command sender):
    /// it stamps them with its own incarnation and accepts only answers
    /// that echo it.
    Sender,
    /// This node answers the stream's messages (e.g. a command server): it
    /// accepts messages of the newest sender incarnation it has seen, and
    /// refuses older ones.
    Receiver,
}

/// What a stream is bound to on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The only peer whose frames the stream accepts. On direct paths the
    /// transport took the peer's id from its verified certificate; on the
    /// relay, from the root-stamped `from`.
    pub peer: NodeId,
    /// The channel kind that owns the stream.
    pub kind: ChannelKind,
    /// This node's end of the stream.
    pub side: Side,
}

/// Holds one unit of a stream's inbox credit; dropping it (when the
/// channel has processed the frame) gives the unit back.
#[derive(Debug)]
pub struct Permit(Option<Arc<AtomicUsize>>);

impl Permit {
    /// A permit that holds no credit (frames that are not queued).
    pub fn none() -> Self {
        Self(None)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(q) = self.0.take() {
            q.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Receives the admitted frames of one stream (data, acks, rejects).
///
/// Implemented by channels; called on the transport's receive task, so it
/// must not block (cast to an actor, push to a queue). The [`Permit`] must
/// travel with the frame until it has been processed.
pub trait Inbox: Send + Sync + 'static {
    /// A frame for this stream arrived on `path`.
    fn deliver(&self, path: &PathId, frame: Frame, permit: Permit);
}

impl<F: Fn(&PathId, Frame, Permit) + Send + Sync + 'static> Inbox for F {
    fn deliver(&self, path: &PathId, frame: Frame, permit: Permit) {
        self(path, frame, permit)
    }
}

/// Counters of one stream session.
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// Frames handed to the channel.
    pub admitted: AtomicU64,
    /// Frames refused because they came from another peer than the bound one.
    pub not_bound: AtomicU64,
    /// Frames refused because the inbox was full.
    pub busy: AtomicU64,
    /// Frames refused for a stale or foreign incarnation.
    pub stale: AtomicU64,
    /// Frames refused as malformed for the stream.
    pub bad: AtomicU64,
}

/// Why [`Session::admit`] refused a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The reject code (see [`codes`]).
    pub code: u16,
    /// A short reason for the reject frame and the log.
    pub reason: &'static str,
}

/// One bound stream: its binding, inbox, credit and incarnation.
pub struct Session {
    binding: Binding,
    inbox: Arc<dyn Inbox>,
    /// Sender side: this node's own incarnation. Receiver side: the newest
    /// sender incarnation accepted so far (0: none yet).
    incarnation: AtomicU64,
    capacity: usize,
    queued: Arc<AtomicUsize>,
    counters: SessionCounters,
    /// Told when a path to the bound peer comes up (see [`Session::on_path_up`]).
    path_up: std::sync::OnceLock<PathUpHook>,
}

/// Called when a path to a session's peer comes up.
pub type PathUpHook = Box<dyn Fn(&PathId) + Send + Sync>;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("binding", &self.binding)
            .field("incarnation", &self.incarnation())
            .field("queued", &self.queued())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// The default inbox capacity of a stream, in frames.
pub const DEFAULT_INBOX_CAPACITY: usize = 1024;

impl Session {
    /// A session for `binding` delivering to `inbox`, holding at most
    /// `capacity` frames in flight to the channel (at least 1).
    /// `incarnation` is the sender's own (sender side) or the newest
    /// accepted so far (receiver side, 0 if none).
    pub fn new(binding: Binding, inbox: Arc<dyn Inbox>, capacity: usize, incarnation: u64) -> Self {
        Self {
            binding,
            inbox,
            incarnation: AtomicU64::new(incarnation),
            capacity: capacity.max(1),
            queued: Arc::default(),
            counters: SessionCounters::default(),
            path_up: std::sync::OnceLock::new(),
        }
    }

    /// Sets the hook the node calls when a path to the bound peer comes up
    /// (a reconnect, a restarted peer): a sender resends its unacked window
    /// at once instead of waiting for its retransmit timers. Set once.
    pub fn on_path_up(&self, hook: PathUpHook) {
        let _ = self.path_up.set(hook);
    }

    /// A path to the bound peer came up.
    pub fn path_up(&self, path: &PathId) {
        if let Some(hook) = self.path_up.get() {
            hook(path);
        }
    }

    /// The binding.
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// See [`Session::new`].
    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Acquire)
    }

    /// Receiver side: moves on to a newer sender incarnation (never back).
    pub fn advance_incarnation(&self, incarnation: u64) {
        self.incarnation.fetch_max(incarnation, Ordering::AcqRel);
    }

    /// Frames handed to the channel and not yet processed.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The inbox capacity in frames.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many more frames the inbox can take now: the credit a receiver
    /// advertises in its acks.
    pub fn credit(&self) -> u32 {
        self.capacity
            .saturating_sub(self.queued())
            .min(u32::MAX as usize) as u32
    }

    /// The session's counters.
    pub fn counters(&self) -> &SessionCounters {
        &self.counters
    }

    /// Checks `frame`, which arrived from `path`, against the binding and
    /// hands it to the inbox, or says why not (handing the frame back).
    /// Never blocks.
    pub fn admit(&self, path: &PathId, frame: Frame) -> Result<(), (Refusal, Frame)> {
        match self.check(path, &frame) {
            Ok(permit) => {
                self.counters.admitted.fetch_add(1, Ordering::Relaxed);
                self.inbox.deliver(path, frame, permit);
                Ok(())
            }
            Err(r) => Err((r, frame)),
        }
    }

    fn check(&self, path: &PathId, frame: &Frame) -> Result<Permit, Refusal> {
        if path.peer != self.binding.peer {
            self.counters.not_bound.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal {
                code: codes::NOT_BOUND,
                reason: "stream is bound to another peer",
            });
        }
        let incarnation = match frame {
            Frame::Data(d) => {
                if crate::vocab::DeliveryClass::from_code(d.delivery).is_none() {
                    self.counters.bad.fetch_add(1, Ordering::Relaxed);
                    return Err(Refusal {
                        code: codes::BAD_FRAME,
                        reason: "unknown delivery class",
                    });
                }
                Some(d.incarnation)
            }
            Frame::Ack(a) => Some(a.incarnation),
            _ => None,
        };
        if let Some(inc) = incarnation {
            let current = self.incarnation();
            let stale = match self.binding.side {
                Side::Sender => inc != current,
                Side::Receiver => inc < current,
            };
            if stale {
                self.counters.stale.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal {
                    code: codes::STALE_INCARNATION,
                    reason: "stale sender incarnation",
                });
            }
        }
        let permit = if matches!(frame, Frame::Data(_)) {
            // Only data frames are queued for the channel's actor; acks and
            // rejects are handled inline by the inbox.
            let before = self.queued.fetch_add(1, Ordering::AcqRel);
            if before >= self.capacity {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                self.counters.busy.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal {
                    code: codes::BUSY,
                    reason: "stream inbox full",
                });
            }
            Permit(Some(self.queued.clone()))
        } else {
            Permit::none()
        };
        Ok(permit)
    }
}

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

use crate::sync::LockRecover;
use crate::vocab::{ChannelKind, NodeId, PathId};
use crate::wire::Frame;

/// Reject codes of the stream-session layer (`docs/wire.md` §7), defined
/// with every other code in [`crate::wire::codes::stream`].
pub use crate::wire::codes::stream as codes;

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

/// How many peers' foreign frames a session remembers (the oldest is
/// forgotten first).
pub const MAX_FOREIGN_PEERS: usize = 8;

/// Frames a session refused because they came from a peer other than the
/// one the stream is bound to (for a sync subscriber: a second node
/// claiming to own the document), for `explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignFrames {
    /// The peer that sent them.
    pub peer: NodeId,
    /// How many were refused.
    pub frames: u64,
    /// The reject code each was answered with ([`codes::NOT_BOUND`]).
    pub code: u16,
    /// The order of its latest refusal among this session's refusals
    /// (larger is later).
    pub last: u64,
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
    /// Peers whose frames were refused as not bound (at most
    /// [`MAX_FOREIGN_PEERS`]).
    foreign: std::sync::Mutex<Vec<ForeignFrames>>,
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
            foreign: std::sync::Mutex::new(Vec::new()),
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

    /// The peers whose frames were refused as not bound, latest first.
    pub fn foreign(&self) -> Vec<ForeignFrames> {
        let mut v = self.foreign.lock_recover().clone();
        v.sort_by_key(|f| std::cmp::Reverse(f.last));
        v
    }

    /// [`Session::foreign`] as the routing explanation's
    /// [`crate::routing::RefusedPeer`]s.
    pub fn refused_peers(&self) -> Vec<crate::routing::RefusedPeer> {
        self.foreign()
            .into_iter()
            .map(|f| crate::routing::RefusedPeer {
                peer: f.peer,
                frames: f.frames,
                code: f.code,
                bound_to: self.binding.peer.clone(),
            })
            .collect()
    }

    fn note_foreign(&self, peer: &NodeId, order: u64) {
        let mut list = self.foreign.lock_recover();
        if let Some(f) = list.iter_mut().find(|f| &f.peer == peer) {
            f.frames += 1;
            f.last = order;
            return;
        }
        if list.len() >= MAX_FOREIGN_PEERS
            && let Some(oldest) = (0..list.len()).min_by_key(|&i| list[i].last)
        {
            list.swap_remove(oldest);
        }
        list.push(ForeignFrames {
            peer: peer.clone(),
            frames: 1,
            code: codes::NOT_BOUND,
            last: order,
        });
    }

    fn check(&self, path: &PathId, frame: &Frame) -> Result<Permit, Refusal> {
        if path.peer != self.binding.peer {
            let n = self.counters.not_bound.fetch_add(1, Ordering::Relaxed) + 1;
            self.note_foreign(&path.peer, n);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::PathKind;
    use crate::wire::Reject;

    fn frame() -> Frame {
        Frame::Reject(Reject {
            stream: None,
            message_id: None,
            code: 0,
            reason: String::new(),
        })
    }

    #[test]
    fn foreign_frames_are_counted_per_peer_and_the_oldest_peer_is_forgotten() {
        let binding = Binding {
            peer: NodeId::new("hub"),
            kind: ChannelKind::Sync,
            side: Side::Sender,
        };
        let s = Session::new(binding, Arc::new(|_: &PathId, _, _| {}), 4, 1);
        let from = |p: &str| PathId::new(p, PathKind::Quic);
        assert!(s.admit(&from("hub"), frame()).is_ok());
        for _ in 0..3 {
            let (r, _) = s.admit(&from("evil"), frame()).unwrap_err();
            assert_eq!(r.code, codes::NOT_BOUND);
        }
        let f = s.foreign();
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].peer.as_str(), f[0].frames), ("evil", 3));
        // More peers than the bound: the one refused longest ago goes.
        for i in 0..MAX_FOREIGN_PEERS {
            let _ = s.admit(&from(&format!("p{i}")), frame());
        }
        let f = s.foreign();
        assert_eq!(f.len(), MAX_FOREIGN_PEERS);
        assert!(f.iter().all(|x| x.peer.as_str() != "evil"), "{f:?}");
        assert_eq!(f[0].peer.as_str(), format!("p{}", MAX_FOREIGN_PEERS - 1));
        let r = s.refused_peers();
        assert_eq!(r[0].bound_to.as_str(), "hub");
        assert_eq!(s.counters().not_bound.load(Ordering::Relaxed), 11);
    }
}

//! The send queue of one traffic class towards one peer: its budget and
//! what happens over it (`DESIGN.md` §5, `docs/limits.md` §1).
//!
//! Owns the per-class policy only — which frames wait, which are refused
//! to the local producer and which are dropped — as a pure
//! [`QueueState`] (times are passed in) behind a thin [`ClassQueue`]
//! shell that wakes the class's write loop. A control or route frame is
//! never dropped once queued: over budget, the *new* frame is refused
//! ([`SendError::Full`](crate::transports::SendError::Full), backpressure
//! on the producer). A sync, integration or media-control frame over
//! budget makes room by dropping the *oldest* queued frames, and one
//! that waited past its class's `stale_after` is dropped instead of
//! written; both are counted.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::QueueBudget;
use crate::sync::lock;
use crate::vocab::TrafficClass;

/// What a class's queue does with a frame that would exceed its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverBudget {
    /// Refuse the new frame to its producer (`SendError::Full`); nothing
    /// queued is dropped. Control ("never drop") and route ("backpressure
    /// the producer").
    Refuse,
    /// Drop the oldest queued frames until the new one fits (sync,
    /// integration, media control: the newest state matters most).
    DropOldest,
}

/// The budget and over-budget behaviour of one traffic class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassBudget {
    /// Frames and bytes that may wait per peer.
    pub budget: QueueBudget,
    /// What happens over the budget.
    pub over: OverBudget,
    /// A frame of a [`OverBudget::DropOldest`] class that waited longer is
    /// dropped instead of written (`None`: never). Ignored for `Refuse`
    /// classes, whose frames are never dropped.
    pub stale_after: Option<Duration>,
}

impl ClassBudget {
    const fn new(frames: usize, mib: usize, over: OverBudget, stale_secs: u64) -> Self {
        Self {
            budget: QueueBudget {
                frames,
                bytes: mib * 1024 * 1024,
            },
            over,
            stale_after: Some(Duration::from_secs(stale_secs)),
        }
    }
}

/// One [`ClassBudget`] per [`TrafficClass`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassBudgets([ClassBudget; 5]);

impl Default for ClassBudgets {
    /// `DESIGN.md` §5: control 256 frames / 8 MiB, never dropped; media
    /// control 256 / 8 MiB, oldest dropped, stale after 30 s; route
    /// 4096 / 64 MiB, backpressure; sync 512 / 8 MiB, oldest dropped,
    /// stale after 60 s; integration 1024 / 16 MiB, oldest dropped, stale
    /// after 120 s.
    fn default() -> Self {
        use OverBudget::{DropOldest, Refuse};
        Self([
            ClassBudget::new(256, 8, Refuse, 30),
            ClassBudget::new(256, 8, DropOldest, 30),
            ClassBudget::new(4096, 64, Refuse, 45),
            ClassBudget::new(512, 8, DropOldest, 60),
            ClassBudget::new(1024, 16, DropOldest, 120),
        ])
    }
}

impl ClassBudgets {
    /// The same budget for every class, each refusing over it (no drops).
    pub fn uniform(budget: QueueBudget) -> Self {
        Self(
            [ClassBudget {
                budget,
                over: OverBudget::Refuse,
                stale_after: None,
            }; 5],
        )
    }

    /// The budget of `class`.
    pub fn get(&self, class: TrafficClass) -> ClassBudget {
        self.0[class.code() as usize]
    }

    /// These budgets with `class`'s replaced.
    pub fn with(mut self, class: TrafficClass, budget: ClassBudget) -> Self {
        self.0[class.code() as usize] = budget;
        self
    }

    /// These budgets with only `class`'s frame and byte counts replaced.
    pub fn with_budget(self, class: TrafficClass, budget: QueueBudget) -> Self {
        let b = ClassBudget {
            budget,
            ..self.get(class)
        };
        self.with(class, b)
    }
}

/// A frame [`QueueState::push`] could not queue (the queue is unchanged).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The class refuses over its budget, or the frame alone exceeds it.
    Full,
    /// The writer ended (stream or connection gone).
    Closed,
}

/// The queued frames of one class, pure: every change takes `now`.
#[derive(Debug)]
pub struct QueueState {
    budget: ClassBudget,
    frames: VecDeque<(Instant, Bytes)>,
    bytes: usize,
    /// Taken by the writer and not yet [`Self::written`]: they still count
    /// against the budget (a reader that never drains holds them).
    in_flight: (usize, usize),
    closed: bool,
}

impl QueueState {
    /// An empty queue with `budget`.
    pub fn new(budget: ClassBudget) -> Self {
        Self {
            budget,
            frames: VecDeque::new(),
            bytes: 0,
            in_flight: (0, 0),
            closed: false,
        }
    }

    /// Queues `frame` at `now`; `Ok(n)` with the number of older frames
    /// dropped to make room (only for [`OverBudget::DropOldest`]).
    pub fn push(&mut self, frame: Bytes, now: Instant) -> Result<usize, Refused> {
        if self.closed {
            return Err(Refused::Closed);
        }
        let b = self.budget.budget;
        if b.frames == 0 || frame.len() > b.bytes {
            return Err(Refused::Full);
        }
        let over = |s: &Self| {
            s.frames.len() + s.in_flight.0 + 1 > b.frames
                || s.bytes + s.in_flight.1 + frame.len() > b.bytes
        };
        let mut dropped = 0;
        if over(self) {
            // Only queued frames can make room: those being written stay.
            let room = self.in_flight.0 < b.frames && self.in_flight.1 + frame.len() <= b.bytes;
            if self.budget.over == OverBudget::Refuse || !room {
                return Err(Refused::Full);
            }
            while over(self) {
                let Some((_, old)) = self.frames.pop_front() else {
                    break;
                };
                self.bytes -= old.len();
                dropped += 1;
            }
        }
        self.bytes += frame.len();
        self.frames.push_back((now, frame));
        Ok(dropped)
    }

    /// Moves up to `max` frames into `out`, oldest first; returns how many
    /// stale frames (queued before `now - stale_after`, drop classes only)
    /// were dropped instead.
    pub fn take(&mut self, out: &mut Vec<Bytes>, max: usize, now: Instant) -> usize {
        let stale = match (self.budget.over, self.budget.stale_after) {
            (OverBudget::DropOldest, Some(after)) => now.checked_sub(after),
            _ => None,
        };
        let mut dropped = 0;
        while out.len() < max {
            let Some((at, f)) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= f.len();
            if stale.is_some_and(|s| at < s) {
                dropped += 1;
            } else {
                self.in_flight.0 += 1;
                self.in_flight.1 += f.len();
                out.push(f);
            }
        }
        dropped
    }

    /// The writer is done with `frames` taken frames of `bytes` in total
    /// (written, or lost with their stream).
    pub fn written(&mut self, frames: usize, bytes: usize) {
        self.in_flight.0 = self.in_flight.0.saturating_sub(frames);
        self.in_flight.1 = self.in_flight.1.saturating_sub(bytes);
    }

    /// Refuses every later push and forgets what is queued.
    pub fn close(&mut self) {
        self.closed = true;
        self.frames.clear();
        self.bytes = 0;
    }

    /// Whether [`Self::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Frames and bytes waiting or being written.
    pub fn depth(&self) -> (usize, usize) {
        (
            self.frames.len() + self.in_flight.0,
            self.bytes + self.in_flight.1,
        )
    }
}

/// Frames dropped by a class queue, for the transport's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Drops {
    /// Dropped to make room (over budget).
    pub oldest: usize,
    /// Dropped as stale at write time.
    pub stale: usize,
}

/// A [`QueueState`] shared by producers and the class's write loop.
pub(super) struct ClassQueue {
    state: Mutex<QueueState>,
    ready: Notify,
}

impl ClassQueue {
    pub(super) fn new(budget: ClassBudget) -> Self {
        Self {
            state: Mutex::new(QueueState::new(budget)),
            ready: Notify::new(),
        }
    }

    /// Queues `frame`; `Ok(dropped)` as [`QueueState::push`].
    pub(super) fn push(&self, frame: Bytes) -> Result<usize, Refused> {
        let r = lock(&self.state).push(frame, Instant::now());
        if r.is_ok() {
            self.ready.notify_one();
        }
        r
    }

    /// Waits until frames are queued (or the queue is closed) and moves up
    /// to `max` of them into `out`; `None` once closed.
    pub(super) async fn take(
        &self,
        out: &mut Vec<Bytes>,
        max: usize,
        drops: &mut Drops,
    ) -> Option<()> {
        loop {
            {
                let mut s = lock(&self.state);
                if s.is_closed() {
                    return None;
                }
                drops.stale += s.take(out, max, Instant::now());
                if !out.is_empty() {
                    return Some(());
                }
            }
            self.ready.notified().await;
        }
    }

    /// See [`QueueState::written`].
    pub(super) fn written(&self, frames: usize, bytes: usize) {
        lock(&self.state).written(frames, bytes);
    }

    pub(super) fn close(&self) {
        lock(&self.state).close();
        self.ready.notify_one();
    }

    pub(super) fn is_closed(&self) -> bool {
        lock(&self.state).is_closed()
    }

    pub(super) fn depth(&self) -> (usize, usize) {
        lock(&self.state).depth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    fn budget(frames: usize, bytes: usize, over: OverBudget) -> ClassBudget {
        ClassBudget {
            budget: QueueBudget { frames, bytes },
            over,
            stale_after: Some(Duration::from_secs(10)),
        }
    }

    #[test]
    fn a_refusing_class_keeps_what_it_queued_and_refuses_the_new_frame() {
        let t = Instant::now();
        let mut q = QueueState::new(budget(2, 100, OverBudget::Refuse));
        assert_eq!(q.push(frame(10), t), Ok(0));
        assert_eq!(q.push(frame(10), t), Ok(0));
        assert_eq!(q.push(frame(10), t), Err(Refused::Full));
        assert_eq!(q.depth(), (2, 20));
        // Nor is a frame dropped for its age: control is never dropped.
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out, 10, t + Duration::from_secs(60)), 0);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_drop_oldest_class_makes_room_by_frames_and_by_bytes() {
        let t = Instant::now();
        let mut q = QueueState::new(budget(3, 100, OverBudget::DropOldest));
        for i in 0..3u8 {
            q.push(Bytes::from(vec![i; 10]), t).unwrap();
        }
        assert_eq!(q.push(Bytes::from(vec![3u8; 10]), t), Ok(1));
        // 3 × 10 queued; a 90-byte frame needs two more out.
        assert_eq!(q.push(Bytes::from(vec![4u8; 90]), t), Ok(2));
        let mut out = Vec::new();
        q.take(&mut out, 10, t);
        let firsts: Vec<u8> = out.iter().map(|b| b[0]).collect();
        assert_eq!(firsts, vec![3, 4], "the newest frames are kept, in order");
        assert_eq!(q.depth(), (2, 100), "being written");
        q.written(2, 100);
        assert_eq!(q.depth(), (0, 0));
    }

    #[test]
    fn a_frame_larger_than_the_whole_budget_is_refused_without_dropping() {
        let t = Instant::now();
        let mut q = QueueState::new(budget(8, 100, OverBudget::DropOldest));
        q.push(frame(50), t).unwrap();
        assert_eq!(q.push(frame(101), t), Err(Refused::Full));
        assert_eq!(q.depth(), (1, 50));
    }

    #[test]
    fn stale_frames_of_a_drop_class_are_dropped_at_write_time() {
        let t = Instant::now();
        let mut q = QueueState::new(budget(8, 1000, OverBudget::DropOldest));
        q.push(Bytes::from_static(b"old"), t).unwrap();
        q.push(Bytes::from_static(b"new"), t + Duration::from_secs(5))
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out, 10, t + Duration::from_secs(11)), 1);
        assert_eq!(out, vec![Bytes::from_static(b"new")]);
    }

    #[test]
    fn frames_being_written_count_until_written() {
        let t = Instant::now();
        let mut q = QueueState::new(budget(2, 100, OverBudget::DropOldest));
        q.push(frame(10), t).unwrap();
        q.push(frame(10), t).unwrap();
        let mut out = Vec::new();
        q.take(&mut out, 10, t);
        assert_eq!(q.depth(), (2, 20));
        // Nothing queued to drop: the writer holds both.
        assert_eq!(q.push(frame(10), t), Err(Refused::Full));
        q.written(2, 20);
        assert_eq!(q.push(frame(10), t), Ok(0));
    }

    #[test]
    fn take_respects_its_maximum_and_a_closed_queue_refuses() {
        let t = Instant::now();
        let mut q = QueueState::new(budget(8, 1000, OverBudget::Refuse));
        for _ in 0..5 {
            q.push(frame(1), t).unwrap();
        }
        let mut out = Vec::new();
        q.take(&mut out, 3, t);
        assert_eq!((out.len(), q.depth()), (3, (5, 5)));
        q.written(3, 3);
        assert_eq!(q.depth(), (2, 2));
        q.close();
        assert_eq!(q.push(frame(1), t), Err(Refused::Closed));
        assert_eq!(q.depth(), (0, 0));
    }

    #[test]
    fn defaults_follow_the_design_table() {
        let d = ClassBudgets::default();
        let c = d.get(TrafficClass::Control);
        assert_eq!((c.budget.frames, c.over), (256, OverBudget::Refuse));
        let r = d.get(TrafficClass::Route);
        assert_eq!(
            (r.budget.frames, r.budget.bytes, r.over),
            (4096, 64 << 20, OverBudget::Refuse)
        );
        let s = d.get(TrafficClass::Sync);
        assert_eq!((s.budget.frames, s.over), (512, OverBudget::DropOldest));
        let i = d.get(TrafficClass::Integration);
        assert_eq!(
            (i.budget.frames, i.budget.bytes, i.over),
            (1024, 16 << 20, OverBudget::DropOldest)
        );
        assert_eq!(i.stale_after, Some(Duration::from_secs(120)));
    }
}

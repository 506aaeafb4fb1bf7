//! Group commit across callers: many threads' durable writes share one
//! transaction and one fsync.
//!
//! Owns only the hand-off: a caller queues its operation and either becomes
//! the *leader* (no commit is running: it takes every queued operation,
//! commits them together and hands each caller its result) or a
//! *follower* (a commit is running: it waits, and its operation goes into
//! the next commit, with everything else that queued meanwhile). No thread
//! of its own and no timer: under load the batches grow by themselves, and
//! an idle store commits a lone operation at once. Pure of redb; the
//! backend passes the function that commits a batch.

use std::sync::{Arc, Condvar, Mutex};

use crate::sync::LockRecover;

/// One caller's queued operation and where its result goes.
struct Slot<Op, Out> {
    op: Op,
    result: Arc<Done<Out>>,
}

/// A result, once the batch it was in has committed.
struct Done<Out> {
    value: Mutex<Option<Out>>,
    ready: Condvar,
}

struct Queue<Op, Out> {
    slots: Vec<Slot<Op, Out>>,
    /// A leader is committing now.
    committing: bool,
}

/// Coalesces concurrent operations into shared commits.
pub struct GroupCommitter<Op, Out> {
    queue: Mutex<Queue<Op, Out>>,
}

impl<Op, Out> Default for GroupCommitter<Op, Out> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                slots: Vec::new(),
                committing: false,
            }),
        }
    }
}

impl<Op, Out> GroupCommitter<Op, Out> {
    /// Runs `op` in the next group commit and returns its result.
    /// `commit` is called by whichever caller leads, with every operation
    /// queued at that moment (in queue order), and must return one result
    /// per operation in the same order.
    pub fn run(&self, op: Op, commit: impl Fn(Vec<Op>) -> Vec<Out>) -> Out {
        let done = Arc::new(Done {
            value: Mutex::new(None),
            ready: Condvar::new(),
        });
        let lead = {
            let mut q = self.queue.lock_recover();
            q.slots.push(Slot {
                op,
                result: done.clone(),
            });
            !std::mem::replace(&mut q.committing, true)
        };
        if lead {
            // Lead until the queue is empty: whoever queued while a commit
            // ran waits for the next one, which this caller runs for them.
            loop {
                let slots = {
                    let mut q = self.queue.lock_recover();
                    if q.slots.is_empty() {
                        q.committing = false;
                        break;
                    }
                    std::mem::take(&mut q.slots)
                };
                let (ops, results): (Vec<Op>, Vec<Arc<Done<Out>>>) =
                    slots.into_iter().map(|s| (s.op, s.result)).unzip();
                let outs = commit(ops);
                for (r, out) in results.into_iter().zip(outs) {
                    *r.value.lock_recover() = Some(out);
                    r.ready.notify_one();
                }
            }
        }
        let mut value = done.value.lock_recover();
        loop {
            if let Some(v) = value.take() {
                return v;
            }
            value = done
                .ready
                .wait(value)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_lone_operation_commits_at_once() {
        let g: GroupCommitter<u32, u32> = GroupCommitter::default();
        assert_eq!(g.run(7, |ops| ops.iter().map(|o| o * 2).collect()), 14);
    }

    #[test]
    fn concurrent_operations_share_commits_and_each_gets_its_result() {
        let g: Arc<GroupCommitter<u32, u32>> = Arc::default();
        let commits = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16u32)
            .map(|i| {
                let (g, commits) = (g.clone(), commits.clone());
                std::thread::spawn(move || {
                    g.run(i, |ops| {
                        commits.fetch_add(1, Ordering::SeqCst);
                        // A commit takes a while, as an fsync does.
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        ops.iter().map(|o| o + 100).collect()
                    })
                })
            })
            .collect();
        let mut got: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, (100..116).collect::<Vec<_>>());
        let n = commits.load(Ordering::SeqCst);
        assert!(n < 16, "16 concurrent operations took {n} commits");
    }
}

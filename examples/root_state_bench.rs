//! Root-state figures: the cost of persisting relay dedupe in `root.redb`
//! (the default backend with a state directory) against the same table in
//! memory only, in one run.
//!
//! Per round, 20 000 relayed class-A commands and their 20 000 replies
//! (256 B each) go through [`RootState::relay_verdict`]:
//! 1. **serving path**: verdicts/s as the root's serving task sees them
//!    (memory only vs persisted: the latter also queues the writes);
//! 2. **durable**: verdicts/s until the writer thread has committed every
//!    queued write (`flush`), i.e. the sustained rate the file keeps up with.
//!
//! Every figure is the median [min–max] of `ROOT_STATE_BENCH_RUNS` (default
//! 7) rounds. Run with `cargo run --release --example root_state_bench`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use interlocking::root::state::{DedupeBounds, LocalState, RootState};
use interlocking::vocab::{NodeId, StreamId};

const N: u64 = 20_000;

fn bounds() -> DedupeBounds {
    DedupeBounds {
        capacity: 65_536,
        max_bytes: 64 << 20,
        ttl: Duration::from_secs(30),
        hold: Duration::from_secs(2),
    }
}

/// Runs N commands and N replies through `s`; returns the elapsed time.
async fn drive(s: &LocalState, round: u64) -> Duration {
    let (m, h) = (NodeId::new("m"), NodeId::new("h"));
    let stream = StreamId::new("command:m/h");
    let frame = Bytes::from(vec![7u8; 256]);
    let t0 = Instant::now();
    for i in 0..N {
        let id = round * N + i;
        let now = Instant::now();
        s.relay_verdict((m.clone(), h.clone(), stream.clone(), 1, id), &frame, now)
            .await;
        s.relay_verdict((h.clone(), m.clone(), stream.clone(), 1, id), &frame, now)
            .await;
    }
    t0.elapsed()
}

fn rate(d: Duration) -> f64 {
    (2 * N) as f64 / d.as_secs_f64()
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:>9.0} [{:.0}–{:.0}]",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let runs: u64 = std::env::var("ROOT_STATE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let (mut mem, mut served, mut durable) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..runs {
        let m = LocalState::in_memory(bounds());
        mem.push(rate(drive(&m, round).await));
        let dir = tempfile::tempdir().expect("tempdir");
        let p = LocalState::open(dir.path(), bounds()).expect("state opens");
        let t0 = Instant::now();
        served.push(rate(drive(&p, round).await));
        p.flush();
        durable.push(rate(t0.elapsed()));
        assert_eq!(p.health().dropped_writes, 0, "write queue overflowed");
        p.close_blocking();
    }
    println!("relay dedupe verdicts/s (command + reply), median [min–max] of {runs} rounds:");
    println!("  memory only             {}", summary(mem));
    println!("  root.redb, serving path {}", summary(served));
    println!("  root.redb, durable      {}", summary(durable));
}

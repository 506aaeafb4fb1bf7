//! Whole-system simulation (issue #16): seeded schedules of loss,
//! duplication, reordering, partitions, flapping, actor kills and hub
//! restarts on the same store, over the memory transport in virtual time
//! (driver: `tests/common/sim.rs`). After each run: every accepted command
//! applied exactly once and every reply right.
//!
//! `SIM_SEEDS` seeds (default 50) from `SIM_FIRST` (default 1); a failing
//! seed is printed with the command that replays it alone:
//! `SIM_SEED=123 cargo test --test sim_system`. Soak: `SIM_SEEDS=5000`.

use std::collections::BTreeMap;

mod common;
use common::child::env_u64;
use common::sim::{SimConfig, run};

fn one(seed: u64) -> common::sim::SimReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let report = rt.block_on(run(seed, SimConfig::default()));
    // Dropping the runtime cancels what the nodes left behind.
    drop(rt);
    report
}

#[test]
fn seeded_faults_and_crashes_apply_every_accepted_command_exactly_once() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => {
            let first = env_u64("SIM_FIRST", 1);
            (first..first + env_u64("SIM_SEEDS", 50)).collect()
        }
    };
    let started = std::time::Instant::now();
    let (mut accepted, mut events) = (0u64, BTreeMap::new());
    let mut failovers = Vec::new();
    for &seed in &seeds {
        let result = std::panic::catch_unwind(|| one(seed));
        let report = match result {
            Ok(r) => r,
            Err(panic) => {
                eprintln!(
                    "sim seed {seed} failed; replay: SIM_SEED={seed} cargo test --test sim_system"
                );
                std::panic::resume_unwind(panic);
            }
        };
        let bad = report.lost + report.duplicated + report.wrong_replies;
        assert!(
            bad == 0,
            "sim seed {seed}: {report:?}; replay: SIM_SEED={seed} cargo test --test sim_system"
        );
        accepted += report.accepted;
        failovers.extend(report.failovers);
        for (k, n) in report.events {
            *events.entry(k).or_insert(0u32) += n;
        }
    }
    failovers.sort();
    let pct = |p: usize| failovers.get(failovers.len() * p / 100).copied();
    eprintln!(
        "sim: {} seeds, {accepted} commands accepted, 0 lost, 0 duplicated, events {events:?}; \
         cut direct path left after p50 {:?} / p99 {:?} / max {:?} (bound {:?}); in {:?}",
        seeds.len(),
        pct(50),
        pct(99),
        failovers.last(),
        common::sim::failover_bound(),
        started.elapsed()
    );
}

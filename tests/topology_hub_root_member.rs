//! The hub–root–member topology with chaos on real loopback QUIC: members
//! joined through the root send class-A commands to the hub while their
//! direct paths are blackholed and restored. Nothing is lost, nothing is
//! applied twice, streams fail over to the relay and come back, and no
//! voluntary return happens inside a freeze window.

#[path = "demo/topology.rs"]
mod topology;

use topology::{Options, hub_root_member};

/// The two topologies here are real networks of up to 22 nodes in one
/// process: run one at a time so neither starves the other's probes.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_the_direct_path_loses_nothing_and_returns_after_the_freeze() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = std::env::var("TOPOLOGY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut opts = Options::new(seed);
    opts.chaos_cycles = 2;
    // Dark for well over the 0.65–0.75 s detection (more on a loaded
    // machine), so that replies over the relay while dark are certain; a
    // shorter cut may be healed before the first relayed reply, or undone.
    opts.dark_ms = (2_000, 3_000);
    let log = std::sync::Mutex::new(Vec::new());
    let report = hub_root_member(opts, |l| log.lock().unwrap().push(l))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: topology failed: {e}"));
    let log = log.into_inner().unwrap().join("\n");
    let ctx = format!("seed {seed}\n{log}\n{report:?}");
    assert!(report.commands_sent > 100, "{ctx}");
    assert_eq!(report.commands_applied, report.commands_sent, "{ctx}");
    assert_eq!(report.lost, 0, "{ctx}");
    assert_eq!(report.duplicates_applied, 0, "{ctx}");
    assert_eq!(report.blackholings, 2, "{ctx}");
    assert!(
        report.failovers >= 1,
        "at least one failover to relay: {ctx}"
    );
    assert!(
        report.returns_to_direct >= 1,
        "at least one return to direct: {ctx}"
    );
    assert_eq!(report.returns_inside_freeze, 0, "{ctx}");
    assert!(
        report.replies_while_dark > 0,
        "commands were answered over the relay while the direct path was dark: {ctx}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_members_joining_at_once_settle_on_the_direct_path() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = std::env::var("TOPOLOGY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    let mut opts = Options::new(seed);
    opts.members = 20;
    opts.interval = std::time::Duration::from_millis(100);
    opts.routing = interlocking::routing::RoutingConfig::default();
    opts.duration = std::time::Duration::from_millis(500);
    let log = std::sync::Mutex::new(Vec::new());
    let report = hub_root_member(opts, |l| log.lock().unwrap().push(l)).await;
    let log = log.into_inner().unwrap().join("\n");
    let report = report.unwrap_or_else(|e| panic!("seed {seed}: {e}\n{log}"));
    eprintln!(
        "20 members settled on direct {} ms after sending began",
        report.settle_ms
    );
    assert_eq!(report.lost, 0, "seed {seed}\n{log}");
}

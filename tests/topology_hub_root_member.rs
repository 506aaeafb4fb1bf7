//! The hub–root–member topology with chaos on real loopback QUIC: members
//! joined through the root send class-A commands to the hub while their
//! direct paths are blackholed and restored. Nothing is lost, nothing is
//! applied twice, streams fail over to the relay and come back, and no
//! voluntary return happens inside a freeze window.

use interlocking::topology::{Options, hub_root_member};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_the_direct_path_loses_nothing_and_returns_after_the_freeze() {
    let seed = std::env::var("TOPOLOGY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut opts = Options::new(seed);
    opts.chaos_cycles = 2;
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

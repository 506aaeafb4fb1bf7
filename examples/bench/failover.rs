//! Part 4: failover in the hub–root–member topology under the library's
//! defaults.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Blackholings of the direct path in the failover measurement.
pub(crate) const BLACKHOLINGS: usize = 20;

/// What [`failover`] measured.
pub(crate) struct Failover {
    /// Per blackholing: ms from the blackholing to the first command
    /// applied via the relay.
    pub(crate) ms: Vec<f64>,
    /// Commands accepted but never applied.
    pub(crate) lost: u64,
    /// Per blackholing: ms from the blackholing to the routing decision
    /// that left the direct path.
    pub(crate) decision_ms: Vec<f64>,
}

/// Part 4: the hub–root–member topology (`tests/demo/topology.rs`) with
/// one member per blackholing, each sending a class-A command every 100 ms
/// under the **default** routing policy and the library's default probe
/// and QUIC settings. Members are blackholed in turn
/// (one at a time, 0.2–0.6 s apart, dark for 1.5–2 s); each sample is the
/// time from the blackholing to the first reply of a command applied via
/// the relay. One member per blackholing keeps flap damping (a per-stream
/// penalty) out of the figure; the topology test covers repeated flaps.
pub(crate) async fn failover(
    _ca: &CertificateAuthority,
    blackholings: usize,
) -> Result<Option<Failover>, BoxError> {
    let mut opts = crate::topology::Options::new(11);
    opts.members = blackholings;
    opts.chaos_cycles = blackholings as u32;
    opts.interval = Duration::from_millis(100);
    opts.routing = interlocking::routing::RoutingConfig::default();
    opts.quiet_ms = (200, 600);
    opts.dark_ms = (1_500, 2_000);
    opts.round_robin = true;
    opts.wait_for_return = false;
    let report = crate::topology::hub_root_member(opts, |_| {})
        .await
        .map_err(|e| -> BoxError { e.to_string().into() })?;
    eprintln!(
        "failover: {} blackholings, {} failovers, {} sent, {} applied, {} duplicates",
        report.blackholings,
        report.failovers,
        report.commands_sent,
        report.commands_applied,
        report.duplicates_applied
    );
    Ok(Some(Failover {
        ms: report
            .failover_samples_ms
            .iter()
            .map(|m| *m as f64)
            .collect(),
        lost: report.lost + report.duplicates_applied,
        decision_ms: report
            .detection_samples_ms
            .iter()
            .map(|m| *m as f64)
            .collect(),
    }))
}

//! The JSON views of the control API, built from a running [`Runtime`]
//! (`docs/control.md` documents every shape).
//!
//! Owns the readiness tree and the named degraded modes (`DESIGN.md` §6):
//! what each branch's status is and why, and which modes are active. Reads
//! only; the gauges of `/metrics` are refreshed here at scrape time.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::app::runtime::{LoggedDecision, Role, Runtime, unix_ms};
use crate::channels::media::MediaReadiness;
use crate::routing::Explanation;
use crate::sync::lock;
use crate::vocab::{NodeId, PathKind, StreamId};

/// One branch of the readiness tree.
#[derive(Clone, Debug, Serialize)]
pub struct Branch {
    /// `ok`, `degraded`, `down` or `not_configured`.
    pub status: &'static str,
    /// Why.
    pub reason: String,
    /// Whether this branch can make the node not ready.
    pub gates: bool,
}

fn branch(status: &'static str, reason: impl Into<String>, gates: bool) -> Branch {
    Branch {
        status,
        reason: reason.into(),
        gates,
    }
}

/// A named degraded mode in force.
#[derive(Clone, Debug, Serialize)]
pub struct Mode {
    /// `root_control_lost`, `route_lost`, `sync_path_lost` or (a root)
    /// `cluster_state_lost`.
    pub name: &'static str,
    /// What the node does while in it.
    pub effect: String,
}

/// `GET /readyz`.
#[derive(Clone, Debug, Serialize)]
pub struct Readiness {
    /// The node id.
    pub node: NodeId,
    /// Ready: no gating branch is `down`.
    pub ready: bool,
    /// Degraded modes in force.
    pub modes: Vec<Mode>,
    /// The tree: core, root_control, route, sync, media.
    pub branches: BTreeMap<&'static str, Branch>,
}

/// Builds the readiness tree.
pub fn readiness(rt: &Runtime) -> Readiness {
    let mut b = BTreeMap::new();
    let mut modes = Vec::new();
    match &rt.role {
        Role::Root(root) => {
            b.insert(
                "core",
                branch(
                    "ok",
                    format!(
                        "root serving on {} (join {})",
                        root.local_addr(),
                        root.join_addr()
                    ),
                    true,
                ),
            );
            b.insert(
                "root_control",
                branch("ok", "this process is the root", true),
            );
            b.insert(
                "route",
                branch("not_configured", "a root relays; it has no streams", true),
            );
            let h = root.state_health();
            b.insert(
                "state",
                if h.ready {
                    branch("ok", format!("root state backend {} answers", h.backend), true)
                } else {
                    modes.push(Mode {
                        name: "cluster_state_lost",
                        effect: "connected nodes keep relaying from this root's mirrors; joins and revocations are refused until NATS is back".into(),
                    });
                    branch(
                        "degraded",
                        format!("root state backend {} unreachable", h.backend),
                        true,
                    )
                },
            );
        }
        Role::Node(n) => {
            let running = n.is_running();
            b.insert(
                "core",
                if running {
                    branch(
                        "ok",
                        format!(
                            "actor tree running; store {}",
                            rt.config.state_dir.join("node.redb").display()
                        ),
                        true,
                    )
                } else {
                    branch("down", "the node's actor tree has stopped", true)
                },
            );
            b.insert(
                "root_control",
                match n.root_connected() {
                    Some(true) => branch("ok", "connected to the root", true),
                    Some(false) => {
                        modes.push(Mode {
                            name: "root_control_lost",
                            effect: "local execution continues; class-A commands stay in the durable outbox until a path acks them; no trust is minted (no joins or certificate renewals) until the root is back".into(),
                        });
                        branch("degraded", "root control lost: the relay link to the root is down", true)
                    }
                    None => branch("not_configured", "relay transport disabled", true),
                },
            );
            let lost: Vec<String> = n
                .senders
                .keys()
                .filter(|s| current_path(rt, s).is_none())
                .map(|s| s.to_string())
                .collect();
            b.insert(
                "route",
                if n.senders.is_empty() {
                    branch("not_configured", "no streams sent from this node", true)
                } else if lost.is_empty() {
                    branch("ok", format!("{} streams routed", n.senders.len()), true)
                } else {
                    modes.push(Mode {
                        name: "route_lost",
                        effect: "new relayed sessions deferred; commands of unrouted streams wait in the outbox".into(),
                    });
                    branch("degraded", format!("no path for {}", lost.join(", ")), true)
                },
            );
        }
    }
    b.insert(
        "sync",
        branch(
            "not_configured",
            "no sync channels configured (sync path lost would persist locally)",
            true,
        ),
    );
    b.insert("media", media_branch(rt.media().map(|m| m.readiness())));
    let ready = b.values().all(|x| !(x.gates && x.status == "down"));
    Readiness {
        node: rt.config.id.clone(),
        ready,
        modes,
        branches: b,
    }
}

/// The media branch: its own, and never gating (`docs/media.md` §5) —
/// degraded or failed media leaves the node ready.
pub fn media_branch(media: Option<MediaReadiness>) -> Branch {
    match media {
        None => branch(
            "not_configured",
            "no media channels configured; media never gates readiness",
            false,
        ),
        Some(m) if m.failed > 0 => branch(
            "down",
            format!(
                "{} media streams ended with a failure, {} running",
                m.failed, m.running
            ),
            false,
        ),
        Some(m) if m.degraded > 0 => branch(
            "degraded",
            format!(
                "{} of {} media streams below full tier",
                m.degraded, m.running
            ),
            false,
        ),
        Some(m) => branch(
            "ok",
            format!("{} media streams at full tier", m.running),
            false,
        ),
    }
}

/// The path the decision log last recorded for `stream`.
fn current_path(rt: &Runtime, stream: &StreamId) -> Option<String> {
    rt.log.of(stream).last().and_then(|d| d.next.clone())
}

/// A candidate path in a stream view.
#[derive(Clone, Debug, Serialize)]
pub struct CandidateView {
    /// `kind@peer`.
    pub path: String,
    /// Health.
    pub health: String,
    /// Last RTT (ms).
    pub rtt_ms: Option<f64>,
    /// Missed probes in a row.
    pub misses: u32,
    /// Healthy for (ms).
    pub healthy_for_ms: Option<u64>,
}

/// `GET /control/streams/{id}`: the routing authority's explanation.
#[derive(Clone, Debug, Serialize)]
pub struct StreamView {
    /// The stream.
    pub stream: StreamId,
    /// Active path (`kind@peer`).
    pub path: Option<String>,
    /// Active path kind.
    pub kind: Option<PathKind>,
    /// Active path's health.
    pub path_health: Option<String>,
    /// The assessment.
    pub assessment: String,
    /// Freeze deadline (unix ms), if any.
    pub freeze_until_ms: Option<u64>,
    /// Remaining freeze (ms), if frozen.
    pub frozen_for_ms: Option<u64>,
    /// Off the preferred path for (ms).
    pub on_fallback_for_ms: Option<u64>,
    /// Candidates in preference order.
    pub candidates: Vec<CandidateView>,
    /// The decision log, oldest first (`why`).
    pub decisions: Vec<LoggedDecision>,
    /// Peers whose frames on the stream were refused because it is bound
    /// to another peer (a second node claiming a sync document), latest
    /// first.
    pub refused: Vec<RefusedView>,
    /// The explanation as text.
    pub text: String,
}

/// A refused peer in a stream view.
#[derive(Clone, Debug, Serialize)]
pub struct RefusedView {
    /// The peer whose frames were refused.
    pub peer: String,
    /// How many.
    pub frames: u64,
    /// The reject code sent back.
    pub code: u16,
    /// The peer the stream is bound to.
    pub bound_to: String,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn stream_view(e: &Explanation) -> StreamView {
    let now = Instant::now();
    StreamView {
        stream: e.stream.clone(),
        path: e.path.as_ref().map(|p| p.to_string()),
        kind: e.path.as_ref().map(|p| p.kind),
        path_health: e.path_health.map(|h| h.as_str().to_string()),
        assessment: e.assessment.as_str().to_string(),
        freeze_until_ms: e.freeze_until.map(unix_ms),
        frozen_for_ms: e.freeze_until.filter(|f| *f > e.at).map(|f| ms(f - e.at)),
        on_fallback_for_ms: e.on_fallback_for.map(ms),
        candidates: e
            .candidates
            .iter()
            .map(|c| CandidateView {
                path: c.path.to_string(),
                health: c.health.as_str().to_string(),
                rtt_ms: c.rtt.map(|r| r.as_secs_f64() * 1000.0),
                misses: c.misses,
                healthy_for_ms: c
                    .healthy_since
                    .map(|s| ms(now.saturating_duration_since(s))),
            })
            .collect(),
        decisions: e.decisions.iter().map(LoggedDecision::from).collect(),
        refused: e
            .refused
            .iter()
            .map(|r| RefusedView {
                peer: r.peer.to_string(),
                frames: r.frames,
                code: r.code,
                bound_to: r.bound_to.to_string(),
            })
            .collect(),
        text: e.to_string(),
    }
}

async fn explain(rt: &Runtime, stream: &StreamId) -> Result<Option<Explanation>, String> {
    let Some(n) = rt.node() else {
        return Ok(None);
    };
    let routing = n
        .routing()
        .ok_or("the routing authority is not running (restarting?)")?;
    let mut e = ractor::call_t!(
        routing,
        crate::routing::authority::RoutingMsg::Explain,
        5_000,
        stream.clone()
    )
    .map_err(|e| format!("routing authority did not answer: {e}"))?;
    if let Some(e) = e.as_mut()
        && let Some(session) = lock(&n.node).as_ref().and_then(|node| node.session(stream))
    {
        e.refused = session.refused_peers();
    }
    Ok(e)
}

/// The view of one stream, `None` if the routing authority does not know it.
pub async fn stream(rt: &Runtime, id: &StreamId) -> Result<Option<StreamView>, String> {
    Ok(explain(rt, id).await?.as_ref().map(stream_view))
}

/// One row of `GET /control/routes`.
#[derive(Clone, Debug, Serialize)]
pub struct RouteRow {
    /// The stream.
    pub stream: StreamId,
    /// `send` (routed here) or `serve` (replies on the arrival path).
    pub side: &'static str,
    /// The other end.
    pub peer: Option<NodeId>,
    /// Active path.
    pub path: Option<String>,
    /// Active path kind.
    pub kind: Option<PathKind>,
    /// Assessment (send side).
    pub assessment: Option<String>,
    /// Remaining freeze (ms).
    pub frozen_for_ms: Option<u64>,
    /// Path switches so far.
    pub switches: u64,
    /// Failovers so far (in the decision log window).
    pub failovers: u64,
    /// The last decision as one line.
    pub last: Option<String>,
}

/// `GET /control/routes`.
pub async fn routes(rt: &Runtime) -> Vec<RouteRow> {
    let Some(n) = rt.node() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (stream, s) in &n.senders {
        let log = rt.log.of(stream);
        let e = explain(rt, stream).await.ok().flatten();
        let v = e.as_ref().map(stream_view);
        rows.push(RouteRow {
            stream: stream.clone(),
            side: "send",
            peer: Some(s.target.clone()),
            path: v.as_ref().and_then(|v| v.path.clone()),
            kind: v.as_ref().and_then(|v| v.kind),
            assessment: v.as_ref().map(|v| v.assessment.clone()),
            frozen_for_ms: v.as_ref().and_then(|v| v.frozen_for_ms),
            switches: log.last().map_or(0, |d| d.switches),
            failovers: log.iter().filter(|d| d.rule == "failover").count() as u64,
            last: log.last().map(|d| d.line.clone()),
        });
    }
    for stream in n.served.keys() {
        rows.push(RouteRow {
            stream: stream.clone(),
            side: "serve",
            peer: None,
            path: None,
            kind: None,
            assessment: None,
            frozen_for_ms: None,
            switches: 0,
            failovers: 0,
            last: None,
        });
    }
    rows
}

/// `GET /control/timeline`: every stream's logged decisions.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    /// Now (unix ms), to place the log on a time axis.
    pub now_ms: u64,
    /// When the process started (unix ms).
    pub started_ms: u64,
    /// Decisions by stream, oldest first.
    pub streams: BTreeMap<StreamId, Vec<LoggedDecision>>,
}

/// Builds the timeline.
pub fn timeline(rt: &Runtime) -> Timeline {
    Timeline {
        now_ms: now_ms(),
        started_ms: unix_ms(rt.started),
        streams: rt.log.all(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One row of `GET /control/peers`.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRow {
    /// The peer.
    pub node: NodeId,
    /// Path kinds connected now.
    pub paths: Vec<PathKind>,
}

/// `GET /control/peers`.
#[derive(Clone, Debug, Serialize)]
pub struct Peers {
    /// Root: nodes connected to it; node: the root link.
    pub root: Option<RootLink>,
    /// Connected peers.
    pub peers: Vec<PeerRow>,
}

/// The node's link to its root.
#[derive(Clone, Debug, Serialize)]
pub struct RootLink {
    /// The root's id.
    pub id: NodeId,
    /// Its address.
    pub addr: String,
    /// Whether the relay link is up.
    pub connected: bool,
}

/// Builds the peers view.
pub fn peers(rt: &Runtime) -> Peers {
    match &rt.role {
        Role::Root(root) => Peers {
            root: None,
            peers: root
                .online()
                .into_iter()
                .map(|node| PeerRow {
                    node,
                    paths: vec![PathKind::Quic],
                })
                .collect(),
        },
        Role::Node(n) => {
            let mut by: BTreeMap<NodeId, Vec<PathKind>> = BTreeMap::new();
            if let Some(q) = lock(&n.quic).as_ref() {
                for p in q.peers() {
                    by.entry(p).or_default().push(PathKind::Quic);
                }
            }
            let relay = lock(&n.relay).clone();
            if let Some(r) = &relay {
                for p in r.peers() {
                    by.entry(p).or_default().push(PathKind::Relay);
                }
            }
            let root = rt.config.root.as_ref();
            if let Some(root) = root {
                // The relay link's own QUIC connection to the root is not a peer path.
                by.remove(&root.id);
            }
            Peers {
                root: root.map(|r| RootLink {
                    id: r.id.clone(),
                    addr: r.addr.to_string(),
                    connected: relay.as_ref().is_some_and(|x| x.root_connected()),
                }),
                peers: by
                    .into_iter()
                    .map(|(node, paths)| PeerRow { node, paths })
                    .collect(),
            }
        }
    }
}

/// A sending channel in `GET /control/channels`.
#[derive(Clone, Debug, Serialize)]
pub struct SenderRow {
    /// The stream.
    pub stream: StreamId,
    /// Its target.
    pub target: NodeId,
    /// Entries pending in the outbox (in flight or waiting for credit).
    pub outbox_pending: usize,
    /// Class-A entries stored in the redb outbox.
    pub outbox_stored: Option<usize>,
    /// Data frames sent (first sends and resends).
    pub transmits: u64,
    /// Reject frames received.
    pub rejects: u64,
    /// The stream's session inbox: frames queued / capacity.
    pub inbox: Option<InboxView>,
}

/// A stream session's inbox and what it admitted or refused.
#[derive(Clone, Debug, Serialize)]
pub struct InboxView {
    /// Frames handed to the channel, not yet processed.
    pub queued: usize,
    /// Inbox capacity (frames).
    pub capacity: usize,
    /// Frames admitted so far.
    pub admitted: u64,
    /// Frames refused: from another peer, inbox full, stale incarnation, malformed.
    pub refused: u64,
}

fn inbox(n: &crate::app::runtime::NodeParts, stream: &StreamId) -> Option<InboxView> {
    let session = lock(&n.node).as_ref()?.session(stream)?;
    let c = session.counters();
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Some(InboxView {
        queued: session.queued(),
        capacity: session.capacity(),
        admitted: g(&c.admitted),
        refused: g(&c.not_bound) + g(&c.busy) + g(&c.stale) + g(&c.bad),
    })
}

/// A served channel in `GET /control/channels`.
#[derive(Clone, Debug, Serialize)]
pub struct ServedRow {
    /// The stream.
    pub stream: StreamId,
    /// The handler's name.
    pub handler: String,
    /// Commands applied.
    pub applied: u64,
    /// Frames refused as undecodable.
    pub undecodable: u64,
    /// Dedupe records stored for the stream (every sender incarnation).
    pub dedupe_records: Option<usize>,
    /// The stream's session inbox.
    pub inbox: Option<InboxView>,
}

/// `GET /control/channels`.
#[derive(Clone, Debug, Serialize)]
pub struct Channels {
    /// Whether new commands are refused.
    pub draining: bool,
    /// Sending channels.
    pub senders: Vec<SenderRow>,
    /// Served channels.
    pub served: Vec<ServedRow>,
}

/// Builds the channels view (reads the store on a blocking thread).
pub async fn channels(rt: &Runtime) -> Channels {
    let Some(n) = rt.node() else {
        return Channels {
            draining: rt.is_draining(),
            senders: Vec::new(),
            served: Vec::new(),
        };
    };
    let store = n.store.clone();
    let counts = tokio::task::spawn_blocking(move || {
        use crate::store::Store;
        let mut outbox: BTreeMap<StreamId, usize> = BTreeMap::new();
        let mut dedupe: BTreeMap<StreamId, usize> = BTreeMap::new();
        let ok_outbox = store.pending_outbox().map(|p| {
            for r in p {
                *outbox.entry(r.stream).or_default() += 1;
            }
        });
        // Served streams keep a dedupe keyspace per sender incarnation,
        // `STREAM#INCARNATION`: counted under the stream.
        let ok_dedupe = store.dedupe_load().map(|d| {
            for r in d {
                let s = r.stream.as_str();
                let base = s.rsplit_once('#').map_or(s, |(b, _)| b);
                *dedupe.entry(StreamId::new(base)).or_default() += 1;
            }
        });
        (
            ok_outbox.is_ok().then_some(outbox),
            ok_dedupe.is_ok().then_some(dedupe),
        )
    })
    .await
    .unwrap_or((None, None));
    Channels {
        draining: rt.is_draining(),
        senders: n
            .senders
            .iter()
            .map(|(stream, s)| {
                let st = s.sender.stats();
                SenderRow {
                    stream: stream.clone(),
                    target: s.target.clone(),
                    outbox_pending: st.pending.load(Ordering::Relaxed),
                    outbox_stored: counts
                        .0
                        .as_ref()
                        .map(|c| c.get(stream).copied().unwrap_or(0)),
                    transmits: st.transmits.load(Ordering::Relaxed),
                    rejects: st.rejects.load(Ordering::Relaxed),
                    inbox: inbox(n, stream),
                }
            })
            .collect(),
        served: n
            .served
            .iter()
            .map(|(stream, s)| ServedRow {
                stream: stream.clone(),
                handler: s.handler.clone(),
                applied: s.handle.applied(),
                undecodable: s.handle.undecodable(),
                dedupe_records: counts
                    .1
                    .as_ref()
                    .map(|c| c.get(stream).copied().unwrap_or(0)),
                inbox: inbox(n, stream),
            })
            .collect(),
    }
}

/// `GET /control/status`: the summary `ctl status` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The node id.
    pub node: NodeId,
    /// Its role.
    pub role: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Whether new commands are refused.
    pub draining: bool,
    /// Certificate expiry (unix ms), hub and member.
    pub cert_expires_ms: Option<u64>,
    /// The readiness tree.
    pub readiness: Readiness,
    /// The routes.
    pub routes: Vec<RouteRow>,
}

/// Builds the status.
pub async fn status(rt: &Runtime) -> Status {
    Status {
        node: rt.config.id.clone(),
        role: rt.config.role.to_string(),
        uptime_s: rt.started.elapsed().as_secs_f64(),
        draining: rt.is_draining(),
        cert_expires_ms: rt.node().map(|n| {
            crate::sync::lock(&n.cert_expires)
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        }),
        readiness: readiness(rt),
        routes: routes(rt).await,
    }
}

/// Reports a QUIC endpoint's refusals (`interlocking_quic_refusals_total`).
fn quic_refusals(c: &crate::transports::quic::QuicCounters) {
    for (reason, n) in c.refusals() {
        metrics::counter!("interlocking_quic_refusals_total", "reason" => reason).absolute(n);
    }
}

/// Sets the gauges `/metrics` reports from counters the parts keep.
pub fn update_gauges(rt: &Runtime) {
    match &rt.role {
        Role::Root(root) => {
            let c = root.counters();
            metrics::counter!("interlocking_root_joins_total", "result" => "granted")
                .absolute(c.joins_granted);
            metrics::counter!("interlocking_root_joins_total", "result" => "refused")
                .absolute(c.joins_refused);
            metrics::counter!("interlocking_root_relayed_frames_total").absolute(c.relayed);
            metrics::counter!("interlocking_root_relay_refused_total").absolute(c.relay_refused);
            metrics::counter!("interlocking_root_deduped_total").absolute(c.deduped);
            metrics::gauge!("interlocking_root_online_nodes").set(root.online().len() as f64);
            metrics::counter!("interlocking_root_restamped_total").absolute(c.restamped);
            quic_refusals(&root.quic_counters());
        }
        Role::Node(n) => {
            for (stream, s) in &n.senders {
                let st = s.sender.stats();
                metrics::gauge!("interlocking_outbox_depth", "stream" => stream.to_string())
                    .set(st.pending.load(Ordering::Relaxed) as f64);
                metrics::counter!("interlocking_command_transmits_total", "stream" => stream.to_string())
                    .absolute(st.transmits.load(Ordering::Relaxed));
            }
            for (stream, s) in &n.served {
                metrics::counter!("interlocking_commands_applied_total", "stream" => stream.to_string())
                    .absolute(s.handle.applied());
            }
            metrics::counter!("interlocking_refused_unknown_stream_total")
                .absolute(n.refused_unknown_stream());
            for (code, count) in n.refusals() {
                metrics::counter!("interlocking_dispatch_refusals_total", "code" => format!("{code:#06x}"))
                    .absolute(count);
            }
            metrics::gauge!("interlocking_root_connected")
                .set(f64::from(u8::from(n.root_connected().unwrap_or(false))));
            let quic = crate::sync::lock(&n.quic).clone();
            if let Some(q) = quic {
                quic_refusals(&q.counters());
            }
            for (stream, s) in &n.served {
                metrics::gauge!("interlocking_dedupe_records", "stream" => stream.to_string())
                    .set(s.handle.dedupe_records() as f64);
            }
        }
    }
    metrics::gauge!("interlocking_ready").set(f64::from(u8::from(readiness(rt).ready)));
}

#[cfg(test)]
mod media_tests {
    use super::*;

    #[test]
    fn media_trouble_is_its_own_branch_and_never_gates() {
        let failed = MediaReadiness {
            running: 0,
            degraded: 0,
            failed: 2,
        };
        let degraded = MediaReadiness {
            running: 3,
            degraded: 1,
            failed: 0,
        };
        let ok = MediaReadiness {
            running: 1,
            degraded: 0,
            failed: 0,
        };
        for (m, status) in [
            (None, "not_configured"),
            (Some(failed), "down"),
            (Some(degraded), "degraded"),
            (Some(ok), "ok"),
        ] {
            let b = media_branch(m);
            assert_eq!(b.status, status);
            assert!(!b.gates, "media must never gate readiness: {b:?}");
        }
    }
}

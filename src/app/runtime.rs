//! What a running node keeps for its operators: the parts the control API
//! reads (node or root, store, senders, served streams, transports, fault
//! handle) and the bounded per-stream decision log.
//!
//! Owns the [`Runtime`] shared between the application and its control
//! API, the decision log ([`DecisionLog`], at most `decision_log` entries
//! per stream and at most [`MAX_LOGGED_STREAMS`] streams), draining, and the
//! stop request. It decides nothing about routes or commands.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::ActorRef;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::actors::node::Node;
use crate::channels::command::{CommandError, CommandSender, SendOptions, ServeHandle};
use crate::config::Config;
use crate::root::RootHandle;
use crate::routing::Decision;
use crate::routing::authority::RoutingMsg;
use crate::store::RedbStore;
use crate::sync::lock;
use crate::transports::quic::QuicTransport;
use crate::transports::quic::faults::FaultHandle;
use crate::transports::relay::RelayTransport;
use crate::vocab::{NodeId, StreamId};

/// Most streams the decision log keeps (the oldest-touched is dropped).
pub const MAX_LOGGED_STREAMS: usize = 1024;

/// Wall-clock milliseconds of a monotonic instant.
pub fn unix_ms(at: Instant) -> u64 {
    let (now_i, now_s) = (Instant::now(), SystemTime::now());
    let t = if at <= now_i {
        now_s.checked_sub(now_i - at).unwrap_or(UNIX_EPOCH)
    } else {
        now_s + (at - now_i)
    };
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One logged route decision, in wall-clock time.
#[derive(Clone, Debug, Serialize)]
pub struct LoggedDecision {
    /// When (unix ms).
    pub at_ms: u64,
    /// Path before (`kind@peer`).
    pub previous: Option<String>,
    /// Path after.
    pub next: Option<String>,
    /// The rule applied.
    pub rule: String,
    /// What triggered it.
    pub cause: String,
    /// The assessment after it.
    pub assessment: String,
    /// Until when voluntary switches are held (unix ms).
    pub freeze_until_ms: Option<u64>,
    /// Whether the active path changed.
    pub switch: bool,
    /// Switches of the stream so far.
    pub switches: u64,
    /// The decision as one line.
    pub line: String,
}

impl From<&Decision> for LoggedDecision {
    fn from(d: &Decision) -> Self {
        Self {
            at_ms: unix_ms(d.at),
            previous: d.previous.as_ref().map(|p| p.to_string()),
            next: d.next.as_ref().map(|p| p.to_string()),
            rule: d.rule.as_str().to_string(),
            cause: d.cause.to_string(),
            assessment: d.assessment.as_str().to_string(),
            freeze_until_ms: d.freeze_until.map(unix_ms),
            switch: d.is_switch(),
            switches: d.switches,
            line: d.to_string(),
        }
    }
}

/// The last decisions of every stream, bounded.
#[derive(Debug)]
pub struct DecisionLog {
    per_stream: usize,
    streams: Mutex<HashMap<StreamId, VecDeque<LoggedDecision>>>,
}

impl DecisionLog {
    /// Keeps `per_stream` decisions of each stream.
    pub fn new(per_stream: usize) -> Self {
        Self {
            per_stream: per_stream.max(1),
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Records `d`.
    pub fn push(&self, d: &Decision) {
        let mut streams = lock(&self.streams);
        if !streams.contains_key(&d.stream) && streams.len() >= MAX_LOGGED_STREAMS {
            let oldest = streams
                .iter()
                .min_by_key(|(_, v)| v.back().map_or(0, |l| l.at_ms))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                streams.remove(&k);
            }
        }
        let log = streams.entry(d.stream.clone()).or_default();
        if log.len() >= self.per_stream {
            log.pop_front();
        }
        log.push_back(d.into());
    }

    /// The decisions of `stream`, oldest first.
    pub fn of(&self, stream: &StreamId) -> Vec<LoggedDecision> {
        lock(&self.streams)
            .get(stream)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every stream's decisions, by stream.
    pub fn all(&self) -> BTreeMap<StreamId, Vec<LoggedDecision>> {
        lock(&self.streams)
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect()
    }
}

/// A configured sender: the stream's target and its JSON handle.
pub struct SenderEntry {
    /// The serving node.
    pub target: NodeId,
    /// The sender.
    pub sender: CommandSender<Value, Value>,
}

/// A configured served stream.
pub struct ServedEntry {
    /// The handler's name.
    pub handler: String,
    /// The server's counters.
    pub handle: Arc<ServeHandle>,
}

/// What kind of process this is.
pub enum Role {
    /// A root service.
    Root(RootHandle),
    /// A hub or member node.
    Node(NodeParts),
}

/// The parts of a hub or member the control API reads.
pub struct NodeParts {
    /// The node (taken at shutdown).
    pub node: Mutex<Option<Node>>,
    /// Its redb store.
    pub store: Arc<RedbStore>,
    /// The bound QUIC transport (latest incarnation).
    pub quic: Arc<Mutex<Option<Arc<QuicTransport>>>>,
    /// The bound relay transport (latest incarnation).
    pub relay: Arc<Mutex<Option<Arc<RelayTransport>>>>,
    /// The sidecar owning the remote session, if configured.
    pub sidecar: Option<SidecarParts>,
    /// The fault injector beneath QUIC, if configured.
    pub faults: Option<FaultHandle>,
    /// Configured senders by stream.
    pub senders: BTreeMap<StreamId, SenderEntry>,
    /// Configured served streams.
    pub served: BTreeMap<StreamId, ServedEntry>,
    /// When the node's certificate expires (moved on by each renewal).
    pub cert_expires: Arc<Mutex<SystemTime>>,
    /// The certificate renewal task (aborted at shutdown).
    pub renewal: tokio::task::AbortHandle,
    /// The task applying the root's revocation lists (aborted at shutdown).
    pub revocations: tokio::task::AbortHandle,
}

/// A hub's sidecar, as the control API shows it.
pub struct SidecarParts {
    /// Its directory (socket, secret, `status.json`).
    pub dir: std::path::PathBuf,
    /// Its diagnostics as its last status frame on the local session said
    /// (`transports::sidecar::STATUS_SIGNAL`).
    pub diagnostics: Arc<Mutex<Option<crate::transports::sidecar::SidecarStatus>>>,
    /// Its supervisor, when the hub runs it as a child (taken at shutdown).
    pub child: Mutex<Option<super::sidecar::ChildSupervisor>>,
}

impl SidecarParts {
    /// The sidecar's own diagnostics and, for a child, its supervision.
    pub fn view(&self) -> serde_json::Value {
        // The local session's frames first; the status file only before
        // the first one (or with no session up).
        let framed = lock(&self.diagnostics).clone();
        let source = if framed.is_some() { "frame" } else { "file" };
        let status = framed.or_else(|| crate::transports::sidecar::SidecarStatus::read(&self.dir));
        let child = lock(&self.child).as_ref().map(|c| c.state());
        serde_json::json!({
            "dir": self.dir.display().to_string(),
            "mode": if child.is_some() { "child" } else { "attach" },
            "status": status,
            "status_source": source,
            "child": child,
        })
    }
}

impl NodeParts {
    /// The running routing authority.
    pub fn routing(&self) -> Option<ActorRef<RoutingMsg>> {
        lock(&self.node)
            .as_ref()
            .and_then(|n| n.routing_authority())
    }

    /// Whether the node's actor tree runs.
    pub fn is_running(&self) -> bool {
        lock(&self.node).as_ref().is_some_and(|n| n.is_running())
    }

    /// Whether the relay transport is connected to the root.
    pub fn root_connected(&self) -> Option<bool> {
        lock(&self.relay).as_ref().map(|r| r.root_connected())
    }

    /// Frames the node's stream dispatch refused, by reject code.
    pub fn refusals(&self) -> BTreeMap<u16, u64> {
        lock(&self.node)
            .as_ref()
            .map(|n| n.refusals())
            .unwrap_or_default()
    }

    /// Frames refused because their stream is unknown here.
    pub fn refused_unknown_stream(&self) -> u64 {
        lock(&self.node)
            .as_ref()
            .map_or(0, |n| n.refused_unknown_stream())
    }
}

/// Why a command could not be sent through the runtime.
#[derive(Debug, thiserror::Error)]
pub enum SendFailure {
    /// The node is draining or stopping: no new commands.
    #[error("the node is draining: no new commands are accepted")]
    Draining,
    /// No sender of that stream is configured here.
    #[error("no sender of stream {0} is configured on this node")]
    UnknownStream(StreamId),
    /// The channel refused or failed the command.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// No reply in time (the command stays in the outbox if class A).
    #[error("no reply within {0:?} (a class-A command stays in the outbox)")]
    Timeout(Duration),
}

/// The running process's shared state.
pub struct Runtime {
    /// The configuration it runs.
    pub config: Config,
    /// Root or node.
    pub role: Role,
    /// The decision log.
    pub log: Arc<DecisionLog>,
    /// When it started.
    pub started: Instant,
    draining: AtomicBool,
    stop: watch::Sender<Option<String>>,
    /// The node's media, once application code sets it (its readiness
    /// branch; never gating).
    media: std::sync::OnceLock<Arc<crate::channels::media::MediaHub>>,
}

impl Runtime {
    /// A runtime for `role`, started at `started`.
    pub fn new(config: Config, role: Role, log: Arc<DecisionLog>, started: Instant) -> Self {
        let (stop, _) = watch::channel(None);
        Self {
            config,
            role,
            log,
            started,
            draining: AtomicBool::new(false),
            stop,
            media: std::sync::OnceLock::new(),
        }
    }

    /// Attaches the node's media (`docs/media.md`) so the readiness tree
    /// shows its branch; false if media was attached before.
    pub fn set_media(&self, media: Arc<crate::channels::media::MediaHub>) -> bool {
        self.media.set(media).is_ok()
    }

    /// The node's media, if attached.
    pub fn media(&self) -> Option<&Arc<crate::channels::media::MediaHub>> {
        self.media.get()
    }

    /// The node parts, if this is a hub or member.
    pub fn node(&self) -> Option<&NodeParts> {
        match &self.role {
            Role::Node(n) => Some(n),
            Role::Root(_) => None,
        }
    }

    /// Asks the process to stop, with a reason.
    pub fn request_stop(&self, why: impl Into<String>) {
        let why = why.into();
        self.stop.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(why);
                true
            } else {
                false
            }
        });
    }

    /// Resolves when a stop was requested, with its reason.
    pub async fn stopped(&self) -> String {
        let mut rx = self.stop.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "stopped".into();
            }
        }
    }

    /// Whether new commands are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Sends `command` on the configured sender of `stream` and waits (up
    /// to `timeout`) for its reply.
    pub async fn send(
        &self,
        stream: &StreamId,
        command: Value,
        opts: SendOptions,
        timeout: Duration,
    ) -> Result<(u64, Value), SendFailure> {
        if self.is_draining() {
            return Err(SendFailure::Draining);
        }
        let entry = self
            .node()
            .and_then(|n| n.senders.get(stream))
            .ok_or_else(|| SendFailure::UnknownStream(stream.clone()))?;
        let receipt = entry.sender.send(command, opts).await?;
        let id = receipt.message_id();
        match tokio::time::timeout(timeout, receipt.reply()).await {
            Ok(r) => Ok((id, r?)),
            Err(_) => Err(SendFailure::Timeout(timeout)),
        }
    }

    /// Commands pending in every configured sender's outbox.
    pub fn outbox_pending(&self) -> usize {
        self.node().map_or(0, |n| {
            n.senders
                .values()
                .map(|s| s.sender.stats().pending.load(Ordering::Relaxed))
                .sum()
        })
    }

    /// Stops accepting commands, then waits (up to `timeout`) for every
    /// outbox to empty: no command pending in a sender, none left in the
    /// redb outbox (acked entries are removed there in batches, committed
    /// without fsync), and then one durable commit, so the empty outbox is
    /// what a restart finds. Returns the commands still pending.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.draining.store(true, Ordering::Release);
        let Some(n) = self.node() else { return 0 };
        let deadline = tokio::time::Instant::now() + timeout;
        let streams: Vec<StreamId> = n.senders.keys().cloned().collect();
        loop {
            let mut pending = self.outbox_pending();
            if pending == 0 {
                let (store, streams) = (n.store.clone(), streams.clone());
                pending = tokio::task::spawn_blocking(move || {
                    use crate::store::Store;
                    store.pending_outbox().map_or(usize::MAX, |p| {
                        p.iter().filter(|r| streams.contains(&r.stream)).count()
                    })
                })
                .await
                .unwrap_or(usize::MAX);
            }
            if pending == 0 {
                let store = n.store.clone();
                let durable = tokio::task::spawn_blocking(move || {
                    let txn = store.database().begin_write().map_err(|e| e.to_string())?;
                    txn.commit().map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                if let Err(e) = durable {
                    tracing::error!(error = %e, "drain: the final durable commit failed");
                    return 1;
                }
                return 0;
            }
            if tokio::time::Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Assessment, Cause, Rule};
    use crate::vocab::{ChannelKind, PathId, PathKind};

    fn decision(stream: &str, k: u64) -> Decision {
        Decision {
            stream: StreamId::new(stream),
            channel: ChannelKind::Command,
            at: Instant::now(),
            previous: None,
            next: Some(PathId::new("hub", PathKind::Quic)),
            rule: Rule::Initial,
            cause: Cause::Registered,
            attempt: k,
            switches: k,
            freeze_until: None,
            assessment: Assessment::Nominal,
        }
    }

    #[test]
    fn the_decision_log_keeps_the_last_decisions_per_stream() {
        let log = DecisionLog::new(3);
        for k in 0..10 {
            log.push(&decision("a", k));
        }
        log.push(&decision("b", 0));
        let a = log.of(&StreamId::new("a"));
        assert_eq!(a.iter().map(|d| d.switches).collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(log.of(&StreamId::new("b")).len(), 1);
        assert_eq!(a[0].next.as_deref(), Some("quic@hub"));
    }

    #[test]
    fn the_decision_log_bounds_its_streams() {
        let log = DecisionLog::new(1);
        for i in 0..(MAX_LOGGED_STREAMS + 10) {
            log.push(&decision(&format!("s{i}"), 0));
        }
        assert_eq!(log.all().len(), MAX_LOGGED_STREAMS);
    }
}

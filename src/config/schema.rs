//! The TOML schema of a node's configuration file, as serde reads it.
//!
//! Owns the raw shape only: every table refuses unknown keys, values that
//! need a semantic check (addresses, paths, durations, handler names) keep
//! their source span so [`super::resolve`] can name the line they came from.
//! `docs/config.md` lists every key with its default.

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[node]`: who this node is.
    pub node: RawNode,
    /// `[listen]`: where it listens.
    #[serde(default)]
    pub listen: RawListen,
    /// `[root]`: how a hub or member reaches the root.
    pub root: Option<RawRoot>,
    /// `[transports]`: which transports, probing, faults.
    #[serde(default)]
    pub transports: RawTransports,
    /// `[[peers]]`: nodes this node dials.
    #[serde(default)]
    pub peers: Vec<RawPeer>,
    /// `[routing.<kind>]`: policy overrides per channel kind.
    #[serde(default)]
    pub routing: RawRouting,
    /// `[[channels]]`: command streams served or sent on.
    #[serde(default)]
    pub channels: Vec<RawChannel>,
    /// `[diagnostics]`: the control API.
    #[serde(default)]
    pub diagnostics: RawDiagnostics,
    /// `[sidecar]`: a hub's remote session owned by a sidecar process.
    pub sidecar: Option<RawSidecar>,
    /// `[limits]`: what one outside peer can make the node hold.
    #[serde(default)]
    pub limits: super::limits::RawLimits,
}

/// `[sidecar]` (hub only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSidecar {
    /// `child` (the hub spawns and supervises it) or `attach` (started
    /// separately with `interlocking sidecar --config` on the same file).
    pub mode: RawSidecarMode,
    /// Its directory (socket, secret, status); default `<state_dir>/sidecar`.
    pub dir: Option<Spanned<String>>,
}

/// How a hub gets its sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawSidecarMode {
    /// Spawned and supervised by the hub.
    Child,
    /// Started separately; the hub attaches to its socket.
    Attach,
}

/// A node's role as written in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawRole {
    /// Admission, relay, rendezvous.
    Root,
    /// Runs handlers; members send to it.
    Hub,
    /// Sends commands to a hub.
    Member,
}

/// `[node]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// The node id (its certificate names it).
    pub id: Spanned<String>,
    /// root, hub or member.
    pub role: RawRole,
    /// Where identity, certificates, the CA (root) and the redb file live.
    pub state_dir: Spanned<String>,
}

/// `[listen]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// The QUIC listener (root: its node endpoint).
    pub quic: Option<Spanned<String>>,
    /// The root's join endpoint (root only).
    pub join: Option<Spanned<String>>,
}

/// `[root]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoot {
    /// The root's node id (default `root`).
    #[serde(default = "default_root_id")]
    pub id: String,
    /// The root's node endpoint (mutual TLS, relay); hub and member only.
    pub addr: Option<Spanned<String>>,
    /// The root's join endpoint; hub and member only.
    pub join: Option<Spanned<String>>,
    /// Hex SHA-256 of the root CA certificate, checked against the token
    /// and the stored identity when set.
    pub ca_fingerprint: Option<Spanned<String>>,
    /// The join token for the first start (or `run --token`).
    pub join_token: Option<Spanned<String>>,
    /// Root only: share root state with the other roots of a cluster
    /// (`docs/cluster.md`).
    pub cluster: Option<Spanned<RawCluster>>,
    /// Root only: how long the node certificates it issues are valid,
    /// e.g. `24h` (nodes renew at two thirds of it).
    pub cert_lifetime: Option<Spanned<String>>,
    /// Root only: how long a join token it issues stays usable, e.g. `15m`.
    pub token_ttl: Option<Spanned<String>>,
}

/// `[root] cluster = { nats = "...", name = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// The NATS server URL.
    pub nats: String,
    /// This root's name in the cluster.
    pub name: String,
}

fn default_root_id() -> String {
    "root".into()
}

fn yes() -> bool {
    true
}

/// `[transports]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransports {
    /// Bind the direct QUIC transport (default true).
    #[serde(default = "yes")]
    pub quic: bool,
    /// Bind the relay transport through the root (default true).
    #[serde(default = "yes")]
    pub relay: bool,
    /// Probe interval, e.g. `500ms`.
    pub probe_interval: Option<Spanned<String>>,
    /// Probe timeout, e.g. `1s`.
    pub probe_timeout: Option<Spanned<String>>,
    /// `[transports.faults]`: put the QUIC socket behind a fault injector.
    pub faults: Option<RawFaults>,
}

impl Default for RawTransports {
    fn default() -> Self {
        Self {
            quic: true,
            relay: true,
            probe_interval: None,
            probe_timeout: None,
            faults: None,
        }
    }
}

/// `[transports.faults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFaults {
    /// Seed of the random drops.
    #[serde(default)]
    pub seed: u64,
    /// Probability of dropping each sent datagram (0–1).
    #[serde(default)]
    pub loss: f64,
    /// Start blackholed.
    #[serde(default)]
    pub blackhole: bool,
}

/// `[[peers]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    /// The peer's node id.
    pub id: Spanned<String>,
    /// Its direct QUIC address (omit: relay only).
    pub quic: Option<Spanned<String>>,
    /// Also reach it through the root (default true).
    #[serde(default = "yes")]
    pub relay: bool,
}

/// `[routing]`: one optional table per channel kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// `[routing.command]`.
    pub command: Option<RawPolicy>,
    /// `[routing.sync]`.
    pub sync: Option<RawPolicy>,
    /// `[routing.media]`.
    pub media: Option<RawPolicy>,
    /// `[routing.event]`.
    pub event: Option<RawPolicy>,
    /// `[routing.presence]`.
    pub presence: Option<RawPolicy>,
}

/// Overrides of one channel kind's policy; unset keys keep the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Path kinds in preference order.
    pub order: Option<Spanned<Vec<String>>>,
    /// Freeze after a switch.
    pub freeze: Option<Spanned<String>>,
    /// Hold-down before returning to the preferred path.
    pub hold_down: Option<Spanned<String>>,
    /// Cap of the flap-damped freeze.
    pub flap_cap: Option<Spanned<String>>,
    /// Only direct path kinds.
    pub direct_only: Option<bool>,
    /// Degrade a stream on fallback for longer than this.
    pub max_on_fallback: Option<Spanned<String>>,
}

/// `[[channels]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    /// The stream id, e.g. `command:m1/hub`.
    pub stream: Spanned<String>,
    /// The channel kind; only `command` today.
    #[serde(default = "default_kind")]
    pub kind: Spanned<String>,
    /// Serve the stream here with this handler (hub side).
    pub handler: Option<Spanned<String>>,
    /// Serving: the one node allowed to send on the stream (default: the
    /// owner in the stream id, `command:OWNER/...`).
    pub peer: Option<Spanned<String>>,
    /// Send on the stream to this node (member side).
    pub target: Option<Spanned<String>>,
}

fn default_kind() -> Spanned<String> {
    Spanned::new(0..0, "command".into())
}

/// `[diagnostics]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiagnostics {
    /// The control API listener (omit: no control API).
    pub listen: Option<Spanned<String>>,
    /// Allow a listener off loopback (requires a token).
    #[serde(default)]
    pub allow_remote: bool,
    /// Bearer token every request must carry.
    pub token: Option<String>,
    /// File holding the bearer token.
    pub token_file: Option<Spanned<String>>,
    /// Enable `POST /control/faults` (tests and chaos drills only).
    #[serde(default)]
    pub fault_injection: bool,
    /// Decisions kept per stream for `why` and the dashboard.
    #[serde(default = "default_log")]
    pub decision_log: usize,
    /// Serve the dashboard at `/` (default true).
    #[serde(default = "yes")]
    pub dashboard: bool,
}

fn default_log() -> usize {
    64
}

impl Default for RawDiagnostics {
    fn default() -> Self {
        Self {
            listen: None,
            allow_remote: false,
            token: None,
            token_file: None,
            fault_injection: false,
            decision_log: default_log(),
            dashboard: true,
        }
    }
}

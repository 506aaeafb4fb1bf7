//! A node's configuration file: one TOML schema for a root, a hub or a
//! member (`docs/config.md`).
//!
//! Owns reading the file ([`Config::load`]), its syntax and schema check
//! (unknown keys and wrong types are refused) and its semantic check
//! (addresses, durations, the state directory, the control API's exposure),
//! turning every failure into a [`ConfigError`] that names the file, the
//! line, the column and the key: `node.toml:7:8: listen.quic: not a socket
//! address (ip:port): "localhost"`. Handler names are checked when the
//! application that registers handlers starts ([`crate::app`]), with the
//! location kept here ([`Location`]).
//!
//! Must not touch: sockets, the store, any running part of a node.

pub mod limits;
pub mod resolve;
pub mod schema;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::routing::RoutingConfig;
use crate::transports::probe::ProbeConfig;
use crate::vocab::{NodeId, Role, StreamId};

/// Where in a configuration file a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0: unknown).
    pub line: usize,
    /// 1-based column (0: unknown).
    pub col: usize,
    /// The dotted key, e.g. `channels[0].handler`.
    pub key: String,
}

/// A configuration that cannot be used, with where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// Where (line and column 0 when the problem is the file itself).
    pub at: Location,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at `at`.
    pub fn at(at: &Location, message: impl Into<String>) -> Self {
        Self {
            at: at.clone(),
            message: message.into(),
        }
    }

    fn render(&self) -> String {
        let a = &self.at;
        let mut s = a.file.display().to_string();
        if a.line > 0 {
            s.push_str(&format!(":{}:{}", a.line, a.col));
        }
        if !a.key.is_empty() {
            s.push_str(&format!(": {}", a.key));
        }
        format!("{s}: {}", self.message)
    }
}

/// How a hub or member reaches its root.
#[derive(Clone, Debug)]
pub struct RootTarget {
    /// The root's node id.
    pub id: NodeId,
    /// Its node endpoint (mutual TLS; relay).
    pub addr: SocketAddr,
    /// Its join endpoint.
    pub join: SocketAddr,
    /// The CA fingerprint the root must hold, if pinned.
    pub ca_fingerprint: Option<[u8; 32]>,
    /// The join token for the first start.
    pub join_token: Option<String>,
}

/// The fault-injecting socket beneath QUIC.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// Seed of the random drops.
    pub seed: u64,
    /// Drop probability of each sent datagram.
    pub loss: f64,
    /// Start blackholed.
    pub blackhole: bool,
}

/// Which transports a node binds.
#[derive(Clone, Debug)]
pub struct Transports {
    /// Direct QUIC.
    pub quic: bool,
    /// Relay through the root.
    pub relay: bool,
    /// Liveness probing of every path.
    pub probe: ProbeConfig,
    /// A fault injector beneath QUIC (also set when the control API's
    /// fault injection is enabled).
    pub faults: Option<Faults>,
}

/// A node this node dials.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its id.
    pub id: NodeId,
    /// Its direct QUIC address.
    pub quic: Option<SocketAddr>,
    /// Reach it through the root too.
    pub relay: bool,
}

/// What this node does on a channel.
#[derive(Clone, Debug)]
pub enum ChannelRole {
    /// Serve the stream with the handler of this name.
    Serve {
        /// The handler's registered name.
        handler: String,
        /// The one node allowed to send on the stream.
        peer: NodeId,
        /// Where the name was written.
        at: Location,
    },
    /// Send on the stream to `target`.
    Send {
        /// The serving node.
        target: NodeId,
    },
}

/// One configured channel.
#[derive(Clone, Debug)]
pub struct Channel {
    /// The stream.
    pub stream: StreamId,
    /// Served here or sent from here.
    pub role: ChannelRole,
}

/// The control API listener.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    /// Where it listens (`None`: no control API).
    pub listen: Option<SocketAddr>,
    /// Off-loopback allowed (then a token is required).
    pub allow_remote: bool,
    /// The bearer token requests must carry.
    pub token: Option<String>,
    /// `POST /control/faults` enabled.
    pub fault_injection: bool,
    /// Decisions kept per stream.
    pub decision_log: usize,
    /// Serve the dashboard.
    pub dashboard: bool,
}

/// How a hub reaches the root when a sidecar process owns the remote
/// session (`docs/sidecar.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarSettings {
    /// The hub spawns and supervises it (`true`), or attaches to one
    /// started separately.
    pub child: bool,
    /// Its directory: socket, secret, status.
    pub dir: PathBuf,
}

/// How long what a root issues stays valid; `None`: the
/// [`crate::root::RootConfig`] default (24 h certificates, 15 min tokens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Issuing {
    /// Validity of the node certificates it issues (nodes renew at two
    /// thirds of it, `docs/root.md` §2.3).
    pub cert_lifetime: Option<Duration>,
    /// How long a join token stays usable.
    pub token_ttl: Option<Duration>,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// The node id.
    pub id: NodeId,
    /// Root, hub or member.
    pub role: Role,
    /// The state directory (exists and is writable).
    pub state_dir: PathBuf,
    /// QUIC listener (root: node endpoint).
    pub listen_quic: SocketAddr,
    /// Root only: the join endpoint.
    pub listen_join: SocketAddr,
    /// Hub and member: the root.
    pub root: Option<RootTarget>,
    /// Root only: the cluster it shares state with (`[root] cluster`).
    pub cluster: Option<crate::root::cluster::ClusterConfig>,
    /// Root only: validity of what it issues (`[root] cert_lifetime`,
    /// `token_ttl`).
    pub issuing: Issuing,
    /// Transports.
    pub transports: Transports,
    /// Dialled peers.
    pub peers: Vec<Peer>,
    /// Routing policies (defaults with the file's overrides).
    pub routing: RoutingConfig,
    /// Channels.
    pub channels: Vec<Channel>,
    /// Control API.
    pub diagnostics: Diagnostics,
    /// Hub only: the sidecar owning its remote session, if any.
    pub sidecar: Option<SidecarSettings>,
    /// `[limits]`: connection, stream, frame, queue, inbox and dedupe bounds.
    pub limits: limits::Limits,
}

impl Config {
    /// Reads, parses and checks the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            at: Location {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                key: String::new(),
            },
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: schema::RawConfig = toml::from_str(text).map_err(|e| {
            let (line, col, key) = match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    (line, col, key_at(text, span.start, e.message()))
                }
                None => (0, 0, String::new()),
            };
            ConfigError {
                at: Location {
                    file: path.to_path_buf(),
                    line,
                    col,
                    key,
                },
                message: e.message().trim().to_string(),
            }
        })?;
        resolve::resolve(path, text, raw)
    }
}

/// Parses `250ms`, `2s`, `1.5s`, `15m`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration (e.g. 500ms, 2s, 15m): {s:?}"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("duration needs a unit (ms, s, m, h): {s:?}")),
    };
    let secs = n * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |i| offset - i - 1) + 1;
    (line, col)
}

/// The dotted key a parse error at `offset` is about: the table header
/// above it (arrays of tables indexed) and the key on its line, or the
/// field a "missing field" message names.
fn key_at(text: &str, offset: usize, message: &str) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for l in text[..line_end].lines() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    let field = if let Some(rest) = message.split("missing field `").nth(1) {
        rest.split('`').next().unwrap_or("").to_string()
    } else if !line.trim_start().starts_with('[') {
        line.split('=').next().unwrap_or("").trim().to_string()
    } else {
        String::new()
    };
    match (table.is_empty(), field.is_empty()) {
        (true, _) => field,
        (false, true) => table,
        (false, false) => format!("{table}.{field}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("x1s").is_err());
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn keys_name_table_and_field() {
        let text = "[node]\nid = 1\n[[channels]]\nstream = \"a\"\n[[channels]]\nbogus = 2\n";
        assert_eq!(
            key_at(text, text.find("1").unwrap(), "invalid type"),
            "node.id"
        );
        assert_eq!(
            key_at(text, text.find("bogus").unwrap(), "unknown field"),
            "channels[1].bogus"
        );
    }
}

//! The semantic check of a parsed configuration: from [`RawConfig`] to a
//! [`Config`] of typed values, or the first [`ConfigError`] with its key.
//!
//! Owns the rules no schema can state: addresses parse, durations have
//! units, the state directory can be created and written, a hub or member
//! names its root, a control API off loopback has `allow_remote` and a
//! token, each channel either serves or sends.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::schema::{RawConfig, RawPolicy, RawRole};
use super::{
    Channel, ChannelRole, Config, ConfigError, Diagnostics, Faults, Location, Peer, RootTarget,
    Transports, line_col, parse_duration,
};
use crate::root::cluster::ClusterConfig;
use crate::routing::{Policy, RoutingConfig};
use crate::transports::probe::ProbeConfig;
use crate::vocab::{NodeId, PathKind, Role, StreamId};

/// Builds locations for one file.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn loc(&self, span: Range<usize>, key: &str) -> Location {
        let (line, col) = if span.is_empty() && span.start == 0 {
            (0, 0)
        } else {
            line_col(self.text, span.start)
        };
        Location {
            file: self.path.to_path_buf(),
            line,
            col,
            key: key.to_string(),
        }
    }

    fn err<T>(
        &self,
        span: Range<usize>,
        key: &str,
        msg: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::at(&self.loc(span, key), msg))
    }

    fn addr(&self, v: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        v.get_ref().trim().parse().or_else(|_| {
            self.err(
                v.span(),
                key,
                format!("not a socket address (ip:port): {:?}", v.get_ref()),
            )
        })
    }

    fn duration(&self, v: &Spanned<String>, key: &str) -> Result<std::time::Duration, ConfigError> {
        parse_duration(v.get_ref()).or_else(|e| self.err(v.span(), key, e))
    }

    fn id(&self, v: &Spanned<String>, key: &str) -> Result<NodeId, ConfigError> {
        let s = v.get_ref().trim();
        if s.is_empty() || s.len() > 128 || s.chars().any(|c| c.is_whitespace() || c == '/') {
            return self.err(
                v.span(),
                key,
                format!("not a node id (1–128 characters, no spaces or '/'): {s:?}"),
            );
        }
        Ok(NodeId::new(s))
    }
}

/// The owner in a conventional stream id `kind:OWNER/rest`.
fn owner_of(stream: &str) -> Option<String> {
    let (_, rest) = stream.split_once(':')?;
    let (owner, _) = rest.split_once('/')?;
    (!owner.is_empty()).then(|| owner.to_string())
}

fn path_kind(s: &str) -> Option<PathKind> {
    PathKind::ALL.into_iter().find(|k| k.as_str() == s)
}

/// Checks that `dir` exists (creating it) and is a writable directory.
fn check_state_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() && !dir.is_dir() {
        return Err(format!("{} exists and is not a directory", dir.display()));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let probe = dir.join(".interlocking-write-check");
    std::fs::write(&probe, b"ok").map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn policy(ctx: &Ctx<'_>, base: &mut Policy, raw: &RawPolicy, key: &str) -> Result<(), ConfigError> {
    if let Some(order) = &raw.order {
        let mut kinds = Vec::new();
        for s in order.get_ref() {
            match path_kind(s) {
                Some(k) => kinds.push(k),
                None => {
                    return ctx.err(
                        order.span(),
                        &format!("{key}.order"),
                        format!(
                            "unknown path kind {s:?} (known: {})",
                            PathKind::ALL.map(|k| k.as_str()).join(", ")
                        ),
                    );
                }
            }
        }
        base.order = kinds;
    }
    if let Some(v) = &raw.freeze {
        base.freeze = ctx.duration(v, &format!("{key}.freeze"))?;
    }
    if let Some(v) = &raw.hold_down {
        base.hold_down = ctx.duration(v, &format!("{key}.hold_down"))?;
    }
    if let Some(v) = &raw.flap_cap {
        base.flap.cap = ctx.duration(v, &format!("{key}.flap_cap"))?;
    }
    if let Some(v) = &raw.max_on_fallback {
        base.max_on_fallback = Some(ctx.duration(v, &format!("{key}.max_on_fallback"))?);
    }
    if let Some(d) = raw.direct_only {
        base.direct_only = d;
    }
    if let Err(e) = base.validate() {
        let span = raw.order.as_ref().map_or(0..0, |o| o.span());
        return ctx.err(span, key, e.to_string());
    }
    Ok(())
}

fn fingerprint(ctx: &Ctx<'_>, v: &Spanned<String>) -> Result<[u8; 32], ConfigError> {
    let s: String = v.get_ref().chars().filter(|c| *c != ':').collect();
    let bad = || {
        ctx.err(
            v.span(),
            "root.ca_fingerprint",
            "not a SHA-256 fingerprint (64 hex digits)",
        )
    };
    if s.len() != 64 {
        return bad();
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        match u8::from_str_radix(&s[2 * i..2 * i + 2], 16) {
            Ok(x) => *b = x,
            Err(_) => return bad(),
        }
    }
    Ok(out)
}

/// Checks `raw` (read from `path`, whose text is `text`).
pub fn resolve(path: &Path, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    let ctx = Ctx { path, text };
    let id = ctx.id(&raw.node.id, "node.id")?;
    let role = match raw.node.role {
        RawRole::Root => Role::Root,
        RawRole::Hub => Role::Hub,
        RawRole::Member => Role::Member,
    };
    // A relative state dir is relative to the config file's folder.
    let state_dir = {
        let p = PathBuf::from(raw.node.state_dir.get_ref());
        if p.is_relative() {
            path.parent().unwrap_or(Path::new(".")).join(p)
        } else {
            p
        }
    };
    if let Err(e) = check_state_dir(&state_dir) {
        return ctx.err(raw.node.state_dir.span(), "node.state_dir", e);
    }
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let listen_quic = match &raw.listen.quic {
        Some(v) => ctx.addr(v, "listen.quic")?,
        None => any,
    };
    let listen_join = match &raw.listen.join {
        Some(v) if role == Role::Root => ctx.addr(v, "listen.join")?,
        Some(v) => {
            return ctx.err(v.span(), "listen.join", "only a root has a join endpoint");
        }
        None => any,
    };
    let mut cluster = None;
    let mut issuing = super::Issuing::default();
    let root = match (&raw.root, role) {
        (Some(r), Role::Root) => {
            // At least 3 s for a certificate (renewal then runs every two
            // seconds: a test or a drill, not a deployment) and 1 s for a
            // token, at most a year for either.
            let year = Duration::from_secs(365 * 24 * 3600);
            for (v, key, min, slot) in [
                (
                    &r.cert_lifetime,
                    "root.cert_lifetime",
                    Duration::from_secs(3),
                    &mut issuing.cert_lifetime,
                ),
                (
                    &r.token_ttl,
                    "root.token_ttl",
                    Duration::from_secs(1),
                    &mut issuing.token_ttl,
                ),
            ] {
                let Some(v) = v else { continue };
                let d = parse_duration(v.get_ref()).or_else(|e| ctx.err(v.span(), key, e))?;
                if d < min || d > year {
                    return ctx.err(
                        v.span(),
                        key,
                        format!("must be between {min:?} and {year:?}, not {d:?}"),
                    );
                }
                *slot = Some(d);
            }
            // A root names no root; it may name its cluster.
            let named = [&r.addr, &r.join, &r.ca_fingerprint, &r.join_token];
            if let Some(v) = named.into_iter().flatten().next() {
                return ctx.err(v.span(), "root", "a root does not name a root");
            }
            if let Some(c) = &r.cluster {
                let (nats, name) = (&c.get_ref().nats, &c.get_ref().name);
                if !nats.starts_with("nats://") || name.trim().is_empty() {
                    return ctx.err(
                        c.span(),
                        "root.cluster",
                        "needs nats = \"nats://HOST:PORT\" and a non-empty name",
                    );
                }
                cluster = Some(ClusterConfig {
                    nats: nats.clone(),
                    name: name.clone(),
                });
            }
            None
        }
        (None, Role::Root) => None,
        (None, _) => {
            return ctx.err(
                raw.node.id.span(),
                "root",
                format!("a {role} needs a [root] table (addr, join)"),
            );
        }
        (Some(r), _) => {
            if let Some(c) = &r.cluster {
                return ctx.err(c.span(), "root.cluster", "only a root joins a cluster");
            }
            if let Some(v) = r.cert_lifetime.as_ref().or(r.token_ttl.as_ref()) {
                return ctx.err(
                    v.span(),
                    "root",
                    "cert_lifetime and token_ttl are the root's own settings",
                );
            }
            let (Some(addr), Some(join)) = (&r.addr, &r.join) else {
                return ctx.err(
                    raw.node.id.span(),
                    "root",
                    format!("a {role} needs a [root] table (addr, join)"),
                );
            };
            Some(RootTarget {
                id: ctx.id(&Spanned::new(addr.span(), r.id.clone()), "root.id")?,
                addr: ctx.addr(addr, "root.addr")?,
                join: ctx.addr(join, "root.join")?,
                ca_fingerprint: r
                    .ca_fingerprint
                    .as_ref()
                    .map(|f| fingerprint(&ctx, f))
                    .transpose()?,
                join_token: r
                    .join_token
                    .as_ref()
                    .map(|t| t.get_ref().trim().to_string()),
            })
        }
    };

    let t = &raw.transports;
    let mut probe = ProbeConfig::default();
    if let Some(v) = &t.probe_interval {
        probe.interval = ctx.duration(v, "transports.probe_interval")?;
    }
    if let Some(v) = &t.probe_timeout {
        probe.timeout = ctx.duration(v, "transports.probe_timeout")?;
    }
    let mut faults = match &t.faults {
        Some(f) if !(0.0..=1.0).contains(&f.loss) => {
            return ctx.err(0..0, "transports.faults.loss", "must be between 0 and 1");
        }
        Some(f) => Some(Faults {
            seed: f.seed,
            loss: f.loss,
            blackhole: f.blackhole,
        }),
        None => None,
    };
    if raw.diagnostics.fault_injection && faults.is_none() {
        faults = Some(Faults {
            seed: 0,
            loss: 0.0,
            blackhole: false,
        });
    }
    let transports = Transports {
        quic: t.quic,
        relay: t.relay,
        probe,
        faults,
    };

    let mut peers = Vec::new();
    for (i, p) in raw.peers.iter().enumerate() {
        let key = format!("peers[{i}]");
        peers.push(Peer {
            id: ctx.id(&p.id, &format!("{key}.id"))?,
            quic: p
                .quic
                .as_ref()
                .map(|a| ctx.addr(a, &format!("{key}.quic")))
                .transpose()?,
            relay: p.relay,
        });
    }

    let mut routing = RoutingConfig::default();
    let r = &raw.routing;
    for (raw_policy, base, key) in [
        (&r.command, &mut routing.command, "routing.command"),
        (&r.sync, &mut routing.sync, "routing.sync"),
        (&r.media, &mut routing.media, "routing.media"),
        (&r.event, &mut routing.event, "routing.event"),
        (&r.presence, &mut routing.presence, "routing.presence"),
    ] {
        if let Some(p) = raw_policy {
            policy(&ctx, base, p, key)?;
        }
    }

    let mut channels = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, c) in raw.channels.iter().enumerate() {
        let key = format!("channels[{i}]");
        let stream = c.stream.get_ref().trim();
        if stream.is_empty() || stream.len() > 256 {
            return ctx.err(
                c.stream.span(),
                &format!("{key}.stream"),
                "empty or too long",
            );
        }
        if !seen.insert(stream.to_string()) {
            return ctx.err(
                c.stream.span(),
                &format!("{key}.stream"),
                format!("stream {stream:?} is configured twice"),
            );
        }
        if c.kind.get_ref() != "command" {
            return ctx.err(
                c.kind.span(),
                &format!("{key}.kind"),
                format!(
                    "unsupported channel kind {:?} (only command)",
                    c.kind.get_ref()
                ),
            );
        }
        let role = match (&c.handler, &c.target) {
            (Some(h), None) => {
                let peer = match &c.peer {
                    Some(p) => ctx.id(p, &format!("{key}.peer"))?,
                    None => match owner_of(stream) {
                        Some(o) => {
                            ctx.id(&Spanned::new(c.stream.span(), o), &format!("{key}.peer"))?
                        }
                        None => {
                            return ctx.err(
                                c.stream.span(),
                                &format!("{key}.peer"),
                                format!("cannot tell the sending node from {stream:?} (not kind:OWNER/...): set peer"),
                            );
                        }
                    },
                };
                ChannelRole::Serve {
                    handler: h.get_ref().clone(),
                    peer,
                    at: ctx.loc(h.span(), &format!("{key}.handler")),
                }
            }
            (None, Some(_)) if c.peer.is_some() => {
                return ctx.err(
                    c.peer.as_ref().map_or(0..0, |p| p.span()),
                    &format!("{key}.peer"),
                    "peer is for served channels; a sending channel names its target",
                );
            }
            (None, Some(t)) => ChannelRole::Send {
                target: ctx.id(t, &format!("{key}.target"))?,
            },
            _ => {
                return ctx.err(
                    c.stream.span(),
                    &key,
                    "set exactly one of handler (serve here) or target (send from here)",
                );
            }
        };
        channels.push(Channel {
            stream: StreamId::new(stream),
            role,
        });
    }

    let d = &raw.diagnostics;
    let listen = d
        .listen
        .as_ref()
        .map(|v| ctx.addr(v, "diagnostics.listen"))
        .transpose()?;
    let mut token = d.token.clone().filter(|t| !t.is_empty());
    if let Some(f) = &d.token_file {
        match std::fs::read_to_string(f.get_ref()) {
            Ok(s) if !s.trim().is_empty() => token = Some(s.trim().to_string()),
            Ok(_) => return ctx.err(f.span(), "diagnostics.token_file", "the file is empty"),
            Err(e) => {
                return ctx.err(
                    f.span(),
                    "diagnostics.token_file",
                    format!("cannot read {}: {e}", f.get_ref()),
                );
            }
        }
    }
    if let (Some(addr), Some(span)) = (listen, d.listen.as_ref().map(|l| l.span())) {
        if !addr.ip().is_loopback() && !d.allow_remote {
            return ctx.err(
                span,
                "diagnostics.listen",
                format!("{addr} is not a loopback address; set allow_remote = true and a token to expose the control API"),
            );
        }
        if d.allow_remote && token.is_none() {
            return ctx.err(
                span,
                "diagnostics.allow_remote",
                "allow_remote needs a bearer token (token or token_file)",
            );
        }
    }
    if d.decision_log == 0 || d.decision_log > 4096 {
        return ctx.err(
            0..0,
            "diagnostics.decision_log",
            "must be between 1 and 4096",
        );
    }
    let sidecar = match &raw.sidecar {
        None => None,
        Some(_) if role != Role::Hub => {
            return ctx.err(0..0, "sidecar", "only a hub has a sidecar");
        }
        Some(s) => {
            let dir = match &s.dir {
                Some(d) => {
                    let p = PathBuf::from(d.get_ref());
                    let p = if p.is_relative() {
                        path.parent().unwrap_or(Path::new(".")).join(p)
                    } else {
                        p
                    };
                    // sun_path holds 108 bytes with its terminator.
                    if p.join(crate::transports::sidecar::SOCKET_FILE)
                        .as_os_str()
                        .len()
                        > 100
                    {
                        return ctx.err(
                            d.span(),
                            "sidecar.dir",
                            "too long for a Unix socket path (at most 87 bytes)",
                        );
                    }
                    p
                }
                None => state_dir.join("sidecar"),
            };
            Some(crate::config::SidecarSettings {
                child: s.mode == super::schema::RawSidecarMode::Child,
                dir,
            })
        }
    };
    Ok(Config {
        path: path.to_path_buf(),
        id,
        role,
        state_dir,
        listen_quic,
        listen_join,
        root,
        transports,
        peers,
        routing,
        channels,
        diagnostics: Diagnostics {
            listen,
            allow_remote: d.allow_remote,
            token,
            fault_injection: d.fault_injection,
            decision_log: d.decision_log,
            dashboard: d.dashboard,
        },
        sidecar,
        limits: super::limits::resolve(path, text, &raw.limits, role)?,
        cluster,
        issuing,
    })
}

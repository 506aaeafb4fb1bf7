//! The `[limits]` table: what one outside peer can make this node hold
//! (`docs/limits.md` §1), from the file's raw values to a checked
//! [`Limits`], refusing nonsense (zero, a per-address limit above the
//! total, a queue that cannot hold one frame, …) with the key and line.
//!
//! Owns the checks only; the values are applied where a node or root is
//! built ([`crate::app`]).

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Location, line_col, parse_duration};
use crate::channels::DedupeConfig;
use crate::root::RootConfig;
use crate::transports::quic::{ClassBudgets, QueueBudget, QuicConfig, QuicLimits};
use crate::vocab::{Role, TrafficClass};
use crate::wire::CodecConfig;

/// `[limits]` as written; every key is optional (unset: the default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Connections from one IP address (default 64).
    pub connections_per_address: Option<Spanned<u64>>,
    /// Connections in total (default 4096).
    pub connections_total: Option<Spanned<u64>>,
    /// New connections one address may start per second (default 32; 0:
    /// unlimited).
    pub connections_per_second_per_address: Option<Spanned<u64>>,
    /// Unidirectional streams a peer may have open at once (default 64).
    pub streams_uni: Option<Spanned<u64>>,
    /// Bidirectional streams a peer may open at once (default 4).
    pub streams_bidi: Option<Spanned<u64>>,
    /// Unread bytes per stream (default 1 250 000).
    pub stream_window: Option<Spanned<u64>>,
    /// Unread bytes per connection (default 16 MiB).
    pub connection_window: Option<Spanned<u64>>,
    /// How long a handshake may take, e.g. `1s`.
    pub handshake_timeout: Option<Spanned<String>>,
    /// How long the peer's `Hello` may take after the handshake, e.g. `10s`.
    pub hello_timeout: Option<Spanned<String>>,
    /// Bytes of one frame (default 1 MiB).
    pub max_frame_len: Option<Spanned<u64>>,
    /// The control class's send queue per peer (default 256 frames /
    /// 8 MiB; over it the new frame is refused).
    pub queue_control: Option<RawBudget>,
    /// The media-control class's (default 256 / 8 MiB; oldest dropped).
    pub queue_media_control: Option<RawBudget>,
    /// The route class's (default 4096 / 64 MiB; refused): on a root, the
    /// relay's budget per destination.
    pub queue_route: Option<RawBudget>,
    /// The sync class's (default 512 / 8 MiB; oldest dropped).
    pub queue_sync: Option<RawBudget>,
    /// The integration class's (default 1024 / 16 MiB; oldest dropped).
    pub queue_integration: Option<RawBudget>,
    /// Frames waiting for one served stream's handler (default 1024).
    pub inbox_capacity: Option<Spanned<u64>>,
    /// Dedupe records (distinct message ids) kept per served stream
    /// (default 100 000).
    pub dedupe_max_per_stream: Option<Spanned<u64>>,
    /// How long a dedupe record is kept, e.g. `10m`.
    pub dedupe_retention: Option<Spanned<String>>,
    /// Relayed class-A keys a root remembers (default 65 536).
    pub relay_dedupe_keys: Option<Spanned<u64>>,
    /// Bytes of cached relay replies a root keeps (default 64 MiB).
    pub relay_dedupe_bytes: Option<Spanned<u64>>,
    /// How long a root remembers a relayed class-A key, e.g. `30s`.
    pub relay_dedupe_ttl: Option<Spanned<String>>,
    /// How long a root drops retries of a relayed frame still in flight,
    /// e.g. `2s`.
    pub relay_dedupe_hold: Option<Spanned<String>>,
}

/// `queue_<class> = { frames = .., bytes = .. }`; an unset key keeps the
/// class's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// Frames that may wait.
    pub frames: Option<Spanned<u64>>,
    /// Bytes that may wait.
    pub bytes: Option<Spanned<u64>>,
}

impl RawLimits {
    /// The first `relay_*` key that is set, with its span: these bound a
    /// root's relay and mean nothing on another role.
    fn first_relay_key(&self) -> Option<(&'static str, Range<usize>)> {
        let ints = [
            ("relay_dedupe_keys", &self.relay_dedupe_keys),
            ("relay_dedupe_bytes", &self.relay_dedupe_bytes),
        ];
        let durations = [
            ("relay_dedupe_ttl", &self.relay_dedupe_ttl),
            ("relay_dedupe_hold", &self.relay_dedupe_hold),
        ];
        ints.into_iter()
            .find_map(|(k, v)| v.as_ref().map(|v| (k, v.span())))
            .or_else(|| {
                durations
                    .into_iter()
                    .find_map(|(k, v)| v.as_ref().map(|v| (k, v.span())))
            })
    }
}

/// What a root's relay dedupe table may hold (`docs/limits.md` §1); the
/// relay's per-destination budget is the route class's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Relayed class-A keys remembered (oldest evicted).
    pub dedupe_keys: usize,
    /// Bytes of cached replies kept (oldest evicted).
    pub dedupe_bytes: usize,
    /// How long a relayed class-A key is remembered.
    pub dedupe_ttl: Duration,
    /// How long retries of a frame still in flight are dropped.
    pub dedupe_hold: Duration,
}

impl Default for RelayLimits {
    /// [`RootConfig`]'s defaults.
    fn default() -> Self {
        let d = RootConfig::default();
        Self {
            dedupe_keys: d.dedupe_capacity,
            dedupe_bytes: d.dedupe_max_bytes,
            dedupe_ttl: d.dedupe_ttl,
            dedupe_hold: d.dedupe_hold,
        }
    }
}

/// The checked `[limits]` of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connection, stream and flow-control limits of the QUIC endpoint.
    pub quic: QuicLimits,
    /// QUIC handshake time limit.
    pub handshake_timeout: Duration,
    /// Time from handshake to `Hello`.
    pub hello_timeout: Duration,
    /// Frame size limit.
    pub codec: CodecConfig,
    /// Send queue per peer and traffic class (`DESIGN.md` §5).
    pub queue: ClassBudgets,
    /// Frames waiting for one served stream's handler.
    pub inbox_capacity: usize,
    /// Dedupe bounds of each served stream.
    pub dedupe: DedupeConfig,
    /// A root's relay bounds (the defaults on every other role).
    pub relay: RelayLimits,
}

impl Default for Limits {
    /// The library's defaults: [`QuicLimits`], [`CodecConfig`],
    /// [`ClassBudgets`] and [`DedupeConfig`] defaults, the handshake (1 s) and
    /// hello (10 s) timeouts of [`QuicConfig::new`], the session inbox's
    /// [`crate::actors::session::DEFAULT_INBOX_CAPACITY`].
    fn default() -> Self {
        Self {
            quic: QuicLimits::default(),
            handshake_timeout: Duration::from_secs(1),
            hello_timeout: Duration::from_secs(10),
            codec: CodecConfig::default(),
            queue: ClassBudgets::default(),
            inbox_capacity: crate::actors::session::DEFAULT_INBOX_CAPACITY,
            dedupe: DedupeConfig::default(),
            relay: RelayLimits::default(),
        }
    }
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        span: Range<usize>,
        key: &str,
        msg: impl Into<String>,
    ) -> Result<T, ConfigError> {
        let (line, col) = line_col(self.text, span.start);
        Err(ConfigError::at(
            &Location {
                file: self.path.to_path_buf(),
                line,
                col,
                key: format!("limits.{key}"),
            },
            msg,
        ))
    }

    /// `v` if set and within `min..=max`, else `default`.
    fn int(
        &self,
        v: &Option<Spanned<u64>>,
        key: &str,
        min: u64,
        max: u64,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) if (min..=max).contains(s.get_ref()) => Ok(*s.get_ref()),
            Some(s) => self.err(
                s.span(),
                key,
                format!("must be between {min} and {max}, not {}", s.get_ref()),
            ),
        }
    }

    fn duration(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        max: Duration,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(s) = v else { return Ok(default) };
        let d = parse_duration(s.get_ref()).or_else(|e| self.err(s.span(), key, e))?;
        if d.is_zero() || d > max {
            return self.err(
                s.span(),
                key,
                format!("must be above 0 and at most {max:?}, not {d:?}"),
            );
        }
        Ok(d)
    }
}

fn span_of(v: &Option<Spanned<u64>>) -> Range<usize> {
    v.as_ref().map_or(0..0, Spanned::span)
}

/// Checks `raw` (read from `path`, whose text is `text`) for a node of
/// `role`: the `relay_*` keys are refused on any role but a root.
pub fn resolve(
    path: &Path,
    text: &str,
    raw: &RawLimits,
    role: Role,
) -> Result<Limits, ConfigError> {
    let ctx = Ctx { path, text };
    let d = Limits::default();
    if role != Role::Root
        && let Some((key, span)) = raw.first_relay_key()
    {
        return ctx.err(
            span,
            key,
            format!("only a root relays; a {role} has no relay to bound"),
        );
    }
    let total = ctx.int(
        &raw.connections_total,
        "connections_total",
        1,
        1_000_000,
        d.quic.connections_total as u64,
    )?;
    let per_address = ctx.int(
        &raw.connections_per_address,
        "connections_per_address",
        1,
        1_000_000,
        (d.quic.connections_per_address as u64).min(total),
    )?;
    if per_address > total {
        return ctx.err(
            span_of(&raw.connections_per_address),
            "connections_per_address",
            format!("{per_address} is above connections_total ({total})"),
        );
    }
    let rate = ctx.int(
        &raw.connections_per_second_per_address,
        "connections_per_second_per_address",
        0,
        1_000_000,
        u64::from(d.quic.connections_per_second_per_address),
    )?;
    // A peer opens one unidirectional stream per traffic class (5).
    let streams_uni = ctx.int(
        &raw.streams_uni,
        "streams_uni",
        5,
        10_000,
        u64::from(d.quic.streams_uni),
    )?;
    let streams_bidi = ctx.int(
        &raw.streams_bidi,
        "streams_bidi",
        0,
        10_000,
        u64::from(d.quic.streams_bidi),
    )?;
    let max_frame_len = ctx.int(
        &raw.max_frame_len,
        "max_frame_len",
        1024,
        64 * 1024 * 1024,
        d.codec.max_frame_len as u64,
    )?;
    let stream_window = ctx.int(
        &raw.stream_window,
        "stream_window",
        16 * 1024,
        u64::from(u32::MAX),
        u64::from(d.quic.stream_window),
    )?;
    let connection_window = ctx.int(
        &raw.connection_window,
        "connection_window",
        16 * 1024,
        u64::from(u32::MAX),
        u64::from(d.quic.connection_window).max(stream_window),
    )?;
    if connection_window < stream_window {
        return ctx.err(
            span_of(&raw.connection_window),
            "connection_window",
            format!("{connection_window} is below stream_window ({stream_window})"),
        );
    }
    let mut queue = d.queue;
    for (class, key, raw) in [
        (TrafficClass::Control, "queue_control", &raw.queue_control),
        (
            TrafficClass::MediaControl,
            "queue_media_control",
            &raw.queue_media_control,
        ),
        (TrafficClass::Route, "queue_route", &raw.queue_route),
        (TrafficClass::Sync, "queue_sync", &raw.queue_sync),
        (
            TrafficClass::Integration,
            "queue_integration",
            &raw.queue_integration,
        ),
    ] {
        let Some(raw) = raw else { continue };
        let b = queue.get(class).budget;
        let frames = ctx.int(
            &raw.frames,
            &format!("{key}.frames"),
            1,
            1_000_000,
            b.frames as u64,
        )?;
        let bytes = ctx.int(
            &raw.bytes,
            &format!("{key}.bytes"),
            1,
            u64::from(u32::MAX),
            b.bytes as u64,
        )?;
        if bytes < max_frame_len + 4 {
            return ctx.err(
                span_of(&raw.bytes),
                &format!("{key}.bytes"),
                format!("{bytes} cannot hold one frame of max_frame_len ({max_frame_len}) and its prefix"),
            );
        }
        queue = queue.with_budget(
            class,
            QueueBudget {
                frames: frames as usize,
                bytes: bytes as usize,
            },
        );
    }
    // A raised max_frame_len must fit every class's queue.
    for class in TrafficClass::ALL {
        let b = queue.get(class).budget;
        if (b.bytes as u64) < max_frame_len + 4 {
            queue = queue.with_budget(
                class,
                QueueBudget {
                    bytes: max_frame_len as usize + 4,
                    ..b
                },
            );
        }
    }
    let inbox_capacity = ctx.int(
        &raw.inbox_capacity,
        "inbox_capacity",
        1,
        1_000_000,
        d.inbox_capacity as u64,
    )?;
    let dedupe_max = ctx.int(
        &raw.dedupe_max_per_stream,
        "dedupe_max_per_stream",
        1,
        100_000_000,
        d.dedupe.max_per_stream as u64,
    )?;
    let retention = ctx.duration(
        &raw.dedupe_retention,
        "dedupe_retention",
        Duration::from_secs(30 * 24 * 3600),
        d.dedupe.retention,
    )?;
    let relay = resolve_relay(&ctx, raw, &d.relay)?;
    Ok(Limits {
        relay,
        quic: QuicLimits {
            connections_per_address: per_address as usize,
            connections_total: total as usize,
            connections_per_second_per_address: rate as u32,
            streams_uni: streams_uni as u32,
            streams_bidi: streams_bidi as u32,
            stream_window: stream_window as u32,
            connection_window: connection_window as u32,
        },
        handshake_timeout: ctx.duration(
            &raw.handshake_timeout,
            "handshake_timeout",
            Duration::from_secs(60),
            d.handshake_timeout,
        )?,
        hello_timeout: ctx.duration(
            &raw.hello_timeout,
            "hello_timeout",
            Duration::from_secs(600),
            d.hello_timeout,
        )?,
        codec: CodecConfig::new(max_frame_len as usize),
        queue,
        inbox_capacity: inbox_capacity as usize,
        dedupe: DedupeConfig::default()
            .max_per_stream(dedupe_max as usize)
            .retention(retention),
    })
}

/// The `relay_*` keys.
fn resolve_relay(
    ctx: &Ctx<'_>,
    raw: &RawLimits,
    d: &RelayLimits,
) -> Result<RelayLimits, ConfigError> {
    let keys = ctx.int(
        &raw.relay_dedupe_keys,
        "relay_dedupe_keys",
        1,
        100_000_000,
        d.dedupe_keys as u64,
    )?;
    let dedupe_bytes = ctx.int(
        &raw.relay_dedupe_bytes,
        "relay_dedupe_bytes",
        0,
        u64::from(u32::MAX),
        d.dedupe_bytes as u64,
    )?;
    let ttl = ctx.duration(
        &raw.relay_dedupe_ttl,
        "relay_dedupe_ttl",
        Duration::from_secs(24 * 3600),
        d.dedupe_ttl,
    )?;
    let hold = ctx.duration(
        &raw.relay_dedupe_hold,
        "relay_dedupe_hold",
        Duration::from_secs(600),
        d.dedupe_hold,
    )?;
    if hold > ttl {
        let span = raw.relay_dedupe_hold.as_ref().map_or(0..0, Spanned::span);
        return ctx.err(
            span,
            "relay_dedupe_hold",
            format!("{hold:?} is above relay_dedupe_ttl ({ttl:?}): a key would be forgotten while its frame is held"),
        );
    }
    Ok(RelayLimits {
        dedupe_keys: keys as usize,
        dedupe_bytes: dedupe_bytes as usize,
        dedupe_ttl: ttl,
        dedupe_hold: hold,
    })
}

impl Limits {
    /// Applies these limits to a root's configuration: its node endpoint
    /// (connections, streams, windows, timeouts, frame size) and its relay.
    pub fn apply_root(&self, root: &mut RootConfig) {
        root.codec = self.codec;
        root.limits = self.quic;
        root.hello_timeout = self.hello_timeout;
        root.handshake_timeout = self.handshake_timeout;
        root.queue = self.queue;
        root.dedupe_capacity = self.relay.dedupe_keys;
        root.dedupe_max_bytes = self.relay.dedupe_bytes;
        root.dedupe_ttl = self.relay.dedupe_ttl;
        root.dedupe_hold = self.relay.dedupe_hold;
    }

    /// Applies these limits to a QUIC transport's configuration.
    pub fn apply(&self, quic: &mut QuicConfig) {
        quic.limits = self.quic;
        quic.handshake_timeout = self.handshake_timeout;
        quic.hello_timeout = self.hello_timeout;
        quic.codec = self.codec;
        quic.queue = self.queue;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str, role: Role) -> Result<Limits, ConfigError> {
        let raw: RawLimits = toml::from_str(body).unwrap();
        resolve(Path::new("n.toml"), body, &raw, role)
    }

    #[test]
    fn relay_keys_reach_the_root_config() {
        let l = parse(
            "queue_route = { frames = 10, bytes = 2000000 }\nrelay_dedupe_keys = 7\n\
             relay_dedupe_bytes = 0\nrelay_dedupe_ttl = \"5s\"\nrelay_dedupe_hold = \"1s\"\n",
            Role::Root,
        )
        .unwrap();
        let mut root = RootConfig::default();
        l.apply_root(&mut root);
        assert_eq!(
            root.queue.get(TrafficClass::Route).budget,
            QueueBudget {
                frames: 10,
                bytes: 2_000_000
            }
        );
        assert_eq!(root.dedupe_capacity, 7);
        assert_eq!(root.dedupe_max_bytes, 0);
        assert_eq!(root.dedupe_ttl, Duration::from_secs(5));
        assert_eq!(root.dedupe_hold, Duration::from_secs(1));
    }

    #[test]
    fn unset_relay_keys_keep_the_root_defaults() {
        let mut root = RootConfig::default();
        parse("", Role::Root).unwrap().apply_root(&mut root);
        let d = RootConfig::default();
        assert_eq!(root.queue, d.queue);
        assert_eq!(root.dedupe_capacity, d.dedupe_capacity);
        assert_eq!(root.dedupe_max_bytes, d.dedupe_max_bytes);
        assert_eq!(
            (root.dedupe_ttl, root.dedupe_hold),
            (d.dedupe_ttl, d.dedupe_hold)
        );
    }

    #[test]
    fn relay_nonsense_and_relay_keys_off_a_root_are_refused() {
        for (body, role, says) in [
            ("relay_dedupe_keys = 0", Role::Root, "between 1"),
            ("relay_dedupe_ttl = \"0s\"", Role::Root, "above 0"),
            (
                "relay_dedupe_ttl = \"1s\"\nrelay_dedupe_hold = \"2s\"",
                Role::Root,
                "above relay_dedupe_ttl",
            ),
            ("relay_dedupe_keys = 10", Role::Hub, "only a root relays"),
            (
                "relay_dedupe_hold = \"1s\"",
                Role::Member,
                "only a root relays",
            ),
        ] {
            let err = parse(body, role).unwrap_err().to_string();
            assert!(err.contains(says), "{body}: {err}");
            assert!(err.contains("limits.relay_"), "{body}: {err}");
        }
    }

    #[test]
    fn class_queues_take_their_keys_and_keep_the_others_defaults() {
        let l = parse(
            "queue_sync = { frames = 9 }\nqueue_control = { frames = 5, bytes = 2000000 }\n",
            Role::Hub,
        )
        .unwrap();
        let d = ClassBudgets::default();
        let sync = l.queue.get(TrafficClass::Sync);
        assert_eq!(sync.budget.frames, 9);
        assert_eq!(sync.budget.bytes, d.get(TrafficClass::Sync).budget.bytes);
        assert_eq!(sync.over, d.get(TrafficClass::Sync).over);
        let c = l.queue.get(TrafficClass::Control).budget;
        assert_eq!((c.frames, c.bytes), (5, 2_000_000));
        assert_eq!(l.queue.get(TrafficClass::Route), d.get(TrafficClass::Route));
        let mut root = RootConfig::default();
        l.apply_root(&mut root);
        assert_eq!(root.queue, l.queue);
    }

    #[test]
    fn class_queue_nonsense_is_refused_with_its_key() {
        for (body, key, says) in [
            (
                "queue_sync = { frames = 0 }",
                "limits.queue_sync.frames",
                "between 1",
            ),
            (
                "max_frame_len = 100000\nqueue_route = { bytes = 1000 }",
                "limits.queue_route.bytes",
                "cannot hold one frame",
            ),
        ] {
            let err = parse(body, Role::Member).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{body}: {err}");
        }
        let raw: Result<RawLimits, _> = toml::from_str("queue_sync = { frame = 3 }");
        assert!(raw.is_err(), "an unknown key in a class queue is refused");
    }
}

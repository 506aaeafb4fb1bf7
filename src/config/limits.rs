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
use crate::transports::quic::{QueueBudget, QuicConfig, QuicLimits};
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
    /// Frames queued to one peer per traffic class (default 4096).
    pub queue_frames: Option<Spanned<u64>>,
    /// Bytes queued to one peer per traffic class (default 16 MiB).
    pub queue_bytes: Option<Spanned<u64>>,
    /// Frames waiting for one served stream's handler (default 1024).
    pub inbox_capacity: Option<Spanned<u64>>,
    /// Dedupe records (distinct message ids) kept per served stream
    /// (default 100 000).
    pub dedupe_max_per_stream: Option<Spanned<u64>>,
    /// How long a dedupe record is kept, e.g. `10m`.
    pub dedupe_retention: Option<Spanned<String>>,
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
    /// Send queue per peer and traffic class.
    pub queue: QueueBudget,
    /// Frames waiting for one served stream's handler.
    pub inbox_capacity: usize,
    /// Dedupe bounds of each served stream.
    pub dedupe: DedupeConfig,
}

impl Default for Limits {
    /// The library's defaults: [`QuicLimits`], [`CodecConfig`],
    /// [`QueueBudget`] and [`DedupeConfig`] defaults, the handshake (1 s) and
    /// hello (10 s) timeouts of [`QuicConfig::new`], the session inbox's
    /// [`crate::actors::session::DEFAULT_INBOX_CAPACITY`].
    fn default() -> Self {
        Self {
            quic: QuicLimits::default(),
            handshake_timeout: Duration::from_secs(1),
            hello_timeout: Duration::from_secs(10),
            codec: CodecConfig::default(),
            queue: QueueBudget::default(),
            inbox_capacity: crate::actors::session::DEFAULT_INBOX_CAPACITY,
            dedupe: DedupeConfig::default(),
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

/// Checks `raw` (read from `path`, whose text is `text`).
pub fn resolve(path: &Path, text: &str, raw: &RawLimits) -> Result<Limits, ConfigError> {
    let ctx = Ctx { path, text };
    let d = Limits::default();
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
    let queue_frames = ctx.int(
        &raw.queue_frames,
        "queue_frames",
        1,
        1_000_000,
        d.queue.frames as u64,
    )?;
    let queue_bytes = ctx.int(
        &raw.queue_bytes,
        "queue_bytes",
        1,
        u64::from(u32::MAX),
        (d.queue.bytes as u64).max(max_frame_len + 4),
    )?;
    if queue_bytes < max_frame_len + 4 {
        return ctx.err(
            span_of(&raw.queue_bytes),
            "queue_bytes",
            format!("{queue_bytes} cannot hold one frame of max_frame_len ({max_frame_len}) and its prefix"),
        );
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
    Ok(Limits {
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
        queue: QueueBudget {
            frames: queue_frames as usize,
            bytes: queue_bytes as usize,
        },
        inbox_capacity: inbox_capacity as usize,
        dedupe: DedupeConfig::default()
            .max_per_stream(dedupe_max as usize)
            .retention(retention),
    })
}

impl Limits {
    /// Applies these limits to a QUIC transport's configuration.
    pub fn apply(&self, quic: &mut QuicConfig) {
        quic.limits = self.quic;
        quic.handshake_timeout = self.handshake_timeout;
        quic.hello_timeout = self.hello_timeout;
        quic.codec = self.codec;
        quic.queue = self.queue;
    }
}

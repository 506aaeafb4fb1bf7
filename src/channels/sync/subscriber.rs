//! The subscriber side of a sync channel, sans-IO ([`Subscriber`]).
//!
//! Owns one subscriber's view of a document: applies the owner's log in
//! cursor order exactly once (duplicates are ignored, updates ahead of a
//! gap wait in a bounded buffer), never passes a gap silently (it asks for
//! a resync and reports [`SubscriberEvent::Gap`]), loads snapshots, and
//! keeps its own publishes in a durable outbox (the command channel's
//! [`Outbox`]: credit window, retransmit timer, resend on a route change)
//! until the owner settles them. Every call returns a
//! [`SubscriberOutput`] whose `commit` (cursor and applied state together,
//! plus outbox changes) the caller makes durable before sending `send`.
//! Time is an explicit `now`.
//!
//! A subscriber's own publishes are applied when they come back in the
//! owner's log, like everybody else's: every replica is a prefix of one
//! log, whatever the document type.

use std::collections::BTreeMap;
use std::time::Instant;

use super::document::{DocError, Document};
use super::owner::Applied;
use super::wire::{Cursor, RefuseCode, SyncMsg};
use crate::channels::outbox::{Outbox, OutboxConfig};
use crate::store::sync_store::{SyncSubscriberCommit, SyncSubscriberRecord};
use crate::vocab::{StreamId, TrafficClass};

/// Tunables of a [`Subscriber`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberConfig {
    /// Own publishes larger than this are refused locally. Default 256 KiB.
    pub max_update_bytes: usize,
    /// Snapshots announced larger than this are refused. Default 64 MiB.
    pub max_snapshot_bytes: u64,
    /// Updates held ahead of a gap. Default 1024 (more are dropped and come
    /// again with the resync).
    pub max_ahead: usize,
    /// After this many applied updates the stored applied state is
    /// compacted into one snapshot. Default 1000.
    pub compact_every: usize,
    /// The publish outbox (credit window, retransmit timeouts).
    pub outbox: OutboxConfig,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            max_update_bytes: 256 << 10,
            max_snapshot_bytes: 64 << 20,
            max_ahead: 1024,
            compact_every: 1000,
            outbox: OutboxConfig::default(),
        }
    }
}

impl SubscriberConfig {
    /// Sets [`SubscriberConfig::max_update_bytes`].
    pub fn max_update_bytes(mut self, n: usize) -> Self {
        self.max_update_bytes = n;
        self
    }

    /// Sets [`SubscriberConfig::compact_every`] (at least 1).
    pub fn compact_every(mut self, n: usize) -> Self {
        self.compact_every = n.max(1);
        self
    }

    /// Sets the outbox config.
    pub fn outbox(mut self, outbox: OutboxConfig) -> Self {
        self.outbox = outbox;
        self
    }

    /// Sets [`SubscriberConfig::max_snapshot_bytes`].
    pub fn max_snapshot_bytes(mut self, n: u64) -> Self {
        self.max_snapshot_bytes = n;
        self
    }
}

/// Something a subscriber noticed; never silent.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriberEvent {
    /// An update arrived ahead of the next expected one: a resync was asked.
    Gap {
        /// The cursor applied so far.
        at: Cursor,
        /// The update that arrived.
        got: Cursor,
    },
    /// A snapshot was loaded, replacing the state.
    SnapshotLoaded {
        /// The cursor before.
        from: Cursor,
        /// The snapshot's cursor.
        to: Cursor,
        /// Its size.
        bytes: usize,
    },
    /// The owner refused something of ours (a cursor, a subscribe).
    Refused {
        /// The raw code (see [`RefuseCode::from_code`]).
        code: u16,
        /// The owner's explanation.
        detail: String,
    },
    /// The owner refused one of our publishes for good; it left the outbox.
    PublishRefused {
        /// The publish.
        update_id: u64,
        /// The raw code.
        code: u16,
    },
    /// A snapshot could not be loaded; the state was kept.
    CorruptSnapshot {
        /// The snapshot's cursor.
        cursor: Cursor,
        /// The document's error.
        error: String,
    },
    /// An update from the owner could not be applied; the cursor stays.
    ApplyFailed {
        /// Its cursor.
        cursor: Cursor,
        /// The document's error.
        error: String,
    },
    /// A peer that is not the owner sent owner messages; refused.
    NotOwner {
        /// The peer.
        peer: String,
    },
}

/// What the caller must do after a [`Subscriber`] call: make `commit`
/// durable, then send `send` to the owner in order.
#[derive(Debug, Default)]
pub struct SubscriberOutput {
    /// Store changes (empty when nothing changed).
    pub commit: SyncSubscriberCommit,
    /// Messages to the owner, after the commit.
    pub send: Vec<SyncMsg>,
    /// Updates applied, in log order.
    pub applied: Vec<Applied>,
    /// Things worth reporting.
    pub events: Vec<SubscriberEvent>,
}

/// A publish the subscriber refused locally.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// Larger than [`SubscriberConfig::max_update_bytes`].
    #[error("update of {len} bytes is over the limit of {max}")]
    Oversized {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

struct Assembly {
    cursor: Cursor,
    acked_through: u64,
    total: u64,
    buf: Vec<u8>,
}

/// The subscriber core of one stream.
pub struct Subscriber<D> {
    doc_id: String,
    me: String,
    doc: D,
    config: SubscriberConfig,
    cursor: Cursor,
    ahead: BTreeMap<u64, (Cursor, String, u64, Vec<u8>)>,
    /// The cursor at which a resync was last asked for a gap.
    asked_at: Option<Cursor>,
    assembly: Option<Assembly>,
    /// A refusal of our cursor announced a snapshot that may be "older".
    expect_snapshot: bool,
    outbox: Outbox,
    bodies: BTreeMap<u64, Vec<u8>>,
    next_update_id: u64,
    since_compaction: usize,
    heard: bool,
}

impl<D: Document> Subscriber<D> {
    /// Opens the subscriber `me` of `doc_id` on `stream`, rebuilding its
    /// document and outbox from the stored record (if any).
    pub fn open(
        doc_id: impl Into<String>,
        me: impl Into<String>,
        stream: StreamId,
        mut doc: D,
        config: SubscriberConfig,
        record: Option<SyncSubscriberRecord>,
    ) -> Result<Self, DocError> {
        let rec = record.unwrap_or(SyncSubscriberRecord {
            next_update_id: 1,
            ..Default::default()
        });
        if let Some(s) = &rec.snapshot {
            doc.load(s)?;
        }
        for u in &rec.applied {
            doc.apply(u)?;
        }
        let mut outbox = Outbox::new(stream, config.outbox);
        let mut bodies = BTreeMap::new();
        for (id, bytes) in rec.outbox {
            outbox.push(id, id, TrafficClass::Sync as u8, true);
            bodies.insert(id, bytes);
        }
        Ok(Self {
            doc_id: doc_id.into(),
            me: me.into(),
            doc,
            config,
            cursor: Cursor::new(rec.epoch, rec.seq),
            ahead: BTreeMap::new(),
            asked_at: None,
            assembly: None,
            expect_snapshot: false,
            outbox,
            bodies,
            next_update_id: rec.next_update_id.max(1),
            since_compaction: rec.applied.len(),
            heard: false,
        })
    }

    /// The last applied cursor.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// The document.
    pub fn doc(&self) -> &D {
        &self.doc
    }

    /// Own publishes not yet settled by the owner.
    pub fn pending_publishes(&self) -> usize {
        self.bodies.len()
    }

    /// Whether the owner answered since the last [`Subscriber::attach`].
    pub fn heard(&self) -> bool {
        self.heard
    }

    /// When the outbox's next retransmit is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.outbox.next_deadline()
    }

    /// A path to the owner is (again) available: subscribe with the
    /// cursor, resend every unsettled publish.
    pub fn attach(&mut self, now: Instant) -> Vec<SyncMsg> {
        self.heard = false;
        self.asked_at = None;
        self.assembly = None;
        let mut send = vec![SyncMsg::Subscribe {
            doc: self.doc_id.clone(),
            cursor: self.cursor,
        }];
        let change = self.outbox.on_route_change(now);
        let mut ids: Vec<u64> = change.transmits.iter().map(|t| t.message_id).collect();
        ids.extend(self.outbox.poll_send(now).iter().map(|t| t.message_id));
        send.extend(ids.into_iter().filter_map(|id| self.publish_msg(id)));
        send
    }

    /// Asks again, unchanged, when the owner did not answer an attach.
    pub fn resubscribe(&self) -> SyncMsg {
        SyncMsg::Subscribe {
            doc: self.doc_id.clone(),
            cursor: self.cursor,
        }
    }

    /// Publishes whose retransmit timer fired.
    pub fn poll(&mut self, now: Instant) -> Vec<SyncMsg> {
        let ids: Vec<u64> = self
            .outbox
            .poll_resend(now)
            .iter()
            .map(|t| t.message_id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.publish_msg(id))
            .collect()
    }

    fn publish_msg(&self, id: u64) -> Option<SyncMsg> {
        self.bodies.get(&id).map(|b| SyncMsg::Publish {
            update_id: id,
            bytes: b.clone(),
        })
    }

    /// Reserves the next update id for `bytes`; the caller commits the
    /// returned commit (the publish is then durable) and then calls
    /// [`Subscriber::published`].
    pub fn prepare_publish(
        &mut self,
        bytes: &[u8],
    ) -> Result<(u64, SyncSubscriberCommit), PublishError> {
        if bytes.len() > self.config.max_update_bytes {
            return Err(PublishError::Oversized {
                len: bytes.len(),
                max: self.config.max_update_bytes,
            });
        }
        let id = self.next_update_id;
        self.next_update_id += 1;
        let commit = SyncSubscriberCommit {
            outbox_add: vec![(id, bytes.to_vec())],
            next_update_id: Some(self.next_update_id),
            ..Default::default()
        };
        Ok((id, commit))
    }

    /// A prepared publish is durable: queue it; returns what to send now
    /// (nothing while the credit window is full).
    pub fn published(&mut self, id: u64, bytes: Vec<u8>, now: Instant) -> Vec<SyncMsg> {
        self.outbox.push(id, id, TrafficClass::Sync as u8, true);
        self.bodies.insert(id, bytes);
        self.send_waiting(now)
    }

    fn send_waiting(&mut self, now: Instant) -> Vec<SyncMsg> {
        let ids: Vec<u64> = self
            .outbox
            .poll_send(now)
            .iter()
            .map(|t| t.message_id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.publish_msg(id))
            .collect()
    }

    /// A peer other than the owner sent an owner's message: the refusal
    /// to send it and the event to report.
    pub fn foreign(&self, peer: &str) -> (SyncMsg, SubscriberEvent) {
        (
            SyncMsg::refuse(
                RefuseCode::NotOwner,
                None,
                format!("not the owner of {}", self.doc_id),
            ),
            SubscriberEvent::NotOwner {
                peer: peer.to_string(),
            },
        )
    }

    /// Handles one message from the owner.
    pub fn on_message(&mut self, msg: SyncMsg, now: Instant) -> SubscriberOutput {
        let mut out = SubscriberOutput::default();
        self.heard = true;
        match msg {
            SyncMsg::Update {
                cursor,
                publisher,
                update_id,
                bytes,
            } => self.on_update(cursor, publisher, update_id, bytes, &mut out),
            SyncMsg::Snapshot {
                cursor,
                acked_through,
                total_len,
                offset,
                bytes,
            } => self.on_snapshot(cursor, acked_through, total_len, offset, bytes, &mut out),
            SyncMsg::PublishAck { through } => self.ack_through(through, &mut out),
            SyncMsg::Head { cursor } => {
                let other_epoch = cursor.epoch != self.cursor.epoch;
                // An empty log in another epoch only matters to a
                // subscriber that holds state of some epoch.
                let behind = (other_epoch && (cursor.seq > 0 || self.cursor.epoch != 0))
                    || (!other_epoch && cursor.seq > self.cursor.seq);
                if behind {
                    // The head follows every snapshot the owner sends: a
                    // snapshot still incomplete now lost a chunk.
                    self.assembly = None;
                    out.send.push(SyncMsg::Resync {
                        cursor: self.cursor,
                    });
                }
            }
            SyncMsg::Refuse {
                code,
                update_id,
                detail,
            } => match (RefuseCode::from_code(code), update_id) {
                (Some(RefuseCode::CursorFromFuture | RefuseCode::WrongEpoch), _) => {
                    self.expect_snapshot = true;
                    out.events.push(SubscriberEvent::Refused { code, detail });
                }
                (_, Some(id)) if self.bodies.contains_key(&id) => {
                    self.outbox.on_ack(id);
                    self.bodies.remove(&id);
                    out.commit.outbox_remove.push(id);
                    out.events.push(SubscriberEvent::PublishRefused {
                        update_id: id,
                        code,
                    });
                }
                _ => out.events.push(SubscriberEvent::Refused { code, detail }),
            },
            // Subscriber-side messages from the owner mean nothing here.
            SyncMsg::Subscribe { .. } | SyncMsg::Publish { .. } | SyncMsg::Resync { .. } => {}
        }
        out.send.extend(self.send_waiting(now));
        out
    }

    fn ack_through(&mut self, through: u64, out: &mut SubscriberOutput) {
        let settled: Vec<u64> = self.bodies.range(..=through).map(|(id, _)| *id).collect();
        if settled.is_empty() {
            return;
        }
        for id in settled {
            self.outbox.on_ack(id);
            self.bodies.remove(&id);
        }
        let t = out
            .commit
            .outbox_remove_through
            .map_or(through, |o| o.max(through));
        out.commit.outbox_remove_through = Some(t);
    }

    fn on_update(
        &mut self,
        cursor: Cursor,
        publisher: String,
        update_id: u64,
        bytes: Vec<u8>,
        out: &mut SubscriberOutput,
    ) {
        let fresh = self.cursor.epoch == 0;
        if !fresh && cursor.epoch != self.cursor.epoch {
            // Another epoch: only a snapshot can bring us there.
            self.ask(cursor, out);
            return;
        }
        if !fresh && cursor.seq <= self.cursor.seq {
            return; // a duplicate
        }
        let next = if fresh { 1 } else { self.cursor.seq + 1 };
        if cursor.seq != next {
            if self.ahead.len() < self.config.max_ahead || self.ahead.contains_key(&cursor.seq) {
                self.ahead
                    .insert(cursor.seq, (cursor, publisher, update_id, bytes));
            }
            self.ask(cursor, out);
            return;
        }
        if !self.apply(cursor, publisher, update_id, bytes, out) {
            return;
        }
        self.drain(out);
        self.maybe_compact(out);
    }

    /// Asks for a resync once per cursor position, and says so.
    fn ask(&mut self, got: Cursor, out: &mut SubscriberOutput) {
        if self.asked_at != Some(self.cursor) {
            self.asked_at = Some(self.cursor);
            out.events.push(SubscriberEvent::Gap {
                at: self.cursor,
                got,
            });
            out.send.push(SyncMsg::Resync {
                cursor: self.cursor,
            });
        }
    }

    fn drain(&mut self, out: &mut SubscriberOutput) {
        loop {
            let next = self.cursor.seq + 1;
            let Some((c, p, id, b)) = self.ahead.remove(&next) else {
                break;
            };
            if c.epoch != self.cursor.epoch || !self.apply(c, p, id, b, out) {
                break;
            }
        }
        let (epoch, seq) = (self.cursor.epoch, self.cursor.seq);
        self.ahead.retain(|s, (c, ..)| *s > seq && c.epoch == epoch);
    }

    fn apply(
        &mut self,
        cursor: Cursor,
        publisher: String,
        update_id: u64,
        bytes: Vec<u8>,
        out: &mut SubscriberOutput,
    ) -> bool {
        if let Err(e) = self.doc.apply(&bytes) {
            out.events.push(SubscriberEvent::ApplyFailed {
                cursor,
                error: e.0.clone(),
            });
            out.send.push(SyncMsg::refuse(
                RefuseCode::UndecodableUpdate,
                None,
                format!("{cursor}: {}", e.0),
            ));
            return false;
        }
        self.cursor = cursor;
        self.asked_at = None;
        out.commit.cursor = Some((cursor.epoch, cursor.seq));
        out.commit.append_applied.push(bytes);
        self.since_compaction += 1;
        if publisher == self.me {
            self.ack_through(update_id, out);
        }
        out.applied.push(Applied {
            cursor,
            publisher,
            update_id,
        });
        true
    }

    fn maybe_compact(&mut self, out: &mut SubscriberOutput) {
        if self.since_compaction >= self.config.compact_every {
            out.commit.replace_snapshot = Some(self.doc.snapshot());
            out.commit.append_applied.clear();
            self.since_compaction = 0;
        }
    }

    fn on_snapshot(
        &mut self,
        cursor: Cursor,
        acked_through: u64,
        total_len: u64,
        offset: u64,
        bytes: Vec<u8>,
        out: &mut SubscriberOutput,
    ) {
        let stale = cursor.epoch == self.cursor.epoch && cursor.seq <= self.cursor.seq;
        if stale && !self.expect_snapshot && self.cursor.epoch != 0 {
            return;
        }
        if total_len > self.config.max_snapshot_bytes {
            out.send.push(SyncMsg::refuse(
                RefuseCode::Oversized,
                None,
                format!("snapshot of {total_len} bytes is over the limit"),
            ));
            out.events.push(SubscriberEvent::Refused {
                code: RefuseCode::Oversized.code(),
                detail: "snapshot over the limit".into(),
            });
            return;
        }
        if offset == 0 {
            self.assembly = Some(Assembly {
                cursor,
                acked_through,
                total: total_len,
                buf: Vec::with_capacity(total_len as usize),
            });
        }
        let Some(a) = self.assembly.as_mut() else {
            return;
        };
        if a.cursor != cursor || a.buf.len() as u64 != offset || a.total != total_len {
            // A chunk went missing: wait for the next snapshot.
            self.assembly = None;
            return;
        }
        a.buf.extend_from_slice(&bytes);
        if (a.buf.len() as u64) < a.total {
            return;
        }
        let Some(a) = self.assembly.take() else {
            return;
        };
        if a.buf.len() as u64 != a.total {
            return;
        }
        if let Err(e) = self.doc.load(&a.buf) {
            out.events.push(SubscriberEvent::CorruptSnapshot {
                cursor,
                error: e.0.clone(),
            });
            out.send.push(SyncMsg::refuse(
                RefuseCode::CorruptSnapshot,
                None,
                format!("snapshot {cursor}: {}", e.0),
            ));
            return;
        }
        let from = self.cursor;
        self.cursor = a.cursor;
        self.expect_snapshot = false;
        self.asked_at = None;
        self.since_compaction = 0;
        out.events.push(SubscriberEvent::SnapshotLoaded {
            from,
            to: a.cursor,
            bytes: a.buf.len(),
        });
        out.commit.cursor = Some((a.cursor.epoch, a.cursor.seq));
        out.commit.append_applied.clear();
        out.commit.replace_snapshot = Some(a.buf);
        self.ack_through(a.acked_through, out);
        self.drain(out);
    }
}

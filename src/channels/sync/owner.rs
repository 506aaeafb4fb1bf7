//! The owner side of a sync channel, sans-IO ([`Owner`]): the cursor
//! authority of one document.
//!
//! Owns the document's ordered log: assigns every accepted update the next
//! cursor `(epoch, seq)`, dedupes publishes by (publisher, update id),
//! keeps the bounded [`ReplayWindow`] and a snapshot, and answers each
//! subscriber's cursor with a replay of what follows it, or with the
//! snapshot plus the updates after the snapshot, or with a typed refusal.
//! It never does I/O: every call returns an [`OwnerOutput`] whose `commit`
//! the caller makes durable **before** sending its `send` messages (a
//! publish is acknowledged only once it is on disk). Time is an explicit
//! wall-clock `now_ms`, stored with each entry for the age bound.

use std::collections::BTreeMap;

use super::document::Document;
use super::window::{ReplayWindow, WindowConfig};
use super::wire::{Cursor, RefuseCode, SyncMsg};
use crate::store::sync_store::{
    SyncLogEntry, SyncOwnerCommit, SyncOwnerRecord, SyncSnapshotRecord,
};

/// Tunables of an [`Owner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OwnerConfig {
    /// The replay window's bounds.
    pub window: WindowConfig,
    /// Publishes larger than this are refused. Default 256 KiB.
    pub max_update_bytes: usize,
    /// Snapshots are sent in chunks of at most this many bytes (below the
    /// frame limit). Default 256 KiB.
    pub snapshot_chunk: usize,
    /// At most this many updates answer one subscribe or resync; a
    /// [`SyncMsg::Head`] after them makes the subscriber ask for more.
    /// Default 1024 (below the stream inbox of 4096 frames).
    pub max_replay_batch: usize,
    /// Publishes ahead of a publisher's next expected id kept for later, per
    /// publisher. Default 256 (more are dropped and resent by the outbox).
    pub max_ahead_per_publisher: usize,
}

impl Default for OwnerConfig {
    fn default() -> Self {
        Self {
            window: WindowConfig::default(),
            max_update_bytes: 256 << 10,
            snapshot_chunk: 256 << 10,
            max_replay_batch: 1024,
            max_ahead_per_publisher: 256,
        }
    }
}

impl OwnerConfig {
    /// Sets the window bounds.
    pub fn window(mut self, window: WindowConfig) -> Self {
        self.window = window;
        self
    }

    /// Sets [`OwnerConfig::max_update_bytes`].
    pub fn max_update_bytes(mut self, n: usize) -> Self {
        self.max_update_bytes = n;
        self
    }

    /// Sets [`OwnerConfig::snapshot_chunk`] (at least 1).
    pub fn snapshot_chunk(mut self, n: usize) -> Self {
        self.snapshot_chunk = n.max(1);
        self
    }

    /// Sets [`OwnerConfig::max_replay_batch`] (at least 1).
    pub fn max_replay_batch(mut self, n: usize) -> Self {
        self.max_replay_batch = n.max(1);
        self
    }
}

/// What a subscriber may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Receive the log only.
    ReadOnly,
    /// Receive the log and publish updates.
    ReadWrite,
}

/// One update applied to a document, in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Its cursor.
    pub cursor: Cursor,
    /// Who published it.
    pub publisher: String,
    /// The publisher's id of it.
    pub update_id: u64,
}

/// Something an owner did that operators want to see.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OwnerEvent {
    /// A peer's message was refused.
    Refused {
        /// The peer.
        peer: String,
        /// Why.
        code: RefuseCode,
        /// The publish concerned, if any.
        update_id: Option<u64>,
    },
    /// A subscriber was answered with a replay after its cursor.
    Replayed {
        /// The subscriber.
        peer: String,
        /// Its cursor.
        from: Cursor,
        /// How many updates were sent.
        count: usize,
    },
    /// A subscriber was answered with a snapshot plus the updates after it.
    SnapshotSent {
        /// The subscriber.
        peer: String,
        /// The snapshot's cursor.
        cursor: Cursor,
        /// The snapshot's size.
        bytes: usize,
        /// How many updates followed it.
        diff: usize,
    },
    /// A subscriber reported a refusal of ours.
    PeerRefused {
        /// The subscriber.
        peer: String,
        /// Its code (raw: it may be unknown to us).
        code: u16,
        /// Its explanation.
        detail: String,
    },
}

/// What the caller must do after an [`Owner`] call: make `commit` durable,
/// then send each `(subscriber, message)` of `send` in order.
#[derive(Debug, Default)]
pub struct OwnerOutput {
    /// Store changes; empty when nothing changed.
    pub commit: SyncOwnerCommit,
    /// Messages to send after the commit, by subscriber.
    pub send: Vec<(String, SyncMsg)>,
    /// Updates accepted into the log, in order.
    pub applied: Vec<Applied>,
    /// Things worth reporting.
    pub events: Vec<OwnerEvent>,
}

/// The owner could not be opened from its stored state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OwnerError {
    /// The stored snapshot could not be loaded.
    #[error("stored snapshot does not load: {0}")]
    CorruptSnapshot(String),
    /// The stored log has a gap or an entry the document refuses.
    #[error("stored log is corrupt: {0}")]
    CorruptLog(String),
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    access: Access,
    attached: bool,
}

/// The owner core of one document.
pub struct Owner<D> {
    doc_id: String,
    me: String,
    doc: D,
    config: OwnerConfig,
    epoch: u64,
    head: u64,
    window: ReplayWindow,
    snapshot: Option<SyncSnapshotRecord>,
    /// Per publisher, the highest update id settled (accepted or refused).
    highs: BTreeMap<String, u64>,
    /// Per publisher, publishes ahead of the next expected id (`None`: to
    /// be refused as oversized when reached).
    ahead: BTreeMap<String, BTreeMap<u64, Option<Vec<u8>>>>,
    peers: BTreeMap<String, Peer>,
}

impl<D: Document> Owner<D> {
    /// Opens the owner of `doc_id` on node `me`. With no stored record the
    /// log starts empty in `fresh_epoch` (non-zero, e.g. random) and the
    /// returned commit records it; otherwise the document is rebuilt from
    /// the stored snapshot and log.
    pub fn open(
        doc_id: impl Into<String>,
        me: impl Into<String>,
        mut doc: D,
        config: OwnerConfig,
        record: Option<SyncOwnerRecord>,
        fresh_epoch: u64,
    ) -> Result<(Self, SyncOwnerCommit), OwnerError> {
        let mut window = ReplayWindow::new(config.window);
        let (epoch, head, snapshot, highs, commit) = match record {
            None => {
                let epoch = fresh_epoch.max(1);
                let commit = SyncOwnerCommit {
                    epoch,
                    ..Default::default()
                };
                (epoch, 0, None, BTreeMap::new(), commit)
            }
            Some(rec) => {
                let mut head = 0;
                if let Some(s) = &rec.snapshot {
                    doc.load(&s.bytes)
                        .map_err(|e| OwnerError::CorruptSnapshot(e.0))?;
                    head = s.seq;
                }
                if let Some(first) = rec.log.first()
                    && first.seq > head + 1
                {
                    return Err(OwnerError::CorruptLog(format!(
                        "log starts at {} after snapshot {head}",
                        first.seq
                    )));
                }
                let mut last = None;
                for e in rec.log {
                    if last.is_some_and(|l: u64| l + 1 != e.seq) {
                        return Err(OwnerError::CorruptLog(format!("gap before {}", e.seq)));
                    }
                    last = Some(e.seq);
                    if e.seq > head {
                        doc.apply(&e.bytes)
                            .map_err(|err| OwnerError::CorruptLog(format!("{}: {err}", e.seq)))?;
                        head = e.seq;
                    }
                    window.push(e);
                }
                let highs = rec.publishers.into_iter().collect();
                let commit = SyncOwnerCommit {
                    epoch: rec.epoch,
                    ..Default::default()
                };
                (rec.epoch, head, rec.snapshot, highs, commit)
            }
        };
        let owner = Self {
            doc_id: doc_id.into(),
            me: me.into(),
            doc,
            config,
            epoch,
            head,
            window,
            snapshot,
            highs,
            ahead: BTreeMap::new(),
            peers: BTreeMap::new(),
        };
        Ok((owner, commit))
    }

    /// The document's id.
    pub fn doc_id(&self) -> &str {
        &self.doc_id
    }

    /// The newest cursor of the log.
    pub fn head(&self) -> Cursor {
        Cursor::new(self.epoch, self.head)
    }

    /// The document.
    pub fn doc(&self) -> &D {
        &self.doc
    }

    /// The replay window.
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// The cursor of the stored snapshot, if any.
    pub fn snapshot_cursor(&self) -> Option<Cursor> {
        self.snapshot
            .as_ref()
            .map(|s| Cursor::new(self.epoch, s.seq))
    }

    /// Admits `peer` with `access`; only admitted peers are answered.
    pub fn admit(&mut self, peer: impl Into<String>, access: Access) {
        self.peers
            .entry(peer.into())
            .and_modify(|p| p.access = access)
            .or_insert(Peer {
                access,
                attached: false,
            });
    }

    /// Subscribers that attached (subscribed) so far.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.peers
            .iter()
            .filter(|(_, p)| p.attached)
            .map(|(n, _)| n.as_str())
    }

    fn out(&self) -> OwnerOutput {
        OwnerOutput {
            commit: SyncOwnerCommit {
                epoch: self.epoch,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Publishes an update of the owner itself; returns its cursor.
    pub fn publish_local(
        &mut self,
        bytes: Vec<u8>,
        now_ms: u64,
    ) -> Result<(Cursor, OwnerOutput), RefuseCode> {
        if bytes.len() > self.config.max_update_bytes {
            return Err(RefuseCode::Oversized);
        }
        let mut out = self.out();
        let update_id = self.highs.get(&self.me).copied().unwrap_or(0) + 1;
        let me = self.me.clone();
        if !self.accept(&me, update_id, bytes, now_ms, &mut out) {
            return Err(RefuseCode::UndecodableUpdate);
        }
        self.enforce(now_ms, &mut out);
        Ok((self.head(), out))
    }

    /// Drops entries past the window's age bound (call now and then).
    pub fn tick(&mut self, now_ms: u64) -> OwnerOutput {
        let mut out = self.out();
        self.enforce(now_ms, &mut out);
        out
    }

    /// A [`SyncMsg::Head`] for every attached subscriber (the heartbeat that
    /// lets a subscriber notice lost updates at the tail).
    pub fn heartbeat(&self) -> Vec<(String, SyncMsg)> {
        self.attached()
            .map(|p| {
                (
                    p.to_string(),
                    SyncMsg::Head {
                        cursor: self.head(),
                    },
                )
            })
            .collect()
    }

    /// Handles one message from `peer`.
    pub fn on_message(&mut self, peer: &str, msg: SyncMsg, now_ms: u64) -> OwnerOutput {
        let mut out = self.out();
        let Some(access) = self.peers.get(peer).map(|p| p.access) else {
            if !matches!(msg, SyncMsg::Refuse { .. }) {
                let update_id = match &msg {
                    SyncMsg::Publish { update_id, .. } => Some(*update_id),
                    _ => None,
                };
                self.refuse(
                    peer,
                    RefuseCode::NotAdmitted,
                    update_id,
                    "not admitted",
                    &mut out,
                );
            }
            return out;
        };
        match msg {
            SyncMsg::Subscribe { doc, cursor } => {
                if doc != self.doc_id {
                    let detail = format!("{} serves {}, not {doc}", self.me, self.doc_id);
                    self.refuse(peer, RefuseCode::UnknownDocument, None, detail, &mut out);
                    return out;
                }
                self.attach(peer);
                self.serve(peer, cursor, &mut out);
            }
            SyncMsg::Resync { cursor } => {
                self.attach(peer);
                self.serve(peer, cursor, &mut out);
            }
            SyncMsg::Publish { update_id, bytes } => {
                if access != Access::ReadWrite {
                    self.refuse(
                        peer,
                        RefuseCode::NotAdmitted,
                        Some(update_id),
                        "read-only",
                        &mut out,
                    );
                    return out;
                }
                self.on_publish(peer, update_id, bytes, now_ms, &mut out);
                self.enforce(now_ms, &mut out);
            }
            SyncMsg::Refuse { code, detail, .. } => {
                out.events.push(OwnerEvent::PeerRefused {
                    peer: peer.to_string(),
                    code,
                    detail,
                });
            }
            SyncMsg::Update { .. }
            | SyncMsg::Snapshot { .. }
            | SyncMsg::Head { .. }
            | SyncMsg::PublishAck { .. } => {
                let detail = format!("{} owns {}", self.me, self.doc_id);
                self.refuse(peer, RefuseCode::NotOwner, None, detail, &mut out);
            }
        }
        out
    }

    fn attach(&mut self, peer: &str) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.attached = true;
        }
    }

    fn refuse(
        &self,
        peer: &str,
        code: RefuseCode,
        update_id: Option<u64>,
        detail: impl Into<String>,
        out: &mut OwnerOutput,
    ) {
        out.send
            .push((peer.to_string(), SyncMsg::refuse(code, update_id, detail)));
        out.events.push(OwnerEvent::Refused {
            peer: peer.to_string(),
            code,
            update_id,
        });
    }

    fn on_publish(
        &mut self,
        peer: &str,
        update_id: u64,
        bytes: Vec<u8>,
        now_ms: u64,
        out: &mut OwnerOutput,
    ) {
        let high = self.highs.get(peer).copied().unwrap_or(0);
        let oversized = bytes.len() > self.config.max_update_bytes;
        if update_id <= high {
            out.send
                .push((peer.to_string(), SyncMsg::PublishAck { through: high }));
            return;
        }
        if oversized {
            // Refused at once, whatever its place in the publisher's order.
            let detail = format!("update larger than {} bytes", self.config.max_update_bytes);
            self.refuse(peer, RefuseCode::Oversized, Some(update_id), detail, out);
        }
        if update_id > high + 1 {
            let ahead = self.ahead.entry(peer.to_string()).or_default();
            if ahead.len() < self.config.max_ahead_per_publisher || ahead.contains_key(&update_id) {
                ahead.insert(update_id, (!oversized).then_some(bytes));
            }
            return;
        }
        let mut next = Some((update_id, (!oversized).then_some(bytes)));
        while let Some((id, body)) = next.take() {
            match body {
                Some(b) => {
                    self.accept(peer, id, b, now_ms, out);
                }
                // Oversized: refused when it arrived; settled in order.
                None => self.settle(peer, id, out),
            }
            next = self
                .ahead
                .get_mut(peer)
                .and_then(|a| a.remove(&(id + 1)))
                .map(|b| (id + 1, b));
        }
        if let Some(a) = self.ahead.get_mut(peer) {
            let high = self.highs.get(peer).copied().unwrap_or(0);
            a.retain(|id, _| *id > high);
        }
        let through = self.highs.get(peer).copied().unwrap_or(0);
        out.send
            .push((peer.to_string(), SyncMsg::PublishAck { through }));
    }

    fn settle(&mut self, publisher: &str, update_id: u64, out: &mut OwnerOutput) {
        self.highs.insert(publisher.to_string(), update_id);
        out.commit
            .publishers
            .push((publisher.to_string(), update_id));
    }

    /// Applies and logs one publish (`update_id` is the publisher's next);
    /// false if the document refused it (it is settled as refused).
    fn accept(
        &mut self,
        publisher: &str,
        update_id: u64,
        bytes: Vec<u8>,
        now_ms: u64,
        out: &mut OwnerOutput,
    ) -> bool {
        if let Err(e) = self.doc.apply(&bytes) {
            if publisher != self.me {
                self.settle(publisher, update_id, out);
                self.refuse(
                    publisher,
                    RefuseCode::UndecodableUpdate,
                    Some(update_id),
                    e.0,
                    out,
                );
            }
            return false;
        }
        self.settle(publisher, update_id, out);
        self.head += 1;
        let cursor = self.head();
        let entry = SyncLogEntry {
            seq: self.head,
            publisher: publisher.to_string(),
            update_id,
            accepted_at_ms: now_ms,
            bytes,
        };
        for p in self
            .peers
            .iter()
            .filter(|(_, p)| p.attached)
            .map(|(n, _)| n)
        {
            out.send.push((
                p.clone(),
                SyncMsg::Update {
                    cursor,
                    publisher: publisher.to_string(),
                    update_id,
                    bytes: entry.bytes.clone(),
                },
            ));
        }
        out.commit.append.push(entry.clone());
        self.window.push(entry);
        out.applied.push(Applied {
            cursor,
            publisher: publisher.to_string(),
            update_id,
        });
        true
    }

    /// Evicts entries past the window's bounds; before an entry newer than
    /// the snapshot leaves, a snapshot at the head is taken, so the
    /// snapshot plus the window always reach the head.
    fn enforce(&mut self, now_ms: u64, out: &mut OwnerOutput) {
        while let Some(front) = self.window.over_bounds(now_ms) {
            let seq = front.seq;
            if self.snapshot.as_ref().is_none_or(|s| s.seq < seq) {
                self.take_snapshot(out);
            }
            self.window.pop();
            out.commit.trim_through = Some(seq);
        }
    }

    fn take_snapshot(&mut self, out: &mut OwnerOutput) {
        let s = SyncSnapshotRecord {
            seq: self.head,
            bytes: self.doc.snapshot(),
            publishers: self.highs.iter().map(|(p, h)| (p.clone(), *h)).collect(),
        };
        out.commit.snapshot = Some(s.clone());
        self.snapshot = Some(s);
    }

    /// Answers a subscriber at `cursor`.
    fn serve(&mut self, peer: &str, cursor: Cursor, out: &mut OwnerOutput) {
        if cursor.epoch == self.epoch && cursor.seq > self.head {
            let detail = format!("cursor {cursor} is ahead of the head {}", self.head());
            self.refuse(peer, RefuseCode::CursorFromFuture, None, detail, out);
            return self.send_snapshot(peer, out);
        }
        if cursor.epoch != 0 && cursor.epoch != self.epoch {
            let detail = format!("cursor {cursor} is not of epoch {}", self.epoch);
            self.refuse(peer, RefuseCode::WrongEpoch, None, detail, out);
            return self.send_snapshot(peer, out);
        }
        let from = if cursor.epoch == 0 { 0 } else { cursor.seq };
        if !self.window.covers_after(from, self.head) {
            return self.send_snapshot(peer, out);
        }
        let mut count = 0;
        for e in self.window.after(from, self.config.max_replay_batch) {
            out.send.push((peer.to_string(), update_msg(self.epoch, e)));
            count += 1;
        }
        out.send.push((
            peer.to_string(),
            SyncMsg::Head {
                cursor: self.head(),
            },
        ));
        if count > 0 {
            out.events.push(OwnerEvent::Replayed {
                peer: peer.to_string(),
                from: cursor,
                count,
            });
        }
    }

    fn send_snapshot(&mut self, peer: &str, out: &mut OwnerOutput) {
        if self.snapshot.is_none() {
            self.take_snapshot(out);
        }
        let Some(s) = self.snapshot.as_ref() else {
            return;
        };
        let cursor = Cursor::new(self.epoch, s.seq);
        let acked_through = s
            .publishers
            .iter()
            .find(|(p, _)| p == peer)
            .map_or(0, |(_, h)| *h);
        let total_len = s.bytes.len() as u64;
        let mut offset = 0;
        loop {
            let end = (offset + self.config.snapshot_chunk).min(s.bytes.len());
            out.send.push((
                peer.to_string(),
                SyncMsg::Snapshot {
                    cursor,
                    acked_through,
                    total_len,
                    offset: offset as u64,
                    bytes: s.bytes[offset..end].to_vec(),
                },
            ));
            offset = end;
            if offset >= s.bytes.len() {
                break;
            }
        }
        let mut diff = 0;
        for e in self.window.after(s.seq, self.config.max_replay_batch) {
            out.send.push((peer.to_string(), update_msg(self.epoch, e)));
            diff += 1;
        }
        out.send.push((
            peer.to_string(),
            SyncMsg::Head {
                cursor: self.head(),
            },
        ));
        out.events.push(OwnerEvent::SnapshotSent {
            peer: peer.to_string(),
            cursor,
            bytes: s.bytes.len(),
            diff,
        });
    }
}

fn update_msg(epoch: u64, e: &SyncLogEntry) -> SyncMsg {
    SyncMsg::Update {
        cursor: Cursor::new(epoch, e.seq),
        publisher: e.publisher.clone(),
        update_id: e.update_id,
        bytes: e.bytes.clone(),
    }
}

//! A `yrs` (Yjs) text as a sync channel [`Document`], and an editor that
//! makes concurrent edits the way a CRDT application does: it edits its
//! own `yrs` document (with its own client id) and publishes the update
//! that edit produced.

use interlocking::channels::sync::{DocError, Document};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// The replicated text: the channel applies the owner's log to it.
pub struct YText {
    doc: Doc,
}

impl Default for YText {
    fn default() -> Self {
        Self { doc: Doc::new() }
    }
}

impl YText {
    /// The text's current content.
    pub fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("text");
        let txn = self.doc.transact();
        text.get_string(&txn)
    }
}

impl Document for YText {
    fn apply(&mut self, update: &[u8]) -> Result<(), DocError> {
        let u = Update::decode_v1(update).map_err(|e| DocError(e.to_string()))?;
        let mut txn = self.doc.transact_mut();
        txn.apply_update(u).map_err(|e| DocError(e.to_string()))
    }

    fn snapshot(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn load(&mut self, snapshot: &[u8]) -> Result<(), DocError> {
        let fresh = Doc::new();
        {
            let u = Update::decode_v1(snapshot).map_err(|e| DocError(e.to_string()))?;
            let mut txn = fresh.transact_mut();
            txn.apply_update(u).map_err(|e| DocError(e.to_string()))?;
        }
        self.doc = fresh;
        Ok(())
    }
}

/// One participant's editing copy.
pub struct Editor {
    doc: Doc,
}

impl Editor {
    /// An editor with a client id of its own.
    pub fn new(client_id: u64) -> Self {
        Self {
            doc: Doc::with_client_id(client_id),
        }
    }

    /// Merges what the channel's document holds (a snapshot of it).
    pub fn merge(&mut self, snapshot: &[u8]) {
        if let Ok(u) = Update::decode_v1(snapshot) {
            let mut txn = self.doc.transact_mut();
            // Merging a state the editor partly has is what CRDTs do.
            let _ = txn.apply_update(u);
        }
    }

    /// Inserts `s` at a character position picked by `pick`; returns the
    /// update the edit produced.
    pub fn insert(&mut self, pick: u64, s: &str) -> Vec<u8> {
        let text = self.doc.get_or_insert_text("text");
        let mut txn = self.doc.transact_mut();
        // yrs indexes text by bytes here: insert at a character boundary.
        let current = text.get_string(&txn);
        let chars = current.chars().count() as u64;
        let nth = (pick % (chars + 1)) as usize;
        let at = current
            .char_indices()
            .nth(nth)
            .map_or(current.len(), |(b, _)| b);
        text.insert(&mut txn, at as u32, s);
        txn.encode_update_v1()
    }

    /// The editor's text.
    pub fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("text");
        let txn = self.doc.transact();
        text.get_string(&txn)
    }
}

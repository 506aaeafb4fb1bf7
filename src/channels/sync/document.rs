//! The application's side of a sync channel: the [`Document`] trait.
//!
//! Owns nothing but the contract: a document applies opaque updates in the
//! order the owner's log gives them, takes a snapshot of its whole state,
//! and replaces its state with a snapshot. The channel never looks inside
//! the bytes.

/// A document could not apply an update or load a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("document: {0}")]
pub struct DocError(pub String);

/// A replicated document: any state that evolves by applying updates in
/// one order. Implementations must be deterministic: the same snapshot
/// followed by the same updates gives the same state everywhere.
pub trait Document: Send + 'static {
    /// Applies one update. On error the document must be unchanged.
    fn apply(&mut self, update: &[u8]) -> Result<(), DocError>;

    /// The whole state, as bytes [`Document::load`] accepts.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with a snapshot. On error the document
    /// must be unchanged.
    fn load(&mut self, snapshot: &[u8]) -> Result<(), DocError>;
}

/// A ready-made [`Document`]: an append-only list of opaque entries (each
/// update is one entry). Useful for ordered event logs, and strict enough
/// to show a double or missing application in tests (order and count are
/// part of its state, unlike a CRDT's). An empty update is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendLog {
    /// The entries, in log order.
    pub entries: Vec<Vec<u8>>,
}

impl Document for AppendLog {
    fn apply(&mut self, update: &[u8]) -> Result<(), DocError> {
        if update.is_empty() {
            return Err(DocError("empty entry".into()));
        }
        self.entries.push(update.to_vec());
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            out.extend_from_slice(&(e.len() as u32).to_be_bytes());
            out.extend_from_slice(e);
        }
        out
    }

    fn load(&mut self, snapshot: &[u8]) -> Result<(), DocError> {
        let mut entries = Vec::new();
        let mut rest = snapshot;
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(DocError("truncated length".into()));
            }
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if n == 0 || rest.len() < n {
                return Err(DocError("truncated entry".into()));
            }
            entries.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        self.entries = entries;
        Ok(())
    }
}

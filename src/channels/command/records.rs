//! The sender's envelopes of pending commands (class-A outbox entries and
//! the class-B replay window), with the bytes they hold counted so the
//! outbox can be bounded in entries and in bytes
//! ([`SenderConfig::max_outbox`](super::SenderConfig::max_outbox)).

use std::collections::HashMap;

use super::envelope::Envelope;
use crate::vocab::DeliveryClass;

/// What a sender keeps to (re)transmit one command.
pub(super) struct Record {
    pub(super) envelope: Envelope,
    pub(super) traffic: u8,
    pub(super) delivery: DeliveryClass,
}

/// The bytes a record of `env` holds, as the outbox bound counts them: the
/// body, the operation key and a fixed allowance for the rest.
pub(super) fn envelope_size(env: &Envelope) -> usize {
    env.body.len() + env.operation_key.as_ref().map_or(0, String::len) + 64
}

impl Record {
    fn size(&self) -> usize {
        envelope_size(&self.envelope)
    }
}

/// Records by message id, with their total [`Record::size`].
#[derive(Default)]
pub(super) struct Records {
    map: HashMap<u64, Record>,
    bytes: usize,
}

impl Records {
    pub(super) fn insert(&mut self, id: u64, r: Record) {
        self.bytes += r.size();
        if let Some(old) = self.map.insert(id, r) {
            self.bytes -= old.size();
        }
    }

    pub(super) fn remove(&mut self, id: &u64) -> Option<Record> {
        let r = self.map.remove(id)?;
        self.bytes -= r.size();
        Some(r)
    }

    pub(super) fn get(&self, id: &u64) -> Option<&Record> {
        self.map.get(id)
    }

    /// The bytes all records hold.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::command::envelope::EnvelopeKind;
    use crate::vocab::StreamId;

    fn record(body: usize) -> Record {
        Record {
            envelope: Envelope {
                kind: EnvelopeKind::Command,
                message_id: 1,
                stream_id: StreamId::new("command:a/b"),
                issued_at_ms: 0,
                ttl_ms: 0,
                authority_epoch: 0,
                operation_key: Some("k".into()),
                body: vec![0; body],
            },
            traffic: 0,
            delivery: DeliveryClass::A,
        }
    }

    #[test]
    fn bytes_follow_inserts_replacements_and_removals() {
        let mut r = Records::default();
        r.insert(1, record(100));
        r.insert(2, record(10));
        assert_eq!(r.bytes(), 100 + 10 + 2 * 65);
        r.insert(1, record(1));
        assert_eq!(r.bytes(), 1 + 10 + 2 * 65);
        assert!(r.remove(&2).is_some());
        assert!(r.remove(&2).is_none());
        assert_eq!(r.bytes(), 1 + 65);
    }
}

//! Sync channel wire messages (`src/channels/sync/wire.rs`): a typed error
//! or a message that round-trips; stream names parse without panicking.
#![no_main]

use interlocking::channels::sync::SyncMsg;
use interlocking::channels::sync::wire::parse_stream;
use interlocking::vocab::StreamId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = SyncMsg::decode(data) {
        let again = SyncMsg::decode(&msg.encode()).expect("re-encoded sync message decodes");
        assert_eq!(again, msg);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let id = StreamId::new(s);
        let _ = parse_stream(&id);
    }
});

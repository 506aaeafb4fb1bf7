//! Command-channel envelope and reply body (`src/channels/command/envelope.rs`):
//! a typed error or a value that round-trips.
#![no_main]

use interlocking::channels::command::{Envelope, ReplyBody};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data) {
        let again = Envelope::decode(&env.encode()).expect("re-encoded envelope decodes");
        assert_eq!(again, env);
        // The sender decodes a reply's body like this (sender.rs).
        let _ = rmp_serde::from_slice::<ReplyBody>(&env.body);
    }
    if let Ok(body) = rmp_serde::from_slice::<ReplyBody>(data) {
        let bytes = rmp_serde::to_vec(&body).expect("encodes");
        assert_eq!(rmp_serde::from_slice::<ReplyBody>(&bytes).ok(), Some(body));
    }
});

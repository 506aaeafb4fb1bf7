//! WebRTC signalling payloads (`src/transports/webrtc/signalling.rs`): the
//! first byte picks the kind (one of the four, or an unknown one), the rest
//! is the payload; a typed error or a message that round-trips.
#![no_main]

use interlocking::transports::webrtc::signalling::{
    KIND_ANSWER, KIND_CANDIDATE, KIND_OFFER, KIND_REFUSED, SignalMsg,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let kind = match sel % 5 {
        0 => KIND_OFFER,
        1 => KIND_ANSWER,
        2 => KIND_CANDIDATE,
        3 => KIND_REFUSED,
        _ => "webrtc/unknown",
    };
    if let Ok(msg) = SignalMsg::decode(kind, payload) {
        assert_eq!(msg.kind(), kind);
        let again = SignalMsg::decode(kind, &msg.encode()).expect("re-encoded signal decodes");
        assert_eq!(again, msg);
        let _ = msg.ids();
    }
});

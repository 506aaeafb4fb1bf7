//! Frame decoder (`src/wire/codec`): any bytes give a frame or a typed
//! error, never a panic; the streaming decoder agrees with the one-shot one
//! whatever the chunking; a decoded frame re-encodes to a frame that
//! decodes to itself.
#![no_main]

use bytes::BytesMut;
use interlocking::wire::{CodecConfig, FrameDecoder, decode_frame, encode_to_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small limit so the over-limit paths are reached too.
    let cfg = CodecConfig::new(64 * 1024);
    let whole = decode_frame(data, &cfg);
    if let Ok(frame) = &whole {
        let bytes = encode_to_bytes(frame, &cfg).expect("a decoded frame re-encodes");
        let again = decode_frame(&bytes, &cfg).expect("a re-encoded frame decodes");
        assert_eq!(&again, frame);
    }
    // Streaming: feed in chunks whose size comes from the first byte.
    let step = 1 + data.first().copied().unwrap_or(0) as usize % 17;
    let mut dec = FrameDecoder::new(cfg);
    let mut buf = BytesMut::new();
    let mut frames = 0usize;
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let _ = dec.bytes_needed(&buf);
            match dec.decode(&mut buf) {
                Ok(Some(_)) => frames += 1,
                Ok(None) => break,
                Err(_) => return,
            }
            assert!(frames <= data.len(), "more frames than bytes");
        }
    }
});

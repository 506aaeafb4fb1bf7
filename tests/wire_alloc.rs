//! Memory bounds of decoding: no input, however large the lengths it
//! claims, makes a decoder allocate more than the configured frame limit.
//!
//! A counting global allocator records, per thread and only while a
//! measurement is running, the largest single allocation and the total
//! bytes allocated. Its state lives in `const` thread-locals holding
//! `Cell`s, which never allocate themselves.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use interlocking::wire::{
    CodecConfig, Data, DecodeError, Frame, FrameDecoder, FrameKind, PROTOCOL_VERSION, decode_frame,
    encode_to_bytes,
};
use proptest::prelude::*;

struct Counting;

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // `try_with`: allocations during thread teardown must not panic.
    let _ = ACTIVE.try_with(|active| {
        if active.get() {
            LARGEST.with(|l| l.set(l.get().max(size)));
            TOTAL.with(|t| t.set(t.get().saturating_add(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping
// only touches thread-local `Cell`s and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What one measured call allocated on this thread.
#[derive(Debug, Clone, Copy)]
struct Usage {
    largest: usize,
    total: usize,
}

/// Runs `f`, recording this thread's allocations while it runs.
fn measure<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    LARGEST.with(|l| l.set(0));
    TOTAL.with(|t| t.set(0));
    ACTIVE.with(|a| a.set(true));
    let r = f();
    ACTIVE.with(|a| a.set(false));
    let usage = Usage {
        largest: LARGEST.with(Cell::get),
        total: TOTAL.with(Cell::get),
    };
    (r, usage)
}

/// Slack for small bookkeeping allocations (error messages, shared-buffer
/// headers), far below any length an attacker can claim.
const SLACK: usize = 1024;

/// A frame of `kind` whose prefix announces exactly `body`.
fn framed(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut b = ((body.len() + 2) as u32).to_be_bytes().to_vec();
    b.extend_from_slice(&[PROTOCOL_VERSION, kind]);
    b.extend_from_slice(body);
    b
}

/// Bodies claiming huge containers and strings, in the positions each
/// kind's fields take.
fn hostile_bodies() -> Vec<Vec<u8>> {
    let max32 = [0xff, 0xff, 0xff, 0xff];
    let mut out = Vec::new();
    for marker in [0xdd, 0xdf, 0xdb, 0xc6, 0xc9] {
        // array32 / map32 / str32 / bin32 / ext32 of 2^32-1 at the top.
        out.push([&[marker][..], &max32].concat());
        // ... and as the first field of a well-formed array.
        out.push([&[0x95, marker][..], &max32].concat());
    }
    // array16 / str16 / bin16 of 65535.
    for marker in [0xdc, 0xda, 0xc5] {
        out.push(vec![0x95, marker, 0xff, 0xff]);
    }
    // A Data body whose payload claims 2^32-1 bytes.
    out.push([&[0x95, 0xa1, b's', 1, 2, 3, 0xc6][..], &max32].concat());
    // A Hello whose token claims 2^32-1 bytes.
    out.push(
        [
            &[0x94, 0xa1, b'n', 0xa3, b'h', b'u', b'b', 0, 0xdb][..],
            &max32,
        ]
        .concat(),
    );
    // Deep nesting of arrays.
    out.push(vec![0x91; 4000]);
    out
}

fn check_bounded(usage: Usage, cfg: &CodecConfig, input_len: usize) -> Result<(), TestCaseError> {
    prop_assert!(
        usage.largest <= cfg.max_frame_len + SLACK,
        "single allocation of {} bytes (limit {})",
        usage.largest,
        cfg.max_frame_len
    );
    prop_assert!(
        usage.total <= input_len + SLACK,
        "{} bytes allocated in total for {} input bytes",
        usage.total,
        input_len
    );
    Ok(())
}

#[test]
fn the_allocator_counts() {
    let (v, usage) = measure(|| Vec::<u8>::with_capacity(5000));
    drop(v);
    assert!(usage.largest >= 5000 && usage.total >= 5000, "{usage:?}");
    // A legitimate payload is copied by decode_frame and shows up.
    let frame = Frame::Data(Data {
        stream: "s".into(),
        incarnation: 1,
        seq: 1,
        message_id: 1,
        class: 0,
        delivery: 0,
        payload: vec![7u8; 3000].into(),
    });
    let bytes = encode_to_bytes(&frame, &CodecConfig::default()).unwrap();
    let (got, usage) = measure(|| decode_frame(&bytes, &CodecConfig::default()));
    assert_eq!(got, Ok(frame));
    assert!(usage.largest >= 3000, "{usage:?}");
}

#[test]
fn huge_length_prefixes_allocate_nothing() {
    let cfg = CodecConfig::default();
    for claim in [u32::MAX, 1 << 31, (cfg.max_frame_len + 1) as u32] {
        let mut bytes = claim.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[PROTOCOL_VERSION, 4, 0x97]);
        let (r, usage) = measure(|| decode_frame(&bytes, &cfg));
        assert!(matches!(r, Err(DecodeError::TooLarge { .. })), "{r:?}");
        assert_eq!(usage.total, 0, "{usage:?}");
        let mut buf = BytesMut::from(&bytes[..]);
        let mut dec = FrameDecoder::new(cfg);
        let (r, usage) = measure(|| dec.decode(&mut buf));
        assert!(matches!(r, Err(DecodeError::TooLarge { .. })), "{r:?}");
        assert_eq!(usage.total, 0, "{usage:?}");
    }
}

#[test]
fn hostile_bodies_are_rejected_within_bounds() {
    for cfg in [CodecConfig::default(), CodecConfig::new(4096)] {
        for kind in FrameKind::ALL {
            for body in hostile_bodies() {
                let bytes = framed(kind as u8, &body);
                let (r, usage) = measure(|| decode_frame(&bytes, &cfg));
                // Bodies longer than a small limit are refused as TooLarge.
                assert!(
                    matches!(
                        r,
                        Err(DecodeError::Malformed { .. } | DecodeError::TooLarge { .. })
                    ),
                    "{kind:?} {:02x?}: {r:?}",
                    &body[..body.len().min(8)]
                );
                check_bounded(usage, &cfg, bytes.len()).unwrap();

                let mut buf = BytesMut::from(&bytes[..]);
                let mut dec = FrameDecoder::new(cfg);
                let (r, usage) = measure(|| dec.decode(&mut buf));
                assert!(r.is_err(), "{kind:?}: {r:?}");
                check_bounded(usage, &cfg, bytes.len()).unwrap();
            }
        }
    }
}

#[test]
fn prefix_at_the_limit_with_a_short_body() {
    // The prefix is within the limit but the bytes never come: decode_frame
    // says Truncated, the streaming decoder waits, neither reserves the body.
    let cfg = CodecConfig::default();
    let mut bytes = (cfg.max_frame_len as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[
        PROTOCOL_VERSION,
        4,
        0x97,
        0xa1,
        b's',
        1,
        1,
        2,
        3,
        0,
        0xc6,
        0x00,
        0x0f,
        0xff,
        0xf0,
    ]);
    let (r, usage) = measure(|| decode_frame(&bytes, &cfg));
    assert!(matches!(r, Err(DecodeError::Truncated { .. })), "{r:?}");
    assert_eq!(usage.total, 0);
    let mut buf = BytesMut::from(&bytes[..]);
    let mut dec = FrameDecoder::new(cfg);
    let (r, usage) = measure(|| dec.decode(&mut buf));
    assert_eq!(r, Ok(None));
    assert_eq!(usage.total, 0);
}

#[test]
fn streaming_decode_shares_payloads_instead_of_copying() {
    let cfg = CodecConfig::default();
    let frame = Frame::Data(Data {
        stream: "s".into(),
        incarnation: 1,
        seq: 1,
        message_id: 1,
        class: 0,
        delivery: 0,
        payload: vec![7u8; 64 * 1024].into(),
    });
    let mut buf = BytesMut::from(&encode_to_bytes(&frame, &cfg).unwrap()[..]);
    let mut dec = FrameDecoder::new(cfg);
    let (r, usage) = measure(|| dec.decode(&mut buf));
    assert_eq!(r, Ok(Some(frame)));
    assert!(usage.largest < SLACK, "{usage:?}");
}

/// A header plus a body that starts with a length-claiming marker followed
/// by random bytes.
fn hostile_frame() -> impl Strategy<Value = Vec<u8>> {
    let marker = prop::sample::select(vec![
        0xc4u8, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf,
    ]);
    (
        1u8..=7,
        prop::collection::vec(marker, 1..4),
        prop::collection::vec(any::<u8>(), 0..24),
        any::<bool>(),
    )
        .prop_map(|(kind, markers, tail, wrap)| {
            let mut body = Vec::new();
            if wrap {
                body.push(0x95);
            }
            for m in markers {
                body.push(m);
                body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
            }
            body.extend_from_slice(&tail);
            framed(kind, &body)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_hostile_frames_stay_within_bounds(
        bytes in hostile_frame(),
        max in prop_oneof![Just(1_048_576usize), 16usize..4096],
    ) {
        let cfg = CodecConfig::new(max);
        let (r, usage) = measure(|| decode_frame(&bytes, &cfg));
        prop_assert!(r.is_err(), "{:?}", r);
        check_bounded(usage, &cfg, bytes.len())?;
        let mut buf = BytesMut::from(&bytes[..]);
        let mut dec = FrameDecoder::new(cfg);
        let (r, usage) = measure(|| dec.decode(&mut buf));
        prop_assert!(r.is_err(), "{:?}", r);
        check_bounded(usage, &cfg, bytes.len())?;
    }

    #[test]
    fn random_prefixes_stay_within_bounds(
        prefix in any::<u32>(),
        tail in prop::collection::vec(any::<u8>(), 0..32),
        max in 2usize..65536,
    ) {
        let cfg = CodecConfig::new(max);
        let mut bytes = prefix.to_be_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        let (_, usage) = measure(|| decode_frame(&bytes, &cfg));
        check_bounded(usage, &cfg, bytes.len())?;
        let mut buf = BytesMut::from(&bytes[..]);
        let mut dec = FrameDecoder::new(cfg);
        let (_, usage) = measure(|| dec.decode(&mut buf));
        check_bounded(usage, &cfg, bytes.len())?;
    }
}

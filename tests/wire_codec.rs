//! Property tests of the wire codec: every frame kind round-trips through
//! `encode`/`decode_frame` and the streaming decoder (whatever the chunking),
//! and no input — random or a mutated valid frame — makes either decoder
//! panic or return anything but a frame or a typed error.

use bytes::{Bytes, BytesMut};
use interlocking::vocab::{NodeId, Role, StreamId};
use interlocking::wire::{
    Ack, Close, CodecConfig, Data, DecodeError, Frame, FrameDecoder, Hello, JoinGranted,
    JoinRefused, JoinRequest, Lookup, LookupReply, PROTOCOL_VERSION, Probe, ProbeAck, Register,
    Reject, Relay, RelayRefused, Signal, decode_frame, encode, encode_to_bytes, encoded_len,
};
use proptest::prelude::*;

/// Integers spread over every MessagePack width (fixint, 8, 16, 32, 64 bit).
fn int() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..0x80u64,
        0x80..0x100u64,
        0x100..0x1_0000u64,
        0x1_0000..0x1_0000_0000u64,
        any::<u64>(),
        Just(u64::MAX),
    ]
}

/// Text of any Unicode, with lengths on both sides of the fixstr/str8
/// boundaries (31 and 255 bytes).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter),
        "[a-z0-9:/_-]{0,40}",
        "[a-z]{250,300}",
    ]
}

fn node() -> impl Strategy<Value = NodeId> {
    text().prop_map(NodeId::new)
}

fn stream() -> impl Strategy<Value = StreamId> {
    text().prop_map(StreamId::new)
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Hub),
        Just(Role::Root),
        Just(Role::Member),
        Just(Role::Sidecar),
        Just(Role::Browser),
    ]
}

/// Payloads from empty to a few KiB, across the bin8/bin16 boundary.
fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        prop::collection::vec(any::<u8>(), 0..4096),
    ]
    .prop_map(Bytes::from)
}

/// Lists of strings across the fixarray/array16 boundary (15 elements).
fn texts() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        prop::collection::vec(text(), 0..4),
        prop::collection::vec("[a-z0-9.:]{0,8}", 14..20),
    ]
}

/// The relay, rendezvous and admission kinds (codes 8–16).
fn root_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (node(), node(), payload()).prop_map(|(to, from, frame)| Frame::Relay(Relay {
            to,
            from,
            frame
        })),
        (node(), any::<u16>(), text())
            .prop_map(|(to, code, reason)| Frame::RelayRefused(RelayRefused { to, code, reason })),
        (texts(), texts()).prop_map(|(addrs, capabilities)| Frame::Register(Register {
            addrs,
            capabilities
        })),
        (int(), prop::option::of(node()), prop::option::of(text())).prop_map(
            |(request_id, node, capability)| Frame::Lookup(Lookup {
                request_id,
                node,
                capability
            })
        ),
        (
            int(),
            any::<u16>(),
            prop::option::of(node()),
            texts(),
            texts()
        )
            .prop_map(
                |(request_id, code, node, addrs, capabilities)| Frame::LookupReply(LookupReply {
                    request_id,
                    code,
                    node,
                    addrs,
                    capabilities
                })
            ),
        (node(), node(), text(), payload()).prop_map(|(to, from, kind, payload)| Frame::Signal(
            Signal {
                to,
                from,
                kind,
                payload
            }
        )),
        (text(), node(), role(), payload()).prop_map(|(token, node, role, public_key)| {
            Frame::JoinRequest(JoinRequest {
                token,
                node,
                role,
                public_key,
            })
        }),
        (payload(), payload(), int()).prop_map(|(cert, ca, expires_at_ms)| Frame::JoinGranted(
            JoinGranted {
                cert,
                ca,
                expires_at_ms
            }
        )),
        (any::<u16>(), text())
            .prop_map(|(code, reason)| Frame::JoinRefused(JoinRefused { code, reason })),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        root_frame(),
        (node(), role(), int(), prop::option::of(text())).prop_map(
            |(node, role, features, token)| {
                Frame::Hello(Hello {
                    node,
                    role,
                    features,
                    token,
                })
            }
        ),
        (int(), int()).prop_map(|(nonce, sent_at_us)| Frame::Probe(Probe { nonce, sent_at_us })),
        (int(), int())
            .prop_map(|(nonce, sent_at_us)| Frame::ProbeAck(ProbeAck { nonce, sent_at_us })),
        (
            (stream(), int(), int(), int()),
            (any::<u8>(), any::<u8>(), payload())
        )
            .prop_map(
                |((stream, incarnation, seq, message_id), (class, delivery, payload))| {
                    Frame::Data(Data {
                        stream,
                        incarnation,
                        seq,
                        message_id,
                        class,
                        delivery,
                        payload,
                    })
                }
            ),
        (stream(), int(), int(), int(), any::<u32>()).prop_map(
            |(stream, incarnation, seq, message_id, credit)| Frame::Ack(Ack {
                stream,
                incarnation,
                seq,
                message_id,
                credit,
            })
        ),
        (
            prop::option::of(stream()),
            prop::option::of(int()),
            any::<u16>(),
            text()
        )
            .prop_map(|(stream, message_id, code, reason)| Frame::Reject(Reject {
                stream,
                message_id,
                code,
                reason
            })),
        (any::<u32>(), text()).prop_map(|(code, reason)| Frame::Close(Close { code, reason })),
    ]
}

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match *m {
        Mutation::Flip { at, bit } if n > 0 => bytes[at % n] ^= 1 << bit,
        Mutation::Set { at, byte } if n > 0 => bytes[at % n] = byte,
        Mutation::Insert { at, byte } => bytes.insert(at % (n + 1), byte),
        Mutation::Delete { at } if n > 0 => {
            bytes.remove(at % n);
        }
        Mutation::Truncate { at } => bytes.truncate(at % (n + 1)),
        _ => {}
    }
}

fn config() -> impl Strategy<Value = CodecConfig> {
    prop_oneof![
        Just(CodecConfig::default()),
        (0usize..64).prop_map(CodecConfig::new),
        (64usize..8192).prop_map(CodecConfig::new),
    ]
}

/// Checks that `decode_frame` returns a frame or a typed error; a frame it
/// returns must re-encode to something that decodes to the same frame.
fn check_decode_frame(bytes: &[u8], cfg: &CodecConfig) -> Result<(), TestCaseError> {
    match decode_frame(bytes, cfg) {
        Ok(frame) => {
            let again = encode_to_bytes(&frame, &CodecConfig::new(usize::MAX))
                .map_err(|e| TestCaseError::fail(format!("re-encode failed: {e}")))?;
            prop_assert_eq!(
                decode_frame(&again, &CodecConfig::new(usize::MAX)),
                Ok(frame)
            );
        }
        Err(e) => {
            // Every error has a code in the codec range.
            prop_assert!((0x100..0x200).contains(&e.close_code()), "{e:?}");
        }
    }
    Ok(())
}

/// Feeds `bytes` to a streaming decoder in chunks of `chunk` bytes,
/// draining frames after each chunk; stops at the first error. Checks the
/// decoder always makes progress or asks for more, and returns the frames.
fn stream_decode(
    bytes: &[u8],
    chunk: usize,
    cfg: &CodecConfig,
) -> Result<(Vec<Frame>, Option<DecodeError>), TestCaseError> {
    let mut dec = FrameDecoder::new(*cfg);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    prop_assert!(buf.len() < before, "a frame consumed nothing");
                    frames.push(f);
                }
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before);
                    prop_assert!(dec.bytes_needed(&buf) >= 1);
                    break;
                }
                Err(e) => {
                    prop_assert_eq!(buf.len(), before, "an error consumed bytes");
                    prop_assert_eq!(dec.bytes_needed(&buf), 0);
                    return Ok((frames, Some(e)));
                }
            }
        }
    }
    Ok((frames, None))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_kind_round_trips(frame in frame()) {
        let cfg = CodecConfig::default();
        let bytes = encode_to_bytes(&frame, &cfg).unwrap();
        prop_assert_eq!(bytes.len(), encoded_len(&frame));
        prop_assert_eq!(&bytes[..4], &((bytes.len() - 4) as u32).to_be_bytes()[..]);
        prop_assert_eq!(bytes[4], PROTOCOL_VERSION);
        prop_assert_eq!(bytes[5], frame.kind() as u8);
        prop_assert_eq!(decode_frame(&bytes, &cfg), Ok(frame.clone()));
        let (frames, err) = stream_decode(&bytes, bytes.len(), &cfg)?;
        prop_assert_eq!(err, None);
        prop_assert_eq!(frames, vec![frame]);
    }

    #[test]
    fn frame_sequences_round_trip_in_any_chunking(
        frames in prop::collection::vec(frame(), 1..6),
        chunk in 1usize..700,
    ) {
        let cfg = CodecConfig::default();
        let mut buf = BytesMut::new();
        for f in &frames {
            encode(f, &mut buf, &cfg).unwrap();
        }
        let (got, err) = stream_decode(&buf, chunk, &cfg)?;
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn limit_is_exact(frame in frame()) {
        let len = encoded_len(&frame) - 4;
        let at = CodecConfig::new(len);
        let below = CodecConfig::new(len - 1);
        let bytes = encode_to_bytes(&frame, &at).unwrap();
        prop_assert!(encode_to_bytes(&frame, &below).is_err());
        prop_assert_eq!(decode_frame(&bytes, &at), Ok(frame));
        prop_assert_eq!(
            decode_frame(&bytes, &below),
            Err(DecodeError::TooLarge { len, max: len - 1 })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        cfg in config(),
        chunk in 1usize..64,
    ) {
        check_decode_frame(&bytes, &cfg)?;
        stream_decode(&bytes, chunk, &cfg)?;
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(
        kind in 1u8..=7,
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = ((body.len() + 2) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[PROTOCOL_VERSION, kind]);
        bytes.extend_from_slice(&body);
        let cfg = CodecConfig::default();
        check_decode_frame(&bytes, &cfg)?;
        let (frames, err) = stream_decode(&bytes, bytes.len(), &cfg)?;
        // A complete frame decodes exactly like decode_frame does.
        match decode_frame(&bytes, &cfg) {
            Ok(f) => prop_assert_eq!((frames, err), (vec![f], None)),
            Err(e) => prop_assert_eq!((frames, err), (vec![], Some(e))),
        }
    }

    #[test]
    fn mutated_frames_never_panic(
        frames in prop::collection::vec(frame(), 1..3),
        mutations in prop::collection::vec(mutation(), 1..5),
        cfg in config(),
        chunk in 1usize..300,
    ) {
        let mut buf = BytesMut::new();
        for f in &frames {
            encode(f, &mut buf, &CodecConfig::default()).unwrap();
        }
        let mut bytes = buf.to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check_decode_frame(&bytes, &cfg)?;
        stream_decode(&bytes, chunk, &cfg)?;
    }
}

//! Unit tests of the codec: goldens (also shown in `docs/wire.md`), shapes,
//! limits and every refusal.

use super::*;
use crate::vocab::NodeId;

fn cfg() -> CodecConfig {
    CodecConfig::default()
}

fn enc(frame: &Frame) -> Vec<u8> {
    encode_to_bytes(frame, &cfg()).unwrap().to_vec()
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn probe() -> Frame {
    Frame::Probe(Probe {
        nonce: 0x0102_0304_0506_0708,
        sent_at_us: 1_000_000,
    })
}

fn data() -> Frame {
    Frame::Data(Data {
        stream: StreamId::new("command:hub-1/member-7"),
        incarnation: 7,
        seq: 1,
        message_id: 42,
        class: 0,
        delivery: 0,
        payload: Bytes::from_static(b"hi"),
    })
}

/// Every golden frame with its exact bytes; `docs/wire.md` shows the
/// same hex.
fn goldens() -> Vec<(Frame, &'static str)> {
    vec![
        (
            Frame::Hello(Hello {
                node: NodeId::new("hub-1"),
                role: Role::Hub,
                features: 0,
                token: None,
            }),
            "0000000f 02 01 94 a5 6875622d31 a3 687562 00 c0",
        ),
        (
            Frame::Hello(Hello {
                node: NodeId::new("m-7"),
                role: Role::Member,
                features: 1,
                token: Some("tok".into()),
            }),
            "00000013 02 01 94 a3 6d2d37 a6 6d656d626572 01 a3 746f6b",
        ),
        (probe(), "00000011 02 02 92 cf 0102030405060708 ce 000f4240"),
        (
            Frame::ProbeAck(ProbeAck {
                nonce: 7,
                sent_at_us: 300,
            }),
            "00000007 02 03 92 07 cd 012c",
        ),
        (
            data(),
            "00000023 02 04 97 b6 636f6d6d616e643a6875622d312f6d656d6265722d37 07 01 2a 00 00 c4 02 6869",
        ),
        (
            Frame::Ack(Ack {
                stream: StreamId::new("s"),
                incarnation: 7,
                seq: 200,
                message_id: 70000,
                credit: 64,
            }),
            "0000000e 02 05 95 a1 73 07 cc c8 ce 00011170 40",
        ),
        (
            Frame::Reject(Reject {
                stream: None,
                message_id: Some(5),
                code: codes::TOO_LARGE,
                reason: "big".into(),
            }),
            "0000000c 02 06 94 c0 05 cd 0101 a3 626967",
        ),
        (
            Frame::Close(Close {
                code: 0,
                reason: String::new(),
            }),
            "00000005 02 07 92 00 a0",
        ),
        (
            Frame::Relay(Relay {
                to: NodeId::new("b"),
                from: NodeId::new("a"),
                frame: Bytes::from_static(&[0, 1]),
            }),
            "0000000b 02 08 93 a1 62 a1 61 c4 02 0001",
        ),
        (
            Frame::Register(Register {
                addrs: vec!["h:1".into()],
                capabilities: vec![],
            }),
            "00000009 02 0a 92 91 a3 683a31 90",
        ),
        (
            Frame::Lookup(Lookup {
                request_id: 1,
                node: None,
                capability: Some("cam".into()),
            }),
            "00000009 02 0b 93 01 c0 a3 63616d",
        ),
        (
            Frame::JoinRefused(JoinRefused {
                code: codes::root::TOKEN_REUSED,
                reason: String::new(),
            }),
            "00000007 02 10 92 cd 021a a0",
        ),
    ]
}

#[test]
fn golden_bytes_encode_and_decode() {
    for (frame, text) in goldens() {
        let bytes = hex(text);
        assert_eq!(enc(&frame), bytes, "encoding of {frame:?}");
        assert_eq!(encoded_len(&frame), bytes.len(), "encoded_len of {frame:?}");
        assert_eq!(decode_frame(&bytes, &cfg()).unwrap(), frame);
    }
}

#[test]
fn docs_show_the_golden_bytes() {
    let doc = include_str!("../../../docs/wire.md");
    for (frame, text) in goldens() {
        assert!(doc.contains(text), "docs/wire.md lacks {text} ({frame:?})");
    }
}

#[test]
fn docs_refused_inputs_table() {
    let c = cfg();
    assert!(matches!(
        decode_frame(&hex("ffffffff"), &c),
        Err(DecodeError::TooLarge {
            len: 4294967295,
            ..
        })
    ));
    assert_eq!(
        decode_frame(&hex("00000001 01"), &c),
        Err(DecodeError::TooShort { len: 1 })
    );
    assert_eq!(
        decode_frame(&hex("00000005 01"), &c),
        Err(DecodeError::UnsupportedVersion { version: 1 })
    );
    assert_eq!(
        decode_frame(&hex("00000005 02 11"), &c),
        Err(DecodeError::UnknownKind { kind: 17 })
    );
    for text in ["00000004 02 02 91 01", "00000006 02 02 92 01 02 00"] {
        assert!(matches!(
            decode_frame(&hex(text), &c),
            Err(DecodeError::Malformed {
                kind: FrameKind::Probe,
                ..
            })
        ));
    }
}

#[test]
fn golden_probe_and_data_field_encodings() {
    // Probe: fixarray(2), uint64, uint32.
    let p = enc(&probe());
    assert_eq!(
        &p[..6],
        &[0, 0, 0, 0x11, PROTOCOL_VERSION, FrameKind::Probe as u8]
    );
    assert_eq!(p[6], 0x92);
    assert_eq!(p[7], 0xcf);
    assert_eq!(p[16], 0xce);
    // Data: fixarray(7), fixstr, fixint ×5, bin8.
    let d = enc(&data());
    assert_eq!(d[6], 0x97);
    assert_eq!(d[7], 0xa0 | 22);
    assert_eq!(&d[d.len() - 4..], &[0xc4, 2, b'h', b'i']);
}

#[test]
fn roles_are_snake_case_strings() {
    for (role, name) in [
        (Role::Hub, "hub"),
        (Role::Root, "root"),
        (Role::Member, "member"),
        (Role::Sidecar, "sidecar"),
        (Role::Browser, "browser"),
    ] {
        let mut want = vec![0xa0 | name.len() as u8];
        want.extend_from_slice(name.as_bytes());
        assert_eq!(rmp_serde::to_vec(&role).unwrap(), want);
        assert_eq!(role_name(role), name);
    }
}

#[test]
fn long_fields_use_wider_markers() {
    let f = Frame::Data(Data {
        stream: StreamId::new("x".repeat(40)),
        incarnation: 1,
        seq: u64::MAX,
        message_id: 0x1_0000,
        class: 4,
        delivery: 2,
        payload: Bytes::from(vec![9u8; 70_000]),
    });
    let b = enc(&f);
    assert_eq!(b.len(), encoded_len(&f));
    assert_eq!(&b[7..9], &[0xd9, 40]); // str8
    assert_eq!(b[49], 1); // incarnation, fixint
    assert_eq!(b[50], 0xcf); // uint64
    assert_eq!(b[59], 0xce); // uint32
    assert_eq!(b[64], 4); // class, fixint
    assert_eq!(b[65], 2); // delivery
    assert_eq!(&b[66..71], &[0xc6, 0, 1, 0x11, 0x70]); // bin32
    assert_eq!(decode_frame(&b, &cfg()).unwrap(), f);
    // A sender never sends an unknown class…
    let Frame::Data(d) = &f else { unreachable!() };
    let bad = Frame::Data(Data {
        class: 255,
        ..d.clone()
    });
    assert_eq!(
        encode_to_bytes(&bad, &cfg()),
        Err(EncodeError::UnknownClass { class: 255 })
    );
    // …and a receiver refuses one, whatever its integer width (here
    // uint8 `cc ff`), while accepting a known class in a wide form.
    let with_class = |marker: &[u8]| {
        let mut w = b[..64].to_vec();
        w.extend_from_slice(marker);
        w.extend_from_slice(&b[65..]);
        let l = (w.len() - PREFIX_LEN) as u32;
        w[..4].copy_from_slice(&l.to_be_bytes());
        w
    };
    assert_eq!(
        decode_frame(&with_class(&[0xcc, 255]), &cfg()),
        Err(DecodeError::UnknownClass { class: 255 })
    );
    assert_eq!(decode_frame(&with_class(&[0xcc, 4]), &cfg()).unwrap(), f);
}

#[test]
fn encode_refuses_too_large_and_leaves_buffer() {
    let f = data();
    let len = encoded_len(&f) - PREFIX_LEN;
    let small = CodecConfig::new(len - 1);
    let mut buf = BytesMut::from(&b"keep"[..]);
    assert_eq!(
        encode(&f, &mut buf, &small),
        Err(EncodeError::TooLarge { len, max: len - 1 })
    );
    assert_eq!(&buf[..], b"keep");
    assert_eq!(encode(&f, &mut buf, &CodecConfig::new(len)), Ok(()));
    assert_eq!(
        EncodeError::TooLarge { len: 1, max: 0 }.close_code(),
        u32::from(codes::TOO_LARGE)
    );
}

#[test]
fn truncated_from_decode_frame() {
    let b = enc(&data());
    assert_eq!(
        decode_frame(&b[..3], &cfg()),
        Err(DecodeError::Truncated { needed: 4, got: 3 })
    );
    assert_eq!(
        decode_frame(&b[..5], &cfg()),
        Err(DecodeError::Truncated {
            needed: b.len(),
            got: 5
        })
    );
    let e = decode_frame(&b[..b.len() - 1], &cfg()).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Truncated {
            needed: b.len(),
            got: b.len() - 1
        }
    );
    assert_eq!(e.close_code(), 0x105);
}

#[test]
fn trailing_bytes_after_frame() {
    let mut b = enc(&probe());
    b.push(0);
    let e = decode_frame(&b, &cfg()).unwrap_err();
    assert_eq!(e, DecodeError::TrailingBytes { extra: 1 });
    assert_eq!(e.reject_code(), codes::TRAILING_BYTES);
}

#[test]
fn too_large_prefix_is_refused_without_body() {
    let b = [0xff, 0xff, 0xff, 0xff];
    let want = DecodeError::TooLarge {
        len: u32::MAX as usize,
        max: DEFAULT_MAX_FRAME_LEN,
    };
    assert_eq!(decode_frame(&b, &cfg()), Err(want.clone()));
    let mut dec = FrameDecoder::default();
    let mut buf = BytesMut::from(&b[..]);
    assert_eq!(dec.decode(&mut buf), Err(want.clone()));
    assert_eq!(buf.len(), 4, "nothing consumed");
    assert_eq!(want.close_code(), 0x101);
    // Exactly the limit is accepted as a header.
    let c = CodecConfig::new(10);
    let mut buf = BytesMut::from(&[0u8, 0, 0, 10, PROTOCOL_VERSION, 2][..]);
    assert_eq!(FrameDecoder::new(c).decode(&mut buf), Ok(None));
    let mut buf = BytesMut::from(&[0u8, 0, 0, 11][..]);
    assert_eq!(
        FrameDecoder::new(c).decode(&mut buf),
        Err(DecodeError::TooLarge { len: 11, max: 10 })
    );
}

#[test]
fn too_short_prefix() {
    for len in [0u8, 1] {
        let e = decode_frame(&[0, 0, 0, len, 1], &cfg()).unwrap_err();
        assert_eq!(e, DecodeError::TooShort { len: len.into() });
        assert_eq!(e.close_code(), 0x104);
    }
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(
        FrameDecoder::default().decode(&mut buf),
        Err(DecodeError::TooShort { len: 0 })
    );
}

#[test]
fn unsupported_version() {
    let mut b = enc(&probe());
    b[4] = 1;
    let e = decode_frame(&b, &cfg()).unwrap_err();
    assert_eq!(e, DecodeError::UnsupportedVersion { version: 1 });
    assert_eq!(e.close_code(), 0x102);
    // Reported as soon as the version byte arrives.
    let mut buf = BytesMut::from(&b[..5]);
    assert_eq!(FrameDecoder::default().decode(&mut buf), Err(e));
}

#[test]
fn unknown_kind() {
    for k in [0u8, 17, 0xff] {
        let mut b = enc(&probe());
        b[5] = k;
        let e = decode_frame(&b, &cfg()).unwrap_err();
        assert_eq!(e, DecodeError::UnknownKind { kind: k });
        assert_eq!(e.close_code(), 0x103);
        let mut buf = BytesMut::from(&b[..6]);
        assert_eq!(FrameDecoder::default().decode(&mut buf), Err(e));
    }
}

#[test]
fn unknown_traffic_classes_are_refused_by_encoder_and_decoder() {
    // `data()` encodes its class (0) as one fixint at offset 33; write
    // each class as `uint8` there instead (any width is accepted).
    let golden = enc(&data());
    assert_eq!(golden[33], 0);
    for class in 0u8..=255 {
        let mut b = golden[..33].to_vec();
        b.extend_from_slice(&[0xcc, class]);
        b.extend_from_slice(&golden[34..]);
        let l = (b.len() - PREFIX_LEN) as u32;
        b[..4].copy_from_slice(&l.to_be_bytes());
        let mut buf = BytesMut::from(&b[..]);
        let got = FrameDecoder::default().decode(&mut buf);
        if class <= 4 {
            assert!(
                matches!(&got, Ok(Some(Frame::Data(d))) if d.class == class),
                "class {class}"
            );
            assert!(buf.is_empty());
        } else {
            let Frame::Data(d) = data() else {
                unreachable!()
            };
            assert_eq!(
                encode_to_bytes(&Frame::Data(Data { class, ..d }), &cfg()),
                Err(EncodeError::UnknownClass { class }),
                "a sender refuses class {class}"
            );
            let e = DecodeError::UnknownClass { class };
            assert_eq!(got, Err(e.clone()), "class {class}");
            assert_eq!(e.reject_code(), codes::UNKNOWN_CLASS);
            assert_eq!(buf.len(), b.len(), "nothing consumed on error");
            assert_eq!(decode_frame(&b, &cfg()), Err(e));
        }
    }
}

fn frame_of(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    let mut b = ((body.len() + 2) as u32).to_be_bytes().to_vec();
    b.push(PROTOCOL_VERSION);
    b.push(kind as u8);
    b.extend_from_slice(body);
    b
}

fn assert_malformed(kind: FrameKind, body: &[u8]) {
    match decode_frame(&frame_of(kind, body), &cfg()) {
        Err(e @ DecodeError::Malformed { kind: k, .. }) => {
            assert_eq!(k, kind);
            assert_eq!(e.close_code(), 0x100);
        }
        other => panic!("{kind:?} body {body:02x?}: expected Malformed, got {other:?}"),
    }
}

#[test]
fn malformed_bodies() {
    use FrameKind as K;
    assert_malformed(K::Probe, &[]); // empty body
    assert_malformed(K::Probe, &[0x91, 1]); // too few fields
    assert_malformed(K::Probe, &[0x93, 1, 2, 3]); // too many fields
    assert_malformed(K::Probe, &[0x92, 1, 2, 0]); // trailing bytes
    assert_malformed(K::Probe, &[0x82, 0xa1, b'a', 1, 0xa1, b'b', 2]); // map form
    assert_malformed(K::Probe, &[0x92, 0xff, 2]); // negative integer
    assert_malformed(K::Probe, &[0x92, 0xcf, 1, 2]); // truncated uint64
    assert_malformed(K::Probe, &[0x92, 0xc0, 2]); // nil for u64
    assert_malformed(K::Data, &[0x95, 0xa1, b's', 1, 2, 0xcd, 1, 0, 0xc4, 0]); // class > u8
    assert_malformed(K::Data, &[0x95, 0xa1, b's', 1, 2, 3, 0xa1, b'x']); // payload as str
    assert_malformed(K::Data, &[0x95, 0xc4, 1, b's', 1, 2, 3, 0xc4, 0]); // stream as bin
    assert_malformed(K::Data, &[0x95, 0xa1, 0xff, 1, 2, 3, 0xc4, 0]); // invalid UTF-8
    assert_malformed(
        K::Data,
        &[0x95, 0xa1, b's', 1, 2, 3, 0xc6, 0xff, 0xff, 0xff, 0xff],
    ); // huge bin
    assert_malformed(
        K::Hello,
        &[0x94, 0xa1, b'n', 0xa4, b'k', b'i', b'n', b'g', 0, 0xc0],
    ); // unknown role
    assert_malformed(
        K::Hello,
        &[
            0x94, 0xa1, b'n', 0x81, 0xa3, b'h', b'u', b'b', 0xc0, 0, 0xc0,
        ],
    ); // role as map
    assert_malformed(K::Reject, &[0x94, 0xc0, 0xc0, 0xce, 0, 1, 0, 0, 0xa0]); // code > u16
    assert_malformed(K::Close, &[0xdd, 0xff, 0xff, 0xff, 0xff]); // huge array
    assert_malformed(K::Ack, &[0xdb, 0xff, 0xff, 0xff, 0xff]); // not an array
    assert_malformed(K::Register, &[0x92, 0x91, 0x01, 0x90]); // int in a [str]
    assert_malformed(K::Register, &[0x92, 0xa1, b'x', 0x90]); // str for a [str]
    assert_malformed(K::Register, &[0x92, 0xdd, 0xff, 0xff, 0xff, 0xff, 0x90]); // huge list
    assert_malformed(K::Relay, &[0x93, 0xa1, b'b', 0xa1, b'a', 0xa1, b'x']); // frame as str
}

#[test]
fn wide_integer_markers_are_accepted() {
    // uint64 / int8 encodings of small values decode to the same frame.
    let b = frame_of(
        FrameKind::Probe,
        &[0x92, 0xcf, 0, 0, 0, 0, 0, 0, 0, 1, 0xd0, 2],
    );
    assert_eq!(
        decode_frame(&b, &cfg()).unwrap(),
        Frame::Probe(Probe {
            nonce: 1,
            sent_at_us: 2
        })
    );
}

#[test]
fn streaming_byte_by_byte_yields_one_frame_at_the_end() {
    let b = enc(&data());
    let mut dec = FrameDecoder::default();
    let mut buf = BytesMut::new();
    for (i, byte) in b.iter().enumerate() {
        assert_eq!(dec.decode(&mut buf), Ok(None), "early frame at byte {i}");
        assert!(dec.bytes_needed(&buf) >= 1);
        buf.put_u8(*byte);
    }
    assert_eq!(dec.bytes_needed(&buf), 0);
    assert_eq!(dec.decode(&mut buf), Ok(Some(data())));
    assert!(buf.is_empty());
    assert_eq!(dec.decode(&mut buf), Ok(None));
}

#[test]
fn two_frames_back_to_back() {
    let mut buf = BytesMut::new();
    encode(&data(), &mut buf, &cfg()).unwrap();
    encode(&probe(), &mut buf, &cfg()).unwrap();
    buf.extend_from_slice(&[0, 0]); // start of a third frame
    let mut dec = FrameDecoder::default();
    assert_eq!(dec.decode(&mut buf), Ok(Some(data())));
    assert_eq!(dec.decode(&mut buf), Ok(Some(probe())));
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], &[0, 0]);
}

#[test]
fn streaming_payload_shares_the_buffer() {
    let mut buf = BytesMut::new();
    encode(&data(), &mut buf, &cfg()).unwrap();
    let base = buf.as_ptr() as usize;
    let end = base + buf.len();
    let Some(Frame::Data(d)) = FrameDecoder::default().decode(&mut buf).unwrap() else {
        panic!("expected data");
    };
    let p = d.payload.as_ptr() as usize;
    assert!(
        p >= base && p + d.payload.len() <= end,
        "payload was copied"
    );
    assert_eq!(&d.payload[..], b"hi");
}

#[test]
fn malformed_in_stream_consumes_nothing() {
    let mut b = frame_of(FrameKind::Probe, &[0x91, 1]);
    b.extend_from_slice(&enc(&probe()));
    let mut buf = BytesMut::from(&b[..]);
    let before = buf.len();
    assert!(matches!(
        FrameDecoder::default().decode(&mut buf),
        Err(DecodeError::Malformed { .. })
    ));
    assert_eq!(buf.len(), before);
}

//! Every hex example in `docs/` is checked against the code: a code block
//! that follows a line `<!-- golden: TAG -->` is parsed out of the markdown,
//! decoded by the crate and encoded again, and must come back byte for
//! byte. A hex block without a tag fails too, so no example escapes.
//!
//! Tags:
//! * a frame kind (`Hello`, `Data`, …, `JoinRefused`): exactly one frame of
//!   that kind;
//! * `frames`: a concatenation of complete frames (a stream's bytes);
//! * `Envelope`: a command-channel envelope (`Data.payload` of a command
//!   stream);
//! * `ReplyBody`: the `body` of a reply envelope.
//!
//! The test is generic on purpose: when a format changes, only the
//! documents need new bytes.

use bytes::BytesMut;
use interlocking::channels::command::{Envelope, ReplyBody};
use interlocking::wire::{
    CodecConfig, Frame, FrameDecoder, FrameKind, decode_frame, encode_to_bytes,
};

/// One tagged example: where it is and what it says.
struct Example {
    file: String,
    line: usize,
    tag: String,
    bytes: Vec<u8>,
}

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let digits: String = text.split_whitespace().collect();
    if digits.is_empty() || digits.len() % 2 != 0 {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether a code block's text is nothing but hex byte groups.
fn looks_like_hex(text: &str) -> bool {
    let mut tokens = text.split_whitespace().peekable();
    tokens.peek().is_some()
        && tokens.all(|t| t.len() % 2 == 0 && t.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The tagged examples of one markdown file; panics on an untagged hex
/// block or a tag not followed by a code block.
fn examples(file: &str, text: &str) -> Vec<Example> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut pending: Option<(usize, String)> = None;
    while i < lines.len() {
        let l = lines[i].trim();
        if let Some(tag) = l
            .strip_prefix("<!-- golden:")
            .and_then(|r| r.strip_suffix("-->"))
        {
            assert!(pending.is_none(), "{file}:{}: two tags in a row", i + 1);
            pending = Some((i + 1, tag.trim().to_string()));
        } else if l.starts_with("```") {
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && !lines[end].trim().starts_with("```") {
                end += 1;
            }
            let body = lines[start..end].join("\n");
            match pending.take() {
                Some((line, tag)) => {
                    let bytes = parse_hex(&body)
                        .unwrap_or_else(|| panic!("{file}:{line}: golden {tag} is not hex"));
                    out.push(Example {
                        file: file.to_string(),
                        line,
                        tag,
                        bytes,
                    });
                }
                None => assert!(
                    !looks_like_hex(&body),
                    "{file}:{start}: a hex block without a `<!-- golden: TAG -->` line"
                ),
            }
            i = end;
        } else if !l.is_empty() {
            assert!(
                pending.is_none(),
                "{file}:{}: a golden tag must be followed by its code block",
                i + 1
            );
        }
        i += 1;
    }
    assert!(pending.is_none(), "{file}: a tag at the end of the file");
    out
}

fn all_examples() -> Vec<Example> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = format!("docs/{}", f.file_name().unwrap().to_string_lossy());
        out.extend(examples(&name, &text));
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn kind_named(tag: &str) -> Option<FrameKind> {
    FrameKind::ALL
        .iter()
        .copied()
        .find(|k| format!("{k:?}") == tag)
}

/// Decodes and re-encodes one example; returns what went wrong.
fn check(e: &Example) -> Result<(), String> {
    let cfg = CodecConfig::default();
    let again = match e.tag.as_str() {
        "frames" => {
            let mut buf = BytesMut::from(&e.bytes[..]);
            let mut dec = FrameDecoder::new(cfg);
            let mut out = Vec::new();
            while !buf.is_empty() {
                let f = dec
                    .decode(&mut buf)
                    .map_err(|err| format!("frame {}: {err}", out.len()))?
                    .ok_or_else(|| format!("ends inside frame {}", out.len()))?;
                out.push(f);
            }
            let mut bytes = Vec::new();
            for f in &out {
                bytes.extend_from_slice(&encode_to_bytes(f, &cfg).map_err(|e| e.to_string())?);
            }
            bytes
        }
        "Envelope" => Envelope::decode(&e.bytes)?.encode(),
        "ReplyBody" => {
            let r: ReplyBody = rmp_serde::from_slice(&e.bytes).map_err(|e| e.to_string())?;
            rmp_serde::to_vec(&r).map_err(|e| e.to_string())?
        }
        tag => {
            let want = kind_named(tag).ok_or_else(|| format!("unknown tag {tag:?}"))?;
            let f: Frame = decode_frame(&e.bytes, &cfg).map_err(|err| err.to_string())?;
            if f.kind() != want {
                return Err(format!("decodes as {:?}, tagged {tag}", f.kind()));
            }
            encode_to_bytes(&f, &cfg)
                .map_err(|e| e.to_string())?
                .to_vec()
        }
    };
    if again != e.bytes {
        return Err(format!(
            "re-encodes differently:\n  doc  {}\n  code {}",
            hex(&e.bytes),
            hex(&again)
        ));
    }
    Ok(())
}

#[test]
fn every_tagged_example_in_the_docs_round_trips_through_the_code() {
    let examples = all_examples();
    let failures: Vec<String> = examples
        .iter()
        .filter_map(|e| {
            check(e)
                .err()
                .map(|why| format!("{}:{} ({}): {why}", e.file, e.line, e.tag))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The documents show every frame kind at least once.
    for k in FrameKind::ALL {
        let name = format!("{k:?}");
        assert!(
            examples.iter().any(|e| e.tag == name),
            "no golden example of {name} in docs/"
        );
    }
}

#[test]
fn a_drifted_example_is_caught() {
    // The checker itself: bytes the code no longer reads (here a field
    // count that changed), a wrong tag, trailing bytes, an unknown tag and
    // an untagged hex block all fail.
    let doc = "<!-- golden: Close -->\n```\n00000005 02 07 92 00 a0\n```\n";
    let good = examples("t.md", doc);
    assert_eq!(good.len(), 1);
    assert!(check(&good[0]).is_ok());
    for bad in [
        "<!-- golden: Close -->\n```\n00000006 02 07 93 00 a0 00\n```\n",
        "<!-- golden: Probe -->\n```\n00000005 02 07 92 00 a0\n```\n",
        "<!-- golden: frames -->\n```\n00000005 02 07 92 00 a0 00\n```\n",
        "<!-- golden: Nope -->\n```\n00000005 02 07 92 00 a0\n```\n",
    ] {
        let e = examples("t.md", bad);
        assert!(check(&e[0]).is_err(), "{bad}");
    }
    // Non-canonical integer width decodes but does not re-encode the same.
    let wide = "<!-- golden: Close -->\n```\n00000006 02 07 92 cc 00 a0\n```\n";
    assert!(check(&examples("t.md", wide)[0]).is_err());
    let untagged = "text\n```\n00000005 02 07 92 00 a0\n```\n";
    assert!(std::panic::catch_unwind(|| examples("t.md", untagged)).is_err());
}

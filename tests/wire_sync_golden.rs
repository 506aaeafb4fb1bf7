//! The sync channel's wire messages against the golden bytes written in
//! `docs/sync.md`: every `golden <Name>: <hex>` line there must be exactly
//! the rmp-serde encoding of the sample message of that name, and decode
//! back to it; every sample must be documented.

use interlocking::channels::sync::{Cursor, RefuseCode, SyncMsg};

fn samples() -> Vec<(&'static str, SyncMsg)> {
    vec![
        (
            "Subscribe",
            SyncMsg::Subscribe {
                doc: "notes".into(),
                cursor: Cursor::new(7, 3),
            },
        ),
        (
            "Update",
            SyncMsg::Update {
                cursor: Cursor::new(7, 4),
                publisher: "m1".into(),
                update_id: 2,
                bytes: vec![0xde, 0xad],
            },
        ),
        (
            "Publish",
            SyncMsg::Publish {
                update_id: 2,
                bytes: vec![0xde, 0xad],
            },
        ),
        ("PublishAck", SyncMsg::PublishAck { through: 2 }),
        (
            "Snapshot",
            SyncMsg::Snapshot {
                cursor: Cursor::new(7, 4),
                acked_through: 2,
                total_len: 3,
                offset: 0,
                bytes: vec![1, 2, 3],
            },
        ),
        (
            "Resync",
            SyncMsg::Resync {
                cursor: Cursor::new(7, 3),
            },
        ),
        (
            "Head",
            SyncMsg::Head {
                cursor: Cursor::new(7, 4),
            },
        ),
        (
            "Refuse",
            SyncMsg::refuse(RefuseCode::Oversized, Some(2), "too big"),
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn docs_sync_md_golden_bytes_match_the_encoder() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sync.md");
    let doc = std::fs::read_to_string(path).expect("docs/sync.md");
    let goldens: Vec<(String, String)> = doc
        .lines()
        .filter_map(|l| l.trim().strip_prefix("golden "))
        .filter_map(|l| l.split_once(": "))
        .map(|(n, h)| (n.to_string(), h.trim().to_string()))
        .collect();
    for (name, msg) in samples() {
        let encoded = msg.encode();
        let want = goldens.iter().find(|(n, _)| n == name).unwrap_or_else(|| {
            panic!(
                "docs/sync.md has no golden for {name}; it is: {}",
                hex(&encoded)
            )
        });
        assert_eq!(hex(&encoded), want.1, "golden bytes of {name}");
        assert_eq!(SyncMsg::decode(&encoded).unwrap(), msg);
    }
    assert_eq!(goldens.len(), samples().len(), "a golden without a sample");
}

#[test]
fn refusal_codes_in_docs_match_the_enum() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sync.md");
    let doc = std::fs::read_to_string(path).expect("docs/sync.md");
    for code in RefuseCode::ALL {
        let needle = format!("`0x{:04x}`", code.code());
        assert!(
            doc.contains(&needle),
            "docs/sync.md does not list {code:?} as {needle}"
        );
    }
}

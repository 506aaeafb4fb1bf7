//! Join tokens and the admission request (`src/root/admission.rs`, the
//! root's `admit` in `src/root/service.rs`), structure-aware: a real token
//! book holds one issued token; the input chooses whether the request
//! carries it, a mutation of it or arbitrary text, and which node, role,
//! time and public key it names. Checks: parsing never panics, a token
//! string round-trips, redeeming follows the documented order (a token
//! matches at most once; only the issued node and role are admitted), and
//! issuing for a hostile public key is a typed error.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use interlocking::root::{AdmissionBook, AdmissionError, JoinToken};
use interlocking::trust::CertificateAuthority;
use interlocking::vocab::{NodeId, Role};
use interlocking::wire::{CodecConfig, Frame, decode_frame};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum TokenText {
    /// The issued token, exactly.
    Issued,
    /// The issued token with one byte changed.
    Flipped(u16, u8),
    /// Anything.
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    token: TokenText,
    /// Use the issued node name instead of `node`.
    same_node: bool,
    node: String,
    role: u8,
    issued_role: u8,
    /// Redeem this many ms after issue (ttl is 60 s).
    after_ms: u32,
    /// Redeem twice.
    twice: bool,
    public_key: Vec<u8>,
    /// Raw bytes for the frame decoder, as a JoinRequest would arrive.
    frame: Vec<u8>,
}

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate("fuzz-ca").expect("CA"))
}

fuzz_target!(|input: Input| {
    let ca = ca();
    let book = AdmissionBook::in_memory();
    let now = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let issued_node = NodeId::new("member-1");
    let issued_role = Role::ALL[input.issued_role as usize % Role::ALL.len()];
    let token = book
        .issue(
            ca.fingerprint(),
            &issued_node,
            issued_role,
            Duration::from_secs(60),
            now,
            &[],
        )
        .expect("issue");
    let text = match &input.token {
        TokenText::Issued => token.to_string(),
        TokenText::Flipped(at, b) => {
            let mut bytes = token.to_string().into_bytes();
            let i = *at as usize % bytes.len();
            bytes[i] ^= b | 1;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        TokenText::Raw(s) => s.clone(),
    };
    let node = if input.same_node {
        issued_node.clone()
    } else {
        NodeId::new(&input.node)
    };
    let role = Role::ALL[input.role as usize % Role::ALL.len()];
    let at = now + Duration::from_millis(input.after_ms as u64);

    match text.parse::<JoinToken>() {
        Err(e) => assert!(matches!(e, AdmissionError::Unknown), "{e:?}"),
        Ok(parsed) => {
            assert_eq!(parsed.to_string().parse::<JoinToken>().ok(), Some(parsed.clone()));
            let first = book.redeem(&parsed, &node, role, at);
            // The book files a token under its secret alone; a token with
            // the issued secret and another CA fingerprint is the same
            // token to it (the root checks the fingerprint before, in
            // `admit`).
            let same = parsed.secret == token.secret;
            if !same {
                assert!(matches!(first, Err(AdmissionError::Unknown)), "{first:?}");
            } else if at >= now + Duration::from_secs(60) {
                assert!(matches!(first, Err(AdmissionError::Expired)), "{first:?}");
            } else if node != issued_node || role != issued_role {
                assert!(first.is_err(), "admitted {node:?} {role:?}");
            } else {
                assert!(first.is_ok(), "{first:?}");
            }
            if input.twice {
                let second = book.redeem(&parsed, &node, role, at);
                if same {
                    assert!(matches!(second, Err(AdmissionError::Reused)), "{second:?}");
                } else {
                    assert!(second.is_err());
                }
            }
        }
    }
    // What `admit` does with the request's public key.
    let _ = ca.issue_for_key(&node, role, &input.public_key, Duration::from_secs(3600));
    let _ = interlocking::trust::key_type(&input.public_key);
    if let Ok(Frame::JoinRequest(req)) = decode_frame(&input.frame, &CodecConfig::default()) {
        let _ = req.token.parse::<JoinToken>();
    }
});

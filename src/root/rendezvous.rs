//! Rendezvous rules: what a `Register` may say and what a `Lookup` gets.
//!
//! Owns the checks the root applies to rendezvous frames (`docs/root.md`
//! §4), as pure functions over the registry the service keeps: a
//! registration must fit the `LookupReply` that will carry it, list only
//! socket addresses, and claim only the capabilities the node's admission
//! granted; every `Lookup` gets a `LookupReply`, with a refusal code when
//! there is nothing to say.
//!
//! Must not touch: sockets, admission state (the caller passes the node's
//! grant), relayed frames.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use super::admission::{MAX_CAPABILITIES, codes};
use crate::vocab::NodeId;
use crate::wire::{CodecConfig, Frame, Lookup, LookupReply, Register, encoded_len};

/// The most addresses one `Register` may list.
pub const MAX_ADDRS: usize = 16;

/// What a node registered for rendezvous (checked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registration {
    /// Socket addresses the node can be dialled at.
    pub addrs: Vec<String>,
    /// Capabilities it serves (each granted by its admission).
    pub capabilities: Vec<String>,
}

/// A refused rendezvous frame: the code and a reason for the sender.
pub type Refusal = (u16, String);

/// Checks `r`, sent by `node` whose admission granted `allowed`, against
/// the rules of `docs/root.md` §4, in this order: counts
/// ([`codes::REGISTER_TOO_LARGE`]), addresses ([`codes::BAD_ADDRESS`]),
/// capabilities ([`codes::CAPABILITY_NOT_ALLOWED`]), and the size of the
/// `LookupReply` that would carry it ([`codes::REGISTER_TOO_LARGE`]).
pub fn check_register(
    node: &NodeId,
    r: &Register,
    allowed: &BTreeSet<String>,
    codec: &CodecConfig,
) -> Result<Registration, Refusal> {
    if r.addrs.len() > MAX_ADDRS || r.capabilities.len() > MAX_CAPABILITIES {
        return Err((
            codes::REGISTER_TOO_LARGE,
            format!(
                "{} addresses and {} capabilities; at most {MAX_ADDRS} and {MAX_CAPABILITIES}",
                r.addrs.len(),
                r.capabilities.len()
            ),
        ));
    }
    for a in &r.addrs {
        match a.parse::<SocketAddr>() {
            Ok(s) if s.port() != 0 && !s.ip().is_unspecified() => {}
            _ => {
                return Err((
                    codes::BAD_ADDRESS,
                    format!("{a:?} is not a dialable ip:port"),
                ));
            }
        }
    }
    for c in &r.capabilities {
        if !allowed.contains(c) {
            return Err((
                codes::CAPABILITY_NOT_ALLOWED,
                format!("capability {c:?} is not granted to {node}"),
            ));
        }
    }
    // The reply that carries the registration, at its largest header.
    let reply = Frame::LookupReply(LookupReply {
        request_id: u64::MAX,
        code: u16::MAX,
        node: Some(node.clone()),
        addrs: r.addrs.clone(),
        capabilities: r.capabilities.clone(),
    });
    let len = encoded_len(&reply) - crate::wire::PREFIX_LEN;
    if len > codec.max_frame_len {
        return Err((
            codes::REGISTER_TOO_LARGE,
            format!(
                "a LookupReply carrying it would be {len} bytes, above {}",
                codec.max_frame_len
            ),
        ));
    }
    Ok(Registration {
        addrs: r.addrs.clone(),
        capabilities: r.capabilities.clone(),
    })
}

/// Answers `l` from `registry`. `refusal(node)` says why a destination
/// cannot be reached, if it cannot (not admitted, offline, revoked);
/// `revoked(node)` whether a node is revoked. A lookup names exactly one of
/// node or capability; neither or both is [`codes::BAD_REQUEST`]. A
/// capability is served by the online node with the lowest id among those
/// that registered it.
pub fn answer(
    l: &Lookup,
    registry: &HashMap<NodeId, Registration>,
    refusal: impl Fn(&NodeId) -> Option<u16>,
    revoked: impl Fn(&NodeId) -> bool,
) -> LookupReply {
    let refused = |code| LookupReply {
        request_id: l.request_id,
        code,
        node: None,
        addrs: Vec::new(),
        capabilities: Vec::new(),
    };
    let found = |node: &NodeId, r: Option<&Registration>| LookupReply {
        request_id: l.request_id,
        code: 0,
        node: Some(node.clone()),
        addrs: r.map(|r| r.addrs.clone()).unwrap_or_default(),
        capabilities: r.map(|r| r.capabilities.clone()).unwrap_or_default(),
    };
    match (&l.node, &l.capability) {
        (Some(node), None) => match refusal(node) {
            Some(code) => refused(code),
            None => found(node, registry.get(node)),
        },
        (None, Some(cap)) => registry
            .iter()
            .filter(|(n, r)| r.capabilities.contains(cap) && !revoked(n))
            .min_by(|a, b| a.0.cmp(b.0))
            .map_or_else(|| refused(codes::NO_CAPABILITY), |(n, r)| found(n, Some(r))),
        _ => refused(codes::BAD_REQUEST),
    }
}

/// The reply to send when `reply` cannot be encoded (it is larger than the
/// frame limit): the same request refused with [`codes::INTERNAL`], so no
/// lookup goes unanswered.
pub fn unsendable(reply: &LookupReply) -> LookupReply {
    LookupReply {
        request_id: reply.request_id,
        code: codes::INTERNAL,
        node: None,
        addrs: Vec::new(),
        capabilities: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(addrs: &[&str], caps: &[&str]) -> Register {
        Register {
            addrs: addrs.iter().map(|s| s.to_string()).collect(),
            capabilities: caps.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn allowed(caps: &[&str]) -> BTreeSet<String> {
        caps.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn registers_are_checked_in_order() {
        let n = NodeId::new("m1");
        let c = CodecConfig::default();
        let ok = check_register(
            &n,
            &reg(&["127.0.0.1:4000", "[::1]:9"], &["cam"]),
            &allowed(&["cam", "mic"]),
            &c,
        )
        .unwrap();
        assert_eq!(ok.capabilities, vec!["cam".to_string()]);
        let code = |r: Register, a: &[&str], c: &CodecConfig| {
            check_register(&n, &r, &allowed(a), c).unwrap_err().0
        };
        let many: Vec<String> = (0..=MAX_ADDRS)
            .map(|i| format!("127.0.0.1:{}", i + 1))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(code(reg(&many, &[]), &[], &c), codes::REGISTER_TOO_LARGE);
        for bad in [
            "h:1",
            "127.0.0.1",
            "127.0.0.1:0",
            "0.0.0.0:80",
            "[::]:80",
            "",
        ] {
            assert_eq!(code(reg(&[bad], &[]), &[], &c), codes::BAD_ADDRESS, "{bad}");
        }
        assert_eq!(
            code(reg(&[], &["cam"]), &["mic"], &c),
            codes::CAPABILITY_NOT_ALLOWED
        );
        assert_eq!(
            code(reg(&[], &["cam"]), &[], &c),
            codes::CAPABILITY_NOT_ALLOWED,
            "a node without a grant may claim nothing"
        );
        // Fits the default limit, not a small one.
        let small = CodecConfig::new(40);
        let r = reg(&["127.0.0.1:4000", "127.0.0.1:4001"], &["camera"]);
        assert!(check_register(&n, &r, &allowed(&["camera"]), &c).is_ok());
        assert_eq!(code(r, &["camera"], &small), codes::REGISTER_TOO_LARGE);
    }

    #[test]
    fn every_lookup_gets_an_answer() {
        let mut registry = HashMap::new();
        registry.insert(
            NodeId::new("b"),
            Registration {
                addrs: vec!["127.0.0.1:2".into()],
                capabilities: vec!["cam".into()],
            },
        );
        registry.insert(
            NodeId::new("a"),
            Registration {
                addrs: vec![],
                capabilities: vec!["cam".into()],
            },
        );
        let l = |node: Option<&str>, cap: Option<&str>| Lookup {
            request_id: 9,
            node: node.map(NodeId::new),
            capability: cap.map(str::to_string),
        };
        let none = |_: &NodeId| None;
        let no = |_: &NodeId| false;
        let r = answer(&l(Some("b"), None), &registry, none, no);
        assert_eq!((r.code, r.addrs.len()), (0, 1));
        let r = answer(&l(None, Some("cam")), &registry, none, no);
        assert_eq!(r.node, Some(NodeId::new("a")), "lowest id serves");
        let r = answer(&l(None, Some("cam")), &registry, none, |n| {
            n.as_str() == "a"
        });
        assert_eq!(
            r.node,
            Some(NodeId::new("b")),
            "revoked nodes serve nothing"
        );
        let r = answer(&l(None, Some("x")), &registry, none, no);
        assert_eq!(r.code, codes::NO_CAPABILITY);
        let r = answer(&l(Some("z"), None), &registry, |_| Some(codes::OFFLINE), no);
        assert_eq!(r.code, codes::OFFLINE);
        for both_or_neither in [l(Some("b"), Some("cam")), l(None, None)] {
            let r = answer(&both_or_neither, &registry, none, no);
            assert_eq!((r.code, r.request_id), (codes::BAD_REQUEST, 9));
            assert!(r.node.is_none() && r.addrs.is_empty());
        }
        let r = unsendable(&answer(&l(Some("b"), None), &registry, none, no));
        assert_eq!((r.code, r.request_id), (codes::INTERNAL, 9));
    }
}

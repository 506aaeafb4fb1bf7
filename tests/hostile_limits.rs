//! Hostile input against the QUIC node endpoint's connection limits
//! (`docs/limits.md` §1), over real QUIC on loopback: a flood of
//! connections from one address is refused past
//! `QuicLimits::connections_per_address` with QUIC `CONNECTION_REFUSED`
//! and counted, a peer from another address is served during the flood,
//! and the address is served again once its connections end; the total
//! limit likewise. Every wait is bounded.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::contract::{until, wait_up};
use common::rawquic::{LIMIT, answered, code_of, connecting, hello};
use interlocking::transports::quic::{QuicConfig, QuicLimits, QuicTransport};
use interlocking::transports::{Fact, TransportEvent};
use interlocking::trust::CertificateAuthority;
use interlocking::vocab::{NodeId, Role};
use tokio::sync::mpsc;

/// QUIC transport error `CONNECTION_REFUSED` (RFC 9000 §20.1).
const CONNECTION_REFUSED: u64 = 0x2;

const FLOODER: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

struct Victim {
    t: Arc<QuicTransport>,
    rx: mpsc::Receiver<TransportEvent>,
    id: NodeId,
}

fn victim(ca: &CertificateAuthority, limits: QuicLimits) -> Victim {
    let id = NodeId::new("victim");
    let mut cfg = QuicConfig::new(ca.issue_node(&id, Role::Hub).unwrap(), ca.roots());
    cfg.limits = limits;
    let (tx, rx) = mpsc::channel(65536);
    Victim {
        t: QuicTransport::bind(cfg, tx).unwrap(),
        rx,
        id,
    }
}

/// A well-behaved member connection: authenticated, `Hello` sent first.
struct Peer {
    ep: quinn::Endpoint,
    conn: quinn::Connection,
    _control: quinn::SendStream,
}

impl Peer {
    /// Closes the connection and waits (bounded) until the close is sent.
    async fn close(self) {
        self.conn.close(0u8.into(), b"bye");
        tokio::time::timeout(LIMIT, self.ep.wait_idle())
            .await
            .expect("close sent in time");
    }
}

/// Opens a connection as `name` from `from`, sends its `Hello` and waits
/// until the victim reports it up.
async fn good(ca: &CertificateAuthority, v: &mut Victim, name: &str, from: [u8; 4]) -> Peer {
    let ident = ca.issue_node(&NodeId::new(name), Role::Member).unwrap();
    let (ep, c) = connecting(&ident, ca, IpAddr::from(from), v.t.local_addr(), &v.id);
    let conn = tokio::time::timeout(LIMIT, c)
        .await
        .expect("handshake in time")
        .expect("handshake succeeds");
    let mut control = conn.open_uni().await.unwrap();
    control.write_all(&hello(name, Role::Member)).await.unwrap();
    wait_up(&mut v.rx, &NodeId::new(name)).await;
    Peer {
        ep,
        conn,
        _control: control,
    }
}

/// Tries a connection as `name` from `from`; returns the code it was
/// refused with, or `None` if it was accepted.
async fn attempt(ca: &CertificateAuthority, v: &Victim, name: &str, from: [u8; 4]) -> Option<u64> {
    let ident = ca.issue_node(&NodeId::new(name), Role::Member).unwrap();
    let (_ep, c) = connecting(&ident, ca, IpAddr::from(from), v.t.local_addr(), &v.id);
    match tokio::time::timeout(LIMIT, c)
        .await
        .expect("answer in time")
    {
        Ok(conn) => {
            conn.close(0u8.into(), b"bye");
            None
        }
        Err(e) => Some(code_of(&e).unwrap_or_else(|| panic!("no code in {e:?}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_refused_and_other_addresses_are_served() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut v = victim(
        &ca,
        QuicLimits {
            connections_per_address: 3,
            ..QuicLimits::default()
        },
    );
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(good(&ca, &mut v, &format!("flood-{i}"), FLOODER).await);
    }
    for i in 3..10 {
        assert_eq!(
            attempt(&ca, &v, &format!("flood-{i}"), FLOODER).await,
            Some(CONNECTION_REFUSED),
            "connection {i} from the flooding address"
        );
    }
    assert_eq!(v.t.counters().refused_connections_per_address, 7);
    // During the flood, a peer from another address is served.
    let other = good(&ca, &mut v, "member", OTHER).await;
    answered(&other.conn, 1).await;
    // The flooder's connections end; the victim frees their slots.
    for p in held {
        p.close().await;
    }
    for i in 0..3 {
        let peer = NodeId::new(format!("flood-{i}"));
        until(&mut v.rx, LIMIT, |e| {
            e.path.peer == peer && matches!(e.fact, Fact::Down(_))
        })
        .await;
    }
    // The slot is given back when the victim's connection task sees the
    // close; retry (bounded) until it has.
    let mut served = false;
    for i in 0..200 {
        if attempt(&ca, &v, &format!("later-{i}"), FLOODER)
            .await
            .is_none()
        {
            served = true;
            break;
        }
    }
    assert!(
        served,
        "the address is served again after its connections end"
    );
    // The well-behaved peer was never disturbed.
    answered(&other.conn, 2).await;
    assert!(other.conn.close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_total_limit_are_refused_and_counted() {
    let ca = CertificateAuthority::generate("ca").unwrap();
    let mut v = victim(
        &ca,
        QuicLimits {
            connections_total: 2,
            ..QuicLimits::default()
        },
    );
    let a = good(&ca, &mut v, "a", FLOODER).await;
    let _b = good(&ca, &mut v, "b", OTHER).await;
    assert_eq!(
        attempt(&ca, &v, "c", [127, 0, 0, 3]).await,
        Some(CONNECTION_REFUSED)
    );
    let c = v.t.counters();
    assert_eq!(
        (
            c.refused_connections_total,
            c.refused_connections_per_address
        ),
        (1, 0)
    );
    answered(&a.conn, 7).await;
}

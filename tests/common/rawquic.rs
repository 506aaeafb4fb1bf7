//! Bare quinn peers for the hostile-input and conformance tests: a client
//! connection from a chosen local address with any identity, the QUIC close
//! code a connection ended with, and a probe round trip proving the node
//! still reads a connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use interlocking::trust::{self, CertificateAuthority, NodeIdentity};
use interlocking::vocab::{NodeId, Role};
use interlocking::wire::{self, CodecConfig, Frame, Hello, Probe};

/// The bound of every wait in these helpers.
pub const LIMIT: Duration = Duration::from_secs(10);

/// `frame` encoded with the default codec.
pub fn encoded(frame: &Frame) -> Vec<u8> {
    wire::encode_to_bytes(frame, &CodecConfig::default())
        .unwrap()
        .to_vec()
}

/// An encoded `Hello` naming `node` in `role`.
pub fn hello(node: &str, role: Role) -> Vec<u8> {
    encoded(&Frame::Hello(Hello {
        node: NodeId::new(node),
        role,
        features: 0,
        token: None,
    }))
}

/// Starts a bare connection from `local` (port 0) with `ident` to the node
/// `server` at `addr`; the caller awaits it. The endpoint is returned so a
/// caller can close it and wait until its close reached the node.
pub fn connecting(
    ident: &NodeIdentity,
    ca: &CertificateAuthority,
    local: IpAddr,
    addr: SocketAddr,
    server: &NodeId,
) -> (quinn::Endpoint, quinn::Connecting) {
    connecting_tuned(ident, ca, local, addr, server, |_| {})
}

/// [`connecting`] with the client's QUIC transport settings adjusted by
/// `tune` (e.g. a small receive window for a slow reader).
pub fn connecting_tuned(
    ident: &NodeIdentity,
    ca: &CertificateAuthority,
    local: IpAddr,
    addr: SocketAddr,
    server: &NodeId,
    tune: impl FnOnce(&mut quinn::TransportConfig),
) -> (quinn::Endpoint, quinn::Connecting) {
    let tls = trust::client_config(ident, &ca.roots()).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(SocketAddr::new(local, 0)).unwrap();
    let mut transport = quinn::TransportConfig::default();
    tune(&mut transport);
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport));
    ep.set_default_client_config(client);
    let c = ep.connect(addr, &trust::server_name(server)).unwrap();
    (ep, c)
}

/// A bare, authenticated connection from `local` with `ident` to the node
/// `server` at `addr`; panics if it fails or takes longer than [`LIMIT`].
pub async fn connect_from(
    ident: &NodeIdentity,
    ca: &CertificateAuthority,
    local: IpAddr,
    addr: SocketAddr,
    server: &NodeId,
) -> quinn::Connection {
    tokio::time::timeout(LIMIT, connecting(ident, ca, local, addr, server).1)
        .await
        .expect("handshake in time")
        .expect("handshake succeeds")
}

/// The code a connection ended with: QUIC transport error code or
/// application close code.
pub fn code_of(e: &quinn::ConnectionError) -> Option<u64> {
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => Some(u64::from(c.error_code)),
        quinn::ConnectionError::TransportError(t) => Some(u64::from(t.code)),
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

/// Waits (bounded) for `conn` to close and returns its code.
pub async fn closed_with(conn: &quinn::Connection) -> u64 {
    let e = tokio::time::timeout(LIMIT, conn.closed())
        .await
        .expect("connection closed in time");
    code_of(&e).unwrap_or_else(|| panic!("no code in {e:?}"))
}

/// Sends a `Probe` on a stream of `conn` and waits for the `ProbeAck`
/// datagram: proof that the node has installed the connection and reads it.
pub async fn answered(conn: &quinn::Connection, nonce: u64) {
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&encoded(&Frame::Probe(Probe {
        nonce,
        sent_at_us: 1,
    })))
    .await
    .unwrap();
    // The node's own probes arrive as datagrams too; skip them.
    for _ in 0..1000 {
        let got = tokio::time::timeout(LIMIT, conn.read_datagram())
            .await
            .expect("probe answered in time")
            .unwrap();
        match wire::decode_frame(&got, &CodecConfig::default()).unwrap() {
            Frame::ProbeAck(a) if a.nonce == nonce => return,
            Frame::Probe(_) => {}
            other => panic!("expected a ProbeAck, got {other:?}"),
        }
    }
    panic!("no ProbeAck among 1000 datagrams");
}

//! The root's TURN server over real UDP on loopback, driven by a client
//! built from the crate's own STUN codec: the long-term credential
//! exchange (401 with realm and nonce, then minted credentials), refusals
//! of wrong, expired and foreign credentials, permissions, Send/Data
//! indications and channels both ways, the per-client quota, Refresh to
//! zero, and garbage that changes nothing. Every wait is bounded.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use interlocking::turn::stun::{self, Builder, Class, Message, attr, method};
use interlocking::turn::{TurnConfig, TurnServer, mint};
use tokio::net::UdpSocket;
use tokio::time::timeout;

const SECRET: &[u8] = b"shared secret of the operator";
const WAIT: Duration = Duration::from_secs(5);

async fn server(max_per_client: usize) -> TurnServer {
    let mut cfg = TurnConfig::new("127.0.0.1:0".parse().unwrap(), SECRET);
    cfg.max_per_client = max_per_client;
    TurnServer::bind(cfg).await.unwrap()
}

async fn udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

async fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    let (n, from) = timeout(WAIT, s.recv_from(&mut buf))
        .await
        .expect("a datagram within 5 s")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

async fn call(s: &UdpSocket, to: SocketAddr, b: Vec<u8>) -> Message {
    s.send_to(&b, to).await.unwrap();
    let (r, _) = recv(s).await;
    Message::parse(&r).expect("a STUN response")
}

fn error_code(m: &Message) -> Option<u16> {
    m.get(attr::ERROR_CODE)
        .map(|v| u16::from(v[2]) * 100 + u16::from(v[3]))
}

/// A client with credentials: realm and nonce learned from the first 401.
struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    user: String,
    key: [u8; 16],
    realm: String,
    nonce: String,
}

impl Client {
    async fn new(server: SocketAddr, user: &str, password: &str) -> Self {
        let sock = udp().await;
        let first = Builder::new(method::ALLOCATE, Class::Request, rand::random())
            .add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .finish();
        let r = call(&sock, server, first).await;
        assert_eq!(r.class, Class::Error);
        assert_eq!(error_code(&r), Some(401), "no credentials: 401");
        let realm = r.text(attr::REALM).expect("realm").to_string();
        let nonce = r.text(attr::NONCE).expect("nonce").to_string();
        Self {
            key: stun::long_term_key(user, &realm, password),
            sock,
            server,
            user: user.to_string(),
            realm,
            nonce,
        }
    }

    fn request(&self, m: u16) -> Builder {
        Builder::new(m, Class::Request, rand::random())
            .add(attr::USERNAME, self.user.as_bytes())
            .add(attr::REALM, self.realm.as_bytes())
            .add(attr::NONCE, self.nonce.as_bytes())
    }

    async fn send(&self, b: Builder) -> Message {
        call(&self.sock, self.server, b.integrity(&self.key).finish()).await
    }

    async fn allocate(&self) -> Message {
        self.send(
            self.request(method::ALLOCATE)
                .add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
        )
        .await
    }
}

fn minted(user: &str) -> (String, String) {
    mint(SECRET, user, Duration::from_secs(300), SystemTime::now())
}

#[tokio::test]
async fn credentials_permissions_indications_and_channels() {
    let turn = server(16).await;
    let (user, pass) = minted("browser-1");
    let c = Client::new(turn.addr(), &user, &pass).await;
    let r = c.allocate().await;
    assert_eq!(r.class, Class::Success, "{:?}", error_code(&r));
    assert!(r.check_integrity(&c.key), "the response is signed");
    let relayed = r
        .xor_addr(attr::XOR_RELAYED_ADDRESS)
        .expect("relayed address");
    assert_eq!(
        r.xor_addr(attr::XOR_MAPPED_ADDRESS),
        Some(c.sock.local_addr().unwrap())
    );
    assert_eq!(turn.counters().allocations, 1);

    // A peer without permission is not relayed.
    let peer = udp().await;
    let p = peer.local_addr().unwrap();
    peer.send_to(b"too early", relayed).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while turn.counters().dropped_no_permission == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not dropped within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = c
        .send(
            c.request(method::CREATE_PERMISSION)
                .xor_addr(attr::XOR_PEER_ADDRESS, p),
        )
        .await;
    assert_eq!(r.class, Class::Success);

    // Send indication → the peer, from the relayed address.
    let send = Builder::new(method::SEND, Class::Indication, rand::random())
        .xor_addr(attr::XOR_PEER_ADDRESS, p)
        .add(attr::DATA, b"hello peer")
        .finish();
    c.sock.send_to(&send, turn.addr()).await.unwrap();
    let (got, from) = recv(&peer).await;
    assert_eq!((got.as_slice(), from), (&b"hello peer"[..], relayed));
    // The peer answers → a Data indication to the client.
    peer.send_to(b"hello client", relayed).await.unwrap();
    let (d, _) = recv(&c.sock).await;
    let d = Message::parse(&d).unwrap();
    assert_eq!((d.method, d.class), (method::DATA, Class::Indication));
    assert_eq!(d.get(attr::DATA), Some(&b"hello client"[..]));
    assert_eq!(d.xor_addr(attr::XOR_PEER_ADDRESS), Some(p));

    // A channel: ChannelData both ways.
    let r = c
        .send(
            c.request(method::CHANNEL_BIND)
                .add(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0])
                .xor_addr(attr::XOR_PEER_ADDRESS, p),
        )
        .await;
    assert_eq!(r.class, Class::Success);
    c.sock
        .send_to(&stun::channel_data(0x4001, b"on the channel"), turn.addr())
        .await
        .unwrap();
    let (got, _) = recv(&peer).await;
    assert_eq!(got, b"on the channel");
    peer.send_to(b"back on it", relayed).await.unwrap();
    let (got, _) = recv(&c.sock).await;
    assert_eq!(
        stun::parse_channel_data(&got),
        Some((0x4001, &b"back on it"[..]))
    );
    let n = turn.counters();
    assert_eq!(n.to_peer_bytes, (10 + 14) as u64);
    assert_eq!(n.to_client_bytes, (12 + 10) as u64);

    // Refresh to zero ends the allocation.
    let r = c
        .send(
            c.request(method::REFRESH)
                .add(attr::LIFETIME, &0u32.to_be_bytes()),
        )
        .await;
    assert_eq!(r.class, Class::Success);
    assert_eq!(turn.counters().active, 0);
}

#[tokio::test]
async fn wrong_expired_and_foreign_credentials_are_refused() {
    let turn = server(16).await;
    let (user, _) = minted("browser-1");
    let wrong = Client::new(turn.addr(), &user, "not the password").await;
    let r = wrong.allocate().await;
    assert_eq!(error_code(&r), Some(401));

    let (old, pass) = mint(
        SECRET,
        "browser-2",
        Duration::from_secs(60),
        SystemTime::now() - Duration::from_secs(120),
    );
    let expired = Client::new(turn.addr(), &old, &pass).await;
    assert_eq!(error_code(&expired.allocate().await), Some(401));

    let (user, pass) = mint(
        b"another secret",
        "browser-3",
        Duration::from_secs(60),
        SystemTime::now(),
    );
    let foreign = Client::new(turn.addr(), &user, &pass).await;
    assert_eq!(error_code(&foreign.allocate().await), Some(401));

    let n = turn.counters();
    assert_eq!((n.refused_auth, n.allocations), (3, 0));

    // Garbage changes nothing; a good client is still served.
    let g = udp().await;
    for junk in [
        &b"\x00\x01\x00"[..],
        &[0xFF; 40],
        &[0x40, 0x01, 0xFF, 0xFF, 1],
    ] {
        g.send_to(junk, turn.addr()).await.unwrap();
    }
    let (user, pass) = minted("browser-4");
    let good = Client::new(turn.addr(), &user, &pass).await;
    assert_eq!(good.allocate().await.class, Class::Success);
    assert_eq!(turn.counters().malformed, 3);
}

#[tokio::test]
async fn the_per_client_quota_is_enforced_and_a_retransmitted_allocate_is_answered_again() {
    let turn = server(1).await;
    let (user, pass) = minted("browser-1");
    let a = Client::new(turn.addr(), &user, &pass).await;
    let req = a
        .request(method::ALLOCATE)
        .add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .integrity(&a.key)
        .finish();
    let first = call(&a.sock, turn.addr(), req.clone()).await;
    assert_eq!(first.class, Class::Success);
    // The same transaction again (a lost response): the same answer.
    let again = call(&a.sock, turn.addr(), req).await;
    assert_eq!(
        again.xor_addr(attr::XOR_RELAYED_ADDRESS),
        first.xor_addr(attr::XOR_RELAYED_ADDRESS)
    );
    // A second client from the same IP: over the quota of 1.
    let b = Client::new(turn.addr(), &user, &pass).await;
    assert_eq!(error_code(&b.allocate().await), Some(486));
    let n = turn.counters();
    assert_eq!((n.allocations, n.active, n.refused_quota), (1, 1, 1));
}

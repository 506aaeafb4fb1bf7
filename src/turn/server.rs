//! The TURN server's sockets and allocations (RFC 8656 over UDP): one
//! listening socket for clients, one relay socket per allocation, a sweep
//! that ends expired allocations. Authentication is the long-term
//! credential mechanism with credentials minted by [`super::mint`].
//!
//! Bounded: allocations in total and per client address, permissions and
//! channels per allocation, datagram sizes; every refusal is counted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::stun::{self, Builder, Class, Message, attr, method};
use super::{TurnConfig, TurnCounters, password_for};
use crate::sync::lock;

/// How long a permission lasts (RFC 8656 §9).
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lasts (RFC 8656 §12).
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// How long a nonce is accepted.
const NONCE_LIFETIME: Duration = Duration::from_secs(600);
/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_536;

struct Allocation {
    username: String,
    key: [u8; 16],
    relay: Arc<UdpSocket>,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    /// The Allocate transaction and its response (a retransmission of the
    /// request gets the same response).
    allocate: ([u8; 12], Vec<u8>),
    task: JoinHandle<()>,
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|t| *t > now)
    }

    fn channel_of(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels
            .iter()
            .find(|(_, (p, t))| *p == peer && *t > now)
            .map(|(c, _)| *c)
    }
}

pub(super) struct Inner {
    pub(super) config: TurnConfig,
    pub(super) socket: Arc<UdpSocket>,
    allocations: std::sync::Mutex<HashMap<SocketAddr, Allocation>>,
    nonce_key: [u8; 32],
    pub(super) counters: Counters,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) allocations: AtomicU64,
    pub(super) refused_auth: AtomicU64,
    pub(super) refused_quota: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) to_peer_bytes: AtomicU64,
    pub(super) to_client_bytes: AtomicU64,
    pub(super) dropped_no_permission: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Inner {
    pub(super) fn new(config: TurnConfig, socket: Arc<UdpSocket>) -> Self {
        Self {
            config,
            socket,
            allocations: std::sync::Mutex::new(HashMap::new()),
            nonce_key: rand::random(),
            counters: Counters::default(),
        }
    }

    pub(super) fn snapshot(&self) -> TurnCounters {
        let c = &self.counters;
        TurnCounters {
            allocations: c.allocations.load(Ordering::Relaxed),
            active: lock(&self.allocations).len(),
            refused_auth: c.refused_auth.load(Ordering::Relaxed),
            refused_quota: c.refused_quota.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            to_peer_bytes: c.to_peer_bytes.load(Ordering::Relaxed),
            to_client_bytes: c.to_client_bytes.load(Ordering::Relaxed),
            dropped_no_permission: c.dropped_no_permission.load(Ordering::Relaxed),
        }
    }

    fn nonce(&self, client: SocketAddr) -> String {
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("{ts:x}-{}", self.nonce_mac(ts, client))
    }

    fn nonce_mac(&self, ts: u64, client: SocketAddr) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.nonce_key).expect("any key length");
        mac.update(&ts.to_be_bytes());
        mac.update(client.to_string().as_bytes());
        mac.finalize().into_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn nonce_fresh(&self, nonce: &str, client: SocketAddr) -> bool {
        let Some((ts, tag)) = nonce.split_once('-') else {
            return false;
        };
        let Ok(ts) = u64::from_str_radix(ts, 16) else {
            return false;
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        tag == self.nonce_mac(ts, client) && now.saturating_sub(ts) < NONCE_LIFETIME.as_secs()
    }

    async fn reply(&self, to: SocketAddr, b: Vec<u8>) {
        let _ = self.socket.send_to(&b, to).await;
    }

    fn error(&self, m: &Message, code: u16, reason: &str, client: SocketAddr) -> Vec<u8> {
        let mut b = Builder::new(m.method, Class::Error, m.txid).error(code, reason);
        if code == 401 || code == 438 {
            b = b
                .add(attr::REALM, self.config.realm.as_bytes())
                .add(attr::NONCE, self.nonce(client).as_bytes());
        }
        b.finish()
    }

    /// Checks a request's long-term credentials: the key, or the error
    /// response to send.
    fn authenticate(&self, m: &Message, client: SocketAddr) -> Result<(String, [u8; 16]), Vec<u8>> {
        let refuse = |code, why| {
            bump(&self.counters.refused_auth, 1);
            tracing::debug!(%client, code, why, "turn: request refused");
            self.error(m, code, why, client)
        };
        if m.get(attr::MESSAGE_INTEGRITY).is_none() {
            // The first request of every client: not a refusal yet.
            return Err(self.error(m, 401, "Unauthorized", client));
        }
        let (Some(user), Some(nonce)) = (m.text(attr::USERNAME), m.text(attr::NONCE)) else {
            return Err(refuse(400, "Bad Request: no USERNAME or NONCE"));
        };
        if m.text(attr::REALM) != Some(self.config.realm.as_str()) {
            return Err(refuse(401, "Unauthorized: wrong realm"));
        }
        if !self.nonce_fresh(nonce, client) {
            return Err(self.error(m, 438, "Stale Nonce", client));
        }
        let Some(password) = password_for(&self.config.secret, user, SystemTime::now()) else {
            return Err(refuse(401, "Unauthorized: expired or malformed username"));
        };
        let key = stun::long_term_key(user, &self.config.realm, &password);
        if !m.check_integrity(&key) {
            return Err(refuse(401, "Unauthorized: bad MESSAGE-INTEGRITY"));
        }
        Ok((user.to_string(), key))
    }

    fn lifetime(&self, m: &Message) -> Duration {
        let asked = m
            .get(attr::LIFETIME)
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(|v| Duration::from_secs(u64::from(u32::from_be_bytes(v))));
        asked
            .unwrap_or(self.config.default_lifetime)
            .min(self.config.max_lifetime)
    }
}

/// Reads the client socket until the server stops.
pub(super) async fn serve(inner: Arc<Inner>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, client)) = inner.socket.recv_from(&mut buf).await else {
            return;
        };
        on_datagram(&inner, client, &buf[..n]).await;
    }
}

/// Ends expired allocations, permissions and channels, once a second.
pub(super) async fn sweep(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut a = lock(&inner.allocations);
        a.retain(|_, al| {
            al.permissions.retain(|_, t| *t > now);
            al.channels.retain(|_, (_, t)| *t > now);
            let live = al.expires > now;
            if !live {
                al.task.abort();
            }
            live
        });
    }
}

async fn on_datagram(inner: &Arc<Inner>, client: SocketAddr, b: &[u8]) {
    if !stun::looks_like_stun(b) {
        let Some((ch, data)) = stun::parse_channel_data(b) else {
            bump(&inner.counters.malformed, 1);
            return;
        };
        let target = {
            let a = lock(&inner.allocations);
            a.get(&client).and_then(|al| {
                let (peer, t) = al.channels.get(&ch)?;
                (*t > Instant::now()).then(|| (al.relay.clone(), *peer))
            })
        };
        if let Some((relay, peer)) = target {
            bump(&inner.counters.to_peer_bytes, data.len() as u64);
            let _ = relay.send_to(data, peer).await;
        }
        return;
    }
    let m = match Message::parse(b) {
        Ok(m) => m,
        Err(e) => {
            bump(&inner.counters.malformed, 1);
            tracing::debug!(%client, error = %e, "turn: undecodable datagram");
            return;
        }
    };
    let out = match (m.class, m.method) {
        (Class::Request, method::BINDING) => Some(
            Builder::new(method::BINDING, Class::Success, m.txid)
                .xor_addr(attr::XOR_MAPPED_ADDRESS, client)
                .finish(),
        ),
        (Class::Request, method::ALLOCATE) => Some(allocate(inner, &m, client).await),
        (Class::Request, method::REFRESH) => Some(refresh(inner, &m, client)),
        (Class::Request, method::CREATE_PERMISSION) => Some(permit(inner, &m, client)),
        (Class::Request, method::CHANNEL_BIND) => Some(channel_bind(inner, &m, client)),
        (Class::Indication, method::SEND) => {
            send_indication(inner, &m, client).await;
            None
        }
        (Class::Request, _) => Some(inner.error(&m, 400, "Bad Request: unknown method", client)),
        _ => None,
    };
    if let Some(out) = out {
        inner.reply(client, out).await;
    }
}

async fn allocate(inner: &Arc<Inner>, m: &Message, client: SocketAddr) -> Vec<u8> {
    if let Some(al) = lock(&inner.allocations).get(&client) {
        if al.allocate.0 == m.txid {
            return al.allocate.1.clone();
        }
        return inner.error(m, 437, "Allocation Mismatch", client);
    }
    let (username, key) = match inner.authenticate(m, client) {
        Ok(k) => k,
        Err(e) => return e,
    };
    if m.get(attr::REQUESTED_TRANSPORT).and_then(|v| v.first()) != Some(&17) {
        return inner.error(m, 442, "Unsupported Transport Protocol", client);
    }
    {
        let a = lock(&inner.allocations);
        let from_ip = a.keys().filter(|k| k.ip() == client.ip()).count();
        if a.len() >= inner.config.max_allocations || from_ip >= inner.config.max_per_client {
            bump(&inner.counters.refused_quota, 1);
            return inner.error(m, 486, "Allocation Quota Reached", client);
        }
    }
    let relay = match UdpSocket::bind(SocketAddr::new(inner.config.relay_ip, 0)).await {
        Ok(s) => Arc::new(s),
        Err(_) => return inner.error(m, 508, "Insufficient Capacity", client),
    };
    let Ok(relay_addr) = relay.local_addr() else {
        return inner.error(m, 508, "Insufficient Capacity", client);
    };
    let lifetime = inner.lifetime(m).max(Duration::from_secs(1));
    let response = Builder::new(method::ALLOCATE, Class::Success, m.txid)
        .xor_addr(attr::XOR_RELAYED_ADDRESS, relay_addr)
        .xor_addr(attr::XOR_MAPPED_ADDRESS, client)
        .add(attr::LIFETIME, &(lifetime.as_secs() as u32).to_be_bytes())
        .integrity(&key)
        .finish();
    let task = tokio::spawn(relay_loop(inner.clone(), relay.clone(), client));
    let mut a = lock(&inner.allocations);
    if a.contains_key(&client) {
        // A concurrent allocation for the same client won: keep it.
        task.abort();
        return inner.error(m, 437, "Allocation Mismatch", client);
    }
    a.insert(
        client,
        Allocation {
            username,
            key,
            relay,
            expires: Instant::now() + lifetime,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            allocate: (m.txid, response.clone()),
            task,
        },
    );
    bump(&inner.counters.allocations, 1);
    tracing::debug!(%client, relay = %relay_addr, ?lifetime, "turn: allocation");
    response
}

/// Authenticates a request on an existing allocation; its key, or the
/// error response.
fn on_allocation(inner: &Inner, m: &Message, client: SocketAddr) -> Result<[u8; 16], Vec<u8>> {
    let (user, key) = inner.authenticate(m, client)?;
    let a = lock(&inner.allocations);
    match a.get(&client) {
        Some(al) if al.username == user && al.key == key => Ok(key),
        Some(_) => Err(inner.error(m, 441, "Wrong Credentials", client)),
        None => Err(inner.error(m, 437, "Allocation Mismatch", client)),
    }
}

fn refresh(inner: &Inner, m: &Message, client: SocketAddr) -> Vec<u8> {
    let key = match on_allocation(inner, m, client) {
        Ok(k) => k,
        Err(e) => return e,
    };
    let lifetime = inner.lifetime(m);
    let mut a = lock(&inner.allocations);
    if lifetime.is_zero() {
        if let Some(al) = a.remove(&client) {
            al.task.abort();
        }
    } else if let Some(al) = a.get_mut(&client) {
        al.expires = Instant::now() + lifetime;
    }
    Builder::new(method::REFRESH, Class::Success, m.txid)
        .add(attr::LIFETIME, &(lifetime.as_secs() as u32).to_be_bytes())
        .integrity(&key)
        .finish()
}

fn peers(m: &Message) -> Vec<SocketAddr> {
    // Every XOR-PEER-ADDRESS of the request (a CreatePermission may carry
    // several); at most 16 are looked at.
    m.xor_addrs(attr::XOR_PEER_ADDRESS)
        .into_iter()
        .take(16)
        .collect()
}

fn permit(inner: &Inner, m: &Message, client: SocketAddr) -> Vec<u8> {
    let key = match on_allocation(inner, m, client) {
        Ok(k) => k,
        Err(e) => return e,
    };
    let peers = peers(m);
    if peers.is_empty() {
        return inner.error(m, 400, "Bad Request: no XOR-PEER-ADDRESS", client);
    }
    let mut a = lock(&inner.allocations);
    let Some(al) = a.get_mut(&client) else {
        return inner.error(m, 437, "Allocation Mismatch", client);
    };
    for p in peers {
        if al.permissions.len() >= inner.config.max_permissions
            && !al.permissions.contains_key(&p.ip())
        {
            return inner.error(m, 508, "Insufficient Capacity: permissions", client);
        }
        al.permissions
            .insert(p.ip(), Instant::now() + PERMISSION_LIFETIME);
    }
    Builder::new(method::CREATE_PERMISSION, Class::Success, m.txid)
        .integrity(&key)
        .finish()
}

fn channel_bind(inner: &Inner, m: &Message, client: SocketAddr) -> Vec<u8> {
    let key = match on_allocation(inner, m, client) {
        Ok(k) => k,
        Err(e) => return e,
    };
    let ch = m
        .get(attr::CHANNEL_NUMBER)
        .filter(|v| v.len() == 4)
        .map(|v| u16::from_be_bytes([v[0], v[1]]));
    let (Some(ch), Some(peer)) = (ch, m.xor_addr(attr::XOR_PEER_ADDRESS)) else {
        return inner.error(
            m,
            400,
            "Bad Request: CHANNEL-NUMBER and XOR-PEER-ADDRESS",
            client,
        );
    };
    if !(0x4000..=0x4FFF).contains(&ch) {
        return inner.error(m, 400, "Bad Request: channel number out of range", client);
    }
    let now = Instant::now();
    let mut a = lock(&inner.allocations);
    let Some(al) = a.get_mut(&client) else {
        return inner.error(m, 437, "Allocation Mismatch", client);
    };
    let clash = al
        .channels
        .iter()
        .any(|(c, (p, _))| (*c == ch) != (*p == peer));
    if clash {
        return inner.error(
            m,
            400,
            "Bad Request: channel or peer bound otherwise",
            client,
        );
    }
    if al.channels.len() >= inner.config.max_permissions && !al.channels.contains_key(&ch) {
        return inner.error(m, 508, "Insufficient Capacity: channels", client);
    }
    al.channels.insert(ch, (peer, now + CHANNEL_LIFETIME));
    al.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
    Builder::new(method::CHANNEL_BIND, Class::Success, m.txid)
        .integrity(&key)
        .finish()
}

async fn send_indication(inner: &Inner, m: &Message, client: SocketAddr) {
    let (Some(peer), Some(data)) = (m.xor_addr(attr::XOR_PEER_ADDRESS), m.get(attr::DATA)) else {
        bump(&inner.counters.malformed, 1);
        return;
    };
    let relay = {
        let a = lock(&inner.allocations);
        a.get(&client)
            .filter(|al| al.permitted(peer.ip(), Instant::now()))
            .map(|al| al.relay.clone())
    };
    match relay {
        Some(relay) => {
            bump(&inner.counters.to_peer_bytes, data.len() as u64);
            let _ = relay.send_to(data, peer).await;
        }
        None => bump(&inner.counters.dropped_no_permission, 1),
    }
}

/// Reads one allocation's relay socket: what a permitted peer sends goes
/// to the client, as ChannelData if a channel is bound, else as a Data
/// indication.
async fn relay_loop(inner: Arc<Inner>, relay: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, peer)) = relay.recv_from(&mut buf).await else {
            return;
        };
        let now = Instant::now();
        let verdict = {
            let a = lock(&inner.allocations);
            a.get(&client)
                .map(|al| (al.permitted(peer.ip(), now), al.channel_of(peer, now)))
        };
        let out = match verdict {
            None => return,
            Some((false, _)) => {
                bump(&inner.counters.dropped_no_permission, 1);
                continue;
            }
            Some((true, Some(ch))) => stun::channel_data(ch, &buf[..n]),
            Some((true, None)) => Builder::new(method::DATA, Class::Indication, rand::random())
                .xor_addr(attr::XOR_PEER_ADDRESS, peer)
                .add(attr::DATA, &buf[..n])
                .finish(),
        };
        bump(&inner.counters.to_client_bytes, n as u64);
        let _ = inner.socket.send_to(&out, client).await;
    }
}

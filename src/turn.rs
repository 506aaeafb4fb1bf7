//! A TURN server (RFC 8656, UDP) for the root, so that a browser (or any
//! WebRTC peer) with no direct path to its hub is relayed by the root like
//! everything else (`docs/webrtc.md` §7).
//!
//! Owns TURN: the STUN codec ([`stun`]), allocations, permissions and
//! channels ([`server`]), and the credentials. Credentials follow the
//! widely used "TURN REST API" scheme: the operator gives the root's TURN
//! server and the hub one shared secret; the hub mints, per admitted
//! browser session, a username `"<expiry unix seconds>:<user>"` and the
//! password `base64(HMAC-SHA1(secret, username))` ([`mint`]); the server
//! recomputes the password and refuses expired usernames. Nothing else is
//! shared and nothing is stored.

pub mod server;
pub mod stun;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Configuration of a TURN server.
#[derive(Clone, Debug)]
pub struct TurnConfig {
    /// Where clients reach it (UDP).
    pub listen: SocketAddr,
    /// The address relay sockets bind to (their port is the system's).
    pub relay_ip: IpAddr,
    /// The realm of the long-term credentials.
    pub realm: String,
    /// The secret shared with whoever mints credentials ([`mint`]).
    pub secret: Vec<u8>,
    /// Most allocations at once.
    pub max_allocations: usize,
    /// Most allocations at once from one client IP address.
    pub max_per_client: usize,
    /// Most permissions (and, separately, channels) per allocation.
    pub max_permissions: usize,
    /// Allocation lifetime when the client asks for none.
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted.
    pub max_lifetime: Duration,
}

impl TurnConfig {
    /// Defaults on `listen`, relaying from the same IP, with `secret`.
    pub fn new(listen: SocketAddr, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            listen,
            relay_ip: listen.ip(),
            realm: "interlocking".into(),
            secret: secret.into(),
            max_allocations: 1024,
            max_per_client: 16,
            max_permissions: 64,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
        }
    }
}

/// What a TURN server has done (diagnostics, tests, figures).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TurnCounters {
    /// Allocations created.
    pub allocations: u64,
    /// Allocations alive now.
    pub active: usize,
    /// Requests refused for their credentials (bad integrity, expired or
    /// malformed username, wrong realm).
    pub refused_auth: u64,
    /// Allocations refused for the quotas.
    pub refused_quota: u64,
    /// Datagrams that were neither STUN nor ChannelData, or malformed.
    pub malformed: u64,
    /// Bytes relayed from clients to peers.
    pub to_peer_bytes: u64,
    /// Bytes relayed from peers to clients.
    pub to_client_bytes: u64,
    /// Datagrams dropped for want of a permission.
    pub dropped_no_permission: u64,
}

/// Credentials for one user of a TURN server, as an `RTCIceServer`
/// (`urls`, `username`, `credential`) in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// `turn:` URLs of the server.
    pub urls: Vec<String>,
    /// The minted username.
    pub username: String,
    /// The minted password.
    pub credential: String,
}

/// Mints credentials for `user`, valid for `ttl` from `now`, under the
/// shared `secret`: `(username, password)`.
pub fn mint(secret: &[u8], user: &str, ttl: Duration, now: SystemTime) -> (String, String) {
    let expiry = now
        .checked_add(ttl)
        .unwrap_or(now)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let username = format!("{expiry}:{user}");
    let password = password(secret, &username);
    (username, password)
}

fn password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The password of `username` if it is well formed and not expired at `now`.
pub(crate) fn password_for(secret: &[u8], username: &str, now: SystemTime) -> Option<String> {
    let (expiry, _) = username.split_once(':')?;
    let expiry: u64 = expiry.parse().ok()?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (expiry > now).then(|| password(secret, username))
}

/// A running TURN server; stops when dropped or shut down.
pub struct TurnServer {
    addr: SocketAddr,
    inner: Arc<server::Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl TurnServer {
    /// Binds `config.listen` and serves. Must be called inside a tokio runtime.
    pub async fn bind(config: TurnConfig) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(config.listen).await?);
        let addr = socket.local_addr()?;
        let inner = Arc::new(server::Inner::new(config, socket));
        let tasks = vec![
            tokio::spawn(server::serve(inner.clone())),
            tokio::spawn(server::sweep(inner.clone())),
        ];
        tracing::info!(%addr, "turn: listening");
        Ok(Self { addr, inner, tasks })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its `turn:` URL.
    pub fn url(&self) -> String {
        format!("turn:{}?transport=udp", self.addr)
    }

    /// The counters so far.
    pub fn counters(&self) -> TurnCounters {
        self.inner.snapshot()
    }

    /// Stops serving (allocations end with it).
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_credentials_check_until_they_expire() {
        let now = SystemTime::now();
        let (user, pass) = mint(b"s3cret", "browser-1", Duration::from_secs(60), now);
        assert!(user.ends_with(":browser-1"));
        assert_eq!(password_for(b"s3cret", &user, now), Some(pass.clone()));
        assert_ne!(password_for(b"other", &user, now), Some(pass));
        assert_eq!(
            password_for(b"s3cret", &user, now + Duration::from_secs(61)),
            None
        );
        assert_eq!(password_for(b"s3cret", "nocolon", now), None);
        assert_eq!(password_for(b"s3cret", "x:browser-1", now), None);
    }
}

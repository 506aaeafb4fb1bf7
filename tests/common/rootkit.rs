//! Helpers for root tests: a root on loopback, nodes that join it with a
//! token and reach peers through it (relay) or directly (QUIC).

use std::sync::Arc;
use std::time::Duration;

use interlocking::root::{Joined, Root, RootConfig, RootHandle, join};
use interlocking::transports::probe::ProbeConfig;
use interlocking::transports::quic::{Backoff, QuicConfig, QuicTransport};
use interlocking::transports::relay::{RelayConfig, RelayTransport};
use interlocking::transports::{PeerAddr, TransportEvent};
use interlocking::trust::{NodeIdentity, TrustRoots};
use interlocking::vocab::{NodeId, Role};
use tokio::sync::mpsc;

/// Every wait in these tests is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Fast probes so paths come and go quickly on loopback.
pub fn fast_probe() -> ProbeConfig {
    ProbeConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(400),
    }
}

/// A root with fast timeouts on 127.0.0.1.
pub async fn root() -> RootHandle {
    let config = RootConfig {
        probe: fast_probe(),
        idle_timeout: Duration::from_millis(1500),
        keep_alive: Duration::from_millis(300),
        ..RootConfig::default()
    };
    Root::spawn(config).await.expect("root starts")
}

/// Joins `root` as `name` in `role` with a fresh token.
pub async fn joined(root: &RootHandle, name: &str, role: Role) -> Joined {
    joined_with(root, name, role, &[]).await
}

/// Joins `root` as `name` in `role` with a fresh token granting
/// `capabilities`.
pub async fn joined_with(
    root: &RootHandle,
    name: &str,
    role: Role,
    capabilities: &[&str],
) -> Joined {
    let node = NodeId::new(name);
    let caps: Vec<String> = capabilities.iter().map(|c| c.to_string()).collect();
    let token = root
        .issue_token_with(&node, role, None, &caps)
        .unwrap()
        .to_string();
    join(root.join_addr(), root.node(), &token, &node, role, LIMIT)
        .await
        .expect("join succeeds")
}

/// A QUIC config with fast timeouts for `identity`.
pub fn quic_config(identity: NodeIdentity, roots: TrustRoots) -> QuicConfig {
    let mut cfg = QuicConfig::new(identity, roots);
    cfg.probe = fast_probe();
    cfg.idle_timeout = Duration::from_millis(1500);
    cfg.keep_alive = Duration::from_millis(300);
    cfg.reconnect = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(300),
        multiplier: 2.0,
        jitter: 0.5,
        max_attempts: None,
    };
    cfg
}

/// A relay transport reaching `root` as `identity`.
pub fn relay(
    root: &RootHandle,
    identity: NodeIdentity,
    roots: TrustRoots,
) -> (Arc<RelayTransport>, mpsc::Receiver<TransportEvent>) {
    let (tx, rx) = mpsc::channel(65536);
    let mut cfg = RelayConfig::new(quic_config(identity, roots), root.peer_addr());
    cfg.probe = fast_probe();
    (RelayTransport::bind(cfg, tx).expect("relay binds"), rx)
}

/// A direct QUIC transport as `identity`.
pub fn direct(
    identity: NodeIdentity,
    roots: TrustRoots,
) -> (Arc<QuicTransport>, mpsc::Receiver<TransportEvent>) {
    let (tx, rx) = mpsc::channel(65536);
    (
        QuicTransport::bind(quic_config(identity, roots), tx).expect("quic binds"),
        rx,
    )
}

/// The node's relay address (identity only: the root finds it).
pub fn via_root(node: &str) -> PeerAddr {
    PeerAddr::node(node)
}

/// Waits (bounded) until the root sees `node` online, or offline when
/// `online` is false.
pub async fn wait_online(root: &RootHandle, node: &str, online: bool) {
    let node = NodeId::new(node);
    tokio::time::timeout(LIMIT, async {
        while root.online().contains(&node) != online {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{node} online={online} not reached at the root"));
}

//! Admission through a real root over loopback QUIC: a valid token yields a
//! short-lived certificate that works for mutual TLS with the root and with
//! other nodes; reused, expired and forged tokens, forged and expired
//! certificates, and revoked nodes are refused with typed reasons; an
//! operator's token from the `interlocking token` command admits a node
//! while the root runs. Every wait is bounded.

mod common;

use std::time::{Duration, SystemTime};

use common::contract::{data, recv_data, wait_up};
use common::rootkit::{LIMIT, direct, joined, quic_config, relay, root, via_root, wait_online};
use interlocking::root::{AdmissionError, JoinError, JoinToken, Root, RootConfig, codes, join};
use interlocking::transports::relay::{LookupError, RelayConfig, RelayTransport};
use interlocking::transports::{ConnectError, Transport};
use interlocking::trust::{self, CertificateAuthority};
use interlocking::vocab::{NodeId, Role};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_gives_a_certificate_that_works_for_mutual_tls() {
    let root = root().await;
    let a = joined(&root, "a", Role::Hub).await;
    let b = joined(&root, "b", Role::Member).await;
    // The certificate names the node, chains to the root CA and is short-lived.
    assert_eq!(
        trust::node_from_certificate(&a.identity.cert_chain[0]).unwrap(),
        NodeId::new("a")
    );
    assert_eq!(
        &a.identity.cert_chain[1],
        root.certificate_authority().certificate()
    );
    let left = a.expires_at.duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(23 * 3600) && left <= Duration::from_secs(24 * 3600));
    assert_eq!(root.counters().joins_granted, 2);
    // Mutual TLS with the root...
    let (ta, _ra) = relay(&root, a.identity.clone(), a.roots.clone());
    ta.register(vec![], vec![])
        .await
        .expect("root accepts the certificate");
    wait_online(&root, "a", true).await;
    // ...and with another admitted node, directly.
    let (da, mut da_rx) = direct(a.identity, a.roots);
    let (db, mut db_rx) = direct(b.identity, b.roots);
    da.connect(&db.peer_addr())
        .await
        .expect("mutual TLS between joined nodes");
    wait_up(&mut da_rx, &NodeId::new("b")).await;
    da.send(&NodeId::new("b"), data("command:a/b", 0, 1, 8))
        .unwrap();
    assert_eq!(
        recv_data(&mut db_rx, &NodeId::new("a"), "command:a/b", 1).await,
        vec![1]
    );
    ta.shutdown().await;
    da.shutdown().await;
    db.shutdown().await;
    root.shutdown().await;
}

async fn try_join(
    root: &interlocking::root::RootHandle,
    token: &str,
    node: &str,
    role: Role,
) -> Result<interlocking::root::Joined, JoinError> {
    join(
        root.join_addr(),
        root.node(),
        token,
        &NodeId::new(node),
        role,
        LIMIT,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_expired_forged_and_mismatched_tokens_are_refused() {
    let root = root().await;
    let m = NodeId::new("m");
    // Reused.
    let token = root
        .issue_token(&m, Role::Member, None)
        .unwrap()
        .to_string();
    try_join(&root, &token, "m", Role::Member)
        .await
        .expect("first use");
    assert!(matches!(
        try_join(&root, &token, "m", Role::Member).await,
        Err(JoinError::Refused(AdmissionError::Reused))
    ));
    // Expired.
    let token = root
        .issue_token(&m, Role::Member, Some(Duration::ZERO))
        .unwrap()
        .to_string();
    assert!(matches!(
        try_join(&root, &token, "m", Role::Member).await,
        Err(JoinError::Refused(AdmissionError::Expired))
    ));
    // Forged: a secret the root never issued, with the right CA.
    let forged = JoinToken {
        secret: [0x5a; 32],
        ca_fingerprint: root.certificate_authority().fingerprint(),
    };
    assert!(matches!(
        try_join(&root, &forged.to_string(), "m", Role::Member).await,
        Err(JoinError::Refused(AdmissionError::Unknown))
    ));
    // Garbage never leaves the node.
    assert!(matches!(
        try_join(&root, "not-a-token", "m", Role::Member).await,
        Err(JoinError::Refused(AdmissionError::Unknown))
    ));
    // Bound to node and role.
    let token = root
        .issue_token(&m, Role::Member, None)
        .unwrap()
        .to_string();
    match try_join(&root, &token, "other", Role::Member).await {
        Err(JoinError::Refused(AdmissionError::NodeMismatch { expected, got })) => {
            assert_eq!((expected.as_str(), got.as_str()), ("m", "other"));
        }
        other => panic!("expected a node mismatch, got {other:?}"),
    }
    let token = root
        .issue_token(&m, Role::Member, None)
        .unwrap()
        .to_string();
    match try_join(&root, &token, "m", Role::Hub).await {
        Err(JoinError::Refused(AdmissionError::RoleMismatch { expected, got })) => {
            assert_eq!((expected, got), (Role::Member, Role::Hub));
        }
        other => panic!("expected a role mismatch, got {other:?}"),
    }
    // A token naming another CA: the node refuses to talk to this root.
    let other_ca = CertificateAuthority::generate("impostor").unwrap();
    let mut wrong_ca: JoinToken = root.issue_token(&m, Role::Member, None).unwrap();
    wrong_ca.ca_fingerprint = other_ca.fingerprint();
    assert!(matches!(
        try_join(&root, &wrong_ca.to_string(), "m", Role::Member).await,
        Err(JoinError::Unreachable(_))
    ));
    assert_eq!(root.counters().joins_granted, 1);
    assert_eq!(root.counters().joins_refused, 5);
    root.shutdown().await;
}

/// A relay link for an identity the root did not issue (or no longer
/// accepts), and what its first request gets.
async fn first_request(
    root: &interlocking::root::RootHandle,
    identity: trust::NodeIdentity,
) -> Result<(), LookupError> {
    let (tx, _rx) = mpsc::channel(1024);
    let roots = root.trust_roots();
    let mut cfg = RelayConfig::new(quic_config(identity, roots), root.peer_addr());
    cfg.lookup_timeout = Duration::from_secs(3);
    let t = RelayTransport::bind(cfg, tx).unwrap();
    // TLS 1.3 lets the client finish before the server checks its
    // certificate, so ask for an answer: none can come.
    let r = t.lookup_node(root.node()).await.map(drop);
    t.shutdown().await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_expired_certificates_are_refused() {
    let root = root().await;
    let forger = CertificateAuthority::generate("forger").unwrap();
    let forged = forger.issue_node(&NodeId::new("a"), Role::Hub).unwrap();
    assert!(matches!(
        first_request(&root, forged).await,
        Err(LookupError::Unreachable(_))
    ));
    let now = SystemTime::now();
    let expired = root
        .certificate_authority()
        .issue_node_valid(
            &NodeId::new("a"),
            Role::Hub,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    assert!(matches!(
        first_request(&root, expired).await,
        Err(LookupError::Unreachable(_))
    ));
    assert!(root.online().is_empty());
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_nodes_are_refused_everywhere() {
    let root = root().await;
    let a = joined(&root, "a", Role::Member).await;
    let b = joined(&root, "b", Role::Hub).await;
    let (ta, _ra) = relay(&root, a.identity.clone(), a.roots.clone());
    let (tb, _rb) = relay(&root, b.identity, b.roots);
    ta.register(vec![], vec![]).await.unwrap();
    tb.register(vec![], vec![]).await.unwrap();
    wait_online(&root, "a", true).await;
    wait_online(&root, "b", true).await;
    tb.connect(&via_root("a"))
        .await
        .expect("a is reachable before revocation");

    root.revoke(&NodeId::new("a")).await.unwrap();
    wait_online(&root, "a", false).await;
    // Its live connection was closed; a new one is closed on arrival.
    ta.shutdown().await;
    let counted = root.counters().revoked_closed;
    assert!(counted >= 1);
    let (tx, _rx) = mpsc::channel(1024);
    let cfg = RelayConfig::new(quic_config(a.identity, a.roots), root.peer_addr());
    let again = RelayTransport::bind(cfg, tx).unwrap();
    let _ = again.register(vec![], vec![]).await;
    tokio::time::timeout(LIMIT, async {
        while root.counters().revoked_closed == counted {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the revoked node's new connection is closed");
    assert!(!root.online().contains(&NodeId::new("a")));
    again.shutdown().await;
    // Nobody can relay to it...
    tb.close(&NodeId::new("a"), 0, "").await;
    match tb.connect(&via_root("a")).await {
        Err(ConnectError::Refused(_, why)) => {
            assert!(why.contains(&format!("{:#x}", codes::REVOKED)), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // ...and its tokens no longer redeem.
    let token = root
        .issue_token(&NodeId::new("a"), Role::Member, None)
        .unwrap()
        .to_string();
    assert!(matches!(
        try_join(&root, &token, "a", Role::Member).await,
        Err(JoinError::Refused(AdmissionError::Revoked(_)))
    ));
    tb.shutdown().await;
    root.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_token_from_the_binary_admits_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::spawn(RootConfig {
        state_dir: Some(dir.path().to_path_buf()),
        ..RootConfig::default()
    })
    .await
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_interlocking"))
        .args(["token", "--state-dir"])
        .arg(dir.path())
        .args(["--node", "m9", "--role", "member", "--ttl", "15m"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let joined = try_join(&root, token.trim(), "m9", Role::Member)
        .await
        .expect("the operator's token admits the node");
    assert_eq!(joined.identity.node.as_str(), "m9");
    // Single use across processes too.
    assert!(matches!(
        try_join(&root, token.trim(), "m9", Role::Member).await,
        Err(JoinError::Refused(AdmissionError::Reused))
    ));
    root.shutdown().await;
}

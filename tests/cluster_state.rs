//! Three roots sharing state through one real nats-server (JetStream) on
//! loopback (`docs/cluster.md`): a join token redeems once across the
//! cluster, also when two roots redeem it at the same moment; a node
//! admitted by root 1 is trusted by root 2 (one CA for the cluster); a
//! revocation at root 2 closes the node's connection at root 1; nats-server
//! SIGKILLed → the roots' readiness says degraded, and after it returns they
//! recover and the shared state works again. Every wait is bounded.

mod common;

use std::path::Path;
use std::time::Duration;

use common::nats::NatsServer;
use common::rootkit::{LIMIT, fast_probe, relay, wait_online};
use interlocking::root::cluster::{ClusterConfig, JetStreamState};
use interlocking::root::state::{DedupeBounds, RootState};
use interlocking::root::{AdmissionError, JoinError, Root, RootConfig, RootHandle, join, open_ca};
use interlocking::transports::Transport;
use interlocking::vocab::{NodeId, Role};

fn free_addr() -> std::net::SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// State dirs for `n` roots holding the same CA (as an operator copies
/// `ca.der` and `ca.key.der` onto each root).
fn cluster_dirs(n: usize) -> Vec<tempfile::TempDir> {
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    open_ca(dirs[0].path()).unwrap();
    for d in &dirs[1..] {
        for f in ["ca.der", "ca.key.der"] {
            std::fs::copy(dirs[0].path().join(f), d.path().join(f)).unwrap();
        }
    }
    dirs
}

async fn cluster_root(nats: &NatsServer, i: usize, dir: &Path) -> RootHandle {
    Root::spawn(RootConfig {
        node: NodeId::new(format!("root-{i}")),
        listen: free_addr(),
        join_listen: free_addr(),
        state_dir: Some(dir.to_path_buf()),
        probe: fast_probe(),
        idle_timeout: Duration::from_millis(1500),
        keep_alive: Duration::from_millis(300),
        cluster: Some(ClusterConfig {
            nats: nats.url(),
            name: format!("root-{i}"),
        }),
        ..RootConfig::default()
    })
    .await
    .expect("cluster root starts")
}

async fn join_at(
    root: &RootHandle,
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

/// Waits (bounded) until `cond` holds, checking every 20 ms.
async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(limit, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not within {limit:?}: {what}"));
}

fn bounds() -> DedupeBounds {
    DedupeBounds {
        capacity: 1000,
        max_bytes: 1 << 20,
        ttl: Duration::from_secs(30),
        hold: Duration::from_secs(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_used_at_root_1_is_refused_at_root_2_and_3() {
    let nats = NatsServer::start();
    let dirs = cluster_dirs(3);
    let mut roots = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        roots.push(cluster_root(&nats, i + 1, d.path()).await);
    }
    assert_eq!(roots[0].state_health().backend, "jetstream");
    // One CA: every root presents the same fingerprint.
    let fp = roots[0].certificate_authority().fingerprint();
    assert!(
        roots
            .iter()
            .all(|r| r.certificate_authority().fingerprint() == fp)
    );

    // Issued at root 3, used at root 1, refused at roots 2 and 3.
    let token = roots[2]
        .issue_token(&NodeId::new("m"), Role::Member, None)
        .unwrap()
        .to_string();
    join_at(&roots[0], &token, "m", Role::Member)
        .await
        .expect("first use at root 1 is granted");
    for r in &roots[1..] {
        match join_at(r, &token, "m", Role::Member).await {
            Err(JoinError::Refused(AdmissionError::Reused)) => {}
            other => panic!("reuse at {} must be refused as reused: {other:?}", r.node()),
        }
    }
    for r in &roots {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_roots_redeeming_one_token_at_once_admit_it_once() {
    let nats = NatsServer::start();
    let cfg = |name: &str| ClusterConfig {
        nats: nats.url(),
        name: name.into(),
    };
    let a = JetStreamState::connect(&cfg("root-1"), None, bounds())
        .await
        .unwrap();
    let b = JetStreamState::connect(&cfg("root-2"), None, bounds())
        .await
        .unwrap();
    let node = NodeId::new("m");
    let now = std::time::SystemTime::now();
    const TOKENS: usize = 25;
    let mut tokens = Vec::new();
    for _ in 0..TOKENS {
        tokens.push(
            a.issue(
                [7; 32],
                &node,
                Role::Member,
                Duration::from_secs(60),
                now,
                &[],
            )
            .unwrap(),
        );
    }
    // Published before they are handed out: then any root knows them.
    a.flush().await;
    for (i, t) in tokens.iter().enumerate() {
        let (ra, rb) = tokio::join!(
            a.redeem(t, &node, Role::Member, now),
            b.redeem(t, &node, Role::Member, now)
        );
        let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            wins, 1,
            "token {i}: exactly one redemption wins: {ra:?} {rb:?}"
        );
        let lost = if ra.is_ok() { rb } else { ra };
        assert_eq!(lost, Err(AdmissionError::Reused), "token {i}");
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_at_root_2_closes_the_node_at_root_1() {
    let nats = NatsServer::start();
    let dirs = cluster_dirs(2);
    let r1 = cluster_root(&nats, 1, dirs[0].path()).await;
    let r2 = cluster_root(&nats, 2, dirs[1].path()).await;
    let token = r1
        .issue_token(&NodeId::new("m"), Role::Member, None)
        .unwrap();
    let m = join_at(&r1, &token.to_string(), "m", Role::Member)
        .await
        .unwrap();

    // Admitted by root 1, trusted by root 2: the same credentials connect
    // to either.
    let (t2, _rx2) = relay(&r2, m.identity.clone(), m.roots.clone());
    t2.register(vec![], vec![]).await.unwrap();
    wait_online(&r2, "m", true).await;
    t2.shutdown().await;

    let (t1, _rx1) = relay(&r1, m.identity.clone(), m.roots.clone());
    t1.register(vec![], vec![]).await.unwrap();
    wait_online(&r1, "m", true).await;

    r2.revoke(&NodeId::new("m")).await.unwrap();
    // Root 1 learns it through the watched bucket and closes the node's
    // connection (root 1 revoked nothing itself: its counter says so).
    eventually("root 1 closes the revoked node", LIMIT, || {
        r1.counters().revoked_closed >= 1
    })
    .await;
    assert!(r1.is_revoked(&NodeId::new("m")));
    wait_online(&r1, "m", false).await;
    // And no root admits it again.
    let again = r1
        .issue_token(&NodeId::new("m"), Role::Member, None)
        .unwrap();
    match join_at(&r1, &again.to_string(), "m", Role::Member).await {
        Err(JoinError::Refused(AdmissionError::Revoked(n))) => assert_eq!(n.as_str(), "m"),
        other => panic!("a revoked node's join must be refused: {other:?}"),
    }
    t1.shutdown().await;
    r1.shutdown().await;
    r2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_degrades_the_roots_and_they_recover_when_it_returns() {
    let mut nats = NatsServer::start();
    let dirs = cluster_dirs(2);
    let r1 = cluster_root(&nats, 1, dirs[0].path()).await;
    let r2 = cluster_root(&nats, 2, dirs[1].path()).await;
    assert!(r1.state_health().ready && r2.state_health().ready);

    nats.kill();
    eventually("root 1 reports degraded", LIMIT, || {
        !r1.state_health().ready
    })
    .await;
    eventually("root 2 reports degraded", LIMIT, || {
        !r2.state_health().ready
    })
    .await;
    // Degraded: a redemption cannot be claimed cluster-wide, so it is
    // refused (internal), not granted twice.
    let token = r1
        .issue_token(&NodeId::new("m"), Role::Member, None)
        .unwrap();
    match join_at(&r1, &token.to_string(), "m", Role::Member).await {
        Err(JoinError::Refused(AdmissionError::Internal(_))) => {}
        other => panic!("no redemption without the shared store: {other:?}"),
    }

    nats.restart();
    // The client's reconnect backoff grows to a few seconds.
    let recover = Duration::from_secs(20);
    eventually("root 1 ready again", recover, || r1.state_health().ready).await;
    eventually("root 2 ready again", recover, || r2.state_health().ready).await;
    // Shared state works again, watches included: a token issued now
    // redeems once, and a revocation at root 2 reaches root 1.
    let token = r1
        .issue_token(&NodeId::new("n"), Role::Member, None)
        .unwrap();
    join_at(&r1, &token.to_string(), "n", Role::Member)
        .await
        .expect("a join after recovery is granted");
    match join_at(&r2, &token.to_string(), "n", Role::Member).await {
        Err(JoinError::Refused(AdmissionError::Reused)) => {}
        other => panic!("reuse after recovery must be refused: {other:?}"),
    }
    r1.shutdown().await;
    r2.shutdown().await;
}

/// Known open: in about 2 of 5 runs root 1's revocation watch does not
/// resume after nats-server's restart within 20 s (docs/cluster.md §6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "flaky: the revocation watch sometimes does not resume after a nats-server restart (docs/cluster.md §6)"]
async fn a_revocation_after_a_nats_restart_reaches_the_other_root() {
    let mut nats = NatsServer::start();
    let dirs = cluster_dirs(2);
    let r1 = cluster_root(&nats, 1, dirs[0].path()).await;
    let r2 = cluster_root(&nats, 2, dirs[1].path()).await;
    nats.kill();
    eventually("root 1 reports degraded", LIMIT, || {
        !r1.state_health().ready
    })
    .await;
    nats.restart();
    let recover = Duration::from_secs(20);
    eventually("root 1 ready again", recover, || r1.state_health().ready).await;
    eventually("root 2 ready again", recover, || r2.state_health().ready).await;
    r2.revoke(&NodeId::new("n")).await.unwrap();
    eventually("root 1 sees the revocation", recover, || {
        r1.is_revoked(&NodeId::new("n"))
    })
    .await;
    r1.shutdown().await;
    r2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_cached_through_root_1_answers_a_retry_at_root_2() {
    use bytes::Bytes;
    use interlocking::root::dedupe::Verdict;
    use interlocking::vocab::StreamId;
    use std::time::Instant;

    let nats = NatsServer::start();
    let cfg = |name: &str| ClusterConfig {
        nats: nats.url(),
        name: name.into(),
    };
    let a = JetStreamState::connect(&cfg("root-1"), None, bounds())
        .await
        .unwrap();
    let b = JetStreamState::connect(&cfg("root-2"), None, bounds())
        .await
        .unwrap();
    let (m, h) = (NodeId::new("m"), NodeId::new("h"));
    let key = |from: &NodeId, to: &NodeId, id| {
        (
            from.clone(),
            to.clone(),
            StreamId::new("command:m/h"),
            1,
            id,
        )
    };
    let (cmd, reply) = (Bytes::from_static(b"cmd"), Bytes::from_static(b"reply"));
    let now = Instant::now();
    // Unanswered at root 1: a retry at root 2 within the hold is in flight.
    // Acknowledged first, so the watch delivers it before key 1's entries.
    let fwd = |v: Verdict| assert_eq!(v, Verdict::Forward);
    fwd(a.relay_verdict(key(&m, &h, 2), &cmd, now).await);
    a.flush().await;
    fwd(a.relay_verdict(key(&m, &h, 1), &cmd, now).await);
    fwd(a.relay_verdict(key(&h, &m, 1), &reply, now).await);
    a.flush().await;
    // The member re-homed: its retries reach root 2, which learned both
    // keys through the watched bucket.
    tokio::time::timeout(LIMIT, async {
        while b
            .dedupe_snapshot(&key(&m, &h, 1))
            .and_then(|e| e.reply)
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("root 2 learns the cached reply");
    assert_eq!(
        b.relay_verdict(key(&m, &h, 1), &cmd, Instant::now()).await,
        Verdict::Replay(reply)
    );
    assert_eq!(
        b.relay_verdict(key(&m, &h, 2), &cmd, Instant::now()).await,
        Verdict::Drop
    );
    a.close().await;
    b.close().await;
}

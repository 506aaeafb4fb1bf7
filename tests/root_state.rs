//! Root state survives a root restart: a relayed class-A command's cached
//! reply is kept in the root's `root.redb`, so a retry that reaches a
//! restarted root (same state folder) is answered from it and never reaches
//! the receiver again. Real loopback QUIC, a real redb file; every wait is
//! bounded.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::contract::{until, wait_up};
use common::rootkit::{LIMIT, fast_probe, joined, relay, via_root, wait_online};
use interlocking::root::{Root, RootConfig};
use interlocking::transports::{Fact, Transport};
use interlocking::vocab::{NodeId, Role, StreamId};
use interlocking::wire::{Data, Frame};

fn free_addr() -> std::net::SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn data(message_id: u64, payload: &'static [u8]) -> Frame {
    Frame::Data(Data {
        stream: StreamId::new("command:a/b"),
        incarnation: 1,
        seq: message_id,
        message_id,
        class: 0,
        delivery: 0, // class A
        payload: Bytes::from_static(payload),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_root_answers_a_retry_from_the_reply_it_cached_before() {
    let state = tempfile::tempdir().unwrap();
    let config = RootConfig {
        listen: free_addr(),
        join_listen: free_addr(),
        state_dir: Some(state.path().to_path_buf()),
        probe: fast_probe(),
        idle_timeout: Duration::from_millis(1500),
        keep_alive: Duration::from_millis(300),
        ..RootConfig::default()
    };
    let root = Root::spawn(config.clone()).await.unwrap();
    let a = joined(&root, "a", Role::Hub).await;
    let b = joined(&root, "b", Role::Member).await;
    let (a_id, b_id) = (NodeId::new("a"), NodeId::new("b"));
    let command = data(7, b"open the valve");
    let reply = data(7, b"valve open");
    {
        let (ta, mut ra) = relay(&root, a.identity.clone(), a.roots.clone());
        let (tb, mut rb) = relay(&root, b.identity.clone(), b.roots.clone());
        tb.register(vec![], vec![]).await.unwrap();
        wait_online(&root, "b", true).await;
        ta.connect(&via_root("b")).await.unwrap();
        wait_up(&mut ra, &b_id).await;
        ta.send(&b_id, command.clone()).unwrap();
        until(
            &mut rb,
            LIMIT,
            |e| matches!(&e.fact, Fact::Frame(f) if *f == command),
        )
        .await;
        tb.send(&a_id, reply.clone()).unwrap();
        until(
            &mut ra,
            LIMIT,
            |e| matches!(&e.fact, Fact::Frame(f) if *f == reply),
        )
        .await;
        ta.shutdown().await;
        tb.shutdown().await;
    }
    root.shutdown().await;
    drop(root);

    // The same state folder, the same addresses: a fresh root process state.
    let root = Root::spawn(config).await.unwrap();
    assert_eq!(root.state_health().backend, "local");
    let (ta, mut ra) = relay(&root, a.identity, a.roots);
    let (tb, mut rb) = relay(&root, b.identity, b.roots);
    tb.register(vec![], vec![]).await.unwrap();
    wait_online(&root, "b", true).await;
    ta.connect(&via_root("b")).await.unwrap();
    wait_up(&mut ra, &b_id).await;
    // The sender's retry of 7 is answered by the root from the cached reply.
    ta.send(&b_id, command.clone()).unwrap();
    until(
        &mut ra,
        LIMIT,
        |e| matches!(&e.fact, Fact::Frame(f) if *f == reply),
    )
    .await;
    assert_eq!(root.counters().deduped, 1);
    // b never sees 7 again: the next frame it gets is 8.
    let next = data(8, b"close the valve");
    ta.send(&b_id, next.clone()).unwrap();
    let (ev, _) = until(&mut rb, LIMIT, |e| {
        matches!(e.fact, Fact::Frame(Frame::Data(_)))
    })
    .await;
    assert!(
        matches!(&ev.fact, Fact::Frame(f) if *f == next),
        "b saw a second copy of 7: {:?}",
        ev.fact
    );
    ta.shutdown().await;
    tb.shutdown().await;
    root.shutdown().await;
}

/// The contract every [`RootState`] backend keeps, run against each one
/// (a shared cluster backend joins the list with a second instance on the
/// same store as `other`, so cross-root rules are checked too).
mod contract {
    use std::time::{Duration, Instant, SystemTime};

    use bytes::Bytes;
    use interlocking::root::AdmissionError;
    use interlocking::root::dedupe::Verdict;
    use interlocking::root::rendezvous::Registration;
    use interlocking::root::state::{DedupeBounds, LocalState, RootState};
    use interlocking::vocab::{NodeId, Role, StreamId};

    fn bounds() -> DedupeBounds {
        DedupeBounds {
            capacity: 4,
            max_bytes: 1 << 20,
            ttl: Duration::from_secs(30),
            hold: Duration::from_secs(2),
        }
    }

    /// `one` and `other` are two roots' views of the same state.
    async fn check(one: &dyn RootState, other: &dyn RootState) {
        let (m, now, ttl) = (NodeId::new("m"), SystemTime::now(), Duration::from_secs(60));
        // Admission: a token redeems once, at whichever root.
        let t = one
            .issue([1; 32], &m, Role::Member, ttl, now, &["cam".into()])
            .unwrap();
        let claims = other.redeem(&t, &m, Role::Member, now).await.unwrap();
        assert_eq!(claims.node, m);
        assert_eq!(
            one.redeem(&t, &m, Role::Member, now).await,
            Err(AdmissionError::Reused)
        );
        assert!(one.capabilities(&m).contains("cam"));
        let t = one.issue([1; 32], &m, Role::Member, ttl, now, &[]).unwrap();
        assert_eq!(
            other.redeem(&t, &m, Role::Member, now + ttl).await,
            Err(AdmissionError::Expired)
        );
        // The registry.
        one.register(
            &m,
            Registration {
                addrs: vec!["127.0.0.1:1".into()],
                capabilities: vec!["cam".into()],
            },
        );
        let mut seen = 0;
        one.with_registry(&mut |r| seen = r.len());
        assert_eq!(seen, 1);
        // Revocation at one root holds at the other and unregisters.
        other.revoke(&m).await.unwrap();
        assert!(one.is_revoked(&m) && other.is_revoked(&m));
        assert_eq!(one.revoked(), vec![m.clone()]);
        let t = one.issue([1; 32], &m, Role::Member, ttl, now, &[]).unwrap();
        assert_eq!(
            one.redeem(&t, &m, Role::Member, now).await,
            Err(AdmissionError::Revoked(m.clone()))
        );
        // Relay dedupe: forward, hold, replay, bounded by count.
        let t0 = Instant::now();
        let s = StreamId::new("command:a/b");
        let k = |from: &str, to: &str, id| (NodeId::new(from), NodeId::new(to), s.clone(), 1, id);
        let (cmd, reply) = (Bytes::from_static(b"c"), Bytes::from_static(b"r"));
        assert_eq!(
            one.relay_verdict(k("a", "b", 1), &cmd, t0).await,
            Verdict::Forward
        );
        assert_eq!(
            one.relay_verdict(k("a", "b", 1), &cmd, t0).await,
            Verdict::Drop
        );
        assert_eq!(
            one.relay_verdict(k("b", "a", 1), &reply, t0).await,
            Verdict::Forward
        );
        assert_eq!(
            one.relay_verdict(k("a", "b", 1), &cmd, t0).await,
            Verdict::Replay(reply.clone())
        );
        for id in 2..=5 {
            assert_eq!(
                one.relay_verdict(k("a", "b", id), &cmd, t0).await,
                Verdict::Forward
            );
        }
        assert_eq!(
            one.relay_verdict(k("a", "b", 1), &cmd, t0).await,
            Verdict::Forward,
            "the oldest key is forgotten past the capacity"
        );
        assert!(one.health().ready && other.health().ready);
        one.close().await;
        other.close().await;
    }

    #[tokio::test]
    async fn local_in_memory() {
        // One root only: both views are the same instance.
        let s = LocalState::in_memory(bounds());
        check(&s, &s).await;
    }

    #[tokio::test]
    async fn local_with_a_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalState::open(dir.path(), bounds()).unwrap();
        check(&s, &s).await;
    }
}

//! Dead peers are noticed by probes, and restarted ones are back within
//! about a second of listening — not after QUIC's 10 s idle timeout — under
//! the library's default probe, routing and QUIC settings, over real QUIC
//! on loopback with real processes killed by SIGKILL.
//!
//! The peer runs in a child process (this test binary re-executed with
//! `RECOVERY_CHILD` set, as in `tests/channels_crash.rs`): a hub that only
//! listens, or a root with a state dir. It is killed and restarted on the
//! same address; the restarted process answers the old connection with a
//! stateless reset that the survivor honours because the reset key is
//! derived from what persists (the hub's identity, the root's CA key).
//!
//! `RECOVERY_ROUNDS` sets the kill/restart rounds (default 5); figures are
//! printed as median [min–max].

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use interlocking::root::{Root, RootConfig, join};
use interlocking::routing::{Observation, PathHealth, RoutingConfig, RoutingCore};
use interlocking::transports::quic::{QuicConfig, QuicTransport};
use interlocking::transports::relay::{RelayConfig, RelayTransport};
use interlocking::transports::{DownCause, Fact, PeerAddr, Transport, TransportEvent};
use interlocking::trust::{CertificateAuthority, NodeIdentity, TrustRoots};
use interlocking::vocab::{NodeId, PathId, PathKind, Role};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::time::Instant;

const CHILD_VAR: &str = "RECOVERY_CHILD";
/// Every wait is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child: {name} not set"))
}

fn rounds() -> usize {
    std::env::var("RECOVERY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn free_addr() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// The child process: a hub endpoint or a root, until killed (at most
/// `LIMIT` × 3).
#[test]
fn child_peer() {
    let Ok(role) = std::env::var(CHILD_VAR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        interlocking::trust::ensure_crypto_provider();
        match role.as_str() {
            "hub" => {
                let identity =
                    NodeIdentity::from_bytes(&std::fs::read(var("RECOVERY_ID")).unwrap()).unwrap();
                let roots = TrustRoots::new(vec![CertificateDer::from(
                    std::fs::read(var("RECOVERY_ROOTS")).unwrap(),
                )]);
                let mut cfg = QuicConfig::new(identity, roots);
                cfg.listen = var("RECOVERY_ADDR").parse().unwrap();
                let (tx, mut rx) = mpsc::channel::<TransportEvent>(1024);
                let hub = QuicTransport::bind(cfg, tx).unwrap();
                println!("listening {}", hub.local_addr());
                let end = Instant::now() + LIMIT * 3;
                while let Ok(Some(_)) = tokio::time::timeout_at(end, rx.recv()).await {}
            }
            "root" => {
                let config = RootConfig {
                    listen: var("RECOVERY_ADDR").parse().unwrap(),
                    join_listen: var("RECOVERY_JOIN").parse().unwrap(),
                    state_dir: Some(PathBuf::from(var("RECOVERY_STATE"))),
                    ..RootConfig::default()
                };
                let root = Root::spawn(config).await.unwrap();
                if let Ok(path) = std::env::var("RECOVERY_TOKEN") {
                    let token = root
                        .issue_token(&NodeId::new("m1"), Role::Member, None)
                        .unwrap();
                    std::fs::write(path, token.to_string()).unwrap();
                }
                println!("listening {}", root.peer_addr().addr.unwrap());
                tokio::time::sleep(LIMIT * 3).await;
            }
            other => panic!("unknown child role {other}"),
        }
    });
}

/// Starts a child and waits (bounded) for its "listening" line; returns it
/// with the instant it said so.
fn spawn_child(role: &str, env: &[(&str, String)]) -> (Child, std::time::Instant) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_peer", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening 127.") {
                let _ = tx.send(std::time::Instant::now());
            }
        }
    });
    let at = rx
        .recv_timeout(LIMIT)
        .unwrap_or_else(|_| panic!("{role} child did not start listening"));
    (child, at)
}

fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn stats(v: &mut [Duration]) -> String {
    v.sort();
    format!(
        "{} ms [{}–{}]",
        v[v.len() / 2].as_millis(),
        v[0].as_millis(),
        v[v.len() - 1].as_millis()
    )
}

/// A member's view of its path to the hub: transport events fed to a
/// routing core with the default configuration.
struct View {
    rx: mpsc::Receiver<TransportEvent>,
    core: RoutingCore,
    path: PathId,
}

impl View {
    /// Feeds events until `done` holds of one (bounded by `LIMIT`).
    async fn until(&mut self, what: &str, mut done: impl FnMut(&Fact, &RoutingCore) -> bool) {
        let end = Instant::now() + LIMIT;
        loop {
            let ev = tokio::time::timeout_at(end, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .expect("transport events end");
            if ev.path != self.path {
                continue;
            }
            let now = Instant::now().into_std();
            match &ev.fact {
                Fact::Up => self.core.path_added(now, self.path.clone()),
                Fact::Down(c) => self.core.observe(
                    now,
                    &self.path,
                    Observation::Down {
                        cause: c.to_string(),
                    },
                ),
                Fact::ProbeAnswered { rtt } => {
                    self.core
                        .observe(now, &self.path, Observation::ProbeAnswered { rtt: *rtt })
                }
                Fact::ProbeMissed => self.core.observe(now, &self.path, Observation::ProbeMissed),
                _ => {}
            }
            if done(&ev.fact, &self.core) {
                return;
            }
        }
    }

    fn health(&self) -> Option<PathHealth> {
        self.core.path_health(&self.path, Instant::now().into_std())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_hub_is_seen_down_by_probes_and_back_within_a_second_of_listening() {
    interlocking::trust::ensure_crypto_provider();
    let ca = CertificateAuthority::generate("recovery test CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hub_id = ca.issue_node(&NodeId::new("hub"), Role::Hub).unwrap();
    std::fs::write(dir.path().join("hub.id"), hub_id.to_bytes()).unwrap();
    std::fs::write(dir.path().join("roots.der"), ca.certificate().as_ref()).unwrap();
    let addr = free_addr();
    let env = [
        (
            "RECOVERY_ID",
            dir.path().join("hub.id").display().to_string(),
        ),
        (
            "RECOVERY_ROOTS",
            dir.path().join("roots.der").display().to_string(),
        ),
        ("RECOVERY_ADDR", addr.to_string()),
    ];
    let (mut hub, _) = spawn_child("hub", &env);

    // The member: library defaults throughout.
    let m1 = ca.issue_node(&NodeId::new("m1"), Role::Member).unwrap();
    let (tx, rx) = mpsc::channel(4096);
    let member = QuicTransport::bind(QuicConfig::new(m1, ca.roots()), tx).unwrap();
    member.connect(&PeerAddr::at("hub", addr)).await.unwrap();
    let mut view = View {
        rx,
        core: RoutingCore::new(RoutingConfig::default()),
        path: PathId::new("hub", PathKind::Quic),
    };
    let mut answered = 0;
    view.until("probes answered", |f, _| {
        answered += matches!(f, Fact::ProbeAnswered { .. }) as u32;
        answered >= 5
    })
    .await;
    // The cost of default probing on an idle path: what the member sends
    // (its probes, its answers to the hub's probes, QUIC acks, keep-alives).
    let conn = member.connection(&NodeId::new("hub")).unwrap();
    let (b0, t0) = (conn.stats().udp_tx.bytes, Instant::now());
    let mut answered = 0;
    view.until("30 more probes answered", |f, _| {
        answered += matches!(f, Fact::ProbeAnswered { .. }) as u32;
        answered >= 30
    })
    .await;
    let rate = (conn.stats().udp_tx.bytes - b0) as f64 / t0.elapsed().as_secs_f64();
    eprintln!("idle path under default probes: {rate:.0} bytes/s sent per direction");
    assert!(rate < 10_000.0, "probing costs {rate:.0} B/s");

    let (mut seen_down, mut back) = (Vec::new(), Vec::new());
    for round in 0..rounds() {
        kill(&mut hub);
        let killed = std::time::Instant::now();
        view.until("the path to fail", |_, core| {
            core.path_health(
                &PathId::new("hub", PathKind::Quic),
                Instant::now().into_std(),
            ) == Some(PathHealth::Failed)
        })
        .await;
        seen_down.push(killed.elapsed());

        let (h, listening) = spawn_child("hub", &env);
        hub = h;
        let mut reset = false;
        view.until("the path to come back", |f, _| {
            if let Fact::Down(c) = f {
                assert_eq!(
                    *c,
                    DownCause::Reset,
                    "round {round}: old connection ended by {c}"
                );
                reset = true;
            }
            matches!(f, Fact::Up)
        })
        .await;
        assert!(reset, "round {round}: the old connection was never reset");
        let mut answers = 0;
        view.until("answers on the new connection", |f, _| {
            answers += matches!(f, Fact::ProbeAnswered { .. }) as u32;
            answers >= 3
        })
        .await;
        assert_eq!(view.health(), Some(PathHealth::Healthy));
        back.push(listening.elapsed());
    }
    kill(&mut hub);
    member.shutdown().await;
    let (down_s, back_s) = (stats(&mut seen_down), stats(&mut back));
    eprintln!(
        "hub SIGKILL → path failed: {down_s}; hub listening again → path answering: {back_s}"
    );
    assert!(
        seen_down.iter().all(|d| *d <= Duration::from_millis(1_000)),
        "kill → failed {down_s}"
    );
    assert!(
        back.iter().all(|d| *d <= Duration::from_millis(1_000)),
        "listening → back {back_s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_root_link_is_dropped_by_probes_and_back_within_a_second_of_listening() {
    interlocking::trust::ensure_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (addr, join_addr) = (free_addr(), free_addr());
    let state = dir.path().join("root");
    let token_file = dir.path().join("token");
    let mut env = vec![
        ("RECOVERY_ADDR", addr.to_string()),
        ("RECOVERY_JOIN", join_addr.to_string()),
        ("RECOVERY_STATE", state.display().to_string()),
    ];
    let mut first = env.clone();
    first.push(("RECOVERY_TOKEN", token_file.display().to_string()));
    let (mut root, _) = spawn_child("root", &first);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let root_node = NodeId::new("root");
    let joined = join(
        join_addr,
        &root_node,
        &token,
        &NodeId::new("m1"),
        Role::Member,
        LIMIT,
    )
    .await
    .unwrap();
    let (tx, mut rx) = mpsc::channel(4096);
    let relay = RelayTransport::bind(
        RelayConfig::new(
            QuicConfig::new(joined.identity, joined.roots),
            PeerAddr::at(root_node.clone(), addr),
        ),
        tx,
    )
    .unwrap();
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    // Waits (bounded) for the link state.
    async fn link(relay: &RelayTransport, up: bool) {
        let mut watch = relay.root_link();
        tokio::time::timeout(LIMIT, watch.wait_for(|u| *u == up))
            .await
            .unwrap_or_else(|_| panic!("root link never became {}", if up { "up" } else { "down" }))
            .unwrap();
    }
    link(&relay, true).await;

    let (mut seen_down, mut back) = (Vec::new(), Vec::new());
    env.truncate(3);
    for _ in 0..rounds() {
        kill(&mut root);
        let killed = std::time::Instant::now();
        link(&relay, false).await;
        seen_down.push(killed.elapsed());
        let (r, listening) = spawn_child("root", &env);
        root = r;
        link(&relay, true).await;
        back.push(listening.elapsed());
    }
    kill(&mut root);
    relay.shutdown().await;
    let (down_s, back_s) = (stats(&mut seen_down), stats(&mut back));
    eprintln!("root SIGKILL → link down: {down_s}; root listening again → link up: {back_s}");
    // `RelayConfig::root_misses` (8) probes at 100 ms / 250 ms: 0.95–1.05 s,
    // plus scheduling on a loaded machine.
    assert!(
        seen_down.iter().all(|d| *d <= Duration::from_millis(1_500)),
        "kill → link down {down_s}"
    );
    assert!(
        back.iter().all(|d| *d <= Duration::from_millis(1_500)),
        "listening → link up {back_s}"
    );
}

//! `interlocking run` roots in a cluster, as real processes: two roots
//! whose configs name one real nats-server (`[root] cluster`), one CA copied
//! onto both (as `docs/cluster.md` says); a token issued by root 1's
//! `interlocking token` is used through root 1 and then refused by root 2;
//! nats-server SIGKILLed → root 1's `/readyz` names the `state` branch
//! degraded, and ok again once it is back. The example cluster configs
//! load. Every wait is bounded.

mod common;
mod ops;

use std::time::Duration;

use common::nats::NatsServer;
use interlocking::config::Config;
use interlocking::root::{AdmissionError, JoinError, join, open_ca};
use interlocking::vocab::{NodeId, Role};
use ops::{Proc, client, eventually, run, tcp_port, udp_port, write};

fn root_toml(i: usize, state: &std::path::Path, nats: &str, q: u16, j: u16, c: u16) -> String {
    format!(
        r#"[node]
id = "root-{i}"
role = "root"
state_dir = "{state}"

[listen]
quic = "127.0.0.1:{q}"
join = "127.0.0.1:{j}"

[root]
cluster = {{ nats = "{nats}", name = "root-{i}" }}

[diagnostics]
listen = "127.0.0.1:{c}"
"#,
        state = state.display(),
    )
}

#[test]
fn the_example_cluster_configs_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nodes/cluster");
    for i in 1..=3 {
        let cfg = Config::load(dir.join(format!("root-{i}.toml"))).expect("loads");
        let cluster = cfg.cluster.expect("names its cluster");
        assert_eq!(cluster.name, format!("root-{i}"));
        assert_eq!(cluster.nats, "nats://127.0.0.1:4222");
    }
}

#[test]
fn a_member_config_naming_a_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "m.toml",
        r#"[node]
id = "m"
role = "member"
state_dir = "m"

[root]
addr = "127.0.0.1:7400"
join = "127.0.0.1:7401"
cluster = { nats = "nats://127.0.0.1:4222", name = "x" }
"#,
    );
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("only a root joins a cluster"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_roots_as_processes_share_tokens_and_report_nats_in_readiness() {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (s1, s2) = (d.join("root-1"), d.join("root-2"));
    std::fs::create_dir_all(&s2).unwrap();
    open_ca(&s1).unwrap();
    for f in ["ca.der", "ca.key.der"] {
        std::fs::copy(s1.join(f), s2.join(f)).unwrap();
    }
    let (q1, j1, c1) = (udp_port(), udp_port(), tcp_port());
    let (q2, j2, c2) = (udp_port(), udp_port(), tcp_port());
    let cfg1 = write(
        d,
        "root-1.toml",
        &root_toml(1, &s1, &nats.url(), q1, j1, c1),
    );
    let cfg2 = write(
        d,
        "root-2.toml",
        &root_toml(2, &s2, &nats.url(), q2, j2, c2),
    );
    let mut r1 = Proc::start(
        "root-1",
        &["run", "--config", cfg1.to_str().unwrap()],
        &d.join("root-1.log"),
    );
    let mut r2 = Proc::start(
        "root-2",
        &["run", "--config", cfg2.to_str().unwrap()],
        &d.join("root-2.log"),
    );
    r1.wait_line("running", Duration::from_secs(20));
    r2.wait_line("running", Duration::from_secs(20));

    let (code, ready) = client(c1).get_any("/readyz").await.unwrap();
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["branches"]["state"]["status"], "ok", "{ready}");

    // A token from root 1's state dir (the operator's command), used at
    // root 1, refused at root 2.
    let out = run(&[
        "token",
        "--state-dir",
        s1.to_str().unwrap(),
        "--node",
        "m",
        "--role",
        "member",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let limit = Duration::from_secs(10);
    let m = NodeId::new("m");
    let at = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    join(
        at(j1),
        &NodeId::new("root-1"),
        &token,
        &m,
        Role::Member,
        limit,
    )
    .await
    .expect("first use at root 1");
    match join(
        at(j2),
        &NodeId::new("root-2"),
        &token,
        &m,
        Role::Member,
        limit,
    )
    .await
    {
        Err(JoinError::Refused(AdmissionError::Reused)) => {}
        other => panic!("reuse at root 2 must be refused as reused: {other:?}"),
    }

    nats.kill();
    let degraded = eventually("root 1 readiness says degraded", limit, || async {
        let (_, r) = client(c1).get_any("/readyz").await.ok()?;
        (r["branches"]["state"]["status"] == "degraded").then_some(r)
    })
    .await;
    assert!(
        degraded["modes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "cluster_state_lost"),
        "{degraded}"
    );
    nats.restart();
    eventually(
        "root 1 readiness ok again",
        Duration::from_secs(20),
        || async {
            let (_, r) = client(c1).get_any("/readyz").await.ok()?;
            (r["branches"]["state"]["status"] == "ok").then_some(())
        },
    )
    .await;

    r1.terminate();
    r2.terminate();
    assert_eq!(r1.wait_exit(Duration::from_secs(15)), Some(0));
    assert_eq!(r2.wait_exit(Duration::from_secs(15)), Some(0));
}

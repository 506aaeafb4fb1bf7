//! `[limits]` in a node's configuration file, through the real binary: a
//! root started by `interlocking run` with `connections_per_address = 2`
//! refuses a third connection from one address with QUIC
//! `CONNECTION_REFUSED` and counts it in `/metrics`; nonsense limits are
//! refused at start with exit code 2 naming the file, line and key.

mod common;
mod ops;

use std::net::IpAddr;
use std::time::Duration;

use common::rawquic::{LIMIT, code_of, connect_from, connecting};
use interlocking::trust::CertificateAuthority;
use interlocking::vocab::{NodeId, Role};
use ops::{Ports, Proc, client, eventually, root_toml, run, write};

/// QUIC transport error `CONNECTION_REFUSED` (RFC 9000 §20.1).
const CONNECTION_REFUSED: u64 = 0x2;

/// The sum of the samples of `name` (with any labels) whose labels contain
/// `label`.
fn sample(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_honours_a_configured_connection_limit_and_counts_refusals_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = Ports::new(0);
    let text = format!(
        "{}\n[limits]\nconnections_per_address = 2\nhello_timeout = \"30s\"\n",
        root_toml(&p, &d.join("root"))
    );
    let cfg = write(d, "root.toml", &text);
    let mut root = Proc::start(
        "root",
        &["run", "--config", cfg.to_str().unwrap()],
        &d.join("root.log"),
    );
    root.wait_line("running", Duration::from_secs(20));
    // The root's CA is in its state directory; a member identity from it.
    let state = d.join("root");
    let ca = CertificateAuthority::from_der(
        "interlocking root CA",
        &std::fs::read(state.join("ca.der")).unwrap(),
        &std::fs::read(state.join("ca.key.der")).unwrap(),
    )
    .unwrap();
    let ident = |n: &str| ca.issue_node(&NodeId::new(n), Role::Member).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p.root_quic));
    let root_id = NodeId::new("root");
    let local = IpAddr::from([127, 0, 0, 1]);
    // Two connections of two nodes are held (handshake done, no Hello
    // yet: 30 s).
    let _a = connect_from(&ident("m1"), &ca, local, addr, &root_id).await;
    let _b = connect_from(&ident("m2"), &ca, local, addr, &root_id).await;
    // The third from the same address is refused before its handshake.
    let (_ep, c) = connecting(&ident("m3"), &ca, local, addr, &root_id);
    let refused = tokio::time::timeout(LIMIT, c)
        .await
        .expect("answered in time")
        .expect_err("over connections_per_address");
    assert_eq!(code_of(&refused), Some(CONNECTION_REFUSED), "{refused:?}");
    // Counted in /metrics.
    let ctl = client(p.root_ctl);
    eventually(
        "the refusal in /metrics",
        Duration::from_secs(10),
        || async {
            let text = ctl.get_text("/metrics").await.ok()?;
            let quic = sample(
                &text,
                "interlocking_quic_refusals_total",
                "reason=\"connections_per_address\"",
            );
            let limit = sample(
                &text,
                "interlocking_limit_refusals_total",
                "limit=\"connections_per_address\"",
            );
            (quic >= 1.0 && limit >= 1.0).then_some(())
        },
    )
    .await;
    root.terminate();
    assert_eq!(root.wait_exit(Duration::from_secs(20)), Some(0));
}

/// Runs the binary on `GOOD` plus `limits` (a `[limits]` body); returns
/// (exit code, stderr, file).
fn refuse(dir: &std::path::Path, limits: &str) -> (Option<i32>, String, String) {
    let state = dir.join("state");
    let text = format!(
        "[node]\nid = \"root\"\nrole = \"root\"\nstate_dir = \"{}\"\n\n[listen]\nquic = \"127.0.0.1:0\"\njoin = \"127.0.0.1:0\"\n\n[limits]\n{limits}\n",
        state.display()
    );
    let path = write(dir, "node.toml", &text);
    let out = run(&["run", "--config", path.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        path.display().to_string(),
    )
}

#[test]
fn nonsense_limits_are_refused_naming_line_and_key() {
    for (limits, key, says) in [
        (
            "connections_total = 0",
            "limits.connections_total",
            "between 1",
        ),
        (
            "connections_total = 4\nconnections_per_address = 8",
            "limits.connections_per_address",
            "above connections_total",
        ),
        ("streams_uni = 2", "limits.streams_uni", "between 5"),
        ("hello_timeout = \"0s\"", "limits.hello_timeout", "above 0"),
        (
            "handshake_timeout = \"soon\"",
            "limits.handshake_timeout",
            "",
        ),
        (
            "max_frame_len = 100000\nqueue_integration = { bytes = 1000 }",
            "limits.queue_integration.bytes",
            "cannot hold one frame",
        ),
        (
            "dedupe_max_per_stream = 0",
            "limits.dedupe_max_per_stream",
            "between 1",
        ),
        ("inbox_capacity = -1", "limits.inbox_capacity", ""),
        (
            "relay_dedupe_keys = 0",
            "limits.relay_dedupe_keys",
            "between 1",
        ),
        (
            "relay_dedupe_ttl = \"1s\"\nrelay_dedupe_hold = \"5s\"",
            "limits.relay_dedupe_hold",
            "above relay_dedupe_ttl",
        ),
        ("streams = 3", "limits.streams", "unknown field"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (code, err, file) = refuse(dir.path(), limits);
        assert_eq!(code, Some(2), "{limits}: {err}");
        assert!(err.contains(&format!("{file}:1")), "{limits}: {err}");
        assert!(err.contains(key), "{limits}: {err}");
        assert!(err.contains(says), "{limits}: {err}");
    }
}

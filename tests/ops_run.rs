//! `interlocking run` as real processes: a root, a token, a hub and a
//! member, a command through them, `ctl why` on the member, `/metrics`
//! counters moving, a restart that needs no token, and `drain` stopping the
//! member with its outbox empty.

mod ops;

use std::time::Duration;

use interlocking::store::{RedbStore, Store};
use ops::{Ports, Proc, client, eventually, hub_toml, member_toml, root_toml, run, token, write};
use serde_json::{Value, json};

/// Parses Prometheus text: every sample line is `name{labels} value`.
fn samples(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        let metric = name.split('{').next().unwrap();
        assert!(
            metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = name.split_once('{').map(|x| x.1) {
            assert!(labels.ends_with('}'), "unclosed labels in {line:?}");
        }
        out.push((name.to_string(), v));
    }
    out
}

fn sample(text: &str, name: &str) -> f64 {
    samples(text)
        .into_iter()
        .filter(|(n, _)| n.starts_with(name))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_hub_member_as_processes_answer_why_and_drain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = Ports::new(1);
    let root_cfg = write(d, "root.toml", &root_toml(&p, &d.join("root")));
    let hub_cfg = write(d, "hub.toml", &hub_toml(&p, &d.join("hub"), "kv"));
    let member_cfg = write(d, "member.toml", &member_toml(&p, 1, &d.join("m1"), false));

    // 1. The root.
    let mut root = Proc::start(
        "root",
        &["run", "--config", root_cfg.to_str().unwrap()],
        &d.join("root.log"),
    );
    root.wait_line("running", Duration::from_secs(20));

    // 2. Tokens from the root's state dir (the root is running).
    let (hub_token, member_token) = (
        token(&d.join("root"), "hub", "hub"),
        token(&d.join("root"), "member-1", "member"),
    );

    // 3. The hub and the member, each its own process.
    let mut hub = Proc::start(
        "hub",
        &[
            "run",
            "--config",
            hub_cfg.to_str().unwrap(),
            "--token",
            &hub_token,
        ],
        &d.join("hub.log"),
    );
    hub.wait_line("running", Duration::from_secs(30));
    let mut member = Proc::start(
        "member",
        &[
            "run",
            "--config",
            member_cfg.to_str().unwrap(),
            "--token",
            &member_token,
        ],
        &d.join("member.log"),
    );
    member.wait_line("running", Duration::from_secs(30));

    let m = client(p.member_ctl[0]);
    let stream = "command:member-1/hub";
    eventually(
        "the member's stream on the direct path",
        Duration::from_secs(20),
        || async {
            let v = m.get(&format!("/control/streams/{stream}")).await.ok()?;
            (v["path"] == "quic@hub").then_some(())
        },
    )
    .await;
    let metrics_before = m.get_text("/metrics").await.unwrap();

    // A command through member → hub (kv, in the hub's redb file).
    let out = run(&[
        "ctl",
        "--config",
        member_cfg.to_str().unwrap(),
        "send",
        stream,
        r#"{"op":"put","key":"colour","value":"green"}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "ctl",
        "--config",
        member_cfg.to_str().unwrap(),
        "--json",
        "send",
        stream,
        r#"{"op":"get","key":"colour"}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["reply"]["value"], "green", "{reply}");

    // `ctl why` on the member explains the route with its decision log.
    let out = run(&[
        "ctl",
        "--config",
        member_cfg.to_str().unwrap(),
        "why",
        stream,
    ]);
    let why = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(why.starts_with(&format!("{stream}: quic@hub")), "{why}");
    assert!(why.contains("candidate relay@hub"), "{why}");
    assert!(why.contains("(initial: "), "{why}");

    // /metrics parses as Prometheus text and its counters moved.
    let metrics_after = m.get_text("/metrics").await.unwrap();
    let data_out = |t: &str| {
        sample(
            t,
            "interlocking_frames_total{direction=\"out\",path=\"quic\",kind=\"data\"}",
        )
    };
    assert!(
        data_out(&metrics_after) >= data_out(&metrics_before) + 2.0,
        "data frames out did not move:\n{metrics_after}"
    );
    assert!(
        sample(
            &metrics_after,
            "interlocking_payload_bytes_total{direction=\"in\""
        ) > 0.0
    );
    assert!(sample(&metrics_after, "interlocking_route_decisions_total") >= 1.0);
    let hub_metrics = client(p.hub_ctl).get_text("/metrics").await.unwrap();
    assert_eq!(
        sample(
            &hub_metrics,
            "interlocking_commands_applied_total{stream=\"command:member-1/hub\"}"
        ),
        2.0,
        "{hub_metrics}"
    );
    // The hub's channels view: applied, dedupe records, its session inbox.
    let ch = client(p.hub_ctl).get("/control/channels").await.unwrap();
    let served = &ch["served"][0];
    assert_eq!(served["stream"], stream, "{ch}");
    assert_eq!(served["handler"], "kv", "{ch}");
    assert_eq!(served["applied"], 2, "{ch}");
    assert!(served["dedupe_records"].as_u64() >= Some(1), "{ch}");
    assert!(served["inbox"]["admitted"].as_u64() >= Some(2), "{ch}");
    let root_metrics = client(p.root_ctl).get_text("/metrics").await.unwrap();
    assert_eq!(
        sample(
            &root_metrics,
            "interlocking_root_joins_total{result=\"granted\"}"
        ),
        2.0,
        "{root_metrics}"
    );

    // Readiness: every gating branch is up; media never gates.
    let (code, ready) = m.get_any("/readyz").await.unwrap();
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["branches"]["root_control"]["status"], "ok");
    assert_eq!(ready["branches"]["media"]["gates"], false);

    // A restart of the member needs no token: its identity is in its state dir.
    member.terminate();
    assert_eq!(member.wait_exit(Duration::from_secs(15)), Some(0));
    let mut member = Proc::start(
        "member again",
        &["run", "--config", member_cfg.to_str().unwrap()],
        &d.join("member2.log"),
    );
    member.wait_line("running", Duration::from_secs(30));
    let v = eventually(
        "a command after the restart",
        Duration::from_secs(20),
        || async {
            m.post(
                "/control/send",
                &json!({"stream": stream, "command": {"op": "get", "key": "colour"}}),
            )
            .await
            .ok()
        },
    )
    .await;
    assert_eq!(v["reply"]["value"], "green", "{v}");

    // Root control lost (the root is SIGKILLed): the member names the
    // degraded mode, stays ready, and commands still flow on the direct path.
    root.child.kill().unwrap();
    let _ = root.child.wait();
    let ready = eventually(
        "root_control_lost on the member",
        Duration::from_secs(30),
        || async {
            let (code, v) = m.get_any("/readyz").await.ok()?;
            let lost = v["modes"]
                .as_array()?
                .iter()
                .any(|x| x["name"] == "root_control_lost");
            (lost && code == 200).then_some(v)
        },
    )
    .await;
    assert_eq!(
        ready["branches"]["root_control"]["status"], "degraded",
        "{ready}"
    );
    let out = run(&["ctl", "--config", member_cfg.to_str().unwrap(), "status"]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("degraded mode root_control_lost"),
        "{status}"
    );
    let v = m
        .post(
            "/control/send",
            &json!({"stream": stream, "command": {"op": "put", "key": "offline", "value": true}}),
        )
        .await
        .unwrap();
    assert_eq!(v["reply"]["existed"], false, "{v}");

    // Drain: new commands are refused, the outbox is flushed, the node exits 0.
    let out = run(&[
        "ctl",
        "--config",
        member_cfg.to_str().unwrap(),
        "--json",
        "drain",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drained: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(drained["drained"], true, "{drained}");
    assert_eq!(drained["outbox_pending"], 0, "{drained}");
    assert_eq!(member.wait_exit(Duration::from_secs(15)), Some(0));
    member.wait_line("stopped (drained)", Duration::from_secs(5));
    // The member's redb outbox holds nothing pending.
    let store = RedbStore::open(d.join("m1").join("node.redb")).unwrap();
    assert!(store.pending_outbox().unwrap().is_empty());

    hub.terminate();
    assert_eq!(hub.wait_exit(Duration::from_secs(15)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_with_a_token_refuses_requests_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = Ports::new(0);
    // allow_remote with a token, still bound on loopback: the token path.
    let text = root_toml(&p, &d.join("root")).replace(
        "[diagnostics]\n",
        "[diagnostics]\nallow_remote = true\ntoken = \"s3cret-token\"\n",
    );
    let cfg = write(d, "root.toml", &text);
    let mut root = Proc::start(
        "root",
        &["run", "--config", cfg.to_str().unwrap()],
        &d.join("root.log"),
    );
    root.wait_line("running", Duration::from_secs(20));
    for path in ["/healthz", "/readyz", "/metrics", "/control/status", "/"] {
        let (code, _) = client(p.root_ctl).get_any(path).await.unwrap();
        assert_eq!(code, 401, "{path} without a token");
        let wrong = interlocking::control::client::Client::new(
            &format!("127.0.0.1:{}", p.root_ctl),
            Some("s3cret-tokem".into()),
            Duration::from_secs(5),
        );
        assert_eq!(
            wrong.get_any(path).await.unwrap().0,
            401,
            "{path} wrong token"
        );
    }
    let right = interlocking::control::client::Client::new(
        &format!("127.0.0.1:{}", p.root_ctl),
        Some("s3cret-token".into()),
        Duration::from_secs(5),
    );
    assert_eq!(right.get_any("/readyz").await.unwrap().0, 200);
    // ctl reads the token from the config file.
    let out = run(&["ctl", "--config", cfg.to_str().unwrap(), "readiness"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "ctl",
        "--addr",
        &format!("127.0.0.1:{}", p.root_ctl),
        "status",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    root.terminate();
    assert_eq!(root.wait_exit(Duration::from_secs(15)), Some(0));
}

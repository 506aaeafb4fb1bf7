//! `interlocking up` on the hub–root–member topology: separate processes,
//! a failover shown by `ctl routes` when member-1's direct path is cut
//! (its fault-injecting QUIC socket, steered through the control API), the
//! failover on the dashboard in headless Chromium (screenshot saved under
//! `target/test-artifacts/`), and a clean stop of every node on SIGTERM.

mod ops;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ops::{Ports, Proc, artifacts, client, eventually, run, write};
use serde_json::{Value, json};

fn topology(p: &Ports, state: &Path) -> String {
    let root = format!(
        "{{ id = \"root\", addr = \"127.0.0.1:{}\", join = \"127.0.0.1:{}\" }}",
        p.root_quic, p.root_join
    );
    let fast = "{ probe_interval = \"100ms\", probe_timeout = \"300ms\" }";
    let mut s = format!(
        r#"[topology]
state_dir = "{state}"

[nodes.root]
node = {{ id = "root", role = "root", state_dir = "root" }}
listen = {{ quic = "127.0.0.1:{rq}", join = "127.0.0.1:{rj}" }}
transports = {fast}
diagnostics = {{ listen = "127.0.0.1:{rc}" }}

[nodes.hub]
node = {{ id = "hub", role = "hub", state_dir = "hub" }}
listen = {{ quic = "127.0.0.1:{hq}" }}
root = {root}
transports = {fast}
channels = [
  {{ stream = "command:member-1/hub", handler = "kv" }},
  {{ stream = "command:member-2/hub", handler = "echo" }},
]
diagnostics = {{ listen = "127.0.0.1:{hc}" }}
"#,
        state = state.display(),
        rq = p.root_quic,
        rj = p.root_join,
        rc = p.root_ctl,
        hq = p.hub_quic,
        hc = p.hub_ctl,
    );
    for i in 1..=2 {
        s.push_str(&format!(
            r#"
[nodes.member-{i}]
node = {{ id = "member-{i}", role = "member", state_dir = "member-{i}" }}
root = {root}
transports = {fast}
peers = [{{ id = "hub", quic = "127.0.0.1:{hq}" }}]
channels = [{{ stream = "command:member-{i}/hub", target = "hub" }}]
routing = {{ command = {{ freeze = "2s", hold_down = "1s", flap_cap = "8s" }} }}
diagnostics = {{ listen = "127.0.0.1:{c}", fault_injection = true }}
"#,
            hq = p.hub_quic,
            c = p.member_ctl[i - 1],
        ));
    }
    s
}

/// Headless Chromium with a fresh profile; fails with how to get it.
fn chromium(profile: &Path, args: &[&str]) -> std::process::Output {
    let bin = "/usr/bin/chromium";
    assert!(
        Path::new(bin).exists(),
        "{bin} not found: install Debian's chromium (apt-get install -y chromium, or run scripts/test as root)"
    );
    Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
            "--timeout=20000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run chromium")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_shows_a_failover_in_routes_and_on_the_dashboard_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = Ports::new(2);
    let file = write(d, "topology.toml", &topology(&p, &d.join("state")));
    let mut up = Proc::start(
        "up",
        &["up", file.to_str().unwrap(), "--interval-ms", "200"],
        &d.join("up.log"),
    );
    for name in ["root", "hub", "member-1", "member-2"] {
        up.wait_line(&format!("{name:<10} started"), Duration::from_secs(20));
    }
    let m1 = client(p.member_ctl[0]);
    let stream = "command:member-1/hub";
    eventually(
        "member-1 on its direct path",
        Duration::from_secs(40),
        || async {
            let v = m1.get("/control/routes").await.ok()?;
            (v[0]["path"] == "quic@hub").then_some(())
        },
    )
    .await;
    // Commands flow through the processes.
    let v = m1
        .post(
            "/control/send",
            &json!({"stream": stream, "command": {"op": "put", "key": "x", "value": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(v["reply"]["existed"], false, "{v}");
    let m2 = client(p.member_ctl[1]);
    let echo = eventually("member-2's echo", Duration::from_secs(40), || async {
        m2.post(
            "/control/send",
            &json!({"stream": "command:member-2/hub", "command": {"hello": "hub"}}),
        )
        .await
        .ok()
    })
    .await;
    assert_eq!(echo["reply"], json!({"hello": "hub"}));

    // Cut member-1's direct path: its QUIC socket drops every datagram.
    let cut = Instant::now();
    m1.post("/control/faults", &json!({"blackhole": true}))
        .await
        .unwrap();
    let routes: Value = eventually(
        "a failover in ctl routes",
        Duration::from_secs(20),
        || async {
            let out = run(&[
                "ctl",
                "--addr",
                &format!("127.0.0.1:{}", p.member_ctl[0]),
                "--json",
                "routes",
            ]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v[0]["path"] == "relay@hub" && v[0]["failovers"].as_u64() >= Some(1)).then_some(v)
        },
    )
    .await;
    println!("failover shown by ctl routes after {:?}", cut.elapsed());
    assert_eq!(routes[0]["stream"], stream);
    // The human table says the same.
    let out = run(&[
        "ctl",
        "--addr",
        &format!("127.0.0.1:{}", p.member_ctl[0]),
        "routes",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("relay@hub"), "{table}");
    // Commands still flow, over the relay.
    let v = m1
        .post(
            "/control/send",
            &json!({"stream": stream, "command": {"op": "get", "key": "x"}}),
        )
        .await
        .unwrap();
    assert_eq!(v["reply"]["value"], 1, "{v}");
    // member-2 never failed over.
    let r2 = m2.get("/control/routes").await.unwrap();
    assert_eq!(r2[0]["path"], "quic@hub", "{r2}");
    assert_eq!(r2[0]["failovers"], 0, "{r2}");

    // The dashboard shows the failover: poll (bounded) until it does.
    let url = format!("http://127.0.0.1:{}/", p.member_ctl[0]);
    let started = Instant::now();
    let mut dom = String::new();
    for attempt in 1..=10 {
        let profile = tempfile::tempdir().unwrap();
        let out = chromium(profile.path(), &["--dump-dom", &url]);
        dom = String::from_utf8_lossy(&out.stdout).to_string();
        if dom.contains(&format!("data-failover=\"{stream}\"")) {
            println!(
                "dashboard showed the failover on attempt {attempt} after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "dashboard never showed the failover"
        );
    }
    assert!(
        dom.contains(&format!("data-failover=\"{stream}\"")),
        "{dom}"
    );
    assert!(dom.contains("relay@hub"), "{dom}");
    assert!(dom.contains("failover-marker"), "{dom}");
    let shot = artifacts().join("dashboard-failover.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let out = chromium(
        profile.path(),
        &[
            "--window-size=1100,800",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    assert!(
        shot.exists() && std::fs::metadata(&shot).unwrap().len() > 1000,
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Heal; SIGTERM to `up` stops every node cleanly (exit 0 each).
    m1.post("/control/faults", &json!({"blackhole": false}))
        .await
        .unwrap();
    up.terminate();
    assert_eq!(up.wait_exit(Duration::from_secs(60)), Some(0));
    for name in ["member-2", "member-1", "hub", "root"] {
        up.wait_line(&format!("{name:<10} stopped (0)"), Duration::from_secs(5));
    }
    for port in [p.root_ctl, p.hub_ctl, p.member_ctl[0], p.member_ctl[1]] {
        assert!(
            client(port).get_any("/healthz").await.is_err(),
            "port {port} still answers"
        );
    }
}

#[test]
fn example_topologies_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/topologies");
    let mut n = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = run(&["up", "--check", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
            n += 1;
        }
    }
    assert!(n >= 2, "expected at least two example topologies");
}

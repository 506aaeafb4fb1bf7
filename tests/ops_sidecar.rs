//! The sidecar as real processes: a root, a hub whose remote session is
//! owned by a sidecar (a child it supervises, or one attached), and a
//! member reaching the hub through the root only. Class-A commands keep
//! flowing while the sidecar is SIGKILLed ten times (each applied once,
//! none lost), and the hub process is SIGKILLed and restarted while an
//! attached sidecar keeps the root session (no disconnect at the root,
//! nothing lost or doubled). Every wait is bounded.

mod ops;

use std::path::Path;
use std::time::{Duration, Instant};

use interlocking::control::client::Client;
use ops::{Ports, Proc, client, eventually, hub_toml, member_toml, root_toml, run, token, write};
use serde_json::{Value, json};

/// The member reaches the hub through the root only.
fn relay_only_member(p: &Ports, state: &Path) -> String {
    member_toml(p, 1, state, false)
        .replacen("[transports]\n", "[transports]\nquic = false\n", 1)
        .replacen(&format!("quic = \"127.0.0.1:{}\"\n", p.hub_quic), "", 1)
}

fn sidecar_hub(p: &Ports, state: &Path, mode: &str) -> String {
    format!(
        "{}\n[sidecar]\nmode = \"{mode}\"\n",
        hub_toml(p, state, "kv")
    )
}

fn slow(port: u16) -> Client {
    Client::new(&format!("127.0.0.1:{port}"), None, Duration::from_secs(40))
}

fn kill9(pid: u64) {
    let ok = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -KILL {pid}");
}

async fn applied(hub_ctl: u16) -> f64 {
    let text = client(hub_ctl)
        .get_text("/metrics")
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("interlocking_commands_applied_total{stream=\"command:member-1/hub\"}")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Sends `put k<i> = i` for each i, one every `gap`, each in its own task;
/// returns when every send got its reply (class A: a send that times out
/// stays in the outbox and is resent, so it is retried here with the same
/// key only if the member refused it outright).
async fn send_all(
    member_ctl: u16,
    range: std::ops::Range<u32>,
    gap: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in range {
        tasks.push(tokio::spawn(async move {
            let body = json!({
                "stream": "command:member-1/hub",
                "command": {"op": "put", "key": format!("k{i}"), "value": i},
                "timeout_ms": 60_000,
            });
            let r = slow(member_ctl).post("/control/send", &body).await;
            assert!(r.is_ok(), "command {i}: {r:?}");
        }));
        tokio::time::sleep(gap).await;
    }
    tasks
}

async fn check_values(member_ctl: u16, n: u32) {
    for i in 0..n {
        let body = json!({
            "stream": "command:member-1/hub",
            "command": {"op": "get", "key": format!("k{i}")},
            "timeout_ms": 20_000,
        });
        let v: Value = slow(member_ctl).post("/control/send", &body).await.unwrap();
        assert_eq!(v["reply"]["value"], json!(i), "k{i}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_sigkilled_ten_times_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = Ports::new(1);
    let root_cfg = write(d, "root.toml", &root_toml(&p, &d.join("root")));
    let hub_cfg = write(d, "hub.toml", &sidecar_hub(&p, &d.join("hub"), "child"));
    let member_cfg = write(d, "member.toml", &relay_only_member(&p, &d.join("m1")));
    let mut root = Proc::start(
        "root",
        &["run", "--config", root_cfg.to_str().unwrap()],
        &d.join("root.log"),
    );
    root.wait_line("running", Duration::from_secs(20));
    let (ht, mt) = (
        token(&d.join("root"), "hub", "hub"),
        token(&d.join("root"), "member-1", "member"),
    );
    let mut hub = Proc::start(
        "hub",
        &["run", "--config", hub_cfg.to_str().unwrap(), "--token", &ht],
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
            &mt,
        ],
        &d.join("member.log"),
    );
    member.wait_line("running", Duration::from_secs(30));
    let (hub_ctl, member_ctl) = (p.hub_ctl, p.member_ctl[0]);

    // One command through member → root → sidecar → hub first.
    check_values(member_ctl, 0).await;
    let body = json!({"stream": "command:member-1/hub", "command": {"op": "put", "key": "warm", "value": 1}, "timeout_ms": 30_000});
    slow(member_ctl)
        .post("/control/send", &body)
        .await
        .expect("first command");
    const N: u32 = 60;
    let senders = tokio::spawn(send_all(member_ctl, 0..N, Duration::from_millis(60)));
    let (mut back, mut up) = (Vec::new(), Vec::new());
    for k in 0..10 {
        let v = client(hub_ctl).get("/control/sidecar").await.unwrap();
        let pid = v["child"]["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no child pid: {v}"));
        let killed = Instant::now();
        kill9(pid);
        // Back: a new child, its remote session up, the hub's path on it.
        eventually(
            &format!("sidecar back after kill {k}"),
            Duration::from_secs(30),
            || async {
                let v = client(hub_ctl).get("/control/sidecar").await.ok()?;
                let new_pid = v["child"]["pid"].as_u64()?;
                let st = &v["status"];
                (new_pid != pid && st["pid"].as_u64() == Some(new_pid) && st["remote_up"] == true)
                    .then_some(())
            },
        )
        .await;
        up.push(killed.elapsed());
        // A command answered through the new sidecar: back on the way
        // through the root.
        let body = json!({"stream": "command:member-1/hub", "command": {"op": "put", "key": format!("probe{k}"), "value": k}, "timeout_ms": 30_000});
        slow(member_ctl)
            .post("/control/send", &body)
            .await
            .expect("answered after the kill");
        back.push(killed.elapsed());
    }
    for t in senders.await.unwrap() {
        t.await.unwrap();
    }
    // Every accepted command applied exactly once (the warm-up included).
    eventually("all applied", Duration::from_secs(30), || async {
        (applied(hub_ctl).await >= f64::from(N + 11)).then_some(())
    })
    .await;
    assert_eq!(
        applied(hub_ctl).await,
        f64::from(N + 11),
        "a command applied twice"
    );
    check_values(member_ctl, N).await;
    let v = client(hub_ctl).get("/control/sidecar").await.unwrap();
    assert!(v["child"]["starts"].as_u64() >= Some(11), "{v}");
    assert_eq!(v["child"]["escalated"], false);
    // The same through `ctl`.
    let out = run(&["ctl", "--config", hub_cfg.to_str().unwrap(), "sidecar"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("remote up"), "{text}");
    assert!(text.contains("escalated false"), "{text}");
    back.sort();
    up.sort();
    eprintln!(
        "figure: new sidecar's remote session up after SIGKILL: median {:?} (min {:?}, max {:?}, n={})",
        up[up.len() / 2],
        up[0],
        up[up.len() - 1],
        up.len()
    );
    eprintln!(
        "figure: hub back on the sidecar path after SIGKILL: median {:?} (min {:?}, max {:?}, n={})",
        back[back.len() / 2],
        back[0],
        back[back.len() - 1],
        back.len()
    );
    member.terminate();
    hub.terminate();
    let _ = hub.wait_exit(Duration::from_secs(15));
    drop(root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restarts_while_an_attached_sidecar_keeps_the_root_session() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = Ports::new(1);
    let root_cfg = write(d, "root.toml", &root_toml(&p, &d.join("root")));
    let hub_cfg = write(d, "hub.toml", &sidecar_hub(&p, &d.join("hub"), "attach"));
    let member_cfg = write(d, "member.toml", &relay_only_member(&p, &d.join("m1")));
    let mut root = Proc::start(
        "root",
        &["run", "--config", root_cfg.to_str().unwrap()],
        &d.join("root.log"),
    );
    root.wait_line("running", Duration::from_secs(20));
    let (ht, mt) = (
        token(&d.join("root"), "hub", "hub"),
        token(&d.join("root"), "member-1", "member"),
    );
    // The hub joins first (the sidecar uses its stored identity).
    let hub_args = ["run", "--config", hub_cfg.to_str().unwrap(), "--token", &ht];
    let mut hub = Proc::start("hub", &hub_args, &d.join("hub.log"));
    hub.wait_line("running", Duration::from_secs(30));
    let mut sidecar = Proc::start(
        "sidecar",
        &["sidecar", "--config", hub_cfg.to_str().unwrap()],
        &d.join("sidecar.log"),
    );
    sidecar.wait_line("sidecar running", Duration::from_secs(20));
    let mut member = Proc::start(
        "member",
        &[
            "run",
            "--config",
            member_cfg.to_str().unwrap(),
            "--token",
            &mt,
        ],
        &d.join("member.log"),
    );
    member.wait_line("running", Duration::from_secs(30));
    let (hub_ctl, member_ctl) = (p.hub_ctl, p.member_ctl[0]);
    let status = || interlocking::transports::sidecar::SidecarStatus::read(&d.join("hub/sidecar"));

    const N: u32 = 30;
    let first = send_all(member_ctl, 0..N / 2, Duration::from_millis(30)).await;
    for t in first {
        t.await.unwrap();
    }
    let before = status().expect("status");
    assert!(before.remote_up);

    // SIGKILL the hub mid-traffic and start a new hub process.
    let senders = tokio::spawn(send_all(member_ctl, N / 2..N, Duration::from_millis(40)));
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(hub); // SIGKILL
    let mut hub = Proc::start("hub-2", &hub_args[..3], &d.join("hub2.log"));
    hub.wait_line("running", Duration::from_secs(30));
    for t in senders.await.unwrap() {
        t.await.unwrap();
    }
    // Nothing doubled: the new hub applied only what the old one had not
    // (its counter plus the old one's applied values equal N; the dedupe
    // records in redb answer the rest).
    let applied_new = applied(hub_ctl).await;
    assert!(applied_new <= f64::from(N), "{applied_new}");
    // The kv table is durable; the applied counter restarted with the
    // process, so the values themselves are checked.
    check_values(member_ctl, N).await;
    let after = status().expect("status");
    // The same sidecar process held the root session throughout.
    assert_eq!(after.pid, before.pid);
    assert_eq!(
        after.reconnects, 0,
        "the root session never dropped: {after:?}"
    );
    assert!(after.remote_up);
    member.terminate();
    hub.terminate();
    let _ = hub.wait_exit(Duration::from_secs(15));
    sidecar.terminate();
    drop(root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_sidecar_presents_the_hubs_renewed_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = Ports::new(1);
    // Six-second certificates: the hub renews every ~4 s.
    let root_text = format!(
        "{}\n[root]\ncert_lifetime = \"6s\"\n",
        root_toml(&p, &d.join("root"))
    );
    let root_cfg = write(d, "root.toml", &root_text);
    let hub_cfg = write(d, "hub.toml", &sidecar_hub(&p, &d.join("hub"), "attach"));
    let member_cfg = write(d, "member.toml", &relay_only_member(&p, &d.join("m1")));
    let root_args = ["run", "--config", root_cfg.to_str().unwrap()];
    let mut root = Proc::start("root", &root_args, &d.join("root.log"));
    root.wait_line("running", Duration::from_secs(20));
    let (ht, mt) = (
        token(&d.join("root"), "hub", "hub"),
        token(&d.join("root"), "member-1", "member"),
    );
    let hub_args = ["run", "--config", hub_cfg.to_str().unwrap(), "--token", &ht];
    let mut hub = Proc::start("hub", &hub_args, &d.join("hub.log"));
    hub.wait_line("running", Duration::from_secs(30));
    let mut sidecar = Proc::start(
        "sidecar",
        &["sidecar", "--config", hub_cfg.to_str().unwrap()],
        &d.join("sidecar.log"),
    );
    sidecar.wait_line("sidecar running", Duration::from_secs(20));
    let mut member = Proc::start(
        "member",
        &[
            "run",
            "--config",
            member_cfg.to_str().unwrap(),
            "--token",
            &mt,
        ],
        &d.join("member.log"),
    );
    member.wait_line("running", Duration::from_secs(30));
    let member_ctl = p.member_ctl[0];
    let status = || interlocking::transports::sidecar::SidecarStatus::read(&d.join("hub/sidecar"));
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let first = eventually(
        "the sidecar shows the hub's expiry",
        Duration::from_secs(10),
        || async { status()?.cert_expires_ms },
    )
    .await;
    eventually(
        "the sidecar follows the hub's renewal",
        Duration::from_secs(20),
        || async { (status()?.cert_expires_ms? > first).then_some(()) },
    )
    .await;
    eventually(
        "the first certificate has expired",
        Duration::from_secs(20),
        || async { (now_ms() > first + 500).then_some(()) },
    )
    .await;
    // The root is killed and restarted: the sidecar's new connection must
    // present a certificate that is valid now, the renewed one.
    let reconnects = status().expect("status").reconnects;
    drop(root);
    let root = Proc::start("root-2", &root_args, &d.join("root2.log"));
    let mut root = root;
    root.wait_line("running", Duration::from_secs(20));
    eventually(
        "the sidecar's root session is back",
        Duration::from_secs(30),
        || async {
            let s = status()?;
            (s.remote_up && s.reconnects > reconnects).then_some(())
        },
    )
    .await;
    for t in send_all(member_ctl, 0..3, Duration::from_millis(10)).await {
        t.await.unwrap();
    }
    check_values(member_ctl, 3).await;
    let s = status().expect("status");
    assert_eq!(s.pid, sidecar.child.id(), "the same sidecar process");
    member.terminate();
    hub.terminate();
    let _ = hub.wait_exit(Duration::from_secs(15));
    sidecar.terminate();
    drop(root);
}

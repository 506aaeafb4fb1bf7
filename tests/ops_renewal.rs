//! Certificates over time through the real binary (`docs/root.md` §2.3):
//! a root started by `interlocking run` with `[root] cert_lifetime = "6s"`
//! issues six-second certificates; the hub and the member renew theirs
//! (at two thirds of the lifetime) while their stream keeps working, a
//! command answers after the first certificates have expired, and a hub
//! killed with SIGKILL after that expiry comes back on its renewed identity
//! (read from its state directory) and is served again: a node that kept
//! its first certificate could not connect any more.

mod ops;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ops::{Ports, Proc, client, eventually, hub_toml, member_toml, root_toml, run, token, write};
use serde_json::Value;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `kv` put then get through `ctl send` on the member; the value read.
fn put_get(member_cfg: &str, stream: &str, value: &str) -> String {
    let put = format!(r#"{{"op":"put","key":"k","value":"{value}"}}"#);
    let out = run(&["ctl", "--config", member_cfg, "send", stream, &put]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "ctl",
        "--config",
        member_cfg,
        "--json",
        "send",
        stream,
        r#"{"op":"get","key":"k"}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    reply["reply"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_renew_short_certificates_and_keep_working_past_their_first_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = Ports::new(1);
    let root_text = format!(
        "{}\n[root]\ncert_lifetime = \"6s\"\n",
        root_toml(&p, &d.join("root"))
    );
    let root_cfg = write(d, "root.toml", &root_text);
    let hub_cfg = write(d, "hub.toml", &hub_toml(&p, &d.join("hub"), "kv"));
    let member_cfg = write(d, "member.toml", &member_toml(&p, 1, &d.join("m1"), false));
    let member_cfg = member_cfg.to_str().unwrap();
    let mut root = Proc::start(
        "root",
        &["run", "--config", root_cfg.to_str().unwrap()],
        &d.join("root.log"),
    );
    root.wait_line("running", Duration::from_secs(20));
    let (hub_token, member_token) = (
        token(&d.join("root"), "hub", "hub"),
        token(&d.join("root"), "member-1", "member"),
    );
    let hub_args = ["run", "--config", hub_cfg.to_str().unwrap()];
    let mut hub = Proc::start(
        "hub",
        &[&hub_args[..], &["--token", &hub_token]].concat(),
        &d.join("hub.log"),
    );
    hub.wait_line("running", Duration::from_secs(30));
    let mut member = Proc::start(
        "member",
        &["run", "--config", member_cfg, "--token", &member_token],
        &d.join("member.log"),
    );
    member.wait_line("running", Duration::from_secs(30));

    let (m, h) = (client(p.member_ctl[0]), client(p.hub_ctl));
    let expiry = |v: &Value| v["cert_expires_ms"].as_u64();
    let first_member = expiry(&m.get("/control/status").await.unwrap()).expect("member expiry");
    let first_hub = expiry(&h.get("/control/status").await.unwrap()).expect("hub expiry");
    assert!(
        first_member <= now_ms() + 6_500,
        "the root's cert_lifetime reached the certificate: expires {first_member}, now {}",
        now_ms()
    );
    let stream = "command:member-1/hub";
    assert_eq!(put_get(member_cfg, stream, "before"), "before");

    // Both renew before their first certificate expires.
    for (who, c, first) in [("member", &m, first_member), ("hub", &h, first_hub)] {
        eventually(
            &format!("the {who} renews its certificate"),
            Duration::from_secs(20),
            || async {
                let v = c.get("/control/status").await.ok()?;
                (expiry(&v)? > first).then_some(())
            },
        )
        .await;
    }
    // Past the first certificates' expiry, the stream still answers.
    let first = first_member.max(first_hub);
    eventually(
        "the first certificates have expired",
        Duration::from_secs(20),
        || async { (now_ms() > first + 500).then_some(()) },
    )
    .await;
    assert_eq!(put_get(member_cfg, stream, "after"), "after");

    // The hub killed and restarted without a token: it comes back on the
    // renewed identity of its state directory, and the member is served.
    let _ = hub.child.kill();
    let _ = hub.child.wait();
    let mut hub = Proc::start("hub-again", &hub_args, &d.join("hub-again.log"));
    hub.wait_line("running", Duration::from_secs(30));
    eventually(
        "the member's stream answers the restarted hub",
        Duration::from_secs(30),
        || async {
            let v = m.get(&format!("/control/streams/{stream}")).await.ok()?;
            (v["path"] == "quic@hub").then_some(())
        },
    )
    .await;
    assert_eq!(put_get(member_cfg, stream, "restarted"), "restarted");
    let renewals = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("interlocking_certificate_renewals_total"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    // Renewed, and on schedule (every ~4 s), not in a storm.
    let n = renewals(&m.get_text("/metrics").await.unwrap());
    assert!((1.0..=6.0).contains(&n), "member renewals: {n}");
    drop(member);
}

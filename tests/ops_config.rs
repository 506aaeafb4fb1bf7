//! `interlocking run --config` refuses bad configuration files: it exits
//! with code 2 and a message naming the file, the line and the key.

mod ops;

use std::path::Path;

use ops::{run, write};

const GOOD: &str = r#"[node]
id = "root"
role = "root"
state_dir = "STATE"

[listen]
quic = "127.0.0.1:0"
join = "127.0.0.1:0"
"#;

/// Runs the binary on `text` written to `dir/node.toml`; (code, stderr).
fn refuse(dir: &Path, text: &str) -> (Option<i32>, String, String) {
    let state = dir.join("state");
    let path = write(
        dir,
        "node.toml",
        &text.replace("STATE", &state.display().to_string()),
    );
    let out = run(&["run", "--config", path.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        path.display().to_string(),
    )
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{GOOD}\n[diagnostics]\nlisten = \"127.0.0.1:0\"\nlisen = 3\n");
    let (code, err, file) = refuse(dir.path(), &text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{file}:12:")), "{err}");
    assert!(err.contains("diagnostics.lisen"), "{err}");
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn wrong_type_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace("id = \"root\"", "id = 7");
    let (code, err, file) = refuse(dir.path(), &text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{file}:2:")), "{err}");
    assert!(err.contains("node.id"), "{err}");
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let out = run(&["run", "--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn bad_address_names_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace("quic = \"127.0.0.1:0\"", "quic = \"localhost\"");
    let (code, err, file) = refuse(dir.path(), &text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{file}:7:")), "{err}");
    assert!(err.contains("listen.quic"), "{err}");
    assert!(err.contains("not a socket address"), "{err}");
}

#[test]
fn unusable_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the state directory should be: it can be neither
    // read as a directory nor created (a test running as root passes any
    // permission bits, so modes cannot make a directory unreadable here).
    let blocker = dir.path().join("state");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let (code, err, file) = refuse(dir.path(), GOOD);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{file}:4:")), "{err}");
    assert!(err.contains("node.state_dir"), "{err}");
    assert!(err.contains("not a directory"), "{err}");

    let text = GOOD.replace("STATE", &blocker.join("below").display().to_string());
    let (code, err, _) = refuse(dir.path(), &text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("node.state_dir: cannot create"), "{err}");
}

#[test]
fn control_api_off_loopback_needs_allow_remote_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{GOOD}\n[diagnostics]\nlisten = \"0.0.0.0:0\"\n");
    let (code, err, _) = refuse(dir.path(), &text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("diagnostics.listen"), "{err}");
    assert!(err.contains("allow_remote"), "{err}");

    let text = format!("{GOOD}\n[diagnostics]\nlisten = \"0.0.0.0:0\"\nallow_remote = true\n");
    let (code, err, _) = refuse(dir.path(), &text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("diagnostics.allow_remote"), "{err}");
    assert!(err.contains("token"), "{err}");
}

#[test]
fn unknown_handler_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[node]
id = "hub"
role = "hub"
state_dir = "STATE"

[root]
addr = "127.0.0.1:9"
join = "127.0.0.1:9"

[[channels]]
stream = "command:m/hub"
handler = "frobnicate"
"#;
    let (code, err, file) = refuse(dir.path(), text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{file}:12:")), "{err}");
    assert!(err.contains("channels[0].handler"), "{err}");
    assert!(
        err.contains("unknown handler \"frobnicate\" (known: echo, kv)"),
        "{err}"
    );
}

#[test]
fn a_member_without_a_root_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[node]\nid = \"m\"\nrole = \"member\"\nstate_dir = \"STATE\"\n";
    let (code, err, _) = refuse(dir.path(), text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("root: a member needs a [root] table"), "{err}");
}

#[test]
fn a_first_start_without_a_token_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[node]
id = "hub"
role = "hub"
state_dir = "STATE"

[root]
addr = "127.0.0.1:9"
join = "127.0.0.1:9"
"#;
    let (code, err, _) = refuse(dir.path(), text);
    assert_eq!(code, Some(1), "a start failure, not a config error: {err}");
    assert!(err.contains("no join token"), "{err}");
    assert!(err.contains("interlocking token --state-dir"), "{err}");
}

#[test]
fn a_pinned_ca_fingerprint_refuses_a_token_of_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let root_state = dir.path().join("root");
    let out = run(&[
        "token",
        "--state-dir",
        root_state.to_str().unwrap(),
        "--node",
        "hub",
        "--role",
        "hub",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let text = format!(
        "[node]\nid = \"hub\"\nrole = \"hub\"\nstate_dir = \"STATE\"\n\n[root]\naddr = \"127.0.0.1:9\"\njoin = \"127.0.0.1:9\"\nca_fingerprint = \"{}\"\njoin_token = \"{token}\"\n",
        "ab".repeat(32)
    );
    let (code, err, _) = refuse(dir.path(), &text);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("another CA than root.ca_fingerprint"), "{err}");

    let bad = text.replace(&"ab".repeat(32), "xyz");
    let (code, err, _) = refuse(dir.path(), &bad);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("root.ca_fingerprint: not a SHA-256 fingerprint"),
        "{err}"
    );
}

#[test]
fn a_control_port_in_use_fails_the_start_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = format!("{GOOD}\n[diagnostics]\nlisten = \"127.0.0.1:{port}\"\n");
    let (code, err, _) = refuse(dir.path(), &text);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("control API on 127.0.0.1:{port}")),
        "{err}"
    );
    drop(taken);
}

#[test]
fn sigterm_while_waiting_for_the_root_is_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let root_state = dir.path().join("root");
    let out = run(&[
        "token",
        "--state-dir",
        root_state.to_str().unwrap(),
        "--node",
        "hub",
        "--role",
        "hub",
    ]);
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // No root listens there: the join retries until stopped.
    let port = ops::udp_port();
    let text = format!(
        "[node]\nid = \"hub\"\nrole = \"hub\"\nstate_dir = \"{}\"\n\n[root]\naddr = \"127.0.0.1:{port}\"\njoin = \"127.0.0.1:{port}\"\njoin_token = \"{token}\"\n",
        dir.path().join("hub").display()
    );
    let cfg = write(dir.path(), "hub.toml", &text);
    let log = dir.path().join("hub.log");
    let mut hub = ops::Proc::start("hub", &["run", "--config", cfg.to_str().unwrap()], &log);
    // Wait (bounded) until it is retrying the join, then stop it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("retrying the join")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "never retried the join"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    hub.terminate();
    assert_eq!(hub.wait_exit(std::time::Duration::from_secs(10)), Some(0));
    hub.wait_line(
        "stopped before it had started (SIGTERM)",
        std::time::Duration::from_secs(2),
    );
}

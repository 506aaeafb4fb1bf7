//! Helpers of the `ops_*` tests: the real `interlocking` binary as child
//! processes, free loopback ports, node configuration files, and bounded
//! waits on the control API.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use interlocking::control::client::Client;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_interlocking")
}

/// A loopback UDP port free right now.
pub fn udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind a UDP port")
}

/// A loopback TCP port free right now.
pub fn tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind a TCP port")
}

/// A child process killed (SIGKILL) when dropped, with its stdout lines.
pub struct Proc {
    pub name: String,
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    /// Starts `interlocking ARGS…`, stderr to `log`.
    pub fn start(name: &str, args: &[&str], log: &Path) -> Self {
        let err = std::fs::File::create(log).expect("log file");
        let mut child = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .env("RUST_LOG", "info")
            .spawn()
            .expect("start the binary");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Self {
            name: name.to_string(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a stdout line containing `needle`.
    pub fn wait_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "{}: no line with {needle:?} within {within:?}; saw {:?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// Waits (bounded) for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not exit within {within:?}", self.name);
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM {}", self.child.id());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `interlocking ARGS…` to completion (bounded by the command's own
/// timeouts).
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the binary")
}

/// Ports of a root, a hub and members, and their control APIs.
pub struct Ports {
    pub root_quic: u16,
    pub root_join: u16,
    pub root_ctl: u16,
    pub hub_quic: u16,
    pub hub_ctl: u16,
    pub member_ctl: Vec<u16>,
}

impl Ports {
    pub fn new(members: usize) -> Self {
        Self {
            root_quic: udp_port(),
            root_join: udp_port(),
            root_ctl: tcp_port(),
            hub_quic: udp_port(),
            hub_ctl: tcp_port(),
            member_ctl: (0..members).map(|_| tcp_port()).collect(),
        }
    }
}

/// `[node]`, `[listen]`, `[diagnostics]` of the root.
pub fn root_toml(p: &Ports, state: &Path) -> String {
    format!(
        r#"[node]
id = "root"
role = "root"
state_dir = "{state}"

[listen]
quic = "127.0.0.1:{q}"
join = "127.0.0.1:{j}"

[transports]
probe_interval = "100ms"
probe_timeout = "300ms"

[diagnostics]
listen = "127.0.0.1:{c}"
"#,
        state = state.display(),
        q = p.root_quic,
        j = p.root_join,
        c = p.root_ctl
    )
}

fn root_table(p: &Ports) -> String {
    format!(
        "[root]\nid = \"root\"\naddr = \"127.0.0.1:{}\"\njoin = \"127.0.0.1:{}\"\n",
        p.root_quic, p.root_join
    )
}

const FAST: &str = r#"[transports]
probe_interval = "100ms"
probe_timeout = "300ms"
"#;

/// The hub, serving `command:member-N/hub` for each member with `handler`.
pub fn hub_toml(p: &Ports, state: &Path, handler: &str) -> String {
    let mut s = format!(
        "[node]\nid = \"hub\"\nrole = \"hub\"\nstate_dir = \"{}\"\n\n[listen]\nquic = \"127.0.0.1:{}\"\n\n{}\n{FAST}\n",
        state.display(),
        p.hub_quic,
        root_table(p)
    );
    for i in 1..=p.member_ctl.len() {
        s.push_str(&format!(
            "[[channels]]\nstream = \"command:member-{i}/hub\"\nhandler = \"{handler}\"\n\n"
        ));
    }
    s.push_str(&format!(
        "[diagnostics]\nlisten = \"127.0.0.1:{}\"\n",
        p.hub_ctl
    ));
    s
}

/// Member `i` (1-based), sending to the hub, with a quick command policy
/// and optional fault injection.
pub fn member_toml(p: &Ports, i: usize, state: &Path, faults: bool) -> String {
    format!(
        r#"[node]
id = "member-{i}"
role = "member"
state_dir = "{state}"

{root}
{FAST}
[[peers]]
id = "hub"
quic = "127.0.0.1:{hq}"

[[channels]]
stream = "command:member-{i}/hub"
target = "hub"

[routing.command]
freeze = "2s"
hold_down = "1s"
flap_cap = "8s"

[diagnostics]
listen = "127.0.0.1:{c}"
fault_injection = {faults}
"#,
        state = state.display(),
        root = root_table(p),
        hq = p.hub_quic,
        c = p.member_ctl[i - 1],
    )
}

/// A join token for `node` as `role`, issued by `interlocking token` from
/// the root's state directory `root_state` (the root may be running).
pub fn token(root_state: &Path, node: &str, role: &str) -> String {
    let out = run(&[
        "token",
        "--state-dir",
        root_state.to_str().unwrap(),
        "--node",
        node,
        "--role",
        role,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// A control client of `127.0.0.1:port`.
pub fn client(port: u16) -> Client {
    Client::new(&format!("127.0.0.1:{port}"), None, Duration::from_secs(5))
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where tests leave artifacts (screenshots): `target/test-artifacts/`.
pub fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

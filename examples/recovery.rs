//! Recovery figures over real processes, under the library's default
//! routing, probe and QUIC settings (issue #21): a root and a hub each run
//! as their own process (this example re-executing itself as a node,
//! through the same [`App`] entry point as `interlocking run`); a member in
//! this process sends class-A commands to the hub's durable `kv` handler at
//! a fixed rate. The hub (or, with `--kill root`, the root) is killed with
//! SIGKILL and restarted on its state dir `--kills` times. With
//! `--relay-only` the member knows no direct address of the hub, so its
//! stream runs on the relay through the root.
//!
//! ```text
//! cargo run --release --example recovery -- [--kills 20] [--rate 50] [--down-ms 300]
//!     [--kill hub|root] [--relay-only] [--json]
//! ```
//!
//! `RUST_LOG` filters the member's log (stderr), `NODE_LOG` the root's and
//! the hub's (files in the state directory, kept with `RECOVERY_KEEP=1`).
//!
//! Printed: reply latency p50/p99/max before the kills and during them (the
//! same run), and per kill the time from the restarted hub printing
//! "running" to the first reply that reaches the member after it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use interlocking::app::App;
use interlocking::channels::SendOptions;
use interlocking::config::Config;
use interlocking::root::{AdmissionBook, open_ca};
use interlocking::vocab::{NodeId, Role, StreamId};
use serde_json::json;

struct Args {
    kills: usize,
    kill_root: bool,
    relay_only: bool,
    rate: u64,
    down: Duration,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        kills: 20,
        kill_root: false,
        relay_only: false,
        rate: 50,
        down: Duration::from_millis(300),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = || -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} takes a number"))
        };
        match k.as_str() {
            "--kills" => a.kills = num() as usize,
            "--rate" => a.rate = num().max(1),
            "--down-ms" => a.down = Duration::from_millis(num()),
            "--json" => a.json = true,
            "--relay-only" => a.relay_only = true,
            "--kill" => {
                a.kill_root = match it.next().as_deref() {
                    Some("root") => true,
                    Some("hub") => false,
                    other => panic!("--kill takes hub or root, not {other:?}"),
                }
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn free_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// A node process (this example as `node CONFIG [TOKEN]`), killed when dropped.
struct NodeProc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl NodeProc {
    fn start(config: &Path, token: Option<&str>, log: &Path) -> Self {
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.arg("node").arg(config);
        if let Some(t) = token {
            cmd.arg(t);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .expect("log file"),
            )
            .env(
                "RUST_LOG",
                std::env::var("NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .expect("start a node process");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits (at most 30 s) for the node's "running" line; when it came.
    fn running(&self) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains("running") => return Instant::now(),
                Ok(_) => {}
                Err(_) => panic!("a node did not start within 30 s (see its log)"),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The child side: run one node from its configuration until killed.
async fn node_main(config: PathBuf, token: Option<String>) {
    let app = App::load(&config)
        .unwrap_or_else(|e| panic!("{e}"))
        .builtin_handlers()
        .join_token(token);
    let running = app.start().await.unwrap_or_else(|e| panic!("{e}"));
    println!("running");
    running.wait(true).await;
}

fn token(root_state: &Path, node: &str, role: Role) -> String {
    let ca = open_ca(root_state).expect("the root's CA");
    let book = AdmissionBook::open(root_state).expect("the root's admission book");
    book.issue(
        ca.fingerprint(),
        &NodeId::new(node),
        role,
        Duration::from_secs(600),
        SystemTime::now(),
        &[],
    )
    .expect("a join token")
    .to_string()
}

/// p50, p99 and max of `v` in milliseconds.
fn summary(v: &mut [Duration]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99), at(1.0))
}

/// Replies seen by the member: (sent at, replied at).
type Log = Arc<Mutex<Vec<(Instant, Instant)>>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Logs (stderr), filtered by RUST_LOG (default: warnings).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("node") {
        let config = PathBuf::from(argv.next().expect("node CONFIG"));
        return node_main(config, argv.next()).await;
    }
    let a = args();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    if std::env::var_os("RECOVERY_KEEP").is_some() {
        eprintln!("state and logs kept in {}", d.display());
    }
    let (rq, rj, hq) = (free_udp(), free_udp(), free_udp());
    let root_table =
        format!("[root]\nid = \"root\"\naddr = \"127.0.0.1:{rq}\"\njoin = \"127.0.0.1:{rj}\"\n");
    // Library defaults: no [transports] or [routing] overrides anywhere.
    let root_cfg = d.join("root.toml");
    std::fs::write(
        &root_cfg,
        format!(
            "[node]\nid = \"root\"\nrole = \"root\"\nstate_dir = \"{}\"\n\n[listen]\nquic = \"127.0.0.1:{rq}\"\njoin = \"127.0.0.1:{rj}\"\n",
            d.join("root").display()
        ),
    )
    .unwrap();
    let hub_cfg = d.join("hub.toml");
    std::fs::write(
        &hub_cfg,
        format!(
            "[node]\nid = \"hub\"\nrole = \"hub\"\nstate_dir = \"{}\"\n\n[listen]\nquic = \"127.0.0.1:{hq}\"\n\n{root_table}\n[[channels]]\nstream = \"command:member-1/hub\"\nhandler = \"kv\"\n",
            d.join("hub").display()
        ),
    )
    .unwrap();
    let member_cfg = d.join("member.toml");
    std::fs::write(
        &member_cfg,
        format!(
            "[node]\nid = \"member-1\"\nrole = \"member\"\nstate_dir = \"{}\"\n\n{root_table}\n{peers}[[channels]]\nstream = \"command:member-1/hub\"\ntarget = \"hub\"\n",
            d.join("member").display(),
            peers = if a.relay_only {
                "[[peers]]\nid = \"hub\"\n\n".to_string()
            } else {
                format!("[[peers]]\nid = \"hub\"\nquic = \"127.0.0.1:{hq}\"\n\n")
            }
        ),
    )
    .unwrap();

    let mut root = NodeProc::start(&root_cfg, None, &d.join("root.log"));
    root.running();
    let hub_token = token(&d.join("root"), "hub", Role::Hub);
    let member_token = token(&d.join("root"), "member-1", Role::Member);
    let mut hub = NodeProc::start(&hub_cfg, Some(&hub_token), &d.join("hub.log"));
    hub.running();
    let member = App::new(Config::load(&member_cfg).expect("member config"))
        .join_token(Some(member_token))
        .start()
        .await
        .expect("the member starts");
    let rt = member.runtime().clone();
    let stream = StreamId::new("command:member-1/hub");

    // The load: one class-A `put` every 1/rate s, each waiting for its reply.
    let log: Log = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (rt, log, stop, stream) = (rt.clone(), log.clone(), stop.clone(), stream.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / a.rate));
            let mut k = 0u64;
            let mut tasks = tokio::task::JoinSet::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                tick.tick().await;
                k += 1;
                let (rt, log, stream) = (rt.clone(), log.clone(), stream.clone());
                tasks.spawn(async move {
                    let sent = Instant::now();
                    let cmd = json!({"op": "put", "key": format!("k{}", k % 64), "value": k});
                    let r = rt
                        .send(
                            &stream,
                            cmd,
                            SendOptions::class_a(),
                            Duration::from_secs(60),
                        )
                        .await;
                    if r.is_ok() {
                        log.lock().unwrap().push((sent, Instant::now()));
                    }
                });
            }
            let until = tokio::time::Instant::now() + Duration::from_secs(60);
            while tokio::time::timeout_at(until, tasks.join_next())
                .await
                .ok()
                .flatten()
                .is_some()
            {}
        })
    };

    // Before the kills: 5 s of steady traffic.
    let wait_replies = |n: usize, after: Instant| {
        let log = log.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let seen = log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, r)| *r > after)
                    .count();
                if seen >= n {
                    return;
                }
                assert!(Instant::now() < deadline, "no replies within 30 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_replies(1, Instant::now() - Duration::from_secs(3600)).await;
    let steady_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let kills_from = Instant::now();

    let mut back = Vec::new();
    for _ in 0..a.kills {
        let listening = if a.kill_root {
            root.kill();
            tokio::time::sleep(a.down).await;
            root = NodeProc::start(&root_cfg, None, &d.join("root.log"));
            root.running()
        } else {
            hub.kill();
            tokio::time::sleep(a.down).await;
            hub = NodeProc::start(&hub_cfg, None, &d.join("hub.log"));
            hub.running()
        };
        wait_replies(1, listening).await;
        let first = log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| *r)
            .filter(|r| *r > listening)
            .min()
            .expect("a reply after the restart");
        back.push(first - listening);
        // A few replies on the new process before the next kill.
        wait_replies(a.rate as usize / 2, listening).await;
    }
    let kills_to = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let _ = load.await;

    let entries = log.lock().unwrap().clone();
    let mut steady: Vec<Duration> = entries
        .iter()
        .filter(|(s, _)| *s >= steady_from && *s < kills_from)
        .map(|(s, r)| *r - *s)
        .collect();
    let mut during: Vec<Duration> = entries
        .iter()
        .filter(|(s, _)| *s >= kills_from && *s < kills_to)
        .map(|(s, r)| *r - *s)
        .collect();
    let sent_during = (kills_to - kills_from).as_secs_f64() * a.rate as f64;
    let (s50, s99, smax) = summary(&mut steady);
    let (d50, d99, dmax) = summary(&mut during);
    let (b50, b99, bmax) = summary(&mut back);
    if a.json {
        println!(
            "{}",
            json!({
                "kills": a.kills, "killed": if a.kill_root { "root" } else { "hub" },
                "relay_only": a.relay_only, "rate": a.rate, "down_ms": a.down.as_millis() as u64,
                "steady_ms": {"p50": s50, "p99": s99, "max": smax, "n": steady.len()},
                "during_kills_ms": {"p50": d50, "p99": d99, "max": dmax, "n": during.len()},
                "restart_to_first_reply_ms": {"p50": b50, "p99": b99, "max": bmax},
            })
        );
    } else {
        println!(
            "recovery under the library defaults: {} {} SIGKILLs, {} ms down, {} class-A commands/s, stream on {}",
            a.kills,
            if a.kill_root { "root" } else { "hub" },
            a.down.as_millis(),
            a.rate,
            if a.relay_only {
                "the relay"
            } else {
                "direct QUIC (relay as fallback)"
            }
        );
        println!(
            "  reply latency, steady      p50 {s50:8.1} ms  p99 {s99:8.1} ms  max {smax:8.1} ms  ({} replies)",
            steady.len()
        );
        println!(
            "  reply latency, during kills p50 {d50:8.1} ms  p99 {d99:8.1} ms  max {dmax:8.1} ms  ({} of ~{sent_during:.0} sent)",
            during.len()
        );
        println!(
            "  restarted node running -> first reply  p50 {b50:8.1} ms  p99 {b99:8.1} ms  max {bmax:8.1} ms"
        );
    }
    member.shutdown().await;
    drop(hub);
    drop(root);
    if std::env::var_os("RECOVERY_KEEP").is_some() {
        let _ = dir.keep();
    }
}

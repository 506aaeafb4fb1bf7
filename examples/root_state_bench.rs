//! Root-state figures: the cost of persisting relay dedupe in `root.redb`
//! (the default backend with a state directory) and of sharing it in NATS
//! JetStream (the cluster backend, `docs/cluster.md`) against the same
//! table in memory only, in one run; and admission (issue + redeem) with
//! the state directory's files against JetStream.
//!
//! Per round, 20 000 relayed class-A commands and their 20 000 replies
//! (256 B each) go through [`RootState::relay_verdict`]:
//! 1. **serving path**: verdicts/s as the root's serving task sees them
//!    (memory only vs persisted: the latter also queues the writes);
//! 2. **durable**: verdicts/s until the writer thread has committed every
//!    queued write (`flush`), i.e. the sustained rate the file keeps up with.
//!
//! 3. **admission**: `ADM` tokens issued then redeemed one after another
//!    (each redemption is a durable single-use claim: a file rename, or a
//!    JetStream KV create acknowledged by the server).
//!
//! The JetStream figures need `nats-server` on PATH (`apt-get install
//! nats-server`); the bench starts one on a free loopback port with a
//! temporary store and kills it at the end.
//!
//! Every figure is the median [min–max] of `ROOT_STATE_BENCH_RUNS` (default
//! 7) rounds. Run with `cargo run --release --example root_state_bench`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use interlocking::root::cluster::{ClusterConfig, JetStreamState};
use interlocking::root::state::{DedupeBounds, LocalState, RootState};
use interlocking::vocab::{NodeId, Role, StreamId};

const N: u64 = 20_000;
const ADM: usize = 500;

fn bounds() -> DedupeBounds {
    DedupeBounds {
        capacity: 65_536,
        max_bytes: 64 << 20,
        ttl: Duration::from_secs(30),
        hold: Duration::from_secs(2),
    }
}

/// Runs N commands and N replies through `s`; returns the elapsed time.
async fn drive(s: &dyn RootState, round: u64) -> Duration {
    let (m, h) = (NodeId::new("m"), NodeId::new("h"));
    let stream = StreamId::new("command:m/h");
    let frame = Bytes::from(vec![7u8; 256]);
    let t0 = Instant::now();
    for i in 0..N {
        let id = round * N + i;
        let now = Instant::now();
        s.relay_verdict((m.clone(), h.clone(), stream.clone(), 1, id), &frame, now)
            .await;
        s.relay_verdict((h.clone(), m.clone(), stream.clone(), 1, id), &frame, now)
            .await;
    }
    t0.elapsed()
}

fn rate(d: Duration) -> f64 {
    (2 * N) as f64 / d.as_secs_f64()
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:>9.0} [{:.0}–{:.0}]",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}

/// Issues `ADM` tokens and redeems each once; redemptions per second.
async fn admit(s: &dyn RootState, settle: impl AsyncFnOnce()) -> f64 {
    let node = NodeId::new("m");
    let now = std::time::SystemTime::now();
    let ttl = Duration::from_secs(600);
    let tokens: Vec<_> = (0..ADM)
        .map(|_| {
            s.issue([1; 32], &node, Role::Member, ttl, now, &[])
                .unwrap()
        })
        .collect();
    settle().await;
    let t0 = Instant::now();
    for t in &tokens {
        s.redeem(t, &node, Role::Member, now)
            .await
            .expect("redeems");
    }
    ADM as f64 / t0.elapsed().as_secs_f64()
}

/// A nats-server with JetStream on a free loopback port, killed on drop.
struct Nats {
    child: std::process::Child,
    url: String,
    /// The server's store, removed after it is killed.
    _store: tempfile::TempDir,
}

impl Nats {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("nats-server")
            .args(["-js", "-sd"])
            .arg(store.path())
            .args(["-p", &port.to_string(), "-a", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nats-server runs (apt-get install nats-server)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("Server is ready") {
                    tx.take().map(|t| t.send(()));
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("nats-server ready");
        Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _store: store,
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let runs: u64 = std::env::var("ROOT_STATE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let (mut mem, mut served, mut durable) = (Vec::new(), Vec::new(), Vec::new());
    let (mut js_served, mut js_durable) = (Vec::new(), Vec::new());
    let (mut adm_files, mut adm_js) = (Vec::new(), Vec::new());
    let nats = Nats::start();
    for round in 0..runs {
        let m = LocalState::in_memory(bounds());
        mem.push(rate(drive(&m, round).await));
        let dir = tempfile::tempdir().expect("tempdir");
        let p = LocalState::open(dir.path(), bounds()).expect("state opens");
        let t0 = Instant::now();
        served.push(rate(drive(&p, round).await));
        p.flush();
        durable.push(rate(t0.elapsed()));
        assert_eq!(p.health().dropped_writes, 0, "write queue overflowed");
        adm_files.push(admit(&p, async || {}).await);
        p.close_blocking();

        let cluster = ClusterConfig {
            nats: nats.url.clone(),
            name: format!("bench-{round}"),
        };
        let j = JetStreamState::connect(&cluster, None, bounds())
            .await
            .expect("cluster state connects");
        let t0 = Instant::now();
        js_served.push(rate(drive(&j, round).await));
        j.flush().await;
        js_durable.push(rate(t0.elapsed()));
        assert_eq!(
            j.health().dropped_writes,
            0,
            "cluster writes dropped or failed"
        );
        adm_js.push(admit(&j, async || j.flush().await).await);
        j.close().await;
    }
    println!("relay dedupe verdicts/s (command + reply), median [min–max] of {runs} rounds:");
    println!("  memory only             {}", summary(mem));
    println!("  root.redb, serving path {}", summary(served));
    println!("  root.redb, durable      {}", summary(durable));
    println!("  JetStream, serving path {}", summary(js_served));
    println!("  JetStream, durable      {}", summary(js_durable));
    println!("admission redemptions/s ({ADM} tokens, one at a time), median [min–max]:");
    println!("  state dir files         {}", summary(adm_files));
    println!("  JetStream (KV create)   {}", summary(adm_js));
    drop(nats);
}

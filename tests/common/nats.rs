//! A real nats-server with JetStream for cluster tests: started on a free
//! loopback port with a store directory of its own, SIGKILLed and restarted
//! on the same port and store, killed when dropped. Missing binary → the
//! test fails telling how to install it (never skips).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long nats-server may take to say it is ready.
const READY: Duration = Duration::from_secs(10);

/// A running nats-server (see the module docs).
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl NatsServer {
    /// Starts nats-server with JetStream on a free loopback port.
    pub fn start() -> Self {
        let mut s = Self {
            child: None,
            port: free_tcp_port(),
            store: tempfile::tempdir().unwrap(),
        };
        s.spawn();
        s
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let trace = std::env::var_os("INTERLOCKING_NATS_TRACE").is_some();
        let mut child = Command::new("nats-server")
            .args(["-js", "-sd"])
            .arg(self.store.path())
            .args(["-p", &self.port.to_string(), "-a", "127.0.0.1"])
            // INTERLOCKING_NATS_TRACE=1: the server traces protocol to stderr.
            .args(trace.then_some("-V"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nats-server not runnable ({e}): apt-get install nats-server")
            });
        // Wait for its "ready" line; keep draining its log after that.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if trace {
                    eprintln!("nats-server: {line}");
                }
                if line.contains("Server is ready")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(READY).is_err() {
            let _ = child.kill();
            panic!(
                "nats-server on port {} not ready within {READY:?}",
                self.port
            );
        }
        self.child = Some(child);
    }

    /// SIGKILLs the server (its store stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

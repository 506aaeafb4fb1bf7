//! Helpers of the real-process crash tests (self re-exec): environment
//! parameters, the probe timing they use, and a child test process whose
//! stdout lines arrive on a channel.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use interlocking::transports::probe::ProbeConfig;

/// `name` parsed as a number, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A parameter the parent must have set for the child.
pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child: {name} not set"))
}

/// Quick probes: a dead path is noticed within about half a second.
pub fn probe() -> ProbeConfig {
    ProbeConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
    }
}

/// A child process running one test of this binary.
pub struct ChildTest {
    /// The process (SIGKILL it with `kill`).
    pub child: Child,
    /// Its stdout, line by line; closed at its end.
    pub lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ChildTest {
    /// Runs this test binary again with `--exact test`, `child_var=1` and
    /// `env`; stderr is inherited.
    pub fn spawn(test: &str, child_var: &str, env: &[(&str, String)]) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(child_var, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// Waits (bounded) for a line containing `word`.
    pub fn wait_for(&self, word: &str, within: Duration) -> Result<String, String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(word) => return Ok(line),
                Ok(_) => {}
                Err(e) => return Err(format!("no {word:?} line within {within:?}: {e}")),
            }
        }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

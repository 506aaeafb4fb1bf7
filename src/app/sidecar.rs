//! The sidecar as a process of the application: `interlocking sidecar
//! --config hub.toml` ([`run`]), and a hub's supervision of it as a child
//! ([`ChildSupervisor`]) — spawn, restart with backoff under a restart
//! intensity limit, escalate (stop restarting, report it) when the limit is
//! exceeded.
//!
//! The sidecar runs on the *hub's* configuration file: it serves exactly
//! the hub that file names, with the identity stored in the hub's state
//! directory, so it cannot present another node's identity. It never
//! joins: the hub is the admitted node and joins first.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use crate::actors::restart::{RestartDecision, RestartPolicy, RestartTracker};
use crate::config::Config;
use crate::sidecar::{Sidecar, SidecarConfig};
use crate::sync::lock;
use crate::transports::PeerAddr;
use crate::transports::quic::{Backoff, QuicConfig};
use crate::vocab::Role;

/// Runs the sidecar for the hub of `config` until SIGTERM or Ctrl-C.
pub async fn run(config: &Config) -> Result<(), String> {
    let settings = config
        .sidecar
        .as_ref()
        .ok_or("the configuration has no [sidecar] table")?;
    if config.role != Role::Hub {
        return Err("a sidecar serves a hub: node.role must be hub".into());
    }
    let root = config.root.as_ref().ok_or("no [root]")?;
    let path = super::identity::identity_path(&config.state_dir);
    if !path.exists() {
        return Err(format!(
            "no hub identity in {}: start the hub once (it joins the root) before its sidecar",
            config.state_dir.display()
        ));
    }
    let creds = super::identity::credentials(config, None, Duration::ZERO).await?;
    let expires = creds.expires_at;
    let mut quic = QuicConfig::new(creds.identity, creds.roots);
    quic.listen = if root.addr.is_ipv4() {
        std::net::SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    };
    if !root.addr.ip().is_loopback() {
        quic.listen.set_ip(if root.addr.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        });
    }
    quic.probe = config.transports.probe;
    quic.reconnect = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(1),
        multiplier: 2.0,
        jitter: 0.2,
        max_attempts: None,
    };
    let mut cfg = SidecarConfig::new(
        quic,
        PeerAddr::at(root.id.clone(), root.addr),
        settings.dir.clone(),
    );
    cfg.cert_expires = Some(expires);
    let sidecar = Arc::new(Sidecar::start(cfg).await.map_err(|e| e.to_string())?);
    let renewals = tokio::spawn(follow_renewals(config.clone(), sidecar.clone(), expires));
    // The line tests and operators wait for.
    println!(
        "sidecar running for {} at {}",
        sidecar.hub(),
        sidecar.socket_path().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    renewals.abort();
    let _ = renewals.await; // its clone of the sidecar is dropped
    match Arc::try_unwrap(sidecar) {
        Ok(s) => s.shutdown().await,
        Err(_) => tracing::warn!("sidecar: still referenced at shutdown"),
    }
    Ok(())
}

/// How often the sidecar looks at the hub's `identity.bin` for a renewal.
const IDENTITY_POLL: Duration = Duration::from_secs(1);

/// Follows the hub's certificate renewals: the hub writes its renewed
/// identity to `identity.bin` in its state directory first
/// (`app::renewal`); when that file holds a certificate expiring later than
/// the one presented, it goes to the remote session
/// ([`Sidecar::renew_identity`], which refuses any node but the hub), so
/// the next connection to the root presents it — no sidecar restart.
async fn follow_renewals(config: Config, sidecar: Arc<Sidecar>, mut expires: SystemTime) {
    let path = super::identity::identity_path(&config.state_dir);
    let mut seen = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    loop {
        tokio::time::sleep(IDENTITY_POLL).await;
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified == seen {
            continue;
        }
        seen = modified;
        match super::identity::credentials(&config, None, Duration::ZERO).await {
            Ok(c) if c.expires_at > expires => {
                match sidecar.renew_identity(&c.identity, c.expires_at) {
                    Ok(()) => {
                        expires = c.expires_at;
                        tracing::info!(expires = ?expires, "sidecar: presenting the hub's renewed certificate");
                    }
                    Err(e) => tracing::error!(error = %e, "sidecar: renewed identity refused"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sidecar: cannot read the hub's identity"),
        }
    }
}

/// What the hub knows about its sidecar child (control API `sidecar`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChildState {
    /// The running child's pid.
    pub pid: Option<u32>,
    /// Starts so far (the first included).
    pub starts: u64,
    /// Exits seen (each one restarted unless escalated).
    pub exits: u64,
    /// The last exit's status text.
    pub last_exit: Option<String>,
    /// The restart intensity was exceeded: no more restarts.
    pub escalated: bool,
}

/// Spawns `interlocking sidecar --config FILE` and keeps it running. See
/// the module docs.
pub struct ChildSupervisor {
    state: Arc<Mutex<ChildState>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ChildSupervisor {
    /// Starts supervising: the child is spawned at once.
    pub fn start(config: PathBuf, policy: RestartPolicy) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let state = Arc::new(Mutex::new(ChildState::default()));
        let stop = watch::channel(false).0;
        let task = tokio::spawn(supervise(
            exe,
            config,
            policy,
            state.clone(),
            stop.subscribe(),
        ));
        Ok(Self { state, stop, task })
    }

    /// The child's state now.
    pub fn state(&self) -> ChildState {
        lock(&self.state).clone()
    }

    /// Stops the child (SIGTERM, then SIGKILL after 2 s) and supervision.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.task).await;
    }
}

async fn supervise(
    exe: PathBuf,
    config: PathBuf,
    policy: RestartPolicy,
    state: Arc<Mutex<ChildState>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tracker = RestartTracker::new(policy);
    loop {
        let child = tokio::process::Command::new(&exe)
            .arg("sidecar")
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let status = match child {
            Ok(mut child) => {
                {
                    let mut s = lock(&state);
                    s.pid = child.id();
                    s.starts += 1;
                }
                tracing::info!(pid = ?child.id(), "sidecar child started");
                tokio::select! {
                    st = child.wait() => st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    _ = stop.changed() => {
                        if let Some(pid) = child.id() {
                            // SAFETY: kill(2) with a pid we spawned.
                            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                        }
                        if tokio::time::timeout(Duration::from_secs(2), child.wait()).await.is_err() {
                            let _ = child.kill().await;
                        }
                        lock(&state).pid = None;
                        return;
                    }
                }
            }
            Err(e) => format!("spawn failed: {e}"),
        };
        {
            let mut s = lock(&state);
            s.pid = None;
            s.exits += 1;
            s.last_exit = Some(status.clone());
        }
        match tracker.on_exit(std::time::Instant::now()) {
            RestartDecision::Restart { after, attempt } => {
                tracing::warn!(%status, attempt, ?after, "sidecar child exited; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(after) => {}
                    _ = stop.changed() => return,
                }
            }
            RestartDecision::Escalate { restarts, within } => {
                tracing::error!(%status, restarts, ?within, "sidecar child keeps failing; restart intensity exceeded, not restarting");
                lock(&state).escalated = true;
                return;
            }
        }
    }
}

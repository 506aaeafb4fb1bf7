//! `interlocking up TOPOLOGY.toml`: every node of a topology as its own
//! local process (this binary with `run`), a live status line per node,
//! and a clean stop of them all on Ctrl-C or SIGTERM.
//!
//! Owns the topology file (`[topology] state_dir` and one `[nodes.NAME]`
//! table per node, each a node configuration as `docs/config.md` describes),
//! writing each node's configuration to `STATE_DIR/NAME.toml`, issuing join
//! tokens from the root's state directory for nodes not yet joined,
//! starting the processes (root first), polling their control APIs, and
//! stopping them (SIGTERM, then SIGKILL after 10 s), root last.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use interlocking::app::identity::identity_path;
use interlocking::config::Config;
use interlocking::control::client::Client;
use interlocking::root::{AdmissionBook, open_ca};
use interlocking::vocab::Role;
use tokio::process::{Child, Command};

/// `interlocking up`.
#[derive(Args)]
pub struct UpArgs {
    /// The topology file.
    topology: PathBuf,
    /// Status refresh interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Check the topology and write the node configurations, start nothing.
    #[arg(long)]
    check: bool,
}

struct Proc {
    name: String,
    config: Config,
    child: Child,
    exited: Option<i32>,
    last_line: String,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("interlocking up: {msg}");
    ExitCode::FAILURE
}

/// Reads the topology and writes one configuration file per node.
fn prepare(path: &Path) -> Result<Vec<(String, Config)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message().trim()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let topo = table
        .remove("topology")
        .and_then(|t| t.as_table().cloned())
        .ok_or_else(|| {
            format!(
                "{}: needs a [topology] table with state_dir",
                path.display()
            )
        })?;
    let state = topo
        .get("state_dir")
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("{}: topology.state_dir is missing", path.display()))?;
    if let Some(k) = topo.keys().find(|k| *k != "state_dir") {
        return Err(format!("{}: topology.{k}: unknown key", path.display()));
    }
    let state = base.join(state);
    std::fs::create_dir_all(&state)
        .map_err(|e| format!("cannot create {}: {e}", state.display()))?;
    let nodes = table
        .remove("nodes")
        .and_then(|t| t.as_table().cloned())
        .ok_or_else(|| format!("{}: needs [nodes.NAME] tables", path.display()))?;
    if let Some(k) = table.keys().next() {
        return Err(format!("{}: {k}: unknown table", path.display()));
    }
    let mut out = Vec::new();
    for (name, node) in nodes {
        let file = state.join(format!("{name}.toml"));
        let text = toml::to_string(&node).map_err(|e| format!("nodes.{name}: {e}"))?;
        std::fs::write(&file, &text)
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        let cfg = Config::load(&file).map_err(|e| format!("nodes.{name}: {e}"))?;
        out.push((name, cfg));
    }
    // Roots first, then in name order.
    out.sort_by_key(|(n, c)| (c.role != Role::Root, n.clone()));
    if out.iter().filter(|(_, c)| c.role == Role::Root).count() != 1 {
        return Err(format!(
            "{}: needs exactly one node with role = \"root\"",
            path.display()
        ));
    }
    Ok(out)
}

fn token_for(root: &Config, node: &Config) -> Result<Option<String>, String> {
    if identity_path(&node.state_dir).exists() {
        return Ok(None);
    }
    let ca = open_ca(&root.state_dir).map_err(|e| e.to_string())?;
    let book = AdmissionBook::open(&root.state_dir).map_err(|e| e.to_string())?;
    let token = book
        .issue(
            ca.fingerprint(),
            &node.id,
            node.role,
            Duration::from_secs(15 * 60),
            SystemTime::now(),
        )
        .map_err(|e| e.to_string())?;
    Ok(Some(token.to_string()))
}

fn spawn(name: &str, cfg: &Config, token: Option<String>) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log_path = cfg.state_dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg("--config").arg(&cfg.path);
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true);
    cmd.spawn().map_err(|e| format!("cannot start {name}: {e}"))
}

async fn line(p: &Proc) -> String {
    let role = p.config.role.to_string();
    if let Some(code) = p.exited {
        return format!("{:<10} {:<7} exited ({code})", p.name, role);
    }
    let Some(addr) = p.config.diagnostics.listen else {
        return format!("{:<10} {:<7} running (no control API)", p.name, role);
    };
    let c = Client::new(
        &addr.to_string(),
        p.config.diagnostics.token.clone(),
        Duration::from_millis(900),
    );
    let v = match c.get("/control/status").await {
        Ok(v) => v,
        Err(_) => return format!("{:<10} {:<7} starting", p.name, role),
    };
    let ready = if v["readiness"]["ready"].as_bool() == Some(true) {
        "ready"
    } else {
        "NOT READY"
    };
    let modes: Vec<&str> = v["readiness"]["modes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str())
        .collect();
    let mut s = format!("{:<10} {:<7} {ready}", p.name, role);
    if !modes.is_empty() {
        s.push_str(&format!(" [{}]", modes.join(", ")));
    }
    if p.config.role == Role::Root {
        if let Ok(peers) = c.get("/control/peers").await {
            let n = peers["peers"].as_array().map_or(0, Vec::len);
            s.push_str(&format!("  online {n}"));
        }
    }
    for r in v["routes"].as_array().into_iter().flatten() {
        if r["side"] == "send" {
            let path = r["path"].as_str().unwrap_or("none");
            s.push_str(&format!(
                "  {} {path} sw={} fo={}",
                r["stream"].as_str().unwrap_or(""),
                r["switches"],
                r["failovers"]
            ));
        } else {
            s.push_str(&format!("  serves {}", r["stream"].as_str().unwrap_or("")));
        }
    }
    s
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid this process spawned and still owns
        // (not yet reaped), and a valid signal number.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

async fn stop_all(procs: &mut [Proc]) -> bool {
    let mut clean = true;
    // Reverse start order: members and hubs first, the root last.
    for p in procs.iter_mut().rev() {
        if p.exited.is_some() {
            clean &= p.exited == Some(0);
            continue;
        }
        terminate(&p.child);
        let code = match tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await {
            Ok(Ok(s)) => {
                use std::os::unix::process::ExitStatusExt;
                match (s.code(), s.signal()) {
                    (Some(c), _) => c,
                    // Our SIGTERM reached it before it listened for it: it
                    // was still starting and held nothing yet.
                    (None, Some(libc::SIGTERM)) => {
                        println!("{:<10} was still starting: ended by SIGTERM", p.name);
                        0
                    }
                    _ => -1,
                }
            }
            _ => {
                let _ = p.child.kill().await;
                -9
            }
        };
        println!("{:<10} stopped ({code})", p.name);
        clean &= code == 0;
        p.exited = Some(code);
    }
    clean
}

/// Runs `interlocking up`.
pub fn main(args: UpArgs) -> ExitCode {
    let nodes = match prepare(&args.topology) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    if args.check {
        for (name, cfg) in &nodes {
            println!("{name:<10} {} ok: {}", cfg.role, cfg.path.display());
        }
        return ExitCode::SUCCESS;
    }
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    rt.block_on(async move {
        let root = nodes[0].1.clone();
        let mut procs = Vec::new();
        for (name, cfg) in nodes {
            let token = if cfg.role == Role::Root {
                None
            } else {
                match token_for(&root, &cfg) {
                    Ok(t) => t,
                    Err(e) => return fail(format!("token for {name}: {e}")),
                }
            };
            let child = match spawn(&name, &cfg, token) {
                Ok(c) => c,
                Err(e) => {
                    stop_all(&mut procs).await;
                    return fail(e);
                }
            };
            println!(
                "{name:<10} started (pid {}, log {})",
                child.id().unwrap_or(0),
                cfg.state_dir.join(format!("{name}.log")).display()
            );
            procs.push(Proc {
                name,
                config: cfg,
                child,
                exited: None,
                last_line: String::new(),
            });
        }
        let tty = std::io::stdout().is_terminal();
        let mut drawn = 0usize;
        let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms.max(100)));
        let signal = interlocking::app::shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                why = &mut signal => {
                    println!("interlocking up: {why}: stopping every node");
                    break;
                }
                _ = tick.tick() => {
                    let mut lines = BTreeMap::new();
                    for p in procs.iter_mut() {
                        if p.exited.is_none() {
                            if let Ok(Some(s)) = p.child.try_wait() {
                                p.exited = Some(s.code().unwrap_or(-1));
                            }
                        }
                    }
                    for (i, p) in procs.iter().enumerate() {
                        lines.insert(i, line(p).await);
                    }
                    let mut out = std::io::stdout().lock();
                    if tty {
                        // Redraw the block in place.
                        if drawn > 0 {
                            let _ = write!(out, "\x1b[{drawn}A\x1b[J");
                        }
                        for l in lines.values() {
                            let _ = writeln!(out, "{l}");
                        }
                        drawn = lines.len();
                    } else {
                        for (i, l) in &lines {
                            if procs[*i].last_line != *l {
                                let _ = writeln!(out, "{l}");
                            }
                        }
                    }
                    let _ = out.flush();
                    drop(out);
                    for (i, l) in lines {
                        procs[i].last_line = l;
                    }
                    if procs.iter().all(|p| p.exited.is_some()) {
                        println!("interlocking up: every node has exited");
                        break;
                    }
                }
            }
        }
        if stop_all(&mut procs).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

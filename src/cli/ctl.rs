//! `interlocking ctl`: the control API from the command line.
//!
//! Owns argument parsing and rendering only: every answer comes from the
//! node's control API ([`interlocking::control::client`]); human tables by
//! default, the API's JSON with `--json`. Exit code 0 on success, 1 when
//! the API answers an error or cannot be reached, 3 when `readiness` says
//! not ready.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use interlocking::config::Config;
use interlocking::control::client::{Client, ClientError};
use serde_json::{Value, json};

/// `interlocking ctl`.
#[derive(Args)]
pub struct CtlArgs {
    /// The control API address (host:port), or set INTERLOCKING_CONTROL.
    #[arg(long, env = "INTERLOCKING_CONTROL", conflicts_with = "config")]
    addr: Option<String>,
    /// Read the address and token from this node's configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Bearer token (or INTERLOCKING_CONTROL_TOKEN).
    #[arg(long, env = "INTERLOCKING_CONTROL_TOKEN")]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 35)]
    timeout: u64,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Node, role, readiness, degraded modes and routes.
    Status,
    /// Every stream's route.
    Routes {
        /// Print again every second.
        #[arg(long)]
        watch: bool,
        /// With --watch: stop after this many prints.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Why a stream is on its path: the routing authority's explanation.
    Why {
        /// The stream id, e.g. command:m1/hub.
        stream: String,
    },
    /// Connected peers and the root link.
    Peers,
    /// The hub's sidecar: remote session, reconnects, RTT, supervision.
    Sidecar,
    /// Command channels: outbox, transmits, applied, dedupe.
    Channels,
    /// The readiness tree (exit code 3 when not ready).
    Readiness,
    /// Stop accepting new commands, flush the outbox, stop the node.
    Drain {
        /// Give up flushing after this many seconds.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Send a command (JSON) on a configured stream and print the reply.
    Send {
        /// The stream id.
        stream: String,
        /// The command, as JSON.
        command: String,
        /// Delivery class: a (durable) or b.
        #[arg(long, default_value = "a")]
        class: String,
    },
}

fn client(args: &CtlArgs) -> Result<Client, String> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    if let Some(addr) = &args.addr {
        return Ok(Client::new(addr, args.token.clone(), timeout));
    }
    let Some(path) = &args.config else {
        return Err(
            "say where the node's control API is: --addr HOST:PORT or --config NODE.toml".into(),
        );
    };
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    let addr = cfg.diagnostics.listen.ok_or_else(|| {
        format!(
            "{}: diagnostics.listen is not set: the node has no control API",
            path.display()
        )
    })?;
    let token = args.token.clone().or(cfg.diagnostics.token);
    Ok(Client::new(&addr.to_string(), token, timeout))
}

/// Runs `interlocking ctl`.
pub fn main(args: CtlArgs) -> ExitCode {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("interlocking ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let c = match client(&args) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("interlocking ctl: {e}");
                return ExitCode::FAILURE;
            }
        };
        match command(&c, &args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("interlocking ctl: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn print_routes(v: &Value) {
    println!(
        "{:<28} {:<5} {:<8} {:<14} {:<13} {:>7} {:>8} {:>9}",
        "STREAM", "SIDE", "PEER", "PATH", "ASSESSMENT", "FROZEN", "SWITCHES", "FAILOVERS"
    );
    for r in v.as_array().into_iter().flatten() {
        let frozen = r["frozen_for_ms"]
            .as_u64()
            .map_or("-".into(), |m| format!("{:.1}s", m as f64 / 1000.0));
        println!(
            "{:<28} {:<5} {:<8} {:<14} {:<13} {:>7} {:>8} {:>9}",
            s(&r["stream"]),
            s(&r["side"]),
            s(&r["peer"]),
            s(&r["path"]),
            s(&r["assessment"]),
            frozen,
            s(&r["switches"]),
            s(&r["failovers"]),
        );
    }
}

fn print_readiness(v: &Value) {
    println!("node {}: ready = {}", s(&v["node"]), s(&v["ready"]));
    for (name, b) in v["branches"].as_object().into_iter().flatten() {
        let gates = if b["gates"].as_bool() == Some(false) {
            " (never gates)"
        } else {
            ""
        };
        println!(
            "  {:<13} {:<15} {}{gates}",
            name,
            s(&b["status"]),
            s(&b["reason"])
        );
    }
    let modes = v["modes"].as_array().cloned().unwrap_or_default();
    if modes.is_empty() {
        println!("degraded modes: none");
    }
    for m in modes {
        println!("degraded mode {}: {}", s(&m["name"]), s(&m["effect"]));
    }
}

async fn command(c: &Client, args: &CtlArgs) -> Result<ExitCode, ClientError> {
    let json = args.json;
    match &args.command {
        CtlCommand::Status => {
            let v = c.get("/control/status").await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{} ({}) up {:.0}s{}",
                    s(&v["node"]),
                    s(&v["role"]),
                    v["uptime_s"].as_f64().unwrap_or(0.0),
                    if v["draining"].as_bool() == Some(true) {
                        ", draining"
                    } else {
                        ""
                    }
                );
                print_readiness(&v["readiness"]);
                println!();
                print_routes(&v["routes"]);
            }
        }
        CtlCommand::Routes { watch, count } => {
            let mut printed = 0u64;
            loop {
                let v = c.get("/control/routes").await?;
                if json {
                    println!("{v}");
                } else {
                    print_routes(&v);
                }
                printed += 1;
                if !*watch || count.is_some_and(|n| printed >= n) {
                    break;
                }
                if !json {
                    println!();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        CtlCommand::Why { stream } => {
            let v = c.get(&format!("/control/streams/{stream}")).await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", s(&v["text"]));
            }
        }
        CtlCommand::Sidecar => {
            let v = c.get("/control/sidecar").await?;
            if json {
                print_json(&v);
            } else {
                let s = &v["status"];
                println!(
                    "sidecar ({}) in {}: remote {} · reconnects {} · rtt {} µs · sessions {} · refused {} sessions, {} frames",
                    v["mode"].as_str().unwrap_or("?"),
                    v["dir"].as_str().unwrap_or("?"),
                    if s["remote_up"] == true { "up" } else { "down" },
                    s["reconnects"],
                    s["rtt_us"],
                    s["sessions"],
                    s["refused_sessions"],
                    s["refused_frames"],
                );
                if v["child"].is_object() {
                    let c = &v["child"];
                    println!(
                        "child pid {} · starts {} · exits {} · escalated {}",
                        c["pid"], c["starts"], c["exits"], c["escalated"]
                    );
                }
            }
        }
        CtlCommand::Peers => {
            let v = c.get("/control/peers").await?;
            if json {
                print_json(&v);
            } else {
                if v["root"].is_object() {
                    let r = &v["root"];
                    println!(
                        "root {} at {}: {}",
                        s(&r["id"]),
                        s(&r["addr"]),
                        if r["connected"].as_bool() == Some(true) {
                            "connected"
                        } else {
                            "NOT connected"
                        }
                    );
                }
                println!("{:<16} PATHS", "PEER");
                for p in v["peers"].as_array().into_iter().flatten() {
                    let paths: Vec<String> =
                        p["paths"].as_array().into_iter().flatten().map(s).collect();
                    println!("{:<16} {}", s(&p["node"]), paths.join(", "));
                }
            }
        }
        CtlCommand::Channels => {
            let v = c.get("/control/channels").await?;
            if json {
                print_json(&v);
            } else {
                if v["draining"].as_bool() == Some(true) {
                    println!("draining: new commands refused");
                }
                println!(
                    "{:<28} {:<8} {:>8} {:>7} {:>10} {:>8}",
                    "SENDING", "TARGET", "PENDING", "STORED", "TRANSMITS", "REJECTS"
                );
                for r in v["senders"].as_array().into_iter().flatten() {
                    println!(
                        "{:<28} {:<8} {:>8} {:>7} {:>10} {:>8}",
                        s(&r["stream"]),
                        s(&r["target"]),
                        s(&r["outbox_pending"]),
                        s(&r["outbox_stored"]),
                        s(&r["transmits"]),
                        s(&r["rejects"])
                    );
                }
                println!(
                    "{:<28} {:<8} {:>8} {:>11} {:>7}",
                    "SERVED", "HANDLER", "APPLIED", "UNDECODABLE", "DEDUPE"
                );
                for r in v["served"].as_array().into_iter().flatten() {
                    println!(
                        "{:<28} {:<8} {:>8} {:>11} {:>7}",
                        s(&r["stream"]),
                        s(&r["handler"]),
                        s(&r["applied"]),
                        s(&r["undecodable"]),
                        s(&r["dedupe_records"])
                    );
                }
            }
        }
        CtlCommand::Readiness => {
            let (status, v) = c.get_any("/readyz").await?;
            if status != 200 && status != 503 {
                return Err(ClientError::Status {
                    status,
                    message: s(&v["error"]),
                });
            }
            if json {
                print_json(&v);
            } else {
                print_readiness(&v);
            }
            if v["ready"].as_bool() != Some(true) {
                return Ok(ExitCode::from(3));
            }
        }
        CtlCommand::Drain { wait } => {
            let v = c
                .post(
                    "/control/drain",
                    &json!({"timeout_ms": wait * 1000, "exit": true}),
                )
                .await?;
            if json {
                print_json(&v);
            } else if v["drained"].as_bool() == Some(true) {
                println!("drained: outbox empty; the node is stopping");
            } else {
                println!(
                    "drain timed out with {} commands pending; the node is stopping",
                    s(&v["outbox_pending"])
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        CtlCommand::Send {
            stream,
            command,
            class,
        } => {
            let cmd: Value = serde_json::from_str(command)
                .map_err(|e| ClientError::Body(format!("the command is not JSON: {e}")))?;
            let v = c
                .post(
                    "/control/send",
                    &json!({"stream": stream, "command": cmd, "class": class}),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("message {}: {}", s(&v["message_id"]), v["reply"]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! The `interlocking` command-line tool.
//!
//! Owns operator-facing commands only; every behaviour it shows comes from
//! the library: `run` a root, hub or member from its configuration file
//! ([`interlocking::app`]); `ctl`, the control API's command line
//! (`cli/ctl.rs`); `up`, a whole topology as local processes (`cli/up.rs`);
//! `token`, join tokens from a root's state directory (`docs/root.md` §2);
//! `policies`, the default routing policies as a table or JSON.

mod cli;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use interlocking::root::{AdmissionBook, open_ca};
use interlocking::routing::RoutingConfig;
use interlocking::vocab::{ChannelKind, NodeId, Role};

#[derive(Parser)]
#[command(
    name = "interlocking",
    version,
    about = "Supervised logical channels over failing paths"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a root, hub or member from its configuration file until SIGTERM,
    /// Ctrl-C or `ctl drain`.
    /// Run the sidecar of the hub whose configuration file this is (its
    /// `[sidecar]` table; docs/sidecar.md) until SIGTERM or Ctrl-C.
    Sidecar {
        /// The hub's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    Run {
        /// The node's configuration file (docs/config.md).
        #[arg(long, short)]
        config: PathBuf,
        /// The join token for the first start (overrides root.join_token).
        #[arg(long, env = "INTERLOCKING_JOIN_TOKEN")]
        token: Option<String>,
    },
    /// Talk to a running node's control API.
    Ctl(cli::ctl::CtlArgs),
    /// Start every node of a topology file as a local process, show a live
    /// status line per node, stop them all on Ctrl-C or SIGTERM.
    Up(cli::up::UpArgs),
    /// Print the default routing policy of every channel kind.
    Policies {
        /// Print JSON (a starting point for a configuration) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Issue a single-use join token from a root's state directory (the
    /// same directory the root runs with; works while the root runs).
    /// Prints the token, to hand to the joining node.
    Token {
        /// The root's state directory (created with a new CA if empty).
        #[arg(long)]
        state_dir: PathBuf,
        /// The node id the token admits.
        #[arg(long)]
        node: String,
        /// The role the token admits: hub, member, sidecar, browser.
        #[arg(long)]
        role: String,
        /// How long the token is valid: e.g. 900s, 15m, 2h.
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// A capability the node may register for rendezvous (repeatable);
        /// a `Register` naming any other is refused.
        #[arg(long = "capability", value_name = "NAME")]
        capabilities: Vec<String>,
    },
}

/// Parses `90s`, `15m`, `2h` (or bare seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("bad duration unit in {s:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "hub" => Ok(Role::Hub),
        "member" => Ok(Role::Member),
        "sidecar" => Ok(Role::Sidecar),
        "browser" => Ok(Role::Browser),
        "root" => Ok(Role::Root),
        _ => Err(format!("unknown role {s:?}")),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, token } => return cli::run(&config, token),
        Command::Ctl(args) => return cli::ctl::main(args),
        Command::Sidecar { config } => return cli::sidecar(&config),
        Command::Up(args) => return cli::up::main(args),
        Command::Token {
            state_dir,
            node,
            role,
            ttl,
            capabilities,
        } => token(&state_dir, node, &role, &ttl, &capabilities),
        Command::Policies { json } => policies(json),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interlocking: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `interlocking token`: issues a join token from a root's state directory.
fn token(
    state_dir: &std::path::Path,
    node: String,
    role: &str,
    ttl: &str,
    capabilities: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    let role = parse_role(role)?;
    let ttl = parse_duration(ttl)?;
    let ca = open_ca(state_dir)?;
    let book = AdmissionBook::open(state_dir)?;
    let token = book.issue(
        ca.fingerprint(),
        &NodeId::new(node),
        role,
        ttl,
        SystemTime::now(),
        capabilities,
    )?;
    println!("{token}");
    Ok(())
}

/// `interlocking policies`: the default routing policies.
fn policies(json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let config = RoutingConfig::default();
    if json {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    println!(
        "{:<9} {:<32} {:>8} {:>10} {:>11}",
        "channel", "failover order", "freeze", "hold-down", "direct-only"
    );
    for kind in [
        ChannelKind::Command,
        ChannelKind::Sync,
        ChannelKind::Media,
        ChannelKind::Event,
        ChannelKind::Presence,
    ] {
        let p = config.policy(kind);
        let order: Vec<&str> = p.order.iter().map(|k| k.as_str()).collect();
        println!(
            "{:<9} {:<32} {:>7.1}s {:>9.1}s {:>11}",
            kind.as_str(),
            order.join(" -> "),
            p.freeze.as_secs_f64(),
            p.hold_down.as_secs_f64(),
            p.direct_only
        );
    }
    let h = &config.health;
    println!(
        "\npath health: stale after {:?}, failed after {} missed probes, pressured after {:?} over {} frames / {} bytes",
        h.stale_after,
        h.misses_to_fail,
        h.pressured_for,
        h.queue_budget_frames,
        h.queue_budget_bytes
    );
    Ok(())
}

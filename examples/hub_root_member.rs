//! The main topology: a root, a hub and two members, each its own node with
//! its own QUIC endpoint on 127.0.0.1. Members join through the root's
//! admission (join token → short-lived certificate → mutual TLS) and send
//! class-A commands to a handler on the hub. Each stream prefers the direct
//! QUIC path and falls back to the relay through the root.
//!
//! Run: `cargo run --example hub_root_member -- [--chaos] [--seed N]
//! [--cycles N] [--members N] [--secs N] [--production-policy]`
//!
//! With `--chaos`, a seeded schedule blackholes a member's direct path
//! (a fault-injecting socket beneath quinn) `--cycles` times (default 5)
//! and restores it: the routing authority fails over to the relay, freezes,
//! and returns to direct after the freeze and hold-down. The default policy
//! here is the production one with a 2 s freeze (`--production-policy` for
//! the 10 s of DESIGN §5). It prints the route decisions and, as its last
//! line, one JSON object of figures; it exits non-zero if a command was
//! lost or applied twice, or a voluntary return happened inside a freeze.

#[path = "../tests/demo/topology.rs"]
mod topology;

use std::time::Duration;

use interlocking::routing::RoutingConfig;
use topology::{Options, hub_root_member};

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // `RUST_LOG=interlocking=debug` shows what each layer decided and refused.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let chaos = args.iter().any(|a| a == "--chaos");
    let mut opts = Options::new(arg(&args, "--seed").unwrap_or(2026));
    opts.members = arg(&args, "--members").unwrap_or(2).max(1) as usize;
    opts.duration = Duration::from_secs(arg(&args, "--secs").unwrap_or(5));
    if chaos {
        opts.chaos_cycles = arg(&args, "--cycles").unwrap_or(5) as u32;
    }
    if args.iter().any(|a| a == "--production-policy") {
        opts.routing = RoutingConfig::default();
    }
    println!(
        "root + hub + {} members on 127.0.0.1, seed {}, {}",
        opts.members,
        opts.seed,
        if chaos {
            format!("{} chaos cycles", opts.chaos_cycles)
        } else {
            format!("{:?} without chaos", opts.duration)
        }
    );
    let report = hub_root_member(opts, |line| println!("{line}")).await?;
    println!("{}", serde_json::to_string(&report)?);
    if report.lost != 0 || report.duplicates_applied != 0 || report.returns_inside_freeze != 0 {
        std::process::exit(1);
    }
    Ok(())
}

//! The `interlocking` command-line tool.
//!
//! Owns operator-facing commands only; every behaviour it shows comes from
//! the library. Today: print the default routing policies (what a node does
//! unless configured otherwise), as a table or as JSON to start a config from.

use clap::{Parser, Subcommand};
use interlocking::routing::RoutingConfig;
use interlocking::vocab::ChannelKind;

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
    /// Print the default routing policy of every channel kind.
    Policies {
        /// Print JSON (a starting point for a configuration) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Command::Policies { json } => {
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
        }
    }
    Ok(())
}

//! The main example: a hub and a member with two paths — `quic` preferred,
//! `relay` as fallback — on the in-memory network, in virtual time. A seeded
//! chaos schedule partitions the direct path several times; the routing
//! authority fails over to the relay, freezes, and returns to direct once
//! the freeze and the hold-down have passed.
//!
//! Run: `cargo run --example failover -- [--seed N] [--cycles N]`
//!
//! The member sends one class-A command every 10 ms of virtual time through
//! the pure outbox core (resend until acked; resend unacked on a route
//! change), on whatever path the authority told it to use. The hub dedupes
//! on `(stream, message_id)` and acks on the path the command came in on.
//! It prints each route decision, then one JSON line of figures, and exits
//! non-zero if a command was lost or applied twice.

use interlocking::actors::session::{Binding, DEFAULT_INBOX_CAPACITY, Permit, Side};
use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use interlocking::actors::node::NodeBuilder;
use interlocking::channels::{Check, Dedupe, DedupeConfig, Outbox, OutboxConfig};
use interlocking::routing::{Decision, Need, RoutingConfig, Rule};
use interlocking::transports::PeerAddr;
use interlocking::transports::memory::MemoryNetwork;
use interlocking::transports::probe::ProbeConfig;
use interlocking::vocab::{ChannelKind, NodeId, PathId, PathKind, Role, StreamId, TrafficClass};
use interlocking::wire::{Ack, Data, Frame};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

const TICK: Duration = Duration::from_millis(10);

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seed = arg("--seed", 2026);
    let cycles = arg("--cycles", 6).max(1);
    tokio::time::pause();
    let start = Instant::now();

    let probe = ProbeConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    };
    let routing = RoutingConfig::default();
    let net = MemoryNetwork::new(seed);
    net.record_trace(false);
    let node = |id: &str, role| {
        NodeBuilder::new(id, role)
            .routing(routing.clone())
            .memory(&net, PathKind::Quic, probe)
            .memory(&net, PathKind::Relay, probe)
    };
    let hub = node("hub", Role::Hub).spawn().await?;
    let member = node("member-1", Role::Member)
        .dial(PathKind::Quic, PeerAddr::node("hub"))
        .dial(PathKind::Relay, PeerAddr::node("hub"))
        .spawn()
        .await?;

    // The member's stream: told about route changes, never asking.
    let stream = StreamId::new("command:member-1/hub");
    let (route_tx, mut route_rx) = mpsc::unbounded_channel::<Decision>();
    member
        .register_stream(
            stream.clone(),
            Need::node(ChannelKind::Command, NodeId::new("hub")),
            move |u| {
                let _ = route_tx.send(u.decision);
            },
        )
        .await?;
    let (hub_in_tx, mut hub_in) = mpsc::unbounded_channel::<(PathId, Frame)>();
    hub.bind_stream(
        stream.clone(),
        Binding {
            peer: NodeId::new("member-1"),
            kind: ChannelKind::Command,
            side: Side::Receiver,
        },
        std::sync::Arc::new(move |p: &PathId, f: Frame, _permit: Permit| {
            let _ = hub_in_tx.send((p.clone(), f));
        }),
        DEFAULT_INBOX_CAPACITY,
        0,
    );
    let (mem_in_tx, mut mem_in) = mpsc::unbounded_channel::<(PathId, Frame)>();
    member.bind_stream(
        stream.clone(),
        Binding {
            peer: NodeId::new("hub"),
            kind: ChannelKind::Command,
            side: Side::Sender,
        },
        std::sync::Arc::new(move |p: &PathId, f: Frame, _permit: Permit| {
            let _ = mem_in_tx.send((p.clone(), f));
        }),
        DEFAULT_INBOX_CAPACITY,
        1,
    );

    // Chaos: per cycle, a quiet spell, then the direct path is cut for a
    // while, then healed; each cycle is long enough to return to direct.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut schedule = Vec::new();
    let mut t = Duration::from_secs(3);
    for _ in 0..cycles {
        let quiet = Duration::from_millis(rng.random_range(2_000..6_000));
        let cut = Duration::from_millis(rng.random_range(1_000..4_000));
        schedule.push((t + quiet, t + quiet + cut));
        t += quiet
            + cut
            + routing.command.freeze
            + routing.command.hold_down
            + Duration::from_secs(3);
    }
    let sending_until = t;
    let end = t + Duration::from_secs(10);

    let mut outbox = Outbox::new(stream.clone(), OutboxConfig::default().max_in_flight(4096));
    let mut dedupe = Dedupe::new(DedupeConfig::default());
    let mut current: Option<PathId> = None;
    let mut applied: BTreeSet<u64> = BTreeSet::new();
    let (mut sent, mut duplicates_applied, mut switches) = (0u64, 0u64, 0u64);
    let mut failover_ms: Vec<u128> = Vec::new();
    let mut returns_inside_freeze = 0u64;
    let mut relay_since: Option<Instant> = None;
    let mut time_on_relay = Duration::ZERO;
    let mut freeze_until: Option<std::time::Instant> = None;
    let mut next_cut = 0usize;
    let (hub_id, member_id) = (NodeId::new("hub"), NodeId::new("member-1"));

    let send = |path: &Option<PathId>, message_id: u64, seq: u64| {
        if let Some(path) = path {
            let frame = Frame::Data(Data {
                stream: stream.clone(),
                incarnation: 1,
                seq,
                message_id,
                class: TrafficClass::Control.code(),
                delivery: 0,
                payload: Bytes::copy_from_slice(&message_id.to_be_bytes()),
            });
            // A refused send stays in the outbox and is resent later.
            let _ = member.send(path, frame);
        }
    };

    println!("seed {seed}: {cycles} chaos cycles on the direct path, one command per 10 ms");
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        if elapsed >= end {
            break;
        }
        // Chaos schedule.
        if let Some(&(cut_at, heal_at)) = schedule.get(next_cut / 2) {
            if next_cut % 2 == 0 && elapsed >= cut_at {
                println!(
                    "{:>9.3}s  chaos: direct path blackholed",
                    elapsed.as_secs_f64()
                );
                net.partition(PathKind::Quic, &hub_id, &member_id);
                next_cut += 1;
            } else if next_cut % 2 == 1 && elapsed >= heal_at {
                println!(
                    "{:>9.3}s  chaos: direct path restored",
                    elapsed.as_secs_f64()
                );
                net.heal(PathKind::Quic, &hub_id, &member_id);
                next_cut += 1;
            }
        }
        // Route changes.
        while let Ok(d) = route_rx.try_recv() {
            println!("{:>9.3}s  {d}", elapsed.as_secs_f64());
            if d.next != current {
                if current.is_some() && d.next.is_some() {
                    switches += 1;
                }
                if d.rule == Rule::ReturnToPreferred && freeze_until.is_some_and(|f| d.at < f) {
                    returns_inside_freeze += 1;
                }
                if d.rule == Rule::Failover
                    && let Some(&(cut_at, _)) = schedule.get((next_cut.max(1) - 1) / 2)
                {
                    failover_ms.push((elapsed.saturating_sub(cut_at)).as_millis());
                }
                if let Some(since) = relay_since.take() {
                    time_on_relay += now - since;
                }
                if d.next.as_ref().is_some_and(|p| p.kind == PathKind::Relay) {
                    relay_since = Some(now);
                }
                current = d.next.clone();
                freeze_until = d.freeze_until;
                for t in outbox.on_route_change(now.into_std()).transmits {
                    send(&current, t.message_id, t.seq);
                }
            }
        }
        // The application issues a command.
        if elapsed < sending_until {
            sent += 1;
            outbox.push(sent, sent, TrafficClass::Control.code(), true);
        }
        for t in outbox.poll_send(now.into_std()) {
            send(&current, t.message_id, t.seq);
        }
        for t in outbox.poll_resend(now.into_std()) {
            send(&current, t.message_id, t.seq);
        }
        // The hub applies each command once and acks on the arrival path.
        while let Ok((path, frame)) = hub_in.try_recv() {
            let Frame::Data(d) = frame else { continue };
            if let Check::New = dedupe.check(&d.stream, d.message_id) {
                if !applied.insert(d.message_id) {
                    duplicates_applied += 1;
                }
                dedupe.record(&d.stream, d.message_id, Vec::new(), now.into_std());
            }
            let ack = Frame::Ack(Ack {
                stream: d.stream,
                incarnation: d.incarnation,
                seq: d.seq,
                message_id: d.message_id,
                credit: 64,
            });
            let _ = hub.send(&path, ack);
        }
        while let Ok((_, frame)) = mem_in.try_recv() {
            if let Frame::Ack(a) = frame {
                outbox.on_ack(a.message_id);
            }
        }
        tokio::time::sleep(TICK).await;
    }
    if let Some(since) = relay_since {
        time_on_relay += Instant::now() - since;
    }
    let lost = sent - applied.len() as u64;
    failover_ms.sort_unstable();
    let summary = serde_json::json!({
        "seed": seed,
        "chaos_cycles": cycles,
        "commands_sent": sent,
        "commands_applied": applied.len(),
        "lost": lost,
        "duplicates_applied": duplicates_applied,
        "unacked_at_end": outbox.len(),
        "path_switches": switches,
        "failover_ms": { "p50": percentile(&failover_ms, 0.5), "p99": percentile(&failover_ms, 0.99) },
        "returns_inside_freeze": returns_inside_freeze,
        "time_on_relay_ms": time_on_relay.as_millis(),
        "virtual_seconds": (Instant::now() - start).as_secs(),
    });
    member.shutdown().await;
    hub.shutdown().await;
    println!("{summary}");
    if lost != 0 || duplicates_applied != 0 || returns_inside_freeze != 0 {
        std::process::exit(1);
    }
    Ok(())
}

//! Two nodes exchange frames over the in-memory transport while a seeded
//! fault schedule degrades, partitions, flaps and heals their link.
//!
//! Run: `cargo run --example memory_faults -- [seed]`
//!
//! It prints, phase by phase, how many frames were sent, delivered, lost,
//! duplicated or blackholed, and the liveness facts (probe answers and
//! misses) the sender's transport reported — the raw material the routing
//! authority decides on. The same seed prints the same report.

use std::time::Duration;

use bytes::Bytes;
use interlocking::transports::memory::{
    FlapSchedule, LinkFaults, MemoryNetwork, Outcome, TraceEntry,
};
use interlocking::transports::probe::ProbeConfig;
use interlocking::transports::{Fact, PeerAddr, Transport, TransportEvent};
use interlocking::vocab::{NodeId, PathKind, StreamId, TrafficClass};
use interlocking::wire::{Data, Frame, FrameKind};
use tokio::sync::mpsc;

struct Phase {
    name: &'static str,
    apply: fn(&MemoryNetwork, &NodeId, &NodeId),
}

const PHASES: &[Phase] = &[
    Phase {
        name: "clean",
        apply: |_, _, _| {},
    },
    Phase {
        name: "lossy (20% loss, 5% dup, reorder)",
        apply: |net, a, b| {
            net.set_faults_both(
                PathKind::Quic,
                a,
                b,
                LinkFaults {
                    latency: Duration::from_millis(5),
                    jitter: Duration::from_millis(5),
                    loss: 0.2,
                    duplicate: 0.05,
                    reorder: 0.1,
                    reorder_delay: Duration::from_millis(20),
                },
            )
        },
    },
    Phase {
        name: "partitioned",
        apply: |net, a, b| net.partition(PathKind::Quic, a, b),
    },
    Phase {
        name: "healed, flapping 300ms up / 200ms down",
        apply: |net, a, b| {
            net.heal(PathKind::Quic, a, b);
            net.set_faults_both(PathKind::Quic, a, b, LinkFaults::default());
            net.set_flap(
                PathKind::Quic,
                a,
                b,
                Some(FlapSchedule {
                    start: tokio::time::Instant::now(),
                    up: Duration::from_millis(300),
                    down: Duration::from_millis(200),
                }),
            );
        },
    },
    Phase {
        name: "stable again",
        apply: |net, a, b| net.set_flap(PathKind::Quic, a, b, None),
    },
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seed: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(7);
    // Virtual time: the whole schedule runs in milliseconds of wall time.
    tokio::time::pause();
    let net = MemoryNetwork::new(seed);
    let probe = ProbeConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    };
    let (a_id, b_id) = (NodeId::new("hub"), NodeId::new("member-1"));
    let (atx, mut arx) = mpsc::channel::<TransportEvent>(65536);
    let (btx, mut brx) = mpsc::channel::<TransportEvent>(65536);
    let a = net.bind(a_id.clone(), PathKind::Quic, atx, probe);
    let _b = net.bind(b_id.clone(), PathKind::Quic, btx, probe);
    a.connect(&PeerAddr::node(b_id.clone())).await?;

    println!("seed {seed}: hub -> member-1 over memory 'quic', 200 frames per 2 s phase");
    println!(
        "{:<40} {:>5} {:>9} {:>5} {:>5} {:>10} {:>8} {:>7}",
        "phase", "sent", "delivered", "lost", "dup", "blackholed", "answers", "misses"
    );
    let stream = StreamId::new("command:hub/member-1");
    let mut seq = 0u64;
    let mut trace_seen = 0usize;
    for phase in PHASES {
        (phase.apply)(&net, &a_id, &b_id);
        let mut delivered = 0usize;
        let (mut answers, mut misses) = (0usize, 0usize);
        for _ in 0..200 {
            seq += 1;
            let frame = Frame::Data(Data {
                stream: stream.clone(),
                incarnation: 1,
                seq,
                message_id: seq,
                class: TrafficClass::Control.code(),
                delivery: 0,
                payload: Bytes::from_static(b"switch points to route 4"),
            });
            a.send(&b_id, frame)?;
            tokio::time::sleep(Duration::from_millis(10)).await;
            while let Ok(ev) = brx.try_recv() {
                if matches!(ev.fact, Fact::Frame(Frame::Data(_))) {
                    delivered += 1;
                }
            }
            while let Ok(ev) = arx.try_recv() {
                match ev.fact {
                    Fact::ProbeAnswered { .. } => answers += 1,
                    Fact::ProbeMissed => misses += 1,
                    _ => {}
                }
            }
        }
        let trace = net.trace();
        let data: Vec<&TraceEntry> = trace[trace_seen..]
            .iter()
            .filter(|t| t.from == a_id && t.frame == FrameKind::Data)
            .collect();
        trace_seen = trace.len();
        let count = |o: fn(&Outcome) -> bool| {
            data.iter()
                .map(|t| t.outcomes.iter().filter(|x| o(x)).count())
                .sum::<usize>()
        };
        println!(
            "{:<40} {:>5} {:>9} {:>5} {:>5} {:>10} {:>8} {:>7}",
            phase.name,
            data.len(),
            delivered,
            count(|o| matches!(o, Outcome::Lost)),
            data.iter().filter(|t| t.outcomes.len() == 2).count(),
            count(|o| matches!(o, Outcome::Blackholed)),
            answers,
            misses,
        );
    }
    a.shutdown().await;
    Ok(())
}

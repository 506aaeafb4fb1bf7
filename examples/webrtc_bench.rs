//! Figures of the WebRTC transport, measured in one run on loopback:
//!
//! 1. **Set-up**: Rust↔Rust, from `connect` to every data channel open
//!    (offer, answer and trickled candidates through a real root).
//! 2. **RTT**: one 256 B data frame at a time, echoed by the peer, over
//!    `webrtc-data` against raw quinn echoing the same frames (the crate's
//!    codec on one bidirectional stream, mutual TLS) in the same round.
//! 3. **Frames/s**: the same frames with 64 outstanding for `--secs`.
//! 4. **Recovery from a killed peer**: the peer's transport is dropped with
//!    its sockets blackholed (no close reaches anyone), a fresh one with
//!    the same id starts and dials back: time from the kill until the
//!    survivor reports the path up again.
//!
//! Run: `cargo run --release --example webrtc_bench -- [--rounds N] [--secs S]`.
//! Each figure is the median of `--rounds` rounds (default 5) with the
//! min–max spread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use interlocking::root::{Root, RootConfig, RootHandle, join};
use interlocking::transports::probe::ProbeConfig;
use interlocking::transports::quic::QuicConfig;
use interlocking::transports::relay::{RelayConfig, RelayTransport};
use interlocking::transports::webrtc::{IceConfig, WebrtcConfig, WebrtcFaults, WebrtcTransport};
use interlocking::transports::{Fact, PeerAddr, Transport, TransportEvent};
use interlocking::trust::{self, CertificateAuthority};
use interlocking::vocab::{NodeId, Role, StreamId};
use interlocking::wire::{CodecConfig, Data, Frame, FrameDecoder, read_frame, write_frame_buf};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WINDOW: usize = 64;

fn frame(seq: u64) -> Frame {
    Frame::Data(Data {
        stream: StreamId::new("command:a/b"),
        incarnation: 1,
        delivery: 2,
        seq,
        message_id: seq,
        class: 0,
        payload: Bytes::from(vec![7u8; 256]),
    })
}

/// The next event, or an error after 10 s (a lost frame must not hang the
/// bench).
async fn next(rx: &mut mpsc::Receiver<TransportEvent>) -> Result<TransportEvent, BoxError> {
    Ok(tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .map_err(|_| "no event within 10 s")?
        .ok_or("closed")?)
}

fn seq_of(ev: &TransportEvent) -> Option<u64> {
    match &ev.fact {
        Fact::Frame(Frame::Data(d)) => Some(d.seq),
        _ => None,
    }
}

struct Side {
    relay: Arc<RelayTransport>,
    t: Arc<WebrtcTransport>,
    rx: mpsc::Receiver<TransportEvent>,
}

fn config(name: &str, faults: Option<WebrtcFaults>) -> WebrtcConfig {
    let mut c = WebrtcConfig::new(name);
    c.probe = ProbeConfig {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(600),
    };
    c.ice = IceConfig {
        disconnected_timeout: Duration::from_millis(800),
        failed_timeout: Duration::from_secs(3),
        keepalive: Duration::from_millis(200),
        restarts: 3,
        restart_timeout: Duration::from_secs(1),
    };
    c.faults = faults;
    c
}

async fn side(
    root: &RootHandle,
    name: &str,
    faults: Option<WebrtcFaults>,
) -> Result<Side, BoxError> {
    let id = NodeId::new(name);
    let token = root.issue_token(&id, Role::Member, None)?.to_string();
    let j = join(
        root.join_addr(),
        root.node(),
        &token,
        &id,
        Role::Member,
        Duration::from_secs(10),
    )
    .await?;
    let (tx, mut relay_rx) = mpsc::channel(4096);
    let relay = RelayTransport::bind(
        RelayConfig::new(QuicConfig::new(j.identity, j.roots), root.peer_addr()),
        tx,
    )?;
    tokio::spawn(async move { while relay_rx.recv().await.is_some() {} });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !root.online().contains(&id) {
        if Instant::now() > deadline {
            return Err(format!("{name} never came online at the root").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (tx, rx) = mpsc::channel(65536);
    let t = WebrtcTransport::bind(config(name, faults), relay.clone(), tx);
    Ok(Side { relay, t, rx })
}

/// Echoes every data frame `b` receives back to its sender.
fn echo(mut rx: mpsc::Receiver<TransportEvent>, t: Arc<WebrtcTransport>) {
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if let Fact::Frame(f @ Frame::Data(_)) = ev.fact {
                let _ = t.send(&ev.path.peer, f);
            }
        }
    });
}

async fn wait_up(rx: &mut mpsc::Receiver<TransportEvent>, limit: Duration) -> Result<(), BoxError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await?
            .ok_or("closed")?;
        if matches!(ev.fact, Fact::Up) {
            return Ok(());
        }
    }
}

// ------------------------------------------------------------ raw quinn echo

struct Raw {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    _conn: quinn::Connection,
    _eps: (quinn::Endpoint, quinn::Endpoint),
}

async fn raw(ca: &CertificateAuthority) -> Result<Raw, BoxError> {
    let sid = NodeId::new("raw-b");
    let s = ca.issue_node(&sid, Role::Hub)?;
    let c = ca.issue_node(&NodeId::new("raw-a"), Role::Member)?;
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(
            trust::server_config(&s, &ca.roots())?,
        )?)),
        "127.0.0.1:0".parse()?,
    )?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(trust::client_config(&c, &ca.roots())?)?,
    )));
    let accept = server.clone();
    tokio::spawn(async move {
        let Some(inc) = accept.accept().await else {
            return;
        };
        let Ok(conn) = inc.await else { return };
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            tokio::spawn(async move {
                let mut dec = FrameDecoder::new(CodecConfig::default());
                let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
                while let Ok(Some(f)) = read_frame(&mut recv, &mut buf, &mut dec).await {
                    if write_frame_buf(&mut send, &f, &mut out, &CodecConfig::default())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let conn = client
        .connect(server.local_addr()?, &trust::server_name(&sid))?
        .await?;
    let (send, recv) = conn.open_bi().await?;
    Ok(Raw {
        send,
        recv,
        _conn: conn,
        _eps: (server, client),
    })
}

// ------------------------------------------------------------ measurements

fn spread(name: &str, unit: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = v[v.len() / 2];
    println!(
        "{name:<34} {med:>10.2} {unit}  [{:.2}–{:.2}]  (n={})",
        v[0],
        v[v.len() - 1],
        v.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str, d: u64| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rounds = arg("--rounds", 5) as usize;
    let secs = Duration::from_secs(arg("--secs", 2));
    trust::ensure_crypto_provider();
    let root = Root::spawn(RootConfig::default()).await?;
    let ca = CertificateAuthority::generate("bench-ca")?;
    let (mut setup, mut rtc_rtt, mut raw_rtt, mut rtc_fps, mut raw_fps, mut recover) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let a_name = format!("a{round}");
        let b_name = format!("b{round}");
        let mut a = side(&root, &a_name, None).await?;
        let b_faults = WebrtcFaults::new();
        let b = side(&root, &b_name, Some(b_faults.clone())).await?;
        let b_id = NodeId::new(&b_name);
        let t0 = Instant::now();
        a.t.connect(&PeerAddr::node(b_id.clone())).await?;
        setup.push(t0.elapsed().as_secs_f64() * 1e3);
        wait_up(&mut a.rx, Duration::from_secs(10)).await?;
        let Side {
            relay: b_relay,
            t: bt,
            rx: b_rx,
        } = b;
        echo(b_rx, bt.clone());

        // RTT: one at a time, webrtc then raw quinn.
        let n = 2_000u64;
        let t0 = Instant::now();
        for seq in 0..n {
            a.t.send(&b_id, frame(seq)).map_err(|e| e.to_string())?;
            loop {
                let ev = next(&mut a.rx).await?;
                if seq_of(&ev) == Some(seq) {
                    break;
                }
            }
        }
        rtc_rtt.push(t0.elapsed().as_secs_f64() * 1e6 / n as f64);
        let mut r = raw(&ca).await?;
        let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
        let mut dec = FrameDecoder::new(CodecConfig::default());
        let t0 = Instant::now();
        for seq in 0..n {
            write_frame_buf(&mut r.send, &frame(seq), &mut out, &CodecConfig::default()).await?;
            read_frame(&mut r.recv, &mut buf, &mut dec).await?;
        }
        raw_rtt.push(t0.elapsed().as_secs_f64() * 1e6 / n as f64);

        // Frames/s with WINDOW outstanding.
        let (mut sent, mut got) = (0u64, 0u64);
        let end = Instant::now() + secs;
        let t0 = Instant::now();
        while Instant::now() < end {
            while sent - got < WINDOW as u64 {
                if a.t.send(&b_id, frame(n + sent)).is_err() {
                    break;
                }
                sent += 1;
            }
            let ev = next(&mut a.rx).await?;
            if seq_of(&ev).is_some() {
                got += 1;
            }
        }
        rtc_fps.push(got as f64 / t0.elapsed().as_secs_f64());
        // Drain the rest of the window before the next phase.
        while got < sent {
            let ev = next(&mut a.rx).await?;
            if seq_of(&ev).is_some() {
                got += 1;
            }
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(WINDOW));
        let (mut rs, mut rr) = (r.send, r.recv);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (permits, stop) = (permits.clone(), stop.clone());
            tokio::spawn(async move {
                let mut out = BytesMut::new();
                let mut seq = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(p) = permits.acquire().await else {
                        break;
                    };
                    p.forget();
                    if write_frame_buf(&mut rs, &frame(seq), &mut out, &CodecConfig::default())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    seq += 1;
                }
                seq
            })
        };
        let mut got = 0u64;
        let t0 = Instant::now();
        while t0.elapsed() < secs {
            read_frame(&mut rr, &mut buf, &mut dec).await?;
            got += 1;
            permits.add_permits(1);
        }
        raw_fps.push(got as f64 / t0.elapsed().as_secs_f64());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        permits.add_permits(WINDOW);
        let written = writer.await?;
        while got < written {
            read_frame(&mut rr, &mut buf, &mut dec).await?;
            got += 1;
        }

        // Recovery: b killed (sockets dark, transport dropped without a
        // close), a fresh b dials back.
        b_faults.set_blackhole(true);
        let kill = Instant::now();
        bt.shutdown().await;
        drop(bt);
        let (tx, b2_rx) = mpsc::channel(65536);
        let b2 = WebrtcTransport::bind(config(&b_name, None), b_relay.clone(), tx);
        b2.connect(&PeerAddr::node(a_name.as_str())).await?;
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(30), a.rx.recv())
                .await?
                .ok_or("closed")?;
            if matches!(ev.fact, Fact::Up) {
                break;
            }
        }
        recover.push(kill.elapsed().as_secs_f64() * 1e3);
        eprintln!(
            "round {round}: setup {:.1} ms, rtt {:.0}/{:.0} us, fps {:.0}/{:.0}, recover {:.0} ms",
            setup[round],
            rtc_rtt[round],
            raw_rtt[round],
            rtc_fps[round],
            raw_fps[round],
            recover[round]
        );
        drop(b2_rx);
        b2.shutdown().await;
        a.t.shutdown().await;
        a.relay.shutdown().await;
        b_relay.shutdown().await;
    }
    spread("setup Rust<->Rust (ms)", "ms", setup);
    spread("rtt webrtc-data (us)", "us", rtc_rtt);
    spread("rtt raw quinn (us)", "us", raw_rtt);
    spread("frames/s webrtc-data (w=64)", "/s", rtc_fps);
    spread("frames/s raw quinn (w=64)", "/s", raw_fps);
    spread("recover from killed peer (ms)", "ms", recover);
    root.shutdown().await;
    Ok(())
}

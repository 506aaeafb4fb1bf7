//! One frame per answer: a real command server on loopback QUIC, driven by
//! a bare quinn client speaking as the bound member, answers every command
//! of a burst with its reply and covers the burst with a few wire `Ack`s
//! (the first answer's, then one per `ack_every` answers or credit move),
//! not one each; with `ack_every(1)` every answer is acked, as before.
//! Every wait is bounded.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use interlocking::actors::node::NodeBuilder;
use interlocking::channels::CommandChannel;
use interlocking::channels::command::{Envelope, EnvelopeKind, ReplyBody, ServeConfig};
use interlocking::store::MemStore;
use interlocking::transports::quic::QuicConfig;
use interlocking::trust;
use interlocking::vocab::{NodeId, PathKind, Role, StreamId, TrafficClass};
use interlocking::wire::{CodecConfig, Data, Frame, FrameDecoder, Hello, encode, read_frame};

/// Bound of every wait.
const LIMIT: Duration = Duration::from_secs(20);
/// Commands in the burst.
const BURST: u64 = 200;
const STREAM: &str = "command:m1/hub";

/// Answers every command with its length.
struct Len;

#[async_trait::async_trait]
impl interlocking::channels::CommandHandler for Len {
    type Command = String;
    type Reply = u64;
    async fn handle(&self, cmd: String) -> Result<u64, String> {
        Ok(cmd.len() as u64)
    }
}

/// The ordered class-A command `seq` (message id = seq), as a sender
/// would put it on the wire.
fn command(seq: u64) -> Frame {
    let env = Envelope {
        kind: EnvelopeKind::Command,
        message_id: seq,
        stream_id: StreamId::new(STREAM),
        issued_at_ms: 0,
        ttl_ms: 0,
        authority_epoch: 0,
        operation_key: None,
        body: rmp_serde::to_vec(&"x".repeat(seq as usize % 7)).unwrap(),
    };
    Frame::Data(Data {
        stream: StreamId::new(STREAM),
        incarnation: 1,
        seq,
        message_id: seq,
        class: TrafficClass::Control.code(),
        delivery: 0,
        payload: Bytes::from(env.encode()),
    })
}

/// Replies and acks a real server sent for a burst of `BURST` commands.
struct Seen {
    replies: HashSet<u64>,
    acks: u64,
}

async fn burst(config: ServeConfig) -> Seen {
    let ca = trust::CertificateAuthority::generate("ca").unwrap();
    let ident = ca.issue_node(&NodeId::new("hub"), Role::Hub).unwrap();
    let hub = NodeBuilder::new("hub", Role::Hub)
        .quic(QuicConfig::new(ident, ca.roots()))
        .spawn()
        .await
        .unwrap();
    CommandChannel::serve(
        &hub,
        StreamId::new(STREAM),
        NodeId::new("m1"),
        Len,
        Arc::new(MemStore::new()),
        config,
    )
    .await
    .unwrap();
    let member = ca.issue_node(&NodeId::new("m1"), Role::Member).unwrap();
    let tls = trust::client_config(&member, &ca.roots()).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let addr = hub.listen_addr(PathKind::Quic).unwrap();
    let conn = tokio::time::timeout(
        LIMIT,
        ep.connect(addr, &trust::server_name(&NodeId::new("hub")))
            .unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    // The whole burst in one write, behind the member's hello.
    let cfg = CodecConfig::default();
    let mut out = BytesMut::new();
    let hello = Frame::Hello(Hello {
        node: NodeId::new("m1"),
        role: Role::Member,
        features: 0,
        token: None,
    });
    encode(&hello, &mut out, &cfg).unwrap();
    for seq in 1..=BURST {
        encode(&command(seq), &mut out, &cfg).unwrap();
    }
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&out).await.unwrap();
    // Every frame the hub sends, from every stream it opens.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let accept = conn.clone();
    tokio::spawn(async move {
        while let Ok(mut recv) = accept.accept_uni().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut buf, mut dec) = (BytesMut::new(), FrameDecoder::default());
                while let Ok(Some(f)) = read_frame(&mut recv, &mut buf, &mut dec).await {
                    let _ = tx.send(f);
                }
            });
        }
    });
    let mut seen = Seen {
        replies: HashSet::new(),
        acks: 0,
    };
    // Bounded: at most two frames per command plus the hub's own.
    for _ in 0..(BURST * 2 + 16) {
        if seen.replies.len() as u64 == BURST {
            break;
        }
        let frame = tokio::time::timeout(LIMIT, rx.recv())
            .await
            .expect("a frame in time")
            .expect("the connection is open");
        match frame {
            Frame::Ack(a) => {
                assert!(a.credit > 0, "an ack advertises room: {a:?}");
                seen.acks += 1;
            }
            Frame::Data(d) => {
                let env = Envelope::decode(&d.payload).unwrap();
                assert_eq!(env.kind, EnvelopeKind::Reply);
                let body: ReplyBody = rmp_serde::from_slice(&env.body).unwrap();
                let ReplyBody::Ok(b) = body else {
                    panic!("command {} not applied: {body:?}", d.seq)
                };
                let len: u64 = rmp_serde::from_slice(&b).unwrap();
                assert_eq!(len, d.seq % 7, "the reply of command {}", d.seq);
                assert!(seen.replies.insert(d.message_id), "one reply each");
            }
            _ => {}
        }
    }
    conn.close(0u8.into(), b"done");
    hub.shutdown().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_answered_by_its_replies_and_a_few_acks() {
    // An inbox whose eighth (2048) exceeds the burst: however slowly the
    // handler runs on a loaded machine, the credit never moves enough to
    // force an ack of its own, so the bound below is exact.
    let config = ServeConfig::default()
        .ack_every(32)
        .inbox_capacity(16 * 1024);
    let seen = burst(config).await;
    assert_eq!(seen.replies.len() as u64, BURST, "every command answered");
    // The first answer's ack and one per 32 answers after it.
    assert!(seen.acks >= 1, "the first answer carries an ack");
    assert!(
        seen.acks <= 1 + BURST / 32,
        "{} acks for {BURST} answers: acks are not batched",
        seen.acks
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_every_one_acks_every_answer() {
    let seen = burst(ServeConfig::default().ack_every(1)).await;
    assert_eq!(seen.replies.len() as u64, BURST, "every command answered");
    // The last ack may still be in flight behind the last reply: the
    // replies and acks travel on different streams.
    assert!(
        seen.acks + 8 >= BURST,
        "{} acks for {BURST} answers with ack_every(1)",
        seen.acks
    );
}

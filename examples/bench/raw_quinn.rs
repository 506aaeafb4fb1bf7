//! The raw-quinn baselines: what a skilled quinn user writes for the same
//! job (the same frames and envelopes, the same window, coalesced writes).

#[allow(clippy::wildcard_imports)]
use super::*;

/// A raw quinn client connected to a raw quinn server that answers every
/// command frame with the reply frame a command server would send.
pub(crate) struct Raw {
    pub(crate) conn: quinn::Connection,
    pub(crate) _server: quinn::Endpoint,
    pub(crate) _client: quinn::Endpoint,
}

impl Raw {
    pub(crate) async fn start(ca: &CertificateAuthority) -> Result<Self, BoxError> {
        trust::ensure_crypto_provider();
        let server_id = NodeId::new("raw-hub");
        let sid = ca.issue_node(&server_id, Role::Hub)?;
        let cid = ca.issue_node(&NodeId::new("raw-m1"), Role::Member)?;
        let server_tls = trust::server_config(&sid, &ca.roots())?;
        let client_tls = trust::client_config(&cid, &ca.roots())?;
        let server_cfg =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(client_tls)?,
        )));
        let addr = server.local_addr()?;
        let accept = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(raw_serve(send, recv));
                    }
                });
            }
        });
        let conn = client
            .connect(addr, &trust::server_name(&server_id))?
            .await?;
        Ok(Self {
            conn,
            _server: server,
            _client: client,
        })
    }
}

/// The command frame a sender puts on the wire for `body`.
pub(crate) fn command_frame(stream: &StreamId, id: u64, body: &ByteBuf) -> Frame {
    let env = Envelope {
        kind: EnvelopeKind::Command,
        message_id: id,
        stream_id: stream.clone(),
        issued_at_ms: now_ms(),
        ttl_ms: 0,
        authority_epoch: 0,
        operation_key: None,
        body: rmp_serde::to_vec(body).unwrap_or_default(),
    };
    Frame::Data(Data {
        stream: stream.clone(),
        incarnation: 1,
        seq: 0,
        message_id: id,
        class: TrafficClass::Control.code(),
        delivery: 0,
        payload: Bytes::from(env.encode()),
    })
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The stream name that asks the raw server for the one-way ceiling mode.
pub(crate) const ONE_WAY: &str = "raw-one-way";

/// The raw server's answer to one data frame: request/reply answers a
/// command with its reply frame (`Some`); one-way only checks it (`None`).
/// Decodes like a command server either way (frame, envelope, command).
fn raw_answer(d: Data) -> Option<Frame> {
    let env = Envelope::decode(&d.payload).ok()?;
    let cmd = rmp_serde::from_slice::<ByteBuf>(&env.body).ok()?;
    if d.stream.as_str() == ONE_WAY {
        return None;
    }
    let body = ReplyBody::Ok(rmp_serde::to_vec(&(cmd.len() as u64)).unwrap_or_default());
    let reply = Envelope {
        kind: EnvelopeKind::Reply,
        message_id: env.message_id,
        stream_id: env.stream_id,
        issued_at_ms: now_ms(),
        ttl_ms: 0,
        authority_epoch: 0,
        operation_key: None,
        body: rmp_serde::to_vec(&body).unwrap_or_default(),
    };
    Some(Frame::Data(Data {
        stream: d.stream,
        incarnation: 1,
        seq: d.seq,
        message_id: d.message_id,
        class: d.class,
        delivery: 0,
        payload: Bytes::from(reply.encode()),
    }))
}

/// The raw server, written as a skilled quinn user would: every frame
/// already read is decoded and answered, the answers are encoded into one
/// reused buffer and handed to quinn in one write (no `write_all` per
/// frame). Request/reply answers each command with its reply frame; on
/// the [`ONE_WAY`] stream it sends one cumulative [`Ack`] per batch read
/// (the highest `seq` seen, the window as credit) instead.
pub(crate) async fn raw_serve(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let cfg = CodecConfig::default();
    let mut decoder = FrameDecoder::new(cfg);
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    'read: while let Ok(Some(first)) = read_frame(&mut recv, &mut buf, &mut decoder).await {
        let mut next = Some(first);
        let mut acked: Option<(StreamId, u64, u64)> = None;
        while let Some(frame) = next {
            if let Frame::Data(d) = frame {
                let (stream, seq, id) = (d.stream.clone(), d.seq, d.message_id);
                match raw_answer(d) {
                    Some(reply) => {
                        if encode(&reply, &mut out, &cfg).is_err() {
                            break 'read;
                        }
                    }
                    None => acked = Some((stream, seq, id)),
                }
            }
            next = match decoder.decode(&mut buf) {
                Ok(f) => f,
                Err(_) => break 'read,
            };
        }
        if let Some((stream, seq, message_id)) = acked {
            let ack = Frame::Ack(Ack {
                stream,
                incarnation: 1,
                seq,
                message_id,
                credit: WINDOW as u32,
            });
            if encode(&ack, &mut out, &cfg).is_err() {
                break;
            }
        }
        if !out.is_empty() && send.write_chunk(out.split().freeze()).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Decodes a reply frame down to the handler's answer, like a sender.
pub(crate) fn raw_reply(frame: Frame) -> Option<u64> {
    let Frame::Data(d) = frame else { return None };
    let env = Envelope::decode(&d.payload).ok()?;
    match rmp_serde::from_slice::<ReplyBody>(&env.body).ok()? {
        ReplyBody::Ok(b) => rmp_serde::from_slice(&b).ok(),
        _ => None,
    }
}

/// The client's write side: waits for one window slot, takes every other
/// free slot too, encodes that many command frames into one reused buffer
/// and hands them to quinn in one write.
async fn raw_writer(
    mut send: quinn::SendStream,
    stream: StreamId,
    size: usize,
    window: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
) {
    let body = ByteBuf::from(vec![0xAB; size]);
    let (cfg, mut out) = (CodecConfig::default(), BytesMut::new());
    let (mut id, mut seq) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let Ok(permit) = window.acquire().await else {
            break;
        };
        permit.forget();
        let mut n = 1;
        while let Ok(p) = window.try_acquire() {
            p.forget();
            n += 1;
        }
        for _ in 0..n {
            id += 1;
            seq += 1;
            let mut frame = command_frame(&stream, (1 << 63) | id, &body);
            if let Frame::Data(d) = &mut frame {
                d.seq = seq;
            }
            if encode(&frame, &mut out, &cfg).is_err() {
                return;
            }
        }
        if send.write_chunk(out.split().freeze()).await.is_err() {
            break;
        }
    }
    let _ = send.finish();
}

/// Request/reply throughput: `WINDOW` commands outstanding, each answered
/// by its reply frame; replies per second.
pub(crate) async fn raw_throughput(raw: &Raw, size: usize, secs: f64) -> Result<f64, BoxError> {
    let (send, mut recv) = raw.conn.open_bi().await?;
    let window = Arc::new(Semaphore::new(WINDOW));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(raw_writer(
        send,
        StreamId::new("raw"),
        size,
        window.clone(),
        stop.clone(),
    ));
    let reader = {
        let (window, done) = (window.clone(), done.clone());
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::new(CodecConfig::default());
            let mut buf = BytesMut::new();
            while let Ok(Some(frame)) = read_frame(&mut recv, &mut buf, &mut decoder).await {
                if raw_reply(frame).is_some() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                window.add_permits(1);
            }
        })
    };
    let rate = measure(&done, secs).await;
    stop.store(true, Ordering::Relaxed);
    window.close();
    writer.await?;
    reader.await?;
    Ok(rate)
}

/// The one-way framed-stream ceiling: the same command frames, `WINDOW`
/// outstanding, released by the server's cumulative acks (one per batch
/// it read) instead of one reply each; commands acknowledged per second.
pub(crate) async fn raw_one_way(raw: &Raw, size: usize, secs: f64) -> Result<f64, BoxError> {
    let (send, mut recv) = raw.conn.open_bi().await?;
    let window = Arc::new(Semaphore::new(WINDOW));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(raw_writer(
        send,
        StreamId::new(ONE_WAY),
        size,
        window.clone(),
        stop.clone(),
    ));
    let reader = {
        let (window, done) = (window.clone(), done.clone());
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::new(CodecConfig::default());
            let mut buf = BytesMut::new();
            let mut acked = 0u64;
            while let Ok(Some(frame)) = read_frame(&mut recv, &mut buf, &mut decoder).await {
                if let Frame::Ack(a) = frame
                    && a.seq > acked
                {
                    let n = a.seq - acked;
                    acked = a.seq;
                    done.fetch_add(n, Ordering::Relaxed);
                    window.add_permits(n as usize);
                }
            }
        })
    };
    let rate = measure(&done, secs).await;
    stop.store(true, Ordering::Relaxed);
    window.close();
    writer.await?;
    reader.await?;
    Ok(rate)
}

/// Counts `done` over `secs` after a 300 ms warm-up; per second.
async fn measure(done: &AtomicU64, secs: f64) -> f64 {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (c1, t1) = (done.load(Ordering::Relaxed), Instant::now());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

pub(crate) async fn raw_rtts(raw: &Raw) -> Result<Vec<f64>, BoxError> {
    let (mut send, mut recv) = raw.conn.open_bi().await?;
    let (stream, body) = (StreamId::new("raw"), ByteBuf::from(vec![0xAB; SMALL]));
    let cfg = CodecConfig::default();
    let mut decoder = FrameDecoder::new(cfg);
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    let mut rtts = Vec::with_capacity(PINGS);
    for i in 0..(PINGS + PINGS / 10) as u64 {
        let t0 = Instant::now();
        write_frame_buf(
            &mut send,
            &command_frame(&stream, (1 << 63) | i, &body),
            &mut out,
            &cfg,
        )
        .await?;
        let frame = read_frame(&mut recv, &mut buf, &mut decoder)
            .await?
            .ok_or("raw server closed")?;
        raw_reply(frame).ok_or("bad raw reply")?;
        if i >= (PINGS / 10) as u64 {
            rtts.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = send.finish();
    Ok(rtts)
}

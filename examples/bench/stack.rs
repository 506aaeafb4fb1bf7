//! The full stack under test: a hub and a member on loopback QUIC, the
//! command channel between them, and its throughput / RTT / durability runs.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Answers every command with its length.
pub(crate) struct Sink;

#[async_trait]
impl CommandHandler for Sink {
    type Command = ByteBuf;
    type Reply = u64;
    async fn handle(&self, cmd: ByteBuf) -> Result<u64, String> {
        Ok(cmd.len() as u64)
    }
}

pub(crate) fn class_c() -> SendOptions {
    SendOptions::class_c()
}

/// A hub and a member on loopback QUIC, the member dialling the hub.
pub(crate) struct Stack {
    pub(crate) hub: Node,
    pub(crate) member: Node,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) streams: AtomicU64,
}

impl Stack {
    pub(crate) async fn start(ca: &CertificateAuthority) -> Result<Self, BoxError> {
        let config = |node: &str, role| -> Result<QuicConfig, BoxError> {
            Ok(QuicConfig::new(
                ca.issue_node(&NodeId::new(node), role)?,
                ca.roots(),
            ))
        };
        let hub = NodeBuilder::new("hub", Role::Hub)
            .quic(config("hub", Role::Hub)?)
            .spawn()
            .await?;
        let addr = hub
            .listen_addr(PathKind::Quic)
            .ok_or("hub does not listen")?;
        let member = NodeBuilder::new("m1", Role::Member)
            .quic(config("m1", Role::Member)?)
            .dial(PathKind::Quic, PeerAddr::at("hub", addr))
            .spawn()
            .await?;
        Ok(Self {
            hub,
            member,
            dir: tempfile::tempdir()?,
            streams: AtomicU64::new(0),
        })
    }

    pub(crate) fn redb(&self, name: &str) -> Result<Arc<RedbStore>, BoxError> {
        let n = self.streams.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(RedbStore::open(
            self.dir.path().join(format!("{name}-{n}.redb")),
        )?))
    }

    /// A served stream and its sender; the hub persists with redb, the
    /// member with `member_store`. Returns once a command went through.
    pub(crate) async fn stream(
        &self,
        name: &str,
        member_store: Arc<dyn Store>,
        hub_store: Arc<dyn Store>,
    ) -> Result<Sender, BoxError> {
        self.stream_with(name, member_store, hub_store, ServeConfig::default())
            .await
    }

    /// [`Stack::stream`] with the server's config `serve`.
    pub(crate) async fn stream_with(
        &self,
        name: &str,
        member_store: Arc<dyn Store>,
        hub_store: Arc<dyn Store>,
        serve: ServeConfig,
    ) -> Result<Sender, BoxError> {
        let n = self.streams.fetch_add(1, Ordering::Relaxed);
        let stream = StreamId::new(format!("command:m1/hub/{name}-{n}"));
        CommandChannel::serve(
            &self.hub,
            stream.clone(),
            NodeId::new("m1"),
            Sink,
            hub_store,
            serve,
        )
        .await?;
        let sender: Sender = CommandChannel::spawn_sender(
            &self.member,
            stream,
            NodeId::new("hub"),
            member_store,
            SenderConfig::default(),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let probe = async {
                let r = sender.send(ByteBuf::from(vec![1]), class_c()).await?;
                r.reply().await
            };
            if let Ok(Ok(1)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
                return Ok(sender);
            }
            if Instant::now() > deadline {
                return Err("the stream never carried a command".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn shutdown(self) {
        self.member.shutdown().await;
        self.hub.shutdown().await;
    }
}

/// Runs `workers` copies of `work` until stopped, counting successes from
/// `warmup` on for `secs`; returns successes per second.
pub(crate) async fn closed_loop<F, Fut>(workers: usize, warmup: Duration, secs: f64, work: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (work, stop, done) = (work.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if work().await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(warmup).await;
    let (c0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (c1, t1) = (done.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

pub(crate) async fn stack_throughput(sender: &Sender, size: usize, secs: f64) -> f64 {
    let sender = sender.clone();
    let body = ByteBuf::from(vec![0xAB; size]);
    closed_loop(WINDOW, Duration::from_millis(300), secs, move || {
        let (sender, body) = (sender.clone(), body.clone());
        async move {
            match sender.send(body, class_c()).await {
                Ok(r) => r.reply().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

pub(crate) async fn stack_rtts(sender: &Sender) -> Vec<f64> {
    let body = ByteBuf::from(vec![0xAB; SMALL]);
    let mut rtts = Vec::with_capacity(PINGS);
    for i in 0..PINGS + PINGS / 10 {
        let t0 = Instant::now();
        let ok = match sender.send(body.clone(), class_c()).await {
            Ok(r) => r.reply().await.is_ok(),
            Err(_) => false,
        };
        if ok && i >= PINGS / 10 {
            rtts.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    rtts
}

/// Accepted class-A commands per second, and the mean group-commit batch.
pub(crate) async fn stack_durable(stack: &Stack, secs: f64) -> Result<(f64, f64), BoxError> {
    let store = stack.redb("durable")?;
    // The receiver keeps its dedupe in memory here so its own fsyncs do not
    // compete for the disk the sender's group commit is measured on.
    let sender = stack
        .stream("durable", store.clone(), Arc::new(MemStore::new()))
        .await?;
    let body = ByteBuf::from(vec![0xCD; SMALL]);
    let commits0 = store.durable_commits();
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    let rate = closed_loop(
        DURABLE_SENDERS,
        Duration::from_millis(300),
        secs,
        move || {
            let (sender, body, counted) = (sender.clone(), body.clone(), counted.clone());
            async move {
                let ok = sender.send(body, SendOptions::class_a()).await.is_ok();
                counted.fetch_add(u64::from(ok), Ordering::Relaxed);
                ok
            }
        },
    )
    .await;
    let commits = (store.durable_commits() - commits0).max(1);
    Ok((
        rate,
        accepted.load(Ordering::Relaxed) as f64 / commits as f64,
    ))
}

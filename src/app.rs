//! The library entry point a configuration file drives: an application's
//! `main` in a few lines.
//!
//! ```no_run
//! use interlocking::app::{App, handlers::Echo};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     App::load("node.toml")?
//!         .handler("echo", Echo)
//!         .run_until_signal()
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! Owns building a whole process from a [`Config`]: a root ([`Root`] with
//! its state directory), or a hub or member (credentials joined once and
//! kept, the node's redb store, QUIC and relay transports, dials, the
//! configured command channels with their named handlers), its control API
//! ([`crate::control`]), metrics, the decision log, and a graceful stop on
//! SIGTERM, Ctrl-C or `drain`. It adds no behaviour of its own to the
//! layers below.

pub mod handlers;
pub mod identity;
pub mod metered;
pub mod renewal;
pub mod runtime;
pub mod sidecar;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use crate::actors::node::NodeBuilder;
use crate::channels::SpawnError;
use crate::channels::command::{
    AtomicHandler, CommandChannel, CommandHandler, SenderConfig, ServeConfig, ServeHandle,
};
use crate::config::{ChannelRole, Config, ConfigError};
use crate::control::{ControlServer, metrics_handle};
use crate::root::{Root, RootConfig};
use crate::store::RedbStore;
use crate::sync::lock;
use crate::transports::quic::faults::FaultHandle;
use crate::transports::quic::{Backoff, QuicConfig, QuicTransport};
use crate::transports::relay::{RelayConfig, RelayTransport};
use crate::transports::sidecar::SidecarLinkConfig;
use crate::transports::{PeerAddr, Transport};
use crate::vocab::{NodeId, PathKind, Role, StreamId};
use handlers::{Echo, Kv};
use runtime::{DecisionLog, NodeParts, Runtime, SenderEntry, ServedEntry};

/// Why an application could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The configuration is wrong (names file, line and key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A part could not start.
    #[error("start failed: {0}")]
    Start(String),
}

/// Restart intensity of a sidecar child: 20 restarts within 60 s, backoff
/// 50 ms doubling to 2 s; past that the hub stops restarting it and reports
/// `escalated` (it keeps running on its other paths).
const SIDECAR_RESTARTS: crate::actors::restart::RestartPolicy =
    crate::actors::restart::RestartPolicy {
        max_restarts: 20,
        within: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_secs(2),
    };

fn start_err(e: impl std::fmt::Display) -> AppError {
    AppError::Start(e.to_string())
}

/// What a handler factory gets: the node's id and store.
pub struct HandlerContext {
    /// The serving node.
    pub node: NodeId,
    /// The node's redb store (for handler tables of their own).
    pub store: Arc<RedbStore>,
}

type ServeFuture<'a> = Pin<Box<dyn Future<Output = Result<Arc<ServeHandle>, String>> + Send + 'a>>;

/// Serves a stream with a registered handler.
trait Registered: Send + Sync {
    fn serve<'a>(
        &'a self,
        node: &'a crate::actors::node::Node,
        stream: StreamId,
        peer: NodeId,
        ctx: &'a HandlerContext,
        config: ServeConfig,
    ) -> ServeFuture<'a>;
}

struct Factory<F>(F);

/// An [`AtomicHandler`] factory.
struct AtomicFactory<F>(F);

impl<H, F> Registered for AtomicFactory<F>
where
    H: AtomicHandler,
    F: Fn(&HandlerContext) -> Result<H, String> + Send + Sync,
{
    fn serve<'a>(
        &'a self,
        node: &'a crate::actors::node::Node,
        stream: StreamId,
        peer: NodeId,
        ctx: &'a HandlerContext,
        config: ServeConfig,
    ) -> ServeFuture<'a> {
        Box::pin(async move {
            let handler = (self.0)(ctx)?;
            let store: Arc<dyn crate::store::Store> = ctx.store.clone();
            CommandChannel::serve_atomic(node, stream, peer, handler, store, config)
                .await
                .map_err(|e: SpawnError| e.to_string())
        })
    }
}

impl<H, F> Registered for Factory<F>
where
    H: CommandHandler,
    F: Fn(&HandlerContext) -> Result<H, String> + Send + Sync,
{
    fn serve<'a>(
        &'a self,
        node: &'a crate::actors::node::Node,
        stream: StreamId,
        peer: NodeId,
        ctx: &'a HandlerContext,
        config: ServeConfig,
    ) -> ServeFuture<'a> {
        Box::pin(async move {
            let handler = (self.0)(ctx)?;
            let store: Arc<dyn crate::store::Store> = ctx.store.clone();
            CommandChannel::serve(node, stream, peer, handler, store, config)
                .await
                .map_err(|e: SpawnError| e.to_string())
        })
    }
}

/// A process to be started from a configuration, with its handlers.
pub struct App {
    config: Config,
    handlers: BTreeMap<String, Box<dyn Registered>>,
    token: Option<String>,
    join_patience: Duration,
}

impl App {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AppError> {
        Ok(Self::new(Config::load(path)?))
    }

    /// An application for an already loaded configuration.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            handlers: BTreeMap::new(),
            token: None,
            join_patience: Duration::from_secs(30),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Registers `handler` under `name` (one clone per served stream).
    pub fn handler<H: CommandHandler + Clone>(self, name: &str, handler: H) -> Self {
        self.handler_with(name, move |_| Ok(handler.clone()))
    }

    /// Registers a handler built per served stream by `factory` (which may
    /// open tables in the node's store).
    pub fn handler_with<H, F>(mut self, name: &str, factory: F) -> Self
    where
        H: CommandHandler,
        F: Fn(&HandlerContext) -> Result<H, String> + Send + Sync + 'static,
    {
        self.handlers
            .insert(name.to_string(), Box::new(Factory(factory)));
        self
    }

    /// Registers an [`AtomicHandler`] built per served stream by `factory`:
    /// its writes commit with each command's dedupe record.
    pub fn atomic_handler_with<H, F>(mut self, name: &str, factory: F) -> Self
    where
        H: AtomicHandler,
        F: Fn(&HandlerContext) -> Result<H, String> + Send + Sync + 'static,
    {
        self.handlers
            .insert(name.to_string(), Box::new(AtomicFactory(factory)));
        self
    }

    /// Registers the built-in handlers: `echo` and `kv` (atomic).
    pub fn builtin_handlers(self) -> Self {
        self.handler("echo", Echo)
            .atomic_handler_with("kv", |ctx| Kv::open(ctx.store.clone()))
    }

    /// The join token for a first start (overrides `root.join_token`).
    pub fn join_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// How long a first start waits for an unreachable root (default 30 s).
    pub fn join_patience(mut self, patience: Duration) -> Self {
        self.join_patience = patience;
        self
    }

    /// Starts everything the configuration describes.
    pub async fn start(self) -> Result<Running, AppError> {
        crate::trust::ensure_crypto_provider();
        let started = std::time::Instant::now();
        // Handler names are checked before anything binds.
        for c in &self.config.channels {
            if let ChannelRole::Serve { handler, at, .. } = &c.role {
                if !self.handlers.contains_key(handler) {
                    let known: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
                    return Err(ConfigError::at(
                        at,
                        format!("unknown handler {handler:?} (known: {})", known.join(", ")),
                    )
                    .into());
                }
            }
        }
        let metrics = metrics_handle();
        let log = Arc::new(DecisionLog::new(self.config.diagnostics.decision_log));
        let role = match self.config.role {
            Role::Root => start_root(&self.config).await?,
            _ => runtime::Role::Node(self.start_node(&log).await?),
        };
        let runtime = Arc::new(Runtime::new(self.config.clone(), role, log, started));
        let control = match self.config.diagnostics.listen {
            Some(addr) => match ControlServer::start(addr, runtime.clone(), metrics).await {
                Ok(c) => Some(c),
                Err(e) => {
                    // Stop what already runs before reporting.
                    Running {
                        runtime,
                        control: None,
                    }
                    .shutdown()
                    .await;
                    return Err(start_err(format!("control API on {addr}: {e}")));
                }
            },
            None => None,
        };
        tracing::info!(
            node = %self.config.id,
            role = %self.config.role,
            control = ?control.as_ref().map(|c| c.local_addr()),
            "running"
        );
        Ok(Running { runtime, control })
    }

    async fn start_node(&self, log: &Arc<DecisionLog>) -> Result<NodeParts, AppError> {
        let cfg = &self.config;
        let creds = identity::credentials(cfg, self.token.as_deref(), self.join_patience)
            .await
            .map_err(AppError::Start)?;
        let root = cfg.root.as_ref().ok_or_else(|| start_err("no [root]"))?;
        let store = Arc::new(
            RedbStore::open(cfg.state_dir.join("node.redb"))
                .map_err(|e| start_err(format!("store: {e}")))?,
        );
        // The identity every transport (re)start presents: replaced by a
        // renewal (`renewal`), so a restarted transport never falls back to
        // the certificate the process started with.
        let current_identity = Arc::new(Mutex::new(creds.identity.clone()));
        let mut quic = QuicConfig::new(creds.identity.clone(), creds.roots.clone());
        quic.listen = cfg.listen_quic;
        quic.probe = cfg.transports.probe;
        quic.reconnect = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
        };
        cfg.limits.apply(&mut quic);
        let faults = cfg.transports.faults.map(|f| {
            let h = FaultHandle::new(f.seed);
            h.set_loss(f.loss);
            h.set_blackhole(f.blackhole);
            h
        });
        let routing = {
            let mut r = cfg.routing.clone();
            r.history = cfg.diagnostics.decision_log;
            if cfg.sidecar.is_some() {
                // The sidecar path takes the relay's place in every order:
                // it is the same way through the root, owned by the sidecar.
                for p in [
                    &mut r.command,
                    &mut r.sync,
                    &mut r.media,
                    &mut r.event,
                    &mut r.presence,
                ] {
                    for k in p.order.iter_mut() {
                        if *k == PathKind::Relay {
                            *k = PathKind::Sidecar;
                        }
                    }
                }
            }
            r
        };
        // A sidecar child starts first; the hub's link re-dials its socket
        // until it answers.
        let sidecar_parts = match &cfg.sidecar {
            Some(s) => Some(runtime::SidecarParts {
                dir: s.dir.clone(),
                diagnostics: Arc::default(),
                child: Mutex::new(match s.child {
                    true => Some(
                        sidecar::ChildSupervisor::start(cfg.path.clone(), SIDECAR_RESTARTS)
                            .map_err(start_err)?,
                    ),
                    false => None,
                }),
            }),
            None => None,
        };
        let mut builder = NodeBuilder::new(cfg.id.clone(), cfg.role).routing(routing);
        let quic_slot: Arc<Mutex<Option<Arc<QuicTransport>>>> = Arc::default();
        let relay_slot: Arc<Mutex<Option<Arc<RelayTransport>>>> = Arc::default();
        if cfg.transports.quic {
            let (config, faults, slot) = (quic.clone(), faults.clone(), quic_slot.clone());
            let identity = current_identity.clone();
            let bound: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::default();
            builder = builder.transport(PathKind::Quic, move |sink| {
                let mut config = config.clone();
                config.identity = lock(&identity).clone();
                if let Some(addr) = *lock(&bound) {
                    config.listen = addr;
                }
                let sink = metered::metered_sink(PathKind::Quic, sink);
                let result = match &faults {
                    Some(f) => QuicTransport::bind_with_faults(config, sink, f.clone()),
                    None => QuicTransport::bind(config, sink),
                };
                let result = result
                    .map(|t| {
                        *lock(&bound) = Some(t.local_addr());
                        *lock(&slot) = Some(t.clone());
                        metered::Metered::wrap(t as Arc<dyn Transport>)
                    })
                    .map_err(|e| e.to_string());
                async move { result }
            });
        }
        if cfg.transports.relay {
            // The relay link is a client of the root: an ephemeral port, not
            // the node's own QUIC listener.
            let mut link = quic.clone();
            link.listen = if root.addr.is_ipv4() {
                std::net::SocketAddr::from(([127, 0, 0, 1], 0))
            } else {
                std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
            };
            if !root.addr.ip().is_loopback() {
                link.listen.set_ip(if root.addr.is_ipv4() {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                });
            }
            let mut relay = RelayConfig::new(link, PeerAddr::at(root.id.clone(), root.addr));
            relay.probe = cfg.transports.probe;
            let slot = relay_slot.clone();
            if let Some(s) = &cfg.sidecar {
                let mut local = SidecarLinkConfig::new(cfg.id.clone(), root.id.clone(), &s.dir);
                local.probe = cfg.transports.probe;
                if let Some(parts) = &sidecar_parts {
                    local.diagnostics = parts.diagnostics.clone();
                }
                builder = builder.transport(PathKind::Sidecar, move |sink| {
                    let sink = metered::metered_sink(PathKind::Sidecar, sink);
                    let t = crate::transports::sidecar::bind(relay.clone(), local.clone(), sink);
                    *lock(&slot) = Some(t.clone());
                    let result: Result<_, String> =
                        Ok(metered::Metered::wrap(t as Arc<dyn Transport>));
                    async move { result }
                });
            } else {
                let identity = current_identity.clone();
                builder = builder.transport(PathKind::Relay, move |sink| {
                    let sink = metered::metered_sink(PathKind::Relay, sink);
                    let mut relay = relay.clone();
                    relay.quic.identity = lock(&identity).clone();
                    let result = RelayTransport::bind(relay, sink)
                        .map(|t| {
                            *lock(&slot) = Some(t.clone());
                            metered::Metered::wrap(t as Arc<dyn Transport>)
                        })
                        .map_err(|e| e.to_string());
                    async move { result }
                });
            }
        }
        let relay_kind = match cfg.sidecar {
            Some(_) => PathKind::Sidecar,
            None => PathKind::Relay,
        };
        for p in &cfg.peers {
            if let (Some(addr), true) = (p.quic, cfg.transports.quic) {
                builder = builder.dial(PathKind::Quic, PeerAddr::at(p.id.clone(), addr));
            }
            if p.relay && cfg.transports.relay {
                builder = builder.dial(relay_kind, PeerAddr::node(p.id.clone()));
            }
        }
        let node = builder.spawn().await.map_err(start_err)?;
        // The decision log and metrics, fed from every decision.
        {
            let mut rx = node.decisions();
            let log = log.clone();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(d) => {
                            let stream = d.stream.to_string();
                            metrics::counter!("interlocking_route_decisions_total", "rule" => d.rule.as_str())
                                .increment(1);
                            if d.is_switch() {
                                metrics::counter!("interlocking_path_switches_total", "stream" => stream.clone())
                                    .increment(1);
                            }
                            if d.rule == crate::routing::Rule::Failover {
                                metrics::counter!("interlocking_failovers_total", "stream" => stream)
                                    .increment(1);
                            }
                            log.push(&d);
                        }
                        Err(RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "decision log lagged");
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            });
        }
        let ctx = HandlerContext {
            node: cfg.id.clone(),
            store: store.clone(),
        };
        let serve_config = ServeConfig::default()
            .inbox_capacity(cfg.limits.inbox_capacity)
            .dedupe(cfg.limits.dedupe);
        let mut senders = BTreeMap::new();
        let mut served = BTreeMap::new();
        for c in &cfg.channels {
            match &c.role {
                ChannelRole::Serve { handler, peer, .. } => {
                    let h = self
                        .handlers
                        .get(handler)
                        .ok_or_else(|| start_err(format!("unknown handler {handler:?}")))?;
                    let handle = h
                        .serve(
                            &node,
                            c.stream.clone(),
                            peer.clone(),
                            &ctx,
                            serve_config.clone(),
                        )
                        .await
                        .map_err(|e| start_err(format!("serving {}: {e}", c.stream)))?;
                    served.insert(
                        c.stream.clone(),
                        ServedEntry {
                            handler: handler.clone(),
                            handle,
                        },
                    );
                }
                ChannelRole::Send { target } => {
                    let sender = CommandChannel::spawn_sender(
                        &node,
                        c.stream.clone(),
                        target.clone(),
                        store.clone(),
                        SenderConfig::default(),
                    )
                    .await
                    .map_err(|e| start_err(format!("sender of {}: {e}", c.stream)))?;
                    senders.insert(
                        c.stream.clone(),
                        SenderEntry {
                            target: target.clone(),
                            sender,
                        },
                    );
                }
            }
        }
        let revocations = tokio::spawn(renewal::watch_revocations(
            root.id.clone(),
            quic_slot.clone(),
            relay_slot.clone(),
        ));
        let cert_expires = Arc::new(Mutex::new(creds.expires_at));
        let renewal = tokio::spawn(
            renewal::Renewer {
                join: root.join,
                root: root.id.clone(),
                path: identity::identity_path(&cfg.state_dir),
                identity: current_identity,
                expires: cert_expires.clone(),
                quic: quic_slot.clone(),
                relay: relay_slot.clone(),
                policy: renewal::RenewPolicy::default(),
            }
            .run(),
        );
        Ok(NodeParts {
            node: Mutex::new(Some(node)),
            store,
            quic: quic_slot,
            relay: relay_slot,
            sidecar: sidecar_parts,
            faults,
            senders,
            served,
            cert_expires,
            renewal: renewal.abort_handle(),
            revocations: revocations.abort_handle(),
        })
    }
}

async fn start_root(cfg: &Config) -> Result<runtime::Role, AppError> {
    let mut root_cfg = RootConfig {
        node: cfg.id.clone(),
        listen: cfg.listen_quic,
        join_listen: cfg.listen_join,
        state_dir: Some(cfg.state_dir.clone()),
        probe: cfg.transports.probe,
        cluster: cfg.cluster.clone(),
        ..RootConfig::default()
    };
    cfg.limits.apply_root(&mut root_cfg);
    if let Some(d) = cfg.issuing.cert_lifetime {
        root_cfg.cert_lifetime = d;
    }
    if let Some(d) = cfg.issuing.token_ttl {
        root_cfg.token_ttl = d;
    }
    let root = Root::spawn(root_cfg).await.map_err(start_err)?;
    let fp = root.certificate_authority().fingerprint();
    tracing::info!(
        root = %cfg.id,
        addr = %root.local_addr(),
        join = %root.join_addr(),
        ca_fingerprint = %fp.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "root serving"
    );
    Ok(runtime::Role::Root(root))
}

/// A started process.
pub struct Running {
    runtime: Arc<Runtime>,
    control: Option<ControlServer>,
}

impl Running {
    /// The shared runtime (what the control API reads).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Where the control API listens, if configured.
    pub fn control_addr(&self) -> Option<std::net::SocketAddr> {
        self.control.as_ref().map(|c| c.local_addr())
    }

    /// Waits until a stop is requested (`drain`, or [`Runtime::request_stop`])
    /// or, if `signals`, SIGTERM or Ctrl-C arrives; then stops. Returns the
    /// reason.
    pub async fn wait(self, signals: bool) -> String {
        if signals {
            self.wait_for(shutdown_signal()).await
        } else {
            self.wait_for(std::future::pending()).await
        }
    }

    /// Waits until a stop is requested or `stop` resolves (e.g. a signal
    /// listener registered before the start), then stops. Returns the
    /// reason.
    pub async fn wait_for(self, stop: impl Future<Output = String>) -> String {
        let why = tokio::select! {
            why = self.runtime.stopped() => why,
            s = stop => s,
        };
        tracing::info!(reason = %why, "stopping");
        self.shutdown().await;
        why
    }

    /// Stops the control API, the node or root, and returns when stopped.
    pub async fn shutdown(self) {
        if let Some(c) = self.control {
            c.shutdown().await;
        }
        match &self.runtime.role {
            runtime::Role::Root(r) => r.shutdown().await,
            runtime::Role::Node(n) => {
                n.renewal.abort();
                n.revocations.abort();
                let node = lock(&n.node).take();
                if let Some(node) = node {
                    node.shutdown().await;
                }
                let child = n.sidecar.as_ref().and_then(|s| lock(&s.child).take());
                if let Some(child) = child {
                    child.stop().await;
                }
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT), naming which. The listeners
/// are registered when this is called, not when it is first polled, so a
/// signal arriving while the process is still starting is not lost.
pub fn shutdown_signal() -> impl Future<Output = String> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut t), Ok(mut i)) => tokio::select! {
                    _ = t.recv() => "SIGTERM".to_string(),
                    _ = i.recv() => "SIGINT".to_string(),
                },
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    "Ctrl-C".to_string()
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C".to_string()
        }
    }
}

impl App {
    /// Starts, then runs until SIGTERM, Ctrl-C or `drain`, then stops.
    pub async fn run_until_signal(self) -> Result<(), AppError> {
        let running = self.start().await?;
        running.wait(true).await;
        Ok(())
    }
}

//! The [`NodeBuilder`]: a node's identity, transports and policies, and
//! `spawn`, which starts the node's actor tree (supervisor, routing
//! authority, transport actors, event pump) from them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use ractor::Actor;
use tokio::sync::{broadcast, mpsc};

use super::{
    Dispatch, Env, Node, NodeError, Shared, TransportActor, TransportArgs, TransportSpec, pump,
};
use crate::actors::restart::RestartPolicy;
use crate::actors::supervisor::{ChildSpec, RestartMode, Supervisor, SupervisorArgs};
use crate::routing::RoutingConfig;
use crate::routing::authority::{AuthorityArgs, RoutingAuthority};
use crate::sync::lock;
use crate::transports::memory::MemoryNetwork;
use crate::transports::probe::ProbeConfig;
use crate::transports::quic::faults::FaultHandle;
use crate::transports::quic::{QuicConfig, QuicTransport};
use crate::transports::relay::{RelayConfig, RelayTransport};
use crate::transports::webrtc::{SignalSlot, WebrtcConfig, WebrtcHandle, WebrtcTransport};
use crate::transports::{EventSink, PeerAddr, Transport};
use crate::vocab::{NodeId, PathKind, Role};

/// Builds a node: its identity, its transports and its policies.
pub struct NodeBuilder {
    id: NodeId,
    role: Role,
    routing: RoutingConfig,
    restart: RestartPolicy,
    transports: Vec<TransportSpec>,
    dials: HashMap<PathKind, Vec<PeerAddr>>,
    event_queue: usize,
    /// The relay transport as the WebRTC transport's signalling link.
    signal: SignalSlot,
    /// The WebRTC transport bound now (for a page server).
    webrtc: WebrtcHandle,
}

impl NodeBuilder {
    /// A node named `id` playing `role`, with default policies.
    pub fn new(id: impl Into<NodeId>, role: Role) -> Self {
        Self {
            id: id.into(),
            role,
            routing: RoutingConfig::default(),
            restart: RestartPolicy::default(),
            transports: Vec::new(),
            dials: HashMap::new(),
            event_queue: 4096,
            signal: SignalSlot::new(),
            webrtc: WebrtcHandle::new(),
        }
    }

    /// Replaces the routing policies.
    pub fn routing(mut self, config: RoutingConfig) -> Self {
        self.routing = config;
        self
    }

    /// Replaces the restart policy of every supervisor in the tree.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Adds a transport of `kind`, bound by `bind` at start and at every
    /// restart of its actor.
    pub fn transport<F, Fut>(mut self, kind: PathKind, bind: F) -> Self
    where
        F: Fn(EventSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn Transport>, String>> + Send + 'static,
    {
        self.transports.push(TransportSpec {
            kind,
            bind: Arc::new(move |sink| Box::pin(bind(sink))),
        });
        self
    }

    /// Adds a memory transport of `kind` on `network`.
    pub fn memory(self, network: &MemoryNetwork, kind: PathKind, probe: ProbeConfig) -> Self {
        let network = network.clone();
        let id = self.id.clone();
        self.transport(kind, move |sink| {
            let t: Arc<dyn Transport> = network.bind(id.clone(), kind, sink, probe);
            async move { Ok(t) }
        })
    }

    /// Adds the QUIC transport. The first bind's address is kept, so a
    /// restarted transport listens where peers already dial.
    pub fn quic(self, config: QuicConfig) -> Self {
        self.quic_inner(config, None)
    }

    /// Adds the QUIC transport over a fault-injecting socket: `faults`
    /// blackholes or drops its datagrams (tests, chaos runs).
    pub fn quic_with_faults(self, config: QuicConfig, faults: FaultHandle) -> Self {
        self.quic_inner(config, Some(faults))
    }

    fn quic_inner(self, config: QuicConfig, faults: Option<FaultHandle>) -> Self {
        let bound: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::default();
        self.transport(PathKind::Quic, move |sink| {
            let mut config = config.clone();
            if let Some(addr) = *lock(&bound) {
                config.listen = addr;
            }
            let result = match &faults {
                Some(f) => QuicTransport::bind_with_faults(config, sink, f.clone()),
                None => QuicTransport::bind(config, sink),
            };
            let result = result.map(|t| {
                *lock(&bound) = Some(t.local_addr());
                t as Arc<dyn Transport>
            });
            async move { result.map_err(|e| e.to_string()) }
        })
    }

    /// Adds a relay transport (through the root) bound with `config`.
    pub fn relay(self, config: RelayConfig) -> Self {
        let slot = self.signal.clone();
        self.transport(PathKind::Relay, move |sink| {
            let bound = RelayTransport::bind(config.clone(), sink)
                .map(|t| {
                    slot.set(t.clone());
                    t as Arc<dyn Transport>
                })
                .map_err(|e| e.to_string());
            async move { bound }
        })
    }

    /// Adds the WebRTC transport, signalling through this node's relay
    /// transport (add [`NodeBuilder::relay`] too).
    pub fn webrtc(self, config: WebrtcConfig) -> Self {
        let (slot, handle) = (self.signal.clone(), self.webrtc.clone());
        self.transport(PathKind::WebrtcData, move |sink| {
            let bound = WebrtcTransport::bind(config.clone(), Arc::new(slot.clone()), sink);
            handle.set(bound.clone());
            let t: Arc<dyn Transport> = bound;
            async move { Ok(t) }
        })
    }

    /// The node's WebRTC transport once spawned (see [`NodeBuilder::webrtc`]).
    pub fn webrtc_handle(&self) -> WebrtcHandle {
        self.webrtc.clone()
    }

    /// Dials `peer` on the transport of `kind` at start (and after every
    /// restart of that transport), retrying with backoff until it opens.
    pub fn dial(mut self, kind: PathKind, peer: PeerAddr) -> Self {
        self.dials.entry(kind).or_default().push(peer);
        self
    }

    /// Starts the actor tree and the event pump.
    pub async fn spawn(self) -> Result<Node, NodeError> {
        // Actor names are process-global in ractor; the instance number lets
        // several nodes with the same id live in one process (tests).
        static INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let instance = INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("{}#{instance}/", self.id);
        let (events_tx, rx) = mpsc::channel(self.event_queue);
        let (decisions, _) = broadcast::channel(1024);
        let shared = Arc::new_cyclic(|me: &std::sync::Weak<Shared>| Shared {
            id: self.id.clone(),
            role: self.role,
            transports: DashMap::new(),
            sessions: DashMap::new(),
            refusals: DashMap::new(),
            last_ack: DashMap::new(),
            routing: Mutex::new(None),
            registrations: Mutex::new(BTreeMap::new()),
            open_paths: Mutex::new(BTreeMap::new()),
            decisions,
            events: EventSink::with_frames(events_tx, Arc::new(Dispatch(me.clone()))),
            prefix: prefix.clone(),
            channel_specs: Mutex::new(Vec::new()),
        });
        let pump = tokio::spawn(pump(shared.clone(), rx));

        let routing = {
            let shared = shared.clone();
            let config = self.routing.clone();
            ChildSpec::new(
                format!("{prefix}routing"),
                RestartMode::Permanent,
                move || {
                    (
                        RoutingAuthority,
                        AuthorityArgs {
                            config: config.clone(),
                            env: Arc::new(Env(shared.clone())),
                        },
                    )
                },
            )
        };
        let transport_children: Vec<ChildSpec> = self
            .transports
            .into_iter()
            .map(|spec| {
                let shared = shared.clone();
                let dials = self.dials.get(&spec.kind).cloned().unwrap_or_default();
                let name = format!("{prefix}transport/{}", spec.kind);
                let spec = Arc::new(spec);
                ChildSpec::new(name, RestartMode::Permanent, move || {
                    (
                        TransportActor,
                        TransportArgs {
                            shared: shared.clone(),
                            spec: spec.clone(),
                            dials: dials.clone(),
                        },
                    )
                })
            })
            .collect();
        let policy = self.restart;
        let transports = ChildSpec::new(
            format!("{prefix}transports"),
            RestartMode::Permanent,
            move || {
                (
                    Supervisor,
                    SupervisorArgs {
                        policy,
                        children: transport_children.clone(),
                    },
                )
            },
        );
        let channels = {
            let shared = shared.clone();
            ChildSpec::new(
                format!("{prefix}channels"),
                RestartMode::Permanent,
                move || {
                    (
                        Supervisor,
                        SupervisorArgs {
                            policy,
                            children: lock(&shared.channel_specs).clone(),
                        },
                    )
                },
            )
        };
        let (root, join) = Actor::spawn(
            Some(format!("{prefix}node")),
            Supervisor,
            SupervisorArgs {
                policy,
                children: vec![routing, transports, channels],
            },
        )
        .await
        .map_err(|e| {
            pump.abort();
            NodeError::Spawn(e.to_string())
        })?;
        Ok(Node {
            shared,
            prefix,
            root,
            join,
            pump,
        })
    }
}

//! The control loop of one WebRTC transport: the only place session state
//! changes. It reads signals from the [`SignalLink`], peer-connection
//! events, timers and requests (connect, close, browser offers) from one
//! bounded queue and applies the rules of [`super::signalling`].
//!
//! Owns: sessions by peer, negotiation state, the ICE restart policy, the
//! fresh-negotiation back-off, browser fingerprint bindings.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    PeerConnection, RTCIceCandidateInit, RTCIceConnectionState, RTCPeerConnectionState,
    RTCSessionDescription,
};

use super::Inner;
use super::session::{self, CHANNELS, SessionIo};
use super::signalling::{
    Candidate, Description, NegotiationState, OfferVerdict, Refusal, SignalError, SignalMsg, codes,
    judge_answer, judge_candidate, judge_offer,
};
use crate::sync::lock;
use crate::transports::{DownCause, Fact, TransportEvent};
use crate::vocab::{NodeId, PathId, PathKind};
use crate::wire::{Close, Frame, ProbeAck, Signal};

/// A browser's offer, posted to the hub's page server after admission.
#[derive(Clone, Debug)]
pub struct BrowserOffer {
    /// The node id the hub assigned to the admitted browser.
    pub node: NodeId,
    /// The page's session id (increasing per page).
    pub session: u64,
    /// The negotiation's generation within the session.
    pub generation: u64,
    /// The offer's SDP (with its candidates: browsers do not trickle here).
    pub sdp: String,
}

pub(crate) enum Timer {
    Connect,
    Restart(u64),
    GiveUp(u64),
}

pub(crate) enum Ctl {
    Connect(NodeId),
    LocalCandidate(NodeId, u64, RTCIceCandidateInit),
    IceState(NodeId, u64, RTCIceConnectionState),
    PcState(NodeId, u64, RTCPeerConnectionState),
    Gathered(NodeId, u64),
    UnexpectedChannel(NodeId, u64, String),
    ChannelOpen(NodeId, u64, usize),
    ChannelClosed(NodeId, u64, usize),
    PeerClosed(NodeId, u64, u32, String),
    Close(NodeId, u32, String, oneshot::Sender<()>),
    Timer(NodeId, u64, Timer),
    Reconnect(NodeId),
    Browser(BrowserOffer, oneshot::Sender<Result<String, SignalError>>),
    Shutdown(oneshot::Sender<()>),
}

/// One peer's current session.
pub(crate) struct Peer {
    pub st: NegotiationState,
    pub pc: Arc<dyn PeerConnection>,
    /// What the peer's RTCP reported (media sessions).
    pub tally: Arc<super::media::RtcpTally>,
    pub io: Arc<SessionIo>,
    pub channels: Vec<Arc<dyn DataChannel>>,
    pub acks: Option<mpsc::Receiver<ProbeAck>>,
    pub up: bool,
    pub opened: [bool; CHANNELS],
    pub connected: bool,
    pub restarts: u32,
    pub trouble: u64,
    pub tasks: Vec<JoinHandle<()>>,
    pub started: Instant,
    pub browser: bool,
    pub gather_waiters: Vec<oneshot::Sender<()>>,
    /// ICE gathering completed once: a renegotiation that keeps the ICE
    /// credentials (adding media) gathers nothing new and is answered
    /// at once.
    pub gathered: bool,
}

/// State private to the loop.
struct Loop {
    inner: Arc<Inner>,
    highest_remote: HashMap<NodeId, u64>,
    fingerprints: HashMap<NodeId, String>,
    attempts: HashMap<NodeId, u32>,
}

pub(crate) async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<Ctl>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut lp = Loop {
        inner,
        highest_remote: HashMap::new(),
        fingerprints: HashMap::new(),
        attempts: HashMap::new(),
    };
    let mut signals: Option<broadcast::Receiver<Signal>> = None;
    let mut resubscribe = tokio::time::interval(Duration::from_millis(100));
    loop {
        if signals.is_none() {
            signals = lp.inner.link.subscribe();
        }
        let waiting = signals.is_none();
        let mut lost = false;
        let sig = async {
            match signals.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            msg = rx.recv() => match msg {
                Some(Ctl::Shutdown(done)) => {
                    lp.shutdown().await;
                    let _ = done.send(());
                    return;
                }
                Some(msg) => lp.handle(msg).await,
                None => return,
            },
            s = sig => match s {
                Ok(sig) => lp.on_signal(sig).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(node = %lp.inner.config.node, n, "webrtc: signals lost (slow loop)");
                }
                Err(broadcast::error::RecvError::Closed) => lost = true,
            },
            _ = resubscribe.tick(), if waiting => {}
        }
        if lost {
            signals = None;
        }
    }
}

fn path(peer: &NodeId) -> PathId {
    PathId::new(peer.clone(), PathKind::WebrtcData)
}

/// The first `a=fingerprint:` value of an SDP.
/// The first `a=ice-ufrag` of an SDP.
fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
}

pub(crate) fn fingerprint(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=fingerprint:"))
        .map(|f| f.trim().to_ascii_lowercase())
}

impl Loop {
    async fn report(&self, peer: &NodeId, fact: Fact) {
        let ev = TransportEvent {
            path: path(peer),
            fact,
        };
        let _ = self.inner.events.send(ev).await;
    }

    async fn incident(&self, peer: &NodeId, what: String) {
        tracing::info!(node = %self.inner.config.node, %peer, "webrtc: {what}");
        self.report(peer, Fact::Incident(what)).await;
    }

    fn state(&self, peer: &NodeId) -> Option<NegotiationState> {
        lock(&self.inner.peers).get(peer).map(|p| p.st)
    }

    fn after(&self, delay: Duration, msg: Ctl) {
        let ctl = self.inner.ctl.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = ctl.send(msg).await;
        });
    }

    async fn send_signal(&self, to: &NodeId, msg: SignalMsg) {
        if let Err(e) = self
            .inner
            .link
            .send_signal(to, msg.kind(), msg.encode())
            .await
        {
            self.incident(to, format!("signal {} not sent: {e}", msg.kind()))
                .await;
        }
    }

    /// Refuses a message of `peer`: an incident here, a typed refusal there.
    async fn refuse(&self, peer: &NodeId, ids: (u64, u64), e: SignalError, reply: bool) {
        *lock(&self.inner.counters)
            .refused
            .entry(e.code)
            .or_default() += 1;
        self.incident(peer, format!("refused signal from {peer}: {e}"))
            .await;
        if reply {
            let r = Refusal {
                session: ids.0,
                generation: ids.1,
                code: e.code,
                reason: e.reason,
            };
            self.send_signal(peer, SignalMsg::Refused(r)).await;
        }
    }

    async fn handle(&mut self, msg: Ctl) {
        let same = |peer: &NodeId, s: u64| self.state(peer).is_some_and(|st| st.session == s);
        match msg {
            Ctl::Connect(peer) if self.state(&peer).is_none() => self.offer_fresh(&peer).await,
            Ctl::Reconnect(peer) => {
                let wanted = lock(&self.inner.wanted).contains(&peer);
                if wanted && self.state(&peer).is_none() && !self.closed() {
                    self.offer_fresh(&peer).await;
                }
            }
            Ctl::LocalCandidate(peer, s, init) => {
                let st = lock(&self.inner.peers)
                    .get(&peer)
                    .filter(|p| p.st.session == s && !p.browser)
                    .map(|p| p.st);
                if let Some(st) = st {
                    let c = Candidate {
                        session: s,
                        generation: st.pending.unwrap_or(st.generation),
                        candidate: init.candidate,
                        sdp_mid: init.sdp_mid,
                        sdp_mline_index: init.sdp_mline_index,
                        ufrag: init.username_fragment,
                    };
                    self.send_signal(&peer, SignalMsg::Candidate(c)).await;
                }
            }
            Ctl::IceState(peer, s, state) if same(&peer, s) => self.on_ice(&peer, state).await,
            Ctl::PcState(peer, s, state) if same(&peer, s) => {
                self.incident(&peer, format!("peer connection (DTLS/SCTP) {state}"))
                    .await;
                match state {
                    RTCPeerConnectionState::Failed => {
                        self.on_ice(&peer, RTCIceConnectionState::Failed).await
                    }
                    RTCPeerConnectionState::Closed => {
                        self.teardown(&peer, DownCause::Reset).await;
                        self.schedule_reconnect(&peer);
                    }
                    _ => {}
                }
            }
            Ctl::Gathered(peer, s) if same(&peer, s) => {
                let waiters = lock(&self.inner.peers)
                    .get_mut(&peer)
                    .map(|p| {
                        p.gathered = true;
                        std::mem::take(&mut p.gather_waiters)
                    })
                    .unwrap_or_default();
                for w in waiters {
                    let _ = w.send(());
                }
            }
            Ctl::UnexpectedChannel(peer, s, label) if same(&peer, s) => {
                let e = SignalError::new(
                    codes::UNEXPECTED_CHANNEL,
                    format!("in-band channel {label:?} refused"),
                );
                self.refuse(&peer, (s, 0), e, false).await;
            }
            Ctl::ChannelOpen(peer, s, i) if same(&peer, s) => self.on_open(&peer, i).await,
            Ctl::ChannelClosed(peer, s, i) if same(&peer, s) => {
                let up = self.inner.is_up(&peer);
                if i == 0 || !up {
                    self.teardown(&peer, DownCause::Reset).await;
                    self.schedule_reconnect(&peer);
                } else {
                    // One bulk channel's trouble: the path lives on over
                    // the others; the routing authority sees the incident.
                    self.incident(&peer, format!("data channel {} closed", session::label(i)))
                        .await;
                }
            }
            Ctl::PeerClosed(peer, s, code, reason) if same(&peer, s) => {
                lock(&self.inner.wanted).remove(&peer);
                self.teardown(&peer, DownCause::ClosedByPeer { code, reason })
                    .await;
            }
            Ctl::Close(peer, code, reason, done) => {
                let found = lock(&self.inner.peers)
                    .get(&peer)
                    .map(|p| (p.io.clone(), p.channels.clone(), p.up));
                if let Some((io, channels, up)) = found {
                    if up {
                        let _ = io.enqueue(&Frame::Close(Close { code, reason }));
                        session::flushed(&channels, &io, Duration::from_secs(1)).await;
                    }
                    self.teardown(&peer, DownCause::ClosedLocally).await;
                }
                let _ = done.send(());
            }
            Ctl::Timer(peer, s, timer) if same(&peer, s) => self.on_timer(&peer, timer).await,
            Ctl::Browser(offer, reply) => self.on_browser(offer, reply).await,
            // Events of a session that has been replaced.
            _ => {}
        }
    }

    fn closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Builds a session and inserts it; `None` (with an incident) on failure.
    async fn build(&self, peer: &NodeId, st: NegotiationState, browser: bool) -> Option<()> {
        let built = session::build(
            &self.inner.config,
            self.inner.ctl.clone(),
            self.inner.events.clone(),
            peer,
            st.session,
        )
        .await;
        let b = match built {
            Ok(b) => b,
            Err(e) => {
                self.incident(peer, format!("peer connection not built: {e}"))
                    .await;
                return None;
            }
        };
        let p = Peer {
            st,
            pc: b.pc,
            tally: b.tally,
            io: b.io,
            channels: b.channels,
            acks: Some(b.acks),
            up: false,
            opened: [false; CHANNELS],
            connected: false,
            restarts: 0,
            trouble: 0,
            tasks: b.tasks,
            started: Instant::now(),
            browser,
            gather_waiters: Vec::new(),
            gathered: false,
        };
        lock(&self.inner.peers).insert(peer.clone(), p);
        Some(())
    }

    fn pc(&self, peer: &NodeId) -> Option<Arc<dyn PeerConnection>> {
        lock(&self.inner.peers).get(peer).map(|p| p.pc.clone())
    }

    /// Starts a fresh negotiation (a new session) with `peer`.
    async fn offer_fresh(&mut self, peer: &NodeId) {
        let session = self.inner.next_session.fetch_add(1, Ordering::AcqRel);
        let st = NegotiationState {
            session,
            generation: 1,
            offerer: true,
            pending: Some(1),
        };
        lock(&self.inner.counters).negotiations += 1;
        if self.build(peer, st, false).await.is_none() {
            return self.schedule_reconnect(peer);
        }
        let Some(pc) = self.pc(peer) else { return };
        let offer = match pc.create_offer(None).await {
            Ok(o) => o,
            Err(e) => return self.fail_negotiation(peer, format!("offer: {e}")).await,
        };
        if let Err(e) = pc.set_local_description(offer.clone()).await {
            return self
                .fail_negotiation(peer, format!("local offer: {e}"))
                .await;
        }
        let d = Description {
            session,
            generation: 1,
            sdp: offer.sdp,
            ice_restart: false,
        };
        self.send_signal(peer, SignalMsg::Offer(d)).await;
        self.after(
            self.inner.config.connect_timeout,
            Ctl::Timer(peer.clone(), session, Timer::Connect),
        );
    }

    async fn fail_negotiation(&mut self, peer: &NodeId, what: String) {
        self.incident(peer, format!("negotiation failed: {what}"))
            .await;
        self.teardown(peer, DownCause::Unreachable(what)).await;
        self.schedule_reconnect(peer);
    }

    /// Another fresh negotiation later, if `peer` is still wanted.
    fn schedule_reconnect(&mut self, peer: &NodeId) {
        if !lock(&self.inner.wanted).contains(peer) || self.closed() {
            return;
        }
        let n = self.attempts.entry(peer.clone()).or_default();
        *n = n.saturating_add(1);
        let delay = Duration::from_millis(100)
            .saturating_mul(1 << (*n).min(6))
            .min(self.inner.config.reconnect_max);
        self.after(delay, Ctl::Reconnect(peer.clone()));
    }

    /// Ends `peer`'s session: `Down(cause)` if it was up.
    async fn teardown(&self, peer: &NodeId, cause: DownCause) {
        let Some(p) = lock(&self.inner.peers).remove(peer) else {
            return;
        };
        for t in &p.tasks {
            t.abort();
        }
        let pc = p.pc.clone();
        tokio::spawn(async move {
            let _ = pc.close().await;
        });
        if p.up {
            tracing::info!(node = %self.inner.config.node, %peer, %cause, "webrtc: path down");
            self.report(peer, Fact::Down(cause)).await;
        }
        self.inner.bump();
    }

    async fn shutdown(&mut self) {
        let peers: Vec<NodeId> = lock(&self.inner.peers).keys().cloned().collect();
        for peer in peers {
            let found = lock(&self.inner.peers)
                .get(&peer)
                .filter(|p| p.up)
                .map(|p| (p.io.clone(), p.channels.clone()));
            if let Some((io, channels)) = found {
                let close = Close {
                    code: 0,
                    reason: "shutdown".into(),
                };
                let _ = io.enqueue(&Frame::Close(close));
                session::flushed(&channels, &io, Duration::from_millis(300)).await;
            }
            self.teardown(&peer, DownCause::ClosedLocally).await;
        }
    }

    async fn on_open(&mut self, peer: &NodeId, i: usize) {
        let ready = {
            let mut peers = lock(&self.inner.peers);
            let Some(p) = peers.get_mut(peer) else { return };
            p.opened[i] = true;
            if p.up || !p.opened.iter().all(|o| *o) {
                None
            } else {
                p.up = true;
                p.connected = true;
                let acks = p.acks.take();
                Some((p.io.clone(), p.channels.clone(), acks, p.started.elapsed()))
            }
        };
        let Some((io, channels, acks, took)) = ready else {
            return;
        };
        self.attempts.remove(peer);
        lock(&self.inner.counters).sessions_up += 1;
        lock(&self.inner.setup_times).insert(peer.clone(), took);
        tracing::info!(node = %self.inner.config.node, %peer, ?took, "webrtc: path up");
        if let Some(acks) = acks {
            let task = tokio::spawn(session::probe_loop(
                self.inner.config.clone(),
                io,
                channels,
                acks,
                self.inner.events.clone(),
            ));
            if let Some(p) = lock(&self.inner.peers).get_mut(peer) {
                p.tasks.push(task);
            }
        }
        self.report(peer, Fact::Up).await;
        self.inner.bump();
    }

    async fn on_ice(&mut self, peer: &NodeId, state: RTCIceConnectionState) {
        let (s, offerer, restarts, was_connected, browser) = {
            let mut peers = lock(&self.inner.peers);
            let Some(p) = peers.get_mut(peer) else { return };
            let was = p.connected;
            match state {
                RTCIceConnectionState::Connected | RTCIceConnectionState::Completed => {
                    p.connected = true;
                }
                RTCIceConnectionState::Disconnected | RTCIceConnectionState::Failed => {
                    p.connected = false;
                    p.trouble += 1;
                }
                _ => {}
            }
            (p.st.session, p.st.offerer, p.restarts, was, p.browser)
        };
        self.incident(peer, format!("ice {state}")).await;
        match state {
            RTCIceConnectionState::Connected | RTCIceConnectionState::Completed
                if restarts > 0 && !was_connected =>
            {
                self.incident(peer, format!("ice restart {restarts} reconnected"))
                    .await;
                if let Some(p) = lock(&self.inner.peers).get_mut(peer) {
                    p.restarts = 0;
                }
            }
            RTCIceConnectionState::Disconnected | RTCIceConnectionState::Failed
                if was_connected =>
            {
                if offerer && !browser {
                    self.restart_or_renegotiate(peer).await;
                } else {
                    // The offerer restarts ICE; give it time for every
                    // attempt before giving the session up.
                    let ice = self.inner.config.ice;
                    let wait = ice.restart_timeout * (ice.restarts + 1) + ice.failed_timeout;
                    let epoch = lock(&self.inner.peers).get(peer).map_or(0, |p| p.trouble);
                    self.after(wait, Ctl::Timer(peer.clone(), s, Timer::GiveUp(epoch)));
                }
            }
            _ => {}
        }
    }

    /// ICE restart if attempts remain, else a fresh negotiation.
    async fn restart_or_renegotiate(&mut self, peer: &NodeId) {
        let max = self.inner.config.ice.restarts;
        let next = {
            let mut peers = lock(&self.inner.peers);
            let Some(p) = peers.get_mut(peer) else { return };
            if p.restarts >= max {
                None
            } else {
                p.restarts += 1;
                p.st.generation = p.st.generation.max(p.st.pending.unwrap_or(0));
                let g = p.st.generation + 1;
                p.st.pending = Some(g);
                Some((p.pc.clone(), p.st.session, g, p.restarts))
            }
        };
        let Some((pc, session, g, n)) = next else {
            self.incident(
                peer,
                format!("{max} ice restarts failed: fresh negotiation"),
            )
            .await;
            self.teardown(peer, DownCause::Timeout).await;
            lock(&self.inner.wanted).insert(peer.clone());
            return self.offer_fresh(peer).await;
        };
        lock(&self.inner.counters).ice_restarts += 1;
        self.incident(peer, format!("ice restart {n}/{max} (generation {g})"))
            .await;
        let offer = async {
            pc.restart_ice().await?;
            let o = pc.create_offer(None).await?;
            pc.set_local_description(o.clone()).await?;
            Ok::<_, webrtc::error::Error>(o)
        };
        match offer.await {
            Ok(o) => {
                let d = Description {
                    session,
                    generation: g,
                    sdp: o.sdp,
                    ice_restart: true,
                };
                self.send_signal(peer, SignalMsg::Offer(d)).await;
            }
            Err(e) => self.incident(peer, format!("ice restart offer: {e}")).await,
        }
        self.after(
            self.inner.config.ice.restart_timeout,
            Ctl::Timer(peer.clone(), session, Timer::Restart(g)),
        );
    }

    async fn on_timer(&mut self, peer: &NodeId, timer: Timer) {
        let (up, connected, trouble, newest) = match lock(&self.inner.peers).get(peer) {
            Some(p) => (
                p.up,
                p.connected,
                p.trouble,
                p.st.generation.max(p.st.pending.unwrap_or(0)),
            ),
            None => return,
        };
        match timer {
            Timer::Connect if !up => {
                self.incident(peer, "negotiation timed out".into()).await;
                self.teardown(peer, DownCause::Timeout).await;
                self.schedule_reconnect(peer);
            }
            Timer::Restart(g) if !connected && g == newest => {
                self.restart_or_renegotiate(peer).await
            }
            Timer::GiveUp(epoch) if !connected && epoch == trouble => {
                self.incident(peer, "offerer never restarted ice: session given up".into())
                    .await;
                self.teardown(peer, DownCause::Timeout).await;
                self.schedule_reconnect(peer);
            }
            _ => {}
        }
    }

    async fn on_signal(&mut self, sig: Signal) {
        if !sig.kind.starts_with("webrtc/") {
            // Another namespace's signal on the same relay (e.g. the
            // root's `root/revoked`): not ours to answer.
            return;
        }
        let from = sig.from.clone();
        let msg = match SignalMsg::decode(&sig.kind, &sig.payload) {
            Ok(m) => m,
            Err(e) => return self.refuse(&from, (0, 0), e, true).await,
        };
        let ids = msg.ids();
        if let SignalMsg::Refused(r) = msg {
            return self.on_refused(&from, r).await;
        }
        if !(self.inner.config.admit)(&from) {
            let e = SignalError::new(
                codes::NOT_ADMITTED,
                format!("{from} may not negotiate with {}", self.inner.config.node),
            );
            return self.refuse(&from, ids, e, true).await;
        }
        let result = match msg {
            SignalMsg::Offer(d) => self.on_offer(&from, d).await,
            SignalMsg::Answer(d) => self.on_answer(&from, d).await,
            SignalMsg::Candidate(c) => self.on_candidate(&from, c).await,
            SignalMsg::Refused(_) => Ok(()),
        };
        if let Err(e) = result {
            self.refuse(&from, ids, e, true).await;
        }
    }

    async fn on_refused(&mut self, from: &NodeId, r: Refusal) {
        self.incident(
            from,
            format!("{from} refused our signal ({:#06x}): {}", r.code, r.reason),
        )
        .await;
        let ours = self
            .state(from)
            .is_some_and(|st| st.offerer && st.session == r.session && st.pending.is_some());
        // A glare refusal is answered by the winner's own offer; any other
        // refusal of our pending offer ends the attempt.
        if ours && r.code != codes::GLARE {
            let e = SignalError::new(r.code, r.reason);
            lock(&self.inner.refused).insert(from.clone(), e);
            self.teardown(from, DownCause::Unreachable("offer refused".into()))
                .await;
        }
    }

    async fn on_offer(&mut self, from: &NodeId, d: Description) -> Result<(), SignalError> {
        let verdict = judge_offer(
            &self.inner.config.node,
            from,
            self.state(from),
            self.highest_remote.get(from).copied(),
            &d,
        );
        let desc = RTCSessionDescription::offer(d.sdp.clone())
            .map_err(|e| SignalError::new(codes::BAD_SDP, format!("offer SDP: {e}")))?;
        match verdict {
            OfferVerdict::Refuse(e) => Err(e),
            OfferVerdict::Fresh => {
                self.highest_remote.insert(from.clone(), d.session);
                self.teardown(from, DownCause::Reset).await;
                let st = NegotiationState {
                    session: d.session,
                    generation: d.generation,
                    offerer: false,
                    pending: None,
                };
                self.build(from, st, false)
                    .await
                    .ok_or_else(|| SignalError::new(codes::BAD_SDP, "peer connection not built"))?;
                self.answer(from, desc, &d).await
            }
            OfferVerdict::Renegotiate => {
                if let Some(p) = lock(&self.inner.peers).get_mut(from) {
                    p.st.generation = d.generation;
                }
                self.incident(
                    from,
                    format!("answering ice restart (generation {})", d.generation),
                )
                .await;
                self.answer(from, desc, &d).await
            }
        }
    }

    /// Applies `desc` and sends the answer; a bad SDP ends a fresh session.
    async fn answer(
        &mut self,
        from: &NodeId,
        desc: RTCSessionDescription,
        d: &Description,
    ) -> Result<(), SignalError> {
        let pc = self
            .pc(from)
            .ok_or_else(|| SignalError::new(codes::UNKNOWN_SESSION, "session vanished"))?;
        let applied = async {
            pc.set_remote_description(desc).await?;
            let a = pc.create_answer(None).await?;
            pc.set_local_description(a.clone()).await?;
            Ok::<_, webrtc::error::Error>(a)
        };
        match applied.await {
            Ok(a) => {
                let ans = Description {
                    session: d.session,
                    generation: d.generation,
                    sdp: a.sdp,
                    ice_restart: d.ice_restart,
                };
                self.send_signal(from, SignalMsg::Answer(ans)).await;
                Ok(())
            }
            Err(e) => {
                if d.generation == 1 {
                    self.teardown(from, DownCause::Reset).await;
                }
                Err(SignalError::new(
                    codes::BAD_SDP,
                    format!("offer not applied: {e}"),
                ))
            }
        }
    }

    async fn on_answer(&mut self, from: &NodeId, d: Description) -> Result<(), SignalError> {
        judge_answer(self.state(from), &d)?;
        let desc = RTCSessionDescription::answer(d.sdp)
            .map_err(|e| SignalError::new(codes::BAD_SDP, format!("answer SDP: {e}")))?;
        let pc = self
            .pc(from)
            .ok_or_else(|| SignalError::new(codes::UNKNOWN_SESSION, "session vanished"))?;
        pc.set_remote_description(desc)
            .await
            .map_err(|e| SignalError::new(codes::BAD_SDP, format!("answer not applied: {e}")))?;
        if let Some(p) = lock(&self.inner.peers).get_mut(from) {
            p.st.generation = d.generation;
            p.st.pending = None;
        }
        Ok(())
    }

    async fn on_candidate(&mut self, from: &NodeId, c: Candidate) -> Result<(), SignalError> {
        judge_candidate(self.state(from), &c)?;
        if c.candidate.is_empty() {
            return Ok(());
        }
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.ufrag,
            ..Default::default()
        };
        let pc = self
            .pc(from)
            .ok_or_else(|| SignalError::new(codes::UNKNOWN_SESSION, "session vanished"))?;
        pc.add_ice_candidate(init)
            .await
            .map_err(|e| SignalError::new(codes::BAD_CANDIDATE, format!("candidate: {e}")))
    }

    async fn on_browser(
        &mut self,
        o: BrowserOffer,
        reply: oneshot::Sender<Result<String, SignalError>>,
    ) {
        let fp = fingerprint(&o.sdp);
        let bound = self.fingerprints.get(&o.node);
        if let (Some(bound), Some(fp)) = (bound, &fp)
            && bound != fp
        {
            let e = SignalError::new(
                codes::FINGERPRINT_MISMATCH,
                format!("{}'s DTLS fingerprint changed", o.node),
            );
            self.refuse(&o.node, (o.session, o.generation), e.clone(), false)
                .await;
            let _ = reply.send(Err(e));
            return;
        }
        let Some(fp) = fp else {
            let e = SignalError::new(codes::BAD_SDP, "offer without a DTLS fingerprint");
            let _ = reply.send(Err(e));
            return;
        };
        let d = Description {
            session: o.session,
            generation: o.generation,
            sdp: o.sdp,
            ice_restart: false,
        };
        let fresh = match judge_offer(
            &self.inner.config.node,
            &o.node,
            self.state(&o.node),
            self.highest_remote.get(&o.node).copied(),
            &d,
        ) {
            OfferVerdict::Refuse(e) => {
                let _ = reply.send(Err(e));
                return;
            }
            v => v == OfferVerdict::Fresh,
        };
        let desc = match RTCSessionDescription::offer(d.sdp.clone()) {
            Ok(desc) => desc,
            Err(e) => {
                let e = SignalError::new(codes::BAD_SDP, format!("offer SDP: {e}"));
                let _ = reply.send(Err(e));
                return;
            }
        };
        if fresh {
            self.highest_remote.insert(o.node.clone(), d.session);
            self.teardown(&o.node, DownCause::Reset).await;
            let st = NegotiationState {
                session: d.session,
                generation: d.generation,
                offerer: false,
                pending: None,
            };
            if self.build(&o.node, st, true).await.is_none() {
                let _ = reply.send(Err(SignalError::new(codes::BAD_SDP, "not built")));
                return;
            }
        } else if let Some(p) = lock(&self.inner.peers).get_mut(&o.node) {
            p.st.generation = d.generation;
        }
        let Some(pc) = self.pc(&o.node) else { return };
        // Same ICE credentials as the offer before: a media renegotiation,
        // not an ICE restart; nothing is gathered again.
        let previous = pc.remote_description().await.map(|d| d.sdp);
        let same_ice = !fresh && previous.is_some_and(|p| ice_ufrag(&p) == ice_ufrag(&d.sdp));
        let (gathered_tx, gathered) = oneshot::channel();
        if let Some(p) = lock(&self.inner.peers).get_mut(&o.node) {
            if same_ice && p.gathered {
                let _ = gathered_tx.send(());
            } else {
                p.gather_waiters.push(gathered_tx);
            }
        }
        let applied = async {
            pc.set_remote_description(desc).await?;
            let a = pc.create_answer(None).await?;
            pc.set_local_description(a).await?;
            Ok::<_, webrtc::error::Error>(())
        };
        if let Err(e) = applied.await {
            if fresh {
                self.teardown(&o.node, DownCause::Reset).await;
            }
            let _ = reply.send(Err(SignalError::new(codes::BAD_SDP, e.to_string())));
            return;
        }
        self.fingerprints.insert(o.node.clone(), fp);
        let limit = self.inner.config.connect_timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(limit, gathered).await;
            let answer = pc
                .local_description()
                .await
                .map(|d| d.sdp)
                .ok_or_else(|| SignalError::new(codes::BAD_SDP, "no local answer"));
            let _ = reply.send(answer);
        });
    }
}

//! The hub's page server for browsers: a loopback HTTP listener (axum)
//! serving the page and the JavaScript client in `web/`, admitting
//! browsers with single-use, short-lived join tokens, and relaying their
//! WebRTC offers to the node's WebRTC transport (`docs/webrtc.md` §5).
//!
//! Owns browser admission ([`BrowserGate`]: tokens, per-browser secrets,
//! one command stream served per admitted browser) and the HTTP routes.
//! The data path is the WebRTC transport's; the command semantics are the
//! command channel's. Every request body is bounded (axum's 2 MB default;
//! SDP over 64 KiB is refused) and the token table is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::actors::node::Node;
use crate::channels::command::{CommandChannel, CommandHandler, ServeConfig};
use crate::channels::media::MediaHub;
use crate::store::Store;
use crate::sync::lock;
use crate::transports::webrtc::signalling::MAX_SIGNAL_LEN;
use crate::transports::webrtc::{BrowserOffer, SignalError, WebrtcHandle, codes};
use crate::turn::IceServer;
use crate::vocab::{ChannelKind, NodeId, StreamId};
use crate::wire::codes::media as media_codes;

const PAGE: &str = include_str!("../web/index.html");
const CLIENT_JS: &str = include_str!("../web/interlocking.js");
const MSGPACK_JS: &str = include_str!("../web/msgpack.js");
const MEDIA_PAGE: &str = include_str!("../web/media.html");

/// Configuration of the page server.
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// Where to listen (loopback by default, port chosen by the system).
    pub listen: SocketAddr,
    /// At most this many unused tokens are kept; issuing more is refused.
    pub max_tokens: usize,
    /// A TURN server (the root's) whose credentials each admitted browser
    /// gets with its admission, for when no direct path exists.
    pub turn: Option<TurnGrant>,
}

/// How the page server mints TURN credentials for admitted browsers
/// ([`crate::turn::mint`]).
#[derive(Clone, Debug)]
pub struct TurnGrant {
    /// The server's `turn:` URLs.
    pub urls: Vec<String>,
    /// The secret shared with the TURN server.
    pub secret: Vec<u8>,
    /// How long minted credentials are valid.
    pub ttl: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_tokens: 1024,
            turn: None,
        }
    }
}

/// Why the page server could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// Too many unused tokens.
    #[error("token table full ({0})")]
    TooManyTokens(usize),
    /// The browser's command stream could not be served.
    #[error("command stream not served: {0}")]
    Serve(String),
    /// The listener could not be bound.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

struct Ticket {
    node: NodeId,
    stream: StreamId,
    expires: Instant,
}

#[derive(Default)]
struct GateState {
    tokens: HashMap<String, Ticket>,
    secrets: HashMap<NodeId, (String, StreamId)>,
    next: u64,
}

/// Browser admission: tokens in, per-browser secrets out.
pub struct BrowserGate {
    hub: NodeId,
    max_tokens: usize,
    state: Mutex<GateState>,
}

fn random_hex() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

impl BrowserGate {
    fn new(hub: NodeId, max_tokens: usize) -> Self {
        Self {
            hub,
            max_tokens,
            state: Mutex::new(GateState::default()),
        }
    }

    /// Issues a single-use token valid for `ttl`, for a new browser node
    /// (`browser-<n>`) whose command stream `command:browser-<n>/<hub>` is
    /// served on `hub` by `handler` now.
    pub async fn issue<H: CommandHandler>(
        &self,
        hub: &Node,
        handler: H,
        store: Arc<dyn Store>,
        ttl: Duration,
    ) -> Result<String, WebError> {
        let (node, token) = {
            let mut st = lock(&self.state);
            let now = Instant::now();
            st.tokens.retain(|_, t| t.expires > now);
            if st.tokens.len() >= self.max_tokens {
                return Err(WebError::TooManyTokens(self.max_tokens));
            }
            st.next += 1;
            (NodeId::new(format!("browser-{}", st.next)), random_hex())
        };
        let stream = StreamId::between(ChannelKind::Command, &node, &self.hub, None);
        CommandChannel::serve(
            hub,
            stream.clone(),
            node.clone(),
            handler,
            store,
            ServeConfig::default(),
        )
        .await
        .map_err(|e| WebError::Serve(e.to_string()))?;
        let ticket = Ticket {
            node,
            stream,
            expires: Instant::now() + ttl,
        };
        lock(&self.state).tokens.insert(token.clone(), ticket);
        Ok(token)
    }

    /// Consumes `token`: the browser's node id, its secret for later
    /// offers, and its command stream.
    fn admit(&self, token: &str) -> Result<(NodeId, String, StreamId), SignalError> {
        let mut st = lock(&self.state);
        let ticket = st.tokens.remove(token).ok_or_else(|| {
            SignalError::new(codes::TOKEN_REFUSED, "unknown or already used token")
        })?;
        if ticket.expires <= Instant::now() {
            return Err(SignalError::new(codes::TOKEN_REFUSED, "expired token"));
        }
        let secret = random_hex();
        st.secrets
            .insert(ticket.node.clone(), (secret.clone(), ticket.stream.clone()));
        Ok((ticket.node, secret, ticket.stream))
    }

    fn check(&self, node: &NodeId, secret: &str) -> bool {
        lock(&self.state)
            .secrets
            .get(node)
            .is_some_and(|(s, _)| s == secret)
    }
}

/// A running page server.
pub struct WebServer {
    addr: SocketAddr,
    gate: Arc<BrowserGate>,
    task: tokio::task::JoinHandle<()>,
}

impl WebServer {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Browser admission (issue tokens here).
    pub fn gate(&self) -> &Arc<BrowserGate> {
        &self.gate
    }

    /// Stops serving.
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct App {
    gate: Arc<BrowserGate>,
    webrtc: WebrtcHandle,
    turn: Option<Arc<TurnGrant>>,
    media: Option<Arc<MediaHub>>,
}

#[derive(Deserialize)]
struct JoinBody {
    token: String,
}

#[derive(Serialize)]
struct Joined {
    node: String,
    secret: String,
    stream: String,
    ice_servers: Vec<IceServer>,
}

#[derive(Deserialize)]
struct OfferBody {
    node: String,
    secret: String,
    session: u64,
    generation: u64,
    sdp: String,
}

#[derive(Serialize)]
struct Answer {
    sdp: String,
}

#[derive(Deserialize)]
struct MediaBody {
    node: String,
    secret: String,
    source: String,
    session: u64,
    generation: u64,
    sdp: String,
}

#[derive(Serialize)]
struct MediaAnswer {
    sdp: String,
    stream: String,
}

#[derive(Deserialize)]
struct StatusBody {
    node: String,
    secret: String,
}

#[derive(Serialize)]
struct StatusRow {
    stream: String,
    source: String,
    tier: String,
    path: String,
    terminates: String,
    decided: String,
    changes: u64,
    decisions: Vec<String>,
    ended: Option<String>,
}

#[derive(Serialize)]
struct Refused {
    code: u16,
    reason: String,
}

fn refused(status: StatusCode, e: SignalError) -> Response {
    let body = Refused {
        code: e.code,
        reason: e.reason,
    };
    (status, Json(body)).into_response()
}

fn script(body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn join_route(State(app): State<App>, Json(b): Json<JoinBody>) -> Response {
    match app.gate.admit(&b.token) {
        Ok((node, secret, stream)) => Json(Joined {
            ice_servers: app
                .turn
                .iter()
                .map(|t| {
                    let (username, credential) = crate::turn::mint(
                        &t.secret,
                        node.as_str(),
                        t.ttl,
                        std::time::SystemTime::now(),
                    );
                    IceServer {
                        urls: t.urls.clone(),
                        username,
                        credential,
                    }
                })
                .collect(),
            node: node.to_string(),
            secret,
            stream: stream.to_string(),
        })
        .into_response(),
        Err(e) => refused(StatusCode::FORBIDDEN, e),
    }
}

async fn offer_route(State(app): State<App>, Json(b): Json<OfferBody>) -> Response {
    let node = NodeId::new(&b.node);
    if !app.gate.check(&node, &b.secret) {
        let e = SignalError::new(codes::TOKEN_REFUSED, "not an admitted browser session");
        return refused(StatusCode::FORBIDDEN, e);
    }
    if b.sdp.len() > MAX_SIGNAL_LEN {
        let e = SignalError::new(codes::TOO_LARGE, "offer too large");
        return refused(StatusCode::PAYLOAD_TOO_LARGE, e);
    }
    let Some(t) = app.webrtc.get() else {
        let e = SignalError::new(codes::MALFORMED, "no WebRTC transport bound");
        return refused(StatusCode::SERVICE_UNAVAILABLE, e);
    };
    let offer = BrowserOffer {
        node,
        session: b.session,
        generation: b.generation,
        sdp: b.sdp,
    };
    match t.answer_browser(offer).await {
        Ok(sdp) => Json(Answer { sdp }).into_response(),
        Err(e) => refused(StatusCode::BAD_REQUEST, e),
    }
}

/// `POST /media`: an admitted browser asks for a source by name, with the
/// offer that adds its receiving transceivers; the hub's media admission
/// decides, adds the tracks, and the answer carries them.
async fn media_route(State(app): State<App>, Json(b): Json<MediaBody>) -> Response {
    let node = NodeId::new(&b.node);
    if !app.gate.check(&node, &b.secret) {
        let e = SignalError::new(codes::TOKEN_REFUSED, "not an admitted browser session");
        return refused(StatusCode::FORBIDDEN, e);
    }
    if b.sdp.len() > MAX_SIGNAL_LEN {
        let e = SignalError::new(codes::TOO_LARGE, "offer too large");
        return refused(StatusCode::PAYLOAD_TOO_LARGE, e);
    }
    let (Some(media), Some(t)) = (app.media.as_ref(), app.webrtc.get()) else {
        let e = SignalError::new(media_codes::NO_SESSION, "this hub serves no media");
        return refused(StatusCode::SERVICE_UNAVAILABLE, e);
    };
    if let Err(e) = media.request(&node, &b.source).await {
        let status = match e.code {
            media_codes::UNKNOWN_SOURCE => StatusCode::NOT_FOUND,
            media_codes::NOT_ADMITTED => StatusCode::FORBIDDEN,
            _ => StatusCode::CONFLICT,
        };
        return refused(status, SignalError::new(e.code, e.reason));
    }
    let offer = BrowserOffer {
        node: node.clone(),
        session: b.session,
        generation: b.generation,
        sdp: b.sdp,
    };
    match t.answer_browser(offer).await {
        Ok(sdp) => Json(MediaAnswer {
            sdp,
            stream: crate::channels::media::hub::stream_name(&b.source, &node),
        })
        .into_response(),
        Err(e) => refused(StatusCode::BAD_REQUEST, e),
    }
}

/// `POST /media/status`: the browser's own streams, with tier, path, who
/// terminates and who decided.
async fn media_status_route(State(app): State<App>, Json(b): Json<StatusBody>) -> Response {
    let node = NodeId::new(&b.node);
    if !app.gate.check(&node, &b.secret) {
        let e = SignalError::new(codes::TOKEN_REFUSED, "not an admitted browser session");
        return refused(StatusCode::FORBIDDEN, e);
    }
    let rows: Vec<StatusRow> = app
        .media
        .iter()
        .flat_map(|m| m.status())
        .filter(|s| s.consumer == node)
        .map(|s| StatusRow {
            stream: s.stream,
            source: s.source,
            tier: s.tier.to_string(),
            path: s.path.to_string(),
            terminates: s.terminates.to_string(),
            decided: s.decided.to_string(),
            changes: s.changes,
            decisions: s.decisions,
            ended: s.ended,
        })
        .collect();
    Json(rows).into_response()
}

/// Starts the page server for the hub `hub` whose WebRTC transport is
/// `webrtc` (from [`crate::actors::node::NodeBuilder::webrtc_handle`]).
pub async fn serve(
    hub: NodeId,
    webrtc: WebrtcHandle,
    config: WebConfig,
) -> Result<WebServer, WebError> {
    serve_inner(hub, webrtc, config, None).await
}

/// [`serve`], with `POST /media` answered by `media` (`docs/media.md`).
pub async fn serve_with_media(
    hub: NodeId,
    webrtc: WebrtcHandle,
    config: WebConfig,
    media: Arc<MediaHub>,
) -> Result<WebServer, WebError> {
    serve_inner(hub, webrtc, config, Some(media)).await
}

async fn serve_inner(
    hub: NodeId,
    webrtc: WebrtcHandle,
    config: WebConfig,
    media: Option<Arc<MediaHub>>,
) -> Result<WebServer, WebError> {
    let gate = Arc::new(BrowserGate::new(hub, config.max_tokens));
    let app = App {
        gate: gate.clone(),
        webrtc,
        turn: config.turn.clone().map(Arc::new),
        media,
    };
    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/media.html", get(|| async { Html(MEDIA_PAGE) }))
        .route("/interlocking.js", get(|| async { script(CLIENT_JS) }))
        .route("/msgpack.js", get(|| async { script(MSGPACK_JS) }))
        .route("/join", post(join_route))
        .route("/offer", post(offer_route))
        .route("/media", post(media_route))
        .route("/media/status", post(media_status_route))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, "page server stopped");
        }
    });
    Ok(WebServer { addr, gate, task })
}

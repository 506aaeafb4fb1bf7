//! The control API: one HTTP listener per process, the one contract behind
//! `interlocking ctl`, `interlocking up`, the dashboard and the tests
//! (`docs/control.md`).
//!
//! Owns the axum router, the bearer-token check (every request, when a
//! token is configured; the listener only leaves loopback with
//! `allow_remote` and a token, which [`crate::config`] enforces), the
//! Prometheus recorder, and the endpoints: `/healthz`, `/readyz`,
//! `/control/status`, `/control/routes`, `/control/streams/{id}`,
//! `/control/timeline`, `/control/peers`, `/control/channels`,
//! `POST /control/send`, `POST /control/drain`, `POST /control/faults`
//! (only with `fault_injection`), `/metrics` and the dashboard at `/`.
//! Every view is built in [`views`] from the running parts; nothing here
//! decides routes or touches frames.

pub mod client;
pub mod views;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::app::runtime::{Runtime, SendFailure};
use crate::channels::command::SendOptions;
use crate::vocab::StreamId;

/// The dashboard page (static HTML and JS, no build step).
pub const DASHBOARD: &str = include_str!("../web/dashboard.html");

/// The process-wide Prometheus handle (installed on first use; `None` if
/// another metrics recorder was installed first).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .clone()
}

#[derive(Clone)]
struct Ctx {
    runtime: Arc<Runtime>,
    metrics: Option<PrometheusHandle>,
    token: Option<Arc<str>>,
}

/// A running control API listener.
pub struct ControlServer {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Binds `addr` and serves the API over `runtime`.
    pub async fn start(
        addr: SocketAddr,
        runtime: Arc<Runtime>,
        metrics: Option<PrometheusHandle>,
    ) -> std::io::Result<Self> {
        let token = runtime.config.diagnostics.token.clone().map(Arc::from);
        let ctx = Ctx {
            runtime,
            metrics,
            token,
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = router(ctx);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "control API stopped");
            }
        });
        Ok(Self { addr, stop, task })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving (open requests get up to 2 s).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

fn router(ctx: Ctx) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/control/status", get(status))
        .route("/control/sidecar", get(sidecar))
        .route("/control/routes", get(routes))
        .route("/control/streams/{*id}", get(stream))
        .route("/control/timeline", get(timeline))
        .route("/control/peers", get(peers))
        .route("/control/channels", get(channels))
        .route("/control/send", post(send))
        .route("/control/drain", post(drain));
    if ctx.runtime.config.diagnostics.fault_injection {
        r = r.route("/control/faults", post(faults).get(faults_get));
    }
    if ctx.runtime.config.diagnostics.dashboard {
        r = r.route("/", get(|| async { Html(DASHBOARD) }));
    }
    r.layer(from_fn_with_state(ctx.clone(), auth))
        .with_state(ctx)
}

/// Constant-time equality of two byte strings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(ctx): State<Ctx>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(token) = &ctx.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.trim().as_bytes(), token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"error": "missing or wrong bearer token"})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

fn err(code: StatusCode, msg: impl std::fmt::Display) -> Response {
    (code, Json(json!({"error": msg.to_string()}))).into_response()
}

async fn healthz(State(ctx): State<Ctx>) -> Response {
    let alive = ctx.runtime.node().is_none_or(|n| n.is_running());
    let code = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({"alive": alive, "node": ctx.runtime.config.id})),
    )
        .into_response()
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    let r = views::readiness(&ctx.runtime);
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r)).into_response()
}

async fn status(State(ctx): State<Ctx>) -> Response {
    Json(views::status(&ctx.runtime).await).into_response()
}

async fn routes(State(ctx): State<Ctx>) -> Response {
    Json(views::routes(&ctx.runtime).await).into_response()
}

async fn stream(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    let id = StreamId::new(id.trim_start_matches('/'));
    match views::stream(&ctx.runtime, &id).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => err(
            StatusCode::NOT_FOUND,
            format!("no stream {id} on this node"),
        ),
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn timeline(State(ctx): State<Ctx>) -> Response {
    Json(views::timeline(&ctx.runtime)).into_response()
}

/// `GET /control/sidecar`: the hub's sidecar (its own diagnostics: remote
/// session state, reconnects, RTT; and, for a child, its supervision).
async fn sidecar(State(ctx): State<Ctx>) -> Response {
    match ctx.runtime.node().and_then(|n| n.sidecar.as_ref()) {
        Some(s) => Json(s.view()).into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no sidecar configured"})),
        )
            .into_response(),
    }
}

async fn peers(State(ctx): State<Ctx>) -> Response {
    Json(views::peers(&ctx.runtime)).into_response()
}

async fn channels(State(ctx): State<Ctx>) -> Response {
    Json(views::channels(&ctx.runtime).await).into_response()
}

/// `POST /control/send`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    stream: String,
    command: Value,
    #[serde(default)]
    class: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

async fn send(State(ctx): State<Ctx>, Json(body): Json<SendBody>) -> Response {
    let opts = match body.class.as_deref() {
        None | Some("a") | Some("A") => SendOptions::class_a(),
        Some("b") | Some("B") => SendOptions::class_b(),
        Some(other) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("class must be a or b, not {other:?}"),
            );
        }
    };
    let timeout = Duration::from_millis(body.timeout_ms.unwrap_or(10_000).clamp(1, 120_000));
    let stream = StreamId::new(&body.stream);
    match ctx.runtime.send(&stream, body.command, opts, timeout).await {
        Ok((id, reply)) => {
            Json(json!({"stream": stream, "message_id": id, "reply": reply})).into_response()
        }
        Err(e @ SendFailure::Draining) => err(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e @ SendFailure::UnknownStream(_)) => err(StatusCode::NOT_FOUND, e),
        Err(e @ SendFailure::Timeout(_)) => err(StatusCode::GATEWAY_TIMEOUT, e),
        Err(e @ SendFailure::Command(_)) => err(StatusCode::BAD_GATEWAY, e),
    }
}

/// `POST /control/drain`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Stop the process after draining (default true).
    #[serde(default)]
    exit: Option<bool>,
}

async fn drain(State(ctx): State<Ctx>, body: Option<Json<DrainBody>>) -> Response {
    let body = body.map(|b| b.0).unwrap_or_default();
    let timeout = Duration::from_millis(body.timeout_ms.unwrap_or(30_000).min(600_000));
    let pending = ctx.runtime.drain(timeout).await;
    let exit = body.exit.unwrap_or(true);
    if exit {
        ctx.runtime.request_stop(if pending == 0 {
            "drained".to_string()
        } else {
            format!("drain timed out with {pending} commands pending")
        });
    }
    Json(json!({"drained": pending == 0, "outbox_pending": pending, "exiting": exit}))
        .into_response()
}

/// `POST /control/faults`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    #[serde(default)]
    blackhole: Option<bool>,
    #[serde(default)]
    loss: Option<f64>,
}

async fn faults(State(ctx): State<Ctx>, Json(body): Json<FaultBody>) -> Response {
    let Some(f) = ctx.runtime.node().and_then(|n| n.faults.as_ref()) else {
        return err(StatusCode::NOT_FOUND, "no fault injector on this process");
    };
    if let Some(b) = body.blackhole {
        tracing::warn!(blackhole = b, "fault injection: QUIC socket blackhole");
        f.set_blackhole(b);
    }
    if let Some(l) = body.loss {
        if !(0.0..=1.0).contains(&l) {
            return err(StatusCode::BAD_REQUEST, "loss must be between 0 and 1");
        }
        f.set_loss(l);
    }
    faults_get(State(ctx)).await
}

async fn faults_get(State(ctx): State<Ctx>) -> Response {
    match ctx.runtime.node().and_then(|n| n.faults.as_ref()) {
        Some(f) => Json(json!({
            "blackhole": f.is_blackholed(),
            "loss": f.loss(),
            "dropped": f.dropped(),
        }))
        .into_response(),
        None => err(StatusCode::NOT_FOUND, "no fault injector on this process"),
    }
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    views::update_gauges(&ctx.runtime);
    match &ctx.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => err(
            StatusCode::SERVICE_UNAVAILABLE,
            "another metrics recorder is installed in this process",
        ),
    }
}

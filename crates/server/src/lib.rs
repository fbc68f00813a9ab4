//! runfleet's HTTP surface and the long-running service around the engine.
//!
//! **Owns**: the routes of INTERFACE.md (`POST /webhook`, `POST /v1/start`,
//! `GET /v1/runs/{id}`, `GET /healthz`, `GET /readyz`, `GET /metrics`,
//! `GET /`), the on-demand API's authentication ([`v1::auth`]: GitHub
//! Actions OIDC tokens against the issuer's JWKS, the token-and-HMAC
//! scheme), their limits (body size,
//! timeouts), structured JSON errors, the engine driver task, and graceful
//! shutdown (stop intake, finish the step under way, return).
//!
//! **Never**: acknowledges a webhook or a start request before the store
//! committed it; calls AWS, or GitHub on the engine's behalf (the engine
//! does, through its adapters; the API only fetches the OIDC issuer's keys
//! and asks GitHub whether a caller's token reads a repository); shows a
//! secret on a page, in a metric or in an error body.
//!
//! **Public boundary**: [`start`] -> [`Running`] (`addr`, `stop`),
//! [`router`] over an [`AppState`], [`metrics::Metrics`], [`view::View`].

pub mod metrics;
pub mod page;
pub mod v1;
pub mod view;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use runfleet_core::config::Config;
use runfleet_engine::Engine;
use runfleet_engine::driver::{Waker, drive, now_ms};
use runfleet_engine::ports::{Intake, Store};
use runfleet_github::webhook::{Delivery, Verifier, receive};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::timeout::TimeoutLayer;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::view::View;

/// Largest request body accepted (GitHub's workflow_job payloads are a few KB).
pub const BODY_LIMIT: usize = 1024 * 1024;
/// A request that takes longer is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What every handler shares.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub waker: Waker,
    pub verifier: Option<Verifier>,
    pub view: RwLock<View>,
    pub metrics: Metrics,
    /// The on-demand API's verifiers and accepted runs.
    pub api: v1::Api,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhook", post(webhook))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(status_page))
        .route("/status.json", get(status_json))
        .route("/v1/start", post(v1::start))
        .route("/v1/runs/{id}", get(v1::run))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

async fn webhook(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(verifier) = st.verifier.as_ref().filter(|_| !st.config.github.poll) else {
        return error(
            StatusCode::NOT_FOUND,
            "webhooks are off: github.poll = true",
        );
    };
    let (delivery_id, delivery) = match receive(verifier, &headers, &body) {
        Ok(d) => d,
        Err(e) => {
            st.metrics.webhook("rejected");
            warn!(reason = %e, "webhook refused");
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, e.to_string());
        }
    };
    match delivery {
        Delivery::Ping => (StatusCode::OK, axum::Json(json!({ "ok": "pong" }))).into_response(),
        Delivery::Other(event) => {
            st.metrics.webhook("ignored");
            info!(event = %event, "webhook event ignored");
            StatusCode::NO_CONTENT.into_response()
        }
        Delivery::WorkflowJob(ev) => match st.store.intake(&delivery_id, &ev).await {
            Ok(Intake::Stored(_)) => {
                st.metrics.webhook("accepted");
                st.waker.wake();
                info!(job_id = ev.job_id, run_id = ev.run_id, repo = %ev.repo, status = ?ev.status, delivery = %delivery_id, "webhook stored");
                (StatusCode::ACCEPTED, axum::Json(json!({ "stored": true }))).into_response()
            }
            Ok(Intake::Duplicate) => {
                st.metrics.webhook("duplicate");
                (
                    StatusCode::ACCEPTED,
                    axum::Json(json!({ "stored": false, "duplicate": true })),
                )
                    .into_response()
            }
            Err(e) => {
                warn!(error = %e, "webhook not stored");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not stored, try again: {}", e.message),
                )
            }
        },
    }
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let h = st.view.read().expect("view lock").health.clone();
    let body = json!({
        "ready": h.ready(),
        "store": h.store_error.clone().unwrap_or_else(|| if h.store_reached { "ok".into() } else { "not reached yet".into() }),
        "github": h.github_error.clone().unwrap_or_else(|| if h.github_reached { "ok".into() } else { "not reached yet".into() }),
        "aws": h.cloud_error.clone().unwrap_or_else(|| if h.cloud_reached { "ok".into() } else { "not reached yet".into() }),
        "leader": h.leader(),
    });
    let status = if h.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

async fn status_page(State(st): State<Arc<AppState>>) -> Response {
    let view = st.view.read().expect("view lock").clone();
    let timeline = st.store.timeline(None, 100).await.unwrap_or_default();
    let html = page::render(&view, &timeline, now_ms());
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn status_json(State(st): State<Arc<AppState>>) -> Response {
    let view = st.view.read().expect("view lock").clone();
    axum::Json(view).into_response()
}

/// A running service.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    engine: JoinHandle<Engine>,
}

impl Running {
    /// Stops intake, lets the engine finish its step, and returns it.
    pub async fn stop(self) -> Engine {
        let _ = self.shutdown.send(true);
        if let Ok(Err(e)) = self.server.await {
            warn!(error = %e, "http server ended with an error");
        }
        self.engine.await.expect("engine task")
    }
}

/// Binds `listen` (port 0 picks a free port), serves the routes and drives
/// the engine until [`Running::stop`].
pub async fn start(engine: Engine, listen: &str) -> std::io::Result<Running> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let config = Arc::new(engine.config().clone());
    let verifier = config.github.webhook_secret.as_ref().map(Verifier::new);
    let state = Arc::new(AppState {
        metrics: Metrics::new(&config),
        api: v1::Api::new(&config),
        store: engine.store().clone(),
        waker: Waker::new(),
        verifier,
        view: RwLock::new(View {
            fleet: config.fleet.clone(),
            ..View::default()
        }),
        config,
    });
    let (tx, rx) = watch::channel(false);
    let app = router(state.clone());
    let mut http_rx = rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_rx.wait_for(|stop| *stop).await;
            })
            .await
    });
    let st = state.clone();
    let waker = state.waker.clone();
    let engine = tokio::spawn(drive(engine, waker, rx, move |e: &mut Engine| {
        let view = View::of(e, now_ms());
        st.metrics.update(e, &view);
        *st.view.write().expect("view lock") = view;
    }));
    info!(%addr, "listening");
    Ok(Running {
        addr,
        state,
        shutdown: tx,
        server,
        engine,
    })
}

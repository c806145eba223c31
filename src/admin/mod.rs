//! The admin listener: `/metrics` (Prometheus text format), `/livez`, `/readyz`, the
//! admin API under `/api/v1` (see `api.rs` and docs/admin-api.yaml), and the web console
//! under `/ui/` (`ui.rs`). When
//! `admin.token` is set, every API call needs it as a bearer token, and so do
//! `/metrics` and the health probes unless `admin.public` lists them.

pub mod api;
pub mod scrape;
pub mod ui;

use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::problem::Problem;
use crate::metrics::Metrics;

/// What readiness depends on: the server names the step it is at while it starts
/// (opening the log, loading subscriptions, binding listeners) and stops; the log
/// writer's health and the free disk space are read at each probe.
#[derive(Debug)]
pub struct Health {
    /// Why the server is not ready; `None` once it is.
    not_ready: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            not_ready: Mutex::new(Some("starting".into())),
        }
    }
}

impl Health {
    /// Not ready, for this reason.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.into());
    }

    pub fn set_ready(&self) {
        *self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why the server is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        self.not_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Everything the admin listener serves. The API part is set once the log is open.
pub struct Admin {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub token: Option<String>,
    /// `/metrics` answers without the token.
    pub metrics_public: bool,
    /// `/livez` and `/readyz` answer without the token.
    pub health_public: bool,
    pub api: OnceLock<api::Api>,
    /// The scrape-time view, set with the API.
    pub scrape: OnceLock<Arc<scrape::StateCollector>>,
}

/// Serves the admin listener until `shutdown` is cancelled.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api::routes())
        .merge(ui::routes())
        .layer(middleware::from_fn_with_state(admin.clone(), authorize))
        .with_state(admin);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

/// 200 `ready`, or 503 with the reason: the start-up step not yet done, shutting down,
/// the log failing to write, less free disk than `storage.minFreeBytes`, or the hard
/// quota reached (every append would be refused, so producers are better sent to another
/// replica).
async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let mut reason = admin.health.not_ready();
    if let (None, Some(api)) = (&reason, admin.api.get()) {
        reason = api.log.refusing_appends().await;
    }
    match reason {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    if let Some(view) = admin.scrape.get() {
        view.refresh().await;
    }
    let m = admin.metrics.clone();
    let body = tokio::task::spawn_blocking(move || m.render())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// With `admin.token` set, every call needs `Authorization: Bearer <token>` but those
/// to the endpoints `admin.public` opens.
async fn authorize(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let public = match request.uri().path() {
        "/metrics" => admin.metrics_public,
        "/livez" | "/readyz" => admin.health_public,
        // The console's own files hold no data: what it shows, it asks the API for.
        path => ui::is_console_file(path),
    };
    if let (Some(token), false) = (&admin.token, public) {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| crate::http::auth::bearer_token(v.as_bytes()));
        if !presented.is_some_and(|p| crate::http::auth::is_accepted(p, [token.as_str()])) {
            let p = Problem::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "the admin listener needs its token as Authorization: Bearer <token>",
            )
            .with_header(header::WWW_AUTHENTICATE, "Bearer");
            return into_axum(p.into_response());
        }
    }
    next.run(request).await
}

/// Turns a hyper response with a full body into an axum one.
pub(crate) fn into_axum(r: http::Response<http_body_util::Full<bytes::Bytes>>) -> Response {
    let (parts, body) = r.into_parts();
    Response::from_parts(parts, axum::body::Body::new(body))
}

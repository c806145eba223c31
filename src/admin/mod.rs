//! The admin listener: `/metrics` (Prometheus text format), `/livez`, `/readyz`, and
//! the admin API under `/api/v1` (see `api.rs` and docs/admin-api.yaml). When
//! `admin.token` is set, every call that changes something needs it as a bearer token.

pub mod api;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ingress::problem::Problem;
use crate::metrics::Metrics;

/// What readiness depends on; set by the server as start-up completes.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Everything the admin listener serves. The API part is set once the log is open.
pub struct Admin {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub token: Option<String>,
    pub api: OnceLock<api::Api>,
}

/// Serves the admin listener until `shutdown` is cancelled.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api::routes())
        .layer(middleware::from_fn_with_state(admin.clone(), authorize))
        .with_state(admin);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    if admin.health.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the log is opening\n",
        )
            .into_response()
    }
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    // Collecting reads the log's state: off the async runtime.
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

/// With `admin.token` set, calls that change something need `Authorization: Bearer`.
async fn authorize(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if let (Some(token), false) = (&admin.token, reads) {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        if !presented
            .is_some_and(|p| crate::ingress::constant_time_eq(p.as_bytes(), token.as_bytes()))
        {
            let p = Problem::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "this call needs the admin token as Authorization: Bearer <token>",
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

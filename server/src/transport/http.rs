//! Plain HTTP on the gRPC port: probes for load balancers and orchestrators, and metrics.

use crate::metrics::{self, Gauge};
use crate::store::Store;
use axum::{
    http::{header, StatusCode},
    routing::get,
    Router,
};
use std::sync::Arc;

/// Reads the gauges (sessions, queue depths) when metrics are scraped.
pub type GaugeSource = Arc<dyn Fn() -> Vec<Gauge> + Send + Sync>;

/// `/healthz`: the process serves requests. `/readyz`: the store answers too. `/metrics`:
/// Prometheus text.
pub fn routes(store: Arc<dyn Store>, gauges: GaugeSource) -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let store = store.clone();
                async move {
                    match store.ping().await {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = metrics::render(&gauges());
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
}

//! Plain HTTP probes on the gRPC port, for load balancers and orchestrators.

use crate::store::Store;
use axum::{http::StatusCode, routing::get, Router};
use std::sync::Arc;

/// `/healthz`: the process serves requests. `/readyz`: the store answers too.
pub fn probes(store: Arc<dyn Store>) -> Router {
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
}

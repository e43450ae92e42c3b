//! What browsers need around the gRPC services: the gRPC-web translation (HTTP/1.1 or 2,
//! `application/grpc-web(-text)`), CORS for pages served from other origins, and, when
//! configured, the built web client itself at `/`. Native gRPC clients pass through untouched.

use axum::{
    http::{header, HeaderName, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::get_service,
    Router,
};
use std::{path::Path, time::Duration};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    services::ServeDir,
};

/// The gRPC routes, also spoken as gRPC-web; with `origins`, pages from those origins may call
/// them (`*`: any). Preflights are answered here and never reach a service.
pub fn grpc_web(grpc: Router, origins: &[String]) -> Router {
    let grpc = grpc.layer(tonic_web::GrpcWebLayer::new());
    if origins.is_empty() {
        return grpc;
    }
    grpc.layer(cors(origins))
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let headers = [
        "authorization",
        "content-type",
        "x-device-id",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
    ];
    let exposed = ["grpc-status", "grpc-message", "grpc-status-details-bin"];
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(headers.map(HeaderName::from_static))
        .expose_headers(exposed.map(HeaderName::from_static))
        .max_age(Duration::from_secs(24 * 3600))
}

/// Serves the files under `root` to GET and HEAD (a directory's `index.html` for the directory);
/// any other request to a path no route claims is an unknown gRPC method, answered UNIMPLEMENTED
/// as tonic would.
pub fn static_files(router: Router, root: &Path) -> Router {
    let files = get_service(ServeDir::new(root)).fallback(unimplemented);
    router.fallback_service(files)
}

async fn unimplemented() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/grpc"),
            (HeaderName::from_static("grpc-status"), "12"),
        ],
    )
        .into_response()
}

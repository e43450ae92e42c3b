//! The composition root: the one place that reads the configuration, builds the backends
//! ([`embedded`] or [`cluster`]) and services, and serves them on one port until told to stop.

mod cluster;
mod embedded;
pub mod push_worker;

use crate::auth::idp::{Idp, IdpSettings, FETCH_TIMEOUT};
use crate::auth::Authenticator;
use crate::bus::{evict::Evictions, NodeLink};
use crate::config::Config;
use crate::domain::user_data::UserData;
use crate::domain::{
    chats::{ChatLimits, Chats},
    limits::RateLimiter,
    messaging::{Messaging, MessagingStores},
    page_token::PageTokens,
    presence::PresenceService,
    push_tokens::PushTokens,
    retention,
    typing::{Typing, TypingService},
};
use crate::metrics::{Gauge, Throughput};
use crate::quota::Quotas;
use crate::registry::Registry;
use crate::session::{self, Directory};
use crate::store::Store;
use crate::transport::{admin::AdminApi, grpc::ChatApi, http, listener, tls, web, ws::WebSockets};
use chat_proto::v1::{
    admin_service_server::AdminServiceServer, chat_service_server::ChatServiceServer,
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

/// Typing events waiting for the fan-out; beyond this they are dropped.
const EPHEMERAL_QUEUE: usize = 4096;
/// How long shutdown waits for sessions and in-flight calls before it gives up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for each back-end task (fan-out, relay, …) after the store closed.
const TASK_STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read or create the JWT secret in {dir}: {source}")]
    Secret { dir: String, source: std::io::Error },
    #[error("cannot open the store: {0}")]
    Store(crate::Error),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// Redis or Kafka cannot be reached or set up.
    #[error("{0}")]
    Backend(crate::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("{0}")]
    Push(#[from] crate::push::setup::SetupError),
    #[error("cannot start gRPC reflection: {0}")]
    Reflection(String),
    #[error("cannot set up the client of the identity provider's key set: {0}")]
    Jwks(crate::https::HttpError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
}

/// The node's listening socket and the address it got (`--listen` may ask for port 0).
async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let failed = |source| StartError::Listen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}

/// The TLS side of the node's port when `--tls-cert` and `--tls-key` are set: loaded now, so
/// that a bad file stops the start with an error naming its setting.
fn server_tls(config: &Config) -> Result<Option<tls::ServerTls>, StartError> {
    match config.tls.files()? {
        Some(files) => Ok(Some(tls::ServerTls::load(files)?)),
        None => Ok(None),
    }
}

/// The connections of the node's port: at most `max` open, over TLS when `tls` is set (its
/// files watched for a new certificate until `shutdown`).
fn accept(
    listener: tokio::net::TcpListener,
    max: usize,
    rate: Option<listener::ConnectionRate>,
    tls: Option<&tls::ServerTls>,
    config: &Config,
    shutdown: &CancellationToken,
) -> tls::Incoming {
    let accepted = listener::incoming(listener, max, rate);
    if let Some(tls) = tls {
        let every = Duration::from_millis(config.tls.reload_interval_ms.into());
        // Ends with `shutdown`.
        drop(tls.watch(every, shutdown.clone()));
    }
    tls::incoming(tls, accepted)
}

/// A random node id for `Welcome.node_id` and session ids.
fn node_id() -> String {
    format!("node-{}", &crate::domain::ids::new_id()[24..])
}

/// What a back end gives the rest of the node.
struct Backends {
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    /// Where the chats each user created lately are counted.
    quotas: Arc<dyn Quotas>,
    secret: Vec<u8>,
    node_id: String,
    /// Back-end specific gauges, read at each scrape.
    gauges: Vec<Box<dyn Fn() -> Gauge + Send + Sync>>,
    /// The other nodes' channels (a cluster's); `None` on the embedded default.
    link: Option<Arc<dyn NodeLink>>,
    /// Background work that ends once the store is closed or `shutdown` is cancelled.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the node hands a back end to wire its fan-out into.
struct Wiring {
    directory: Arc<Directory>,
    typing: Arc<Typing>,
    ephemeral: mpsc::Receiver<crate::domain::model::Event>,
    shutdown: CancellationToken,
}

/// Runs a node until `shutdown` is cancelled; `on_listen` hears the bound address first.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    let server_tls = server_tls(&config)?;
    let cluster = config.cluster()?;
    let directory = Arc::new(if cluster.is_some() && config.direct_copies {
        Directory::with_direct_copies()
    } else {
        Directory::default()
    });
    let typing = Arc::new(Typing::default());
    let (ephemeral_tx, ephemeral_rx) = mpsc::channel(EPHEMERAL_QUEUE);
    let wiring = Wiring {
        directory: directory.clone(),
        typing: typing.clone(),
        ephemeral: ephemeral_rx,
        shutdown: shutdown.clone(),
    };
    let backends = match cluster {
        None => embedded::start(&config, wiring)?,
        Some(cluster) => cluster::start(&config, &cluster, wiring).await?,
    };
    let Backends {
        store,
        registry,
        quotas,
        secret,
        node_id,
        gauges: backend_gauges,
        link,
        tasks,
    } = backends;
    let (authenticator, key_fetcher) = authenticator(&config, &secret, &shutdown)?;
    let tokens = PageTokens::new(&secret);
    let gauges: http::GaugeSource = {
        let (directory, registry) = (directory.clone(), registry.clone());
        Arc::new(move || {
            let mut out = vec![
                Gauge {
                    name: "chatd_sessions",
                    help: "Sessions connected to this node.",
                    value: directory.len() as f64,
                },
                Gauge {
                    name: "chatd_users_online",
                    help: "Users with at least one live device on this node.",
                    value: registry.users_online() as f64,
                },
            ];
            out.extend(backend_gauges.iter().map(|g| g()));
            out
        })
    };

    let limiter = RateLimiter::new(config.rate_limit_per_sec, config.rate_limit_burst);
    let messaging = Arc::new(Messaging::new(
        MessagingStores::of(store.clone()),
        tokens.clone(),
        limiter,
        config.max_message_bytes,
    ));
    let chats = Arc::new(
        Chats::new(store.clone(), tokens, config.max_group_size).with_limits(
            quotas.clone(),
            ChatLimits {
                chats_created_per_hour: config.limits.chats_created_per_hour,
                groups_per_user: config.limits.groups_per_user,
            },
        ),
    );
    let user_data = Arc::new(UserData::new(
        store.clone(),
        registry.clone(),
        quotas.clone(),
        Arc::new(Evictions::new(
            node_id.clone(),
            directory.clone(),
            registry.clone(),
            link,
        )),
    ));
    let presence = Arc::new(PresenceService::new(registry, store.clone()));
    let sessions = Arc::new(session::Services {
        messaging: messaging.clone(),
        presence: presence.clone(),
        typing: Arc::new(TypingService::new(
            typing.clone(),
            store.clone(),
            ephemeral_tx,
        )),
        store: store.clone(),
        directory: directory.clone(),
        settings: session::Settings {
            node_id: node_id.clone(),
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            heartbeat_timeout_ms: config.heartbeat_timeout_ms,
            queue: config.session_queue,
            max_sessions_per_user: config.limits.sessions_per_user,
        },
        shutdown: shutdown.clone(),
    });
    // Sessions learn of the shutdown through their inbox, where they wait for everything else.
    let (closing, on_shutdown) = (directory.clone(), shutdown.clone());
    tokio::spawn(async move {
        on_shutdown.cancelled().await;
        closing.close_all();
    });
    let throughput = Arc::new(Throughput::default());
    let housekeeping = tokio::spawn(housekeeping(
        store.clone(),
        messaging.clone(),
        typing,
        throughput.clone(),
        config.clone(),
        shutdown.clone(),
    ));

    let token_check = crate::push::setup::token_check(&config.push)?;
    let websockets = WebSockets::new(
        authenticator.clone(),
        sessions.clone(),
        config.max_frame_bytes(),
    );
    let admin_service = AdminServiceServer::new(AdminApi::new(
        authenticator.clone(),
        node_id.clone(),
        gauges.clone(),
        throughput,
        user_data,
    ));
    let chat_service = ChatServiceServer::new(ChatApi::new(
        authenticator,
        chats,
        messaging,
        Arc::new(PushTokens::new(store.clone(), Some(token_check))),
        sessions,
    ))
    .max_decoding_message_size(config.max_frame_bytes());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ChatServiceServer<ChatApi>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(chat_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // v1 for current tools, v1alpha for older grpcurl and Postman builds.
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let grpc = Routes::new(chat_service)
        .add_service(admin_service)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router()
        .layer(axum::middleware::from_fn(listener::refuse_over_rate));
    let mut router = web::grpc_web(grpc, &config.cors_origins)
        .merge(http::routes(store.clone(), gauges))
        .merge(websockets.routes());
    if let Some(root) = &config.web_root {
        router = web::static_files(router, root);
    }

    let (listener, local) = bind(config.listen).await?;
    on_listen(local);
    tracing::info!(%local, node_id, tls = server_tls.is_some(), "chatd serving");

    let max_connections = listener::connection_limit();
    let per_ip = config.limits.connections_per_ip_per_sec;
    tracing::info!(max_connections, per_ip, "accepting connections");
    let rate = listener::ConnectionRate::new(per_ip);
    let incoming = accept(
        listener,
        max_connections,
        rate,
        server_tls.as_ref(),
        &config,
        &shutdown,
    );
    let keepalive = Duration::from_millis(config.heartbeat_interval_ms.into());
    // tonic's server cannot upgrade HTTP/1.1: WebSocket handshakes are served beside it.
    let (grpc_router, grpc_shutdown) = (router.clone(), shutdown.clone());
    let server = websockets.serve_beside(incoming, router, move |incoming| {
        tonic::transport::Server::builder()
            .accept_http1(true)
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_routes(Routes::from(grpc_router))
            .serve_with_incoming_shutdown(incoming, grpc_shutdown.cancelled_owned())
    });
    let mut server = tokio::spawn(server);

    let served = tokio::select! {
        r = &mut server => Some(r),
        _ = shutdown.cancelled() => None,
    };
    let result = match served {
        Some(r) => r.unwrap_or(Ok(())),
        None => {
            tracing::info!("shutting down: closing sessions and finishing in-flight calls");
            health.set_not_serving::<ChatServiceServer<ChatApi>>().await;
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
                Ok(r) => r.unwrap_or(Ok(())),
                Err(_) => {
                    tracing::warn!("connections still open after the drain timeout; closing them");
                    server.abort();
                    Ok(())
                }
            }
        }
    };
    shutdown.cancel();
    housekeeping.abort();
    if let Some(task) = key_fetcher {
        task.abort();
    }
    // Sessions ended with the server: record their devices going away before the store closes.
    presence.settle(DRAIN_TIMEOUT).await;
    // Every acknowledged write is already committed; this finishes whatever is still queued.
    store.close().await;
    for mut task in tasks {
        if tokio::time::timeout(TASK_STOP_TIMEOUT, &mut task)
            .await
            .is_err()
        {
            tracing::warn!("a background task did not stop in time; aborting it");
            task.abort();
        }
    }
    result.map_err(StartError::from)
}

/// The node's token checks: its own HS256 tokens, and the identity provider's when a JWKS URL
/// is set, with the task that fetches the provider's key set. The node starts without waiting
/// for that set: until it is fetched (retried with a backoff, logged) the provider's tokens are
/// refused and the node's own work.
fn authenticator(
    config: &Config,
    secret: &[u8],
    shutdown: &CancellationToken,
) -> Result<(Authenticator, Option<tokio::task::JoinHandle<()>>), StartError> {
    let leeway = u64::from(config.jwt_leeway_secs);
    let authenticator = Authenticator::new(secret).with_leeway(leeway);
    let oidc = &config.oidc;
    let Some(url) = &oidc.jwks_url else {
        return Ok((authenticator, None));
    };
    let client = crate::https::HttpClient::new(&crate::https::HttpConfig {
        extra_ca_pem: oidc.ca_file.clone(),
        timeout: FETCH_TIMEOUT,
    })
    .map_err(StartError::Jwks)?;
    let idp = Idp::new(IdpSettings {
        jwks_url: url.clone(),
        issuer: oidc.issuer.clone(),
        audience: oidc.audience.clone(),
        leeway_secs: leeway,
        user_claim: oidc.user_claim.clone(),
        admin: oidc.admin_claim.clone(),
    });
    tracing::info!(jwks_url = %url, issuer = ?oidc.issuer, audience = ?oidc.audience, "accepting the identity provider's tokens");
    let task = tokio::spawn(idp.clone().run(client, shutdown.clone()));
    Ok((authenticator.with_idp(idp), Some(task)))
}

/// Periodic chores: the retention purge, the throughput samples (GetStats), and forgetting rate-limit buckets and typing
/// indicators that have run out, so idle devices cost no memory.
async fn housekeeping(
    store: Arc<dyn Store>,
    messaging: Arc<Messaging>,
    typing: Arc<Typing>,
    throughput: Arc<Throughput>,
    config: Config,
    shutdown: CancellationToken,
) {
    let mut purge =
        tokio::time::interval(Duration::from_millis(config.retention_interval_ms.into()));
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sample.tick() => throughput.sample(),
            _ = purge.tick() => {
                match retention::purge(store.as_ref(), config.retention(), crate::clock::now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "retention purge"),
                    Err(e) => tracing::warn!(error = %e, "retention purge failed; retrying next round"),
                }
            }
            _ = sweep.tick() => {
                let now = std::time::Instant::now();
                messaging.limiter().sweep(now);
                typing.sweep(now);
            }
        }
    }
}

//! Redis plumbing shared by the registry and the node link: connections that fail fast and
//! reconnect, one retry over a dropped connection, errors named for the client, key prefixes,
//! and the Pub/Sub link ([`pubsub`]). It knows neither the registry nor the fan-out.

pub mod pubsub;

use crate::backend_tls::BackendTls;
use crate::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::path::Path;
use std::time::Duration;

/// Where Redis is and how to reach it: the URL and, for `rediss://`, the CA and client
/// certificate. Every connection (registry, quotas, the Pub/Sub link's publisher and subscriber,
/// and their reconnects) is made from one of these, so none of them goes without the TLS files.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    pub url: String,
    pub tls: BackendTls,
}

impl RedisTarget {
    /// A URL alone: `redis://`, or `rediss://` trusting Mozilla's roots.
    pub fn plain(url: &str) -> Self {
        RedisTarget {
            url: url.to_string(),
            tls: BackendTls::default(),
        }
    }
}

/// How long connecting may take before the node reports Redis unreachable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one command of a connection (and on one (un)subscribe or PING of the subscriber).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// `"{ns}:"` for a non-empty namespace, else nothing: the prefix of Redis keys and channels.
pub(crate) fn redis_prefix(namespace: &str) -> String {
    match namespace.is_empty() {
        true => String::new(),
        false => format!("{namespace}:"),
    }
}

/// Connection-level failures are `Unavailable` (the caller may retry); a server refusing the
/// command itself is a bug.
pub(crate) fn redis_error(context: &str, e: redis::RedisError) -> Error {
    match e.retry_method() {
        redis::RetryMethod::NoRetry if !e.is_io_error() && !e.is_timeout() => {
            Error::internal(format!("{context}: {e}"))
        }
        _ => Error::Unavailable(format!("{context}: Redis unavailable: {e}")),
    }
}

/// A command or a pipeline, run by [`query`].
pub(crate) enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

/// Runs `request`, once more if the connection turned out to be broken: a connection that sat
/// idle while Redis restarted learns so only from its next command, which shouldn't fail a
/// client's call when Redis is back. Every request here is idempotent or harmless to repeat.
pub(crate) async fn query<T: redis::FromRedisValue>(
    conn: &ConnectionManager,
    request: Request<'_>,
    context: &str,
) -> Result<T> {
    let mut conn = conn.clone();
    let mut retried = false;
    loop {
        let result = match request {
            Request::Cmd(c) => c.query_async(&mut conn).await,
            Request::Pipe(p) => p.query_async(&mut conn).await,
        };
        match result {
            Ok(v) => return Ok(v),
            Err(e)
                if !retried
                    && !e.is_timeout()
                    && (e.is_connection_dropped() || e.is_io_error()) =>
            {
                retried = true;
            }
            Err(e) => return Err(redis_error(context, e)),
        }
    }
}

pub(crate) fn open_client(target: &RedisTarget) -> Result<redis::Client> {
    let invalid = |e: redis::RedisError| Error::Unavailable(format!("invalid Redis URL: {e}"));
    if !target.tls.is_set() {
        return redis::Client::open(target.url.as_str()).map_err(invalid);
    }
    // redis-rs builds rustls' config with the process's default provider, which rustls picks
    // from its features only while exactly one provider is compiled in; installing ring (the
    // one https.rs uses, deprecated there too for lacking post-quantum key exchange) keeps that
    // so whatever other crates turn on.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| {
            Error::Unavailable(format!("Redis TLS: cannot read {}: {e}", path.display()))
        })
    };
    let client_tls = match target.tls.client_pair() {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        None => None,
    };
    let root_cert = target.tls.ca.as_deref().map(read).transpose()?;
    let certs = redis::TlsCertificates {
        client_tls,
        root_cert,
    };
    redis::Client::build_with_tls(target.url.as_str(), certs).map_err(invalid)
}

/// A connection manager whose commands fail within seconds when Redis is down (the default
/// retries for longer than a client request should wait), and reconnects in the background.
pub(crate) async fn connection_manager(client: &redis::Client) -> Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(2)
        .set_min_delay(BACKOFF_MIN)
        .set_max_delay(BACKOFF_MAX)
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(COMMAND_TIMEOUT));
    let addr = client.get_connection_info().addr().to_string();
    let unreachable =
        |detail: String| Error::Unavailable(format!("cannot connect to Redis at {addr}: {detail}"));
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        client.get_connection_manager_with_config(config),
    )
    .await
    {
        Ok(Ok(manager)) => Ok(manager),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!(
            "no connection within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

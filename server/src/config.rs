//! The node's configuration: defaults < TOML file < `CHATD_*` environment < command-line flags.
//!
//! Each setting is declared once, as a field of [`Overrides`]: the field name is its TOML key,
//! its flag is `--` and the name with dashes, its environment variable `CHATD_` and the name in
//! capitals, and its doc comment is its `--help` text. [`Config`] holds the checked values and
//! their defaults; [`Overrides::apply`] has the one check of each setting, used for every layer.
//! A bad value stops start-up with a message that names the key, variable or flag it came from.

use crate::backend_tls::{check_pem, check_postgres_url, BackendTls, PemKind};
use clap::parser::ValueSource;
use serde::{Deserialize, Deserializer};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address of the one port that serves gRPC, gRPC reflection/health and HTTP probes.
    pub listen: SocketAddr,
    /// TLS for clients on `listen`: off unless both files are set.
    pub tls: TlsConfig,
    /// Where the embedded store and the generated JWT secret live.
    pub data_dir: PathBuf,
    /// HS256 secret; when unset, one is generated in `data_dir` on first start.
    pub jwt_secret: Option<String>,
    /// Clock skew allowed on a token's `exp` and `nbf`, HS256 and identity provider tokens alike.
    pub jwt_leeway_secs: u32,
    /// Tokens signed by an OpenID Connect identity provider (RS256 / ES256 against its JWKS),
    /// accepted besides the node's own HS256 tokens; off without a `jwks_url`.
    pub oidc: OidcConfig,
    /// Largest number of members a group may have, the creator included.
    pub max_group_size: u32,
    /// Largest message content (text + ciphertext + attributes) in bytes.
    pub max_message_bytes: u32,
    /// Token-bucket refill rate per user per device.
    pub rate_limit_per_sec: u32,
    /// Token-bucket capacity per user per device.
    pub rate_limit_burst: u32,
    /// The abuse limits (README, "Abuse limits"); 0 turns one off.
    pub limits: AbuseLimits,
    /// How often clients are told to ping.
    pub heartbeat_interval_ms: u32,
    /// A session silent for this long is closed.
    pub heartbeat_timeout_ms: u32,
    /// Capacity of a session's outgoing event queue; a session that lets it fill is closed.
    pub session_queue: usize,
    /// Chats with more members get no live receipts for other members (only `GetReceipts`).
    pub live_receipts_max_members: u32,
    /// Messages older than this many days are purged (fractions allowed).
    pub retention_days: f64,
    /// How often the retention purge runs.
    pub retention_interval_ms: u32,
    /// The cluster back ends; with none set the node runs on the embedded default.
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    /// Comma-separated `host:port` list.
    pub kafka_brokers: Option<String>,
    /// TLS to Redis (with a `rediss://` URL): CA, client certificate and key.
    pub redis_tls: BackendTls,
    /// TLS to Kafka (`security.protocol=ssl` when any is set): CA, client certificate and key.
    pub kafka_tls: BackendTls,
    /// This node's id in the cluster (`Welcome.node_id`, Redis channel `node.{id}`).
    pub node_id: Option<String>,
    /// Apply pending PostgreSQL migrations at start (`CHATD_MIGRATE=auto`).
    pub migrate_auto: bool,
    /// Cluster: messages of direct chats also go straight from the committing node to the
    /// recipients' nodes, ahead of Kafka (`bus::direct`).
    pub direct_copies: bool,
    /// Prefix of every Redis key and channel and Kafka topic and group, so that several
    /// deployments can share one Redis and one Kafka. Empty: the documented names exactly.
    pub namespace: String,
    /// Partitions of the Kafka topics this node creates when they are missing.
    pub kafka_partitions: u32,
    /// Most PostgreSQL connections this node opens.
    pub database_pool: u32,
    /// Origins (`scheme://host[:port]`) whose pages may call gRPC-web; empty: same origin only.
    /// `*` allows any origin (tokens travel in headers, never cookies, so no credentials mode).
    pub cors_origins: Vec<String>,
    /// A built web client (e.g. `examples/web/dist`) served at `/`; none by default.
    pub web_root: Option<PathBuf>,
    /// Push providers; a provider without its settings is off (no push at all with none).
    pub push: PushConfig,
    /// How log lines are written to stderr.
    pub log_format: LogFormat,
}

/// TLS on the node's port (README, "TLS"). Both files or neither: see [`TlsConfig::files`].
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// The certificate chain (PEM, leaf first).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: Option<PathBuf>,
    /// How often the two files are looked at for a change.
    pub reload_interval_ms: u32,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            reload_interval_ms: 5_000,
        }
    }
}

impl TlsConfig {
    /// The two files when TLS is on; `None` when it is off; an error naming both settings when
    /// only one is given (a node that silently served plain text would be worse than none).
    pub fn files(&self) -> Result<Option<crate::transport::tls::Files>, ConfigError> {
        const CERT: &str = "tls_cert (--tls-cert, CHATD_TLS_CERT)";
        const KEY: &str = "tls_key (--tls-key, CHATD_TLS_KEY)";
        match (&self.cert, &self.key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(crate::transport::tls::Files {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (Some(_), None) => Err(ConfigError::IncompleteTls {
                set: CERT,
                missing: KEY,
            }),
            (None, Some(_)) => Err(ConfigError::IncompleteTls {
                set: KEY,
                missing: CERT,
            }),
        }
    }
}

/// The abuse limits: each refuses what goes past it with RESOURCE_EXHAUSTED naming the setting.
/// 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbuseLimits {
    /// New connections accepted per remote address (IPv6: per /64) per second; bursts of twice
    /// this are let through.
    pub connections_per_ip_per_sec: u32,
    /// Live sessions (Connect, Subscribe, WebSocket) of one user across the cluster.
    pub sessions_per_user: u32,
    /// Chats (groups, new direct chats) one user creates in any hour.
    pub chats_created_per_hour: u32,
    /// Groups one user is a member of.
    pub groups_per_user: u32,
}

impl Default for AbuseLimits {
    fn default() -> Self {
        AbuseLimits {
            connections_per_ip_per_sec: 20,
            sessions_per_user: 20,
            chats_created_per_hour: 100,
            groups_per_user: 500,
        }
    }
}

/// Log lines as text for people, or one JSON object per line for collectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The push providers' settings (README, "Push notifications"). Secrets are read from files.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PushConfig {
    /// FCM: the service-account JSON file.
    pub fcm_credentials: Option<PathBuf>,
    /// FCM's API base URL (tests, regional endpoints) and OAuth2 token URL overrides.
    pub fcm_url: Option<String>,
    pub fcm_token_url: Option<String>,
    /// APNs: the .p8 signing key, its key id, the team id, the default topic (bundle id).
    pub apns_key: Option<PathBuf>,
    pub apns_key_id: Option<String>,
    pub apns_team_id: Option<String>,
    pub apns_topic: Option<String>,
    /// APNs base URL (default production; the sandbox or a test server).
    pub apns_url: Option<String>,
    /// Web Push: the VAPID private key file and the contact (`mailto:` or `https:`).
    pub vapid_key: Option<PathBuf>,
    pub vapid_subject: Option<String>,
    /// Push services a subscription may point at (host or *.domain, optional :port); none set:
    /// the browsers' own services.
    pub webpush_hosts: Option<Vec<String>>,
    /// The webhook gateway (never a client's choice) and its bearer secret.
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    /// An extra CA certificate (PEM) the providers' TLS trusts, for test servers.
    pub ca_file: Option<PathBuf>,
    /// What a push says: `sender-text`, `sender` or `generic`.
    pub text: crate::domain::push::PushText,
}

/// The identity provider's settings (README, "Tokens from an identity provider"). Every one but
/// `jwks_url` only refines it, so setting one without the URL is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct OidcConfig {
    /// Where the provider publishes its key set: https, or http to a loopback address (tests).
    pub jwks_url: Option<String>,
    /// The `iss` a token must carry, when set.
    pub issuer: Option<String>,
    /// The audiences a token's `aud` must name one of, when any.
    pub audience: Vec<String>,
    /// An extra CA certificate (PEM) trusted for the key set's server (a private IdP, tests).
    pub ca_file: Option<PathBuf>,
    /// The claim that is the user id.
    pub user_claim: String,
    /// The claim that makes a caller an admin (`NAME`: a boolean; `NAME=VALUE`: a string, a
    /// space-separated list or an array holding VALUE); no provider token is admin without it.
    pub admin_claim: Option<crate::auth::idp::AdminRule>,
}

impl OidcConfig {
    /// The settings that refine the provider's tokens are refused without its `jwks_url`: an
    /// issuer set alone would look checked while nothing checks it (the node's own HS256
    /// tokens carry none).
    fn check(&self) -> Result<(), ConfigError> {
        if self.jwks_url.is_some() {
            return Ok(());
        }
        let refinements = [
            ("jwt_issuer", self.issuer.clone()),
            (
                "jwt_audience",
                Some(self.audience.join(",")).filter(|a| !a.is_empty()),
            ),
            (
                "jwks_ca_file",
                self.ca_file.as_ref().map(|p| p.display().to_string()),
            ),
            (
                "jwt_user_claim",
                Some(self.user_claim.clone()).filter(|c| c != "sub"),
            ),
            (
                "jwt_admin_claim",
                self.admin_claim.as_ref().map(|r| r.to_string()),
            ),
        ];
        match refinements
            .into_iter()
            .find_map(|(key, value)| Some((key, value?)))
        {
            None => Ok(()),
            Some((key, value)) => Err(ConfigError::Invalid {
                source_name: key.into(),
                value,
                reason: "applies to identity provider tokens only: set jwks_url too".into(),
            }),
        }
    }
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            jwks_url: None,
            issuer: None,
            audience: Vec::new(),
            ca_file: None,
            user_claim: "sub".to_string(),
            admin_claim: None,
        }
    }
}

/// The three engines of a cluster node, all set (see [`Config::cluster`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub database_url: String,
    pub redis_url: String,
    pub kafka_brokers: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            tls: TlsConfig::default(),
            data_dir: PathBuf::from("./chatd-data"),
            jwt_secret: None,
            jwt_leeway_secs: 5,
            oidc: OidcConfig::default(),
            max_group_size: 1000,
            max_message_bytes: 16 * 1024,
            rate_limit_per_sec: 50,
            rate_limit_burst: 50,
            limits: AbuseLimits::default(),
            heartbeat_interval_ms: 30_000,
            heartbeat_timeout_ms: 90_000,
            session_queue: 1024,
            live_receipts_max_members: 100,
            retention_days: 30.0,
            retention_interval_ms: 60_000,
            database_url: None,
            redis_url: None,
            kafka_brokers: None,
            redis_tls: BackendTls::default(),
            kafka_tls: BackendTls::default(),
            node_id: None,
            migrate_auto: false,
            direct_copies: true,
            namespace: String::new(),
            kafka_partitions: 8,
            database_pool: 16,
            cors_origins: Vec::new(),
            web_root: None,
            push: PushConfig::default(),
            log_format: LogFormat::Text,
        }
    }
}

/// A setting as written, before its check. TOML numbers and booleans are taken as their text, so
/// that every layer goes through the same check and an error quotes the value as given.
#[derive(Debug, Clone, PartialEq)]
pub struct Text(pub String);

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(s.to_string())
    }
}

/// How clap reads a flag or variable.
impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(s)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Text(match toml::Value::deserialize(d)? {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => format!("{other:?}"),
        }))
    }
}

/// The settings, one layer of them: the TOML file, the environment or the flags. `None` leaves
/// the lower layer's value in place. The help text gives defaults; [`Config::default`] has them.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Address to listen on [default: 127.0.0.1:50051]
    #[arg(long, env = "CHATD_LISTEN")]
    pub listen: Option<Text>,
    /// TLS certificate chain (PEM, leaf first) for clients; reloaded on change [default: plain text]
    #[arg(long, env = "CHATD_TLS_CERT")]
    pub tls_cert: Option<Text>,
    /// Private key (PEM: PKCS#8, RSA or EC) of --tls-cert; reloaded on change
    #[arg(long, env = "CHATD_TLS_KEY")]
    pub tls_key: Option<Text>,
    /// How often the TLS files are checked for a change, in ms [default: 5000]
    #[arg(long, env = "CHATD_TLS_RELOAD_INTERVAL_MS")]
    pub tls_reload_interval_ms: Option<Text>,
    /// Data directory of the embedded store [default: ./chatd-data]
    #[arg(long, env = "CHATD_DATA_DIR")]
    pub data_dir: Option<Text>,
    /// HS256 JWT secret, at least 16 bytes [default: generated in the data dir]
    #[arg(long, env = "CHATD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Text>,
    /// Clock skew allowed on a token's exp and nbf, in seconds [default: 5]
    #[arg(long, env = "CHATD_JWT_LEEWAY_SECS")]
    pub jwt_leeway_secs: Option<Text>,
    /// JWKS URL of an OpenID Connect provider whose RS256/ES256 tokens are accepted too [default: none]
    #[arg(long, env = "CHATD_JWKS_URL")]
    pub jwks_url: Option<Text>,
    /// The `iss` provider tokens must carry [default: not checked]
    #[arg(long, env = "CHATD_JWT_ISSUER")]
    pub jwt_issuer: Option<Text>,
    /// Audiences a provider token's `aud` must name one of, comma-separated [default: not checked]
    #[arg(long, env = "CHATD_JWT_AUDIENCE")]
    pub jwt_audience: Option<Text>,
    /// Extra CA certificate (PEM) trusted for the JWKS server [default: none]
    #[arg(long, env = "CHATD_JWKS_CA_FILE")]
    pub jwks_ca_file: Option<Text>,
    /// The provider token claim that is the user id [default: sub]
    #[arg(long, env = "CHATD_JWT_USER_CLAIM")]
    pub jwt_user_claim: Option<Text>,
    /// The provider token claim that makes an admin: NAME (boolean) or NAME=VALUE [default: none]
    #[arg(long, env = "CHATD_JWT_ADMIN_CLAIM")]
    pub jwt_admin_claim: Option<Text>,
    /// Maximum members of a group [default: 1000]
    #[arg(long, env = "CHATD_MAX_GROUP_SIZE")]
    pub max_group_size: Option<Text>,
    /// Maximum content bytes of a message [default: 16384]
    #[arg(long, env = "CHATD_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<Text>,
    /// Sends per second per user per device [default: 50]
    #[arg(long, env = "CHATD_RATE_LIMIT_PER_SEC")]
    pub rate_limit_per_sec: Option<Text>,
    /// Burst of sends per user per device [default: the rate]
    #[arg(long, env = "CHATD_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<Text>,
    /// New connections per remote IP (IPv6: /64) per second, bursts of twice that; 0: no limit [default: 20]
    #[arg(long, env = "CHATD_MAX_CONNECTIONS_PER_IP_PER_SEC")]
    pub max_connections_per_ip_per_sec: Option<Text>,
    /// Live sessions of one user across the cluster; 0: no limit [default: 20]
    #[arg(long, env = "CHATD_MAX_SESSIONS_PER_USER")]
    pub max_sessions_per_user: Option<Text>,
    /// Chats one user may create in any hour; 0: no limit [default: 100]
    #[arg(long, env = "CHATD_MAX_CHATS_CREATED_PER_HOUR")]
    pub max_chats_created_per_hour: Option<Text>,
    /// Groups one user may be a member of; 0: no limit [default: 500]
    #[arg(long, env = "CHATD_MAX_GROUPS_PER_USER")]
    pub max_groups_per_user: Option<Text>,
    /// Client ping interval in ms [default: 30000]
    #[arg(long, env = "CHATD_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<Text>,
    /// Silence after which a session is closed, in ms [default: 90000]
    #[arg(long, env = "CHATD_HEARTBEAT_TIMEOUT_MS")]
    pub heartbeat_timeout_ms: Option<Text>,
    /// Outgoing event queue per session [default: 1024]
    #[arg(long, env = "CHATD_SESSION_QUEUE")]
    pub session_queue: Option<Text>,
    /// Largest chat whose receipts are pushed live to other members [default: 100]
    #[arg(long, env = "CHATD_LIVE_RECEIPTS_MAX_MEMBERS")]
    pub live_receipts_max_members: Option<Text>,
    /// Days messages are kept; fractions allowed [default: 30]
    #[arg(long, env = "CHATD_RETENTION_DAYS")]
    pub retention_days: Option<Text>,
    /// Interval of the retention purge in ms [default: 60000]
    #[arg(long, env = "CHATD_RETENTION_INTERVAL_MS")]
    pub retention_interval_ms: Option<Text>,
    /// PostgreSQL URL, postgres://… [default: embedded SQLite]
    #[arg(long, env = "CHATD_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Text>,
    /// Redis URL, redis://… [default: in-process registry]
    #[arg(long, env = "CHATD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Text>,
    /// Kafka bootstrap brokers, host:port,… [default: in-process bus]
    #[arg(long, env = "CHATD_KAFKA_BROKERS")]
    pub kafka_brokers: Option<Text>,
    /// CA certificate(s) (PEM) Redis's TLS certificate must chain to; needs a rediss:// URL [default: Mozilla's roots]
    #[arg(long, env = "CHATD_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<Text>,
    /// Client certificate (PEM) presented to Redis; with --redis-tls-key [default: none]
    #[arg(long, env = "CHATD_REDIS_TLS_CERT")]
    pub redis_tls_cert: Option<Text>,
    /// Private key (PEM) of --redis-tls-cert [default: none]
    #[arg(long, env = "CHATD_REDIS_TLS_KEY")]
    pub redis_tls_key: Option<Text>,
    /// CA certificate(s) (PEM) of the Kafka brokers; any --kafka-tls-* turns TLS on [default: plaintext]
    #[arg(long, env = "CHATD_KAFKA_TLS_CA")]
    pub kafka_tls_ca: Option<Text>,
    /// Client certificate (PEM) presented to Kafka; with --kafka-tls-key [default: none]
    #[arg(long, env = "CHATD_KAFKA_TLS_CERT")]
    pub kafka_tls_cert: Option<Text>,
    /// Private key (PEM) of --kafka-tls-cert [default: none]
    #[arg(long, env = "CHATD_KAFKA_TLS_KEY")]
    pub kafka_tls_key: Option<Text>,
    /// Node id in the cluster [default: generated]
    #[arg(long, env = "CHATD_NODE_ID")]
    pub node_id: Option<Text>,
    /// `auto` applies PostgreSQL migrations at start [default: off]
    #[arg(long, env = "CHATD_MIGRATE")]
    pub migrate: Option<Text>,
    /// `on`: cluster nodes send direct chats' messages straight to the recipients' nodes
    /// too, ahead of Kafka; `off`: Kafka only [default: on]
    #[arg(long, env = "CHATD_DIRECT_COPIES")]
    pub direct_copies: Option<Text>,
    /// Prefix of Redis keys/channels and Kafka topics/groups [default: none]
    #[arg(long, env = "CHATD_NAMESPACE")]
    pub namespace: Option<Text>,
    /// Partitions of Kafka topics created by the node [default: 8]
    #[arg(long, env = "CHATD_KAFKA_PARTITIONS")]
    pub kafka_partitions: Option<Text>,
    /// Most PostgreSQL connections per node [default: 16]
    #[arg(long, env = "CHATD_DATABASE_POOL")]
    pub database_pool: Option<Text>,
    /// Origins allowed to call gRPC-web from a page, comma-separated, or * [default: same origin only]
    #[arg(long, env = "CHATD_CORS_ORIGINS")]
    pub cors_origins: Option<Text>,
    /// Directory of a built web client to serve at / [default: none]
    #[arg(long, env = "CHATD_WEB_ROOT")]
    pub web_root: Option<Text>,
    /// Log lines as `text` or `json` (one object per line) [default: text]
    #[arg(long, env = "CHATD_LOG_FORMAT")]
    pub log_format: Option<Text>,
    /// FCM service-account JSON file [default: FCM off]
    #[arg(long, env = "CHATD_PUSH_FCM_CREDENTIALS")]
    pub push_fcm_credentials: Option<Text>,
    /// FCM API base URL [default: https://fcm.googleapis.com]
    #[arg(long, env = "CHATD_PUSH_FCM_URL")]
    pub push_fcm_url: Option<Text>,
    /// OAuth2 token URL for FCM [default: the service account's token_uri]
    #[arg(long, env = "CHATD_PUSH_FCM_TOKEN_URL")]
    pub push_fcm_token_url: Option<Text>,
    /// APNs signing key (.p8) file [default: APNs off]
    #[arg(long, env = "CHATD_PUSH_APNS_KEY")]
    pub push_apns_key: Option<Text>,
    /// APNs key id (10 characters)
    #[arg(long, env = "CHATD_PUSH_APNS_KEY_ID")]
    pub push_apns_key_id: Option<Text>,
    /// Apple team id (10 characters)
    #[arg(long, env = "CHATD_PUSH_APNS_TEAM_ID")]
    pub push_apns_team_id: Option<Text>,
    /// Default APNs topic: the app's bundle id
    #[arg(long, env = "CHATD_PUSH_APNS_TOPIC")]
    pub push_apns_topic: Option<Text>,
    /// APNs base URL [default: https://api.push.apple.com]
    #[arg(long, env = "CHATD_PUSH_APNS_URL")]
    pub push_apns_url: Option<Text>,
    /// Web Push VAPID private key file (PEM, or base64url raw key) [default: Web Push off]
    #[arg(long, env = "CHATD_PUSH_VAPID_KEY")]
    pub push_vapid_key: Option<Text>,
    /// VAPID contact, mailto: or https:
    #[arg(long, env = "CHATD_PUSH_VAPID_SUBJECT")]
    pub push_vapid_subject: Option<Text>,
    /// Push services Web Push subscriptions may name, comma-separated [default: the browsers']
    #[arg(long, env = "CHATD_PUSH_WEBPUSH_HOSTS")]
    pub push_webpush_hosts: Option<Text>,
    /// Webhook push gateway URL [default: webhook off]
    #[arg(long, env = "CHATD_PUSH_WEBHOOK_URL")]
    pub push_webhook_url: Option<Text>,
    /// Bearer secret sent to the webhook gateway [default: none]
    #[arg(long, env = "CHATD_PUSH_WEBHOOK_SECRET", hide_env_values = true)]
    pub push_webhook_secret: Option<Text>,
    /// Extra CA certificate (PEM) trusted for the push providers [default: none]
    #[arg(long, env = "CHATD_PUSH_CA_FILE")]
    pub push_ca_file: Option<Text>,
    /// What a push shows: sender-text, sender or generic [default: sender-text]
    #[arg(long, env = "CHATD_PUSH_TEXT")]
    pub push_text: Option<Text>,
}

impl Overrides {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file_err = |reason: String| ConfigError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| file_err(e.to_string()))
    }

    /// Reads the `CHATD_*` variables through `get` (the process environment in production).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_pairs(
            Layer::Env,
            Self::args().iter().filter_map(|arg| {
                let value = get(arg.get_env()?.to_str()?)?;
                Some((arg.get_id().to_string(), value))
            }),
        )
    }

    /// The settings given as flags. clap also fills these arguments from their variables, which
    /// would give the environment the flags' precedence: those values are left to [`from_env`].
    ///
    /// [`from_env`]: Overrides::from_env
    pub fn from_flags(matches: &clap::ArgMatches) -> Result<Self, ConfigError> {
        Self::from_pairs(
            Layer::Flag,
            Self::args().iter().filter_map(|arg| {
                let id = arg.get_id().as_str();
                if matches.value_source(id) != Some(ValueSource::CommandLine) {
                    return None;
                }
                Some((id.to_string(), matches.get_one::<Text>(id)?.0.clone()))
            }),
        )
    }

    /// The settings as clap declares them (ids are the field names).
    fn args() -> Vec<clap::Arg> {
        let cmd = <Self as clap::Args>::augment_args(clap::Command::new("chatd"));
        cmd.get_arguments().cloned().collect()
    }

    /// Every field takes any text and the keys are the settings' own ids, so this does not
    /// fail today; should a setting ever take another type, its value is refused, not a panic.
    fn from_pairs(
        layer: Layer,
        pairs: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let pairs: Vec<(String, String)> = pairs.collect();
        let table = pairs
            .iter()
            .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
            .collect();
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                source_name: match pairs.first() {
                    Some((k, _)) => layer.name(k),
                    None => "settings".into(),
                },
                value: String::new(),
                reason: e.to_string(),
            })
    }

    /// Checks each setting this layer has and writes it over `cfg`.
    fn apply(&self, layer: Layer, cfg: &mut Config) -> Result<(), ConfigError> {
        // `set!(key => field, check)`: when the layer has `key`, `check` turns it into the value.
        macro_rules! set {
            ($key:ident => $($field:ident).+, $check:expr) => {
                if let Some(Text(text)) = &self.$key {
                    let key = stringify!($key);
                    cfg.$($field).+ = Raw { layer, key, text, secret: false }.check($check)?;
                }
            };
            ($key:ident, $check:expr) => {
                set!($key => $key, $check)
            };
        }
        set!(listen, Raw::parse);
        set!(tls_cert => tls.cert, Raw::file);
        set!(tls_key => tls.key, Raw::file);
        set!(tls_reload_interval_ms => tls.reload_interval_ms, |r| r.range(100, 3_600_000));
        set!(data_dir, |r| r
            .ensure(!r.text.is_empty(), "must not be empty")
            .map(PathBuf::from));
        set!(jwt_secret, |r| {
            let r = r.secret();
            r.ensure(r.text.len() >= 16, "must be at least 16 bytes")
                .map(|s| Some(s.into()))
        });
        set!(jwt_leeway_secs, |r| r.range(0, 600));
        set!(jwks_url => oidc.jwks_url, |r| r.jwks_url());
        set!(jwt_issuer => oidc.issuer, |r| {
            let text = r.text.trim();
            r.ensure(!text.contains(char::is_control), "must not contain control characters")
                .map(|_| Some(text.to_string()).filter(|t| !t.is_empty()))
        });
        set!(jwt_audience => oidc.audience, |r| {
            let list: Vec<String> = r.text.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
            let ok = list.iter().all(|a| !a.contains(char::is_control));
            r.ensure(ok, "must be audiences, comma-separated, without control characters").map(|_| list)
        });
        set!(jwks_ca_file => oidc.ca_file, Raw::file);
        set!(jwt_user_claim => oidc.user_claim, |r| {
            r.word().map(|w| w.unwrap_or_else(|| "sub".to_string()))
        });
        set!(jwt_admin_claim => oidc.admin_claim, |r| {
            let text = r.text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            crate::auth::idp::AdminRule::parse(text)
                .map(Some)
                .ok_or_else(|| r.invalid("must be CLAIM (a boolean claim) or CLAIM=VALUE, printable ASCII without spaces"))
        });
        set!(max_group_size, |r| r.range(2, 100_000));
        set!(max_message_bytes, |r| r.range(1, 4 * 1024 * 1024));
        set!(rate_limit_per_sec, |r| r.range(1, 10_000_000));
        set!(rate_limit_burst, |r| r.range(1, 10_000_000));
        set!(max_connections_per_ip_per_sec => limits.connections_per_ip_per_sec, |r| r.range(0, 1_000_000));
        set!(max_sessions_per_user => limits.sessions_per_user, |r| r.range(0, 1_000_000));
        set!(max_chats_created_per_hour => limits.chats_created_per_hour, |r| r.range(0, 1_000_000));
        set!(max_groups_per_user => limits.groups_per_user, |r| r.range(0, 1_000_000));
        set!(heartbeat_interval_ms, |r| r.range(50, 3_600_000));
        set!(heartbeat_timeout_ms, |r| r.range(100, 3_600_000));
        set!(session_queue, |r| r.range(1, 1_000_000));
        set!(live_receipts_max_members, |r| r.range(0, 100_000));
        set!(retention_days, |r| {
            let days: f64 = r.parse()?;
            let ok = days.is_finite() && days > 0.0 && days <= 36_500.0;
            let reason = "must be a number of days between 0 (exclusive) and 36500";
            r.ensure(ok, reason).map(|_| days)
        });
        set!(retention_interval_ms, |r| r.range(10, 86_400_000));
        set!(database_url, |r| {
            let r = r.secret();
            let url = r.url(
                &["postgres://", "postgresql://"],
                "must start with postgres://",
            )?;
            if let Some(url) = &url {
                check_postgres_url(url).map_err(|reason| r.invalid(reason))?;
            }
            Ok(url)
        });
        set!(redis_url, |r| {
            r.url(
                &["redis://", "rediss://"],
                "must start with redis:// or rediss://",
            )
        });
        set!(kafka_brokers, |r| Ok(
            Some(r.text.trim().to_string()).filter(|v| !v.is_empty())
        ));
        set!(redis_tls_ca => redis_tls.ca, |r| r.pem_file(PemKind::Certificates));
        set!(redis_tls_cert => redis_tls.cert, |r| r.pem_file(PemKind::Certificates));
        set!(redis_tls_key => redis_tls.key, |r| r.pem_file(PemKind::PrivateKey));
        set!(kafka_tls_ca => kafka_tls.ca, |r| r.pem_file(PemKind::Certificates));
        set!(kafka_tls_cert => kafka_tls.cert, |r| r.pem_file(PemKind::Certificates));
        set!(kafka_tls_key => kafka_tls.key, |r| r.pem_file(PemKind::PrivateKey));
        set!(node_id, |r| r.plain_name(1).map(Some));
        set!(migrate => migrate_auto, |r| match r.text.trim() {
            "auto" => Ok(true),
            "" | "off" => Ok(false),
            _ => Err(r.invalid("must be `auto` or `off`")),
        });
        set!(direct_copies, |r| match r.text.trim() {
            "on" | "true" => Ok(true),
            "off" | "false" => Ok(false),
            _ => Err(r.invalid("must be `on` or `off`")),
        });
        set!(namespace, |r| r.plain_name(0));
        set!(kafka_partitions, |r| r.range(1, 10_000));
        set!(database_pool, |r| r.range(2, 1_000));
        set!(cors_origins, |r| r.origins());
        set!(push_fcm_credentials => push.fcm_credentials, Raw::file);
        set!(push_fcm_url => push.fcm_url, |r| r.url(&["https://", "http://"], "must be an http(s) URL"));
        set!(push_fcm_token_url => push.fcm_token_url, |r| r.url(&["https://", "http://"], "must be an http(s) URL"));
        set!(push_apns_key => push.apns_key, Raw::file);
        set!(push_apns_key_id => push.apns_key_id, |r| r.word());
        set!(push_apns_team_id => push.apns_team_id, |r| r.word());
        set!(push_apns_topic => push.apns_topic, |r| r.word());
        set!(push_apns_url => push.apns_url, |r| r.url(&["https://", "http://"], "must be an http(s) URL"));
        set!(push_vapid_key => push.vapid_key, Raw::file);
        set!(push_vapid_subject => push.vapid_subject, |r| r.url(&["mailto:", "https://"], "must start with mailto: or https://"));
        set!(push_webpush_hosts => push.webpush_hosts, |r| {
            let hosts: Vec<String> = r.text.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
            let ok = hosts.iter().all(|h| !h.contains(['/', ' ', '@']));
            r.ensure(ok, "must be host[:port] names, comma-separated (*.domain allowed)").map(|_| Some(hosts))
        });
        set!(push_webhook_url => push.webhook_url, |r| r.url(&["https://", "http://"], "must be an http(s) URL"));
        set!(push_webhook_secret => push.webhook_secret, |r| {
            let r = r.secret();
            let ok = r.text.is_empty() || r.text.bytes().all(|b| b.is_ascii_graphic());
            r.ensure(ok, "must be printable ASCII without spaces").map(|t| Some(t.to_string()).filter(|t| !t.is_empty()))
        });
        set!(push_ca_file => push.ca_file, Raw::file);
        set!(push_text => push.text, |r| {
            let reason = format!("must be one of {}", crate::domain::push::PushText::NAMES);
            crate::domain::push::PushText::from_name(r.text.trim()).ok_or_else(|| r.invalid(reason))
        });
        set!(log_format, |r| match r.text.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(r.invalid("must be `text` or `json`")),
        });
        set!(web_root, |r| {
            let dir = PathBuf::from(r.text.trim());
            let ok = !r.text.trim().is_empty() && dir.is_dir();
            r.ensure(ok, "must be an existing directory")
                .map(|_| Some(dir))
        });
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{source_name}: invalid value {value:?}: {reason}")]
    Invalid {
        source_name: String,
        value: String,
        reason: String,
    },
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("incomplete cluster configuration: {set} set but {missing} missing; a cluster node needs PostgreSQL, Redis and Kafka (set all three, or none for the embedded default)")]
    IncompleteCluster { set: String, missing: String },
    #[error("incomplete TLS configuration: {set} set but {missing} missing; TLS needs the certificate chain and its private key (set both, or neither for plain text)")]
    IncompleteTls {
        set: &'static str,
        missing: &'static str,
    },
}

/// Where a value came from, so that an error can name it.
#[derive(Clone, Copy)]
enum Layer {
    File,
    Env,
    Flag,
}

impl Layer {
    fn name(self, key: &str) -> String {
        match self {
            Layer::File => format!("config key `{key}`"),
            Layer::Env => format!("environment variable CHATD_{}", key.to_uppercase()),
            Layer::Flag => format!("flag --{}", key.replace('_', "-")),
        }
    }
}

/// One setting's text from one layer, with what an error about it needs.
#[derive(Clone, Copy)]
struct Raw<'a> {
    layer: Layer,
    key: &'static str,
    text: &'a str,
    /// Errors show `<hidden>` rather than the value.
    secret: bool,
}

impl<'a> Raw<'a> {
    fn check<T>(self, f: impl FnOnce(Self) -> Result<T, ConfigError>) -> Result<T, ConfigError> {
        f(self)
    }

    fn secret(self) -> Self {
        Raw {
            secret: true,
            ..self
        }
    }

    fn invalid(self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            source_name: self.layer.name(self.key),
            value: if self.secret { "<hidden>" } else { self.text }.to_string(),
            reason: reason.into(),
        }
    }

    /// The text, when `ok`.
    fn ensure(self, ok: bool, reason: &str) -> Result<&'a str, ConfigError> {
        if ok {
            Ok(self.text)
        } else {
            Err(self.invalid(reason))
        }
    }

    fn parse<T: FromStr>(self) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        self.text
            .trim()
            .parse()
            .map_err(|e: T::Err| self.invalid(e.to_string()))
    }

    fn range<T>(self, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
        T::Err: std::fmt::Display,
    {
        let v: T = self.parse()?;
        let reason = format!("must be between {min} and {max}");
        self.ensure(v >= min && v <= max, &reason).map(|_| v)
    }

    /// A URL with one of `schemes`; empty means unset.
    fn url(self, schemes: &[&str], reason: &str) -> Result<Option<String>, ConfigError> {
        let ok = self.text.is_empty() || schemes.iter().any(|s| self.text.starts_with(s));
        let url = self.ensure(ok, reason)?;
        Ok(Some(url.to_string()).filter(|v| !v.is_empty()))
    }

    /// A comma-separated list of page origins, `scheme://host[:port]` each, or `*` alone;
    /// empty means none.
    fn origins(self) -> Result<Vec<String>, ConfigError> {
        let list: Vec<String> = self
            .text
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect();
        if list.iter().any(|o| o == "*") {
            return self
                .ensure(list.len() == 1, "`*` stands alone: any origin")
                .map(|_| list);
        }
        for origin in &list {
            let rest = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            let ok = rest.is_some_and(|r| !r.is_empty() && !r.contains(['/', '?', '#', ' ', '*']));
            if !ok {
                return Err(self.invalid(format!(
                    "{origin:?} is not an origin: scheme://host[:port], e.g. https://chat.example.com"
                )));
            }
        }
        Ok(list)
    }

    /// The identity provider's key set URL: https, or http to a loopback address (a test IdP on
    /// the same machine: nothing on the way can swap the keys); empty means unset.
    fn jwks_url(self) -> Result<Option<String>, ConfigError> {
        let text = self.text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let reason = "must be an https:// URL (http:// only to a loopback address)";
        let url = url::Url::parse(text).map_err(|_| self.invalid(reason))?;
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        let ok =
            url.has_host() && (url.scheme() == "https" || (url.scheme() == "http" && loopback));
        self.ensure(ok, reason).map(|_| Some(text.to_string()))
    }

    /// An existing file; empty means unset.
    fn file(self) -> Result<Option<PathBuf>, ConfigError> {
        let text = self.text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(text);
        self.ensure(path.is_file(), "must be an existing file")
            .map(|_| Some(path))
    }

    /// A readable PEM file holding `kind` (checked now, not at the first connection); empty
    /// means unset.
    fn pem_file(self, kind: PemKind) -> Result<Option<PathBuf>, ConfigError> {
        let text = self.text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(text);
        check_pem(&path, kind).map_err(|reason| self.invalid(reason))?;
        Ok(Some(path))
    }

    /// One word of printable ASCII (ids, a bundle id); empty means unset.
    fn word(self) -> Result<Option<String>, ConfigError> {
        let text = self.text.trim();
        let ok = text.len() <= 255 && text.bytes().all(|b| b.is_ascii_graphic());
        self.ensure(
            ok,
            "must be printable ASCII without spaces, at most 255 characters",
        )
        .map(|_| Some(text.to_string()).filter(|t| !t.is_empty()))
    }

    /// Node ids and namespaces end up in Redis channel and Kafka topic names: keep them plain.
    fn plain_name(self, min_len: usize) -> Result<String, ConfigError> {
        let v = self.text;
        let plain = v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let ok = plain && v.len() >= min_len && v.len() <= 64;
        let reason = format!("must be {min_len} to 64 characters of A-Z, a-z, 0-9, '-' and '_'");
        self.ensure(ok, &reason).map(str::to_string)
    }
}

impl Config {
    /// Builds the configuration from its layers, lowest first, and checks it as a whole.
    pub fn resolve(
        file: Option<Overrides>,
        env: Overrides,
        flags: Overrides,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        let layers = [
            (Layer::File, file.unwrap_or_default()),
            (Layer::Env, env),
            (Layer::Flag, flags),
        ];
        for (layer, values) in &layers {
            values.apply(*layer, &mut cfg)?;
        }
        if layers.iter().all(|(_, l)| l.rate_limit_burst.is_none()) {
            cfg.rate_limit_burst = cfg.rate_limit_per_sec;
        }
        cfg.oidc.check()?;
        cfg.check_backend_tls()?;
        cfg.tls.files()?;
        if cfg.heartbeat_timeout_ms <= cfg.heartbeat_interval_ms {
            return Err(ConfigError::Invalid {
                source_name: "heartbeat_timeout_ms".into(),
                value: cfg.heartbeat_timeout_ms.to_string(),
                reason: format!(
                    "must be greater than heartbeat_interval_ms ({})",
                    cfg.heartbeat_interval_ms
                ),
            });
        }
        Ok(cfg)
    }

    /// A client certificate needs its key (and the reverse), and TLS files need the backend they
    /// are for: a `rediss://` Redis URL (files beside a `redis://` URL would look like TLS while
    /// the link is plain), Kafka brokers.
    fn check_backend_tls(&self) -> Result<(), ConfigError> {
        let rediss = self
            .redis_url
            .as_deref()
            .is_some_and(|u| u.starts_with("rediss://"));
        let backends = [
            (
                "redis",
                &self.redis_tls,
                rediss,
                "TLS to Redis needs a rediss:// URL: set redis_url (--redis-url, CHATD_REDIS_URL) to rediss://…",
            ),
            (
                "kafka",
                &self.kafka_tls,
                self.kafka_brokers.is_some(),
                "applies to Kafka only: set kafka_brokers (--kafka-brokers, CHATD_KAFKA_BROKERS) too",
            ),
        ];
        for (name, tls, has_backend, needs_backend) in backends {
            let invalid = |key: &str, path: &Path, reason: String| ConfigError::Invalid {
                source_name: format!("{name}_tls_{key}"),
                value: path.display().to_string(),
                reason,
            };
            let pair = |have: &str, want: &str| {
                format!(
                    "needs {name}_tls_{want} (--{name}-tls-{want}, CHATD_{}_TLS_{}) too: a client \
                     {have} is only used with its {want}",
                    name.to_uppercase(),
                    want.to_uppercase(),
                )
            };
            match (&tls.cert, &tls.key) {
                (Some(cert), None) => return Err(invalid("cert", cert, pair("cert", "key"))),
                (None, Some(key)) => return Err(invalid("key", key, pair("key", "cert"))),
                _ => {}
            }
            let first = [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)]
                .into_iter()
                .find_map(|(key, path)| Some((key, path.as_deref()?)));
            if let Some((key, path)) = first {
                if !has_backend {
                    return Err(invalid(key, path, needs_backend.to_string()));
                }
            }
        }
        Ok(())
    }

    /// How old a message may get before the purge removes it.
    pub fn retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.retention_days * 86_400.0)
    }

    /// The cluster back ends, when all three are set; `None` (the embedded default) when none
    /// is; an error naming what is missing when only some are.
    pub fn cluster(&self) -> Result<Option<ClusterConfig>, ConfigError> {
        let parts = [
            ("CHATD_DATABASE_URL", &self.database_url),
            ("CHATD_REDIS_URL", &self.redis_url),
            ("CHATD_KAFKA_BROKERS", &self.kafka_brokers),
        ];
        let missing: Vec<&str> = parts
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        match missing.len() {
            0 => Ok(Some(ClusterConfig {
                database_url: self.database_url.clone().unwrap_or_default(),
                redis_url: self.redis_url.clone().unwrap_or_default(),
                kafka_brokers: self.kafka_brokers.clone().unwrap_or_default(),
            })),
            3 => Ok(None),
            _ => {
                let set: Vec<&str> = parts
                    .iter()
                    .filter(|(_, v)| v.is_some())
                    .map(|(k, _)| *k)
                    .collect();
                Err(ConfigError::IncompleteCluster {
                    set: set.join(", "),
                    missing: missing.join(", "),
                })
            }
        }
    }

    /// The largest gRPC frame the server decodes: room for a full message plus envelope. A larger
    /// frame ends its stream with a status; a content over `max_message_bytes` but under this
    /// gets a per-send error and the stream stays open.
    pub fn max_frame_bytes(&self) -> usize {
        (self.max_message_bytes as usize).saturating_mul(4) + 64 * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Command};
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Overrides {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        Overrides::from_env(|k| map.get(k).map(|v| v.to_string())).unwrap()
    }

    fn flags(args: &[&str]) -> Overrides {
        let cmd = Overrides::augment_args(Command::new("chatd"));
        Overrides::from_flags(&cmd.try_get_matches_from(args).unwrap()).unwrap()
    }

    fn file(toml: &str) -> Result<Overrides, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatd.toml");
        std::fs::write(&path, toml).unwrap();
        Overrides::from_file(&path)
    }

    fn none() -> Overrides {
        Overrides::default()
    }

    #[test]
    fn every_setting_has_its_flag_variable_and_key() {
        let args = Overrides::args();
        assert_eq!(args.len(), 60);
        for arg in &args {
            let id = arg.get_id().as_str();
            assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()));
            let var = format!("CHATD_{}", id.to_uppercase());
            assert_eq!(arg.get_env().and_then(|v| v.to_str()), Some(var.as_str()));
            let from_env = format!("{:?}", env(&[(&var, "x")]));
            let from_flag = format!(
                "{:?}",
                flags(&["chatd", &format!("--{}=x", arg.get_long().unwrap())])
            );
            let from_file = format!("{:?}", file(&format!("{id} = \"x\"\n")).unwrap());
            assert!(
                from_env.contains(&format!("{id}: Some(Text(\"x\"))")),
                "{from_env}"
            );
            assert_eq!(from_env, from_flag);
            assert_eq!(from_env, from_file);
        }
    }

    #[test]
    fn precedence_is_default_then_file_then_env_then_flag() {
        let size = |f: Option<Overrides>, e: Overrides, fl: Overrides| {
            Config::resolve(f, e, fl).unwrap().max_group_size
        };
        let f = || Some(file("max_group_size = 10\n").unwrap());
        let e = || env(&[("CHATD_MAX_GROUP_SIZE", "20")]);
        let fl = || flags(&["chatd", "--max-group-size", "30"]);
        assert_eq!(size(None, none(), none()), 1000);
        assert_eq!(size(f(), none(), none()), 10);
        assert_eq!(size(f(), e(), none()), 20);
        assert_eq!(size(f(), e(), fl()), 30);
        assert_eq!(size(None, e(), fl()), 30);
        assert_eq!(size(f(), none(), fl()), 30);

        let cfg = Config::resolve(
            Some(file("rate_limit_per_sec = 7\n").unwrap()),
            none(),
            none(),
        )
        .unwrap();
        assert_eq!(cfg.rate_limit_burst, 7, "burst follows the rate unless set");
        let cfg = Config::resolve(None, env(&[("CHATD_RATE_LIMIT_BURST", "3")]), none()).unwrap();
        assert_eq!((cfg.rate_limit_per_sec, cfg.rate_limit_burst), (50, 3));
    }

    #[test]
    fn flags_leave_what_clap_read_from_the_environment_to_the_env_layer() {
        // clap fills `--listen` from PATH here, as it would from CHATD_LISTEN.
        let Some(path) = std::env::var_os("PATH") else {
            return;
        };
        let cmd =
            Overrides::augment_args(Command::new("chatd")).mut_arg("listen", |a| a.env("PATH"));
        let matches = cmd
            .try_get_matches_from(["chatd", "--node-id", "a"])
            .unwrap();
        assert_eq!(
            matches.get_one::<Text>("listen").map(|t| t.0.as_str()),
            path.to_str()
        );
        let got = Overrides::from_flags(&matches).unwrap();
        assert_eq!(got.listen, None);
        assert_eq!(got.node_id, Some("a".into()));
    }

    #[test]
    fn origins_are_listed_without_blanks_and_trailing_slashes() {
        let cfg = Config::resolve(
            None,
            env(&[(
                "CHATD_CORS_ORIGINS",
                " https://a.example/ ,,http://localhost:5173",
            )]),
            none(),
        )
        .unwrap();
        assert_eq!(
            cfg.cors_origins,
            ["https://a.example", "http://localhost:5173"]
        );
        let any = Config::resolve(None, env(&[("CHATD_CORS_ORIGINS", "*")]), none()).unwrap();
        assert_eq!(any.cors_origins, ["*"]);
        let dir = std::env::temp_dir();
        let dir_text = dir.to_string_lossy().to_string();
        let cfg =
            Config::resolve(None, none(), flags(&["chatd", "--web-root", &dir_text])).unwrap();
        assert_eq!(cfg.web_root, Some(dir));
    }

    #[test]
    fn defaults_match_the_brief() {
        let cfg = Config::resolve(None, env(&[]), none()).unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.rate_limit_burst, 50);
    }

    #[test]
    fn abuse_limits_come_from_every_layer_and_zero_turns_one_off() {
        let defaults = AbuseLimits {
            connections_per_ip_per_sec: 20,
            sessions_per_user: 20,
            chats_created_per_hour: 100,
            groups_per_user: 500,
        };
        assert_eq!(Config::default().limits, defaults);
        let cfg = Config::resolve(
            Some(file("max_groups_per_user = 7\nmax_sessions_per_user = 3\n").unwrap()),
            env(&[("CHATD_MAX_CONNECTIONS_PER_IP_PER_SEC", "0")]),
            flags(&[
                "chatd",
                "--max-chats-created-per-hour",
                "9",
                "--max-sessions-per-user=4",
            ]),
        )
        .unwrap();
        assert_eq!(
            cfg.limits,
            AbuseLimits {
                connections_per_ip_per_sec: 0,
                sessions_per_user: 4,
                chats_created_per_hour: 9,
                groups_per_user: 7,
            }
        );
    }

    /// Every refusal, with its message word for word, from each layer.
    #[test]
    fn bad_values_are_refused_naming_their_source() {
        let range = |lo: u32, hi: u32| format!("must be between {lo} and {hi}");
        let digit = || "invalid digit found in string".to_string();
        let name =
            |min: u32| format!("must be {min} to 64 characters of A-Z, a-z, 0-9, '-' and '_'");
        let days = || "must be a number of days between 0 (exclusive) and 36500".to_string();
        let jwks = || "must be an https:// URL (http:// only to a loopback address)".to_string();
        let admin = || {
            "must be CLAIM (a boolean claim) or CLAIM=VALUE, printable ASCII without spaces"
                .to_string()
        };
        let long = "n".repeat(65);
        let cases: Vec<(&str, &str, String)> = vec![
            ("listen", "nowhere", "invalid socket address syntax".into()),
            ("data_dir", "", "must not be empty".into()),
            ("jwt_secret", "short", "must be at least 16 bytes".into()),
            ("max_group_size", "abc", digit()),
            ("max_group_size", "-5", digit()),
            ("max_group_size", "1", range(2, 100_000)),
            ("max_group_size", "100001", range(2, 100_000)),
            ("max_message_bytes", "0", range(1, 4 * 1024 * 1024)),
            ("rate_limit_per_sec", "0", range(1, 10_000_000)),
            ("rate_limit_burst", "0", range(1, 10_000_000)),
            ("max_connections_per_ip_per_sec", "-1", digit()),
            ("max_connections_per_ip_per_sec", "1000001", range(0, 1_000_000)),
            ("max_sessions_per_user", "1000001", range(0, 1_000_000)),
            ("max_chats_created_per_hour", "x", digit()),
            ("max_groups_per_user", "1000001", range(0, 1_000_000)),
            ("heartbeat_interval_ms", "49", range(50, 3_600_000)),
            ("heartbeat_timeout_ms", "99", range(100, 3_600_000)),
            ("session_queue", "0", range(1, 1_000_000)),
            ("live_receipts_max_members", "100001", range(0, 100_000)),
            ("retention_days", "abc", "invalid float literal".into()),
            ("retention_days", "0", days()),
            ("retention_days", "-1", days()),
            ("retention_days", "NaN", days()),
            ("retention_days", "36501", days()),
            ("retention_interval_ms", "9", range(10, 86_400_000)),
            (
                "database_url",
                "mysql://x",
                "must start with postgres://".into(),
            ),
            (
                "redis_url",
                "http://x",
                "must start with redis:// or rediss://".into(),
            ),
            ("node_id", "", name(1)),
            ("node_id", "a b", name(1)),
            ("namespace", "a.b", name(0)),
            ("namespace", &long, name(0)),
            ("migrate", "yes", "must be `auto` or `off`".into()),
            ("direct_copies", "maybe", "must be `on` or `off`".into()),
            ("kafka_partitions", "0", range(1, 10_000)),
            (
                "cors_origins",
                "https://a.example, a.example",
                "\"a.example\" is not an origin: scheme://host[:port], e.g. https://chat.example.com"
                    .into(),
            ),
            (
                "cors_origins",
                "https://a.example/app",
                "\"https://a.example/app\" is not an origin: scheme://host[:port], e.g. https://chat.example.com"
                    .into(),
            ),
            ("cors_origins", "*, https://a.example", "`*` stands alone: any origin".into()),
            ("web_root", "/no/such/dir", "must be an existing directory".into()),
            ("web_root", "", "must be an existing directory".into()),
            ("log_format", "xml", "must be `text` or `json`".into()),
            ("database_pool", "1", range(2, 1_000)),
            ("push_fcm_credentials", "/no/such/file.json", "must be an existing file".into()),
            ("push_apns_key", "/tmp", "must be an existing file".into()),
            ("push_fcm_url", "ftp://x", "must be an http(s) URL".into()),
            ("push_apns_team_id", "A B", "must be printable ASCII without spaces, at most 255 characters".into()),
            ("push_vapid_subject", "me@example.com", "must start with mailto: or https://".into()),
            ("push_webpush_hosts", "https://push.example/x", "must be host[:port] names, comma-separated (*.domain allowed)".into()),
            ("push_webhook_secret", "a secret", "must be printable ASCII without spaces".into()),
            ("push_text", "everything", "must be one of sender-text, sender, generic".into()),
            ("jwt_leeway_secs", "601", range(0, 600)),
            ("jwks_url", "ftp://idp.example/jwks", jwks()),
            ("jwks_url", "http://idp.example/jwks", jwks()),
            ("jwks_url", "idp.example/jwks", jwks()),
            ("jwks_ca_file", "/no/such/ca.pem", "must be an existing file".into()),
            ("jwt_user_claim", "user id", "must be printable ASCII without spaces, at most 255 characters".into()),
            ("jwt_admin_claim", "roles=", admin()),
            ("jwt_admin_claim", "=admin", admin()),
            ("redis_tls_ca", "/no/such/ca.pem", "cannot read it: No such file or directory (os error 2)".into()),
            ("kafka_tls_key", "/no/such/client.key", "cannot read it: No such file or directory (os error 2)".into()),
            ("kafka_tls_cert", "/tmp", "cannot read it: Is a directory (os error 21)".into()),
        ];
        for (key, value, reason) in cases {
            let secret = ["jwt_secret", "database_url", "push_webhook_secret"].contains(&key);
            let shown = if secret { "<hidden>" } else { value };
            let var = format!("CHATD_{}", key.to_uppercase());
            let flag = format!("--{}", key.replace('_', "-"));
            let in_file = file(&format!("{key} = {value:?}\n")).unwrap();
            let tries = [
                (
                    format!("config key `{key}`"),
                    Config::resolve(Some(in_file), none(), none()),
                ),
                (
                    format!("environment variable {var}"),
                    Config::resolve(None, env(&[(&var, value)]), none()),
                ),
                (
                    format!("flag {flag}"),
                    Config::resolve(None, none(), flags(&["chatd", &format!("{flag}={value}")])),
                ),
            ];
            for (source, result) in tries {
                let want = format!("{source}: invalid value {shown:?}: {reason}");
                assert_eq!(result.unwrap_err().to_string(), want);
            }
        }
    }

    #[test]
    fn identity_provider_settings_are_read_and_need_the_jwks_url() {
        let cfg = Config::resolve(
            Some(file("jwks_url = \"https://idp.example/jwks\"\njwt_leeway_secs = 30\n").unwrap()),
            env(&[
                ("CHATD_JWT_ISSUER", " https://idp.example/ "),
                ("CHATD_JWT_AUDIENCE", "chat, chat-web ,"),
                ("CHATD_JWT_USER_CLAIM", "preferred_username"),
                ("CHATD_JWT_ADMIN_CLAIM", "realm_access.roles=chat-admin"),
            ]),
            none(),
        )
        .unwrap();
        assert_eq!(cfg.jwt_leeway_secs, 30);
        let oidc = &cfg.oidc;
        assert_eq!(oidc.jwks_url.as_deref(), Some("https://idp.example/jwks"));
        assert_eq!(oidc.issuer.as_deref(), Some("https://idp.example/"));
        assert_eq!(oidc.audience, ["chat", "chat-web"]);
        assert_eq!(oidc.user_claim, "preferred_username");
        assert_eq!(
            oidc.admin_claim
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("realm_access.roles=chat-admin")
        );
        for url in [
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:1/k",
        ] {
            let cfg = Config::resolve(None, env(&[("CHATD_JWKS_URL", url)]), none()).unwrap();
            assert_eq!(
                cfg.oidc.jwks_url.as_deref(),
                Some(url),
                "loopback http is allowed"
            );
        }

        let err = Config::resolve(None, env(&[("CHATD_JWT_ISSUER", "https://idp/")]), none());
        assert_eq!(
            err.unwrap_err().to_string(),
            "jwt_issuer: invalid value \"https://idp/\": applies to identity provider tokens \
             only: set jwks_url too"
        );
        let err = Config::resolve(
            None,
            none(),
            flags(&["chatd", "--jwt-admin-claim", "admin"]),
        );
        assert!(err
            .unwrap_err()
            .to_string()
            .starts_with("jwt_admin_claim: "));
        // The leeway is the HS256 tokens' too: it needs no URL.
        let cfg = Config::resolve(None, env(&[("CHATD_JWT_LEEWAY_SECS", "0")]), none()).unwrap();
        assert_eq!(cfg.jwt_leeway_secs, 0);
    }

    /// A certificate, a key and a file that is neither, in a temp dir (PEM form only: the
    /// configuration checks what the files are, the TLS libraries what is in them).
    fn tls_files() -> (tempfile::TempDir, String, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let cert = write(
            "c.pem",
            "-----BEGIN CERTIFICATE-----\nMIIBeTCC\n-----END CERTIFICATE-----\n",
        );
        let key = write(
            "k.pem",
            "-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n",
        );
        let junk = write("j.txt", "hello\n");
        (dir, cert, key, junk)
    }

    #[test]
    fn backend_tls_files_are_read_from_every_layer() {
        let (_dir, cert, key, _) = tls_files();
        let cfg = Config::resolve(
            Some(
                file(&format!(
                    "redis_url = \"rediss://r:6380\"\nredis_tls_ca = {cert:?}\n"
                ))
                .unwrap(),
            ),
            env(&[
                ("CHATD_REDIS_TLS_CERT", &cert),
                ("CHATD_REDIS_TLS_KEY", &key),
                ("CHATD_KAFKA_BROKERS", "k:9093"),
            ]),
            flags(&["chatd", "--kafka-tls-ca", &cert]),
        )
        .unwrap();
        let path = |p: &str| Some(PathBuf::from(p));
        assert_eq!(
            cfg.redis_tls,
            BackendTls {
                ca: path(&cert),
                cert: path(&cert),
                key: path(&key)
            }
        );
        assert_eq!(
            cfg.kafka_tls,
            BackendTls {
                ca: path(&cert),
                cert: None,
                key: None
            }
        );
        assert!(cfg.kafka_tls.is_set() && cfg.kafka_tls.client_pair().is_none());
        assert_eq!(Config::default().redis_tls, BackendTls::default());
    }

    #[test]
    fn backend_tls_files_must_be_pem_come_in_pairs_and_have_their_backend() {
        let (_dir, cert, key, junk) = tls_files();
        let err = |vars: &[(&str, &str)]| {
            Config::resolve(None, env(vars), none())
                .unwrap_err()
                .to_string()
        };
        let rediss = ("CHATD_REDIS_URL", "rediss://r:6380");
        let kafka = ("CHATD_KAFKA_BROKERS", "k:9093");
        assert_eq!(
            err(&[("CHATD_REDIS_TLS_KEY", &cert)]),
            format!(
                "environment variable CHATD_REDIS_TLS_KEY: invalid value {cert:?}: not a PEM \
                 private key file: no PRIVATE KEY block in it"
            )
        );
        assert_eq!(
            err(&[("CHATD_KAFKA_TLS_CA", &junk)]),
            format!(
                "environment variable CHATD_KAFKA_TLS_CA: invalid value {junk:?}: not a PEM \
                 certificate file: no CERTIFICATE block in it"
            )
        );
        assert_eq!(
            err(&[rediss, ("CHATD_REDIS_TLS_CERT", &cert)]),
            format!(
                "redis_tls_cert: invalid value {cert:?}: needs redis_tls_key (--redis-tls-key, \
                 CHATD_REDIS_TLS_KEY) too: a client cert is only used with its key"
            )
        );
        assert_eq!(
            err(&[kafka, ("CHATD_KAFKA_TLS_KEY", &key)]),
            format!(
                "kafka_tls_key: invalid value {key:?}: needs kafka_tls_cert (--kafka-tls-cert, \
                 CHATD_KAFKA_TLS_CERT) too: a client key is only used with its cert"
            )
        );
        assert_eq!(
            err(&[
                ("CHATD_REDIS_URL", "redis://r"),
                ("CHATD_REDIS_TLS_CA", &cert)
            ]),
            format!(
                "redis_tls_ca: invalid value {cert:?}: TLS to Redis needs a rediss:// URL: set \
                 redis_url (--redis-url, CHATD_REDIS_URL) to rediss://…"
            )
        );
        assert_eq!(
            err(&[
                ("CHATD_KAFKA_TLS_CERT", &cert),
                ("CHATD_KAFKA_TLS_KEY", &key)
            ]),
            format!(
                "kafka_tls_cert: invalid value {cert:?}: applies to Kafka only: set kafka_brokers \
                 (--kafka-brokers, CHATD_KAFKA_BROKERS) too"
            )
        );
        // A rediss:// URL alone is TLS with the public roots: no files needed.
        let cfg = Config::resolve(None, env(&[rediss]), none()).unwrap();
        assert!(!cfg.redis_tls.is_set());
    }

    #[test]
    fn the_heartbeat_timeout_must_exceed_the_interval() {
        let err = Config::resolve(
            Some(file("heartbeat_interval_ms = 1000\n").unwrap()),
            env(&[("CHATD_HEARTBEAT_TIMEOUT_MS", "500")]),
            none(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "heartbeat_timeout_ms: invalid value \"500\": must be greater than heartbeat_interval_ms (1000)"
        );
    }

    #[test]
    fn retention_takes_fractions_of_days() {
        let cfg = Config::resolve(None, env(&[("CHATD_RETENTION_DAYS", "0.5")]), none()).unwrap();
        assert_eq!(cfg.retention(), std::time::Duration::from_secs(43_200));
    }

    #[test]
    fn empty_urls_and_migrate_mean_unset() {
        let cfg = Config::resolve(
            Some(file("database_url = \"postgres://db\"\nmigrate = \"auto\"\n").unwrap()),
            env(&[
                ("CHATD_DATABASE_URL", ""),
                ("CHATD_MIGRATE", ""),
                ("CHATD_KAFKA_BROKERS", " "),
            ]),
            none(),
        )
        .unwrap();
        assert_eq!(
            (cfg.database_url, cfg.migrate_auto, cfg.kafka_brokers),
            (None, false, None)
        );
    }

    #[test]
    fn tls_needs_both_files_and_each_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, "c").unwrap();
        std::fs::write(&key, "k").unwrap();
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

        let off = Config::resolve(None, none(), none()).unwrap();
        assert_eq!(off.tls.files(), Ok(None));
        assert_eq!(off.tls.reload_interval_ms, 5_000);

        let on = Config::resolve(
            Some(file(&format!("tls_cert = {cert:?}\n")).unwrap()),
            env(&[("CHATD_TLS_KEY", key)]),
            flags(&["chatd", "--tls-reload-interval-ms", "250"]),
        )
        .unwrap();
        let files = on.tls.files().unwrap().unwrap();
        assert_eq!(
            (files.cert.to_str(), files.key.to_str()),
            (Some(cert), Some(key))
        );
        assert_eq!(on.tls.reload_interval_ms, 250);

        let err = Config::resolve(None, none(), flags(&["chatd", "--tls-cert", cert]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "incomplete TLS configuration: tls_cert (--tls-cert, CHATD_TLS_CERT) set but tls_key \
             (--tls-key, CHATD_TLS_KEY) missing; TLS needs the certificate chain and its private \
             key (set both, or neither for plain text)"
        );
        let err = Config::resolve(None, env(&[("CHATD_TLS_KEY", key)]), none()).unwrap_err();
        assert!(err
            .to_string()
            .contains("tls_key (--tls-key, CHATD_TLS_KEY) set but tls_cert"));

        let missing = dir.path().join("nope.pem");
        let err = Config::resolve(
            None,
            none(),
            flags(&[
                "chatd",
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                key,
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("flag --tls-cert: invalid value") && err.contains("nope.pem"),
            "{err}"
        );
        let err = Config::resolve(None, env(&[("CHATD_TLS_RELOAD_INTERVAL_MS", "5")]), none())
            .unwrap_err()
            .to_string();
        assert!(err.contains("CHATD_TLS_RELOAD_INTERVAL_MS"), "{err}");
    }

    #[test]
    fn a_cluster_needs_all_three_engines() {
        let resolve = |vars: &[(&str, &str)]| Config::resolve(None, env(vars), none()).unwrap();
        assert_eq!(resolve(&[]).cluster(), Ok(None));
        let db = ("CHATD_DATABASE_URL", "postgres://db/chat");
        let redis = ("CHATD_REDIS_URL", "redis://r");
        let kafka = ("CHATD_KAFKA_BROKERS", "k:9092");
        let err = resolve(&[db, redis]).cluster().unwrap_err().to_string();
        assert_eq!(
            err,
            "incomplete cluster configuration: CHATD_DATABASE_URL, CHATD_REDIS_URL set but \
             CHATD_KAFKA_BROKERS missing; a cluster node needs PostgreSQL, Redis and Kafka (set \
             all three, or none for the embedded default)"
        );
        let err = resolve(&[kafka]).cluster().unwrap_err().to_string();
        assert!(
            err.contains("CHATD_KAFKA_BROKERS set but CHATD_DATABASE_URL, CHATD_REDIS_URL missing"),
            "{err}"
        );
        let all = resolve(&[db, redis, kafka]).cluster();
        assert!(matches!(all, Ok(Some(c)) if c.kafka_brokers == "k:9092"));
    }

    #[test]
    fn the_file_takes_numbers_and_refuses_unknown_keys() {
        let cfg = Config::resolve(
            Some(
                file("max_group_size = 12\nretention_days = 1.5\nlisten = \"127.0.0.1:0\"\n")
                    .unwrap(),
            ),
            none(),
            none(),
        )
        .unwrap();
        assert_eq!((cfg.max_group_size, cfg.retention_days), (12, 1.5));
        let err = file("max_grup_size = 12\n").unwrap_err().to_string();
        assert!(
            err.starts_with("config file ") && err.contains("unknown field `max_grup_size`"),
            "{err}"
        );
        let err = file("max_group_size = \n").unwrap_err().to_string();
        assert!(err.contains("TOML parse error"), "{err}");
        let err = Overrides::from_file(Path::new("/nonexistent/chatd.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /nonexistent/chatd.toml: No such file or directory (os error 2)"
        );
    }
}

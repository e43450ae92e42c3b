//! The node's configuration: defaults < TOML file < `CHATD_*` environment < command-line flags.
//! Every layer is parsed strictly, and a bad value stops start-up with a message that names the
//! key, variable or flag it came from.

use serde::Deserialize;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address of the one port that serves gRPC, gRPC reflection/health and HTTP probes.
    pub listen: SocketAddr,
    /// Where the embedded store and the generated JWT secret live.
    pub data_dir: PathBuf,
    /// HS256 secret; when unset, one is generated in `data_dir` on first start.
    pub jwt_secret: Option<String>,
    /// Largest number of members a group may have, the creator included.
    pub max_group_size: u32,
    /// Largest message content (text + ciphertext + attributes) in bytes.
    pub max_message_bytes: u32,
    /// Token-bucket refill rate per user per device.
    pub rate_limit_per_sec: u32,
    /// Token-bucket capacity per user per device.
    pub rate_limit_burst: u32,
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
    /// This node's id in the cluster (`Welcome.node_id`, Redis channel `node.{id}`).
    pub node_id: Option<String>,
    /// Apply pending PostgreSQL migrations at start (`CHATD_MIGRATE=auto`).
    pub migrate_auto: bool,
    /// Prefix of every Redis key and channel and Kafka topic and group, so that several
    /// deployments can share one Redis and one Kafka. Empty: the documented names exactly.
    pub namespace: String,
    /// Partitions of the Kafka topics this node creates when they are missing.
    pub kafka_partitions: u32,
    /// Most PostgreSQL connections this node opens.
    pub database_pool: u32,
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
            data_dir: PathBuf::from("./chatd-data"),
            jwt_secret: None,
            max_group_size: 1000,
            max_message_bytes: 16 * 1024,
            rate_limit_per_sec: 50,
            rate_limit_burst: 50,
            heartbeat_interval_ms: 30_000,
            heartbeat_timeout_ms: 90_000,
            session_queue: 1024,
            live_receipts_max_members: 100,
            retention_days: 30.0,
            retention_interval_ms: 60_000,
            database_url: None,
            redis_url: None,
            kafka_brokers: None,
            node_id: None,
            migrate_auto: false,
            namespace: String::new(),
            kafka_partitions: 8,
            database_pool: 16,
        }
    }
}

/// One layer of settings; `None` leaves the lower layer's value in place.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Address to listen on [env: CHATD_LISTEN] [default: 127.0.0.1:50051]
    #[arg(long)]
    pub listen: Option<String>,
    /// Data directory of the embedded store [env: CHATD_DATA_DIR] [default: ./chatd-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HS256 JWT secret [env: CHATD_JWT_SECRET] [default: generated in the data dir]
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// Maximum members of a group [env: CHATD_MAX_GROUP_SIZE] [default: 1000]
    #[arg(long)]
    pub max_group_size: Option<String>,
    /// Maximum content bytes of a message [env: CHATD_MAX_MESSAGE_BYTES] [default: 16384]
    #[arg(long)]
    pub max_message_bytes: Option<String>,
    /// Sends per second per user per device [env: CHATD_RATE_LIMIT_PER_SEC] [default: 50]
    #[arg(long)]
    pub rate_limit_per_sec: Option<String>,
    /// Burst of sends per user per device [env: CHATD_RATE_LIMIT_BURST] [default: the rate]
    #[arg(long)]
    pub rate_limit_burst: Option<String>,
    /// Client ping interval in ms [env: CHATD_HEARTBEAT_INTERVAL_MS] [default: 30000]
    #[arg(long)]
    pub heartbeat_interval_ms: Option<String>,
    /// Silence after which a session is closed, in ms [env: CHATD_HEARTBEAT_TIMEOUT_MS] [default: 90000]
    #[arg(long)]
    pub heartbeat_timeout_ms: Option<String>,
    /// Outgoing event queue per session [env: CHATD_SESSION_QUEUE] [default: 1024]
    #[arg(long)]
    pub session_queue: Option<String>,
    /// Largest chat whose receipts are pushed live to other members [env: CHATD_LIVE_RECEIPTS_MAX_MEMBERS] [default: 100]
    #[arg(long)]
    pub live_receipts_max_members: Option<String>,
    /// Days messages are kept; fractions allowed [env: CHATD_RETENTION_DAYS] [default: 30]
    #[arg(long)]
    pub retention_days: Option<String>,
    /// Interval of the retention purge in ms [env: CHATD_RETENTION_INTERVAL_MS] [default: 60000]
    #[arg(long)]
    pub retention_interval_ms: Option<String>,
    /// PostgreSQL URL, postgres://… [env: CHATD_DATABASE_URL] [default: embedded SQLite]
    #[arg(long)]
    pub database_url: Option<String>,
    /// Redis URL, redis://… [env: CHATD_REDIS_URL] [default: in-process registry]
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Kafka bootstrap brokers, host:port,… [env: CHATD_KAFKA_BROKERS] [default: in-process bus]
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    /// Node id in the cluster [env: CHATD_NODE_ID] [default: generated]
    #[arg(long)]
    pub node_id: Option<String>,
    /// `auto` applies PostgreSQL migrations at start [env: CHATD_MIGRATE] [default: off]
    #[arg(long)]
    pub migrate: Option<String>,
    /// Prefix of Redis keys/channels and Kafka topics/groups [env: CHATD_NAMESPACE] [default: none]
    #[arg(long)]
    pub namespace: Option<String>,
    /// Partitions of Kafka topics created by the node [env: CHATD_KAFKA_PARTITIONS] [default: 8]
    #[arg(long)]
    pub kafka_partitions: Option<String>,
    /// Most PostgreSQL connections per node [env: CHATD_DATABASE_POOL] [default: 16]
    #[arg(long)]
    pub database_pool: Option<String>,
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

/// TOML accepts numbers where the flags and env take strings; both end up here as text.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLayer {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    jwt_secret: Option<String>,
    max_group_size: Option<toml::Value>,
    max_message_bytes: Option<toml::Value>,
    rate_limit_per_sec: Option<toml::Value>,
    rate_limit_burst: Option<toml::Value>,
    heartbeat_interval_ms: Option<toml::Value>,
    heartbeat_timeout_ms: Option<toml::Value>,
    session_queue: Option<toml::Value>,
    live_receipts_max_members: Option<toml::Value>,
    retention_days: Option<toml::Value>,
    retention_interval_ms: Option<toml::Value>,
    database_url: Option<String>,
    redis_url: Option<String>,
    kafka_brokers: Option<String>,
    node_id: Option<String>,
    migrate: Option<String>,
    namespace: Option<String>,
    kafka_partitions: Option<toml::Value>,
    database_pool: Option<toml::Value>,
}

fn value_text(v: Option<toml::Value>) -> Option<String> {
    v.map(|v| match v {
        toml::Value::String(s) => s,
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

impl From<FileLayer> for Overrides {
    fn from(f: FileLayer) -> Self {
        Overrides {
            listen: f.listen,
            data_dir: f.data_dir,
            jwt_secret: f.jwt_secret,
            max_group_size: value_text(f.max_group_size),
            max_message_bytes: value_text(f.max_message_bytes),
            rate_limit_per_sec: value_text(f.rate_limit_per_sec),
            rate_limit_burst: value_text(f.rate_limit_burst),
            heartbeat_interval_ms: value_text(f.heartbeat_interval_ms),
            heartbeat_timeout_ms: value_text(f.heartbeat_timeout_ms),
            session_queue: value_text(f.session_queue),
            live_receipts_max_members: value_text(f.live_receipts_max_members),
            retention_days: value_text(f.retention_days),
            retention_interval_ms: value_text(f.retention_interval_ms),
            database_url: f.database_url,
            redis_url: f.redis_url,
            kafka_brokers: f.kafka_brokers,
            node_id: f.node_id,
            migrate: f.migrate,
            namespace: f.namespace,
            kafka_partitions: value_text(f.kafka_partitions),
            database_pool: value_text(f.database_pool),
        }
    }
}

impl Overrides {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file_err = |reason: String| ConfigError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let layer: FileLayer = toml::from_str(&text).map_err(|e| file_err(e.to_string()))?;
        Ok(layer.into())
    }

    /// Reads the `CHATD_*` variables through `get` (the process environment in production).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        Overrides {
            listen: get("CHATD_LISTEN"),
            data_dir: get("CHATD_DATA_DIR").map(PathBuf::from),
            jwt_secret: get("CHATD_JWT_SECRET"),
            max_group_size: get("CHATD_MAX_GROUP_SIZE"),
            max_message_bytes: get("CHATD_MAX_MESSAGE_BYTES"),
            rate_limit_per_sec: get("CHATD_RATE_LIMIT_PER_SEC"),
            rate_limit_burst: get("CHATD_RATE_LIMIT_BURST"),
            heartbeat_interval_ms: get("CHATD_HEARTBEAT_INTERVAL_MS"),
            heartbeat_timeout_ms: get("CHATD_HEARTBEAT_TIMEOUT_MS"),
            session_queue: get("CHATD_SESSION_QUEUE"),
            live_receipts_max_members: get("CHATD_LIVE_RECEIPTS_MAX_MEMBERS"),
            retention_days: get("CHATD_RETENTION_DAYS"),
            retention_interval_ms: get("CHATD_RETENTION_INTERVAL_MS"),
            database_url: get("CHATD_DATABASE_URL"),
            redis_url: get("CHATD_REDIS_URL"),
            kafka_brokers: get("CHATD_KAFKA_BROKERS"),
            node_id: get("CHATD_NODE_ID"),
            migrate: get("CHATD_MIGRATE"),
            namespace: get("CHATD_NAMESPACE"),
            kafka_partitions: get("CHATD_KAFKA_PARTITIONS"),
            database_pool: get("CHATD_DATABASE_POOL"),
        }
    }

    fn apply(
        self,
        layer: Layer,
        cfg: &mut Config,
        burst_set: &mut bool,
    ) -> Result<(), ConfigError> {
        if let Some(v) = self.listen {
            cfg.listen = parse(layer, "listen", &v)?;
        }
        if let Some(v) = self.data_dir {
            if v.as_os_str().is_empty() {
                return Err(invalid(layer, "data_dir", "", "must not be empty"));
            }
            cfg.data_dir = v;
        }
        if let Some(v) = self.jwt_secret {
            if v.len() < 16 {
                return Err(invalid(
                    layer,
                    "jwt_secret",
                    "<hidden>",
                    "must be at least 16 bytes",
                ));
            }
            cfg.jwt_secret = Some(v);
        }
        if let Some(v) = self.max_group_size {
            cfg.max_group_size = parse_range(layer, "max_group_size", &v, 2, 100_000)?;
        }
        if let Some(v) = self.max_message_bytes {
            cfg.max_message_bytes =
                parse_range(layer, "max_message_bytes", &v, 1, 4 * 1024 * 1024)?;
        }
        if let Some(v) = self.rate_limit_per_sec {
            cfg.rate_limit_per_sec = parse_range(layer, "rate_limit_per_sec", &v, 1, 10_000_000)?;
        }
        if let Some(v) = self.rate_limit_burst {
            cfg.rate_limit_burst = parse_range(layer, "rate_limit_burst", &v, 1, 10_000_000)?;
            *burst_set = true;
        }
        if let Some(v) = self.heartbeat_interval_ms {
            cfg.heartbeat_interval_ms =
                parse_range(layer, "heartbeat_interval_ms", &v, 50, 3_600_000)?;
        }
        if let Some(v) = self.heartbeat_timeout_ms {
            cfg.heartbeat_timeout_ms =
                parse_range(layer, "heartbeat_timeout_ms", &v, 100, 3_600_000)?;
        }
        if let Some(v) = self.session_queue {
            cfg.session_queue = parse_range(layer, "session_queue", &v, 1, 1_000_000)?;
        }
        if let Some(v) = self.live_receipts_max_members {
            cfg.live_receipts_max_members =
                parse_range(layer, "live_receipts_max_members", &v, 0, 100_000)?;
        }
        if let Some(v) = self.retention_days {
            let days: f64 = parse(layer, "retention_days", &v)?;
            if !(days.is_finite() && days > 0.0 && days <= 36_500.0) {
                return Err(invalid(
                    layer,
                    "retention_days",
                    &v,
                    "must be a number of days between 0 (exclusive) and 36500",
                ));
            }
            cfg.retention_days = days;
        }
        if let Some(v) = self.retention_interval_ms {
            cfg.retention_interval_ms =
                parse_range(layer, "retention_interval_ms", &v, 10, 86_400_000)?;
        }
        if let Some(v) = self.database_url {
            let ok = v.starts_with("postgres://") || v.starts_with("postgresql://");
            if !ok && !v.is_empty() {
                return Err(invalid(
                    layer,
                    "database_url",
                    "<hidden>",
                    "must start with postgres://",
                ));
            }
            cfg.database_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = self.redis_url {
            let ok = v.starts_with("redis://") || v.starts_with("rediss://");
            if !ok && !v.is_empty() {
                return Err(invalid(
                    layer,
                    "redis_url",
                    &v,
                    "must start with redis:// or rediss://",
                ));
            }
            cfg.redis_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = self.kafka_brokers {
            cfg.kafka_brokers = Some(v.trim().to_string()).filter(|v| !v.is_empty());
        }
        if let Some(v) = self.node_id {
            check_name(layer, "node_id", &v, 1)?;
            cfg.node_id = Some(v);
        }
        if let Some(v) = self.migrate {
            cfg.migrate_auto = match v.trim() {
                "auto" => true,
                "" | "off" => false,
                _ => return Err(invalid(layer, "migrate", &v, "must be `auto` or `off`")),
            };
        }
        if let Some(v) = self.namespace {
            check_name(layer, "namespace", &v, 0)?;
            cfg.namespace = v;
        }
        if let Some(v) = self.kafka_partitions {
            cfg.kafka_partitions = parse_range(layer, "kafka_partitions", &v, 1, 10_000)?;
        }
        if let Some(v) = self.database_pool {
            cfg.database_pool = parse_range(layer, "database_pool", &v, 2, 1_000)?;
        }
        Ok(())
    }
}

/// Node ids and namespaces end up in Redis channel and Kafka topic names: keep them plain.
fn check_name(layer: Layer, key: &str, value: &str, min_len: usize) -> Result<(), ConfigError> {
    let plain = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if value.len() < min_len || value.len() > 64 || !plain {
        return Err(invalid(
            layer,
            key,
            value,
            format!("must be {min_len} to 64 characters of A-Z, a-z, 0-9, '-' and '_'"),
        ));
    }
    Ok(())
}

fn invalid(layer: Layer, key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        source_name: layer.name(key),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn parse<T: FromStr>(layer: Layer, key: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e: T::Err| invalid(layer, key, value, e.to_string()))
}

fn parse_range<T>(layer: Layer, key: &str, value: &str, min: T, max: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy,
    T::Err: std::fmt::Display,
{
    let v: T = parse(layer, key, value)?;
    if v < min || v > max {
        return Err(invalid(
            layer,
            key,
            value,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(v)
}

impl Config {
    /// Builds the configuration from its layers, lowest first, and checks it as a whole.
    pub fn resolve(
        file: Option<Overrides>,
        env: Overrides,
        flags: Overrides,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        let mut burst_set = false;
        if let Some(file) = file {
            file.apply(Layer::File, &mut cfg, &mut burst_set)?;
        }
        env.apply(Layer::Env, &mut cfg, &mut burst_set)?;
        flags.apply(Layer::Flag, &mut cfg, &mut burst_set)?;
        if !burst_set {
            cfg.rate_limit_burst = cfg.rate_limit_per_sec;
        }
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

    /// The largest gRPC frame the server decodes: room for a full message plus envelope. A larger
    /// frame ends its stream with a status; a content over `max_message_bytes` but under this
    /// gets a per-send error and the stream stays open.
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

    pub fn max_frame_bytes(&self) -> usize {
        (self.max_message_bytes as usize).saturating_mul(4) + 64 * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Overrides {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Overrides::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn a_cluster_needs_all_three_engines() {
        let none = Config::resolve(None, env(&[]), Overrides::default()).unwrap();
        assert_eq!(none.cluster(), Ok(None));
        let partial = Config::resolve(
            None,
            env(&[
                ("CHATD_DATABASE_URL", "postgres://db/chat"),
                ("CHATD_REDIS_URL", "redis://r"),
            ]),
            Overrides::default(),
        )
        .unwrap();
        let err = partial.cluster().unwrap_err().to_string();
        assert!(
            err.contains("CHATD_KAFKA_BROKERS") && !err.contains("CHATD_REDIS_URL missing"),
            "{err}"
        );
        let all = Config::resolve(
            None,
            env(&[
                ("CHATD_DATABASE_URL", "postgres://db/chat"),
                ("CHATD_REDIS_URL", "redis://r"),
                ("CHATD_KAFKA_BROKERS", "k:9092"),
            ]),
            Overrides::default(),
        )
        .unwrap();
        assert!(matches!(all.cluster(), Ok(Some(c)) if c.kafka_brokers == "k:9092"));
        let bad = Config::resolve(
            None,
            env(&[("CHATD_DATABASE_URL", "mysql://x")]),
            Overrides::default(),
        );
        assert!(bad.is_err());
        let bad = Config::resolve(
            None,
            env(&[("CHATD_NAMESPACE", "a b")]),
            Overrides::default(),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn defaults_match_the_brief() {
        let cfg = Config::resolve(None, env(&[]), Overrides::default()).unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.rate_limit_burst, 50);
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let file = Overrides {
            max_group_size: Some("10".into()),
            rate_limit_per_sec: Some("7".into()),
            session_queue: Some("5".into()),
            ..Default::default()
        };
        let e = env(&[("CHATD_MAX_GROUP_SIZE", "20"), ("CHATD_SESSION_QUEUE", "6")]);
        let flags = Overrides {
            session_queue: Some("9".into()),
            ..Default::default()
        };
        let cfg = Config::resolve(Some(file), e, flags).unwrap();
        assert_eq!(cfg.max_group_size, 20);
        assert_eq!(cfg.rate_limit_per_sec, 7);
        assert_eq!(cfg.rate_limit_burst, 7, "burst follows the rate unless set");
        assert_eq!(cfg.session_queue, 9);
    }

    #[test]
    fn bad_values_name_their_source() {
        let err = Config::resolve(
            None,
            env(&[("CHATD_MAX_GROUP_SIZE", "abc")]),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("CHATD_MAX_GROUP_SIZE"), "{err}");
        let err = Config::resolve(
            None,
            env(&[("CHATD_LISTEN", "nowhere")]),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("CHATD_LISTEN"), "{err}");
        let flags = Overrides {
            max_message_bytes: Some("0".into()),
            ..Default::default()
        };
        let err = Config::resolve(None, env(&[]), flags).unwrap_err();
        assert!(err.to_string().contains("--max-message-bytes"), "{err}");
        let err = Config::resolve(
            None,
            env(&[
                ("CHATD_HEARTBEAT_INTERVAL_MS", "1000"),
                ("CHATD_HEARTBEAT_TIMEOUT_MS", "500"),
            ]),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("heartbeat_timeout_ms"), "{err}");
        for bad in ["0", "-1", "NaN", "x"] {
            let err = Config::resolve(
                None,
                env(&[("CHATD_RETENTION_DAYS", bad)]),
                Overrides::default(),
            )
            .unwrap_err();
            assert!(err.to_string().contains("CHATD_RETENTION_DAYS"), "{err}");
        }
        let cfg = Config::resolve(
            None,
            env(&[("CHATD_RETENTION_DAYS", "0.5")]),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.retention(), std::time::Duration::from_secs(43_200));
    }

    #[test]
    fn file_layer_rejects_unknown_keys_and_takes_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatd.toml");
        std::fs::write(&path, "max_group_size = 12\nlisten = \"127.0.0.1:0\"\n").unwrap();
        let file = Overrides::from_file(&path).unwrap();
        let cfg = Config::resolve(Some(file), env(&[]), Overrides::default()).unwrap();
        assert_eq!(cfg.max_group_size, 12);
        std::fs::write(&path, "max_grup_size = 12\n").unwrap();
        let err = Overrides::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("max_grup_size"), "{err}");
    }
}

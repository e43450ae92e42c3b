//! The services' TLS endpoints, which require client certificates (`scripts/services up` makes
//! the certificates and exports `CHATD_SERVICES_TLS_*`), and the settings that make a node
//! reach every backend through them only.

use crate::backend::{replace_database, BackendInstance};

/// What `scripts/services up` exported about its TLS listeners.
#[derive(Clone, Debug)]
pub struct TlsServices {
    /// `postgres://chatd_tls@…/chat?sslmode=verify-full&sslrootcert=…&sslcert=…&sslkey=…`
    pub database_url: String,
    /// `rediss://127.0.0.1:PORT`
    pub redis_url: String,
    /// Kafka's SSL listener.
    pub kafka_brokers: String,
    pub ca: String,
    pub client_cert: String,
    pub client_key: String,
}

impl TlsServices {
    /// Reads `CHATD_SERVICES_TLS_*`; panics with instructions when unset.
    pub fn from_env() -> TlsServices {
        let get = |k: &str| match std::env::var(k) {
            Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
            _ => panic!(
                "{k} is not set: this test needs the services' TLS endpoints; start them with \
                 `eval \"$(scripts/services up)\"` in the shell that runs the tests (scripts/test \
                 passes them on)"
            ),
        };
        TlsServices {
            database_url: get("CHATD_SERVICES_TLS_DATABASE_URL"),
            redis_url: get("CHATD_SERVICES_TLS_REDIS_URL"),
            kafka_brokers: get("CHATD_SERVICES_TLS_KAFKA_BROKERS"),
            ca: get("CHATD_SERVICES_TLS_CA"),
            client_cert: get("CHATD_SERVICES_TLS_CLIENT_CERT"),
            client_key: get("CHATD_SERVICES_TLS_CLIENT_KEY"),
        }
    }

    /// A node's settings that replace the plain endpoints of `backend` with the TLS ones (its
    /// own database, over verify-full TLS as the certificate's role) and give it the CA and the
    /// client certificate for Redis and Kafka.
    pub fn node_env(&self, backend: &BackendInstance) -> Vec<(String, String)> {
        let db = backend
            .database_name()
            .expect("the TLS endpoints are for a full-stack backend");
        [
            (
                "CHATD_DATABASE_URL",
                replace_database(&self.database_url, db),
            ),
            ("CHATD_REDIS_URL", self.redis_url.clone()),
            ("CHATD_KAFKA_BROKERS", self.kafka_brokers.clone()),
            ("CHATD_REDIS_TLS_CA", self.ca.clone()),
            ("CHATD_REDIS_TLS_CERT", self.client_cert.clone()),
            ("CHATD_REDIS_TLS_KEY", self.client_key.clone()),
            ("CHATD_KAFKA_TLS_CA", self.ca.clone()),
            ("CHATD_KAFKA_TLS_CERT", self.client_cert.clone()),
            ("CHATD_KAFKA_TLS_KEY", self.client_key.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

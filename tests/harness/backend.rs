//! Which storage / messaging backend a test server runs on.
//!
//! Only [`Backend::Embedded`] exists today: `chatd` runs alone on SQLite in its data directory
//! with the in-process registry and bus. A later full-stack backend (PostgreSQL, Redis, Kafka)
//! plugs in here: `provision` starts the external services for one test server and returns the
//! environment that points `chatd` at them; the returned [`BackendInstance`] is owned by the
//! [`crate::TestServer`] and keeps the services alive (and stops them on drop).

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Single process, SQLite + in-process registry/bus. No external services.
    Embedded,
}

impl Backend {
    /// The backend selected for this test run: `CHAT_TEST_BACKEND` (default `embedded`).
    pub fn from_env() -> Self {
        match std::env::var("CHAT_TEST_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("embedded") => Backend::Embedded,
            Ok(other) => panic!("CHAT_TEST_BACKEND={other:?}: unknown backend (known: embedded)"),
        }
    }

    /// Start whatever the backend needs for one server (with `scratch` as a private temp dir)
    /// and return a handle that lives as long as the server.
    pub async fn provision(&self, _scratch: &Path) -> BackendInstance {
        match self {
            Backend::Embedded => BackendInstance {
                backend: *self,
                env: Vec::new(),
            },
        }
    }
}

/// Running backend services for one test server.
#[derive(Debug)]
pub struct BackendInstance {
    pub backend: Backend,
    /// Extra environment for `chatd serve` (service URLs etc.). Empty for `Embedded`.
    pub env: Vec<(String, String)>,
}

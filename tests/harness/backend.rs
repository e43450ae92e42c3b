//! Which storage / messaging backend a test server runs on.
//!
//! * [`Backend::Embedded`] (the default): `chatd` runs alone on SQLite in its data directory with
//!   the in-process registry and bus. No external services.
//! * [`Backend::FullStack`] (`CHAT_TEST_BACKEND=full`): `chatd` is a cluster node on real
//!   PostgreSQL, Redis and Kafka, whose addresses come from the environment that
//!   `eval "$(scripts/services up)"` sets (`CHATD_DATABASE_URL`, `CHATD_REDIS_URL`,
//!   `CHATD_KAFKA_BROKERS`, `CHATD_SERVICES_DIR`).
//!
//! [`Backend::provision`] isolates one test server (or one [`crate::TestCluster`]) from every
//! other: a fresh PostgreSQL database `t_<random>` (created with `psql`, dropped when the
//! [`BackendInstance`] is dropped) and a fresh `CHATD_NAMESPACE`, so Redis keys and channels and
//! Kafka topics and groups are private too. Restarting a server keeps its instance, i.e. the same
//! database and namespace: it is the same cluster.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Single process, SQLite + in-process registry/bus. No external services.
    Embedded,
    /// Cluster node(s) on PostgreSQL, Redis and Kafka started by `scripts/services`.
    FullStack,
}

/// Partitions of the Kafka topics a test cluster creates (few: a test cluster is tiny, and every
/// test makes its own topics).
pub const TEST_KAFKA_PARTITIONS: u32 = 2;

impl Backend {
    /// The backend selected for this test run: `CHAT_TEST_BACKEND` (default `embedded`).
    pub fn from_env() -> Self {
        match std::env::var("CHAT_TEST_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("embedded") => Backend::Embedded,
            Ok("full") | Ok("fullstack") | Ok("full-stack") => Backend::FullStack,
            Ok(other) => {
                panic!("CHAT_TEST_BACKEND={other:?}: unknown backend (known: embedded, full)")
            }
        }
    }

    /// True when this run uses the full stack (`CHAT_TEST_BACKEND=full`).
    pub fn is_full() -> bool {
        Self::from_env() == Backend::FullStack
    }

    /// Prepare whatever the backend needs for one server or cluster (with `scratch` as a
    /// private temp dir) and return a handle that lives as long as the server(s).
    pub async fn provision(&self, _scratch: &Path) -> BackendInstance {
        match self {
            Backend::Embedded => BackendInstance {
                backend: *self,
                env: Vec::new(),
                database: None,
            },
            Backend::FullStack => {
                let services = Services::from_env();
                let suffix = crate::util::random_hex(8);
                let db_name = format!("t_{suffix}");
                services.create_database(&db_name).await;
                let env = vec![
                    (
                        "CHATD_DATABASE_URL".to_string(),
                        services.database_url_for(&db_name),
                    ),
                    ("CHATD_REDIS_URL".to_string(), services.redis_url.clone()),
                    (
                        "CHATD_KAFKA_BROKERS".to_string(),
                        services.kafka_brokers.clone(),
                    ),
                    ("CHATD_NAMESPACE".to_string(), format!("t{suffix}")),
                    ("CHATD_MIGRATE".to_string(), "auto".to_string()),
                    (
                        "CHATD_KAFKA_PARTITIONS".to_string(),
                        TEST_KAFKA_PARTITIONS.to_string(),
                    ),
                ];
                BackendInstance {
                    backend: *self,
                    env,
                    database: Some(ScratchDatabase {
                        services,
                        name: db_name,
                    }),
                }
            }
        }
    }
}

/// Running backend services for one test server or cluster.
#[derive(Debug)]
pub struct BackendInstance {
    pub backend: Backend,
    /// Extra environment for `chatd serve` (service URLs etc.). Empty for `Embedded`.
    pub env: Vec<(String, String)>,
    database: Option<ScratchDatabase>,
}

impl BackendInstance {
    /// The value of one of the variables in [`Self::env`].
    pub fn var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `CHATD_DATABASE_URL` of this instance (full stack only).
    pub fn database_url(&self) -> Option<&str> {
        self.var("CHATD_DATABASE_URL")
    }

    /// The name of this instance's database (full stack only).
    pub fn database_name(&self) -> Option<&str> {
        self.database.as_ref().map(|d| d.name.as_str())
    }

    /// `CHATD_NAMESPACE` of this instance (full stack only).
    pub fn namespace(&self) -> Option<&str> {
        self.var("CHATD_NAMESPACE")
    }

    /// Run one SQL statement in this instance's database with `psql` and return its unaligned,
    /// tuples-only output (full stack only; panics on failure).
    pub async fn sql(&self, statement: &str) -> String {
        let db = self
            .database
            .as_ref()
            .expect("BackendInstance::sql needs the full-stack backend");
        db.services
            .psql(&db.services.database_url_for(&db.name), statement)
            .await
    }
}

/// A database made for one test; dropped (with its connections) when the test is done.
#[derive(Debug)]
struct ScratchDatabase {
    services: Services,
    name: String,
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // Fire and forget: the test's servers may still be dying, FORCE ends their sessions.
        // The psql process outlives this one if the test binary exits first.
        let _ = std::process::Command::new(&self.services.psql)
            .arg("-X")
            .arg("-q")
            .arg(&self.services.database_url)
            .arg("-c")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

/// The shared services of a full-stack run, as `scripts/services up` exported them.
#[derive(Clone, Debug)]
pub struct Services {
    /// `postgres://postgres@127.0.0.1:PORT/chat`: the maintenance database, never used by a
    /// test server itself.
    pub database_url: String,
    pub redis_url: String,
    pub kafka_brokers: String,
    /// `CHATD_SERVICES_DIR`, needed to stop and start services (fault tests).
    pub services_dir: Option<PathBuf>,
    /// The `psql` client used to create and drop test databases.
    pub psql: PathBuf,
}

impl Services {
    /// Read the service addresses from the environment; panics with instructions when unset.
    pub fn from_env() -> Services {
        let get = |k: &str| match std::env::var(k) {
            Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
            _ => panic!(
                "CHAT_TEST_BACKEND=full needs {k} (and CHATD_DATABASE_URL, CHATD_REDIS_URL, \
                 CHATD_KAFKA_BROKERS): start the services with \
                 `eval \"$(scripts/services up)\"` in the shell that runs the tests"
            ),
        };
        Services {
            database_url: get("CHATD_DATABASE_URL"),
            redis_url: get("CHATD_REDIS_URL"),
            kafka_brokers: get("CHATD_KAFKA_BROKERS"),
            services_dir: std::env::var_os("CHATD_SERVICES_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            psql: find_psql(),
        }
    }

    /// `database_url` with the database name replaced by `db`.
    pub fn database_url_for(&self, db: &str) -> String {
        replace_database(&self.database_url, db)
    }

    /// `CREATE DATABASE name` (panics on failure).
    pub async fn create_database(&self, name: &str) {
        self.psql(&self.database_url, &format!("CREATE DATABASE {name}"))
            .await;
    }

    /// Run `statement` with psql against `url`; returns stdout (tuples only, unaligned).
    pub async fn psql(&self, url: &str, statement: &str) -> String {
        let fut = tokio::process::Command::new(&self.psql)
            .arg("-X")
            .arg("-q")
            .arg("-At")
            .arg("-v")
            .arg("ON_ERROR_STOP=1")
            .arg(url)
            .arg("-c")
            .arg(statement)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(Duration::from_secs(60), fut).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => panic!("cannot run {}: {e}", self.psql.display()),
            Err(_) => panic!("psql {statement:?} on {url} did not finish within 60 s"),
        };
        assert!(
            out.status.success(),
            "psql {statement:?} on {url} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `scripts/services` of this repository.
    pub fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("scripts")
            .join("services")
    }

    /// The services dir; panics when `CHATD_SERVICES_DIR` is unset.
    pub fn dir(&self) -> &Path {
        self.services_dir.as_deref().unwrap_or_else(|| {
            panic!(
                "CHATD_SERVICES_DIR is not set: the fault tests stop and start the services \
                 through `scripts/services ACTION NAME DIR` (eval \"$(scripts/services up)\" sets it)"
            )
        })
    }

    /// `scripts/services ACTION NAME DIR` (stop, start, restart), synchronously; panics on
    /// failure with the script's output.
    pub fn control_blocking(&self, action: &str, name: &str) {
        if let Err(e) = self.try_control(action, name) {
            panic!("{e}");
        }
    }

    /// `scripts/services ACTION NAME DIR`; the error describes the failure. Never panics
    /// (usable in `Drop`).
    pub fn try_control(&self, action: &str, name: &str) -> Result<(), String> {
        let Some(dir) = self.services_dir.as_deref() else {
            return Err("CHATD_SERVICES_DIR is not set".into());
        };
        let out = std::process::Command::new("bash")
            .arg(Self::script())
            .arg(action)
            .arg(name)
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run scripts/services: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "scripts/services {action} {name} {} failed ({}):\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// Names of the services configured in the dir that are not running
    /// (`scripts/services status`).
    pub fn stopped(&self) -> Vec<String> {
        let out = std::process::Command::new("bash")
            .arg(Self::script())
            .arg("status")
            .arg(self.dir())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/services: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let (name, state) = (w.next()?, w.next()?);
                (state != "running").then(|| name.to_string())
            })
            .collect()
    }

    /// [`Self::control_blocking`] on a blocking thread.
    pub async fn control(&self, action: &str, name: &str) {
        let this = self.clone();
        let (action, name) = (action.to_string(), name.to_string());
        tokio::task::spawn_blocking(move || this.control_blocking(&action, &name))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    }
}

/// `psql`: `CHATD_PSQL`, `$CHATD_PG_BIN/psql`, the newest `/usr/lib/postgresql/*/bin/psql` (where
/// `scripts/services` finds PostgreSQL), else `psql` on the PATH.
fn find_psql() -> PathBuf {
    if let Some(p) = std::env::var_os("CHATD_PSQL").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(d) = std::env::var_os("CHATD_PG_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(d).join("psql");
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let p = e.path().join("bin").join("psql");
            let v = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .next()
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0);
            if p.is_file() && best.as_ref().is_none_or(|(bv, _)| v > *bv) {
                best = Some((v, p));
            }
        }
    }
    best.map(|(_, p)| p)
        .unwrap_or_else(|| PathBuf::from("psql"))
}

/// Replace the database (path) of a `postgres://…/DB?params` URL.
pub fn replace_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn database_in_url_is_replaced() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5/chat", "t_1"),
            "postgres://postgres@127.0.0.1:5/t_1"
        );
        assert_eq!(
            replace_database("postgres://u:p@h:5/chat?sslmode=disable", "x"),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://h:5", "x"), "postgres://h:5/x");
    }
}

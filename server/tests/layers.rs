//! The layering ARCHITECTURE.md promises, checked on the source: dependencies point one way,
//! transport → session → domain → (store | registry | bus) seams, and each backend's client
//! crate stays inside the module that implements that backend. A new `use` that breaks a rule
//! fails here with the file, the line and the rule, rather than in a review months later.
//!
//! Test code (files named `tests.rs`, and everything after a file's first `#[cfg(test)]`) may
//! reach across layers to set things up, and comments may name anything: both are skipped.

use std::path::{Path, PathBuf};

/// (what the rule says, the source folders or files it applies to, paths they must not name)
const RULES: &[(&str, &[&str], &[&str])] = &[
    (
        "the store, the registry and the quotas know nothing of the fan-out or of the layers above them",
        &["store", "registry", "quota", "redis"],
        &[
            "crate::bus",
            "crate::session",
            "crate::transport",
            "crate::node",
        ],
    ),
    (
        "the domain knows its seams, not their implementations nor the layers above it",
        &["domain"],
        &[
            "crate::bus",
            "crate::session",
            "crate::transport",
            "crate::node",
            "crate::redis",
            "crate::store::sqlite",
            "crate::store::postgres",
            "crate::registry::redis",
            "crate::registry::local",
            "crate::quota::redis",
            "crate::quota::local",
        ],
    ),
    (
        "the fan-out hands events to sessions through bus::LocalSessions, not the session layer",
        &["bus"],
        &["crate::session", "crate::transport", "crate::node"],
    ),
    (
        "a session does not know the transport that carries it",
        &["session"],
        &["crate::transport", "crate::node"],
    ),
    (
        "protobuf and tonic stay in transport, the composition root and the metrics of gRPC codes",
        &[
            "auth",
            "bus",
            "clock.rs",
            "config.rs",
            "domain",
            "error.rs",
            "quota",
            "redis",
            "registry",
            "session",
            "store",
        ],
        &["tonic", "prost", "chat_proto"],
    ),
    (
        "PostgreSQL's client stays in store/postgres",
        &[
            "auth",
            "bus",
            "config.rs",
            "domain",
            "redis",
            "registry",
            "session",
            "store/sqlite",
            "store/mod.rs",
            "store/outbox.rs",
            "transport",
        ],
        &["sqlx"],
    ),
    (
        "SQLite's client stays in store/sqlite",
        &[
            "auth",
            "bus",
            "config.rs",
            "domain",
            "redis",
            "registry",
            "session",
            "store/postgres",
            "store/mod.rs",
            "store/outbox.rs",
            "transport",
        ],
        &["rusqlite"],
    ),
    (
        "Kafka's client stays in bus/kafka",
        &[
            "auth",
            "bus/audience.rs",
            "bus/cluster.rs",
            "bus/local.rs",
            "bus/members.rs",
            "bus/mod.rs",
            "bus/wire.rs",
            "config.rs",
            "domain",
            "redis",
            "registry",
            "session",
            "store",
            "transport",
        ],
        &["rdkafka"],
    ),
    (
        "Redis's client stays in redis/, registry/redis.rs and quota/redis.rs",
        &[
            "auth",
            "bus",
            "config.rs",
            "domain",
            "quota/local.rs",
            "quota/mod.rs",
            "registry/local.rs",
            "registry/mod.rs",
            "session",
            "store",
            "transport",
        ],
        &["redis::"],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.to_path_buf());
        }
        return;
    }
    let entries = std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for entry in entries {
        rust_files(&entry.expect("directory entry").path(), out);
    }
}

/// The lines of `file` that are neither comments nor test code, numbered from 1.
fn production_lines(file: &Path) -> Vec<(usize, String)> {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        return Vec::new();
    }
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

/// Whether `line` names `path` where a path starts (so `redis::` does not match
/// `crate::redis::`); a longer name that starts with it (`tonic_health`) counts.
fn names(line: &str, path: &str) -> bool {
    line.match_indices(path).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let standalone = !matches!(before, Some(c) if c.is_alphanumeric() || c == '_' || c == ':');
        standalone || path.starts_with("crate::")
    })
}

#[test]
fn dependencies_point_one_way() {
    let root = src();
    let mut broken = Vec::new();
    for (rule, scopes, forbidden) in RULES {
        for scope in *scopes {
            let mut files = Vec::new();
            rust_files(&root.join(scope), &mut files);
            assert!(
                !files.is_empty(),
                "rule {rule:?}: {scope} has no Rust files"
            );
            for file in files {
                for (n, line) in production_lines(&file) {
                    for path in *forbidden {
                        if names(&line, path) {
                            let shown = file.strip_prefix(&root).unwrap_or(&file).display();
                            broken.push(format!("{shown}:{n}: names {path}: {rule}"));
                        }
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_check_sees_a_violation() {
    assert!(names("use crate::bus::wire;", "crate::bus"));
    assert!(names("    let x: tonic::Code = y;", "tonic"));
    assert!(names("use redis::aio::ConnectionManager;", "redis::"));
    assert!(!names("use crate::redis::pubsub::RedisPubSub;", "redis::"));
    assert!(!names("fn bus_name() {}", "crate::bus"));
    assert!(names("(tonic_health::pb::X)", "tonic"));
}

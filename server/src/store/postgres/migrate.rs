//! Schema migrations: numbered SQL files applied in order, once, tracked in
//! `schema_migrations`. All pending ones run in one transaction that first takes a
//! transaction-level advisory lock, so nodes starting together with `CHATD_MIGRATE=auto` apply
//! them once: the others wait, then find nothing left to do.

use super::pg_err;
use crate::{Error, Result};
use sqlx::{Connection, Executor, PgConnection};

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../../../migrations/postgres/0001_core.sql"),
    ),
    (
        2,
        include_str!("../../../../migrations/postgres/0002_writer.sql"),
    ),
    (
        3,
        include_str!("../../../../migrations/postgres/0003_writer_apply.sql"),
    ),
    (
        4,
        include_str!("../../../../migrations/postgres/0004_push_tokens.sql"),
    ),
    (
        5,
        include_str!("../../../../migrations/postgres/0005_chat_mute.sql"),
    ),
];

/// The advisory lock key of migrations ("chatd" + 1).
const MIGRATION_LOCK: i64 = 0x6368_6174_6400_0001;

pub(super) fn latest() -> i32 {
    MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0)
}

/// Applies what is pending; returns how many migrations that was.
pub(super) async fn apply(conn: &mut PgConnection) -> Result<u32> {
    let mut tx = conn.begin().await.map_err(pg_err)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(pg_err)?;
    (&mut *tx)
        .execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 applied_at BIGINT NOT NULL
             )",
        )
        .await
        .map_err(pg_err)?;
    let current = current_version(&mut tx).await?;
    if current > latest() {
        // A newer chatd migrated already (a rolling upgrade): its migrations are additive.
        tracing::warn!(
            current,
            known = latest(),
            "the PostgreSQL schema is newer than this chatd"
        );
        return Ok(0);
    }
    let mut applied = 0;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        // Without arguments: the simple protocol, which runs a file of several statements.
        (&mut *tx).execute(*sql).await.map_err(|e| {
            tracing::error!(version, error = %e, "migration failed");
            Error::internal(format!("migration {version} failed: {e}"))
        })?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, applied_at)
             VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT)",
        )
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(pg_err)?;
        applied += 1;
    }
    tx.commit().await.map_err(pg_err)?;
    if applied > 0 {
        tracing::info!(applied, version = latest(), "PostgreSQL schema migrated");
    }
    Ok(applied)
}

/// Fails unless the schema is at least what this chatd needs.
pub(super) async fn check(conn: &mut PgConnection) -> Result<()> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('schema_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(pg_err)?;
    let current = if exists {
        current_version(conn).await?
    } else {
        0
    };
    if current < latest() {
        return Err(Error::FailedPrecondition(format!(
            "the PostgreSQL schema is at version {current}, this chatd needs version {}: \
             run `chatd migrate` or start with CHATD_MIGRATE=auto",
            latest()
        )));
    }
    if current > latest() {
        tracing::warn!(
            current,
            known = latest(),
            "the PostgreSQL schema is newer than this chatd"
        );
    }
    Ok(())
}

pub(super) async fn current_version(conn: &mut PgConnection) -> Result<i32> {
    sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM schema_migrations")
        .fetch_one(conn)
        .await
        .map_err(pg_err)
}

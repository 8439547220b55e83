//! Versioned schema migrations, applied at connect.
//!
//! Each migration runs in its own transaction, which records it in
//! `sagaflow_schema_migrations`. Every transaction here first takes one
//! advisory lock, so that nodes starting at once apply each migration once
//! and never see a half-created table.

use sagaflow_store::{Error, Result};
use tokio_postgres::Client;

use crate::engine;

struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// In order. A released migration is never edited, only followed by another:
/// a database records which versions it ran, not what they said.
const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "initial", sql: include_str!("../migrations/0001_initial.sql") },
    Migration { version: 2, name: "shard_leases", sql: include_str!("../migrations/0002_shard_leases.sql") },
    Migration { version: 3, name: "assertions", sql: include_str!("../migrations/0003_assertions.sql") },
    Migration { version: 4, name: "cluster_secrets", sql: include_str!("../migrations/0004_cluster_secrets.sql") },
    Migration { version: 5, name: "cluster_nodes", sql: include_str!("../migrations/0005_cluster_nodes.sql") },
    Migration { version: 6, name: "cluster_config", sql: include_str!("../migrations/0006_cluster_config.sql") },
    Migration { version: 7, name: "cluster_placement", sql: include_str!("../migrations/0007_cluster_placement.sql") },
];

/// The schema version this build writes and reads: its last migration's.
pub const LATEST_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The advisory lock key of schema changes ("SAGAFLOW" in ASCII). The
/// writer's request-id locks use the two-key form, a separate key space.
const MIGRATION_LOCK: i64 = 0x5341_4741_464c_4f57;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS sagaflow_schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())";

/// Applies the migrations the database lacks; returns their versions.
pub(crate) async fn apply(client: &mut Client) -> Result<Vec<i32>> {
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        let tx = client.transaction().await.map_err(engine("starting a migration transaction"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(engine("taking the migration lock"))?;
        // IF NOT EXISTS notices on every start are noise in the server's log.
        tx.batch_execute("SET LOCAL client_min_messages = warning")
            .await
            .map_err(engine("quieting the migration's notices"))?;
        tx.batch_execute(CREATE_TABLE).await.map_err(engine("creating sagaflow_schema_migrations"))?;
        let current: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM sagaflow_schema_migrations", &[])
            .await
            .map_err(engine("reading the schema version"))?
            .get(0);
        // Refused before anything is written: this build would misread the
        // newer tables, and dropping the transaction rolls it back.
        if current > LATEST_VERSION {
            return Err(Error::Corrupt {
                key: "sagaflow_schema_migrations".into(),
                reason: format!(
                    "the database schema is at version {current}, newer than this build reads ({LATEST_VERSION}); run a newer sagaflow"
                ),
            });
        }
        // Another node applied it while this one waited for the lock.
        if current >= migration.version {
            tx.commit().await.map_err(engine("ending a migration transaction"))?;
            continue;
        }
        let doing = format!("applying migration {} ({})", migration.version, migration.name);
        tx.batch_execute(migration.sql).await.map_err(engine(&doing))?;
        tx.execute(
            "INSERT INTO sagaflow_schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(engine(&doing))?;
        tx.commit().await.map_err(engine(&doing))?;
        applied.push(migration.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_from_one_and_end_at_the_latest() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=LATEST_VERSION).collect::<Vec<_>>());
    }
}

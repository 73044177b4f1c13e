//! Schema checks both services' store tests share: a database at the schema an earlier
//! release left (to test a migration on rows written before it), and what SQLite compiles a
//! statement into.

use sqlx::migrate::Migrator;

/// `migrator`'s migrations before the one named `description` (sqlx's name for
/// `NNNN_<description>.sql`, underscores as spaces): the schema a database written by the
/// release before that migration has. Panics if there is no such migration.
pub fn migrations_before(migrator: &Migrator, description: &str) -> Migrator {
    let version = migrator
        .migrations
        .iter()
        .find(|m| m.description == description)
        .unwrap_or_else(|| panic!("no migration named {description:?}"))
        .version;
    Migrator {
        migrations: migrator
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..Migrator::DEFAULT
    }
}

/// The opcodes SQLite compiles `sql` into (`EXPLAIN`, which binds and runs nothing), e.g. to
/// check that a statement builds no temporary table (`OpenEphemeral`).
pub async fn sqlite_opcodes(pool: &sqlx::SqlitePool, sql: &str) -> Vec<String> {
    sqlx::query(&format!("EXPLAIN {sql}"))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"))
        .iter()
        .map(|row| sqlx::Row::get::<String, _>(row, 1))
        .collect()
}

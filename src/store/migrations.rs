//! Numbered, forward-only SQL migrations compiled into the binary.

use super::StoreError;

/// (version, name, SQL), in order. A migration, once released, is never edited.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_identity",
        include_str!("../../migrations/0001_identity.sql"),
    ),
    (
        2,
        "0002_security_version",
        include_str!("../../migrations/0002_security_version.sql"),
    ),
    (
        3,
        "0003_revocation_record",
        include_str!("../../migrations/0003_revocation_record.sql"),
    ),
    (
        4,
        "0004_login_failures",
        include_str!("../../migrations/0004_login_failures.sql"),
    ),
];

/// Any fixed number works; it only has to be the same for every instance.
const MIGRATION_LOCK: i64 = 0x706f_7274_6375_6c6c; // "portcull"

pub(super) async fn apply(
    client: &mut deadpool_postgres::Object,
) -> Result<Vec<&'static str>, StoreError> {
    // Everything under the lock, the bookkeeping table's creation included: two instances'
    // concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog (seen as 42710,
    // "type schema_migrations already exists", as well as 23505).
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply_locked(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_locked(
    client: &mut deadpool_postgres::Object,
) -> Result<Vec<&'static str>, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        let done = client
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        let transaction = client.transaction().await?;
        transaction.batch_execute(sql).await?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&version, &name],
            )
            .await?;
        transaction.commit().await?;
        tracing::info!(migration = name, "migration applied");
        applied.push(name);
    }
    Ok(applied)
}

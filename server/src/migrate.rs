//! Schema migrations, embedded from `migrations/` at build time and applied with refinery.
//!
//! Runs under a PostgreSQL advisory lock so several server instances starting at once do not
//! race each other through the same migration. Also creates the HypoPG extension when it can.

use crate::config::Config;
use anyhow::Context;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// An arbitrary constant naming this project's migration lock.
const MIGRATION_LOCK: i64 = 0x5109_a11e;

/// Applies every pending migration.
///
/// # Errors
/// The database is unreachable or a migration failed (its transaction is rolled back).
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let (mut client, connection) = config
        .pg_config()?
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL to migrate (is it running? see `make db`)")?;
    let driver = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    // HypoPG lets the index advisor test indexes without building them. It is not a migration:
    // a machine without the package (or a role without the right) still runs the shop, with
    // unverified advice. Created under the same lock, so instances starting together do not
    // race to create it.
    if let Err(err) = client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS hypopg")
        .await
    {
        tracing::warn!(error = %advisor::explain::db_message(&err), "hypopg unavailable; index advice will be unverified");
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = report.context("applying migrations")?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied migration");
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

//! The crate's schema migrations: numbered statements, each run once, under an advisory lock so
//! that replicas starting together take turns.

use sqlx::postgres::PgPool;

/// One component's migrations, in order; `{s}` in a statement is the schema.
pub(crate) struct Migrations {
    /// The component (`outbox`, `ledger`): its applied versions are kept in
    /// `{schema}.{name}_schema_version`.
    pub name: &'static str,
    pub statements: &'static [&'static str],
}

/// A plain lower-case identifier, safe to splice into SQL.
pub(crate) fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 63
}

/// Creates `schema` if needed and runs the migrations not yet applied there.
pub(crate) async fn migrate(pool: &PgPool, schema: &str, migrations: &Migrations) -> Result<(), sqlx::Error> {
    let versions = format!("{schema}.{}_schema_version", migrations.name);
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("conto-migrate:{schema}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).execute(&mut *tx).await?;
    sqlx::query(&format!("CREATE TABLE IF NOT EXISTS {versions} (version INTEGER NOT NULL)")).execute(&mut *tx).await?;
    let done: i32 =
        sqlx::query_scalar(&format!("SELECT COALESCE(max(version), 0) FROM {versions}")).fetch_one(&mut *tx).await?;
    for (n, statement) in migrations.statements.iter().enumerate().skip(usize::try_from(done).unwrap_or(0)) {
        sqlx::query(&statement.replace("{s}", schema)).execute(&mut *tx).await?;
        sqlx::query(&format!("INSERT INTO {versions} (version) VALUES ($1)"))
            .bind(i32::try_from(n + 1).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

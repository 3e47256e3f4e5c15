//! The crate's schema migrations: numbered statements, each run once, under an advisory lock so
//! that replicas starting together take turns. A schema already current is only read: a role
//! without DDL rights can open it.

use sqlx::postgres::PgPool;

/// One component's migrations, in order; `{s}` in a statement is the schema.
pub(crate) struct Migrations {
    /// The component (`outbox`, `ledger`): its applied versions are kept in
    /// `{schema}.{name}_schema_version`.
    pub name: &'static str,
    pub statements: &'static [&'static str],
}

/// A plain lower-case identifier, safe to splice into SQL (quoted, see [`quoted`]); names
/// PostgreSQL keeps for itself (`pg_…`) are refused.
pub(crate) fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 63
        && !schema.starts_with("pg_")
}

/// `schema` as a quoted identifier: a valid name that is also a keyword (`user`, `order`)
/// stays a name.
pub(crate) fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}

/// Why a schema could not be made ready.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MigrateError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(
        "schema `{schema}` holds {component} version {found}, newer than this build's {known}: \
         it was migrated by a newer conto-postgres (upgrade this replica, or restore the schema)"
    )]
    Newer { schema: String, component: &'static str, found: i32, known: i32 },
}

/// The version `migrations` are at in `schema`, read without DDL (0: none applied).
async fn applied<'c>(
    conn: impl sqlx::PgExecutor<'c> + Copy,
    schema: &str,
    migrations: &Migrations,
) -> Result<i32, sqlx::Error> {
    let table = format!("{}.{}_schema_version", quoted(schema), migrations.name);
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(&table).fetch_one(conn).await?;
    if !exists {
        return Ok(0);
    }
    sqlx::query_scalar(&format!("SELECT COALESCE(max(version), 0) FROM {table}")).fetch_one(conn).await
}

/// Creates `schema` if needed and runs the migrations not yet applied there. A schema already
/// current is only read; one migrated by a newer build is an error, never used as if current.
pub(crate) async fn migrate(pool: &PgPool, schema: &str, migrations: &Migrations) -> Result<(), MigrateError> {
    let known = i32::try_from(migrations.statements.len()).unwrap_or(i32::MAX);
    let newer =
        |found: i32| MigrateError::Newer { schema: schema.to_owned(), component: migrations.name, found, known };
    match applied(pool, schema, migrations).await? {
        done if done == known => return Ok(()),
        done if done > known => return Err(newer(done)),
        _ => {}
    }
    let q = quoted(schema);
    let versions = format!("{q}.{}_schema_version", migrations.name);
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("conto-migrate:{schema}"))
        .execute(&mut *tx)
        .await?;
    // Only when it is missing: `CREATE SCHEMA IF NOT EXISTS` asks for CREATE on the whole
    // database even when the schema exists, which a role granted CREATE on its schema alone
    // (a database administrator made it) does not have.
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&mut *tx)
        .await?;
    if !exists {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {q}")).execute(&mut *tx).await?;
    }
    sqlx::query(&format!("CREATE TABLE IF NOT EXISTS {versions} (version INTEGER NOT NULL)")).execute(&mut *tx).await?;
    let done: i32 =
        sqlx::query_scalar(&format!("SELECT COALESCE(max(version), 0) FROM {versions}")).fetch_one(&mut *tx).await?;
    if done > known {
        return Err(newer(done));
    }
    for (n, statement) in migrations.statements.iter().enumerate().skip(usize::try_from(done).unwrap_or(0)) {
        sqlx::query(&statement.replace("{s}", &q)).execute(&mut *tx).await?;
        sqlx::query(&format!("INSERT INTO {versions} (version) VALUES ($1)"))
            .bind(i32::try_from(n + 1).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx.commit().await?)
}

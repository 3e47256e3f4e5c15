//! [`PgLedger`]: the embedded engine's ledger in PostgreSQL, shared by every replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conto_core::engine::{
    CounterSlot, Held, LIVE_WINDOW_PREFIX, LedgerRead, LedgerView, LedgerWrite, PendingAnswer, SharedLedger,
    SharedLedgerError, SharedPending, SharedUsage, WindowSlot,
};
use conto_core::{ActorId, BoxFuture, Decimal, PaymentIntent};
use jiff::{SignedDuration, Timestamp};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Row};

use crate::migrate::{MigrateError, Migrations, migrate, quoted, valid_schema};

/// Why the shared ledger could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgLedgerError {
    /// PostgreSQL could not be reached, or refused a statement.
    #[error("ledger database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema name is not a plain lower-case identifier.
    #[error(
        "invalid ledger schema name `{0}`: use lower-case letters, digits and `_`, at most 63, not starting with `pg_`"
    )]
    Schema(String),
    /// The schema was migrated by a newer version of this crate: it is not used as if it
    /// were current (upgrade this replica, or restore the schema).
    #[error("{0}")]
    NewerSchema(String),
}

/// The ledger's migrations, in order (`{s}` is the schema). Amounts are exact `NUMERIC`.
const MIGRATIONS: Migrations = Migrations {
    name: "ledger",
    statements: &[
        "CREATE TABLE IF NOT EXISTS {s}.ledger_counters (
            actor TEXT NOT NULL,
            counter TEXT NOT NULL,
            scope TEXT NOT NULL,
            period_start TIMESTAMPTZ NOT NULL,
            spent NUMERIC NOT NULL DEFAULT 0,
            reserved NUMERIC NOT NULL DEFAULT 0,
            PRIMARY KEY (actor, counter, scope, period_start)
        )",
        "CREATE TABLE IF NOT EXISTS {s}.ledger_authorizations (
            id TEXT PRIMARY KEY,
            actor TEXT NOT NULL,
            amount NUMERIC NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('live', 'recorded', 'released', 'expired')),
            counted NUMERIC,
            settled NUMERIC,
            reference TEXT,
            transaction_id TEXT,
            late BOOLEAN NOT NULL DEFAULT false,
            created_at TIMESTAMPTZ NOT NULL,
            closed_at TIMESTAMPTZ
        )",
        "CREATE INDEX IF NOT EXISTS ledger_authorizations_live
            ON {s}.ledger_authorizations (actor, expires_at) WHERE state = 'live'",
        "CREATE INDEX IF NOT EXISTS ledger_authorizations_closed
            ON {s}.ledger_authorizations (actor, closed_at) WHERE state <> 'live'",
        "CREATE TABLE IF NOT EXISTS {s}.ledger_holds (
            id TEXT NOT NULL,
            counter TEXT NOT NULL,
            scope TEXT NOT NULL,
            period_start TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (id, counter, scope)
        )",
        "CREATE TABLE IF NOT EXISTS {s}.ledger_slots (
            id TEXT,
            actor TEXT NOT NULL,
            counter TEXT NOT NULL,
            scope TEXT NOT NULL,
            at TIMESTAMPTZ NOT NULL
        )",
        "CREATE INDEX IF NOT EXISTS ledger_slots_window ON {s}.ledger_slots (actor, counter, scope, at)",
        "CREATE INDEX IF NOT EXISTS ledger_slots_id ON {s}.ledger_slots (id) WHERE id IS NOT NULL",
        "CREATE TABLE IF NOT EXISTS {s}.ledger_pending (
            id TEXT PRIMARY KEY,
            actor TEXT NOT NULL,
            intent JSONB NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL,
            answer JSONB,
            created_at TIMESTAMPTZ NOT NULL
        )",
        // Scope keys longer than `LONG_SCOPE` bytes are kept as their digest (`stored_scope`):
        // those an earlier build stored whole move to it, counted on.
        "INSERT INTO {s}.ledger_counters AS c (actor, counter, scope, period_start, spent, reserved)
         SELECT actor, counter, 'sha256:' || encode(sha256(convert_to(scope, 'UTF8')), 'hex'), period_start,
                spent, reserved
           FROM {s}.ledger_counters WHERE octet_length(scope) > 1024
         ON CONFLICT (actor, counter, scope, period_start)
         DO UPDATE SET spent = c.spent + excluded.spent, reserved = c.reserved + excluded.reserved",
        "DELETE FROM {s}.ledger_counters WHERE octet_length(scope) > 1024",
        "UPDATE {s}.ledger_holds SET scope = 'sha256:' || encode(sha256(convert_to(scope, 'UTF8')), 'hex')
          WHERE octet_length(scope) > 1024",
        "UPDATE {s}.ledger_slots SET scope = 'sha256:' || encode(sha256(convert_to(scope, 'UTF8')), 'hex')
          WHERE octet_length(scope) > 1024",
    ],
};

/// Housekeeping (forgetting closed authorizations past retention, window slots past any
/// window, answered requests) runs in one transaction out of this many.
const HOUSEKEEPING_EVERY: u64 = 64;

/// How every ledger transaction begins: isolation explicit, waits bounded (see `begin`). The
/// lock wait stays under the pipeline's decision deadline (2 s).
const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; \
    SET LOCAL lock_timeout = '1s'; \
    SET LOCAL idle_in_transaction_session_timeout = '30s'";
/// Velocity windows are at most a day long; slots older than this are never counted again.
const SLOT_RETENTION: SignedDuration = SignedDuration::from_hours(48);

struct Inner {
    pool: PgPool,
    schema: String,
    /// `schema` quoted, as every statement names it (quoted once, not per statement).
    quoted_schema: String,
    retention: SignedDuration,
    transactions: AtomicU64,
    /// Set once the schema is known to be migrated (at once by [`PgLedger::open`]; on first
    /// use after [`PgLedger::connect_lazy`]).
    ready: tokio::sync::OnceCell<()>,
    /// Each actor's turn in this process ([`Turns`]).
    turns: Turns,
}

/// Each actor's turns at the pool: at most half the pool's connections per actor at a time in
/// this process (enough that the next transactions are queued at its lock in PostgreSQL, handed
/// over there without a round trip), the others waiting without a connection, as long as the
/// pool's acquire timeout would have had them wait for one. An actor's transactions run
/// one after another anyway (its advisory lock); without turns, a burst of one actor's
/// decisions, or a replica stalled holding its lock, would have every pool connection waiting
/// on that one lock, and the other actors would find none (the pool's acquire timeout, an
/// outage for all).
struct Turns {
    map: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    per_actor: usize,
    patience: std::time::Duration,
}

/// An actor's turn, held for one transaction; its entry goes when no one else holds or waits
/// for a turn of the actor.
struct Turn<'a> {
    turns: &'a Turns,
    actor: &'a str,
    gate: Arc<tokio::sync::Semaphore>,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Turns {
    /// Turns for `pool`: half its connections per actor, waited for as long as a connection.
    fn of(pool: &PgPool) -> Self {
        let options = pool.options();
        Self::new((options.get_max_connections() as usize / 2).max(1), options.get_acquire_timeout())
    }

    fn new(per_actor: usize, patience: std::time::Duration) -> Self {
        Self { map: std::sync::Mutex::default(), per_actor, patience }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A turn of the actor's, or `None` after the turns' patience (the transactions before it
    /// are stuck: an outage, as the pool's acquire timeout made it before).
    async fn take<'a>(&'a self, actor: &'a str) -> Option<Turn<'a>> {
        let per_actor = self.per_actor;
        let gate = Arc::clone(
            self.map().entry(actor.to_owned()).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(per_actor))),
        );
        // The turn is made before it is awaited: a waiter dropped meanwhile still lets go of
        // the entry (its `Drop`).
        let mut turn = Turn { turns: self, actor, gate, held: None };
        let permit = tokio::time::timeout(self.patience, Arc::clone(&turn.gate).acquire_owned()).await.ok()?.ok()?;
        turn.held = Some(permit);
        Some(turn)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut map = self.turns.map();
        // The map's handle and this one: no one else holds a turn (a permit keeps a handle)
        // or waits for one. (Handles are only taken under the map's lock, so none can appear
        // while it is held.)
        if Arc::strong_count(&self.gate) == 2 {
            map.remove(self.actor);
        }
    }
}

/// The embedded engine's ledger in PostgreSQL: counters per period, live reservations, window
/// slots and requests for human approval, shared by every replica that opens the same schema.
///
/// Each decision is one transaction at `READ COMMITTED` under a transaction-scoped advisory
/// lock on the actor (`pg_advisory_xact_lock`): the transactions of one actor run one after
/// another, in every replica, exactly as the in-process engine's per-actor mutex orders them
/// in one process, and each statement after the lock sees everything the previous holder
/// committed. `REPEATABLE READ` would be wrong here (its snapshot would be taken before the
/// lock is granted and miss the previous holder's commit); `SERIALIZABLE` would add
/// serialization failures and retries without protecting anything the lock does not. Actors
/// never wait for each other: in one process, an actor's transactions also take turns before
/// they take a connection, so one busy (or stalled) actor holds at most one of the pool's.
///
/// A PostgreSQL outage fails closed: the engine answers
/// [`Outage::Ledger`](conto_core::Outage::Ledger) and the pipeline denies with source
/// `unavailable` (or hands the decision to a configured stand-in). A ledger set up wrong (no
/// permission, a missing table or schema, bad credentials) or holding what cannot be read is
/// a configuration error, [`AuthorityError::Unsupported`](conto_core::AuthorityError::Unsupported):
/// it also fails closed, and no retry or stand-in hides it.
#[derive(Clone)]
pub struct PgLedger {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedger").field("schema", &self.inner.schema).finish_non_exhaustive()
    }
}

/// A PostgreSQL failure, by kind: one that may pass by itself (`crate::transient`: the
/// database unreachable, busy, going away, a lock timeout) is an outage; any other (the ledger
/// set up wrong, a value it cannot store or read) is broken, and no retry or stand-in hides it.
fn err(e: sqlx::Error) -> SharedLedgerError {
    let message = format!("PostgreSQL: {e}");
    if crate::transient(&e) { SharedLedgerError::unavailable(message) } else { SharedLedgerError::broken(message) }
}

fn ts(t: Timestamp) -> String {
    t.to_string()
}

fn from_micros(us: i64) -> Result<Timestamp, SharedLedgerError> {
    Timestamp::from_microsecond(us)
        .map_err(|e| SharedLedgerError::broken(format!("a stored time is out of range: {e}")))
}

/// Column arrays for `unnest`.
fn counter_arrays(slots: &[CounterSlot]) -> Columns<'_> {
    columns(slots.iter().map(|s| (s.counter.as_str(), s.scope.as_str(), s.period_start)))
}

fn window_arrays(slots: &[WindowSlot]) -> Columns<'_> {
    columns(slots.iter().map(|s| (s.counter.as_str(), s.scope.as_str(), s.since)))
}

/// `(counter, scope, instant)` keys as three column arrays.
type Columns<'a> = (Vec<&'a str>, Vec<String>, Vec<String>);

/// `(counter, scope, instant)` keys as three column arrays, each scope as it is stored.
fn columns<'a>(keys: impl Iterator<Item = (&'a str, &'a str, Timestamp)>) -> Columns<'a> {
    let (mut counters, mut scopes, mut instants) = (Vec::new(), Vec::new(), Vec::new());
    for (counter, scope, at) in keys {
        counters.push(counter);
        scopes.push(stored_scope(scope));
        instants.push(ts(at));
    }
    (counters, scopes, instants)
}

/// Scope keys longer than this many bytes are stored as their digest.
const LONG_SCOPE: usize = 1024;

/// A scope key as the tables keep it: itself, or, past [`LONG_SCOPE`] bytes (an endpoint URL
/// may be longer than an index entry holds), `sha256:` and its SHA-256 digest in hex. Distinct
/// keys stay distinct counters (a collision would need a SHA-256 collision); usage shows such a
/// scope by its digest.
fn stored_scope(scope: &str) -> String {
    if scope.len() <= LONG_SCOPE {
        return scope.to_owned();
    }
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(scope.as_bytes())))
}

impl PgLedger {
    /// Connects a pool to `url` and opens the ledger in schema `conto`.
    pub async fn connect(url: &str) -> Result<Self, PgLedgerError> {
        let pool =
            PgPoolOptions::new().max_connections(16).acquire_timeout(Duration::from_secs(2)).connect(url).await?;
        Self::open(pool, "conto").await
    }

    /// Opens the ledger in `schema` on the app's own pool, creating or upgrading its tables.
    pub async fn open(pool: PgPool, schema: &str) -> Result<Self, PgLedgerError> {
        if !valid_schema(schema) {
            return Err(PgLedgerError::Schema(schema.to_owned()));
        }
        migrate(&pool, schema, &MIGRATIONS).await?;
        let ledger = Self::unmigrated(pool, schema);
        let _ = ledger.inner.ready.set(());
        Ok(ledger)
    }

    /// A ledger on `url`, in `schema`, that connects and migrates on its first use (for
    /// start-up code that is not async, like `conto::from_env`). Only the URL and the name are
    /// checked here; until the database answers, every decision fails closed as unavailable.
    pub fn connect_lazy(url: &str, schema: &str) -> Result<Self, PgLedgerError> {
        if !valid_schema(schema) {
            return Err(PgLedgerError::Schema(schema.to_owned()));
        }
        let pool =
            PgPoolOptions::new().max_connections(16).acquire_timeout(Duration::from_secs(2)).connect_lazy(url)?;
        Ok(Self::unmigrated(pool, schema))
    }

    fn unmigrated(pool: PgPool, schema: &str) -> Self {
        let turns = Turns::of(&pool);
        Self {
            inner: Arc::new(Inner {
                pool,
                schema: schema.to_owned(),
                quoted_schema: quoted(schema),
                retention: conto_core::engine::DEFAULT_RETENTION,
                transactions: AtomicU64::new(0),
                ready: tokio::sync::OnceCell::new(),
                turns,
            }),
        }
    }

    async fn ready(&self) -> Result<(), SharedLedgerError> {
        self.inner
            .ready
            .get_or_try_init(|| async { migrate(&self.inner.pool, &self.inner.schema, &MIGRATIONS).await })
            .await
            .map(|_| ())
            .map_err(|e| match e {
                MigrateError::Database(e) => err(e),
                newer @ MigrateError::Newer { .. } => SharedLedgerError::broken(newer.to_string()),
            })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    fn sql(&self, statement: &str) -> String {
        statement.replace("{s}", &self.inner.quoted_schema)
    }

    /// A turn of `actor`'s in this process, waited for at most the pool's acquire timeout.
    async fn turn<'a>(&'a self, actor: &'a ActorId) -> Result<Turn<'a>, SharedLedgerError> {
        let turns = &self.inner.turns;
        turns.take(actor.as_str()).await.ok_or_else(|| {
            SharedLedgerError::unavailable(format!(
                "actor {actor}: its earlier transactions in this process did not finish within {:?} (its lock is held elsewhere)",
                turns.patience
            ))
        })
    }

    /// Begins a transaction holding `actor`'s lock, with its due authorizations expired.
    async fn begin(
        &self,
        actor: &ActorId,
        now: Timestamp,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, SharedLedgerError> {
        self.ready().await?;
        // Explicit, whatever the server's default_transaction_isolation says. Bounded waits,
        // in the same round trip: a replica that stalls holding an actor's lock (frozen, or cut
        // off with its connection left open) is an outage for that actor's decisions after
        // `lock_timeout`, never a wait that holds a pool connection past the decision's
        // deadline, and the server ends its transaction, lock included, after
        // `idle_in_transaction_session_timeout`.
        let mut tx = self.inner.pool.begin_with(BEGIN).await.map_err(err)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("conto-ledger:{}:{}", self.inner.schema, actor.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let now = ts(now);
        sqlx::query(&self.sql(
            "WITH due AS (
                UPDATE {s}.ledger_authorizations SET state = 'expired', closed_at = $2::timestamptz
                 WHERE actor = $1 AND state = 'live' AND expires_at <= $2::timestamptz
             RETURNING id, amount),
             held AS (
                SELECT h.counter, h.scope, h.period_start, sum(due.amount) AS amount
                  FROM {s}.ledger_holds h JOIN due ON due.id = h.id
                 GROUP BY h.counter, h.scope, h.period_start),
             unheld AS (
                UPDATE {s}.ledger_counters c SET reserved = c.reserved - held.amount FROM held
                 WHERE c.actor = $1 AND c.counter = held.counter AND c.scope = held.scope
                   AND c.period_start = held.period_start
             RETURNING 1),
             slots AS (DELETE FROM {s}.ledger_slots s USING due WHERE s.id = due.id RETURNING 1)
             DELETE FROM {s}.ledger_holds h USING due WHERE h.id = due.id",
        ))
        .bind(actor.as_str())
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        if self.inner.transactions.fetch_add(1, Ordering::Relaxed).is_multiple_of(HOUSEKEEPING_EVERY) {
            self.housekeeping(&mut tx, actor, now.as_str()).await?;
        }
        Ok(tx)
    }

    /// Forgets what no decision will read again: closed authorizations past retention, velocity
    /// window slots older than any window, answered or lapsed requests past retention, and
    /// counters of periods that ended holding no reservation (a newer period began more than
    /// two days ago: a decision stamped before that boundary, still waiting for its turn or on
    /// a replica whose clock is behind, still reads the ended period's row).
    async fn housekeeping(&self, conn: &mut PgConnection, actor: &ActorId, now: &str) -> Result<(), SharedLedgerError> {
        let retention = self.inner.retention.as_secs_f64();
        sqlx::query(&self.sql(
            "WITH a AS (DELETE FROM {s}.ledger_authorizations WHERE actor = $1 AND state <> 'live'
                          AND closed_at < $2::timestamptz - make_interval(secs => $3) RETURNING 1),
                  p AS (DELETE FROM {s}.ledger_pending WHERE actor = $1
                          AND expires_at < $2::timestamptz - make_interval(secs => $3) RETURNING 1),
                  c AS (DELETE FROM {s}.ledger_counters c WHERE c.actor = $1 AND c.reserved = 0
                          AND EXISTS (SELECT 1 FROM {s}.ledger_counters n WHERE n.actor = c.actor
                                        AND n.counter = c.counter AND n.scope = c.scope
                                        AND n.period_start > c.period_start
                                        AND n.period_start < $2::timestamptz - make_interval(secs => $4)) RETURNING 1)
             DELETE FROM {s}.ledger_slots WHERE actor = $1 AND at < $2::timestamptz - make_interval(secs => $4)
                AND NOT starts_with(counter, $5)",
        ))
        .bind(actor.as_str())
        .bind(now)
        .bind(retention)
        .bind(SLOT_RETENTION.as_secs_f64())
        // A live approval's slot leaves its window when the approval ends, never by age (an
        // MPP session may be approved for longer than any velocity window).
        .bind(LIVE_WINDOW_PREFIX)
        .execute(conn)
        .await
        .map_err(err)?;
        Ok(())
    }

    /// One value per key, in the keys' order: `sql` gets the actor as `$1` and the keys' three
    /// columns as `$2`..`$4`.
    async fn per_key<T>(
        &self,
        conn: &mut PgConnection,
        sql: &str,
        actor: &ActorId,
        (counters, scopes, instants): Columns<'_>,
    ) -> Result<Vec<T>, SharedLedgerError>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        sqlx::query_scalar(&self.sql(sql))
            .bind(actor.as_str())
            .bind(counters)
            .bind(scopes)
            .bind(instants)
            .fetch_all(conn)
            .await
            .map_err(err)
    }

    async fn read(
        &self,
        conn: &mut PgConnection,
        actor: &ActorId,
        now: Timestamp,
        read: &LedgerRead<'_>,
    ) -> Result<LedgerView, SharedLedgerError> {
        let mut view = LedgerView::default();
        if !read.counters.is_empty() {
            view.used = self
                .per_key(
                    conn,
                    "SELECT COALESCE(c.spent + c.reserved, 0)
                       FROM unnest($2::text[], $3::text[], $4::text[]::timestamptz[])
                            WITH ORDINALITY AS k(counter, scope, period_start, i)
                       LEFT JOIN {s}.ledger_counters c ON c.actor = $1 AND c.counter = k.counter
                            AND c.scope = k.scope AND c.period_start = k.period_start
                      ORDER BY k.i",
                    actor,
                    counter_arrays(read.counters),
                )
                .await?;
            // Nothing this crate writes goes below zero: a negative sum (a hand edit, a
            // corruption) would pass every limit, so it stops the decision instead.
            if let Some(negative) = view.used.iter().find(|d| d.is_sign_negative() && !d.is_zero()) {
                return Err(SharedLedgerError::broken(format!(
                    "actor {actor}: a counter holds a negative amount ({negative}); fix ledger_counters"
                )));
            }
        }
        if !read.windows.is_empty() {
            let counts: Vec<i64> = self
                .per_key(
                    conn,
                    "SELECT (SELECT count(*) FROM {s}.ledger_slots s WHERE s.actor = $1 AND s.counter = k.counter
                                AND s.scope = k.scope AND s.at > k.since)
                       FROM unnest($2::text[], $3::text[], $4::text[]::timestamptz[])
                            WITH ORDINALITY AS k(counter, scope, since, i)
                      ORDER BY k.i",
                    actor,
                    window_arrays(read.windows),
                )
                .await?;
            view.counts = counts.into_iter().map(|n| u64::try_from(n).unwrap_or(0)).collect();
        }
        if let Some(id) = read.authorization {
            let row = sqlx::query(&self.sql(
                "SELECT state, amount, counted, settled, reference, transaction_id, late
                   FROM {s}.ledger_authorizations WHERE id = $1 AND actor = $2",
            ))
            .bind(id)
            .bind(actor.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(err)?;
            view.authorization = row.map(|r| held(&r)).transpose()?;
        }
        if let Some(id) = read.pending {
            view.pending_waiting = sqlx::query_scalar(&self.sql(
                "SELECT answer IS NULL AND expires_at > $3::timestamptz FROM {s}.ledger_pending
                  WHERE id = $1 AND actor = $2",
            ))
            .bind(id)
            .bind(actor.as_str())
            .bind(ts(now))
            .fetch_optional(&mut *conn)
            .await
            .map_err(err)?
            .unwrap_or(false);
        }
        Ok(view)
    }

    async fn write(
        &self,
        conn: &mut PgConnection,
        actor: &ActorId,
        now: Timestamp,
        write: LedgerWrite,
    ) -> Result<(), SharedLedgerError> {
        let actor = actor.as_str();
        let query = match &write {
            LedgerWrite::Reserve { id, amount, expires_at, counters, windows, at } => {
                let (counter, scope, start) = counter_arrays(counters);
                let (window, window_scope, _) = window_arrays(windows);
                sqlx::query(&self.sql(
                    "WITH a AS (
                        INSERT INTO {s}.ledger_authorizations (id, actor, amount, expires_at, state, created_at)
                        VALUES ($1, $2, $3, $4::timestamptz, 'live', $5::timestamptz)),
                     h AS (
                        INSERT INTO {s}.ledger_holds (id, counter, scope, period_start)
                        SELECT $1, k.counter, k.scope, k.period_start
                          FROM unnest($6::text[], $7::text[], $8::text[]::timestamptz[]) AS k(counter, scope, period_start)),
                     v AS (
                        INSERT INTO {s}.ledger_slots (id, actor, counter, scope, at)
                        SELECT $1, $2, k.counter, k.scope, $5::timestamptz
                          FROM unnest($9::text[], $10::text[]) AS k(counter, scope))
                     INSERT INTO {s}.ledger_counters AS c (actor, counter, scope, period_start, spent, reserved)
                     SELECT $2, k.counter, k.scope, k.period_start, 0, $3
                       FROM unnest($6::text[], $7::text[], $8::text[]::timestamptz[]) AS k(counter, scope, period_start)
                     ON CONFLICT (actor, counter, scope, period_start)
                     DO UPDATE SET reserved = c.reserved + EXCLUDED.reserved",
                ))
                .bind(id)
                .bind(actor)
                .bind(amount)
                .bind(ts(*expires_at))
                .bind(ts(*at))
                .bind(counter)
                .bind(scope)
                .bind(start)
                .bind(window)
                .bind(window_scope)
                .execute(&mut *conn)
                .await
            }
            LedgerWrite::Settle { id, counted, settled, reference, transaction_id } => {
                sqlx::query(&self.sql(
                    "WITH a AS (
                        UPDATE {s}.ledger_authorizations
                           SET state = 'recorded', counted = $3, settled = $4, reference = $5,
                               transaction_id = $6, closed_at = $7::timestamptz
                         WHERE id = $1 AND actor = $2 AND state = 'live'
                     RETURNING amount),
                     c AS (
                        UPDATE {s}.ledger_counters c SET reserved = c.reserved - a.amount, spent = c.spent + $3
                          FROM {s}.ledger_holds h, a
                         WHERE h.id = $1 AND c.actor = $2 AND c.counter = h.counter AND c.scope = h.scope
                           AND c.period_start = h.period_start
                     RETURNING 1),
                     v AS (DELETE FROM {s}.ledger_slots
                            WHERE id = $1 AND starts_with(counter, $8) AND EXISTS (SELECT 1 FROM a) RETURNING 1)
                     DELETE FROM {s}.ledger_holds WHERE id = $1",
                ))
                .bind(id)
                .bind(actor)
                .bind(counted)
                .bind(settled)
                .bind(reference)
                .bind(transaction_id)
                .bind(ts(now))
                .bind(LIVE_WINDOW_PREFIX)
                .execute(&mut *conn)
                .await
            }
            LedgerWrite::SettleLate { id, counted, settled, reference, transaction_id, counters, windows } => {
                let (counter, scope, start) = counter_arrays(counters);
                let (window, window_scope, _) = window_arrays(windows);
                sqlx::query(&self.sql(
                    "WITH a AS (
                        UPDATE {s}.ledger_authorizations
                           SET state = 'recorded', late = true, counted = $3, settled = $4, reference = $5,
                               transaction_id = $6, closed_at = $7::timestamptz
                         WHERE id = $1 AND actor = $2 AND state IN ('expired', 'released')),
                     v AS (
                        INSERT INTO {s}.ledger_slots (id, actor, counter, scope, at)
                        SELECT $1, $2, k.counter, k.scope, $7::timestamptz
                          FROM unnest($11::text[], $12::text[]) AS k(counter, scope))
                     INSERT INTO {s}.ledger_counters AS c (actor, counter, scope, period_start, spent, reserved)
                     SELECT $2, k.counter, k.scope, k.period_start, $3, 0
                       FROM unnest($8::text[], $9::text[], $10::text[]::timestamptz[]) AS k(counter, scope, period_start)
                     ON CONFLICT (actor, counter, scope, period_start) DO UPDATE SET spent = c.spent + EXCLUDED.spent",
                ))
                .bind(id)
                .bind(actor)
                .bind(counted)
                .bind(settled)
                .bind(reference)
                .bind(transaction_id)
                .bind(ts(now))
                .bind(counter)
                .bind(scope)
                .bind(start)
                .bind(window)
                .bind(window_scope)
                .execute(&mut *conn)
                .await
            }
            LedgerWrite::Release { id } => {
                sqlx::query(&self.sql(
                    "WITH a AS (
                        UPDATE {s}.ledger_authorizations SET state = 'released', closed_at = $3::timestamptz
                         WHERE id = $1 AND actor = $2 AND state = 'live'
                     RETURNING amount),
                     c AS (
                        UPDATE {s}.ledger_counters c SET reserved = c.reserved - a.amount
                          FROM {s}.ledger_holds h, a
                         WHERE h.id = $1 AND c.actor = $2 AND c.counter = h.counter AND c.scope = h.scope
                           AND c.period_start = h.period_start
                     RETURNING 1),
                     v AS (DELETE FROM {s}.ledger_slots WHERE id = $1 AND EXISTS (SELECT 1 FROM a) RETURNING 1)
                     DELETE FROM {s}.ledger_holds WHERE id = $1 AND EXISTS (SELECT 1 FROM a)",
                ))
                .bind(id)
                .bind(actor)
                .bind(ts(now))
                .execute(&mut *conn)
                .await
            }
            LedgerWrite::Spend { id, counters, windows, amount, at } => {
                let (counter, scope, start) = counter_arrays(counters);
                let (window, window_scope, _) = window_arrays(windows);
                // With an id, the spend is also kept as that authorization, recorded, so that a
                // repeat reads it (the step then writes nothing).
                sqlx::query(&self.sql(
                    "WITH a AS (
                        INSERT INTO {s}.ledger_authorizations
                            (id, actor, amount, expires_at, state, counted, settled, created_at, closed_at)
                        SELECT $9, $1, $2, $3::timestamptz, 'recorded', $2, $2, $3::timestamptz, $3::timestamptz
                         WHERE $9::text IS NOT NULL),
                     v AS (
                        INSERT INTO {s}.ledger_slots (id, actor, counter, scope, at)
                        SELECT NULL, $1, k.counter, k.scope, $3::timestamptz
                          FROM unnest($7::text[], $8::text[]) AS k(counter, scope))
                     INSERT INTO {s}.ledger_counters AS c (actor, counter, scope, period_start, spent, reserved)
                     SELECT $1, k.counter, k.scope, k.period_start, $2, 0
                       FROM unnest($4::text[], $5::text[], $6::text[]::timestamptz[]) AS k(counter, scope, period_start)
                     ON CONFLICT (actor, counter, scope, period_start) DO UPDATE SET spent = c.spent + EXCLUDED.spent",
                ))
                .bind(actor)
                .bind(amount)
                .bind(ts(*at))
                .bind(counter)
                .bind(scope)
                .bind(start)
                .bind(window)
                .bind(window_scope)
                .bind(id.as_deref())
                .execute(&mut *conn)
                .await
            }
            LedgerWrite::OpenPending { id, intent, expires_at } => {
                let intent = serde_json::to_string(intent)
                    .map_err(|e| SharedLedgerError::broken(format!("the intent cannot be stored: {e}")))?;
                sqlx::query(&self.sql(
                    "INSERT INTO {s}.ledger_pending (id, actor, intent, expires_at, created_at)
                     VALUES ($1, $2, $3::jsonb, $4::timestamptz, $5::timestamptz)",
                ))
                .bind(id)
                .bind(actor)
                .bind(intent)
                .bind(ts(*expires_at))
                .bind(ts(now))
                .execute(&mut *conn)
                .await
            }
            LedgerWrite::AnswerPending { id, answer } => {
                let answer = serde_json::to_string(answer)
                    .map_err(|e| SharedLedgerError::broken(format!("the answer cannot be stored: {e}")))?;
                sqlx::query(&self.sql(
                    "UPDATE {s}.ledger_pending SET answer = $3::jsonb WHERE id = $1 AND actor = $2 AND answer IS NULL",
                ))
                .bind(id)
                .bind(actor)
                .bind(answer)
                .execute(&mut *conn)
                .await
            }
            other => return Err(SharedLedgerError::broken(format!("this ledger cannot apply {other:?}"))),
        };
        query.map(|_| ()).map_err(err)
    }

    async fn run_transact(
        &self,
        actor: &ActorId,
        now: Timestamp,
        read: LedgerRead<'_>,
        step: &mut (dyn FnMut(&LedgerView) -> Vec<LedgerWrite> + Send),
    ) -> Result<(), SharedLedgerError> {
        let _turn = self.turn(actor).await?;
        let mut tx = self.begin(actor, now).await?;
        let view = self.read(&mut tx, actor, now, &read).await?;
        for write in step(&view) {
            self.write(&mut tx, actor, now, write).await?;
        }
        tx.commit().await.map_err(err)
    }

    async fn find_pending(&self, id: &str) -> Result<Option<SharedPending>, SharedLedgerError> {
        self.ready().await?;
        let Some(row) = sqlx::query(&self.sql(
            "SELECT intent::text AS intent, (extract(epoch FROM expires_at) * 1000000)::bigint AS expires_us,
                    answer::text AS answer
               FROM {s}.ledger_pending WHERE id = $1",
        ))
        .bind(id)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(err)?
        else {
            return Ok(None);
        };
        let intent: String = row.try_get("intent").map_err(err)?;
        let intent: PaymentIntent = serde_json::from_str(&intent)
            .map_err(|e| SharedLedgerError::broken(format!("stored request {id} holds an unreadable intent: {e}")))?;
        let answer: Option<String> = row.try_get("answer").map_err(err)?;
        let answer = answer
            .map(|a| serde_json::from_str::<PendingAnswer>(&a))
            .transpose()
            .map_err(|e| SharedLedgerError::broken(format!("stored request {id} holds an unreadable answer: {e}")))?;
        Ok(Some(SharedPending { intent, expires_at: from_micros(row.try_get("expires_us").map_err(err)?)?, answer }))
    }

    async fn read_usage(&self, actor: &ActorId, now: Timestamp) -> Result<SharedUsage, SharedLedgerError> {
        let _turn = self.turn(actor).await?;
        let mut tx = self.begin(actor, now).await?;
        let rows = sqlx::query(&self.sql(
            "SELECT DISTINCT ON (counter, scope) counter, scope,
                    (extract(epoch FROM period_start) * 1000000)::bigint AS start_us, spent, reserved
               FROM {s}.ledger_counters WHERE actor = $1 AND period_start <= $2::timestamptz
              ORDER BY counter, scope, period_start DESC",
        ))
        .bind(actor.as_str())
        .bind(ts(now))
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        let mut usage = SharedUsage::default();
        for r in rows {
            let slot = CounterSlot {
                counter: r.try_get("counter").map_err(err)?,
                scope: r.try_get("scope").map_err(err)?,
                period_start: from_micros(r.try_get("start_us").map_err(err)?)?,
            };
            usage.counters.push((slot, r.try_get("spent").map_err(err)?, r.try_get("reserved").map_err(err)?));
        }
        let s = sqlx::query(&self.sql(
            "SELECT count(*) AS approved,
                    count(*) FILTER (WHERE state = 'live') AS live,
                    count(*) FILTER (WHERE state = 'recorded') AS recorded,
                    count(*) FILTER (WHERE state = 'released') AS released,
                    count(*) FILTER (WHERE state = 'expired' OR (state = 'recorded' AND late)) AS expired,
                    count(*) FILTER (WHERE late) AS late,
                    COALESCE(sum(counted), 0) AS spent
               FROM {s}.ledger_authorizations WHERE actor = $1",
        ))
        .bind(actor.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        let n = |c: &str| -> Result<u64, SharedLedgerError> {
            Ok(u64::try_from(s.try_get::<i64, _>(c).map_err(err)?).unwrap_or(0))
        };
        usage.live_reservations = usize::try_from(n("live")?).unwrap_or(usize::MAX);
        usage.stats.approved = n("approved")?;
        usage.stats.recorded = n("recorded")?;
        usage.stats.released = n("released")?;
        usage.stats.expired = n("expired")?;
        usage.stats.late_records = n("late")?;
        usage.stats.total_spent = s.try_get::<Decimal, _>("spent").map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(usage)
    }
}

fn held(r: &sqlx::postgres::PgRow) -> Result<Held, SharedLedgerError> {
    let state: String = r.try_get("state").map_err(err)?;
    Ok(match state.as_str() {
        "live" => Held::Live { amount: r.try_get("amount").map_err(err)? },
        "recorded" => Held::Recorded {
            counted: r.try_get::<Option<Decimal>, _>("counted").map_err(err)?.unwrap_or_default(),
            settled: r.try_get::<Option<Decimal>, _>("settled").map_err(err)?.unwrap_or_default(),
            reference: r.try_get("reference").map_err(err)?,
            transaction_id: r.try_get("transaction_id").map_err(err)?,
            late: r.try_get("late").map_err(err)?,
        },
        "released" => Held::Released,
        "expired" => Held::Expired,
        other => return Err(SharedLedgerError::broken(format!("unknown authorization state `{other}` in the ledger"))),
    })
}

impl SharedLedger for PgLedger {
    fn transact<'a>(
        &'a self,
        actor: &'a ActorId,
        now: Timestamp,
        read: LedgerRead<'a>,
        step: &'a mut (dyn FnMut(&LedgerView) -> Vec<LedgerWrite> + Send),
    ) -> BoxFuture<'a, Result<(), SharedLedgerError>> {
        Box::pin(self.run_transact(actor, now, read, step))
    }

    fn pending<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SharedPending>, SharedLedgerError>> {
        Box::pin(self.find_pending(id))
    }

    fn usage<'a>(
        &'a self,
        actor: &'a ActorId,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<SharedUsage, SharedLedgerError>> {
        Box::pin(self.read_usage(actor, now))
    }
}

impl From<MigrateError> for PgLedgerError {
    fn from(e: MigrateError) -> Self {
        match e {
            MigrateError::Database(e) => Self::Database(e),
            newer @ MigrateError::Newer { .. } => Self::NewerSchema(newer.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Turns;

    /// An actor's turn is one at a time, and its entry goes with the last one holding or
    /// waiting for it (also a waiter given up on), so the map does not grow with every actor
    /// ever seen.
    #[tokio::test]
    async fn turns_are_one_at_a_time_and_leave_no_entry_behind() {
        let turns = Turns::new(4, std::time::Duration::from_secs(60));
        let mut first = Vec::new();
        for _ in 0..turns.per_actor {
            first.push(turns.take("agent-1").await.unwrap());
        }
        let other = turns.take("agent-2").await.unwrap(); // another actor: no wait
        let mut next = Box::pin(turns.take("agent-1"));
        assert!(futures_poll_once(next.as_mut()).is_none(), "agent-1's next turn waits");
        first.pop();
        let next = next.await.unwrap();
        assert_eq!(turns.map().len(), 2);
        drop((first, next, other));
        assert!(turns.map().is_empty());

        let held: Vec<_> = futures_all(&turns, "agent-3").await;
        let mut waiting = Box::pin(turns.take("agent-3"));
        assert!(futures_poll_once(waiting.as_mut()).is_none());
        drop(waiting); // given up on
        drop(held);
        assert!(turns.map().is_empty(), "{:?}", turns.map().keys().collect::<Vec<_>>());

        // Past its patience, a waiter gives up, and leaves no entry once the holders are done.
        let impatient = Turns::new(2, std::time::Duration::from_millis(10));
        let held = futures_all(&impatient, "agent-4").await;
        assert!(impatient.take("agent-4").await.is_none());
        drop(held);
        assert!(impatient.map().is_empty());
    }

    /// Every turn of `actor`'s there is.
    async fn futures_all<'a>(turns: &'a Turns, actor: &'a str) -> Vec<super::Turn<'a>> {
        let mut all = Vec::new();
        for _ in 0..turns.per_actor {
            all.push(turns.take(actor).await.unwrap());
        }
        all
    }

    fn futures_poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        match f.poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}

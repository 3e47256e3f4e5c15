//! [`PgOutbox`]: the record sink in PostgreSQL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conto_core::BoxFuture;
use conto_core::sink::{
    Deliver, Next, OutboxStats, QueuedRecord, RecordKind, RecordSink, SinkError, TokenSeal, attempt,
};
use jiff::Timestamp;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, PgExecutor, Row};

use crate::migrate::{MigrateError, Migrations, migrate, quoted, valid_schema};

/// Why the PostgreSQL outbox failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgOutboxError {
    /// PostgreSQL could not be reached, or refused a statement.
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema name is not a plain lower-case identifier.
    #[error(
        "invalid outbox schema name `{0}`: use lower-case letters, digits and `_`, at most 63, not starting with `pg_`"
    )]
    Schema(String),
    /// The schema was migrated by a newer version of this crate: it is not used as if it
    /// were current (upgrade this replica, or restore the schema).
    #[error("{0}")]
    NewerSchema(String),
    /// A record's token could not be sealed.
    #[error("outbox record: {0}")]
    Seal(SinkError),
}

/// A record that could not be delivered, kept for an operator.
pub use conto_core::sink::DeadRecord;

/// The outbox's migrations, in order; each runs once, under an advisory lock. `{s}` is the
/// schema.
const MIGRATIONS: Migrations = Migrations {
    name: "outbox",
    statements: &[
        "CREATE TABLE IF NOT EXISTS {s}.outbox (
        id BIGSERIAL PRIMARY KEY,
        authorization_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        record JSONB NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        lease_until TIMESTAMPTZ,
        leased_by TEXT,
        last_error TEXT,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        delivered_at TIMESTAMPTZ,
        UNIQUE (authorization_id, kind)
    )",
        "CREATE INDEX IF NOT EXISTS outbox_due ON {s}.outbox (next_attempt_at) WHERE state = 'pending'",
    ],
};

/// What this process last saw of the shared table.
#[derive(Default)]
struct Seen {
    stats: OutboxStats,
    /// The earliest moment a pending row can be claimed.
    next_due: Option<Timestamp>,
    /// Records this process ever queued (only grows), and how many of them the applied count
    /// began after: the rest may be missing from it and are added to its `pending`.
    queued_total: u64,
    counted_upto: u64,
    /// Counts begun, and the latest begun whose result is applied: a count that began before
    /// another but answered after it is stale and dropped.
    counts_begun: u64,
    count_applied: u64,
}

/// Records accepted while PostgreSQL could not be written: kept in this process and written to
/// the table first thing on each delivery pass, until the database is back.
#[derive(Default)]
struct Spill(Mutex<Vec<QueuedRecord>>);

struct Shared {
    pool: PgPool,
    schema: String,
    /// `schema` quoted, as every statement names it (quoted once, not per statement).
    quoted_schema: String,
    /// This process's name on the leases it takes.
    worker: String,
    seen: Mutex<Seen>,
    spill: Spill,
    /// Delivery passes that sent something; every 256th also prunes delivered rows.
    passes: std::sync::atomic::AtomicU64,
    /// Outcomes of deliveries this process made whose row could not be updated (the database
    /// went away meanwhile): written first thing on the next pass, so the row is neither
    /// delivered twice nor left leased until its lease lapses.
    unsettled: Mutex<Vec<(i64, Next)>>,
}

/// The durable outbox in PostgreSQL, shared by every replica of a service. Cheap to clone;
/// clones share the pool.
#[derive(Clone)]
pub struct PgOutbox {
    shared: Arc<Shared>,
    seal: Option<Arc<dyn TokenSeal>>,
    lease: Duration,
    max_attempts: u32,
    keep_delivered: Duration,
}

impl std::fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOutbox")
            .field("schema", &self.shared.schema)
            .field("worker", &self.shared.worker)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl PgOutbox {
    /// Connects a pool to `url` and opens the outbox in schema `conto`.
    pub async fn connect(url: &str) -> Result<Self, PgOutboxError> {
        let pool = PgPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(5)).connect(url).await?;
        Self::open(pool, "conto").await
    }

    /// Opens the outbox in `schema` on the app's own pool, creating or upgrading its tables.
    pub async fn open(pool: PgPool, schema: &str) -> Result<Self, PgOutboxError> {
        if !valid_schema(schema) {
            return Err(PgOutboxError::Schema(schema.to_owned()));
        }
        migrate(&pool, schema, &MIGRATIONS).await?;
        let worker = format!("{}-{}", std::process::id(), Timestamp::now().as_nanosecond());
        let shared = Shared {
            pool,
            schema: schema.to_owned(),
            quoted_schema: quoted(schema),
            worker,
            seen: Mutex::default(),
            spill: Spill::default(),
            passes: Default::default(),
            unsettled: Mutex::default(),
        };
        let outbox = Self {
            shared: Arc::new(shared),
            // Tokens are held in memory until a seal is configured: never stored in clear.
            seal: Some(Arc::new(conto_core::sink::HeldInMemory::default())),
            lease: Duration::from_secs(30),
            max_attempts: 12,
            keep_delivered: Duration::from_secs(7 * 24 * 3600),
        };
        outbox.refresh().await?;
        Ok(outbox)
    }

    /// How long a claimed record is this replica's before another may take it (default 30 s;
    /// it must outlast one delivery attempt, 10 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// Seals the approval tokens records carry (every replica with the same key), so any
    /// replica can deliver a transfer or card record. Without it tokens are not stored at all,
    /// only held in the memory of the replica that queued the record
    /// ([`HeldInMemory`](conto_core::sink::HeldInMemory)): another replica, or the same one
    /// after a restart, cannot confirm it, and it goes to the dead records.
    pub fn seal_tokens(mut self, seal: impl TokenSeal) -> Self {
        self.seal = Some(Arc::new(seal));
        self
    }

    /// How many delivery attempts a record gets before it is declared dead (default 12).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// How long a delivered record stays in the table, for audits, before a delivery pass
    /// deletes it (default 7 days). Pending and dead records are never deleted.
    pub fn keep_delivered(mut self, keep: Duration) -> Self {
        self.keep_delivered = keep;
        self
    }

    /// Deletes delivered records older than [`PgOutbox::keep_delivered`]; returns how many.
    pub async fn prune_delivered(&self) -> Result<u64, PgOutboxError> {
        let done = sqlx::query(&self.sql(
            "DELETE FROM {s}.outbox WHERE state = 'delivered' AND delivered_at < now() - make_interval(secs => $1)",
        ))
        .bind(self.keep_delivered.as_secs_f64())
        .execute(&self.shared.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    fn sql(&self, statement: &str) -> String {
        statement.replace("{s}", &self.shared.quoted_schema)
    }

    /// Writes `record` in the app's own transaction (`&mut *tx`), so that the app's state and
    /// the record commit or roll back together. After the commit, hand the approval over with
    /// `Approval::queued`; after a rollback, drop it (it is released).
    pub async fn enqueue_in(&self, conn: &mut PgConnection, record: &QueuedRecord) -> Result<(), PgOutboxError> {
        self.insert(conn, record).await
    }

    /// Inserts `record` through `executor`: the app's connection, or the pool.
    async fn insert<'e>(&self, executor: impl PgExecutor<'e>, record: &QueuedRecord) -> Result<(), PgOutboxError> {
        let text = record.to_stored(self.seal.as_deref()).map_err(PgOutboxError::Seal)?;
        sqlx::query(&self.sql(
            "INSERT INTO {s}.outbox (authorization_id, kind, record) VALUES ($1, $2, $3::jsonb)
             ON CONFLICT (authorization_id, kind) DO NOTHING",
        ))
        .bind(&record.authorization_id)
        .bind(record.kind.as_str())
        .bind(text)
        .execute(executor)
        .await?;
        self.seen().queued_total += 1;
        Ok(())
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.shared.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spilled(&self) -> std::sync::MutexGuard<'_, Vec<QueuedRecord>> {
        self.shared.spill.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the records held during an outage to the table, oldest first; stops at the first
    /// failure of the database. A record leaves the hold only once written (a repeat write is a
    /// no-op: one row per authorization and kind), so it is counted as pending all along; one
    /// that PostgreSQL cannot store ([`this_record_only`]) is delivered at once (or reported
    /// dead) and let go of, so it does not keep the records behind it from the table.
    async fn unspill(&self, deliverer: &dyn Deliver) -> Result<(), PgOutboxError> {
        loop {
            let Some(record) = self.spilled().first().cloned() else { return Ok(()) };
            match self.insert(&self.shared.pool, &record).await {
                Ok(()) => {}
                // It cannot wait in the table: delivered now, once, or reported dead.
                Err(e) if this_record_only(&e) => {
                    let (authorization, settlement) = (record.authorization(), record.settlement());
                    if let Err(why) = deliverer.deliver(record.kind, &authorization, &settlement).await {
                        tracing::error!(authorization = %record.authorization_id, error = %e, %why,
                            "conto.outbox.unstorable: a held record can be neither written nor delivered; reported dead");
                        let dead = conto_core::AuthorityError::Unsupported(format!("outbox: {e}"));
                        deliverer.dead(&record.authorization_id, dead);
                    }
                }
                Err(e) => return Err(e),
            }
            self.spilled().retain(|r| !(r.authorization_id == record.authorization_id && r.kind == record.kind));
        }
    }

    /// Counts the table now (every replica's records).
    pub async fn refresh(&self) -> Result<OutboxStats, PgOutboxError> {
        let (ticket, queued_at) = {
            let mut seen = self.seen();
            seen.counts_begun += 1;
            (seen.counts_begun, seen.queued_total)
        };
        // One round trip per pass: the counts and the earliest claimable moment.
        let row = sqlx::query(&self.sql(
            "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'delivered'),
                    count(*) FILTER (WHERE state = 'dead'),
                    EXTRACT(EPOCH FROM min(GREATEST(next_attempt_at, COALESCE(lease_until, next_attempt_at)))
                        FILTER (WHERE state = 'pending'))::float8
             FROM {s}.outbox",
        ))
        .fetch_one(&self.shared.pool)
        .await?;
        let count =
            |i: usize| -> Result<u64, sqlx::Error> { Ok(u64::try_from(row.try_get::<i64, _>(i)?).unwrap_or(0)) };
        let stats = OutboxStats { pending: count(0)?, delivered: count(1)?, dead: count(2)? };
        let next: Option<f64> = row.try_get(3)?;
        let mut seen = self.seen();
        if ticket > seen.count_applied {
            seen.count_applied = ticket;
            seen.stats = stats;
            seen.counted_upto = queued_at;
            seen.next_due = next.and_then(|secs| Timestamp::from_millisecond((secs * 1000.0) as i64).ok());
        }
        Ok(stats)
    }

    /// Puts the records given up on back to be delivered, with their attempts counted afresh
    /// (an operator's call, once what made them fail is fixed); `only` names the authorizations
    /// to put back, `None` every dead record. Returns how many. A record still failing is given
    /// up on again after its attempts, never counted twice by the authority (its idempotency
    /// key is the same).
    pub async fn retry_dead(&self, only: Option<&[&str]>) -> Result<u64, PgOutboxError> {
        let ids: Option<Vec<&str>> = only.map(<[&str]>::to_vec);
        let done = sqlx::query(&self.sql(
            "UPDATE {s}.outbox SET state = 'pending', attempts = 0, next_attempt_at = now(),
                    lease_until = NULL, leased_by = NULL
              WHERE state = 'dead' AND ($1::text[] IS NULL OR authorization_id = ANY($1))",
        ))
        .bind(ids)
        .execute(&self.shared.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The records given up on, for an operator.
    pub async fn dead(&self) -> Result<Vec<DeadRecord>, PgOutboxError> {
        let rows = sqlx::query(&self.sql(
            "SELECT authorization_id, kind, attempts, COALESCE(last_error, '') FROM {s}.outbox
             WHERE state = 'dead' ORDER BY id",
        ))
        .fetch_all(&self.shared.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(DeadRecord {
                    authorization_id: r.try_get(0)?,
                    kind: if r.try_get::<String, _>(1)? == "reconcile" {
                        RecordKind::Reconcile
                    } else {
                        RecordKind::Record
                    },
                    attempts: u32::try_from(r.try_get::<i32, _>(2)?).unwrap_or(0),
                    last_error: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Claims up to `limit` due records for this replica, for the lease: `(id, attempts, record)`.
    /// A row another replica holds is skipped, not waited for.
    async fn claim(&self, limit: i64) -> Result<Vec<Claimed>, PgOutboxError> {
        let rows = sqlx::query(&self.sql(
            "UPDATE {s}.outbox o SET lease_until = now() + make_interval(secs => $1), leased_by = $2
             FROM (SELECT id FROM {s}.outbox
                   WHERE state = 'pending' AND next_attempt_at <= now()
                     AND (lease_until IS NULL OR lease_until < now())
                   ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) due
             WHERE o.id = due.id
             RETURNING o.id, o.attempts, o.record::text",
        ))
        .bind(self.lease.as_secs_f64())
        .bind(&self.shared.worker)
        .bind(limit)
        .fetch_all(&self.shared.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let text: String = r.try_get(2)?;
                let record = QueuedRecord::from_stored(&text, self.seal.as_deref()).map_err(|e| {
                    // A well-formed record whose token this replica cannot open waits for a
                    // replica that can, until its approval expires; anything else is unreadable
                    // for good.
                    let until = serde_json::from_str::<QueuedRecord>(&text).ok().map(|r| r.expires_at);
                    (e.0, until)
                });
                Ok((r.try_get(0)?, u32::try_from(r.try_get::<i32, _>(1)?).unwrap_or(0), record))
            })
            .collect()
    }

    /// Extends this replica's lease on `ids`; answers the ids it still holds.
    async fn renew(&self, ids: &[i64]) -> Result<std::collections::HashSet<i64>, PgOutboxError> {
        let rows = sqlx::query(&self.sql(
            "UPDATE {s}.outbox SET lease_until = now() + make_interval(secs => $1)
             WHERE id = ANY($2) AND state = 'pending' AND leased_by = $3 RETURNING id",
        ))
        .bind(self.lease.as_secs_f64())
        .bind(ids)
        .bind(&self.shared.worker)
        .fetch_all(&self.shared.pool)
        .await?;
        rows.into_iter().map(|r| r.try_get::<i64, _>(0).map_err(Into::into)).collect()
    }

    async fn settle(&self, id: i64, outcome: Next) -> Result<(), PgOutboxError> {
        let pool = &self.shared.pool;
        match outcome {
            Next::Delivered => {
                // Delivered is true whoever holds the row now; a row already settled stays so.
                let sql = self.sql(
                    "UPDATE {s}.outbox SET state = 'delivered', attempts = attempts + 1, delivered_at = now(),
                     lease_until = NULL, leased_by = NULL WHERE id = $1 AND state = 'pending'",
                );
                sqlx::query(&sql).bind(id).execute(pool).await?;
            }
            Next::Retry(after, error) => {
                // A retry or a death is this replica's word only while it holds the row: a lease
                // that lapsed and was taken is the other replica's to settle (a late `dead`
                // never overwrites its `delivered`).
                let sql = self.sql(
                    "UPDATE {s}.outbox SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $2),
                     last_error = $3, lease_until = NULL, leased_by = NULL
                     WHERE id = $1 AND state = 'pending' AND leased_by = $4",
                );
                sqlx::query(&sql)
                    .bind(id)
                    .bind(after.as_secs_f64())
                    .bind(error)
                    .bind(&self.shared.worker)
                    .execute(pool)
                    .await?;
            }
            Next::Dead(error) => {
                let sql = self.sql(
                    "UPDATE {s}.outbox SET state = 'dead', attempts = attempts + 1, last_error = $2,
                     lease_until = NULL, leased_by = NULL WHERE id = $1 AND state = 'pending' AND leased_by = $3",
                );
                sqlx::query(&sql).bind(id).bind(error).bind(&self.shared.worker).execute(pool).await?;
            }
        }
        Ok(())
    }

    async fn deliver_one(&self, deliverer: &dyn Deliver, id: i64, attempts: u32, record: QueuedRecord) {
        let outcome = attempt(deliverer, &record, attempts, self.max_attempts).await;
        // If this write fails, the lease lapses and a replica delivers the record again: the
        // idempotency key makes that repeat count once.
        if let Err(error) = self.settle_or_keep(id, outcome).await {
            tracing::error!(%error, "conto.outbox.write_failed: kept, written on the next pass");
        }
    }

    /// Writes an outcome; when the database cannot be written, keeps it for the next pass.
    /// Leaves a record this replica cannot open to the others for a few seconds, without
    /// counting an attempt.
    async fn defer(&self, id: i64, why: &str) -> Result<(), PgOutboxError> {
        let sql = self.sql(
            "UPDATE {s}.outbox SET next_attempt_at = now() + interval '5 seconds', last_error = $2,
             lease_until = NULL, leased_by = NULL WHERE id = $1 AND state = 'pending' AND leased_by = $3",
        );
        sqlx::query(&sql).bind(id).bind(why).bind(&self.shared.worker).execute(&self.shared.pool).await?;
        Ok(())
    }

    async fn settle_or_keep(&self, id: i64, outcome: Next) -> Result<(), PgOutboxError> {
        let result = self.settle(id, outcome.clone()).await;
        if result.is_err() {
            self.shared.unsettled.lock().unwrap_or_else(|e| e.into_inner()).push((id, outcome));
        }
        result
    }

    /// Writes the outcomes kept from earlier passes; stops at the first failure.
    async fn write_unsettled(&self) -> Result<(), PgOutboxError> {
        loop {
            let Some((id, outcome)) = self.shared.unsettled.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                return Ok(());
            };
            self.settle_or_keep(id, outcome).await?;
        }
    }
}

/// A claimed row: `(id, attempts, the record or why it cannot be read and, for a well-formed
/// record whose token another replica holds, until when it may wait for that replica)`.
type Claimed = (i64, u32, Result<QueuedRecord, (String, Option<Timestamp>)>);

/// Whether a write failed for this record alone, not for the database (`crate::unstorable`).
fn this_record_only(e: &PgOutboxError) -> bool {
    matches!(e, PgOutboxError::Database(e) if crate::unstorable(e))
}

impl RecordSink for PgOutbox {
    /// Writes the record to the table. While PostgreSQL cannot be written, the record is held
    /// in this process and written by the next delivery pass that reaches the database: the
    /// caller's settlement is never lost to a database outage while the process lives. (A
    /// record that cannot be sealed is refused.)
    fn enqueue<'a>(&'a self, record: &'a QueuedRecord) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            match self.insert(&self.shared.pool, record).await {
                Ok(()) => Ok(()),
                // A value PostgreSQL cannot store: refused here, so the pipeline records it
                // another way, rather than held where it would fail again on every pass.
                Err(e) if this_record_only(&e) => Err(SinkError(e.to_string())),
                Err(PgOutboxError::Database(error)) => {
                    tracing::warn!(authorization = %record.authorization_id, %error,
                        "conto.outbox.held: PostgreSQL is unavailable; the record waits in this process");
                    self.spilled().push(record.clone());
                    Ok(())
                }
                Err(other) => Err(SinkError(other.to_string())),
            }
        })
    }

    fn deliver_due<'a>(&'a self, deliverer: &'a dyn Deliver) -> BoxFuture<'a, Result<usize, SinkError>> {
        Box::pin(async move {
            if let Err(e) = self.write_unsettled().await {
                self.seen().next_due = None;
                return Err(SinkError(e.to_string()));
            }
            if let Err(e) = self.unspill(deliverer).await {
                self.seen().next_due = None;
                return Err(SinkError(e.to_string()));
            }
            let claimed = match self.claim(64).await {
                Ok(c) => c,
                Err(e) => {
                    // Unreachable: wait a second rather than spin on a stale due time.
                    self.seen().next_due = None;
                    return Err(SinkError(e.to_string()));
                }
            };
            let n = claimed.len();
            let ids: Vec<i64> = claimed.iter().map(|c| c.0).collect();
            let mut renewed = std::time::Instant::now();
            let mut lost = std::collections::HashSet::<i64>::new();
            for (i, (id, attempts, record)) in claimed.into_iter().enumerate() {
                // A slow batch (each delivery may take its timeout) renews the lease on the rows
                // it has yet to deliver before half of it is gone, so no other replica takes
                // them meanwhile; a row whose lease was lost already is left to its new holder.
                if renewed.elapsed() > self.lease / 2 {
                    match self.renew(&ids[i..]).await {
                        Ok(kept) => lost.extend(ids[i..].iter().filter(|id| !kept.contains(*id))),
                        Err(error) => tracing::warn!(%error, "conto.outbox.renew_failed"),
                    }
                    renewed = std::time::Instant::now();
                }
                if lost.contains(&id) {
                    continue;
                }
                let outcome = match record {
                    Ok(record) => {
                        self.deliver_one(deliverer, id, attempts, record).await;
                        continue;
                    }
                    // Another replica may open it: left to it (not an attempt of this one's),
                    // until its approval expires, when no confirm can succeed any more.
                    Err((why, Some(until))) if until > Timestamp::now() => {
                        tracing::warn!(%why, "conto.outbox.cannot_open: another replica may");
                        if let Err(error) = self.defer(id, &why).await {
                            tracing::error!(%error, "conto.outbox.write_failed: its lease lapses instead");
                        }
                        continue;
                    }
                    Err((why, _)) => Next::Dead(why),
                };
                if let Err(error) = self.settle_or_keep(id, outcome).await {
                    tracing::error!(%error, "conto.outbox.write_failed: kept, written on the next pass");
                }
            }
            if n > 0
                && self.shared.passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(256)
                && let Err(error) = self.prune_delivered().await
            {
                tracing::warn!(%error, "conto.outbox.prune_failed");
            }
            self.refresh().await.map_err(|e| SinkError(e.to_string()))?;
            Ok(n)
        })
    }

    fn next_due(&self) -> Option<Duration> {
        if !self.spilled().is_empty() || !self.shared.unsettled.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return Some(Duration::from_millis(500));
        }
        let at = self.seen().next_due?;
        Some(Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default())
    }

    fn stats(&self) -> Result<OutboxStats, SinkError> {
        let seen = self.seen();
        let mut stats = seen.stats;
        stats.pending += seen.queued_total - seen.counted_upto + self.spilled().len() as u64;
        Ok(stats)
    }
}

impl From<MigrateError> for PgOutboxError {
    fn from(e: MigrateError) -> Self {
        match e {
            MigrateError::Database(e) => Self::Database(e),
            newer @ MigrateError::Newer { .. } => Self::NewerSchema(newer.to_string()),
        }
    }
}

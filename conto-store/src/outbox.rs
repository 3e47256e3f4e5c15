//! The durable outbox: a settled spend is written here (SQLite, WAL) before any network attempt,
//! then delivered by a background worker with backoff. It survives the caller's future being
//! dropped, transient failures of the authority, and a crash: the next start delivers what is
//! left. A record that still fails past the bound is kept as `dead` and reported as
//! `Event::RecordFailed`; it is never silently dropped.
//!
//! Each record carries the idempotency key of its payment attempt (`rec_<authorization id>`), so
//! a retry after a lost answer never counts twice.
//!
//! The approval token travels with its record (the authority needs it to confirm a transfer or
//! card payment), and is never stored readable. With [`Outbox::seal_tokens`] it is stored sealed
//! (XChaCha20-Poly1305 under the master key, bound to its authorization); without it, it is not
//! stored at all but held in this process's memory ([`HeldInMemory`](conto_core::sink::HeldInMemory)):
//! a transfer or card record queued before a restart then cannot be confirmed, and goes to the
//! dead records with a message saying to seal tokens. x402 and MPP records carry no token.
//!
//! A record whose token is sealed under a key this process was not given (started without it)
//! is not given up on: it stays pending, read again every minute, until a process with the key
//! delivers it or its approval expires (when no confirm can succeed any more, and it is dead).

use std::path::Path;
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};

use conto_core::BoxFuture;
use conto_core::sink::{Deliver, Next, OutboxStats, QueuedRecord, RecordSink, SinkError, TokenSeal, attempt};

/// An outbox storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// SQLite refused a statement, or the file.
    #[error("outbox storage: {0}")]
    Storage(#[from] rusqlite::Error),
    /// The file could not be opened (it names the path and why).
    #[error("outbox storage: {0}")]
    Open(String),
    /// Another process (or another open in this one) holds the file: one process owns an
    /// outbox file, so no record is delivered by two workers or declared dead by the wrong one.
    #[error("outbox storage: {path} is in use by another process (or opened twice in this one)")]
    InUse {
        /// The file.
        path: String,
    },
}

impl From<crate::file::OpenError> for OutboxError {
    fn from(e: crate::file::OpenError) -> Self {
        match e {
            crate::file::OpenError::InUse { path } => Self::InUse { path },
            other => Self::Open(other.to_string()),
        }
    }
}

/// What a queued job does once delivered.
pub use conto_core::sink::RecordKind as JobKind;

/// One queued delivery.
pub(crate) type Job = QueuedRecord;

/// A record that could not be delivered, kept for an operator.
pub use conto_core::sink::DeadRecord;

/// The durable outbox. Cheap to clone; clones share the file.
#[derive(Clone)]
pub struct Outbox {
    conn: Arc<Mutex<Connection>>,
    /// Seals approval tokens at rest, when configured.
    seal: Option<Arc<dyn TokenSeal>>,
    /// Rows handed to a deliverer and not yet settled: the worker and a concurrent
    /// `Conto::flush` never deliver the same record at once.
    claimed: Arc<Mutex<std::collections::HashSet<i64>>>,
    max_attempts: u32,
    /// Delivery passes that found something; every 256th also prunes delivered rows.
    passes: Arc<std::sync::atomic::AtomicU64>,
    /// Outcomes whose write failed (a full disk), kept with their rows claimed and written by
    /// the next pass: the record is neither delivered again meanwhile nor lost.
    unsettled: Arc<Mutex<Vec<(i64, Outcome)>>>,
}

/// How the error of a record waiting for the key its token is sealed under begins.
const WAITS_FOR_KEY: &str = "waits for its key: ";

/// What a row comes to after a pass.
#[derive(Debug, Clone)]
enum Outcome {
    /// An attempt's outcome.
    Attempted(Next),
    /// Unreadable for good: dead, with why.
    Unreadable(String),
    /// Its token is sealed under a key this process does not hold: it waits, pending and with
    /// no attempt counted, until `until` (at most a minute, or its approval's expiry).
    Waits(Timestamp, String),
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No count here: `Debug` never scans the file, nor waits for its lock.
        f.debug_struct("Outbox").field("max_attempts", &self.max_attempts).finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    authorization_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    job TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT,
    UNIQUE (authorization_id, kind)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
";

fn millis(t: Timestamp) -> i64 {
    t.as_millisecond()
}

impl Outbox {
    /// Opens (or creates, owner-only) an outbox file. The process keeps the file locked while
    /// the outbox (or a clone) is open: a second process, or a second open in this one, is
    /// refused ([`OutboxError::InUse`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OutboxError> {
        Self::from_connection(crate::file::open_owned(path.as_ref(), &crate::file::OUTBOX, SCHEMA)?)
    }

    /// An outbox in memory: durable only for the life of the process (for tests).
    pub fn in_memory() -> Result<Self, OutboxError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Self::from_connection(conn)
    }

    fn from_connection(conn: Connection) -> Result<Self, OutboxError> {
        // Tokens are held in memory until a seal is configured: never stored in clear.
        let seal: Arc<dyn TokenSeal> = Arc::new(conto_core::sink::HeldInMemory::default());
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            seal: Some(seal),
            claimed: Arc::default(),
            max_attempts: 12,
            passes: Arc::default(),
            unsettled: Arc::default(),
        })
    }

    /// Syncs every write to disk (`PRAGMA synchronous = FULL`): records then survive power loss
    /// and OS crashes too, at the cost of an fsync on the paid action's critical path. The
    /// default (`NORMAL`, in WAL mode) survives the app process crashing or being killed.
    pub fn sync_every_write(self) -> Result<Self, OutboxError> {
        self.lock().execute_batch("PRAGMA synchronous = FULL;")?;
        Ok(self)
    }

    /// Seals the approval tokens records carry (transfers and cards need them to confirm), so
    /// the file holds no readable token: `Outbox::open(path)?.seal_tokens(TokenSealer::new(&EnvKey::default())?)`.
    ///
    /// Records a process without this seal read (and left waiting for it) are due again at once.
    pub fn seal_tokens(mut self, seal: impl TokenSeal) -> Self {
        self.seal = Some(Arc::new(seal));
        let due_now = self.lock().execute(
            "UPDATE outbox SET next_attempt_at = ?1 WHERE state = 'pending' AND last_error LIKE ?2",
            params![millis(Timestamp::now()), format!("{WAITS_FOR_KEY}%")],
        );
        if let Err(error) = due_now {
            tracing::warn!(%error, "conto.outbox.write_failed: records waiting for this key are due within a minute");
        }
        self
    }

    /// How many delivery attempts a record gets before it is declared dead (default 12, about
    /// ten minutes of backoff).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a job durably; a second job for the same authorization and kind is ignored.
    pub(crate) fn push(&self, job: &Job) -> Result<(), OutboxError> {
        let text =
            job.to_stored(self.seal.as_deref()).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let kind = job.kind.as_str();
        self.lock()
            .prepare_cached(
                "INSERT OR IGNORE INTO outbox (authorization_id, kind, job, next_attempt_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![job.authorization_id, kind, text, millis(Timestamp::now())])?;
        Ok(())
    }

    /// Up to `limit` jobs due at `now`, each with its [`Claim`]: settle it with
    /// [`settle`](Self::settle), then let the claim go. Rows that cannot be read are settled
    /// here and returned, for the caller to report: dead when they never can be (not a record,
    /// a token held in the memory of a process that ended), waiting when a process given the
    /// key their token is sealed under can (until their approval expires).
    fn due(&self, now: Timestamp, limit: usize) -> Result<Due<'_>, OutboxError> {
        let conn = self.lock();
        let mut claimed = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        // Rows this process already has under way are read past, never counted toward `limit`:
        // a batch is not filled with them while others wait behind.
        let mut stmt = conn.prepare(
            "SELECT id, attempts, job, authorization_id FROM outbox
              WHERE state = 'pending' AND next_attempt_at <= ?1 ORDER BY id LIMIT ?2",
        )?;
        // Only the id must read for a row to be handled: any other column that does not (a
        // job that is not text) makes that row unreadable, not the pass.
        let rows = stmt.query_map(params![millis(now), (limit + claimed.len()) as i64], |r| {
            let job = r.get::<_, String>(2).map_err(|e| e.to_string());
            let authorization_id = r.get::<_, String>(3).unwrap_or_default();
            Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1).unwrap_or(0), job, authorization_id))
        })?;
        // Claimed here, under `claimed`'s lock; the claims (whose drop takes that lock) are
        // made once it is let go.
        let mut picked = Vec::new();
        let mut due = Due::default();
        let mut settled_here = Vec::new();
        let mut failed = None;
        for row in rows {
            let (id, attempts, text, authorization_id) = match row {
                Ok(row) => row,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            if claimed.contains(&id) {
                continue;
            }
            if picked.len() + settled_here.len() == limit {
                break;
            }
            let read = match &text {
                Ok(text) => Job::from_stored(text, self.seal.as_deref()).map_err(|e| e.to_string()),
                Err(e) => Err(e.clone()),
            };
            match read {
                Ok(job) => {
                    claimed.insert(id);
                    picked.push((id, attempts, job));
                }
                Err(why) => {
                    let outcome = unreadable(text.ok().as_deref(), why, now);
                    due.unreadable.push((authorization_id, outcome.clone()));
                    settled_here.push((id, outcome));
                }
            }
        }
        if let Some(e) = failed {
            for (id, _, _) in &picked {
                claimed.remove(id);
            }
            return Err(e.into());
        }
        drop(stmt);
        // A write that fails here keeps its row claimed and its outcome for the next pass,
        // as a delivery's does: not read and reported again meanwhile.
        let mut unsettled = Vec::new();
        for (id, outcome) in settled_here {
            if let Err(error) = write(&conn, id, &outcome) {
                tracing::error!(%error, "conto.outbox.write_failed: kept, written on the next pass");
                claimed.insert(id);
                unsettled.push((id, outcome));
            }
        }
        drop(claimed);
        drop(conn);
        self.lock_unsettled().extend(unsettled);
        due.jobs = picked.into_iter().map(|(id, attempts, job)| (Claim(self, id), attempts, job)).collect();
        Ok(due)
    }

    fn lock_unsettled(&self) -> std::sync::MutexGuard<'_, Vec<(i64, Outcome)>> {
        self.unsettled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the outcomes kept from earlier passes, letting their rows go; stops at the
    /// first failure.
    fn write_unsettled(&self) -> Result<(), OutboxError> {
        loop {
            let Some((id, outcome)) = self.lock_unsettled().pop() else { return Ok(()) };
            if let Err(e) = write(&self.lock(), id, &outcome) {
                self.lock_unsettled().push((id, outcome));
                return Err(e);
            }
            self.release_claim(id);
        }
    }

    /// Deletes delivered records due more than `keep` before `now` (kept that long, a repeat
    /// enqueue of the same record is still ignored); returns how many.
    pub fn prune_delivered(&self, keep: std::time::Duration) -> Result<usize, OutboxError> {
        let keep = SignedDuration::try_from(keep).unwrap_or(SignedDuration::MAX);
        let horizon = Timestamp::now().checked_sub(keep).unwrap_or(Timestamp::MIN);
        Ok(self
            .lock()
            .execute("DELETE FROM outbox WHERE state = 'delivered' AND next_attempt_at < ?1", [millis(horizon)])?)
    }

    /// When the next pending job is due, if any.
    pub(crate) fn next_due_at(&self) -> Result<Option<Timestamp>, OutboxError> {
        let at: Option<i64> = self
            .lock()
            .query_row("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'", [], |r| r.get(0))
            .optional()?
            .flatten();
        Ok(at.and_then(|ms| Timestamp::from_millisecond(ms).ok()))
    }

    pub(crate) fn release_claim(&self, id: i64) {
        self.claimed.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Counts by state.
    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let conn = self.lock();
        let count = |state: &str| -> Result<u64, rusqlite::Error> {
            conn.query_row("SELECT COUNT(*) FROM outbox WHERE state = ?1", [state], |r| r.get(0))
        };
        Ok(OutboxStats { pending: count("pending")?, delivered: count("delivered")?, dead: count("dead")? })
    }

    /// Puts the records given up on back to be delivered, with their attempts counted afresh
    /// (an operator's call, once what made them fail is fixed: a key restored, the authority
    /// back); `only` names the authorizations to put back, `None` every dead record. Returns
    /// how many. A record still failing is given up on again after its attempts, never counted
    /// twice by the authority (its idempotency key is the same).
    pub fn retry_dead(&self, only: Option<&[&str]>) -> Result<usize, OutboxError> {
        let now = millis(Timestamp::now());
        let conn = self.lock();
        let put_back = |id: Option<&str>| {
            conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?1
                  WHERE state = 'dead' AND (?2 IS NULL OR authorization_id = ?2)",
                params![now, id],
            )
        };
        Ok(match only {
            None => put_back(None)?,
            Some(ids) => ids.iter().map(|id| put_back(Some(id))).sum::<Result<usize, _>>()?,
        })
    }

    /// The records given up on, for an operator.
    pub fn dead(&self) -> Result<Vec<DeadRecord>, OutboxError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT authorization_id, kind, attempts, COALESCE(last_error, '') FROM outbox WHERE state = 'dead' ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            let kind: String = r.get(1)?;
            Ok(DeadRecord {
                authorization_id: r.get(0)?,
                kind: JobKind::from_name(&kind),
                attempts: r.get(2)?,
                last_error: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// What a row this process cannot read (`text`, when it is text) comes to at `now`: a
/// well-formed record whose token is sealed under a key, its approval still live, waits for a
/// process given that key (read again within a minute); anything else is dead.
fn unreadable(text: Option<&str>, why: String, now: Timestamp) -> Outcome {
    let expires = text
        .and_then(|t| serde_json::from_str::<Job>(t).ok())
        .filter(Job::sealed_under_a_key)
        .map(|r| r.expires_at)
        .filter(|at| *at > now);
    match expires {
        Some(expires) => {
            let until = now.saturating_add(SignedDuration::from_mins(1)).unwrap_or(now).min(expires);
            Outcome::Waits(until, format!("{WAITS_FOR_KEY}{why}"))
        }
        None => Outcome::Unreadable(format!("unreadable record: {why}")),
    }
}

/// Writes a claimed row's outcome. Delivered is stamped now (what
/// [`Outbox::prune_delivered`] ages it from); a wait counts no attempt.
fn write(conn: &Connection, id: i64, outcome: &Outcome) -> Result<(), OutboxError> {
    let now = Timestamp::now();
    match outcome {
        Outcome::Attempted(Next::Delivered) => conn.execute(
            "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, next_attempt_at = ?2 WHERE id = ?1",
            params![id, millis(now)],
        ),
        Outcome::Attempted(Next::Retry(after, error)) => {
            let after = SignedDuration::try_from(*after).unwrap_or(SignedDuration::from_secs(60));
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3 WHERE id = ?1",
                params![id, millis(now.saturating_add(after).unwrap_or(now)), error],
            )
        }
        Outcome::Attempted(Next::Dead(error)) => conn.execute(
            "UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
            params![id, error],
        ),
        Outcome::Unreadable(error) => {
            conn.execute("UPDATE outbox SET state = 'dead', last_error = ?2 WHERE id = ?1", params![id, error])
        }
        Outcome::Waits(until, error) => conn.execute(
            "UPDATE outbox SET next_attempt_at = ?2, last_error = ?3 WHERE id = ?1",
            params![id, millis(*until), error],
        ),
    }?;
    Ok(())
}

/// What [`Outbox::due`] found.
#[derive(Default)]
struct Due<'a> {
    /// Claimed jobs: `(claim, attempts, job)`. A claim dropped unsettled (the pass dropped
    /// half-way) gives its row back.
    jobs: Vec<(Claim<'a>, u32, Job)>,
    /// Rows that cannot be read here, and what they came to: `(authorization id, outcome)`.
    unreadable: Vec<(String, Outcome)>,
}

/// How long delivered records are kept (a repeat enqueue of one within it is ignored).
const KEEP_DELIVERED: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A row this process has under way: given back once, when its delivery is settled or
/// abandoned half-way (the future dropped). Never twice: a second release could free another
/// pass's claim on the same row (a `flush` beside the worker).
struct Claim<'a>(&'a Outbox, i64);

impl Claim<'_> {
    /// Keeps the row claimed past this claim: its outcome waits in memory to be written.
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.release_claim(self.1);
    }
}

impl Outbox {
    async fn deliver_one(&self, deliverer: &dyn Deliver, claim: Claim<'_>, attempts: u32, job: Job) {
        let id = claim.1;
        let outcome = Outcome::Attempted(attempt(deliverer, &job, attempts, self.max_attempts).await);
        let written = write(&self.lock(), id, &outcome);
        match written {
            Ok(()) => drop(claim),
            // Written by the next pass; meanwhile the row stays claimed, so the record is not
            // sent again on every pass while the file cannot be written.
            Err(error) => {
                tracing::error!(%error, "conto.outbox.write_failed: kept, written on the next pass");
                self.lock_unsettled().push((id, outcome));
                claim.keep();
            }
        }
    }
}

impl RecordSink for Outbox {
    fn enqueue<'a>(&'a self, record: &'a QueuedRecord) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(std::future::ready(self.push(record).map_err(|e| SinkError(e.to_string()))))
    }

    fn deliver_due<'a>(&'a self, deliverer: &'a dyn Deliver) -> BoxFuture<'a, Result<usize, SinkError>> {
        Box::pin(async move {
            // Every claim is given back if this pass is dropped half-way, not only the one
            // under way (a claim kept would hold its row from this process until a restart).
            self.write_unsettled().map_err(|e| SinkError(e.to_string()))?;
            let Due { jobs, unreadable } = self.due(Timestamp::now(), 64).map_err(|e| SinkError(e.to_string()))?;
            for (authorization_id, outcome) in unreadable {
                match outcome {
                    Outcome::Waits(until, why) => tracing::error!(authorization_id, why, %until,
                        "conto.outbox.sealed_record_waits: pending until a process with its key (seal_tokens) \
                         delivers it, or its approval expires"),
                    Outcome::Unreadable(why) => {
                        tracing::error!(authorization_id, why, "conto.outbox.unreadable_record: kept as dead");
                        deliverer.dead(&authorization_id, conto_core::AuthorityError::Unsupported(why));
                    }
                    Outcome::Attempted(_) => {}
                }
            }
            // Attempted: the unreadable ones were not (they are reported above).
            let n = jobs.len();
            if n > 0 && self.passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 256 == 255 {
                match self.prune_delivered(KEEP_DELIVERED) {
                    Ok(pruned) if pruned > 0 => tracing::debug!(pruned, "conto.outbox.pruned"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "conto.outbox.prune_failed"),
                }
            }
            for (claim, attempts, job) in jobs {
                self.deliver_one(deliverer, claim, attempts, job).await;
            }
            Ok(n)
        })
    }

    fn next_due(&self) -> Option<std::time::Duration> {
        if !self.lock_unsettled().is_empty() {
            return Some(std::time::Duration::from_millis(500));
        }
        let at = self.next_due_at().ok()??;
        Some(std::time::Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default())
    }

    fn stats(&self) -> Result<OutboxStats, SinkError> {
        Outbox::stats(self).map_err(|e| SinkError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use conto_core::sink::{Deliver, RecordKind, RecordSink};
    use conto_core::{AuthorityError, Authorization, BoxFuture, PaymentIntent, Rail, Recorded, Settlement};

    use super::*;

    /// Counts deliveries; every one succeeds.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Deliver for Counting {
        fn deliver<'a>(
            &'a self,
            _: RecordKind,
            a: &'a Authorization,
            _: &'a Settlement,
        ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let recorded = Recorded {
                authorization_id: a.id.clone(),
                amount: a.amount,
                transaction_id: None,
                late: false,
                queued: false,
                actor_inactive: false,
            };
            Box::pin(std::future::ready(Ok(recorded)))
        }
        fn dead(&self, _: &str, _: AuthorityError) {}
    }

    /// Refuses every record for good.
    struct Refusing;

    impl Deliver for Refusing {
        fn deliver<'a>(
            &'a self,
            _: RecordKind,
            _: &'a Authorization,
            _: &'a Settlement,
        ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
            Box::pin(std::future::ready(Err(AuthorityError::Unsupported("refused".into()))))
        }
        fn dead(&self, _: &str, _: AuthorityError) {}
    }

    /// An operator puts dead records back once what failed them is fixed: each is delivered
    /// again, its attempts counted afresh; naming others puts back none.
    #[tokio::test]
    async fn dead_records_are_put_back_by_an_operator() {
        let outbox = Outbox::in_memory().unwrap();
        outbox.enqueue(&record()).await.unwrap();
        assert_eq!(outbox.deliver_due(&Refusing).await.unwrap(), 1);
        assert_eq!(outbox.stats().unwrap().dead, 1);
        assert_eq!(outbox.retry_dead(Some(&["auth_other"])).unwrap(), 0);
        assert_eq!(outbox.retry_dead(Some(&["auth_1"])).unwrap(), 1);
        let stats = outbox.stats().unwrap();
        assert_eq!((stats.pending, stats.dead), (1, 0), "{stats:?}");
        let deliverer = Counting::default();
        assert_eq!(outbox.deliver_due(&deliverer).await.unwrap(), 1);
        assert_eq!(outbox.stats().unwrap().delivered, 1);
        assert_eq!(outbox.retry_dead(None).unwrap(), 0, "nothing dead is left");
    }

    fn record() -> QueuedRecord {
        let intent = PaymentIntent::builder("agent-1", "1", Rail::card("Acme").unwrap()).build().unwrap();
        let authorization = Authorization {
            id: "auth_1".into(),
            token: None,
            amount: "1".parse().unwrap(),
            expires_at: Timestamp::now(),
            limits: Default::default(),
            intent: Arc::new(intent),
            wallet: None,
        };
        QueuedRecord::new(RecordKind::Record, &authorization, &Settlement::default())
    }

    /// A delivered record whose status cannot be written (a full disk; here SQLite refusing
    /// writes) is not sent again on every pass while the file stays unwritable: its outcome
    /// waits in memory, the worker backs off, and the next pass that can write it does.
    #[tokio::test]
    async fn an_outcome_that_cannot_be_written_is_kept_not_delivered_again() {
        let outbox = Outbox::in_memory().unwrap();
        outbox.enqueue(&record()).await.unwrap();
        let deliverer = Counting::default();
        outbox.lock().execute_batch("PRAGMA query_only = ON;").unwrap();
        assert_eq!(outbox.deliver_due(&deliverer).await.unwrap(), 1);
        for _ in 0..3 {
            assert!(outbox.deliver_due(&deliverer).await.is_err(), "the kept outcome still cannot be written");
        }
        assert_eq!(deliverer.0.load(Ordering::SeqCst), 1, "delivered once, not once per pass");
        assert_eq!(outbox.next_due(), Some(std::time::Duration::from_millis(500)), "the worker backs off");
        assert_eq!(outbox.stats().unwrap().pending, 1);

        outbox.lock().execute_batch("PRAGMA query_only = OFF;").unwrap();
        assert_eq!(outbox.deliver_due(&deliverer).await.unwrap(), 0);
        let stats = outbox.stats().unwrap();
        assert_eq!((stats.pending, stats.delivered), (0, 1), "{stats:?}");
        assert_eq!(deliverer.0.load(Ordering::SeqCst), 1);
        assert!(outbox.claimed.lock().unwrap().is_empty(), "its claim was given back");
    }
}

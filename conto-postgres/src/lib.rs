//! PostgreSQL storage for conto-rs, shared by every replica of a service: [`PgLedger`], the
//! embedded engine's ledger (counters, reservations, velocity windows, requests for approval),
//! and [`PgOutbox`], a record sink that an app can write in its own database transaction.
//!
//! - **One budget for all replicas.** `Engine::builder().build_shared(PgLedger::open(..))`
//!   evaluates the same policies with the same code as the in-process engine, but reserves in
//!   PostgreSQL: one transaction per decision, at `READ COMMITTED`, under a per-actor advisory
//!   lock (see [`PgLedger`] for why that isolation level). A database outage fails closed.
//!
//! - **Shared by replicas.** Records live in one table; each replica's delivery worker claims
//!   due rows with `FOR UPDATE SKIP LOCKED` and a lease, so two replicas never deliver the same
//!   row at once, and the rows a dead replica had claimed are delivered by a live one once the
//!   lease lapses. Each record carries its payment attempt's idempotency key
//!   (`rec_<authorization id>`), so a delivery repeated after a lost answer counts once.
//! - **Transactional.** [`PgOutbox::enqueue_in`] writes the record in the app's own transaction:
//!   the app's state change (an order marked paid) and the record commit or roll back together.
//! - **Migrations** are the crate's: [`PgOutbox::open`] creates or upgrades its schema under an
//!   advisory lock, so replicas starting together do not race.
//!
//! Use it through the `conto` crate (feature `postgres`) as `conto::postgres`.
//!
//! ```no_run
//! use conto::postgres::{PgLedger, PgOutbox};
//! use conto::{Conto, Engine, PolicySet};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "postgres://app@db.internal/app";
//! let engine = Engine::builder()
//!     .policies(PolicySet::from_file("policies/example.json")?)
//!     .build_shared(PgLedger::connect(url).await?);
//! let conto = Conto::builder(engine).outbox(PgOutbox::connect(url).await?).build();
//! # let _ = conto; Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod ledger;
mod migrate;
mod outbox;

pub use ledger::{PgLedger, PgLedgerError};
pub use outbox::{DeadRecord, PgOutbox, PgOutboxError};
pub use sqlx::{PgConnection, PgPool};

/// Whether a PostgreSQL failure may pass by itself, so trying again (or a stand-in meanwhile)
/// is right: the database unreachable, busy, shutting down or out of resources, a lock or
/// serialization conflict, a statement or idle timeout. Everything else it says (bad input it
/// cannot store, a missing table, no permission, a value out of range) is not: retried, it
/// fails the same way each time.
pub(crate) fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // SQLSTATE 08 connection, 40 rollback (serialization, deadlock), 53 resources,
            // 57 operator intervention (shutdown, statement or idle timeout), 58 system;
            // 55P03 lock not available (`lock_timeout`); 25006 read-only transaction (a standby
            // after a failover), 25P03 and 25P04 idle-in-transaction and transaction timeouts.
            ["08", "40", "53", "57", "58"].iter().any(|class| code.starts_with(class))
                || ["55P03", "25006", "25P03", "25P04"].contains(&code.as_ref())
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Whether a write failed for the value written, not for the database: one PostgreSQL cannot
/// store (SQLSTATE class 22, a data exception such as a NUL character; 54, a program limit
/// such as an index row too large), or one that could not be encoded. Any other failure
/// (unreachable, no table, no permission) would fail every write alike.
pub(crate) fn unstorable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("22") || code.starts_with("54")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

//! conto-store: conto-rs's SQLite storage, behind traits the domain owns.
//!
//! - [`Outbox`]: a [`RecordSink`](conto_core::sink::RecordSink) — settled spends written before
//!   any network attempt, delivered with backoff, dead letters kept for an operator.
//! - [`SqliteJournal`]: a [`Journal`](conto_core::journal::Journal) for the embedded engine's
//!   ledger, so budgets and reservations survive a restart ([`DurableEngine::open`]).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod file;
mod journal;
pub mod outbox;

pub use conto_core::sink::OutboxStats;
pub use journal::SqliteJournal;
pub use outbox::{DeadRecord, JobKind, Outbox, OutboxError};

use conto_core::Engine;
use conto_core::engine::EngineBuilder;
use conto_core::journal::JournalError;

/// Finishes an [`EngineBuilder`] with its ledger journaled to a SQLite file.
pub trait DurableEngine {
    /// Builds the engine over the journal at `path` (created if absent), replaying it first:
    /// spent counters, live reservations, pending approvals and run-time actors survive a
    /// restart. Without it the ledger lives in memory.
    ///
    /// ```no_run
    /// use conto::{Engine, PolicySet};
    /// use conto::DurableEngine;
    /// let engine = Engine::builder().policies(PolicySet::from_file("policies/example.json")?).open("conto-ledger.db")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn open(self, path: impl AsRef<std::path::Path>) -> Result<Engine, JournalError>;
}

impl DurableEngine for EngineBuilder {
    fn open(self, path: impl AsRef<std::path::Path>) -> Result<Engine, JournalError> {
        self.build_journaled(SqliteJournal::open(path)?)
    }
}

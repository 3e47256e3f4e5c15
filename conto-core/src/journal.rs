//! The embedded engine's journal: every change to its ledger (a reservation, a recorded spend,
//! a release, a request for human approval and its answer, an actor's provisioning) written
//! before the engine acknowledges it, and replayed at start-up. With a journal, counters, live
//! reservations and pending approvals survive a restart; without one the ledger is in memory
//! only. The trait is the domain's; [`SqliteJournal`](crate::journal::SqliteJournal) (feature
//! `outbox`) is the file-backed implementation.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::intent::{ActorId, PaymentIntent};
use crate::money::Amount;

/// One change to the engine's ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Entry {
    /// An approval reserved `amount` until `expires_at`.
    Reserved {
        /// The authorization id.
        id: String,
        /// The approved intent.
        intent: PaymentIntent,
        /// The approved amount.
        amount: Amount,
        /// When the reservation lapses.
        expires_at: Timestamp,
    },
    /// A settlement was recorded: `amount` (as counted) became spend at `at`.
    Recorded {
        /// The authorization id.
        id: String,
        /// The intent the spend was for.
        intent: PaymentIntent,
        /// The amount counted (never more than approved).
        amount: Amount,
        /// The settled amount as reported (to answer a replay the same).
        settled: Amount,
        /// The settlement reference.
        reference: Option<String>,
        /// When it was recorded.
        at: Timestamp,
    },
    /// An approval was given back unused.
    Released {
        /// The authorization id.
        id: String,
        /// The actor whose ledger holds it.
        actor: ActorId,
    },
    /// A request for human approval was opened.
    PendingOpened {
        /// The approval request id.
        id: String,
        /// The intent waiting.
        intent: PaymentIntent,
        /// When the request lapses.
        expires_at: Timestamp,
    },
    /// A human answered a request (an approval is journaled as its own `Reserved`).
    PendingClosed {
        /// The approval request id.
        id: String,
    },
    /// An actor was provisioned, paused, resumed or retired at run time.
    Actor {
        /// The actor.
        actor: ActorId,
        /// `ACTIVE`, `PAUSED` or `RETIRED`.
        status: String,
    },
}

/// Why the journal could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger journal: {0}")]
pub struct JournalError(pub String);

/// Durable, ordered storage for [`Entry`]s. `append` must not return before the entry is
/// durable (to the degree the implementation promises); `replay` returns every entry in order.
pub trait Journal: Send + Sync {
    /// Writes one entry.
    fn append(&self, entry: &Entry) -> Result<(), JournalError>;
    /// Every entry, oldest first.
    fn replay(&self) -> Result<Vec<Entry>, JournalError>;
}

#[cfg(feature = "outbox")]
pub use sqlite::SqliteJournal;

#[cfg(feature = "outbox")]
mod sqlite {
    use std::path::Path;
    use std::sync::Mutex;

    use rusqlite::Connection;

    use super::{Entry, Journal, JournalError};

    /// A [`Journal`] in a SQLite file (WAL, `synchronous = FULL`: an appended entry survives a
    /// crash of the process and of the machine).
    pub struct SqliteJournal {
        conn: Mutex<Connection>,
    }

    impl std::fmt::Debug for SqliteJournal {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SqliteJournal").finish_non_exhaustive()
        }
    }

    fn err(e: impl std::fmt::Display) -> JournalError {
        JournalError(e.to_string())
    }

    impl SqliteJournal {
        /// Opens (or creates) the journal at `path`.
        pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
            let path = path.as_ref();
            let conn = Connection::open(path).map_err(|e| JournalError(format!("{}: {e}", path.display())))?;
            conn.execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 CREATE TABLE IF NOT EXISTS ledger_journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, entry TEXT NOT NULL);",
            )
            .map_err(err)?;
            Ok(Self { conn: Mutex::new(conn) })
        }

        /// A journal in memory (tests).
        pub fn in_memory() -> Result<Self, JournalError> {
            let conn = Connection::open_in_memory().map_err(err)?;
            conn.execute_batch(
                "CREATE TABLE ledger_journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, entry TEXT NOT NULL);",
            )
            .map_err(err)?;
            Ok(Self { conn: Mutex::new(conn) })
        }
    }

    impl Journal for SqliteJournal {
        fn append(&self, entry: &Entry) -> Result<(), JournalError> {
            let text = serde_json::to_string(entry).map_err(err)?;
            let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            conn.prepare_cached("INSERT INTO ledger_journal (entry) VALUES (?1)")
                .and_then(|mut s| s.execute([text]))
                .map_err(err)?;
            Ok(())
        }

        fn replay(&self) -> Result<Vec<Entry>, JournalError> {
            let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            let mut stmt = conn.prepare("SELECT seq, entry FROM ledger_journal ORDER BY seq").map_err(err)?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))).map_err(err)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, text) = row.map_err(err)?;
                out.push(
                    serde_json::from_str(&text).map_err(|e| JournalError(format!("entry #{seq} is corrupt: {e}")))?,
                );
            }
            Ok(out)
        }
    }
}

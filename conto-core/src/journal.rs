//! The embedded engine's journal: every change to its ledger (a reservation, a recorded spend,
//! a release, a request for human approval and its answer, an actor's provisioning) written
//! before the engine acknowledges it, and replayed at start-up. With a journal, counters, live
//! reservations and pending approvals survive a restart; without one the ledger is in memory
//! only. The trait is the domain's; `conto::outbox::SqliteJournal` (feature
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
        /// When it was reserved: a record in time counts in this time's periods and windows.
        /// `None` in entries written before the field existed (their records count at their
        /// own time).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<Timestamp>,
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

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
use rust_decimal::Decimal;

/// A decimal written as a string (exact at any size), read from a string or a number.
mod decimal_text {
    use rust_decimal::Decimal;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        crate::money::deserialize_decimal(d)
    }
}

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
    /// Records a compaction folded together ([`Journal::compact`]): `records` records by
    /// `intent`'s payer, on its rail and in its service, endpoint and session, that spent
    /// `spent` in all and count at `at` (all within the same quarter hour). Written by
    /// compactions only; a build that predates it refuses the journal rather than misread it.
    Folded {
        /// One of the records (its payer and counting scopes are all of theirs).
        intent: PaymentIntent,
        /// What they spent, in Conto's unit (written as a decimal string: a sum can pass any
        /// one payment's limit).
        #[serde(with = "decimal_text")]
        spent: Decimal,
        /// How many records.
        records: u64,
        /// When they count (the earliest of their times).
        at: Timestamp,
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
    /// Replaces the journal's entries with what `fold` makes of them (it is given every entry,
    /// oldest first, and returns those to keep, in order), atomically: nothing is appended
    /// between the read and the write, and a crash leaves the old entries or the new, never a
    /// mix. Returns how many entries there were and are. The engine calls it
    /// ([`Engine::compact_journal`](crate::Engine::compact_journal)); a journal that cannot
    /// rewrite itself keeps the default, which changes nothing and answers `None`.
    fn compact(&self, fold: &mut dyn FnMut(Vec<Entry>) -> Vec<Entry>) -> Result<Option<Compaction>, JournalError> {
        let _ = fold;
        Ok(None)
    }
}

/// What a [`Journal::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Entries before.
    pub before: usize,
    /// Entries after.
    pub after: usize,
}

//! Where the pipeline sends a settled spend to be recorded durably: a [`RecordSink`] (the
//! trait is the pipeline's; conto-store's SQLite `Outbox` implements it). The pipeline writes
//! each record to the sink before any network attempt and returns at once; a delivery worker
//! (started lazily, or run by the app) hands due records to the authority through a
//! [`Deliver`] and the sink keeps track of retries and dead letters.

use std::time::Duration;

use crate::authorizer::{AuthorityError, BoxFuture};
use crate::decision::{Authorization, Recorded, Settlement};

/// The deadline of one delivery attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a queued record does once delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// Record a settled approval with the authority that approved it.
    Record,
    /// Report a spend a stand-in approved to the authority, once it is back.
    Reconcile,
}

/// Counts of a sink's records by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Waiting for delivery (the outbox depth).
    pub pending: u64,
    /// Delivered.
    pub delivered: u64,
    /// Given up on, kept for an operator.
    pub dead: u64,
}

/// A record sink could not store or read its records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record sink: {0}")]
pub struct SinkError(pub String);

/// Durable storage for records on their way to the authority.
pub trait RecordSink: Send + Sync + 'static {
    /// Writes a record durably; after `Ok` the sink owns its delivery.
    fn enqueue(
        &self,
        kind: RecordKind,
        authorization: &Authorization,
        settlement: &Settlement,
    ) -> Result<(), SinkError>;

    /// Hands every record that is due to `deliverer`, and stores each outcome (delivered, retry
    /// later, dead). Returns how many were attempted.
    fn deliver_due<'a>(&'a self, deliverer: &'a dyn Deliver) -> BoxFuture<'a, Result<usize, SinkError>>;

    /// How long until the next record is due (`None` when nothing waits).
    fn next_due(&self) -> Option<Duration>;

    /// The counts.
    fn stats(&self) -> Result<OutboxStats, SinkError>;
}

/// The pipeline's side of delivery, handed to [`RecordSink::deliver_due`]: sends one record to
/// the authority (under [`ATTEMPT_TIMEOUT`]) and reports outcomes to the pipeline's observers.
pub trait Deliver: Send + Sync {
    /// One delivery attempt. A success is reported as `Event::Recorded`.
    fn deliver<'a>(
        &'a self,
        kind: RecordKind,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>>;

    /// Reports a record the sink gave up on (`Event::RecordFailed`), for an operator.
    fn dead(&self, authorization_id: &str, error: AuthorityError);
}

/// Whether a failed delivery should be tried again: an outage, or the authority saying the same
/// record is still in flight.
pub fn transient(error: &AuthorityError) -> bool {
    error.is_retryable() || error.code() == Some("IDEMPOTENCY_IN_FLIGHT")
}

//! Where the pipeline sends a settled spend to be recorded durably: a [`RecordSink`] (the
//! trait is the pipeline's; conto-store's SQLite `Outbox` implements it). The pipeline writes
//! each record to the sink before any network attempt and returns at once; a delivery worker
//! (started lazily, or run by the app) hands due records to the authority through a
//! [`Deliver`] and the sink keeps track of retries and dead letters.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::authorizer::{AuthorityError, BoxFuture};
use crate::decision::{Authorization, Recorded, Settlement};
use crate::intent::PaymentIntent;
use crate::money::Amount;

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

impl RecordKind {
    /// The name sinks store: `record` or `reconcile`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Record => "record",
            RecordKind::Reconcile => "reconcile",
        }
    }

    /// The kind a stored name stands for (`record` for anything but `reconcile`).
    pub fn from_name(name: &str) -> Self {
        if name == "reconcile" { RecordKind::Reconcile } else { RecordKind::Record }
    }
}

/// A record a sink gave up on, kept for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRecord {
    /// The authorization it belongs to.
    pub authorization_id: String,
    /// Record or reconcile.
    pub kind: RecordKind,
    /// How many times delivery was tried.
    pub attempts: u32,
    /// The last error.
    pub last_error: String,
}

/// What a sink stores after one delivery attempt ([`attempt`]).
#[derive(Debug, Clone)]
pub enum Next {
    /// Delivered: done.
    Delivered,
    /// Try again after the backoff; the error, for the operator.
    Retry(Duration, String),
    /// Given up on (already reported to the pipeline); the error, for the operator.
    Dead(String),
}

/// One delivery attempt of `record`, already tried `attempts` times: delivers it through
/// `deliverer`, and says what the sink stores next. A transient failure is retried with
/// [`backoff`] until `max_attempts`; a record given up on is reported (`Deliver::dead`). Every
/// sink uses this, so they retry and give up alike.
pub async fn attempt(deliverer: &dyn Deliver, record: &QueuedRecord, attempts: u32, max_attempts: u32) -> Next {
    let id = &record.authorization_id;
    match deliverer.deliver(record.kind, &record.authorization(), &record.settlement()).await {
        Ok(_) => {
            tracing::debug!(authorization = %id, attempts = attempts + 1, "conto.outbox.delivered");
            Next::Delivered
        }
        // The pipeline went away under the batch (its last handle dropped at shutdown): the
        // record is left for the next start, never given up on for it.
        Err(error) if deliverer.closed() => {
            tracing::info!(authorization = %id, %error, "conto.outbox.left_for_next_start");
            Next::Retry(backoff(attempts), error.to_string())
        }
        Err(error) if transient(&error) && attempts + 1 < max_attempts => {
            tracing::warn!(authorization = %id, %error, attempts = attempts + 1, "conto.outbox.retry");
            Next::Retry(backoff(attempts), error.to_string())
        }
        Err(error) => {
            tracing::error!(authorization = %id, %error, "conto.outbox.dead: an operator must look");
            let why = error.to_string();
            deliverer.dead(id, error);
            Next::Dead(why)
        }
    }
}

/// One record as a sink stores it: what to deliver, for which authorization, with what
/// settlement. Sinks serialize it (JSON) so that any process can deliver it later.
///
/// It carries the approval token when the authorization has one (the authority needs it to
/// confirm a transfer or card payment): a sink's storage is as sensitive as the SDK key.
#[derive(Clone, Serialize, Deserialize)]
pub struct QueuedRecord {
    /// Record or reconcile.
    pub kind: RecordKind,
    /// The authorization's id.
    pub authorization_id: String,
    /// The approval token, if any (a secret).
    pub token: Option<String>,
    /// The approved amount.
    pub approved: Amount,
    /// When the approval lapses.
    pub expires_at: Timestamp,
    /// The approved intent.
    pub intent: PaymentIntent,
    /// What was settled (`None`: the approved amount).
    pub settled: Option<Amount>,
    /// The settlement's reference.
    pub reference: Option<String>,
    /// The wallet the authority named ([`Authorization::wallet`]); absent from records
    /// queued by earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet_id: Option<String>,
    /// That wallet's chain, when the authority named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet_chain_id: Option<String>,
}

impl std::fmt::Debug for QueuedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedRecord")
            .field("kind", &self.kind)
            .field("authorization_id", &self.authorization_id)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("approved", &self.approved)
            .field("settled", &self.settled)
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

impl QueuedRecord {
    /// The record of `settlement` under `authorization`.
    pub fn new(kind: RecordKind, authorization: &Authorization, settlement: &Settlement) -> Self {
        Self {
            kind,
            authorization_id: authorization.id.clone(),
            token: authorization.token.as_ref().map(|t| t.expose_secret().to_owned()),
            approved: authorization.amount,
            expires_at: authorization.expires_at,
            intent: (*authorization.intent).clone(),
            settled: settlement.amount,
            reference: settlement.reference.clone(),
            wallet_id: authorization.wallet.as_ref().map(|w| w.id.clone()),
            wallet_chain_id: authorization.wallet.as_ref().and_then(|w| w.chain_id.clone()),
        }
    }

    /// The authorization to deliver it under.
    pub fn authorization(&self) -> Authorization {
        Authorization {
            id: self.authorization_id.clone(),
            token: self.token.clone().map(SecretString::from),
            amount: self.approved,
            expires_at: self.expires_at,
            limits: Default::default(),
            intent: Arc::new(self.intent.clone()),
            wallet: self
                .wallet_id
                .as_ref()
                .map(|id| Box::new(crate::decision::Wallet::new(id.clone(), self.wallet_chain_id.clone()))),
        }
    }

    /// The settlement to deliver.
    pub fn settlement(&self) -> Settlement {
        Settlement { amount: self.settled, reference: self.reference.clone() }
    }
}

/// Seals the approval tokens a sink stores, so that they are not readable at rest. conto-rs's
/// implementation is `conto::credentials::TokenSealer` (XChaCha20-Poly1305 under the master key).
pub trait TokenSeal: Send + Sync + 'static {
    /// The sealed form of `token`, bound to its authorization (`aad`).
    fn seal(&self, token: &str, aad: &str) -> Result<String, SinkError>;
    /// The token back from its sealed form; an error when it was sealed under another key or
    /// for another authorization.
    fn open(&self, sealed: &str, aad: &str) -> Result<String, SinkError>;
}

pub use crate::held::HeldInMemory;

impl QueuedRecord {
    /// The JSON a sink stores: with the token sealed when a seal is given.
    pub fn to_stored(&self, seal: Option<&dyn TokenSeal>) -> Result<String, SinkError> {
        let text = match (seal, &self.token) {
            // Only a record whose token is sealed is copied to be written.
            (Some(seal), Some(token)) => {
                let sealed = Some(format!("{SEALED}{}", seal.seal(token, &self.authorization_id)?));
                serde_json::to_string(&QueuedRecord { token: sealed, ..self.clone() })
            }
            _ => serde_json::to_string(self),
        };
        text.map_err(|e| SinkError(e.to_string()))
    }

    /// A record from what a sink stored; a sealed token needs the seal it was sealed with.
    pub fn from_stored(text: &str, seal: Option<&dyn TokenSeal>) -> Result<Self, SinkError> {
        let mut record: QueuedRecord =
            serde_json::from_str(text).map_err(|e| SinkError(format!("unreadable record: {e}")))?;
        if let Some(sealed) = record.token.as_deref().and_then(|t| t.strip_prefix(SEALED)) {
            let seal =
                seal.ok_or_else(|| SinkError("the record's approval token is sealed: configure the seal".into()))?;
            record.token = Some(seal.open(sealed, &record.authorization_id)?);
        }
        Ok(record)
    }
}

impl QueuedRecord {
    /// Whether its stored token is sealed under a key (not held in a process's memory): a
    /// process given that key can open it, so a record read where none does may wait for one.
    pub fn sealed_under_a_key(&self) -> bool {
        self.token.as_deref().and_then(|t| t.strip_prefix(SEALED)).is_some_and(|t| t != crate::held::HELD)
    }
}

/// The prefix of a sealed token in a stored record.
const SEALED: &str = "sealed:v1:";

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
    fn enqueue<'a>(&'a self, record: &'a QueuedRecord) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Hands every record that is due to `deliverer`, and stores each outcome (delivered, retry
    /// later, dead). Returns how many were attempted.
    fn deliver_due<'a>(&'a self, deliverer: &'a dyn Deliver) -> BoxFuture<'a, Result<usize, SinkError>>;

    /// How long until the next record is due (`None` when nothing waits). A sink shared by
    /// several processes may answer from what it saw on its last pass.
    fn next_due(&self) -> Option<Duration>;

    /// The counts (a shared sink: as of its last pass, plus what this process queued since).
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

    /// Whether the pipeline behind this deliverer is gone (its last handle dropped): a failed
    /// attempt is then retried at the next start, never given up on.
    fn closed(&self) -> bool {
        false
    }
}

/// How long a sink waits before delivery attempt `attempts + 1`: 200 ms · 2ⁿ, at most 60 s
/// (every sink backs off alike).
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_millis((200u64.saturating_mul(1 << attempts.min(9))).min(60_000))
}

/// Whether a failed delivery should be tried again: an outage, or the authority saying the same
/// record is still in flight.
pub fn transient(error: &AuthorityError) -> bool {
    error.is_retryable() || error.code() == Some("IDEMPOTENCY_IN_FLIGHT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PaymentIntent, Rail};

    /// Without a seal a token is held, not written: it opens in the process that held it, and
    /// nowhere else; a token sealed under a key is not mistaken for one held.
    #[test]
    fn a_held_token_opens_only_where_it_was_held() {
        let held = HeldInMemory::default();
        let marker = held.seal("tok_secret", "auth_1").unwrap();
        assert!(!marker.contains("tok_secret"));
        assert_eq!(held.open(&marker, "auth_1").unwrap(), "tok_secret");
        let elsewhere = HeldInMemory::default();
        assert!(elsewhere.open(&marker, "auth_1").unwrap_err().0.contains("seal tokens"));
        assert!(held.open(&marker, "auth_2").is_err(), "bound to its authorization");
        assert!(held.open("xchacha-ciphertext", "auth_1").unwrap_err().0.contains("configure the seal"));
        assert!(!format!("{held:?}").contains("tok_secret"));
    }

    /// A stored record keeps the wallet its authority named; one an earlier version stored,
    /// without the field, still reads.
    #[test]
    fn a_stored_record_keeps_its_wallet_and_an_older_one_reads() {
        let intent = PaymentIntent::builder("agent-1", "3", Rail::mpp("https://mpp.example.com/v1").unwrap())
            .recipient("0x2222222222222222222222222222222222222222")
            .build()
            .unwrap();
        let authorization = Authorization {
            id: "auth_1".into(),
            token: None,
            amount: "3".parse().unwrap(),
            expires_at: Timestamp::now(),
            limits: Default::default(),
            intent: Arc::new(intent),
            wallet: Some(Box::new(crate::Wallet::new("wal_tempo", Some("4217".into())))),
        };
        let record = QueuedRecord::new(RecordKind::Record, &authorization, &Settlement::default());
        let stored = record.to_stored(None).unwrap();
        let back = QueuedRecord::from_stored(&stored, None).unwrap();
        assert_eq!(back.authorization().wallet.as_deref(), Some(&crate::Wallet::new("wal_tempo", Some("4217".into()))));

        let mut older: serde_json::Value = serde_json::from_str(&stored).unwrap();
        older.as_object_mut().unwrap().remove("wallet_id");
        older.as_object_mut().unwrap().remove("wallet_chain_id");
        let back = QueuedRecord::from_stored(&older.to_string(), None).unwrap();
        assert_eq!(back.authorization().wallet, None);
        assert_eq!(back.authorization_id, "auth_1");
    }
}

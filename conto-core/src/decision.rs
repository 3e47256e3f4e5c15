//! What an authority answers: a [`Decision`], and what the app reports back: a [`Settlement`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::intent::PaymentIntent;
use crate::money::{self, Amount};
use secrecy::SecretString;

macro_rules! violation_types {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// A violation's `type`, spelled as Conto spells it (conto-api.md §7.7).
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ViolationType {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
            /// A type this version does not know (kept verbatim from the wire).
            Other(String),
        }

        impl ViolationType {
            /// The wire name.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ViolationType::$variant => $name,)*
                    ViolationType::Other(s) => s,
                }
            }

            /// Reads a wire name; unknown names are kept as [`ViolationType::Other`].
            pub fn from_name(name: &str) -> Self {
                match name {
                    $($name => ViolationType::$variant,)*
                    other => ViolationType::Other(other.to_owned()),
                }
            }
        }
    };
}

violation_types! {
    InsufficientBalance => "INSUFFICIENT_BALANCE",
    PerTxLimit => "PER_TX_LIMIT",
    DailyLimit => "DAILY_LIMIT",
    WeeklyLimit => "WEEKLY_LIMIT",
    MonthlyLimit => "MONTHLY_LIMIT",
    BudgetExceeded => "BUDGET_EXCEEDED",
    TimeWindow => "TIME_WINDOW",
    BlackoutPeriod => "BLACKOUT_PERIOD",
    ExpiredPermission => "EXPIRED_PERMISSION",
    BlockedCounterparty => "BLOCKED_COUNTERPARTY",
    WhitelistViolation => "WHITELIST_VIOLATION",
    CategoryRestriction => "CATEGORY_RESTRICTION",
    VelocityLimit => "VELOCITY_LIMIT",
    GeographicRestriction => "GEOGRAPHIC_RESTRICTION",
    ContractNotAllowed => "CONTRACT_NOT_ALLOWED",
    FairscaleLowScore => "FAIRSCALE_LOW_SCORE",
    X402PriceCeiling => "X402_PRICE_CEILING",
    X402ServiceBlocked => "X402_SERVICE_BLOCKED",
    X402ServiceNotAllowed => "X402_SERVICE_NOT_ALLOWED",
    X402EndpointLimit => "X402_ENDPOINT_LIMIT",
    X402SessionBudget => "X402_SESSION_BUDGET",
    X402Velocity => "X402_VELOCITY",
    MppPriceCeiling => "MPP_PRICE_CEILING",
    MppServiceBlocked => "MPP_SERVICE_BLOCKED",
    MppServiceNotAllowed => "MPP_SERVICE_NOT_ALLOWED",
    MppEndpointLimit => "MPP_ENDPOINT_LIMIT",
    MppSessionBudget => "MPP_SESSION_BUDGET",
    MppVelocity => "MPP_VELOCITY",
    MppMaxSessionDeposit => "MPP_MAX_SESSION_DEPOSIT",
    MppMaxConcurrentSessions => "MPP_MAX_CONCURRENT_SESSIONS",
    MppMaxSessionDuration => "MPP_MAX_SESSION_DURATION",
    MppSessionIntentBlocked => "MPP_SESSION_INTENT_BLOCKED",
    MppMethodNotAllowed => "MPP_METHOD_NOT_ALLOWED",
    CardMccRestriction => "CARD_MCC_RESTRICTION",
    CardMerchantRestriction => "CARD_MERCHANT_RESTRICTION",
    CardAmountLimit => "CARD_AMOUNT_LIMIT",
}

impl fmt::Display for ViolationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ViolationType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ViolationType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from_name(&String::deserialize(d)?))
    }
}

/// One broken rule: `{type, limit, current, message}` as Conto sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Which kind of rule was broken.
    #[serde(rename = "type")]
    pub kind: ViolationType,
    /// The rule's limit, when it has a numeric one.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "money::opt_decimal")]
    pub limit: Option<Decimal>,
    /// The current value measured against the limit (spent so far, or the amount asked).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "money::opt_decimal")]
    pub current: Option<Decimal>,
    /// A human-readable explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Spend counters Conto returns with an approval (`limits` on `payments/approve`). Written with
/// every key, `null` where no daily limit applies, as Conto's agent skill prints all three.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Spent (and reserved) today, this approval included.
    #[serde(default, with = "money::opt_decimal")]
    pub daily_used: Option<Decimal>,
    /// Today's limit.
    #[serde(default, with = "money::opt_decimal")]
    pub daily_limit: Option<Decimal>,
    /// What is left today.
    #[serde(default, with = "money::opt_decimal")]
    pub daily_remaining: Option<Decimal>,
}

/// Where a decision came from, for audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionSource {
    /// The authority evaluated its policies.
    Policy,
    /// A configured stand-in policy decided because the authority was unavailable.
    StandIn,
    /// The authority did not answer within the deadline (fail-closed).
    Timeout,
    /// The authority could not be reached or answered garbage (fail-closed).
    Unavailable,
    /// The authority refused the call itself (credentials, scope, configuration).
    Authority,
    /// The pipeline refused invalid input before asking anyone.
    Input,
    /// No authority was configured.
    NotConfigured,
}

impl fmt::Display for DecisionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecisionSource::Policy => "policy",
            DecisionSource::StandIn => "stand_in",
            DecisionSource::Timeout => "timeout",
            DecisionSource::Unavailable => "unavailable",
            DecisionSource::Authority => "authority",
            DecisionSource::Input => "input",
            DecisionSource::NotConfigured => "not_configured",
        })
    }
}

/// An approval: the settlement may run, for at most `amount`, until `expires_at`.
#[derive(Clone)]
pub struct Authorization {
    /// The authority's id for this approval (`approvalId`, `requestId`, …).
    pub id: String,
    /// The approval token to present when confirming, when the authority issues one (Conto
    /// and conto-local do for transfers and cards); a secret. The embedded engine issues none:
    /// in process, this value itself is what settles.
    pub token: Option<SecretString>,
    /// The most the settlement may spend.
    pub amount: Amount,
    /// When the approval lapses if not settled.
    pub expires_at: Timestamp,
    /// Spend counters after this approval, when the authority reports them.
    pub limits: Limits,
    /// The intent that was approved.
    pub intent: Arc<PaymentIntent>,
    /// The wallet the authority named for the payment, when it names one (Conto's x402/MPP
    /// pre-authorization `wallet`); an MPP record sends it back as `walletId` and `chainId`.
    /// Boxed: an in-process authority names none, and an authorization moves with its payment.
    pub wallet: Option<Box<Wallet>>,
}

/// The wallet an authority named for a payment: Conto's x402/MPP pre-authorization answers
/// `wallet` {`id`, `chainId`, …}, and an MPP record sends both back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Wallet {
    /// The wallet's id at the authority.
    pub id: String,
    /// Its chain, as the authority wrote it (Conto writes chain ids as strings: `"4217"`).
    pub chain_id: Option<String>,
}

impl Wallet {
    /// The wallet `id`, on `chain_id` when the authority named one.
    pub fn new(id: impl Into<String>, chain_id: Option<String>) -> Self {
        Self { id: id.into(), chain_id }
    }
}

impl Authorization {
    /// What is left of the tightest daily limit once `recorded` was spent, when the authority
    /// reported a daily limit: the approval's figure assumed the whole approved amount, so
    /// what was approved but not spent is credited back.
    pub fn daily_remaining_after(&self, recorded: Amount) -> Option<Decimal> {
        let remaining = self.limits.daily_remaining?;
        remaining.checked_add(self.amount.get())?.checked_sub(recorded.get()).map(|d| d.normalize())
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorization")
            .field("id", &self.id)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("amount", &self.amount)
            .field("expires_at", &self.expires_at)
            .field("limits", &self.limits)
            .field("actor", &self.intent.actor)
            .field("wallet", &self.wallet)
            .finish()
    }
}

/// A denial: the settlement must not run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Denial {
    /// Human-readable reasons.
    pub reasons: Vec<String>,
    /// The broken rules (Conto returns the first one only).
    pub violations: Vec<Violation>,
}

/// The action waits for a human: the settlement must not run yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingApproval {
    /// The approval request to poll; empty when the authority named none (Conto names one only
    /// when an approval workflow matches): such a request cannot be followed, and waiting on it
    /// declines.
    pub approval_request_id: String,
    /// When the request lapses (then it counts as denied).
    pub expires_at: Timestamp,
    /// Why approval is needed.
    pub reasons: Vec<String>,
}

/// The verdict on one intent.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Go ahead and settle.
    Approved(Authorization),
    /// Do not settle.
    Denied(Denial),
    /// Do not settle until a human approves.
    RequiresApproval(PendingApproval),
}

/// A verdict with its source and latency.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// Who decided.
    pub source: DecisionSource,
    /// How long the decision took, as measured by the pipeline.
    pub latency: Duration,
    /// The actor is not provisioned and was let through only because the engine was built with
    /// [`EngineBuilder::open_actors`](crate::engine::EngineBuilder::open_actors) (demos and
    /// tests). Never set by a closed authority.
    pub open_actor: bool,
}

impl Decision {
    /// A verdict reached by evaluating policies.
    pub fn from_policy(verdict: Verdict) -> Self {
        Self { verdict, source: DecisionSource::Policy, latency: Duration::ZERO, open_actor: false }
    }
}

/// What the settlement actually did, reported back after it succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settlement {
    /// The amount that actually moved; the approved amount when `None`.
    pub amount: Option<Amount>,
    /// The settlement's reference: a tx hash, a payment id, a card transaction reference.
    pub reference: Option<String>,
}

impl Settlement {
    /// A settlement of exactly the approved amount, with no reference.
    pub fn approved_amount() -> Self {
        Self::default()
    }

    /// Sets the settled amount.
    pub fn amount(mut self, amount: Amount) -> Self {
        self.amount = Some(amount);
        self
    }

    /// Sets the settlement reference.
    pub fn reference(mut self, reference: impl Into<String>) -> Self {
        self.reference = Some(reference.into());
        self
    }
}

/// The authority's receipt for a recorded settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The authorization the spend was recorded against.
    pub authorization_id: String,
    /// The amount recorded.
    pub amount: Amount,
    /// The authority's transaction id, when it gives one.
    pub transaction_id: Option<String>,
    /// The spend was recorded after the approval had expired.
    pub late: bool,
    /// The record was written to the durable outbox and will be delivered in the background;
    /// `transaction_id` is not known yet.
    pub queued: bool,
    /// The actor was paused or retired when the spend was recorded: the settlement was approved
    /// before, so the money moved and the spend is counted, but an operator should look.
    pub actor_inactive: bool,
}

impl Recorded {
    /// The receipt of a reconciled spend (a stand-in's, counted by the engine that reconciles
    /// it): no transaction id, not late, not queued.
    pub(crate) fn reconciled(authorization_id: &str, amount: Amount) -> Self {
        Self {
            authorization_id: authorization_id.to_owned(),
            amount,
            transaction_id: None,
            late: false,
            queued: false,
            actor_inactive: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_with_every_key_and_read_back_without_them() {
        let none = serde_json::to_value(Limits::default()).unwrap();
        assert_eq!(none, serde_json::json!({"dailyUsed": null, "dailyLimit": null, "dailyRemaining": null}));
        let some = Limits {
            daily_used: Some(Decimal::new(25, 1)),
            daily_limit: Some(Decimal::from(10)),
            daily_remaining: Some(Decimal::new(75, 1)),
        };
        let text = serde_json::to_value(&some).unwrap();
        assert_eq!(text, serde_json::json!({"dailyUsed": 2.5, "dailyLimit": 10, "dailyRemaining": 7.5}));
        assert_eq!(serde_json::from_value::<Limits>(text).unwrap(), some);
        assert_eq!(serde_json::from_value::<Limits>(serde_json::json!({})).unwrap(), Limits::default());
    }
}

//! Conto's wire format, typed: the request and response bodies of every Conto endpoint that
//! conto-rs calls (`conto-client`) or serves (`conto-local`), the error body, and which
//! endpoint each rail uses. One definition, so the client and the local control plane cannot
//! drift apart, and no Conto field name is spelled anywhere else.
//!
//! Parsing is tolerant of what it does not know (unknown fields are ignored, as Conto adds
//! fields) and strict about what it reads: a field of the wrong type is an error, and a
//! missing required field is reported by name by the code that needs it.
//!
//! ```
//! use conto::{PaymentIntent, Rail};
//! use conto_wire::sdk::PaymentBody;
//!
//! let intent = PaymentIntent::builder("agent-1", "0.05", Rail::x402("https://api.example.com/q")?)
//!     .recipient("0x1111111111111111111111111111111111111111")
//!     .build()?;
//! let (kind, body) = PaymentBody::from_intent(&intent);
//! assert_eq!(kind.authorize_path(), "x402/pre-authorize");
//! let json = serde_json::to_value(&body)?;
//! assert_eq!(json["resourceUrl"], "https://api.example.com/q");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod org;
pub mod sdk;

use serde::{Deserialize, Serialize};

/// Every error Conto (and conto-local) answers: `{error, code, message}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A short description (Conto's older clients read this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The machine-readable code: `AUTH_FAILED`, `INSUFFICIENT_SCOPE`, `VALIDATION_ERROR`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// What went wrong and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ErrorBody {
    /// An error body with the same text in `error` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        Self { error: Some(message.clone()), code: Some(code.into()), message: Some(message) }
    }

    /// The most descriptive text the body carries.
    pub fn text(&self) -> Option<&str> {
        self.message.as_deref().or(self.error.as_deref())
    }
}

/// Which of Conto's authorization flows a payment uses; each has its own endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `payments/approve`, then `payments/{approvalId}/confirm`.
    Transfer,
    /// `x402/pre-authorize`, then `x402/record`.
    X402,
    /// `mpp/pre-authorize`, then `mpp/record`.
    Mpp,
    /// `cards/approve`, then `cards/{requestId}/confirm`.
    Card,
    /// `payments/request` (a policy check for money moved elsewhere); no record step.
    Request,
}

impl Kind {
    /// The flow of a rail.
    pub fn of(rail: &conto_core::Rail) -> Self {
        use conto_core::Rail;
        match rail {
            Rail::Transfer { .. } => Kind::Transfer,
            Rail::X402 { .. } => Kind::X402,
            Rail::Mpp { .. } => Kind::Mpp,
            Rail::Card { .. } => Kind::Card,
            Rail::Request { .. } => Kind::Request,
        }
    }

    /// The authorize endpoint, relative to `/api/sdk/`.
    pub fn authorize_path(self) -> &'static str {
        match self {
            Kind::Transfer => "payments/approve",
            Kind::X402 => "x402/pre-authorize",
            Kind::Mpp => "mpp/pre-authorize",
            Kind::Card => "cards/approve",
            Kind::Request => "payments/request",
        }
    }

    /// The record endpoint for an authorization, relative to `/api/sdk/`; `None` for a payment
    /// request, which Conto has no record step for.
    pub fn record_path(self, authorization_id: &str) -> Option<String> {
        match self {
            Kind::Transfer => Some(format!("payments/{authorization_id}/confirm")),
            Kind::X402 => Some("x402/record".to_owned()),
            Kind::Mpp => Some("mpp/record".to_owned()),
            Kind::Card => Some(format!("cards/{authorization_id}/confirm")),
            Kind::Request => None,
        }
    }

    /// The SDK key scope the record endpoint needs.
    pub fn record_scope(self) -> &'static str {
        match self {
            Kind::Transfer => "payments:confirm",
            Kind::X402 | Kind::Mpp | Kind::Card | Kind::Request => "payments:request",
        }
    }

    /// The SDK key scope the authorize endpoint needs.
    pub fn authorize_scope(self) -> &'static str {
        match self {
            Kind::Transfer => "payments:approve",
            Kind::X402 | Kind::Mpp | Kind::Card | Kind::Request => "payments:request",
        }
    }
}

/// A decimal as a JSON number (or a numeric string, on input).
pub(crate) mod opt_number {
    use conto_core::Decimal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => {
                let n: serde_json::Number = d.normalize().to_string().parse().map_err(serde::ser::Error::custom)?;
                n.serialize(s)
            }
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        let text = match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s,
            Some(other) => return Err(serde::de::Error::custom(format!("expected a number, got {other}"))),
        };
        // Digit separators (`"1_0"`), which rust_decimal would read as 10, are no number here.
        let parsed = (!text.contains('_'))
            .then(|| text.trim().parse::<Decimal>().or_else(|_| Decimal::from_scientific(text.trim())).ok())
            .flatten();
        parsed.map(Some).ok_or_else(|| serde::de::Error::custom(format!("`{text}` is not a number")))
    }
}

/// `Debug` for a wire body holding a secret: its JSON, with the field `secret` (when set)
/// written as `"[redacted]"`.
fn redacted_debug<T: Serialize>(
    f: &mut std::fmt::Formatter<'_>,
    name: &str,
    value: &T,
    secret: &str,
) -> std::fmt::Result {
    let mut json = serde_json::to_value(value).unwrap_or_default();
    if let Some(field) = json.get_mut(secret).filter(|v| !v.is_null()) {
        *field = serde_json::Value::String("[redacted]".into());
    }
    write!(f, "{name}({json})")
}

#[cfg(test)]
mod debug_tests {
    #[test]
    fn secrets_in_wire_bodies_never_reach_debug_output() {
        let token = "ab".repeat(32);
        let body = crate::sdk::PaymentBody { approval_token: Some(token.clone()), ..Default::default() };
        let decision = crate::sdk::DecisionBody { approval_token: Some(token.clone()), ..Default::default() };
        let entry = crate::sdk::ApprovalRequest { approval_token: Some(token.clone()), ..Default::default() };
        let key = crate::org::SdkKey { key: Some(format!("conto_agent_{token}")), ..Default::default() };
        for shown in [format!("{body:?}"), format!("{decision:?}"), format!("{entry:?}"), format!("{key:?}")] {
            assert!(!shown.contains(&token) && shown.contains("[redacted]"), "{shown}");
        }
        // Without a secret, nothing is redacted (a `null` stays `null`).
        assert!(!format!("{:?}", crate::sdk::PaymentBody::default()).contains("[redacted]"));
    }
}

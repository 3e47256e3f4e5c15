//! What the handler sees (the approval) and what it reports back (the settlement).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponseParts, ResponseParts};
use conto_core::{Amount, Authorization, DecisionSource, Settlement};
use http::StatusCode;
use http::request::Parts;

/// The approval of the current request, for the handler: `async fn h(paid: Paid) { .. }`.
///
/// Extracting it from a request that did not pass through a [`PaidLayer`](crate::PaidLayer)
/// (or that was free) fails with 500: that is a wiring mistake, not a client error.
#[derive(Debug, Clone)]
pub struct Paid {
    /// The authorization: id, approved amount, expiry, limits.
    pub authorization: Authorization,
    /// Who approved.
    pub source: DecisionSource,
    /// How long the decision took.
    pub latency: Duration,
}

impl<S: Send + Sync> FromRequestParts<S> for Paid {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Paid>()
            .cloned()
            .ok_or((StatusCode::INTERNAL_SERVER_ERROR, "this route is not behind conto_tower::PaidLayer"))
    }
}

/// What the handler actually settled, returned as a response part:
/// `(Settled::new().amount(charged).reference(tx_hash), Json(body))`. Without it the layer
/// records the approved amount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled(pub Settlement);

impl Settled {
    /// Nothing reported yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The amount that moved (at most the approved amount).
    pub fn amount(self, amount: Amount) -> Self {
        Self(self.0.amount(amount))
    }

    /// The settlement's reference.
    pub fn reference(self, reference: impl Into<String>) -> Self {
        Self(self.0.reference(reference))
    }
}

impl IntoResponseParts for Settled {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        res.extensions_mut().insert(self);
        Ok(res)
    }
}

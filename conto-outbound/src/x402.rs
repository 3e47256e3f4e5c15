//! [`X402Schemes`]: the app's x402-rs scheme clients (`x402_types::scheme::client::X402SchemeClient`,
//! e.g. `x402-chain-eip155`'s exact-scheme client over the app's wallet) as the [`Signer`] of
//! [`PaidRequests`](crate::PaidRequests). Feature `x402-rs`.
//!
//! The scheme clients are the same ones an app registers with `x402_reqwest::X402Client`; here
//! they are asked to sign only after the spend policy approved, and only the one requirement that
//! was approved (the challenge is narrowed to it before any scheme client sees it).

use std::sync::Arc;

use conto_core::BoxFuture;
use serde::Deserialize;
use serde_json::Value;
use x402_types::proto::{self, OriginalJson};
use x402_types::scheme::client::{PaymentCandidate, X402SchemeClient};

use crate::challenge::{Challenge, Requirement};
use crate::pay::{Credential, Offer, SignError, Signer};

/// x402-rs scheme clients as a [`Signer`]: the first registered scheme that can pay the approved
/// requirement signs it; the credential goes in `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (v1).
#[derive(Clone, Default)]
pub struct X402Schemes {
    schemes: Vec<Arc<dyn X402SchemeClient>>,
}

impl std::fmt::Debug for X402Schemes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X402Schemes").field("schemes", &self.schemes.len()).finish()
    }
}

impl X402Schemes {
    /// No scheme yet: add each with [`X402Schemes::register`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a scheme client (tried in registration order).
    pub fn register<S: X402SchemeClient + 'static>(mut self, scheme: S) -> Self {
        self.schemes.push(Arc::new(scheme));
        self
    }
}

fn sign_error(what: impl std::fmt::Display) -> SignError {
    SignError(what.to_string())
}

/// The challenge narrowed to the approved requirement, in x402-rs's types.
fn narrowed(version: u8, raw: &Value, chosen: &Requirement) -> Result<proto::PaymentRequired, SignError> {
    let original = raw
        .get("accepts")
        .and_then(Value::as_array)
        .and_then(|accepts| accepts.iter().find(|v| Requirement::deserialize(*v).is_ok_and(|r| &r == chosen)))
        .ok_or_else(|| sign_error("the approved requirement is not in the challenge"))?;
    let mut narrowed = raw.clone();
    narrowed["accepts"] = Value::Array(vec![original.clone()]);
    // x402-rs keeps requirements as raw JSON, which only a text deserializer can produce.
    let text = serde_json::to_string(&narrowed).map_err(sign_error)?;
    match version {
        1 => serde_json::from_str::<proto::v1::PaymentRequired<OriginalJson>>(&text)
            .map(proto::PaymentRequired::V1)
            .map_err(|e| sign_error(format!("x402 v1 challenge: {e}"))),
        2 => serde_json::from_str::<proto::v2::PaymentRequired<OriginalJson>>(&text)
            .map(proto::PaymentRequired::V2)
            .map_err(|e| sign_error(format!("x402 v2 challenge: {e}"))),
        v => Err(sign_error(format!("x402 version {v} is not supported"))),
    }
}

/// Whether a scheme client's candidate pays exactly what was approved.
fn pays_exactly(candidate: &PaymentCandidate, chosen: &Requirement) -> bool {
    // The same number of atomic units, however the challenge pads it.
    candidate.amount.to_string().trim_start_matches('0') == chosen.amount.trim_start_matches('0')
        && candidate.pay_to.eq_ignore_ascii_case(&chosen.pay_to)
        && candidate.asset.eq_ignore_ascii_case(&chosen.asset)
        && candidate.scheme == chosen.scheme
}

impl Signer for X402Schemes {
    fn sign<'a>(&'a self, offer: &'a Offer) -> BoxFuture<'a, Result<Credential, SignError>> {
        Box::pin(async move {
            let Challenge::X402 { version, raw, .. } = &offer.challenge else {
                return Err(sign_error("x402 scheme clients cannot answer an MPP challenge"));
            };
            let chosen = offer.requirement.as_ref().ok_or_else(|| sign_error("no x402 requirement was approved"))?;
            let required = narrowed(*version, raw, chosen)?;
            let candidates: Vec<PaymentCandidate> =
                self.schemes.iter().flat_map(|scheme| scheme.accept(&required)).collect();
            let candidate = candidates
                .iter()
                .find(|c| pays_exactly(c, chosen))
                .ok_or_else(|| sign_error("no registered x402 scheme client can pay the approved requirement"))?;
            let payload = candidate.sign().await.map_err(sign_error)?;
            Credential::new(if *version == 1 { "x-payment" } else { "payment-signature" }, payload)
        })
    }
}

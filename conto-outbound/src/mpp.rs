//! [`MppProvider`]: the app's `mpp` crate payment provider (`mpp::client::PaymentProvider`, e.g.
//! its Tempo or Stripe provider) as the [`Signer`] of [`PaidRequests`](crate::PaidRequests).
//! Feature `mpp`.
//!
//! The provider is asked to pay only after the spend policy approved the challenge's amount (for
//! a `session`, the deposit it may open a channel with, `suggestedDeposit`; one unit is what is
//! recorded); the credential goes back in `Authorization: Payment …`.

use conto_core::BoxFuture;
use mpp::client::PaymentProvider;
use mpp::protocol::core::{format_authorization, parse_www_authenticate};

use crate::challenge::{Challenge, MppChallenge};
use crate::pay::{Credential, Offer, SignError, Signer};

/// An `mpp` [`PaymentProvider`] as a [`Signer`].
#[derive(Debug, Clone)]
pub struct MppProvider<P>(pub P);

/// The challenge as a `WWW-Authenticate` value again (its auth-params, quoted).
fn header_of(challenge: &MppChallenge) -> String {
    let params: Vec<String> = challenge
        .params
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("Payment {}", params.join(", "))
}

impl<P: PaymentProvider + 'static> Signer for MppProvider<P> {
    fn sign<'a>(&'a self, offer: &'a Offer) -> BoxFuture<'a, Result<Credential, SignError>> {
        Box::pin(async move {
            let Challenge::Mpp(challenge) = &offer.challenge else {
                return Err(SignError("an MPP provider cannot answer an x402 challenge".into()));
            };
            let parsed =
                parse_www_authenticate(&header_of(challenge)).map_err(|e| SignError(format!("MPP challenge: {e}")))?;
            // The provider pays what it parsed: it must be what the policy approved.
            let request = parsed.request.decode_value().map_err(|e| SignError(format!("MPP challenge: {e}")))?;
            if request != challenge.request || challenge.param("intent").is_some_and(|i| i != parsed.intent.as_str()) {
                return Err(SignError("the MPP provider read another payment than the one approved".into()));
            }
            if !self.0.supports(parsed.method.as_str(), parsed.intent.as_str()) {
                return Err(SignError(format!(
                    "the MPP provider does not pay method `{}` intent `{}`",
                    parsed.method.as_str(),
                    parsed.intent.as_str()
                )));
            }
            let credential = self.0.pay(&parsed).await.map_err(|e| SignError(format!("MPP provider: {e}")))?;
            let value = format_authorization(&credential).map_err(|e| SignError(format!("MPP credential: {e}")))?;
            Credential::new("authorization", value)
        })
    }
}

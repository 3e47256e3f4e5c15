//! Outbound paid requests for conto-rs: [`PaidRequests`], a `reqwest-middleware` middleware that
//! puts the spend policy in front of every x402 or MPP payment the app makes.
//!
//! On a `402 Payment Required` it reads the challenge (x402 v2 `PAYMENT-REQUIRED`, then an x402
//! v1 body, then MPP `WWW-Authenticate: Payment`), turns the chosen requirement into a
//! [`PaymentIntent`](conto_core::PaymentIntent) on the x402 or MPP rail (the atomic amount
//! converted exactly with the asset's decimals, `payTo` as the recipient, the resource, network
//! and asset carried over), and authorizes it through [`Conto`](conto_core::Conto):
//!
//! - **denied, waiting for a human, or the authority unavailable:** the app's [`Signer`] is
//!   never called; the caller gets [`PaymentError::Refused`] with the typed rejection;
//! - **approved:** the signer creates the credential, the request is retried with it once, and
//!   the settlement the paywall reports (`PAYMENT-RESPONSE`, `X-PAYMENT-RESPONSE`,
//!   `Payment-Receipt`) is recorded with its transaction reference, whatever the retry's
//!   status (a service that charged and then failed is still paid). Once the credential has
//!   left, the money may move whatever the paywall answers (an x402 authorization is a bearer
//!   instrument): a paid retry refused with no successful report (a 402, a 4xx, an
//!   unsuccessful report), a server error with no report ([`PaymentError::ServerFailed`]), no
//!   answer in time, or a redirect to another origin counts the approved amount as spent; with
//!   [`PaidRequestsBuilder::trust_refusals`] a refusal releases the approval and an unknown
//!   outcome holds it until it expires. A request dropped once its signer was asked (a timeout
//!   around the call) is counted as spent too (held under `trust_refusals`), and so is a paid
//!   retry that failed in transport, a refused connection included;
//! - **guards:** a cap per request, allowed networks, known assets only, one idempotency key
//!   and one credential per payment attempt (a retry of the whole request after the credential
//!   was sent is refused, [`PaymentError::AlreadySent`], never paid twice), a timeout on the
//!   paid retry, a challenge that changed between the 402 and the paid retry never paid again,
//!   only the origin called paid (a 402 reached by a redirect elsewhere is refused), an x402
//!   payment never valid longer than its approval (`maxTimeoutSeconds`, required), an expired MPP
//!   challenge never paid, an MPP `session` approved for the deposit it may lock
//!   (`suggestedDeposit`) and recorded for the unit a request spends, and a 402 body read to
//!   64 KiB at most (an x402 v2 challenge from its header alone).
//!
//! The crate signs nothing itself: the [`Signer`] is the app's wallet or x402/MPP client. Two
//! adapters take the payers the Rust ecosystem already has: `X402Schemes` (feature `x402-rs`:
//! x402-rs scheme clients, the ones `x402_reqwest::X402Client` registers) and `MppProvider`
//! (feature `mpp`: an `mpp` crate `PaymentProvider`).
//!
//! ```no_run
//! use conto::outbound::{Credential, Offer, PaidRequests, Signer, SignError};
//! use conto::{BoxFuture, Conto, Engine};
//!
//! struct Wallet; // the app's own payer
//! impl Signer for Wallet {
//!     fn sign<'a>(&'a self, offer: &'a Offer) -> BoxFuture<'a, Result<Credential, SignError>> {
//!         Box::pin(async move { Credential::new("payment-signature", "…base64 PaymentPayload…") })
//!     }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let conto = Conto::new(Engine::from_file("policies/example.json")?);
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(PaidRequests::builder(conto, Wallet).actor("agent-1")?.build())
//!     .build();
//! let answer = client.get("https://api.example.com/search?q=rust").send().await?;
//! # let _ = answer; Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod challenge;
#[cfg(feature = "mpp")]
pub mod mpp;
mod pay;
#[cfg(feature = "x402-rs")]
pub mod x402;

pub use challenge::{Challenge, ChallengeError, MppChallenge, Requirement, SettlementReport};
#[cfg(feature = "mpp")]
pub use mpp::MppProvider;
pub use pay::{
    Assets, Credential, Offer, PaidRequests, PaidRequestsBuilder, PayAs, PaymentError, SignError, Signer, to_amount,
};
pub use reqwest_middleware;
#[cfg(feature = "x402-rs")]
pub use x402::X402Schemes;

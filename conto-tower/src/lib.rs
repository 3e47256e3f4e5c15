//! A tower layer that puts conto-rs spend policies in front of paid HTTP routes. Use it through
//! the `conto` crate, as `conto::tower` (feature `tower`, on by default).
//!
//! Build one [`Paywall`] per app (who pays, on which rail, to whom); each paid route gets its
//! [`PaidLayer`] from [`Paywall::with_price`], so a paid route without a price cannot be
//! written. The layer pre-authorizes each request through the same pipeline as
//! `#[paid_action]` (`conto::Conto::run`); a refused request never reaches the handler. After
//! the handler answers with a 2xx or a 101 (configurable), the spend is recorded: the amount the handler
//! reported with [`Settled`], or the approved amount. Any other answer, a handler error, or a
//! client that goes away releases the approval.
//!
//! ```
//! use axum::{Router, routing::get};
//! use conto::tower::{Actor, Paid, Paywall, Price, Settled};
//! use conto::{Conto, Engine, Rail};
//!
//! #[derive(Clone)]
//! struct User {
//!     id: String, // inserted into request extensions by your auth middleware
//! }
//!
//! async fn search(paid: Paid) -> (Settled, String) {
//!     // Charge 80 % of what was approved (say, a cache hit), and report it.
//!     let charged = paid.authorization.amount.percent(80).expect("80 % of an amount is an amount");
//!     (Settled::new().amount(charged).reference("req-1"), format!("results under {}", paid.authorization.id))
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#)?);
//! let paywall = Paywall::builder(conto)
//!     .actor(Actor::extension(|user: &User| user.id.clone()))
//!     .rail(Rail::x402("https://api.example.com/search")?)
//!     .recipient("0x1111111111111111111111111111111111111111")
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/search", get(search).route_layer(paywall.with_price(Price::fixed("0.05".parse()?))))
//!     .route("/health", get(|| async { "ok" })); // free: no layer
//! # let _ = app; Ok(()) }
//! ```
//!
//! A price computed from the request ([`Price::from_request`], [`Price::json_body`]) may answer
//! `Ok(None)`: that request is free and goes straight through. A computed price of `0` is an
//! invalid payment (400), never a free pass.
//!
//! # Responses
//!
//! Every refusal is `application/problem+json` (RFC 9457) with `Cache-Control: no-store`. Its
//! `type` is `about:blank` and its `title` the status phrase (RFC 9457 §4.2.1); what happened
//! is the stable `code` member below, `detail` says it in words, and the body carries
//! `decision`, `reasons`, `violations` (for denials) and `source`.
//!
//! | `code` | outcome | status | extra |
//! |---|---|---|---|
//! | `payment-denied` | denied by policy | 403 | `violations` |
//! | `approval-required` | requires human approval | 202 | `approvalRequestId`, `expiresAt` |
//! | `authority-unavailable` | authority unavailable or too slow (fail-closed) | 503 | `Retry-After: 5` |
//! | `authority-refused` | the authority refused the service's key, scope or configuration | 500 | says what to fix; never retryable |
//! | `not-configured` | no authority configured | 500 | |
//! | `actor-missing` | no authenticated actor for the request | 401 | names the extension or header expected |
//! | `actor-unknown` | actor not provisioned to spend | 403 | never retryable |
//! | `invalid-payment` | the payment is invalid (e.g. a price of 0) | 400 | |
//! | `invalid-price` | the price could not be computed | 400 | |
//! | `body-too-large` | JSON body over the pricing limit | 413 | |
//!
//! Replace them with [`PaywallBuilder::respond_with`].
//!
//! With [`PaywallBuilder::receipt_headers`] (off by default), a recorded success carries
//! [`headers::AUTHORIZATION_ID`], [`headers::RECORDED_AMOUNT`] and, when a daily limit applies,
//! [`headers::DAILY_REMAINING`].
//!
//! # What a refusal reveals
//!
//! A refusal body speaks only of the request's own actor: its own denial reasons and violated
//! rules (with the rule's limit and the actor's current figure), its own pending approval id.
//! An unavailable authority's cause stays in the server's logs and events; the client learns
//! only to retry.
#![deny(missing_docs)]

mod extract;
mod layer;
mod operator;
mod price;
mod respond;

pub use extract::{Paid, Settled};
pub use layer::{LayerError, PaidBody, PaidLayer, PaidService, Paywall, PaywallBuilder, ResponseFuture, headers};
pub use operator::OperatorView;
pub use price::{Actor, Price, PriceError, PriceRequest};
pub use respond::{
    APPROVAL_REQUIRED_STATUS, AUTHORITY_REFUSED_STATUS, DENIED_STATUS, MISSING_ACTOR_STATUS, RETRY_AFTER_SECS, Refusal,
    Responder, UNAVAILABLE_STATUS, UNKNOWN_ACTOR_STATUS, problem,
};

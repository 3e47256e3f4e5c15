//! A tower layer that puts conto-rs spend policies in front of paid HTTP routes.
//!
//! [`PaidLayer`] pre-authorizes each paid request through the same pipeline as
//! `#[paid_action]` ([`conto_core::Conto::run`]); a refused request never reaches the handler.
//! After the handler answers with a 2xx (configurable), the spend is recorded: the amount the
//! handler reported with [`Settled`], or the approved amount. Any other answer, a handler error,
//! or a client that goes away releases the approval.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use conto_core::{Conto, Engine, Rail};
//! use conto_tower::{Actor, PaidLayer, Price};
//!
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! #[derive(Clone)]
//! struct User { id: String } // inserted into request extensions by your auth middleware
//!
//! let conto = Conto::new(Engine::from_file("policies/example.json")?);
//! let paid = PaidLayer::builder(conto)
//!     .actor(Actor::extension(|user: &User| user.id.clone()))
//!     .rail(Rail::x402("https://api.example.com/search")?)
//!     .recipient("0x1111111111111111111111111111111111111111")
//!     .price(Price::free())
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/search", get(|| async { "results" }).route_layer(paid.with_price(Price::fixed("0.05".parse()?))));
//! # Ok(()) }
//! ```
//!
//! # Responses
//!
//! Every refusal is `application/problem+json` (RFC 9457) with `Cache-Control: no-store`, and
//! carries `decision`, `reasons`, `violations` (for denials) and `source`.
//!
//! | outcome | status | extra |
//! |---|---|---|
//! | <span id="payment-denied">denied by policy</span> | 403 | `violations` |
//! | <span id="approval-required">requires human approval</span> | 202 | `approvalRequestId`, `expiresAt` |
//! | <span id="authority-unavailable">authority unavailable or too slow (fail-closed)</span> | 503 | `Retry-After: 5` |
//! | <span id="authority-refused">the authority refused the service's key, scope or configuration</span> | 500 | says what to fix; never retryable |
//! | <span id="not-configured">no authority configured for `#[paid_action]`</span> | 500 | |
//! | <span id="actor-missing">no authenticated actor for the request</span> | 401 | names the extension or header expected |
//! | <span id="actor-unknown">actor not provisioned to spend</span> | 403 | never retryable |
//! | <span id="invalid-price">price could not be computed, or invalid payment</span> | 400 | |
//! | <span id="body-too-large">JSON body over the pricing limit</span> | 413 | |
//!
//! Replace them with [`PaidLayerBuilder::respond_with`].
//!
//! With [`PaidLayerBuilder::receipt_headers`] (off by default), a recorded success carries
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
pub use layer::{LayerError, PaidBody, PaidLayer, PaidLayerBuilder, PaidService, ResponseFuture, headers};
pub use operator::OperatorView;
pub use price::{Actor, Price, PriceError, PriceRequest};
pub use respond::{
    APPROVAL_REQUIRED_STATUS, AUTHORITY_REFUSED_STATUS, DENIED_STATUS, MISSING_ACTOR_STATUS, RETRY_AFTER_SECS, Refusal,
    Responder, UNAVAILABLE_STATUS, UNKNOWN_ACTOR_STATUS, problem,
};

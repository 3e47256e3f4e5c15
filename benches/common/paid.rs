//! What the overhead benchmarks share: a settlement function bare and under `#[paid_action]`,
//! and an axum route bare and behind a `Paywall`, both deciding on the 10-policy set.

use std::hint::black_box;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use conto::tower::{Actor, Paywall, Price};
use conto::{Conto, Engine, Rail, Rejection, paid_action};

use crate::common::{RECIPIENT, SENDER, policies_for};

/// The error type of both functions.
#[derive(Debug)]
pub struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

/// The transaction hash the guarded function reports (a transfer is confirmed by one).
const TX: &str = "0x00000000000000000000000000000000000000000000000000000000000000aa";

/// The settlement body both functions share: a little real work.
async fn settle_body(n: u64) -> Result<u64, PayError> {
    Ok(black_box(n).wrapping_mul(31).rotate_left(7))
}

/// The settlement function, bare.
pub async fn bare(n: u64) -> Result<u64, PayError> {
    settle_body(n).await
}

/// The same function under `#[paid_action]`.
#[paid_action(amount = "0.01", recipient = RECIPIENT, rail = transfer(chain_id = 8453, sender = SENDER),
    actor = "agent-1", conto = conto, category = "API_PROVIDER", reference = |_: &u64| TX)]
pub async fn guarded(conto: &Conto, n: u64) -> Result<u64, PayError> {
    settle_body(n).await
}

/// A handle on an engine with `policies` policies for `agent-1`.
pub fn conto(policies: usize) -> Conto {
    Conto::new(Engine::new(policies_for(policies, vec!["agent-1".into()])))
}

/// The authenticated user, as an auth middleware would insert it.
#[derive(Clone)]
pub struct User(pub String);

/// The route bare, and the same route behind a paywall on `conto`.
pub fn routes(conto: Conto) -> (Router, Router) {
    let paid = Paywall::builder(conto)
        .actor(Actor::extension(|user: &User| user.0.clone()))
        .rail(Rail::transfer(8453, SENDER).unwrap())
        .recipient(RECIPIENT)
        .category("API_PROVIDER")
        .build()
        .unwrap()
        .with_price(Price::fixed("0.01".parse().unwrap()));
    let bare = Router::new().route("/r", get(|| async { "ok" }));
    let layered = Router::new().route("/r", get(|| async { "ok" }).route_layer(paid));
    (bare, layered)
}

/// A request from `agent-1`, the user inserted as the app's auth middleware would.
pub fn request() -> Request<Body> {
    let mut r = Request::get("/r").body(Body::empty()).unwrap();
    r.extensions_mut().insert(User("agent-1".to_owned()));
    r
}

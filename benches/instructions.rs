//! A fixed number of embedded decisions, to count instructions under callgrind: deterministic
//! where timings on a shared machine are not. Run twice with different counts and divide the
//! difference, so setup cancels out:
//!
//! ```sh
//! for n in 10000 20000; do POLICIES=10 DECISIONS=$n valgrind --tool=callgrind \
//!     --callgrind-out-file=/tmp/cg.$n target/release/deps/instructions-<hash>; done
//! ```
//!
//! `MODE` picks what runs each time: `decision` (authorize + record through the pipeline's
//! `decide_shared`, the default), `paid_action` (a `#[paid_action]` fn), `bare_fn` (the same fn
//! without the attribute), `layer` (a paid axum route's `oneshot`) or `bare_route` (the same
//! route without the layer). `benches/instructions.sh` runs them and prints instructions per
//! call. Without the variables it runs 1 000 decisions at 10 policies, as a smoke test.

use std::hint::black_box;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use conto::tower::{Actor, Paywall, Price};
use conto::{Conto, Engine, Rail, Rejection, Settlement, Verdict, paid_action};
use tower::ServiceExt;

mod common;

use common::{RECIPIENT, SENDER, intent, policies_for};

fn var(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Debug)]
struct PayError;
impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

async fn bare(n: u64) -> Result<u64, PayError> {
    Ok(black_box(n).wrapping_mul(31).rotate_left(7))
}

#[paid_action(amount = "0.01", recipient = RECIPIENT, rail = transfer(chain_id = 8453, sender = SENDER),
    actor = "agent-1", conto = conto, category = "API_PROVIDER")]
async fn guarded(conto: &Conto, n: u64) -> Result<u64, PayError> {
    Ok(black_box(n).wrapping_mul(31).rotate_left(7))
}

/// The authenticated user, as an auth middleware would insert it.
#[derive(Clone)]
struct User(String);

fn main() {
    let (policies, calls) = (var("POLICIES", 10), var("DECISIONS", 1_000));
    let mode = std::env::var("MODE").unwrap_or_else(|_| "decision".into());
    let set = policies_for(policies, vec!["agent-1".into()]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    match mode.as_str() {
        "decision" => {
            let engine = Engine::new(set);
            let shared = Arc::new(intent("agent-1"));
            for _ in 0..calls {
                let Verdict::Approved(a) = engine.decide_shared(&shared).unwrap().verdict else { panic!("approved") };
                engine.settle(&a, &Settlement::default()).unwrap();
            }
        }
        "paid_action" => {
            let conto = Conto::new(Engine::new(set));
            rt.block_on(async {
                for _ in 0..calls {
                    guarded(&conto, 7).await.unwrap();
                }
            });
        }
        "bare_fn" => rt.block_on(async {
            for _ in 0..calls {
                bare(7).await.unwrap();
            }
        }),
        "layer" | "bare_route" => {
            let route = get(|| async { "ok" });
            let router: Router = if mode == "layer" {
                let paid = Paywall::builder(Conto::new(Engine::new(set)))
                    .actor(Actor::extension(|user: &User| user.0.clone()))
                    .rail(Rail::transfer(8453, SENDER).unwrap())
                    .recipient(RECIPIENT)
                    .category("API_PROVIDER")
                    .build()
                    .unwrap()
                    .with_price(Price::fixed("0.01".parse().unwrap()));
                Router::new().route("/r", route.route_layer(paid))
            } else {
                Router::new().route("/r", route)
            };
            rt.block_on(async {
                for _ in 0..calls {
                    let mut r = Request::get("/r").body(Body::empty()).unwrap();
                    r.extensions_mut().insert(User("agent-1".to_owned()));
                    let res = router.clone().oneshot(r).await.unwrap();
                    assert!(res.status().is_success(), "{}", res.status());
                }
            });
        }
        other => panic!("MODE={other}: one of decision, paid_action, bare_fn, layer, bare_route"),
    }
    println!("{calls} calls of {mode} at {policies} policies");
}

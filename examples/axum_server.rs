//! A long-running axum server with paid routes on the embedded engine, for trying conto-rs with
//! curl. It prints example commands at start.
//!
//! ```sh
//! cargo run --example axum_server            # 127.0.0.1:3000
//! PORT=8080 cargo run --example axum_server
//! ```

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use conto::tower::{Actor, Paid, PaidLayer, Price, PriceError, Settled};
use conto::{Conto, Engine, Rail};
use serde_json::{Value, json};

const PROVIDER: &str = "0xa11ce00000000000000000000000000000000001";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let policy_file = std::env::var("CONTO_POLICIES")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/policies/example.json").to_owned());
    let engine = Engine::from_file(&policy_file)?;
    let conto = Conto::new(engine.clone());

    let paid = PaidLayer::builder(conto)
        .actor(Actor::header("x-conto-actor"))
        .rail(Rail::x402("https://search.example.com/v1/query")?)
        .recipient(PROVIDER)
        .category("API_PROVIDER")
        .price(Price::free())
        .build()?;

    let app = Router::new()
        // A fixed price per call.
        .route("/search", get(search).route_layer(paid.with_price(Price::fixed("0.50".parse()?))))
        // A price computed from the JSON body: 0.10 per requested unit.
        .route(
            "/batch",
            post(batch).route_layer(paid.with_price(Price::json_body(16 * 1024, |req| {
                let units = req
                    .json()
                    .and_then(|j| j["units"].as_u64())
                    .ok_or_else(|| PriceError::new("`units` is required"))?;
                conto::Amount::from_micros(i64::try_from(units).unwrap_or(i64::MAX).saturating_mul(100_000))
                    .map(Some)
                    .map_err(|e| PriceError::new(e.to_string()))
            }))),
        )
        // The ledger, free.
        .route(
            "/ledger/{actor}",
            get(move |Path(actor): Path<String>| {
                let engine = engine.clone();
                async move {
                    let usage = engine.usage(&actor);
                    Json(json!({
                        "actor": actor,
                        "counters": usage.counters.iter().map(|c| json!({
                            "period": c.period, "since": c.period_start.to_string(),
                            "spent": c.spent.to_string(), "reserved": c.reserved.to_string(),
                        })).collect::<Vec<_>>(),
                        "approved": usage.stats.approved,
                        "recorded": usage.stats.recorded,
                        "totalSpent": usage.stats.total_spent.to_string(),
                    }))
                }
            }),
        );

    let port = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(3000u16);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("conto-rs example server on {base}, policies from {policy_file}\n");
    println!("  curl -i -H 'x-conto-actor: agent-1' {base}/search");
    println!(
        "  curl -i -H 'x-conto-actor: agent-1' -H 'content-type: application/json' -d '{{\"units\": 30}}' {base}/batch"
    );
    println!(
        "  curl -i -H 'x-conto-actor: agent-1' -H 'content-type: application/json' -d '{{\"units\": 70}}' {base}/batch   # over the per-action limit"
    );
    println!("  curl -i {base}/search                                   # no actor: 400");
    println!("  curl -s {base}/ledger/agent-1\n");
    println!("Ctrl-C to stop.");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn search(paid: Paid) -> (Settled, Json<Value>) {
    (Settled::new().reference("0xfeed"), Json(json!({"results": ["a", "b"], "authorization": paid.authorization.id})))
}

async fn batch(paid: Paid, Json(body): Json<Value>) -> Json<Value> {
    Json(json!({"accepted": body["units"], "charged": paid.authorization.amount}))
}

//! The server `benches/loopback.sh` drives with wrk: the same handler bare (`/bare`), behind
//! a `Paywall` route on the embedded engine (`/paid`, 10 policies, limits that never deny), and
//! behind a layer that does nothing (`/layered`: what axum's `route_layer` itself costs any
//! layer, the floor under `/paid`).
//!
//! ```sh
//! cargo run --release --example bench_server   # 127.0.0.1:3999 (PORT to change)
//! ```

use axum::Router;
use axum::routing::get;
use conto::tower::{Actor, Paywall, Price};
use conto::{Conto, Engine, PolicySet, Rail};
use serde_json::json;

const RECIPIENT: &str = "0x1111111111111111111111111111111111111111";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let docs: Vec<_> = (0..10)
        .map(|i| {
            json!({"name": format!("p{i}"), "rules": [
                {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "1000", "action": "ALLOW"},
                {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "900000000", "action": "ALLOW"},
                {"ruleType": "ALLOWED_COUNTERPARTIES", "operator": "IN_LIST", "value": format!("[\"{RECIPIENT}\"]"), "action": "ALLOW"}
            ]})
        })
        .collect();
    // AGENTS=n provisions agent-1..agent-n (default 1), for a load spread over several payers.
    let agents: usize = std::env::var("AGENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    let agents: Vec<String> = (1..=agents.max(1)).map(|i| format!("agent-{i}")).collect();
    let engine = Engine::new(PolicySet::from_value(json!({"agents": agents, "policies": docs}))?);
    // A loopback benchmark target: wrk plays the trusted proxy that sets the header.
    let paid = Paywall::builder(Conto::new(engine))
        .actor(Actor::trusted_header("x-conto-actor"))
        .rail(Rail::x402("https://api.example.com/search")?)
        .recipient(RECIPIENT)
        .build()?
        .with_price(Price::fixed("0.000001".parse()?));
    let app = Router::new()
        .route("/bare", get(|| async { "ok" }))
        .route("/layered", get(|| async { "ok" }).route_layer(tower_layer::Identity::new()))
        .route("/paid", get(|| async { "ok" }).route_layer(paid));
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(3999);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("bench_server on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

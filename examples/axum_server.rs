//! A long-running axum server with paid routes on the embedded engine, for trying conto-rs with
//! curl. It prints example commands at start.
//!
//! ```sh
//! cargo run --example axum_server            # 127.0.0.1:3000
//! PORT=8080 cargo run --example axum_server
//! ```

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use conto::tower::{Actor, Paid, Paywall, Price, PriceError, Settled};
use conto::{Conto, Engine, Rail};
use serde_json::{Value, json};

const PROVIDER: &str = "0xa11ce00000000000000000000000000000000001";

/// The caller, as the app's authentication established it.
#[derive(Clone)]
struct User {
    id: String,
}

/// Demo authentication: `Authorization: Bearer demo-token-agent-1` (or `-agent-2`) is that
/// user. A real app puts its session, JWT or API-key check here; the paid layer only ever reads
/// the `User` it inserts, never a header the client chose.
async fn authenticate(mut req: Request, next: Next) -> Response {
    let token =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if let Some(id) = token.and_then(|t| t.strip_prefix("demo-token-")).filter(|id| ["agent-1", "agent-2"].contains(id))
    {
        let user = User { id: id.to_owned() };
        req.extensions_mut().insert(user);
    }
    next.run(req).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let policy_file = std::env::var("CONTO_POLICIES")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/example.json").to_owned());
    let engine = Engine::from_file(&policy_file)?;
    let conto = Conto::new(engine.clone());

    let paid = Paywall::builder(conto)
        .actor(Actor::extension(|user: &User| user.id.clone()))
        .receipt_headers()
        .rail(Rail::x402("https://search.example.com/v1/query")?)
        .recipient(PROVIDER)
        .category("API_PROVIDER")
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
        // The caller's own ledger, free (never another actor's).
        .route(
            "/ledger",
            get(move |user: Option<Extension<User>>| {
                let engine = engine.clone();
                async move {
                    let Some(Extension(user)) = user else {
                        return Json(json!({"error": "authenticate with a demo token"}));
                    };
                    let usage = engine.usage(&user.id);
                    Json(json!({
                        "actor": user.id,
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
        )
        .layer(middleware::from_fn(authenticate));

    let port = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(3000u16);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("conto-rs example server on {base}, policies from {policy_file}\n");
    let auth = "-H 'authorization: Bearer demo-token-agent-1'";
    println!("  curl -i {auth} {base}/search");
    println!("  curl -i {auth} -H 'content-type: application/json' -d '{{\"units\": 30}}' {base}/batch");
    println!(
        "  curl -i {auth} -H 'content-type: application/json' -d '{{\"units\": 70}}' {base}/batch   # over the per-action limit"
    );
    println!("  curl -i -H 'x-conto-actor: agent-1' {base}/search   # a header is no identity: 401");
    println!("  curl -s {auth} {base}/ledger\n");
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

use conto::{paid_action, Conto, Decimal, Engine, Rejection};

#[derive(Debug)]
struct PayError(#[allow(dead_code)] Rejection);

impl From<Rejection> for PayError {
    fn from(r: Rejection) -> Self {
        PayError(r)
    }
}

#[paid_action(
    amount = price,
    recipient = to,
    rail = x402(resource_url = url, facilitator = "https://x402.org/facilitator", scheme = "exact"),
    actor = "agent-1",
    conto = conto,
    category = "API_PROVIDER",
    purpose = "search",
    recipient_name = "Search API",
    context = serde_json::json!({"run": 7}),
    idempotency_key = format!("run-7-{url}"),
)]
async fn buy(conto: &Conto, url: &str, to: &str, price: Decimal) -> Result<String, PayError> {
    Ok(format!("{url} {to} {price}"))
}

#[tokio::main]
async fn main() {
    let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap());
    let out = buy(&conto, "https://api.example.com/q", "0x1111111111111111111111111111111111111111", Decimal::ONE).await;
    assert!(out.is_ok());
}

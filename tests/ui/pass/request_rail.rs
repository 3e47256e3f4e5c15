use conto::{paid_action, Conto, Engine, Rejection};

#[derive(Debug)]
struct PayError(#[allow(dead_code)] Rejection);

impl From<Rejection> for PayError {
    fn from(r: Rejection) -> Self {
        PayError(r)
    }
}

/// A card checkout settled by the app's processor; Conto only decides (`payments/request`).
#[paid_action(
    amount = "12.50",
    recipient = "0x616e7468726f7069632d73686f7070696e672d61",
    rail = request(wallet_id = "wal_shared"),
    actor = "agent-1",
    conto = conto,
    category = "MERCHANDISE",
)]
async fn checkout(conto: &Conto) -> Result<&'static str, PayError> {
    Ok("charged by the card processor")
}

#[paid_action(amount = 1, recipient = "0x616e7468726f7069632d73686f7070696e672d61", rail = request(), actor = "agent-1", conto = conto)]
async fn without_wallet(conto: &Conto) -> Result<(), PayError> {
    Ok(())
}

#[tokio::main]
async fn main() {
    let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap());
    assert_eq!(checkout(&conto).await.unwrap(), "charged by the card processor");
    without_wallet(&conto).await.unwrap();
}

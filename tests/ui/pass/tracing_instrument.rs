use conto::{paid_action, Conto, Engine, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

#[tracing::instrument(skip(conto))]
#[paid_action(amount = amount, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn outer_instrument(conto: &Conto, amount: u32) -> Result<u32, PayError> {
    tracing::info!("paying");
    Ok(amount)
}

#[paid_action(amount = amount, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
#[tracing::instrument(skip(conto), err(Debug))]
async fn inner_instrument(conto: &Conto, amount: u32) -> Result<u32, PayError> {
    Ok(amount)
}

#[tokio::main]
async fn main() {
    let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap());
    assert_eq!(outer_instrument(&conto, 2).await.unwrap(), 2);
    assert_eq!(inner_instrument(&conto, 3).await.unwrap(), 3);
}

//! The old argument name `authorizer` still works (with a deprecation warning).
use conto::{paid_action, Conto, Engine, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

#[allow(deprecated)]
#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", authorizer = conto)]
async fn pay(conto: &Conto) -> Result<u8, PayError> {
    Ok(1)
}

#[tokio::main]
async fn main() {
    let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap());
    assert_eq!(pay(&conto).await.unwrap(), 1);
}

//! Inner attributes at the top of the body stay inside the function.
#![deny(unused_variables)]
use conto::{paid_action, Conto, Engine, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn pay(conto: &Conto) -> Result<u8, PayError> {
    #![allow(unused_variables)]
    let unused = 3;
    Ok(1)
}

#[tokio::main]
async fn main() {
    let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap());
    assert_eq!(pay(&conto).await.unwrap(), 1);
}

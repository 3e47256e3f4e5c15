extern crate conto as my_conto;

use my_conto::{paid_action, Conto, Engine, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

#[paid_action(crate = my_conto, amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn pay(conto: &Conto) -> Result<(), PayError> {
    Ok(())
}

#[paid_action(crate = "my_conto", amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn pay_str(conto: &Conto) -> Result<(), PayError> {
    Ok(())
}

#[tokio::main]
async fn main() {
    let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap());
    pay(&conto).await.unwrap();
    pay_str(&conto).await.unwrap();
}

use std::time::Duration;

use conto::{paid_action, Conto, Decimal, Engine, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

struct Receipt {
    charged: Decimal,
    tx: Option<String>,
}

#[paid_action(amount = 2, rail = card(merchant = "Acme"), actor = "agent-1",
    settled_amount = |r| r.charged, reference = |r| r.tx.clone(), on_approval = wait(30))]
async fn pay() -> Result<Receipt, PayError> {
    Ok(Receipt { charged: Decimal::ONE, tx: Some("ch_1".into()) })
}

#[paid_action(amount = 2, rail = card(merchant = "Acme"), actor = "agent-1",
    on_approval = wait(Duration::from_millis(1500)))]
async fn pay_duration() -> Result<(), PayError> {
    Ok(())
}

#[paid_action(amount = 2, rail = card(merchant = "Acme"), actor = "agent-1", on_approval = reject)]
async fn pay_reject() -> Result<(), PayError> {
    Ok(())
}

#[tokio::main]
async fn main() {
    conto::install_default(Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap())).unwrap();
    assert_eq!(pay().await.unwrap().charged, Decimal::ONE);
    pay_duration().await.unwrap();
    pay_reject().await.unwrap();
}

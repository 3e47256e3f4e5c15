//! `approval = name` lets the body see the authorization it runs under; `check_send = true`
//! accepts a body whose future is `Send`.
use conto::{paid_action, Authorization, Conto, Engine, Rejection};

#[derive(Debug)]
struct PayError(#[allow(dead_code)] Rejection);

impl From<Rejection> for PayError {
    fn from(r: Rejection) -> Self {
        PayError(r)
    }
}

#[paid_action(amount = "2.50", rail = card(merchant = "Acme"), actor = "agent-1", conto = conto,
    approval = auth, check_send = true)]
async fn pay(conto: &Conto) -> Result<(String, String), PayError> {
    let auth: &Authorization = &auth;
    tokio::task::yield_now().await;
    Ok((auth.id.clone(), auth.amount.to_string()))
}

fn assert_send<T: Send>(_: &T) {}

#[tokio::main]
async fn main() {
    let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap());
    let fut = pay(&conto);
    assert_send(&fut);
    let (id, amount) = fut.await.unwrap();
    assert!(!id.is_empty());
    assert_eq!(amount, "2.5");
}

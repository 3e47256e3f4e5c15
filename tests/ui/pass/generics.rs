use std::fmt::Display;

use conto::{paid_action, Conto, Decimal, Engine, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

trait Provider {
    fn price(&self) -> Decimal;
}

struct Fixed;

impl Provider for Fixed {
    fn price(&self) -> Decimal {
        Decimal::new(250, 2)
    }
}

#[paid_action(amount = provider.price(), recipient = to,
    rail = mpp(resource_url = url, session_id = "s1", deposit = "5", intent = "session", method = "GET"),
    actor = actor.to_string(), conto = conto)]
async fn pay<'a, P, A>(conto: &Conto, provider: &'a P, actor: A, url: &str, to: &str) -> Result<&'a P, PayError>
where
    P: Provider + Sync,
    A: Display + Send,
{
    Ok(provider)
}

#[tokio::main]
async fn main() {
    let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap());
    let out = pay(&conto, &Fixed, "agent-1", "https://api.example.com/s", "0x1111111111111111111111111111111111111111").await;
    assert_eq!(out.unwrap().price(), Decimal::new(25, 1));
}

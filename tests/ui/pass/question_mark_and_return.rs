use conto::{paid_action, Conto, Engine, Rejection};

#[derive(Debug)]
enum PayError {
    Rejected,
    Parse,
}

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError::Rejected
    }
}

impl From<std::num::ParseIntError> for PayError {
    fn from(_: std::num::ParseIntError) -> Self {
        PayError::Parse
    }
}

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn pay(conto: &Conto, input: &str) -> Result<u32, PayError> {
    if input.is_empty() {
        return Ok(0);
    }
    let n: u32 = input.parse()?;
    Ok(n)
}

#[tokio::main]
async fn main() {
    let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap());
    assert_eq!(pay(&conto, "").await.unwrap(), 0);
    assert!(matches!(pay(&conto, "x").await, Err(PayError::Parse)));
    assert_eq!(pay(&conto, "4").await.unwrap(), 4);
}

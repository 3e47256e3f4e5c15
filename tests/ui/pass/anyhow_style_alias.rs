use conto::{paid_action, Conto, Engine, Rejection};

#[derive(Debug)]
struct AppError;

impl From<Rejection> for AppError {
    fn from(_: Rejection) -> Self {
        AppError
    }
}

type Result<T> = std::result::Result<T, AppError>;

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn pay(conto: &Conto) -> Result<u8> {
    Ok(1)
}

#[tokio::main]
async fn main() {
    let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap());
    assert_eq!(pay(&conto).await.unwrap(), 1);
}

use conto::{paid_action, Conto, Engine, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

trait Settle {
    async fn settle(&self, amount: u64) -> Result<(), PayError>;
}

struct Card {
    conto: Conto,
}

impl Settle for Card {
    #[paid_action(amount = amount, rail = card(merchant = "Acme", mcc = "5411"), actor = "agent-1", conto = self.conto)]
    async fn settle(&self, amount: u64) -> Result<(), PayError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let card = Card { conto: Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap()) };
    card.settle(3).await.unwrap();
}

use std::sync::Arc;

use conto::{paid_action, Conto, Engine, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

struct Service {
    conto: Conto,
    paid: u32,
}

impl Service {
    #[paid_action(amount = 1, recipient = "0x1111111111111111111111111111111111111111",
        rail = transfer(chain_id = 8453, sender = "0x2222222222222222222222222222222222222222"),
        actor = "agent-1", conto = self.conto, reference = |_: &u32| "0xfeed")]
    async fn by_ref(&self) -> Result<u32, PayError> {
        Ok(self.paid)
    }

    #[paid_action(amount = 1, recipient = "0x1111111111111111111111111111111111111111",
        rail = transfer(chain_id = 8453, sender = "0x2222222222222222222222222222222222222222"),
        actor = "agent-1", conto = self.conto, reference = |_: &u32| "0xfeed")]
    async fn by_mut(&mut self) -> Result<u32, PayError> {
        self.paid += 1;
        Ok(self.paid)
    }

    #[paid_action(amount = 1, recipient = "0x1111111111111111111111111111111111111111",
        rail = transfer(chain_id = 8453, sender = "0x2222222222222222222222222222222222222222"),
        actor = "agent-1", conto = self.conto, reference = |_: &u32| "0xfeed")]
    async fn by_arc(self: Arc<Self>) -> Result<u32, PayError> {
        Ok(self.paid)
    }
}

#[tokio::main]
async fn main() {
    let mut s = Service { conto: Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap()), paid: 0 };
    s.by_ref().await.unwrap();
    s.by_mut().await.unwrap();
    Arc::new(s).by_arc().await.unwrap();
}

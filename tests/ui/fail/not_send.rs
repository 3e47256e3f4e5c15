use std::rc::Rc;

use conto::{paid_action, Conto, Rejection};

struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto, check_send = true)]
async fn pay(conto: &Conto) -> Result<u8, PayError> {
    let shared = Rc::new(1u8);
    tokio::task::yield_now().await;
    Ok(*shared)
}

fn main() {}

use conto::{paid_action, Conto, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

#[paid_action(amount = 1, recipient = "0x1111111111111111111111111111111111111111", rail = x402(facilitator = "f"), actor = "agent-1", conto = conto)]
async fn pay(conto: &Conto) -> Result<(), PayError> {
    Ok(())
}

fn main() {}

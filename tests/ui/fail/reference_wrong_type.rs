use conto::{paid_action, Conto, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

struct Receipt {
    block: u64,
}

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto,
    reference = |r| r.block)]
async fn pay(conto: &Conto) -> Result<Receipt, PayError> {
    Ok(Receipt { block: 1 })
}

fn main() {}

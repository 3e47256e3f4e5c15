use conto::{paid_action, Conto, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

struct Receipt {
    ok: bool,
}

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto,
    settled_amount = |r| r.ok)]
async fn pay(conto: &Conto) -> Result<Receipt, PayError> {
    Ok(Receipt { ok: true })
}

fn main() {}

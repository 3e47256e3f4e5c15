use conto::{paid_action, Conto, Rejection};

struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto, approval = "auth")]
async fn pay(conto: &Conto) -> Result<u8, PayError> {
    Ok(1)
}

fn main() {}

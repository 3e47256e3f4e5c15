use conto::{paid_action, Conto};

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn pay(conto: &Conto) -> Result<u8, String> {
    Ok(1)
}

fn main() {}

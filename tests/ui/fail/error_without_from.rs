use conto::{paid_action, Conto};

#[derive(Debug)]
struct WalletError;

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn pay(conto: &Conto) -> Result<(), WalletError> {
    Ok(())
}

fn main() {}

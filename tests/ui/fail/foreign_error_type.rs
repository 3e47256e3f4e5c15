// A foreign error type (`String`, `std::fmt::Error`, ...) cannot get `From<Rejection>` in the
// user's crate: the note says what to return instead.
use conto::{paid_action, Conto};

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn pay(conto: &Conto) -> Result<u8, std::fmt::Error> {
    Ok(1)
}

fn main() {}

#![deny(deprecated)]
use conto::{paid_action, Conto, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

#[paid_action(amount = 1, recipient = "0x1111111111111111111111111111111111111111",
    rail = transfer(chain_id = 8453, sender = "0x2222222222222222222222222222222222222222"),
    actor = "agent-1", conto = conto)]
async fn pay(conto: &Conto) -> Result<String, PayError> {
    Ok("0xfeed".to_owned())
}

fn main() {}

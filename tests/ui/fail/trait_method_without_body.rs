use conto::{paid_action, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

trait Settle {
    #[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1")]
    async fn settle(&self) -> Result<(), PayError>;
}

fn main() {}

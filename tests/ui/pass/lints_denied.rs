#![deny(warnings, unused, clippy::pedantic, missing_docs)]
//! A crate that denies warnings.

use conto::{paid_action, Conto, Rejection};

/// The error.
#[derive(Debug)]
pub struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

/// Pays.
///
/// # Errors
/// When the payment is not allowed.
#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
pub async fn pay(conto: &Conto) -> Result<(), PayError> {
    Ok(())
}

fn main() {
    let _ = pay;
}

use conto::paid_action;

#[paid_action(amount = 1, rail = card(merchant = "Acme"))]
struct Payment {
    amount: u64,
}

fn main() {}

use conto::paid_action;

#[paid_action(amount = 1, rail = card(merchant = "Acme"))]
const PRICE: u64 = 1;

fn main() {}

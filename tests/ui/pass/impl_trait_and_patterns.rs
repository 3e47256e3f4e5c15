use conto::{paid_action, Conto, Engine, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

struct Order {
    cents: u64,
    to: String,
}

#[paid_action(amount = conto::Decimal::new(cents as i64, 2), recipient = to, rail = x402(resource_url = "https://api.example.com/o"),
    actor = "agent-1", conto = conto)]
async fn pay(conto: &Conto, Order { cents, to }: Order, memo: impl AsRef<str> + Send, (a, b): (u8, u8)) -> Result<u64, PayError> {
    let _ = memo.as_ref();
    Ok(cents + u64::from(a) + u64::from(b))
}

#[tokio::main]
async fn main() {
    let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap());
    let order = Order { cents: 150, to: "0x1111111111111111111111111111111111111111".into() };
    assert_eq!(pay(&conto, order, "m", (1, 2)).await.unwrap(), 153);
}

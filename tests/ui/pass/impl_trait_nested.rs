//! `impl Trait` anywhere in the return type, also nested, keeps compiling.
use std::fmt::Display;

use conto::{paid_action, Conto, Engine, Rejection};

#[derive(Debug)]
struct PayError;

impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn receipt(conto: &Conto) -> Result<Vec<Box<dyn Display + Send>>, PayError> {
    Ok(vec![Box::new("r1")])
}

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn shown(conto: &Conto) -> Result<Option<impl Display + use<>>, PayError> {
    Ok(Some(7u8))
}

// A type whose text contains "impl " without being `impl Trait`.
#[allow(non_camel_case_types)]
struct impl_ {
    n: u8,
}

#[paid_action(amount = 1, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn named(conto: &Conto) -> Result<impl_, PayError> {
    Ok(impl_ { n: 2 })
}

#[tokio::main]
async fn main() {
    let conto = Conto::new(Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap());
    assert_eq!(receipt(&conto).await.unwrap().len(), 1);
    assert_eq!(shown(&conto).await.unwrap().unwrap().to_string(), "7");
    assert_eq!(named(&conto).await.unwrap().n, 2);
}

#![allow(dead_code)]

use std::path::PathBuf;

use conto_client::ContoClient;
use conto_core::{Conto, PaymentIntent, Rail};
use conto_local::{Config, Running};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

pub const RECIPIENT: &str = "0x1111111111111111111111111111111111111111";
pub const SENDER: &str = "0x2222222222222222222222222222222222222222";
pub const TX: &str = "0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

pub const ALL_SCOPES: &[&str] =
    &["payments:request", "payments:approve", "payments:confirm", "policies:read", "analytics:read"];

pub async fn start(db: Option<PathBuf>, org_key: &str) -> Running {
    conto_local::start(Config {
        port: 0,
        db,
        org_key: Some(org_key.to_owned()),
        rate_limit: 100_000,
        ..Default::default()
    })
    .await
    .expect("conto-local starts")
}

/// Org-side calls, as a Conto user provisions.
pub struct Org {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Org {
    pub fn new(server: &Running) -> Self {
        Self { base: server.url(), key: server.org_key().expose_secret().to_owned(), http: reqwest::Client::new() }
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp =
            self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.key).json(&body).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        let resp =
            self.http.patch(format!("{}{path}", self.base)).bearer_auth(&self.key).json(&body).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.key).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Creates an agent and an SDK key with `scopes`; returns the key.
    pub async fn agent(&self, id: &str, scopes: &[&str]) -> String {
        let (status, _) = self.post("/api/agents", json!({"id": id, "name": id})).await;
        assert_eq!(status, 201);
        let (status, key) =
            self.post(&format!("/api/agents/{id}/sdk-keys"), json!({"name": "test", "scopes": scopes})).await;
        assert_eq!(status, 201, "{key}");
        let key = key["key"].as_str().unwrap().to_owned();
        assert!(key.starts_with("conto_agent_") && key.len() == 12 + 64);
        key
    }

    pub async fn policy(&self, doc: Value) -> Value {
        let (status, body) = self.post("/api/policies", doc).await;
        assert_eq!(status, 201, "{body}");
        body
    }
}

pub fn client(server: &Running, key: &str) -> ContoClient {
    ContoClient::builder().base_url(server.url()).sdk_key(key).any_actor().build().unwrap()
}

pub fn conto(server: &Running, key: &str) -> Conto {
    Conto::new(client(server, key))
}

pub fn caps() -> Value {
    json!({"name": "caps", "priority": 90, "scope": "all", "rules": [
        {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "100", "action": "ALLOW"},
        {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "150", "action": "ALLOW"},
        {"ruleType": "REQUIRE_APPROVAL_ABOVE", "operator": "GT", "value": "80", "action": "REQUIRE_APPROVAL"}
    ]})
}

pub fn transfer(actor: &str, amount: &str) -> PaymentIntent {
    PaymentIntent::builder(actor, amount, Rail::transfer(8453, SENDER).unwrap()).recipient(RECIPIENT).build().unwrap()
}

pub fn x402(actor: &str, amount: &str) -> PaymentIntent {
    PaymentIntent::builder(actor, amount, Rail::x402("https://api.example.com/search").unwrap())
        .recipient(RECIPIENT)
        .build()
        .unwrap()
}

pub fn mpp(actor: &str, amount: &str) -> PaymentIntent {
    let mut rail = Rail::mpp("https://api.example.com/stream").unwrap();
    if let Rail::Mpp { session_id, .. } = &mut rail {
        *session_id = Some("s1".into());
    }
    PaymentIntent::builder(actor, amount, rail).recipient(RECIPIENT).build().unwrap()
}

pub fn card(actor: &str, amount: &str) -> PaymentIntent {
    let rail = Rail::Card { card_id: Some("card_1".into()), merchant: "Acme".into(), mcc: Some("5411".into()) };
    PaymentIntent::builder(actor, amount, rail).build().unwrap()
}

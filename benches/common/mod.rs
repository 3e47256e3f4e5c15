//! What the benchmarks share: the policy sets and the intent they decide on.

use conto::{PaymentIntent, PolicySet, Rail};
use serde_json::{Value, json};

pub const RECIPIENT: &str = "0x1111111111111111111111111111111111111111";
pub const SENDER: &str = "0x2222222222222222222222222222222222222222";

/// `n` active policies, each with a per-action cap, a daily limit, a category allowlist and a
/// counterparty allowlist (limits high enough never to deny), for `agents`.
pub fn policies_for(n: usize, agents: Vec<String>) -> PolicySet {
    PolicySet::from_value(json!({"agents": agents, "policies": policy_docs(n)})).unwrap()
}

/// The documents of [`policies_for`]'s policies, for a benchmark that adds to them.
pub fn policy_docs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"name": format!("p{i}"), "priority": (i % 100) as i64, "rules": [
                {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "1000", "action": "ALLOW"},
                {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "900000000", "action": "ALLOW"},
                {"ruleType": "ALLOWED_CATEGORIES", "operator": "IN_LIST", "value": "[\"API_PROVIDER\",\"CLOUD\"]", "action": "ALLOW"},
                {"ruleType": "ALLOWED_COUNTERPARTIES", "operator": "IN_LIST", "value": format!("[\"{RECIPIENT}\"]"), "action": "ALLOW"}
            ]})
        })
        .collect()
}

/// A transfer of 0.01 by `actor`, approved by every policy set above.
pub fn intent(actor: &str) -> PaymentIntent {
    PaymentIntent::builder(actor, "0.01", Rail::transfer(8453, SENDER).unwrap())
        .recipient(RECIPIENT)
        .category("API_PROVIDER")
        .idempotency_key("bench")
        .build()
        .unwrap()
}

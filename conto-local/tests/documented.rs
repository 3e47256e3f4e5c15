//! conto-local answers as Conto's API reference documents (conto-api.md): the rate-limit
//! headers on every response, times as Conto writes them, `/execute`'s refusals by the
//! request's state, a missing field named as missing, the policy object's defaults and its
//! long-form assignments, and the approval-request list's `type` and `limit`.

mod common;

use common::*;
use serde_json::{Value, json};

struct Caller {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Caller {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let resp = self.send(method, path, body).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
}

async fn server(org_rate_limit: u32, approval_ttl_secs: Option<i64>) -> conto_local::Running {
    conto_local::start(conto_local::Config {
        port: 0,
        org_key: Some("conto_org_test".into()),
        rate_limit: 100_000,
        org_rate_limit,
        approval_ttl: approval_ttl_secs.map(conto_core::jiff::SignedDuration::from_secs),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// An agent with every payment scope, `execute` included, under [`caps`].
async fn agent(server: &conto_local::Running) -> Caller {
    let org = Org::new(server);
    let mut scopes = ALL_SCOPES.to_vec();
    scopes.push("payments:execute");
    let key = org.agent("agent-1", &scopes).await;
    org.policy(caps()).await;
    Caller { base: server.url(), key, http: reqwest::Client::new() }
}

/// JavaScript's `toISOString`, as Conto writes times: `2025-03-19T12:10:00.000Z`.
fn is_conto_time(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && b[20..23].iter().all(u8::is_ascii_digit)
        && text.parse::<conto_core::jiff::Timestamp>().is_ok()
}

#[tokio::test]
async fn every_response_carries_the_rate_limit_headers_and_the_org_key_has_its_own_limit() {
    let server = server(3, None).await;
    let http = reqwest::Client::new();
    // No key, an unknown route: nothing was counted, the whole limit is left.
    for path in ["/api/sdk/wallets", "/no/such/route", "/api/agents"] {
        let resp = http.get(format!("{}{path}", server.url())).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{path}: {}", resp.status());
        let h = resp.headers();
        assert_eq!(h.get("x-ratelimit-remaining").map(|v| v.to_str().unwrap()), Some("100000"), "{path}: {h:?}");
        assert!(is_conto_time(h["x-ratelimit-reset"].to_str().unwrap()), "{path}: {h:?}");
    }
    // The org key's own window (Conto's dashboard limit, 100 a minute; 3 here), counted down,
    // then refused with 429 and Retry-After.
    let org = Caller { base: server.url(), key: "conto_org_test".into(), http };
    let mut left = Vec::new();
    for _ in 0..3 {
        let resp = org.send(reqwest::Method::GET, "/api/agents", None).await;
        assert_eq!(resp.status(), 200);
        left.push(resp.headers()["x-ratelimit-remaining"].to_str().unwrap().to_owned());
    }
    assert_eq!(left, ["2", "1", "0"]);
    let refused = org.send(reqwest::Method::POST, "/api/agents", Some(json!({"id": "late", "name": "late"}))).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"), "{:?}", refused.headers());
    assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
    let wait = refused.headers()["retry-after"].to_str().unwrap().to_owned();
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    // Conto's skill shows the message only: it says how long to wait.
    assert!(body["message"].as_str().unwrap().ends_with(&format!("retry in {wait} s")), "{body}");
}

#[tokio::test]
async fn times_are_written_as_conto_writes_them() {
    let server = server(100, None).await;
    let sdk = agent(&server).await;
    let approve = json!({"amount": 5, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 8453});
    let resp = sdk.send(reqwest::Method::POST, "/api/sdk/payments/approve", Some(approve)).await;
    let reset = resp.headers()["x-ratelimit-reset"].to_str().unwrap().to_owned();
    let approved: Value = resp.json().await.unwrap();
    assert!(is_conto_time(&reset), "{reset}");
    assert!(is_conto_time(approved["expiresAt"].as_str().unwrap()), "{approved}");
    let (_, key) =
        Org::new(&server).post("/api/agents/agent-1/sdk-keys", json!({"name": "second", "expiresInDays": 30})).await;
    assert!(is_conto_time(key["expiresAt"].as_str().unwrap()), "{key}");
    let (_, budget) = sdk.get("/api/sdk/x402/budget").await;
    let counters = budget["counters"].as_array().unwrap();
    assert!(!counters.is_empty(), "the approval's daily counter: {budget}");
    for counter in counters {
        assert!(is_conto_time(counter["since"].as_str().unwrap()), "{budget}");
    }
}

#[tokio::test]
async fn execute_refuses_by_the_requests_state_in_contos_codes() {
    // Approvals live 3 s here: long enough for the live case below on a loaded machine.
    let server = server(100, Some(3)).await;
    let sdk = agent(&server).await;
    let request = |amount: u32| json!({"amount": amount, "recipientAddress": RECIPIENT, "purpose": "api"});
    let execute = |id: &str| format!("/api/sdk/payments/{id}/execute");

    let (status, body) = sdk.post(&execute("req_unknown"), json!({})).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")), "{body}");

    let (_, denied) = sdk.post("/api/sdk/payments/request", request(120)).await;
    assert_eq!(denied["status"], "DENIED");
    let (status, body) = sdk.post(&execute(denied["requestId"].as_str().unwrap()), json!({})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_STATUS")), "{body}");

    let (_, pending) = sdk.post("/api/sdk/payments/request", request(90)).await;
    assert_eq!(pending["status"], "REQUIRES_APPROVAL");
    let (status, body) = sdk.post(&execute(pending["requestId"].as_str().unwrap()), json!({})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_STATUS")), "{body}");

    // Approved and live: conto-local holds no managed wallet, Conto's answer for an external one.
    let (_, approved) = sdk.post("/api/sdk/payments/request", request(5)).await;
    assert_eq!(approved["status"], "APPROVED");
    let id = approved["requestId"].as_str().unwrap().to_owned();
    let (status, body) = sdk.post(&execute(&id), json!({})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("EXTERNAL_WALLET")), "{body}");

    // Its approval lapsed: EXPIRED.
    tokio::time::sleep(std::time::Duration::from_millis(3_200)).await;
    let (status, body) = sdk.post(&execute(&id), json!({})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("EXPIRED")), "{body}");
}

#[tokio::test]
async fn a_missing_recipient_is_named_as_missing_and_a_malformed_one_as_invalid() {
    let server = server(100, None).await;
    let sdk = agent(&server).await;
    let cases = [
        ("/api/sdk/payments/approve", json!({"amount": 5, "senderAddress": SENDER}), "VALIDATION_ERROR"),
        ("/api/sdk/payments/request", json!({"amount": 5}), "VALIDATION_ERROR"),
        ("/api/sdk/x402/pre-authorize", json!({"amount": 1, "resourceUrl": "https://a.example/x"}), "VALIDATION_ERROR"),
        ("/api/sdk/payments/request", json!({"amount": 5, "recipientAddress": "0x12"}), "INVALID_ADDRESS"),
    ];
    for (path, body, code) in cases {
        let (status, err) = sdk.post(path, body.clone()).await;
        assert_eq!((status, err["code"].as_str()), (400, Some(code)), "{path} {body}: {err}");
        assert!(err["message"].as_str().unwrap().contains("recipientAddress"), "the field named: {err}");
    }
    // A malformed sender is named as the sender, not the recipient.
    let bad_sender = json!({"amount": 5, "recipientAddress": RECIPIENT, "senderAddress": "nope", "chainId": 8453});
    let (status, err) = sdk.post("/api/sdk/payments/approve", bad_sender).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("INVALID_ADDRESS")), "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(message.starts_with("`senderAddress`") && !message.contains("recipient"), "{err}");
}

#[tokio::test]
async fn a_policy_is_shown_with_contos_defaults_and_its_assignments_in_long_form() {
    let server = server(100, None).await;
    let org = Org::new(&server);
    org.agent("agent-1", ALL_SCOPES).await;
    org.agent("agent-2", ALL_SCOPES).await;
    let rules = json!([{"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "100", "action": "ALLOW"}]);
    let created = org.policy(json!({"name": "cap", "agentIds": ["agent-1"], "rules": rules})).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!((&created["isActive"], &created["priority"]), (&json!(true), &json!(50)), "{created}");
    assert_eq!(created["agentPolicies"], json!([{"agentId": "agent-1", "policyId": id}]), "{created}");
    let (_, listed) = org.get("/api/policies").await;
    let shown = listed["policies"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap().clone();
    assert_eq!(shown["agentPolicies"][0]["agentId"], "agent-1", "{listed}");
    // What was sent stands: an inactive policy stays inactive, its own priority kept.
    let off = org.policy(json!({"name": "off", "isActive": false, "priority": 7, "rules": rules})).await;
    assert_eq!((&off["isActive"], &off["priority"]), (&json!(false), &json!(7)), "{off}");
    // New `agentIds` replace the assignment, whatever long form was read back with them.
    let patch = json!({"agentIds": ["agent-2"], "agentPolicies": created["agentPolicies"]});
    let (status, moved) = org
        .http
        .patch(format!("{}/api/policies/{id}", server.url()))
        .bearer_auth(&org.key)
        .json(&patch)
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200);
    let moved: Value = moved.json().await.unwrap();
    assert_eq!(moved["agentPolicies"], json!([{"agentId": "agent-2", "policyId": id}]), "{moved}");
    let (_, assigned) = org.get("/api/agents/agent-1/policies").await;
    assert!(assigned["policies"].as_array().unwrap().iter().all(|p| p["policyId"] != id), "{assigned}");
}

#[tokio::test]
async fn approval_requests_are_listed_newest_first_by_type_and_limit() {
    let server = server(100, None).await;
    let sdk = agent(&server).await;
    let request = |amount: u32| json!({"amount": amount, "recipientAddress": RECIPIENT, "purpose": "api"});
    let (_, first) = sdk.post("/api/sdk/payments/request", request(81)).await;
    let (_, second) = sdk.post("/api/sdk/payments/request", request(82)).await;
    assert_eq!((&first["status"], &second["status"]), (&json!("REQUIRES_APPROVAL"), &json!("REQUIRES_APPROVAL")));
    let ids = |list: &Value| -> Vec<Value> {
        list["requests"].as_array().unwrap().iter().map(|r| r["approvalRequestId"].clone()).collect()
    };
    let (_, all) = sdk.get("/api/sdk/approval-requests?type=payment&limit=100").await;
    assert_eq!(ids(&all), [second["approvalRequestId"].clone(), first["approvalRequestId"].clone()], "{all}");
    let (_, newest) = sdk.get("/api/sdk/approval-requests?limit=1").await;
    assert_eq!(ids(&newest), [second["approvalRequestId"].clone()], "{newest}");
    let (_, other) = sdk.get("/api/sdk/approval-requests?type=card").await;
    assert!(ids(&other).is_empty(), "{other}");
    for bad in ["limit=0", "limit=ten", "limit=-1", "limit=101"] {
        let (status, err) = sdk.get(&format!("/api/sdk/approval-requests?{bad}")).await;
        assert_eq!((status, err["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{bad}: {err}");
    }
}

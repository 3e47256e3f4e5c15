//! conto-local answers as Conto's own clients expect (conto-api.md §14): decisions below 400
//! with their reasons, JSON error bodies everywhere, an x402 record without an authorization id
//! settling its pre-authorization, and a repeated record never counted twice.

mod common;

use common::*;
use serde_json::{Value, json};

struct Sdk {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Sdk {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("HTTP {status}: the body is not JSON: {text:?}")),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

async fn setup(db: Option<std::path::PathBuf>) -> (conto_local::Running, Sdk) {
    let server = start(db, "conto_org_test").await;
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    org.policy(caps()).await; // MAX_AMOUNT 100, DAILY_LIMIT 150, approval above 80
    let sdk = Sdk { base: server.url(), key, http: reqwest::Client::new() };
    (server, sdk)
}

fn transfer_payment(amount: u32) -> Value {
    json!({"amount": amount, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 8453})
}

fn x402_payment(amount: &str) -> Value {
    json!({"amount": amount, "recipientAddress": RECIPIENT, "resourceUrl": "https://api.example.com/search"})
}

#[tokio::test]
async fn denials_are_decisions_below_400_with_their_reasons() {
    let (_server, sdk) = setup(None).await;
    let (status, body) = sdk.post("/api/sdk/payments/approve", transfer_payment(120)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["approved"], false);
    assert_eq!(body["violations"][0]["type"], "PER_TX_LIMIT");
    assert!(body["reasons"][0].as_str().is_some_and(|r| !r.is_empty()), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");

    let (status, body) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("120")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["authorized"], false);
    assert_eq!(body["violations"][0]["type"], "PER_TX_LIMIT");

    let (status, body) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("90")).await;
    assert_eq!(status, 202, "requires approval is 202: {body}");
    assert!(body["approvalRequestId"].as_str().is_some());
}

/// Conto's skill tells the user "Approval ID: [approvalId]" when a transfer needs a human, and
/// "Explorer: [explorerUrl]" once confirmed, on Tempo testnet (42431) by default.
#[tokio::test]
async fn the_skill_finds_the_approval_id_it_reports_and_an_explorer_link_on_its_default_chain() {
    let (_server, sdk) = setup(None).await;
    let transfer = |amount: u32| json!({"amount": amount, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 42431});
    let (status, held) = sdk.post("/api/sdk/payments/approve", transfer(90)).await;
    assert_eq!(status, 202, "{held}");
    assert_eq!((held["approved"].as_bool(), held["requiresHumanApproval"].as_bool()), (Some(false), Some(true)));
    let id = held["approvalId"].as_str().expect("the requires-approval answer names its approval");
    assert_eq!(held["approvalRequestId"].as_str(), Some(id), "{held}");

    let (status, approved) = sdk.post("/api/sdk/payments/approve", transfer(5)).await;
    assert_eq!(status, 200, "{approved}");
    let path = format!("/api/sdk/payments/{}/confirm", approved["approvalId"].as_str().unwrap());
    let (status, receipt) = sdk.post(&path, json!({"txHash": TX, "approvalToken": approved["approvalToken"]})).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["explorerUrl"], format!("https://explore.moderato.tempo.xyz/tx/{TX}"), "{receipt}");
    // Sent again, the token is checked first (a wrong one learns nothing of what was counted),
    // then the amount.
    let wrong = json!({"txHash": TX, "approvalToken": "0".repeat(64), "amount": 1});
    let (status, again) = sdk.post(&path, wrong).await;
    assert_eq!((status, again["code"].as_str()), (400, Some("INVALID_TOKEN")), "{again}");
    let other = json!({"txHash": TX, "approvalToken": approved["approvalToken"], "amount": 1});
    let (status, again) = sdk.post(&path, other).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("CONFLICT")), "{again}");

    // The skill's required fields are amount, recipient and sender: with no `chainId`, the
    // transfer is on Conto's default chain, Tempo testnet.
    let (status, approved) = sdk
        .post("/api/sdk/payments/approve", json!({"amount": 5, "recipientAddress": RECIPIENT, "senderAddress": SENDER}))
        .await;
    assert_eq!((status, &approved["approved"]), (200, &json!(true)), "{approved}");
    // Present only when a human must approve: a client that tests for the key is not misled.
    assert!(approved.get("approvalRequestId").is_none(), "{approved}");
    let path = format!("/api/sdk/payments/{}/confirm", approved["approvalId"].as_str().unwrap());
    let tx = format!("0x{}", "c".repeat(64));
    let (status, receipt) = sdk.post(&path, json!({"txHash": tx, "approvalToken": approved["approvalToken"]})).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["explorerUrl"], format!("https://explore.moderato.tempo.xyz/tx/{tx}"), "{receipt}");
    // Tempo settles in pathUSD (the token Conto's skill sends there); Base in USDC.
    assert_eq!(receipt["currency"], "pathUSD", "{receipt}");
    let (_, on_base) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    let path = format!("/api/sdk/payments/{}/confirm", on_base["approvalId"].as_str().unwrap());
    let (status, receipt) = sdk.post(&path, json!({"txHash": TX, "approvalToken": on_base["approvalToken"]})).await;
    assert_eq!((status, &receipt["currency"]), (200, &json!("USDC")), "{receipt}");

    // A payment to a Solana address was made on Solana (Conto detects it from the address),
    // whatever `chainId` came with it (Conto's helper always sends 42431): USDC, Solana's
    // explorer.
    let solana = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin";
    let signature = "5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnbJLgp8uirBgmQpjKhoR4tjF3ZpRzrFmBV6UjKdiSZkQUW";
    for chain in [None, Some(42431)] {
        let mut body = json!({"amount": 5, "recipientAddress": solana, "senderAddress": solana});
        if let Some(chain) = chain {
            body["chainId"] = json!(chain);
        }
        let (status, approved) = sdk.post("/api/sdk/payments/approve", body).await;
        assert_eq!((status, &approved["approved"]), (200, &json!(true)), "{approved}");
        let path = format!("/api/sdk/payments/{}/confirm", approved["approvalId"].as_str().unwrap());
        let confirm = json!({"txHash": signature, "approvalToken": approved["approvalToken"]});
        let (status, receipt) = sdk.post(&path, confirm).await;
        assert_eq!((status, &receipt["currency"]), (200, &json!("USDC")), "{receipt}");
        assert_eq!(receipt["explorerUrl"], format!("https://explorer.solana.com/tx/{signature}"), "{receipt}");
    }

    // A hash that cannot be this payment's transaction is refused, and the approval stays
    // live for the right one: a Solana signature or bare hex for a payment on Base, an EVM
    // hash or base58 that is no signature for one to a Solana address.
    let (_, on_base) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    let (_, to_solana) = sdk
        .post("/api/sdk/payments/approve", json!({"amount": 5, "recipientAddress": solana, "senderAddress": solana}))
        .await;
    let cases = [
        (&on_base, signature.to_owned()),
        (&on_base, "c".repeat(64)),
        (&to_solana, TX.to_owned()),
        (&to_solana, "1".repeat(88)),
        (&to_solana, "z".repeat(90)),
    ];
    for (approved, tx) in cases {
        let path = format!("/api/sdk/payments/{}/confirm", approved["approvalId"].as_str().unwrap());
        let (status, body) = sdk.post(&path, json!({"txHash": tx, "approvalToken": approved["approvalToken"]})).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{tx}: {body}");
    }
    for (approved, tx) in [(&on_base, TX), (&to_solana, signature)] {
        let path = format!("/api/sdk/payments/{}/confirm", approved["approvalId"].as_str().unwrap());
        let (status, body) = sdk.post(&path, json!({"txHash": tx, "approvalToken": approved["approvalToken"]})).await;
        assert_eq!(status, 200, "{tx}: {body}");
    }
}

/// A server whose day has room for a held payment twice (1000), held for a human above 80.
async fn roomy() -> (conto_local::Running, Sdk) {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    org.policy(json!({"name": "review", "priority": 90, "scope": "all", "rules": [
        {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "1000", "action": "ALLOW"},
        {"ruleType": "REQUIRE_APPROVAL_ABOVE", "operator": "GT", "value": "80", "action": "REQUIRE_APPROVAL"}]}))
        .await;
    let sdk = Sdk { base: server.url(), key, http: reqwest::Client::new() };
    (server, sdk)
}

/// Conto's skill tells the agent that an admin must approve, and the agent asks again: the same
/// transfer asked while the human decides is the same request (no second one for the admin),
/// and asked once approved, it is that approval with its token, confirmed as any other. Once
/// the approval is used, the same transfer is a new request.
#[tokio::test]
async fn a_transfer_asked_again_is_the_request_that_stands_for_it() {
    let (server, sdk) = roomy().await;
    let org = Org::new(&server);
    let (status, held) = sdk.post("/api/sdk/payments/approve", transfer_payment(90)).await;
    assert_eq!(status, 202, "{held}");
    let id = held["approvalRequestId"].as_str().unwrap().to_owned();
    let (status, again) = sdk.post("/api/sdk/payments/approve", transfer_payment(90)).await;
    assert_eq!((status, &again["approvalRequestId"], &again["approvalId"]), (202, &json!(id), &json!(id)), "{again}");
    let (_, listed) = sdk.call(reqwest::Method::GET, "/api/sdk/approval-requests", None).await;
    assert_eq!(listed["requests"].as_array().unwrap().len(), 1, "one request for the admin: {listed}");
    // Another amount is another payment.
    let (status, other) = sdk.post("/api/sdk/payments/approve", transfer_payment(95)).await;
    assert!(status == 202 && other["approvalRequestId"] != id.as_str(), "{other}");

    let (status, _) = org.post(&format!("/api/approval-requests/{id}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let (status, approved) = sdk.post("/api/sdk/payments/approve", transfer_payment(90)).await;
    assert_eq!((status, &approved["approved"]), (200, &json!(true)), "{approved}");
    let token = approved["approvalToken"].as_str().expect("its token").to_owned();
    let approval = approved["approvalId"].as_str().unwrap().to_owned();
    let (status, again) = sdk.post("/api/sdk/payments/approve", transfer_payment(90)).await;
    assert_eq!((status, &again["approvalId"]), (200, &json!(approval)), "the same approval again: {again}");
    let confirm = json!({"txHash": TX, "approvalToken": token});
    let (status, receipt) = sdk.post(&format!("/api/sdk/payments/{approval}/confirm"), confirm).await;
    assert_eq!((status, &receipt["confirmed"]), (200, &json!(true)), "{receipt}");
    assert_eq!(budget_spent_and_reserved(&sdk).await.0, "90", "counted once");
    // Used, it is never handed out again: the same transfer is a new request.
    let (status, next) = sdk.post("/api/sdk/payments/approve", transfer_payment(90)).await;
    assert_eq!(status, 202, "{next}");
    assert!(next["approvalRequestId"] != id.as_str() && next["approvalId"] != approval.as_str(), "{next}");
}

/// An approval's token is kept in memory only (the store keeps its hash). A restart loses it:
/// asked for again (a transfer approve sent again under its idempotency key, a human-approved
/// transfer asked again, the approval-requests list), the live approval is handed a new token,
/// never answered approved without one; the first token still confirms, if it reached the agent.
#[tokio::test]
async fn a_token_lost_with_a_restart_is_issued_again_and_the_first_still_confirms() {
    let db = fresh_db("token-again");
    let server = start(Some(db.clone()), "conto_org_test").await;
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    org.policy(json!({"name": "review", "priority": 90, "scope": "all", "rules": [
        {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "1000", "action": "ALLOW"},
        {"ruleType": "REQUIRE_APPROVAL_ABOVE", "operator": "GT", "value": "80", "action": "REQUIRE_APPROVAL"}]}))
        .await;
    let keyed = |key: &str, amount: u32| {
        let mut body = transfer_payment(amount);
        body["idempotencyKey"] = json!(key);
        body
    };
    let sdk = Sdk { base: server.url(), key: key.clone(), http: reqwest::Client::new() };
    let (_, one) = sdk.post("/api/sdk/payments/approve", keyed("inv-1", 10)).await;
    let (_, two) = sdk.post("/api/sdk/payments/approve", keyed("inv-2", 11)).await;
    let (status, held) = sdk.post("/api/sdk/payments/approve", transfer_payment(90)).await;
    assert_eq!(status, 202, "{held}");
    let held = held["approvalRequestId"].as_str().unwrap().to_owned();
    let (status, _) = org.post(&format!("/api/approval-requests/{held}/approve"), json!({})).await;
    assert_eq!(status, 200);

    let server = restarted_after(server, &db, "DELETE FROM approvals WHERE 0").await;
    let sdk = Sdk { base: server.url(), key, http: reqwest::Client::new() };
    let confirm = |approval: &Value, token: &Value, n: u64| {
        let path = format!("/api/sdk/payments/{}/confirm", approval.as_str().unwrap());
        let body = json!({"txHash": format!("0x{n:064x}"), "approvalToken": token});
        let sdk = &sdk;
        async move { sdk.post(&path, body).await }
    };
    // Sent again under its key: the same approval, with a new token that confirms.
    let (status, again) = sdk.post("/api/sdk/payments/approve", keyed("inv-1", 10)).await;
    assert_eq!((status, &again["approvalId"]), (200, &one["approvalId"]), "{again}");
    let token = again["approvalToken"].as_str().expect("a token, not approved without one");
    assert_ne!(token, one["approvalToken"].as_str().unwrap());
    let (_, same) = sdk.post("/api/sdk/payments/approve", keyed("inv-1", 10)).await;
    assert_eq!(same["approvalToken"], token, "kept for the next ask: {same}");
    let (status, receipt) = confirm(&again["approvalId"], &again["approvalToken"], 1).await;
    assert_eq!(status, 200, "{receipt}");
    // The first token of another approval still confirms after its replay was handed a new one.
    let (_, again) = sdk.post("/api/sdk/payments/approve", keyed("inv-2", 11)).await;
    assert!(again["approvalToken"].is_string(), "{again}");
    let (status, receipt) = confirm(&two["approvalId"], &two["approvalToken"], 2).await;
    assert_eq!(status, 200, "{receipt}");
    // The human-approved transfer: listed with a token, and asked again, the same one.
    let (_, listed) = sdk.call(reqwest::Method::GET, "/api/sdk/approval-requests", None).await;
    let entry = listed["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["approvalRequestId"] == held.as_str())
        .unwrap()
        .clone();
    let listed_token = entry["approvalToken"].as_str().expect("listed with a token again").to_owned();
    let (status, asked) = sdk.post("/api/sdk/payments/approve", transfer_payment(90)).await;
    assert_eq!((status, &asked["approvalToken"]), (200, &json!(listed_token)), "{asked}");
    let (status, receipt) = confirm(&asked["approvalId"], &json!("ab".repeat(32)), 3).await;
    assert_eq!((status, &receipt["code"]), (400, &json!("INVALID_TOKEN")), "{receipt}");
    let (status, receipt) = confirm(&asked["approvalId"], &asked["approvalToken"], 3).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(budget_spent_and_reserved(&sdk).await.0, "111", "10 + 11 + 90, each once");
    server.stop().await;
    let _ = std::fs::remove_file(&db);
}

/// Asking again is bounded: payments the client keys apart are two payments; under one key,
/// the request as it stands now; a paused agent, or a rule that now refuses the payment, gets
/// a denial and no token.
#[tokio::test]
async fn asking_again_never_hands_a_token_past_a_pause_a_new_rule_or_another_key() {
    let (server, sdk) = roomy().await;
    let org = Org::new(&server);
    let keyed = |key: &str| {
        let mut body = transfer_payment(85);
        body["idempotencyKey"] = json!(key);
        body
    };
    let (_, one) = sdk.post("/api/sdk/payments/approve", keyed("inv-1")).await;
    let (_, two) = sdk.post("/api/sdk/payments/approve", keyed("inv-2")).await;
    let id = one["approvalRequestId"].as_str().unwrap().to_owned();
    assert_ne!(two["approvalRequestId"], id.as_str(), "keyed apart, two payments: {two}");
    let (status, _) = org.post(&format!("/api/approval-requests/{id}/approve"), json!({})).await;
    assert_eq!(status, 200);
    // The same key again: the request as it stands now, approved, with its token.
    let (status, now) = sdk.post("/api/sdk/payments/approve", keyed("inv-1")).await;
    assert_eq!((status, &now["approved"]), (200, &json!(true)), "{now}");
    assert!(now["approvalToken"].is_string(), "{now}");

    // Paused, the agent is handed its token nowhere.
    let (status, _) = org.patch("/api/agents/agent-1", json!({"status": "PAUSED"})).await;
    assert_eq!(status, 200);
    let (status, paused) = sdk.post("/api/sdk/payments/approve", keyed("inv-1")).await;
    assert_eq!((status, paused["code"].as_str()), (400, Some("EXPIRED")), "{paused}");
    let (_, listed) = sdk.call(reqwest::Method::GET, "/api/sdk/approval-requests", None).await;
    assert!(
        listed["requests"].as_array().unwrap().iter().all(|r| r.get("approvalToken").is_none_or(Value::is_null)),
        "{listed}"
    );

    // Unkeyed: asked again once approved, the approval; but not past a pause or a new rule.
    let (server, sdk) = roomy().await;
    let org = Org::new(&server);
    let (_, held) = sdk.post("/api/sdk/payments/approve", transfer_payment(82)).await;
    let held_id = held["approvalRequestId"].as_str().expect("held for a human").to_owned();
    let (status, _) = org.post(&format!("/api/approval-requests/{held_id}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let (_, again) = sdk.post("/api/sdk/payments/approve", transfer_payment(82)).await;
    assert_eq!(again["approved"], true, "{again}");
    let (status, _) = org.patch("/api/agents/agent-1", json!({"status": "PAUSED"})).await;
    assert_eq!(status, 200);
    let (_, paused) = sdk.post("/api/sdk/payments/approve", transfer_payment(82)).await;
    assert!(paused["approved"] == false && paused.get("approvalToken").is_none_or(Value::is_null), "{paused}");
    let (status, _) = org.patch("/api/agents/agent-1", json!({"status": "ACTIVE"})).await;
    assert_eq!(status, 200);
    let block = json!({"name": "block", "agentIds": ["agent-1"], "rules": [{"ruleType": "BLOCKED_COUNTERPARTIES",
        "operator": "IN_LIST", "value": format!("[\"{RECIPIENT}\"]"), "action": "DENY"}]});
    let made = org.policy(block).await;
    let (_, fresh) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    assert_eq!(fresh["violations"][0]["type"], "BLOCKED_COUNTERPARTY", "{made} {fresh}");
    let (_, blocked) = sdk.post("/api/sdk/payments/approve", transfer_payment(82)).await;
    assert!(blocked["approved"] == false && blocked.get("approvalToken").is_none_or(Value::is_null), "{blocked}");
}

/// A transfer approved at once and asked again under its idempotency key: a paused agent is
/// not handed its token again, and a used approval is never handed out again (a job retried
/// after its payment was confirmed would pay twice, the second uncountable).
#[tokio::test]
async fn an_approved_transfer_asked_again_under_its_key_is_not_handed_out_paused_or_used() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    let mut body = transfer_payment(5);
    body["idempotencyKey"] = json!("job-7");
    let (status, first) = sdk.post("/api/sdk/payments/approve", body.clone()).await;
    assert_eq!((status, &first["approved"]), (200, &json!(true)), "{first}");
    let (status, _) = org.patch("/api/agents/agent-1", json!({"status": "PAUSED"})).await;
    assert_eq!(status, 200);
    let (status, paused) = sdk.post("/api/sdk/payments/approve", body.clone()).await;
    assert_eq!((status, paused["code"].as_str()), (400, Some("EXPIRED")), "{paused}");
    assert!(paused.get("approvalToken").is_none(), "{paused}");
    let (status, _) = org.patch("/api/agents/agent-1", json!({"status": "ACTIVE"})).await;
    assert_eq!(status, 200);
    let (status, again) = sdk.post("/api/sdk/payments/approve", body.clone()).await;
    assert_eq!((status, &again["approvalToken"]), (200, &first["approvalToken"]), "the same answer: {again}");
    let path = format!("/api/sdk/payments/{}/confirm", first["approvalId"].as_str().unwrap());
    let (status, _) = sdk.post(&path, json!({"txHash": TX, "approvalToken": first["approvalToken"]})).await;
    assert_eq!(status, 200);
    let (status, used) = sdk.post("/api/sdk/payments/approve", body).await;
    assert_eq!((status, used["code"].as_str()), (400, Some("INVALID_STATUS")), "{used}");
    assert!(used.get("approvalToken").is_none(), "{used}");
}

/// A transfer's approval token is listed only to a key that may confirm with it
/// (`payments:confirm`): a key kept out of the transfer flow is not handed its secret.
#[tokio::test]
async fn a_listed_transfer_token_is_shown_only_to_a_key_that_may_confirm() {
    let (server, sdk) = roomy().await;
    let org = Org::new(&server);
    let (_, held) = sdk.post("/api/sdk/payments/approve", transfer_payment(85)).await;
    let id = held["approvalRequestId"].as_str().expect("held for a human").to_owned();
    let (status, _) = org.post(&format!("/api/approval-requests/{id}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let (status, narrow) = org.post("/api/agents/agent-1/sdk-keys", json!({"name": "reads", "scopes": []})).await;
    assert_eq!(status, 201, "{narrow}");
    let narrow =
        Sdk { base: server.url(), key: narrow["key"].as_str().unwrap().to_owned(), http: reqwest::Client::new() };
    let token_of = |listed: &Value| {
        listed["requests"].as_array().unwrap().iter().find(|r| r["approvalRequestId"] == id.as_str()).unwrap()
            ["approvalToken"]
            .clone()
    };
    let (_, listed) = sdk.call(reqwest::Method::GET, "/api/sdk/approval-requests", None).await;
    assert!(token_of(&listed).is_string(), "the transfer key sees it: {listed}");
    let (status, listed) = narrow.call(reqwest::Method::GET, "/api/sdk/approval-requests", None).await;
    assert_eq!(status, 200, "{listed}");
    assert!(token_of(&listed).is_null(), "a key without payments:confirm does not: {listed}");
}

/// A transfer (or card payment) held for a human is answered with an `approvalId` (Conto's
/// skill reports it as "Approval ID"); once a human approves, that id is what the app
/// confirms, with the token the approval-requests listing hands out. Before the decision it
/// is `INVALID_STATUS`, never a 404 that says nothing.
#[tokio::test]
async fn a_held_approvals_id_is_confirmed_once_a_human_approves_it() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    // A card payment held for a human is confirmed by the `requestId` it was answered with
    // (settled for less than approved).
    let card = json!({"amount": 85, "merchantName": "Acme", "cardId": "card_1"});
    let (status, held) = sdk.post("/api/sdk/cards/approve", card).await;
    assert_eq!(status, 202, "{held}");
    let id = held["requestId"].as_str().unwrap().to_owned();
    let (status, _) = org.post(&format!("/api/approval-requests/{id}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let body = json!({"transactionReference": "ch_1", "amount": 10, "status": "COMPLETED"});
    let (status, receipt) = sdk.post(&format!("/api/sdk/cards/{id}/confirm"), body.clone()).await;
    assert_eq!((status, &receipt["confirmed"]), (200, &json!(true)), "{receipt}");
    // Sent again (a lost answer): the first answer, counted once; another reference is refused.
    let (status, again) = sdk.post(&format!("/api/sdk/cards/{id}/confirm"), body).await;
    assert_eq!((status, &again), (200, &receipt));
    let other = json!({"transactionReference": "ch_2", "amount": 10, "status": "COMPLETED"});
    let (status, again) = sdk.post(&format!("/api/sdk/cards/{id}/confirm"), other).await;
    assert_eq!((status, again["code"].as_str()), (400, Some("INVALID_STATUS")), "{again}");

    let transfer = json!({"amount": 90, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 8453});
    let (status, held) = sdk.post("/api/sdk/payments/approve", transfer).await;
    assert_eq!(status, 202, "{held}");
    let id = held["approvalId"].as_str().unwrap().to_owned();
    let confirm = |token: &Value| json!({"txHash": TX, "approvalToken": token});
    let path = format!("/api/sdk/payments/{id}/confirm");
    let (status, early) = sdk.post(&path, confirm(&json!("0".repeat(64)))).await;
    assert_eq!((status, early["code"].as_str()), (400, Some("INVALID_STATUS")), "{early}");
    assert!(early["message"].as_str().unwrap().contains("waiting for a human"), "{early}");

    let (status, _) = org.post(&format!("/api/approval-requests/{id}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let (_, listed) = sdk.call(reqwest::Method::GET, "/api/sdk/approval-requests", None).await;
    let entry = listed["requests"].as_array().unwrap().iter().find(|r| r["approvalRequestId"] == id.as_str()).cloned();
    let entry = entry.expect("listed");
    let token = entry["approvalToken"].clone();
    assert!(token.is_string(), "{listed}");
    // Listed with when the approval lapses unpaid (a transfer's 10 minutes), not the wait's hour.
    let lapses: conto_core::jiff::Timestamp = entry["approvalExpiresAt"].as_str().expect("its lapse").parse().unwrap();
    let secs = lapses.duration_since(conto_core::jiff::Timestamp::now()).as_secs();
    assert!((570..=600).contains(&secs), "{entry}");
    assert_eq!(entry["expiresAt"], entry["approvalExpiresAt"], "{entry}");
    let (status, wrong) = sdk.post(&path, confirm(&json!("0".repeat(64)))).await;
    assert_eq!((status, wrong["code"].as_str()), (400, Some("INVALID_TOKEN")), "{wrong}");
    let (status, receipt) = sdk.post(&path, confirm(&token)).await;
    assert_eq!((status, &receipt["confirmed"], &receipt["amount"]), (200, &json!(true), &json!(90)), "{receipt}");
    // A retry of the same confirm (its answer lost): the first answer again, counted once,
    // also with the hash under Conto's older name, in upper case.
    let (status, again) = sdk.post(&path, confirm(&token)).await;
    assert_eq!((status, &again), (200, &receipt));
    let renamed = json!({"transactionHash": TX.to_ascii_uppercase().replacen("0X", "0x", 1), "approvalToken": token});
    let (status, again) = sdk.post(&path, renamed).await;
    assert_eq!((status, &again), (200, &receipt));
    let (_, transactions) = sdk.call(reqwest::Method::GET, "/api/sdk/transactions", None).await;
    let paid = transactions["transactions"].as_array().unwrap().iter().filter(|t| t["txHash"] == TX).count();
    assert_eq!(paid, 1, "{transactions}");
}

/// An x402 pre-authorization held for a human is recorded, once approved, under the
/// `approvalRequestId` it was answered with.
#[tokio::test]
async fn a_held_preauthorization_is_recorded_by_its_approval_request_id() {
    let (server, sdk) = setup(None).await;
    let (status, held) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("85")).await;
    assert_eq!(status, 202, "{held}");
    let id = held["approvalRequestId"].as_str().unwrap().to_owned();
    // Conto's skill prints the held answer's `approvalId` for the user to share with an admin.
    assert_eq!(held["approvalId"], id.as_str(), "{held}");
    let (status, _) = Org::new(&server).post(&format!("/api/approval-requests/{id}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let mut paid = x402_payment("85");
    paid["authorizationId"] = json!(id);
    paid["txHash"] = json!(TX);
    let (status, recorded) = sdk.post("/api/sdk/x402/record", json!({"payments": [paid]})).await;
    assert_eq!(status, 200, "{recorded}");
    assert_eq!(budget_spent_and_reserved(&sdk).await, ("85".into(), "0".into()), "settled, not counted twice");
}

/// Conto's skill (Mode A) asks `payments/request` with `autoExecute: true` and reads either
/// `execution` or `autoExecuteError`. conto-local executes nothing, so an approved request says
/// why in `autoExecuteError`, and the approval stands for the app to settle.
#[tokio::test]
async fn auto_execute_is_answered_with_why_it_did_not_run_never_silently_dropped() {
    let (_server, sdk) = setup(None).await;
    let request = |amount: u32, auto: bool| {
        json!({"amount": amount, "recipientAddress": RECIPIENT, "purpose": "api", "category": "API_PROVIDER",
            "autoExecute": auto})
    };
    let (status, approved) = sdk.post("/api/sdk/payments/request", request(5, true)).await;
    assert_eq!((status, approved["status"].as_str()), (200, Some("APPROVED")), "{approved}");
    assert!(approved.get("execution").is_none(), "nothing was executed: {approved}");
    let why = approved["autoExecuteError"].as_str().expect("autoExecuteError says why");
    assert!(why.contains("cannot execute"), "{why}");

    let (_, plain) = sdk.post("/api/sdk/payments/request", request(5, false)).await;
    assert_eq!(plain["status"], "APPROVED");
    assert!(plain.get("autoExecuteError").is_none(), "{plain}");
    let (_, denied) = sdk.post("/api/sdk/payments/request", request(120, true)).await;
    assert_eq!(denied["status"], "DENIED");
    assert!(denied.get("autoExecuteError").is_none(), "a denial was never going to execute: {denied}");
}

/// Conto's skill, Mode A: an agent whose wallet is held by a custody provider (`PRIVY`,
/// `SPONGE`) asks `payments/request` with `autoExecute: true` and reads `execution` (tx hash,
/// explorer URL, `CONFIRMING`), or calls `/execute` itself. conto-local simulates the
/// transfer (`simulated: true`: no money moved) and counts the spend as a confirm would; a
/// request paid from the app's own wallet is still not executed.
#[tokio::test]
async fn a_managed_wallet_executes_a_payment_request_simulated_and_counts_it() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    for doc in [
        json!({"walletId": "wal_privy", "custodyType": "PRIVY", "chainId": 42431, "address": SENDER}),
        json!({"walletId": "wal_own", "custodyType": "EXTERNAL", "chainId": 8453}),
    ] {
        let (status, body) = org.post("/api/agents/agent-1/wallets", doc).await;
        assert_eq!(status, 201, "{body}");
    }
    let request = |amount: u32, auto: bool| {
        json!({"amount": amount, "recipientAddress": RECIPIENT, "purpose": "api", "category": "API_PROVIDER",
            "autoExecute": auto})
    };
    let (status, paid) = sdk.post("/api/sdk/payments/request", request(30, true)).await;
    assert_eq!((status, paid["status"].as_str()), (200, Some("APPROVED")), "{paid}");
    let execution = &paid["execution"];
    let tx = execution["txHash"].as_str().expect("a tx hash");
    assert!(tx.len() == 66 && tx.starts_with("0x"), "{paid}");
    assert_eq!((&execution["status"], &execution["simulated"]), (&json!("CONFIRMING"), &json!(true)), "{paid}");
    assert!(execution["transactionId"].as_str().is_some_and(|t| !t.is_empty()), "{paid}");
    assert_eq!(execution["explorerUrl"], format!("https://explore.moderato.tempo.xyz/tx/{tx}"), "{paid}");
    assert!(paid.get("autoExecuteError").is_none(), "{paid}");
    let id = paid["requestId"].as_str().unwrap();
    let (_, polled) = sdk.call(reqwest::Method::GET, &format!("/api/sdk/payments/{id}"), None).await;
    assert_eq!(polled["status"], "EXECUTED", "{polled}");
    // Executed means confirmed: not again.
    let (status, again) = sdk.post(&format!("/api/sdk/payments/{id}/confirm"), json!({"txHash": TX})).await;
    assert_eq!((status, again["code"].as_str()), (400, Some("INVALID_STATUS")), "{again}");

    // Approved without `autoExecute`, then executed by `/execute` (scope `payments:execute`).
    let (_, approved) = sdk.post("/api/sdk/payments/request", request(20, false)).await;
    assert!(approved.get("execution").is_none(), "{approved}");
    let id = approved["requestId"].as_str().unwrap();
    let (status, key) = org
        .post(
            "/api/agents/agent-1/sdk-keys",
            json!({"name": "exec", "scopes": ["payments:execute", "payments:request"]}),
        )
        .await;
    assert_eq!(status, 201);
    let exec =
        Sdk { base: sdk.base.clone(), key: key["key"].as_str().unwrap().to_owned(), http: reqwest::Client::new() };
    let (status, executed) = exec.post(&format!("/api/sdk/payments/{id}/execute"), json!({})).await;
    assert_eq!(
        (status, &executed["requestId"], &executed["status"]),
        (200, &json!(id), &json!("CONFIRMING")),
        "{executed}"
    );
    assert_eq!(executed["simulated"], true, "{executed}");
    let (status, again) = exec.post(&format!("/api/sdk/payments/{id}/execute"), json!({})).await;
    assert_eq!((status, again["code"].as_str()), (400, Some("INVALID_STATUS")), "paid already: {again}");

    // Paid from the app's own wallet (named), it is not executed.
    let mut own = request(5, true);
    own["walletId"] = json!("wal_own");
    let (_, own) = sdk.post("/api/sdk/payments/request", own).await;
    assert_eq!(own["status"], "APPROVED", "{own}");
    assert!(own.get("execution").is_none() && own["autoExecuteError"].is_string(), "{own}");

    // Both executions were counted (30 + 20 of the daily 150), the own-wallet approval holds 5.
    let (_, probe) = sdk.post("/api/sdk/payments/approve", transfer_payment(1)).await;
    assert_eq!(probe["approved"], true, "{probe}");
    assert_eq!(probe["limits"]["dailyUsed"], json!(56), "{probe}");
}

#[tokio::test]
async fn every_error_has_a_json_body_with_error_code_and_message() {
    let (server, sdk) = setup(None).await;
    let cases = [
        (reqwest::Method::GET, "/api/sdk/no-such-route", 404),
        (reqwest::Method::DELETE, "/api/sdk/payments/approve", 405),
        (reqwest::Method::GET, "/nothing/here", 404),
    ];
    for (method, path, expected) in cases {
        let (status, body) = sdk.call(method.clone(), path, None).await;
        assert_eq!(status, expected, "{method} {path}");
        for field in ["error", "code", "message"] {
            assert!(body[field].as_str().is_some_and(|v| !v.is_empty()), "{method} {path}: no `{field}` in {body}");
        }
    }
    let bogus =
        Sdk { base: server.url(), key: format!("conto_agent_{}", "0".repeat(64)), http: reqwest::Client::new() };
    let (status, body) = bogus.post("/api/sdk/x402/pre-authorize", x402_payment("1")).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("AUTH_FAILED")));
    // Two `Authorization` headers (a proxy and this server could each read another key): no
    // key, even when the first is the agent's own.
    let twice = reqwest::Client::new()
        .post(format!("{}/api/sdk/x402/pre-authorize", server.url()))
        .header("authorization", format!("Bearer {}", sdk.key))
        .header("authorization", format!("Bearer {}", bogus.key))
        .json(&x402_payment("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 401);
    // What is refused before a handler runs is JSON too: a path segment that is not UTF-8, and
    // a body over the size limit (3 MiB of padding in a JSON string).
    let (status, body) = sdk.post("/api/sdk/payments/%FF/confirm", json!({})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    let huge = json!({"amount": 1, "purpose": "x".repeat(3 << 20)});
    let (status, body) = sdk.post("/api/sdk/payments/approve", huge).await;
    assert_eq!((status, body["code"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")), "{body}");
}

async fn budget_spent_and_reserved(sdk: &Sdk) -> (String, String) {
    let (status, body) = sdk.call(reqwest::Method::GET, "/api/sdk/x402/budget", None).await;
    assert_eq!(status, 200, "{body}");
    let daily = body["counters"].as_array().unwrap().iter().find(|c| c["period"] == "daily").cloned().unwrap();
    // Amounts are JSON numbers, as every amount Conto answers.
    assert!(daily["spent"].is_number() && daily["reserved"].is_number(), "{daily}");
    (daily["spent"].to_string(), daily["reserved"].to_string())
}

#[tokio::test]
async fn an_x402_record_without_an_authorization_id_settles_its_preauthorization_once() {
    let dir = std::env::temp_dir().join(format!("conto-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (server, sdk) = setup(Some(dir.join("local.db"))).await;
    let (status, pre) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("5")).await;
    assert_eq!((status, &pre["authorized"]), (200, &json!(true)), "{pre}");
    assert_eq!(budget_spent_and_reserved(&sdk).await, ("0".into(), "5".into()));

    // As Conto's skill records: no authorization id.
    let mut payment = x402_payment("5");
    payment["paymentId"] = json!("pay-1");
    payment["txHash"] = json!(TX);
    let record = json!({"payments": [payment]});
    let (status, body) = sdk.post("/api/sdk/x402/record", record.clone()).await;
    assert!(status < 300, "{body}");
    let answered = body["payments"].as_array().map_or(&body, |p| &p[0]);
    assert_eq!(answered["paymentId"], "pay-1", "named as the client named it: {body}");
    assert_eq!(budget_spent_and_reserved(&sdk).await, ("5".into(), "0".into()), "settled, not added: 5 of headroom");
    let (status, services) = sdk.call(reqwest::Method::GET, "/api/sdk/x402/services", None).await;
    assert_eq!(status, 200);
    assert_eq!(services["services"][0]["serviceDomain"], "api.example.com", "{services}");
    assert_eq!(services["services"][0]["totalSpent"], 5);

    // Retried ten times, with a restart in the middle: the spend is counted once.
    let mut server = Some(server);
    for attempt in 0..10 {
        if attempt == 5 {
            server.take().unwrap().stop().await;
            let restarted = start_on_db(dir.join("local.db")).await;
            server = Some(restarted);
        }
        let sdk = Sdk { base: server.as_ref().unwrap().url(), key: sdk.key.clone(), http: reqwest::Client::new() };
        let (status, body) = sdk.post("/api/sdk/x402/record", record.clone()).await;
        assert!(status == 409 || status < 300, "attempt {attempt}: {status} {body}");
        assert_eq!(budget_spent_and_reserved(&sdk).await.0, "5", "attempt {attempt}: never counted again");
    }
    assert_eq!(server.unwrap().spend_count("agent-1").unwrap(), 1);
}

async fn start_on_db(db: std::path::PathBuf) -> conto_local::Running {
    start(Some(db), "conto_org_test").await
}

/// A shell client that treats any status ≥ 400 as an error, as Conto's agent skill does, still
/// sees the denial's reasons.
#[tokio::test]
async fn a_shell_client_with_curl_and_jq_reads_a_denials_reasons() {
    let (_server, sdk) = setup(None).await;
    let script = r#"
        resp=$(curl -sS -w '\n%{http_code}' -X POST "$CONTO_API_URL/api/sdk/payments/approve" \
          -H "Authorization: Bearer $CONTO_SDK_KEY" -H 'Content-Type: application/json' \
          -d "{\"amount\": 120, \"recipientAddress\": \"$RECIPIENT\", \"senderAddress\": \"$SENDER\", \"chainId\": 8453}")
        code=$(printf '%s' "$resp" | tail -n1)
        body=$(printf '%s' "$resp" | sed '$d')
        if [ "$code" -ge 400 ]; then
          printf '%s' "$body" | jq -c '{error: true, httpStatus: '"$code"', message: (.message // .error // "Request failed")}'
          exit 1
        fi
        printf '%s' "$body" | jq -r '"approved=\(.approved) type=\(.violations[0].type) reason=\(.reasons[0])"'
    "#;
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("CONTO_API_URL", &sdk.base)
        .env("CONTO_SDK_KEY", &sdk.key)
        .env("RECIPIENT", RECIPIENT)
        .env("SENDER", SENDER)
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the shell client saw an error: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("approved=false") && stdout.contains("type=PER_TX_LIMIT"), "{stdout}");
    assert!(!stdout.contains("reason=null"), "{stdout}");
}

/// The payment-request flow, as Conto's hybrid starter drives it: request with
/// `autoExecute: false`, a 2xx decision with a `requestId` whatever it is, status polling, the
/// approval request carrying `paymentRequestId`, and a typed refusal to execute.
#[tokio::test]
async fn the_payment_request_flow_as_the_hybrid_starter_uses_it() {
    let (server, sdk) = setup(None).await;
    let request = |amount: &str, key: &str| {
        json!({"amount": amount, "recipientAddress": RECIPIENT, "recipientName": "ACME", "purpose": "checkout",
            "category": "MERCHANDISE", "idempotencyKey": key, "autoExecute": false,
            "context": {"department": "retail", "project": "demo"}})
    };
    // Approved.
    let (status, ok) = sdk.post("/api/sdk/payments/request", request("12.50", "chk-1")).await;
    assert!((200..300).contains(&status), "{ok}");
    assert_eq!(ok["status"], "APPROVED");
    let id = ok["requestId"].as_str().unwrap().to_owned();
    let (status, polled) = sdk.call(reqwest::Method::GET, &format!("/api/sdk/payments/{id}"), None).await;
    assert_eq!((status, polled["status"].as_str()), (200, Some("APPROVED")), "{polled}");
    // The same idempotency key gives the same request back.
    let (_, again) = sdk.post("/api/sdk/payments/request", request("12.50", "chk-1")).await;
    assert_eq!(again["requestId"], ok["requestId"]);

    // Denied: still 2xx, still a requestId, with reasons.
    let (status, denied) = sdk.post("/api/sdk/payments/request", request("120", "chk-2")).await;
    assert!((200..300).contains(&status), "{denied}");
    assert_eq!(denied["status"], "DENIED");
    assert!(denied["requestId"].as_str().is_some() && denied["reasons"][0].as_str().is_some(), "{denied}");
    // `approvalRequestId` is always there: `null` unless a human must approve (§14.2).
    assert!(denied.as_object().unwrap().get("approvalRequestId").is_some_and(|v| v.is_null()), "{denied}");
    let denied_id = denied["requestId"].as_str().unwrap();
    let (status, refused) = sdk.post(&format!("/api/sdk/payments/{denied_id}/confirm"), json!({"txHash": TX})).await;
    assert_eq!((status, refused["code"].as_str()), (400, Some("INVALID_STATUS")), "a denial is not paid: {refused}");

    // Requires approval: the approval request names the payment request; a human approves.
    let (status, pending) = sdk.post("/api/sdk/payments/request", request("90", "chk-3")).await;
    assert!((200..300).contains(&status), "{pending}");
    assert_eq!(pending["status"], "REQUIRES_APPROVAL");
    let payment_id = pending["requestId"].as_str().unwrap().to_owned();
    let approval_id = pending["approvalRequestId"].as_str().unwrap().to_owned();
    assert_eq!(pending["approvalId"], approval_id.as_str(), "the id Conto's skill reports: {pending}");
    let (_, listed) = sdk.call(reqwest::Method::GET, "/api/sdk/approval-requests?type=payment&limit=100", None).await;
    let entry = listed["requests"].as_array().unwrap().iter().find(|r| r["approvalRequestId"] == approval_id).cloned();
    let entry = entry.unwrap();
    // Its `requestId` is the payment request's too: the id `/payments/{requestId}` reads.
    assert_eq!((&entry["paymentRequestId"], &entry["requestId"]), (&json!(payment_id), &json!(payment_id)), "{entry}");
    let (_, polled) = sdk.call(reqwest::Method::GET, &format!("/api/sdk/payments/{payment_id}"), None).await;
    assert_eq!(polled["status"], "REQUIRES_APPROVAL");
    let (status, _) = Org::new(&server).post(&format!("/api/approval-requests/{approval_id}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let (_, polled) = sdk.call(reqwest::Method::GET, &format!("/api/sdk/payments/{payment_id}"), None).await;
    assert_eq!(polled["status"], "APPROVED", "{polled}");
    // Asked again under its idempotency key: the same request, as it stands now.
    let (status, again) = sdk.post("/api/sdk/payments/request", request("90", "chk-3")).await;
    assert_eq!(
        (status, &again["requestId"], &again["status"]),
        (200, &json!(payment_id), &json!("APPROVED")),
        "{again}"
    );
    // Listed by status: approved now, it is no longer among the pending ones.
    for (status, listed_here) in [("APPROVED", true), ("pending", false)] {
        let path = format!("/api/sdk/approval-requests?type=payment&status={status}&limit=100");
        let (code, listed) = sdk.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(code, 200, "{listed}");
        let entries = listed["requests"].as_array().unwrap();
        assert!(entries.iter().all(|r| r["status"].as_str().unwrap().eq_ignore_ascii_case(status)), "{listed}");
        assert_eq!(entries.iter().any(|r| r["approvalRequestId"] == approval_id), listed_here, "{status}: {listed}");
    }
    // Approved by a human, it is listed with its approval and no token (a payment request's
    // approval carries none), and confirmed by the request's own id without one (as
    // `/execute`'s answer tells the app to), on Conto's default chain.
    let (_, listed) = sdk.call(reqwest::Method::GET, "/api/sdk/approval-requests?type=payment&limit=100", None).await;
    let entry = listed["requests"].as_array().unwrap().iter().find(|r| r["approvalRequestId"] == approval_id).cloned();
    let entry = entry.unwrap();
    assert!(entry["approvalToken"].is_null(), "no token to hand out: {entry}");
    let human = entry["approvalId"].as_str().unwrap().to_owned();
    assert_ne!(human, payment_id, "its approval has an id of its own");
    let (status, receipt) = sdk.post(&format!("/api/sdk/payments/{payment_id}/confirm"), json!({"txHash": TX})).await;
    assert_eq!((status, &receipt["confirmed"], &receipt["amount"]), (200, &json!(true), &json!(90)), "{receipt}");
    assert_eq!(receipt["currency"], "pathUSD", "Tempo testnet, the default chain: {receipt}");
    assert!(receipt["explorerUrl"].as_str().is_some_and(|u| u.ends_with(TX)), "{receipt}");
    let (_, polled) = sdk.call(reqwest::Method::GET, &format!("/api/sdk/payments/{payment_id}"), None).await;
    assert_eq!(polled["status"], "EXECUTED", "paid, never APPROVED again: {polled}");
    // Its approval's own id names the same payment: confirmed once. The same confirm again
    // is answered as the first time; another tx hash is refused.
    let (status, again) = sdk.post(&format!("/api/sdk/payments/{human}/confirm"), json!({"txHash": TX})).await;
    assert_eq!((status, &again), (200, &receipt), "{again}");
    // Sent again for another amount, it is a conflict, not the first answer (which would say
    // `confirmed` for an amount that was never counted).
    let changed = json!({"txHash": TX, "amount": 50});
    let (status, again) = sdk.post(&format!("/api/sdk/payments/{human}/confirm"), changed).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("CONFLICT")), "{again}");
    let other = format!("0x{}", "9".repeat(64));
    let (status, again) = sdk.post(&format!("/api/sdk/payments/{human}/confirm"), json!({"txHash": other})).await;
    assert_eq!((status, again["code"].as_str()), (400, Some("INVALID_STATUS")), "{again}");

    // Executing from a Conto-managed wallet is not something conto-local can do: Conto's answer
    // for a wallet it does not hold.
    let (status, key) = Org::new(&server)
        .post("/api/agents/agent-1/sdk-keys", json!({"name": "exec", "scopes": ["payments:execute"]}))
        .await;
    assert_eq!(status, 201);
    let exec =
        Sdk { base: sdk.base.clone(), key: key["key"].as_str().unwrap().to_owned(), http: reqwest::Client::new() };
    let (status, body) = exec.post(&format!("/api/sdk/payments/{id}/execute"), json!({})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("EXTERNAL_WALLET")), "{body}");

    // So the app pays it and confirms it: a payment request's approval was issued no token,
    // and its confirm needs none (a transfer approval's does, below).
    let (status, receipt) = sdk.post(&format!("/api/sdk/payments/{id}/confirm"), json!({"txHash": TX})).await;
    assert_eq!((status, &receipt["confirmed"], &receipt["amount"]), (200, &json!(true), &json!(12.5)), "{receipt}");
    let (status, again) = sdk.post(&format!("/api/sdk/payments/{id}/confirm"), json!({"txHash": TX})).await;
    assert_eq!((status, &again), (200, &receipt), "the same confirm again: the first answer");
    let other = json!({"txHash": format!("0x{}", "8".repeat(64))});
    let (status, again) = sdk.post(&format!("/api/sdk/payments/{id}/confirm"), other).await;
    assert_eq!((status, again["code"].as_str()), (400, Some("INVALID_STATUS")), "confirmed once: {again}");
    let (_, polled) = sdk.call(reqwest::Method::GET, &format!("/api/sdk/payments/{id}"), None).await;
    assert_eq!(polled["status"], "EXECUTED", "{polled}");
    let (status, body) = exec.post(&format!("/api/sdk/payments/{id}/execute"), json!({})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_STATUS")), "paid already: {body}");
}

/// Provisioning as Conto's hybrid starter does it, through the org surface, then the controls
/// it sets taking effect on payment requests.
#[tokio::test]
async fn the_starter_provisions_through_the_org_surface_and_its_controls_apply() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    let (status, members) = org.get("/api/organizations/me/members").await;
    let owners: Vec<&Value> = members["members"].as_array().unwrap().iter().filter(|m| m["role"] == "OWNER").collect();
    assert_eq!((status, owners.len()), (200, 1), "{members}");
    let owner = owners[0]["id"].as_str().unwrap().to_owned();

    let (status, agent) = org
        .post(
            "/api/agents",
            json!({"name": "Anthropic Shopping · 1a2b3c4d", "description": "demo", "agentType": "ANTHROPIC_CLAUDE",
                "purpose": "shop", "externalId": "anthropic-shopping-1a2b3c4d", "environment": "DEV",
                "riskTier": "MEDIUM", "ownerMembershipId": owner, "allowedContexts": ["shopping.checkout"],
                "identityTags": ["public-demo"]}),
        )
        .await;
    assert_eq!(status, 201, "{agent}");
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let merchant = "0x616e7468726f7069632d73686f7070696e672d61";
    let (status, cp) = org
        .post(
            "/api/counterparties",
            json!({"name": "ACME Retail · 1a2b", "type": "VENDOR", "address": merchant, "category": "MERCHANDISE",
                "description": "demo merchant", "approvalStatus": "APPROVED"}),
        )
        .await;
    assert_eq!(status, 201, "{cp}");
    let (status, wallet) = org
        .post(
            &format!("/api/agents/{agent_id}/wallets"),
            json!({"walletId": "wal_shared", "delegationType": "LIMITED", "spendLimitPerTx": 1000,
                "spendLimitDaily": 2500, "spendLimitWeekly": 10000, "spendLimitMonthly": 25000,
                "allowedHoursStart": 0, "allowedHoursEnd": 24,
                "allowedDays": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]}),
        )
        .await;
    assert_eq!(status, 201, "{wallet}");
    // The starter's three policies, at its priorities: spend 60, approval 70, merchants 80; its
    // values are Python's `str(float)`.
    let assigned = |name: &str, policy_type: &str, priority: u32, rules: Value| {
        json!({"name": name, "policyType": policy_type, "priority": priority, "scope": "assigned",
            "agentIds": [agent_id.clone()], "rules": rules})
    };
    let spend = org
        .policy(assigned(
            "spend",
            "SPEND_LIMIT",
            60,
            json!([
                {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "100.0", "action": "ALLOW"},
                {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "500.0", "action": "ALLOW"},
                {"ruleType": "WEEKLY_LIMIT", "operator": "LTE", "value": "2000.0", "action": "ALLOW"},
                {"ruleType": "MONTHLY_LIMIT", "operator": "LTE", "value": "5000.0", "action": "ALLOW"}]),
        ))
        .await;
    assert!(spend["id"].as_str().is_some(), "{spend}");
    let approval = org
        .policy(assigned(
            "approval",
            "APPROVAL_THRESHOLD",
            70,
            json!([{"ruleType": "REQUIRE_APPROVAL_ABOVE", "operator": "GREATER_THAN", "value": "50.0", "action": "REQUIRE_APPROVAL"}]),
        ))
        .await;
    assert!(approval["id"].as_str().is_some());
    let merchants = org
        .policy(assigned(
            "merchants",
            "COUNTERPARTY",
            80,
            json!([{"ruleType": "ALLOWED_COUNTERPARTIES", "operator": "IN_LIST", "value": format!("[\"{merchant}\"]"), "action": "ALLOW"}]),
        ))
        .await;
    let (status, key) = org
        .post(
            &format!("/api/agents/{agent_id}/sdk-keys"),
            json!({"name": "runtime", "keyType": "standard", "expiresInDays": 1}),
        )
        .await;
    assert_eq!(status, 201);
    let sdk = Sdk { base: server.url(), key: key["key"].as_str().unwrap().to_owned(), http: reqwest::Client::new() };
    let request = |amount: &str| json!({"amount": amount, "recipientAddress": merchant, "autoExecute": false});
    // A scope Conto does not name (a typo) is refused when the key is made, naming it.
    let (status, typo) = org
        .post(&format!("/api/agents/{agent_id}/sdk-keys"), json!({"name": "typo", "scopes": ["payments:aprove"]}))
        .await;
    assert_eq!((status, typo["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{typo}");
    assert!(typo["message"].as_str().unwrap().contains("`payments:aprove`"), "{typo}");
    for name in [String::new(), "k".repeat(201)] {
        let (status, body) = org.post(&format!("/api/agents/{agent_id}/sdk-keys"), json!({"name": name})).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{body}");
    }

    // The org's own lists (`ContoAdmin`'s `/api/wallets` and `/api/api-keys`) name each agent;
    // a key is listed by its prefix, never in full, and an agent key may not read them.
    let (status, wallets) = org.get("/api/wallets").await;
    assert_eq!(status, 200, "{wallets}");
    let delegation = wallets["wallets"].as_array().unwrap().iter().find(|w| w["walletId"] == "wal_shared").cloned();
    assert_eq!(delegation.map(|w| w["agentId"].clone()), Some(json!(agent_id)), "{wallets}");
    let (status, keys) = org.get("/api/api-keys").await;
    assert_eq!(status, 200, "{keys}");
    let listed = keys["keys"].as_array().unwrap().iter().find(|k| k["id"] == key["id"]).cloned().unwrap();
    assert_eq!((&listed["agentId"], &listed["keyPrefix"]), (&json!(agent_id), &key["keyPrefix"]), "{listed}");
    assert!(listed.get("key").is_none() && !keys.to_string().contains(sdk.key.as_str()), "{keys}");
    for path in ["/api/wallets", "/api/api-keys"] {
        let (status, err) = sdk.call(reqwest::Method::GET, path, None).await;
        assert_eq!((status, err["code"].as_str()), (403, Some("INSUFFICIENT_SCOPE")), "{path}: {err}");
    }

    // The controls as the starter reads them back.
    let (_, read) = org.get(&format!("/api/agents/{agent_id}")).await;
    assert_eq!(read["status"], "ACTIVE");
    let (_, policies) = org.get(&format!("/api/agents/{agent_id}/policies")).await;
    assert_eq!(policies["policies"].as_array().unwrap().len(), 3, "{policies}");
    let (_, found) = org.get(&format!("/api/counterparties?search={merchant}&limit=20")).await;
    assert_eq!(found["counterparties"][0]["id"], cp["id"]);
    for limit in ["abc", "0", "501", "-1"] {
        let (status, err) = org.get(&format!("/api/counterparties?limit={limit}")).await;
        assert_eq!((status, &err["code"]), (400, &json!("VALIDATION_ERROR")), "{limit}: {err}");
    }
    let (_, effective) = sdk.call(reqwest::Method::GET, "/api/sdk/policies?walletId=wal_shared", None).await;
    assert!(!effective["policies"].as_array().unwrap().is_empty());

    // The spend policy's limit, the approval threshold and the allowlist apply. Over the
    // per-purchase limit is denied although the approval policy, at a higher priority, would
    // ask for a human: a denial anywhere beats a request for approval.
    let (_, ok) = sdk.post("/api/sdk/payments/request", request("40")).await;
    assert_eq!(ok["status"], "APPROVED", "{ok}");
    let (_, over) = sdk.post("/api/sdk/payments/request", request("120")).await;
    assert_eq!(
        (over["status"].as_str(), over["violations"][0]["type"].as_str()),
        (Some("DENIED"), Some("PER_TX_LIMIT")),
        "{over}"
    );
    // Its status read names the broken rule again, as the decision did.
    let (_, read) = sdk
        .call(reqwest::Method::GET, &format!("/api/sdk/payments/{}", over["requestId"].as_str().unwrap()), None)
        .await;
    assert_eq!((read["status"].as_str(), &read["violations"]), (Some("DENIED"), &over["violations"]), "{read}");
    let (_, review) = sdk.post("/api/sdk/payments/request", request("60")).await;
    assert_eq!(review["status"], "REQUIRES_APPROVAL");
    let (_, wallets) = org.get(&format!("/api/agents/{agent_id}/wallets")).await;
    assert!(wallets["wallets"][0]["spentToday"].as_f64().is_some(), "{wallets}");
    let (status, _) = org
        .http
        .patch(format!("{}/api/agents/{agent_id}/wallets/wal_shared", server.url()))
        .bearer_auth(&org.key)
        .json(&json!({"spendLimitPerTx": 30}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 200);
    let (_, lowered) = sdk.post("/api/sdk/payments/request", request("35")).await;
    assert_eq!(lowered["status"], "DENIED", "the patched wallet limit applies: {lowered}");

    // Disabling the merchant with an empty allowlist, then pausing the agent.
    let put_rules = |id: &str, rules: Value| {
        org.http
            .put(format!("{}/api/policies/{id}/rules", server.url()))
            .bearer_auth(&org.key)
            .json(&json!({"rules": rules}))
            .send()
    };
    let resp = put_rules(
        merchants["id"].as_str().unwrap(),
        json!([{"ruleType": "ALLOWED_COUNTERPARTIES", "operator": "IN_LIST", "value": "[]", "action": "ALLOW"}]),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, blocked) = sdk.post("/api/sdk/payments/request", request("10")).await;
    assert_eq!(blocked["violations"][0]["type"], "WHITELIST_VIOLATION", "{blocked}");

    // Cleanup, as the starter does after a failed provisioning.
    for path in [
        format!("/api/policies/{}", spend["id"].as_str().unwrap()),
        format!("/api/policies/{}", approval["id"].as_str().unwrap()),
        format!("/api/policies/{}", merchants["id"].as_str().unwrap()),
        format!("/api/agents/{agent_id}"),
        format!("/api/counterparties/{}", cp["id"].as_str().unwrap()),
    ] {
        let resp = org.http.delete(format!("{}{path}", server.url())).bearer_auth(&org.key).send().await.unwrap();
        assert!(resp.status().is_success(), "DELETE {path}: {}", resp.status());
    }
}

/// Conto's agent skill: an admin SDK key may change policies; a standard key may only read.
#[tokio::test]
async fn an_agent_is_renamed_described_and_paused_by_patch_and_a_refused_patch_changes_nothing() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    let (status, made) = org.post("/api/agents", json!({"name": "Buyer", "description": "buys things"})).await;
    assert_eq!((status, &made["description"]), (201, &json!("buys things")), "{made}");
    let id = made["id"].as_str().unwrap().to_owned();
    let (status, got) = org.get(&format!("/api/agents/{id}")).await;
    assert_eq!((status, &got["name"], &got["description"]), (200, &json!("Buyer"), &json!("buys things")));

    let (status, patched) = org.patch(&format!("/api/agents/{id}"), json!({"name": "Procurement"})).await;
    assert_eq!(
        (status, &patched["name"], &patched["description"]),
        (200, &json!("Procurement"), &json!("buys things"))
    );
    let (_, listed) = org.get("/api/agents").await;
    let names: Vec<&Value> = listed["agents"].as_array().unwrap().iter().map(|a| &a["name"]).collect();
    assert!(names.contains(&&json!("Procurement")) && !names.contains(&&json!("Buyer")), "{listed}");

    // A refused patch changes none of its fields, the valid ones included.
    for bad in [
        json!({"name": "Other", "status": "ASLEEP"}),
        json!({"name": "   "}),
        json!({"name": "x".repeat(201)}),
        json!({"description": "d".repeat(2_001), "status": "PAUSED"}),
        json!({"name": 7}),
    ] {
        let (status, err) = org.patch(&format!("/api/agents/{id}"), bad.clone()).await;
        assert_eq!((status, &err["code"]), (400, &json!("VALIDATION_ERROR")), "{bad}: {err}");
        let (_, got) = org.get(&format!("/api/agents/{id}")).await;
        assert_eq!((&got["name"], &got["status"]), (&json!("Procurement"), &json!("ACTIVE")), "{bad}");
    }

    // The kill switch still works beside a rename, and the next decision sees it.
    let (status, paused) =
        org.patch("/api/agents/agent-1", json!({"status": "PAUSED", "description": "on hold"})).await;
    assert_eq!((status, &paused["status"], &paused["description"]), (200, &json!("PAUSED"), &json!("on hold")));
    let (status, denied) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    assert_eq!((status, &denied["approved"]), (200, &json!(false)), "{denied}");
    let (status, _) = org.patch("/api/agents/agent-1", json!({"status": "ACTIVE"})).await;
    assert_eq!(status, 200);
    let (_, approved) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    assert_eq!(approved["approved"], json!(true), "{approved}");
}

/// A delegation shows what its agent spent today, this week and this month, whether or not a
/// limit counts that period (they read 0 with only a per-transaction limit).
#[tokio::test]
async fn a_wallets_spend_is_shown_for_every_period_whatever_its_limits() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    let (status, _) =
        org.post("/api/agents/agent-1/wallets", json!({"walletId": "w-real", "spendLimitPerTx": 100})).await;
    assert_eq!(status, 201);
    assert_eq!(pay_transfer(&sdk, 40).await, 200);
    assert_eq!(pay_transfer(&sdk, 2).await, 200);
    // Approved, not confirmed: held, not spent.
    let (_, held) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    assert_eq!(held["approved"], true, "{held}");
    let (_, org_view) = org.get("/api/agents/agent-1/wallets").await;
    let (_, own_view) = sdk.call(reqwest::Method::GET, "/api/sdk/wallets", None).await;
    for wallets in [org_view, own_view] {
        let w = &wallets["wallets"][0];
        assert_eq!(
            (&w["walletId"], &w["spentToday"], &w["spentThisWeek"], &w["spentThisMonth"]),
            (&json!("w-real"), &json!(42), &json!(42), &json!(42)),
            "{wallets}"
        );
    }
}

/// A payment request names a wallet its agent was delegated: another agent's, or one outside
/// its delegations, is `400 NO_WALLET`; an agent with no delegation may still name a wallet no
/// agent holds (it pays from its app's own).
#[tokio::test]
async fn a_payment_request_names_a_wallet_its_agent_holds() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    let other = Sdk { base: server.url(), key: org.agent("agent-2", ALL_SCOPES).await, http: reqwest::Client::new() };
    let request =
        |wallet: &str| json!({"amount": 1, "recipientAddress": RECIPIENT, "purpose": "test", "walletId": wallet});
    // No delegation anywhere: any wallet id (conto-local's zero-setup path).
    let (status, body) = sdk.post("/api/sdk/payments/request", request("wal_app")).await;
    assert_eq!((status, &body["status"]), (200, &json!("APPROVED")), "{body}");

    let (status, _) = org.post("/api/agents/agent-2/wallets", json!({"walletId": "wal_two"})).await;
    assert_eq!(status, 201);
    // agent-1 has no delegation, but `wal_two` is agent-2's.
    let (status, body) = sdk.post("/api/sdk/payments/request", request("wal_two")).await;
    assert_eq!((status, &body["code"]), (400, &json!("NO_WALLET")), "{body}");
    let (status, body) = other.post("/api/sdk/payments/request", request("wal_two")).await;
    assert_eq!((status, &body["status"]), (200, &json!("APPROVED")), "{body}");
    // agent-2 holds `wal_two` only: a wallet outside its delegations is refused.
    let (status, body) = other.post("/api/sdk/payments/request", request("wal_app")).await;
    assert_eq!((status, &body["code"]), (400, &json!("NO_WALLET")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("wal_app"), "{body}");
}

/// A request for a human's approval that lapsed unanswered is listed `EXPIRED`, and deciding it
/// then is `400 EXPIRED` (Conto's code), not an unknown request; its payment request stands
/// `DENIED`, saying it lapsed.
#[tokio::test]
async fn deciding_a_lapsed_approval_request_is_expired_not_unknown() {
    let db = fresh_db("lapsed-request");
    let (server, sdk) = setup(Some(db.clone())).await;
    let (status, held) = sdk
        .post("/api/sdk/payments/request", json!({"amount": 90, "recipientAddress": RECIPIENT, "purpose": "big"}))
        .await;
    assert_eq!((status, &held["status"]), (202, &json!("REQUIRES_APPROVAL")), "{held}");
    let (request, approval) = (held["requestId"].as_str().unwrap(), held["approvalRequestId"].as_str().unwrap());
    // An hour passes unanswered (what only time would do).
    let server =
        restarted_after(server, &db, "UPDATE approval_requests SET expires_at = '2000-01-01T00:00:00.000Z'").await;
    let (org, sdk) = (Org::new(&server), Sdk { base: server.url(), ..sdk });
    let (_, listed) = sdk.call(reqwest::Method::GET, "/api/sdk/approval-requests", None).await;
    assert_eq!(listed["requests"][0]["status"], json!("EXPIRED"), "{listed}");
    for decision in ["approve", "reject"] {
        let (status, err) = org.post(&format!("/api/approval-requests/{approval}/{decision}"), json!({})).await;
        assert_eq!((status, &err["code"]), (400, &json!("EXPIRED")), "{decision}: {err}");
    }
    let (_, now) = sdk.call(reqwest::Method::GET, &format!("/api/sdk/payments/{request}"), None).await;
    assert_eq!(now["status"], json!("DENIED"), "{now}");
    assert!(now["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains("lapsed")), "{now}");
}

/// A deleted agent's history (spends, live approvals, keys, policies, counters) stays under its
/// id, so the id is never handed to a new agent, across a restart too.
#[tokio::test]
async fn a_deleted_agents_id_is_never_given_to_a_new_agent() {
    let db = fresh_db("retired");
    let server = start_on_db(db.clone()).await;
    let org = Org::new(&server);
    let old_key = org.agent("del-me", ALL_SCOPES).await;
    let (status, _) = org.post("/api/agents/del-me/wallets", json!({"walletId": "w-old"})).await;
    assert_eq!(status, 201);
    let old = Sdk { base: server.url(), key: old_key, http: reqwest::Client::new() };
    let (_, approved) = old.post("/api/sdk/payments/approve", transfer_payment(3)).await;
    assert_eq!(approved["approved"], json!(true), "{approved}");
    let delete = |id: &str| {
        reqwest::Client::new()
            .delete(format!("{}/api/agents/{id}", server.url()))
            .bearer_auth(secrecy::ExposeSecret::expose_secret(server.org_key()))
            .send()
    };
    assert_eq!(delete("del-me").await.unwrap().status(), 200);

    let (status, err) = org.post("/api/agents", json!({"id": "del-me", "name": "new owner"})).await;
    assert_eq!((status, &err["code"]), (409, &json!("CONFLICT")), "{err}");
    let (_, listed) = org.get("/api/agents").await;
    assert_eq!(listed["agents"], json!([]), "{listed}");
    // The live approval it left is no one's to confirm.
    let (status, _) = old
        .post(
            &format!("/api/sdk/payments/{}/confirm", approved["approvalId"].as_str().unwrap()),
            json!({"txHash": format!("0x{}", "ab".repeat(32)), "approvalToken": approved["approvalToken"]}),
        )
        .await;
    assert_eq!(status, 401, "the deleted agent's key is revoked");

    drop(old);
    // An earlier version deleted the agent without a trace: the id is still retired, found in
    // the rows that name it.
    let again = restarted_after(server, &db, "DELETE FROM retired_agents").await;
    let (status, _) = Org::new(&again).post("/api/agents", json!({"id": "del-me", "name": "new owner"})).await;
    assert_eq!(status, 409, "retired across a restart, and in a file from an earlier version");
    // Its delegations are no longer read or changed through it.
    let (status, _) = Org::new(&again).get("/api/agents/del-me/wallets").await;
    assert_eq!(status, 404);
    let (status, _) = Org::new(&again).patch("/api/agents/del-me/wallets/w-old", json!({"spendLimitDaily": 5})).await;
    assert_eq!(status, 404);
    assert!(matches!(conto_local::bootstrap_agent(Some(&db), "del-me"), Err(conto_local::LocalError::InUse { .. })));
    again.stop().await;
    assert!(matches!(
        conto_local::bootstrap_agent(Some(&db), "del-me"),
        Err(conto_local::LocalError::RetiredAgent(id)) if id == "del-me"
    ));
    assert!(conto_local::bootstrap_agent(Some(&db), "fresh").unwrap().is_some(), "another id is free");
}

#[tokio::test]
async fn a_policy_cannot_be_assigned_to_an_agent_that_does_not_exist() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    org.agent("agent-1", ALL_SCOPES).await;
    org.agent("agent-2", ALL_SCOPES).await;
    let rules = json!([{"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "10", "action": "ALLOW"}]);
    let (status, err) =
        org.post("/api/policies", json!({"name": "cap", "agentIds": ["agent-1", "agent-9"], "rules": rules})).await;
    assert_eq!((status, &err["code"]), (400, &json!("VALIDATION_ERROR")), "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("agentIds[1]")
            && err["message"].as_str().unwrap().contains("agent-9")
    );
    let (status, err) = org
        .post("/api/policies", json!({"name": "cap", "agentPolicies": [{"agentId": "ghost"}], "rules": rules}))
        .await;
    assert_eq!(status, 400, "{err}");
    let (_, listed) = org.get("/api/policies").await;
    assert_eq!(listed["policies"], json!([]), "nothing stored");

    let made = org.policy(json!({"name": "cap", "agentIds": ["agent-2"], "rules": rules})).await;
    let path = format!("/api/policies/{}", made["id"].as_str().unwrap());
    let (status, _) = org.patch(&path, json!({"agentIds": ["agent-9"]})).await;
    assert_eq!(status, 400);
    let (_, kept) = org.get(&path).await;
    assert_eq!(kept["agentIds"], json!(["agent-2"]), "a refused patch keeps the assignment");
    // A policy that still names an agent deleted since can be edited otherwise.
    let resp = reqwest::Client::new()
        .delete(format!("{}/api/agents/agent-2", server.url()))
        .bearer_auth(secrecy::ExposeSecret::expose_secret(server.org_key()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, renamed) = org.patch(&path, json!({"name": "old cap"})).await;
    assert_eq!((status, &renamed["name"]), (200, &json!("old cap")), "{renamed}");
}

#[tokio::test]
async fn admin_sdk_keys_manage_policies_and_standard_keys_read_them() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    org.agent("agent-1", ALL_SCOPES).await;
    let key = |key_type: &'static str| {
        let org = &org;
        async move {
            let (_, k) = org
                .post(
                    "/api/agents/agent-1/sdk-keys",
                    json!({"name": key_type, "keyType": key_type, "scopes": ["policies:read", "payments:request"]}),
                )
                .await;
            k["key"].as_str().unwrap().to_owned()
        }
    };
    let (admin, standard) = (key("admin").await, key("standard").await);
    let policy = json!({"name": "cap", "agentIds": ["agent-1"], "rules": [
        {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "10", "action": "ALLOW"}]});
    let send = |k: &str, method: reqwest::Method, body: Option<Value>| {
        let mut req = org.http.request(method, format!("{}/api/policies", server.url())).bearer_auth(k);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };
    let denied = send(&standard, reqwest::Method::POST, Some(policy.clone())).await.unwrap();
    assert_eq!(denied.status(), 403);
    let created = send(&admin, reqwest::Method::POST, Some(policy)).await.unwrap();
    assert_eq!(created.status(), 201);
    let listed = send(&standard, reqwest::Method::GET, None).await.unwrap();
    assert_eq!(listed.status(), 200);

    // Deletes answer what they deleted (Conto's skill prints the body it gets back).
    let created: Value = listed.json::<Value>().await.unwrap()["policies"][0].clone();
    let (id, rule) = (created["id"].as_str().unwrap(), created["rules"][0]["id"].as_str().unwrap());
    let delete = |path: String| org.http.delete(format!("{}{path}", server.url())).bearer_auth(&admin).send();
    let gone = delete(format!("/api/policies/{id}/rules/{rule}")).await.unwrap();
    assert_eq!(gone.status(), 200);
    assert_eq!(gone.json::<Value>().await.unwrap(), json!({"deleted": true, "id": rule}));
    let gone = delete(format!("/api/policies/{id}")).await.unwrap();
    assert_eq!(gone.status(), 200);
    assert_eq!(gone.json::<Value>().await.unwrap(), json!({"deleted": true, "id": id}));
    assert_eq!(delete(format!("/api/policies/{id}")).await.unwrap().status(), 404);
}

/// An admin key has Conto's expanded preset: the payment scopes with the policy writes, so the
/// one `CONTO_SDK_KEY` Conto's skill uses serves its payment commands (approve, confirm) and
/// its policy commands alike. A standard key asked for nothing has none of them.
#[tokio::test]
async fn one_admin_key_serves_the_skills_payment_and_policy_commands() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    org.agent("agent-1", ALL_SCOPES).await;
    let (status, made) = org.post("/api/agents/agent-1/sdk-keys", json!({"name": "skill", "keyType": "admin"})).await;
    assert_eq!(status, 201, "{made}");
    for scope in ["payments:approve", "payments:confirm", "payments:execute", "payments:request"] {
        assert!(made["scopes"].as_array().unwrap().contains(&json!(scope)), "{scope}: {made}");
    }
    let admin = Sdk { base: server.url(), key: made["key"].as_str().unwrap().to_owned(), http: reqwest::Client::new() };
    let (status, created) = admin
        .post(
            "/api/policies",
            json!({"name": "cap", "rules": [
            {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "100", "action": "ALLOW"}]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, a) = admin.post("/api/sdk/payments/approve", transfer_payment(20)).await;
    assert_eq!((status, &a["approved"]), (200, &json!(true)), "{a}");
    let path = format!("/api/sdk/payments/{}/confirm", a["approvalId"].as_str().unwrap());
    let (status, c) =
        admin.post(&path, json!({"txHash": format!("0x{:064x}", 7), "approvalToken": a["approvalToken"]})).await;
    assert_eq!(status, 200, "{c}");

    let (_, made) = org.post("/api/agents/agent-1/sdk-keys", json!({"name": "plain"})).await;
    let standard =
        Sdk { base: server.url(), key: made["key"].as_str().unwrap().to_owned(), http: reqwest::Client::new() };
    let (status, e) = standard.post("/api/sdk/payments/approve", transfer_payment(20)).await;
    assert_eq!((status, &e["code"]), (403, &json!("INSUFFICIENT_SCOPE")), "{e}");
}

/// A policy change counts again only the agents it binds: a limit an agent's admin key adds
/// counts that agent's spend before it, and another agent's spend and live approvals still
/// count for it (an admin key's edits never recount the whole org under the store's lock).
#[tokio::test]
async fn a_policy_change_recounts_the_agents_it_binds_and_leaves_the_others_counted() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    let one = Sdk { base: server.url(), key: org.agent("agent-1", ALL_SCOPES).await, http: reqwest::Client::new() };
    let two = Sdk { base: server.url(), key: org.agent("agent-2", ALL_SCOPES).await, http: reqwest::Client::new() };
    org.policy(json!({"name": "agent-2 daily", "agentIds": ["agent-2"], "rules": [
        {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "100", "action": "ALLOW"}]}))
        .await;
    let pay = |sdk: &Sdk, amount: u32| {
        let sdk = Sdk { base: sdk.base.clone(), key: sdk.key.clone(), http: sdk.http.clone() };
        async move {
            let (_, a) = sdk.post("/api/sdk/payments/approve", transfer_payment(amount)).await;
            assert_eq!(a["approved"], true, "{a}");
            let path = format!("/api/sdk/payments/{}/confirm", a["approvalId"].as_str().unwrap());
            let tx = format!("0x{:064x}", amount);
            let (status, r) = sdk.post(&path, json!({"txHash": tx, "approvalToken": a["approvalToken"]})).await;
            assert_eq!(status, 200, "{r}");
        }
    };
    pay(&one, 70).await;
    pay(&two, 60).await;
    let (_, held) = two.post("/api/sdk/payments/approve", transfer_payment(30)).await; // live, unconfirmed
    assert_eq!(held["approved"], true, "{held}");
    // agent-1's admin key adds a daily limit of 100 to its own agent.
    let (_, admin) = org
        .post("/api/agents/agent-1/sdk-keys", json!({"name": "admin", "keyType": "admin", "scopes": ["policies:read"]}))
        .await;
    let admin =
        Sdk { base: server.url(), key: admin["key"].as_str().unwrap().to_owned(), http: reqwest::Client::new() };
    let (status, made) = admin
        .post(
            "/api/policies",
            json!({"name": "daily", "rules": [
            {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "100", "action": "ALLOW"}]}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    // agent-1's 70 counts under its new limit; agent-2's 60 spent and 30 held still count.
    let (_, over) = one.post("/api/sdk/payments/approve", transfer_payment(31)).await;
    assert_eq!(over["approved"], false, "70 + 31 > 100: {over}");
    let (_, over) = two.post("/api/sdk/payments/approve", transfer_payment(11)).await;
    assert_eq!(over["approved"], false, "60 + 30 + 11 > 100: {over}");
    let (_, fits) = two.post("/api/sdk/payments/approve", transfer_payment(10)).await;
    assert_eq!(fits["approved"], true, "{fits}");
}

/// Conto's skill creates a policy with an agent's admin key and no `agentIds`: it governs that
/// agent (and only it); the admin key cannot reach other agents' policies, and an agent's key
/// lists only the policies that apply to its agent.
#[tokio::test]
async fn an_admin_key_governs_its_own_agent_only() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    let one = org.agent("agent-1", ALL_SCOPES).await;
    org.agent("agent-2", ALL_SCOPES).await;
    let (_, admin) = org
        .post("/api/agents/agent-1/sdk-keys", json!({"name": "admin", "keyType": "admin", "scopes": ["policies:read"]}))
        .await;
    let admin = admin["key"].as_str().unwrap().to_owned();
    let sdk = Sdk { base: server.url(), key: admin.clone(), http: reqwest::Client::new() };
    // The skill's recipe, as conto-check.sh create-policy sends it.
    let (status, created) = sdk
        .post(
            "/api/policies",
            json!({"name": "Max $200 Per Transaction", "policyType": "SPEND_LIMIT",
            "priority": 10, "isActive": true,
            "rules": [{"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "200", "action": "ALLOW"}]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["agentIds"], json!(["agent-1"]), "assigned to the key's own agent");
    let agent1 = Sdk { base: server.url(), key: one, http: reqwest::Client::new() };
    let body = transfer_payment(300);
    let (status, denied) = agent1.post("/api/sdk/payments/approve", body.clone()).await;
    assert_eq!((status, &denied["approved"]), (200, &json!(false)), "{denied}");
    // Another agent is not bound by it.
    let (_, two) = org.post("/api/agents/agent-2/sdk-keys", json!({"name": "k", "scopes": ALL_SCOPES})).await;
    let agent2 = Sdk { base: server.url(), key: two["key"].as_str().unwrap().to_owned(), http: reqwest::Client::new() };
    let (_, approved) = agent2.post("/api/sdk/payments/approve", body).await;
    assert_eq!(approved["approved"], true, "{approved}");
    // The admin key cannot write policies for another agent, or for every agent.
    for doc in
        [json!({"name": "x", "agentIds": ["agent-2"], "rules": []}), json!({"name": "y", "scope": "all", "rules": []})]
    {
        let (status, err) = sdk.post("/api/policies", doc).await;
        assert_eq!((status, err["code"].as_str()), (403, Some("INSUFFICIENT_SCOPE")), "{err}");
    }
    let other = org.policy(json!({"name": "agent-2 cap", "agentIds": ["agent-2"], "rules": []})).await;
    let (status, _) =
        sdk.call(reqwest::Method::DELETE, &format!("/api/policies/{}", other["id"].as_str().unwrap()), None).await;
    assert_eq!(status, 403);
    // An org policy without agents waits for its assignment; an agent's key lists only its own.
    let waiting = org.policy(json!({"name": "later", "rules": []})).await;
    assert_eq!(waiting["scope"], "assigned");
    let (_, listed) = sdk.call(reqwest::Method::GET, "/api/policies", None).await;
    let names: Vec<&str> = listed["policies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Max $200 Per Transaction"], "{listed}");

    // Paused (the org's kill switch), its agent's admin key cannot lift the cap to spend past
    // it once resumed: no delete, no rule change, no new policy; reads still work.
    let own = format!("/api/policies/{}", created["id"].as_str().unwrap());
    let (status, _) = org.patch("/api/agents/agent-1", json!({"status": "PAUSED"})).await;
    assert_eq!(status, 200);
    let rules = json!([{"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "100000", "action": "ALLOW"}]);
    for (method, path, body) in [
        (reqwest::Method::DELETE, own.clone(), None),
        (reqwest::Method::PUT, format!("{own}/rules"), Some(rules)),
        (reqwest::Method::POST, "/api/policies".to_owned(), Some(json!({"name": "z", "rules": []}))),
    ] {
        let (status, err) = sdk.call(method, &path, body).await;
        assert_eq!((status, err["code"].as_str()), (403, Some("AGENT_PAUSED")), "{path}: {err}");
    }
    assert_eq!(sdk.call(reqwest::Method::GET, &own, None).await.0, 200);
    let (status, _) = org.patch("/api/agents/agent-1", json!({"status": "ACTIVE"})).await;
    assert_eq!(status, 200);
    let (status, denied) = agent1.post("/api/sdk/payments/approve", transfer_payment(300)).await;
    assert_eq!((status, &denied["approved"]), (200, &json!(false)), "the cap still holds: {denied}");
    assert_eq!(sdk.call(reqwest::Method::DELETE, &own, None).await.0, 200, "resumed, it manages its policies again");
}

/// A policy taken off every agent binds no one (it bound every agent: unassigned, it read as
/// a file's policy without agents), and what an agent reads is what binds it. An unknown
/// `scope` is refused, not read as "every agent".
#[tokio::test]
async fn an_unassigned_policy_binds_no_one_and_an_unknown_scope_is_refused() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    let one = org.agent("agent-1", ALL_SCOPES).await;
    let two = org.agent("agent-2", ALL_SCOPES).await;
    let sdk = |key: &str| Sdk { base: server.url(), key: key.to_owned(), http: reqwest::Client::new() };
    let approved = |sdk: Sdk| async move {
        let (_, body) = sdk.post("/api/sdk/payments/approve", transfer_payment(6)).await;
        body["approved"].as_bool().unwrap()
    };
    for assign in [json!({"agentIds": ["agent-1"]}), json!({"agentPolicies": [{"agentId": "agent-1"}]})] {
        let mut doc = json!({"name": format!("cap {assign}"), "rules": [
            {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "5", "action": "ALLOW"}]});
        doc.as_object_mut().unwrap().extend(assign.as_object().unwrap().clone());
        let policy = org.policy(doc).await;
        assert_eq!(policy["scope"], "assigned", "{policy}");
        assert!(!approved(sdk(&one)).await && approved(sdk(&two)).await);
        let path = format!("/api/policies/{}", policy["id"].as_str().unwrap());
        let (status, unassigned) = org.patch(&path, json!({"agentIds": []})).await;
        assert_eq!(status, 200, "{unassigned}");
        assert!(approved(sdk(&one)).await && approved(sdk(&two)).await, "bound no one: {unassigned}");
        for key in [&one, &two] {
            let (_, listed) = sdk(key).call(reqwest::Method::GET, "/api/sdk/policies", None).await;
            assert_eq!(listed["policies"], json!([]), "{listed}");
        }
        let gone = org.http.delete(format!("{}{path}", server.url())).bearer_auth(&org.key).send().await.unwrap();
        assert_eq!(gone.status(), 200);
    }
    // A scope is kept in lower case (matched whatever its case) and an agent named once.
    let all =
        org.policy(json!({"name": "every", "scope": "ALL", "agentIds": ["agent-1", "agent-1"], "rules": []})).await;
    assert_eq!((&all["scope"], &all["agentIds"]), (&json!("all"), &json!(["agent-1"])), "{all}");
    let links = json!([{"agentId": "agent-2"}, {"agentId": "agent-2"}]);
    let linked = org.policy(json!({"name": "linked", "agentPolicies": links, "rules": []})).await;
    assert_eq!(linked["agentPolicies"], json!([{"agentId": "agent-2"}]), "{linked}");
    for scope in ["everyone", "org", "ALL_AGENTS"] {
        let (status, err) = org.post("/api/policies", json!({"name": "x", "scope": scope, "rules": []})).await;
        assert_eq!((status, err["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{scope}: {err}");
    }
}

/// `ContoClient` on the request rail: a payment request decides, the app settles elsewhere,
/// a pending request follows the human's answer, and recording makes no remote call.
#[tokio::test]
async fn the_client_authorizes_on_the_request_rail() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    org.policy(caps()).await;
    let intent = |amount: &str| {
        conto_core::PaymentIntent::builder("agent-1", amount, conto_core::Rail::request(Some("wal_shared")))
            .recipient(RECIPIENT)
            .build()
            .unwrap()
    };
    let conto = conto(&server, &key);
    let mut charged = 0;
    let out = conto
        .run(
            intent("12"),
            |_| {
                charged += 1;
                async { Ok::<_, ()>("ch_1") }
            },
            |_| conto_core::Settlement::default().reference("ch_1"),
        )
        .await
        .unwrap();
    assert_eq!(out, Ok("ch_1"));
    let denied = conto.authorize(intent("120")).await.unwrap_err();
    assert_eq!(denied.violations()[0].kind, conto_core::ViolationType::PerTxLimit);

    // Above the review threshold: wait for a human, who approves.
    let waiting = conto.with_approval(conto_core::ApprovalMode::Wait(std::time::Duration::from_secs(10)));
    let org_url = server.url();
    let org_key = org.key.clone();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let listed: Value = http
                .get(format!("{org_url}/api/sdk/approval-requests"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(id) = listed["requests"]
                .as_array()
                .and_then(|l| l.iter().find(|r| r["status"] == "PENDING"))
                .and_then(|r| r["approvalRequestId"].as_str())
            {
                http.post(format!("{org_url}/api/approval-requests/{id}/approve"))
                    .bearer_auth(&org_key)
                    .send()
                    .await
                    .unwrap();
                return;
            }
        }
    });
    let approval = waiting.authorize(intent("90")).await.expect("approved by the human");
    let recorded = approval.record(conto_core::Settlement::default().reference("ch_2")).await.unwrap();
    assert_eq!(recorded.transaction_id, None, "Conto has no record step for payment requests");
    assert_eq!(charged, 1);
}

/// The budget reads (x402 and MPP) answer the calling agent's counters; `/health` answers.
#[tokio::test]
async fn budget_reads_and_health_answer() {
    let (server, sdk) = setup(None).await;
    let (status, pre) = sdk.post("/api/sdk/mpp/pre-authorize", x402_payment("3")).await;
    assert_eq!((status, &pre["authorized"]), (200, &json!(true)), "{pre}");
    for path in ["/api/sdk/x402/budget", "/api/sdk/mpp/budget"] {
        let (status, budget) = sdk.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {budget}");
        assert_eq!(budget["agentId"], "agent-1");
        assert!(budget["counters"].as_array().unwrap().iter().any(|c| c["reserved"] == 3), "{path}: {budget}");
        assert!(budget["totalSpent"].is_number(), "{path}: {budget}");
    }
    let health = reqwest::get(format!("{}/health", server.url())).await.unwrap();
    assert_eq!(health.status(), 200);
}

/// Conto's skill reads `/x402/budget` as "remaining x402 budget and burn rate": each counter
/// that counts the rail's payments has its limit and what is left; the answer has what is left
/// on the rail and the last 24 hours' spend per hour. The MPP budget leaves out an x402 limit.
#[tokio::test]
async fn a_budget_read_says_what_is_left_and_the_burn_rate() {
    let (server, sdk) = setup(None).await; // DAILY_LIMIT 150 on every rail
    Org::new(&server)
        .policy(json!({"name": "per service", "scope": "all", "rules": [
            {"ruleType": "X402_MAX_PER_SERVICE", "operator": "LTE", "value": "20", "action": "ALLOW"}]}))
        .await;
    let (status, pre) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("6")).await;
    assert_eq!((status, &pre["authorized"]), (200, &json!(true)), "{pre}");
    let mut paid = x402_payment("6");
    paid["authorizationId"] = pre["authorizationId"].clone();
    paid["txHash"] = json!(TX);
    let (status, recorded) = sdk.post("/api/sdk/x402/record", json!({"payments": [paid]})).await;
    assert_eq!(status, 200, "{recorded}");

    let (_, x402) = sdk.call(reqwest::Method::GET, "/api/sdk/x402/budget", None).await;
    let counters = x402["counters"].as_array().unwrap();
    let by_limit = |limit: u32| counters.iter().find(|c| c["limit"] == limit).cloned();
    let daily = by_limit(150).unwrap_or_else(|| panic!("the daily limit: {x402}"));
    assert_eq!((&daily["spent"], &daily["remaining"]), (&json!(6), &json!(144)), "{x402}");
    let service = by_limit(20).unwrap_or_else(|| panic!("the per-service limit: {x402}"));
    assert_eq!((&service["scope"], &service["remaining"]), (&json!("api.example.com"), &json!(14)), "{x402}");
    assert_eq!(x402["remaining"], 14, "the least left: {x402}");
    assert_eq!((&x402["spentLast24h"], &x402["burnRatePerHour"]), (&json!(6), &json!(0.25)), "{x402}");

    let (_, mpp) = sdk.call(reqwest::Method::GET, "/api/sdk/mpp/budget", None).await;
    let limits: Vec<&Value> = mpp["counters"].as_array().unwrap().iter().map(|c| &c["limit"]).collect();
    assert!(limits.contains(&&json!(150)) && !limits.contains(&&json!(20)), "{mpp}");
    assert_eq!((&mpp["spentLast24h"], &mpp["remaining"]), (&json!(0), &json!(144)), "{mpp}");
}

/// A contract policy (conto-api.md §4.1 `targetContractAddress` "for contract policies"; §7.4
/// `CONTRACT_ALLOWLIST` "uses targetContractAddress, functionSelector"): a request calling a
/// listed contract is approved, an unlisted one denied, a plain payment is not under it; a
/// malformed contract or selector is refused, naming the field.
#[tokio::test]
async fn a_contract_allowlist_checks_the_target_contract_and_urgency_is_checked() {
    let (server, sdk) = setup(None).await;
    let router = "0x0000000000000000000000000000000000000abc";
    Org::new(&server)
        .policy(json!({"name": "contracts", "policyType": "CONTRACT_ALLOWLIST", "scope": "all", "rules": [
            {"ruleType": "CONTRACT_ALLOWLIST", "operator": "IN_LIST", "value": format!("[\"{router}\"]"), "action": "ALLOW"}]}))
        .await;
    let request = |contract: Option<&str>, selector: Option<&str>| {
        let mut body = json!({"amount": 1, "recipientAddress": RECIPIENT});
        if let Some(c) = contract {
            body["targetContractAddress"] = json!(c);
        }
        if let Some(f) = selector {
            body["functionSelector"] = json!(f);
        }
        body
    };
    let (_, listed) = sdk.post("/api/sdk/payments/request", request(Some(router), Some("0xa9059cbb"))).await;
    assert_eq!(listed["status"], "APPROVED", "{listed}");
    let (_, unlisted) =
        sdk.post("/api/sdk/payments/request", request(Some("0x0000000000000000000000000000000000000def"), None)).await;
    assert_eq!(unlisted["status"], "DENIED", "{unlisted}");
    assert_eq!(unlisted["violations"][0]["type"], "CONTRACT_NOT_ALLOWED", "{unlisted}");
    let (_, plain) = sdk.post("/api/sdk/payments/request", request(None, None)).await;
    assert_eq!(plain["status"], "APPROVED", "a payment that calls no contract: {plain}");
    let (status, err) = sdk.post("/api/sdk/payments/request", request(Some("0xabc"), None)).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("INVALID_ADDRESS")), "{err}");
    assert!(err["message"].as_str().unwrap().starts_with("`targetContractAddress`"), "{err}");
    let (status, err) = sdk.post("/api/sdk/payments/request", request(Some(router), Some("xyz"))).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{err}");
    assert!(err["message"].as_str().unwrap().contains("functionSelector"), "{err}");

    // Conto's urgency levels are checked too (the decision does not use them).
    let mut urgent = request(None, None);
    urgent["urgency"] = json!("HIGH");
    let (status, ok) = sdk.post("/api/sdk/payments/request", urgent.clone()).await;
    assert_eq!((status, &ok["status"]), (200, &json!("APPROVED")), "{ok}");
    urgent["urgency"] = json!("SUPER");
    let (status, err) = sdk.post("/api/sdk/payments/request", urgent).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{err}");
    assert!(err["message"].as_str().unwrap().contains("urgency"), "{err}");
}

/// A list of services is checked against the host the payment reaches, however the agent
/// spells it: a trailing dot, a percent-escape, a backslash before `@`, upper case, or a
/// `serviceDomain` naming another service cannot step around a blocklist; listed entries are
/// canonical too (a trailing dot, an internationalized name).
#[tokio::test]
async fn a_service_blocklist_cannot_be_stepped_around_by_spelling_the_host_another_way() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    org.policy(json!({"name": "blocked", "scope": "all", "rules": [
        {"ruleType": "X402_BLOCKED_SERVICES", "operator": "IN_LIST",
         "value": "[\"api.openai.com\", \"api.anthropic.com.\", \"bücher.de\"]", "action": "DENY"},
        {"ruleType": "MPP_BLOCKED_SERVICES", "operator": "IN_LIST", "value": "[\"api.openai.com\"]", "action": "DENY"}]}))
        .await;
    let pay = |url: &str| json!({"amount": "0.01", "recipientAddress": RECIPIENT, "resourceUrl": url});
    for url in [
        "https://api.openai.com/v1",
        "https://api.openai.com./v1",
        "https://API.OPENAI.COM/v1",
        "https://api%2Eopenai.com/v1",
        "HTTPS://api.openai.com:443/v1",
        "https://api.anthropic.com/v1",
        "https://xn--bcher-kva.de/buy",
        "https://bücher.de/buy",
    ] {
        let (status, body) = sdk.post("/api/sdk/x402/pre-authorize", pay(url)).await;
        assert_eq!((status, &body["authorized"]), (200, &json!(false)), "{url}: {body}");
        assert_eq!(body["violations"][0]["type"], "X402_SERVICE_BLOCKED", "{url}: {body}");
    }
    let (_, mpp) = sdk.post("/api/sdk/mpp/pre-authorize", pay("https://api.openai.com./v1")).await;
    assert_eq!(mpp["violations"][0]["type"], "MPP_SERVICE_BLOCKED", "{mpp}");
    // A URL whose host other HTTP clients read differently (credentials, a backslash) is refused.
    for url in ["https://api.openai.com\\@evil.com/v1", "https://user@evil.com/v1"] {
        let (status, body) = sdk.post("/api/sdk/x402/pre-authorize", pay(url)).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{url}: {body}");
    }

    // A `serviceDomain` is the URL's host or a domain above it; another service's is refused.
    let mut other = pay("https://api.openai.com/v1");
    other["serviceDomain"] = json!("ok.com");
    let (status, body) = sdk.post("/api/sdk/x402/pre-authorize", other).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("serviceDomain"), "{body}");
    let mut above = pay("https://api.openai.com/v1");
    above["serviceDomain"] = json!("openai.com");
    let (_, body) = sdk.post("/api/sdk/x402/pre-authorize", above).await;
    assert_eq!(body["violations"][0]["type"], "X402_SERVICE_BLOCKED", "the host is checked, not the name: {body}");
    let mut fine = pay("https://api.example.com/v1");
    fine["serviceDomain"] = json!("example.com");
    let (_, body) = sdk.post("/api/sdk/x402/pre-authorize", fine).await;
    assert_eq!(body["authorized"], true, "{body}");

    // A listed entry that is not a host name is refused at creation, naming it.
    let (status, body) = org
        .post(
            "/api/policies",
            json!({"name": "bad", "scope": "all", "rules": [{"ruleType": "X402_ALLOWED_SERVICES",
            "operator": "IN_LIST", "value": "[\"https://api.openai.com/v1\"]", "action": "ALLOW"}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("host name"), "{body}");
}

/// One endpoint is one however its URL is spelled: a per-endpoint limit counts them together,
/// and a record spelled otherwise still settles its pre-authorization (never counted twice).
#[tokio::test]
async fn an_endpoint_is_one_however_its_url_is_spelled() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    org.policy(json!({"name": "endpoint", "scope": "all", "rules": [
        {"ruleType": "X402_MAX_PER_ENDPOINT", "operator": "LTE", "value": "1", "action": "ALLOW"}]}))
        .await;
    let pay = |url: &str| json!({"amount": "0.9", "recipientAddress": RECIPIENT, "resourceUrl": url});
    let (_, first) = sdk.post("/api/sdk/x402/pre-authorize", pay("https://ep.example.com/v1/x")).await;
    assert_eq!(first["authorized"], true, "{first}");
    for url in [
        "https://ep.example.com/v1/x",
        "https://EP.example.com./v1/x",
        "https://ep.example.com/v1/./x",
        "https://ep.example.com:443/v1/y/../x#part",
        // Escapes of unreserved characters are those characters to every server (RFC 3986).
        "https://ep.example.com/%761/x",
        "https://ep.example.com/v%31/%78",
        // Some servers ignore case, `;` parameters, empty segments and a trailing `/`: one
        // endpoint to the limit too (it errs on the side of counting).
        "https://ep.example.com/v1/x/",
        "https://ep.example.com/V1/X",
        "https://ep.example.com//v1//x",
        "https://ep.example.com/v1;a=b/x;jsessionid=1",
        "https://ep.example.com/v1/x?page=2",
        // Dot segments that appear once parameters are dropped, escaped slashes.
        "https://ep.example.com/zz/..;/v1/x",
        "https://ep.example.com/v1/.;a/x",
        "https://ep.example.com/v1%2Fx",
        "https://ep.example.com/v1%5cx",
        // A parameter is dropped as sent, escaped slashes in it too; scheme and port are not
        // the endpoint.
        "https://ep.example.com/v1/x;a%2F..%2F..%2Fk1",
        "http://ep.example.com/v1/x",
        "https://ep.example.com:8443/v1/x",
    ] {
        let (_, again) = sdk.post("/api/sdk/x402/pre-authorize", pay(url)).await;
        assert_eq!(again["violations"][0]["type"], "X402_ENDPOINT_LIMIT", "{url}: {again}");
    }
    let (_, other) = sdk.post("/api/sdk/x402/pre-authorize", pay("https://ep.example.com/v1/x2")).await;
    assert_eq!(other["authorized"], true, "another endpoint: {other}");
    // Pre-authorized under one spelling, recorded under another its limits count as the same
    // endpoint: it settles, counted once.
    for (n, (asked, recorded_as)) in [
        ("https://R2.example.com./a", "https://r2.example.com/a"),
        ("https://r3.example.com/v1/chat", "https://r3.example.com/V1//chat/?q=1"),
        ("https://r4.example.com/v1/chat;a", "https://r4.example.com/zz/..;/v1/%63hat"),
    ]
    .into_iter()
    .enumerate()
    {
        let (_, pre) = sdk.post("/api/sdk/x402/pre-authorize", pay(asked)).await;
        assert_eq!(pre["authorized"], true, "{pre}");
        let record = json!({"payments": [{"amount": "0.9", "recipientAddress": RECIPIENT,
            "resourceUrl": recorded_as, "txHash": format!("0x{}", n.to_string().repeat(64))}]});
        let (status, recorded) = sdk.post("/api/sdk/x402/record", record).await;
        assert_eq!(status, 200, "{recorded}");
        assert_eq!(recorded["payments"][0]["authorizationId"], pre["authorizationId"], "{asked}: {recorded}");
    }
}

/// An MPP record without an authorization id settles a deposit pre-authorized for its own
/// session, or one pre-authorized before its session was named (Conto's flow: the deposit,
/// then the session); never a deposit another session named (which would close that session
/// and put the spend in the wrong session's budget).
#[tokio::test]
async fn an_mpp_record_settles_its_own_sessions_preauthorization() {
    let (_server, sdk) = setup(None).await;
    let url = STREAM;
    let pre = |session: Option<&str>, deposit: &str| {
        let mut body = json!({"amount": "0.1", "depositAmount": deposit, "recipientAddress": RECIPIENT,
            "resourceUrl": url, "intent": "session"});
        if let Some(s) = session {
            body["sessionId"] = json!(s);
        }
        body
    };
    let mut ids = Vec::new();
    for (session, deposit) in [(Some("s1"), "10"), (None, "5"), (Some("s2"), "10")] {
        let (_, answer) = sdk.post("/api/sdk/mpp/pre-authorize", pre(session, deposit)).await;
        assert_eq!(answer["authorized"], true, "{answer}");
        ids.push(answer["authorizationId"].clone());
    }
    let record = |session: &str, amount: &str, tx: char| {
        json!({"amount": amount, "recipientAddress": RECIPIENT, "resourceUrl": url, "sessionId": session,
            "txHash": format!("0x{}", tx.to_string().repeat(64))})
    };
    let settled = |answer: &Value| answer["payments"][0]["authorizationId"].clone();
    // s2's record settles s2's deposit, though older ones (s1's, the unnamed one) cover it.
    let (status, recorded) = sdk.post("/api/sdk/mpp/record", record("s2", "4", 'a')).await;
    assert_eq!((status, settled(&recorded)), (200, ids[2].clone()), "{recorded}");
    // A session no deposit named settles the unnamed deposit, never s1's (the older one).
    let (status, recorded) = sdk.post("/api/sdk/mpp/record", record("s3", "1", 'b')).await;
    assert_eq!((status, settled(&recorded)), (200, ids[1].clone()), "{recorded}");
    // Nothing left for s4 but s1's deposit: counted on its own.
    let (status, recorded) = sdk.post("/api/sdk/mpp/record", record("s4", "1", 'c')).await;
    assert_eq!((status, settled(&recorded)), (200, Value::Null), "{recorded}");
    let (status, recorded) = sdk.post("/api/sdk/mpp/record", record("s1", "2", 'd')).await;
    assert_eq!((status, settled(&recorded)), (200, ids[0].clone()), "{recorded}");
}

/// A limit added after the agent spent counts that spend, and the approvals still held, as
/// Conto's counters (read from its transactions) do, and as conto-local itself did after a
/// restart: the running server and a restarted one never disagree.
#[tokio::test]
async fn a_limit_added_after_spending_counts_the_spend_before_it() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    for digit in ["a", "b"] {
        let (_, a) = sdk.post("/api/sdk/payments/approve", transfer_payment(4)).await;
        let path = format!("/api/sdk/payments/{}/confirm", a["approvalId"].as_str().unwrap());
        let tx = format!("0x{}", digit.repeat(64));
        let (status, _) = sdk.post(&path, json!({"txHash": tx, "approvalToken": a["approvalToken"]})).await;
        assert_eq!(status, 200);
    }
    let (_, held) = sdk.post("/api/sdk/payments/approve", transfer_payment(1)).await;
    assert_eq!(held["approved"], true, "{held}");
    // 8 spent and 1 held, then a weekly limit of 10 and a velocity limit of 3 an hour.
    org.policy(json!({"name": "later", "scope": "all", "rules": [
        {"ruleType": "WEEKLY_LIMIT", "operator": "LTE", "value": "10", "action": "ALLOW"}]}))
        .await;
    let (_, over) = sdk.post("/api/sdk/payments/approve", transfer_payment(2)).await;
    assert_eq!(over["violations"][0]["type"], "WEEKLY_LIMIT", "8 spent + 1 held + 2 > 10: {over}");
    let (_, fits) = sdk.post("/api/sdk/payments/approve", transfer_payment(1)).await;
    assert_eq!(fits["approved"], true, "8 + 1 + 1 = 10: {fits}");
    org.policy(json!({"name": "pace", "scope": "all", "priority": 99, "rules": [
        {"ruleType": "VELOCITY_LIMIT", "operator": "LTE", "value": "{\"maxCount\":4,\"period\":\"HOUR\"}", "action": "ALLOW"}]}))
        .await;
    let (_, fast) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("0.01")).await;
    assert_eq!(fast["violations"][0]["type"], "VELOCITY_LIMIT", "four approvals this hour already: {fast}");
}

/// An MPP pre-authorization is for the session's deposit (conto-api.md §6.6: the app
/// pre-authorizes the deposit, and the session pays out of it): the deposit is held against
/// the agent's limits, so a session can never spend past them; the record settles it at what
/// was spent.
#[tokio::test]
async fn an_mpp_session_is_preauthorized_for_its_deposit() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    org.policy(json!({"name": "limits", "scope": "all", "rules": [
        {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "10", "action": "ALLOW"},
        {"ruleType": "MPP_MAX_PER_REQUEST", "operator": "LTE", "value": "1.00", "action": "ALLOW"}]}))
        .await;
    let session = |amount: &str, deposit: u32| {
        json!({"amount": amount, "recipientAddress": RECIPIENT, "resourceUrl": "https://mpp.example.com/v1/chat",
            "intent": "session", "depositAmount": deposit})
    };
    let (status, denied) = sdk.post("/api/sdk/mpp/pre-authorize", session("0.1", 50)).await;
    assert_eq!((status, &denied["authorized"]), (200, &json!(false)), "{denied}");
    assert_eq!(denied["violations"][0]["type"], "DAILY_LIMIT", "{denied}");
    let (_, pre) = sdk.post("/api/sdk/mpp/pre-authorize", session("0.5", 6)).await;
    assert_eq!(pre["authorized"], true, "{pre}");
    let (_, budget) = sdk.call(reqwest::Method::GET, "/api/sdk/mpp/budget", None).await;
    assert_eq!(daily(&budget)["reserved"], 6, "{budget}");
    let (_, second) = sdk.post("/api/sdk/mpp/pre-authorize", session("0.5", 5)).await;
    assert_eq!(second["violations"][0]["type"], "DAILY_LIMIT", "6 held + 5 > 10: {second}");

    // Recorded at what the session spent, without its authorization id: it settles the
    // pre-authorization, and the rest of the deposit is free again.
    let record = json!({"amount": "4", "recipientAddress": RECIPIENT, "resourceUrl": "https://mpp.example.com/v1/chat",
        "txHash": format!("0x{}", "e".repeat(64)), "sessionId": "s-1"});
    let (status, recorded) = sdk.post("/api/sdk/mpp/record", record).await;
    assert_eq!(status, 200, "{recorded}");
    assert_eq!(recorded["payments"][0]["authorizationId"], pre["authorizationId"], "{recorded}");
    let (_, budget) = sdk.call(reqwest::Method::GET, "/api/sdk/mpp/budget", None).await;
    assert_eq!((&daily(&budget)["spent"], &daily(&budget)["reserved"]), (&json!(4), &json!(0)), "{budget}");
    let (_, third) = sdk.post("/api/sdk/mpp/pre-authorize", session("0.5", 6)).await;
    assert_eq!(third["authorized"], true, "4 spent + 6: {third}");
}

/// The MPP stream every session test below pays for.
const STREAM: &str = "https://mpp.example.com/v1/stream";

/// An agent held to one MPP session at a time, each allowed an hour, under `more` rules too;
/// and the pre-authorization that opens a session on [`STREAM`] with a deposit of 5.
async fn one_session_at_a_time(more: &[Value]) -> (conto_local::Running, Sdk, Value) {
    let (server, sdk) = setup(None).await;
    let mut rules = vec![
        json!({"ruleType": "MPP_MAX_CONCURRENT_SESSIONS", "operator": "LTE", "value": "1", "action": "ALLOW"}),
        json!({"ruleType": "MPP_MAX_SESSION_DURATION", "operator": "LTE", "value": "3600", "action": "ALLOW"}),
    ];
    rules.extend(more.iter().cloned());
    Org::new(&server).policy(json!({"name": "sessions", "scope": "all", "rules": rules})).await;
    let open = json!({"amount": "0.1", "depositAmount": "5", "recipientAddress": RECIPIENT, "resourceUrl": STREAM,
        "intent": "session"});
    (server, sdk, open)
}

/// The daily counter of a budget read (`GET /api/sdk/{x402,mpp}/budget`).
fn daily(budget: &Value) -> Value {
    budget["counters"].as_array().unwrap().iter().find(|c| c["period"] == "daily").cloned().unwrap()
}

/// An MPP session that settled more than its first deposit (a top-up) is recorded against
/// that deposit: the session closes (its hold and its slot freed) and all it settled is counted
/// once; it was counted as a second payment beside a deposit still held.
#[tokio::test]
async fn an_mpp_session_that_topped_up_closes_its_deposit_and_counts_all_it_settled() {
    let velocity = json!({"ruleType": "VELOCITY_LIMIT", "operator": "LTE",
        "value": "{\"maxCount\": 3, \"period\": \"HOUR\"}", "action": "ALLOW"});
    let (_server, sdk, open) = one_session_at_a_time(&[velocity]).await;
    let url = STREAM;
    for (n, by_id) in [(0, false), (1, true)] {
        let (_, pre) = sdk.post("/api/sdk/mpp/pre-authorize", open.clone()).await;
        assert_eq!(pre["authorized"], true, "{pre}");
        let mut record = json!({"amount": "5.5", "recipientAddress": RECIPIENT, "resourceUrl": url,
            "sessionId": format!("s{n}"), "txHash": format!("0x{}", n.to_string().repeat(64))});
        if by_id {
            record["authorizationId"] = pre["authorizationId"].clone();
        }
        let (status, recorded) = sdk.post("/api/sdk/mpp/record", record).await;
        assert_eq!(status, 200, "{recorded}");
        assert_eq!(recorded["payments"][0]["authorizationId"], pre["authorizationId"], "{recorded}");
        let (_, budget) = sdk.call(reqwest::Method::GET, "/api/sdk/mpp/budget", None).await;
        let spent = if by_id { json!(11) } else { json!(5.5) };
        assert_eq!((&daily(&budget)["spent"], &daily(&budget)["reserved"]), (&spent, &json!(0)), "{budget}");
    }
    // Both sessions closed: a new one opens under the limit of one at a time, and each top-up
    // was one payment to the velocity limit (three an hour), not two.
    let (_, next) = sdk.post("/api/sdk/mpp/pre-authorize", open).await;
    assert_eq!(next["authorized"], true, "{next}");
}

/// An MPP session that settled nothing (it never opened) is recorded at 0: its deposit's hold
/// and its open-session slot are freed at once, not at the end of the session's allowed
/// length; nothing is counted. Money that moved after all is still counted when recorded.
#[tokio::test]
async fn an_mpp_session_recorded_at_zero_frees_its_deposit_and_slot() {
    let (_server, sdk, open) = one_session_at_a_time(&[]).await;
    let url = STREAM;
    let (_, held) = sdk.post("/api/sdk/mpp/pre-authorize", open.clone()).await;
    assert_eq!(held["authorized"], true, "{held}");
    let (_, second) = sdk.post("/api/sdk/mpp/pre-authorize", open.clone()).await;
    assert_eq!(second["violations"][0]["type"], "MPP_MAX_CONCURRENT_SESSIONS", "{second}");

    let first = held;
    // Closed by its id, twice (the same answer), then by what its record would match.
    let by_id = json!({"amount": 0, "recipientAddress": RECIPIENT, "resourceUrl": url,
        "authorizationId": first["authorizationId"]});
    for _ in 0..2 {
        let (status, closed) = sdk.post("/api/sdk/mpp/record", by_id.clone()).await;
        assert_eq!((status, &closed["payments"][0]["status"]), (200, &json!("RELEASED")), "{closed}");
        assert_eq!(closed["payments"][0]["authorizationId"], first["authorizationId"]);
    }
    let (_, budget) = sdk.call(reqwest::Method::GET, "/api/sdk/mpp/budget", None).await;
    assert_eq!(daily(&budget)["reserved"], json!(0), "{budget}");
    let (_, again) = sdk.post("/api/sdk/mpp/pre-authorize", open.clone()).await;
    assert_eq!(again["authorized"], true, "the slot is free: {again}");
    let unnamed = json!({"amount": "0.00", "recipientAddress": RECIPIENT, "resourceUrl": url, "sessionId": "s-9"});
    let (status, closed) = sdk.post("/api/sdk/mpp/record", unnamed).await;
    assert_eq!((status, &closed["payments"][0]["authorizationId"]), (200, &again["authorizationId"]), "{closed}");

    // The first session's money moved after all: its record is counted, not refused.
    let late = json!({"amount": "2", "recipientAddress": RECIPIENT, "resourceUrl": url,
        "authorizationId": first["authorizationId"], "txHash": format!("0x{}", "7".repeat(64))});
    let (status, recorded) = sdk.post("/api/sdk/mpp/record", late).await;
    assert_eq!((status, &recorded["payments"][0]["status"]), (200, &json!("RECORDED")), "{recorded}");
    let (_, budget) = sdk.call(reqwest::Method::GET, "/api/sdk/mpp/budget", None).await;
    assert_eq!((&daily(&budget)["spent"], &daily(&budget)["reserved"]), (&json!(2), &json!(0)), "{budget}");
    // Recorded, it is no longer closed unspent; nothing is left to close; x402 has no such close.
    let (status, err) = sdk.post("/api/sdk/mpp/record", by_id).await;
    assert_eq!((status, &err["code"]), (400, &json!("INVALID_STATUS")), "{err}");
    let (status, err) =
        sdk.post("/api/sdk/mpp/record", json!({"amount": 0, "recipientAddress": RECIPIENT, "resourceUrl": url})).await;
    assert_eq!(status, 404, "{err}");
    let (status, err) =
        sdk.post("/api/sdk/x402/record", json!({"amount": 0, "recipientAddress": RECIPIENT, "resourceUrl": url})).await;
    assert_eq!((status, &err["code"]), (400, &json!("INVALID_AMOUNT")), "{err}");

    // An idempotency key a close used is not replayed for a record of the stand-in amount.
    let (_, open_again) = sdk.post("/api/sdk/mpp/pre-authorize", open.clone()).await;
    let close = json!({"amount": 0, "recipientAddress": RECIPIENT, "resourceUrl": url,
        "authorizationId": open_again["authorizationId"], "idempotencyKey": "k-1"});
    let (_, closed) = sdk.post("/api/sdk/mpp/record", close).await;
    assert_eq!(closed["payments"][0]["status"], json!("RELEASED"), "{closed}");
    let tiny = json!({"amount": "0.000001", "recipientAddress": RECIPIENT, "resourceUrl": url, "idempotencyKey": "k-1",
        "txHash": format!("0x{}", "5".repeat(64))});
    let (status, recorded) = sdk.post("/api/sdk/mpp/record", tiny).await;
    assert_eq!((status, &recorded["payments"][0]["status"]), (200, &json!("RECORDED")), "{recorded}");
}

/// A record naming its authorization is for what was pre-authorized: another service's URL or
/// another recipient is refused (the spend would be counted under the wrong service, endpoint
/// and counterparty); the same endpoint and recipient spelled otherwise are taken.
#[tokio::test]
async fn a_record_by_authorization_id_is_for_the_endpoint_and_recipient_authorized() {
    let (_server, sdk) = setup(None).await;
    let other = "0x2222222222222222222222222222222222222222";
    for (kind, tx) in [("x402", 'a'), ("mpp", 'd')] {
        let pre = json!({"amount": "1", "depositAmount": "1", "recipientAddress": RECIPIENT,
            "resourceUrl": "https://good.example.com/a", "intent": "session"});
        let (_, pre) = sdk.post(&format!("/api/sdk/{kind}/pre-authorize"), pre).await;
        assert_eq!(pre["authorized"], true, "{pre}");
        let record = |url: &str, recipient: &str, n: u32| {
            let tx = char::from_u32(tx as u32 + n).unwrap();
            json!({"amount": "1", "authorizationId": pre["authorizationId"], "resourceUrl": url,
                "recipientAddress": recipient, "txHash": format!("0x{}", tx.to_string().repeat(64))})
        };
        for bad in [record("https://evil.example.org/a", RECIPIENT, 0), record("https://good.example.com/a", other, 1)]
        {
            let (status, err) = sdk.post(&format!("/api/sdk/{kind}/record"), bad.clone()).await;
            assert_eq!((status, &err["code"]), (400, &json!("VALIDATION_ERROR")), "{kind} {bad}: {err}");
        }
        let upper = RECIPIENT.to_uppercase().replacen("0X", "0x", 1);
        let (status, ok) =
            sdk.post(&format!("/api/sdk/{kind}/record"), record("http://GOOD.example.com/a/", &upper, 2)).await;
        assert_eq!(status, 200, "{kind}: {ok}");
    }
}

/// Conto's recommended MPP policy (conto-api.md §6.6: session budget 25, 1.00 a request, three
/// sessions at once) lets sessions open, refuses a fourth while three are open, and counts a
/// session closed once its settled amount is recorded (with or without its authorization id);
/// the open ones are still counted after a restart.
#[tokio::test]
async fn contos_recommended_mpp_policy_counts_open_sessions() {
    let dir = std::env::temp_dir().join(format!("conto-local-sessions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(dir.join("local.db"));
    let server = start_on_db(dir.join("local.db")).await;
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    org.policy(json!({"name": "MPP controls", "policyType": "MPP_CONTROLS", "scope": "all", "rules": [
        {"ruleType": "MPP_SESSION_BUDGET", "operator": "LTE", "value": "25", "action": "ALLOW"},
        {"ruleType": "MPP_MAX_PER_REQUEST", "operator": "LTE", "value": "1.00", "action": "ALLOW"},
        {"ruleType": "MPP_MAX_CONCURRENT_SESSIONS", "operator": "LTE", "value": "3", "action": "ALLOW"}]}))
        .await;
    let sdk = Sdk { base: server.url(), key, http: reqwest::Client::new() };
    let url = "https://api.example.com/v1/stream";
    let open = |sdk: &Sdk| {
        let body = json!({"amount": 0.5, "recipientAddress": RECIPIENT, "resourceUrl": url, "intent": "session",
            "depositAmount": 5});
        let (http, base, key) = (sdk.http.clone(), sdk.base.clone(), sdk.key.clone());
        async move {
            let resp = http.post(format!("{base}/api/sdk/mpp/pre-authorize")).bearer_auth(key).json(&body).send();
            resp.await.unwrap().json::<Value>().await.unwrap()
        }
    };
    for n in 1..=3 {
        let pre = open(&sdk).await;
        assert_eq!(pre["authorized"], true, "session {n}: {pre}");
    }
    let fourth = open(&sdk).await;
    assert_eq!(fourth["authorized"], false, "{fourth}");
    assert_eq!(fourth["violations"][0]["type"], "MPP_MAX_CONCURRENT_SESSIONS", "{fourth}");
    assert_eq!((&fourth["violations"][0]["limit"], &fourth["violations"][0]["current"]), (&json!(3), &json!(3)));

    // One session ends: its settled amount recorded as the docs show it, no authorization id.
    let record = json!({"amount": 0.4, "recipientAddress": RECIPIENT, "txHash": TX, "resourceUrl": url,
        "sessionId": "sess-1", "scheme": "mpp", "chainId": "4217"});
    let (status, body) = sdk.post("/api/sdk/mpp/record", record).await;
    assert!(status < 300, "{status} {body}");
    let pre = open(&sdk).await;
    assert_eq!(pre["authorized"], true, "a session closed, another opens: {pre}");

    // Three open again, across a restart.
    server.stop().await;
    let server = start_on_db(dir.join("local.db")).await;
    let sdk = Sdk { base: server.url(), ..sdk };
    let after = open(&sdk).await;
    assert_eq!(after["violations"][0]["type"], "MPP_MAX_CONCURRENT_SESSIONS", "still three open: {after}");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// An MPP session as Conto's docs describe it: the deposit pre-authorized, the settled amount
/// recorded with the session, wallet and chain (`chainId` as the string `"4217"`), then the
/// service listed under the MPP services read, and not under x402's.
#[tokio::test]
async fn an_mpp_session_is_recorded_and_listed_under_mpp_services() {
    let (_server, sdk) = setup(None).await;
    let pre_body = json!({"amount": "3", "recipientAddress": RECIPIENT, "resourceUrl": "https://mpp.example.com/v1/chat",
        "intent": "session", "depositAmount": "3"});
    let (status, pre) = sdk.post("/api/sdk/mpp/pre-authorize", pre_body).await;
    assert_eq!((status, &pre["authorized"]), (200, &json!(true)), "{pre}");
    assert_eq!(pre["wallet"]["chainId"], "4217", "{pre}");
    let record = json!({"amount": "2.5", "recipientAddress": RECIPIENT, "txHash": TX,
        "resourceUrl": "https://mpp.example.com/v1/chat", "sessionId": "sess-1", "scheme": "mpp",
        "walletId": pre["wallet"]["id"].as_str().expect("an approved pre-authorization names its wallet"), "chainId": "4217",
        "authorizationId": pre["authorizationId"]});
    let (status, body) = sdk.post("/api/sdk/mpp/record", record).await;
    assert!(status < 300, "{status} {body}");
    let (status, services) = sdk.call(reqwest::Method::GET, "/api/sdk/mpp/services", None).await;
    assert_eq!(status, 200, "{services}");
    assert_eq!(services["services"][0]["serviceDomain"], "mpp.example.com", "{services}");
    assert_eq!(services["services"][0]["totalSpent"], 2.5, "{services}");
    assert_eq!(services["services"][0]["paymentCount"], 1, "{services}");
    let (_, x402) = sdk.call(reqwest::Method::GET, "/api/sdk/x402/services", None).await;
    assert_eq!(x402["services"], json!([]), "{x402}");
}

/// The agent's own reads (conto-api.md §9: `GET /api/sdk/wallets`, `GET /api/sdk/transactions`,
/// rate-limited as reads): its wallet delegations, and its recorded payments newest first.
#[tokio::test]
async fn the_agent_reads_its_wallets_and_its_transactions() {
    let (server, sdk) = setup(None).await;
    let (status, none) = sdk.call(reqwest::Method::GET, "/api/sdk/wallets", None).await;
    assert_eq!((status, &none["wallets"]), (200, &json!([])), "{none}");
    let org = Org::new(&server);
    let (status, body) =
        org.post("/api/agents/agent-1/wallets", json!({"walletId": "wal_base", "chainId": "8453"})).await;
    assert_eq!(status, 201, "{body}");
    let (_, one) = sdk.call(reqwest::Method::GET, "/api/sdk/wallets", None).await;
    assert_eq!(one["wallets"].as_array().map(Vec::len), Some(1), "{one}");

    let (_, approved) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    let path = format!("/api/sdk/payments/{}/confirm", approved["approvalId"].as_str().unwrap());
    let (status, receipt) = sdk.post(&path, json!({"txHash": TX, "approvalToken": approved["approvalToken"]})).await;
    assert_eq!(status, 200, "{receipt}");
    let (_, pre) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("2")).await;
    let tx = format!("0x{}", "b".repeat(64));
    let record = json!({"payments": [{"amount": "2", "recipientAddress": RECIPIENT,
        "resourceUrl": "https://api.example.com/search", "txHash": tx, "authorizationId": pre["authorizationId"]}]});
    let (status, body) = sdk.post("/api/sdk/x402/record", record).await;
    assert!(status < 300, "{body}");

    let (status, listed) = sdk.call(reqwest::Method::GET, "/api/sdk/transactions", None).await;
    assert_eq!(status, 200, "{listed}");
    let txs = listed["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 2, "{listed}");
    assert_eq!((&txs[0]["type"], &txs[0]["amount"], &txs[0]["txHash"]), (&json!("x402"), &json!(2), &json!(tx)));
    assert_eq!(
        (&txs[1]["type"], &txs[1]["amount"], &txs[1]["status"]),
        (&json!("transfer"), &json!(5), &json!("COMPLETED"))
    );
    assert_eq!(txs[1]["recipientAddress"], RECIPIENT.to_lowercase(), "{listed}");
    let (_, newest) = sdk.call(reqwest::Method::GET, "/api/sdk/transactions?limit=1", None).await;
    assert_eq!(newest["transactions"].as_array().map(Vec::len), Some(1), "{newest}");
    let (status, _) = sdk.call(reqwest::Method::GET, "/api/sdk/transactions?limit=0", None).await;
    assert_eq!(status, 400);
    let anonymous = reqwest::get(format!("{}/api/sdk/transactions", server.url())).await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // A payment recorded with no pre-authorization to settle keeps its tx hash too.
    let unmatched = format!("0x{}", "c".repeat(64));
    let record = json!({"payments": [{"amount": "0.5", "recipientAddress": RECIPIENT,
        "resourceUrl": "https://other.example.com/x", "txHash": unmatched, "paymentId": "pay-unmatched"}]});
    let (status, body) = sdk.post("/api/sdk/x402/record", record).await;
    assert!(status < 300, "{body}");
    let (_, newest) = sdk.call(reqwest::Method::GET, "/api/sdk/transactions?limit=1", None).await;
    assert_eq!(newest["transactions"][0]["txHash"], json!(unmatched), "{newest}");
}

/// Rule types Conto's agent skill documents but conto-local has no data to evaluate (a
/// country whitelist) are stored as
/// Conto stores them, and fail closed: every payment on their rails is denied, the violation
/// named for the rule, until the policy is deactivated. Never silently passed.
#[tokio::test]
async fn rules_conto_local_cannot_evaluate_are_kept_and_deny_on_their_rails() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    let geo = org
        .policy(json!({"name": "geo", "scope": "all", "rules": [{"ruleType": "GEOGRAPHIC_RESTRICTION",
            "operator": "IN_LIST", "value": "[\"US\",\"CA\",\"GB\"]", "action": "ALLOW"}]}))
        .await;
    let (status, denied) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    assert_eq!((status, &denied["approved"]), (200, &json!(false)), "{denied}");
    assert_eq!(denied["violations"][0]["type"], "GEOGRAPHIC_RESTRICTION", "{denied}");
    assert!(denied["reasons"][0].as_str().is_some_and(|r| r.contains("fail-closed")), "{denied}");

    // Deactivated, it binds no one; the rule is still stored as sent.
    let id = geo["id"].as_str().unwrap();
    let resp = org
        .http
        .patch(format!("{}/api/policies/{id}", server.url()))
        .bearer_auth(&org.key)
        .json(&json!({"isActive": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let (_, approved) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    assert_eq!(approved["approved"], true, "{approved}");
    let (_, kept) = org.get(&format!("/api/policies/{id}")).await;
    assert_eq!(kept["rules"][0]["ruleType"], "GEOGRAPHIC_RESTRICTION", "{kept}");

    // A session's length is evaluated: it is the MPP pre-authorization's lifetime (longer
    // or shorter than an approval's 10 minutes), and denies nothing (Conto's documented
    // value, and a shorter one).
    let mpp = json!({"amount": "1", "recipientAddress": RECIPIENT, "resourceUrl": "https://mpp.example.com/v1/chat"});
    for (seconds, lifetime) in [("3600", 3600), ("60", 60)] {
        let session = org
            .policy(json!({"name": format!("MPP_CONTROLS {seconds}"), "scope": "all", "rules": [
                {"ruleType": "MPP_MAX_SESSION_DURATION", "operator": "LTE", "value": seconds, "action": "ALLOW"}]}))
            .await;
        let (_, pre) = sdk.post("/api/sdk/mpp/pre-authorize", mpp.clone()).await;
        assert_eq!(pre["authorized"], true, "{pre}");
        let expires: conto_core::jiff::Timestamp = pre["expiresAt"].as_str().unwrap().parse().unwrap();
        let secs = expires.duration_since(conto_core::jiff::Timestamp::now()).as_secs();
        assert!((lifetime - 30..=lifetime).contains(&secs), "{seconds}: lives {secs} s: {pre}");
        let id = session["id"].as_str().unwrap();
        let resp =
            org.http.delete(format!("{}/api/policies/{id}", server.url())).bearer_auth(&org.key).send().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }

    // An unknown rule type is still refused at creation.
    let (status, err) = org
        .post(
            "/api/policies",
            json!({"name": "typo", "rules": [{"ruleType": "MAX_AMOUNTT",
            "operator": "LTE", "value": "1", "action": "ALLOW"}]}),
        )
        .await;
    assert_eq!((status, &err["code"]), (400, &json!("VALIDATION_ERROR")), "{err}");

    // A malformed policy body is said of the body, by its own paths (no policy file, no
    // index into the other stored policies).
    let (status, err) = org
        .post(
            "/api/policies",
            json!({"name": "no type", "rules": [{"operator": "LTE", "value": "1", "action": "ALLOW"}]}),
        )
        .await;
    assert_eq!((status, &err["code"]), (400, &json!("VALIDATION_ERROR")), "{err}");
    assert_eq!(err["message"], "the policy has the wrong shape at `rules[0]`: missing field `ruleType`", "{err}");
}

/// A confirm after the approval lapsed is `400 EXPIRED` (conto-api.md: "If confirmation fails
/// with `EXPIRED`, the 10-minute window passed"), with the code in the message too, since
/// Conto's agent skill prints only the message; the spend is not counted.
#[tokio::test]
async fn a_confirm_after_the_approval_lapsed_is_expired_and_counts_nothing() {
    let server = conto_local::start(conto_local::Config {
        port: 0,
        db: None,
        org_key: Some("conto_org_test".into()),
        rate_limit: 100_000,
        approval_ttl: Some(conto_core::jiff::SignedDuration::from_secs(1)),
        ..Default::default()
    })
    .await
    .unwrap();
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    org.policy(caps()).await;
    let sdk = Sdk { base: server.url(), key, http: reqwest::Client::new() };
    let (status, approval) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    assert_eq!((status, &approval["approved"]), (200, &json!(true)), "{approval}");
    let asked = json!({"amount": 3, "recipientAddress": RECIPIENT, "idempotencyKey": "lapse-1"});
    let (_, request) = sdk.post("/api/sdk/payments/request", asked.clone()).await;
    assert_eq!(request["status"], "APPROVED", "{request}");
    let (_, session) = sdk
        .post(
            "/api/sdk/mpp/pre-authorize",
            json!({"amount": "1", "recipientAddress": RECIPIENT, "resourceUrl": "https://mpp.example.com/v1/chat"}),
        )
        .await;
    assert_eq!(session["authorized"], true, "{session}");
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    // A payment request whose approval lapsed is shown so, never `APPROVED` (which a client
    // would go on to pay), and its confirm is refused the same way.
    let request_id = request["requestId"].as_str().unwrap();
    let (_, polled) = sdk.call(reqwest::Method::GET, &format!("/api/sdk/payments/{request_id}"), None).await;
    assert_eq!(polled["status"], "EXPIRED", "{polled}");
    // Asked again under its idempotency key: the same request, as it stands now.
    let (_, again) = sdk.post("/api/sdk/payments/request", asked).await;
    assert_eq!((&again["requestId"], &again["status"]), (&request["requestId"], &json!("EXPIRED")), "{again}");
    let (status, err) = sdk.post(&format!("/api/sdk/payments/{request_id}/confirm"), json!({"txHash": TX})).await;
    assert_eq!((status, &err["code"]), (400, &json!("EXPIRED")), "{err}");
    let id = approval["approvalId"].as_str().unwrap();
    let confirm = json!({"txHash": TX, "approvalToken": approval["approvalToken"]});
    let (status, err) = sdk.post(&format!("/api/sdk/payments/{id}/confirm"), confirm).await;
    assert_eq!((status, &err["code"]), (400, &json!("EXPIRED")), "{err}");
    assert!(err["message"].as_str().is_some_and(|m| m.starts_with("EXPIRED")), "{err}");
    assert_eq!(server.spend_count("agent-1").unwrap(), 0);
    // An MPP session's record is never refused for its approval's lapse (a session may
    // outlive it, `MPP_MAX_SESSION_DURATION`): the money moved, and is counted, late.
    let record = json!({"amount": "1", "recipientAddress": RECIPIENT, "resourceUrl": "https://mpp.example.com/v1/chat",
        "authorizationId": session["authorizationId"], "txHash": format!("0x{}", "f".repeat(64))});
    let (status, recorded) = sdk.post("/api/sdk/mpp/record", record).await;
    assert_eq!(status, 200, "{recorded}");
    assert_eq!(server.spend_count("agent-1").unwrap(), 1);
}

/// An amount written with more places than a stablecoin holds (Conto's agent skill sends what
/// a swap converts to, `1728.3945615`) is decided, rounded up to six places (never down: the
/// budget never counts less than asked); a negative one is still refused.
#[tokio::test]
async fn an_amount_with_more_than_six_places_is_decided_rounded_up() {
    let (_server, sdk) = setup(None).await;
    let mut body = x402_payment("0");
    body["amount"] = json!(0.1234567);
    let (status, pre) = sdk.post("/api/sdk/x402/pre-authorize", body).await;
    assert_eq!((status, &pre["authorized"]), (200, &json!(true)), "{pre}");
    assert_eq!(budget_spent_and_reserved(&sdk).await.1, "0.123457", "reserved, rounded up");
    let mut body = x402_payment("0");
    body["amount"] = json!("-0.0000001");
    let (status, err) = sdk.post("/api/sdk/x402/pre-authorize", body).await;
    assert_eq!((status, &err["code"]), (400, &json!("INVALID_AMOUNT")), "{err}");
}

/// Conto's machine-spend read model (conto-api.md §6.8): `GET /api/sdk/service-spend/summary`
/// with `filters` and `summary` totals per protocol, the services most spent first, filtered
/// by `protocol` and cut at `limit`; a bad filter is a 400, not an empty summary.
#[tokio::test]
async fn the_machine_spend_summary_totals_x402_and_mpp_by_protocol_and_service() {
    let (_server, sdk) = setup(None).await;
    let pay = |rail: &'static str, amount: &'static str, url: &'static str, n: u8| {
        let sdk = &sdk;
        let tx = format!("0x{}", format!("{n:02x}").repeat(32));
        async move {
            let (_, pre) = sdk
                .post(
                    &format!("/api/sdk/{rail}/pre-authorize"),
                    json!({"amount": amount, "recipientAddress": RECIPIENT, "resourceUrl": url}),
                )
                .await;
            assert_eq!(pre["authorized"], true, "{pre}");
            let record = if rail == "x402" {
                json!({"payments": [{"amount": amount, "recipientAddress": RECIPIENT, "resourceUrl": url,
                    "txHash": tx, "authorizationId": pre["authorizationId"]}]})
            } else {
                json!({"amount": amount, "recipientAddress": RECIPIENT, "resourceUrl": url, "txHash": tx,
                    "walletId": pre["wallet"]["id"], "chainId": "4217", "authorizationId": pre["authorizationId"]})
            };
            let (status, body) = sdk.post(&format!("/api/sdk/{rail}/record"), record).await;
            assert!(status < 300, "{status} {body}");
        }
    };
    pay("x402", "1", "https://api.example.com/search", 1).await;
    pay("x402", "2", "https://api.example.com/search", 2).await;
    pay("x402", "0.5", "https://data.example.org/v1", 3).await;
    pay("mpp", "4", "https://mpp.example.com/v1/chat", 4).await;

    let (status, all) =
        sdk.call(reqwest::Method::GET, "/api/sdk/service-spend/summary?period=24h&protocol=all&limit=10", None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["filters"]["period"], "24h", "{all}");
    assert_eq!(all["filters"]["protocol"], "all");
    assert!(all["filters"]["agentId"].is_string() && all["filters"]["startDate"].is_string(), "{all}");
    let summary = &all["summary"];
    assert_eq!((summary["totalSpend"].as_f64(), &summary["totalCalls"]), (Some(7.5), &json!(4)), "{all}");
    assert_eq!((summary["x402Spend"].as_f64(), &summary["x402Calls"]), (Some(3.5), &json!(3)), "{all}");
    assert_eq!((summary["mppSpend"].as_f64(), &summary["mppCalls"]), (Some(4.0), &json!(1)), "{all}");
    assert_eq!((&summary["activeServices"], &summary["activeAgents"]), (&json!(3), &json!(1)), "{all}");
    let domains: Vec<_> = all["services"].as_array().unwrap().iter().map(|s| s["serviceDomain"].clone()).collect();
    assert_eq!(
        domains,
        [json!("mpp.example.com"), json!("api.example.com"), json!("data.example.org")],
        "most spent first"
    );
    assert!(all["alerts"].is_array());

    let (_, x402) = sdk.call(reqwest::Method::GET, "/api/sdk/service-spend/summary?protocol=x402&limit=1", None).await;
    assert_eq!(
        (x402["summary"]["totalSpend"].as_f64(), &x402["summary"]["mppCalls"]),
        (Some(3.5), &json!(0)),
        "{x402}"
    );
    assert_eq!(x402["services"].as_array().map(Vec::len), Some(1), "cut at limit: {x402}");
    let (_, ever) = sdk.call(reqwest::Method::GET, "/api/sdk/service-spend/summary?period=all", None).await;
    assert!(ever["filters"]["startDate"].is_null(), "{ever}");
    let (status, _) = sdk.call(reqwest::Method::GET, "/api/sdk/service-spend/summary?period=7d&agentId=x", None).await;
    assert_eq!(status, 200, "a parameter it does not know is ignored");
    for bad in ["period=1y", "protocol=card", "limit=0", "limit=ten"] {
        let (status, body) =
            sdk.call(reqwest::Method::GET, &format!("/api/sdk/service-spend/summary?{bad}"), None).await;
        assert_eq!((status, &body["code"]), (400, &json!("VALIDATION_ERROR")), "{bad}: {body}");
    }
}

/// An approved x402 or MPP pre-authorization names the wallet it pays from (conto-api.md §6.1,
/// §6.4: `id`, `address`, `chainId`, `availableBalance`): the agent's delegated wallet on the
/// rail's chain when it has one, else its app's own, `external`; a denial names none.
#[tokio::test]
async fn an_approved_pre_authorization_names_its_wallet() {
    let (server, sdk) = setup(None).await;
    let (_, pre) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("1")).await;
    assert_eq!(pre["authorized"], true, "{pre}");
    let wallet = &pre["wallet"];
    assert_eq!(
        (&wallet["id"], &wallet["custodyType"], &wallet["chainId"]),
        (&json!("external"), &json!("EXTERNAL"), &json!("8453")),
        "{pre}"
    );
    for field in ["address", "availableBalance"] {
        assert!(wallet.as_object().unwrap().contains_key(field), "{field}: {pre}");
    }
    assert!(pre["reasons"].is_array(), "{pre}");

    let org = Org::new(&server);
    for doc in [
        json!({"walletId": "wal_base", "address": SENDER, "chainId": 8453, "availableBalance": 250}),
        json!({"walletId": "wal_tempo", "address": RECIPIENT, "chainId": "4217"}),
    ] {
        let (status, body) = org.post("/api/agents/agent-1/wallets", doc).await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, x402) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("1")).await;
    assert_eq!(
        (&x402["wallet"]["id"], &x402["wallet"]["chainId"]),
        (&json!("wal_base"), &json!("8453")),
        "a string, as Conto writes it: {x402}"
    );
    assert_eq!(
        (&x402["wallet"]["address"], &x402["wallet"]["availableBalance"]),
        (&json!(SENDER), &json!(250)),
        "{x402}"
    );
    let mpp = json!({"amount": "2", "recipientAddress": RECIPIENT, "resourceUrl": "https://mpp.example.com/v1/chat",
        "intent": "session", "depositAmount": "2"});
    let (_, mpp) = sdk.post("/api/sdk/mpp/pre-authorize", mpp).await;
    assert_eq!((&mpp["wallet"]["id"], &mpp["wallet"]["chainId"]), (&json!("wal_tempo"), &json!("4217")), "{mpp}");

    let (_, denied) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("120")).await;
    assert_eq!(denied["authorized"], false, "{denied}");
    assert!(denied.get("wallet").is_none(), "{denied}");
}

/// Retries of one request that race each other (a client's timeout fired while the first was
/// still running) all get the first request's answer: one approval, one reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_repeats_of_one_idempotency_key_all_get_the_first_answer() {
    let (_server, sdk) = setup(None).await;
    let sdk = std::sync::Arc::new(sdk);
    let body = json!({"amount": 60, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 8453,
        "idempotencyKey": "retry-1"});
    let racing: Vec<_> = (0..16)
        .map(|_| {
            let (sdk, body) = (sdk.clone(), body.clone());
            tokio::spawn(async move { sdk.post("/api/sdk/payments/approve", body).await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for answer in racing {
        let (status, answer) = answer.await.unwrap();
        assert_eq!((status, answer["approved"].as_bool()), (200, Some(true)), "{answer}");
        ids.insert(answer["approvalId"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one approval for every repeat: {ids:?}");
    // Exactly one 60 is held against the daily limit of 150: 60 more fit, then nothing does.
    let other = |key: &str| json!({"amount": 60, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 8453, "idempotencyKey": key});
    assert_eq!(sdk.post("/api/sdk/payments/approve", other("other-1")).await.1["approved"], true);
    let (_, denied) = sdk.post("/api/sdk/payments/approve", other("other-2")).await;
    assert_eq!(denied["approved"], false, "{denied}");
}

/// A successful answer says how long conto-local's handler spent on it
/// (`Server-Timing: app;dur=<ms>`), so a client can tell the server's share of a round trip; a
/// refusal says nothing of the kind to a caller that is not let in.
#[tokio::test]
async fn a_successful_answer_says_the_time_the_server_spent_on_it() {
    let (_server, sdk) = setup(None).await;
    let url = format!("{}/api/sdk/x402/pre-authorize", sdk.base);
    let resp = sdk.http.post(&url).bearer_auth(&sdk.key).json(&x402_payment("5")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let timing = resp.headers().get("server-timing").expect("a Server-Timing header").to_str().unwrap().to_owned();
    let ms = timing.strip_prefix("app;dur=").unwrap_or_else(|| panic!("{timing:?}"));
    let (whole, fraction) = ms.split_once('.').unwrap_or_else(|| panic!("{timing:?}"));
    assert!(whole.parse::<u64>().is_ok() && fraction.len() == 3 && fraction.parse::<u16>().is_ok(), "{timing:?}");
    for refused in [
        sdk.http.post(&url).json(&x402_payment("5")).send().await.unwrap(),
        sdk.http.post(&url).bearer_auth("conto_agent_not_a_key").json(&x402_payment("5")).send().await.unwrap(),
    ] {
        assert_eq!(refused.status().as_u16(), 401);
        assert!(refused.headers().get("server-timing").is_none(), "a refusal carries no timing");
    }
}

/// HTTP authentication schemes are case-insensitive (RFC 9110 §11.1): `bearer` is `Bearer`.
/// Anything else in the header is still no key.
#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case() {
    let (_server, sdk) = setup(None).await;
    let budget =
        |auth: String| sdk.http.get(format!("{}/api/sdk/x402/budget", sdk.base)).header("authorization", auth).send();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let resp = budget(format!("{scheme} {}", sdk.key)).await.unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
    }
    for wrong in [format!("Basic {}", sdk.key), sdk.key.clone(), format!("Bearer{}", sdk.key)] {
        assert_eq!(budget(wrong.clone()).await.unwrap().status(), 401, "{wrong}");
    }
}

/// Conto's approval lifetimes: 10 minutes for `payments/approve` (and x402 pre-authorizations),
/// 5 minutes for payment requests and card approvals.
#[tokio::test]
async fn approvals_last_as_long_as_conto_keeps_them_per_flow() {
    let (_server, sdk) = setup(None).await;
    let lifetime = |body: &Value| {
        let expires: conto_core::jiff::Timestamp = body["expiresAt"].as_str().unwrap().parse().unwrap();
        expires.duration_since(conto_core::jiff::Timestamp::now()).as_secs()
    };
    let (_, transfer) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    let (_, x402) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("5")).await;
    let (_, request) = sdk.post("/api/sdk/payments/request", json!({"amount": 5, "recipientAddress": RECIPIENT})).await;
    let (_, card) =
        sdk.post("/api/sdk/cards/approve", json!({"amount": 5, "merchantName": "Acme", "cardId": "card_1"})).await;
    for (what, body, minutes) in
        [("transfer", &transfer, 10), ("x402", &x402, 10), ("request", &request, 5), ("card", &card, 5)]
    {
        let secs = lifetime(body);
        assert!((minutes * 60 - 30..=minutes * 60).contains(&secs), "{what}: {secs} s: {body}");
    }
}

/// A batch record is one answer about all its payments: when one of them cannot be recorded
/// (a repeat, a bad field, a payment listed twice), none is counted, and the good ones,
/// sent again on their own, are not refused as repeats.
#[tokio::test]
async fn an_x402_batch_with_one_bad_payment_counts_none_of_them() {
    let (_server, sdk) = setup(None).await;
    let paid = |id: &str, amount: &str| {
        let mut p = x402_payment(amount);
        p["paymentId"] = json!(id);
        p
    };
    let (status, body) = sdk.post("/api/sdk/x402/record", json!({"payments": [paid("pay-1", "3")]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(budget_spent_and_reserved(&sdk).await.0, "3");

    // The second payment reuses the key of the one already recorded, with another amount: a
    // 409 naming it, and the first (new) payment of the batch is not counted either.
    let batch = json!({"payments": [paid("pay-2", "4"), paid("pay-1", "2")]});
    let (status, body) = sdk.post("/api/sdk/x402/record", batch).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("CONFLICT")), "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("payments[1]: "), "{body}");
    assert_eq!(budget_spent_and_reserved(&sdk).await.0, "3", "nothing of the refused batch counted");

    // A payment listed twice in one batch, and a payment with a bad recipient: refused whole.
    for batch in [
        json!({"payments": [paid("pay-2", "4"), paid("pay-2", "4")]}),
        json!({"payments": [paid("pay-2", "4"), {"amount": 1, "recipientAddress": "nope", "resourceUrl": "https://api.example.com/x"}]}),
    ] {
        let (status, body) = sdk.post("/api/sdk/x402/record", batch).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["message"].as_str().unwrap().starts_with("payments[1]: "), "{body}");
        assert_eq!(budget_spent_and_reserved(&sdk).await.0, "3", "{body}");
    }

    // The good payment on its own is recorded: it was never counted, so it is no repeat.
    let (status, body) = sdk.post("/api/sdk/x402/record", json!({"payments": [paid("pay-2", "4")]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(budget_spent_and_reserved(&sdk).await.0, "7");
}

/// A record sent again as it was (a client retrying after a lost answer, with no idempotency
/// key) is answered as the first time and counted once; the same key with any field changed
/// is refused, and counts nothing.
#[tokio::test]
async fn an_x402_or_mpp_record_sent_again_unchanged_is_answered_again_and_counted_once() {
    let (_server, sdk) = setup(None).await;
    let (_, pre) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("5")).await;
    assert_eq!(pre["authorized"], true, "{pre}");
    let mut paid = x402_payment("5");
    paid["paymentId"] = json!("pay-1");
    paid["txHash"] = json!(TX);
    paid["responseCode"] = json!(200);
    let record = json!({"payments": [paid.clone()]});
    let (status, first) = sdk.post("/api/sdk/x402/record", record.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["payments"][0]["authorizationId"], pre["authorizationId"], "it settled the pre-authorization");
    let (status, again) = sdk.post("/api/sdk/x402/record", record).await;
    assert_eq!((status, &again), (200, &first), "the first answer again");
    assert_eq!(budget_spent_and_reserved(&sdk).await, ("5".into(), "0".into()), "counted once");

    // Inside a batch with a new payment: the new one is counted, the repeat answered again.
    let mut new = x402_payment("2");
    new["paymentId"] = json!("pay-2");
    let (status, both) = sdk.post("/api/sdk/x402/record", json!({"payments": [new, paid.clone()]})).await;
    assert_eq!(status, 200, "{both}");
    assert_eq!(both["payments"][1], first["payments"][0], "{both}");
    assert_eq!(budget_spent_and_reserved(&sdk).await.0, "7");

    // The same key with another amount, or another tx hash: refused, nothing counted.
    for (field, value) in [("amount", json!("4")), ("txHash", json!(format!("0x{}", "c".repeat(64))))] {
        let mut changed = paid.clone();
        changed[field] = value;
        let (status, body) = sdk.post("/api/sdk/x402/record", json!({"payments": [changed]})).await;
        assert_eq!((status, body["code"].as_str()), (409, Some("CONFLICT")), "{field}: {body}");
    }
    assert_eq!(budget_spent_and_reserved(&sdk).await.0, "7");

    // The same transaction however it is named: its hash in upper case, or under
    // `transactionHash` (Conto's older name), is the same payment.
    let mut renamed = paid.clone();
    renamed.as_object_mut().unwrap().remove("txHash");
    renamed["transactionHash"] = json!(TX.to_ascii_uppercase().replacen("0X", "0x", 1));
    let (status, again) = sdk.post("/api/sdk/x402/record", json!({"payments": [renamed]})).await;
    assert_eq!((status, &again["payments"][0]), (200, &first["payments"][0]), "{again}");
    assert_eq!(budget_spent_and_reserved(&sdk).await.0, "7");
    // White space around the hash names no other transaction; inside it, none at all.
    for spaced in [format!(" {TX}"), format!("{TX}\n"), format!("\t{TX} ")] {
        let mut padded = paid.clone();
        padded["txHash"] = json!(spaced);
        let (status, again) = sdk.post("/api/sdk/x402/record", json!({"payments": [padded]})).await;
        assert_eq!((status, &again["payments"][0]), (200, &first["payments"][0]), "{spaced:?}: {again}");
    }
    // Anything but printable ASCII inside (a space, an invisible or full-width character, a
    // name a multi-byte character starts) is no transaction: refused, never a second count
    // or a crash.
    let split = format!("{} {}", &TX[..10], &TX[10..]);
    let hidden = [format!("{TX}\u{200b}"), format!("\u{feff}{TX}"), format!("{}\u{2060}{}", &TX[..10], &TX[10..])];
    for odd in [split, "€€".to_owned(), "a€".to_owned(), format!("0x{}", "ｃ".repeat(64))].into_iter().chain(hidden)
    {
        let mut changed = paid.clone();
        changed["txHash"] = json!(odd);
        let (status, body) = sdk.post("/api/sdk/x402/record", json!({"payments": [changed]})).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{odd:?}: {body}");
        let confirm = sdk.post(&format!("/api/sdk/payments/{}/confirm", "apr_x"), json!({"txHash": odd})).await;
        assert_eq!((confirm.0, confirm.1["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{odd:?}: {confirm:?}");
    }
    assert_eq!(budget_spent_and_reserved(&sdk).await.0, "7");

    // MPP's single-payment record, the same way.
    let mpp = json!({"amount": "1", "recipientAddress": RECIPIENT, "resourceUrl": "https://mpp.example.com/v1/chat",
        "txHash": format!("0x{}", "d".repeat(64)), "sessionId": "s-1"});
    let (status, first) = sdk.post("/api/sdk/mpp/record", mpp.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = sdk.post("/api/sdk/mpp/record", mpp).await;
    assert_eq!((status, &again), (200, &first));
}

/// Two payments of one batch that both match one pre-authorization: the first settles it,
/// the second is counted as spend of its own (never the same reservation twice).
#[tokio::test]
async fn two_payments_of_one_batch_never_settle_the_same_preauthorization() {
    let (_server, sdk) = setup(None).await;
    let (status, pre) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("5")).await;
    assert_eq!((status, &pre["authorized"]), (200, &json!(true)), "{pre}");
    let paid = |id: &str| {
        let mut p = x402_payment("5");
        p["paymentId"] = json!(id);
        p
    };
    let (status, body) = sdk.post("/api/sdk/x402/record", json!({"payments": [paid("pay-a"), paid("pay-b")]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payments"][0]["authorizationId"], pre["authorizationId"], "{body}");
    assert!(body["payments"][1]["authorizationId"].is_null(), "{body}");
    assert_eq!(budget_spent_and_reserved(&sdk).await, ("10".into(), "0".into()));
}

/// Card payments as Conto documents them: a requires-approval answer carries a `requestId`,
/// and the confirm body (`transactionReference`, `amount`, `status`) needs no token; a token
/// that is sent must still be the approval's own.
#[tokio::test]
async fn card_answers_carry_a_request_id_and_a_card_confirm_needs_no_token() {
    let (_server, sdk) = setup(None).await;
    let card =
        |amount: u32| json!({"amount": amount, "merchantName": "Acme", "merchantCategory": "5411", "cardId": "card_1"});
    let (status, held) = sdk.post("/api/sdk/cards/approve", card(90)).await;
    assert_eq!((status, held["status"].as_str()), (202, Some("REQUIRES_APPROVAL")), "{held}");
    assert_eq!(held["requestId"], held["approvalRequestId"], "{held}");
    assert_eq!(held["amount"], 90, "every card answer carries its amount: {held}");

    let (status, approved) = sdk.post("/api/sdk/cards/approve", card(5)).await;
    assert_eq!((status, approved["status"].as_str()), (200, Some("APPROVED")), "{approved}");
    let id = approved["requestId"].as_str().unwrap().to_owned();
    let (status, body) = sdk
        .post(
            &format!("/api/sdk/cards/{id}/confirm"),
            json!({"transactionReference": "ch_1", "amount": 5, "status": "COMPLETED", "approvalToken": "0".repeat(64)}),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_TOKEN")), "a wrong token is refused: {body}");
    let (status, body) = sdk
        .post(
            &format!("/api/sdk/cards/{id}/confirm"),
            json!({"transactionReference": "ch_1", "amount": 5, "status": "COMPLETED"}),
        )
        .await;
    assert_eq!((status, &body["confirmed"]), (200, &json!(true)), "{body}");
}

/// Scopes asked for with a key are added to the standard preset (conto-api.md §1: approve,
/// confirm and execute "must be added"), and the answer says the key is shown once.
#[tokio::test]
async fn scopes_asked_for_are_added_to_the_standard_preset() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    let (status, _) = org.post("/api/agents", json!({"id": "agent-1", "name": "agent-1"})).await;
    assert_eq!(status, 201);
    let (status, key) =
        org.post("/api/agents/agent-1/sdk-keys", json!({"name": "k", "scopes": ["payments:approve"]})).await;
    assert_eq!(status, 201, "{key}");
    let scopes: Vec<&str> = key["scopes"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for scope in ["payments:request", "policies:read", "analytics:read", "payments:approve"] {
        assert!(scopes.contains(&scope), "{scope} missing from {scopes:?}");
    }
    assert!(!scopes.contains(&"payments:confirm"), "nothing beyond the preset and what was asked: {scopes:?}");
    assert!(key["message"].as_str().is_some_and(|m| !m.is_empty()), "{key}");
    let sdk = Sdk { base: server.url(), key: key["key"].as_str().unwrap().to_owned(), http: reqwest::Client::new() };
    org.policy(caps()).await;
    let (status, body) = sdk.call(reqwest::Method::GET, "/api/sdk/policies", None).await;
    assert_eq!(status, 200, "the preset's policies:read: {body}");
    // Shown as the org API shows them: Conto's defaults where the policy was sent without.
    let caps = &body["policies"][0];
    assert_eq!((&caps["name"], &caps["isActive"], &caps["priority"]), (&json!("caps"), &json!(true), &json!(90)));
    let (status, body) = sdk
        .post(
            "/api/sdk/payments/auth_000000000000000000000000/confirm",
            json!({"txHash": TX, "approvalToken": "0".repeat(64)}),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("INSUFFICIENT_SCOPE")), "confirm was not asked for: {body}");
}

/// A wallet delegation's hours and days are enforced with its limits (conto-api.md §7.5), in
/// UTC: outside them a payment is denied with a time violation; the starter's every-hour,
/// every-day delegation denies nothing; a malformed schedule is a 400 that names its field.
/// The windows leave an hour (and a day) of margin either side of now, so the test holds
/// across a boundary.
#[tokio::test]
async fn a_wallet_delegations_hours_and_days_are_enforced() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    let sdk = Sdk { base: server.url(), key, http: reqwest::Client::new() };
    let now = conto_core::jiff::Timestamp::now().to_zoned_datetime(conto_core::jiff::tz::TimeZone::UTC);
    let hour = i64::from(now.hour());
    let delegate = |wallet: &str, schedule: Value| {
        let mut doc = json!({"walletId": wallet, "spendLimitPerTx": 100});
        doc.as_object_mut().unwrap().extend(schedule.as_object().unwrap().clone());
        org.post("/api/agents/agent-1/wallets", doc)
    };
    let pay = || sdk.post("/api/sdk/x402/pre-authorize", x402_payment("1"));

    let (status, body) = delegate(
        "wal_1",
        json!({"allowedHoursStart": 0, "allowedHoursEnd": 24, "allowedDays": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (_, ok) = pay().await;
    assert_eq!(ok["authorized"], true, "every hour, every day: {ok}");

    // Hours as a delegation writes them: a start 0-23 and an end 1-24, wrapping midnight when
    // the start is later. Each window below keeps an hour of margin either side of now.
    let window = |from: i64, to: i64| {
        let end = (hour + to).rem_euclid(24);
        json!({"allowedHoursStart": (hour + from).rem_euclid(24), "allowedHoursEnd": if end == 0 { 24 } else { end }})
    };
    let patch = |wallet: &str, schedule: Value| {
        org.http
            .patch(format!("{}/api/agents/agent-1/wallets/{wallet}", server.url()))
            .bearer_auth(&org.key)
            .json(&schedule)
            .send()
    };
    // Around now: allowed. Ending before now, or starting after it: denied (each also fails
    // should the server read only one of the two fields).
    for (from, to, allowed) in [(-1, 2, true), (-3, -1, false), (2, 5, false), (2, -1, false)] {
        let resp = patch("wal_1", window(from, to)).await.unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
        let (_, answer) = pay().await;
        assert_eq!(answer["authorized"], allowed, "hours {}: {answer}", window(from, to));
        if !allowed {
            assert_eq!(answer["violations"][0]["type"], "TIME_WINDOW", "{answer}");
        }
    }
    // A second delegation's hours apply too: all of an agent's delegations must allow a payment.
    let (status, body) = delegate("wal_2", window(2, -1)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(patch("wal_1", json!({"allowedHoursStart": 0, "allowedHoursEnd": 24})).await.unwrap().status(), 200);
    let (_, denied) = pay().await;
    assert_eq!(denied["authorized"], false, "{denied}");
    assert_eq!(patch("wal_2", json!({"allowedHoursStart": 0, "allowedHoursEnd": 24})).await.unwrap().status(), 200);
    let (_, ok) = pay().await;
    assert_eq!(ok["authorized"], true, "every hour again, on both delegations: {ok}");

    // Allowed on four days: none of yesterday, today and tomorrow.
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let today = usize::try_from(now.weekday().to_monday_zero_offset()).unwrap();
    let others: Vec<&str> = (2..6).map(|d| DAYS[(today + d) % 7]).collect();
    let (status, body) = delegate("wal_3", json!({"allowedDays": others})).await;
    assert_eq!(status, 201, "{body}");
    let (_, denied) = pay().await;
    assert_eq!(
        (&denied["authorized"], denied["violations"][0]["type"].as_str()),
        (&json!(false), Some("TIME_WINDOW")),
        "{denied}"
    );

    for (schedule, field) in [
        (json!({"allowedHoursStart": 25}), "allowedHoursStart"),
        (json!({"allowedHoursStart": 24}), "allowedHoursStart"),
        (json!({"allowedHoursEnd": 0}), "allowedHoursEnd"),
        (json!({"allowedHoursStart": 9.5}), "allowedHoursStart"),
        (json!({"allowedHoursStart": -1}), "allowedHoursStart"),
        (json!({"allowedHoursEnd": "18:00"}), "allowedHoursEnd"),
        (json!({"allowedHoursStart": 9, "allowedHoursEnd": 9}), "allowedHoursEnd"),
        (json!({"allowedDays": []}), "allowedDays"),
        (json!({"allowedDays": ["Someday"]}), "Someday"),
    ] {
        let (status, body) = delegate("wal_4", schedule.clone()).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{schedule}: {body}");
        assert!(body["message"].as_str().unwrap().contains(field), "{schedule}: {body}");
    }
}

/// An endpoint settles only its own flow's approvals: a transfer's approval (whose confirm must
/// show its token) cannot be settled without it through the card confirm or an x402 record,
/// which take no token; a wrong token is refused on the transfer's own confirm.
#[tokio::test]
async fn a_transfer_approval_is_settled_only_by_its_own_confirm_with_its_token() {
    let (_server, sdk) = setup(None).await;
    let (status, a) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    assert_eq!((status, &a["approved"]), (200, &json!(true)), "{a}");
    let id = a["approvalId"].as_str().unwrap().to_owned();
    let (status, body) = sdk
        .post(&format!("/api/sdk/cards/{id}/confirm"), json!({"transactionReference": "ch_1", "status": "COMPLETED"}))
        .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")), "card confirm: {body}");
    let mut record = x402_payment("5");
    record["authorizationId"] = json!(id);
    let (status, body) = sdk.post("/api/sdk/x402/record", record).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")), "x402 record: {body}");
    let (status, body) = sdk
        .post(&format!("/api/sdk/payments/{id}/confirm"), json!({"txHash": TX, "approvalToken": "0".repeat(64)}))
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_TOKEN")), "{body}");
    for missing in [json!({"txHash": TX}), json!({"txHash": TX, "approvalToken": ""})] {
        let (status, body) = sdk.post(&format!("/api/sdk/payments/{id}/confirm"), missing).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("VALIDATION_ERROR")), "no token: {body}");
    }
    let (status, body) = sdk
        .post(&format!("/api/sdk/payments/{id}/confirm"), json!({"txHash": TX, "approvalToken": a["approvalToken"]}))
        .await;
    assert_eq!((status, &body["confirmed"]), (200, &json!(true)), "{body}");
    let (status, body) = sdk
        .post(&format!("/api/sdk/payments/{id}/confirm"), json!({"txHash": TX, "approvalToken": a["approvalToken"]}))
        .await;
    assert!(status == 200 || status == 400, "a repeat is never a second spend: {status} {body}");
}

/// A payment is known by its key (its `paymentId`, or else its tx hash): seen before, it makes
/// a record a repeat, whether the first record named its pre-authorization or not.
#[tokio::test]
async fn a_payment_is_counted_once_by_its_key_whether_or_not_it_named_its_preauthorization() {
    let (_server, sdk) = setup(None).await;
    let preauthorize = || sdk.post("/api/sdk/x402/pre-authorize", x402_payment("5"));
    let (status, pre) = preauthorize().await;
    assert_eq!(status, 200, "{pre}");
    let mut named = x402_payment("5");
    named["authorizationId"] = pre["authorizationId"].clone();
    named["paymentId"] = json!("pay-1");
    named["txHash"] = json!(TX);
    let mut again = x402_payment("5");
    again["paymentId"] = json!("pay-1");
    let (status, body) = sdk.post("/api/sdk/x402/record", json!({"payments": [named.clone(), again.clone()]})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("VALIDATION_ERROR")), "listed twice: {body}");
    assert_eq!(budget_spent_and_reserved(&sdk).await, ("0".into(), "5".into()), "nothing counted");
    let (status, body) = sdk.post("/api/sdk/x402/record", json!({"payments": [named]})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = sdk.post("/api/sdk/x402/record", again).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("CONFLICT")), "{body}");

    // Without a paymentId, the tx hash is the key.
    let (_, pre) = preauthorize().await;
    let tx2 = format!("0x{}", "b".repeat(64));
    let mut named = x402_payment("5");
    named["authorizationId"] = pre["authorizationId"].clone();
    named["txHash"] = json!(tx2);
    let (status, body) = sdk.post("/api/sdk/x402/record", named).await;
    assert_eq!(status, 200, "{body}");
    let mut by_tx = x402_payment("5");
    by_tx["txHash"] = json!(tx2);
    let (status, body) = sdk.post("/api/sdk/x402/record", by_tx).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("CONFLICT")), "{body}");
    assert_eq!(budget_spent_and_reserved(&sdk).await, ("10".into(), "0".into()), "each counted once");
}

/// The owner's decision as Conto's shopping starter sends it: its own route (org key), its
/// body, and the `finalStatus` it reads. An approval whose re-check denies (the day's budget
/// went meanwhile) is `REJECTED`, so the starter never takes that payment; a payment request
/// the approval request does not hold, or a decision of another name, is refused before
/// anything is decided.
#[tokio::test]
async fn the_shopping_starter_decides_on_its_own_route_and_reads_the_final_status() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    let sdk = Sdk { base: server.url(), key: org.agent("agent-1", ALL_SCOPES).await, http: reqwest::Client::new() };
    let above_80 =
        json!({"ruleType": "REQUIRE_APPROVAL_ABOVE", "operator": "GT", "value": "80", "action": "REQUIRE_APPROVAL"});
    let daily = |limit: &str| json!({"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": limit, "action": "ALLOW"});
    let caps = org.policy(json!({"name": "owner", "scope": "all", "rules": [daily("1000"), above_80.clone()]})).await;
    let request = |amount: &str, key: &str| json!({"amount": amount, "recipientAddress": RECIPIENT, "idempotencyKey": key, "autoExecute": false});
    let pending = |key: &'static str| {
        let sdk = &sdk;
        async move {
            let (_, body) = sdk.post("/api/sdk/payments/request", request("90", key)).await;
            assert_eq!(body["status"], "REQUIRES_APPROVAL", "{body}");
            (body["requestId"].as_str().unwrap().to_owned(), body["approvalRequestId"].as_str().unwrap().to_owned())
        }
    };
    let decide = |approval: &str, decision: &str, payment: &str| {
        let path = format!("/api/demos/anthropic-shopping/approval-requests/{approval}/decision");
        let body = json!({"decision": decision, "checkoutId": "c-1", "cartFingerprint": "c-1-fp", "paymentRequestId": payment});
        let org = &org;
        async move { org.post(&path, body).await }
    };
    let status_of = |payment: String| {
        let sdk = &sdk;
        async move {
            sdk.call(reqwest::Method::GET, &format!("/api/sdk/payments/{payment}"), None).await.1["status"].clone()
        }
    };

    let (first, first_approval) = pending("shop-1").await;
    // Bound to its own payment request; a decision is APPROVED or REJECTED.
    let (status, body) = decide(&first_approval, "APPROVED", "req_of_another_checkout").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{body}");
    let (status, body) = decide(&first_approval, "approve", &first).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{body}");
    let unauthenticated = reqwest::Client::new()
        .post(format!("{}/api/demos/anthropic-shopping/approval-requests/{first_approval}/decision", server.url()))
        .bearer_auth(&sdk.key)
        .json(&json!({"decision": "APPROVED"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 403, "an agent key cannot decide its own approvals");
    assert_eq!(status_of(first.clone()).await, "REQUIRES_APPROVAL", "nothing was decided");

    let (status, body) = decide(&first_approval, "APPROVED", &first).await;
    assert_eq!((status, body["finalStatus"].as_str()), (200, Some("APPROVED")), "{body}");
    assert_eq!(body["approvalRequestId"], first_approval.as_str());
    // The same decision sent again (its answer was lost) is answered as the first was.
    let (status, again) = decide(&first_approval, "APPROVED", &first).await;
    assert_eq!((status, again["finalStatus"].as_str()), (200, Some("APPROVED")), "{again}");
    assert_eq!(status_of(first.clone()).await, "APPROVED");
    let (status, body) = decide(&first_approval, "REJECTED", &first).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_STATUS")), "the other decision: {body}");
    assert_eq!(status_of(first).await, "APPROVED");
    let (third, third_approval) = pending("shop-3").await;
    let (status, body) = decide(&third_approval, "REJECTED", &third).await;
    assert_eq!((status, body["finalStatus"].as_str()), (200, Some("REJECTED")), "{body}");
    assert_eq!(status_of(third).await, "DENIED");
    let (status, body) = decide(&third_approval, "APPROVED", "").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_STATUS")), "decided once: {body}");
    let (status, body) = decide(&third_approval, "REJECTED", "").await;
    assert_eq!((status, body["finalStatus"].as_str()), (200, Some("REJECTED")), "{body}");
    // The owner approves after the day's limit was lowered under what is already spoken for:
    // the re-check that follows an approval denies it.
    let (second, second_approval) = pending("shop-2").await;
    let lowered = json!({"rules": [daily("100"), above_80]});
    let put = org
        .http
        .put(format!("{}/api/policies/{}/rules", server.url(), caps["id"].as_str().unwrap()))
        .bearer_auth(&org.key)
        .json(&lowered)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let (status, body) = decide(&second_approval, "APPROVED", &second).await;
    assert_eq!((status, body["finalStatus"].as_str()), (200, Some("REJECTED")), "{body}");
    // Said why, to the owner and to the agent polling its payment (not the earlier "needs a
    // human" reason).
    assert!(body["reasons"][0].as_str().is_some_and(|r| r.contains("DAILY_LIMIT")), "{body}");
    let (_, polled) = sdk.call(reqwest::Method::GET, &format!("/api/sdk/payments/{second}"), None).await;
    assert_eq!(polled["status"], "DENIED", "{polled}");
    assert!(polled["reasons"][0].as_str().is_some_and(|r| r.contains("DAILY_LIMIT")), "{polled}");
}

/// A database file of its own for `name`'s test, none there yet.
fn fresh_db(name: &str) -> std::path::PathBuf {
    let db = std::env::temp_dir().join(format!("conto-local-{name}-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    db
}

/// Stops `server`, changes its database file with `sql` (what only time or an earlier version
/// would do), and starts conto-local on it again.
async fn restarted_after(server: conto_local::Running, db: &std::path::Path, sql: &str) -> conto_local::Running {
    server.stop().await;
    rusqlite::Connection::open(db).unwrap().execute(sql, []).unwrap();
    start(Some(db.to_path_buf()), "conto_org_test").await
}

/// A database an earlier version wrote may hold policies this one refuses (an unknown scope, a
/// blackout with `NOT_BETWEEN`): conto-local still starts, each kept with the meaning it was
/// enforced with (the scope read as none; `NOT_BETWEEN` read as `BETWEEN`).
#[tokio::test]
async fn policies_an_earlier_version_accepted_keep_their_meaning() {
    let db = fresh_db("migrate");
    let server = start(Some(db.clone()), "conto_org_test").await;
    let org = Org::new(&server);
    let one = org.agent("agent-1", ALL_SCOPES).await;
    let two = org.agent("agent-2", ALL_SCOPES).await;
    org.policy(json!({"name": "cap", "agentIds": ["agent-1"], "rules": [
        {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "5", "action": "ALLOW"}]}))
        .await;
    org.policy(json!({"name": "dark", "agentIds": ["agent-2"], "rules": [{"ruleType": "BLACKOUT_PERIOD",
        "operator": "BETWEEN", "value": "{\"start\": \"2000-01-01\", \"end\": \"2100-01-01\"}", "action": "DENY"}]}))
        .await;
    let sql = "UPDATE policies SET doc = CASE json_extract(doc, '$.name')
                 WHEN 'cap' THEN json_set(doc, '$.scope', 'everyone')
                 ELSE json_set(doc, '$.rules[0].operator', 'NOT_BETWEEN') END";
    let server = restarted_after(server, &db, sql).await;
    let pay = |key: String| {
        let sdk = Sdk { base: server.url(), key, http: reqwest::Client::new() };
        async move { sdk.post("/api/sdk/payments/approve", transfer_payment(6)).await.1 }
    };
    let capped = pay(one).await;
    assert_eq!(capped["violations"][0]["type"], "PER_TX_LIMIT", "{capped}");
    let dark = pay(two).await;
    assert_eq!(dark["violations"][0]["type"], "BLACKOUT_PERIOD", "{dark}");
    let (_, listed) = Org::new(&server).get("/api/policies").await;
    let policies = listed["policies"].as_array().unwrap();
    assert_eq!(policies[0]["scope"], "assigned", "{listed}");
    assert_eq!(policies[1]["rules"][0]["operator"], "BETWEEN", "{listed}");
}

/// A human approval the agent did not take in time is listed as `EXPIRED`, as a lapsed
/// pending one is, not as an `APPROVED` entry whose token is gone (here its expiry is moved
/// into the past while conto-local is stopped, which also drops the token it held).
#[tokio::test]
async fn a_lapsed_human_approval_is_listed_expired() {
    let db = fresh_db("lapsed");
    let server = start(Some(db.clone()), "conto_org_test").await;
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    org.policy(caps()).await;
    let sdk = Sdk { base: server.url(), key: key.clone(), http: reqwest::Client::new() };
    let (_, pending) = sdk
        .post("/api/sdk/payments/request", json!({"amount": "90", "recipientAddress": RECIPIENT, "autoExecute": false}))
        .await;
    let approval = pending["approvalRequestId"].as_str().unwrap().to_owned();
    let (status, _) = org.post(&format!("/api/approval-requests/{approval}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let listed = |sdk: Sdk| {
        let approval = approval.clone();
        async move {
            let (_, list) = sdk.call(reqwest::Method::GET, "/api/sdk/approval-requests", None).await;
            let found =
                list["requests"].as_array().unwrap().iter().find(|r| r["approvalRequestId"] == approval.as_str());
            found.cloned().unwrap()
        }
    };
    assert_eq!(listed(sdk).await["status"], "APPROVED");
    // Another agent's transfer that needed a human too, approved and then confirmed (taken)
    // in time.
    let other = org.agent("agent-2", ALL_SCOPES).await;
    let sdk = Sdk { base: server.url(), key: other.clone(), http: reqwest::Client::new() };
    let (_, held) = sdk.post("/api/sdk/payments/approve", transfer_payment(90)).await;
    let taken = held["approvalRequestId"].as_str().unwrap().to_owned();
    let (status, _) = org.post(&format!("/api/approval-requests/{taken}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let (_, list) = sdk.call(reqwest::Method::GET, "/api/sdk/approval-requests", None).await;
    let entry = list["requests"].as_array().unwrap().iter().find(|r| r["approvalRequestId"] == taken.as_str()).cloned();
    let entry = entry.unwrap();
    let confirm = format!("/api/sdk/payments/{}/confirm", entry["approvalId"].as_str().unwrap());
    let (status, body) = sdk.post(&confirm, json!({"txHash": TX, "approvalToken": entry["approvalToken"]})).await;
    assert_eq!(status, 200, "{body}");
    let lapse = "UPDATE approval_requests SET expires_at = '2001-01-01T00:00:00Z' WHERE status = 'APPROVED'";
    let server = restarted_after(server, &db, lapse).await;
    let sdk = || Sdk { base: server.url(), key: key.clone(), http: reqwest::Client::new() };
    let entry = listed(sdk()).await;
    assert_eq!(entry["status"], "EXPIRED", "{entry}");
    // The confirmed one was taken: it stays APPROVED past its expiry.
    let other = Sdk { base: server.url(), key: other, http: reqwest::Client::new() };
    let (_, list) = other.call(reqwest::Method::GET, "/api/sdk/approval-requests", None).await;
    let entry = list["requests"].as_array().unwrap().iter().find(|r| r["approvalRequestId"] == taken.as_str()).cloned();
    assert_eq!(entry.unwrap()["status"], "APPROVED");
    // A week on, the approvals' rows are forgotten: the one taken still reads APPROVED (its
    // spend is kept), the one never taken EXPIRED.
    let server = restarted_after(server, &db, "DELETE FROM approvals").await;
    let other = Sdk { base: server.url(), key: other.key, http: reqwest::Client::new() };
    let (_, list) = other.call(reqwest::Method::GET, "/api/sdk/approval-requests", None).await;
    let entry = list["requests"].as_array().unwrap().iter().find(|r| r["approvalRequestId"] == taken.as_str()).cloned();
    assert_eq!(entry.unwrap()["status"], "APPROVED");
    let mine = Sdk { base: server.url(), key: key.clone(), http: reqwest::Client::new() };
    assert_eq!(listed(mine).await["status"], "EXPIRED");
    server.stop().await;
    let _ = std::fs::remove_file(&db);
}

/// An expired SDK key is told `401 EXPIRED_KEY` wherever it is used, policies included, and
/// the answer still carries its agent's rate-limit headers.
#[tokio::test]
async fn an_expired_key_is_told_so_everywhere() {
    let db = fresh_db("expired");
    let server = start(Some(db.clone()), "conto_org_test").await;
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    let (status, admin) = org
        .post("/api/agents/agent-1/sdk-keys", json!({"name": "admin", "keyType": "admin", "scopes": ["policies:read"]}))
        .await;
    assert_eq!(status, 201, "{admin}");
    let admin = admin["key"].as_str().unwrap().to_owned();
    let server = restarted_after(server, &db, "UPDATE sdk_keys SET expires_at = '2001-01-01T00:00:00Z'").await;
    let http = reqwest::Client::new();
    let policies = http.get(format!("{}/api/policies", server.url())).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(policies.status(), 401);
    assert_eq!(policies.json::<Value>().await.unwrap()["code"], "EXPIRED_KEY");
    let approve = http
        .post(format!("{}/api/sdk/payments/approve", server.url()))
        .bearer_auth(&key)
        .json(&transfer_payment(1))
        .send()
        .await
        .unwrap();
    assert_eq!(approve.status(), 401);
    assert!(approve.headers().contains_key("x-ratelimit-remaining"), "{:?}", approve.headers());
    assert_eq!(approve.json::<Value>().await.unwrap()["code"], "EXPIRED_KEY");
    server.stop().await;
    let _ = std::fs::remove_file(&db);
}

/// A record names its payment by `paymentId` or tx hash, and those are public: another agent
/// recording the same one first (with its own key) neither blocks this agent's record nor
/// counts against this agent's budget.
#[tokio::test]
async fn another_agent_recording_a_payment_first_blocks_nothing() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    let other = Sdk { base: server.url(), key: org.agent("agent-2", ALL_SCOPES).await, http: reqwest::Client::new() };
    let mut payment = x402_payment("5");
    payment["txHash"] = json!(TX);
    let (status, body) = other.post("/api/sdk/x402/record", json!({"payments": [payment.clone()]})).await;
    assert!(status < 300, "{body}");
    let (status, body) = sdk.post("/api/sdk/x402/record", json!({"payments": [payment.clone()]})).await;
    assert!(status < 300, "the agent's own record is taken: {body}");
    assert_eq!(budget_spent_and_reserved(&sdk).await.0, "5");
    // Its own repeat is still its own: answered again, counted once.
    let (status, again) = sdk.post("/api/sdk/x402/record", json!({"payments": [payment]})).await;
    assert_eq!((status, &again), (200, &body));
    assert_eq!(budget_spent_and_reserved(&sdk).await.0, "5");
}

/// Approves and confirms a transfer of `amount`; the confirm's status.
async fn pay_transfer(sdk: &Sdk, amount: u32) -> u16 {
    let (_, approved) = sdk.post("/api/sdk/payments/approve", transfer_payment(amount)).await;
    assert_eq!(approved["approved"], true, "{approved}");
    let path = format!("/api/sdk/payments/{}/confirm", approved["approvalId"].as_str().unwrap());
    sdk.post(&path, json!({"txHash": TX, "approvalToken": approved["approvalToken"]})).await.0
}

/// A payment held for a human that fitted the approved budget when it was asked, but no longer
/// does when the human approves it (the agent spent meanwhile), is rejected by the budget, as
/// the policies' re-check rejects one past a limit: "both budget and policies must pass".
#[tokio::test]
async fn a_human_approval_is_gated_by_the_budget_as_it_stands_then() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    let (_, asked) = sdk.post("/api/sdk/budget-request", json!({"amount": 100, "purpose": "credits"})).await;
    let id = asked["id"].as_str().unwrap().to_owned();
    let (status, _) = org.post(&format!("/api/budget-requests/{id}/approve"), json!({})).await;
    assert_eq!(status, 200);
    // 85 is above the policies' approval threshold (80) and fits the budget now.
    let (status, held) = sdk.post("/api/sdk/payments/approve", transfer_payment(85)).await;
    assert_eq!((status, &held["requiresHumanApproval"]), (202, &json!(true)), "{held}");
    let approval = held["approvalRequestId"].as_str().unwrap().to_owned();
    assert_eq!(pay_transfer(&sdk, 10).await, 200);
    assert_eq!(pay_transfer(&sdk, 10).await, 200);

    // 20 spent + 85 > 100: the daily limit (150) would pass it, the budget does not.
    let (status, answer) = org.post(&format!("/api/approval-requests/{approval}/approve"), json!({})).await;
    assert_eq!((status, &answer["status"]), (200, &json!("REJECTED")), "{answer}");
    let (_, listed) = sdk.call(reqwest::Method::GET, "/api/sdk/approval-requests", None).await;
    let entry = listed["requests"].as_array().unwrap().iter().find(|r| r["approvalRequestId"] == json!(approval));
    let entry = entry.unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(entry["status"], json!("REJECTED"), "{entry}");
    assert!(entry["reasons"][0].as_str().is_some_and(|r| r.contains("Budget request")), "{entry}");
    assert!(entry.get("approvalToken").is_none_or(Value::is_null), "no token to confirm with: {entry}");
    let (_, budget) = sdk.call(reqwest::Method::GET, &format!("/api/sdk/budget-request/{id}"), None).await;
    assert_eq!((&budget["currentSpend"], &budget["remaining"]), (&json!(20), &json!(80)), "{budget}");
    // What the engine set aside for it was given back: 75 more fits.
    assert_eq!(pay_transfer(&sdk, 75).await, 200);
}

/// Budget requests (conto-api.md §9, /docs/sdk/budget-requests): one active request per agent
/// (`409 BUDGET_REQUEST_EXISTS`); `PENDING` until a human answers; approved, a further gate on
/// the agent's payments (`BUDGET_EXCEEDED` past what is left, though the policies allow it);
/// `EXHAUSTED` once `currentSpend >= approvedAmount`, after which the agent may ask again.
#[tokio::test]
async fn a_budget_request_waits_for_a_human_then_gates_the_agents_payments() {
    let (server, sdk) = setup(None).await;
    let org = Org::new(&server);
    let get = |path: String| {
        let sdk = &sdk;
        async move { sdk.call(reqwest::Method::GET, &path, None).await }
    };
    for (body, code) in [
        (json!({"purpose": "credits"}), "VALIDATION_ERROR"),
        (json!({"amount": 20}), "VALIDATION_ERROR"),
        (json!({"amount": -5, "purpose": "credits"}), "INVALID_AMOUNT"),
        (json!({"amount": "lots", "purpose": "credits"}), "INVALID_AMOUNT"),
        (json!({"amount": 5, "purpose": "credits", "metadata": "x"}), "VALIDATION_ERROR"),
    ] {
        let (status, error) = sdk.post("/api/sdk/budget-request", body.clone()).await;
        assert_eq!((status, error["code"].as_str()), (400, Some(code)), "{body}: {error}");
    }
    // Spent before the budget is approved: not under it.
    assert_eq!(pay_transfer(&sdk, 5).await, 200);

    let ask = json!({"amount": 20, "purpose": "search credits", "category": "API_PROVIDER", "metadata": {"run": 7}});
    let (status, asked) = sdk.post("/api/sdk/budget-request", ask.clone()).await;
    assert_eq!(status, 201, "{asked}");
    assert_eq!(
        (&asked["status"], &asked["amount"], &asked["metadata"]["run"]),
        (&json!("PENDING"), &json!(20), &json!(7))
    );
    let id = asked["id"].as_str().unwrap().to_owned();
    let (status, again) = sdk.post("/api/sdk/budget-request", ask.clone()).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("BUDGET_REQUEST_EXISTS")), "{again}");
    let (status, by_id) = get(format!("/api/sdk/budget-request?id={id}")).await;
    assert_eq!((status, &by_id["status"]), (200, &json!("PENDING")), "{by_id}");
    let (_, by_path) = get(format!("/api/sdk/budget-request/{id}")).await;
    assert_eq!(by_path["id"], json!(id));
    let (status, _) = get("/api/sdk/budget-request?status=MAYBE".into()).await;
    assert_eq!(status, 400);

    // Another agent neither sees it nor answers it; an agent key is no org key.
    let other = Sdk { base: server.url(), key: org.agent("agent-2", ALL_SCOPES).await, http: reqwest::Client::new() };
    let (status, _) = other.call(reqwest::Method::GET, &format!("/api/sdk/budget-request/{id}"), None).await;
    assert_eq!(status, 404);
    let (status, _) = other.post(&format!("/api/budget-requests/{id}/approve"), json!({})).await;
    assert_eq!(status, 403);

    let (status, approved) =
        org.post(&format!("/api/budget-requests/{id}/approve"), json!({"approvedAmount": 12})).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(
        (&approved["status"], &approved["approvedAmount"], &approved["currentSpend"], &approved["remaining"]),
        (&json!("APPROVED"), &json!(12), &json!(0), &json!(12))
    );
    let (status, twice) = org.post(&format!("/api/budget-requests/{id}/reject"), json!({})).await;
    assert_eq!((status, twice["code"].as_str()), (400, Some("INVALID_STATUS")), "{twice}");

    assert_eq!(pay_transfer(&sdk, 10).await, 200);
    let (_, after) = get(format!("/api/sdk/budget-request/{id}")).await;
    assert_eq!((&after["currentSpend"], &after["remaining"]), (&json!(10), &json!(2)), "{after}");
    // The policies allow 5 (MAX_AMOUNT 100, DAILY_LIMIT 150); the budget has 2 left.
    let (status, denied) = sdk.post("/api/sdk/payments/approve", transfer_payment(5)).await;
    assert_eq!((status, &denied["approved"]), (200, &json!(false)), "{denied}");
    assert_eq!(
        (&denied["violations"][0]["type"], &denied["violations"][0]["limit"], &denied["violations"][0]["current"]),
        (&json!("BUDGET_EXCEEDED"), &json!(12), &json!(10))
    );
    let (_, x402) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("3")).await;
    assert_eq!((&x402["authorized"], &x402["violations"][0]["type"]), (&json!(false), &json!("BUDGET_EXCEEDED")));
    // A payment the policies hold for a human (above 80) is gated too, at once.
    let (_, held_for_human) = sdk.post("/api/sdk/payments/approve", transfer_payment(90)).await;
    assert_eq!(
        (
            &held_for_human["approved"],
            &held_for_human["requiresHumanApproval"],
            &held_for_human["violations"][0]["type"]
        ),
        (&json!(false), &json!(false), &json!("BUDGET_EXCEEDED")),
        "{held_for_human}"
    );
    let (_, waiting) = get("/api/sdk/approval-requests".into()).await;
    assert!(
        waiting["requests"].as_array().unwrap().iter().all(|r| r["status"] != "PENDING"),
        "nothing waits for a human: {waiting}"
    );
    // A live approval holds its amount against the budget until it is recorded.
    let (_, live) = sdk.post("/api/sdk/x402/pre-authorize", x402_payment("1")).await;
    assert_eq!(live["authorized"], true, "{live}");
    let (_, over) = sdk.post("/api/sdk/payments/approve", transfer_payment(2)).await;
    assert_eq!(
        (&over["violations"][0]["type"], &over["violations"][0]["current"]),
        (&json!("BUDGET_EXCEEDED"), &json!(11))
    );
    let tx = format!("0x{}", "c".repeat(64));
    let record = json!({"payments": [{"amount": "1", "recipientAddress": RECIPIENT,
        "resourceUrl": "https://api.example.com/search", "txHash": tx, "authorizationId": live["authorizationId"]}]});
    let (status, body) = sdk.post("/api/sdk/x402/record", record).await;
    assert!(status < 300, "{body}");
    // The denied payments hold nothing: the last 1 fits, and spends the budget in full.
    assert_eq!(pay_transfer(&sdk, 1).await, 200);
    let (_, spent) = get(format!("/api/sdk/budget-request/{id}")).await;
    assert_eq!((&spent["status"], &spent["remaining"]), (&json!("EXHAUSTED"), &json!(0)), "{spent}");
    // The engine counts what was handed out: four approvals (5, 10, the x402 1 and this 1),
    // none released. The gate's refusals were taken back, not counted as granted and freed.
    let stats = server.engine().usage("agent-1").stats;
    assert_eq!((stats.approved, stats.recorded, stats.released), (4, 4, 0), "{stats:?}");
    let (_, denied) = sdk.post("/api/sdk/payments/approve", transfer_payment(1)).await;
    assert_eq!(
        denied["violations"][0]["type"], "BUDGET_EXCEEDED",
        "a budget spent in full gates until its window ends"
    );

    // Spent in full, it is no longer active: the agent may ask again; a human may say no.
    let (status, next) = sdk.post("/api/sdk/budget-request", json!({"amount": 50, "purpose": "more"})).await;
    assert_eq!(status, 201, "{next}");
    let next_id = next["id"].as_str().unwrap();
    let (status, rejected) =
        org.post(&format!("/api/budget-requests/{next_id}/reject"), json!({"reason": "not this week"})).await;
    assert_eq!(
        (status, &rejected["status"], &rejected["rejectionReason"]),
        (200, &json!("REJECTED"), &json!("not this week"))
    );
    let (_, listed) = org.get("/api/budget-requests?agentId=agent-1").await;
    let statuses: Vec<_> = listed["budgetRequests"].as_array().unwrap().iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [json!("REJECTED"), json!("EXHAUSTED")], "newest first: {listed}");
    let (_, mine) = get("/api/sdk/budget-request?status=EXHAUSTED".into()).await;
    assert_eq!(mine["budgetRequests"].as_array().map(Vec::len), Some(1), "{mine}");
}

/// `GET /api/sdk/setup` (conto-api.md §9): the agent checks its configuration (its wallets,
/// its policies) before it pays, and is told what stands in the way.
#[tokio::test]
async fn the_agent_checks_its_setup_before_it_pays() {
    let (server, sdk) = setup(None).await;
    let (status, setup) = sdk.call(reqwest::Method::GET, "/api/sdk/setup", None).await;
    assert_eq!(status, 200, "{setup}");
    assert_eq!((&setup["agent"]["id"], &setup["agent"]["status"]), (&json!("agent-1"), &json!("ACTIVE")), "{setup}");
    assert_eq!((&setup["ready"], &setup["wallets"]), (&json!(false), &json!([])));
    assert!(setup["issues"][0].as_str().is_some_and(|i| i.contains("wallet")), "{setup}");
    assert_eq!(setup["policies"][0]["name"], "caps");
    assert!(setup["scopes"].as_array().unwrap().contains(&json!("payments:approve")), "{setup}");
    let org = Org::new(&server);
    let (status, _) = org.post("/api/agents/agent-1/wallets", json!({"walletId": "wal_base", "chainId": "8453"})).await;
    assert_eq!(status, 201);
    let (_, ready) = sdk.call(reqwest::Method::GET, "/api/sdk/setup", None).await;
    assert_eq!((&ready["ready"], &ready["issues"]), (&json!(true), &json!([])), "{ready}");
    assert_eq!(ready["wallets"][0]["walletId"], "wal_base", "{ready}");
    let anonymous = reqwest::get(format!("{}/api/sdk/setup", server.url())).await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

//! The client over HTTP against a real conto-local, for every endpoint, provisioned through the
//! org endpoints. No mocks.

mod common;

use std::time::Duration;

use common::*;
use conto_client::{SummaryPeriod, SummaryProtocol};
use conto_core::{ApprovalMode, AuthorityError, Conto, DecisionSource, RejectionKind, Settlement, ViolationType};
use serde_json::{Value, json};

#[derive(Debug)]
enum PayError {
    Rejected(conto_core::Rejection),
}

impl From<conto_core::Rejection> for PayError {
    fn from(r: conto_core::Rejection) -> Self {
        PayError::Rejected(r)
    }
}

async fn setup() -> (conto_local::Running, Org, String) {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    org.policy(caps()).await;
    (server, org, key)
}

#[tokio::test]
async fn transfer_approve_then_confirm_through_the_pipeline() {
    let (server, _, key) = setup().await;
    let conto = conto(&server, &key);
    let out: Result<&str, PayError> = conto
        .guard(
            transfer("agent-1", "40"),
            |_| async { Ok(TX) },
            |tx| Settlement::default().reference(*tx).amount("39.5".parse().unwrap()),
        )
        .await;
    assert_eq!(out.unwrap(), TX);
    assert_eq!(server.spend_count("agent-1").unwrap(), 1);
    let usage = server.engine().usage("agent-1");
    assert_eq!(usage.counters[0].spent.to_string(), "39.5");
    assert_eq!(usage.live_reservations, 0);
}

#[tokio::test]
async fn a_remote_denial_never_runs_the_settlement_and_keeps_contos_violation_type() {
    let (server, _, key) = setup().await;
    let conto = conto(&server, &key);
    let mut ran = false;
    let out: Result<(), PayError> = conto
        .guard(
            transfer("agent-1", "101"),
            |_| {
                ran = true;
                async { Ok(()) }
            },
            |_| Settlement::default(),
        )
        .await;
    let Err(PayError::Rejected(r)) = out else { panic!("expected a denial") };
    assert!(!ran);
    assert_eq!(r.violations()[0].kind, ViolationType::PerTxLimit);
    assert_eq!(r.violations()[0].limit, Some(100.into()));
    assert_eq!(r.source(), DecisionSource::Policy);
}

#[tokio::test]
async fn x402_mpp_and_card_rails() {
    let (server, org, key) = setup().await;
    let conto = conto(&server, &key);
    for intent in [x402("agent-1", "2"), mpp("agent-1", "3"), card("agent-1", "4")] {
        let rail = intent.rail.name();

        let out: Result<(), PayError> =
            conto.guard(intent, |_| async { Ok(()) }, |_| Settlement::default().reference("ref-1")).await;
        assert!(out.is_ok(), "{rail}: {out:?}");
    }
    assert_eq!(server.spend_count("agent-1").unwrap(), 3);

    // The x402 batch record (as Conto's own skill sends it) counts unreserved spend.
    let resp = org
        .http
        .post(format!("{}/api/sdk/x402/record", server.url()))
        .bearer_auth(&key)
        .json(&json!({"payments": [
            {"amount": 0.5, "recipientAddress": RECIPIENT, "resourceUrl": "https://api.example.com/a", "paymentId": "p1", "txHash": TX, "responseCode": 200},
            {"amount": 0.25, "recipientAddress": RECIPIENT, "resourceUrl": "https://api.example.com/b", "paymentId": "p2", "txHash": TX, "responseCode": 200}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["recorded"], 2);
    assert_eq!(server.spend_count("agent-1").unwrap(), 5);
    assert_eq!(server.engine().usage("agent-1").stats.total_spent.to_string(), "9.75");
}

#[tokio::test]
async fn requires_approval_then_a_human_approves_and_the_wait_mode_proceeds() {
    let (server, org, key) = setup().await;
    // Without waiting, the threshold is a typed, retryable rejection.
    let out: Result<(), PayError> = conto_core::Conto::new(client(&server, &key))
        .guard(transfer("agent-1", "85"), |_| async { Ok(()) }, |_| Settlement::default())
        .await;
    let Err(PayError::Rejected(r)) = out else { panic!() };
    assert!(matches!(r.kind(), RejectionKind::ApprovalRequired(p) if p.approval_request_id.starts_with("apr_")));
    assert!(r.is_retryable());

    let conto = Conto::builder(client(&server, &key))
        .approval(ApprovalMode::Wait(Duration::from_secs(10)))
        .poll_interval(Duration::from_millis(20))
        .build();
    let approver = tokio::spawn({
        let (base, org_key, http) = (org.base.clone(), org.key.clone(), org.http.clone());
        let key = key.clone();
        async move {
            for _ in 0..500 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let list: Value = http
                    .get(format!("{base}/api/sdk/approval-requests"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let waiting =
                    list["requests"].as_array().unwrap().iter().find(|r| r["amount"] == 90 && r["status"] == "PENDING");
                if let Some(id) = waiting.and_then(|r| r["approvalRequestId"].as_str()) {
                    let resp = http
                        .post(format!("{base}/api/approval-requests/{id}/approve"))
                        .bearer_auth(&org_key)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    return;
                }
            }
            panic!("no approval request appeared");
        }
    });
    let out: Result<(), PayError> =
        conto.guard(transfer("agent-1", "90"), |_| async { Ok(()) }, |_| Settlement::default().reference(TX)).await;
    approver.await.unwrap();
    out.unwrap();
    assert_eq!(server.spend_count("agent-1").unwrap(), 1);
}

/// An x402 or MPP approval through the client keeps the wallet conto-local named (the agent's
/// delegation on the rail's chain, else its app's own), which an MPP record sends back.
#[tokio::test]
async fn an_approval_keeps_the_wallet_its_authority_named() {
    let (server, org, key) = setup().await;
    let client = client(&server, &key);
    let wallet = |d: conto_core::Decision| match d.verdict {
        conto_core::Verdict::Approved(a) => a.wallet.map(|w| (w.id, w.chain_id.unwrap_or_default())),
        other => panic!("expected an approval, got {other:?}"),
    };
    let named = |id: &str, chain: &str| Some((id.to_owned(), chain.to_owned()));
    assert_eq!(wallet(client.authorize_intent(&mpp("agent-1", "3")).await.unwrap()), named("external", "4217"));
    let (status, body) =
        org.post("/api/agents/agent-1/wallets", json!({"walletId": "wal_tempo", "chainId": "4217"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(wallet(client.authorize_intent(&mpp("agent-1", "3")).await.unwrap()), named("wal_tempo", "4217"));
    // x402 pays on Base: with no delegation there, the agent's first one is named, on its chain.
    assert_eq!(wallet(client.authorize_intent(&x402("agent-1", "2")).await.unwrap()), named("wal_tempo", "4217"));
    assert_eq!(wallet(client.authorize_intent(&transfer("agent-1", "2")).await.unwrap()), None);
    // Through the pipeline, the MPP payment settles and its record (naming the wallet) is taken.
    let out: Result<(), PayError> =
        conto(&server, &key).guard(mpp("agent-1", "3"), |_| async { Ok(()) }, |_| Settlement::default()).await;
    assert!(out.is_ok(), "{out:?}");
}

#[tokio::test]
async fn reads_policies_and_budgets() {
    let (server, _, key) = setup().await;
    let client = client(&server, &key);
    let set = client.policies().await.unwrap();
    assert_eq!(set.policies()[0].name(), "caps");
    let _: Result<(), PayError> =
        conto(&server, &key).guard(x402("agent-1", "2"), |_| async { Ok(()) }, |_| Settlement::default()).await;
    let budget = client.x402_budget().await.unwrap();
    assert_eq!(budget["totalSpent"], 2);
    assert!(client.mpp_budget().await.unwrap()["counters"].is_array());
    let summary = client.spend_summary(SummaryPeriod::Week, SummaryProtocol::X402, 5).await.unwrap();
    assert_eq!((&summary["filters"]["period"], &summary["filters"]["protocol"]), (&json!("7d"), &json!("x402")));
    assert_eq!(summary["summary"]["x402Spend"], 2, "{summary}");
    assert_eq!(summary["services"][0]["serviceDomain"], "api.example.com", "{summary}");
}

/// The client asks for a budget, follows it and reads its setup; a second active request is a
/// typed refusal with Conto's code.
#[tokio::test]
async fn the_client_asks_for_a_budget_and_reads_its_setup() {
    let (server, org, key) = setup().await;
    let client = client(&server, &key);
    let asked = client.request_budget("25".parse().unwrap(), "a week of search", Some("API_PROVIDER")).await.unwrap();
    assert_eq!(
        (&asked["status"], &asked["amount"], &asked["category"]),
        (&json!("PENDING"), &json!(25), &json!("API_PROVIDER"))
    );
    let id = asked["id"].as_str().unwrap();
    match client.request_budget("5".parse().unwrap(), "more", None).await {
        Err(conto_core::AuthorityError::Refused(conto_core::Refused::Request { status, code, .. })) => {
            assert_eq!((status, code.as_str()), (409, "BUDGET_REQUEST_EXISTS"));
        }
        other => panic!("a second active request is refused: {other:?}"),
    }
    let (status, _) = org.post(&format!("/api/budget-requests/{id}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let now = client.budget_request(id).await.unwrap();
    assert_eq!(
        (&now["status"], &now["approvedAmount"], &now["remaining"]),
        (&json!("APPROVED"), &json!(25), &json!(25))
    );
    let setup = client.setup().await.unwrap();
    assert_eq!(setup["agent"]["id"], "agent-1", "{setup}");
    assert!(setup["policies"].is_array(), "{setup}");
}

#[tokio::test]
async fn idempotency_same_key_same_answer_different_params_conflict() {
    let (server, org, key) = setup().await;
    let body = json!({"amount": 5, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 8453, "idempotencyKey": "attempt-1"});
    let send = |b: Value| {
        org.http.post(format!("{}/api/sdk/payments/approve", server.url())).bearer_auth(&key).json(&b).send()
    };
    let first: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    let second: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(first["approvalId"], second["approvalId"], "the same attempt gets the same approval");
    assert_eq!(server.engine().usage("agent-1").stats.approved, 1, "and is reserved once");
    let mut changed = body.clone();
    changed["amount"] = json!(6);
    let resp = send(changed).await.unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "IDEMPOTENCY_CONFLICT");
}

#[tokio::test]
async fn missing_scope_bad_key_and_org_key_misuse_are_typed_errors_never_approvals() {
    let (server, org, _) = setup().await;
    let narrow = org.agent("agent-2", &["payments:request"]).await;
    let err = client(&server, &narrow).authorize_intent(&transfer("agent-2", "1")).await.unwrap_err();
    assert!(
        matches!(&err, AuthorityError::Refused(conto_core::Refused::MissingScope { code, .. }) if code == "INSUFFICIENT_SCOPE"),
        "{err}"
    );
    let bogus = format!("conto_agent_{}", "0".repeat(64));
    let err = client(&server, &bogus).authorize_intent(&transfer("agent-2", "1")).await.unwrap_err();
    assert!(
        matches!(&err, AuthorityError::Refused(conto_core::Refused::Unauthenticated { code, .. }) if code == "AUTH_FAILED"),
        "{err}"
    );
    assert!(!err.to_string().contains(&bogus), "the key never appears in errors");
    // Through the pipeline: refused with its typed cause, not retryable.
    let out: Result<(), PayError> =
        conto(&server, &narrow).guard(transfer("agent-2", "1"), |_| async { Ok(()) }, |_| Settlement::default()).await;
    let Err(PayError::Rejected(r)) = out else { panic!() };
    assert_eq!(r.source(), DecisionSource::Authority);
    assert!(matches!(r.cause(), Some(AuthorityError::Refused(conto_core::Refused::MissingScope { .. }))), "{r:?}");
    assert!(!r.is_retryable());
    // A standard agent key changing policies (reading them is its preset's `policies:read`),
    // and org calls without a key.
    let resp = org
        .http
        .post(format!("{}/api/policies", server.url()))
        .bearer_auth(&narrow)
        .json(&json!({"name": "mine", "rules": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = org.http.get(format!("{}/api/policies", server.url())).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn tokens_are_bound_and_confirm_is_strict() {
    let (server, org, key) = setup().await;
    let approve = |b: Value| {
        org.http.post(format!("{}/api/sdk/payments/approve", server.url())).bearer_auth(&key).json(&b).send()
    };
    let a: Value =
        approve(json!({"amount": 5, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 8453}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let confirm = |b: Value| {
        org.http
            .post(format!("{}/api/sdk/payments/{}/confirm", server.url(), a["approvalId"].as_str().unwrap()))
            .bearer_auth(&key)
            .json(&b)
            .send()
    };
    let wrong = confirm(json!({"txHash": TX, "approvalToken": "f".repeat(64)})).await.unwrap();
    assert_eq!(wrong.status(), 400);
    assert_eq!(wrong.json::<Value>().await.unwrap()["code"], "INVALID_TOKEN");
    let over = confirm(json!({"txHash": TX, "approvalToken": a["approvalToken"], "amount": 6})).await.unwrap();
    assert_eq!(over.status(), 400);
    let bad_tx = confirm(json!({"txHash": "0x12", "approvalToken": a["approvalToken"]})).await.unwrap();
    assert_eq!(bad_tx.status(), 400);
    let ok = confirm(json!({"txHash": TX, "approvalToken": a["approvalToken"]})).await.unwrap();
    assert_eq!(ok.status(), 200);
    let receipt: Value = ok.json().await.unwrap();
    assert_eq!((receipt["confirmed"].as_bool(), receipt["status"].as_str()), (Some(true), Some("CONFIRMING")));
    assert_eq!(receipt["explorerUrl"], format!("https://basescan.org/tx/{TX}"), "{receipt}");
    assert_eq!(server.spend_count("agent-1").unwrap(), 1);
    // Rate-limit headers ride on every SDK answer.
    let resp = approve(json!({"amount": 1, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 8453}))
        .await
        .unwrap();
    assert!(resp.headers().contains_key("x-ratelimit-remaining"));
    assert!(resp.headers().contains_key("x-ratelimit-reset"));
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let server =
        conto_local::start(conto_local::Config { port: 0, rate_limit: 2, ..Default::default() }).await.unwrap();
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    let body = json!({"amount": 1, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 8453});
    let mut statuses = Vec::new();
    let (mut retry_after, mut remaining) = (None, Vec::new());
    let first = std::time::Instant::now();
    for _ in 0..3 {
        let resp = org
            .http
            .post(format!("{}/api/sdk/payments/approve", server.url()))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        remaining.push(resp.headers().get("x-ratelimit-remaining").map(|v| v.to_str().unwrap().to_owned()));
        let reset = resp.headers().get("x-ratelimit-reset").expect("X-RateLimit-Reset on every answer");
        assert!(reset.to_str().unwrap().parse::<conto_core::jiff::Timestamp>().is_ok(), "ISO-8601: {reset:?}");
    }
    assert_eq!(statuses, vec![200, 200, 429]);
    // Waiting `Retry-After` seconds from the 429 is enough: the oldest request is then a full
    // minute old (whole seconds, rounded up, never down).
    let retry_after: u64 = retry_after.unwrap().parse().unwrap();
    assert!(retry_after as f64 + first.elapsed().as_secs_f64() >= 60.0, "Retry-After {retry_after} is too short");
    // Conto sends the rate-limit headers on every response: the 429 says none are left.
    assert_eq!(remaining, vec![Some("1".into()), Some("0".into()), Some("0".into())]);
}

#[tokio::test]
async fn an_error_answer_to_a_known_agent_carries_the_rate_limit_headers() {
    let (server, org, key) = setup().await;
    let resp = org
        .http
        .post(format!("{}/api/sdk/payments/approve", server.url()))
        .bearer_auth(&key)
        .json(&json!({"amount": -1, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 8453}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().contains_key("x-ratelimit-remaining"), "{:?}", resp.headers());
    assert!(resp.headers().contains_key("x-ratelimit-reset"));
    // A key without the endpoint's scope is refused with its agent's headers too.
    let (status, reader) =
        org.post("/api/agents/agent-1/sdk-keys", json!({"name": "reader", "scopes": ["policies:read"]})).await;
    assert_eq!(status, 201, "{reader}");
    let refused = org
        .http
        .post(format!("{}/api/sdk/payments/approve", server.url()))
        .bearer_auth(reader["key"].as_str().unwrap())
        .json(&json!({"amount": 1, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 8453}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().contains_key("x-ratelimit-remaining"), "{:?}", refused.headers());
    // ...and not counted: a key that cannot pay never uses up its agent's limit.
    let remaining = |r: &reqwest::Response| r.headers()["x-ratelimit-remaining"].to_str().unwrap().to_owned();
    assert_eq!(remaining(&refused), remaining(&resp), "the refusal was not counted");
    // A key that is not accepted learns nothing of any agent's window.
    let bogus = org
        .http
        .post(format!("{}/api/sdk/payments/approve", server.url()))
        .bearer_auth(format!("conto_agent_{}", "0".repeat(64)))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(bogus.status(), 401);
    // Conto sends the headers on every response; a key that is not accepted is shown an
    // untouched window (the whole payment limit, reset now), never the agent's.
    assert_eq!(remaining(&bogus), "100000", "{:?}", bogus.headers());
    assert_ne!(remaining(&bogus), remaining(&resp));
    assert!(bogus.headers().contains_key("x-ratelimit-reset"));
}

#[tokio::test]
async fn policy_rules_endpoints_validate_and_apply_at_once() {
    let (server, org, key) = setup().await;
    let policy = org.policy(json!({"name": "blocklist", "rules": []})).await;
    let id = policy["id"].as_str().unwrap();
    let (status, err) = org
        .post(&format!("/api/policies/{id}/rules"), json!({"ruleType": "NOPE", "operator": "LTE", "value": "1"}))
        .await;
    assert_eq!(status, 400);
    assert!(err["message"].as_str().unwrap().contains("unknown ruleType `NOPE`"), "{err}");
    let (status, rule) = org
        .post(&format!("/api/policies/{id}/rules"), json!({"ruleType": "BLOCKED_COUNTERPARTIES", "operator": "IN_LIST", "value": format!("[\"{RECIPIENT}\"]"), "action": "DENY"}))
        .await;
    assert_eq!(status, 201);
    // Created, not yet assigned: it applies to no agent (Conto's create-then-assign).
    assert_eq!(policy["scope"], "assigned", "{policy}");
    let out: Result<(), PayError> = conto(&server, &key)
        .guard(transfer("agent-1", "1"), |_| async { Ok(()) }, |_| Settlement::default().reference(TX))
        .await;
    assert!(out.is_ok(), "an unassigned policy binds no one");
    let resp = org
        .http
        .patch(format!("{}/api/policies/{id}", server.url()))
        .bearer_auth(&org.key)
        .json(&json!({"agentIds": ["agent-1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let out: Result<(), PayError> =
        conto(&server, &key).guard(transfer("agent-1", "1"), |_| async { Ok(()) }, |_| Settlement::default()).await;
    let Err(PayError::Rejected(r)) = out else { panic!("assigned: the blocklist applies") };
    assert_eq!(r.violations()[0].kind, ViolationType::BlockedCounterparty);
    let resp = org
        .http
        .delete(format!("{}/api/policies/{id}/rules/{}", server.url(), rule["id"].as_str().unwrap()))
        .bearer_auth(&org.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let out: Result<(), PayError> = conto(&server, &key)
        .guard(transfer("agent-1", "1"), |_| async { Ok(()) }, |_| Settlement::default().reference(TX))
        .await;
    assert!(out.is_ok());
}

#[tokio::test]
async fn a_restart_keeps_agents_keys_policies_spend_and_idempotency_keys() {
    let dir = std::env::temp_dir().join(format!("conto-local-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("state.db");
    let _ = std::fs::remove_file(&db);
    let server = start(Some(db.clone()), "conto_org_test").await;
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    org.policy(caps()).await;
    let conto = conto(&server, &key);
    let out: Result<(), PayError> =
        conto.guard(transfer("agent-1", "70"), |_| async { Ok(()) }, |_| Settlement::default().reference(TX)).await;
    out.unwrap();
    let body = json!({"amount": 2, "recipientAddress": RECIPIENT, "senderAddress": SENDER, "chainId": 8453, "idempotencyKey": "keep-me"});
    let first: Value = org
        .http
        .post(format!("{}/api/sdk/payments/approve", server.url()))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    server.stop().await;

    let server = start(Some(db.clone()), "conto_org_test").await;
    let org = Org::new(&server);
    let (_, agents) = org.get("/api/agents").await;
    assert_eq!(agents["agents"][0]["id"], "agent-1");
    let (_, policies) = org.get("/api/policies").await;
    assert_eq!(policies["policies"][0]["name"], "caps");
    assert_eq!(server.spend_count("agent-1").unwrap(), 1);
    // The same key still authenticates, the idempotency key replays, and the daily spend (70)
    // plus the still-live approval (2) count against the daily limit of 150.
    let again: Value = org
        .http
        .post(format!("{}/api/sdk/payments/approve", server.url()))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["approvalId"], again["approvalId"]);
    let conto = conto_core::Conto::new(client(&server, &key));
    let out: Result<(), PayError> =
        conto.guard(transfer("agent-1", "79"), |_| async { Ok(()) }, |_| Settlement::default().reference(TX)).await;
    let Err(PayError::Rejected(r)) = out else { panic!("70 + 2 + 79 > 150 must be denied after a restart") };
    assert_eq!(r.violations()[0].kind, ViolationType::DailyLimit);
    assert_eq!(r.violations()[0].current, Some(72.into()));
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// One key pays for one actor: a client bound to `agent-1` refuses another actor's intent as
/// unknown before anything is sent, and through the pipeline that is a typed `UnknownActor`
/// rejection; `agent-1`'s budget is untouched by it.
#[tokio::test]
async fn a_bound_client_pays_only_for_its_own_actor() {
    let (server, _org, key) = setup().await;
    let bound =
        conto_client::ContoClient::builder().base_url(server.url()).sdk_key(&key).actor("agent-1").build().unwrap();
    assert_eq!(bound.actor().map(|a| a.as_str()), Some("agent-1"));
    let err = bound.authorize_intent(&x402("mallory", "2")).await.unwrap_err();
    assert!(
        matches!(&err, conto_core::AuthorityError::Refused(conto_core::Refused::UnknownActor(a)) if a == "mallory"),
        "{err:?}"
    );
    assert_eq!(server.engine().usage("agent-1").stats.approved, 0, "nothing was asked of conto-local");
    let refused = conto_core::Conto::new(bound.clone()).authorize(x402("mallory", "2")).await.unwrap_err();
    assert!(matches!(refused.kind(), conto_core::RejectionKind::UnknownActor(_)), "{refused:?}");
    assert!(bound.authorize_intent(&x402("agent-1", "2")).await.is_ok());
    assert_eq!(server.engine().usage("agent-1").stats.approved, 1);
    // An actor id that is not one is a typed configuration error.
    let bad = conto_client::ContoClient::builder().base_url(server.url()).sdk_key(&key).actor(" agent-1").build();
    assert!(matches!(bad, Err(conto_client::ClientError::InvalidActor(_))), "{bad:?}");
}

/// An MPP session with a deposit larger than its per-request price, through the client: the
/// server approves and holds the deposit, the client takes that as the approved amount (it
/// is what the server echoes), and the session's record counts what it spent.
#[tokio::test]
async fn an_mpp_session_is_approved_for_its_deposit_through_the_client() {
    let (server, _, key) = setup().await;
    let mut session = mpp("agent-1", "0.5");
    if let conto_core::Rail::Mpp { deposit, intent, .. } = &mut session.rail {
        *deposit = Some("20".parse().unwrap());
        *intent = Some("session".into());
    }
    let approved = match client(&server, &key).authorize_intent(&session).await.unwrap().verdict {
        conto_core::Verdict::Approved(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(approved.amount.to_string(), "20");
    assert_eq!(server.engine().usage("agent-1").counters[0].reserved.to_string(), "20");
    let out: Result<(), PayError> = conto(&server, &key)
        .guard(session, |_| async { Ok(()) }, |_| Settlement::default().amount("7".parse().unwrap()))
        .await;
    assert!(out.is_ok(), "{out:?}");
    let usage = server.engine().usage("agent-1");
    assert_eq!(usage.counters[0].spent.to_string(), "7", "{usage:?}");
}

#[tokio::test]
async fn a_named_key_pays_once_against_an_authority_that_replays_its_answer() {
    // conto-local, as Conto, answers a repeated idempotency key with the first answer: a second
    // run under the caller's key would get the first run's approval and pay again, its record
    // then replayed and counted once. The pipeline refuses it before anyone is asked.
    let (server, _, key) = setup().await;
    let conto = conto(&server, &key);
    let keyed = |amount: &str, key: &str| {
        conto_core::PaymentIntent::builder(
            "agent-1",
            amount,
            conto_core::Rail::x402("https://api.example.com/q").unwrap(),
        )
        .recipient(RECIPIENT)
        .idempotency_key(key)
        .build()
        .unwrap()
    };
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let pay = |intent: conto_core::PaymentIntent, fails: bool| {
        let runs = &runs;
        conto.run(
            intent,
            move |_| async move {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if fails { Err(()) } else { Ok(()) }
            },
            |_| Settlement::default(),
        )
    };
    // A denial claims nothing: asked again, it is the policy's answer again.
    for _ in 0..2 {
        let denied = pay(keyed("101", "job-6"), false).await.unwrap_err();
        assert!(matches!(denied.kind(), RejectionKind::Denied(_)), "{denied:?}");
    }
    // A settlement that failed released its approval: the key may be tried again.
    assert_eq!(pay(keyed("3", "job-7"), true).await.unwrap(), Err(()));
    assert_eq!(pay(keyed("3", "job-7"), false).await.unwrap(), Ok(()));
    // Settled: the same key again is refused, and the body does not run.
    let again = pay(keyed("3", "job-7"), false).await.unwrap_err();
    assert!(
        matches!(again.kind(), RejectionKind::Invalid(conto_core::IntentError::IdempotencyKeyUsed(k)) if k == "job-7"),
        "{again:?}"
    );
    assert_eq!(again.source(), DecisionSource::Input);
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(server.spend_count("agent-1").unwrap(), 1);
    // Another key is another payment.
    assert_eq!(pay(keyed("3", "job-8"), false).await.unwrap(), Ok(()));
    assert_eq!(server.spend_count("agent-1").unwrap(), 2);
}

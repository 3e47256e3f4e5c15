//! Product controls synced to Conto's Policies API (conto-local) and to the embedded engine,
//! idempotently: a second run makes zero API writes.

mod common;

use common::*;
use conto_client::sync::{BudgetPeriod, OrgClient, ProductControls, sync_policies};
use conto_core::{Engine, Settlement, Verdict, ViolationType};

#[tokio::test]
async fn sync_is_idempotent_and_the_policies_take_effect() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    let key = org.agent("agent-1", ALL_SCOPES).await;
    org.policy(caps()).await; // someone else's policy: a sync must leave it alone
    let sync = OrgClient::new(&server.url(), "conto_org_test").unwrap();
    let mut controls = ProductControls {
        max_per_action: Some("10".parse().unwrap()),
        budget: Some(("25".parse().unwrap(), BudgetPeriod::Total)),
        allowed_providers: vec![RECIPIENT.to_owned()],
        review_above: Some("8".parse().unwrap()),
        allowed_hours: None,
        blackouts: vec![("02:00".into(), "03:00".into(), Some("maintenance".into()))],
        time_zone: Some("Europe/Paris".into()),
    };

    let first = sync_policies(&sync, &controls, "workspace-42", "agent-1").await.unwrap();
    assert_eq!((first.created, first.updated, first.deleted), (5, 0, 0));
    let writes = sync.writes();
    let second = sync_policies(&sync, &controls, "workspace-42", "agent-1").await.unwrap();
    assert_eq!(second.unchanged, 5);
    assert_eq!(sync.writes(), writes, "the second run makes zero API writes");

    controls.max_per_action = Some("6".parse().unwrap());
    controls.review_above = None;
    let writes = sync.writes();
    let third = sync_policies(&sync, &controls, "workspace-42", "agent-1").await.unwrap();
    assert_eq!((third.created, third.updated, third.deleted, third.unchanged), (0, 1, 1, 3));
    // Only the rules changed: one `PUT …/rules` (no PATCH of the policy's fields), one DELETE.
    assert_eq!(sync.writes() - writes, 2);
    let writes = sync.writes();
    let fourth = sync_policies(&sync, &controls, "workspace-42", "agent-1").await.unwrap();
    assert_eq!((fourth.unchanged, sync.writes()), (4, writes), "settled again: no writes");

    // Conto (conto-local) enforces what was synced.
    let conto = conto(&server, &key);
    let denied = conto.run(x402("agent-1", "7"), |_| async { Ok::<_, ()>(()) }, |_| Settlement::default()).await;
    assert_eq!(denied.unwrap_err().violations()[0].kind, ViolationType::PerTxLimit);

    // So does the embedded engine, from the same controls (at noon, outside the 02:00 blackout:
    // the wall clock must not decide this test).
    let noon: conto_core::jiff::Timestamp = "2026-06-10T10:00:00Z".parse().unwrap();
    let engine = Engine::builder()
        .clock(conto_core::ManualClock::new(noon))
        .policies(controls.policy_set("workspace-42", "agent-1").unwrap())
        .actors(["agent-1", "agent-2"])
        .unwrap()
        .build();
    assert!(matches!(engine.decide(&x402("agent-1", "7")).verdict, Verdict::Denied(_)));
    let v = engine.decide(&x402("agent-1", "5")).verdict;
    assert!(matches!(v, Verdict::Approved(_)), "{v:?}");
    assert!(matches!(engine.decide(&x402("agent-2", "7")).verdict, Verdict::Approved(_)), "assigned to agent-1 only");

    // Policies outside the prefix are never touched.
    let (_, listed) = org.get("/api/policies").await;
    let names: Vec<&str> = listed["policies"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names.len(), 5);
    assert!(names.contains(&"caps"));
}

/// Conto limits the org key (100 requests a minute): a sync that meets `429` waits as
/// `Retry-After` says and goes on, rather than stopping with its policies half applied.
#[tokio::test]
async fn a_sync_waits_out_the_org_rate_limit_and_finishes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{Method, StatusCode};
    use axum::response::IntoResponse;
    use serde_json::json;

    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    // The first call is refused once with `429`; then an org API with no policies that takes
    // what is created.
    let router = axum::Router::new().fallback(move |method: Method| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                let body = axum::Json(json!({"error": "slow down", "code": "RATE_LIMITED", "message": "slow down"}));
                return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], body).into_response();
            }
            match method {
                Method::GET => axum::Json(json!({"policies": []})).into_response(),
                _ => (StatusCode::CREATED, axum::Json(json!({"id": format!("pol_{n}")}))).into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let sync = OrgClient::new(&url, "conto_org_test").unwrap();
    let controls = ProductControls { max_per_action: Some("10".parse().unwrap()), ..ProductControls::default() };
    let report = sync_policies(&sync, &controls, "workspace-42", "agent-1").await.unwrap();
    assert_eq!(report.created, 1, "{report:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 3, "the refused GET, asked again, then the POST");
}

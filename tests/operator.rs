//! The operator view: status and recent activity as JSON and HTML over real HTTP, and as a
//! stream.

use std::time::Duration;

use axum::Router;
use conto::tower::OperatorView;
use conto::{Conto, Engine, Monitor, PaymentIntent, Rail, SecretString, Settlement};
use serde_json::Value;

fn intent(amount: &str) -> PaymentIntent {
    PaymentIntent::builder("agent-7", amount, Rail::card("Acme & Co").unwrap()).build().unwrap()
}

#[tokio::test]
async fn status_events_and_page_show_recent_activity() {
    let engine = Engine::from_json(
        r#"{"agents": ["agent-7"], "policies": [{"name": "cap <b>", "rules": [
            {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "5", "action": "ALLOW"}]}]}"#,
    )
    .unwrap();
    let monitor = Monitor::new(3);
    let conto = Conto::builder(engine).observe(monitor.observer()).build();
    let mut stream = monitor.subscribe();

    let ok = conto.run(intent("2"), |_| async { Ok::<_, ()>(()) }, |_| Settlement::default()).await;
    assert!(ok.is_ok());
    let denied = conto.run(intent("9"), |_| async { Ok::<_, ()>(()) }, |_| Settlement::default()).await;
    assert!(denied.is_err());

    // The stream saw the first decision as it happened.
    let first = tokio::time::timeout(Duration::from_secs(1), stream.recv()).await.unwrap().unwrap();
    assert_eq!((first.kind, first.outcome.as_deref()), ("decision", Some("approved")));

    let token = SecretString::from("operator-secret-1".to_owned());
    let app: Router =
        Router::new().nest("/conto", OperatorView::new(monitor.clone(), conto.clone()).bearer_token(token));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/conto", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();

    // Without the operator's token, nothing is readable.
    for path in ["/status", "/events", ""] {
        let resp = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        let resp = http.get(format!("{base}{path}")).bearer_auth("operator-secret-2").send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path} with a wrong token");
        assert!(!resp.text().await.unwrap().contains("agent-7"));
    }
    let get = |path: &str| http.get(format!("{base}{path}")).bearer_auth("operator-secret-1").send();

    // What it shows names every actor: never kept by a cache, never sniffed as another type.
    for path in ["/status", "/events", ""] {
        let resp = get(path).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["cache-control"], "no-store", "{path}");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    let status: Value = get("/status").await.unwrap().json().await.unwrap();
    assert_eq!(status["authorityReachable"], true);
    assert_eq!(status["standInActive"], false);
    assert_eq!((status["decisions"].as_u64(), status["records"].as_u64()), (Some(2), Some(1)));
    assert!(status["lastLatencyUs"].as_u64().is_some());

    // The ring buffer keeps the last 3: the approval's decision, its record, the denial.
    let events: Vec<Value> = get("/events").await.unwrap().json().await.unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!((&events[0]["kind"], &events[0]["outcome"]), (&Value::from("decision"), &Value::from("approved")));
    assert_eq!(events[1]["kind"], "recorded");
    assert_eq!(events[1]["actor"], "agent-7", "records carry their actor");
    assert!(events[0]["authorizationId"].as_str().is_some());
    assert_eq!(events[0]["authorizationId"], events[1]["authorizationId"], "decisions join their records");
    assert!(events[0]["latencyUs"].as_u64().is_some());
    assert!(events[0]["at"].as_str().is_some_and(|t| t.parse::<conto::jiff::Timestamp>().is_ok()));
    assert_eq!(events[2]["outcome"], "denied");
    assert_eq!(events[2]["violations"][0], "PER_TX_LIMIT");
    assert!(!events[2]["reasons"].as_array().unwrap().is_empty());

    let page = get("").await.unwrap().text().await.unwrap();
    assert!(page.contains("<b>reachable</b>"), "{page}");
    assert!(!page.contains("cap <b>"), "text is escaped: {page}");
    assert!(page.contains("<td>denied</td>"));
}

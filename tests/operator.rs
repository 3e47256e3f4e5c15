//! The operator view: status and recent activity as JSON and HTML over real HTTP, and as a
//! stream.

use std::time::Duration;

use axum::Router;
use conto::tower::operator_router;
use conto::{Conto, Engine, Monitor, PaymentIntent, Rail, Settlement};
use serde_json::Value;

fn intent(amount: &str) -> PaymentIntent {
    PaymentIntent::builder("agent-<7>", amount, Rail::card("Acme & Co").unwrap()).build().unwrap()
}

#[tokio::test]
async fn status_events_and_page_show_recent_activity() {
    let engine = Engine::from_json(
        r#"[{"name": "cap", "rules": [{"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "5", "action": "ALLOW"}]}]"#,
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

    let app: Router = Router::new().nest("/conto", operator_router(monitor.clone(), conto.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/conto", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();

    let status: Value = http.get(format!("{base}/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["authorityReachable"], true);
    assert_eq!(status["standInActive"], false);
    assert_eq!((status["decisions"].as_u64(), status["records"].as_u64()), (Some(2), Some(1)));
    assert!(status["lastLatencyMs"].as_f64().is_some());

    // The ring buffer keeps the last 3: recorded, then the denial's decision are the newest.
    let events: Vec<Value> = http.get(format!("{base}/events")).send().await.unwrap().json().await.unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[1]["kind"], "recorded");
    assert_eq!(events[2]["outcome"], "denied");

    let page = http.get(&base).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("<b>reachable</b>"), "{page}");
    assert!(page.contains("agent-&lt;7&gt;"), "text is escaped: {page}");
    assert!(page.contains("<td>denied</td>"));
}

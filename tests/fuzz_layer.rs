//! The layer's price extraction (path, query, headers, JSON body) never panics on arbitrary
//! requests, and never lets an unpriced or unpaid request reach a paid handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ::tower::ServiceExt;
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::post;
use conto::tower::{Actor, Paywall, Price, PriceError};
use conto::{Conto, Engine, Rail};
use proptest::prelude::*;

fn app(runs: Arc<AtomicUsize>) -> Router {
    let engine = Engine::from_json(
        r#"{"agents": ["agent-1", "a"], "policies": [{"name": "cap", "rules": [
            {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "50", "action": "ALLOW"}]}]}"#,
    )
    .unwrap();
    let paid = Paywall::builder(Conto::new(engine))
        .actor(Actor::trusted_header("x-conto-actor"))
        .rail(Rail::card("Acme").unwrap())
        .build()
        .unwrap()
        .with_price(Price::json_body(256, |req| {
            let base = req.query("price").unwrap_or_else(|| "1".into());
            let units = req.json().and_then(|j| j.get("units")).and_then(|u| u.as_u64()).unwrap_or(1);
            let price: conto::Decimal = base.parse().map_err(|_| PriceError::new("bad price"))?;
            let total = price.checked_mul(units.into()).ok_or_else(|| PriceError::new("overflow"))?;
            conto::Amount::new(total).map(Some).map_err(|e| PriceError::new(e.to_string()))
        }));
    Router::new()
        .route(
            "/buy/{item}",
            post(move || {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    "ok"
                }
            }),
        )
        .layer(paid)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn arbitrary_requests_never_panic(
        item in "[a-zA-Z0-9%._-]{1,12}",
        query in "[ -~]{0,40}",
        actor in proptest::option::of(prop_oneof![Just("agent-1".to_owned()), Just("a".to_owned()), "[ -~]{0,20}"]),
        body in prop_oneof![
            Just(Vec::new()),
            prop::collection::vec(any::<u8>(), 0..300),
            "\\{\"units\": -?[0-9]{1,25}\\}".prop_map(String::into_bytes),
        ],
    ) {
        let runs = Arc::new(AtomicUsize::new(0));
        let app = app(runs.clone());
        let query: String = query.chars().filter(|c| !c.is_whitespace() && *c != '#').collect();
        let uri = format!("/buy/{item}?{query}");
        let Ok(mut request) = Request::builder().method("POST").uri(&uri).header("content-type", "application/json").body(Body::from(body.clone())) else {
            return Ok(());
        };
        if let Some(a) = &actor
            && let Ok(v) = axum::http::HeaderValue::from_str(a)
        {
            request.headers_mut().insert("x-conto-actor", v);
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = rt.block_on(async { app.oneshot(request).await.unwrap().status().as_u16() });
        prop_assert!([200u16, 400, 401, 403, 404, 413].contains(&status), "{uri}: {status}");
        if status == 200 {
            prop_assert_eq!(runs.load(Ordering::SeqCst), 1);
            prop_assert!(matches!(actor.as_deref(), Some("agent-1" | "a")), "paid by an unprovisioned actor: {:?}", actor);
        } else {
            prop_assert_eq!(runs.load(Ordering::SeqCst), 0, "{}: the handler ran on {}", uri, status);
        }
    }
}

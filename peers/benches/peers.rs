//! conto-rs beside two peers, in one run (issue 15):
//!
//! - `tower_governor` (governor's GCRA, a stateful per-key check) on the same axum route as the
//!   paid layer, in-process `oneshot`, against the bare route;
//! - `cedar-policy` on the stateless subset of the same rules (per-transaction cap, category and
//!   counterparty allowlists, a time window), n policies of those four rules each, against the
//!   embedded engine deciding the same request (which also reserves and releases).
//!
//! `cd peers && cargo bench`. Results: BENCHMARKS.md, "Peers".

use std::hint::black_box;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use cedar_policy::{
    Authorizer as Cedar, Context, Decision as CedarDecision, Entities, EntityUid, PolicySet as CedarSet,
};
use conto::tower::{Actor, Paywall, Price};
use conto::{Conto, Engine, ManualClock, PaymentIntent, PolicySet, Rail, Verdict};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::json;
use tower::ServiceExt;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

const RECIPIENT: &str = "0x1111111111111111111111111111111111111111";
const SENDER: &str = "0x2222222222222222222222222222222222222222";
const NOON: &str = "2026-06-03T12:00:00Z";

#[derive(Clone)]
struct User(String);

/// The same four stateless rules per policy, for conto-rs.
fn conto_policies(n: usize) -> PolicySet {
    let docs: Vec<_> = (0..n)
        .map(|i| {
            json!({"name": format!("p{i}"), "rules": [
                {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "1000", "action": "ALLOW"},
                {"ruleType": "ALLOWED_CATEGORIES", "operator": "IN_LIST", "value": "[\"API_PROVIDER\",\"CLOUD\"]", "action": "ALLOW"},
                {"ruleType": "ALLOWED_COUNTERPARTIES", "operator": "IN_LIST", "value": format!("[\"{RECIPIENT}\"]"), "action": "ALLOW"},
                {"ruleType": "TIME_WINDOW", "operator": "BETWEEN", "value": "{\"start\": \"09:00\", \"end\": \"18:00\"}", "action": "ALLOW"}
            ]})
        })
        .collect();
    PolicySet::from_value(json!({"agents": ["agent-1"], "policies": docs})).unwrap()
}

/// The same rules in Cedar: one permit, and a forbid for each broken condition (conto's
/// policies all must pass; Cedar's forbids override its permit).
fn cedar_policies(n: usize) -> CedarSet {
    let mut text = String::from("permit(principal, action == Action::\"pay\", resource);\n");
    for _ in 0..n {
        text.push_str(&format!(
            "forbid(principal, action, resource) when {{ context.amount.greaterThan(decimal(\"1000.0\")) }};\n\
             forbid(principal, action, resource) unless {{ [\"API_PROVIDER\", \"CLOUD\"].contains(context.category) }};\n\
             forbid(principal, action, resource) unless {{ [\"{RECIPIENT}\"].contains(context.recipient) }};\n\
             forbid(principal, action, resource) unless {{ context.hour >= 9 && context.hour < 18 }};\n"
        ));
    }
    text.parse().unwrap()
}

fn intent() -> PaymentIntent {
    PaymentIntent::builder("agent-1", "0.01", Rail::transfer(8453, SENDER).unwrap())
        .recipient(RECIPIENT)
        .category("API_PROVIDER")
        .build()
        .unwrap()
}

fn stateless_rules(c: &mut Criterion) {
    let mut g = c.benchmark_group("peer_stateless_rules");
    for n in [1usize, 10, 100] {
        let engine =
            Engine::builder().policies(conto_policies(n)).clock(ManualClock::new(NOON.parse().unwrap())).build();
        let shared = Arc::new(intent());
        g.bench_with_input(BenchmarkId::new("conto_decide_release", n), &n, |b, _| {
            b.iter(|| {
                let d = engine.decide_shared(black_box(&shared)).unwrap();
                let Verdict::Approved(a) = d.verdict else { panic!("approved") };
                engine.free(&a).unwrap();
            })
        });
        let policies = cedar_policies(n);
        let cedar = Cedar::new();
        let entities = Entities::empty();
        let principal: EntityUid = r#"Agent::"agent-1""#.parse().unwrap();
        let action: EntityUid = r#"Action::"pay""#.parse().unwrap();
        let resource: EntityUid = format!(r#"Payee::"{RECIPIENT}""#).parse().unwrap();
        let context = Context::from_json_value(
            json!({"amount": {"__extn": {"fn": "decimal", "arg": "0.01"}}, "category": "API_PROVIDER",
                   "recipient": RECIPIENT, "hour": 12}),
            None,
        )
        .unwrap();
        let request = cedar_policy::Request::new(principal, action, resource, context, None).unwrap();
        assert_eq!(cedar.is_authorized(&request, &policies, &entities).decision(), CedarDecision::Allow);
        g.bench_with_input(BenchmarkId::new("cedar_is_authorized", n), &n, |b, _| {
            b.iter(|| cedar.is_authorized(black_box(&request), &policies, &entities).decision())
        });
    }
    g.finish();
}

/// The key governor limits per: the authenticated user, as the paid layer's actor.
#[derive(Clone)]
struct UserKey;

impl KeyExtractor for UserKey {
    type Key = String;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, tower_governor::GovernorError> {
        req.extensions().get::<User>().map(|u| u.0.clone()).ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

fn route_layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // A fixed clock inside the policies' 09:00-18:00 window: every request is approved.
    let engine = Engine::builder().policies(conto_policies(10)).clock(ManualClock::new(NOON.parse().unwrap())).build();
    let paid = Paywall::builder(Conto::new(engine))
        .actor(Actor::extension(|user: &User| user.0.clone()))
        .rail(Rail::transfer(8453, SENDER).unwrap())
        .recipient(RECIPIENT)
        .category("API_PROVIDER")
        .build()
        .unwrap()
        .with_price(Price::fixed("0.01".parse().unwrap()));
    let config = Arc::new(
        GovernorConfigBuilder::default()
            .key_extractor(UserKey)
            .per_nanosecond(1)
            .burst_size(u32::MAX)
            .finish()
            .unwrap(),
    );
    let bare: Router = Router::new().route("/r", get(|| async { "ok" }));
    let governed: Router = Router::new().route("/r", get(|| async { "ok" }).route_layer(GovernorLayer::new(config)));
    let layered: Router = Router::new().route("/r", get(|| async { "ok" }).route_layer(paid));
    let req = || {
        let mut r = Request::get("/r").body(Body::empty()).unwrap();
        r.extensions_mut().insert(User("agent-1".to_owned()));
        r
    };
    let ok = rt.block_on(layered.clone().oneshot(req())).unwrap();
    assert_eq!(ok.status(), 200, "the paid route approves");
    let mut g = c.benchmark_group("peer_route_layers");
    g.bench_function("bare_route", |b| b.to_async(&rt).iter(|| bare.clone().oneshot(req())));
    g.bench_function("tower_governor", |b| b.to_async(&rt).iter(|| governed.clone().oneshot(req())));
    g.bench_function("conto_paid_layer", |b| b.to_async(&rt).iter(|| layered.clone().oneshot(req())));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(40).measurement_time(std::time::Duration::from_secs(3));
    targets = stateless_rules, route_layers
}
criterion_main!(benches);

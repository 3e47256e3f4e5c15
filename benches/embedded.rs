//! In-process costs: an embedded decision by policy count and by history size, the
//! `#[paid_action]` and layer overheads against bare baselines, and contention across agents.
//! Results and how to read them: BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use conto::tower::{Actor, Paywall, Price};
use conto::{Conto, Engine, PaymentIntent, PolicySet, Rail, Rejection, Settlement, paid_action};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

mod common;

use common::{RECIPIENT, SENDER, intent, policies_for};

/// The shared policy sets, for 64 agents.
fn policies(n: usize) -> PolicySet {
    policies_for(n, (0..64).map(|i| format!("agent-{i}")).collect())
}

fn decide_and_record(engine: &Engine, intent: &PaymentIntent) {
    let d = engine.decide(intent);
    let conto::Verdict::Approved(a) = d.verdict else { panic!("benchmark intents are approved") };
    engine.settle(&a, &Settlement::default()).unwrap();
}

fn by_policy_count(c: &mut Criterion) {
    let mut g = c.benchmark_group("embedded_authorize_record");
    for n in [1usize, 10, 100] {
        let engine = Engine::new(policies(n));
        let i = intent("agent-1");
        g.bench_with_input(BenchmarkId::new("policies", n), &n, |b, _| {
            b.iter(|| decide_and_record(&engine, black_box(&i)))
        });
        // What the pipeline calls: the approval keeps the caller's `Arc` instead of a copy.
        let shared = Arc::new(i.clone());
        g.bench_with_input(BenchmarkId::new("policies_shared_intent", n), &n, |b, _| {
            b.iter(|| {
                let d = engine.decide_shared(black_box(&shared)).unwrap();
                let conto::Verdict::Approved(a) = d.verdict else { panic!("benchmark intents are approved") };
                engine.settle(&a, &Settlement::default()).unwrap();
            })
        });
    }
    g.finish();
}

fn by_history(c: &mut Criterion) {
    let mut g = c.benchmark_group("embedded_history");
    g.sample_size(30);
    for past in [0usize, 1_000, 100_000, 1_000_000] {
        let engine = Engine::new(policies(10));
        let i = intent("agent-1");
        for _ in 0..past {
            decide_and_record(&engine, &i);
        }
        g.bench_with_input(BenchmarkId::new("past_spends", past), &past, |b, _| {
            b.iter(|| decide_and_record(&engine, black_box(&i)))
        });
    }
    g.finish();
}

#[derive(Debug)]
struct PayError;
impl From<Rejection> for PayError {
    fn from(_: Rejection) -> Self {
        PayError
    }
}

/// The settlement body both functions share: a little real work.
async fn settle_body(n: u64) -> Result<u64, PayError> {
    Ok(black_box(n).wrapping_mul(31).rotate_left(7))
}

async fn bare(n: u64) -> Result<u64, PayError> {
    settle_body(n).await
}

#[paid_action(amount = "0.01", recipient = RECIPIENT, rail = transfer(chain_id = 8453, sender = SENDER),
    actor = "agent-1", conto = conto, category = "API_PROVIDER")]
async fn guarded(conto: &Conto, n: u64) -> Result<u64, PayError> {
    settle_body(n).await
}

fn macro_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conto = Conto::new(Engine::new(policies(10)));
    let mut g = c.benchmark_group("paid_action");
    g.bench_function("bare_fn", |b| b.to_async(&rt).iter(|| bare(black_box(7))));
    g.bench_function("paid_action_fn", |b| b.to_async(&rt).iter(|| guarded(&conto, black_box(7))));
    g.finish();
}

/// The authenticated user, as an auth middleware would insert it.
#[derive(Clone)]
struct User(String);

fn layer_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let paid = Paywall::builder(Conto::new(Engine::new(policies(10))))
        .actor(Actor::extension(|user: &User| user.0.clone()))
        .rail(Rail::transfer(8453, SENDER).unwrap())
        .recipient(RECIPIENT)
        .category("API_PROVIDER")
        .build()
        .unwrap()
        .with_price(Price::fixed("0.01".parse().unwrap()));
    let bare: Router = Router::new().route("/r", get(|| async { "ok" }));
    let layered: Router = Router::new().route("/r", get(|| async { "ok" }).route_layer(paid));
    // The app's auth middleware would insert the user; the bench inserts it directly.
    let req = || {
        let mut r = Request::get("/r").body(Body::empty()).unwrap();
        r.extensions_mut().insert(User("agent-1".to_owned()));
        r
    };
    let mut g = c.benchmark_group("layer_oneshot");
    g.bench_function("bare_route", |b| b.to_async(&rt).iter(|| bare.clone().oneshot(req())));
    g.bench_function("paid_route", |b| b.to_async(&rt).iter(|| layered.clone().oneshot(req())));
    g.finish();
}

/// Throughput of authorize + record with 64 concurrent tasks on 1 shared agent vs 64 agents.
fn contention(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut g = c.benchmark_group("contention_64_tasks");
    g.sample_size(20);
    for agents in [1usize, 64] {
        let engine = Engine::new(policies(10));
        let intents: Arc<Vec<PaymentIntent>> =
            Arc::new((0..64).map(|t| intent(&format!("agent-{}", t % agents))).collect());
        g.bench_with_input(BenchmarkId::new("agents", agents), &agents, |b, _| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(64).max(1);
                let start = Instant::now();
                rt.block_on(async {
                    let tasks: Vec<_> = (0..64)
                        .map(|t| {
                            let (engine, intents) = (engine.clone(), intents.clone());
                            tokio::spawn(async move {
                                for _ in 0..per_task {
                                    decide_and_record(&engine, &intents[t]);
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
                start.elapsed().div_f64((per_task * 64) as f64 / iters as f64)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = by_policy_count, by_history, macro_overhead, layer_overhead, contention
}
criterion_main!(benches);

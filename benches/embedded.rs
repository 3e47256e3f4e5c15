//! In-process costs: an embedded decision by policy count and by history size, the
//! `#[paid_action]` and layer overheads against bare baselines, and contention across agents.
//! Results and how to read them: BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conto::{Engine, PaymentIntent, PolicySet, Settlement};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

mod common;
#[path = "common/paid.rs"]
mod paid;

use common::{intent, policies_for};

/// The shared policy sets, for 64 agents.
fn policies(n: usize) -> PolicySet {
    policies_for(n, (0..64).map(|i| format!("agent-{i}")).collect())
}

fn decide_and_record(engine: &Engine, intent: &PaymentIntent) {
    let d = engine.decide(intent);
    let conto::Verdict::Approved(a) = d.verdict else { panic!("benchmark intents are approved") };
    engine.settle(&a, &Settlement::default()).unwrap();
}

/// What the pipeline calls: the approval keeps the caller's `Arc` instead of a copy.
fn decide_shared_and_record(engine: &Engine, intent: &Arc<PaymentIntent>) {
    let d = engine.decide_shared(intent).unwrap();
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
        let shared = Arc::new(i.clone());
        g.bench_with_input(BenchmarkId::new("policies_shared_intent", n), &n, |b, _| {
            b.iter(|| decide_shared_and_record(&engine, black_box(&shared)))
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

fn macro_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conto = paid::conto(10);
    let mut g = c.benchmark_group("paid_action");
    // The goal's baseline in the same group: the decision (authorize + record) alone, on an
    // engine with the same policies, through the pipeline's shared-intent entry.
    let engine = Engine::new(policies_for(10, vec!["agent-1".into()]));
    let shared = Arc::new(intent("agent-1"));
    g.bench_function("decision_only", |b| b.iter(|| decide_shared_and_record(&engine, black_box(&shared))));
    g.bench_function("bare_fn", |b| b.to_async(&rt).iter(|| paid::bare(black_box(7))));
    g.bench_function("paid_action_fn", |b| b.to_async(&rt).iter(|| paid::guarded(&conto, black_box(7))));
    g.finish();
}

fn layer_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (bare, layered) = paid::routes(paid::conto(10));
    let mut g = c.benchmark_group("layer_oneshot");
    g.bench_function("bare_route", |b| b.to_async(&rt).iter(|| bare.clone().oneshot(paid::request())));
    g.bench_function("paid_route", |b| b.to_async(&rt).iter(|| layered.clone().oneshot(paid::request())));
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

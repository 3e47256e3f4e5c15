//! The embedded engine on a ledger shared by replicas (PostgreSQL on 127.0.0.1) against the
//! in-process ledger, and against a bare round trip to the same server, in one run. Needs the
//! server at `CONTO_TEST_DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/test);
//! skips without one. Results: BENCHMARKS.md, "Shared ledger".

use std::hint::black_box;

use conto::engine::SharedEngine;
use conto::postgres::PgLedger;
use conto::{Authorizer, Engine, PaymentIntent, Settlement, Verdict};
use criterion::{Criterion, criterion_group, criterion_main};

mod common;

use common::{intent, policies_for};

async fn decide_and_record(authority: &dyn Authorizer, intent: &std::sync::Arc<PaymentIntent>) {
    let d = authority.authorize(intent).await.unwrap();
    let Verdict::Approved(a) = d.verdict else { panic!("benchmark intents are approved") };
    authority.record(&a, &Settlement::default()).await.unwrap();
}

fn shared_vs_in_process(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let url =
        std::env::var("CONTO_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("conto_bench_{}", std::process::id());
    let Some(pool) =
        rt.block_on(async { sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(&url).await.ok() })
    else {
        eprintln!("skipping: no PostgreSQL at {url}");
        return;
    };
    let agents = vec!["agent-1".to_owned()];
    let in_process = Engine::new(policies_for(10, agents.clone()));
    let shared: SharedEngine = rt.block_on(async {
        Engine::builder()
            .policies(policies_for(10, agents))
            .build_shared(PgLedger::open(pool.clone(), &schema).await.unwrap())
    });
    let i = std::sync::Arc::new(intent("agent-1"));
    let mut g = c.benchmark_group("shared_ledger_authorize_record");
    g.bench_function("in_process", |b| b.to_async(&rt).iter(|| decide_and_record(&in_process, black_box(&i))));
    g.bench_function("postgres", |b| b.to_async(&rt).iter(|| decide_and_record(&shared, black_box(&i))));
    g.bench_function("bare_round_trip", |b| {
        b.to_async(&rt).iter(|| async { sqlx::query("SELECT 1").execute(&pool).await.unwrap() })
    });
    g.finish();
    rt.block_on(async { sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap() });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = shared_vs_in_process
}
criterion_main!(benches);

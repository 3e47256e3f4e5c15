//! The remote critical path: a paid action through `ContoClient` against conto-local on
//! loopback, against one bare HTTP round trip to the same server. With the outbox, recording is
//! off the critical path, so a paid action should cost one round trip (authorize) plus the
//! outbox write. With `MEMDB=1`, conto-local keeps its database in memory, to show what its
//! file costs. Results: BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use conto::outbox::Outbox;
use conto::{Conto, ContoClient, PaymentIntent, Rail, Settlement};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

const RECIPIENT: &str = "0x1111111111111111111111111111111111111111";
const TX: &str = "0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn intent() -> PaymentIntent {
    PaymentIntent::builder("agent-1", "0.01", Rail::x402("https://api.example.com/search").unwrap())
        .recipient(RECIPIENT)
        .build()
        .unwrap()
}

fn remote(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = std::env::temp_dir().join(format!("conto-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (server, key) = rt.block_on(async {
        let server = conto_local::start(conto_local::Config {
            port: 0,
            db: if std::env::var_os("MEMDB").is_some() { None } else { Some(dir.join("local.db")) },
            org_key: Some("conto_org_bench".into()),
            rate_limit: u32::MAX / 4,
            ..Default::default()
        })
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let org = |path: &str, body: serde_json::Value| {
            http.post(format!("{}{path}", server.url())).bearer_auth("conto_org_bench").json(&body).send()
        };
        org("/api/agents", json!({"id": "agent-1", "name": "agent-1"})).await.unwrap();
        let key: serde_json::Value = org(
            "/api/agents/agent-1/sdk-keys",
            json!({"scopes": ["payments:request", "payments:approve", "payments:confirm"]}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        (server, key["key"].as_str().unwrap().to_owned())
    });
    let url = server.url();
    let client = ContoClient::builder().base_url(&url).sdk_key(&key).build().unwrap();
    let http = reqwest::Client::new();
    // No delivery worker (`outbox_manual`, and none is spawned): this measures the critical path
    // alone (authorize + the outbox write); the records wait in the outbox.
    let critical = Conto::builder(client.clone()).outbox_manual(Outbox::open(dir.join("critical.db")).unwrap()).build();
    let (queued, inline) = rt.block_on(async {
        let queued = Conto::builder(client.clone()).outbox(Outbox::open(dir.join("outbox.db")).unwrap()).build();
        (queued, Conto::new(client.clone()))
    });

    let mut g = c.benchmark_group("remote");
    g.sample_size(50);
    g.bench_function("bare_round_trip", |b| {
        b.to_async(&rt).iter(|| async { black_box(http.get(format!("{url}/health")).send().await.unwrap().status()) })
    });
    g.bench_function("authorize_only", |b| {
        b.to_async(&rt).iter(|| async { black_box(client.authorize_intent(&intent()).await.unwrap()) })
    });
    g.bench_function("paid_action_critical_path", |b| {
        b.to_async(&rt).iter(|| async {
            critical
                .run(intent(), |_| async { Ok::<_, ()>(()) }, |_| Settlement::default().reference(TX))
                .await
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("paid_action_outbox", |b| {
        b.to_async(&rt).iter(|| async {
            queued
                .run(intent(), |_| async { Ok::<_, ()>(()) }, |_| Settlement::default().reference(TX))
                .await
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("paid_action_inline_record", |b| {
        b.to_async(&rt).iter(|| async {
            inline
                .run(intent(), |_| async { Ok::<_, ()>(()) }, |_| Settlement::default().reference(TX))
                .await
                .unwrap()
                .unwrap()
        })
    });
    g.finish();
    rt.block_on(async {
        queued.flush(Duration::from_secs(30)).await;
        server.stop().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = remote
}
criterion_main!(benches);

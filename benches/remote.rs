//! The remote critical path: a paid action through `ContoClient` against conto-local on
//! loopback, against one bare HTTP round trip to the same server. With the outbox, recording is
//! off the critical path, so a paid action should cost one round trip (authorize) plus the
//! outbox write. Then the server's own time per authorize, from conto-local's `Server-Timing`
//! header. With `MEMDB=1`, conto-local keeps its database in memory, to show what its file
//! costs; with `WORKERS=1`, client and server share one worker thread, so no call waits for
//! another thread to wake. The `on_worker/` functions make the same calls from a task on the
//! runtime's workers, as a service's handler does. Every authorize leaves an approval (and,
//! keyed, a remembered answer) in conto-local, so a function run after others meets a larger
//! database: to compare two of them, run each in its own process
//! (`--bench '^remote/on_worker/authorize_only$'`).
//! With `LINK_DELAY_US=n`, every call above goes through a relay that holds each chunk of bytes
//! n µs in each direction (a round trip then crosses 2n µs of link, as to a server in another
//! building or region); the `Server-Timing` sample still goes straight to the server.
//! Results: BENCHMARKS.md.

use std::hint::black_box;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conto::outbox::Outbox;
use conto::sink::{QueuedRecord, RecordKind, RecordSink};
use conto::{Conto, ContoClient, PaymentIntent, Rail, Settlement};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

const RECIPIENT: &str = "0x1111111111111111111111111111111111111111";
const TX: &str = "0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A key no other call used (the pre-authorize answer of a key used before is a replay).
fn fresh_key() -> u128 {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) + u64::from(std::process::id()) * 1_000_000_000;
    u128::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
}

/// A reqwest client with ContoClient's settings.
fn like_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("conto-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap()
    })
}

/// A relay on loopback that forwards every connection to `upstream`, holding each chunk of
/// bytes `delay` in each direction: a link of that one-way latency (loopback's own is
/// microseconds; `tc netem` is not on these machines). Plain threads, so the runtime's workers
/// do none of its work; a chunk's hold is measured from when it was read, so chunks in flight
/// overlap as on a real link.
fn delayed_link(upstream: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
        let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
        std::thread::spawn(move || {
            for (due, chunk) in rx {
                let now = std::time::Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if to.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if tx.send((std::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let server = TcpStream::connect(upstream).unwrap();
            for s in [&client, &server] {
                s.set_nodelay(true).unwrap();
            }
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pump(client, server, delay));
            std::thread::spawn(move || pump(s2, c2, delay));
        }
    });
    addr
}

/// Times `iters` calls made one after another from one task on the runtime's workers.
fn on_worker<F, Fut>(b: &mut criterion::Bencher<'_>, rt: &tokio::runtime::Runtime, call: F)
where
    F: Fn() -> Fut + Send + 'static + Clone,
    Fut: Future<Output = ()> + Send,
{
    b.iter_custom(|iters| {
        let call = call.clone();
        rt.block_on(rt.spawn(async move {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                call().await;
            }
            start.elapsed()
        }))
        .unwrap()
    })
}

fn intent() -> PaymentIntent {
    PaymentIntent::builder("agent-1", "0.01", Rail::x402("https://api.example.com/search").unwrap())
        .recipient(RECIPIENT)
        .build()
        .unwrap()
}

fn remote(c: &mut Criterion) {
    // `WORKERS=1`: client and server on one worker thread, so no call waits for another thread
    // to wake (what a wake-up costs on this machine, not what the calls cost).
    let workers = std::env::var("WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap();
    let dir = std::env::temp_dir().join(format!("conto-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = rt.block_on(async {
        conto_local::start(conto_local::Config {
            port: 0,
            db: if std::env::var_os("MEMDB").is_some() { None } else { Some(dir.join("local.db")) },
            org_key: Some("conto_org_bench".into()),
            rate_limit: u32::MAX / 4,
            ..Default::default()
        })
        .await
        .unwrap()
    });
    let key = rt.block_on(async {
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
        key["key"].as_str().unwrap().to_owned()
    });
    let direct = server.url();
    // `LINK_DELAY_US=n`: the calls cross a link of n µs each way (see `delayed_link`).
    let url = match std::env::var("LINK_DELAY_US").ok().and_then(|d| d.parse::<u64>().ok()) {
        Some(us) => {
            let upstream = direct.trim_start_matches("http://").parse().unwrap();
            format!("http://{}", delayed_link(upstream, Duration::from_micros(us)))
        }
        None => direct.clone(),
    };
    let client = ContoClient::builder().base_url(&url).sdk_key(&key).any_actor().build().unwrap();
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
    // The same shape as an authorize on the wire (a POST with the same JSON body, a small JSON
    // answer) with no work behind it: conto-local answers 405 to a POST on /health at once.
    let payment =
        json!({"amount": "0.01", "recipientAddress": RECIPIENT, "resourceUrl": "https://api.example.com/search"});
    g.bench_function("bare_post_round_trip", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = http.post(format!("{url}/health")).bearer_auth(&key).json(&payment).send().await.unwrap();
            black_box(resp.bytes().await.unwrap())
        })
    });
    // The same authorize as a bare reqwest POST (the body and headers ContoClient sends, the
    // answer read as bytes): what is left of `authorize_only` beside it is ContoClient's own.
    let mut n = 0u64;
    g.bench_function("raw_authorize_post", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let key_n = format!("raw-{}-{n}", std::process::id());
            let body = json!({"amount": 0.01, "recipientAddress": RECIPIENT,
                "resourceUrl": "https://api.example.com/search", "serviceDomain": "api.example.com",
                "idempotencyKey": key_n.clone()});
            let req = http
                .post(format!("{url}/api/sdk/x402/pre-authorize"))
                .bearer_auth(&key)
                .header("Idempotency-Key", key_n)
                .json(&body);
            async move {
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status(), 200);
                black_box(resp.bytes().await.unwrap())
            }
        })
    });
    g.bench_function("authorize_only", |b| {
        b.to_async(&rt).iter(|| async { black_box(client.authorize_intent(&intent()).await.unwrap()) })
    });
    // The same calls made from a task on the runtime's workers, as a service's handler makes
    // them: criterion's `to_async` polls from the bench's own thread, outside the workers, and
    // every wake-up then crosses threads (a bare round trip costs several times more so).
    let bare = {
        let (http, url) = (http.clone(), url.clone());
        move || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                black_box(http.get(format!("{url}/health")).send().await.unwrap().status());
            }
        }
    };
    g.bench_function("on_worker/bare_round_trip", |b| on_worker(b, &rt, bare.clone()));
    // A POST with an authorize's body and headers that the server answers at once (405 on
    // /health): the HTTP of an authorize with no work behind it.
    let bare_post = {
        let (url, key, payment) = (url.clone(), key.clone(), payment.clone());
        move || {
            let (url, key, payment) = (url.clone(), key.clone(), payment.clone());
            async move {
                let req = like_client().post(format!("{url}/health")).bearer_auth(key);
                let resp = req.timeout(Duration::from_secs(2)).json(&payment).send().await.unwrap();
                black_box(resp.bytes().await.unwrap());
            }
        }
    };
    g.bench_function("on_worker/bare_post_round_trip", |b| on_worker(b, &rt, bare_post.clone()));
    // An authorize as a bare reqwest POST: the body, the headers, the reqwest settings and the
    // per-request deadline ContoClient uses, a fresh random key each time; then without the key,
    // which conto-local then does not remember.
    for keyed in [true, false] {
        let (url, key) = (url.clone(), key.clone());
        let post = move || {
            let (url, key) = (url.clone(), key.clone());
            async move {
                let k = format!("ck_{:032x}", fresh_key());
                let mut body = json!({"amount": 0.01, "recipientAddress": RECIPIENT,
                    "resourceUrl": "https://api.example.com/search", "serviceDomain": "api.example.com",
                    "scheme": "exact"});
                let mut req = like_client().post(format!("{url}/api/sdk/x402/pre-authorize")).bearer_auth(key);
                if keyed {
                    body["idempotencyKey"] = json!(k.clone());
                    req = req.header("Idempotency-Key", k);
                }
                let resp = req.timeout(Duration::from_secs(2)).json(&body).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                let bytes = resp.bytes().await.unwrap();
                black_box(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap());
            }
        };
        let name = if keyed { "on_worker/raw_authorize_post" } else { "on_worker/raw_authorize_post_no_key" };
        g.bench_function(name, |b| on_worker(b, &rt, post.clone()));
    }
    let authorize = {
        let client = client.clone();
        move || {
            let client = client.clone();
            async move {
                black_box(client.authorize_intent(&intent()).await.unwrap());
            }
        }
    };
    g.bench_function("on_worker/authorize_only", |b| on_worker(b, &rt, authorize.clone()));
    let paid = {
        let critical = critical.clone();
        move || {
            let critical = critical.clone();
            async move {
                critical
                    .run(intent(), |_| async { Ok::<_, ()>(()) }, |_| Settlement::default().reference(TX))
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
    };
    g.bench_function("on_worker/paid_action_critical_path", |b| on_worker(b, &rt, paid.clone()));
    // The outbox write alone (what the critical path adds to `authorize_only`): one record,
    // under a fresh authorization id each time, into its own file.
    let outbox = Outbox::open(dir.join("write_only.db")).unwrap();
    let approved = std::sync::Arc::new(intent());
    let mut n = 0u64;
    g.bench_function("outbox_write", |b| {
        b.iter(|| {
            n += 1;
            let authorization = conto::Authorization {
                id: format!("auth_{:08x}{:016x}", n >> 20, fresh_key() as u64),
                token: None,
                amount: approved.amount,
                expires_at: conto::jiff::Timestamp::now(),
                limits: Default::default(),
                intent: approved.clone(),
                wallet: None,
            };
            let record = QueuedRecord::new(RecordKind::Record, &authorization, &Settlement::default().reference(TX));
            rt.block_on(outbox.enqueue(&record)).unwrap();
        })
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
    // The server's own share of an authorize, read from its `Server-Timing` header: what the
    // round trips above spend in conto-local, apart from the network and the client.
    let server_micros = rt.block_on(async {
        let mut micros = Vec::new();
        for i in 0..2_000 {
            let resp = http
                .post(format!("{direct}/api/sdk/x402/pre-authorize"))
                .bearer_auth(&key)
                .json(&json!({"amount": "0.01", "recipientAddress": RECIPIENT,
                    "resourceUrl": "https://api.example.com/search", "idempotencyKey": format!("server-work-{i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "an authorize answered");
            let timing = resp.headers().get("server-timing").and_then(|v| v.to_str().ok()).expect("Server-Timing");
            let ms: f64 = timing.strip_prefix("app;dur=").and_then(|ms| ms.parse().ok()).expect("app;dur=<ms>");
            micros.push(ms * 1000.0);
        }
        micros.sort_by(f64::total_cmp);
        micros
    });
    let at = |q: f64| server_micros[((server_micros.len() - 1) as f64 * q) as usize];
    println!(
        "remote/server_work (Server-Timing, 2 000 authorizes): median {:.1} us, p10 {:.1} us, p90 {:.1} us, \
         p99 {:.1} us, max {:.1} us, mean {:.1} us",
        at(0.5),
        at(0.1),
        at(0.9),
        at(0.99),
        at(1.0),
        server_micros.iter().sum::<f64>() / server_micros.len() as f64
    );
    rt.block_on(queued.flush(Duration::from_secs(30)));
    rt.block_on(server.stop());
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = remote
}
criterion_main!(benches);

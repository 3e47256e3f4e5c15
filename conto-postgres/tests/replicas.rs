//! Replicas as separate processes on one PostgreSQL: this test binary runs itself as each
//! replica (`replica_child`, driven by environment variables), so every replica has its own
//! memory, pool and runtime, as in production. Against the real local server; skipped without
//! one outside CI.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::{drop_schema, schema, url};
use conto::client::ContoClient;
use conto::jiff::Timestamp;
use conto::sink::{Deliver, RecordKind, RecordSink};
use conto::{
    AuthorityError, Authorization, BoxFuture, Conto, Decimal, Engine, ManualClock, PaymentIntent, PolicySet, Rail,
    Recorded, RejectionKind, Settlement,
};
use conto_postgres::{PgLedger, PgOutbox};

const RECIPIENT: &str = "0x1111111111111111111111111111111111111111";
/// A fixed instant, so that no day boundary falls inside a run.
const NOON: &str = "2026-06-03T12:00:00Z";

/// A daily limit for each of `actors` actors (`agent-1` …).
fn budget_policies(limit: &str, actors: usize) -> String {
    let agents: Vec<String> = (1..=actors).map(|i| format!("\"agent-{i}\"")).collect();
    format!(
        r#"{{"agents": [{}], "policies": [{{"name": "budget", "rules": [
            {{"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "{limit}", "action": "ALLOW"}}]}}]}}"#,
        agents.join(", ")
    )
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent test"))
}

/// One replica. `spend`: N concurrent paid actions through a shared engine; prints its counts.
/// `crash`: records settled spends in the PostgreSQL outbox, claims some of them for a delivery
/// that never finishes, and waits to be killed.
#[test]
#[ignore = "a replica process, started by the tests in this file"]
fn replica_child() {
    let Ok(role) = std::env::var("CONTO_REPLICA_ROLE") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let pool =
            sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(&env("CONTO_REPLICA_DB")).await.unwrap();
        let schema = env("CONTO_REPLICA_SCHEMA");
        match role.as_str() {
            "spend" => spend(pool, &schema).await,
            "crash" => crash(pool, &schema).await,
            other => panic!("unknown role {other}"),
        }
    });
}

async fn spend(pool: conto_postgres::PgPool, schema: &str) {
    let actions: usize = env("CONTO_REPLICA_ACTIONS").parse().unwrap();
    let amount = env("CONTO_REPLICA_AMOUNT");
    let actors: usize = env("CONTO_REPLICA_ACTORS").parse().unwrap();
    let policies = PolicySet::from_json(&env("CONTO_REPLICA_POLICIES")).unwrap();
    let ledger = PgLedger::open(pool, schema).await.unwrap();
    let engine =
        Engine::builder().policies(policies).clock(ManualClock::new(NOON.parse().unwrap())).build_shared(ledger);
    // 500 actions of one actor at once queue on its lock: give them time (the default 2 s
    // deadline would fail the tail closed, as `unavailable`).
    let conto = Conto::builder(engine).deadline(Duration::from_secs(60)).build();
    println!("READY");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..actions {
        let (conto, amount) = (conto.clone(), amount.clone());
        let actor = format!("agent-{}", 1 + i % actors);
        tasks.push(tokio::spawn(async move {
            let intent = PaymentIntent::builder(actor, amount.as_str(), Rail::card("Acme").unwrap()).build().unwrap();
            conto.run(intent, |_| async { Ok::<_, ()>(()) }, |_| Settlement::default()).await
        }));
    }
    let (mut approved, mut denied, mut other) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(Ok(())) => approved += 1,
            Err(r) if matches!(r.kind(), RejectionKind::Denied(_)) => denied += 1,
            Err(r) => {
                eprintln!("replica: {r}");
                other += 1
            }
            Ok(Err(())) => other += 1,
        }
    }
    println!("RESULT {approved} {denied} {other} {}", started.elapsed().as_micros());
}

/// A delivery that never finishes: the replica dies holding the lease.
struct Hung;

impl Deliver for Hung {
    fn deliver<'a>(
        &'a self,
        _: RecordKind,
        _: &'a Authorization,
        _: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(std::future::pending())
    }

    fn dead(&self, _: &str, _: AuthorityError) {}
}

async fn crash(pool: conto_postgres::PgPool, schema: &str) {
    let outbox = PgOutbox::open(pool, schema).await.unwrap().lease(Duration::from_millis(800));
    let client = ContoClient::builder()
        .base_url(env("CONTO_REPLICA_AUTHORITY"))
        .sdk_key(env("CONTO_REPLICA_KEY"))
        .any_actor()
        .build()
        .unwrap();
    // The app delivers itself here (no worker), so records stay queued until the kill.
    let conto = Conto::builder(client).outbox_manual(outbox.clone()).build();
    let pay = |i: u32| {
        let conto = conto.clone();
        async move {
            let intent =
                PaymentIntent::builder("agent-1", "0.01", Rail::x402("https://api.example.com/search").unwrap())
                    .recipient(RECIPIENT)
                    .build()
                    .unwrap();
            let out = conto.run(
                intent,
                |_| async move { Ok::<_, ()>(format!("0x{i:064x}")) },
                |tx| Settlement::default().reference(tx.clone()),
            );
            assert!(matches!(out.await, Ok(Ok(_))));
        }
    };
    for i in 0..10 {
        pay(i).await;
    }
    // These ten are claimed by a delivery that never finishes...
    let claimer = outbox.clone();
    tokio::spawn(async move { claimer.deliver_due(&Hung).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...and these ten were committed to the outbox but never tried.
    for i in 10..20 {
        pay(i).await;
    }
    println!("READY {}", outbox.stats().unwrap().pending);
    std::future::pending::<()>().await;
}

fn spawn_replica(role: &str, vars: &[(&str, String)]) -> (Child, ChildStdin, BufReader<std::process::ChildStdout>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["replica_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("CONTO_REPLICA_ROLE", role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdin, stdout)
}

/// The first line of a replica's output that starts with `tag`.
fn line(out: &mut BufReader<std::process::ChildStdout>, tag: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the replica exited before printing {tag}");
        // libtest prints `test replica_child ... ` before the test's own first line.
        if let Some(at) = line.find(tag) {
            return line[at + tag.len()..].trim().to_owned();
        }
    }
}

struct Run {
    approved: u64,
    denied: u64,
    other: u64,
    /// Actions per second over the whole run (all replicas, first start to last finish).
    per_second: f64,
}

/// `replicas` processes, `actions` concurrent paid actions each of `amount`, released together.
async fn run_replicas(replicas: usize, actions: usize, actors: usize, amount: &str, schema: &str, limit: &str) -> Run {
    let vars = [
        ("CONTO_REPLICA_ACTORS", actors.to_string()),
        ("CONTO_REPLICA_POLICIES", budget_policies(limit, actors)),
        ("CONTO_REPLICA_DB", url()),
        ("CONTO_REPLICA_SCHEMA", schema.to_owned()),
        ("CONTO_REPLICA_ACTIONS", actions.to_string()),
        ("CONTO_REPLICA_AMOUNT", amount.to_owned()),
    ];
    tokio::task::spawn_blocking(move || {
        let mut children: Vec<_> = (0..replicas).map(|_| spawn_replica("spend", &vars)).collect();
        for (_, _, out) in &mut children {
            line(out, "READY");
        }
        let started = Instant::now();
        for (_, stdin, _) in &mut children {
            stdin.write_all(b"go\n").unwrap();
        }
        let mut run = Run { approved: 0, denied: 0, other: 0, per_second: 0.0 };
        for (child, _, out) in &mut children {
            let counts: Vec<u64> = line(out, "RESULT").split(' ').map(|n| n.parse().unwrap()).collect();
            run.approved += counts[0];
            run.denied += counts[1];
            run.other += counts[2];
            assert!(child.wait().unwrap().success());
        }
        run.per_second = (replicas * actions) as f64 / started.elapsed().as_secs_f64();
        run
    })
    .await
    .unwrap()
}

/// 4 replica processes, 2 000 concurrent actions against one daily limit of 50.00 at 0.10
/// each: exactly 500 are approved, the budget is used exactly, never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replica_processes_never_overspend_one_daily_limit() {
    let Some((pool, name)) = schema("four").await else { return };
    PgLedger::open(pool.clone(), &name).await.unwrap(); // migrate once, before the race
    let run = run_replicas(4, 500, 1, "0.10", &name, "50").await;
    let (spent, reserved): (Decimal, Decimal) = sqlx::query_as(&format!(
        "SELECT COALESCE(sum(spent), 0), COALESCE(sum(reserved), 0) FROM {name}.ledger_counters"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    eprintln!(
        "four_replicas: actions=2000 approved={} denied={} other={} spent={spent} reserved={reserved} \
         overspend={} actions_per_s={:.0}",
        run.approved,
        run.denied,
        run.other,
        (spent - Decimal::from(50)).max(Decimal::ZERO),
        run.per_second
    );
    assert_eq!(run.other, 0, "every refusal is a policy denial");
    assert_eq!((run.approved, run.denied), (500, 1500));
    assert_eq!(spent, Decimal::from(50), "exactly the budget, never more");
    assert_eq!(reserved, Decimal::ZERO);
    drop_schema(&pool, &name).await;
}

/// A replica SIGKILLed with undelivered records — some claimed by its own delivery (leased),
/// some committed but never tried — and another replica delivers them all: counted at
/// conto-local, 0 lost and 0 twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_records_are_delivered_by_another_exactly_once() {
    let Some((pool, name)) = schema("kill").await else { return };
    let dir = std::env::temp_dir().join(format!("conto-pg-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let server = conto_local::start(conto_local::Config {
        port: 0,
        db: Some(dir.join("local.db")),
        org_key: Some("conto_org_kill".into()),
        rate_limit: 1_000_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let key = server.bootstrap_agent("agent-1").unwrap().unwrap();
    PgOutbox::open(pool.clone(), &name).await.unwrap();

    let vars = [
        ("CONTO_REPLICA_DB", url()),
        ("CONTO_REPLICA_SCHEMA", name.clone()),
        ("CONTO_REPLICA_AUTHORITY", server.url()),
        ("CONTO_REPLICA_KEY", key.clone()),
    ];
    let queued = tokio::task::spawn_blocking(move || {
        let (mut child, _stdin, mut out) = spawn_replica("crash", &vars);
        let queued: u64 = line(&mut out, "READY").parse().unwrap();
        child.kill().unwrap(); // SIGKILL: no destructor, no flush
        child.wait().unwrap();
        queued
    })
    .await
    .unwrap();
    assert_eq!(queued, 20, "the replica died with 20 undelivered records");
    assert_eq!(server.spend_count("agent-1").unwrap(), 0, "none reached the authority before the kill");
    let leased: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {name}.outbox WHERE lease_until IS NOT NULL"))
        .fetch_one(&pool)
        .await
        .unwrap();

    // Another replica: the same table, its own worker.
    let client = ContoClient::builder().base_url(server.url()).sdk_key(key).any_actor().build().unwrap();
    let outbox = PgOutbox::open(pool.clone(), &name).await.unwrap();
    let conto = Conto::builder(client).outbox(outbox.clone()).build();
    let started = Timestamp::now();
    let stats = conto.flush(Duration::from_secs(30)).await.unwrap();
    // A second pass finds nothing more to send.
    outbox.refresh().await.unwrap();
    let recorded = server.spend_count("agent-1").unwrap();
    eprintln!(
        "kill: undelivered_at_kill=20 leased_by_the_dead={leased} delivered_by_survivor={} recorded_at_authority={recorded} \
         lost={} duplicates={} dead={} took={:?}",
        stats.delivered,
        20u64.saturating_sub(recorded),
        recorded.saturating_sub(20),
        stats.dead,
        Timestamp::now().duration_since(started)
    );
    assert!(leased > 0, "some records were claimed by the dead replica");
    assert_eq!((stats.pending, stats.delivered, stats.dead), (0, 20, 0));
    assert_eq!(recorded, 20, "every record once at the authority");
    server.stop().await;
    drop_schema(&pool, &name).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Throughput with 1, 2 and 4 replica processes on one shared ledger (a budget that never
/// binds; one actor, whose decisions take turns, and 16 actors). Prints; asserts nothing about
/// time. Run with `cargo test --release -p conto-postgres --test replicas -- --ignored
/// replica_throughput --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for BENCHMARKS.md"]
async fn replica_throughput() {
    for actors in [1, 16] {
        for replicas in [1, 2, 4] {
            let Some((pool, name)) = schema(&format!("tp{replicas}")).await else { return };
            PgLedger::open(pool.clone(), &name).await.unwrap();
            let actions = 2000 / replicas;
            let run = run_replicas(replicas, actions, actors, "0.01", &name, "1000000").await;
            assert_eq!(run.approved as usize, actions * replicas);
            println!(
                "actors={actors} replicas={replicas} actions={} actions_per_s={:.0}",
                actions * replicas,
                run.per_second
            );
            drop_schema(&pool, &name).await;
        }
    }
}

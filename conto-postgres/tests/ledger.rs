//! The shared ledger against the real local PostgreSQL (`CONTO_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`): two engines on one schema behave as one engine.
//! Each test works in its own schema and drops it. Without a server the tests skip, except under
//! CI (`CI` set), where they fail.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conto::engine::SharedEngine;
use conto::jiff::{SignedDuration, Timestamp};
use conto::{
    AuthorityError, Conto, Decimal, Engine, LedgerError, ManualClock, Outage, PaymentIntent, Rail, RejectionKind,
    Settlement, Verdict,
};
use conto_postgres::{PgLedger, PgOutbox, PgPool};

mod common;
use common::{Proxy, drop_schema, pool_on, schema};

const POLICIES: &str = r#"{"agents": ["agent-1", "agent-2"], "policies": [
    {"name": "cap", "rules": [{"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "20", "action": "ALLOW"}]},
    {"name": "budget", "timezone": "America/New_York", "rules": [
        {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "10", "action": "ALLOW"}]},
    {"name": "pace", "rules": [
        {"ruleType": "VELOCITY_LIMIT", "operator": "LTE", "value": "{\"maxCount\": 6, \"period\": \"HOUR\"}", "action": "ALLOW"}]},
    {"name": "review", "rules": [
        {"ruleType": "REQUIRE_APPROVAL_ABOVE", "operator": "GT", "value": "8", "action": "REQUIRE_APPROVAL"}]}
]}"#;

/// Noon in New York on a Wednesday.
const NOON: &str = "2026-06-03T16:00:00Z";

/// Two replicas: two engines on one schema, on one manual clock.
async fn replicas(pool: &PgPool, name: &str, clock: &ManualClock) -> (SharedEngine, SharedEngine) {
    let mut out = Vec::new();
    for _ in 0..2 {
        let ledger = PgLedger::open(pool.clone(), name).await.unwrap();
        let set = conto::PolicySet::from_json(POLICIES).unwrap();
        out.push(Engine::builder().policies(set).clock(clock.clone()).build_shared(ledger));
    }
    let b = out.pop().unwrap();
    (out.pop().unwrap(), b)
}

fn card(actor: &str, amount: &str) -> PaymentIntent {
    PaymentIntent::builder(actor, amount, Rail::card("Acme").unwrap()).build().unwrap()
}

fn approved(v: Verdict) -> conto::Authorization {
    match v {
        Verdict::Approved(a) => a,
        other => panic!("expected an approval, got {other:?}"),
    }
}

#[tokio::test]
async fn two_replicas_share_one_budget_and_its_lifecycle() {
    let Some((pool, name)) = schema("life").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let (a, b) = replicas(&pool, &name, &clock).await;

    // 6 on A, 4 on B: the daily 10 is used up across both.
    let six = approved(a.decide(&card("agent-1", "6")).await.unwrap().verdict);
    let four = approved(b.decide(&card("agent-1", "4")).await.unwrap().verdict);
    assert!(matches!(a.decide(&card("agent-1", "0.01")).await.unwrap().verdict, Verdict::Denied(_)));
    assert!(matches!(b.decide(&card("agent-1", "0.01")).await.unwrap().verdict, Verdict::Denied(_)));
    // Another actor has its own counters.
    approved(b.decide(&card("agent-2", "5")).await.unwrap().verdict);

    // A release on B frees what A reserved; a settlement below the approval frees the rest.
    b.free(&four).await.unwrap();
    b.free(&four).await.unwrap(); // twice is a no-op
    let recorded =
        b.settle(&six, &Settlement::default().amount("5.5".parse().unwrap()).reference("0xabc")).await.unwrap();
    assert_eq!(recorded.amount.get(), Decimal::new(55, 1));
    // A repeat, on either replica, gets the first answer; a different one is a conflict.
    let again = a.settle(&six, &Settlement::default().amount("5.5".parse().unwrap()).reference("0xabc")).await.unwrap();
    assert_eq!(again.transaction_id, recorded.transaction_id);
    let conflict = a.settle(&six, &Settlement::default().amount("1".parse().unwrap())).await.unwrap_err();
    assert!(matches!(conflict, AuthorityError::Ledger(LedgerError::RecordConflict(_))), "{conflict:?}");

    let usage = a.usage("agent-1").await.unwrap();
    let daily = usage.counters.iter().find(|c| c.period == "daily").unwrap();
    assert_eq!((daily.spent, daily.reserved), (Decimal::new(55, 1), Decimal::ZERO));
    assert_eq!(daily.time_zone, "America/New_York");
    assert_eq!(daily.period_start, "2026-06-03T04:00:00Z".parse::<Timestamp>().unwrap(), "midnight in New York");
    assert_eq!((usage.stats.approved, usage.stats.recorded, usage.stats.released), (2, 1, 1));
    let rest = approved(b.decide(&card("agent-1", "4.5")).await.unwrap().verdict);
    a.settle(&rest, &Settlement::default()).await.unwrap();
    // The released approval settled after all: counted, flagged late, the same on either replica.
    let late = a.settle(&four, &Settlement::default().reference("0xlate")).await.unwrap();
    assert!(late.late, "{late:?}");
    let again = b.settle(&four, &Settlement::default().reference("0xlate")).await.unwrap();
    assert_eq!(again.transaction_id, late.transaction_id);
    let daily = a.usage("agent-1").await.unwrap().counters.into_iter().find(|c| c.period == "daily").unwrap();
    assert_eq!(daily.spent, Decimal::from(14), "5.5 + 4.5 + the late 4");
    assert_eq!((daily.limit, daily.rails), (Some(Decimal::from(10)), Some("all")), "its limit, from the policy");

    // Midnight in New York (not in UTC) starts a new day on both replicas.
    clock.set("2026-06-04T03:59:59Z".parse().unwrap());
    assert!(matches!(a.decide(&card("agent-1", "1")).await.unwrap().verdict, Verdict::Denied(_)));
    clock.set("2026-06-04T04:00:00Z".parse().unwrap());
    approved(a.decide(&card("agent-1", "1")).await.unwrap().verdict);
    // Days later with nothing spent since, the daily counter shows today: nothing spent yet
    // (the ledger's latest row is an ended day's).
    clock.set("2026-06-07T16:00:00Z".parse().unwrap());
    let daily = b.usage("agent-1").await.unwrap().counters.into_iter().find(|c| c.period == "daily").unwrap();
    assert_eq!((daily.spent, daily.reserved), (Decimal::ZERO, Decimal::ZERO), "{daily:?}");
    assert_eq!(daily.period_start, "2026-06-07T04:00:00Z".parse::<Timestamp>().unwrap());
    drop_schema(&pool, &name).await;
}

#[tokio::test]
async fn expiry_late_records_and_velocity_hold_across_replicas() {
    let Some((pool, name)) = schema("expiry").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let (a, b) = replicas(&pool, &name, &clock).await;

    let lapsing = approved(a.decide(&card("agent-1", "7")).await.unwrap().verdict);
    assert!(matches!(b.decide(&card("agent-1", "4")).await.unwrap().verdict, Verdict::Denied(_)));
    // Past its expiry (10 minutes) the hold is gone for every replica...
    clock.advance(SignedDuration::from_mins(11));
    let four = approved(b.decide(&card("agent-1", "4")).await.unwrap().verdict);
    // ...and a settlement reported after it is still counted, flagged late.
    let late = a.settle(&lapsing, &Settlement::default()).await.unwrap();
    assert!(late.late);
    assert_eq!(a.usage("agent-1").await.unwrap().counters[0].spent, Decimal::from(7));
    b.settle(&four, &Settlement::default()).await.unwrap();

    // Velocity: 6 approvals an hour per actor, counted across both replicas (another actor's
    // window: agent-1's above do not count here). Five settled, then a sixth live.
    let mut n = 1;
    for i in 0..5 {
        let engine = if i % 2 == 0 { &a } else { &b };
        if let Verdict::Approved(x) = engine.decide(&card("agent-2", "0.5")).await.unwrap().verdict {
            engine.settle(&x, &Settlement::default()).await.unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 6);
    let seventh = approved(a.decide(&card("agent-2", "0.5")).await.unwrap().verdict);
    assert!(matches!(b.decide(&card("agent-2", "0.5")).await.unwrap().verdict, Verdict::Denied(_)), "6 an hour");
    // A released approval gives its slot back.
    a.free(&seventh).await.unwrap();
    approved(b.decide(&card("agent-2", "0.5")).await.unwrap().verdict);
    drop_schema(&pool, &name).await;
}

#[tokio::test]
async fn a_request_for_approval_opened_on_one_replica_is_answered_on_another() {
    let Some((pool, name)) = schema("pending").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let (a, b) = replicas(&pool, &name, &clock).await;
    let conto = Conto::new(a.clone());

    let Verdict::RequiresApproval(pending) = a.decide(&card("agent-1", "9")).await.unwrap().verdict else {
        panic!("above 8 waits for a human")
    };
    assert!(b.approval(&pending.approval_request_id).await.unwrap().is_none(), "waiting, seen from B");
    b.resolve_approval(&pending.approval_request_id, true).await.unwrap();
    let twice = b.resolve_approval(&pending.approval_request_id, true).await.unwrap_err();
    assert!(matches!(twice, AuthorityError::Ledger(LedgerError::UnknownApprovalRequest(_))));
    let decision = a.approval(&pending.approval_request_id).await.unwrap().expect("answered");
    let authorization = approved(decision.verdict);
    assert_eq!(authorization.amount.get(), Decimal::from(9));
    // The approval holds the budget on every replica, and records through the pipeline.
    assert!(matches!(b.decide(&card("agent-1", "2")).await.unwrap().verdict, Verdict::Denied(_)));
    drop(conto);
    a.settle(&authorization, &Settlement::default()).await.unwrap();

    // A rejection, and a lapsed request.
    let Verdict::RequiresApproval(no) = b.decide(&card("agent-2", "9")).await.unwrap().verdict else { panic!() };
    a.resolve_approval(&no.approval_request_id, false).await.unwrap();
    assert!(matches!(b.approval(&no.approval_request_id).await.unwrap().unwrap().verdict, Verdict::Denied(_)));
    let Verdict::RequiresApproval(lapsing) = b.decide(&card("agent-2", "9")).await.unwrap().verdict else { panic!() };
    clock.advance(SignedDuration::from_hours(2));
    assert!(a.resolve_approval(&lapsing.approval_request_id, true).await.is_err());
    assert!(matches!(a.approval(&lapsing.approval_request_id).await.unwrap().unwrap().verdict, Verdict::Denied(_)));
    drop_schema(&pool, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_actions_on_two_replicas_never_overspend() {
    let Some((pool, name)) = schema("race").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let (a, b) = replicas(&pool, &name, &clock).await;
    let (a, b) = (Conto::new(a), Conto::new(b));
    let mut tasks = Vec::new();
    for i in 0..120 {
        let conto = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            conto.run(card("agent-1", "0.25"), |_| async { Ok::<_, ()>(()) }, |_| Settlement::default()).await
        }));
    }
    let mut ran = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Ok(Ok(()))) {
            ran += 1;
        }
    }
    let ledger = PgLedger::open(pool.clone(), &name).await.unwrap();
    let shared = Engine::builder()
        .policies(conto::PolicySet::from_json(POLICIES).unwrap())
        .clock(clock.clone())
        .build_shared(ledger);
    let daily = shared.usage("agent-1").await.unwrap();
    let spent = daily.counters.iter().find(|c| c.period == "daily").unwrap().spent;
    // Velocity allows 6 an hour: the tightest limit decides, across both replicas.
    assert_eq!(ran, 6, "6 an hour, whichever replica asked");
    assert_eq!(spent, Decimal::new(150, 2));
    drop_schema(&pool, &name).await;
}

/// PostgreSQL cut off in the middle of a load (every connection dropped, new ones refused,
/// for 600 ms, then back): decisions during the outage fail closed as `unavailable`, every
/// settlement that ran had its approval written in the shared ledger first, and every record is
/// delivered once the database is back (held in the process meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_mid_load_approves_nothing_unchecked_and_loses_no_record() {
    let proxy = Proxy::start().await;
    let cut = proxy.clone();
    load_through_a_fault(&proxy.url(), "outage", async move {
        cut.cut().await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        cut.restore();
    })
    .await;
}

/// The same load through a real restart of the server: set `CONTO_PG_RESTART` to the command
/// that restarts it (on these machines: `pg_ctlcluster --skip-systemctl-redirect 15 main
/// restart`). Not in CI: the server is shared by every test run on the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "restarts the PostgreSQL server: run by hand with CONTO_PG_RESTART set"]
async fn a_real_server_restart_mid_load_approves_nothing_unchecked_and_loses_no_record() {
    let command = std::env::var("CONTO_PG_RESTART").expect("CONTO_PG_RESTART: the command that restarts the server");
    load_through_a_fault(&common::url(), "restart", async move {
        let status = tokio::process::Command::new("sh").arg("-c").arg(&command).status().await.unwrap();
        assert!(status.success(), "{command} failed");
    })
    .await;
}

/// 240 paid actions, one every 5 ms, on a shared engine and outbox reached through `url`, with
/// `fault` started a third of the way in; then checks nothing was approved unchecked or lost.
async fn load_through_a_fault(url: &str, tag: &str, fault: impl std::future::Future<Output = ()> + Send + 'static) {
    let Some((direct, name)) = schema(tag).await else { return };
    let Some(pool) = pool_on(url, 8).await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let policies = r#"{"agents": ["agent-1"], "policies": [{"name": "budget", "rules": [
        {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "1000", "action": "ALLOW"}]}]}"#;
    let engine = Engine::builder()
        .policies(conto::PolicySet::from_json(policies).unwrap())
        .clock(clock)
        .build_shared(PgLedger::open(pool.clone(), &name).await.unwrap());
    let outbox = PgOutbox::open(pool.clone(), &name).await.unwrap();
    let conto = Conto::builder(engine).outbox(outbox).deadline(Duration::from_secs(1)).build();

    let ran = Arc::new(Mutex::new(Vec::<String>::new()));
    let (mut unavailable, mut other) = (0, 0);
    let actions = 240;
    let mut tasks = Vec::new();
    let mut fault = Some(fault);
    for i in 0..actions {
        let (conto, ran) = (conto.clone(), ran.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5 * i)).await;
            conto
                .run(
                    card("agent-1", "1"),
                    |approval| {
                        ran.lock().unwrap().push(approval.authorization().id.clone());
                        async { Ok::<_, ()>(()) }
                    },
                    |_| Settlement::default(),
                )
                .await
        }));
        if i == actions / 3 {
            let fault = fault.take().unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5 * (actions / 3))).await;
                fault.await;
            });
        }
    }
    for t in tasks {
        match t.await.unwrap() {
            Ok(Ok(())) => {}
            Err(r) if matches!(r.kind(), RejectionKind::Unavailable(AuthorityError::Outage(Outage::Ledger(_)))) => {
                unavailable += 1
            }
            Err(r) => {
                eprintln!("other rejection: {r:?}");
                other += 1
            }
            Ok(Err(())) => other += 1,
        }
    }
    let stats = conto.flush(Duration::from_secs(30)).await.unwrap();
    let ran = ran.lock().unwrap().clone();
    let ids: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT id FROM {name}.ledger_authorizations WHERE state = 'recorded' AND id = ANY($1)"
    ))
    .bind(&ran)
    .fetch_all(&direct)
    .await
    .unwrap();
    let delivered: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {name}.outbox WHERE state = 'delivered'"))
        .fetch_one(&direct)
        .await
        .unwrap();
    eprintln!(
        "{tag}: actions={actions} ran={} unavailable={unavailable} other={other} recorded={} delivered={delivered} \
         pending={} dead={}",
        ran.len(),
        ids.len(),
        stats.pending,
        stats.dead
    );
    assert!(unavailable > 0, "the outage happened mid-load");
    assert_eq!(other, 0, "every refusal was the ledger's outage");
    assert_eq!(ran.len() + unavailable, actions as usize);
    assert_eq!(ids.len(), ran.len(), "every settlement that ran was approved in the ledger and recorded there");
    assert_eq!((stats.pending, stats.dead), (0, 0));
    assert_eq!(delivered as usize, ran.len(), "no record lost, none twice");
    drop_schema(&direct, &name).await;
}

#[tokio::test]
async fn bad_names_and_unreachable_servers_are_typed_errors() {
    let Some((pool, _)) = schema("names").await else { return };
    let bad = PgLedger::open(pool.clone(), "Bad-Name").await.unwrap_err();
    assert!(matches!(bad, conto_postgres::PgLedgerError::Schema(_)), "{bad:?}");
    let err = PgLedger::connect("postgres://postgres@127.0.0.1:9/none").await.unwrap_err();
    assert!(matches!(err, conto_postgres::PgLedgerError::Database(_)), "{err:?}");
}

/// A schema already migrated is only read when opened: a role with rights on its rows alone
/// (no DDL) runs the ledger. One migrated by a newer build is refused, never used as current.
/// A pool logged in as `role`, made afresh (a login role, nothing more) and given `grants`.
async fn as_role(pool: &PgPool, role: &str, grants: &[String]) -> PgPool {
    for statement in [format!("DROP ROLE IF EXISTS {role}"), format!("CREATE ROLE {role} LOGIN")].iter().chain(grants) {
        sqlx::query(statement).execute(pool).await.unwrap();
    }
    let url = common::url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let as_role = format!("{scheme}://{role}@{}", rest.rsplit_once('@').map_or(rest, |(_, host)| host));
    common::pool_on(&as_role, 2).await.unwrap()
}

#[tokio::test]
async fn a_migrated_schema_opens_without_ddl_rights_and_a_newer_one_is_refused() {
    let Some((pool, name)) = schema("dml_only").await else { return };
    PgLedger::open(pool.clone(), &name).await.unwrap();
    let role = format!("{name}_app");
    let app = as_role(
        &pool,
        &role,
        &[
            format!("GRANT USAGE ON SCHEMA {name} TO {role}"),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {name} TO {role}"),
        ],
    )
    .await;
    let url = common::url();
    let ledger = PgLedger::open(app.clone(), &name).await.expect("opened without DDL rights");
    let clock = ManualClock::new(NOON.parse().unwrap());
    let engine =
        Engine::builder().policies(conto::PolicySet::from_json(POLICIES).unwrap()).clock(clock).build_shared(ledger);
    let a = approved(engine.decide(&card("agent-1", "1")).await.unwrap().verdict);
    engine.settle(&a, &Settlement::default()).await.unwrap();
    app.close().await;

    sqlx::query(&format!("INSERT INTO {name}.ledger_schema_version (version) VALUES (999)"))
        .execute(&pool)
        .await
        .unwrap();
    let err = PgLedger::open(pool.clone(), &name).await.unwrap_err();
    assert!(matches!(err, conto_postgres::PgLedgerError::NewerSchema(_)), "{err:?}");
    assert!(err.to_string().contains("999"), "{err}");
    // Opened lazily, every decision fails closed as a configuration error, not an outage.
    let lazy = PgLedger::connect_lazy(&url, &name).unwrap();
    let engine = Engine::builder().policies(conto::PolicySet::from_json(POLICIES).unwrap()).build_shared(lazy);
    let err = engine.decide(&card("agent-1", "1")).await.unwrap_err();
    assert!(matches!(&err, AuthorityError::Unsupported(why) if why.contains("newer")), "{err:?}");
    for statement in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    drop_schema(&pool, &name).await;
}

/// A database administrator makes the schema and grants the app's role CREATE on it alone (no
/// CREATE on the database): the first start migrates it, as every later one reads it.
/// (`CREATE SCHEMA IF NOT EXISTS` asks for CREATE on the database even when the schema exists.)
#[tokio::test]
async fn a_schema_made_by_an_administrator_is_migrated_with_create_on_it_alone() {
    let Some((pool, name)) = schema("granted").await else { return };
    let role = format!("{name}_app");
    let app = as_role(
        &pool,
        &role,
        &[format!("CREATE SCHEMA {name}"), format!("GRANT USAGE, CREATE ON SCHEMA {name} TO {role}")],
    )
    .await;
    let may_create_schemas: bool = sqlx::query_scalar("SELECT has_database_privilege(current_database(), 'CREATE')")
        .fetch_one(&app)
        .await
        .unwrap();
    assert!(!may_create_schemas, "the role must not hold CREATE on the database for this test to mean anything");
    let ledger = PgLedger::open(app.clone(), &name).await.expect("migrated with CREATE on the schema alone");
    PgOutbox::open(app.clone(), &name).await.expect("the outbox too");
    let engine = Engine::builder().policies(conto::PolicySet::from_json(POLICIES).unwrap()).build_shared(ledger);
    approved(engine.decide(&card("agent-1", "1")).await.unwrap().verdict);
    PgLedger::open(app.clone(), &name).await.expect("and opened again");
    app.close().await;
    drop_schema(&pool, &name).await;
    for statement in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
}

/// A schema whose name is also an SQL keyword is a schema like any other.
#[tokio::test]
async fn a_schema_named_like_a_keyword_works() {
    let Some((pool, _)) = schema("keyword").await else { return };
    sqlx::query("DROP SCHEMA IF EXISTS \"order\" CASCADE").execute(&pool).await.unwrap();
    let ledger = PgLedger::open(pool.clone(), "order").await.unwrap();
    let engine = Engine::builder().policies(conto::PolicySet::from_json(POLICIES).unwrap()).build_shared(ledger);
    approved(engine.decide(&card("agent-1", "1")).await.unwrap().verdict);
    PgOutbox::open(pool.clone(), "order").await.unwrap();
    let bad = PgLedger::open(pool.clone(), "pg_conto").await.unwrap_err();
    assert!(matches!(bad, conto_postgres::PgLedgerError::Schema(_)), "{bad:?}");
    sqlx::query("DROP SCHEMA \"order\" CASCADE").execute(&pool).await.unwrap();
}

/// A ledger set up wrong (here a table dropped under it) is a configuration error, not an
/// outage: no retry or stand-in would hide it, and an operator sees what is wrong.
#[tokio::test]
async fn a_broken_ledger_is_a_configuration_error_not_an_outage() {
    let Some((pool, name)) = schema("broken").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let (a, _) = replicas(&pool, &name, &clock).await;
    let spent = approved(a.decide(&card("agent-1", "1")).await.unwrap().verdict);
    // A counter edited below zero by hand would pass every limit: it stops the decision.
    sqlx::query(&format!("UPDATE {name}.ledger_counters SET reserved = -100")).execute(&pool).await.unwrap();
    let err = a.decide(&card("agent-1", "9")).await.unwrap_err();
    assert!(matches!(&err, AuthorityError::Unsupported(why) if why.contains("negative")), "{err:?}");
    sqlx::query(&format!("UPDATE {name}.ledger_counters SET reserved = 1")).execute(&pool).await.unwrap();
    sqlx::query(&format!("DROP TABLE {name}.ledger_counters")).execute(&pool).await.unwrap();
    let err = a.decide(&card("agent-1", "1")).await.unwrap_err();
    assert!(matches!(&err, AuthorityError::Unsupported(why) if why.contains("ledger_counters")), "{err:?}");
    assert!(!err.is_retryable());
    // A record of money that moved is kept trying (an outbox retries it) until it is fixed.
    let err = a.settle(&spent, &Settlement::default()).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    drop_schema(&pool, &name).await;
}

/// A settlement reported after its approval lapsed is a payment: it takes a velocity slot
/// again, as it does in one process.
#[tokio::test]
async fn a_late_record_counts_toward_velocity_across_replicas() {
    let Some((pool, name)) = schema("late_velocity").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let (a, b) = replicas(&pool, &name, &clock).await;
    let lapsing = approved(a.decide(&card("agent-1", "0.5")).await.unwrap().verdict);
    clock.advance(SignedDuration::from_mins(11)); // lapsed: its slot is given back
    for i in 0..5 {
        let engine = if i % 2 == 0 { &a } else { &b };
        let x = approved(engine.decide(&card("agent-1", "0.5")).await.unwrap().verdict);
        engine.settle(&x, &Settlement::default()).await.unwrap();
    }
    assert!(b.settle(&lapsing, &Settlement::default()).await.unwrap().late);
    // Six payments within the hour: a seventh is refused on either replica.
    for engine in [&a, &b] {
        let verdict = engine.decide(&card("agent-1", "0.5")).await.unwrap().verdict;
        assert!(matches!(verdict, Verdict::Denied(_)), "6 an hour: {verdict:?}");
    }
    drop_schema(&pool, &name).await;
}

/// A transaction holding `actor`'s ledger lock in schema `name`, as a stalled replica's would,
/// until it is rolled back.
async fn stall(pool: &PgPool, name: &str, actor: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut stalled = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("conto-ledger:{name}:{actor}"))
        .execute(&mut *stalled)
        .await
        .unwrap();
    stalled
}

/// A replica that stalls holding an actor's lock (frozen, or cut off with its connection left
/// open) makes that actor's decisions elsewhere an outage, not a wait for as long as it stalls.
#[tokio::test]
async fn a_replica_stalled_holding_an_actors_lock_is_an_outage_for_the_others() {
    let Some((pool, name)) = schema("stalled").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let (a, _) = replicas(&pool, &name, &clock).await;
    approved(a.decide(&card("agent-1", "1")).await.unwrap().verdict); // migrated and working
    let stalled = stall(&pool, &name, "agent-1").await;
    // Bounded only so that a regression fails instead of hanging: the stalled lock is never
    // let go while the decision runs.
    let decided = tokio::time::timeout(Duration::from_secs(60), a.decide(&card("agent-1", "1"))).await;
    let err = decided.expect("the decision waited on the stalled replica").unwrap_err();
    assert!(err.is_retryable(), "an outage, retried: {err:?}");
    assert!(err.to_string().contains("lock"), "{err}");
    // Other actors are not held up.
    approved(a.decide(&card("agent-2", "1")).await.unwrap().verdict);
    stalled.rollback().await.unwrap();
    approved(a.decide(&card("agent-1", "1")).await.unwrap().verdict);
    drop_schema(&pool, &name).await;
}

/// A burst of one actor's decisions while its lock is held (a stalled replica) takes half the
/// pool's connections in this process, not all of them: the others wait their turn without one, and
/// other actors decide as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_actors_burst_does_not_take_every_pool_connection() {
    let Some((pool, name)) = schema("burst").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let (a, _) = replicas(&pool, &name, &clock).await;
    approved(a.decide(&card("agent-1", "1")).await.unwrap().verdict); // migrated and working
    let stalled = stall(&pool, &name, "agent-1").await;
    let burst: Vec<_> = (0..32)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.decide(&card("agent-1", "0.01")).await })
        })
        .collect();
    let mut most = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        most = most.max(pool.size() as usize - pool.num_idle());
    }
    // The test's pool has 16: one actor's turns are half of them.
    assert!(most <= 9, "the stall's connection and eight waiting decisions, not {most}");
    let other = tokio::time::timeout(Duration::from_secs(10), a.decide(&card("agent-2", "1"))).await;
    approved(other.expect("another actor is not held up").unwrap().verdict);
    for task in burst {
        task.abort();
    }
    stalled.rollback().await.unwrap();
    approved(a.decide(&card("agent-1", "1")).await.unwrap().verdict);
    drop_schema(&pool, &name).await;
}

/// The database goes away between the approval and the record: the settlement ran, so its
/// record waits in the process and reaches the ledger once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_written_during_an_outage_waits_and_is_delivered_after() {
    let Some((direct, name)) = schema("held").await else { return };
    let proxy = Proxy::start().await;
    let Some(pool) = pool_on(&proxy.url(), 4).await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let engine = Engine::builder()
        .policies(conto::PolicySet::from_json(POLICIES).unwrap())
        .clock(clock)
        .build_shared(PgLedger::open(pool.clone(), &name).await.unwrap());
    let outbox = PgOutbox::open(pool.clone(), &name).await.unwrap();
    let conto = Conto::builder(engine.clone()).outbox(outbox.clone()).build();
    let cut = proxy.clone();
    let out = conto
        .run(
            card("agent-1", "3"),
            |_| async move {
                cut.cut().await; // the money moves; then the database is gone
                Ok::<_, ()>(())
            },
            |_| Settlement::default(),
        )
        .await;
    assert!(matches!(out, Ok(Ok(()))), "the settlement ran and its record was accepted");
    use conto::sink::RecordSink;
    let held = outbox.stats().unwrap();
    assert_eq!(held.pending, 1, "held in the process: {held:?}");
    proxy.restore();
    let stats = conto.flush(Duration::from_secs(20)).await.unwrap();
    assert_eq!((stats.pending, stats.delivered, stats.dead), (0, 1, 0));
    let spent: Decimal =
        sqlx::query_scalar(&format!("SELECT sum(spent) FROM {name}.ledger_counters")).fetch_one(&direct).await.unwrap();
    assert_eq!(spent, Decimal::from(3), "counted once the database was back");
    drop_schema(&direct, &name).await;
}

/// During an outage of the authority, a stand-in on the shared ledger bounds the spend of all
/// replicas together: two replicas, a stand-in budget of 5, ten payments of 1 — five approved
/// in all, each marked `stand_in`.
#[tokio::test]
async fn a_stand_in_on_the_shared_ledger_is_bounded_across_replicas() {
    let Some((pool, name)) = schema("standin").await else { return };
    let caps = r#"{"agents": ["agent-1"], "policies": [{"name": "outage budget", "rules": [
        {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "5", "action": "ALLOW"}]}]}"#;
    let clock = ManualClock::new(NOON.parse().unwrap());
    let mut replicas = Vec::new();
    for _ in 0..2 {
        // The authority is down (nothing listens on port 9).
        let authority = conto::client::ContoClient::builder()
            .base_url("http://127.0.0.1:9")
            .sdk_key(format!("conto_agent_{}", "ab".repeat(32)))
            .max_retries(0)
            .any_actor()
            .build()
            .unwrap();
        let stand_in = Engine::builder()
            .policies(conto::PolicySet::from_json(caps).unwrap())
            .clock(clock.clone())
            .build_shared(PgLedger::open(pool.clone(), &name).await.unwrap());
        replicas.push(Conto::builder(authority).stand_in(stand_in).build());
    }
    let mut approved = 0;
    for i in 0..10 {
        let intent = PaymentIntent::builder("agent-1", "1", Rail::x402("https://api.example.com/q").unwrap())
            .recipient("0x1111111111111111111111111111111111111111")
            .build()
            .unwrap();
        match replicas[i % 2].authorize(intent).await {
            Ok(approval) => {
                assert_eq!(approval.source(), conto::DecisionSource::StandIn);
                approved += 1;
                std::mem::forget(approval); // spent: keeps its hold until it expires
            }
            Err(rejection) => assert!(matches!(rejection.kind(), RejectionKind::Denied(_)), "{rejection:?}"),
        }
    }
    assert_eq!(approved, 5, "one outage budget for both replicas, not 5 each");
    drop_schema(&pool, &name).await;
}

/// A replica whose one policy caps each x402 endpoint at 10 a day.
async fn per_endpoint_replica(pool: &PgPool, name: &str, clock: &ManualClock) -> SharedEngine {
    let policies = r#"{"agents": ["agent-1"], "policies": [{"name": "per endpoint", "rules": [
        {"ruleType": "X402_MAX_PER_ENDPOINT", "operator": "LTE", "value": "10", "action": "ALLOW"}]}]}"#;
    let ledger = PgLedger::open(pool.clone(), name).await.unwrap();
    let set = conto::PolicySet::from_json(policies).unwrap();
    Engine::builder().policies(set).clock(clock.clone()).build_shared(ledger)
}

/// An x402 payment of `amount` to `url` by agent-1.
fn x402_to(url: &str, amount: &str) -> PaymentIntent {
    PaymentIntent::builder("agent-1", amount, Rail::x402(url).unwrap())
        .recipient("0x1111111111111111111111111111111111111111")
        .build()
        .unwrap()
}

/// A counter scoped by a long key (an endpoint URL of 20 kB, past what a PostgreSQL index entry
/// holds) is counted like any other, across replicas: it had made every decision on it a
/// "broken ledger" error.
#[tokio::test]
async fn a_counter_with_a_long_scope_key_is_counted_across_replicas() {
    let Some((pool, name)) = schema("longscope").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let engines = [per_endpoint_replica(&pool, &name, &clock).await, per_endpoint_replica(&pool, &name, &clock).await];
    // Incompressible (PostgreSQL compresses what repeats): 20 kB of varied hex digits.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let path: String = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789abcdef"[(x >> 60) as usize])
        })
        .collect();
    let endpoint = |tail: char| format!("https://api.example.com/{path}{tail}");
    let pay = |url: String| x402_to(&url, "2");
    let mut approved_n = 0;
    for i in 0..6 {
        match engines[i % 2].decide(&pay(endpoint('a'))).await.unwrap().verdict {
            Verdict::Approved(a) => {
                engines[(i + 1) % 2].settle(&a, &Settlement::default()).await.unwrap();
                approved_n += 1;
            }
            Verdict::Denied(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(approved_n, 5, "10 on one endpoint, whichever replica decides");
    // Another endpoint sharing the first 20 kB is another counter.
    assert!(matches!(engines[0].decide(&pay(endpoint('b'))).await.unwrap().verdict, Verdict::Approved(_)));
    drop_schema(&pool, &name).await;
}

/// A scope key an earlier build stored whole (1.5 kB: past the digest threshold, within what an
/// index holds) is moved to its digest by the migration, its spend counted on: the upgrade
/// resets no counter.
#[tokio::test]
async fn a_long_scope_stored_whole_by_an_earlier_build_keeps_its_spend() {
    let Some((pool, name)) = schema("longscope_mig").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let url = format!("https://api.example.com/{}", "ab".repeat(750));
    let pay = |amount: &str| x402_to(&url, amount);
    let e = per_endpoint_replica(&pool, &name, &clock).await;
    let a = approved(e.decide(&pay("9")).await.unwrap().verdict);
    e.settle(&a, &Settlement::default()).await.unwrap();
    // As an earlier build left it: the scope whole, the digest migrations not yet run.
    let whole = conto_core::endpoint_key(&url);
    assert!(whole.len() > 1024);
    let rewritten = sqlx::query(&format!("UPDATE {name}.ledger_counters SET scope = $1 WHERE scope LIKE 'sha256:%'"))
        .bind(&whole)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(rewritten.rows_affected(), 1);
    sqlx::query(&format!("DELETE FROM {name}.ledger_schema_version WHERE version > 9")).execute(&pool).await.unwrap();
    drop(e);

    let e = per_endpoint_replica(&pool, &name, &clock).await;
    assert!(matches!(e.decide(&pay("2")).await.unwrap().verdict, Verdict::Denied(_)), "9 + 2 > 10: still counted");
    assert!(matches!(e.decide(&pay("1")).await.unwrap().verdict, Verdict::Approved(_)));
    drop_schema(&pool, &name).await;
}

/// An authorization answers only to its own actor: a copy naming another actor can neither
/// record nor release it.
#[tokio::test]
async fn an_authorization_cannot_be_recorded_or_released_under_another_actor() {
    let Some((pool, name)) = schema("forged").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let (a, b) = replicas(&pool, &name, &clock).await;
    let real = approved(a.decide(&card("agent-1", "3")).await.unwrap().verdict);
    let mut forged = real.clone();
    forged.intent = Arc::new(card("agent-2", "3"));
    for result in [b.settle(&forged, &Settlement::default()).await.map(|_| ()), b.free(&forged).await] {
        let err = result.unwrap_err();
        assert!(matches!(err, AuthorityError::Ledger(LedgerError::UnknownAuthorization(_))), "{err:?}");
    }
    // The real one is untouched and still records for its own actor.
    assert_eq!(a.settle(&real, &Settlement::default()).await.unwrap().amount.get(), Decimal::from(3));
    drop_schema(&pool, &name).await;
}

/// A stand-in's spend reconciled into the shared ledger is counted once, on whichever replica
/// each delivery lands: a repeat (its answer lost, the outbox delivers it again) counts nothing.
#[tokio::test]
async fn a_reconciled_spend_is_counted_once_across_replicas() {
    use conto::Authorizer;
    let Some((pool, name)) = schema("reconcile").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let (a, b) = replicas(&pool, &name, &clock).await;
    let stand_in = Engine::builder().policies(conto::PolicySet::from_json(POLICIES).unwrap()).build();
    let spent = approved(stand_in.try_decide(&card("agent-1", "3")).unwrap().verdict);
    for replica in [&a, &b, &a] {
        Authorizer::reconcile(replica, &spent, &Settlement::default().reference("ch_1")).await.unwrap();
    }
    let daily = a.usage("agent-1").await.unwrap().counters.into_iter().find(|c| c.period == "daily").unwrap();
    assert_eq!(daily.spent, Decimal::from(3), "counted once");
    drop_schema(&pool, &name).await;
}

/// An MPP session `s` of agent-1 (a 1.00 deposit).
fn mpp_session(s: &str) -> PaymentIntent {
    let rail = Rail::Mpp {
        resource_url: "https://api.example.com/stream".into(),
        service_domain: "api.example.com".into(),
        session_id: Some(s.into()),
        intent: Some("session".into()),
        deposit: None,
        method: None,
    };
    PaymentIntent::builder("agent-1", "1", rail)
        .recipient("0x1111111111111111111111111111111111111111")
        .build()
        .unwrap()
}

/// Whether `v` refuses a session for the open-session cap.
fn too_many_sessions(v: &Verdict) -> bool {
    matches!(v, Verdict::Denied(d) if d.violations[0].kind == conto::ViolationType::MppMaxConcurrentSessions)
}

/// A session approved for longer than any velocity window (here a month) holds its open-session
/// slot until it ends: housekeeping, which forgets velocity slots after two days, leaves it.
#[tokio::test]
async fn a_month_long_mpp_session_keeps_its_slot_past_housekeeping() {
    let Some((pool, name)) = schema("longsess").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let ledger = PgLedger::open(pool.clone(), &name).await.unwrap();
    let set = conto::PolicySet::from_json(
        r#"{"agents": ["agent-1"], "policies": [{"name": "MPP controls", "rules": [
            {"ruleType": "MPP_MAX_CONCURRENT_SESSIONS", "operator": "LTE", "value": "1", "action": "ALLOW"},
            {"ruleType": "MPP_MAX_SESSION_DURATION", "operator": "LTE", "value": "2592000", "action": "ALLOW"}]}]}"#,
    )
    .unwrap();
    let engine = Engine::builder().policies(set).clock(clock.clone()).build_shared(ledger);
    let (session, denied) = (mpp_session, too_many_sessions);
    approved(engine.decide(&session("s1")).await.unwrap().verdict);
    clock.advance(SignedDuration::from_hours(24 * 8));
    // Enough transactions for housekeeping to run (one in 64), each asking for a second session.
    for i in 0..70 {
        let verdict = engine.decide(&session(&format!("s{}", i + 2))).await.unwrap().verdict;
        assert!(denied(&verdict), "the month-long session is still open ({i}): {verdict:?}");
    }
    drop_schema(&pool, &name).await;
}

/// Housekeeping forgets the counters of periods that ended: an actor's rows do not grow by one
/// per day for ever. A row still holding a reservation stays until it is settled or lapses.
#[tokio::test]
async fn counters_of_ended_periods_are_forgotten() {
    let Some((pool, name)) = schema("oldcounters").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let ledger = PgLedger::open(pool.clone(), &name).await.unwrap();
    let set = conto::PolicySet::from_json(
        r#"{"agents": ["agent-1"], "policies": [{"name": "daily", "rules": [
            {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "1000", "action": "ALLOW"}]}]}"#,
    )
    .unwrap();
    let engine = Engine::builder().policies(set).clock(clock.clone()).build_shared(ledger);
    let rows = || async {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {name}.ledger_counters WHERE actor = 'agent-1'"))
                .fetch_one(&pool)
                .await
                .unwrap();
        n
    };
    let held = approved(engine.decide(&card("agent-1", "1")).await.unwrap().verdict); // day 1, left live
    for _ in 0..5 {
        clock.advance(SignedDuration::from_hours(24));
        let a = approved(engine.decide(&card("agent-1", "1")).await.unwrap().verdict);
        engine.settle(&a, &Settlement::default()).await.unwrap();
    }
    assert_eq!(rows().await, 6, "a row per day so far");
    // Enough transactions for housekeeping to run (one in 64).
    for _ in 0..70 {
        let a = approved(engine.decide(&card("agent-1", "1")).await.unwrap().verdict);
        engine.free(&a).await.unwrap();
    }
    // Rows whose next period began more than two days ago are forgotten: day 1's (its
    // reservation lapsed days ago, given back by the next decision) to day 3's. Days 4 and 5
    // are kept a while (a decision stamped before a boundary may still read the ended day's).
    assert_eq!(rows().await, 3);
    let usage = engine.usage("agent-1").await.unwrap();
    assert_eq!(usage.counters[0].spent, Decimal::ONE, "today's spend: one settled, the rest released");
    let _ = held;
    drop_schema(&pool, &name).await;
}

/// `MPP_MAX_CONCURRENT_SESSIONS` across replicas: sessions opened on either count against one
/// limit; a record or a release on either closes one (a spend restored without a reservation
/// opens none), and a lapsed one is closed by the next decision's sweep.
#[tokio::test]
async fn open_mpp_sessions_are_counted_across_replicas() {
    let Some((pool, name)) = schema("sess").await else { return };
    let clock = ManualClock::new(NOON.parse().unwrap());
    let mut engines = Vec::new();
    for _ in 0..2 {
        let ledger = PgLedger::open(pool.clone(), &name).await.unwrap();
        let set = conto::PolicySet::from_json(
            r#"{"agents": ["agent-1"], "policies": [{"name": "MPP controls", "rules": [
                {"ruleType": "MPP_MAX_CONCURRENT_SESSIONS", "operator": "LTE", "value": "2", "action": "ALLOW"},
                {"ruleType": "MPP_MAX_SESSION_DURATION", "operator": "LTE", "value": "300", "action": "ALLOW"}]}]}"#,
        )
        .unwrap();
        engines.push(Engine::builder().policies(set).clock(clock.clone()).build_shared(ledger));
    }
    let (a, b) = (&engines[0], &engines[1]);
    let (session, denied) = (mpp_session, too_many_sessions);
    let first = approved(a.decide(&session("s1")).await.unwrap().verdict);
    let second = approved(b.decide(&session("s2")).await.unwrap().verdict);
    // A session's length caps its pre-authorization's lifetime on a shared ledger too.
    let noon: conto::jiff::Timestamp = NOON.parse().unwrap();
    assert_eq!(second.expires_at, noon.checked_add(SignedDuration::from_mins(5)).unwrap());
    assert!(denied(&a.decide(&session("s3")).await.unwrap().verdict));
    b.restore_spend(&session("s0"), "1".parse().unwrap()).await.unwrap();
    b.settle(&first, &Settlement::default()).await.unwrap();
    approved(a.decide(&session("s3")).await.unwrap().verdict);
    assert!(denied(&b.decide(&session("s4")).await.unwrap().verdict));
    a.free(&second).await.unwrap();
    approved(b.decide(&session("s4")).await.unwrap().verdict);
    assert!(denied(&a.decide(&session("s5")).await.unwrap().verdict));
    clock.advance(SignedDuration::from_hours(1)); // both live ones lapse
    approved(a.decide(&session("s5")).await.unwrap().verdict);
    approved(b.decide(&session("s6")).await.unwrap().verdict);
    assert!(denied(&a.decide(&session("s7")).await.unwrap().verdict));
    drop_schema(&pool, &name).await;
}

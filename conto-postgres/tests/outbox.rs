//! The PostgreSQL outbox against the real local server (`CONTO_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test works in its own schema and drops it.
//! Without a server the tests skip, except under CI (`CI` set), where they fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conto::ExposeSecret;
use conto::credentials::{StaticKey, TokenSealer};
use conto::sink::{Deliver, QueuedRecord, RecordKind, RecordSink};
use conto::{AuthorityError, Authorization, BoxFuture, Conto, Engine, PaymentIntent, Rail, Recorded, Settlement};
use conto_postgres::{PgOutbox, PgOutboxError};

mod common;
use common::{drop_schema, schema};

fn engine() -> Engine {
    Engine::from_json(
        r#"{"agents": ["agent-1"], "policies": [{"name": "cap", "rules": [
            {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "50", "action": "ALLOW"}]}]}"#,
    )
    .unwrap()
}

fn intent(n: u32) -> PaymentIntent {
    PaymentIntent::builder("agent-1", "1", Rail::card("Acme").unwrap())
        .idempotency_key(format!("pay-{n}"))
        .build()
        .unwrap()
}

/// Counts deliveries per authorization; optionally slow, or never finishing (a replica that
/// dies mid-delivery).
#[derive(Clone, Default)]
struct Counting {
    delivered: Arc<Mutex<HashMap<String, u32>>>,
    tokens: Arc<Mutex<Vec<Option<String>>>>,
    delay: Duration,
    hang: bool,
}

impl Deliver for Counting {
    fn deliver<'a>(
        &'a self,
        _kind: RecordKind,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(async move {
            if self.hang {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.delay).await;
            *self.delivered.lock().unwrap().entry(authorization.id.clone()).or_default() += 1;
            self.tokens.lock().unwrap().push(authorization.token.as_ref().map(|t| t.expose_secret().to_owned()));
            Ok(Recorded {
                authorization_id: authorization.id.clone(),
                amount: settlement.amount.unwrap_or(authorization.amount),
                transaction_id: None,
                late: false,
                queued: false,
                actor_inactive: false,
            })
        })
    }

    fn dead(&self, _authorization_id: &str, _error: AuthorityError) {}
}

async fn records(engine: &Engine, n: u32) -> Vec<QueuedRecord> {
    let conto = Conto::new(engine.clone());
    let mut out = Vec::new();
    for i in 0..n {
        let approval = conto.authorize(intent(i)).await.unwrap();
        out.push(approval.record_for(&Settlement::default()));
        std::mem::forget(approval); // the test owns delivery here
    }
    out
}

#[tokio::test]
async fn the_pipeline_records_through_postgres() {
    let Some((pool, name)) = schema("pipeline").await else { return };
    let outbox = PgOutbox::open(pool.clone(), &name).await.unwrap();
    let engine = engine();
    let conto = Conto::builder(engine.clone()).outbox(outbox.clone()).build();
    for i in 0..3 {
        let out = conto.run(intent(i), |_| async { Ok::<_, ()>(()) }, |_| Settlement::default()).await;
        assert!(matches!(out, Ok(Ok(()))));
    }
    let stats = conto.flush(Duration::from_secs(10)).await.unwrap();
    assert_eq!((stats.pending, stats.delivered, stats.dead), (0, 3, 0));
    assert_eq!(engine.usage("agent-1").stats.recorded, 3, "every record reached the authority");
    drop_schema(&pool, &name).await;
}

#[tokio::test]
async fn replicas_deliver_each_record_exactly_once() {
    let Some((pool, name)) = schema("replicas").await else { return };
    let a = PgOutbox::open(pool.clone(), &name).await.unwrap();
    let b = PgOutbox::open(pool.clone(), &name).await.unwrap(); // a second replica, same table
    for record in records(&engine(), 40).await {
        a.enqueue(&record).await.unwrap();
    }
    let counting = Counting { delay: Duration::from_millis(2), ..Default::default() };
    let drain = |outbox: PgOutbox, d: Counting| async move {
        for _ in 0..200 {
            outbox.deliver_due(&d).await.unwrap();
            if outbox.refresh().await.unwrap().pending == 0 {
                return;
            }
        }
    };
    tokio::join!(drain(a.clone(), counting.clone()), drain(b.clone(), counting.clone()));
    let delivered = counting.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 40, "every record delivered");
    assert!(delivered.values().all(|n| *n == 1), "never twice: {delivered:?}");
    assert_eq!(a.refresh().await.unwrap().delivered, 40);
    drop_schema(&pool, &name).await;
}

#[tokio::test]
async fn a_dead_replicas_claimed_records_are_delivered_by_a_live_one() {
    let Some((pool, name)) = schema("lease").await else { return };
    let dying = PgOutbox::open(pool.clone(), &name).await.unwrap().lease(Duration::from_millis(300));
    let live = PgOutbox::open(pool.clone(), &name).await.unwrap();
    for record in records(&engine(), 5).await {
        dying.enqueue(&record).await.unwrap();
    }
    // The dying replica claims the records and never finishes delivering them.
    let hung = Counting { hang: true, ..Default::default() };
    let task = {
        let dying = dying.clone();
        tokio::spawn(async move { dying.deliver_due(&hung).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    let counting = Counting::default();
    assert_eq!(live.deliver_due(&counting).await.unwrap(), 0, "leased rows are not taken early");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(live.deliver_due(&counting).await.unwrap(), 5, "the lapsed lease frees them");
    assert_eq!(counting.delivered.lock().unwrap().len(), 5);
    drop_schema(&pool, &name).await;
}

/// A batch slower than its lease (each delivery 100 ms, a 300 ms lease, six records) renews
/// the lease on the rows it has yet to deliver: another replica polling meanwhile takes none,
/// and no record is delivered twice.
#[tokio::test]
async fn a_slow_batch_keeps_its_lease_and_no_record_is_delivered_twice() {
    let Some((pool, name)) = schema("renew").await else { return };
    let slow = PgOutbox::open(pool.clone(), &name).await.unwrap().lease(Duration::from_millis(300));
    let other = PgOutbox::open(pool.clone(), &name).await.unwrap().lease(Duration::from_millis(300));
    for record in records(&engine(), 6).await {
        slow.enqueue(&record).await.unwrap();
    }
    let counting = Counting { delay: Duration::from_millis(100), ..Default::default() };
    let batch = {
        let (slow, counting) = (slow.clone(), counting.clone());
        tokio::spawn(async move { slow.deliver_due(&counting).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut taken = 0;
    for _ in 0..14 {
        taken += other.deliver_due(&counting).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(batch.await.unwrap(), 6);
    assert_eq!(taken, 0, "the other replica took none of the slow batch's rows");
    let delivered = counting.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 6);
    assert!(delivered.values().all(|n| *n == 1), "never twice: {delivered:?}");
    assert_eq!(slow.refresh().await.unwrap().delivered, 6);
    drop_schema(&pool, &name).await;
}

#[tokio::test]
async fn the_record_commits_or_rolls_back_with_the_apps_own_state() {
    let Some((pool, name)) = schema("tx").await else { return };
    let outbox = PgOutbox::open(pool.clone(), &name).await.unwrap();
    sqlx::query(&format!("CREATE TABLE {name}.orders (id TEXT PRIMARY KEY, paid BOOLEAN NOT NULL)"))
        .execute(&pool)
        .await
        .unwrap();
    let engine = engine();
    let conto = Conto::builder(engine.clone()).outbox(outbox.clone()).build();

    // Rolled back: no order, no record, and the dropped approval is released.
    let approval = conto.authorize(intent(1)).await.unwrap();
    let record = approval.record_for(&Settlement::default().reference("ch_1"));
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {name}.orders VALUES ('o-1', true)")).execute(&mut *tx).await.unwrap();
    outbox.enqueue_in(&mut tx, &record).await.unwrap();
    tx.rollback().await.unwrap();
    drop(approval);
    assert_eq!(outbox.refresh().await.unwrap().pending, 0);
    assert_eq!(engine.usage("agent-1").live_reservations, 0, "released");

    // Committed: the order and its record, delivered once.
    let approval = conto.authorize(intent(2)).await.unwrap();
    let record = approval.record_for(&Settlement::default().reference("ch_2"));
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {name}.orders VALUES ('o-2', true)")).execute(&mut *tx).await.unwrap();
    outbox.enqueue_in(&mut tx, &record).await.unwrap();
    tx.commit().await.unwrap();
    let receipt = approval.queued(&record);
    assert!(receipt.queued);
    let stats = conto.flush(Duration::from_secs(10)).await.unwrap();
    assert_eq!((stats.pending, stats.delivered), (0, 1));
    assert_eq!(engine.usage("agent-1").stats.recorded, 1);
    let orders: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM {name}.orders")).fetch_one(&pool).await.unwrap();
    assert_eq!(orders, 1);
    drop_schema(&pool, &name).await;
}

#[tokio::test]
async fn bad_configuration_and_an_unreachable_server_are_typed_errors() {
    let Some((pool, name)) = schema("errors").await else { return };
    let err = PgOutbox::open(pool.clone(), "Robert'); DROP TABLE x;--").await.unwrap_err();
    assert!(matches!(err, PgOutboxError::Schema(_)), "{err}");
    let err = PgOutbox::connect("postgres://nobody@127.0.0.1:1/none").await.unwrap_err();
    assert!(matches!(err, PgOutboxError::Database(_)), "{err}");
    drop_schema(&pool, &name).await;
}

#[tokio::test]
async fn approval_tokens_are_sealed_at_rest_and_delivered_whole() {
    let Some((pool, name)) = schema("seal").await else { return };
    let sealer = || TokenSealer::new(&StaticKey::new([9; 32])).unwrap();
    let outbox = PgOutbox::open(pool.clone(), &name).await.unwrap().seal_tokens(sealer());
    let token = "cd".repeat(32);
    let mut record = records(&engine(), 1).await.remove(0);
    record.token = Some(token.clone());
    outbox.enqueue(&record).await.unwrap();
    let stored: String =
        sqlx::query_scalar(&format!("SELECT record::text FROM {name}.outbox")).fetch_one(&pool).await.unwrap();
    assert!(!stored.contains(&token), "no readable token at rest: {stored}");
    // Another replica with the same key delivers it, token whole.
    let replica = PgOutbox::open(pool.clone(), &name).await.unwrap().seal_tokens(sealer());
    let counting = Counting::default();
    assert_eq!(replica.deliver_due(&counting).await.unwrap(), 1);
    assert_eq!(counting.tokens.lock().unwrap()[0].as_deref(), Some(token.as_str()));
    // A replica without the key cannot deliver it: the record waits for one that can.
    record.authorization_id = "auth_other".into();
    outbox.enqueue(&record).await.unwrap();
    let keyless = PgOutbox::open(pool.clone(), &name).await.unwrap();
    let none = Counting::default();
    keyless.deliver_due(&none).await.unwrap();
    assert!(none.delivered.lock().unwrap().is_empty());
    assert!(keyless.dead().await.unwrap().is_empty(), "not dead: another replica may open it");
    let error: String = sqlx::query_scalar(&format!("SELECT last_error FROM {name}.outbox WHERE state = 'pending'"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(error.contains("sealed"), "{error}");
    drop_schema(&pool, &name).await;
}

#[tokio::test]
async fn delivered_records_are_pruned_after_their_keep_time_and_nothing_else_is() {
    let Some((pool, name)) = schema("prune").await else { return };
    let outbox = PgOutbox::open(pool.clone(), &name).await.unwrap().keep_delivered(Duration::ZERO);
    for record in records(&engine(), 4).await {
        outbox.enqueue(&record).await.unwrap();
    }
    // Two delivered, two still pending.
    sqlx::query(&format!(
        "UPDATE {name}.outbox SET state = 'delivered', delivered_at = now() - interval '1 second'
         WHERE id IN (SELECT id FROM {name}.outbox ORDER BY id LIMIT 2)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(outbox.prune_delivered().await.unwrap(), 2);
    let stats = outbox.refresh().await.unwrap();
    assert_eq!((stats.pending, stats.delivered), (2, 0), "pending records are never pruned");
    let kept = PgOutbox::open(pool.clone(), &name).await.unwrap();
    assert_eq!(kept.prune_delivered().await.unwrap(), 0, "the default keeps a week");
    drop_schema(&pool, &name).await;
}

/// A record PostgreSQL cannot store (a NUL character, which `jsonb` refuses; the pipeline
/// replaces one in a reference, so only a record made by hand holds one) is refused at once
/// rather than held; one held during an outage is delivered from the process when the
/// database is back (it cannot wait in the table), and the records behind it are written and
/// delivered all the same.
#[tokio::test]
async fn a_record_postgres_cannot_store_does_not_hold_up_the_others() {
    let Some((direct, name)) = schema("unstorable").await else { return };
    PgOutbox::open(direct.clone(), &name).await.unwrap();
    let proxy = common::Proxy::start().await;
    let Some(pool) = common::pool_on(&proxy.url(), 4).await else { return };
    let outbox = PgOutbox::open(pool.clone(), &name).await.unwrap();
    let engine = engine();
    let good = records(&engine, 2).await;
    let bad = |of: &QueuedRecord| {
        QueuedRecord::new(RecordKind::Reconcile, &of.authorization(), &Settlement::default().reference("0x\0"))
    };

    let err = outbox.enqueue(&bad(&good[0])).await.unwrap_err();
    assert!(err.to_string().contains("Unicode escape"), "refused with its cause: {err}");
    assert_eq!(outbox.stats().unwrap().pending, 0, "not held");

    proxy.cut().await;
    outbox.enqueue(&bad(&good[1])).await.unwrap();
    outbox.enqueue(&good[0]).await.unwrap();
    outbox.enqueue(&good[1]).await.unwrap();
    assert_eq!(outbox.stats().unwrap().pending, 3, "held in the process while the database is away");
    proxy.restore();

    #[derive(Clone, Default)]
    struct Dead(Counting, Arc<Mutex<Vec<String>>>);
    impl Deliver for Dead {
        fn deliver<'a>(
            &'a self,
            kind: RecordKind,
            authorization: &'a Authorization,
            settlement: &'a Settlement,
        ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
            self.0.deliver(kind, authorization, settlement)
        }
        fn dead(&self, authorization_id: &str, _error: AuthorityError) {
            self.1.lock().unwrap().push(authorization_id.to_owned());
        }
    }
    let deliverer = Dead::default();
    let mut delivered = 0;
    for _ in 0..50 {
        match outbox.deliver_due(&deliverer).await {
            Ok(n) => delivered += n,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await, // reconnecting
        }
        if delivered >= 2 {
            break;
        }
    }
    assert_eq!(delivered, 2, "the good records behind the bad one were delivered");
    // The one it cannot store was delivered at once, from the process (a reconcile of the
    // second authorization: counted beside its record), not reported dead.
    assert!(deliverer.1.lock().unwrap().is_empty());
    let counts = deliverer.0.delivered.lock().unwrap().clone();
    assert_eq!((counts[&good[0].authorization_id], counts[&good[1].authorization_id]), (1, 2), "{counts:?}");
    assert_eq!(outbox.stats().unwrap().pending, 0);
    drop_schema(&direct, &name).await;
}

/// Refuses every record for good.
struct Refusing;

impl Deliver for Refusing {
    fn deliver<'a>(
        &'a self,
        _: RecordKind,
        _: &'a Authorization,
        _: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(std::future::ready(Err(AuthorityError::Unsupported("refused".into()))))
    }
    fn dead(&self, _: &str, _: AuthorityError) {}
}

/// An operator puts dead records back once what failed them is fixed: delivered again on any
/// replica, their attempts counted afresh; naming others puts back none.
#[tokio::test]
async fn dead_records_are_put_back_by_an_operator() {
    let Some((pool, name)) = schema("retrydead").await else { return };
    let outbox = PgOutbox::open(pool.clone(), &name).await.unwrap();
    let recs = records(&engine(), 2).await;
    for r in &recs {
        outbox.enqueue(r).await.unwrap();
    }
    assert_eq!(outbox.deliver_due(&Refusing).await.unwrap(), 2);
    assert_eq!(outbox.refresh().await.unwrap().dead, 2);
    assert_eq!(outbox.retry_dead(Some(&["auth_other"])).await.unwrap(), 0);
    assert_eq!(outbox.retry_dead(Some(&[recs[0].authorization_id.as_str()])).await.unwrap(), 1);
    let other = PgOutbox::open(pool.clone(), &name).await.unwrap();
    let counting = Counting::default();
    assert_eq!(other.deliver_due(&counting).await.unwrap(), 1);
    assert_eq!(counting.delivered.lock().unwrap().get(&recs[0].authorization_id), Some(&1));
    assert_eq!(outbox.retry_dead(None).await.unwrap(), 1, "the other one");
    assert_eq!(other.deliver_due(&counting).await.unwrap(), 1);
    let stats = outbox.refresh().await.unwrap();
    assert_eq!((stats.pending, stats.delivered, stats.dead), (0, 2, 0), "{stats:?}");
    drop_schema(&pool, &name).await;
}

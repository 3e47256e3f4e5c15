//! `#[paid_action]` at run time: the body never runs on deny, records once on `Ok`, releases on
//! `Err`, on `?`, and when the future is dropped.
#![deny(warnings, clippy::pedantic)]
#![allow(clippy::missing_errors_doc)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use conto::{Conto, Decimal, Engine, Event, Rejection, paid_action};

const RECIPIENT: &str = "0x1111111111111111111111111111111111111111";
const SENDER: &str = "0x2222222222222222222222222222222222222222";

const POLICIES: &str = r#"{"agents": ["agent-1", "agent-9"], "policies": [{"name": "caps", "rules": [
    {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "100", "action": "ALLOW"},
    {"ruleType": "REQUIRE_APPROVAL_ABOVE", "operator": "GT", "value": "80", "action": "REQUIRE_APPROVAL"}
]}]}"#;

#[derive(Debug)]
enum PayError {
    Rejected(Rejection),
    Wallet(&'static str),
}

impl From<Rejection> for PayError {
    fn from(r: Rejection) -> Self {
        PayError::Rejected(r)
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Receipt {
    tx_hash: String,
    charged: Decimal,
}

struct Wallet {
    conto: Conto,
    transfers: AtomicUsize,
    fail: bool,
}

impl Wallet {
    fn new(engine: &Engine, fail: bool) -> Self {
        Self { conto: Conto::new(engine.clone()), transfers: AtomicUsize::new(0), fail }
    }

    #[paid_action(
        amount = amount,
        recipient = to,
        rail = transfer(chain_id = 8453, sender = SENDER),
        actor = "agent-1",
        conto = self.conto,
        category = "API_PROVIDER",
        settled_amount = |r: &Receipt| r.charged,
        reference = |r: &Receipt| r.tx_hash.clone(),
    )]
    async fn pay(&self, to: &str, amount: Decimal) -> Result<Receipt, PayError> {
        self.transfers.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(PayError::Wallet("insufficient gas"));
        }
        Ok(Receipt { tx_hash: "0xabc".into(), charged: amount - Decimal::ONE })
    }
}

fn engine() -> Engine {
    Engine::from_json(POLICIES).unwrap()
}

#[tokio::test]
async fn denied_the_body_never_runs() {
    let engine = engine();
    let wallet = Wallet::new(&engine, false);
    let err = wallet.pay(RECIPIENT, Decimal::from(101)).await.unwrap_err();
    assert_eq!(wallet.transfers.load(Ordering::SeqCst), 0);
    let PayError::Rejected(r) = err else { panic!("expected a rejection") };
    assert_eq!(r.violations()[0].kind, conto::ViolationType::PerTxLimit);
    // Pending human approval: also never runs.
    let err = wallet.pay(RECIPIENT, Decimal::from(90)).await.unwrap_err();
    assert!(matches!(err, PayError::Rejected(ref r) if r.pending_approval().is_some()));
    assert_eq!(wallet.transfers.load(Ordering::SeqCst), 0);
    assert_eq!(engine.usage("agent-1").stats.approved, 0);
}

#[tokio::test]
async fn approved_runs_once_and_records_the_actual_amount_and_reference() {
    let engine = engine();
    let references = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = references.clone();
    let conto = Conto::builder(engine.clone())
        .observe(move |e| {
            if let Event::Recorded { recorded, reference, .. } = e {
                sink.lock().unwrap().push((recorded.amount.to_string(), reference.clone()));
            }
        })
        .build();
    let wallet = Wallet { conto, transfers: AtomicUsize::new(0), fail: false };
    let receipt = wallet.pay(RECIPIENT, Decimal::from(50)).await.unwrap();
    assert_eq!(receipt.charged, Decimal::from(49));
    assert_eq!(wallet.transfers.load(Ordering::SeqCst), 1);
    let stats = engine.usage("agent-1").stats;
    assert_eq!((stats.recorded, stats.total_spent), (1, Decimal::from(49)));
    assert_eq!(*references.lock().unwrap(), vec![("49".to_owned(), Some("0xabc".to_owned()))]);
}

#[tokio::test]
async fn an_err_releases_and_records_nothing() {
    let engine = engine();
    let wallet = Wallet::new(&engine, true);
    assert!(matches!(wallet.pay(RECIPIENT, Decimal::from(10)).await, Err(PayError::Wallet(_))));
    let stats = engine.usage("agent-1").stats;
    assert_eq!((stats.approved, stats.recorded, stats.released), (1, 0, 1));
}

#[paid_action(
    amount = "5",
    recipient = RECIPIENT,
    rail = x402(resource_url = "https://api.example.com/search"),
    actor = "agent-1",
    conto = conto,
)]
async fn question_mark_and_return(conto: &Conto, mode: u8, runs: &AtomicUsize) -> Result<u8, PayError> {
    runs.fetch_add(1, Ordering::SeqCst);
    if mode == 0 {
        return Ok(0);
    }
    let parsed: u8 = if mode == 1 { Err(PayError::Wallet("parse"))? } else { mode };
    Ok(parsed)
}

#[tokio::test]
async fn question_mark_and_early_return_still_record_or_release() {
    let engine = engine();
    let conto = Conto::new(engine.clone());
    let runs = AtomicUsize::new(0);
    assert_eq!(question_mark_and_return(&conto, 0, &runs).await.unwrap(), 0); // early return: recorded
    assert!(matches!(question_mark_and_return(&conto, 1, &runs).await, Err(PayError::Wallet("parse")))); // `?`: released
    assert_eq!(question_mark_and_return(&conto, 7, &runs).await.unwrap(), 7);
    let stats = engine.usage("agent-1").stats;
    assert_eq!((runs.load(Ordering::SeqCst), stats.recorded, stats.released), (3, 2, 1));
}

#[paid_action(
    amount = 10,
    recipient = RECIPIENT,
    rail = transfer(chain_id = 1, sender = SENDER),
    actor = "agent-1",
    conto = conto,
    reference = |(): &()| "0xfeed",
)]
async fn hangs(conto: Conto, started: Arc<tokio::sync::Notify>) -> Result<(), PayError> {
    started.notify_one();
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test]
async fn dropping_the_future_mid_settlement_releases() {
    let engine = engine();
    let started = Arc::new(tokio::sync::Notify::new());
    let task = tokio::spawn(hangs(Conto::new(engine.clone()), started.clone()));
    started.notified().await;
    assert_eq!(engine.usage("agent-1").live_reservations, 1);
    task.abort();
    let _ = task.await;
    let usage = engine.usage("agent-1");
    assert_eq!((usage.live_reservations, usage.stats.released, usage.stats.recorded), (0, 1, 0));
}

#[paid_action(amount = amount, recipient = RECIPIENT, rail = card(merchant = "Acme"), conto = conto)]
async fn no_actor(conto: &Conto, amount: &str) -> Result<(), PayError> {
    Ok(())
}

#[tokio::test]
async fn invalid_inputs_are_typed_rejections_not_panics() {
    let engine = engine();
    let conto = Conto::new(engine.clone());
    // No actor and no default actor.
    let Err(PayError::Rejected(r)) = no_actor(&conto, "1").await else { panic!() };
    assert!(matches!(r.kind(), conto::RejectionKind::Invalid(conto::IntentError::MissingActor)), "{r:?}");
    assert_eq!(r.source(), conto::DecisionSource::Input);
    // A default actor fills in; a negative amount is refused before anyone is asked.
    let conto = Conto::builder(engine.clone()).default_actor("agent-9").build();
    no_actor(&conto, "1").await.unwrap();
    let Err(PayError::Rejected(r)) = no_actor(&conto, "-3").await else { panic!() };
    assert!(
        matches!(r.kind(), conto::RejectionKind::Invalid(conto::IntentError::Amount(conto::AmountError::Negative(_)))),
        "{r:?}"
    );
    assert_eq!(engine.usage("agent-9").stats.recorded, 1);
    // The same call site under another handle takes that handle's default actor.
    let conto = Conto::builder(engine.clone()).default_actor("agent-1").build();
    no_actor(&conto, "1").await.unwrap();
    assert_eq!((engine.usage("agent-1").stats.recorded, engine.usage("agent-9").stats.recorded), (1, 1));
}

#[paid_action(amount = "-0.50", recipient = RECIPIENT, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto)]
async fn negative_literal(conto: &Conto, runs: &AtomicUsize) -> Result<(), PayError> {
    runs.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn a_bad_literal_amount_is_refused_on_every_call_not_only_the_first() {
    // A literal amount is read once per call site and kept: what is kept is the typed
    // refusal, so every call is refused the same way and no body runs.
    let engine = engine();
    let conto = Conto::new(engine.clone());
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        let Err(PayError::Rejected(r)) = negative_literal(&conto, &runs).await else { panic!("refused") };
        assert!(
            matches!(
                r.kind(),
                conto::RejectionKind::Invalid(conto::IntentError::Amount(conto::AmountError::Negative(_)))
            ),
            "{r:?}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(engine.usage("agent-1").stats.approved, 0);
}

/// Every argument of the intent taken from the call, for the call-site memory's tests.
#[paid_action(amount = amount, recipient = to, rail = transfer(chain_id = chain, sender = from), actor = actor,
    category = category, conto = conto, approval = approved, reference = |_: &conto::PaymentIntent| "0xfeed")]
async fn pay_anything(
    conto: &Conto,
    actor: &str,
    to: String,
    from: &str,
    chain: u64,
    category: Option<&str>,
    amount: &str,
) -> Result<conto::PaymentIntent, PayError> {
    Ok((*approved.intent).clone())
}

#[tokio::test]
async fn a_call_site_decides_on_each_calls_own_arguments_however_often_they_change() {
    // A call site remembers its last intent and copies it when the same arguments come back:
    // every change of any argument, back and forth, must still reach the decision as written.
    let engine = engine();
    let conto = Conto::new(engine.clone());
    let other = "0x3333333333333333333333333333333333333333";
    // (actor, recipient, sender, chain, category, amount)
    let calls = [
        ("agent-1", RECIPIENT, SENDER, 8453, Some("API_PROVIDER"), "1"),
        ("agent-1", RECIPIENT, SENDER, 8453, Some("API_PROVIDER"), "1"),
        ("agent-9", RECIPIENT, SENDER, 8453, Some("API_PROVIDER"), "1"),
        ("agent-9", other, SENDER, 8453, Some("API_PROVIDER"), "1"),
        ("agent-9", other, other, 8453, Some("API_PROVIDER"), "1"),
        ("agent-9", other, other, 1, Some("API_PROVIDER"), "1"),
        ("agent-9", other, other, 1, None, "1"),
        ("agent-9", other, other, 1, None, "2.50"),
    ];
    let mut keys = std::collections::HashSet::new();
    for round in 0..2 {
        for (actor, to, from, chain, category, amount) in calls {
            let got = pay_anything(&conto, actor, to.to_owned(), from, chain, category, amount).await.unwrap();
            let mut want =
                conto::PaymentIntent::builder(actor, amount, conto::Rail::transfer(chain, from).unwrap()).recipient(to);
            if let Some(c) = category {
                want = want.category(c);
            }
            let want = want.idempotency_key(got.idempotency_key.as_str()).build().unwrap();
            assert_eq!(got, want, "round {round}");
            assert_eq!(got.amount, amount.parse().unwrap());
            assert!(keys.insert(got.idempotency_key.clone()), "every call is its own attempt: a fresh key");
        }
    }
    // Upper case is the same address, lower-cased as ever; a bad one after good ones is refused.
    let upper = pay_anything(&conto, "agent-1", RECIPIENT.to_uppercase().replace("0X", "0x"), SENDER, 1, None, "1");
    assert_eq!(upper.await.unwrap().recipient.unwrap().as_str(), RECIPIENT);
    let bad = pay_anything(&conto, "agent-1", "0x12".to_owned(), SENDER, 1, None, "1").await;
    let Err(PayError::Rejected(r)) = bad else { panic!("a bad recipient paid") };
    assert!(matches!(r.kind(), conto::RejectionKind::Invalid(_)), "{r:?}");
    let bad = pay_anything(&conto, "agent-1", RECIPIENT.to_owned(), SENDER, 1, None, "-1").await;
    assert!(matches!(bad, Err(PayError::Rejected(_))), "a negative amount after good ones is refused");
    let Err(PayError::Rejected(r)) = pay_anything(&conto, "agent-2", RECIPIENT.to_owned(), SENDER, 1, None, "1").await
    else {
        panic!("an unprovisioned actor paid")
    };
    assert!(matches!(r.kind(), conto::RejectionKind::UnknownActor(_)), "{r:?}");
    assert_eq!(engine.usage("agent-1").stats.recorded, 2 * 2 + 1);
    assert_eq!(engine.usage("agent-9").stats.recorded, 12);
}

#[paid_action(amount = "1", recipient = RECIPIENT, rail = card(merchant = "Acme"), actor = "agent-1", conto = conto,
    approval = approved)]
async fn pay_and_keep(conto: &Conto) -> Result<conto::Authorization, PayError> {
    Ok(approved)
}

#[tokio::test]
async fn an_intent_still_held_is_never_changed_by_the_next_call() {
    // A call site hands its last intent out again, key renewed, once the last call has let go
    // of it. Authorizations kept past their call keep their intents exactly as they were.
    let conto = Conto::new(engine());
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(pay_and_keep(&conto).await.unwrap());
    }
    let before: Vec<_> = kept.iter().map(|a| a.intent.idempotency_key.clone()).collect();
    let mut keys: std::collections::HashSet<_> = before.iter().cloned().collect();
    for _ in 0..3 {
        // Dropped at once: the next call may reuse its intent.
        let key = pay_and_keep(&conto).await.unwrap().intent.idempotency_key.clone();
        assert!(keys.insert(key), "every call is its own attempt: a fresh key");
    }
    let after: Vec<_> = kept.iter().map(|a| a.intent.idempotency_key.clone()).collect();
    assert_eq!(before, after, "a kept authorization's intent never changes");
    assert_eq!(keys.len(), 6);
}

#[paid_action(amount = "1", recipient = RECIPIENT, rail = card(merchant = "Acme"), actor = actor, conto = conto)]
async fn pay_as(conto: &Conto, actor: &str, runs: &AtomicUsize) -> Result<(), PayError> {
    runs.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn an_unprovisioned_actor_is_refused_and_the_body_never_runs() {
    let engine = engine();
    let conto = Conto::new(engine.clone());
    let runs = AtomicUsize::new(0);
    for invented in ["agent-2", "Agent-1", "intruder"] {
        let Err(PayError::Rejected(r)) = pay_as(&conto, invented, &runs).await else { panic!("{invented} paid") };
        assert!(matches!(r.kind(), conto::RejectionKind::UnknownActor(a) if a.as_str() == invented), "{r:?}");
        assert!(!r.is_retryable());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    pay_as(&conto, "agent-1", &runs).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[paid_action(amount = "1", rail = card(merchant = "Acme"), actor = "agent-1")]
async fn uses_the_installed_default() -> Result<(), PayError> {
    Ok(())
}

#[tokio::test]
async fn without_an_authorizer_the_rejection_says_not_configured() {
    // This binary never installs a default.
    let Err(PayError::Rejected(r)) = uses_the_installed_default().await else { panic!("ran without an authority") };
    assert!(matches!(r.kind(), conto::RejectionKind::NotConfigured), "{r:?}");
    assert_eq!(r.source(), conto::DecisionSource::NotConfigured);
    assert!(!r.is_retryable());
    // The message says what to do.
    let message = r.to_string();
    assert!(message.contains("conto = ...") && message.contains("conto::install_default"), "{message}");
}

#[test]
fn the_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let engine = engine();
    let wallet = Wallet::new(&engine, false);
    let fut = wallet.pay(RECIPIENT, Decimal::ONE);
    assert_send(&fut);
}

/// The actor named by the call site, which may be absent at run time.
#[paid_action(amount = "1", recipient = RECIPIENT, rail = card(merchant = "Acme"), actor = actor, conto = conto)]
async fn maybe_actor(conto: &Conto, actor: Option<String>) -> Result<(), PayError> {
    Ok(())
}

#[tokio::test]
async fn an_actor_named_but_absent_is_missing_never_the_default_actor() {
    // A handle with a default actor, and a call site that names its actor from the caller (an
    // `Option`, unset for an anonymous caller): the anonymous call is refused, not paid by the
    // default actor.
    let engine = engine();
    let conto = Conto::builder(engine.clone()).default_actor("agent-1").build();
    for _ in 0..2 {
        let Err(PayError::Rejected(r)) = maybe_actor(&conto, None).await else { panic!("refused") };
        assert!(matches!(r.kind(), conto::RejectionKind::Invalid(conto::IntentError::MissingActor)), "{r:?}");
    }
    assert_eq!(engine.usage("agent-1").stats.approved, 0);
    maybe_actor(&conto, Some("agent-9".into())).await.unwrap();
    assert_eq!((engine.usage("agent-1").stats.approved, engine.usage("agent-9").stats.recorded), (0, 1));
}

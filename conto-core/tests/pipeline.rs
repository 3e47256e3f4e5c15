//! The one pipeline, through the public API: authorize -> settle -> record | release.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use conto_core::{
    ApprovalMode, AuthorityError, Authorization, Authorizer, BoxFuture, Conto, Decimal, Decision, DecisionSource,
    Event, PaymentIntent, PendingApproval, Recorded, Rejection, RejectionKind, Settlement, ViolationType,
};

#[derive(Debug)]
enum PayError {
    Rejected(Rejection),
    Transfer(&'static str),
}

impl From<Rejection> for PayError {
    fn from(r: Rejection) -> Self {
        PayError::Rejected(r)
    }
}

fn events(conto_builder: conto_core::ContoBuilder) -> (Conto, Arc<Mutex<Vec<Event>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (conto_builder.observe(move |e| sink.lock().unwrap().push(e.clone())).build(), seen)
}

fn capped_engine() -> conto_core::Engine {
    engine_at(
        &policy(&[
            &rule("MAX_AMOUNT", "LTE", "100", "ALLOW"),
            &rule("DAILY_LIMIT", "LTE", "150", "ALLOW"),
            &rule("REQUIRE_APPROVAL_ABOVE", "GT", "80", "REQUIRE_APPROVAL"),
        ]),
        "2026-06-10T12:00:00Z",
    )
    .0
}

#[tokio::test]
async fn denied_never_runs_the_settlement() {
    let engine = capped_engine();
    let conto = Conto::new(engine.clone());
    let runs = AtomicUsize::new(0);
    let result: Result<(), PayError> = conto
        .guard(
            transfer("101"),
            |_| async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            |_| Settlement::default(),
        )
        .await;
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let Err(PayError::Rejected(r)) = result else { panic!("expected a rejection") };
    assert!(r.is_denied() && !r.is_retryable());
    assert_eq!(r.violations()[0].kind, ViolationType::PerTxLimit);
    assert_eq!(r.source(), DecisionSource::Policy);
    assert!(r.to_string().starts_with("payment denied by policy (PER_TX_LIMIT)"), "{r}");
    assert_eq!(engine.usage("agent-1").stats.approved, 0);
}

#[tokio::test]
async fn pending_approval_never_runs_the_settlement_and_is_retryable() {
    let conto = Conto::new(capped_engine());
    let runs = AtomicUsize::new(0);
    let result: Result<(), PayError> = conto
        .guard(
            transfer("90"),
            |_| async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            |_| Settlement::default(),
        )
        .await;
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let Err(PayError::Rejected(r)) = result else { panic!() };
    assert!(r.is_retryable());
    assert!(r.pending_approval().unwrap().approval_request_id.starts_with("apr_"));
}

#[tokio::test]
async fn approved_runs_once_and_records_the_actual_amount_and_reference() {
    let engine = capped_engine();
    let (conto, seen) = events(Conto::builder(engine.clone()));
    let runs = AtomicUsize::new(0);
    let result: Result<&str, PayError> = conto
        .guard(
            transfer("50"),
            |approval: &conto_core::Approval| {
                assert_eq!(approval.authorization().amount.to_string(), "50");
                async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok("0xfeed")
                }
            },
            |tx| Settlement::default().amount("42.5".parse().unwrap()).reference(*tx),
        )
        .await;
    assert_eq!(result.unwrap(), "0xfeed");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let usage = engine.usage("agent-1");
    assert_eq!(usage.stats.recorded, 1);
    assert_eq!(usage.stats.total_spent, "42.5".parse::<Decimal>().unwrap());
    assert_eq!(usage.live_reservations, 0);
    let seen = seen.lock().unwrap();
    let recorded: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Recorded { recorded, reference, .. } => Some((recorded.amount.to_string(), reference.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(recorded, vec![("42.5".to_owned(), Some("0xfeed".to_owned()))]);
}

#[tokio::test]
async fn settlement_error_releases_and_records_nothing() {
    let engine = capped_engine();
    let conto = Conto::new(engine.clone());
    let result: Result<(), PayError> =
        conto.guard(transfer("50"), |_| async { Err(PayError::Transfer("rpc down")) }, |_| Settlement::default()).await;
    assert!(matches!(result, Err(PayError::Transfer("rpc down"))));
    tokio::task::yield_now().await;
    let usage = engine.usage("agent-1");
    assert_eq!((usage.stats.recorded, usage.stats.released, usage.live_reservations), (0, 1, 0));
    assert_eq!(usage.counters.iter().map(|c| c.reserved + c.spent).sum::<Decimal>(), Decimal::ZERO);
}

#[tokio::test]
async fn question_mark_and_early_return_paths() {
    async fn body(fail_early: bool, return_early: bool) -> Result<u32, PayError> {
        if return_early {
            return Ok(7);
        }
        let n: u32 = if fail_early { Err(PayError::Transfer("parse"))? } else { 3 };
        Ok(n)
    }
    let engine = capped_engine();
    let conto = Conto::new(engine.clone());
    let early = conto.guard(transfer("10"), |_| body(false, true), |_| Settlement::default()).await;
    assert_eq!(early.unwrap(), 7);
    let failed = conto.guard(transfer("10"), |_| body(true, false), |_| Settlement::default()).await;
    assert!(matches!(failed, Err(PayError::Transfer("parse"))));
    tokio::task::yield_now().await;
    let s = engine.usage("agent-1").stats;
    assert_eq!((s.recorded, s.released), (1, 1));
}

#[tokio::test]
async fn dropping_the_future_mid_settlement_releases() {
    let engine = capped_engine();
    let conto = Conto::new(engine.clone());
    let started = Arc::new(tokio::sync::Notify::new());
    let notify = started.clone();
    let task = tokio::spawn(async move {
        let _: Result<(), PayError> = conto
            .guard(
                transfer("60"),
                |_| async move {
                    notify.notify_one();
                    std::future::pending::<()>().await;
                    Ok(())
                },
                |_| Settlement::default(),
            )
            .await;
    });
    started.notified().await;
    assert_eq!(engine.usage("agent-1").live_reservations, 1);
    task.abort();
    let _ = task.await;
    let usage = engine.usage("agent-1");
    assert_eq!((usage.live_reservations, usage.stats.released, usage.stats.recorded), (0, 1, 0));
}

#[tokio::test]
async fn wait_mode_proceeds_once_a_human_approves() {
    let engine = capped_engine();
    let (conto, _) = events(
        Conto::builder(engine.clone())
            .approval(ApprovalMode::Wait(Duration::from_secs(5)))
            .poll_interval(Duration::from_millis(5)),
    );
    let approver = engine.clone();
    // Approve whatever is pending as soon as it appears.
    let approve = tokio::spawn(async move {
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let ids = approver.pending_requests();
            if let Some(id) = ids.first() {
                approver.resolve_approval(id, true).unwrap();
                return;
            }
        }
    });
    let runs = AtomicUsize::new(0);
    let result: Result<(), PayError> = conto
        .guard(
            transfer("90"),
            |_| async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            |_| Settlement::default(),
        )
        .await;
    approve.await.unwrap();
    result.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(engine.usage("agent-1").stats.recorded, 1);
}

#[tokio::test]
async fn wait_mode_gives_up_at_its_bound() {
    let conto = Conto::builder(capped_engine())
        .approval(ApprovalMode::Wait(Duration::from_millis(30)))
        .poll_interval(Duration::from_millis(5))
        .build();
    let result: Result<(), PayError> =
        conto.guard(transfer("90"), |_| async { Ok(()) }, |_| Settlement::default()).await;
    let Err(PayError::Rejected(r)) = result else { panic!() };
    assert!(matches!(r.kind(), RejectionKind::ApprovalRequired(_)));
}

/// Money moved and its record is on its way to a remote authority when the caller's future is
/// dropped (a timeout around the call, a client gone): the record still arrives, and the
/// approval is not released.
#[tokio::test]
async fn a_record_on_its_way_survives_its_caller_being_dropped() {
    let engine = capped_engine();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let conto = Conto::new(Remote(engine.clone(), Some(gate.clone())));
    let settled = Arc::new(AtomicUsize::new(0));
    let ran = settled.clone();
    let call = conto.guard(
        transfer("60"),
        |_| async move {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, PayError>(())
        },
        |_| Settlement::default().reference("0xpaid"),
    );
    // Dropped while its record waits at the gate.
    assert!(tokio::time::timeout(Duration::from_millis(50), call).await.is_err(), "the record waits");
    assert_eq!(settled.load(Ordering::SeqCst), 1, "the money moved");
    gate.add_permits(1);
    let mut usage = engine.usage("agent-1");
    for _ in 0..200 {
        if usage.stats.recorded == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        usage = engine.usage("agent-1");
    }
    assert_eq!((usage.stats.recorded, usage.stats.released, usage.live_reservations), (1, 0, 0));
}

/// A graceful shutdown (`flush`, then the runtime ends) does not cut off a record still on its
/// way in a task of its own: `flush` waits for it, up to its deadline.
#[tokio::test]
async fn flush_waits_for_a_record_still_on_its_way() {
    let engine = capped_engine();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let conto = Conto::new(Remote(engine.clone(), Some(gate.clone())));
    let call = conto.guard(transfer("60"), |_| async { Ok::<_, PayError>(()) }, |_| Settlement::default());
    assert!(tokio::time::timeout(Duration::from_millis(50), call).await.is_err(), "the record waits");
    let opens = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate.add_permits(1);
    });
    assert_eq!(conto.flush(Duration::from_secs(10)).await, None, "no outbox");
    let usage = engine.usage("agent-1");
    assert_eq!((usage.stats.recorded, usage.live_reservations), (1, 0), "recorded before flush returned");
    opens.await.unwrap();
}

/// An authority that never answers, or answers with an error.
struct Broken {
    hang: bool,
}

impl Authorizer for Broken {
    fn authorize<'a>(
        &'a self,
        _: &'a std::sync::Arc<PaymentIntent>,
    ) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
        let hang = self.hang;
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            Err(AuthorityError::invalid_response("not JSON"))
        })
    }
    fn record<'a>(
        &'a self,
        _: &'a Authorization,
        _: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        unreachable!("nothing is ever approved")
    }
    fn release(&self, _: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>> {
        unreachable!("nothing is ever approved")
    }
    fn approval_status<'a>(
        &'a self,
        _: &'a PaymentIntent,
        _: &'a PendingApproval,
    ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>> {
        Box::pin(async { Ok(None) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_authority_is_denied_at_the_deadline() {
    let conto = Conto::builder(Broken { hang: true }).deadline(Duration::from_millis(2000)).build();
    let runs = AtomicUsize::new(0);
    let started = tokio::time::Instant::now();
    let result: Result<(), PayError> = conto
        .guard(
            transfer("1"),
            |_| async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            |_| Settlement::default(),
        )
        .await;
    assert_eq!(started.elapsed(), Duration::from_millis(2000));
    let Err(PayError::Rejected(r)) = result else { panic!() };
    assert_eq!(r.source(), DecisionSource::Timeout);
    assert!(r.is_denied() && r.is_retryable());
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_garbage_answer_is_denied_as_unavailable() {
    let conto = Conto::new(Arc::new(Broken { hang: false }));
    let result: Result<(), PayError> =
        conto.guard(transfer("1"), |_| async { Ok(()) }, |_| Settlement::default()).await;
    let Err(PayError::Rejected(r)) = result else { panic!() };
    assert_eq!(r.source(), DecisionSource::Unavailable);
    assert!(matches!(r.kind(), RejectionKind::Unavailable { .. }));
}

#[tokio::test]
async fn an_invalid_intent_is_refused_before_anyone_is_asked() {
    let conto = Conto::new(Broken { hang: true });
    let mut intent = transfer("1");
    intent.recipient = None;
    let result: Result<(), PayError> = conto.guard(intent, |_| async { Ok(()) }, |_| Settlement::default()).await;
    let Err(PayError::Rejected(r)) = result else { panic!() };
    assert!(matches!(r.kind(), RejectionKind::Invalid { .. }), "{r:?}");
}

/// The embedded engine as a remote Conto looks to the pipeline: it issues approval tokens for
/// transfers, and its record may wait at a gate (a round trip that has not come back yet).
struct Remote(conto_core::Engine, Option<Arc<tokio::sync::Semaphore>>);

impl Authorizer for Remote {
    fn authorize<'a>(
        &'a self,
        intent: &'a std::sync::Arc<PaymentIntent>,
    ) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
        Box::pin(async move {
            let mut decision = self.0.authorize(intent).await?;
            if let conto_core::Verdict::Approved(a) = &mut decision.verdict {
                a.token = Some("7f3a9c2e5b8d1f4a6c0e3b7d9a2f5c8e1b4d7a0c3f6e9b2d5a8c1f4e7b0d3a6c".into());
            }
            Ok(decision)
        })
    }
    fn record<'a>(
        &'a self,
        a: &'a Authorization,
        s: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(async move {
            if let Some(gate) = &self.1 {
                let _open = gate.acquire().await.unwrap();
            }
            self.0.record(a, s).await
        })
    }
    fn release(&self, a: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>> {
        self.0.release(a)
    }
    fn approval_status<'a>(
        &'a self,
        i: &'a PaymentIntent,
        p: &'a PendingApproval,
    ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>> {
        self.0.approval_status(i, p)
    }
}

#[tokio::test]
async fn the_embedded_engine_issues_no_token_in_process() {
    let approval = Conto::new(capped_engine()).authorize(transfer("1")).await.unwrap();
    assert!(approval.authorization().token.is_none());
}

#[tokio::test]
async fn secrets_stay_out_of_debug_output() {
    let conto = Conto::new(Remote(capped_engine(), None));
    let approval = conto.authorize(transfer("1")).await.unwrap();
    let token = conto_core::ExposeSecret::expose_secret(approval.authorization().token.as_ref().unwrap()).to_owned();
    assert_eq!(token.len(), 64);
    let debug = format!("{approval:?} {:?}", approval.authorization());
    assert!(!debug.contains(&token), "{debug}");
}

#[tokio::test]
async fn an_over_approval_record_is_clamped_with_a_typed_warning_and_replays_the_same() {
    let engine = capped_engine();
    let (conto, seen) = events(Conto::builder(engine.clone()));
    let approval = conto.authorize(transfer("4")).await.unwrap();
    let authorization = approval.authorization().clone();
    let recorded = approval.record(Settlement::default().amount("6".parse().unwrap())).await.unwrap();
    assert_eq!(recorded.amount.to_string(), "4", "never more than approved");
    let clamped: Vec<(String, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::RecordClamped { approved, settled, .. } => Some((approved.to_string(), settled.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(clamped, vec![("4".to_owned(), "6".to_owned())]);
    // The authority itself clamps too, and a replay answers the same.
    let again = engine.settle(&authorization, &Settlement::default().amount("6".parse().unwrap())).unwrap();
    assert_eq!(again.amount, recorded.amount);
}

#[tokio::test]
async fn invalid_input_is_its_own_decision_source() {
    let conto = Conto::new(capped_engine());
    let mut intent = transfer("1");
    intent.recipient = None;
    let r = conto.authorize(intent).await.unwrap_err();
    assert!(matches!(r.kind(), RejectionKind::Invalid(conto_core::IntentError::MissingRecipient(_))), "{r:?}");
    assert_eq!(r.source(), DecisionSource::Input);
    assert!(!r.is_retryable());
}

#[tokio::test]
async fn an_agent_scoped_allowlist_cannot_be_escaped_by_renaming() {
    let allowlist = format!(
        r#"[{{"name": "agent-1 providers", "agentIds": ["agent-1"], "rules": [{{"ruleType": "ALLOWED_COUNTERPARTIES",
            "operator": "IN_LIST", "value": "[\"{RECIPIENT}\"]", "action": "ALLOW"}}]}}]"#
    );
    let (engine, _) = engine_at(&allowlist, "2026-06-10T12:00:00Z");
    let conto = Conto::new(engine.clone());
    let denied = conto.authorize(transfer_to("agent-1", "1", OTHER)).await.unwrap_err();
    assert_eq!(denied.violations()[0].kind, ViolationType::WhitelistViolation);
    // Any other spelling of the payer is not agent-1 and not provisioned: refused, no budget.
    for renamed in ["agent-1x", "Agent-1", "agent-1.", "mallory"] {
        let r = conto.authorize(transfer_to(renamed, "1", OTHER)).await.unwrap_err();
        assert!(matches!(r.kind(), RejectionKind::UnknownActor(a) if a.as_str() == renamed), "{renamed}: {r:?}");
    }
    for bad in [" agent-1", "agent-1 ", "agent\u{200b}-1"] {
        assert!(conto_core::PaymentIntent::builder(bad, "1", conto_core::Rail::card("Acme").unwrap()).build().is_err());
    }
    assert_eq!(engine.usage("agent-1").stats.approved, 0);
}

/// A NUL character no store keeps (PostgreSQL's `text` and `jsonb` refuse it): in an intent's
/// text it is refused before anything runs, naming the field; in a settlement's reference,
/// after money moved, it is recorded with U+FFFD in its place rather than lost.
#[tokio::test]
async fn a_nul_character_is_refused_in_an_intent_and_replaced_in_a_reference() {
    let engine = capped_engine();
    let (conto, seen) = events(Conto::builder(engine.clone()));
    let transfer_rail = || conto_core::Rail::transfer(8453, SENDER).unwrap();
    let intents = [
        ("purpose", PaymentIntent::builder("agent-1", "1", transfer_rail()).recipient(RECIPIENT).purpose("a\0b")),
        ("category", PaymentIntent::builder("agent-1", "1", transfer_rail()).recipient(RECIPIENT).category("X\0")),
        ("merchantName", PaymentIntent::builder("agent-1", "1", conto_core::Rail::card("Sh\0p").unwrap())),
        (
            "context",
            PaymentIntent::builder("agent-1", "1", transfer_rail())
                .recipient(RECIPIENT)
                .context("task", serde_json::json!({"steps": ["ok", "b\u{0}d"]})),
        ),
    ];
    for (field, builder) in intents {
        match builder.build() {
            Err(conto_core::IntentError::Field { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected a typed refusal, got {other:?}"),
        }
    }
    // Built another way (deserialized), the pipeline still refuses it before the body runs.
    let mut sneaky = serde_json::to_value(transfer("1")).unwrap();
    sneaky["purpose"] = serde_json::json!("a\u{0}b");
    let sneaky: PaymentIntent = serde_json::from_value(sneaky).unwrap();
    let ran = AtomicUsize::new(0);
    let refused: Result<(), PayError> = conto
        .guard(
            sneaky,
            |_: &conto_core::Approval| async {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            |_| Settlement::default(),
        )
        .await;
    let Err(PayError::Rejected(r)) = refused else { panic!("expected a rejection") };
    assert!(matches!(r.kind(), RejectionKind::Invalid(conto_core::IntentError::Field { field: "purpose", .. })), "{r}");
    assert_eq!(ran.load(Ordering::SeqCst), 0);

    let paid: Result<(), PayError> = conto
        .guard(
            transfer("5"),
            |_: &conto_core::Approval| async { Ok(()) },
            |_| Settlement::default().reference("0xab\0cd"),
        )
        .await;
    paid.unwrap();
    assert_eq!(engine.usage("agent-1").stats.total_spent, Decimal::from(5));
    let references: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Recorded { reference, .. } => reference.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(references, ["0xab\u{FFFD}cd"]);
}

/// A stand-in that approves and then cannot record (its own store down, as a shared ledger
/// can be): the authority still hears of the spend through the reconcile, so it is counted
/// somewhere, not nowhere.
#[tokio::test]
async fn a_spend_the_stand_in_cannot_record_is_still_reconciled_with_the_authority() {
    /// Down for decisions; counts what it is told by reconcile in its engine.
    struct DownButCounting(conto_core::Engine);
    impl Authorizer for DownButCounting {
        fn authorize<'a>(&'a self, _: &'a Arc<PaymentIntent>) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
            Box::pin(async { Err(conto_core::Outage::Connect("refused".into()).into()) })
        }
        fn record<'a>(
            &'a self,
            _: &'a Authorization,
            _: &'a Settlement,
        ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
            unreachable!("it approved nothing")
        }
        fn release(&self, _: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>> {
            unreachable!("it approved nothing")
        }
        fn approval_status<'a>(
            &'a self,
            _: &'a PaymentIntent,
            _: &'a PendingApproval,
        ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>> {
            Box::pin(async { Ok(None) })
        }
        fn reconcile<'a>(
            &'a self,
            a: &'a Authorization,
            s: &'a Settlement,
        ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
            self.0.reconcile(a, s)
        }
    }
    /// Approves through its engine; its record fails as a store outage.
    struct CannotRecord(conto_core::Engine);
    impl Authorizer for CannotRecord {
        fn authorize<'a>(&'a self, i: &'a Arc<PaymentIntent>) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
            self.0.authorize(i)
        }
        fn record<'a>(
            &'a self,
            _: &'a Authorization,
            _: &'a Settlement,
        ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
            Box::pin(async { Err(conto_core::Outage::Ledger("the store is down".into()).into()) })
        }
        fn release(&self, a: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>> {
            self.0.release(a)
        }
        fn approval_status<'a>(
            &'a self,
            i: &'a PaymentIntent,
            p: &'a PendingApproval,
        ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>> {
            self.0.approval_status(i, p)
        }
    }
    let authority = capped_engine();
    let conto = Conto::builder(DownButCounting(authority.clone())).stand_in(CannotRecord(capped_engine())).build();
    let paid: Result<(), PayError> =
        conto.guard(transfer("7"), |_: &conto_core::Approval| async { Ok(()) }, |_| Settlement::default()).await;
    paid.unwrap();
    let usage = authority.usage("agent-1");
    assert_eq!(usage.stats.total_spent, Decimal::from(7), "the authority counted the stand-in's spend");

    // The usual stand-in, an embedded engine, whose journal fails as the spend is recorded
    // (it answers in place, not as a future).
    #[derive(Clone, Default)]
    struct Journal(Arc<std::sync::atomic::AtomicBool>);
    impl conto_core::journal::Journal for Journal {
        fn append(&self, _: &conto_core::journal::Entry) -> Result<(), conto_core::journal::JournalError> {
            if self.0.load(Ordering::SeqCst) {
                return Err(conto_core::journal::JournalError("disk full".into()));
            }
            Ok(())
        }
        fn replay(&self) -> Result<Vec<conto_core::journal::Entry>, conto_core::journal::JournalError> {
            Ok(Vec::new())
        }
    }
    let journal = Journal::default();
    let stand_in = conto_core::Engine::builder()
        .policies(conto_core::PolicySet::from_json(&policy(&[&rule("MAX_AMOUNT", "LTE", "100", "ALLOW")])).unwrap())
        .actors(["agent-1"])
        .unwrap()
        .build_journaled(journal.clone())
        .unwrap();
    let authority = capped_engine();
    let conto = Conto::builder(DownButCounting(authority.clone())).stand_in(stand_in).build();
    let down = journal.0.clone();
    let paid: Result<(), PayError> = conto
        .guard(
            transfer("9"),
            |_: &conto_core::Approval| async move {
                down.store(true, Ordering::SeqCst);
                Ok(())
            },
            |_| Settlement::default(),
        )
        .await;
    paid.unwrap();
    assert_eq!(authority.usage("agent-1").stats.total_spent, Decimal::from(9), "reconciled though the journal failed");
}

/// An observer that panics (app code) is skipped: the payment is recorded, the next ones too,
/// and the observers after it are still told.
#[tokio::test]
async fn a_panicking_observer_stops_nothing() {
    let engine = capped_engine();
    let told = Arc::new(AtomicUsize::new(0));
    let after = told.clone();
    let conto = Conto::builder(engine.clone())
        .observe(|e| {
            if matches!(e, Event::Recorded { .. }) {
                panic!("an observer's bug");
            }
        })
        .observe(move |e| {
            if matches!(e, Event::Recorded { .. }) {
                after.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build();
    for _ in 0..2 {
        let paid: Result<(), PayError> =
            conto.guard(transfer("3"), |_: &conto_core::Approval| async { Ok(()) }, |_| Settlement::default()).await;
        paid.unwrap();
    }
    assert_eq!(engine.usage("agent-1").stats.total_spent, Decimal::from(6));
    assert_eq!(told.load(Ordering::SeqCst), 2, "the next observer was told each time");
}

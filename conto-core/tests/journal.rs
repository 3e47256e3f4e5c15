//! The engine over a journal that fails: what moved money or stopped an actor stays done,
//! says it is not yet durable, and is written before anything after it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use conto_core::journal::{Entry, Journal, JournalError};
use conto_core::{ActorStatus, AuthorityError, Decimal, Engine, ManualClock, Outage, PolicySet, Settlement, Verdict};

mod common;
use common::transfer;

/// A journal in memory whose appends fail while `down` is set.
#[derive(Clone, Default)]
struct Flaky {
    entries: Arc<Mutex<Vec<Entry>>>,
    down: Arc<AtomicBool>,
}

impl Journal for Flaky {
    fn append(&self, entry: &Entry) -> Result<(), JournalError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(JournalError("disk full".into()));
        }
        self.entries.lock().unwrap().push(entry.clone());
        Ok(())
    }

    fn replay(&self) -> Result<Vec<Entry>, JournalError> {
        Ok(self.entries.lock().unwrap().clone())
    }
}

const POLICIES: &str = r#"{"agents": ["agent-1"], "policies": [{"name": "daily", "rules": [
    {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "100", "action": "ALLOW"}]}]}"#;

fn engine(journal: &Flaky, clock: &ManualClock) -> Engine {
    Engine::builder()
        .policies(PolicySet::from_json(POLICIES).unwrap())
        .clock(clock.clone())
        .build_journaled(journal.clone())
        .unwrap()
}

fn spent(engine: &Engine) -> Decimal {
    engine.usage("agent-1").counters.iter().map(|c| c.spent).sum()
}

fn is_journal_outage(e: &AuthorityError) -> bool {
    matches!(e, AuthorityError::Outage(Outage::Journal(_)))
}

#[test]
fn a_record_whose_entry_fails_is_counted_and_written_before_the_next_entry() {
    let journal = Flaky::default();
    let clock = ManualClock::new("2026-06-10T12:00:00Z".parse().unwrap());
    let e = engine(&journal, &clock);
    let Verdict::Approved(a) = e.try_decide(&transfer("60")).unwrap().verdict else { panic!("approved") };
    journal.down.store(true, Ordering::SeqCst);
    // The money moved: counted at once, though the error says it is not yet durable.
    let err = e.settle(&a, &Settlement::default().reference("0xa")).unwrap_err();
    assert!(is_journal_outage(&err), "{err:?}");
    assert_eq!(spent(&e), Decimal::from(60));
    // While the journal is down, decisions fail closed (their reservations cannot be written),
    // and a retry of the record fails as the first did (an outbox keeps it): it is done once
    // its entry is durable, never answered as done before.
    assert!(e.try_decide(&transfer("1")).is_err());
    let err = e.settle(&a, &Settlement::default().reference("0xa")).unwrap_err();
    assert!(is_journal_outage(&err), "{err:?}");
    // Back: the retry writes the waiting entry, and is answered (counted once).
    journal.down.store(false, Ordering::SeqCst);
    assert!(!e.settle(&a, &Settlement::default().reference("0xa")).unwrap().late);
    assert_eq!(spent(&e), Decimal::from(60));
    drop(e);
    let restarted = engine(&journal, &clock);
    assert_eq!(spent(&restarted), Decimal::from(60));
    assert!(matches!(restarted.try_decide(&transfer("41")).unwrap().verdict, Verdict::Denied(_)), "60 + 41 > 100");
}

#[test]
fn a_pause_whose_entry_fails_stops_spending_now_and_says_it_is_not_yet_durable() {
    let journal = Flaky::default();
    let clock = ManualClock::new("2026-06-10T12:00:00Z".parse().unwrap());
    let e = engine(&journal, &clock);
    journal.down.store(true, Ordering::SeqCst);
    let err = e.pause("agent-1").unwrap_err();
    assert!(is_journal_outage(&err), "{err:?}");
    assert_eq!(e.actor_status("agent-1"), Some(ActorStatus::Paused), "paused now");
    // Asked again while the entry still waits: not yet done, and said so.
    assert!(is_journal_outage(&e.pause("agent-1").unwrap_err()));
    journal.down.store(false, Ordering::SeqCst);
    e.pause("agent-1").expect("written now");
    drop(e);
    assert_eq!(engine(&journal, &clock).actor_status("agent-1"), Some(ActorStatus::Paused), "and after a restart");
}

/// A retirement whose entry fails applies at once and says it is not yet durable (before, the
/// error was dropped and a restart could bring the actor back unseen); asked again once the
/// journal is back, it is written, and the actor stays retired across a restart.
#[test]
fn a_retirement_whose_entry_fails_says_it_is_not_yet_durable() {
    use conto_core::lifecycle::ActorLifecycle;
    let journal = Flaky::default();
    let clock = ManualClock::new("2026-06-10T12:00:00Z".parse().unwrap());
    let e = engine(&journal, &clock);
    journal.down.store(true, Ordering::SeqCst);
    let err = e.retire("agent-1").unwrap_err();
    assert!(is_journal_outage(&err), "{err:?}");
    assert_eq!(e.actor_status("agent-1"), None, "retired now");
    let err = block_on(e.retire_actor("agent-1")).unwrap_err();
    assert!(matches!(err, conto_core::lifecycle::LifecycleError::Authority(ref a) if is_journal_outage(a)), "{err:?}");
    journal.down.store(false, Ordering::SeqCst);
    assert!(!e.retire("agent-1").expect("written now"), "already retired");
    drop(e);
    assert_eq!(engine(&journal, &clock).actor_status("agent-1"), None, "and after a restart");
}

/// Runs a future that is ready at once.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

/// A status this build does not know (a journal written by a newer one) replays as paused,
/// never as active.
#[test]
fn an_unknown_status_replays_as_paused() {
    let journal = Flaky::default();
    let actor = conto_core::ActorId::new("agent-1").unwrap();
    journal.entries.lock().unwrap().push(Entry::Actor { actor, status: "SUSPENDED".into() });
    let clock = ManualClock::new("2026-06-10T12:00:00Z".parse().unwrap());
    let e = engine(&journal, &clock);
    assert_eq!(e.actor_status("agent-1"), Some(ActorStatus::Paused));
    assert!(matches!(e.try_decide(&transfer("1")).unwrap().verdict, Verdict::Denied(_)));
}

/// An approval still live at a restart holds the periods it was reserved in: recorded in time
/// after midnight, it counts where it would have without the restart, and a second restart
/// counts it there too.
#[test]
fn an_approval_live_across_a_restart_and_midnight_counts_the_same_after_every_restart() {
    let journal = Flaky::default();
    let clock = ManualClock::new("2026-06-10T23:59:00Z".parse().unwrap());
    let e = engine(&journal, &clock);
    let Verdict::Approved(a) = e.try_decide(&transfer("80")).unwrap().verdict else { panic!("approved") };
    drop(e);
    clock.set("2026-06-11T00:01:00Z".parse().unwrap());
    let e = engine(&journal, &clock); // restarted with the approval live
    clock.set("2026-06-11T00:02:00Z".parse().unwrap());
    assert!(!e.settle(&a, &Settlement::default().reference("0x80")).unwrap().late);
    let counts = |e: &Engine| e.usage("agent-1").counters.iter().map(|c| (c.period_start, c.spent)).collect::<Vec<_>>();
    let before = counts(&e);
    drop(e);
    assert_eq!(counts(&engine(&journal, &clock)), before);
}

/// `usage` shows a counter whose period ended (no decision since) as the next decision finds
/// it: the current period, nothing spent or reserved in it (it had shown yesterday's spend as
/// today's).
#[test]
fn usage_shows_an_ended_period_as_the_current_one_with_nothing_in_it() {
    let journal = Flaky::default();
    let clock = ManualClock::new("2026-06-10T12:00:00Z".parse().unwrap());
    let e = engine(&journal, &clock);
    let Verdict::Approved(a) = e.try_decide(&transfer("60")).unwrap().verdict else { panic!("approved") };
    e.settle(&a, &Settlement::default().reference("0xa")).unwrap();
    assert_eq!(spent(&e), Decimal::from(60));
    clock.advance(conto_core::jiff::SignedDuration::from_hours(24));
    let usage = e.usage("agent-1");
    let daily = usage.counters.iter().find(|c| c.period == "daily").expect("the daily counter");
    assert_eq!((daily.spent, daily.reserved), (Decimal::ZERO, Decimal::ZERO), "{daily:?}");
    assert_eq!(daily.period_start, "2026-06-11T00:00:00Z".parse().unwrap());
    assert_eq!((daily.limit, daily.rails), (Some(Decimal::from(100)), Some("all")), "its limit, from the policy");
    assert_eq!(usage.stats.total_spent, Decimal::from(60), "the ledger's life still counts it");
}

//! Journal compaction: a restart from the compacted journal has the ledger a restart from the
//! whole history has (every counter's current spend, live reservations, pending approvals,
//! actor statuses, lifetime totals, and so every later decision), under the policies of the
//! day or any others, and the journal shrinks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use conto_core::jiff::{SignedDuration, Timestamp};
use conto_core::journal::{Compaction, Entry, Journal, JournalError};
use conto_core::{ActorStatus, Authorization, Clock, Decimal, Engine, ManualClock, PolicySet, Settlement, Verdict};
use proptest::prelude::*;

mod common;
use common::{RECIPIENT, transfer_to};

/// A journal in memory that can rewrite itself, and whose appends fail while it is down.
#[derive(Clone, Default)]
struct Mem(Arc<Mutex<Vec<Entry>>>, Arc<AtomicBool>);

impl Mem {
    fn copy(&self) -> Mem {
        Mem(Arc::new(Mutex::new(self.0.lock().unwrap().clone())), Arc::default())
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl Journal for Mem {
    fn append(&self, entry: &Entry) -> Result<(), JournalError> {
        if self.1.load(Ordering::SeqCst) {
            return Err(JournalError("disk full".into()));
        }
        self.0.lock().unwrap().push(entry.clone());
        Ok(())
    }

    fn replay(&self) -> Result<Vec<Entry>, JournalError> {
        Ok(self.0.lock().unwrap().clone())
    }

    fn compact(&self, fold: &mut dyn FnMut(Vec<Entry>) -> Vec<Entry>) -> Result<Option<Compaction>, JournalError> {
        let mut entries = self.0.lock().unwrap();
        let before = entries.len();
        *entries = fold(std::mem::take(&mut *entries));
        Ok(Some(Compaction { before, after: entries.len() }))
    }
}

const ACTORS: [&str; 2] = ["agent-1", "agent-2"];

/// Every kind of period and window a compaction must keep whole: a day, a week, a month, a
/// year (a budget), a velocity window, and a threshold that opens requests for a human.
const POLICIES: &str = r#"{"agents": ["agent-1", "agent-2"], "policies": [{"name": "all", "rules": [
    {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "400", "action": "ALLOW"},
    {"ruleType": "WEEKLY_LIMIT", "operator": "LTE", "value": "1500", "action": "ALLOW"},
    {"ruleType": "MONTHLY_LIMIT", "operator": "LTE", "value": "4000", "action": "ALLOW"},
    {"ruleType": "BUDGET_CAP", "operator": "LTE", "value": "{\"amount\": 30000, \"period\": \"YEARLY\"}", "action": "ALLOW"},
    {"ruleType": "VELOCITY_LIMIT", "operator": "LTE", "value": "{\"maxCount\": 8, \"period\": \"DAY\"}", "action": "ALLOW"},
    {"ruleType": "REQUIRE_APPROVAL_ABOVE", "operator": "GT", "value": "90", "action": "REQUIRE_APPROVAL"}
]}]}"#;

/// Every period again, each in a zone whose midnight is not UTC's: Kathmandu (+05:45) and
/// St. John's (-03:30), and a lifetime budget. A compaction made under [`POLICIES`] must hold
/// under these too (a policy changed after it).
const OTHER_POLICIES: &str = r#"{"agents": ["agent-1", "agent-2"], "policies": [
  {"name": "kathmandu", "timezone": "Asia/Kathmandu", "rules": [
    {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "300", "action": "ALLOW"},
    {"ruleType": "WEEKLY_LIMIT", "operator": "LTE", "value": "1200", "action": "ALLOW"},
    {"ruleType": "BUDGET_CAP", "operator": "LTE", "value": "{\"amount\": 6000, \"period\": \"TOTAL\"}", "action": "ALLOW"}]},
  {"name": "st johns", "timezone": "America/St_Johns", "rules": [
    {"ruleType": "MONTHLY_LIMIT", "operator": "LTE", "value": "3000", "action": "ALLOW"},
    {"ruleType": "BUDGET_CAP", "operator": "LTE", "value": "{\"amount\": 9000, \"period\": \"YEARLY\"}", "action": "ALLOW"}]}
]}"#;

/// A builder on `policies` and `clock` that compacts on open or not.
fn builder(policies: &str, clock: &ManualClock, compact: bool) -> conto_core::engine::EngineBuilder {
    Engine::builder().policies(PolicySet::from_json(policies).unwrap()).clock(clock.clone()).compact_on_open(compact)
}

fn open_with(policies: &str, journal: &Mem, clock: &ManualClock, compact: bool) -> Engine {
    builder(policies, clock, compact)
        // The shortest retention: what is kept for a velocity window is then the
        // compaction's own doing.
        .retention(SignedDuration::from_mins(1))
        .build_journaled(journal.clone())
        .unwrap()
}

fn open(journal: &Mem, clock: &ManualClock, compact: bool) -> Engine {
    open_with(POLICIES, journal, clock, compact)
}

/// What a restart must give back of an actor's ledger, and how the next payment is decided.
fn state(engine: &Engine, clock: &ManualClock) -> Vec<String> {
    let mut out = Vec::new();
    for actor in ACTORS {
        let usage = engine.usage(actor);
        // A counter of a scope no kept record names shows only when it holds something.
        let mut counters: Vec<String> = usage
            .counters
            .iter()
            .filter(|c| !c.spent.is_zero() || !c.reserved.is_zero())
            .map(|c| format!("{} {} {} {} {}", c.period, c.scope, c.period_start, c.spent, c.reserved))
            .collect();
        counters.sort();
        out.push(format!(
            "{actor} at {}: {counters:?} live={} spent={} recorded={} status={:?}",
            clock.now(),
            usage.live_reservations,
            usage.stats.total_spent,
            usage.stats.recorded,
            engine.actor_status(actor)
        ));
    }
    let mut pending = engine.pending_requests();
    pending.sort();
    out.push(format!("pending {pending:?}"));
    out
}

/// How each actor's next payments are decided (the engine is consumed: a probe reserves).
fn probes(engine: &Engine) -> Vec<String> {
    let mut out = Vec::new();
    for actor in ACTORS {
        for amount in ["5", "80", "95", "390"] {
            let d = engine.decide(&transfer_to(actor, amount, RECIPIENT));
            out.push(match d.verdict {
                Verdict::Approved(a) => format!("{actor} {amount}: approved, {:?}", a.limits),
                Verdict::Denied(d) => format!("{actor} {amount}: denied {:?}", d.reasons),
                Verdict::RequiresApproval(p) => format!("{actor} {amount}: pending {:?}", p.reasons),
            });
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Op {
    Pay { actor: usize, amount: u32 },
    Settle { which: usize, part: bool },
    Release { which: usize },
    Answer { which: usize, approve: bool },
    Pause { actor: usize, pause: bool },
    Advance { minutes: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..2usize, 1..120u32).prop_map(|(actor, amount)| Op::Pay { actor, amount }),
        4 => (0..8usize, any::<bool>()).prop_map(|(which, part)| Op::Settle { which, part }),
        1 => (0..8usize).prop_map(|which| Op::Release { which }),
        1 => (0..4usize, any::<bool>()).prop_map(|(which, approve)| Op::Answer { which, approve }),
        1 => (0..2usize, any::<bool>()).prop_map(|(actor, pause)| Op::Pause { actor, pause }),
        // From minutes (within and across quarter hours) to a month: every period is crossed.
        4 => prop_oneof![Just(4i64), Just(7), Just(45), Just(6 * 60), Just(26 * 60), Just(3 * 24 * 60), Just(30 * 24 * 60)]
            .prop_map(|minutes| Op::Advance { minutes }),
    ]
}

/// Runs `ops` on a journaled engine; returns its journal and clock.
fn run(ops: &[Op]) -> (Mem, ManualClock) {
    let journal = Mem::default();
    // Sunday, half an hour before Kathmandu's week turns (18:15 UTC).
    let clock = ManualClock::new("2026-01-18T17:45:00Z".parse::<Timestamp>().unwrap());
    let engine = open(&journal, &clock, false);
    let mut live: Vec<Authorization> = Vec::new();
    for op in ops {
        match op {
            Op::Pay { actor, amount } => {
                if let Verdict::Approved(a) =
                    engine.decide(&transfer_to(ACTORS[*actor], &amount.to_string(), RECIPIENT)).verdict
                {
                    live.push(a);
                }
            }
            Op::Settle { which, part } if !live.is_empty() => {
                let a = live.remove(which % live.len());
                let mut settlement = Settlement::default().reference(format!("0x{:064x}", clock.now().as_second()));
                if *part {
                    settlement = settlement.amount((a.amount.get() / Decimal::from(2)).round_dp(6).try_into().unwrap());
                }
                let _ = engine.settle(&a, &settlement);
            }
            Op::Release { which } if !live.is_empty() => {
                let a = live.remove(which % live.len());
                let _ = engine.free(&a);
            }
            Op::Answer { which, approve } => {
                let mut waiting = engine.pending_requests();
                waiting.sort();
                if !waiting.is_empty() {
                    let _ = engine.resolve_approval(&waiting[which % waiting.len()], *approve);
                }
            }
            Op::Pause { actor, pause } => {
                let _ = if *pause { engine.pause(ACTORS[*actor]) } else { engine.resume(ACTORS[*actor]) };
            }
            Op::Advance { minutes } => clock.advance(SignedDuration::from_mins(*minutes)),
            _ => {}
        }
    }
    (journal, clock)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever happened, a restart from the compacted journal is a restart from the whole one:
    /// the same ledger now, the same decisions next, and the same again a day and a month on,
    /// under the policies it was compacted under and under others.
    #[test]
    fn a_compacted_journal_restarts_to_the_same_ledger(ops in proptest::collection::vec(op(), 1..160)) {
        let (whole, clock) = run(&ops);
        let compacted = whole.copy();
        drop(open(&compacted, &clock, true));
        prop_assert!(compacted.len() <= whole.len());
        for step in [0i64, 24 * 60, 3 * 24 * 60, 31 * 24 * 60] {
            clock.advance(SignedDuration::from_mins(step));
            for policies in [POLICIES, OTHER_POLICIES] {
                let a = open_with(policies, &whole.copy(), &clock, false);
                let b = open_with(policies, &compacted.copy(), &clock, false);
                prop_assert_eq!(state(&a, &clock), state(&b, &clock));
                prop_assert_eq!(probes(&a), probes(&b));
            }
        }
        // Compacting again, later, changes nothing a restart sees.
        let twice = compacted.copy();
        drop(open(&twice, &clock, true));
        let (a, b) = (open(&whole.copy(), &clock, false), open(&twice, &clock, false));
        prop_assert_eq!(state(&a, &clock), state(&b, &clock));
    }
}

/// Bursts of payments (twenty an hour, for ninety days): the journal folds each quarter
/// hour's records into one entry, drops the released approvals, keeps the last two days
/// whole, and the lifetime totals and every counter stay as they were.
#[test]
fn a_long_history_of_bursts_folds_to_an_entry_per_quarter_hour() {
    let journal = Mem::default();
    let clock = ManualClock::new("2026-03-01T00:00:00Z".parse::<Timestamp>().unwrap());
    let engine = open_with(OTHER_POLICIES, &journal, &clock, false);
    let mut paid = 0u64;
    for _hour in 0..(90 * 24) {
        for i in 0..20 {
            clock.advance(SignedDuration::from_secs(30));
            let Verdict::Approved(a) = engine.decide(&transfer_to("agent-1", "0.1", RECIPIENT)).verdict else {
                panic!("approved")
            };
            if i % 4 == 3 {
                engine.free(&a).unwrap();
            } else {
                engine
                    .settle(&a, &Settlement::default().reference(format!("0x{:064x}", clock.now().as_second())))
                    .unwrap();
                paid += 1;
            }
        }
        clock.advance(SignedDuration::from_mins(50));
    }
    engine.pause("agent-2").unwrap();
    engine.resume("agent-2").unwrap();
    drop(engine);
    let whole = journal.copy();
    let before = journal.len();
    let reopened = open_with(OTHER_POLICIES, &journal, &clock, true);
    let after = journal.len();
    let entries = journal.replay().unwrap();
    let folded = entries.iter().filter(|e| matches!(e, Entry::Folded { .. })).count();
    // The 10 minutes of each hour's burst fall in one or two quarter hours.
    assert!((88 * 24..=88 * 24 * 2).contains(&folded), "{folded} folded entries");
    eprintln!("burst history: {before} entries, {after} after compaction ({folded} folded)");
    assert!(after * 10 < before, "{before} entries, {after} after");
    let usage = reopened.usage("agent-1");
    assert_eq!(usage.stats.total_spent, Decimal::from(paid) / Decimal::from(10), "every payment ever");
    assert_eq!(usage.stats.recorded, paid);
    assert_eq!(reopened.actor_status("agent-2"), Some(ActorStatus::Active), "its last status");
    for policies in [OTHER_POLICIES, POLICIES] {
        let (a, b) =
            (open_with(policies, &whole.copy(), &clock, false), open_with(policies, &journal.copy(), &clock, false));
        assert_eq!(state(&a, &clock), state(&b, &clock));
        assert_eq!(probes(&a), probes(&b));
    }
}

/// An engine that compacts nothing on open leaves its journal as it was; asked, it compacts.
#[test]
fn compaction_on_open_can_be_turned_off_and_asked_for() {
    let journal = Mem::default();
    let clock = ManualClock::new("2026-01-01T12:00:00Z".parse::<Timestamp>().unwrap());
    let engine = open(&journal, &clock, false);
    for _ in 0..10 {
        let Verdict::Approved(a) = engine.decide(&transfer_to("agent-1", "10", RECIPIENT)).verdict else { panic!() };
        engine.settle(&a, &Settlement::default()).unwrap();
        clock.advance(SignedDuration::from_hours(24));
    }
    drop(engine);
    assert_eq!(journal.len(), 20);
    let engine = open(&journal, &clock, false);
    assert_eq!(journal.len(), 20, "not compacted");
    // Ten days, each its own quarter hour: the eight older than two days are folded, each alone
    // (its reservation with it); the last two stay whole.
    assert_eq!(engine.compact_journal().unwrap(), Some(Compaction { before: 20, after: 12 }));
    assert_eq!(engine.usage("agent-1").stats.total_spent, Decimal::from(100));
    let again = open(&journal, &clock, false);
    assert_eq!(again.usage("agent-1").stats.total_spent, Decimal::from(100));
    assert_eq!(again.usage("agent-1").stats.recorded, 10);
    // An engine without a journal has nothing to compact.
    assert_eq!(Engine::new(PolicySet::from_json(POLICIES).unwrap()).compact_journal().unwrap(), None);
}

/// Records either side of a period's turn in a zone whose midnight is a quarter hour off UTC's
/// hour (Kathmandu's week begins Sunday 18:15 UTC) are folded apart: the new week counts only
/// its own, after the compaction as before.
#[test]
fn records_either_side_of_a_quarter_hour_turn_are_folded_apart() {
    let journal = Mem::default();
    let clock = ManualClock::new("2026-01-18T18:05:00Z".parse::<Timestamp>().unwrap());
    let engine = open_with(OTHER_POLICIES, &journal, &clock, false);
    for (amount, minutes) in [("3", 8), ("5", 4), ("7", 5)] {
        let Verdict::Approved(a) = engine.decide(&transfer_to("agent-1", amount, RECIPIENT)).verdict else { panic!() };
        engine.settle(&a, &Settlement::default()).unwrap();
        clock.advance(SignedDuration::from_mins(minutes));
    }
    // 18:05 and 18:13 are last week's in Kathmandu, 18:17 this week's.
    drop(engine);
    clock.advance(SignedDuration::from_hours(72));
    let whole = journal.copy();
    let compacted = open_with(OTHER_POLICIES, &journal, &clock, true);
    let folded = journal.replay().unwrap().iter().filter(|e| matches!(e, Entry::Folded { .. })).count();
    assert_eq!(folded, 2, "two quarter hours");
    let weekly = |e: &Engine| {
        e.usage("agent-1").counters.iter().find(|c| c.period == "weekly").map(|c| c.spent).unwrap_or_default()
    };
    assert_eq!(weekly(&compacted), Decimal::from(7), "this week's payment alone");
    assert_eq!(weekly(&open_with(OTHER_POLICIES, &whole, &clock, false)), Decimal::from(7));
    let reopened = open_with(OTHER_POLICIES, &journal, &clock, false);
    assert_eq!(weekly(&reopened), Decimal::from(7));
    assert_eq!(reopened.usage("agent-1").stats.total_spent, Decimal::from(15));
}

/// A retention past the calendar's end keeps every ended approval: nothing is folded away
/// that a repeated record would need (it would be counted twice, as a reconcile).
#[test]
fn a_retention_that_never_ends_keeps_what_it_answers_for() {
    let journal = Mem::default();
    let clock = ManualClock::new("2026-03-02T10:00:00Z".parse::<Timestamp>().unwrap());
    let build =
        || builder(POLICIES, &clock, true).retention(SignedDuration::MAX).build_journaled(journal.clone()).unwrap();
    let engine = build();
    let Verdict::Approved(a) = engine.decide(&transfer_to("agent-1", "10", RECIPIENT)).verdict else { panic!() };
    let first = engine.settle(&a, &Settlement::default().reference("0xabc")).unwrap();
    drop(engine);
    clock.advance(SignedDuration::from_hours(72));
    drop(build()); // replayed whole, then compacted
    let reopened = build(); // from the compacted journal
    let again = reopened.settle(&a, &Settlement::default().reference("0xabc")).expect("answered as the first time");
    assert_eq!(again.amount, first.amount);
    assert_eq!(reopened.usage("agent-1").stats.total_spent, Decimal::from(10), "counted once");
}

/// A record whose entry is still waiting (its journal failed) is written before a compaction
/// runs, which sees it: a restart then counts it where the engine did. While it cannot be
/// written, nothing is compacted.
#[test]
fn a_compaction_writes_what_waits_first_and_waits_for_it() {
    let journal = Mem::default();
    let clock = ManualClock::new("2026-01-10T18:12:00Z".parse::<Timestamp>().unwrap());
    let engine = open_with(OTHER_POLICIES, &journal, &clock, true);
    let Verdict::Approved(a) = engine.decide(&transfer_to("agent-1", "100", RECIPIENT)).verdict else { panic!() };
    journal.1.store(true, Ordering::SeqCst);
    clock.advance(SignedDuration::from_mins(4));
    assert!(engine.settle(&a, &Settlement::default()).is_err(), "counted, not yet durable");
    clock.advance(SignedDuration::from_hours(3 * 24));
    assert!(engine.compact_journal().is_err(), "the waiting record cannot be written: no compaction");
    journal.1.store(false, Ordering::SeqCst);
    let compaction = engine.compact_journal().unwrap().unwrap();
    assert!(compaction.after < compaction.before, "{compaction:?}");
    let live = state(&engine, &clock);
    drop(engine);
    let restarted = open_with(OTHER_POLICIES, &journal, &clock, false);
    assert_eq!(state(&restarted, &clock), live);
}

/// An approval released before its (long) lifetime ended, then recorded late, is answered for
/// until its expiry is past the retention window, by the whole journal's replay: the
/// compacted one answers the same.
#[test]
fn a_late_record_of_a_long_released_approval_is_answered_the_same_after_compaction() {
    let journal = Mem::default();
    let clock = ManualClock::new("2026-04-01T08:00:00Z".parse::<Timestamp>().unwrap());
    let build = |j: &Mem, compact: bool| {
        builder(POLICIES, &clock, compact)
            .approval_ttl(SignedDuration::from_hours(72))
            .build_journaled(j.clone())
            .unwrap()
    };
    let engine = build(&journal, false);
    let Verdict::Approved(a) = engine.decide(&transfer_to("agent-1", "10", RECIPIENT)).verdict else { panic!() };
    clock.advance(SignedDuration::from_mins(1));
    engine.free(&a).unwrap();
    clock.advance(SignedDuration::from_mins(1));
    assert!(engine.settle(&a, &Settlement::default().reference("0x1")).unwrap().late);
    drop(engine);
    clock.advance(SignedDuration::from_hours(50));
    let compacted = journal.copy();
    drop(build(&compacted, true));
    let answer = |j: &Mem| format!("{:?}", build(j, false).settle(&a, &Settlement::default().reference("0x1")));
    assert_eq!(answer(&journal.copy()), answer(&compacted));
}

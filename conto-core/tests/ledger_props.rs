//! Property: random interleavings of authorize / record / release / withdraw / expiry across many
//! tasks on a multi-threaded runtime never make recorded spend exceed any limit, and every
//! reservation ends settled, released, withdrawn (counted as never granted) or expired.

mod common;

use common::*;
use conto_core::jiff::SignedDuration;
use conto_core::{Decimal, Engine, Settlement, Verdict};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    /// Authorize then record `percent`% of the amount (at least one micro-unit).
    Record { amount_cents: u32, percent: u8 },
    /// Authorize then release.
    Release { amount_cents: u32 },
    /// Authorize then take the approval back, never handed out (a further gate refused it).
    Withdraw { amount_cents: u32 },
    /// Authorize and walk away: the approval must expire.
    Abandon { amount_cents: u32 },
    /// Move the shared clock forward a few seconds.
    Tick { secs: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (1u32..5000, 1u8..=100).prop_map(|(amount_cents, percent)| Step::Record { amount_cents, percent }),
        2 => (1u32..5000).prop_map(|amount_cents| Step::Release { amount_cents }),
        1 => (1u32..5000).prop_map(|amount_cents| Step::Withdraw { amount_cents }),
        1 => (1u32..5000).prop_map(|amount_cents| Step::Abandon { amount_cents }),
        1 => (1u8..30).prop_map(|secs| Step::Tick { secs }),
    ]
}

const DAILY: i64 = 300;
const WEEKLY_BUDGET: i64 = 700;

async fn run_task(engine: Engine, clock: conto_core::ManualClock, agent: String, steps: Vec<Step>) -> (u64, u64) {
    let (mut approved, mut denied) = (0, 0);
    for s in steps {
        let amount_cents = match &s {
            Step::Tick { secs } => {
                clock.advance(SignedDuration::from_secs(i64::from(*secs)));
                continue;
            }
            Step::Record { amount_cents, .. }
            | Step::Release { amount_cents }
            | Step::Withdraw { amount_cents }
            | Step::Abandon { amount_cents } => *amount_cents,
        };
        let amount = Decimal::new(i64::from(amount_cents), 2).to_string();
        let intent = transfer_to(&agent, &amount, RECIPIENT);
        let d = engine.decide(&intent);
        let Verdict::Approved(a) = d.verdict else {
            denied += 1;
            tokio::task::yield_now().await;
            continue;
        };
        tokio::task::yield_now().await; // let other tasks interleave between authorize and outcome
        if !matches!(s, Step::Withdraw { .. }) {
            approved += 1;
        }
        match s {
            Step::Record { percent, .. } => {
                let micros = (i64::from(amount_cents) * 10_000 * i64::from(percent) / 100).max(1);
                let settled = conto_core::Amount::from_micros(micros).unwrap();
                engine.settle(&a, &Settlement::default().amount(settled)).unwrap();
            }
            Step::Release { .. } => engine.free(&a).unwrap(),
            Step::Withdraw { .. } => engine.withdraw(&a).unwrap(),
            Step::Abandon { .. } | Step::Tick { .. } => {}
        }
    }
    (approved, denied)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn no_overspend_and_every_reservation_ends(
        plans in prop::collection::vec(prop::collection::vec(step(), 1..40), 2..12),
    ) {
        let rules = policy(&[
            &rule("DAILY_LIMIT", "LTE", &DAILY.to_string(), "ALLOW"),
            &rule("BUDGET_CAP", "LTE", &format!(r#"{{"amount":{WEEKLY_BUDGET},"period":"WEEKLY"}}"#), "ALLOW"),
            &rule("MAX_AMOUNT", "LTE", "45", "ALLOW"),
        ]);
        let (engine, clock) = engine_at(&rules, "2026-06-10T23:58:00Z");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).build().unwrap();
        let totals = rt.block_on(async {
            let mut handles = Vec::new();
            for (i, plan) in plans.into_iter().enumerate() {
                // Two agents share the load so per-agent ledgers interleave too.
                let agent = format!("agent-{}", i % 2);
                handles.push(tokio::spawn(run_task(engine.clone(), clock.clone(), agent, plan)));
            }
            let mut totals = (0u64, 0u64);
            for h in handles {
                let (a, d) = h.await.unwrap();
                totals.0 += a;
                totals.1 += d;
            }
            totals
        });
        // Every abandoned approval expires.
        clock.advance(SignedDuration::from_mins(11));
        engine.sweep_expired();
        let mut approved_total = 0;
        for agent in ["agent-0", "agent-1"] {
            let u = engine.usage(agent);
            for c in &u.counters {
                prop_assert_eq!(c.reserved, Decimal::ZERO, "nothing stays reserved: {:?}", c);
                let limit = if c.period == "daily" { DAILY } else { WEEKLY_BUDGET };
                prop_assert!(c.spent <= Decimal::from(limit), "overspent: {:?}", c);
            }
            prop_assert_eq!(u.live_reservations, 0);
            prop_assert_eq!(u.stats.approved, u.stats.recorded + u.stats.released + u.stats.expired);
            approved_total += u.stats.approved;
        }
        prop_assert_eq!(approved_total, totals.0);
    }
}

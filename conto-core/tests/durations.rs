//! No duration knob panics, whatever it is given: zero, tiny, huge, `Duration::MAX`. Time is
//! paused (tokio's test clock), so even a year-long wait runs instantly.

mod common;

use std::time::Duration;

use common::*;
use conto_core::{ApprovalMode, Conto, RejectionKind};
use proptest::prelude::*;

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_secs(u64::MAX)),
        (0u64..5_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_secs),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pipeline_knobs_never_panic(deadline in any_duration(), wait in any_duration(), poll in any_duration()) {
        paused().block_on(async {
            let (engine, _) = engine_at(&policy(&[&rule("REQUIRE_APPROVAL_ABOVE", "GT", "5", "REQUIRE_APPROVAL")]), "2026-06-10T12:00:00Z");
            let conto = Conto::builder(engine)
                .deadline(deadline)
                .poll_interval(poll)
                .approval(ApprovalMode::Wait(wait))
                .build();
            // Approved at once, whatever the deadline.
            if !deadline.is_zero() {
                conto.authorize(transfer("1")).await.unwrap();
            }
            // Pending forever: the wait ends (clamped) and says so, after polling at `poll`. (Only
            // when the number of polls is small enough to run: a year polled every millisecond
            // is a legitimate 3·10¹⁰ polls, not a panic.)
            let polls = wait.min(conto_core::MAX_WAIT).as_millis() / poll.max(Duration::from_millis(1)).as_millis().max(1);
            if polls < 5_000 {
                if let Err(r) = conto.authorize(transfer("6")).await {
                    prop_assert!(matches!(r.kind(), RejectionKind::ApprovalRequired(_) | RejectionKind::Unavailable(_)), "{:?}", r);
                }
                // The same through a handle made with `with_approval`.
                let waiting = conto.with_approval(ApprovalMode::Wait(wait));
                let _ = waiting.authorize(transfer("7")).await;
            }
            Ok(())
        })?;
    }
}

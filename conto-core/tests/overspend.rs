//! Thousands of concurrent paid actions through the pipeline, across many tasks on a
//! multi-threaded runtime, against one agent's daily limit and budget: the total recorded stays
//! within both, and every action ends approved-and-recorded or denied.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use conto_core::{Conto, Decimal, Settlement};

fn actions() -> usize {
    std::env::var("CONTO_OVERSPEND_ACTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000)
}

#[test]
fn no_overspend_under_concurrency() {
    let n = actions();
    let rules = policy(&[
        &rule("DAILY_LIMIT", "LTE", "1000", "ALLOW"),
        &rule("BUDGET_CAP", "LTE", r#"{"amount":900,"period":"MONTHLY"}"#, "ALLOW"),
        &rule("MAX_AMOUNT", "LTE", "5", "ALLOW"),
    ]);
    let (engine, _) = engine_at(&rules, "2026-06-10T12:00:00Z");
    let conto = Conto::new(engine.clone());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(8).enable_all().build().unwrap();
    let (settled, denied, failed) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    rt.block_on(async {
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let (conto, settled, denied, failed) = (conto.clone(), settled.clone(), denied.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                // Amounts 0.01..5.00; every seventh settlement fails and must be released.
                let cents = (i as i64 * 37) % 500 + 1;
                let amount = Decimal::new(cents, 2).to_string();
                let out = conto
                    .run(
                        transfer(&amount),
                        |_| async move {
                            tokio::task::yield_now().await;
                            if i % 7 == 0 { Err(()) } else { Ok(()) }
                        },
                        |_| Settlement::default(),
                    )
                    .await;
                match out {
                    Ok(Ok(())) => settled.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(())) => failed.fetch_add(1, Ordering::Relaxed),
                    Err(_) => denied.fetch_add(1, Ordering::Relaxed),
                };
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let usage = engine.usage("agent-1");
    let (settled, denied, failed) =
        (settled.load(Ordering::Relaxed), denied.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "overspend: actions={n} settled={settled} denied={denied} failed_and_released={failed} recorded_total={} budget=900 overspend={}",
        usage.stats.total_spent,
        (usage.stats.total_spent - Decimal::from(900)).max(Decimal::ZERO)
    );
    assert_eq!(settled + denied + failed, n as u64);
    assert!(usage.stats.total_spent <= Decimal::from(900), "the monthly budget holds");
    assert!(denied > 0, "the limits were reached");
    assert_eq!(usage.stats.recorded, settled, "every settled action was recorded once");
    assert_eq!(usage.stats.released, failed, "every failed settlement was released");
    assert_eq!(usage.stats.approved, settled + failed);
    assert_eq!(usage.live_reservations, 0);
    assert!(usage.counters.iter().all(|c| c.reserved.is_zero()));
}

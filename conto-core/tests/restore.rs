//! Restoring approvals after a restart never revives one that already ended.

use conto_core::{Engine, PaymentIntent, Rail, Settlement, Verdict};

#[test]
fn restoring_a_recorded_authorization_neither_revives_it_nor_counts_it_twice() {
    let engine = Engine::from_json(
        r#"{"agents": ["agent-1"], "policies": [{"name": "cap", "rules": [
            {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "10", "action": "ALLOW"}]}]}"#,
    )
    .unwrap();
    let intent = PaymentIntent::builder("agent-1", "4", Rail::card("Acme").unwrap()).build().unwrap();
    let Verdict::Approved(a) = engine.decide(&intent).verdict else { panic!("approved") };
    let first = engine.settle(&a, &Settlement::default()).unwrap();

    engine.restore_authorization(&a);
    assert_eq!(engine.usage("agent-1").live_reservations, 0, "an ended approval is not live again");
    let again = engine.settle(&a, &Settlement::default()).unwrap();
    assert_eq!((again.amount, again.transaction_id.clone()), (first.amount, first.transaction_id.clone()));
    assert_eq!(engine.usage("agent-1").stats.recorded, 1, "recorded once");

    // 4 spent of 10: a 7 is still refused, a 6 still fits.
    let seven = PaymentIntent::builder("agent-1", "7", Rail::card("Acme").unwrap()).build().unwrap();
    assert!(matches!(engine.decide(&seven).verdict, Verdict::Denied(_)));
    let six = PaymentIntent::builder("agent-1", "6", Rail::card("Acme").unwrap()).build().unwrap();
    assert!(matches!(engine.decide(&six).verdict, Verdict::Approved(_)));
}

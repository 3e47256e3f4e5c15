#![allow(dead_code)]

use conto_core::jiff::Timestamp;
use conto_core::{
    Authorization, Decision, Engine, ManualClock, PaymentIntent, PolicySet, Rail, Verdict, Violation, ViolationType,
};

pub const RECIPIENT: &str = "0x1111111111111111111111111111111111111111";
pub const OTHER: &str = "0x3333333333333333333333333333333333333333";
/// The actors every test engine provisions.
pub const ACTORS: &[&str] = &["agent-1", "agent-2", "agent-7", "agent-a", "agent-b", "agent-c"];
pub const SENDER: &str = "0x2222222222222222222222222222222222222222";

/// A policy file with one policy holding `rules` (each a JSON rule object).
pub fn policy(rules: &[&str]) -> String {
    format!(r#"[{{"name": "p", "rules": [{}]}}]"#, rules.join(","))
}

/// One rule's JSON; `value` is given as the JSON string's content.
pub fn rule(rule_type: &str, operator: &str, value: &str, action: &str) -> String {
    serde_json::json!({"ruleType": rule_type, "operator": operator, "value": value, "action": action}).to_string()
}

pub fn engine_at(policies: &str, at: &str) -> (Engine, ManualClock) {
    let clock = ManualClock::new(at.parse::<Timestamp>().unwrap());
    let set = PolicySet::from_json(policies).unwrap_or_else(|e| panic!("policy should load: {e}"));
    let engine = Engine::builder().policies(set).clock(clock.clone()).actors(ACTORS.iter().copied()).unwrap().build();
    (engine, clock)
}

pub fn transfer(amount: &str) -> PaymentIntent {
    transfer_to("agent-1", amount, RECIPIENT)
}

pub fn transfer_to(actor: &str, amount: &str, to: &str) -> PaymentIntent {
    PaymentIntent::builder(actor, amount, Rail::transfer(8453, SENDER).unwrap()).recipient(to).build().unwrap()
}

pub fn x402(amount: &str, url: &str) -> PaymentIntent {
    PaymentIntent::builder("agent-1", amount, Rail::x402(url).unwrap()).recipient(RECIPIENT).build().unwrap()
}

pub fn mpp(amount: &str, url: &str, session: Option<&str>, deposit: Option<&str>) -> PaymentIntent {
    let mut rail = Rail::mpp(url).unwrap();
    if let Rail::Mpp { session_id, deposit: d, intent, method, .. } = &mut rail {
        *session_id = session.map(str::to_owned);
        *d = deposit.map(|x| x.parse().unwrap());
        *intent = Some("session".into());
        *method = Some("GET".into());
    }
    PaymentIntent::builder("agent-1", amount, rail).recipient(RECIPIENT).build().unwrap()
}

pub fn card(amount: &str, merchant: &str, mcc: &str) -> PaymentIntent {
    let rail = Rail::Card { card_id: Some("card_1".into()), merchant: merchant.into(), mcc: Some(mcc.into()) };
    PaymentIntent::builder("agent-1", amount, rail).build().unwrap()
}

pub fn approved(d: &Decision) -> &Authorization {
    match &d.verdict {
        Verdict::Approved(a) => a,
        other => panic!("expected approval, got {other:?}"),
    }
}

pub fn violation(d: &Decision) -> &Violation {
    match &d.verdict {
        Verdict::Denied(denial) => denial.violations.first().expect("a denial carries its violation"),
        other => panic!("expected denial, got {other:?}"),
    }
}

pub fn is_pending(d: &Decision) -> bool {
    matches!(d.verdict, Verdict::RequiresApproval(_))
}

/// Asserts a denial of type `kind`.
pub fn assert_denied(d: &Decision, kind: ViolationType) {
    assert_eq!(violation(d).kind, kind, "decision: {d:?}");
}

/// Approves and records at once.
pub fn spend(engine: &Engine, intent: &PaymentIntent) {
    let d = engine.decide(intent);
    let a = approved(&d).clone();
    engine.settle(&a, &conto_core::Settlement::default()).unwrap();
}

//! Evaluates compiled policies against one intent and one agent's ledger, in two phases: a
//! screen of the stateless rules that reads no ledger (the engine runs it outside the agent's
//! lock), then the stateful rules on the ledger. The answer is the one a single pass in
//! priority order gives: the first broken rule denies, approval reasons keep their order.
//!
//! Both phases read the policy set's [`Plan`](crate::policy::plan::Plan). The screen first asks
//! its flat arrays, family by family, whether any applicable stateless rule is broken; only a
//! payment that breaks one is walked in priority order. A rule is judged first on whether it
//! holds; what it measured, and its words, are made only when it is broken. The test
//! `the_plan_answers_as_one_ordered_pass` holds the result to one ordered pass.

use jiff::Timestamp;
use rust_decimal::Decimal;
use smallvec::SmallVec;

use super::ledger::{AgentLedger, CounterKey, Held, VelocityKey};

/// What evaluation reads from a ledger: the in-process [`AgentLedger`], or a snapshot a shared
/// ledger read in its transaction.
pub(crate) trait Reads {
    /// Spent + reserved in the period of `key` that starts at `start`.
    fn used(&mut self, key: &CounterKey, start: Timestamp) -> Micros;
    /// Approvals in the window of `key` ending at `now`.
    fn count(&mut self, key: &VelocityKey, now: Timestamp) -> usize;
}

impl Reads for AgentLedger {
    fn used(&mut self, key: &CounterKey, start: Timestamp) -> Micros {
        AgentLedger::used(self, key, start)
    }

    fn count(&mut self, key: &VelocityKey, now: Timestamp) -> usize {
        AgentLedger::count(self, key, now)
    }
}
use crate::decision::{Denial, Violation};
use crate::intent::PaymentIntent;
use crate::micros::Micros;
use crate::policy::plan::{Entry, Pos, Stateful};
use crate::policy::rules::cumulative::{Tally, counter_key};
use crate::policy::rules::lists::Listed;
use crate::policy::rules::velocity::velocity_key;
use crate::policy::rules::{Check, CompiledRule, Explain, Finding, Outcome, Polarity, RailFilter, Subject};
use crate::policy::{Cumulative, PolicySet};

/// What evaluation concluded.
pub(crate) enum Evaluation {
    /// Every applicable rule passed: reserve on these counters and windows.
    Pass { holds: Held, windows: Vec<VelocityKey>, daily: Option<(Decimal, Decimal)> },
    /// A rule denied.
    Denied(Denial),
    /// No rule denied, but some ask for a human.
    NeedsApproval(Vec<String>),
}

/// Where the loop goes after one rule.
enum Next {
    Continue,
    Deny(Denial),
}

/// A broken rule that asks for a human, at its place in evaluation order.
type Asked = (Pos, String);

/// Applies a rule's polarity and outcome to what it measured; words are written only for a
/// broken rule.
fn judge<D: Explain>(
    (pos, policy): (Pos, &str),
    rule: &CompiledRule,
    finding: Option<Finding<D>>,
    skip_approval: bool,
    approvals: &mut Vec<Asked>,
) -> Next {
    let Some(finding) = finding else { return Next::Continue };
    if !rule.polarity.broken(finding.holds) {
        return Next::Continue;
    }
    let detail = finding.detail.explain(&rule.rule_type);
    match rule.outcome {
        Outcome::Approval if skip_approval => Next::Continue,
        Outcome::Approval => {
            approvals.push((pos, format!("{policy}: {detail}")));
            Next::Continue
        }
        Outcome::Deny => {
            let violation = Violation {
                kind: rule.violation.clone(),
                limit: finding.detail.limit(),
                current: finding.detail.current(),
                message: Some(detail.clone()),
            };
            Next::Deny(Denial { reasons: vec![format!("{policy}: {detail}")], violations: vec![violation] })
        }
    }
}

/// The first phase of a decision, which needs no ledger: the stateless rules (amounts, lists,
/// times, blackouts) screened family by family, and walked in priority order, with words,
/// only when one is broken. The stateful ones (period spend, velocity) that
/// come before the first stateless denial are left to [`Screened::finish`], which the engine
/// runs under the agent's ledger lock (with the sweep, the journal write and the reservation).
pub(crate) struct Screened<'p> {
    subject: Subject<'p>,
    skip_approval: bool,
    policies: &'p PolicySet,
    /// Which policies apply to the actor, one bit per policy (the first 256 inline).
    applies: SmallVec<[u64; 4]>,
    /// Whether every policy does (none is inactive or assigned to other actors).
    all_apply: bool,
    /// The first stateless denial and where it stands, unless a stateful rule before it
    /// denies first.
    denied: Option<(Pos, Denial)>,
    approvals: Vec<Asked>,
}

/// Screens `intent` against every applicable policy's stateless rules. With `skip_approval`,
/// rules that would ask for a human are passed (a human already approved).
pub(crate) fn screen<'p>(
    policies: &'p PolicySet,
    intent: &'p PaymentIntent,
    now: Timestamp,
    skip_approval: bool,
) -> Screened<'p> {
    debug_assert!(policies.plan.matches(&policies.policies), "a plan built for other policies");
    let listed = Listed::of(&policies.lexicon, intent);
    let subject = Subject { intent, amount: Micros::of(intent.amount), now, listed };
    let mut applies = SmallVec::from_elem(0u64, policies.policies.len().div_ceil(64));
    let mut all_apply = true;
    for (p, policy) in policies.policies.iter().enumerate() {
        if policy.applies_to(intent.actor.as_str()) {
            applies[p / 64] |= 1 << (p % 64);
        } else {
            all_apply = false;
        }
    }
    let (denied, approvals) = (None, Vec::new());
    let mut screened = Screened { subject, skip_approval, policies, applies, all_apply, denied, approvals };
    if screened.any_stateless_broken() {
        screened.walk_stateless();
    }
    screened
}

impl<'p> Screened<'p> {
    /// Whether the rule at `at`, covering `rails`, is judged for this payment: its policy
    /// applies to the actor and it covers the payment's rail.
    fn applied(&self, (p, _): Pos, rails: RailFilter) -> bool {
        rails.matches(&self.subject.intent.rail) && (self.all_apply || self.applies_to(p as usize))
    }

    /// Whether policy `p` applies to the actor.
    fn applies_to(&self, p: usize) -> bool {
        self.applies.get(p / 64).is_some_and(|bits| (bits >> (p % 64)) & 1 == 1)
    }

    /// Whether any applicable stateless rule is broken, family by family (the plan's flat
    /// arrays; no words, no order).
    fn any_stateless_broken(&self) -> bool {
        let (plan, s) = (&self.policies.plan, &self.subject);
        let broken = |polarity: Polarity, holds: Option<bool>| holds.is_some_and(|h| polarity.broken(h));
        plan.amounts.iter().any(|e| self.applied(e.at, e.rails) && broken(e.polarity, e.test.holds(s)))
            || plan.lists.iter().any(|e| self.applied(e.at, e.rails) && broken(e.polarity, e.test.holds(s)))
            || plan.others.iter().any(|e| {
                let holds = self.judged(e.at).and_then(|(_, rule)| rule.check.stateless_holds(s));
                broken(e.polarity, holds)
            })
    }

    /// Judges the stateless rules in priority order, with words for the broken ones: the first
    /// denial, and the requests for approval before it.
    fn walk_stateless(&mut self) {
        let (policies, subject, skip_approval) = (self.policies, &self.subject, self.skip_approval);
        let mut approvals = std::mem::take(&mut self.approvals);
        let mut denied = None;
        'policies: for (p, policy) in policies.policies.iter().enumerate().filter(|(p, _)| self.applies_to(*p)) {
            for (r, rule) in policy.rules.iter().enumerate() {
                if !rule.rails.matches(&subject.intent.rail) {
                    continue;
                }
                // Policy files are far below 2^32 policies or rules.
                let pos = (p as u32, r as u32);
                let (at, a) = ((pos, policy.name.as_str()), &mut approvals);
                let next = match &rule.check {
                    Check::Cumulative(_) | Check::Velocity(_) => Next::Continue,
                    Check::Amount(c) => judge(at, rule, c.check(subject), skip_approval, a),
                    Check::List(c) => judge(at, rule, c.check.finding(subject), skip_approval, a),
                    Check::Time(c) => judge(at, rule, Some(c.check(subject)), skip_approval, a),
                    Check::Blackout(c) => judge(at, rule, Some(c.check(subject)), skip_approval, a),
                };
                if let Next::Deny(denial) = next {
                    denied = Some((pos, denial));
                    break 'policies;
                }
            }
        }
        (self.denied, self.approvals) = (denied, approvals);
    }

    /// Where stateful rules stop being judged: the first stateless denial, if any.
    fn until(&self) -> Option<Pos> {
        self.denied.as_ref().map(|(pos, _)| *pos)
    }

    /// The policy's name and the rule at `pos`, if the rule is judged for this intent: its
    /// policy applies to the actor and it covers the intent's rail.
    fn judged(&self, (p, r): Pos) -> Option<(&'p str, &'p CompiledRule)> {
        let policy = self.policies.policies.get(p as usize)?;
        let rule = policy.rules.get(r as usize)?;
        self.applied((p, r), rule.rails).then_some((policy.name.as_str(), rule))
    }

    /// The stateful rules judged for this payment before the first stateless denial, in order.
    fn stateful(&self) -> impl Iterator<Item = &'p Entry<Stateful>> + '_ {
        let until = self.until();
        let plan = &self.policies.plan;
        plan.stateful.iter().take_while(move |e| until.is_none_or(|u| e.at < u)).filter(|e| self.applied(e.at, e.rails))
    }

    /// The denial that stands without reading any ledger: a stateless rule denied and no
    /// stateful rule comes before it.
    pub fn denied_outright(&mut self) -> Option<Denial> {
        if self.denied.is_some() && self.stateful().next().is_none() {
            return self.denied.take().map(|(_, denial)| denial);
        }
        None
    }

    /// The second phase: judges the stateful rules on `ledger` at `now` (the time taken under
    /// the ledger's lock), in order, and concludes.
    pub fn finish(mut self, ledger: &mut impl Reads, now: Timestamp) -> Evaluation {
        self.subject.now = now;
        let mut tally = Tally::default();
        let mut windows: Vec<VelocityKey> = Vec::new();
        let mut approvals = std::mem::take(&mut self.approvals);
        let (until, subject, skip_approval) = (self.until(), &self.subject, self.skip_approval);
        // The stateful rules in order, up to the first stateless denial (under the lock).
        for e in self.policies.plan.stateful.iter() {
            if until.is_some_and(|u| e.at >= u) {
                break;
            }
            if !self.applied(e.at, e.rails) {
                continue;
            }
            let next = match &e.test {
                Stateful::Spend(c) => {
                    if !e.polarity.broken(c.holds(subject, ledger, &mut tally)) {
                        continue;
                    }
                    // A broken rule (rare): judged again with what it measured (the counter
                    // is read once, and found by number the second time).
                    let Some((name, rule)) = self.judged(e.at) else { continue };
                    let finding = c.check(subject, ledger, &mut tally);
                    judge((e.at, name), rule, Some(finding), skip_approval, &mut approvals)
                }
                Stateful::Velocity(c) => {
                    let finding = c.check(subject, ledger, &mut windows);
                    if !e.polarity.broken(finding.holds) {
                        continue;
                    }
                    let Some((name, rule)) = self.judged(e.at) else { continue };
                    judge((e.at, name), rule, Some(finding), skip_approval, &mut approvals)
                }
            };
            if let Next::Deny(denial) = next {
                return Evaluation::Denied(denial);
            }
        }
        if let Some((_, denial)) = self.denied {
            return Evaluation::Denied(denial);
        }
        if approvals.is_empty() {
            let daily = tally.daily();
            Evaluation::Pass { holds: tally.into_holds(), windows, daily }
        } else {
            // In priority order, as if judged in one pass (positions are unique).
            approvals.sort_by_key(|(pos, _)| *pos);
            Evaluation::NeedsApproval(approvals.into_iter().map(|(_, reason)| reason).collect())
        }
    }
}

/// Evaluates every applicable policy in priority order, both phases at once. With
/// `skip_approval`, rules that would ask for a human are passed (a human already approved).
pub(crate) fn evaluate(
    policies: &PolicySet,
    intent: &PaymentIntent,
    ledger: &mut impl Reads,
    now: Timestamp,
    skip_approval: bool,
) -> Evaluation {
    screen(policies, intent, now, skip_approval).finish(ledger, now)
}

/// Every counter and window the applicable rules keep for `intent`, whatever they decide.
pub(crate) fn all_keys(
    policies: &PolicySet,
    intent: &PaymentIntent,
    ledger: &mut impl Reads,
    now: Timestamp,
) -> (Vec<(CounterKey, Timestamp)>, Vec<VelocityKey>) {
    let mut holds: Vec<(CounterKey, Timestamp)> = Vec::new();
    let mut windows: Vec<VelocityKey> = Vec::new();
    // The stateful rules, from the plan (only they keep counters and windows).
    let stateful = policies.plan.stateful.iter().filter(|e| {
        let applies = policies.policies.get(e.at.0 as usize).is_some_and(|p| p.applies_to(intent.actor.as_str()));
        applies && e.rails.matches(&intent.rail)
    });
    for e in stateful {
        match &e.test {
            Stateful::Spend(c) => {
                let counter = &c.counter;
                let key = counter_key(counter, intent);
                let start = counter.period_start(now);
                ledger.used(&key, start);
                if !holds.iter().any(|(k, _)| *k == key) {
                    holds.push((key, start));
                }
            }
            Stateful::Velocity(v) => {
                let key = velocity_key(&v.0, intent);
                if !windows.contains(&key) {
                    windows.push(key);
                }
            }
        }
    }
    (holds, windows)
}

/// The cumulative counter with this id in `policies`, if one still keeps it.
pub(crate) fn cumulative<'a>(policies: &'a PolicySet, id: &str) -> Option<&'a Cumulative> {
    policies.policies.iter().flat_map(|p| p.rules.iter()).find_map(|r| match &r.check {
        Check::Cumulative(c) if c.counter.id.as_str() == id => Some(&c.counter),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{Evaluation, Next, all_keys, evaluate, judge};
    use crate::engine::ledger::AgentLedger;
    use crate::intent::{PaymentIntent, Rail};
    use crate::micros::Micros;
    use crate::policy::PolicySet;
    use crate::policy::rules::lists::Listed;
    use crate::policy::rules::{Check, Subject};

    const TO: &str = "0x1111111111111111111111111111111111111111";
    const OTHER: &str = "0x3333333333333333333333333333333333333333";
    const FROM: &str = "0x2222222222222222222222222222222222222222";

    /// What evaluation answered before the plan: every applicable rule judged in one pass, in
    /// priority order, each with its words.
    fn one_pass(
        policies: &PolicySet,
        intent: &PaymentIntent,
        ledger: &mut AgentLedger,
        now: Timestamp,
        skip: bool,
    ) -> Evaluation {
        let listed = Listed::of(&policies.lexicon, intent);
        let s = Subject { intent, amount: Micros::of(intent.amount), now, listed };
        let (mut tally, mut windows, mut asked) = (Default::default(), Vec::new(), Vec::new());
        for (p, policy) in policies.policies.iter().enumerate() {
            if !policy.applies_to(intent.actor.as_str()) {
                continue;
            }
            for (r, rule) in policy.rules.iter().enumerate().filter(|(_, r)| r.rails.matches(&intent.rail)) {
                let (at, a) = (((p as u32, r as u32), policy.name.as_str()), &mut asked);
                let next = match &rule.check {
                    Check::Amount(c) => judge(at, rule, c.check(&s), skip, a),
                    Check::List(c) => judge(at, rule, c.check.finding(&s), skip, a),
                    Check::Time(c) => judge(at, rule, Some(c.check(&s)), skip, a),
                    Check::Blackout(c) => judge(at, rule, Some(c.check(&s)), skip, a),
                    Check::Cumulative(c) => judge(at, rule, Some(c.check(&s, ledger, &mut tally)), skip, a),
                    Check::Velocity(c) => judge(at, rule, Some(c.check(&s, ledger, &mut windows)), skip, a),
                };
                if let Next::Deny(denial) = next {
                    return Evaluation::Denied(denial);
                }
            }
        }
        if asked.is_empty() {
            let daily = tally.daily();
            Evaluation::Pass { holds: tally.into_holds(), windows, daily }
        } else {
            Evaluation::NeedsApproval(asked.into_iter().map(|(_, reason)| reason).collect())
        }
    }

    /// An evaluation in words, to compare two.
    fn said(e: &Evaluation) -> String {
        match e {
            Evaluation::Pass { holds, windows, daily } => {
                let holds: Vec<_> = holds.iter().map(|(k, start)| (k.id.as_str(), &k.scope_key, *start)).collect();
                let windows: Vec<_> = windows.iter().map(|w| (w.id.as_str(), &w.scope_key)).collect();
                format!("pass {holds:?} {windows:?} {daily:?}")
            }
            Evaluation::Denied(denial) => format!("denied {denial:?}"),
            Evaluation::NeedsApproval(reasons) => format!("approval {reasons:?}"),
        }
    }

    fn rule(kind: usize, limit: &str) -> Value {
        let (rule_type, operator, value, action) = match kind {
            0 => ("MAX_AMOUNT", "LTE", limit.to_owned(), "ALLOW"),
            1 => ("MAX_AMOUNT", "GT", limit.to_owned(), "DENY"),
            2 => ("REQUIRE_APPROVAL_ABOVE", "GT", limit.to_owned(), "ALLOW"),
            3 => ("ALLOWED_CATEGORIES", "IN_LIST", r#"["api_provider","CLOUD"]"#.to_owned(), "ALLOW"),
            4 => ("BLOCKED_CATEGORIES", "IN_LIST", r#"["cloud"]"#.to_owned(), "DENY"),
            5 => ("ALLOWED_COUNTERPARTIES", "IN_LIST", format!(r#"["{TO}"]"#), "ALLOW"),
            6 => ("DAILY_LIMIT", "LTE", limit.to_owned(), "ALLOW"),
            7 => ("DAILY_LIMIT", "LTE", limit.to_owned(), "REQUIRE_APPROVAL"),
            8 => ("X402_PRICE_CEILING", "LTE", limit.to_owned(), "ALLOW"),
            9 => ("WEEKLY_LIMIT", "LTE", limit.to_owned(), "REQUIRE_APPROVAL"),
            10 => ("TIME_WINDOW", "BETWEEN", r#"{"start":"00:00","end":"12:00"}"#.to_owned(), "ALLOW"),
            11 => ("VELOCITY_LIMIT", "LTE", r#"{"maxCount":1,"period":"HOUR"}"#.to_owned(), "ALLOW"),
            _ => ("X402_ALLOWED_SERVICES", "IN_LIST", r#"["example.com"]"#.to_owned(), "ALLOW"),
        };
        json!({"ruleType": rule_type, "operator": operator, "value": value, "action": action})
    }

    fn policy_set(count: std::ops::Range<usize>, rules: std::ops::Range<usize>) -> impl Strategy<Value = PolicySet> {
        let limit = prop_oneof![Just("1"), Just("10"), Just("100")];
        let rules = prop::collection::vec((0usize..13, limit), rules);
        let assigned = prop_oneof![Just(None), Just(Some("agent-1")), Just(Some("agent-2"))];
        let policy = (rules, 0i64..3, assigned, prop::bool::weighted(0.9));
        prop::collection::vec(policy, count).prop_map(|policies| {
            let docs: Vec<Value> = policies
                .into_iter()
                .enumerate()
                .map(|(i, (rules, priority, assigned, active))| {
                    let rules: Vec<Value> = rules.iter().map(|(kind, limit)| rule(*kind, limit)).collect();
                    let mut doc =
                        json!({"name": format!("p{i}"), "priority": priority, "isActive": active, "rules": rules});
                    if let Some(agent) = assigned {
                        doc["agentIds"] = json!([agent]);
                    }
                    doc
                })
                .collect();
            PolicySet::from_value(json!(docs)).unwrap()
        })
    }

    fn intent() -> impl Strategy<Value = PaymentIntent> {
        let amount = prop_oneof![Just("0.5"), Just("5"), Just("50")];
        let category = prop_oneof![Just(None), Just(Some("API_PROVIDER")), Just(Some("cloud")), Just(Some("food"))];
        let recipient = prop_oneof![Just(TO), Just(OTHER)];
        let x402 = prop_oneof![Just(None), Just(Some("https://api.example.com/v1")), Just(Some("https://other.io/"))];
        (amount, category, recipient, x402).prop_map(|(amount, category, recipient, x402)| {
            let rail = match x402 {
                Some(url) => Rail::x402(url).unwrap(),
                None => Rail::transfer(8453, FROM).unwrap(),
            };
            let mut b = PaymentIntent::builder("agent-1", amount, rail).recipient(recipient);
            if let Some(category) = category {
                b = b.category(category);
            }
            b.build().unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The plan (a screen of the stateless rules, then the stateful ones under the lock)
        /// answers as one pass over every rule in priority order: the same denial and words,
        /// the same requests for approval in order, the same counters held and daily figures.
        /// One set in five has more than 64 policies and list rules (more than one word of bits).
        #[test]
        fn the_plan_answers_as_one_ordered_pass(
            policies in prop_oneof![4 => policy_set(1..7, 1..5), 1 => policy_set(60..90, 1..4)],
            intent in intent(), before in prop_oneof![Just(None), Just(Some("4"))],
            morning in any::<bool>(), skip in any::<bool>(),
        ) {
            let now: Timestamp = if morning { "2026-03-04T09:00:00Z" } else { "2026-03-04T15:00:00Z" }.parse().unwrap();
            let (mut planned, mut passed) = (AgentLedger::default(), AgentLedger::default());
            if let Some(amount) = before {
                // Earlier spend on the same counters and windows.
                let earlier = PaymentIntent::builder("agent-1", amount, intent.rail.clone()).recipient(TO).build().unwrap();
                for ledger in [&mut planned, &mut passed] {
                    let (holds, windows) = all_keys(&policies, &earlier, ledger, now);
                    ledger.restore_spend(&holds, &windows, Micros::of(earlier.amount), now);
                }
            }
            let plan = evaluate(&policies, &intent, &mut planned, now, skip);
            let pass = one_pass(&policies, &intent, &mut passed, now, skip);
            prop_assert_eq!(said(&plan), said(&pass));
        }
    }
}

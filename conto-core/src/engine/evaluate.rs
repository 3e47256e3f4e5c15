//! Evaluates compiled policies against one intent and one agent's ledger, in two phases: a
//! screen of the stateless rules that reads no ledger (the engine runs it outside the agent's
//! lock), then the stateful rules on the ledger. The answer is the one a single pass in
//! priority order gives: the first broken rule denies, approval reasons keep their order.
//!
//! Both phases read the policy set's [`Plan`](crate::policy::plan::Plan). The screen first asks
//! whether any applicable stateless rule is broken: of the rail's folded caps and lists when
//! every policy applies to the actor, else of its flat arrays family by family; only a payment
//! that breaks one is walked in priority order. The stateful phase likewise checks the rail's
//! folded spend rules first, one range per counter, and judges rule by rule only on a break.
//! A rule is judged first on whether it holds; what it measured, and its words, are made only
//! when it is broken. The test `the_plan_answers_as_one_ordered_pass` holds the result to one
//! ordered pass.

use jiff::{SignedDuration, Timestamp};
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
use crate::policy::plan::{Entry, Folded, Pos, Stateful, rail_slot};
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
/// times, blackouts) screened (folded, or family by family), and walked in priority order,
/// with words, only when one is broken. The stateful ones (period spend, velocity) that
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

/// How long an approval of `intent` lives when an applicable `MPP_MAX_SESSION_DURATION`
/// sets it: the shortest such.
pub(crate) fn session_cap(policies: &PolicySet, intent: &PaymentIntent) -> Option<SignedDuration> {
    let applies = |e: &&Entry<_>| {
        e.rails.matches(&intent.rail)
            && policies.policies.get(e.at.0 as usize).is_some_and(|p| p.applies_to(intent.actor.as_str()))
    };
    policies.plan.sessions.iter().filter(applies).map(|e| e.test.0).min()
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
    let subject = Subject::new(intent, now, listed);
    let words = policies.policies.len().div_ceil(64);
    // A set whose every policy applies to every actor needs no asking (and most sets are).
    let (mut applies, mut all_apply) = (SmallVec::from_elem(if policies.partial { 0 } else { u64::MAX }, words), true);
    if policies.partial {
        for (p, policy) in policies.policies.iter().enumerate() {
            if policy.applies_to(intent.actor.as_str()) {
                applies[p / 64] |= 1 << (p % 64);
            } else {
                all_apply = false;
            }
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

    /// The plan's folded rules for the payment's rail.
    fn folded(&self) -> &'p Folded {
        &self.policies.plan.folded[rail_slot(&self.subject.intent.rail)]
    }

    /// Whether policy `p` applies to the actor.
    fn applies_to(&self, p: usize) -> bool {
        self.applies.get(p / 64).is_some_and(|bits| (bits >> (p % 64)) & 1 == 1)
    }

    /// Whether any applicable stateless rule is broken: the rail's folded caps, lists and
    /// distinct time rules when every policy applies, else family by family from the plan's
    /// flat arrays (no words, no order).
    fn any_stateless_broken(&self) -> bool {
        let (plan, s) = (&self.policies.plan, &self.subject);
        let broken = |polarity: Polarity, holds: Option<bool>| holds.is_some_and(|h| polarity.broken(h));
        let any_amount =
            || plan.amounts.iter().any(|e| self.applied(e.at, e.rails) && broken(e.polarity, e.test.holds(s)));
        if self.all_apply {
            // Every policy applies: the rail's folded rules answer for all of them.
            let folded = self.folded();
            let amount = match folded.amounts {
                Some((lo, hi)) => !(lo..=hi).contains(&i128::from(s.amount.0)),
                None => any_amount(),
            };
            return amount
                || s.listed.breaks(&folded.lists)
                || folded.timed.iter().any(|(rule, polarity)| polarity.broken(rule.holds(s)));
        }
        any_amount()
            || plan.lists.iter().any(|e| self.applied(e.at, e.rails) && broken(e.polarity, e.test.holds(s)))
            || plan.others.iter().any(|e| self.applied(e.at, e.rails) && e.polarity.broken(e.test.holds(s)))
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
                    Check::Cumulative(_) | Check::Velocity(_) | Check::Session(_) => Next::Continue,
                    Check::Amount(c) => judge(at, rule, c.check(subject), skip_approval, a),
                    Check::List(c) => judge(at, rule, c.check.finding(subject), skip_approval, a),
                    Check::Time(c) => judge(at, rule, Some(c.check(subject)), skip_approval, a),
                    Check::Blackout(c) => judge(at, rule, Some(c.check(subject)), skip_approval, a),
                    Check::Unevaluated(c) => judge(at, rule, Some(c.check(subject)), skip_approval, a),
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
    /// the ledger's lock), in order, and concludes. Called once: it takes the screen's findings.
    pub fn finish(&mut self, ledger: &mut impl Reads, now: Timestamp) -> Evaluation {
        self.subject.now = now;
        // A local time worked out for the screen's instant is not this one's.
        self.subject.local.set(None);
        if let Some(pass) = self.folded_pass(ledger) {
            return pass;
        }
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
        if let Some((_, denial)) = self.denied.take() {
            return Evaluation::Denied(denial);
        }
        concluded(tally, windows, approvals)
    }
}

/// What no denial leaves: a pass on the counters and windows read, or the requests for a
/// human in priority order, as if judged in one pass (positions are unique).
fn concluded(tally: Tally, windows: Vec<VelocityKey>, mut approvals: Vec<Asked>) -> Evaluation {
    if approvals.is_empty() {
        let daily = tally.daily();
        Evaluation::Pass { holds: tally.into_holds(), windows, daily }
    } else {
        approvals.sort_by_key(|(pos, _)| *pos);
        Evaluation::NeedsApproval(approvals.into_iter().map(|(_, reason)| reason).collect())
    }
}

impl Screened<'_> {
    /// When every policy applies and no stateless rule denied: the rail's folded spend rules
    /// (each counter read once, checked against one range) and its velocity rules, in order.
    /// `None` when they do not fold or one is broken: the rules are then judged one by one,
    /// with their words (reading a counter again changes nothing).
    fn folded_pass(&mut self, ledger: &mut impl Reads) -> Option<Evaluation> {
        if !self.all_apply || self.denied.is_some() {
            return None;
        }
        let folded = self.folded();
        let (mut tally, mut windows) = (Tally::default(), Vec::new());
        if !folded.spend.as_ref()?.holds(&self.subject, ledger, &mut tally) {
            return None;
        }
        for (rule, polarity) in &folded.velocity {
            if polarity.broken(rule.check(&self.subject, ledger, &mut windows).holds) {
                return None;
            }
        }
        // The common pass is built here: moving the (large) tally into `concluded` copies it.
        Some(if self.approvals.is_empty() {
            let daily = tally.daily();
            Evaluation::Pass { holds: tally.into_holds(), windows, daily }
        } else {
            concluded(tally, windows, std::mem::take(&mut self.approvals))
        })
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

/// The least limit the rules that apply to `actor` now set on counter `id`, and the rails that
/// counter counts; `None` when no such rule counts it.
pub(crate) fn counter_limit(policies: &PolicySet, actor: &str, id: &str) -> Option<(Decimal, &'static str)> {
    policies
        .policies
        .iter()
        .filter(|p| p.applies_to(actor))
        .flat_map(|p| p.rules.iter())
        .filter_map(|r| match &r.check {
            Check::Cumulative(c) if c.counter.id.as_str() == id => Some((c.cap(), r.rails.name())),
            _ => None,
        })
        .min_by(|a, b| a.0.cmp(&b.0))
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
        let s = Subject::new(intent, now, listed);
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
                    Check::Unevaluated(c) => judge(at, rule, Some(c.check(&s)), skip, a),
                    Check::Cumulative(c) => judge(at, rule, Some(c.check(&s, ledger, &mut tally)), skip, a),
                    Check::Velocity(c) => judge(at, rule, Some(c.check(&s, ledger, &mut windows)), skip, a),
                    Check::Session(_) => Next::Continue,
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
            12 => ("X402_ALLOWED_SERVICES", "IN_LIST", r#"["example.com"]"#.to_owned(), "ALLOW"),
            // Caps of every comparison and rail, and lists that block or allow by what is absent.
            13 => ("MAX_AMOUNT", "LT", limit.to_owned(), "ALLOW"),
            14 => ("MAX_AMOUNT", "GTE", limit.to_owned(), "DENY"),
            15 => ("REQUIRE_APPROVAL_ABOVE", "GTE", limit.to_owned(), "ALLOW"),
            16 => ("MAX_AMOUNT", "EQ", limit.to_owned(), "DENY"),
            17 => ("MAX_AMOUNT", "NE", limit.to_owned(), "DENY"),
            18 => ("CARD_MAX_AMOUNT", "LTE", limit.to_owned(), "ALLOW"),
            19 => ("MPP_MAX_SESSION_DEPOSIT", "LTE", limit.to_owned(), "ALLOW"),
            20 => ("BLOCKED_COUNTERPARTIES", "IN_LIST", format!(r#"["{TO}"]"#), "DENY"),
            21 => ("ALLOWED_COUNTERPARTIES", "NOT_IN_LIST", format!(r#"["{OTHER}"]"#), "ALLOW"),
            22 => ("CARD_ALLOWED_MERCHANTS", "IN_LIST", r#"["Acme"]"#.to_owned(), "ALLOW"),
            23 => ("MAX_AMOUNT", "LTE", "0.000001".to_owned(), "ALLOW"),
            24 => ("MPP_MAX_PER_REQUEST", "LTE", limit.to_owned(), "ALLOW"),
            // Spend limits of every comparison (`=` and `!=` do not fold) and on other counters.
            25 => ("DAILY_LIMIT", "LT", limit.to_owned(), "ALLOW"),
            26 => ("MONTHLY_LIMIT", "GT", limit.to_owned(), "DENY"),
            27 => ("DAILY_LIMIT", "GTE", limit.to_owned(), "REQUIRE_APPROVAL"),
            28 => ("WEEKLY_LIMIT", "EQ", limit.to_owned(), "DENY"),
            29 => ("DAILY_LIMIT", "NE", limit.to_owned(), "ALLOW"),
            30 => ("X402_MAX_PER_SERVICE", "LTE", limit.to_owned(), "ALLOW"),
            31 => ("MPP_MAX_PER_SERVICE", "LTE", limit.to_owned(), "ALLOW"),
            // Denied when the comparison holds, below a limit.
            32 => ("MAX_AMOUNT", "LTE", limit.to_owned(), "DENY"),
            33 => ("DAILY_LIMIT", "LT", limit.to_owned(), "DENY"),
            // Time rules in other zones and of every polarity, repeated across policies (the
            // fold keeps the distinct ones), and blackouts.
            34 => ("DAY_OF_WEEK", "NOT_IN_LIST", r#"["Sat","Sun"]"#.to_owned(), "ALLOW"),
            35 => ("DAY_OF_WEEK", "IN_LIST", r#"["Wed"]"#.to_owned(), "DENY"),
            36 => (
                "TIME_WINDOW",
                "NOT_BETWEEN",
                r#"{"start":"20:00","end":"23:00","timezone":"Asia/Tokyo"}"#.to_owned(),
                "REQUIRE_APPROVAL",
            ),
            37 => ("BLACKOUT_PERIOD", "BETWEEN", r#"{"windows":[{"start":"14:00","end":"16:00"}]}"#.to_owned(), "DENY"),
            38 => ("TIME_WINDOW", "BETWEEN", r#"{"start":"00:00","end":"12:00"}"#.to_owned(), "DENY"),
            _ => ("VELOCITY_LIMIT", "LTE", r#"{"maxCount":2,"period":"DAY"}"#.to_owned(), "ALLOW"),
        };
        json!({"ruleType": rule_type, "operator": operator, "value": value, "action": action})
    }

    /// Policy sets of `count` policies of `rules` rules each; with `everyone`, every policy is
    /// active and applies to every actor (the screen's folded path).
    fn policy_set(
        count: std::ops::Range<usize>,
        rules: std::ops::Range<usize>,
        everyone: bool,
    ) -> impl Strategy<Value = PolicySet> {
        let limit = prop_oneof![Just("1"), Just("10"), Just("100"), Just("4.9999995")];
        let rules = prop::collection::vec((0usize..40, limit), rules);
        let assigned = if everyone {
            Just(None).boxed()
        } else {
            prop_oneof![Just(None), Just(Some("agent-1")), Just(Some("agent-2"))].boxed()
        };
        let policy = (rules, 0i64..3, assigned, prop::bool::weighted(if everyone { 1.0 } else { 0.9 }));
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

    /// An MPP session payment with a deposit of 5.
    fn mpp_with_deposit() -> Rail {
        match Rail::mpp("https://api.example.com/v1").unwrap() {
            Rail::Mpp { resource_url, service_domain, session_id, intent, method, .. } => Rail::Mpp {
                resource_url,
                service_domain,
                session_id,
                intent,
                deposit: Some("5".parse().unwrap()),
                method,
            },
            _ => unreachable!("an MPP rail"),
        }
    }

    fn intent() -> impl Strategy<Value = PaymentIntent> {
        let amount = prop_oneof![Just("0.5"), Just("5"), Just("50"), Just("1"), Just("10"), Just("0.000001")];
        let category = prop_oneof![Just(None), Just(Some("API_PROVIDER")), Just(Some("cloud")), Just(Some("food"))];
        let recipient = prop_oneof![Just(Some(TO)), Just(Some(OTHER)), Just(None)];
        let rail = prop_oneof![
            Just(Rail::transfer(8453, FROM).unwrap()),
            Just(Rail::x402("https://api.example.com/v1").unwrap()),
            Just(Rail::x402("https://other.io/").unwrap()),
            Just(Rail::mpp("https://api.example.com/v1").unwrap()),
            Just(mpp_with_deposit()),
            Just(Rail::card("Acme").unwrap()),
            Just(Rail::request(None)),
        ];
        (amount, category, recipient, rail).prop_map(|(amount, category, recipient, rail)| {
            // Only a card payment may have no recipient.
            let recipient = if matches!(rail, Rail::Card { .. }) { recipient } else { recipient.or(Some(TO)) };
            let mut b = PaymentIntent::builder("agent-1", amount, rail);
            if let Some(recipient) = recipient {
                b = b.recipient(recipient);
            }
            if let Some(category) = category {
                b = b.category(category);
            }
            b.build().unwrap()
        })
    }

    /// The instant the unit tests decide at: a Wednesday morning, inside kind 10's window.
    fn morning() -> Timestamp {
        "2026-03-04T09:00:00Z".parse().unwrap()
    }

    /// A transfer of `amount` to `TO`.
    fn transfer(amount: &str) -> PaymentIntent {
        PaymentIntent::builder("agent-1", amount, Rail::transfer(8453, FROM).unwrap()).recipient(TO).build().unwrap()
    }

    /// A transfer of 5 in the `API_PROVIDER` category.
    fn api_payment() -> PaymentIntent {
        PaymentIntent::builder("agent-1", "5", Rail::transfer(8453, FROM).unwrap())
            .recipient(TO)
            .category("API_PROVIDER")
            .build()
            .unwrap()
    }

    /// One active policy with a rule of each kind, at `limit`.
    fn one_policy(kinds: &[usize], limit: &str) -> PolicySet {
        let rules: Vec<Value> = kinds.iter().map(|k| rule(*k, limit)).collect();
        PolicySet::from_value(json!([{"name": "p", "priority": 0, "isActive": true, "rules": rules}])).unwrap()
    }

    /// Whether the screen finds a stateless rule broken, asked the folded rules and then each
    /// rule (the first only when every policy applies).
    fn broken_folded_and_each(
        policies: &PolicySet,
        payment: &PaymentIntent,
        now: Timestamp,
        skip: bool,
    ) -> (bool, bool) {
        let mut screened = super::screen(policies, payment, now, skip);
        let folded = screened.any_stateless_broken();
        screened.all_apply = false;
        (folded, screened.any_stateless_broken())
    }

    /// On a limit and one micro-unit either side of it, every cap and spend limit, of every
    /// comparison and action, is judged folded as one by one: the same answer, and the same
    /// "broken" from the screen.
    #[test]
    fn folded_limits_answer_as_each_rule_on_and_around_the_limit() {
        let kinds = [0, 1, 2, 6, 7, 9, 13, 14, 15, 16, 17, 25, 26, 27, 28, 29, 32, 33];
        for kind in kinds {
            let policies = one_policy(&[kind], "10");
            for amount in ["9.999999", "10", "10.000001"] {
                let payment = transfer(amount);
                let plan = evaluate(&policies, &payment, &mut AgentLedger::default(), morning(), false);
                let pass = one_pass(&policies, &payment, &mut AgentLedger::default(), morning(), false);
                assert_eq!(said(&plan), said(&pass), "rule {kind}, amount {amount}");
                let (folded, each) = broken_folded_and_each(&policies, &payment, morning(), false);
                assert_eq!(folded, each, "rule {kind}, amount {amount}");
            }
        }
    }

    /// With every policy applying, a payment that breaks nothing is concluded by the folded
    /// rules (no rule judged one by one), and a set with an `=` spend limit is not folded.
    #[test]
    fn the_folded_rules_conclude_a_payment_that_breaks_nothing() {
        let payment = api_payment();
        let folded = one_policy(&[0, 3, 5, 6, 11], "100");
        let mut screened = super::screen(&folded, &payment, morning(), false);
        assert!(matches!(screened.folded_pass(&mut AgentLedger::default()), Some(Evaluation::Pass { .. })));
        let unfolded = one_policy(&[0, 6, 28], "100");
        let mut screened = super::screen(&unfolded, &payment, morning(), false);
        assert!(screened.folded_pass(&mut AgentLedger::default()).is_none());
    }

    /// The folded time rules keep a rule once per polarity: the same window allowed in one
    /// policy and denied in another (kinds 10 and 38) is broken by the second, in either order,
    /// folded or not; the same window repeated is one folded rule.
    #[test]
    fn the_folded_time_rules_keep_each_polarity_of_a_repeated_window() {
        let payment = api_payment();
        let set = |kinds: &[usize]| {
            let docs: Vec<Value> = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| json!({"name": format!("p{i}"), "priority": 0, "isActive": true, "rules": [rule(*k, "100")]}))
                .collect();
            PolicySet::from_value(json!(docs)).unwrap()
        };
        for (kinds, broken) in [(&[10, 38][..], true), (&[38, 10][..], true), (&[10, 10, 10][..], false)] {
            let policies = set(kinds);
            assert!(super::screen(&policies, &payment, morning(), false).all_apply);
            let (folded, each) = broken_folded_and_each(&policies, &payment, morning(), false);
            assert_eq!(folded, broken, "{kinds:?} folded");
            assert_eq!(each, broken, "{kinds:?} one by one");
        }
        assert_eq!(set(&[10, 10, 10]).plan.folded[0].timed.len(), 1, "a repeated window is folded once");
    }

    /// A card payment without a recipient breaks no counterparty rule, allowlist or blocklist,
    /// whether the screen asks the folded masks or each rule; a category allowlist it is not on
    /// it breaks either way.
    #[test]
    fn a_payment_without_a_recipient_breaks_no_counterparty_rule_folded_or_not() {
        let card = PaymentIntent::builder("agent-1", "5", Rail::card("Acme").unwrap()).build().unwrap();
        for (kind, broken) in [(5, false), (20, false), (21, false), (3, true)] {
            let policies = one_policy(&[kind], "10");
            assert!(super::screen(&policies, &card, morning(), false).all_apply);
            let (folded, each) = broken_folded_and_each(&policies, &card, morning(), false);
            assert_eq!(folded, broken, "rule {kind}, folded");
            assert_eq!(each, broken, "rule {kind}, each");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The plan (a screen of the stateless rules, then the stateful ones under the lock)
        /// answers as one pass over every rule in priority order: the same denial and words,
        /// the same requests for approval in order, the same counters held and daily figures.
        /// Some sets have more than 64 policies and list rules (more than one word of bits);
        /// in some, every policy applies to the actor (the folded caps and lists screen them).
        #[test]
        fn the_plan_answers_as_one_ordered_pass(
            policies in prop_oneof![
                4 => policy_set(1..7, 1..5, false),
                1 => policy_set(60..90, 1..4, false),
                3 => policy_set(1..7, 1..5, true),
                1 => policy_set(60..90, 1..4, true),
            ],
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
            // The folded caps and lists say "broken" exactly when a rule is (not merely when
            // one may be: a false alarm would cost a walk without changing the answer).
            let (folded, each) = broken_folded_and_each(&policies, &intent, now, skip);
            prop_assert_eq!(folded, each);
        }
    }
}

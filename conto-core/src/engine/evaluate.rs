//! Evaluates compiled policies against one intent and one agent's ledger.
//!
//! The hot path allocates as little as it can: a rule's human-readable explanation is written
//! only when the rule is broken, and each period start is computed once per decision.

use std::sync::Arc;

use jiff::Timestamp;
use rust_decimal::Decimal;

use super::ledger::{AgentLedger, CounterKey, VelocityKey, period_start};

/// What evaluation reads from a ledger: the in-process [`AgentLedger`], or a snapshot a shared
/// ledger read in its transaction.
pub(crate) trait Reads {
    /// Spent + reserved in the period of `key` that starts at `start`.
    fn used(&mut self, key: &CounterKey, start: Timestamp) -> Decimal;
    /// Approvals in the window of `key` ending at `now`.
    fn count(&mut self, key: &VelocityKey, now: Timestamp) -> usize;
}

impl Reads for AgentLedger {
    fn used(&mut self, key: &CounterKey, start: Timestamp) -> Decimal {
        AgentLedger::used(self, key, start)
    }

    fn count(&mut self, key: &VelocityKey, now: Timestamp) -> usize {
        AgentLedger::count(self, key, now)
    }
}
use crate::decision::{Denial, Violation};
use crate::intent::{PaymentIntent, Rail};
use crate::policy::rules::{
    Blackout, Check, Cmp, CompiledRule, Field, Measure, Outcome, Period, Polarity, in_daily_window, local,
};
use crate::policy::{Cumulative, PolicySet, Velocity};

/// What evaluation concluded.
pub(crate) enum Evaluation {
    /// Every applicable rule passed: reserve on these counters and windows.
    Pass { holds: Vec<(CounterKey, Timestamp)>, windows: Vec<VelocityKey>, daily: Option<(Decimal, Decimal)> },
    /// A rule denied.
    Denied(Denial),
    /// No rule denied, but some ask for a human.
    NeedsApproval(Vec<String>),
}

/// What one rule measured; explained in words only if the rule is broken.
struct Finding<'a> {
    holds: bool,
    limit: Option<Decimal>,
    current: Option<Decimal>,
    detail: Detail<'a>,
}

enum Detail<'a> {
    Amount { what: &'static str, subject: Decimal, cmp: Cmp, limit: Decimal },
    Cumulative { period: Period, used: Decimal, amount: Decimal, cmp: Cmp, limit: Decimal },
    Velocity { after: usize, window: jiff::SignedDuration, max: u32 },
    Missing(Field),
    Listed { field: Field, value: &'a str, listed: bool },
    TimeOfDay { local: jiff::civil::Time, inside: bool, start: jiff::civil::Time, end: jiff::civil::Time, tz: &'a str },
    Weekday { day: u8, listed: bool },
    Range { now: Timestamp, inside: bool, start: Timestamp, end: Timestamp },
    Blackout(Option<&'a str>),
}

fn explain(rule_type: &str, d: &Detail<'_>) -> String {
    match d {
        Detail::Amount { what, subject, cmp, limit } => {
            format!("{rule_type}: {what} {subject}, limit {} {limit}", cmp.symbol())
        }
        Detail::Cumulative { period, used, amount, cmp, limit } => format!(
            "{rule_type} {} spend would be {} ({used} used + {amount} requested), limit {} {limit}",
            period.label(),
            used + amount,
            cmp.symbol()
        ),
        Detail::Velocity { after, window, max } => {
            let unit = match window.as_secs() {
                60 => "minute",
                3600 => "hour",
                _ => "day",
            };
            format!("{rule_type} payments in the last {unit} would be {after}, limit {max}")
        }
        Detail::Missing(field) => format!("{rule_type}: the payment has no {}", field.label()),
        Detail::Listed { field, value, listed } => {
            format!("{} `{value}` is {} the {rule_type} list", field.label(), if *listed { "on" } else { "not on" })
        }
        Detail::TimeOfDay { local, inside, start, end, tz } => format!(
            "local time {} is {} the window {}-{} ({tz})",
            local.strftime("%H:%M"),
            if *inside { "inside" } else { "outside" },
            start.strftime("%H:%M"),
            end.strftime("%H:%M"),
        ),
        Detail::Weekday { day, listed } => {
            const NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
            format!("{} is {} the allowed days", NAMES[*day as usize], if *listed { "among" } else { "not among" })
        }
        Detail::Range { now, inside, start, end } => {
            format!("{now} is {} the permitted range {start} to {end}", if *inside { "inside" } else { "outside" })
        }
        Detail::Blackout(Some(reason)) => format!("blackout period in effect ({reason})"),
        Detail::Blackout(None) => "blackout period in effect".to_owned(),
    }
}

fn counter_key(c: &Cumulative, intent: &PaymentIntent) -> CounterKey {
    CounterKey { id: c.id.clone(), scope_key: c.scope.key(intent), period: c.period, tz: c.tz_name.clone() }
}

fn velocity_key(v: &Velocity, intent: &PaymentIntent) -> VelocityKey {
    VelocityKey { id: v.id.clone(), scope_key: v.scope.key(intent), window: v.window }
}

/// Period starts computed during one decision (policies usually share a few periods and zones):
/// the first four kept inline, so the common decision allocates nothing for them.
#[derive(Default)]
struct Starts {
    inline: [Option<(Period, Arc<str>, Timestamp)>; 4],
    more: Vec<(Period, Arc<str>, Timestamp)>,
}

impl Starts {
    fn get(&mut self, c: &Cumulative, now: Timestamp) -> Timestamp {
        let same = |(p, tz, _): &&(Period, Arc<str>, Timestamp)| {
            *p == c.period && (Arc::ptr_eq(tz, &c.tz_name) || **tz == *c.tz_name)
        };
        if let Some((_, _, t)) = self.inline.iter().flatten().chain(self.more.iter()).find(same) {
            return *t;
        }
        let t = period_start(c.period, &c.tz, now);
        let entry = (c.period, c.tz_name.clone(), t);
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(entry),
            None => self.more.push(entry),
        }
        t
    }
}

/// Per-decision values by position, the first eight inline (no allocation in the common case).
#[derive(Default)]
struct Used {
    inline: [Decimal; 8],
    len: usize,
    more: Vec<Decimal>,
}

impl Used {
    fn push(&mut self, value: Decimal) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = value,
            None => self.more.push(value),
        }
        self.len += 1;
    }

    fn get(&self, i: usize) -> Decimal {
        match self.inline.get(i) {
            Some(v) => *v,
            None => self.more.get(i - self.inline.len()).copied().unwrap_or_default(),
        }
    }
}

/// The scratch state of one evaluation.
struct Scratch {
    holds: Vec<(CounterKey, Timestamp)>,
    /// What each counter in `holds` had used, read once per decision (many rules may read the
    /// same counter: they share its id, interned, so they are told apart by pointer first).
    used: Used,
    windows: Vec<VelocityKey>,
    daily: Option<(Decimal, Decimal)>,
    starts: Starts,
}

/// Evaluates every applicable policy in priority order. With `skip_approval`, rules that would
/// ask for a human are passed (a human already approved).
pub(crate) fn evaluate(
    policies: &PolicySet,
    intent: &PaymentIntent,
    ledger: &mut impl Reads,
    now: Timestamp,
    skip_approval: bool,
) -> Evaluation {
    let amount = intent.amount.get();
    let mut scratch = Scratch {
        holds: Vec::new(),
        used: Used::default(),
        windows: Vec::new(),
        daily: None,
        starts: Starts::default(),
    };
    let mut approvals: Vec<String> = Vec::new();

    for policy in policies.policies.iter().filter(|p| p.applies_to(intent.actor.as_str())) {
        for rule in &policy.rules {
            if !rule.rails.matches(&intent.rail) {
                continue;
            }
            let Some(finding) = check(rule, intent, amount, ledger, now, &mut scratch) else {
                continue;
            };
            let broken = match rule.polarity {
                Polarity::BrokenUnlessHolds => !finding.holds,
                Polarity::BrokenWhenHolds => finding.holds,
            };
            if !broken {
                continue;
            }
            match rule.outcome {
                Outcome::Approval if skip_approval => {}
                Outcome::Approval => {
                    approvals.push(format!("{}: {}", policy.name, explain(&rule.rule_type, &finding.detail)))
                }
                Outcome::Deny => {
                    let detail = explain(&rule.rule_type, &finding.detail);
                    let violation = Violation {
                        kind: rule.violation.clone(),
                        limit: finding.limit,
                        current: finding.current,
                        message: Some(detail.clone()),
                    };
                    return Evaluation::Denied(Denial {
                        reasons: vec![format!("{}: {detail}", policy.name)],
                        violations: vec![violation],
                    });
                }
            }
        }
    }
    if approvals.is_empty() {
        Evaluation::Pass { holds: scratch.holds, windows: scratch.windows, daily: scratch.daily }
    } else {
        Evaluation::NeedsApproval(approvals)
    }
}

fn check<'a>(
    rule: &'a CompiledRule,
    intent: &'a PaymentIntent,
    amount: Decimal,
    ledger: &mut impl Reads,
    now: Timestamp,
    scratch: &mut Scratch,
) -> Option<Finding<'a>> {
    let finding = match &rule.check {
        Check::Amount { measure, cmp, limit } => {
            let subject = match (measure, &intent.rail) {
                (Measure::Amount, _) => amount,
                (Measure::Deposit, Rail::Mpp { deposit: Some(d), .. }) => d.get(),
                (Measure::Deposit, _) => return None,
            };
            let what = if *measure == Measure::Deposit { "deposit" } else { "amount" };
            Finding {
                holds: cmp.holds(subject, *limit),
                limit: Some(*limit),
                current: Some(subject),
                detail: Detail::Amount { what, subject, cmp: *cmp, limit: *limit },
            }
        }
        Check::Cumulative { counter, cmp, limit } => {
            let start = scratch.starts.get(counter, now);
            let scope = counter.scope.key_str(intent);
            let seen = scratch.holds.iter().position(|(k, s)| {
                (Arc::ptr_eq(&k.id.0, &counter.id.0) || k.id == counter.id) && k.scope_key == scope && *s == start
            });
            let used = match seen {
                Some(i) => scratch.used.get(i),
                None => {
                    let key = counter_key(counter, intent);
                    let used = ledger.used(&key, start);
                    scratch.holds.push((key, start));
                    scratch.used.push(used);
                    used
                }
            };
            let projected = used + amount;
            if rule.rule_type.as_ref() == "DAILY_LIMIT" && scratch.daily.is_none_or(|(_, l)| *limit < l) {
                scratch.daily = Some((projected, *limit));
            }
            Finding {
                holds: cmp.holds(projected, *limit),
                limit: Some(*limit),
                current: Some(used),
                detail: Detail::Cumulative { period: counter.period, used, amount, cmp: *cmp, limit: *limit },
            }
        }
        Check::Velocity(v) => {
            let key = velocity_key(v, intent);
            let count = ledger.count(&key, now);
            if !scratch.windows.contains(&key) {
                scratch.windows.push(key);
            }
            let after = count + 1;
            Finding {
                holds: after <= v.max_count as usize,
                limit: Some(Decimal::from(v.max_count)),
                current: Some(Decimal::from(count as u64)),
                detail: Detail::Velocity { after, window: v.window, max: v.max_count },
            }
        }
        Check::List { field, entries, in_list } => {
            let Some(value) = list_subject(*field, intent) else {
                // Counterparty rules do not apply to cards; other missing fields are "not listed".
                if *field == Field::Counterparty {
                    return None;
                }
                return Some(Finding { holds: !*in_list, limit: None, current: None, detail: Detail::Missing(*field) });
            };
            let listed = match field {
                Field::Counterparty | Field::Mcc => entries.contains(value),
                Field::Service => entries.iter().any(|e| {
                    value.eq_ignore_ascii_case(e)
                        || (value.len() > e.len()
                            && value.as_bytes()[value.len() - e.len() - 1] == b'.'
                            && value[value.len() - e.len()..].eq_ignore_ascii_case(e))
                }),
                _ => entries.iter().any(|e| e.eq_ignore_ascii_case(value.trim())),
            };
            Finding {
                holds: listed == *in_list,
                limit: None,
                current: None,
                detail: Detail::Listed { field: *field, value, listed },
            }
        }
        Check::TimeOfDay { start, end, between, tz } => {
            let (t, _) = local(now, tz);
            let inside = in_daily_window(t, *start, *end);
            Finding {
                holds: inside == *between,
                limit: None,
                current: None,
                detail: Detail::TimeOfDay {
                    local: t,
                    inside,
                    start: *start,
                    end: *end,
                    tz: tz.iana_name().unwrap_or("UTC"),
                },
            }
        }
        Check::DayOfWeek { days, in_list, tz } => {
            let (_, weekday) = local(now, tz);
            let listed = days & (1 << weekday) != 0;
            Finding {
                holds: listed == *in_list,
                limit: None,
                current: None,
                detail: Detail::Weekday { day: weekday, listed },
            }
        }
        Check::Period { start, end, between } => {
            let inside = *start <= now && now < *end;
            Finding {
                holds: inside == *between,
                limit: None,
                current: None,
                detail: Detail::Range { now, inside, start: *start, end: *end },
            }
        }
        Check::Blackout(list) => {
            let hit = list.iter().find(|w| match w {
                Blackout::Daily { start, end, tz, .. } => in_daily_window(local(now, tz).0, *start, *end),
                Blackout::Absolute { start, end, .. } => *start <= now && now < *end,
            });
            let reason = hit.and_then(|w| {
                let (Blackout::Daily { reason, .. } | Blackout::Absolute { reason, .. }) = w;
                reason.as_deref()
            });
            Finding { holds: hit.is_some(), limit: None, current: None, detail: Detail::Blackout(reason) }
        }
    };
    Some(finding)
}

/// The field a list rule checks, borrowed from the intent (compared case-insensitively where
/// the field is text).
fn list_subject(field: Field, intent: &PaymentIntent) -> Option<&str> {
    match (field, &intent.rail) {
        (Field::Counterparty, _) => intent.recipient.as_ref().map(|a| a.as_str()),
        (Field::Category, _) => intent.category.as_deref(),
        (Field::Service, Rail::X402 { service_domain, .. } | Rail::Mpp { service_domain, .. }) => {
            Some(service_domain.as_str())
        }
        (Field::Mcc, Rail::Card { mcc, .. }) => mcc.as_deref(),
        (Field::Merchant, Rail::Card { merchant, .. }) => Some(merchant.as_str()),
        (Field::MppIntent, Rail::Mpp { intent, .. }) => intent.as_deref(),
        (Field::MppMethod, Rail::Mpp { method, .. }) => method.as_deref(),
        _ => None,
    }
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
    for policy in policies.policies.iter().filter(|p| p.applies_to(intent.actor.as_str())) {
        for rule in policy.rules.iter().filter(|r| r.rails.matches(&intent.rail)) {
            match &rule.check {
                Check::Cumulative { counter, .. } => {
                    let key = counter_key(counter, intent);
                    let start = period_start(counter.period, &counter.tz, now);
                    ledger.used(&key, start);
                    if !holds.iter().any(|(k, _)| *k == key) {
                        holds.push((key, start));
                    }
                }
                Check::Velocity(v) => {
                    let key = velocity_key(v, intent);
                    if !windows.contains(&key) {
                        windows.push(key);
                    }
                }
                _ => {}
            }
        }
    }
    (holds, windows)
}

/// The cumulative counter with this id in `policies`, if one still keeps it.
pub(crate) fn cumulative<'a>(policies: &'a PolicySet, id: &str) -> Option<&'a Cumulative> {
    policies.policies.iter().flat_map(|p| p.rules.iter()).find_map(|r| match &r.check {
        Check::Cumulative { counter, .. } if *counter.id.0 == *id => Some(counter),
        _ => None,
    })
}

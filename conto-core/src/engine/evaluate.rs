//! Evaluates compiled policies against one intent and one agent's ledger.

use jiff::Timestamp;
use rust_decimal::Decimal;

use super::ledger::{AgentLedger, CounterKey, VelocityKey, period_start};
use crate::decision::{Denial, Violation};
use crate::intent::{PaymentIntent, Rail};
use crate::policy::rules::{
    Blackout, Check, Cmp, CompiledRule, Field, Measure, Outcome, Polarity, in_daily_window, local,
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

/// What one rule found.
struct Finding {
    holds: bool,
    limit: Option<Decimal>,
    current: Option<Decimal>,
    detail: String,
}

pub(crate) fn counter_key(c: &Cumulative, rails: crate::policy::RailFilter, intent: &PaymentIntent) -> CounterKey {
    CounterKey { rails, scope: c.scope, scope_key: c.scope.key(intent), period: c.period, tz: c.tz_name.clone() }
}

fn velocity_key(v: &Velocity, rails: crate::policy::RailFilter, intent: &PaymentIntent) -> VelocityKey {
    VelocityKey { rails, scope: v.scope, scope_key: v.scope.key(intent), window: v.window }
}

/// Evaluates every applicable policy in priority order. With `skip_approval`, rules that would
/// ask for a human are passed (a human already approved).
pub(crate) fn evaluate(
    policies: &PolicySet,
    intent: &PaymentIntent,
    ledger: &mut AgentLedger,
    now: Timestamp,
    skip_approval: bool,
) -> Evaluation {
    let amount = intent.amount.get();
    let mut holds: Vec<(CounterKey, Timestamp)> = Vec::new();
    let mut windows: Vec<VelocityKey> = Vec::new();
    let mut approvals: Vec<String> = Vec::new();
    let mut daily: Option<(Decimal, Decimal)> = None;

    for policy in policies.policies.iter().filter(|p| p.applies_to(intent.actor.as_str())) {
        for rule in &policy.rules {
            if !rule.rails.matches(&intent.rail) {
                continue;
            }
            let Some(finding) = check(rule, intent, amount, ledger, now, &mut holds, &mut windows, &mut daily) else {
                continue;
            };
            let broken = match rule.polarity {
                Polarity::BrokenUnlessHolds => !finding.holds,
                Polarity::BrokenWhenHolds => finding.holds,
            };
            if !broken {
                continue;
            }
            let reason = format!("{}: {}", policy.name, finding.detail);
            match rule.outcome {
                Outcome::Approval if skip_approval => {}
                Outcome::Approval => approvals.push(reason),
                Outcome::Deny => {
                    let violation = Violation {
                        kind: rule.violation.clone(),
                        limit: finding.limit,
                        current: finding.current,
                        message: Some(finding.detail),
                    };
                    return Evaluation::Denied(Denial { reasons: vec![reason], violations: vec![violation] });
                }
            }
        }
    }
    if approvals.is_empty() { Evaluation::Pass { holds, windows, daily } } else { Evaluation::NeedsApproval(approvals) }
}

#[allow(clippy::too_many_arguments)]
fn check(
    rule: &CompiledRule,
    intent: &PaymentIntent,
    amount: Decimal,
    ledger: &mut AgentLedger,
    now: Timestamp,
    holds: &mut Vec<(CounterKey, Timestamp)>,
    windows: &mut Vec<VelocityKey>,
    daily: &mut Option<(Decimal, Decimal)>,
) -> Option<Finding> {
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
                detail: describe(&rule.rule_type, what, subject, *cmp, *limit),
            }
        }
        Check::Cumulative { counter, cmp, limit } => {
            let key = counter_key(counter, rule.rails, intent);
            let start = period_start(counter.period, &counter.tz, now);
            let used = ledger.used(&key, start);
            let projected = used + amount;
            if !holds.iter().any(|(k, _)| *k == key) {
                holds.push((key, start));
            }
            if rule.rule_type.as_ref() == "DAILY_LIMIT" && daily.is_none_or(|(_, l)| *limit < l) {
                *daily = Some((projected, *limit));
            }
            Finding {
                holds: cmp.holds(projected, *limit),
                limit: Some(*limit),
                current: Some(used),
                detail: format!(
                    "{} {} spend would be {projected} ({used} used + {amount} requested), limit {} {limit}",
                    rule.rule_type,
                    counter.period.label(),
                    cmp.symbol()
                ),
            }
        }
        Check::Velocity(v) => {
            let key = velocity_key(v, rule.rails, intent);
            let count = ledger.count(&key, now);
            if !windows.contains(&key) {
                windows.push(key);
            }
            let after = count + 1;
            Finding {
                holds: after <= v.max_count as usize,
                limit: Some(Decimal::from(v.max_count)),
                current: Some(Decimal::from(count as u64)),
                detail: format!(
                    "{} payments in the last {} would be {after}, limit {}",
                    rule.rule_type,
                    humanize(v.window),
                    v.max_count
                ),
            }
        }
        Check::List { field, entries, in_list } => {
            let value = list_subject(*field, intent);
            let Some(value) = value else {
                // Counterparty rules do not apply to cards; other missing fields are "not listed".
                if *field == Field::Counterparty {
                    return None;
                }
                return Some(Finding {
                    holds: !*in_list,
                    limit: None,
                    current: None,
                    detail: format!("{}: the payment has no {}", rule.rule_type, field.label()),
                });
            };
            let listed = if *field == Field::Service {
                entries.iter().any(|e| value == *e || value.ends_with(&format!(".{e}")))
            } else {
                entries.contains(&value)
            };
            Finding {
                holds: listed == *in_list,
                limit: None,
                current: None,
                detail: format!(
                    "{} `{value}` is {} the {} list",
                    field.label(),
                    if listed { "on" } else { "not on" },
                    rule.rule_type
                ),
            }
        }
        Check::TimeOfDay { start, end, between, tz } => {
            let (t, _) = local(now, tz);
            let inside = in_daily_window(t, *start, *end);
            Finding {
                holds: inside == *between,
                limit: None,
                current: None,
                detail: format!(
                    "local time {} is {} the window {}-{} ({})",
                    t.strftime("%H:%M"),
                    if inside { "inside" } else { "outside" },
                    start.strftime("%H:%M"),
                    end.strftime("%H:%M"),
                    tz.iana_name().unwrap_or("UTC")
                ),
            }
        }
        Check::DayOfWeek { days, in_list, tz } => {
            let (_, weekday) = local(now, tz);
            let listed = days & (1 << weekday) != 0;
            const NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
            Finding {
                holds: listed == *in_list,
                limit: None,
                current: None,
                detail: format!(
                    "{} is {} the allowed days",
                    NAMES[weekday as usize],
                    if listed { "among" } else { "not among" }
                ),
            }
        }
        Check::Period { start, end, between } => {
            let inside = *start <= now && now < *end;
            Finding {
                holds: inside == *between,
                limit: None,
                current: None,
                detail: format!(
                    "{now} is {} the permitted range {start} to {end}",
                    if inside { "inside" } else { "outside" }
                ),
            }
        }
        Check::Blackout(list) => {
            let hit = list.iter().find(|w| match w {
                Blackout::Daily { start, end, tz, .. } => in_daily_window(local(now, tz).0, *start, *end),
                Blackout::Absolute { start, end, .. } => *start <= now && now < *end,
            });
            match hit {
                None => Finding { holds: false, limit: None, current: None, detail: String::new() },
                Some(w) => {
                    let (Blackout::Daily { reason, .. } | Blackout::Absolute { reason, .. }) = w;
                    Finding {
                        holds: true,
                        limit: None,
                        current: None,
                        detail: match reason {
                            Some(r) => format!("blackout period in effect ({r})"),
                            None => "blackout period in effect".to_owned(),
                        },
                    }
                }
            }
        }
    };
    Some(finding)
}

fn list_subject(field: Field, intent: &PaymentIntent) -> Option<String> {
    match (field, &intent.rail) {
        (Field::Counterparty, _) => intent.recipient.as_ref().map(|a| a.as_str().to_owned()),
        (Field::Category, _) => intent.category.as_ref().map(|c| c.trim().to_lowercase()),
        (Field::Service, Rail::X402 { service_domain, .. } | Rail::Mpp { service_domain, .. }) => {
            Some(service_domain.to_lowercase())
        }
        (Field::Mcc, Rail::Card { mcc, .. }) => mcc.clone(),
        (Field::Merchant, Rail::Card { merchant, .. }) => Some(merchant.trim().to_lowercase()),
        (Field::MppIntent, Rail::Mpp { intent, .. }) => intent.as_ref().map(|i| i.trim().to_lowercase()),
        (Field::MppMethod, Rail::Mpp { method, .. }) => method.as_ref().map(|m| m.trim().to_lowercase()),
        _ => None,
    }
}

fn describe(rule_type: &str, what: &str, subject: Decimal, cmp: Cmp, limit: Decimal) -> String {
    format!("{rule_type}: {what} {subject}, limit {} {limit}", cmp.symbol())
}

fn humanize(d: jiff::SignedDuration) -> &'static str {
    match d.as_secs() {
        60 => "minute",
        3600 => "hour",
        _ => "day",
    }
}

/// Every counter and window the applicable rules keep for `intent`, whatever they decide.
pub(crate) fn all_keys(
    policies: &PolicySet,
    intent: &PaymentIntent,
    ledger: &mut AgentLedger,
    now: Timestamp,
) -> (Vec<(CounterKey, Timestamp)>, Vec<VelocityKey>) {
    let mut holds: Vec<(CounterKey, Timestamp)> = Vec::new();
    let mut windows: Vec<VelocityKey> = Vec::new();
    for policy in policies.policies.iter().filter(|p| p.applies_to(intent.actor.as_str())) {
        for rule in policy.rules.iter().filter(|r| r.rails.matches(&intent.rail)) {
            match &rule.check {
                Check::Cumulative { counter, .. } => {
                    let key = counter_key(counter, rule.rails, intent);
                    let start = period_start(counter.period, &counter.tz, now);
                    ledger.used(&key, start);
                    if !holds.iter().any(|(k, _)| *k == key) {
                        holds.push((key, start));
                    }
                }
                Check::Velocity(v) => {
                    let key = velocity_key(v, rule.rails, intent);
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

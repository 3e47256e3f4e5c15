//! From Conto's policy JSON to compiled rules; every error names the policy, rule and field.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use rust_decimal::Decimal;
use serde_json::Value;

use super::rules::{
    Action, Blackout, Check, Cmp, CompiledRule, Cumulative, Field, Measure, Outcome, Period, Polarity, RailFilter,
    Scope, Velocity,
};
use super::{Policy, PolicyDoc, PolicyError, RuleDoc, RuleProblem, json_kind, time_zone};
use crate::decision::ViolationType as V;
use crate::intent::Address;

/// The operator classes a rule type takes.
#[derive(Clone, Copy)]
enum Ops {
    Compare,
    List,
    Window,
}

impl Ops {
    fn allowed(self) -> &'static str {
        match self {
            Ops::Compare => "EQUALS, NOT_EQUALS, GT, GTE, LT, LTE (and their long names)",
            Ops::List => "IN_LIST, NOT_IN_LIST",
            Ops::Window => "BETWEEN, NOT_BETWEEN",
        }
    }
}

enum Op {
    Cmp(Cmp),
    InList(bool),
    Between(bool),
}

fn parse_operator(text: &str) -> Option<Op> {
    Some(match text.trim().to_ascii_uppercase().as_str() {
        "EQUALS" | "EQ" | "=" | "==" => Op::Cmp(Cmp::Eq),
        "NOT_EQUALS" | "NEQ" | "NE" | "!=" => Op::Cmp(Cmp::Ne),
        "GREATER_THAN" | "GT" | ">" => Op::Cmp(Cmp::Gt),
        "GREATER_THAN_OR_EQUAL" | "GREATER_THAN_OR_EQUALS" | "GTE" | ">=" => Op::Cmp(Cmp::Ge),
        "LESS_THAN" | "LT" | "<" => Op::Cmp(Cmp::Lt),
        "LESS_THAN_OR_EQUAL" | "LESS_THAN_OR_EQUALS" | "LTE" | "<=" => Op::Cmp(Cmp::Le),
        "IN_LIST" | "IN" | "IN LIST" => Op::InList(true),
        "NOT_IN_LIST" | "NOT_IN" | "NOT IN LIST" => Op::InList(false),
        "BETWEEN" => Op::Between(true),
        "NOT_BETWEEN" | "NOT BETWEEN" => Op::Between(false),
        _ => return None,
    })
}

/// Rule types Conto documents that the engine does not evaluate.
const UNSUPPORTED: &[&str] = &[
    "GEOGRAPHIC_RESTRICTION",
    "TRUST_SCORE",
    "COUNTERPARTY_STATUS",
    "CONTRACT_ALLOWLIST",
    "FAIRSCALE_MIN_SCORE",
    "MPP_MAX_CONCURRENT_SESSIONS",
    "MPP_MAX_SESSION_DURATION",
];

/// How a rule type is compiled.
enum Kind {
    Amount(Measure, RailFilter, V),
    Card(V),
    Cumulative(Scope, Period, RailFilter, V, bool),
    Budget(V),
    Velocity(Scope, RailFilter, V),
    List(Field, RailFilter, V, Option<Polarity>),
    TimeWindow,
    DayOfWeek,
    DateRange,
    Blackout,
    ApprovalAbove,
}

fn kind_of(rule_type: &str) -> Option<Kind> {
    use Kind::*;
    use RailFilter as R;
    let allowed = Some(Polarity::BrokenUnlessHolds);
    let blocked = Some(Polarity::BrokenWhenHolds);
    Some(match rule_type {
        "MAX_AMOUNT" | "SINGLE_AMOUNT" => Amount(Measure::Amount, R::All, V::PerTxLimit),
        "DAILY_LIMIT" => Cumulative(Scope::Agent, Period::Day, R::All, V::DailyLimit, false),
        "WEEKLY_LIMIT" => Cumulative(Scope::Agent, Period::Week, R::All, V::WeeklyLimit, false),
        "MONTHLY_LIMIT" => Cumulative(Scope::Agent, Period::Month, R::All, V::MonthlyLimit, false),
        "BUDGET_CAP" => Budget(V::BudgetExceeded),
        "ALLOWED_CATEGORIES" => List(Field::Category, R::All, V::CategoryRestriction, allowed),
        "BLOCKED_CATEGORIES" => List(Field::Category, R::All, V::CategoryRestriction, blocked),
        "ALLOWED_COUNTERPARTIES" => List(Field::Counterparty, R::All, V::WhitelistViolation, allowed),
        "WHITELIST" => List(Field::Counterparty, R::All, V::WhitelistViolation, allowed),
        "BLOCKED_COUNTERPARTIES" => List(Field::Counterparty, R::All, V::BlockedCounterparty, blocked),
        "TIME_WINDOW" => TimeWindow,
        "DAY_OF_WEEK" => DayOfWeek,
        "DATE_RANGE" => DateRange,
        "BLACKOUT_PERIOD" => Blackout,
        "VELOCITY_LIMIT" => Velocity(Scope::Agent, R::All, V::VelocityLimit),
        "REQUIRE_APPROVAL_ABOVE" => ApprovalAbove,
        "X402_PRICE_CEILING" | "X402_MAX_PER_REQUEST" => Amount(Measure::Amount, R::X402, V::X402PriceCeiling),
        "X402_MAX_PER_SERVICE" => Cumulative(Scope::Service, Period::Day, R::X402, V::X402EndpointLimit, true),
        "X402_MAX_PER_ENDPOINT" => Cumulative(Scope::Endpoint, Period::Day, R::X402, V::X402EndpointLimit, true),
        "X402_SESSION_BUDGET" => Cumulative(Scope::Session, Period::Total, R::X402, V::X402SessionBudget, false),
        "X402_ALLOWED_SERVICES" => List(Field::Service, R::X402, V::X402ServiceNotAllowed, allowed),
        "X402_BLOCKED_SERVICES" => List(Field::Service, R::X402, V::X402ServiceBlocked, blocked),
        "X402_VELOCITY_PER_ENDPOINT" => Velocity(Scope::Endpoint, R::X402, V::X402Velocity),
        "MPP_PRICE_CEILING" | "MPP_MAX_PER_REQUEST" => Amount(Measure::Amount, R::Mpp, V::MppPriceCeiling),
        "MPP_MAX_PER_SERVICE" => Cumulative(Scope::Service, Period::Day, R::Mpp, V::MppEndpointLimit, true),
        "MPP_MAX_PER_ENDPOINT" => Cumulative(Scope::Endpoint, Period::Day, R::Mpp, V::MppEndpointLimit, true),
        "MPP_SESSION_BUDGET" => Cumulative(Scope::Session, Period::Total, R::Mpp, V::MppSessionBudget, false),
        "MPP_MAX_SESSION_DEPOSIT" => Amount(Measure::Deposit, R::Mpp, V::MppMaxSessionDeposit),
        "MPP_ALLOWED_SERVICES" => List(Field::Service, R::Mpp, V::MppServiceNotAllowed, allowed),
        "MPP_BLOCKED_SERVICES" => List(Field::Service, R::Mpp, V::MppServiceBlocked, blocked),
        "MPP_VELOCITY_PER_ENDPOINT" => Velocity(Scope::Endpoint, R::Mpp, V::MppVelocity),
        "MPP_BLOCK_SESSION_INTENT" => List(Field::MppIntent, R::Mpp, V::MppSessionIntentBlocked, blocked),
        "MPP_ALLOWED_METHODS" => List(Field::MppMethod, R::Mpp, V::MppMethodNotAllowed, allowed),
        "CARD_ALLOWED_MCCS" => List(Field::Mcc, R::Card, V::CardMccRestriction, allowed),
        "CARD_BLOCKED_MCCS" => List(Field::Mcc, R::Card, V::CardMccRestriction, blocked),
        "CARD_ALLOWED_MERCHANTS" => List(Field::Merchant, R::Card, V::CardMerchantRestriction, allowed),
        "CARD_BLOCKED_MERCHANTS" => List(Field::Merchant, R::Card, V::CardMerchantRestriction, blocked),
        "CARD_MAX_AMOUNT" => Card(V::CardAmountLimit),
        _ => return None,
    })
}

pub(super) fn policy(doc: PolicyDoc) -> Result<Policy, PolicyError> {
    let name = doc.name.clone();
    let policy_err =
        |field: &'static str, message: String| PolicyError::Policy { policy: name.clone(), field, message };
    if doc.name.trim().is_empty() {
        return Err(policy_err("name", "must not be empty".into()));
    }
    if !(0..=100).contains(&doc.priority) {
        return Err(policy_err("priority", format!("{} is outside 0-100", doc.priority)));
    }
    let tz_name: Arc<str> = doc.timezone.as_deref().unwrap_or("UTC").into();
    let tz = time_zone(&tz_name).ok_or_else(|| policy_err("timezone", format!("unknown time zone `{tz_name}`")))?;

    let mut agents: Option<HashSet<String>> = None;
    let all = doc.scope.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("all"));
    // `scope: "assigned"` with no agents yet applies to no one (created, not yet assigned).
    let assigned_only = doc.scope.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("assigned"));
    if !all {
        let mut ids: HashSet<String> = doc.agent_policies.iter().map(|a| a.agent_id.clone()).collect();
        if let Some(list) = &doc.agent_ids {
            ids.extend(list.iter().cloned());
        }
        if !ids.is_empty() || assigned_only {
            agents = Some(ids);
        }
    }

    let mut rules = Vec::with_capacity(doc.rules.len());
    for (index, rule) in doc.rules.iter().enumerate() {
        let ctx = RuleCtx { policy: &name, index, rule_type: &rule.rule_type, tz: &tz, tz_name: &tz_name };
        rules.push(ctx.compile(rule)?);
    }
    Ok(Policy {
        id: doc.id,
        name,
        description: doc.description,
        policy_type: doc.policy_type,
        priority: doc.priority,
        active: doc.is_active,
        agents,
        rules,
    })
}

struct RuleCtx<'a> {
    policy: &'a str,
    index: usize,
    rule_type: &'a str,
    tz: &'a TimeZone,
    tz_name: &'a Arc<str>,
}

impl RuleCtx<'_> {
    fn err(&self, field: &'static str, problem: RuleProblem) -> PolicyError {
        PolicyError::Rule {
            policy: self.policy.to_owned(),
            rule: self.index,
            rule_type: self.rule_type.to_owned(),
            field,
            problem,
        }
    }

    fn bad(&self, found: &str, expected: &'static str) -> PolicyError {
        self.err("value", RuleProblem::BadValue { found: found.to_owned(), expected })
    }

    fn compile(&self, rule: &RuleDoc) -> Result<CompiledRule, PolicyError> {
        let rule_type = rule.rule_type.trim().to_ascii_uppercase();
        if UNSUPPORTED.contains(&rule_type.as_str()) {
            return Err(self.err("ruleType", RuleProblem::Unsupported(rule.rule_type.clone())));
        }
        let kind = kind_of(&rule_type)
            .ok_or_else(|| self.err("ruleType", RuleProblem::UnknownRuleType(rule.rule_type.clone())))?;
        let op = parse_operator(&rule.operator)
            .ok_or_else(|| self.err("operator", RuleProblem::UnknownOperator(rule.operator.clone())))?;
        let action = match rule.action.as_deref().map(|a| a.trim().to_ascii_uppercase()).as_deref() {
            None | Some("ALLOW") => Action::Allow,
            Some("DENY" | "BLOCK") => Action::Deny,
            Some("REQUIRE_APPROVAL") => Action::RequireApproval,
            Some(_) => {
                return Err(self.err("action", RuleProblem::UnknownAction(rule.action.clone().unwrap_or_default())));
            }
        };
        let text = match &rule.value {
            Value::String(s) => s.as_str(),
            other => return Err(self.err("value", RuleProblem::ValueNotString(json_kind(other).to_owned()))),
        };
        let by_action = if action == Action::Allow { Polarity::BrokenUnlessHolds } else { Polarity::BrokenWhenHolds };
        let outcome = if action == Action::RequireApproval { Outcome::Approval } else { Outcome::Deny };

        let (check, rails, violation, polarity, outcome) = match kind {
            Kind::Amount(measure, rails, v) => {
                let cmp = self.cmp(op, Ops::Compare)?;
                let limit = if rule_type == "SINGLE_AMOUNT" { self.amount_field(text)? } else { self.limit(text)? };
                (Check::Amount { measure, cmp, limit }, rails, v, by_action, outcome)
            }
            Kind::Card(v) => {
                let cmp = self.cmp(op, Ops::Compare)?;
                (
                    Check::Amount { measure: Measure::Amount, cmp, limit: self.limit(text)? },
                    RailFilter::Card,
                    v,
                    by_action,
                    outcome,
                )
            }
            Kind::Cumulative(scope, period, rails, v, period_object) => {
                let cmp = self.cmp(op, Ops::Compare)?;
                let (limit, period) = if period_object && text.trim_start().starts_with('{') {
                    self.budget(text)?
                } else {
                    (self.limit(text)?, period)
                };
                let counter = self.counter(scope, period, rails);
                (Check::Cumulative { counter, cmp, limit }, rails, v, by_action, outcome)
            }
            Kind::Budget(v) => {
                let cmp = self.cmp(op, Ops::Compare)?;
                let (limit, period) = self.budget(text)?;
                (
                    Check::Cumulative { counter: self.counter(Scope::Agent, period, RailFilter::All), cmp, limit },
                    RailFilter::All,
                    v,
                    by_action,
                    outcome,
                )
            }
            Kind::Velocity(scope, rails, v) => {
                self.cmp(op, Ops::Compare)?;
                (Check::Velocity(self.velocity(scope, rails, text)?), rails, v, by_action, outcome)
            }
            Kind::List(field, rails, v, fixed) => {
                let in_list = match op {
                    Op::InList(b) => b,
                    _ => return Err(self.op_not_allowed(rule, Ops::List)),
                };
                let entries = self.list(field, text)?;
                let polarity = fixed.unwrap_or(by_action);
                (Check::List { field, entries, in_list }, rails, v, polarity, outcome)
            }
            Kind::TimeWindow => {
                let between = self.between(op, rule)?;
                let (start, end, tz) = self.time_window(text)?;
                (Check::TimeOfDay { start, end, between, tz }, RailFilter::All, V::TimeWindow, by_action, outcome)
            }
            Kind::DayOfWeek => {
                let in_list = match op {
                    Op::InList(b) => b,
                    _ => return Err(self.op_not_allowed(rule, Ops::List)),
                };
                let (days, tz) = self.days(text)?;
                (Check::DayOfWeek { days, in_list, tz }, RailFilter::All, V::TimeWindow, by_action, outcome)
            }
            Kind::DateRange => {
                let between = self.between(op, rule)?;
                let obj = self.object(text, "a JSON object {\"start\": \"YYYY-MM-DD\", \"end\": \"YYYY-MM-DD\"}")?;
                let tz = self.tz_of(&obj)?;
                let (start, end) = self.absolute_range(&obj, &tz)?;
                (Check::Period { start, end, between }, RailFilter::All, V::ExpiredPermission, by_action, outcome)
            }
            Kind::Blackout => {
                self.between(op, rule)?;
                let outcome = if action == Action::RequireApproval { Outcome::Approval } else { Outcome::Deny };
                (
                    Check::Blackout(self.blackout(text)?),
                    RailFilter::All,
                    V::BlackoutPeriod,
                    Polarity::BrokenWhenHolds,
                    outcome,
                )
            }
            Kind::ApprovalAbove => {
                let cmp = self.cmp(op, Ops::Compare)?;
                let outcome = if action == Action::Deny { Outcome::Deny } else { Outcome::Approval };
                (
                    Check::Amount { measure: Measure::Amount, cmp, limit: self.limit(text)? },
                    RailFilter::All,
                    V::Other("REQUIRE_APPROVAL_ABOVE".into()),
                    Polarity::BrokenWhenHolds,
                    outcome,
                )
            }
        };
        Ok(CompiledRule { rule_type: rule_type.into(), check, rails, polarity, outcome, violation })
    }

    fn op_not_allowed(&self, rule: &RuleDoc, ops: Ops) -> PolicyError {
        self.err(
            "operator",
            RuleProblem::OperatorNotAllowed { operator: rule.operator.clone(), allowed: ops.allowed() },
        )
    }

    fn cmp(&self, op: Op, ops: Ops) -> Result<Cmp, PolicyError> {
        match op {
            Op::Cmp(c) => Ok(c),
            Op::InList(b) => Err(self.err(
                "operator",
                RuleProblem::OperatorNotAllowed {
                    operator: if b { "IN_LIST" } else { "NOT_IN_LIST" }.into(),
                    allowed: ops.allowed(),
                },
            )),
            Op::Between(b) => Err(self.err(
                "operator",
                RuleProblem::OperatorNotAllowed {
                    operator: if b { "BETWEEN" } else { "NOT_BETWEEN" }.into(),
                    allowed: ops.allowed(),
                },
            )),
        }
    }

    fn between(&self, op: Op, rule: &RuleDoc) -> Result<bool, PolicyError> {
        match op {
            Op::Between(b) => Ok(b),
            _ => Err(self.op_not_allowed(rule, Ops::Window)),
        }
    }

    fn decimal(&self, text: &str, expected: &'static str) -> Result<Decimal, PolicyError> {
        let t = text.trim();
        let d = Decimal::from_str_exact(t).or_else(|_| Decimal::from_str(t)).map_err(|_| self.bad(text, expected))?;
        if d.is_sign_negative() && !d.is_zero() {
            return Err(self.err("value", RuleProblem::NegativeLimit(t.to_owned())));
        }
        Ok(d.normalize())
    }

    fn limit(&self, text: &str) -> Result<Decimal, PolicyError> {
        if text.trim_start().starts_with(['{', '[', '"']) {
            return Err(self.bad(text, "a decimal number in a string, e.g. \"200\""));
        }
        self.decimal(text, "a decimal number in a string, e.g. \"200\"")
    }

    fn object(&self, text: &str, expected: &'static str) -> Result<serde_json::Map<String, Value>, PolicyError> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(self.bad(text, expected)),
        }
    }

    fn num_field(
        &self,
        obj: &serde_json::Map<String, Value>,
        key: &str,
        text: &str,
        expected: &'static str,
    ) -> Result<Decimal, PolicyError> {
        match obj.get(key) {
            Some(Value::Number(n)) => self.decimal(&n.to_string(), expected),
            Some(Value::String(s)) => self.decimal(s, expected),
            _ => Err(self.bad(text, expected)),
        }
    }

    fn amount_field(&self, text: &str) -> Result<Decimal, PolicyError> {
        const EXPECTED: &str = "a decimal number or {\"amount\": n}";
        if text.trim_start().starts_with('{') {
            let obj = self.object(text, EXPECTED)?;
            return self.num_field(&obj, "amount", text, EXPECTED);
        }
        self.decimal(text, EXPECTED)
    }

    fn budget(&self, text: &str) -> Result<(Decimal, Period), PolicyError> {
        const EXPECTED: &str = "a JSON object {\"amount\": n, \"period\": \"DAILY|WEEKLY|MONTHLY|YEARLY|TOTAL\"}";
        let obj = self.object(text, EXPECTED)?;
        let amount = self.num_field(&obj, "amount", text, EXPECTED)?;
        let period = match obj.get("period").and_then(Value::as_str).map(str::to_ascii_uppercase).as_deref() {
            Some("DAILY" | "DAY") => Period::Day,
            Some("WEEKLY" | "WEEK") => Period::Week,
            Some("MONTHLY" | "MONTH") => Period::Month,
            Some("YEARLY" | "YEAR" | "ANNUAL") => Period::Year,
            Some("TOTAL" | "LIFETIME") => Period::Total,
            _ => return Err(self.bad(text, EXPECTED)),
        };
        Ok((amount, period))
    }

    fn counter(&self, scope: Scope, period: Period, rails: RailFilter) -> Cumulative {
        let id = counter_id(format_args!("spend|{rails:?}|{scope:?}|{period:?}|{}", self.tz_name));
        Cumulative { id, scope, period, tz: self.tz.clone(), tz_name: self.tz_name.clone() }
    }

    fn velocity(&self, scope: Scope, rails: RailFilter, text: &str) -> Result<Velocity, PolicyError> {
        const EXPECTED: &str = "a JSON object {\"maxCount\": n, \"period\": \"MINUTE|HOUR|DAY\"}";
        let obj = self.object(text, EXPECTED)?;
        let max = self.num_field(&obj, "maxCount", text, EXPECTED)?;
        if max.fract() != Decimal::ZERO || max > Decimal::from(u32::MAX) {
            return Err(self.bad(text, EXPECTED));
        }
        let max_count: u32 = max.try_into().map_err(|_| self.bad(text, EXPECTED))?;
        if max_count == 0 {
            return Err(self.err("value", RuleProblem::Empty("maxCount 0 allows no payment at all".into())));
        }
        let window = match obj.get("period").and_then(Value::as_str).map(str::to_ascii_uppercase).as_deref() {
            Some("MINUTE") => SignedDuration::from_mins(1),
            Some("HOUR") => SignedDuration::from_hours(1),
            Some("DAY" | "DAILY") => SignedDuration::from_hours(24),
            _ => return Err(self.bad(text, EXPECTED)),
        };
        Ok(Velocity {
            id: counter_id(format_args!("velocity|{rails:?}|{scope:?}|{window:?}")),
            scope,
            window,
            max_count,
        })
    }

    fn list(&self, field: Field, text: &str) -> Result<HashSet<String, foldhash::fast::RandomState>, PolicyError> {
        const EXPECTED: &str = "a JSON array of strings, e.g. [\"a\", \"b\"]";
        // An empty list is valid (choice 7 in the module docs): an empty allowlist allows
        // nothing, an empty blocklist blocks nothing.
        let items: Vec<String> = serde_json::from_str(text).map_err(|_| self.bad(text, EXPECTED))?;
        items
            .into_iter()
            .map(|item| match field {
                Field::Counterparty => Address::parse(item.trim())
                    .map(|a| a.as_str().to_owned())
                    .map_err(|_| self.bad(&item, "an EVM (0x + 40 hex) or Solana address")),
                Field::Mcc => {
                    let t = item.trim();
                    if t.len() == 4 && t.bytes().all(|b| b.is_ascii_digit()) {
                        Ok(t.to_owned())
                    } else {
                        Err(self.bad(&item, "a 4-digit merchant category code"))
                    }
                }
                _ => {
                    let t = item.trim().to_ascii_lowercase();
                    if t.is_empty() { Err(self.bad(&item, "a non-empty string")) } else { Ok(t) }
                }
            })
            .collect()
    }

    fn tz_of(&self, obj: &serde_json::Map<String, Value>) -> Result<TimeZone, PolicyError> {
        match obj.get("timezone").or_else(|| obj.get("timeZone")) {
            None => Ok(self.tz.clone()),
            Some(Value::String(name)) => {
                time_zone(name).ok_or_else(|| self.err("value", RuleProblem::TimeZone(name.clone())))
            }
            Some(other) => Err(self.err("value", RuleProblem::TimeZone(other.to_string()))),
        }
    }

    fn time(
        &self,
        obj: &serde_json::Map<String, Value>,
        key: &str,
        text: &str,
        expected: &'static str,
    ) -> Result<Time, PolicyError> {
        let s = obj.get(key).and_then(Value::as_str).ok_or_else(|| self.bad(text, expected))?;
        parse_time(s).ok_or_else(|| self.bad(s, "a time of day HH:MM"))
    }

    fn time_window(&self, text: &str) -> Result<(Time, Time, TimeZone), PolicyError> {
        const EXPECTED: &str = "a JSON object {\"start\": \"HH:MM\", \"end\": \"HH:MM\"}";
        let obj = self.object(text, EXPECTED)?;
        let start = self.time(&obj, "start", text, EXPECTED)?;
        let end = self.time(&obj, "end", text, EXPECTED)?;
        if start == end {
            return Err(self.err("value", RuleProblem::Empty(format!("the window {start} to {end} is empty"))));
        }
        Ok((start, end, self.tz_of(&obj)?))
    }

    fn days(&self, text: &str) -> Result<(u8, TimeZone), PolicyError> {
        const EXPECTED: &str = "a JSON array of weekdays, e.g. [\"Mon\", \"Tue\"]";
        let items: Vec<String> = serde_json::from_str(text).map_err(|_| self.bad(text, EXPECTED))?;
        if items.is_empty() {
            return Err(self.err("value", RuleProblem::Empty("the list of days is empty".into())));
        }
        let mut mask = 0u8;
        for item in &items {
            let day = match item.trim().to_ascii_lowercase().as_str() {
                "mon" | "monday" => 0,
                "tue" | "tues" | "tuesday" => 1,
                "wed" | "wednesday" => 2,
                "thu" | "thurs" | "thursday" => 3,
                "fri" | "friday" => 4,
                "sat" | "saturday" => 5,
                "sun" | "sunday" => 6,
                _ => return Err(self.bad(item, "a weekday Mon..Sun")),
            };
            mask |= 1 << day;
        }
        Ok((mask, self.tz.clone()))
    }

    /// `[start, end)` from a pair of dates (end day included) or RFC 3339 instants.
    fn absolute_range(
        &self,
        obj: &serde_json::Map<String, Value>,
        tz: &TimeZone,
    ) -> Result<(Timestamp, Timestamp), PolicyError> {
        const EXPECTED: &str = "a date YYYY-MM-DD or an RFC 3339 timestamp";
        let get = |key: &str| {
            obj.get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| self.bad(&Value::Object(obj.clone()).to_string(), EXPECTED))
        };
        let (s, e) = (get("start")?, get("end")?);
        let start = self.instant(s, tz, false)?;
        let end = self.instant(e, tz, true)?;
        if start >= end {
            return Err(self.err("value", RuleProblem::Empty(format!("the range {s} to {e} is empty"))));
        }
        Ok((start, end))
    }

    fn instant(&self, text: &str, tz: &TimeZone, end: bool) -> Result<Timestamp, PolicyError> {
        if let Ok(ts) = text.parse::<Timestamp>() {
            return Ok(ts);
        }
        if let Ok(date) = text.parse::<Date>() {
            let date =
                if end { date.tomorrow().map_err(|_| self.bad(text, "a date before 9999-12-31"))? } else { date };
            return tz
                .to_ambiguous_zoned_datetime(date.to_datetime(Time::midnight()))
                .compatible()
                .map(|z| z.timestamp())
                .map_err(|_| self.bad(text, "a date that exists in the policy's time zone"));
        }
        if let Ok(dt) = text.parse::<DateTime>() {
            return tz
                .to_ambiguous_zoned_datetime(dt)
                .compatible()
                .map(|z| z.timestamp())
                .map_err(|_| self.bad(text, "a date-time that exists in the policy's time zone"));
        }
        Err(self.bad(text, "a date YYYY-MM-DD or an RFC 3339 timestamp"))
    }

    fn blackout(&self, text: &str) -> Result<Vec<Blackout>, PolicyError> {
        const EXPECTED: &str =
            "{\"windows\": [{\"start\", \"end\", \"reason\", \"recurring\"}]} or {\"start\", \"end\"}";
        let obj = self.object(text, EXPECTED)?;
        let tz = self.tz_of(&obj)?;
        let windows: Vec<serde_json::Map<String, Value>> = match obj.get("windows") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|w| w.as_object().cloned().ok_or_else(|| self.bad(text, EXPECTED)))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(self.bad(text, EXPECTED)),
            None => vec![obj.clone()],
        };
        if windows.is_empty() {
            return Err(self.err("value", RuleProblem::Empty("no blackout windows".into())));
        }
        windows
            .iter()
            .map(|w| {
                let reason = w.get("reason").and_then(Value::as_str).map(str::to_owned);
                let tz = self.tz_of(w).unwrap_or_else(|_| tz.clone());
                let start = w.get("start").and_then(Value::as_str).ok_or_else(|| self.bad(text, EXPECTED))?;
                let end = w.get("end").and_then(Value::as_str).ok_or_else(|| self.bad(text, EXPECTED))?;
                match (parse_time(start), parse_time(end)) {
                    (Some(s), Some(e)) => {
                        if s == e {
                            return Err(
                                self.err("value", RuleProblem::Empty(format!("the window {start} to {end} is empty")))
                            );
                        }
                        Ok(Blackout::Daily { start: s, end: e, tz, reason })
                    }
                    _ => {
                        let (s, e) = self.absolute_range(w, &tz)?;
                        Ok(Blackout::Absolute { start: s, end: e, reason })
                    }
                }
            })
            .collect()
    }
}

/// The full identity of a counted quantity: equal for the same rails, scope, period and zone in
/// every policy set, so a policy reload keeps its counters.
fn counter_id(parts: std::fmt::Arguments<'_>) -> super::rules::CounterId {
    super::rules::CounterId(parts.to_string().into())
}

/// `HH:MM` or `HH:MM:SS`; `24:00` means end of day.
fn parse_time(s: &str) -> Option<Time> {
    let s = s.trim();
    if s == "24:00" {
        return Some(Time::MAX);
    }
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let h: i8 = parts[0].parse().ok()?;
    let m: i8 = parts[1].parse().ok()?;
    let sec: i8 = parts.get(2).map_or(Some(0), |p| p.parse().ok())?;
    Time::new(h, m, sec, 0).ok()
}

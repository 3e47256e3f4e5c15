//! From Conto's policy JSON to compiled rules; every error names the policy, rule and field.

//!
//! This module parses what every rule shares (operator, action, the `value` string) and the
//! value shapes several families use (decimals, JSON objects, time zones, instants); each
//! family in [`super::rules`] names its rule types and parses its own values.

use std::collections::HashSet;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use rust_decimal::Decimal;
use serde_json::Value;

use super::rules::{
    Action, Check, Cmp, CompiledRule, Cumulative, Outcome, Period, Polarity, RailFilter, Scope, Spec, amount, blackout,
    cumulative, lists, session, time, unevaluated, velocity,
};
use super::{Policy, PolicyDoc, PolicyError, RuleDoc, RuleProblem, UnevaluatedRules, json_kind, time_zone};
use crate::decision::ViolationType;

/// The operator classes a rule type takes.
#[derive(Clone, Copy)]
pub(crate) enum Ops {
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

/// A rule's operator.
#[derive(Clone, Copy)]
pub(crate) enum Op {
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

/// A rule family: the rule types it owns, and how it compiles one of them.
pub(crate) trait Family {
    /// What the rule type says about the rule before its value is read (rails, scope, …).
    type Kind;
    /// The kind of `rule_type` (upper-cased), if this family owns it.
    fn kind(rule_type: &str) -> Option<Self::Kind>;
    /// Compiles one rule of this family.
    fn compile(kind: Self::Kind, rule: &RuleInput<'_>) -> Result<Spec, PolicyError>;
}

/// One rule, its operator, action and value read; what a family compiles from.
pub(crate) struct RuleInput<'a> {
    pub cx: &'a RuleCtx<'a>,
    pub rule_type: &'a str,
    pub operator: &'a str,
    pub op: Op,
    pub action: Action,
    pub text: &'a str,
}

impl RuleInput<'_> {
    /// Polarity from the action: `ALLOW` states what is allowed, the others what is refused;
    /// except an upper bound (`LTE n`, `LT n`), which states the limit whatever the action (the
    /// action says what happens past it). Every comparison rule evaluated is a cap, so `MAX_AMOUNT
    /// LTE 5 REQUIRE_APPROVAL` gates what is above 5: read the other way it gated what is under
    /// the cap and let everything above it through.
    pub fn by_action(&self) -> Polarity {
        match (self.action, self.op) {
            (Action::Allow, _) | (_, Op::Cmp(Cmp::Le | Cmp::Lt)) => Polarity::BrokenUnlessHolds,
            _ => Polarity::BrokenWhenHolds,
        }
    }

    /// A broken rule asks for a human with `REQUIRE_APPROVAL`, and denies otherwise.
    pub fn outcome(&self) -> Outcome {
        if self.action == Action::RequireApproval { Outcome::Approval } else { Outcome::Deny }
    }

    /// The spec of a rule whose polarity and outcome follow its action.
    pub fn spec(&self, check: Check, rails: RailFilter, violation: ViolationType) -> Spec {
        Spec { check, rails, violation, polarity: self.by_action(), outcome: self.outcome() }
    }

    fn not_allowed(&self, ops: Ops) -> PolicyError {
        self.cx.err(
            "operator",
            RuleProblem::OperatorNotAllowed { operator: self.operator.to_owned(), allowed: ops.allowed() },
        )
    }

    /// A comparison operator.
    pub fn cmp(&self) -> Result<Cmp, PolicyError> {
        match self.op {
            Op::Cmp(c) => Ok(c),
            _ => Err(self.not_allowed(Ops::Compare)),
        }
    }

    /// `IN_LIST` (true) or `NOT_IN_LIST` (false).
    pub fn in_list(&self) -> Result<bool, PolicyError> {
        match self.op {
            Op::InList(b) => Ok(b),
            _ => Err(self.not_allowed(Ops::List)),
        }
    }

    /// `BETWEEN` (true) or `NOT_BETWEEN` (false).
    pub fn between(&self) -> Result<bool, PolicyError> {
        match self.op {
            Op::Between(b) => Ok(b),
            _ => Err(self.not_allowed(Ops::Window)),
        }
    }
}

pub(super) fn policy(doc: PolicyDoc, unevaluated: UnevaluatedRules) -> Result<Policy, PolicyError> {
    let name = doc.name.clone();
    let policy_err =
        |field: &'static str, message: String| PolicyError::Policy { policy: name.clone(), field, message };
    if doc.name.trim().is_empty() {
        return Err(policy_err("name", "must not be empty".into()));
    }
    if !(0..=100).contains(&doc.priority) {
        return Err(policy_err("priority", format!("{} is outside 0-100", doc.priority)));
    }
    let tz_text = doc.timezone.as_deref().unwrap_or("UTC");
    let tz = time_zone(tz_text).ok_or_else(|| policy_err("timezone", format!("unknown time zone `{tz_text}`")))?;
    // Interned once known, by the zone database's own spelling: zones are found whatever the
    // case of their name, so what is kept is one name per zone (a few hundred), not one per
    // spelling a policy file can send, and `europe/paris` counts with `Europe/Paris`.
    let tz_name = super::rules::intern(tz.iana_name().unwrap_or(tz_text));

    // An unknown scope is an error: read as none, it would bind every agent.
    if let Some(scope) = doc.scope.as_deref()
        && !scope.eq_ignore_ascii_case("all")
        && !scope.eq_ignore_ascii_case("assigned")
    {
        return Err(policy_err("scope", format!("unknown scope `{scope}`: use \"assigned\" or \"all\"")));
    }
    let mut agents: Option<HashSet<String, foldhash::fast::RandomState>> = None;
    let all = doc.scope.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("all"));
    // `scope: "assigned"` with no agents yet applies to no one (created, not yet assigned).
    let assigned_only = doc.scope.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("assigned"));
    // Agents named (an empty list included: an export's policy assigned to no one), or
    // `scope: "assigned"`, bind those agents only.
    if !all && (doc.agents.is_some() || assigned_only) {
        agents = Some(doc.agents.iter().flatten().cloned().collect());
    }
    // Said where it is loaded: a file that meant "every agent" by an empty list would
    // otherwise lose its limits without a word.
    if doc.is_active
        && !all
        && !assigned_only
        && agents.as_ref().is_some_and(HashSet::is_empty)
        && !doc.rules.is_empty()
    {
        tracing::warn!(policy = %name,
            "conto.policy.binds_no_one: its agentIds/agentPolicies is an empty list, so it applies to no agent \
             (leave both out, or set scope \"all\", to bind every agent)");
    }

    let mut rules = Vec::with_capacity(doc.rules.len());
    for (index, rule) in doc.rules.iter().enumerate() {
        let ctx = RuleCtx { unevaluated, policy: &name, index, rule_type: &rule.rule_type, tz: &tz, tz_name };
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

/// Where a rule is (for errors) and the policy's time zone.
pub(crate) struct RuleCtx<'a> {
    unevaluated: UnevaluatedRules,
    policy: &'a str,
    index: usize,
    rule_type: &'a str,
    pub tz: &'a TimeZone,
    tz_name: &'static str,
}

impl RuleCtx<'_> {
    pub(crate) fn err(&self, field: &'static str, problem: RuleProblem) -> PolicyError {
        PolicyError::Rule {
            policy: self.policy.to_owned(),
            rule: self.index,
            rule_type: self.rule_type.to_owned(),
            field,
            problem,
        }
    }

    pub(crate) fn bad(&self, found: &str, expected: &'static str) -> PolicyError {
        self.err("value", RuleProblem::BadValue { found: found.to_owned(), expected })
    }

    fn compile(&self, rule: &RuleDoc) -> Result<CompiledRule, PolicyError> {
        let rule_type = rule.rule_type.trim().to_ascii_uppercase();
        if unevaluated::UNEVALUATED.contains(&rule_type.as_str()) {
            if self.unevaluated == UnevaluatedRules::Deny {
                return Ok(unevaluated::compiled(rule_type));
            }
            return Err(self.err("ruleType", RuleProblem::Unsupported(rule.rule_type.clone())));
        }
        /// Tries each family in turn: the first that owns the rule type compiles it.
        macro_rules! families {
            ($($family:ty),*) => {$(
                if let Some(kind) = <$family as Family>::kind(&rule_type) {
                    let spec = <$family as Family>::compile(kind, &self.input(rule, &rule_type)?)?;
                    let Spec { check, rails, violation, polarity, outcome } = spec;
                    return Ok(CompiledRule { rule_type: rule_type.into(), check, rails, polarity, outcome, violation });
                }
            )*};
        }
        families!(
            amount::Amounts,
            cumulative::Cumulatives,
            lists::Lists,
            time::Times,
            velocity::Velocities,
            blackout::Blackouts,
            session::Sessions
        );
        Err(self.err("ruleType", RuleProblem::UnknownRuleType(rule.rule_type.clone())))
    }

    /// The operator, action and value every rule has, in that order of errors.
    fn input<'a>(&'a self, rule: &'a RuleDoc, rule_type: &'a str) -> Result<RuleInput<'a>, PolicyError> {
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
        Ok(RuleInput { cx: self, rule_type, operator: &rule.operator, op, action, text })
    }

    pub(crate) fn decimal(&self, text: &str, expected: &'static str) -> Result<Decimal, PolicyError> {
        let t = text.trim();
        // No digit separators (`"1_000"`), which `rust_decimal` would read.
        let d = (!t.contains('_'))
            .then(|| Decimal::from_str_exact(t).or_else(|_| Decimal::from_str(t)).ok())
            .flatten()
            .ok_or_else(|| self.bad(text, expected))?;
        if d.is_sign_negative() && !d.is_zero() {
            return Err(self.err("value", RuleProblem::NegativeLimit(t.to_owned())));
        }
        Ok(d.normalize())
    }

    pub(crate) fn limit(&self, text: &str) -> Result<Decimal, PolicyError> {
        if text.trim_start().starts_with(['{', '[', '"']) {
            return Err(self.bad(text, "a decimal number in a string, e.g. \"200\""));
        }
        self.decimal(text, "a decimal number in a string, e.g. \"200\"")
    }

    pub(crate) fn object(
        &self,
        text: &str,
        expected: &'static str,
    ) -> Result<serde_json::Map<String, Value>, PolicyError> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(self.bad(text, expected)),
        }
    }

    pub(crate) fn num_field(
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

    pub(crate) fn amount_field(&self, text: &str) -> Result<Decimal, PolicyError> {
        const EXPECTED: &str = "a decimal number or {\"amount\": n}";
        if text.trim_start().starts_with('{') {
            let obj = self.object(text, EXPECTED)?;
            return self.num_field(&obj, "amount", text, EXPECTED);
        }
        self.decimal(text, EXPECTED)
    }

    /// A budget's amount, period and the zone its periods turn over in when its value names
    /// one (`None`: the policy's).
    pub(crate) fn budget(&self, text: &str) -> Result<(Decimal, Period, Option<TimeZone>), PolicyError> {
        const EXPECTED: &str = "a JSON object {\"amount\": n, \"period\": \"DAILY|WEEKLY|MONTHLY|YEARLY|TOTAL\"}";
        let obj = self.object(text, EXPECTED)?;
        let tz = self.own_tz(&obj)?;
        let amount = self.num_field(&obj, "amount", text, EXPECTED)?;
        let period = match obj.get("period").and_then(Value::as_str).map(str::to_ascii_uppercase).as_deref() {
            Some("DAILY" | "DAY") => Period::Day,
            Some("WEEKLY" | "WEEK") => Period::Week,
            Some("MONTHLY" | "MONTH") => Period::Month,
            Some("YEARLY" | "YEAR" | "ANNUAL") => Period::Year,
            Some("TOTAL" | "LIFETIME") => Period::Total,
            _ => return Err(self.bad(text, EXPECTED)),
        };
        Ok((amount, period, tz))
    }

    /// A counter of spend per `period`, turning over in `tz` (`None`: the policy's zone).
    pub(crate) fn counter(&self, scope: Scope, period: Period, rails: RailFilter, tz: Option<TimeZone>) -> Cumulative {
        let (tz, tz_name) = match tz {
            Some(tz) => {
                let name = super::rules::intern(tz.iana_name().unwrap_or(self.tz_name));
                (tz, name)
            }
            None => (self.tz.clone(), self.tz_name),
        };
        let id = counter_id(format_args!("spend|{rails:?}|{scope:?}|{period:?}|{tz_name}"));
        Cumulative { id, scope, period, tz, tz_name, last_period: Default::default(), slot: 0 }
    }

    /// The zone `obj` names itself (`timezone` or `timeZone`), if it names one.
    pub(crate) fn own_tz(&self, obj: &serde_json::Map<String, Value>) -> Result<Option<TimeZone>, PolicyError> {
        if obj.contains_key("timezone") || obj.contains_key("timeZone") { self.tz_of(obj).map(Some) } else { Ok(None) }
    }

    pub(crate) fn tz_of(&self, obj: &serde_json::Map<String, Value>) -> Result<TimeZone, PolicyError> {
        match obj.get("timezone").or_else(|| obj.get("timeZone")) {
            None => Ok(self.tz.clone()),
            Some(Value::String(name)) => {
                time_zone(name).ok_or_else(|| self.err("value", RuleProblem::TimeZone(name.clone())))
            }
            Some(other) => Err(self.err("value", RuleProblem::TimeZone(other.to_string()))),
        }
    }

    pub(crate) fn time(
        &self,
        obj: &serde_json::Map<String, Value>,
        key: &str,
        text: &str,
        expected: &'static str,
    ) -> Result<Time, PolicyError> {
        let s = obj.get(key).and_then(Value::as_str).ok_or_else(|| self.bad(text, expected))?;
        parse_time(s).ok_or_else(|| self.bad(s, "a time of day HH:MM"))
    }

    /// `[start, end)` from a pair of dates (end day included), local date-times or RFC 3339
    /// instants.
    pub(crate) fn absolute_range(
        &self,
        obj: &serde_json::Map<String, Value>,
        tz: &TimeZone,
    ) -> Result<(Timestamp, Timestamp), PolicyError> {
        const EXPECTED: &str = "a date YYYY-MM-DD, a local date-time YYYY-MM-DDTHH:MM or an RFC 3339 timestamp";
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

    pub(crate) fn instant(&self, text: &str, tz: &TimeZone, end: bool) -> Result<Timestamp, PolicyError> {
        if let Ok(ts) = text.parse::<Timestamp>() {
            return Ok(ts);
        }
        // A local date-time (`2026-04-01T02:00`) before a date: a date's parser would take the
        // date of one and drop its time.
        if text.trim().get(10..11).is_some_and(|sep| matches!(sep, "T" | "t" | " "))
            && let Ok(dt) = text.parse::<DateTime>()
        {
            return tz
                .to_ambiguous_zoned_datetime(dt)
                .compatible()
                .map(|z| z.timestamp())
                .map_err(|_| self.bad(text, "a date-time that exists in the policy's time zone"));
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
        Err(self.bad(text, "a date YYYY-MM-DD, a local date-time YYYY-MM-DDTHH:MM or an RFC 3339 timestamp"))
    }
}

/// The full identity of a counted quantity: equal for the same rails, scope, period and zone in
/// every policy set, so a policy reload keeps its counters.
pub(crate) fn counter_id(parts: std::fmt::Arguments<'_>) -> super::rules::CounterId {
    super::rules::CounterId::new(&parts.to_string())
}

/// `HH:MM` or `HH:MM:SS` (the hour may be one digit: `9:00`); `24:00` means end of day.
pub(crate) fn parse_time(s: &str) -> Option<Time> {
    let s = s.trim();
    if s == "24:00" {
        return Some(Time::MAX);
    }
    let parts: Vec<&str> = s.split(':').collect();
    let digits = |p: &str, widths: std::ops::RangeInclusive<usize>| {
        widths.contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
    };
    if !(2..=3).contains(&parts.len()) || !digits(parts[0], 1..=2) || !parts[1..].iter().all(|p| digits(p, 2..=2)) {
        return None;
    }
    let h: i8 = parts[0].parse().ok()?;
    let m: i8 = parts[1].parse().ok()?;
    let sec: i8 = parts.get(2).map_or(Some(0), |p| p.parse().ok())?;
    Time::new(h, m, sec, 0).ok()
}

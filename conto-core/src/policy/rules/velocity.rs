//! Approvals per sliding window: `VELOCITY_LIMIT` and the x402/MPP per-endpoint velocity,
//! `{"maxCount": n, "period": "MINUTE"|"HOUR"|"DAY"}`; and approvals still live,
//! `MPP_MAX_CONCURRENT_SESSIONS` (`"3"`): the agent's open MPP sessions, each a pre-authorization
//! not yet recorded, released or lapsed (Conto opens a session with its deposit's
//! pre-authorization and closes it with the record of what it settled).

use jiff::SignedDuration;
use rust_decimal::Decimal;
use serde_json::Value;

use super::{Check, Cmp, Explain, Finding, RailFilter, Scope, Spec, Subject, Velocity};
use crate::decision::ViolationType as V;
use crate::engine::LIVE_WINDOW_PREFIX;
use crate::engine::evaluate::Reads;
use crate::engine::ledger::{LIVE_WINDOW, VelocityKey};
use crate::intent::PaymentIntent;
use crate::policy::compile::{Family, RuleInput, counter_id};
use crate::policy::{PolicyError, RuleProblem};

/// Approvals per window, this one included, compared with `max_count` by the rule's operator
/// (`LTE`: at most that many; with `GT` and a `DENY` or `REQUIRE_APPROVAL` action, what is
/// past it is refused or sent to a human).
#[derive(Debug, Clone)]
pub(crate) struct VelocityRule(pub Velocity, pub Cmp);

/// The family's rule types.
pub(crate) struct Velocities;

impl Family for Velocities {
    type Kind = (Scope, RailFilter, V);

    fn kind(rule_type: &str) -> Option<Self::Kind> {
        Some(match rule_type {
            "VELOCITY_LIMIT" => (Scope::Agent, RailFilter::All, V::VelocityLimit),
            "X402_VELOCITY_PER_ENDPOINT" => (Scope::Endpoint, RailFilter::X402, V::X402Velocity),
            "MPP_VELOCITY_PER_ENDPOINT" => (Scope::Endpoint, RailFilter::Mpp, V::MppVelocity),
            "MPP_MAX_CONCURRENT_SESSIONS" => (Scope::Agent, RailFilter::MppSession, V::MppMaxConcurrentSessions),
            _ => return None,
        })
    }

    fn compile((scope, rails, violation): Self::Kind, r: &RuleInput<'_>) -> Result<Spec, PolicyError> {
        if violation == V::MppMaxConcurrentSessions {
            return sessions(scope, rails, violation, r);
        }
        let cmp = r.cmp()?;
        // A cap: `LTE`/`LT` (whatever the action), or `GT`/`GTE` saying what is refused or gated.
        let capped = match (cmp, r.action) {
            (Cmp::Le | Cmp::Lt, _) => true,
            (Cmp::Gt | Cmp::Ge, action) => action != super::Action::Allow,
            _ => false,
        };
        if !capped {
            let operator = r.operator.to_owned();
            let allowed = "LTE or LT (or GT or GTE with DENY or REQUIRE_APPROVAL)";
            return Err(r.cx.err("operator", RuleProblem::OperatorNotAllowed { operator, allowed }));
        }
        const EXPECTED: &str = "a JSON object {\"maxCount\": n, \"period\": \"MINUTE|HOUR|DAY\"}";
        let (cx, text) = (r.cx, r.text);
        let obj = cx.object(text, EXPECTED)?;
        let max = cx.num_field(&obj, "maxCount", text, EXPECTED)?;
        if max.fract() != Decimal::ZERO || max > Decimal::from(u32::MAX) {
            return Err(cx.bad(text, EXPECTED));
        }
        let max_count: u32 = max.try_into().map_err(|_| cx.bad(text, EXPECTED))?;
        if max_count == 0 || (max_count == 1 && matches!(cmp, Cmp::Lt | Cmp::Ge)) {
            return Err(cx.err("value", RuleProblem::Empty("this maxCount allows no payment at all".into())));
        }
        let window = match obj.get("period").and_then(Value::as_str).map(str::to_ascii_uppercase).as_deref() {
            Some("MINUTE") => SignedDuration::from_mins(1),
            Some("HOUR") => SignedDuration::from_hours(1),
            Some("DAY" | "DAILY") => SignedDuration::from_hours(24),
            _ => return Err(cx.bad(text, EXPECTED)),
        };
        let id = counter_id(format_args!("velocity|{rails:?}|{scope:?}|{window:?}"));
        Ok(r.spec(Check::Velocity(VelocityRule(Velocity { id, scope, window, max_count }, cmp)), rails, violation))
    }
}

/// `MPP_MAX_CONCURRENT_SESSIONS` `LTE` n (or `LT` n + 1): at most n live MPP
/// pre-authorizations, this one included. Its count is a window that only ends (settled,
/// released or lapsed) take approvals out of ([`LIVE_WINDOW`]).
fn sessions(scope: Scope, rails: RailFilter, violation: V, r: &RuleInput<'_>) -> Result<Spec, PolicyError> {
    const EXPECTED: &str = "a whole number of sessions, such as \"3\"";
    let (cx, text) = (r.cx, r.text);
    let n = cx.decimal(text, EXPECTED)?;
    let max = match r.cmp()? {
        super::Cmp::Le => n,
        super::Cmp::Lt => n - Decimal::ONE,
        _ => {
            let operator = r.operator.to_owned();
            return Err(cx.err("operator", RuleProblem::OperatorNotAllowed { operator, allowed: "LTE or LT" }));
        }
    };
    if max.fract() != Decimal::ZERO || max < Decimal::ZERO || max > Decimal::from(u32::MAX) {
        return Err(cx.bad(text, EXPECTED));
    }
    let max_count: u32 = max.try_into().map_err(|_| cx.bad(text, EXPECTED))?;
    if max_count == 0 {
        return Err(cx.err("value", RuleProblem::Empty("0 open sessions allows no MPP payment at all".into())));
    }
    let id = counter_id(format_args!("{LIVE_WINDOW_PREFIX}sessions|{rails:?}|{scope:?}"));
    let velocity = Velocity { id, scope, window: LIVE_WINDOW, max_count };
    Ok(r.spec(Check::Velocity(VelocityRule(velocity, Cmp::Le)), rails, violation))
}

/// The window of `v` for `intent`.
pub(crate) fn velocity_key(v: &Velocity, intent: &PaymentIntent) -> VelocityKey {
    VelocityKey { id: v.id, scope_key: v.scope.key(intent), window: v.window }
}

/// What a velocity rule saw: approvals in the window, this one included.
pub(crate) struct Counted {
    after: usize,
    window: SignedDuration,
    max: u32,
}

impl VelocityRule {
    /// Counts the window's approvals with this one; the window is kept for the reservation.
    pub(crate) fn check(
        &self,
        s: &Subject<'_>,
        ledger: &mut impl Reads,
        windows: &mut Vec<VelocityKey>,
    ) -> Finding<Counted> {
        let v = &self.0;
        let key = velocity_key(v, s.intent);
        let count = ledger.count(&key, s.now);
        if !windows.contains(&key) {
            windows.push(key);
        }
        let after = count + 1;
        let holds = self.1.holds(after, v.max_count as usize);
        // `LT n` (and `GTE n` refusing) allows n - 1: said so, not as a limit of n the count
        // is within.
        let shown = if matches!(self.1, Cmp::Lt | Cmp::Ge) { v.max_count.saturating_sub(1) } else { v.max_count };
        Finding { holds, detail: Counted { after, window: v.window, max: shown } }
    }
}

impl Explain for Counted {
    fn explain(&self, rule_type: &str) -> String {
        if self.window == LIVE_WINDOW {
            return format!("{rule_type}: open sessions would be {}, limit {}", self.after, self.max);
        }
        let unit = match self.window.as_secs() {
            60 => "minute",
            3600 => "hour",
            _ => "day",
        };
        format!("{rule_type} payments in the last {unit} would be {}, limit {}", self.after, self.max)
    }

    fn limit(&self) -> Option<Decimal> {
        Some(Decimal::from(self.max))
    }

    fn current(&self) -> Option<Decimal> {
        Some(Decimal::from(self.after as u64 - 1))
    }
}

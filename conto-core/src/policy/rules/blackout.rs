//! `BLACKOUT_PERIOD`: `{"windows": [{"start", "end", "reason", "recurring"}]}` or
//! `{"start", "end"}`; `HH:MM` bounds are a daily window, dates or instants an absolute period.
//! Broken inside a window, whatever the action.

use jiff::Timestamp;
use jiff::civil::Time;
use serde_json::Value;

use super::{Check, Explain, Finding, Outcome, Polarity, RailFilter, Spec, Subject, Zone, in_daily_window};
use crate::decision::ViolationType as V;
use crate::policy::compile::{Family, RuleInput, parse_time};
use crate::policy::{PolicyError, RuleProblem};

/// A blackout window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Window {
    Daily { start: Time, end: Time, zone: Zone, reason: Option<String> },
    Absolute { start: Timestamp, end: Timestamp, reason: Option<String> },
}

/// No payment inside any of its windows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BlackoutRule(Vec<Window>);

/// The family's rule type.
pub(crate) struct Blackouts;

impl Family for Blackouts {
    type Kind = ();

    fn kind(rule_type: &str) -> Option<()> {
        (rule_type == "BLACKOUT_PERIOD").then_some(())
    }

    fn compile((): (), r: &RuleInput<'_>) -> Result<Spec, PolicyError> {
        // A blackout is the time inside its windows: `NOT_BETWEEN` would invert it (the hours
        // allowed are a `TIME_WINDOW`'s to state).
        if r.between().ok() != Some(true) {
            let operator = r.operator.to_owned();
            return Err(r.cx.err("operator", RuleProblem::OperatorNotAllowed { operator, allowed: "BETWEEN" }));
        }
        const EXPECTED: &str =
            "{\"windows\": [{\"start\", \"end\", \"reason\", \"recurring\"}]} or {\"start\", \"end\"}";
        let (cx, text) = (r.cx, r.text);
        let obj = cx.object(text, EXPECTED)?;
        let tz = cx.tz_of(&obj)?;
        let windows: Vec<serde_json::Map<String, Value>> = match obj.get("windows") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|w| w.as_object().cloned().ok_or_else(|| cx.bad(text, EXPECTED)))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(cx.bad(text, EXPECTED)),
            None => vec![obj.clone()],
        };
        if windows.is_empty() {
            return Err(cx.err("value", RuleProblem::Empty("no blackout windows".into())));
        }
        let windows = windows
            .iter()
            .map(|w| {
                let reason = w.get("reason").and_then(Value::as_str).map(str::to_owned);
                // A window's own zone, else the rule's; an unknown one is an error, never the
                // rule's zone in its place.
                let tz = cx.own_tz(w)?.unwrap_or_else(|| tz.clone());
                let start = w.get("start").and_then(Value::as_str).ok_or_else(|| cx.bad(text, EXPECTED))?;
                let end = w.get("end").and_then(Value::as_str).ok_or_else(|| cx.bad(text, EXPECTED))?;
                // `recurring` says what the bounds already do (times of day recur daily, dates
                // do not); one that contradicts them is an error, never quietly ignored.
                let recurring = match w.get("recurring") {
                    None | Some(Value::Null) => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(_) => return Err(cx.bad(text, "`recurring` as true or false")),
                };
                let daily = parse_time(start).is_some() && parse_time(end).is_some();
                if recurring.is_some_and(|r| r != daily) {
                    return Err(cx.bad(
                        text,
                        if daily {
                            "a window of times of day (HH:MM) recurs daily: a one-off blackout takes dates (YYYY-MM-DD, YYYY-MM-DDTHH:MM or RFC 3339)"
                        } else {
                            "a window of dates happens once: a recurring blackout takes times of day (HH:MM)"
                        },
                    ));
                }
                match (parse_time(start), parse_time(end)) {
                    (Some(s), Some(e)) if s == e => {
                        Err(cx.err("value", RuleProblem::Empty(format!("the window {start} to {end} is empty"))))
                    }
                    (Some(s), Some(e)) => Ok(Window::Daily { start: s, end: e, zone: Zone::of(tz), reason }),
                    _ => {
                        let (s, e) = cx.absolute_range(w, &tz)?;
                        Ok(Window::Absolute { start: s, end: e, reason })
                    }
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Spec {
            check: Check::Blackout(BlackoutRule(windows)),
            rails: RailFilter::All,
            violation: V::BlackoutPeriod,
            polarity: Polarity::BrokenWhenHolds,
            outcome: if r.outcome() == Outcome::Approval { Outcome::Approval } else { Outcome::Deny },
        })
    }
}

/// The reason of the window `now` falls in, if any.
pub(crate) struct Dark<'a>(Option<&'a str>);

impl BlackoutRule {
    /// Whether `now` is inside a window.
    pub(crate) fn check(&self, s: &Subject<'_>) -> Finding<Dark<'_>> {
        let hit = self.0.iter().find(|w| match w {
            Window::Daily { start, end, zone, .. } => in_daily_window(s.local_in(zone).0, *start, *end),
            Window::Absolute { start, end, .. } => *start <= s.now && s.now < *end,
        });
        let reason = hit.and_then(|w| {
            let (Window::Daily { reason, .. } | Window::Absolute { reason, .. }) = w;
            reason.as_deref()
        });
        Finding { holds: hit.is_some(), detail: Dark(reason) }
    }
}

impl Explain for Dark<'_> {
    fn explain(&self, _rule_type: &str) -> String {
        match self.0 {
            Some(reason) => format!("blackout period in effect ({reason})"),
            None => "blackout period in effect".to_owned(),
        }
    }
}

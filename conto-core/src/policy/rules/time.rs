//! Time rules: `TIME_WINDOW` (a daily window, `BETWEEN`), `DAY_OF_WEEK` (`IN_LIST`) and
//! `DATE_RANGE` (an absolute range, `BETWEEN`), in the policy's or the rule's time zone.

use jiff::Timestamp;
use jiff::civil::Time;
use jiff::tz::TimeZone;

use super::{Check, Explain, Finding, RailFilter, Spec, Subject, Zone, in_daily_window};
use crate::decision::ViolationType as V;
use crate::policy::compile::{Family, RuleInput};
use crate::policy::{PolicyError, RuleProblem};

/// A rule on when a payment is made.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TimeRule {
    /// Inside (`between`) or outside a daily window.
    OfDay { start: Time, end: Time, between: bool, zone: Zone },
    /// On (`in_list`) or off the weekdays in `days` (bit 0 = Monday).
    Weekday { days: u8, in_list: bool, zone: Zone },
    /// Inside (`between`) or outside `[start, end)`.
    Range { start: Timestamp, end: Timestamp, between: bool },
}

/// The family's rule types.
pub(crate) enum Times {
    Window,
    Days,
    Dates,
}

impl Family for Times {
    type Kind = Times;

    fn kind(rule_type: &str) -> Option<Self::Kind> {
        Some(match rule_type {
            "TIME_WINDOW" => Times::Window,
            "DAY_OF_WEEK" => Times::Days,
            "DATE_RANGE" => Times::Dates,
            _ => return None,
        })
    }

    fn compile(kind: Self::Kind, r: &RuleInput<'_>) -> Result<Spec, PolicyError> {
        let (cx, text) = (r.cx, r.text);
        let (rule, violation) = match kind {
            Times::Window => {
                let between = r.between()?;
                const EXPECTED: &str = "a JSON object {\"start\": \"HH:MM\", \"end\": \"HH:MM\"}";
                let obj = cx.object(text, EXPECTED)?;
                let start = cx.time(&obj, "start", text, EXPECTED)?;
                let end = cx.time(&obj, "end", text, EXPECTED)?;
                if start == end {
                    return Err(cx.err("value", RuleProblem::Empty(format!("the window {start} to {end} is empty"))));
                }
                (TimeRule::OfDay { start, end, between, zone: Zone::of(cx.tz_of(&obj)?) }, V::TimeWindow)
            }
            Times::Days => {
                let in_list = r.in_list()?;
                const EXPECTED: &str = "a JSON array of weekdays, e.g. [\"Mon\", \"Tue\"]";
                let items: Vec<String> = serde_json::from_str(text).map_err(|_| cx.bad(text, EXPECTED))?;
                if items.is_empty() {
                    return Err(cx.err("value", RuleProblem::Empty("the list of days is empty".into())));
                }
                let mut days = 0u8;
                for item in &items {
                    days |= 1 << weekday(item).ok_or_else(|| cx.bad(item, "a weekday Mon..Sun"))?;
                }
                (TimeRule::Weekday { days, in_list, zone: Zone::of(cx.tz.clone()) }, V::TimeWindow)
            }
            Times::Dates => {
                let between = r.between()?;
                let obj = cx.object(text, "a JSON object {\"start\": \"YYYY-MM-DD\", \"end\": \"YYYY-MM-DD\"}")?;
                let tz = cx.tz_of(&obj)?;
                let (start, end) = cx.absolute_range(&obj, &tz)?;
                (TimeRule::Range { start, end, between }, V::ExpiredPermission)
            }
        };
        Ok(r.spec(Check::Time(rule), RailFilter::All, violation))
    }
}

/// Monday = 0.
fn weekday(name: &str) -> Option<u8> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "mon" | "monday" => 0,
        "tue" | "tues" | "tuesday" => 1,
        "wed" | "wednesday" => 2,
        "thu" | "thurs" | "thursday" => 3,
        "fri" | "friday" => 4,
        "sat" | "saturday" => 5,
        "sun" | "sunday" => 6,
        _ => return None,
    })
}

/// What a time rule saw.
pub(crate) enum When<'a> {
    OfDay { local: Time, inside: bool, start: Time, end: Time, tz: &'a TimeZone },
    Weekday { day: u8, listed: bool },
    Range { now: Timestamp, inside: bool, start: Timestamp, end: Timestamp },
}

impl TimeRule {
    /// Whether the rule's condition holds: [`TimeRule::check`]'s `holds`, without the details
    /// its words are written from.
    #[inline]
    pub(crate) fn holds(&self, s: &Subject<'_>) -> bool {
        match self {
            TimeRule::OfDay { start, end, between, zone } => {
                in_daily_window(s.local_in(zone).0, *start, *end) == *between
            }
            TimeRule::Weekday { days, in_list, zone } => (days & (1 << s.local_in(zone).1) != 0) == *in_list,
            TimeRule::Range { start, end, between } => (*start <= s.now && s.now < *end) == *between,
        }
    }

    /// Places `now` against the window, the days or the range.
    pub(crate) fn check(&self, s: &Subject<'_>) -> Finding<When<'_>> {
        match self {
            TimeRule::OfDay { start, end, between, zone } => {
                let (t, _) = s.local_in(zone);
                let inside = in_daily_window(t, *start, *end);
                Finding {
                    holds: inside == *between,
                    detail: When::OfDay { local: t, inside, start: *start, end: *end, tz: &zone.tz },
                }
            }
            TimeRule::Weekday { days, in_list, zone } => {
                let (_, day) = s.local_in(zone);
                let listed = days & (1 << day) != 0;
                Finding { holds: listed == *in_list, detail: When::Weekday { day, listed } }
            }
            TimeRule::Range { start, end, between } => {
                let inside = *start <= s.now && s.now < *end;
                Finding {
                    holds: inside == *between,
                    detail: When::Range { now: s.now, inside, start: *start, end: *end },
                }
            }
        }
    }
}

impl Explain for When<'_> {
    fn explain(&self, _rule_type: &str) -> String {
        match self {
            When::OfDay { local, inside, start, end, tz } => format!(
                "local time {} is {} the window {}-{} ({})",
                local.strftime("%H:%M"),
                if *inside { "inside" } else { "outside" },
                start.strftime("%H:%M"),
                end.strftime("%H:%M"),
                tz.iana_name().unwrap_or("UTC"),
            ),
            When::Weekday { day, listed } => {
                const NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
                // The rule's list allows (IN_LIST) or excludes (NOT_IN_LIST): say what it lists.
                format!(
                    "{} is {} the days the rule lists",
                    NAMES[*day as usize],
                    if *listed { "among" } else { "not among" }
                )
            }
            When::Range { now, inside, start, end } => {
                format!("{now} is {} the permitted range {start} to {end}", if *inside { "inside" } else { "outside" })
            }
        }
    }
}

//! How long an MPP session may last: `MPP_MAX_SESSION_DURATION` `LTE` seconds (`"3600"`).
//!
//! A session lives from its deposit's pre-authorization to the record of what it settled, so
//! the rule is the pre-authorization's lifetime, in place of the approval's (longer or
//! shorter): until then its deposit stays held and its open-session slot taken; after it the
//! session lapses (both freed), and a record after that is still counted, flagged late. The
//! rule never denies a payment by itself.

use jiff::SignedDuration;
use rust_decimal::Decimal;

use super::{Action, Check, Cmp, RailFilter, Spec};
use crate::decision::ViolationType as V;
use crate::policy::compile::{Family, Op, RuleInput};
use crate::policy::{PolicyError, RuleProblem};

/// A session lasts at most this long: its pre-authorization's lifetime is capped to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionLength(pub SignedDuration);

/// The family's rule type.
pub(crate) struct Sessions;

impl Family for Sessions {
    type Kind = ();

    fn kind(rule_type: &str) -> Option<()> {
        (rule_type == "MPP_MAX_SESSION_DURATION").then_some(())
    }

    fn compile((): (), r: &RuleInput<'_>) -> Result<Spec, PolicyError> {
        const EXPECTED: &str = "a whole number of seconds, such as \"3600\"";
        let (cx, text) = (r.cx, r.text);
        let less = match r.op {
            Op::Cmp(Cmp::Le) => Decimal::ZERO,
            Op::Cmp(Cmp::Lt) => Decimal::ONE,
            _ => {
                let operator = r.operator.to_owned();
                return Err(cx.err("operator", RuleProblem::OperatorNotAllowed { operator, allowed: "LTE or LT" }));
            }
        };
        // It states how long a session may last: `ALLOW` (a `DENY` or an approval would mean
        // nothing here).
        if r.action != Action::Allow {
            let action = if r.action == Action::Deny { "DENY" } else { "REQUIRE_APPROVAL" }.to_owned();
            return Err(cx.err("action", RuleProblem::ActionNotAllowed { action, allowed: "ALLOW" }));
        }
        let secs = cx.decimal(text, EXPECTED)? - less;
        // Ten years: far beyond any approval's lifetime, and within a timestamp's range.
        if secs.fract() != Decimal::ZERO || secs < Decimal::ZERO || secs > Decimal::from(315_360_000) {
            return Err(cx.bad(text, EXPECTED));
        }
        let secs: i64 = secs.try_into().map_err(|_| cx.bad(text, EXPECTED))?;
        if secs == 0 {
            return Err(
                cx.err("value", RuleProblem::Empty("a session of 0 seconds allows no MPP payment at all".into()))
            );
        }
        let check = Check::Session(SessionLength(SignedDuration::from_secs(secs)));
        Ok(r.spec(check, RailFilter::MppSession, V::MppMaxSessionDuration))
    }
}

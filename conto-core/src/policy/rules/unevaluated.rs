//! Rule types Conto documents that need data the engine does not have (a payment's country, a
//! counterparty's trust score, ...). Refused at load by default; loaded
//! with [`UnevaluatedRules::Deny`](crate::policy::UnevaluatedRules::Deny), each is a rule every
//! payment on its rails breaks: denied, whatever the rule's action, never silently passed.

use super::{Check, CompiledRule, Explain, Finding, Outcome, Polarity, RailFilter, Subject};
use crate::decision::ViolationType as V;

/// The rule types Conto documents that the engine does not evaluate.
pub(crate) const UNEVALUATED: &[&str] =
    &["GEOGRAPHIC_RESTRICTION", "TRUST_SCORE", "COUNTERPARTY_STATUS", "FAIRSCALE_MIN_SCORE"];

/// One of [`UNEVALUATED`], loaded to deny: broken by every payment on its rails (an `MPP_*`
/// rule's, MPP; any other's, all), denied whatever its action, its violation named for it.
pub(crate) fn compiled(rule_type: String) -> CompiledRule {
    let violation = match rule_type.as_str() {
        "FAIRSCALE_MIN_SCORE" => V::FairscaleLowScore,
        other => V::from_name(other),
    };
    let rails = if rule_type.starts_with("MPP_") { RailFilter::Mpp } else { RailFilter::All };
    CompiledRule {
        rule_type: rule_type.into(),
        check: Check::Unevaluated(UnevaluatedRule),
        rails,
        polarity: Polarity::BrokenWhenHolds,
        outcome: Outcome::Deny,
        violation,
    }
}

/// A rule the engine cannot evaluate, kept so that payments under it are denied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnevaluatedRule;

impl UnevaluatedRule {
    /// Always holds: with [`Polarity::BrokenWhenHolds`](super::Polarity), always broken.
    pub(crate) fn check(&self, _: &Subject<'_>) -> Finding<Unevaluated> {
        Finding { holds: true, detail: Unevaluated }
    }
}

/// What a broken unevaluated rule says.
pub(crate) struct Unevaluated;

impl Explain for Unevaluated {
    fn explain(&self, rule_type: &str) -> String {
        format!(
            "{rule_type} needs data this engine does not have, so payments under this rule are denied \
             (fail-closed): remove the rule or deactivate its policy to pay here"
        )
    }
}

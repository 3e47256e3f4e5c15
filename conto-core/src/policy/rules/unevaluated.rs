//! Rule types Conto documents that need data the engine does not have (a payment's country, a
//! counterparty's trust score, a session's length, ...). Refused at load by default; loaded
//! with [`UnevaluatedRules::Deny`](crate::policy::UnevaluatedRules::Deny), each is a rule every
//! payment on its rails breaks: denied, whatever the rule's action, never silently passed.

use super::{Explain, Finding, Subject};

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

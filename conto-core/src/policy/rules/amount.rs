//! Per-payment caps: `MAX_AMOUNT`, `SINGLE_AMOUNT`, the x402, MPP and card ceilings,
//! `MPP_MAX_SESSION_DEPOSIT` and `REQUIRE_APPROVAL_ABOVE`.

use rust_decimal::Decimal;

use super::{Action, Check, Cmp, Explain, Finding, Outcome, Polarity, RailFilter, Spec, Subject};
use crate::decision::ViolationType as V;
use crate::intent::Rail;
use crate::micros::{Bound, Micros};
use crate::policy::compile::{Family, RuleInput};
use crate::policy::{PolicyError, RuleProblem};

/// What an amount rule measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measure {
    /// What the payment puts at stake ([`PaymentIntent::exposure`](crate::PaymentIntent::exposure)):
    /// its amount, or an MPP session's deposit when larger.
    Amount,
    /// The payment's own amount: an MPP request's price, whatever its session's deposit.
    Price,
    /// An MPP session's deposit (rules on it skip payments without one).
    Deposit,
}

/// A cap on one payment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AmountRule {
    measure: Measure,
    cmp: Cmp,
    limit: Bound,
}

/// The family's rule types.
pub(crate) struct Amounts;

impl Family for Amounts {
    type Kind = (Measure, RailFilter, V);

    fn kind(rule_type: &str) -> Option<Self::Kind> {
        use RailFilter as R;
        Some(match rule_type {
            "MAX_AMOUNT" | "SINGLE_AMOUNT" => (Measure::Amount, R::All, V::PerTxLimit),
            "X402_PRICE_CEILING" | "X402_MAX_PER_REQUEST" => (Measure::Amount, R::X402, V::X402PriceCeiling),
            "MPP_PRICE_CEILING" | "MPP_MAX_PER_REQUEST" => (Measure::Price, R::Mpp, V::MppPriceCeiling),
            "MPP_MAX_SESSION_DEPOSIT" => (Measure::Deposit, R::Mpp, V::MppMaxSessionDeposit),
            "CARD_MAX_AMOUNT" => (Measure::Amount, R::Card, V::CardAmountLimit),
            // Past its threshold a payment is over what one payment may be without a human: under
            // `DENY` that is a per-payment limit (Conto lists no type of its own for it).
            "REQUIRE_APPROVAL_ABOVE" => (Measure::Amount, R::All, V::PerTxLimit),
            _ => return None,
        })
    }

    fn compile((measure, rails, violation): Self::Kind, r: &RuleInput<'_>) -> Result<Spec, PolicyError> {
        let cmp = r.cmp()?;
        // "Above" is its name: `GT` or `GTE` (read with `LTE` as the rule's "gated when the
        // comparison holds", it gated small payments and let large ones through).
        if r.rule_type == "REQUIRE_APPROVAL_ABOVE" && !matches!(cmp, Cmp::Gt | Cmp::Ge) {
            let operator = r.operator.to_owned();
            return Err(r.cx.err("operator", RuleProblem::OperatorNotAllowed { operator, allowed: "GT or GTE" }));
        }
        let limit = if r.rule_type == "SINGLE_AMOUNT" { r.cx.amount_field(r.text)? } else { r.cx.limit(r.text)? };
        let check = Check::Amount(AmountRule { measure, cmp, limit: Bound::new(limit) });
        if r.rule_type == "REQUIRE_APPROVAL_ABOVE" {
            // Gated when the comparison holds, whatever the action; `DENY` makes it a hard cap.
            let outcome = if r.action == Action::Deny { Outcome::Deny } else { Outcome::Approval };
            return Ok(Spec { check, rails, violation, polarity: Polarity::BrokenWhenHolds, outcome });
        }
        Ok(r.spec(check, rails, violation))
    }
}

/// What an amount rule saw.
pub(crate) struct Seen {
    what: &'static str,
    subject: Micros,
    cmp: Cmp,
    limit: Decimal,
}

impl AmountRule {
    /// What the payment puts at stake, its price, or its deposit (`None`: a payment without
    /// one).
    fn measured(&self, s: &Subject<'_>) -> Option<Micros> {
        match (self.measure, &s.intent.rail) {
            (Measure::Amount, _) => Some(s.amount),
            (Measure::Price, _) => Some(Micros::of(s.intent.amount)),
            (Measure::Deposit, Rail::Mpp { deposit: Some(d), .. }) => Some(Micros::of(*d)),
            (Measure::Deposit, _) => None,
        }
    }

    /// Whether the amount (or deposit) compares with the limit as the rule says.
    pub(crate) fn holds(&self, s: &Subject<'_>) -> Option<bool> {
        self.measured(s).map(|x| self.limit.holds(x, self.cmp))
    }

    /// The payment amounts (micro-units, inclusive) this cap is not broken by, under
    /// `polarity`; `None` when that is not one range (an `=` or `!=` cap, or a cap on a deposit,
    /// which a payment may not have, or on a price, which is not what the fold compares).
    pub(crate) fn unbroken(&self, polarity: Polarity) -> Option<(i128, i128)> {
        if self.measure != Measure::Amount {
            return None;
        }
        polarity.unbroken(self.limit.holding(self.cmp))
    }

    /// [`AmountRule::holds`], with what was compared.
    pub(crate) fn check(&self, s: &Subject<'_>) -> Option<Finding<Seen>> {
        let subject = self.measured(s)?;
        let what = match self.measure {
            Measure::Deposit => "deposit",
            Measure::Amount if subject != Micros::of(s.intent.amount) => "amount at stake (the session's deposit)",
            Measure::Amount | Measure::Price => "amount",
        };
        Some(Finding {
            holds: self.limit.holds(subject, self.cmp),
            detail: Seen { what, subject, cmp: self.cmp, limit: self.limit.exact },
        })
    }
}

impl Explain for Seen {
    fn explain(&self, rule_type: &str) -> String {
        format!("{rule_type}: {} {}, limit {} {}", self.what, self.subject.to_decimal(), self.cmp.symbol(), self.limit)
    }

    fn limit(&self) -> Option<Decimal> {
        Some(self.limit)
    }

    fn current(&self) -> Option<Decimal> {
        Some(self.subject.to_decimal())
    }
}

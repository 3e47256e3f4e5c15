//! Spend per period: `DAILY_LIMIT`, `WEEKLY_LIMIT`, `MONTHLY_LIMIT`, `BUDGET_CAP`, and the
//! x402/MPP per-service, per-endpoint and session budgets. Each compares spent + reserved +
//! this payment with the limit, on a counter shared by every rule that counts the same quantity.

use jiff::Timestamp;
use rust_decimal::Decimal;
use smallvec::SmallVec;

use super::{Check, Cmp, Cumulative, Explain, Finding, Period, Polarity, RailFilter, Scope, Spec, Subject};
use crate::decision::ViolationType as V;
use crate::engine::evaluate::Reads;
use crate::engine::ledger::{CounterKey, Held};
use crate::intent::PaymentIntent;
use crate::micros::{Bound, Micros};
use crate::policy::PolicyError;
use crate::policy::compile::{Family, RuleInput};

/// A limit on spend per period.
#[derive(Debug, Clone)]
pub(crate) struct CumulativeRule {
    /// The counter (shared by rules counting the same quantity).
    pub counter: Cumulative,
    cmp: Cmp,
    limit: Bound,
    /// `DAILY_LIMIT`: reported back as the daily remaining.
    daily: bool,
}

/// How a cumulative rule type reads its value.
pub(crate) enum Limit {
    /// A plain limit for a fixed period.
    Plain(Period),
    /// A plain daily limit, or `{"amount", "period"}`.
    PlainOrBudget,
    /// Always `{"amount", "period"}`.
    Budget,
}

/// The family's rule types.
pub(crate) struct Cumulatives;

impl Family for Cumulatives {
    type Kind = (Scope, Limit, RailFilter, V);

    fn kind(rule_type: &str) -> Option<Self::Kind> {
        use Limit::*;
        use RailFilter as R;
        Some(match rule_type {
            "DAILY_LIMIT" => (Scope::Agent, Plain(Period::Day), R::All, V::DailyLimit),
            "WEEKLY_LIMIT" => (Scope::Agent, Plain(Period::Week), R::All, V::WeeklyLimit),
            "MONTHLY_LIMIT" => (Scope::Agent, Plain(Period::Month), R::All, V::MonthlyLimit),
            "BUDGET_CAP" => (Scope::Agent, Budget, R::All, V::BudgetExceeded),
            "X402_MAX_PER_SERVICE" => (Scope::Service, PlainOrBudget, R::X402, V::X402EndpointLimit),
            "X402_MAX_PER_ENDPOINT" => (Scope::Endpoint, PlainOrBudget, R::X402, V::X402EndpointLimit),
            "X402_SESSION_BUDGET" => (Scope::Session, Plain(Period::Total), R::X402, V::X402SessionBudget),
            "MPP_MAX_PER_SERVICE" => (Scope::Service, PlainOrBudget, R::Mpp, V::MppEndpointLimit),
            "MPP_MAX_PER_ENDPOINT" => (Scope::Endpoint, PlainOrBudget, R::Mpp, V::MppEndpointLimit),
            "MPP_SESSION_BUDGET" => (Scope::Session, Plain(Period::Total), R::Mpp, V::MppSessionBudget),
            _ => return None,
        })
    }

    fn compile((scope, limit, rails, violation): Self::Kind, r: &RuleInput<'_>) -> Result<Spec, PolicyError> {
        let cmp = r.cmp()?;
        let (limit, period, tz) = match limit {
            Limit::Budget => r.cx.budget(r.text)?,
            Limit::PlainOrBudget if r.text.trim_start().starts_with('{') => r.cx.budget(r.text)?,
            Limit::PlainOrBudget => (r.cx.limit(r.text)?, Period::Day, None),
            Limit::Plain(period) => (r.cx.limit(r.text)?, period, None),
        };
        let counter = r.cx.counter(scope, period, rails, tz);
        let daily = r.rule_type == "DAILY_LIMIT";
        Ok(r.spec(
            Check::Cumulative(CumulativeRule { counter, cmp, limit: Bound::new(limit), daily }),
            rails,
            violation,
        ))
    }
}

/// The counter of `c` for `intent`.
pub(crate) fn counter_key(c: &Cumulative, intent: &PaymentIntent) -> CounterKey {
    CounterKey { id: c.id, scope_key: c.scope.key(intent), period: c.period, tz: c.tz_name }
}

/// What one decision read from its counters: each counter's key, period start and what it had
/// used (read once, however many rules share it), and the tightest daily limit.
#[derive(Default)]
pub(crate) struct Tally {
    read: Read,
    daily: Option<(Micros, Bound)>,
}

/// A counter one decision read: its number in the set, key, period start and what it had used.
type Reading = (u32, CounterKey, Timestamp, Micros);

/// The counters one decision read, the first four inline (no allocation).
#[derive(Default)]
struct Read {
    inline: [Option<Reading>; 4],
    more: Vec<Reading>,
    /// What each counter read had used, by its number (the first eight inline).
    by_slot: SmallVec<[Option<Micros>; 8]>,
}

impl Read {
    /// What counter `slot` had used, if this decision read it already. Within one decision a
    /// counter's number fixes its key (the intent fixes the scope) and its period (`now`).
    fn used(&self, slot: u32) -> Option<Micros> {
        self.by_slot.get(slot as usize).copied().flatten()
    }

    fn push(&mut self, read: Reading) {
        let slot = read.0 as usize;
        if self.by_slot.len() <= slot {
            self.by_slot.resize(slot + 1, None);
        }
        self.by_slot[slot] = Some(read.3);
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(read),
            None => self.more.push(read),
        }
    }

    /// What the reservation keeps: no allocation for one counter, one exactly sized box for more.
    /// (Slots fill in order, and `more` only once they are full.)
    fn into_held(self) -> Held {
        let Read { inline: [first, second, third, fourth], more, .. } = self;
        match (first, second) {
            (None, _) => Held::Nothing,
            (Some((_, key, start, _)), None) => Held::One([(key, start)]),
            (Some(first), Some(second)) => {
                let n = 2 + usize::from(third.is_some()) + usize::from(fourth.is_some()) + more.len();
                let mut many = Vec::with_capacity(n);
                let all = [Some(first), Some(second), third, fourth].into_iter().flatten().chain(more);
                many.extend(all.map(|(_, key, start, _)| (key, start)));
                Held::Many(many.into_boxed_slice())
            }
        }
    }
}

impl Tally {
    /// The counters read, in order, to reserve on.
    pub fn into_holds(self) -> Held {
        self.read.into_held()
    }

    /// The tightest `DAILY_LIMIT`: spend after this payment, and the limit.
    pub fn daily(&self) -> Option<(Decimal, Decimal)> {
        self.daily.map(|(projected, limit)| (projected.to_decimal(), limit.exact))
    }
}

/// A rail's spend rules folded, for a payment whose actor every policy applies to: each
/// counter once, in the order a decision first reads it, with the projected spends
/// (micro-units, inclusive) none of its rules is broken by, and the tightest `DAILY_LIMIT`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpendFold {
    counters: Vec<(CumulativeRule, (i128, i128))>,
    /// The counter (by its place in `counters`) and limit [`Tally::daily`] reports.
    daily: Option<(usize, Bound)>,
}

impl SpendFold {
    /// Folds in `rule`, broken under `polarity`; `false` when it does not fold into a range
    /// (an `=` or `!=` limit).
    pub(crate) fn add(&mut self, rule: &CumulativeRule, polarity: Polarity) -> bool {
        let Some(range) = polarity.unbroken(rule.limit.holding(rule.cmp)) else { return false };
        let at = match self.counters.iter().position(|(c, _)| c.counter.slot == rule.counter.slot) {
            Some(at) => {
                let (lo, hi) = self.counters[at].1;
                self.counters[at].1 = (lo.max(range.0), hi.min(range.1));
                at
            }
            None => {
                self.counters.push((rule.clone(), range));
                self.counters.len() - 1
            }
        };
        // As `CumulativeRule::holds` keeps it: the first of the lowest daily limits.
        if rule.daily && self.daily.is_none_or(|(_, l)| rule.limit.is_below(&l)) {
            self.daily = Some((at, rule.limit));
        }
        true
    }

    /// Reads each counter once into `tally`, as the rules one by one would; whether none of
    /// them is broken.
    pub(crate) fn holds(&self, s: &Subject<'_>, ledger: &mut impl Reads, tally: &mut Tally) -> bool {
        let mut daily = None;
        for (at, (rule, (lo, hi))) in self.counters.iter().enumerate() {
            let projected = rule.used(s, ledger, tally) + s.amount;
            if !(*lo..=*hi).contains(&i128::from(projected.0)) {
                return false;
            }
            if let Some((_, limit)) = self.daily.filter(|(d, _)| *d == at) {
                daily = Some((projected, limit));
            }
        }
        tally.daily = daily;
        true
    }
}

/// What a cumulative rule saw.
pub(crate) struct Spent {
    period: Period,
    used: Micros,
    amount: Micros,
    cmp: Cmp,
    limit: Decimal,
}

impl CumulativeRule {
    /// Its limit, as written.
    pub(crate) fn cap(&self) -> Decimal {
        self.limit.exact
    }

    /// Whether the period's spend, with this payment, compares with the limit as the rule says.
    pub(crate) fn holds(&self, s: &Subject<'_>, ledger: &mut impl Reads, tally: &mut Tally) -> bool {
        let projected = self.used(s, ledger, tally) + s.amount;
        if self.daily && tally.daily.is_none_or(|(_, l)| self.limit.is_below(&l)) {
            tally.daily = Some((projected, self.limit));
        }
        self.limit.holds(projected, self.cmp)
    }

    /// What the counter had used, read once per decision however many rules share it.
    fn used(&self, s: &Subject<'_>, ledger: &mut impl Reads, tally: &mut Tally) -> Micros {
        let counter = &self.counter;
        if let Some(used) = tally.read.used(counter.slot) {
            return used;
        }
        let start = counter.period_start(s.now);
        let key = counter_key(counter, s.intent);
        let used = ledger.used(&key, start);
        tally.read.push((counter.slot, key, start, used));
        used
    }

    /// [`CumulativeRule::holds`], with what was compared.
    pub(crate) fn check(&self, s: &Subject<'_>, ledger: &mut impl Reads, tally: &mut Tally) -> Finding<Spent> {
        let holds = self.holds(s, ledger, tally);
        let used = self.used(s, ledger, tally);
        let (period, amount, cmp, limit) = (self.counter.period, s.amount, self.cmp, self.limit.exact);
        Finding { holds, detail: Spent { period, used, amount, cmp, limit } }
    }
}

impl Explain for Spent {
    fn explain(&self, rule_type: &str) -> String {
        format!(
            "{rule_type} {} spend would be {} ({} used + {} requested), limit {} {}",
            self.period.label(),
            (self.used + self.amount).to_decimal(),
            self.used.to_decimal(),
            self.amount.to_decimal(),
            self.cmp.symbol(),
            self.limit
        )
    }

    fn limit(&self) -> Option<Decimal> {
        Some(self.limit)
    }

    fn current(&self) -> Option<Decimal> {
        Some(self.used.to_decimal())
    }
}

#[cfg(test)]
mod tests {

    use jiff::Timestamp;

    use super::Read;
    use crate::engine::ledger::{CounterKey, Held};
    use crate::micros::Micros;
    use crate::policy::rules::{CounterId, Period};

    fn read(n: usize) -> (u32, CounterKey, Timestamp, Micros) {
        let key = CounterKey {
            id: CounterId::new(&format!("c{n}")),
            scope_key: String::new(),
            period: Period::Day,
            tz: "UTC",
        };
        (n as u32, key, Timestamp::from_second(n as i64).unwrap(), Micros(n as i64))
    }

    /// The reservation keeps every counter read, in the order read, inline or spilled.
    #[test]
    fn held_keeps_every_counter_in_order() {
        for n in 0..=7 {
            let mut r = Read::default();
            (0..n).for_each(|i| r.push(read(i)));
            let held = r.into_held();
            let got: Vec<_> = held.iter().map(|(k, start)| (k.id.as_str().to_owned(), start.as_second())).collect();
            let want: Vec<_> = (0..n).map(|i| (format!("c{i}"), i as i64)).collect();
            assert_eq!(got, want, "{n} counters");
            let shape_holds = match held {
                Held::Nothing => n == 0,
                Held::One(_) => n == 1,
                Held::Many(_) => n >= 2,
            };
            assert!(shape_holds, "{n} counters: nothing, one inline, or a box for more");
        }
    }
}

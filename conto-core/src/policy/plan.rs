//! A policy set's evaluation plan, built once per set: its rules regrouped by what a decision
//! does with them, each an entry in a flat array with its check copied in.
//!
//! - The stateless rules are screened family by family (amount caps, then lists, then the
//!   rest), in tight loops that only ask whether any applicable rule is broken. Almost every
//!   payment breaks none and is done with them; one that breaks any is walked again in
//!   priority order, which is what says which rule speaks and in what words.
//! - When every policy applies to the payment's actor (the common case), the amount caps and
//!   list rules of each rail are also folded ahead of time ([`Folded`]): the amounts no cap is
//!   broken by as one range, the list rules as bit masks, the time and blackout rules as the
//!   distinct ones (policies often repeat the same hours). The screen then asks the range,
//!   the masks and the distinct time rules, not each rule.
//! - The stateful rules (period spend, velocity) are judged in priority order, under the
//!   agent's ledger lock, from their own array; when every policy applies and no stateless
//!   rule denied, a rail's spend rules are folded too, one range per counter, and judged one
//!   by one only if a counter breaks its range.

use super::Policy;
use super::rules::amount::AmountRule;
use super::rules::blackout::BlackoutRule;
use super::rules::cumulative::{CumulativeRule, SpendFold};
use super::rules::lists::{ListCheck, ListFold};
use super::rules::session::SessionLength;
use super::rules::time::TimeRule;
use super::rules::unevaluated::UnevaluatedRule;
use super::rules::velocity::VelocityRule;
use super::rules::{Check, Polarity, RailFilter, Subject};
use crate::intent::Rail;

/// A rule's place in evaluation order: (policy index, rule index), compared as a pair.
pub(crate) type Pos = (u32, u32);

/// One rule in the plan.
#[derive(Debug, Clone)]
pub(crate) struct Entry<T> {
    /// Where the rule is.
    pub at: Pos,
    /// The rails it covers.
    pub rails: RailFilter,
    /// Whether it is broken when its condition holds or when it does not.
    pub polarity: Polarity,
    /// Its check.
    pub test: T,
}

/// A rule that reads the agent's ledger.
#[derive(Debug, Clone)]
pub(crate) enum Stateful {
    Spend(CumulativeRule),
    Velocity(VelocityRule),
}

/// The plan: see the module docs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    /// Per-payment caps.
    pub amounts: Box<[Entry<AmountRule>]>,
    /// Allow- and blocklists.
    pub lists: Box<[Entry<ListCheck>]>,
    /// The other stateless rules (time windows, blackouts).
    pub others: Box<[Entry<Timed>]>,
    /// The rules that read the ledger, in evaluation order.
    pub stateful: Box<[Entry<Stateful>]>,
    /// The caps on an MPP session's length (`MPP_MAX_SESSION_DURATION`): never broken, they
    /// shorten an approval's lifetime.
    pub sessions: Box<[Entry<SessionLength>]>,
    /// The rules folded for a payment whose actor every policy applies to, per rail
    /// ([`rail_slot`]).
    pub folded: [Folded; 5],
}

/// The rules that cover one rail, folded: what a payment whose actor every policy applies to
/// is checked against before (and, when nothing breaks, instead of) its rules one by one.
#[derive(Debug, Clone)]
pub(crate) struct Folded {
    /// The payment amounts (micro-units, inclusive) no cap is broken by; `None` when some cap
    /// does not fold into a range (see [`AmountRule::unbroken`]).
    pub amounts: Option<(i128, i128)>,
    /// The list rules.
    pub lists: ListFold,
    /// The spend rules; `None` when one does not fold (see [`SpendFold::add`]).
    pub spend: Option<SpendFold>,
    /// The velocity rules, in evaluation order.
    pub velocity: Vec<(VelocityRule, Polarity)>,
    /// The distinct time and blackout rules, each with its polarity: many policies repeat the
    /// same business hours, which hold or not alike.
    pub timed: Vec<(Timed, Polarity)>,
}

/// A time or blackout rule, folded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Timed {
    Time(TimeRule),
    Blackout(BlackoutRule),
    /// Not timed, but as stateless and as rare: a rule loaded to deny.
    Unevaluated(UnevaluatedRule),
}

impl Timed {
    /// Whether its condition holds for `s`.
    pub(crate) fn holds(&self, s: &Subject<'_>) -> bool {
        match self {
            Timed::Time(c) => c.holds(s),
            Timed::Blackout(c) => c.check(s).holds,
            Timed::Unevaluated(c) => c.check(s).holds,
        }
    }
}

impl Default for Folded {
    fn default() -> Self {
        Folded {
            amounts: Some((i128::MIN, i128::MAX)),
            lists: ListFold::default(),
            spend: Some(SpendFold::default()),
            velocity: Vec::new(),
            timed: Vec::new(),
        }
    }
}

/// A rail's slot in [`Plan::folded`]: the rails a [`RailFilter`] tells apart.
pub(crate) fn rail_slot(rail: &Rail) -> usize {
    match rail {
        Rail::X402 { .. } => 1,
        // A one-off charge apart from the sessions: session rules do not cover it.
        rail @ Rail::Mpp { .. } if !RailFilter::MppSession.matches(rail) => 4,
        Rail::Mpp { .. } => 2,
        Rail::Card { .. } => 3,
        Rail::Transfer { .. } | Rail::Request { .. } => 0,
    }
}

/// The slots of the rails `rails` covers.
fn slots(rails: RailFilter) -> &'static [usize] {
    match rails {
        RailFilter::All => &[0, 1, 2, 3, 4],
        RailFilter::X402 => &[1],
        RailFilter::Mpp => &[2, 4],
        RailFilter::MppSession => &[2],
        RailFilter::Card => &[3],
    }
}

impl Plan {
    /// The plan of `policies`, in evaluation order, once their counters and lists are numbered.
    pub(crate) fn of(policies: &[Policy]) -> Plan {
        let (mut amounts, mut lists, mut others, mut stateful) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut sessions = Vec::new();
        for (p, policy) in policies.iter().enumerate() {
            for (r, rule) in policy.rules.iter().enumerate() {
                // Policy files are far below 2^32 policies or rules.
                let at = (p as u32, r as u32);
                let (rails, polarity) = (rule.rails, rule.polarity);
                match &rule.check {
                    Check::Amount(c) => amounts.push(Entry { at, rails, polarity, test: *c }),
                    Check::List(c) => lists.push(Entry { at, rails, polarity, test: c.check }),
                    Check::Time(c) => others.push(Entry { at, rails, polarity, test: Timed::Time(c.clone()) }),
                    Check::Blackout(c) => others.push(Entry { at, rails, polarity, test: Timed::Blackout(c.clone()) }),
                    Check::Unevaluated(c) => {
                        others.push(Entry { at, rails, polarity, test: Timed::Unevaluated(c.clone()) });
                    }
                    Check::Cumulative(c) => {
                        stateful.push(Entry { at, rails, polarity, test: Stateful::Spend(c.clone()) });
                    }
                    Check::Velocity(c) => {
                        stateful.push(Entry { at, rails, polarity, test: Stateful::Velocity(c.clone()) });
                    }
                    Check::Session(c) => sessions.push(Entry { at, rails, polarity, test: *c }),
                }
            }
        }
        let mut folded: [Folded; 5] = Default::default();
        for e in &amounts {
            for &slot in slots(e.rails) {
                let f = &mut folded[slot];
                f.amounts = match (f.amounts, e.test.unbroken(e.polarity)) {
                    (Some((lo, hi)), Some((low, high))) => Some((lo.max(low), hi.min(high))),
                    _ => None,
                };
            }
        }
        for e in &lists {
            for &slot in slots(e.rails) {
                folded[slot].lists.add(&e.test, e.polarity);
            }
        }
        for e in &others {
            for &slot in slots(e.rails) {
                let timed = (e.test.clone(), e.polarity);
                if !folded[slot].timed.contains(&timed) {
                    folded[slot].timed.push(timed);
                }
            }
        }
        for e in &stateful {
            for &slot in slots(e.rails) {
                let f = &mut folded[slot];
                match &e.test {
                    Stateful::Spend(c) => {
                        if f.spend.as_mut().is_some_and(|spend| !spend.add(c, e.polarity)) {
                            f.spend = None;
                        }
                    }
                    Stateful::Velocity(v) => f.velocity.push((v.clone(), e.polarity)),
                }
            }
        }
        Plan {
            amounts: amounts.into(),
            lists: lists.into(),
            others: others.into(),
            stateful: stateful.into(),
            sessions: sessions.into(),
            folded,
        }
    }

    /// Whether every entry points at a rule of its own family in `policies` (a debug check:
    /// a plan is built with its policies and never apart from them).
    pub(crate) fn matches(&self, policies: &[Policy]) -> bool {
        let rule = |(p, r): Pos| policies.get(p as usize).and_then(|p| p.rules.get(r as usize)).map(|r| &r.check);
        let count: usize = policies.iter().map(|p| p.rules.len()).sum();
        count == self.amounts.len() + self.lists.len() + self.others.len() + self.stateful.len() + self.sessions.len()
            && self.amounts.iter().all(|e| matches!(rule(e.at), Some(Check::Amount(_))))
            && self.lists.iter().all(|e| matches!(rule(e.at), Some(Check::List(c)) if c.check.bit() == e.test.bit()))
            && self.others.iter().all(|e| match (rule(e.at), &e.test) {
                (Some(Check::Time(c)), Timed::Time(t)) => c == t,
                (Some(Check::Blackout(c)), Timed::Blackout(b)) => c == b,
                (Some(Check::Unevaluated(c)), Timed::Unevaluated(u)) => c == u,
                _ => false,
            })
            && self.stateful.iter().all(|e| matches!(rule(e.at), Some(Check::Cumulative(_) | Check::Velocity(_))))
            && self.sessions.iter().all(|e| matches!(rule(e.at), Some(Check::Session(c)) if *c == e.test))
    }
}

#[cfg(test)]
mod tests {
    use super::{rail_slot, slots};
    use crate::intent::Rail;
    use crate::policy::rules::RailFilter;

    /// A filter's slots are exactly the slots of the rails it matches.
    #[test]
    fn slots_are_the_rails_a_filter_matches() {
        let rails = [
            Rail::transfer(8453, "0x2222222222222222222222222222222222222222").unwrap(),
            Rail::x402("https://api.example.com/").unwrap(),
            Rail::mpp("https://api.example.com/").unwrap(),
            match Rail::mpp("https://api.example.com/").unwrap() {
                Rail::Mpp { service_domain, resource_url, session_id, deposit, method, .. } => Rail::Mpp {
                    service_domain,
                    resource_url,
                    session_id,
                    intent: Some("Charge".into()),
                    deposit,
                    method,
                },
                _ => unreachable!(),
            },
            // A "charge" that names a session is one.
            match Rail::mpp("https://api.example.com/").unwrap() {
                Rail::Mpp { service_domain, resource_url, deposit, method, .. } => Rail::Mpp {
                    service_domain,
                    resource_url,
                    session_id: Some("s".into()),
                    intent: Some("charge".into()),
                    deposit,
                    method,
                },
                _ => unreachable!(),
            },
            Rail::card("Acme").unwrap(),
            Rail::request(None),
        ];
        for filter in [RailFilter::All, RailFilter::X402, RailFilter::Mpp, RailFilter::MppSession, RailFilter::Card] {
            for rail in &rails {
                assert_eq!(slots(filter).contains(&rail_slot(rail)), filter.matches(rail), "{filter:?} {rail:?}");
            }
        }
    }
}

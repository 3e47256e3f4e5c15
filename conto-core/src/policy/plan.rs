//! A policy set's evaluation plan, built once per set: its rules regrouped by what a decision
//! does with them, each an entry in a flat array with its check copied in.
//!
//! - The stateless rules are screened family by family (amount caps, then lists, then the
//!   rest), in tight loops that only ask whether any applicable rule is broken. Almost every
//!   payment breaks none and is done with them; one that breaks any is walked again in
//!   priority order, which is what says which rule speaks and in what words.
//! - The stateful rules (period spend, velocity) are judged in priority order, under the
//!   agent's ledger lock, from their own array.

use super::Policy;
use super::rules::amount::AmountRule;
use super::rules::cumulative::CumulativeRule;
use super::rules::lists::ListCheck;
use super::rules::velocity::VelocityRule;
use super::rules::{Check, Polarity, RailFilter};

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
    /// The other stateless rules (time windows, blackouts), checked from their policy.
    pub others: Box<[Entry<()>]>,
    /// The rules that read the ledger, in evaluation order.
    pub stateful: Box<[Entry<Stateful>]>,
}

impl Plan {
    /// The plan of `policies`, in evaluation order, once their counters and lists are numbered.
    pub(crate) fn of(policies: &[Policy]) -> Plan {
        let (mut amounts, mut lists, mut others, mut stateful) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (p, policy) in policies.iter().enumerate() {
            for (r, rule) in policy.rules.iter().enumerate() {
                // Policy files are far below 2^32 policies or rules.
                let at = (p as u32, r as u32);
                let (rails, polarity) = (rule.rails, rule.polarity);
                match &rule.check {
                    Check::Amount(c) => amounts.push(Entry { at, rails, polarity, test: *c }),
                    Check::List(c) => lists.push(Entry { at, rails, polarity, test: c.check }),
                    Check::Time(_) | Check::Blackout(_) => others.push(Entry { at, rails, polarity, test: () }),
                    Check::Cumulative(c) => {
                        stateful.push(Entry { at, rails, polarity, test: Stateful::Spend(c.clone()) });
                    }
                    Check::Velocity(c) => {
                        stateful.push(Entry { at, rails, polarity, test: Stateful::Velocity(c.clone()) });
                    }
                }
            }
        }
        Plan { amounts: amounts.into(), lists: lists.into(), others: others.into(), stateful: stateful.into() }
    }

    /// Whether every entry points at a rule of its own family in `policies` (a debug check:
    /// a plan is built with its policies and never apart from them).
    pub(crate) fn matches(&self, policies: &[Policy]) -> bool {
        let rule = |(p, r): Pos| policies.get(p as usize).and_then(|p| p.rules.get(r as usize)).map(|r| &r.check);
        let count: usize = policies.iter().map(|p| p.rules.len()).sum();
        count == self.amounts.len() + self.lists.len() + self.others.len() + self.stateful.len()
            && self.amounts.iter().all(|e| matches!(rule(e.at), Some(Check::Amount(_))))
            && self.lists.iter().all(|e| matches!(rule(e.at), Some(Check::List(c)) if c.check.bit() == e.test.bit()))
            && self.others.iter().all(|e| matches!(rule(e.at), Some(Check::Time(_) | Check::Blackout(_))))
            && self.stateful.iter().all(|e| matches!(rule(e.at), Some(Check::Cumulative(_) | Check::Velocity(_))))
    }
}

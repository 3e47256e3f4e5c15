//! Allow- and blocklists: categories, counterparties (`WHITELIST` too), x402/MPP services,
//! MPP session intents and methods, card MCCs and merchants.

use std::collections::HashSet;

use super::{Check, Explain, Finding, Polarity, RailFilter, Spec, Subject};
use crate::decision::ViolationType as V;
use crate::intent::{Address, PaymentIntent, Rail};
use crate::policy::PolicyError;
use crate::policy::compile::{Family, RuleInput};

/// The field a list rule checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Counterparty,
    Category,
    Service,
    Mcc,
    Merchant,
    MppIntent,
    MppMethod,
}

impl Field {
    fn label(self) -> &'static str {
        match self {
            Field::Counterparty => "recipient",
            Field::Category => "category",
            Field::Service => "service",
            Field::Mcc => "merchant category code",
            Field::Merchant => "merchant",
            Field::MppIntent => "session intent",
            Field::MppMethod => "method",
        }
    }
}

/// A list of values a field is checked against.
#[derive(Debug, Clone)]
pub(crate) struct ListRule {
    field: Field,
    entries: Entries,
    in_list: bool,
}

/// A list's entries: a short list is scanned in place (most are a handful of entries), a long
/// one is hashed for exact lookups.
#[derive(Debug, Clone)]
enum Entries {
    Few(Box<[Box<str>]>),
    Many(HashSet<String, foldhash::fast::RandomState>),
}

impl Entries {
    const FEW: usize = 8;

    fn new(items: Vec<String>) -> Self {
        if items.len() <= Self::FEW {
            let mut few: Vec<Box<str>> = Vec::with_capacity(items.len());
            for item in items {
                if !few.iter().any(|e| **e == *item) {
                    few.push(item.into());
                }
            }
            Entries::Few(few.into())
        } else {
            Entries::Many(items.into_iter().collect())
        }
    }

    /// Whether `value` is an entry, exactly.
    fn contains(&self, value: &str) -> bool {
        match self {
            Entries::Few(few) => few.iter().any(|e| **e == *value),
            Entries::Many(set) => set.contains(value),
        }
    }

    /// Whether `value` is an entry, ignoring ASCII case (the entries are stored lowercase): a
    /// short list is scanned, a long one looked up once.
    fn contains_ignoring_case(&self, value: &str) -> bool {
        match self {
            Entries::Few(few) => few.iter().any(|e| eq_folded(value.as_bytes(), e.as_bytes())),
            Entries::Many(set) => with_lowercase(value, |v| set.contains(v)),
        }
    }

    /// Whether `domain` or a parent domain of it is an entry, ignoring ASCII case: an entry
    /// `example.com` lists `example.com` and `api.example.com`, not `badexample.com`. A long
    /// list is looked up once per label, however many entries it has.
    fn lists_domain(&self, domain: &str) -> bool {
        match self {
            Entries::Few(few) => few.iter().any(|e| is_domain_or_parent(domain, e)),
            Entries::Many(set) => with_lowercase(domain, |d| {
                set.contains(d) || d.match_indices('.').any(|(dot, _)| set.contains(&d[dot + 1..]))
            }),
        }
    }
}

/// Whether `domain` is `entry` (in lowercase) or a subdomain of it, ignoring ASCII case.
fn is_domain_or_parent(domain: &str, entry: &str) -> bool {
    let (d, e) = (domain.as_bytes(), entry.as_bytes());
    eq_folded(d, e) || d.len() > e.len() && d[d.len() - e.len() - 1] == b'.' && eq_folded(&d[d.len() - e.len()..], e)
}

/// Whether `value` equals `lower` (already in ASCII lowercase) ignoring ASCII case, as
/// `eq_ignore_ascii_case` answers, eight bytes at a time (a list rule compares on every
/// decision, against every entry).
fn eq_folded(value: &[u8], lower: &[u8]) -> bool {
    if value.len() != lower.len() {
        return false;
    }
    let (mut v, mut l) = (value.chunks_exact(8), lower.chunks_exact(8));
    for (a, b) in (&mut v).zip(&mut l) {
        let (mut x, mut y) = ([0u8; 8], [0u8; 8]);
        x.copy_from_slice(a);
        y.copy_from_slice(b);
        if fold8(u64::from_le_bytes(x)) != u64::from_le_bytes(y) {
            return false;
        }
    }
    v.remainder().iter().zip(l.remainder()).all(|(a, b)| a.to_ascii_lowercase() == *b)
}

/// Eight bytes with every ASCII capital made lowercase (bit 5 set), others untouched.
fn fold8(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let heptets = x & (0x7f * ONES);
    // Per byte, no carry between bytes: the high bit says `>= 'A'`, then `> 'Z'`.
    let at_least_a = heptets + (0x80 - u64::from(b'A')) * ONES;
    let past_z = heptets + (0x7f - u64::from(b'Z')) * ONES;
    let capital = at_least_a & !past_z & !x & (0x80 * ONES);
    x | capital >> 2
}

/// `value.trim()`, without the Unicode scan when it plainly starts and ends with a character
/// that is not whitespace (a category like `API_PROVIDER`).
fn trimmed(value: &str) -> &str {
    let solid = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii() && !char::from(*b).is_whitespace());
    let bytes = value.as_bytes();
    if solid(bytes.first()) && solid(bytes.last()) { value } else { value.trim() }
}

/// Runs `f` on `value` in ASCII lowercase, copying only when it has an uppercase letter (on the
/// stack when short).
fn with_lowercase<R>(value: &str, f: impl FnOnce(&str) -> R) -> R {
    if !value.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(value);
    }
    let mut buf = [0u8; 64];
    match buf.get_mut(..value.len()) {
        Some(short) => {
            short.copy_from_slice(value.as_bytes());
            short.make_ascii_lowercase();
            // Lowercasing ASCII letters keeps UTF-8 valid.
            match std::str::from_utf8(short) {
                Ok(lower) => f(lower),
                Err(_) => f(&value.to_ascii_lowercase()),
            }
        }
        None => f(&value.to_ascii_lowercase()),
    }
}

/// The family's rule types. Types named `ALLOWED_*`/`WHITELIST` or `BLOCKED_*`/`*_BLOCK_*`
/// keep that polarity whatever the action.
pub(crate) struct Lists;

impl Family for Lists {
    type Kind = (Field, RailFilter, V, Polarity);

    fn kind(rule_type: &str) -> Option<Self::Kind> {
        use RailFilter as R;
        let allowed = Polarity::BrokenUnlessHolds;
        let blocked = Polarity::BrokenWhenHolds;
        Some(match rule_type {
            "ALLOWED_CATEGORIES" => (Field::Category, R::All, V::CategoryRestriction, allowed),
            "BLOCKED_CATEGORIES" => (Field::Category, R::All, V::CategoryRestriction, blocked),
            "ALLOWED_COUNTERPARTIES" | "WHITELIST" => (Field::Counterparty, R::All, V::WhitelistViolation, allowed),
            "BLOCKED_COUNTERPARTIES" => (Field::Counterparty, R::All, V::BlockedCounterparty, blocked),
            "X402_ALLOWED_SERVICES" => (Field::Service, R::X402, V::X402ServiceNotAllowed, allowed),
            "X402_BLOCKED_SERVICES" => (Field::Service, R::X402, V::X402ServiceBlocked, blocked),
            "MPP_ALLOWED_SERVICES" => (Field::Service, R::Mpp, V::MppServiceNotAllowed, allowed),
            "MPP_BLOCKED_SERVICES" => (Field::Service, R::Mpp, V::MppServiceBlocked, blocked),
            "MPP_BLOCK_SESSION_INTENT" => (Field::MppIntent, R::Mpp, V::MppSessionIntentBlocked, blocked),
            "MPP_ALLOWED_METHODS" => (Field::MppMethod, R::Mpp, V::MppMethodNotAllowed, allowed),
            "CARD_ALLOWED_MCCS" => (Field::Mcc, R::Card, V::CardMccRestriction, allowed),
            "CARD_BLOCKED_MCCS" => (Field::Mcc, R::Card, V::CardMccRestriction, blocked),
            "CARD_ALLOWED_MERCHANTS" => (Field::Merchant, R::Card, V::CardMerchantRestriction, allowed),
            "CARD_BLOCKED_MERCHANTS" => (Field::Merchant, R::Card, V::CardMerchantRestriction, blocked),
            _ => return None,
        })
    }

    fn compile((field, rails, violation, polarity): Self::Kind, r: &RuleInput<'_>) -> Result<Spec, PolicyError> {
        let in_list = r.in_list()?;
        const EXPECTED: &str = "a JSON array of strings, e.g. [\"a\", \"b\"]";
        let cx = r.cx;
        // An empty list is valid (choice 7 in the module docs): an empty allowlist allows
        // nothing, an empty blocklist blocks nothing.
        let items: Vec<String> = serde_json::from_str(r.text).map_err(|_| cx.bad(r.text, EXPECTED))?;
        let entries = items
            .into_iter()
            .map(|item| match field {
                Field::Counterparty => Address::parse(item.trim())
                    .map(|a| a.as_str().to_owned())
                    .map_err(|_| cx.bad(&item, "an EVM (0x + 40 hex) or Solana address")),
                Field::Mcc => {
                    let t = item.trim();
                    if t.len() == 4 && t.bytes().all(|b| b.is_ascii_digit()) {
                        Ok(t.to_owned())
                    } else {
                        Err(cx.bad(&item, "a 4-digit merchant category code"))
                    }
                }
                _ => {
                    let t = item.trim().to_ascii_lowercase();
                    if t.is_empty() { Err(cx.bad(&item, "a non-empty string")) } else { Ok(t) }
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let entries = Entries::new(entries);
        let mut spec = r.spec(Check::List(ListRule { field, entries, in_list }), rails, violation);
        spec.polarity = polarity;
        Ok(spec)
    }
}

/// What a list rule saw.
pub(crate) enum Listing<'a> {
    /// The payment has no value for the field.
    Missing(Field),
    /// The value, and whether it is listed.
    Listed { field: Field, value: &'a str, listed: bool },
}

impl ListRule {
    /// Looks the payment's field up in the list.
    pub(crate) fn check<'a>(&self, s: &Subject<'a>) -> Option<Finding<Listing<'a>>> {
        let field = self.field;
        let Some(value) = subject(field, s.intent) else {
            // Counterparty rules do not apply to cards; other missing fields are "not listed".
            if field == Field::Counterparty {
                return None;
            }
            return Some(Finding { holds: !self.in_list, detail: Listing::Missing(field) });
        };
        let listed = match field {
            Field::Counterparty | Field::Mcc => self.entries.contains(value),
            Field::Service => self.entries.lists_domain(value),
            _ => self.entries.contains_ignoring_case(trimmed(value)),
        };
        Some(Finding { holds: listed == self.in_list, detail: Listing::Listed { field, value, listed } })
    }
}

/// The field a list rule checks, borrowed from the intent.
fn subject(field: Field, intent: &PaymentIntent) -> Option<&str> {
    match (field, &intent.rail) {
        (Field::Counterparty, _) => intent.recipient.as_ref().map(|a| a.as_str()),
        (Field::Category, _) => intent.category.as_deref(),
        (Field::Service, Rail::X402 { service_domain, .. } | Rail::Mpp { service_domain, .. }) => {
            Some(service_domain.as_str())
        }
        (Field::Mcc, Rail::Card { mcc, .. }) => mcc.as_deref(),
        (Field::Merchant, Rail::Card { merchant, .. }) => Some(merchant.as_str()),
        (Field::MppIntent, Rail::Mpp { intent, .. }) => intent.as_deref(),
        (Field::MppMethod, Rail::Mpp { method, .. }) => method.as_deref(),
        _ => None,
    }
}

impl Explain for Listing<'_> {
    fn explain(&self, rule_type: &str) -> String {
        match self {
            Listing::Missing(field) => format!("{rule_type}: the payment has no {}", field.label()),
            Listing::Listed { field, value, listed } => {
                format!("{} `{value}` is {} the {rule_type} list", field.label(), if *listed { "on" } else { "not on" })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::Entries;

    /// What a list answered before entries were looked up: a scan comparing without case.
    fn scanned(items: &[String], value: &str) -> bool {
        items.iter().any(|e| e.eq_ignore_ascii_case(value))
    }

    fn scanned_domain(items: &[String], v: &str) -> bool {
        items.iter().any(|e| {
            v.eq_ignore_ascii_case(e)
                || (v.len() > e.len()
                    && v.as_bytes()[v.len() - e.len() - 1] == b'.'
                    && v[v.len() - e.len()..].eq_ignore_ascii_case(e))
        })
    }

    proptest! {
        /// The eight-at-a-time comparison answers as `eq_ignore_ascii_case`, and the trim
        /// shortcut as `trim`, on any bytes.
        #[test]
        fn folded_compares_and_trims_answer_as_the_standard_ones(
            a in "[ -~\\t\\x0b\\u{a0}é]{0,40}", b in "[ -~é]{0,40}", same in any::<bool>(),
        ) {
            let lower = if same { a.to_ascii_lowercase() } else { b.to_ascii_lowercase() };
            prop_assert_eq!(super::eq_folded(a.as_bytes(), lower.as_bytes()), a.eq_ignore_ascii_case(&lower));
            prop_assert_eq!(super::trimmed(&a), a.trim());
        }

        #[test]
        fn a_short_and_a_long_list_answer_alike(
            items in prop::collection::vec("[a-c]{1,3}", 0..30), probe in "[a-cA-C]{1,3}",
        ) {
            let few = Entries::Few(items.iter().map(|i| Box::from(i.as_str())).collect());
            let many = Entries::Many(items.iter().cloned().collect());
            let built = Entries::new(items.clone());
            for e in [&few, &many, &built] {
                prop_assert_eq!(e.contains(&probe), items.contains(&probe));
                prop_assert_eq!(e.contains_ignoring_case(&probe), scanned(&items, &probe));
            }
        }

        /// Lowercase entries (as compiled) looked up answer as a case-blind scan does, for
        /// names and for domains with their parents, short and long, on the stack or not.
        #[test]
        fn a_lookup_answers_as_a_case_blind_scan(
            items in prop::collection::vec("[a-c]{1,3}(\\.[a-c]{1,3}){0,2}", 0..30),
            probe in "([a-cA-C]{1,3}\\.){0,3}[a-cA-C]{1,3}|[a-cA-C.]{60,70}",
        ) {
            for e in [Entries::new(items.clone()), Entries::Many(items.iter().cloned().collect())] {
                prop_assert_eq!(e.contains_ignoring_case(&probe), scanned(&items, &probe));
                prop_assert_eq!(e.lists_domain(&probe), scanned_domain(&items, &probe));
            }
        }
    }
}

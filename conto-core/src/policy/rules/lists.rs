//! Allow- and blocklists: categories, counterparties (`WHITELIST` too), x402/MPP services,
//! MPP session intents and methods, card MCCs and merchants, and the contracts a payment
//! calls (`CONTRACT_ALLOWLIST`).

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

use super::{Check, CompiledRule, Explain, Finding, Polarity, RailFilter, Spec, Subject};
use crate::decision::ViolationType as V;
use crate::intent::{Address, PaymentIntent, Rail, TARGET_CONTRACT};
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
    Contract,
}

impl Field {
    /// How many fields there are.
    const COUNT: usize = 8;
    /// Every field.
    const ALL: [Field; Field::COUNT] = [
        Field::Counterparty,
        Field::Category,
        Field::Service,
        Field::Mcc,
        Field::Merchant,
        Field::MppIntent,
        Field::MppMethod,
        Field::Contract,
    ];

    fn label(self) -> &'static str {
        match self {
            Field::Counterparty => "recipient",
            Field::Category => "category",
            Field::Service => "service",
            Field::Mcc => "merchant category code",
            Field::Merchant => "merchant",
            Field::MppIntent => "session intent",
            Field::MppMethod => "method",
            Field::Contract => "target contract",
        }
    }
}

/// A list of values a field is checked against.
#[derive(Debug, Clone)]
pub(crate) struct ListRule {
    /// The entries, normalized (trimmed, lower-cased where the field ignores case) and
    /// deduplicated; shared with the policy set's [`Lexicon`].
    entries: Box<[Arc<[u8]>]>,
    /// What a decision checks.
    pub check: ListCheck,
}

/// What a decision checks of a list rule: whether its bit is set in the decision's [`Listed`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListCheck {
    field: Field,
    /// The rule's bit in a decision's [`Listed`] (its number among the set's list rules, set
    /// when the policy set is indexed).
    bit: u32,
    in_list: bool,
}

/// Every entry of every list rule in a policy set, looked up by value: a decision looks each
/// of the payment's fields up once ([`Listed::of`]), and learns at once which list rules list
/// it, however long their lists and however many rules list the same value.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lexicon {
    /// Per field, each entry's term number.
    fields: [HashMap<Arc<[u8]>, u32, foldhash::fast::RandomState>; Field::COUNT],
    /// Per term number, the list rules that list it: their bits, as (word, mask) pairs.
    listed_by: Vec<Box<[(u32, u64)]>>,
    /// How many list rules the set has.
    lists: usize,
    /// The fields list rules check, one bit per field.
    checked: u8,
}

impl Lexicon {
    /// Numbers the list rules in `rules` and their entries.
    pub(crate) fn index<'r>(rules: impl Iterator<Item = &'r mut CompiledRule>) -> Lexicon {
        Self::index_lists(rules.filter_map(|rule| match &mut rule.check {
            Check::List(list) => Some(list),
            _ => None,
        }))
    }

    fn index_lists<'r>(lists: impl Iterator<Item = &'r mut ListRule>) -> Lexicon {
        let mut fields: [HashMap<Arc<[u8]>, u32, _>; Field::COUNT] = Default::default();
        let mut listed_by: Vec<Vec<(u32, u64)>> = Vec::new();
        let (mut bit, mut checked) = (0u32, 0u8);
        for list in lists {
            list.check.bit = bit;
            checked |= 1 << list.check.field as u8;
            let words = &mut fields[list.check.field as usize];
            for entry in &list.entries {
                let next = listed_by.len() as u32;
                let term = *words.entry(entry.clone()).or_insert(next);
                if term == next {
                    listed_by.push(Vec::new());
                }
                // Bits are given in order: a word's mask is the last pair, or a new one.
                let (word, mask) = (bit / 64, 1u64 << (bit % 64));
                let pairs = &mut listed_by[term as usize];
                match pairs.last_mut() {
                    Some((w, m)) if *w == word => *m |= mask,
                    _ => pairs.push((word, mask)),
                }
            }
            bit += 1;
        }
        let listed_by = listed_by.into_iter().map(Vec::into_boxed_slice).collect();
        Lexicon { fields, listed_by, lists: bit as usize, checked }
    }

    /// Calls `f` with each term `value` of `field` is listed under: its own, and for a service
    /// its parent domains'. Counterparties and MCCs compare exactly (both are canonical); the
    /// others ignore ASCII case, and a name ignores surrounding whitespace.
    fn terms_of(&self, field: Field, value: &str, mut f: impl FnMut(u32)) {
        let words = &self.fields[field as usize];
        let mut get = |v: &[u8]| {
            if let Some(term) = words.get(v) {
                f(*term);
            }
        };
        match field {
            Field::Counterparty | Field::Mcc => get(value.as_bytes()),
            // Listed canonical: an EVM address lower-cased, a Solana one as written.
            Field::Contract if value.starts_with("0x") || value.starts_with("0X") => with_lowercase(value, get),
            Field::Contract => get(value.as_bytes()),
            // `example.com` lists `api.example.com` (a parent after a dot), not `badexample.com`.
            Field::Service => with_lowercase(value, |d| {
                get(d);
                for (dot, _) in d.iter().enumerate().filter(|(_, b)| **b == b'.') {
                    get(&d[dot + 1..]);
                }
            }),
            _ => with_lowercase(trimmed(value), get),
        }
    }
}

/// Which of a policy set's list rules list the payment's value of their field: one bit per
/// list rule, the first 256 inline.
pub(crate) struct Listed {
    bits: SmallVec<[u64; 4]>,
    /// Which of the fields list rules check apply to the payment, one bit per field: those it
    /// has, and the counterparty on every rail but a card's.
    fields: u8,
}

impl Listed {
    /// Looks each field of `intent` some list checks up once in `lexicon`.
    pub(crate) fn of(lexicon: &Lexicon, intent: &PaymentIntent) -> Self {
        let mut bits = SmallVec::from_elem(0u64, lexicon.lists.div_ceil(64));
        let mut fields = 0u8;
        for field in Field::ALL.into_iter().filter(|f| lexicon.checked >> *f as u8 & 1 == 1) {
            let Some(value) = subject(field, intent) else {
                // Counterparty rules apply to every payment but a card's: one without a
                // recipient is not on any list.
                if field == Field::Counterparty && intent.rail.needs_recipient() {
                    fields |= 1 << field as u8;
                }
                continue;
            };
            fields |= 1 << field as u8;
            if lexicon.fields[field as usize].is_empty() {
                continue;
            }
            Self::look_up(lexicon, field, value, &mut bits);
        }
        Listed { bits, fields }
    }

    /// Sets the bits of the list rules that list `value` of `field`.
    fn look_up(lexicon: &Lexicon, field: Field, value: &str, bits: &mut [u64]) {
        lexicon.terms_of(field, value, |term| {
            for &(word, mask) in lexicon.listed_by.get(term as usize).map_or(&[][..], |b| &b[..]) {
                if let Some(bits) = bits.get_mut(word as usize) {
                    *bits |= mask;
                }
            }
        });
    }

    /// Whether rules on `field` apply to the payment (see [`Listed::fields`]).
    fn has(&self, field: Field) -> bool {
        self.fields >> field as u8 & 1 == 1
    }

    fn contains(&self, bit: u32) -> bool {
        self.bits.get(bit as usize / 64).is_some_and(|word| word >> (bit % 64) & 1 == 1)
    }
}

/// A policy set's list rules on one rail, folded into bit masks (bits as in [`Listed`]): the
/// rules a payment breaks when its value is listed, and those it breaks when it is not. A
/// missing field is an unlisted one, but for counterparty rules, which a payment without a
/// recipient (a card's) breaks none of, and contract rules, which a payment that calls no
/// contract breaks none of.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListFold {
    if_listed: SmallVec<[u64; 4]>,
    unless_listed: SmallVec<[u64; 4]>,
    counterparty_unless_listed: SmallVec<[u64; 4]>,
    contract_unless_listed: SmallVec<[u64; 4]>,
}

impl ListFold {
    /// Folds in `rule`, broken under `polarity`.
    pub(crate) fn add(&mut self, rule: &ListCheck, polarity: Polarity) {
        // Listed, the rule holds iff it lists (`in_list`); unlisted, the opposite.
        let masks = match (polarity.broken(rule.in_list), rule.field) {
            (true, _) => &mut self.if_listed,
            (false, Field::Counterparty) => &mut self.counterparty_unless_listed,
            (false, Field::Contract) => &mut self.contract_unless_listed,
            (false, _) => &mut self.unless_listed,
        };
        let word = rule.bit as usize / 64;
        if masks.len() <= word {
            masks.resize(word + 1, 0);
        }
        masks[word] |= 1 << (rule.bit % 64);
    }
}

impl Listed {
    /// Whether the payment breaks any rule folded into `fold`.
    pub(crate) fn breaks(&self, fold: &ListFold) -> bool {
        let word = |i: usize| self.bits.get(i).copied().unwrap_or(0);
        let any = |masks: &[u64], listed: bool| {
            masks.iter().enumerate().any(|(i, mask)| (if listed { word(i) } else { !word(i) }) & mask != 0)
        };
        any(&fold.if_listed, true)
            || any(&fold.unless_listed, false)
            || (self.has(Field::Counterparty) && any(&fold.counterparty_unless_listed, false))
            || (self.has(Field::Contract) && any(&fold.contract_unless_listed, false))
    }
}

/// `value.trim()`, without the Unicode scan when it plainly starts and ends with a character
/// that is not whitespace (a category like `API_PROVIDER`).
fn trimmed(value: &str) -> &str {
    let solid = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii() && !char::from(*b).is_whitespace());
    let bytes = value.as_bytes();
    if solid(bytes.first()) && solid(bytes.last()) { value } else { value.trim() }
}

/// Runs `f` on the bytes of `value` in ASCII lowercase, copying only when it has an uppercase
/// letter (on the stack when short).
fn with_lowercase<R>(value: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    let bytes = value.as_bytes();
    if !bytes.iter().any(u8::is_ascii_uppercase) {
        return f(bytes);
    }
    let mut buf = [0u8; 64];
    match buf.get_mut(..bytes.len()) {
        Some(short) => {
            short.copy_from_slice(bytes);
            short.make_ascii_lowercase();
            f(short)
        }
        None => f(&bytes.to_ascii_lowercase()),
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
            "CONTRACT_ALLOWLIST" => (Field::Contract, R::All, V::ContractNotAllowed, allowed),
            _ => return None,
        })
    }

    fn compile((field, rails, violation, polarity): Self::Kind, r: &RuleInput<'_>) -> Result<Spec, PolicyError> {
        let in_list = r.in_list()?;
        const EXPECTED: &str = "a JSON array of strings, e.g. [\"a\", \"b\"]";
        let cx = r.cx;
        // An empty list is valid (choice 7 in the module docs): an empty allowlist allows
        // nothing, an empty blocklist blocks nothing.
        let items: Vec<String> = match field {
            // `["0x…"]`, or `{"contracts": ["0x…"], "protocols": ["uniswap"]}`: a protocol's
            // name says nothing about the address a payment calls, so only contracts compare.
            Field::Contract => contract_entries(r.text).ok_or_else(|| {
                cx.bad(r.text, "a JSON array of contract addresses, or {\"contracts\": [...], \"protocols\": [...]}")
            })?,
            _ => serde_json::from_str(r.text).map_err(|_| cx.bad(r.text, EXPECTED))?,
        };
        let entries = items
            .into_iter()
            .map(|item| match field {
                Field::Counterparty | Field::Contract => Address::parse(item.trim())
                    .map(|a| a.as_str().to_owned())
                    .map_err(|_| cx.bad(&item, "an EVM (0x + 40 hex) or Solana address")),
                // As a URL's host is canonical (`service_domain_of`), so is a listed one:
                // `API.example.com.` and `bücher.de` list what a payment to them reaches.
                Field::Service => crate::intent::canonical_service_domain(&item)
                    .ok_or_else(|| cx.bad(&item, "a service's host name, such as api.example.com")),
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
        let mut unique: Vec<Arc<[u8]>> = Vec::with_capacity(entries.len());
        for entry in entries {
            if !unique.iter().any(|e| **e == *entry.as_bytes()) {
                unique.push(entry.into_bytes().into());
            }
        }
        let list = ListRule { entries: unique.into(), check: ListCheck { field, bit: 0, in_list } };
        let mut spec = r.spec(Check::List(list), rails, violation);
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

impl ListCheck {
    /// The rule's bit in a decision's [`Listed`].
    pub(crate) fn bit(&self) -> u32 {
        self.bit
    }

    /// Whether the payment's field is listed as the rule says (`None`: the rule does not apply).
    pub(crate) fn holds(&self, s: &Subject<'_>) -> Option<bool> {
        if s.listed.has(self.field) {
            Some(s.listed.contains(self.bit) == self.in_list)
        } else {
            self.missing(&s.listed)
        }
    }

    /// What a payment without the field concludes: counterparty and contract rules apply only
    /// where [`Listed`] says they do (not to a card payment, which has no recipient address, nor
    /// to one that calls no contract); any other missing field, a recipient missing on any
    /// other rail included, is "not listed".
    fn missing(&self, listed: &Listed) -> Option<bool> {
        let applies = !matches!(self.field, Field::Counterparty | Field::Contract) || listed.has(self.field);
        applies.then_some(!self.in_list)
    }

    /// [`ListCheck::holds`], with the value looked up.
    pub(crate) fn finding<'a>(&self, s: &Subject<'a>) -> Option<Finding<Listing<'a>>> {
        let field = self.field;
        let Some(value) = subject(field, s.intent) else {
            return self.missing(&s.listed).map(|holds| Finding { holds, detail: Listing::Missing(field) });
        };
        let listed = s.listed.contains(self.bit);
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
        // A session is one whatever its intent says: a "charge" that names a session or
        // carries a deposit, or no intent at all, is checked as `session`.
        (Field::MppIntent, rail @ Rail::Mpp { intent, .. }) => {
            let charge_or_none = intent.as_deref().is_none_or(|i| i.eq_ignore_ascii_case("charge"));
            if charge_or_none && super::RailFilter::MppSession.matches(rail) {
                Some("session")
            } else {
                intent.as_deref()
            }
        }
        (Field::MppMethod, Rail::Mpp { method, .. }) => method.as_deref(),
        (Field::Contract, _) => intent.context.get(TARGET_CONTRACT).and_then(serde_json::Value::as_str),
        _ => None,
    }
}

/// A `CONTRACT_ALLOWLIST` value's addresses: an array, or an object's `contracts`.
fn contract_entries(text: &str) -> Option<Vec<String>> {
    match serde_json::from_str::<serde_json::Value>(text).ok()? {
        v @ serde_json::Value::Array(_) => serde_json::from_value(v).ok(),
        serde_json::Value::Object(mut o) => {
            if o.keys().any(|k| k != "contracts" && k != "protocols") {
                return None;
            }
            match o.remove("contracts") {
                Some(v) => serde_json::from_value(v).ok(),
                None => Some(Vec::new()),
            }
        }
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
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::{Field, Lexicon, ListCheck, ListRule, Listed};

    /// What a list answered before entries were looked up: a scan comparing without case.
    fn scanned(items: &[String], value: &str) -> bool {
        items.iter().any(|e| e.eq_ignore_ascii_case(value.trim()))
    }

    fn scanned_domain(items: &[String], v: &str) -> bool {
        items.iter().any(|e| {
            v.eq_ignore_ascii_case(e)
                || (v.len() > e.len()
                    && v.as_bytes()[v.len() - e.len() - 1] == b'.'
                    && v[v.len() - e.len()..].eq_ignore_ascii_case(e))
        })
    }

    fn list(field: Field, items: &[String]) -> ListRule {
        let mut entries: Vec<Arc<[u8]>> = Vec::new();
        for item in items {
            if !entries.iter().any(|e| **e == *item.as_bytes()) {
                entries.push(item.as_bytes().into());
            }
        }
        ListRule { entries: entries.into(), check: ListCheck { field, bit: 0, in_list: true } }
    }

    /// Lists of `field` indexed in one lexicon, and what each answers for `probe`.
    fn looked_up(field: Field, items: &[Vec<String>], probe: &str) -> Vec<bool> {
        let mut lists: Vec<ListRule> = items.iter().map(|items| list(field, items)).collect();
        let lexicon = Lexicon::index_lists(lists.iter_mut());
        let mut listed = Listed { bits: smallvec::smallvec![0; lexicon.lists.div_ceil(64)], fields: 0 };
        Listed::look_up(&lexicon, field, probe, &mut listed.bits);
        lists.iter().map(|list| listed.contains(list.check.bit)).collect()
    }

    proptest! {
        /// The trim shortcut answers as `trim`, on any text.
        #[test]
        fn the_trim_shortcut_answers_as_trim(a in "[ -~\\t\\x0b\\u{a0}é]{0,40}") {
            prop_assert_eq!(super::trimmed(&a), a.trim());
        }

        /// Lowercase entries (as compiled) looked up in a lexicon shared by many lists (more
        /// than one word of bits) answer as each list's own case-blind scan: for names, and for
        /// domains with their parents, short and long, on the stack or not.
        #[test]
        fn a_lookup_answers_as_each_lists_case_blind_scan(
            items in prop::collection::vec(prop::collection::vec("[a-c]{1,3}(\\.[a-c]{1,3}){0,2}", 0..6), 1..150),
            probe in " ?(([a-cA-C]{1,3}\\.){0,3}[a-cA-C]{1,3}|[a-cA-C.]{60,70}) ?",
        ) {
            let want: Vec<bool> = items.iter().map(|items| scanned(items, &probe)).collect();
            prop_assert_eq!(looked_up(Field::Category, &items, &probe), want);
            let probe = probe.trim();
            let want: Vec<bool> = items.iter().map(|items| scanned_domain(items, probe)).collect();
            prop_assert_eq!(looked_up(Field::Service, &items, probe), want);
        }

        /// Counterparties compare exactly: their canonical form is the compiled entry's.
        #[test]
        fn an_exact_field_compares_exactly(
            items in prop::collection::vec(prop::collection::vec("[a-cA-C]{1,3}", 0..6), 1..150),
            probe in "[a-cA-C]{1,3}",
        ) {
            let want: Vec<bool> = items.iter().map(|items| items.contains(&probe.to_owned())).collect();
            prop_assert_eq!(looked_up(Field::Counterparty, &items, &probe), want);
        }
    }
}

//! Compiled rules, one module per rule family. Each family holds its rule types' names, how
//! their `value` is parsed, the check, and the explanation written when the check is broken;
//! adding a rule type touches its family and, for a new violation, [`ViolationType`].
//!
//! - [`amount`], per-payment caps (`MAX_AMOUNT`, the x402/MPP/card ceilings, deposits,
//!   `REQUIRE_APPROVAL_ABOVE`);
//! - [`cumulative`], spend per period (`DAILY_LIMIT` … `BUDGET_CAP`, per-service, per-endpoint
//!   and session budgets);
//! - [`lists`], allow- and blocklists (categories, counterparties, services, MCCs, merchants,
//!   MPP intents and methods);
//! - [`time`], `TIME_WINDOW`, `DAY_OF_WEEK`, `DATE_RANGE`;
//! - [`velocity`], approvals per sliding window;
//! - [`blackout`], `BLACKOUT_PERIOD`;
//! - [`session`], `MPP_MAX_SESSION_DURATION`, a cap on an MPP pre-authorization's lifetime.
//!
//! Money on the hot path is whole micro-units ([`Micros`]); limits are [`Bound`]s.

pub(crate) mod amount;
pub(crate) mod blackout;
pub(crate) mod cumulative;
pub(crate) mod lists;
pub(crate) mod session;
pub(crate) mod time;
pub(crate) mod unevaluated;
pub(crate) mod velocity;

use std::cell::Cell;
use std::sync::{Arc, Mutex, PoisonError};

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use rust_decimal::Decimal;

use crate::decision::ViolationType;
use crate::intent::{PaymentIntent, Rail};
#[cfg(doc)]
use crate::micros::Bound;
use crate::micros::Micros;

/// A rule's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Allow,
    Deny,
    RequireApproval,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Cmp {
    /// `lhs OPERATOR rhs`: counts (velocity), and in tests the decimals [`Bound::holds`] must
    /// agree with.
    pub(crate) fn holds<T: PartialOrd>(self, lhs: T, rhs: T) -> bool {
        match self {
            Cmp::Eq => lhs == rhs,
            Cmp::Ne => lhs != rhs,
            Cmp::Gt => lhs > rhs,
            Cmp::Ge => lhs >= rhs,
            Cmp::Lt => lhs < rhs,
            Cmp::Le => lhs <= rhs,
        }
    }

    pub(crate) fn symbol(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::Ne => "!=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
        }
    }
}

/// Which rails a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RailFilter {
    All,
    X402,
    Mpp,
    /// MPP payments that open a session: every MPP payment but a one-off `charge` (a
    /// `charge` intent that names no session and carries no deposit).
    MppSession,
    Card,
}

impl RailFilter {
    /// The rails it covers, by name: `all`, `x402`, `mpp` or `card`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RailFilter::All => "all",
            RailFilter::X402 => "x402",
            RailFilter::Mpp | RailFilter::MppSession => "mpp",
            RailFilter::Card => "card",
        }
    }

    pub(crate) fn matches(self, rail: &Rail) -> bool {
        match self {
            RailFilter::All => true,
            RailFilter::X402 => matches!(rail, Rail::X402 { .. }),
            RailFilter::Mpp => matches!(rail, Rail::Mpp { .. }),
            RailFilter::MppSession => match rail {
                Rail::Mpp { intent, session_id, deposit, .. } => {
                    let charge = intent.as_deref().is_some_and(|i| i.eq_ignore_ascii_case("charge"));
                    !charge || session_id.is_some() || deposit.is_some()
                }
                _ => false,
            },
            RailFilter::Card => matches!(rail, Rail::Card { .. }),
        }
    }
}

/// A calendar period for cumulative limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Period {
    Day,
    Week,
    Month,
    Year,
    Total,
}

impl Period {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
            Period::Total => "total",
        }
    }
}

/// What a cumulative or velocity counter is kept per, within one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    Agent,
    Service,
    Endpoint,
    Session,
}

impl Scope {
    /// The scope's key for an intent (empty for the agent scope).
    pub(crate) fn key(self, intent: &PaymentIntent) -> String {
        let key: &str = match (self, &intent.rail) {
            (Scope::Agent, _) => "",
            (Scope::Service, Rail::X402 { service_domain, .. } | Rail::Mpp { service_domain, .. }) => service_domain,
            (Scope::Endpoint, Rail::X402 { resource_url, .. } | Rail::Mpp { resource_url, .. }) => {
                return crate::intent::endpoint_key(resource_url);
            }
            (Scope::Session, Rail::Mpp { session_id: Some(id), .. }) => id,
            (Scope::Session, _) => intent.context.get("sessionId").and_then(|v| v.as_str()).unwrap_or("default"),
            _ => "",
        };
        key.to_owned()
    }
}

/// The identity of a counted quantity, spelled out in full (never a hash, so two quantities
/// can never share a counter by collision). Its text is interned for the life of the process
/// (see [`intern`]), so an id is a pointer and a precomputed hash: copied into every counter
/// key a decision makes with no reference count to touch (one shared between threads would
/// be a cache line they pass back and forth on every decision), and compared by pointer.
#[derive(Debug, Clone, Copy, Eq)]
pub(crate) struct CounterId {
    text: &'static str,
    hash: u64,
}

impl CounterId {
    /// The id spelled `text`.
    pub(crate) fn new(text: &str) -> Self {
        use std::hash::BuildHasher;
        // An explicitly specified hash (foldhash, fixed seed): equal text, equal hash.
        let hash = foldhash::fast::FixedState::with_seed(0x636f_756e_7465_7273).hash_one(text);
        CounterId { text: intern(text), hash }
    }

    /// The id's text.
    pub(crate) fn as_str(&self) -> &'static str {
        self.text
    }
}

/// Equal texts are one interned text: the pointers are equal.
impl PartialEq for CounterId {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.text, other.text)
    }
}

impl std::hash::Hash for CounterId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// `text`, interned: every equal text gets the same `&'static str`, kept for the life of the
/// process. Only what policies compile to is interned: zone names (the database's spelling, so
/// one per zone) and counter identities built from them and from fixed sets (rails, scope,
/// period, velocity window), so the texts are bounded by those shapes, not by traffic nor by
/// what a policy file sends.
pub(crate) fn intern(text: &str) -> &'static str {
    static SEEN: std::sync::LazyLock<Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::LazyLock::new(Mutex::default);
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(same) = seen.get(text) {
        return same;
    }
    let kept: &'static str = Box::leak(text.into());
    seen.insert(kept);
    kept
}

/// A counter of spend per period.
#[derive(Debug, Clone)]
pub(crate) struct Cumulative {
    /// Identifies the quantity counted (rails, scope, period, zone): rules that count the same
    /// quantity share one counter.
    pub id: CounterId,
    pub scope: Scope,
    pub period: Period,
    pub tz: TimeZone,
    /// The zone's name, interned.
    pub tz_name: &'static str,
    /// The last period computed, shared by every decision on this policy set that reads this
    /// copy of the rule (the plan's, or a rail's folded one).
    pub last_period: PeriodCache,
    /// The counter's number in its policy set (rules sharing the counter share it): within
    /// one decision, a counter's key and period follow from it.
    pub slot: u32,
}

impl Cumulative {
    /// The start of the period containing `now`: cached for every decision in the same period.
    pub fn period_start(&self, now: Timestamp) -> Timestamp {
        if let Some(start) = self.last_period.get(now) {
            return start;
        }
        let (start, end) = crate::engine::ledger::period_bounds(self.period, &self.tz, now);
        self.last_period.put(start, end);
        start
    }
}

/// The last `[start, end)` a counter's period was computed for, packed in one atomic word
/// (start: 39 bits of seconds since 1970; length: 25 bits of seconds, a year at most), so a
/// decision inside the same period skips the calendar arithmetic without a lock. Anything that
/// does not fit (instants before 1970, `Total`) is computed every time.
#[derive(Debug, Default)]
pub(crate) struct PeriodCache(std::sync::atomic::AtomicU64);

impl Clone for PeriodCache {
    fn clone(&self) -> Self {
        PeriodCache(std::sync::atomic::AtomicU64::new(self.0.load(std::sync::atomic::Ordering::Relaxed)))
    }
}

impl PeriodCache {
    const LEN_BITS: u32 = 25;

    /// The start of the period containing `now`, if it is the one cached.
    pub fn get(&self, now: Timestamp) -> Option<Timestamp> {
        let word = self.0.load(std::sync::atomic::Ordering::Relaxed);
        if word == 0 {
            return None;
        }
        let start = (word >> Self::LEN_BITS) as i64;
        let len = (word & ((1 << Self::LEN_BITS) - 1)) as i64;
        let t = now.as_second();
        (start <= t && t < start + len).then(|| Timestamp::from_second(start).ok()).flatten()
    }

    /// Remembers `[start, end)`.
    pub fn put(&self, start: Timestamp, end: Timestamp) {
        let (s, e) = (start.as_second(), end.as_second());
        let len = e - s;
        if start.subsec_nanosecond() != 0 || !(0..1 << 39).contains(&s) || !(1..1 << Self::LEN_BITS).contains(&len) {
            return;
        }
        let word = (s as u64) << Self::LEN_BITS | len as u64;
        self.0.store(word, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A sliding-window counter of approvals.
#[derive(Debug, Clone)]
pub(crate) struct Velocity {
    /// Identifies the window (rails, scope, length).
    pub id: CounterId,
    pub scope: Scope,
    pub window: SignedDuration,
    pub max_count: u32,
}

/// The check a rule makes: one variant per family.
#[derive(Debug, Clone)]
pub(crate) enum Check {
    Amount(amount::AmountRule),
    Cumulative(cumulative::CumulativeRule),
    Velocity(velocity::VelocityRule),
    List(lists::ListRule),
    Time(time::TimeRule),
    Blackout(blackout::BlackoutRule),
    /// A documented rule type the engine cannot evaluate, loaded to deny.
    Unevaluated(unevaluated::UnevaluatedRule),
    /// A cap on how long an MPP session's pre-authorization lives; never broken.
    Session(session::SessionLength),
}

/// What one rule measured: whether its condition holds, and what to say if it is broken.
pub(crate) struct Finding<D> {
    pub holds: bool,
    pub detail: D,
}

/// A family's measurement, explained in words only when its rule is broken.
pub(crate) trait Explain {
    /// The sentence for a broken rule.
    fn explain(&self, rule_type: &str) -> String;
    /// The limit, for the violation (in Conto's unit).
    fn limit(&self) -> Option<Decimal> {
        None
    }
    /// The current value, for the violation.
    fn current(&self) -> Option<Decimal> {
        None
    }
}

/// The payment a rule is checked against, with what every family reads from it computed once.
pub(crate) struct Subject<'a> {
    pub intent: &'a PaymentIntent,
    pub amount: Micros,
    pub now: Timestamp,
    /// Which list rules list the payment's values (each field looked up once).
    pub listed: lists::Listed,
    /// The last zone's local time at `now`: rules in one zone work it out once per decision.
    pub local: Cell<Option<(u32, Time, u8)>>,
}

impl<'a> Subject<'a> {
    /// The subject of one decision on `intent` at `now`.
    pub fn new(intent: &'a PaymentIntent, now: Timestamp, listed: lists::Listed) -> Self {
        Subject { intent, amount: Micros::of(intent.exposure()), now, listed, local: Cell::new(None) }
    }

    /// Time of day at `now` in `zone`, and the weekday (Monday = 0): [`local`], remembered for
    /// the next rule in the same zone.
    #[inline]
    pub fn local_in(&self, zone: &Zone) -> (Time, u8) {
        if let Some((id, time, day)) = self.local.get()
            && id == zone.id
        {
            return (time, day);
        }
        let (time, day) = local(self.now, &zone.tz);
        self.local.set(Some((zone.id, time, day)));
        (time, day)
    }
}

/// A time zone as time rules hold it, with a number shared by every equal zone in the
/// process: equal zones have one number, so a decision can tell that two rules ask about the
/// same local time without comparing zones.
#[derive(Debug, Clone)]
pub(crate) struct Zone {
    pub tz: TimeZone,
    id: u32,
}

/// Equal zones have equal numbers.
impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        self.id == other.id
    }
}

impl Zone {
    /// `tz`, numbered (the first equal zone seen keeps its number; there are as many numbers
    /// as distinct zones ever loaded, a few hundred at most).
    pub fn of(tz: TimeZone) -> Zone {
        static SEEN: Mutex<Vec<TimeZone>> = Mutex::new(Vec::new());
        let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
        let id = seen.iter().position(|z| *z == tz).unwrap_or_else(|| {
            seen.push(tz.clone());
            seen.len() - 1
        });
        Zone { tz, id: u32::try_from(id).unwrap_or(u32::MAX) }
    }
}

/// What a family's compiler returns for one rule.
pub(crate) struct Spec {
    pub check: Check,
    pub rails: RailFilter,
    pub violation: ViolationType,
    pub polarity: Polarity,
    pub outcome: Outcome,
}

/// Whether a rule is broken when its condition holds or when it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Polarity {
    /// The condition says what is allowed: broken when it does not hold.
    BrokenUnlessHolds,
    /// The condition says what is refused: broken when it holds.
    BrokenWhenHolds,
}

impl Polarity {
    /// Whether a rule whose condition `holds` (or not) is broken.
    pub(crate) fn broken(self, holds: bool) -> bool {
        match self {
            Polarity::BrokenUnlessHolds => !holds,
            Polarity::BrokenWhenHolds => holds,
        }
    }

    /// The values a rule is not broken by, from the range its condition holds on
    /// ([`Bound::holding`](crate::micros::Bound::holding)): that half-line, or its complement.
    pub(crate) fn unbroken(self, holding: Option<(i128, i128)>) -> Option<(i128, i128)> {
        let (lo, hi) = holding?;
        Some(match self {
            Polarity::BrokenUnlessHolds => (lo, hi),
            Polarity::BrokenWhenHolds if lo == i128::MIN => (hi + 1, i128::MAX),
            Polarity::BrokenWhenHolds => (i128::MIN, lo - 1),
        })
    }
}

/// What a broken rule leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Deny,
    Approval,
}

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub rule_type: Arc<str>,
    pub check: Check,
    pub rails: RailFilter,
    pub polarity: Polarity,
    pub outcome: Outcome,
    pub violation: ViolationType,
}

/// Time of day at `now` in `tz`, and the weekday (Monday = 0).
pub(crate) fn local(now: Timestamp, tz: &TimeZone) -> (Time, u8) {
    let dt = tz.to_datetime(now);
    (dt.time(), dt.weekday().to_monday_zero_offset() as u8)
}

/// Whether `t` is in `[start, end)`, wrapping midnight when `end < start`.
pub(crate) fn in_daily_window(t: Time, start: Time, end: Time) -> bool {
    if start <= end { start <= t && t < end } else { t >= start || t < end }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use jiff::tz::TimeZone;
    use proptest::prelude::*;

    /// A zone is named by the database's spelling whatever the case a policy wrote it in, so
    /// two spellings of one zone share their counters and the process keeps one name for it.
    #[test]
    fn a_zone_spelled_in_any_case_is_one_zone_and_one_counter() {
        let counter = |tz: &str| {
            let doc = serde_json::json!([{"name": "p", "timezone": tz, "rules": [
                {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "10", "action": "ALLOW"}]}]);
            let set = crate::PolicySet::from_value(doc).unwrap();
            let super::Check::Cumulative(c) = &set.policies[0].rules[0].check else { panic!("a spend rule") };
            (c.counter.id, c.counter.tz_name)
        };
        let (id, tz) = counter("Europe/Paris");
        for spelling in ["europe/paris", "EUROPE/PARIS", "eUrOpE/pArIs"] {
            let (other, other_tz) = counter(spelling);
            assert_eq!(other, id, "{spelling}");
            assert!(std::ptr::eq(other_tz, tz) && tz == "Europe/Paris", "{spelling}: {other_tz}");
        }
        assert_eq!(counter("utc").1, "UTC");
        assert!(
            crate::PolicySet::from_value(serde_json::json!([{"name": "p", "timezone": "Mars/Olympus",
            "rules": [{"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "10", "action": "ALLOW"}]}]))
            .is_err()
        );
    }

    /// Counter ids are told apart by their whole text: equal texts are one interned text (so
    /// equal and hashed alike), and texts that differ, even by a byte at the end, are not.
    #[test]
    fn counter_ids_are_equal_exactly_when_their_texts_are() {
        use std::hash::BuildHasher;
        let hash = |id: &super::CounterId| foldhash::fast::FixedState::with_seed(1).hash_one(id);
        let a = super::CounterId::new(&format!("spend|{}|Agent|Day|UTC", "All"));
        let b = super::CounterId::new("spend|All|Agent|Day|UTC");
        assert_eq!(a, b);
        assert!(std::ptr::eq(a.as_str(), b.as_str()), "one interned text");
        assert_eq!(hash(&a), hash(&b));
        for other in ["spend|All|Agent|Day|UTC ", "spend|All|Agent|Day|Europe/Paris", "spend|All|Agent|Day|UT"] {
            let c = super::CounterId::new(other);
            assert_ne!(a, c, "{other}");
            assert_eq!(c.as_str(), other);
        }
        assert!(std::ptr::eq(super::intern("UTC"), super::intern(&String::from("UTC"))));
    }

    use super::{Period, PeriodCache};
    use crate::engine::ledger::period_bounds;

    fn period() -> impl Strategy<Value = Period> {
        prop_oneof![Just(Period::Day), Just(Period::Week), Just(Period::Month), Just(Period::Year)]
    }

    fn zone() -> impl Strategy<Value = TimeZone> {
        prop_oneof![Just("UTC"), Just("Europe/Paris"), Just("America/New_York"), Just("Australia/Lord_Howe")]
            .prop_map(|name| TimeZone::get(name).unwrap())
    }

    proptest! {
        #[test]
        fn a_period_is_the_half_open_range_up_to_the_next_one(
            secs in 0i64..4_102_444_800, period in period(), tz in zone(),
        ) {
            let now = Timestamp::from_second(secs).unwrap();
            let (start, end) = period_bounds(period, &tz, now);
            prop_assert!(start <= now && now < end, "{start} <= {now} < {end}");
            prop_assert_eq!(period_bounds(period, &tz, end).0, end, "the next period starts at the end");
            let last = end.checked_sub(jiff::SignedDuration::from_nanos(1)).unwrap();
            prop_assert_eq!(period_bounds(period, &tz, last).0, start);
        }

        #[test]
        fn the_period_cache_never_answers_another_period(
            first in 0i64..4_102_444_800, later in prop::collection::vec(-40_000_000i64..40_000_000, 1..20),
            period in period(), tz in zone(),
        ) {
            let cache = PeriodCache::default();
            let now = Timestamp::from_second(first).unwrap();
            let (s, e) = period_bounds(period, &tz, now);
            cache.put(s, e);
            for delta in later {
                let Ok(t) = Timestamp::from_second(first + delta) else { continue };
                if let Some(start) = cache.get(t) {
                    prop_assert_eq!(start, period_bounds(period, &tz, t).0);
                }
            }
        }
    }
}

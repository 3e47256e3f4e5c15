//! One agent's ledger: period counters, velocity windows, live reservations.
//!
//! Every counter is a running total for the current period; nothing here scans past spends, so
//! a decision costs the same after a million payments as after none.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use rust_decimal::Decimal;

use crate::micros::Micros;
use crate::policy::{CounterId, Period};

/// Hash maps keyed by engine-internal keys: a fast hasher, still seeded per process.
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// An authorization id as a fixed-size key: the 96 bits (a second, then 64 random) of the
/// engine's own `auth_<24 hex>` ids, exactly; any other id through two independent 64-bit
/// hashes. Keeps the live and closed maps free of string compares and pointer chasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct IdKey(u128);

impl IdKey {
    /// The key's 128 bits.
    pub fn bits(self) -> u128 {
        self.0
    }

    /// A fresh engine id (`auth_` and 24 lower-case hex digits) with its key: no parse. The
    /// first 8 digits are the second it was made in (`now`, Unix time), the other 16 random:
    /// ids sort by when they were made, so a store's index of them grows at its end instead
    /// of splitting pages all over, and 64 random bits keep two ids of one second apart.
    pub fn fresh(now: Timestamp) -> (Self, String) {
        let bits = Self::second(now) << 64 | u128::from(rand::random::<u64>());
        (Self(bits), crate::ids::hex_id("auth_", bits, 24))
    }

    /// The least id [`IdKey::fresh`] makes in `t`'s second: every id made before it sorts
    /// below it.
    pub fn first_at(t: Timestamp) -> String {
        crate::ids::hex_id("auth_", Self::second(t), 8)
    }

    /// The second an id is made in, as its first eight hex digits hold it.
    fn second(t: Timestamp) -> u128 {
        t.as_second().clamp(0, i64::from(u32::MAX)) as u128
    }

    /// The key of any authorization id.
    pub fn of(id: &str) -> Self {
        if let Some(hex) = id.strip_prefix("auth_")
            && hex.len() == 24
            && let Some(bits) = lower_hex(hex.as_bytes())
        {
            return Self(bits);
        }
        // An explicitly specified hash (foldhash, fixed seeds), not std's unspecified one.
        use std::hash::BuildHasher;
        let a = foldhash::quality::FixedState::with_seed(0x636f_6e74_6f2d_7273).hash_one(id);
        let b = foldhash::quality::FixedState::with_seed(0x6964_6b65_792d_6231).hash_one(id);
        Self(1 << 127 | (u128::from(a) << 63) ^ u128::from(b))
    }
}

/// Lower-case hex digits as a number (the engine writes its ids in lower case; anything else
/// is hashed like a foreign id).
fn lower_hex(digits: &[u8]) -> Option<u128> {
    // Each byte's digit value, or 0xff for a byte that is not a lower-case hex digit.
    const VALUE: [u8; 256] = {
        let mut table = [0xff; 256];
        let mut i = 0;
        while i < 16 {
            table[b"0123456789abcdef"[i] as usize] = i as u8;
            i += 1;
        }
        table
    };
    let mut acc = 0u128;
    for chunk in digits.chunks(8) {
        // Eight digits at a time in 32 bits (one 128-bit shift per chunk, not per digit),
        // checked once per chunk.
        let (mut part, mut seen) = (0u32, 0u8);
        for &b in chunk {
            let v = VALUE[usize::from(b)];
            seen |= v;
            part = part << 4 | u32::from(v & 0xf);
        }
        if seen > 0xf {
            return None;
        }
        acc = acc << (4 * chunk.len()) | u128::from(part);
    }
    Some(acc)
}

/// Identifies one period counter within an agent. Equality and hashing use the counter's full
/// identity (rails, scope, period and zone) and the scope's key only.
#[derive(Debug, Clone)]
pub(crate) struct CounterKey {
    pub id: CounterId,
    pub scope_key: String,
    pub period: Period,
    pub tz: &'static str,
}

impl PartialEq for CounterKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && same_scope(&self.scope_key, &other.scope_key)
    }
}

/// Scope keys compared without a `memcmp` call for the common agent scope (empty).
pub(crate) fn same_scope(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

impl Eq for CounterKey {}

impl std::hash::Hash for CounterKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
        self.scope_key.hash(state);
    }
}

/// Spend in the current period.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counter {
    pub period_start: Timestamp,
    pub spent: Micros,
    pub reserved: Micros,
}

/// Identifies one velocity window within an agent (equality and hashing as for
/// [`CounterKey`]).
#[derive(Debug, Clone)]
pub(crate) struct VelocityKey {
    pub id: CounterId,
    pub scope_key: String,
    pub window: SignedDuration,
}

/// The window of a count of live approvals (`MPP_MAX_CONCURRENT_SESSIONS`): an approval
/// leaves it when it ends, settled, released or lapsed, never by age (an MPP session may be
/// approved for as long as `MPP_MAX_SESSION_DURATION` allows, years). A
/// spend counted without a reservation never enters it. Its counter's id starts with
/// [`LIVE_WINDOW_PREFIX`](super::LIVE_WINDOW_PREFIX), how a shared ledger tells it apart.
pub(crate) const LIVE_WINDOW: SignedDuration = SignedDuration::from_hours(7 * 24);

impl VelocityKey {
    /// Whether this window counts live approvals only (see [`LIVE_WINDOW`]).
    pub(crate) fn is_live(&self) -> bool {
        self.window == LIVE_WINDOW
    }
}

impl PartialEq for VelocityKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && same_scope(&self.scope_key, &other.scope_key)
    }
}

impl Eq for VelocityKey {}

impl std::hash::Hash for VelocityKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
        self.scope_key.hash(state);
    }
}

/// The counters an approval holds, with their period starts: one inline (rules counting the
/// same quantity share a counter, so one is common), more in an exactly sized box.
#[derive(Debug, Clone, Default)]
pub(crate) enum Held {
    #[default]
    Nothing,
    One([(CounterKey, Timestamp); 1]),
    Many(Box<[(CounterKey, Timestamp)]>),
}

impl std::ops::Deref for Held {
    type Target = [(CounterKey, Timestamp)];

    fn deref(&self) -> &Self::Target {
        match self {
            Held::Nothing => &[],
            Held::One(one) => one,
            Held::Many(many) => many,
        }
    }
}

impl From<Vec<(CounterKey, Timestamp)>> for Held {
    fn from(mut holds: Vec<(CounterKey, Timestamp)>) -> Self {
        match holds.len() {
            0 => Held::Nothing,
            1 => holds.pop().map_or(Held::Nothing, |one| Held::One([one])),
            _ => Held::Many(holds.into_boxed_slice()),
        }
    }
}

/// An approval that holds part of some counters.
#[derive(Debug, Clone)]
pub(crate) struct Reservation {
    pub amount: Micros,
    pub holds: Held,
    pub slots: Vec<(VelocityKey, u64)>,
}

/// How a reservation ended; kept for the retention window so repeats are answered the same.
/// Compact: one is kept per recorded payment for the whole window.
#[derive(Debug, Clone)]
pub(crate) enum Closed {
    Recorded(Kept),
    Released,
    Expired,
}

/// What a recorded payment's repeat is answered from: the amount counted, the amount the
/// settlement reported, and its reference.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    pub counted: Micros,
    pub settled: Micros,
    pub late: bool,
    pub actor_inactive: bool,
    pub reference: Option<Box<str>>,
}

/// Totals over the ledger's life, for audits and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Approvals granted, less those withdrawn ([`Engine::withdraw`](crate::Engine::withdraw):
    /// never handed out), so it can go down.
    pub approved: u64,
    /// Approvals recorded as spend.
    pub recorded: u64,
    /// Approvals released unused.
    pub released: u64,
    /// Approvals that expired unused.
    pub expired: u64,
    /// Settlements recorded after their approval had expired.
    pub late_records: u64,
    /// All spend ever recorded.
    pub total_spent: Decimal,
}

/// The ledger of one agent.
#[derive(Debug, Default)]
pub(crate) struct AgentLedger {
    pub counters: Map<CounterKey, Counter>,
    pub velocity: Map<VelocityKey, VecDeque<(Timestamp, u64)>>,
    /// Live reservations: a small map, apart from the retention window's large one, so a
    /// decision and its settle stay in cache however much history is kept.
    live: Map<IdKey, Reservation>,
    /// How authorizations ended, for the retention window (compact: one per payment).
    closed: Retained,
    /// When each reservation lapses, earliest first. A settled one's entry stays until it
    /// comes up (a heap removes only its top), so each reservation first rebuilds the heap with
    /// the live ones' alone once they are fewer than half of it ([`AgentLedger::reserve`]): it
    /// holds at most twice the live reservations (and a slack), however many payments an
    /// approval's lifetime sees settled, where it held an entry for each of them.
    expiries: BinaryHeap<Reverse<(Timestamp, IdKey)>>,
    /// Totals but `total_spent`, which is `spent` (micro-units, summed without a decimal).
    stats: LedgerStats,
    spent: i128,
    next_seq: u64,
    /// The latest time a decision on this ledger ran at (see [`AgentLedger::now`]).
    last_now: Timestamp,
}

/// The period that contains `now`, in `tz`: `[start, end)` (`Total` is `[epoch, epoch)`:
/// it never ends and is never cached).
pub(crate) fn period_bounds(period: Period, tz: &TimeZone, now: Timestamp) -> (Timestamp, Timestamp) {
    if period == Period::Total {
        return (Timestamp::UNIX_EPOCH, Timestamp::UNIX_EPOCH);
    }
    let date = tz.to_datetime(now).date();
    let (first, next): (Date, Option<Date>) = match period {
        Period::Day => (date, date.tomorrow().ok()),
        Period::Week => {
            let monday = date
                .checked_sub(SignedDuration::from_hours(24 * i64::from(date.weekday().to_monday_zero_offset())))
                .unwrap_or(date);
            (monday, monday.checked_add(SignedDuration::from_hours(24 * 7)).ok())
        }
        Period::Month => (date.first_of_month(), date.last_of_month().tomorrow().ok()),
        Period::Year => (date.first_of_year(), date.last_of_year().tomorrow().ok()),
        Period::Total => unreachable!("handled above"),
    };
    let midnight =
        |d: Date| tz.to_ambiguous_zoned_datetime(d.to_datetime(Time::midnight())).compatible().map(|z| z.timestamp());
    let start = midnight(first).unwrap_or(Timestamp::UNIX_EPOCH);
    // No next period (the end of the calendar): an empty range, never cached.
    let end = next.and_then(|d| midnight(d).ok()).unwrap_or(start);
    (start, end)
}

impl AgentLedger {
    /// The time a decision under this ledger's lock runs at: the clock's `now`, but never
    /// earlier than a decision before it. A decision that read the clock before midnight and
    /// waited for the lock while another rolled a counter into the new day must not read the
    /// ended day (it would see nothing spent, and its reservation would hold nothing).
    pub fn now(&mut self, now: Timestamp) -> Timestamp {
        if now > self.last_now {
            self.last_now = now;
        }
        self.last_now
    }

    /// Spent + reserved in the current period of `key`.
    pub fn used(&mut self, key: &CounterKey, start: Timestamp) -> Micros {
        match self.counters.get_mut(key) {
            Some(c) if c.period_start == start => c.spent + c.reserved,
            Some(c) if c.period_start < start => {
                // A new period began: the old period's reservations settle into the old period.
                *c = Counter { period_start: start, spent: Micros::ZERO, reserved: Micros::ZERO };
                Micros::ZERO
            }
            _ => Micros::ZERO,
        }
    }

    /// The counter of `key` for the period starting at `start`: created when missing, started
    /// afresh when it still holds an older period, `None` when it already holds a newer one.
    fn period_counter(&mut self, key: &CounterKey, start: Timestamp) -> Option<&mut Counter> {
        let fresh = Counter { period_start: start, spent: Micros::ZERO, reserved: Micros::ZERO };
        if !self.counters.contains_key(key) {
            self.counters.insert(key.clone(), fresh);
        }
        let c = self.counters.get_mut(key)?;
        if c.period_start < start {
            *c = fresh;
        }
        (c.period_start == start).then_some(c)
    }

    /// Approvals in the sliding window ending at `now` (of a live window: every live one,
    /// however long ago it was given).
    pub fn count(&mut self, key: &VelocityKey, now: Timestamp) -> usize {
        match self.velocity.get_mut(key) {
            Some(q) if key.is_live() => q.len(),
            Some(q) => {
                let horizon = now.checked_sub(key.window).unwrap_or(Timestamp::MIN);
                while q.front().is_some_and(|(t, _)| *t <= horizon) {
                    q.pop_front();
                }
                q.len()
            }
            None => 0,
        }
    }

    /// Reserves `amount` on every counter and a slot at `now` in every window (`now` may be
    /// earlier than slots already taken: a reservation restored after a restart at the time it
    /// was made).
    pub fn reserve(
        &mut self,
        key: IdKey,
        amount: Micros,
        expires_at: Timestamp,
        holds: Held,
        windows: Vec<VelocityKey>,
        now: Timestamp,
    ) {
        self.next_seq += 1;
        let seq = self.next_seq;
        for (key, start) in holds.iter() {
            if let Some(c) = self.period_counter(key, *start) {
                c.reserved += amount;
            }
        }
        let mut slots = Vec::with_capacity(windows.len());
        for key in windows {
            take_slot(self.velocity.entry(key.clone()).or_default(), now, seq);
            slots.push((key, seq));
        }
        if self.expiries.len() >= 2 * self.live.len() + Self::EXPIRIES_SLACK {
            // Mostly settled ones: keep the live ones' (amortized: one pass over the heap per
            // half as many reservations as it held). The pass is under the actor's lock: with
            // L live reservations, about 2L lookups once every L + 64 reservations.
            let mut entries = std::mem::take(&mut self.expiries).into_vec();
            entries.retain(|Reverse((_, key))| self.live.contains_key(key));
            // After a burst, the room it took is given back too.
            if entries.capacity() > 4 * (entries.len() + Self::EXPIRIES_SLACK) {
                entries.shrink_to(2 * (entries.len() + Self::EXPIRIES_SLACK));
            }
            self.expiries = BinaryHeap::from(entries);
        }
        self.expiries.push(Reverse((expires_at, key)));
        self.live.insert(key, Reservation { amount, holds, slots });
        self.stats.approved += 1;
    }

    /// How many entries of settled reservations the expiry heap may hold beyond the live
    /// reservations' before it is rebuilt.
    const EXPIRIES_SLACK: usize = 64;

    /// How many entries the expiry heap holds (for tests of its bound).
    #[cfg(test)]
    pub(crate) fn expiry_entries(&self) -> usize {
        self.expiries.len()
    }

    /// Ends a live reservation as `how`: its holds become spend of `settled`, or are given
    /// back (`None`: a release or an expiry, which also frees its velocity slots). `false` when
    /// it is not live.
    fn end(&mut self, key: IdKey, settled: Option<Micros>, how: Closed, now: Timestamp) -> bool {
        let Some(r) = self.live.remove(&key) else { return false };
        unhold(&mut self.counters, &mut self.velocity, &r, settled);
        self.close(key, how, now);
        true
    }

    /// Turns a live reservation into spend of `settled` (≤ the reserved amount), keeping what
    /// answers its repeats. `false` when it is not live.
    pub fn settle(&mut self, key: IdKey, settled: Micros, kept: Kept, now: Timestamp) -> bool {
        let done = self.end(key, Some(settled), Closed::Recorded(kept), now);
        if done {
            self.stats.recorded += 1;
            self.spent += i128::from(settled.0);
        }
        done
    }

    /// Ends a live reservation as expired (a sweep's end for it). `false` when it is not live.
    pub fn expire(&mut self, key: IdKey, now: Timestamp) -> bool {
        let done = self.end(key, None, Closed::Expired, now);
        if done {
            self.stats.expired += 1;
        }
        done
    }

    /// Counts a late settlement (its reservation already expired) into the current periods.
    pub fn settle_late(
        &mut self,
        holds: &[(CounterKey, Timestamp)],
        windows: &[VelocityKey],
        settled: Micros,
        now: Timestamp,
    ) {
        self.restore_spend(holds, windows, settled, now);
        self.stats.late_records += 1;
    }

    /// Counts a spend recorded at `at` (a replay, or a spend without a reservation).
    pub fn restore_spend(
        &mut self,
        holds: &[(CounterKey, Timestamp)],
        windows: &[VelocityKey],
        settled: Micros,
        at: Timestamp,
    ) {
        for (key, start) in holds {
            if let Some(c) = self.period_counter(key, *start) {
                c.spent += settled;
            }
        }
        self.next_seq += 1;
        for key in windows.iter().filter(|k| !k.is_live()) {
            take_slot(self.velocity.entry(key.clone()).or_default(), at, self.next_seq);
        }
        self.stats.recorded += 1;
        self.spent += i128::from(settled.0);
    }

    /// Counts `records` more records in the lifetime totals, in no period (a compacted
    /// journal's folded records beyond the first, whose spend the first carries).
    pub fn count_records(&mut self, records: u64) {
        self.stats.recorded += records;
    }

    /// Frees a live reservation. `false` when it is not live. A `withdrawn` one was never
    /// handed out: it is taken off the approvals instead of counted as released.
    pub fn release(&mut self, key: IdKey, now: Timestamp, withdrawn: bool) -> bool {
        let done = self.end(key, None, Closed::Released, now);
        if done && withdrawn {
            debug_assert!(self.stats.approved > 0, "a live reservation was counted approved");
            self.stats.approved = self.stats.approved.saturating_sub(1);
        } else if done {
            self.stats.released += 1;
        }
        done
    }

    /// Remembers how an authorization ended (a live one is ended with `settle` or `release`).
    pub fn close(&mut self, key: IdKey, how: Closed, now: Timestamp) {
        self.closed.insert(key, how, now);
    }

    /// How an authorization ended, if it did within the retention window.
    pub fn closed(&self, key: IdKey) -> Option<&Closed> {
        self.closed.get(key)
    }

    /// The amount a live reservation holds.
    pub fn reserved(&self, key: IdKey) -> Option<Micros> {
        self.live.get(&key).map(|r| r.amount)
    }

    /// Totals over the ledger's life.
    pub fn stats(&self) -> LedgerStats {
        let total_spent = Decimal::try_from_i128_with_scale(self.spent, crate::money::Amount::SCALE)
            .unwrap_or(Decimal::MAX)
            .normalize();
        LedgerStats { total_spent, ..self.stats }
    }

    /// How many reservations are live.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Expires reservations past their time and forgets ended ones past `retention`.
    pub fn sweep(&mut self, now: Timestamp, retention: SignedDuration) -> usize {
        let mut expired = 0;
        while let Some(Reverse((at, _))) = self.expiries.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, key))) = self.expiries.pop() else { break };
            if self.end(key, None, Closed::Expired, now) {
                self.stats.expired += 1;
                expired += 1;
            }
        }
        self.closed.sweep(now, retention);
        expired
    }
}

/// How authorizations ended, kept for the retention window in generations: each holds what
/// ended within a twenty-fourth of the window, and at most [`Retained::GENERATION`] entries.
/// Growing a generation rehashes that generation alone, so a busy actor's settle never pauses
/// for a day's worth of payments (a single map rehashed millions of entries under the
/// actor's lock), and the sweep drops whole generations once everything in them is older than
/// the window: an entry is kept at least the window and at most one generation's span longer.
/// Lookups go newest first, so a late record shadows the expiry it followed.
#[derive(Debug)]
struct Retained {
    generations: VecDeque<Generation>,
    /// The time a generation may span: a twenty-fourth of the retention window (set by each
    /// sweep; an hour until the first).
    span: SignedDuration,
}

impl Default for Retained {
    fn default() -> Self {
        Retained { generations: VecDeque::new(), span: SignedDuration::from_hours(1) }
    }
}

#[derive(Debug)]
struct Generation {
    oldest: Timestamp,
    newest: Timestamp,
    ended: Map<IdKey, Closed>,
}

impl Retained {
    /// The most entries one generation holds: exactly a full map of 2^14 slots (hashbrown
    /// keeps 7/8 of its slots usable), ~1 MB.
    const GENERATION: usize = (1 << 14) / 8 * 7;

    fn insert(&mut self, key: IdKey, how: Closed, now: Timestamp) {
        let fresh = |g: &Generation| {
            g.ended.len() < Self::GENERATION && now.duration_since(g.oldest) <= self.span.max(SignedDuration::ZERO)
        };
        match self.generations.back_mut() {
            Some(g) if fresh(g) => {
                g.newest = g.newest.max(now);
                g.ended.insert(key, how);
            }
            _ => {
                let mut ended = Map::default();
                ended.insert(key, how);
                self.generations.push_back(Generation { oldest: now, newest: now, ended });
            }
        }
    }

    fn get(&self, key: IdKey) -> Option<&Closed> {
        self.generations.iter().rev().find_map(|g| g.ended.get(&key))
    }

    /// Forgets the generations whose every entry ended more than `retention` before `now`.
    fn sweep(&mut self, now: Timestamp, retention: SignedDuration) {
        self.span = retention / 24;
        let horizon = now.checked_sub(retention).unwrap_or(Timestamp::MIN);
        while self.generations.front().is_some_and(|g| g.newest < horizon) {
            self.generations.pop_front();
        }
    }
}

/// Takes slot `seq` at `at` in a window, kept in time order: a push at the back for a decision
/// now or a replay in order (a sort per slot made replaying a long history quadratic), a
/// binary search for one restored at an earlier time.
fn take_slot(q: &mut VecDeque<(Timestamp, u64)>, at: Timestamp, seq: u64) {
    if q.back().is_none_or(|(t, _)| *t <= at) {
        q.push_back((at, seq));
    } else {
        let at_or_after = q.partition_point(|(t, _)| *t <= at);
        q.insert(at_or_after, (at, seq));
    }
}

/// Gives back a reservation's holds; a settled one keeps its velocity slots (it was used).
fn unhold(
    counters: &mut Map<CounterKey, Counter>,
    velocity: &mut Map<VelocityKey, VecDeque<(Timestamp, u64)>>,
    r: &Reservation,
    settled: Option<Micros>,
) {
    for (key, start) in r.holds.iter() {
        if let Some(c) = counters.get_mut(key)
            && c.period_start == *start
        {
            c.reserved -= r.amount;
            if let Some(s) = settled {
                c.spent += s;
            }
        }
    }
    // A used approval stays in its windows; a live-only window drops it whatever the end.
    for (key, seq) in &r.slots {
        if (settled.is_none() || key.is_live())
            && let Some(q) = velocity.get_mut(key)
        {
            q.retain(|(_, s)| s != seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::IdKey;

    proptest! {
        /// `lower_hex` reads lower-case hex digits as `from_str_radix` does and refuses
        /// every other byte (upper case, signs, non-ASCII).
        #[test]
        fn lower_hex_reads_lower_case_hex_only(digits in proptest::collection::vec(any::<u8>(), 0..=32), hex in "[0-9a-f]{0,32}") {
            for d in [digits.as_slice(), hex.as_bytes()] {
                let lower = d.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                let want = match std::str::from_utf8(d) {
                    Ok("") => Some(0),
                    Ok(s) if lower => u128::from_str_radix(s, 16).ok(),
                    _ => None,
                };
                prop_assert_eq!(super::lower_hex(d), want, "{:?}", d);
            }
        }

        /// An engine id's key is read back from its text exactly; any other id (upper case,
        /// another length, another prefix) is hashed into the other half of the key space.
        #[test]
        fn an_engine_id_reads_back_as_its_key(bits in any::<u128>(), other in "auth_[0-9a-fA-F]{0,30}") {
            let bits = bits & ((1 << 96) - 1);
            let id = crate::ids::hex_id("auth_", bits, 24);
            prop_assert_eq!(IdKey::of(&id).bits(), bits);
            let engine_made = other.len() == 29 && !other.bytes().any(|b| b.is_ascii_uppercase());
            prop_assert_eq!(IdKey::of(&other).bits() >> 127 == 0, engine_made);
        }
    }

    fn key(n: u128) -> IdKey {
        IdKey::of(&crate::ids::hex_id("auth_", n, 24))
    }

    /// A settled reservation's expiry entry does not outlive the next rebuild: under steady
    /// traffic the heap stays within twice the live reservations (plus the slack), where it
    /// once kept one entry per payment for an approval's whole lifetime. What is live still
    /// expires, at its own time, and a settled one never does.
    #[test]
    fn the_expiry_heap_holds_the_live_reservations_not_every_settled_one() {
        use super::{AgentLedger, Closed, Held, Kept, Micros};
        use jiff::{SignedDuration, Timestamp};
        let mut ledger = AgentLedger::default();
        let t0 = Timestamp::from_second(1_790_000_000).unwrap();
        let ttl = SignedDuration::from_mins(10);
        let reserve = |ledger: &mut AgentLedger, n: u128, at: Timestamp| {
            ledger.reserve(key(n), Micros(1), at + ttl, Held::Nothing, Vec::new(), at);
        };
        // Three stay live, at different ages; ten thousand are settled within their lifetime.
        for n in 0..3 {
            reserve(&mut ledger, 1_000_000 + n, t0 + SignedDuration::from_secs(n as i64));
        }
        for n in 0..10_000u128 {
            let at = t0 + SignedDuration::from_millis(n as i64);
            reserve(&mut ledger, n, at);
            let kept =
                Kept { counted: Micros(1), settled: Micros(1), late: false, actor_inactive: false, reference: None };
            assert!(ledger.settle(key(n), Micros(1), kept, at));
            assert!(ledger.expiry_entries() <= 2 * 3 + AgentLedger::EXPIRIES_SLACK + 1, "at {n}");
        }
        // Half a second after the first live one's lifetime: it alone expired.
        let later = t0 + ttl + SignedDuration::from_millis(500);
        assert_eq!(ledger.sweep(later, SignedDuration::from_hours(24)), 1);
        assert!(matches!(ledger.closed(key(1_000_000)), Some(Closed::Expired)));
        assert_eq!(ledger.sweep(t0 + ttl + SignedDuration::from_secs(3), SignedDuration::from_hours(24)), 2);
        // Once every lifetime is over: nothing settled expires, and nothing is left to come up.
        assert_eq!(ledger.sweep(t0 + ttl + SignedDuration::from_secs(11), SignedDuration::from_hours(24)), 0);
        let stats = ledger.stats;
        assert_eq!((stats.approved, stats.recorded, stats.expired), (10_003, 10_000, 3));
        assert_eq!(ledger.expiry_entries(), 0, "every entry came up or was dropped");
    }

    /// An ended authorization is answered for at least the retention window and forgotten
    /// within one generation's span after it; a busy actor's entries split into bounded
    /// generations, every one still found; the newest ending of an id wins.
    #[test]
    fn the_retention_window_keeps_generations() {
        use jiff::{SignedDuration as D, Timestamp};

        use super::{Closed, Retained};
        let day = D::from_hours(24);
        let t0: Timestamp = "2026-06-10T08:00:00Z".parse().unwrap();
        let mut r = Retained::default();
        r.sweep(t0, day);
        r.insert(key(1), Closed::Expired, t0);
        r.sweep(t0 + day - D::from_secs(1), day);
        assert!(r.get(key(1)).is_some(), "kept for the window");
        r.sweep(t0 + day + D::from_hours(1) + D::from_secs(1), day);
        assert!(r.get(key(1)).is_none(), "forgotten within one span after it");

        let t1 = t0 + D::from_hours(48);
        let n = Retained::GENERATION as u128 * 2 + 5;
        for i in 0..n {
            r.insert(key(i), Closed::Released, t1);
        }
        assert_eq!(r.generations.len(), 3);
        assert!(r.generations.iter().all(|g| g.ended.len() <= Retained::GENERATION));
        assert!((0..n).all(|i| matches!(r.get(key(i)), Some(Closed::Released))));

        // A later ending of the same id (a late record after its expiry) shadows the earlier.
        let later = t1 + D::from_hours(3);
        let kept = super::Kept {
            counted: crate::micros::Micros(1),
            settled: crate::micros::Micros(1),
            late: true,
            actor_inactive: false,
            reference: None,
        };
        r.insert(key(7), Closed::Recorded(kept), later);
        assert!(matches!(r.get(key(7)), Some(Closed::Recorded(_))));
        r.sweep(t1 + day + D::from_hours(2), day);
        assert!(r.get(key(8)).is_none() && matches!(r.get(key(7)), Some(Closed::Recorded(_))));
    }

    #[test]
    fn fresh_ids_carry_their_key_and_sort_by_when_they_were_made() {
        use jiff::{SignedDuration as D, Timestamp};
        let t = Timestamp::from_second(1_790_000_000).unwrap();
        let (key, id) = IdKey::fresh(t);
        assert_eq!(IdKey::of(&id), key);
        assert!(id.starts_with("auth_6ab13b80"), "{id}");
        let (_, same_second) = IdKey::fresh(t);
        assert_ne!(id, same_second, "64 random bits apart");
        for later in [D::from_secs(1), D::from_hours(24), D::from_hours(24 * 365 * 10)] {
            let (_, next) = IdKey::fresh(t + later);
            assert!(next > id && next > same_second, "{next} after {id}");
        }
    }
}

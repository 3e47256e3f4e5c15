//! Journal compaction: the history a restart replays, folded to what any rule can still tell
//! apart.
//!
//! Replaying a compacted journal gives the ledger the whole one gives, whatever the policies
//! are then (the file's, a reload's, an actor's synced controls): every counter's spend in its
//! current period, every live reservation and pending approval, every actor's status and
//! lifetime totals. What changes:
//!
//! - Records past the retention window and older than [`FOLD_AFTER`] (no velocity window
//!   reaches them) are folded into one [`Entry::Folded`] per payer, counting scopes (rail,
//!   service, endpoint, session) and quarter hour of the time they count at. Every period
//!   turns over at a local midnight, and every time zone's offset is a whole number of quarter
//!   hours, so no daily, weekly, monthly, yearly or lifetime counter can tell the folded
//!   records from their sum. Their reservations and releases go with them.
//! - A reservation released or lapsed past the retention window goes, with its release.
//! - A request for human approval answered, or lapsed, goes.
//! - An actor's earlier statuses go (its last one stands).
//! - A record written twice goes (replay counts the first).
//!
//! A steady payer's history then grows by at most one entry per quarter hour and scope, not
//! one per payment.

use std::collections::{HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};

use crate::intent::{ActorId, PaymentIntent};
use crate::journal::Entry;
use crate::micros::Micros;
use crate::policy::plan::rail_slot;
use crate::policy::rules::Scope;

/// How old a record must be (besides past the retention window) to be folded: past the
/// longest velocity window (a day), with a margin.
pub(crate) const FOLD_AFTER: SignedDuration = SignedDuration::from_hours(48);

/// The quarter hours records are folded by: every time zone's offset is a multiple.
const QUARTER_HOUR: i64 = 15 * 60;

/// The most one folded entry holds, in micro-units (the engine counts a record in an `i64`).
const MAX_FOLDED_MICROS: i64 = 1_000_000_000_000_000_000;

/// What tells folded records apart: payer, rail slot, the service, endpoint and session
/// scope keys, and the quarter hour they count in.
type FoldKey = (ActorId, usize, String, String, String, i64);

/// One folded entry being made.
struct Fold {
    intent: PaymentIntent,
    micros: i64,
    records: u64,
    at: Timestamp,
}

fn fold_key(intent: &PaymentIntent, at: Timestamp) -> FoldKey {
    (
        intent.actor.clone(),
        rail_slot(&intent.rail),
        Scope::Service.key(intent),
        Scope::Endpoint.key(intent),
        Scope::Session.key(intent),
        at.as_second().div_euclid(QUARTER_HOUR),
    )
}

/// `entries` compacted at `now`, for an engine keeping ended approvals for `retention`.
pub(crate) fn compact(entries: Vec<Entry>, now: Timestamp, retention: SignedDuration) -> Vec<Entry> {
    let retained = |t: Timestamp| super::retained(t, retention, now);
    let fold_before = now.checked_sub(FOLD_AFTER).unwrap_or(Timestamp::MIN);
    // Walked as replay walks them: a record in time counts at its reservation's time, a late
    // one (after its release, or its lapse) at its own.
    let mut live: HashMap<&str, (Option<Timestamp>, Timestamp)> = HashMap::new();
    let mut expiries: HashMap<&str, Timestamp> = HashMap::new();
    let mut recorded: HashSet<&str> = HashSet::new();
    // The ids whose every entry goes, the duplicate records that go alone, and the folds.
    let mut gone: HashSet<&str> = HashSet::new();
    let mut duplicates: HashSet<usize> = HashSet::new();
    let mut idle: HashSet<usize> = HashSet::new();
    let mut folds: Vec<Fold> = Vec::new();
    let mut open_folds: HashMap<FoldKey, usize> = HashMap::new();
    let mut fold = |intent: &PaymentIntent, micros: i64, records: u64, at: Timestamp| {
        let key = fold_key(intent, at);
        if let Some(&i) = open_folds.get(&key)
            && let Some(sum) = folds[i].micros.checked_add(micros).filter(|s| *s <= MAX_FOLDED_MICROS)
        {
            let f = &mut folds[i];
            f.micros = sum;
            f.records += records;
            f.at = f.at.min(at);
            return;
        }
        open_folds.insert(key, folds.len());
        folds.push(Fold { intent: intent.clone(), micros, records, at });
    };
    let mut opened: HashMap<&str, Timestamp> = HashMap::new();
    let mut last_status: HashMap<&ActorId, usize> = HashMap::new();
    for (seq, entry) in entries.iter().enumerate() {
        match entry {
            Entry::Reserved { id, expires_at, at, .. } => {
                live.insert(id, (*at, *expires_at));
                expiries.insert(id, *expires_at);
            }
            Entry::Recorded { id, intent, amount, at, .. } => {
                if !recorded.insert(id.as_str()) {
                    duplicates.insert(seq);
                    continue;
                }
                let in_time = live.remove(id.as_str()).filter(|(_, expires_at)| *at < *expires_at);
                let counted_at = in_time.and_then(|(reserved, _)| reserved).unwrap_or(*at);
                // Replay remembers an ended approval until its expiry is past the retention
                // window too (a release is dated at its expiry): folded only after both.
                let ended = expiries.get(id.as_str()).is_none_or(|e| !retained(*e));
                if !retained(*at) && ended && counted_at < fold_before {
                    gone.insert(id);
                    fold(intent, Micros::of(*amount).0, 1, counted_at);
                }
            }
            Entry::Released { id, .. } => {
                // A release of nothing live (never reserved here, or already recorded) is
                // nothing to replay.
                if live.remove(id.as_str()).is_none() {
                    idle.insert(seq);
                }
            }
            Entry::PendingOpened { id, expires_at, .. } => {
                opened.insert(id, *expires_at);
            }
            Entry::PendingClosed { id } => {
                opened.remove(id.as_str());
            }
            // Folded again with what this compaction folds.
            Entry::Folded { intent, spent, records, at } => fold(intent, Micros::of_decimal(*spent).0, *records, *at),
            Entry::Actor { actor, .. } => {
                last_status.insert(actor, seq);
            }
        }
    }
    // A reservation never recorded goes once it ended past the retention window (replay
    // restores nothing of it then), with its release.
    for (id, expires_at) in expiries {
        if !recorded.contains(id) && !retained(expires_at) {
            gone.insert(id);
        }
    }
    let pending_kept: HashSet<&str> =
        opened.into_iter().filter(|(_, expires_at)| *expires_at > now).map(|(id, _)| id).collect();
    let statuses_kept: HashSet<usize> = last_status.into_values().collect();

    folds.sort_by_key(|f| f.at);
    let mut out: Vec<Entry> = folds
        .into_iter()
        .map(|f| Entry::Folded { intent: f.intent, spent: Micros(f.micros).to_decimal(), records: f.records, at: f.at })
        .collect();
    for (seq, entry) in entries.iter().enumerate() {
        let keep = match entry {
            Entry::Reserved { id, .. } => !gone.contains(id.as_str()),
            Entry::Released { id, .. } => !gone.contains(id.as_str()) && !idle.contains(&seq),
            Entry::Recorded { id, .. } => !gone.contains(id.as_str()) && !duplicates.contains(&seq),
            Entry::PendingOpened { id, .. } | Entry::PendingClosed { id } => pending_kept.contains(id.as_str()),
            // Written again above, with what was folded now.
            Entry::Folded { .. } => false,
            Entry::Actor { .. } => statuses_kept.contains(&seq),
        };
        if keep {
            out.push(entry.clone());
        }
    }
    out
}

//! The engine's actors table, and each thread's memory of the last actor it looked up there.
//!
//! Every decision and every record looks its actor up: its status (may it spend?) and its
//! ledger. Under the table's read lock, with a clone of the ledger's `Arc`, that lookup writes
//! two cache lines every thread shares (the lock's reader count and the `Arc`'s count), and
//! when two threads decide for one actor each pulls both lines from the other's cache, twice
//! per decision and twice per record. A thread instead remembers its last lookup, and the
//! table counts its changes (a generation, bumped under the write lock on every change): while
//! the count is the one remembered, the memory is what the table holds, and a lookup reads one
//! shared word and writes nothing shared.
//!
//! The memory holds its actor's ledger (an `Arc`) until the thread looks up another actor: a
//! dropped engine's last-used ledger lives on in each thread that used it last, one ledger per
//! thread at most. Holding it weakly would put back a shared write on every lookup.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{ActorStatus, Slot};
use crate::engine::ledger::AgentLedger;
use crate::engine::ledger::Map;
use crate::intent::ActorId;

/// Every actor an engine knows, counted as it changes.
pub(super) struct Actors {
    map: RwLock<Map<ActorId, Slot>>,
    /// How many times the table was opened for writing: a remembered lookup is good while
    /// this is the count it was made at.
    generation: AtomicU64,
    /// This table's number in the process, never reused (an address could be, once an engine
    /// is dropped and another made).
    table: u64,
}

/// A thread's last lookup.
struct Near {
    table: u64,
    generation: u64,
    actor: String,
    status: Option<ActorStatus>,
    ledger: Option<Arc<Mutex<AgentLedger>>>,
}

thread_local! {
    static NEAR: RefCell<Near> =
        const { RefCell::new(Near { table: 0, generation: 0, actor: String::new(), status: None, ledger: None }) };
}

impl Actors {
    /// A table holding `slots`.
    pub(super) fn with_slots(slots: impl IntoIterator<Item = (ActorId, Slot)>) -> Self {
        static TABLES: AtomicU64 = AtomicU64::new(1);
        Actors {
            map: RwLock::new(slots.into_iter().collect()),
            generation: AtomicU64::new(0),
            table: TABLES.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The table, to read.
    pub(super) fn read(&self) -> RwLockReadGuard<'_, Map<ActorId, Slot>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The table, to change: every thread's memory of it is forgotten.
    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Map<ActorId, Slot>> {
        let map = self.map.write().unwrap_or_else(|e| e.into_inner());
        // Counted before the change, under the lock: a reader that still sees the old count
        // decides as if it had looked before this write began.
        self.generation.fetch_add(1, Ordering::Release);
        map
    }

    /// `actor`'s status and ledger as the table holds them, and the change count they are
    /// good for (stable while the read lock is held: no writer can be counting).
    fn look(&self, actor: &ActorId) -> (Option<ActorStatus>, Option<Arc<Mutex<AgentLedger>>>, u64) {
        let map = self.read();
        let slot = map.get(actor);
        let generation = self.generation.load(Ordering::Acquire);
        (slot.and_then(|s| s.status), slot.and_then(|s| s.ledger.clone()), generation)
    }

    /// Calls `f` with `actor`'s status (`None`: not provisioned) and ledger (if it has one),
    /// from this thread's memory when the table has not changed since, else from the table.
    /// No lock is held while `f` runs.
    pub(super) fn with<R>(
        &self,
        actor: &ActorId,
        f: impl FnOnce(Option<ActorStatus>, Option<&Arc<Mutex<AgentLedger>>>) -> R,
    ) -> R {
        let mut f = Some(f);
        let generation = self.generation.load(Ordering::Acquire);
        let near = NEAR.try_with(|near| {
            // Busy: `f` looked an actor up from inside another lookup; answered below.
            let mut near = near.try_borrow_mut().ok()?;
            if near.table != self.table || near.generation != generation || near.actor != actor.as_str() {
                (near.status, near.ledger, near.generation) = self.look(actor);
                near.table = self.table;
                near.actor.clear();
                near.actor.push_str(actor.as_str());
            }
            let f = f.take()?;
            Some(f(near.status, near.ledger.as_ref()))
        });
        match (near, f) {
            (Ok(Some(r)), _) => r,
            (_, Some(f)) => {
                let (status, ledger, _) = self.look(actor);
                f(status, ledger.as_ref())
            }
            // `f` ran but the answer was lost: impossible, `Some(f(..))` is what it returns.
            (_, None) => unreachable!("the lookup's answer is returned where it is made"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provision(actors: &Actors, id: &ActorId, status: ActorStatus) {
        actors.write().entry(id.clone()).or_default().status = Some(status);
    }

    #[test]
    fn a_remembered_lookup_follows_every_change_to_the_table() {
        let (a, b) = (ActorId::new("a").unwrap(), ActorId::new("b").unwrap());
        let actors = Actors::with_slots([]);
        let status = |id: &ActorId| actors.with(id, |status, _| status);
        assert_eq!(status(&a), None);
        provision(&actors, &a, ActorStatus::Active);
        assert_eq!(status(&a), Some(ActorStatus::Active), "a new actor is seen at once");
        provision(&actors, &a, ActorStatus::Paused);
        assert_eq!(status(&a), Some(ActorStatus::Paused), "a pause is seen at once");
        assert_eq!(status(&b), None, "another actor is not the remembered one");
        let ledger = actors.write().entry(a.clone()).or_default().ledger.get_or_insert_default().clone();
        actors.with(&a, |_, l| assert!(l.is_some_and(|l| Arc::ptr_eq(l, &ledger)), "its ledger, once it has one"));
        actors.write().remove(&a);
        assert_eq!(status(&a), None, "a removal is seen at once");
    }

    #[test]
    fn two_tables_never_answer_for_each_other() {
        let a = ActorId::new("a").unwrap();
        let (one, two) = (Actors::with_slots([]), Actors::with_slots([]));
        provision(&one, &a, ActorStatus::Active);
        assert_eq!(one.with(&a, |s, _| s), Some(ActorStatus::Active));
        assert_eq!(two.with(&a, |s, _| s), None, "same actor, same generation, another table");
    }

    #[test]
    fn a_lookup_inside_a_lookup_is_answered_from_the_table() {
        let (a, b) = (ActorId::new("a").unwrap(), ActorId::new("b").unwrap());
        let actors = Actors::with_slots([]);
        provision(&actors, &a, ActorStatus::Active);
        provision(&actors, &b, ActorStatus::Paused);
        let (outer, inner) = actors.with(&a, |s, _| (s, actors.with(&b, |s, _| s)));
        assert_eq!((outer, inner), (Some(ActorStatus::Active), Some(ActorStatus::Paused)));
    }

    #[test]
    fn a_change_made_on_another_thread_is_seen_after_it() {
        let a = ActorId::new("a").unwrap();
        let actors = Arc::new(Actors::with_slots([]));
        provision(&actors, &a, ActorStatus::Active);
        assert_eq!(actors.with(&a, |s, _| s), Some(ActorStatus::Active));
        let (other, id) = (actors.clone(), a.clone());
        std::thread::spawn(move || provision(&other, &id, ActorStatus::Paused)).join().unwrap();
        assert_eq!(actors.with(&a, |s, _| s), Some(ActorStatus::Paused));
    }
}

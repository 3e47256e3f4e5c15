//! The idempotency keys callers named for payments this handle ran: one payment each, for as
//! long as an authority would answer the key again with its first approval (a day).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine::lock;

/// How long a named key stays claimed: the day an authority replays a key's answer for.
const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The most keys claimed at once: past it the oldest are forgotten first (about 40 bytes
/// each). Keys let go of (a denial, a release) do not count.
const MOST: usize = 1 << 20;

/// Claimed keys by a fingerprint of (actor, key), and the order they were claimed in, so
/// expiry takes them from the front without a scan.
#[derive(Default)]
pub(crate) struct NamedKeys(Mutex<Claimed>);

#[derive(Default)]
struct Claimed {
    at: HashMap<u64, Instant>,
    order: VecDeque<(Instant, u64)>,
    hasher: RandomState,
}

impl NamedKeys {
    /// Claims `key` for `actor`; `false` when it is claimed already.
    pub(crate) fn claim(&self, actor: &str, key: &str) -> bool {
        let mut claimed = lock(&self.0);
        let now = Instant::now();
        let Claimed { at, order, hasher } = &mut *claimed;
        while let Some(&(when, print)) = order.front() {
            // An entry whose claim was let go of is dropped whenever it comes first.
            let live = at.get(&print) == Some(&when);
            if live && now.duration_since(when) < RETENTION && at.len() < MOST {
                break;
            }
            order.pop_front();
            if live {
                at.remove(&print);
            }
        }
        // Claims let go of leave their entries behind the first: swept when they outnumber the
        // claims held.
        if order.len() > 2 * at.len() + 1024 {
            order.retain(|(when, print)| at.get(print) == Some(when));
        }
        let print = hasher.hash_one((actor, key));
        if at.contains_key(&print) {
            return false;
        }
        at.insert(print, now);
        order.push_back((now, print));
        true
    }

    /// Lets go of `key` for `actor`: its payment never happened.
    pub(crate) fn unclaim(&self, actor: &str, key: &str) {
        let mut claimed = lock(&self.0);
        let print = claimed.hasher.hash_one((actor, key));
        claimed.at.remove(&print);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_claim_per_actor_until_let_go_of() {
        let keys = NamedKeys::default();
        assert!(keys.claim("agent-1", "job-7"));
        assert!(!keys.claim("agent-1", "job-7"), "claimed");
        assert!(keys.claim("agent-2", "job-7"), "another actor's key is another key");
        keys.unclaim("agent-1", "job-7");
        assert!(keys.claim("agent-1", "job-7"), "let go of, it may be claimed again");
        // The first claim's entry, let go of and first in the queue, went with that claim; the
        // second claim stands.
        assert!(!keys.claim("agent-1", "job-7"));
        let claimed = lock(&keys.0);
        assert_eq!((claimed.at.len(), claimed.order.len()), (2, 2));
    }

    #[test]
    fn keys_let_go_of_neither_pile_up_nor_push_out_a_held_claim() {
        // A flood of claims let go of (denied payments under named keys) leaves a held claim
        // in place, and the queue stays bounded.
        let keys = NamedKeys::default();
        assert!(keys.claim("agent-1", "held"));
        for n in 0..20_000 {
            let key = format!("denied-{n}");
            assert!(keys.claim("agent-1", &key));
            keys.unclaim("agent-1", &key);
        }
        assert!(!keys.claim("agent-1", "held"), "still claimed");
        let claimed = lock(&keys.0);
        assert_eq!(claimed.at.len(), 1);
        assert!(claimed.order.len() <= 2 + 1024 + 1, "{}", claimed.order.len());
    }
}

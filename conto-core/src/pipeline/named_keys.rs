//! The idempotency keys callers named for payments this handle ran: one payment each, for as
//! long as an authority would answer the key again with its first approval (a day).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine::lock;

/// How long a named key stays claimed: the day an authority replays a key's answer for.
const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The most keys kept: past it the oldest are forgotten first (about 40 bytes each).
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
            if now.duration_since(when) < RETENTION && order.len() <= MOST {
                break;
            }
            order.pop_front();
            // Only the claim this entry made (not one made again since a release).
            if at.get(&print) == Some(&when) {
                at.remove(&print);
            }
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
        // The queue keeps the first claim's entry: expiring it must not drop the second claim.
        let claimed = lock(&keys.0);
        assert_eq!((claimed.at.len(), claimed.order.len()), (2, 3));
    }
}

//! A fixed number of embedded decisions (authorize + record, the pipeline's `decide_shared`),
//! to count instructions under callgrind: deterministic where timings on a shared machine are
//! not. Run twice with different counts and divide the difference, so setup cancels out:
//!
//! ```sh
//! for n in 10000 20000; do POLICIES=10 DECISIONS=$n valgrind --tool=callgrind \
//!     --callgrind-out-file=/tmp/cg.$n target/release/deps/instructions-<hash>; done
//! ```
//!
//! (`benches/instructions.sh` does this and prints instructions per decision.) Without the
//! variables it runs 1 000 decisions at 10 policies, as a smoke test.

use std::sync::Arc;

use conto::{Engine, Settlement, Verdict};

mod common;

use common::{intent, policies_for};

fn var(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let (policies, decisions) = (var("POLICIES", 10), var("DECISIONS", 1_000));
    let engine = Engine::new(policies_for(policies, vec!["agent-1".into()]));
    let shared = Arc::new(intent("agent-1"));
    for _ in 0..decisions {
        let Verdict::Approved(a) = engine.decide_shared(&shared).unwrap().verdict else { panic!("approved") };
        engine.settle(&a, &Settlement::default()).unwrap();
    }
    println!("{decisions} decisions at {policies} policies");
}

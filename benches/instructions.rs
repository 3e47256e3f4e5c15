//! A fixed number of embedded decisions, to count instructions under callgrind: deterministic
//! where timings on a shared machine are not. Run twice with different counts and divide the
//! difference, so setup cancels out:
//!
//! ```sh
//! for n in 10000 20000; do POLICIES=10 DECISIONS=$n valgrind --tool=callgrind \
//!     --callgrind-out-file=/tmp/cg.$n target/release/deps/instructions-<hash>; done
//! ```
//!
//! `MODE` picks what runs each time: `decision` (authorize + record through the pipeline's
//! `decide_shared`, the default), `decision_days` (the same with a `DAY_OF_WEEK` rule per
//! policy, in the policy's zone), `paid_action` (a `#[paid_action]` fn), `bare_fn` (the same fn
//! without the attribute), `layer` (a paid axum route's `oneshot`) or `bare_route` (the same
//! route without the layer). `benches/instructions.sh` runs them and prints instructions per
//! call. Without the variables it runs 1 000 decisions at 10 policies, as a smoke test.

use std::sync::Arc;

use conto::{Engine, Settlement, Verdict};
use tower::ServiceExt;

mod common;
#[path = "common/paid.rs"]
mod paid;

use common::{intent, policies_for};

fn var(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The benchmarks' policy set with a fifth rule per policy, a `DAY_OF_WEEK` that lists every
/// day in the policy's own zone (Europe/Paris): a time rule that always holds, so every
/// decision reads the local time.
fn with_weekdays(n: usize) -> conto::PolicySet {
    let every_day = serde_json::json!({"ruleType": "DAY_OF_WEEK", "operator": "IN_LIST",
        "value": "[\"Mon\",\"Tue\",\"Wed\",\"Thu\",\"Fri\",\"Sat\",\"Sun\"]", "action": "ALLOW"});
    let mut docs = common::policy_docs(n);
    for doc in &mut docs {
        doc["timezone"] = "Europe/Paris".into();
        doc["rules"].as_array_mut().unwrap().push(every_day.clone());
    }
    conto::PolicySet::from_value(serde_json::json!({"agents": ["agent-1"], "policies": docs})).unwrap()
}

fn main() {
    let (policies, calls) = (var("POLICIES", 10), var("DECISIONS", 1_000));
    let mode = std::env::var("MODE").unwrap_or_else(|_| "decision".into());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    match mode.as_str() {
        "decision" | "decision_days" => {
            let set = if mode == "decision" {
                policies_for(policies, vec!["agent-1".into()])
            } else {
                with_weekdays(policies)
            };
            let engine = Engine::new(set);
            let shared = Arc::new(intent("agent-1"));
            for _ in 0..calls {
                let Verdict::Approved(a) = engine.decide_shared(&shared).unwrap().verdict else { panic!("approved") };
                engine.settle(&a, &Settlement::default()).unwrap();
            }
        }
        "paid_action" => {
            let conto = paid::conto(policies);
            rt.block_on(async {
                for _ in 0..calls {
                    paid::guarded(&conto, 7).await.unwrap();
                }
            });
        }
        "bare_fn" => rt.block_on(async {
            for _ in 0..calls {
                paid::bare(7).await.unwrap();
            }
        }),
        "layer" | "bare_route" => {
            let (bare, layered) = paid::routes(paid::conto(policies));
            let router = if mode == "layer" { layered } else { bare };
            rt.block_on(async {
                for _ in 0..calls {
                    let res = router.clone().oneshot(paid::request()).await.unwrap();
                    assert!(res.status().is_success(), "{}", res.status());
                }
            });
        }
        other => panic!("MODE={other}: one of decision, decision_days, paid_action, bare_fn, layer, bare_route"),
    }
    println!("{calls} calls of {mode} at {policies} policies");
}

//! A regression guard on the embedded decision's allocations (counted, not timed): an
//! in-memory engine builds no journal entry, so authorize + record stays at the figure
//! BENCHMARKS.md reports (`cargo bench --bench footprint`). Lower is welcome; higher fails.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use conto_core::{Engine, PaymentIntent, Rail, Settlement, Verdict};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded to the system allocator with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded to the system allocator with the caller's layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The figure measured when this guard was written, on the path the pipeline takes
/// (`Authorizer::authorize` → `Engine::decide_shared`: the approval keeps the caller's `Arc`):
/// 6 per authorize + record at first (the ids, the token, the held counters, the receipt),
/// now 3: the authorization id, the receipt's transaction id and its copy of the authorization id.
const MAX_ALLOCATIONS_PER_DECISION: usize = 3;

#[test]
fn authorize_and_record_allocate_no_more_than_measured() {
    let rules = r#"{"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "1000", "action": "ALLOW"},
        {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "900000000", "action": "ALLOW"}"#;
    let policies: Vec<String> = (0..10).map(|i| format!(r#"{{"name": "p{i}", "rules": [{rules}]}}"#)).collect();
    let engine =
        Engine::from_json(&format!(r#"{{"agents": ["agent-1"], "policies": [{}]}}"#, policies.join(","))).unwrap();
    let intent = PaymentIntent::builder("agent-1", "0.01", Rail::card("Acme").unwrap())
        .idempotency_key("guard")
        .build()
        .unwrap();
    let intent = std::sync::Arc::new(intent);
    let once = || {
        let Verdict::Approved(a) = engine.decide_shared(&intent).unwrap().verdict else { panic!("approved") };
        engine.settle(&a, &Settlement::default()).unwrap();
    };
    for _ in 0..50 {
        once();
    }
    let rounds = 200;
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..rounds {
        once();
    }
    let per = (ALLOCS.load(Ordering::Relaxed) - before) / rounds;
    assert!(per <= MAX_ALLOCATIONS_PER_DECISION, "{per} allocations per authorize + record");
}

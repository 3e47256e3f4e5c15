//! Allocations per decision, bytes per idle actor and per live reservation, measured with a
//! counting global allocator (no timing). `cargo bench --bench footprint`; BENCHMARKS.md
//! reports the numbers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use conto::{Engine, Settlement, Verdict};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded to the system allocator with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded to the system allocator with the caller's layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

mod common;
#[path = "common/paid.rs"]
mod paid;

use common::{intent, policies_for as policies};
use tower::ServiceExt;

/// Allocations per call of `once`, after a warm-up.
fn allocations(mut once: impl FnMut()) -> f64 {
    for _ in 0..100 {
        once();
    }
    let rounds = 10_000;
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..rounds {
        once();
    }
    (ALLOCS.load(Ordering::Relaxed) - before) as f64 / rounds as f64
}

/// `paid::guarded` with a reference the function owns (a `String`, as a wallet's receipt
/// holds its tx hash): the pipeline takes it as is, no copy.
#[conto::paid_action(amount = "0.01", recipient = common::RECIPIENT,
    rail = transfer(chain_id = 8453, sender = common::SENDER), actor = "agent-1", conto = conto,
    category = "API_PROVIDER", reference = |tx: &String| tx.clone())]
async fn guarded_owned(conto: &conto::Conto, n: u64) -> Result<String, paid::PayError> {
    // One allocation, as a receipt deserialized from a wallet's answer would hold.
    let mut tx = String::with_capacity(66);
    tx.push_str("0x");
    tx.extend(std::iter::repeat_n('0', 63));
    tx.push(char::from_digit((std::hint::black_box(n) % 16) as u32, 16).unwrap_or('0'));
    Ok(tx)
}

fn main() {
    println!("allocations per authorize + record (embedded engine, after warm-up):");
    for n in [1usize, 10, 100] {
        let engine = Engine::new(policies(n, vec!["agent-1".into()]));
        let i = intent("agent-1");
        let shared = std::sync::Arc::new(i.clone());
        // `decide` copies the caller's intent into the approval; `decide_shared` (what the
        // pipeline calls, through `Authorizer::authorize`) keeps the caller's `Arc`.
        let copied = || {
            let Verdict::Approved(a) = engine.decide(&i).verdict else { panic!("approved") };
            engine.settle(&a, &Settlement::default()).unwrap();
        };
        let kept = || {
            let Verdict::Approved(a) = engine.decide_shared(&shared).unwrap().verdict else { panic!("approved") };
            engine.settle(&a, &Settlement::default()).unwrap();
        };
        println!(
            "  {n:>3} policies: {:.1} allocations (decide), {:.1} (decide_shared)",
            allocations(copied),
            allocations(kept)
        );
    }

    // The same decision through `#[paid_action]` and through the layer, beside their bare
    // baselines: what each adds to the decision's own allocations.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conto = paid::conto(10);
    let bare_fn = allocations(|| drop(rt.block_on(paid::bare(7))));
    let paid_fn = allocations(|| drop(rt.block_on(paid::guarded(&conto, 7))));
    let owned_fn = allocations(|| drop(rt.block_on(guarded_owned(&conto, 7))));
    let (bare, layered) = paid::routes(paid::conto(10));
    let bare_route = allocations(|| drop(rt.block_on(bare.clone().oneshot(paid::request()))));
    let paid_route = allocations(|| drop(rt.block_on(layered.clone().oneshot(paid::request()))));
    println!("allocations per call at 10 policies (decision + record included):");
    println!("  #[paid_action] fn: {paid_fn:.1} (the bare fn: {bare_fn:.1})");
    println!("  #[paid_action] fn whose reference is a String it made: {owned_fn:.1} (that String included)");
    println!("  paid route (oneshot): {paid_route:.1} (the bare route: {bare_route:.1})");
    // What a caller's future carries for the pipeline: moved (copied) as it is built and
    // polled, so smaller is cheaper.
    let guarded = paid::guarded(&conto, 7);
    let run = conto.run(intent("agent-1"), |_| async { Ok::<u64, ()>(7) }, |_| Settlement::default());
    println!(
        "bytes of the future: #[paid_action] fn {}, Conto::run {} (the bare fn: {})",
        std::mem::size_of_val(&guarded),
        std::mem::size_of_val(&run),
        std::mem::size_of_val(&paid::bare(7))
    );
    drop((guarded, run));

    let actors = 1_000_000;
    let engine = Engine::new(policies(10, vec![]));
    let before = LIVE.load(Ordering::Relaxed);
    for n in 0..actors {
        engine.provision(&format!("actor-{n}")).unwrap();
    }
    let per_actor = (LIVE.load(Ordering::Relaxed) - before) as f64 / actors as f64;
    println!("bytes per idle actor ({actors} provisioned): {per_actor:.0}");

    let reservations = 100_000;
    let engine = Engine::new(policies(10, vec!["agent-1".into()]));
    let i = intent("agent-1");
    let mut live = Vec::with_capacity(reservations);
    let Verdict::Approved(a) = engine.decide(&i).verdict else { panic!("approved") };
    live.push(a);
    let before = LIVE.load(Ordering::Relaxed);
    let shared = std::sync::Arc::new(i.clone());
    for _ in 1..reservations {
        let Verdict::Approved(a) = engine.decide_shared(&shared).unwrap().verdict else { panic!("approved") };
        live.push(a);
    }
    let per_reservation = (LIVE.load(Ordering::Relaxed) - before) as f64 / (reservations - 1) as f64;
    println!(
        "bytes per live reservation ({reservations} live, one shared intent; engine side and the returned authorization): {per_reservation:.0}"
    );
    drop(live);

    // The engine's side alone: the app keeps no authorization (the reservation stays live).
    let engine = Engine::new(policies(10, vec!["agent-1".into()]));
    let Verdict::Approved(first) = engine.decide_shared(&shared).unwrap().verdict else { panic!("approved") };
    drop(first);
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 1..reservations {
        let Verdict::Approved(a) = engine.decide_shared(&shared).unwrap().verdict else { panic!("approved") };
        drop(a);
    }
    assert_eq!(engine.usage("agent-1").live_reservations, reservations);
    let engine_side = (LIVE.load(Ordering::Relaxed) - before) as f64 / (reservations - 1) as f64;
    println!("bytes per live reservation, engine side only ({reservations} live): {engine_side:.0}");

    // A recorded payment is kept for the retention window (24 h) to answer repeats the same.
    let engine = Engine::new(policies(10, vec!["agent-1".into()]));
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..reservations {
        let Verdict::Approved(a) = engine.decide_shared(&shared).unwrap().verdict else { panic!("approved") };
        engine.settle(&a, &Settlement::default()).unwrap();
    }
    let kept = (LIVE.load(Ordering::Relaxed) - before) as f64 / reservations as f64;
    println!("bytes per recorded payment kept for the retention window ({reservations} recorded): {kept:.0}");
}

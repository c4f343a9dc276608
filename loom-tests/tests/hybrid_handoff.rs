//! Loom models of the hybrid provider's shard ↔ sync hand-off (`src/hybrid/state.rs`): the
//! sync actor's `Collect` and `Settle` messages race a caller's decisions through the shard's
//! mailbox.
//!
//! Run as `.ci/run` does: `RUSTFLAGS="--cfg eyelet_loom" CARGO_TARGET_DIR=target/loom cargo test
//! --release -p eyelet-loom-tests`.
#![cfg(eyelet_loom)]

mod support;

use eyelet::loom_support::{HybridShard, HybridSuppressedShard};
use loom::sync::Arc;
use loom::thread;
use support::model_capped;

/// A sync collecting while a caller decides: at every collect, what was reported so far plus
/// what is pending equals what the shard admitted; after a final collect every admission was
/// reported exactly once (none lost in the hand-off, none reported twice).
#[test]
fn a_sync_racing_decisions_loses_and_doubles_nothing() {
    model_capped(3, || {
        // the only live instance: decisions are the local rule, every admission a delta
        let shard = Arc::new(HybridShard::new(1));
        let caller = {
            let shard = shard.clone();
            thread::spawn(move || {
                u64::from(shard.inc("k", 100.0, 1)) + 2 * u64::from(shard.inc("k", 100.0, 2))
            })
        };
        // a timer's sync (the key is far below its limit: it may defer its report)
        let (first, own, pending) = shard.collect("k", false);
        assert_eq!(
            first.admitted + pending,
            own,
            "reported {first:?} + pending {pending} != admitted {own}"
        );
        let admitted = caller.join().unwrap_or(0);
        // a flush reports everything
        let (second, own, pending) = shard.collect("k", true);
        assert_eq!(pending, 0);
        assert_eq!(own, admitted);
        assert_eq!(
            first.admitted + second.admitted,
            admitted,
            "every admission reported exactly once: {first:?} {second:?}"
        );
    });
}

/// Several instances: decisions spend a reserve while the sync reports what was spent and
/// Redis tops the reserve up. Whatever the order, the shard never admits more than Redis
/// granted in all, and every spent unit is reported as used exactly once.
#[test]
fn a_reserve_refill_racing_spending_never_admits_past_the_budget() {
    model_capped(3, || {
        let shard = Arc::new(HybridShard::new(2));
        // the key's first use is provisional (no reserve yet); its first sync reports it and
        // Redis grants 2 units
        assert!(shard.inc("k", 100.0, 1));
        let (start, _, _) = shard.collect("k", true);
        assert_eq!((start.admitted, start.used), (1, 0));
        shard.settle("k", 2);
        assert_eq!(shard.reserve("k"), 2);
        let mut granted = 2;
        let caller = {
            let shard = shard.clone();
            thread::spawn(move || {
                (0..4)
                    .map(|_| u64::from(shard.inc("k", 100.0, 1)))
                    .sum::<u64>()
            })
        };
        // the sync: reports what was spent, Redis takes it off the reserve and adds 1 unit
        let (first, _, _) = shard.collect("k", false);
        let redis_reserve = 2 - first.used - first.released + 1;
        granted += 1;
        shard.settle("k", redis_reserve);
        let admitted = caller.join().unwrap_or(0);
        let (second, own, _) = shard.collect("k", true);
        assert!(
            admitted <= granted,
            "admitted {admitted} of {granted} granted"
        );
        assert_eq!(own, admitted + 1, "the provisional one and the caller's");
        assert_eq!(
            first.used + second.used,
            admitted,
            "every unit spent reported once: {first:?} {second:?}"
        );
        assert_eq!(
            admitted + shard.reserve("k"),
            granted - first.released - second.released,
            "reserve left + spent = granted - given back"
        );
    });
}

/// The suppressed strategy reports attempts too: a sync collecting while a caller is accepted
/// and declined (S = 1, H = 2 at 1/s with h = 2) loses and doubles neither accepted nor declined
/// weight.
#[test]
fn a_sync_racing_suppressed_decisions_loses_and_doubles_no_attempt() {
    model_capped(3, || {
        let shard = Arc::new(HybridSuppressedShard::new());
        let caller = {
            let shard = shard.clone();
            thread::spawn(move || {
                (0..3)
                    .map(|_| u64::from(shard.inc("k", 1.0, 1)))
                    .sum::<u64>()
            })
        };
        let first = shard.collect("k", false);
        assert_eq!(
            first.accepted + first.pending_accepted,
            first.own_accepted,
            "{first:?}"
        );
        assert_eq!(
            first.declined + first.pending_declined,
            first.own_declined,
            "{first:?}"
        );
        let accepted = caller.join().unwrap_or(0);
        let second = shard.collect("k", true);
        assert_eq!((second.pending_accepted, second.pending_declined), (0, 0));
        assert_eq!(
            first.accepted + second.accepted,
            accepted,
            "{first:?} {second:?}"
        );
        assert_eq!(
            first.declined + second.declined,
            3 - accepted,
            "{first:?} {second:?}"
        );
        assert!(
            accepted >= 1 && accepted <= 2,
            "between S and H: {accepted}"
        );
    });
}

/// A hot key's lease: a caller takes units of its pool without the shard's token while a sync
/// collects (which first takes the unspent units back). Every unit taken is reported exactly
/// once, and no unit that went back is reported at all.
#[test]
fn lease_units_taken_while_a_sync_collects_are_reported_once() {
    static TOOK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    model_capped(3, || {
        let shard = Arc::new(HybridShard::new(1));
        // two admissions at one instant: the key is hot, the second grants a pool
        assert!(shard.inc("k", 1000.0, 1));
        assert!(shard.inc("k", 1000.0, 1));
        let caller = {
            let shard = shard.clone();
            thread::spawn(move || {
                u64::from(shard.take("k", 1000.0, 1)) + 2 * u64::from(shard.take("k", 1000.0, 2))
            })
        };
        let (first, own, pending) = shard.collect("k", false);
        assert_eq!(
            first.admitted + pending,
            own,
            "reported {first:?} + pending {pending} != admitted {own}"
        );
        let taken = caller.join().unwrap_or(0);
        TOOK.fetch_max(taken, std::sync::atomic::Ordering::Relaxed);
        let (second, own, pending) = shard.collect("k", true);
        assert_eq!(pending, 0);
        assert_eq!(own, 2 + taken, "the window holds exactly what was admitted");
        assert_eq!(
            first.admitted + second.admitted,
            2 + taken,
            "every admission reported exactly once: {first:?} {second:?}"
        );
    });
    // the pool was there: some interleavings took both calls' units from it
    assert_eq!(TOOK.load(std::sync::atomic::Ordering::Relaxed), 3);
}

/// A lease out of a reserve, spent while the sync collects and Redis answers: the shard never
/// admits more than Redis reserved, and every unit spent is reported as used exactly once.
#[test]
fn lease_units_out_of_a_reserve_never_pass_it_and_are_reported_once() {
    static TOOK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    model_capped(3, || {
        let shard = Arc::new(HybridShard::new(2));
        // first use: provisional; its sync reports it and Redis reserves 40 units
        assert!(shard.inc("k", 1000.0, 1));
        let _ = shard.collect("k", true);
        shard.settle("k", 40);
        // two admissions out of the reserve at one instant: the second grants a pool out of it
        assert!(shard.inc("k", 1000.0, 1));
        assert!(shard.inc("k", 1000.0, 1));
        let caller = {
            let shard = shard.clone();
            thread::spawn(move || {
                u64::from(shard.take("k", 1000.0, 1)) + 2 * u64::from(shard.take("k", 1000.0, 2))
            })
        };
        let (first, _, _) = shard.collect("k", false);
        // Redis: what is left of the reserve after what was spent and given back
        let left = 40 - first.used - first.released;
        shard.settle("k", left);
        let taken = caller.join().unwrap_or(0);
        TOOK.fetch_max(taken, std::sync::atomic::Ordering::Relaxed);
        let (second, own, pending) = shard.collect("k", true);
        assert_eq!(pending, 0);
        assert_eq!(own, 3 + taken, "the window holds exactly what was admitted");
        assert_eq!(
            first.used + second.used,
            2 + taken,
            "every unit spent reported once: {first:?} {second:?}"
        );
        assert_eq!(
            2 + taken + shard.reserve("k"),
            40 - first.released - second.released,
            "reserve left + spent = reserved - given back"
        );
    });
    assert_eq!(TOOK.load(std::sync::atomic::Ordering::Relaxed), 3);
}

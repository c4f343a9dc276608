//! Loom models of the lease pools (`src/shard/leases.rs`): callers take units without the
//! shard's token while the token holder reclaims a pool and grants the slot to another key.
//!
//! Run as `.ci/run` does: `RUSTFLAGS="--cfg eyelet_loom" CARGO_TARGET_DIR=target/loom cargo test
//! --release -p eyelet-loom-tests`. Two threads, bounded at 3 preemptions (a descriptor is a
//! dozen atomics).
#![cfg(eyelet_loom)]

mod support;

use eyelet::loom_support::Leases;
use loom::sync::Arc;
use loom::thread;
use support::model_capped;

/// Every unit of a pool is either taken by a caller of its own key or handed back by the
/// reclaim, never both, never lost; and a caller never takes from a pool granted to another
/// key after its own was reclaimed, even one with the same number of units left (the
/// generation in the pool's word guards that compare-and-swap).
#[test]
fn units_are_taken_or_reclaimed_exactly_once_and_never_from_another_keys_pool() {
    model_capped(3, || {
        let leases = Arc::new(Leases::new());
        leases.grant("a", 2);
        let caller = {
            let leases = leases.clone();
            thread::spawn(move || {
                u64::from(leases.take("a", 1, 0)) + u64::from(leases.take("a", 1, 0))
            })
        };
        // the shard reclaims "a" and gives the slot to "b", with as many units as "a" had
        let back_from_a = leases.reclaim();
        leases.grant("b", 2);
        let taken_from_a = caller.join().unwrap_or(0);
        let back_from_b = leases.reclaim();
        assert_eq!(
            taken_from_a + back_from_a,
            2,
            "a unit of \"a\" lost or counted twice"
        );
        assert_eq!(back_from_b, 2, "a caller of \"a\" took from \"b\"'s pool");
    });
}

/// Two callers racing for the last unit: exactly one gets it.
#[test]
fn the_last_unit_goes_to_one_caller() {
    model_capped(3, || {
        let leases = Arc::new(Leases::new());
        leases.grant("a", 1);
        let other = {
            let leases = leases.clone();
            thread::spawn(move || leases.take("a", 1, 0))
        };
        let mine = leases.take("a", 1, 0);
        let theirs = other.join().unwrap_or(false);
        assert!(mine ^ theirs, "mine {mine} theirs {theirs}");
        assert_eq!(leases.reclaim(), 0);
    });
}

/// Callers on two lanes while the shard reclaims: every unit of every lane is taken once or
/// handed back once.
#[test]
fn lanes_are_reclaimed_together() {
    model_capped(3, || {
        let leases = Arc::new(Leases::new());
        // 8 units: 2 in each of the 4 lanes
        leases.grant("a", 8);
        let other = {
            let leases = leases.clone();
            thread::spawn(move || u64::from(leases.take("a", 2, 1)))
        };
        let mine = u64::from(leases.take("a", 1, 0));
        let back = leases.reclaim();
        let theirs = other.join().unwrap_or(0) * 2;
        assert_eq!(
            mine + theirs + back,
            8,
            "mine {mine} theirs {theirs} back {back}"
        );
    });
}

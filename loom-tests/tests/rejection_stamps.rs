//! Loom models of the rejection stamps' sequence lock (`src/shard/stamps.rs`): the shard's token
//! holder publishes and withdraws stamps while callers read them without the token.
//!
//! Run as `.ci/run` does: `RUSTFLAGS="--cfg eyelet_loom" CARGO_TARGET_DIR=target/loom cargo test
//! --release -p eyelet-loom-tests`. Two threads; the torn-read model is bounded at 3 preemptions
//! (a stamp is a dozen atomics, so an unbounded search does not end), the withdrawal model is
//! exhaustive.
#![cfg(eyelet_loom)]

mod support;

use eyelet::loom_support::Stamps;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use support::{model, model_capped};

/// A reader racing two publications never returns a mix of both: every field it returns
/// belongs to one stamp.
#[test]
fn a_stamp_is_never_read_torn() {
    model_capped(3, || {
        let stamps = Arc::new(Stamps::new());
        stamps.publish(1);
        let writer = {
            let stamps = stamps.clone();
            thread::spawn(move || stamps.publish(2))
        };
        if let Some(fields) = stamps.read() {
            assert!(
                fields.iter().all(|&f| f == fields[0]),
                "torn stamp: {fields:?}"
            );
            assert!(fields[0] == 1 || fields[0] == 2);
        }
        let _ = writer.join();
    });
}

/// Once the change that followed a withdrawal is visible to a caller, no stamp from before it
/// answers that caller: the shard withdraws a key's stamp before it changes the key.
#[test]
fn a_withdrawn_stamp_never_answers_after_the_change_is_seen() {
    model(|| {
        let stamps = Arc::new(Stamps::new());
        let changed = Arc::new(AtomicBool::new(false));
        stamps.publish(1);
        let writer = {
            let (stamps, changed) = (stamps.clone(), changed.clone());
            thread::spawn(move || {
                stamps.invalidate();
                // the key's state changes under the token; its effects become visible
                changed.store(true, Ordering::Release);
            })
        };
        let seen = changed.load(Ordering::Acquire);
        let read = stamps.read();
        if seen {
            assert_eq!(read, None, "a withdrawn stamp answered after the change");
        }
        if let Some(fields) = read {
            assert!(fields.iter().all(|&f| f == 1));
        }
        let _ = writer.join();
    });
}

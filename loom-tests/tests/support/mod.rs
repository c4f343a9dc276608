//! How the loom test files explore their models (shared by `shard_protocol.rs`, `leases.rs`
//! and `rejection_stamps.rs`).
#![allow(dead_code)]

/// Explores every interleaving (two-thread models).
pub fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = None;
    builder.check(f);
}

/// Explores interleavings with at most `cap` preemptions (or fewer if `LOOM_MAX_PREEMPTIONS`
/// says so): three-thread models, and models over a dozen atomics, explode combinatorially
/// past 3.
pub fn model_capped<F: Fn() + Sync + Send + 'static>(cap: usize, f: F) {
    let mut builder = loom::model::Builder::new();
    let bound = builder.preemption_bound.map_or(cap, |b| b.min(cap));
    builder.preemption_bound = Some(bound);
    builder.check(f);
}

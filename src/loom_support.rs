//! The shard protocol, exposed for the loom models in `loom-tests/` (built only with
//! `--cfg eyelet_loom`). Not part of the public API.

use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc as StdArc;

use crate::decision::RateLimitDecision;
use crate::random::SplitMix64;
use crate::rate::RateLimit;
use crate::shard::mailbox::{ActorCell, Detach, Message};
use crate::shard::{Absolute, Inc, KeyRef, ShardActor, Shared, Sweep};
use crate::time::{ClockSource, ManualClock};

/// Hand-overs performed so far on this test's thread: `(to sync callers, to async callers)`.
pub fn hand_overs() -> (usize, usize) {
    crate::shard::mailbox::HANDOVERS.with(|c| c.get())
}

/// The combining budget the protocol runs with under loom.
pub const COMBINE_BUDGET: usize = crate::shard::mailbox::COMBINE_BUDGET;

/// An actor whose messages are closures over its state.
pub struct Cell<S: Send>(ActorCell<S>);

struct FnMsg<F>(F);

impl<S, R, F: FnOnce(&mut S) -> R> Message<S> for FnMsg<F> {
    type Reply = R;
    fn handle(self, state: &mut S) -> R {
        (self.0)(state)
    }
}

impl<S, R, F> Detach<S> for FnMsg<F>
where
    F: FnOnce(&mut S) -> R + Send + 'static,
    R: Send,
{
    type Owned = Self;
    fn detach(self) -> Self {
        self
    }
}

impl<S: Send> Cell<S> {
    /// An idle actor owning `state`.
    pub fn new(state: S) -> Self {
        Self(ActorCell::new(state))
    }

    /// Sync call: runs `f` on the state, by this thread or by the current executor.
    pub fn call<R: Send>(&self, f: impl FnOnce(&mut S) -> R + Send) -> R {
        self.0.call(FnMsg(f))
    }

    /// Async call.
    pub fn call_async<R, F>(&self, f: F) -> impl Future<Output = R> + '_
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send,
    {
        self.0.call_async(FnMsg(f))
    }
}

/// A real absolute shard on a manual clock.
pub struct AbsoluteShard {
    cell: ActorCell<ShardActor<Absolute>>,
    clock: ManualClock,
    hasher: ahash::RandomState,
}

impl AbsoluteShard {
    /// A shard with window `window_ms`, 1 ms buckets, keys stale after one window.
    pub fn new(window_ms: u64) -> Self {
        let clock = ManualClock::new();
        let shared = StdArc::new(Shared {
            window_ms,
            bucket_ms: 1,
            hard_limit_factor: 1.0,
            stale_after_ms: window_ms,
            max_keys: usize::MAX,
            live_keys: AtomicUsize::new(0),
            clock: ClockSource::Custom(StdArc::new(clock.clone())),
        });
        let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
        Self {
            cell: ActorCell::new(ShardActor::new(
                shared,
                Box::new(SplitMix64::new(1)),
                hasher.clone(),
            )),
            clock,
            hasher,
        }
    }

    /// The shard's clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// `inc(key, rate, 1)`; whether it was admitted.
    pub fn inc(&self, key: &str, per_second: f64) -> bool {
        let Ok(rate) = RateLimit::per_second(per_second) else {
            return false;
        };
        let key = KeyRef {
            key: key.into(),
            hash: self.hasher.hash_one(key),
        };
        let d = self.cell.call(Inc {
            key,
            rate,
            n: 1,
            record: true,
        });
        d.decision == RateLimitDecision::Allowed
    }

    /// One sweep message over the whole (small) shard; keys evicted.
    pub fn sweep(&self) -> usize {
        self.cell.call(Sweep { budget: 64 }).removed
    }
}

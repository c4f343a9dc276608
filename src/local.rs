//! The local provider: decisions inside this process, on caller-run shard actors.

use std::future::Future;
use std::sync::Arc;

use crate::config::RandomFactory;
use crate::decision::{RateLimitDecision, Stamped, SuppressedSnapshot};
use crate::rate::RateLimit;
use crate::router::ShardSet;
use crate::shard::{Absolute, Shared, Suppressed};

/// The in-process provider; get it with [`RateLimiter::local`](crate::RateLimiter::local).
///
/// Each strategy keeps its own state: the same key under `absolute()` and `suppressed()` is two
/// keys.
pub struct LocalProvider {
    absolute: LocalAbsolute,
    suppressed: LocalSuppressed,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider").finish_non_exhaustive()
    }
}

impl LocalProvider {
    pub(crate) fn new(
        shards: usize,
        shared: &Arc<Shared>,
        hasher: ahash::RandomState,
        random: &RandomFactory,
    ) -> Self {
        let absolute = ShardSet::new(shards, shared, hasher.clone(), |i| random(i));
        // Distinct random streams for the suppressed shards.
        let suppressed = ShardSet::new(shards, shared, hasher, |i| random(i + shards));
        Self {
            absolute: LocalAbsolute { set: absolute },
            suppressed: LocalSuppressed { set: suppressed },
        }
    }

    /// The absolute strategy: a sliding-window hard limit with retry hints.
    pub fn absolute(&self) -> &LocalAbsolute {
        &self.absolute
    }

    /// The suppressed strategy: probabilistic shedding near the limit with a hard cutoff.
    pub fn suppressed(&self) -> &LocalSuppressed {
        &self.suppressed
    }

    pub(crate) fn sweep(&self) -> usize {
        self.absolute.set.sweep() + self.suppressed.set.sweep()
    }
}

macro_rules! local_handle {
    ($(#[$meta:meta])* $name:ident, $strategy:ty, $snapshot:ty, $get_doc:literal) => {
        $(#[$meta])*
        pub struct $name {
            set: ShardSet<$strategy>,
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl $name {
            /// Decides a request of weight `n` for `key` at `rate` and records it if admitted.
            /// Atomic per key: no concurrent call can slip between the check and the record.
            ///
            /// `n = 0` is a free probe: the decision a unit request would get, nothing recorded.
            /// A weight above what the key can ever take returns `Rejected` with
            /// `retry_after_ms == RETRY_NEVER`.
            ///
            /// Blocks only while another caller executes this key's shard (it spins, yields,
            /// then parks); from async code use [`inc_async`](Self::inc_async).
            #[inline]
            pub fn inc(&self, key: &str, rate: &RateLimit, n: u64) -> RateLimitDecision {
                self.set.inc(key, rate, n, true).decision
            }

            /// [`inc`](Self::inc), also returning the time (limiter clock, ms) the decision was
            /// made at.
            pub fn inc_stamped(&self, key: &str, rate: &RateLimit, n: u64) -> Stamped {
                self.set.inc(key, rate, n, true)
            }

            /// The decision [`inc`](Self::inc) would return now, without recording anything.
            /// A separate `is_allowed` followed by `inc` is not atomic; `inc` alone is.
            pub fn is_allowed(&self, key: &str, rate: &RateLimit, n: u64) -> RateLimitDecision {
                self.set.inc(key, rate, n, false).decision
            }

            #[doc = $get_doc]
            /// An unknown key reads as zero and creates no state.
            pub fn get(&self, key: &str) -> $snapshot {
                self.set.get(key)
            }

            /// Forgets `key`; returns whether it had state. The next call sees a new key.
            pub fn reset(&self, key: &str) -> bool {
                self.set.reset(key)
            }

            /// Decides many keys in one call, each as [`inc`](Self::inc) would, in input order
            /// per key. Keys are grouped per shard, and a shard's keys are sent in parts of at
            /// most 64, so one large batch holds a shard for at most one bounded turn at a time
            /// (other callers get in between its parts).
            pub fn inc_many<K: AsRef<str>>(
                &self,
                keys: &[K],
                rate: &RateLimit,
                n: u64,
            ) -> Vec<RateLimitDecision> {
                let mut out = Vec::with_capacity(keys.len());
                self.set.inc_many_into(keys, rate, n, true, &mut out);
                out
            }

            /// [`inc_many`](Self::inc_many) into a reused buffer (cleared first).
            pub fn inc_many_into<K: AsRef<str>>(
                &self,
                keys: &[K],
                rate: &RateLimit,
                n: u64,
                out: &mut Vec<RateLimitDecision>,
            ) {
                self.set.inc_many_into(keys, rate, n, true, out)
            }

            /// Async [`inc`](Self::inc) for tokio tasks and actix actors: served inline when the
            /// shard is idle, otherwise queued after a short bounded spin and woken when done;
            /// it never parks the runtime thread.
            ///
            /// # Cancel safety
            /// Dropping the future before it completes either withdraws the request (nothing
            /// recorded, if no shard executor had claimed it yet) or leaves it decided exactly
            /// once (if one had); never half, never twice, and nothing is written into memory
            /// the future owned. A request that was claimed and then dropped still counts: if
            /// it was admitted, its weight takes capacity in the window although its caller
            /// never saw the decision.
            pub fn inc_async<'a>(
                &'a self,
                key: &'a str,
                rate: &RateLimit,
                n: u64,
            ) -> impl Future<Output = RateLimitDecision> + Send + 'a {
                let call = self.set.inc_async(key, rate, n, true);
                async move { call.await.decision }
            }

            /// Async [`is_allowed`](Self::is_allowed).
            ///
            /// # Cancel safety
            /// Records nothing, so dropping it at any point has no effect.
            pub fn is_allowed_async<'a>(
                &'a self,
                key: &'a str,
                rate: &RateLimit,
                n: u64,
            ) -> impl Future<Output = RateLimitDecision> + Send + 'a {
                let call = self.set.inc_async(key, rate, n, false);
                async move { call.await.decision }
            }

            /// Async [`inc_many`](Self::inc_many).
            ///
            /// # Cancel safety
            /// Shards are visited one after another, a shard's keys in parts of at most 64
            /// (one bounded turn each); dropping the future leaves the parts already decided
            /// recorded (their admitted weight takes capacity) and the others untouched, the
            /// current one as [`inc_async`](Self::inc_async) describes.
            pub fn inc_many_async<'a, K: AsRef<str> + Sync>(
                &'a self,
                keys: &'a [K],
                rate: &'a RateLimit,
                n: u64,
            ) -> impl Future<Output = Vec<RateLimitDecision>> + Send + 'a {
                self.set.inc_many_async(keys, rate, n, true)
            }

            /// Async [`get`](Self::get).
            ///
            /// # Cancel safety
            /// Reads only; safe to drop at any point.
            pub fn get_async<'a>(&'a self, key: &'a str) -> impl Future<Output = $snapshot> + Send + 'a {
                self.set.get_async(key)
            }

            /// Async [`reset`](Self::reset).
            ///
            /// # Cancel safety
            /// Dropped before a shard executor claimed it, the key is left as it was; after,
            /// it is reset (whether or not the future saw the answer).
            pub fn reset_async<'a>(&'a self, key: &'a str) -> impl Future<Output = bool> + Send + 'a {
                self.set.reset_async(key)
            }

            /// Number of keys holding state under this strategy.
            pub fn len(&self) -> usize {
                self.set.len()
            }

            /// Whether no key holds state under this strategy.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// Forgets every key of this strategy.
            pub fn clear(&self) {
                self.set.clear()
            }
        }
    };
}

local_handle!(
    /// Local absolute limiter: admit iff `live + n ≤ C`, exact under any concurrency.
    ///
    /// ```
    /// use eyelet::{RateLimit, RateLimiter};
    ///
    /// let rl = RateLimiter::builder().build().unwrap();
    /// let rate = RateLimit::try_from(5.5).unwrap();
    /// let abs = rl.local().absolute();
    /// let admitted = (0..10).filter(|_| abs.inc("k", &rate, 1).is_allowed()).count();
    /// assert_eq!(admitted, 5); // floor(1 s × 5.5)
    /// assert_eq!(abs.get("k"), 5);
    /// ```
    LocalAbsolute,
    Absolute,
    u64,
    "The key's live total: the weight its unexpired buckets hold (over the longest window the key was recently asked about)."
);

local_handle!(
    /// Local suppressed limiter: accepts everything up to the soft limit `C`, sheds a growing
    /// fraction above it (from the attempted rate), and never accepts more than the hard limit
    /// `H = floor(W_eff·r·h)` per window.
    ///
    /// ```
    /// use eyelet::{RateLimit, RateLimitDecision, RateLimiter};
    ///
    /// let rl = RateLimiter::builder().seed(1).build().unwrap();
    /// let rate = RateLimit::try_from(10.0).unwrap();
    /// let sup = rl.local().suppressed();
    /// let accepted = (0..100).filter(|_| sup.inc("k", &rate, 1).is_allowed()).count();
    /// assert!((10..=15).contains(&accepted)); // between S and H
    /// assert_eq!(sup.get("k").total, 100);
    /// ```
    LocalSuppressed,
    Suppressed,
    SuppressedSnapshot,
    "The key's attempted and declined weight in the window and the suppression factor a request would see now (at the key's last rate)."
);

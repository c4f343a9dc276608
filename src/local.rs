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
            #[inline(always)]
            fn set(&self) -> &ShardSet<$strategy> {
                &self.set
            }

            shard_handle_methods!(
                "Decides a request of weight `n` for `key` at `rate` and records it if admitted. \
                 Atomic per key: no concurrent call can slip between the check and the record.\n\n\
                 `n = 0` is a free probe: the decision a unit request would get, nothing recorded. \
                 A weight above what the key can ever take returns `Rejected` with \
                 `retry_after_ms == RETRY_NEVER`.\n\n\
                 Blocks only while another caller executes this key's shard (it spins, yields, \
                 then parks); from async code use [`inc_async`](Self::inc_async).",
                $snapshot,
                $get_doc
            );

            /// Forgets `key`; returns whether it had state. The next call sees a new key.
            pub fn reset(&self, key: &str) -> bool {
                self.set.reset(key)
            }

            /// Async [`reset`](Self::reset).
            ///
            /// # Cancel safety
            /// Dropped before a shard executor claimed it, the key is left as it was; after,
            /// it is reset (whether or not the future saw the answer).
            pub fn reset_async<'a>(&'a self, key: &'a str) -> impl Future<Output = bool> + Send + 'a {
                self.set.reset_async(key)
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

//! The hybrid provider (feature `redis`): one limit per key across every instance that shares a
//! Redis, decided at local speed. No call waits on Redis.
//!
//! # How it works
//! Shard actors decide from local state only, and a **sync actor** (a tokio task, one per
//! limiter) moves their deltas to Redis on a timer:
//! - Every [`sync_interval`](crate::RateLimiterBuilder::sync_interval) (default 10 ms) it asks
//!   each shard for its reports (one message per shard): per key, the weight admitted since the
//!   last sync, by server-time bucket, the reserve units it spent and the reserve it wants.
//! - It writes them in batched, idempotent script calls (`lua/hybrid_sync.lua`; an instance id
//!   and a sequence number per report, so a report whose reply was lost and that is sent again
//!   is counted once). Redis adds each delta to the bucket it belongs to, and tops the
//!   instance's **reserve** up towards what it asked for, out of the limit minus everything
//!   live (every instance's buckets and reserves).
//! - It sends each shard the answers (one message per shard): the key's new reserve.
//! - On a sole instance, a key far below its limit (under a quarter of `C`) reports every 10
//!   intervals only: such keys are most of a large key space, and their reports most of a
//!   sync's work. With other instances live every key reports at every sync (their shares
//!   depend on what Redis knows). A [`flush`](HybridProvider::flush) reports every key.
//!
//! A decision on a key then runs in one of these modes, reported as its
//! [`Source`](crate::Source) by `inc_stamped`:
//! - [`HybridSolo`](crate::Source::HybridSolo): the instance was the only live one at the last
//!   sync, and for a window before it (the registry of instances lives in Redis; another
//!   instance's admissions may count for a window after it left): it decides exactly as the
//!   local provider does and reports what it admitted.
//! - [`HybridReserve`](crate::Source::HybridReserve): several instances are live and the key
//!   holds a reserve: a request is admitted iff the reserve covers its weight. Reserved units
//!   count against the limit in Redis from the moment they are granted, and a spent unit moves
//!   into the bucket of its admission (which counts one bucket longer than an exact window), so
//!   admissions from reserves never exceed `C` in any window of server time.
//! - [`HybridProvisional`](crate::Source::HybridProvisional): the key holds no reserve yet
//!   (first use on this instance, or idle at the last sync): the instance admits up to
//!   `C / instances` on its own window until the next sync brings a reserve.
//! - [`HybridOutage`](crate::Source::HybridOutage): no sync succeeded within half the reserve
//!   lifetime: the [`OutagePolicy`] decides. Admissions are still recorded and reported when
//!   Redis answers again, into the buckets they belong to.
//!
//! # The bound
//! With `N` live instances, steady traffic and Redis healthy, every admission on a key near its
//! limit comes out of a reserve, so the most admitted in any window of length `W` is `C`
//! (server time; each instance maps its clock to the server's from round trips shorter than
//! `G`, and the extra bucket Redis counts absorbs that error). A reserve its instance stops
//! refreshing (dead, or cut off) counts as admitted at its expiry, for a window. The excess
//! comes only from provisional shares (a key this instance holds no reserve for and Redis
//! last reported below half its limit, or never: up to `C / N` per instance before the key's
//! first sync, or a share of the room Redis reported), from instances joining (shares computed
//! with a stale `N`), and from outages under [`OutagePolicy::LocalShare`] or
//! [`OutagePolicy::FailOpen`]. Throughput: reserved units that are not spent are held until
//! given back (a key idle for 4 intervals gives its reserve back; a dead instance's reserve
//! counts for a window), and a spent unit counts up to one bucket `G` longer than it would
//! locally.
//!
//! # Not done yet
//! The suppressed strategy, the async forms of `inc_many`, `get` and `reset`, a digest for very long
//! keys (a key is stored under its full escaped name, as the Redis provider's keys are, without
//! its 512-byte limit), and Redis Cluster tests (calls are grouped by slot, untested).
//!
//! # Redis state
//! A key's global window lives in `<prefix>:h:{<escaped key>}` (a hash of buckets, reserves
//! and per-instance sequence numbers) with a TTL past its last bucket; the registry of live
//! instances in `<prefix>:instances`. A restarted or failed-over server loses what it held:
//! reserves and buckets start again from what instances report next (up to a window's worth of
//! over-admission per key, as with the Redis provider).

mod state;
mod sync;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use state::OutagePolicy;
pub use sync::HybridStatus;

#[cfg(eyelet_loom)]
pub(crate) use state::{Answer, Collect, Settle};
pub(crate) use state::{HybridCtx, HybridRules};
pub(crate) use sync::{Counters, SyncConfig, SyncHandle};

use crate::decision::{RateLimitDecision, Stamped};
use crate::rate::RateLimit;
use crate::redis::RedisError;
use crate::router::ShardSet;

/// Default sync interval of the hybrid provider.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(10);

/// What the hybrid handles share.
struct Inner {
    set: Arc<ShardSet<HybridRules>>,
    ctx: Arc<HybridCtx>,
    counters: Arc<Counters>,
    sync: Option<SyncHandle>,
}

/// The hybrid provider; get it with [`RateLimiter::hybrid`](crate::RateLimiter::hybrid).
///
/// ```no_run
/// # async fn demo() -> Result<(), eyelet::RedisError> {
/// use std::time::Duration;
/// use eyelet::{RateLimit, RateLimiter};
///
/// let rl = RateLimiter::builder()
///     .window(Duration::from_secs(1))
///     .sync_interval(Duration::from_millis(10))
///     .redis_url("redis://127.0.0.1:6379/")
///     .prefix("checkout-svc")
///     .connect()
///     .await?;
/// let rate = RateLimit::try_from(100.0).expect("valid rate");
/// // local speed, one limit across every instance on this Redis and prefix
/// let d = rl.hybrid().absolute().inc("user_123", &rate, 1);
/// # let _ = d;
/// rl.hybrid().flush().await?; // push what is pending now (tests, shutdown)
/// # Ok(()) }
/// ```
pub struct HybridProvider {
    absolute: HybridAbsolute,
}

impl std::fmt::Debug for HybridProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridProvider")
            .field("connected", &self.absolute.inner.sync.is_some())
            .field("status", &self.status())
            .finish()
    }
}

impl HybridProvider {
    pub(crate) fn new(
        set: Arc<ShardSet<HybridRules>>,
        ctx: Arc<HybridCtx>,
        counters: Arc<Counters>,
        sync: Option<SyncHandle>,
    ) -> Self {
        Self {
            absolute: HybridAbsolute {
                inner: Arc::new(Inner {
                    set,
                    ctx,
                    counters,
                    sync,
                }),
            },
        }
    }

    /// The absolute strategy: a sliding-window hard limit shared through Redis.
    ///
    /// The sync actor stays dormant (nothing written to Redis) until the provider is first
    /// used; the first use wakes it for an immediate sync, and decisions made before that sync
    /// answers follow the outage policy. Call [`flush`](Self::flush) at start-up to register
    /// the instance before the first decision.
    #[inline]
    pub fn absolute(&self) -> &HybridAbsolute {
        self.absolute.inner.ctx.activate();
        &self.absolute
    }

    /// Runs a sync now and waits for it: everything admitted so far is in Redis when it
    /// returns `Ok` (for tests, and before a planned shutdown).
    ///
    /// # Errors
    /// [`RedisError::NotConfigured`] on a limiter made with
    /// [`build`](crate::RateLimiterBuilder::build); the error of a failed Redis call (what
    /// was not written stays pending and goes out with the next sync);
    /// [`RedisError::Shutdown`] after [`shutdown`](Self::shutdown).
    pub async fn flush(&self) -> Result<(), RedisError> {
        self.absolute.inner.ctx.activate();
        match &self.absolute.inner.sync {
            Some(s) => s.flush().await,
            None => Err(RedisError::NotConfigured),
        }
    }

    /// Graceful shutdown: a last sync that writes everything pending and gives every unspent
    /// reserve back, then leaves the instance registry (so the other instances' shares grow
    /// at their next sync) and stops the sync actor. Later decisions follow the outage policy.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub async fn shutdown(&self) -> Result<(), RedisError> {
        match &self.absolute.inner.sync {
            Some(s) => s.shutdown().await,
            None => Err(RedisError::NotConfigured),
        }
    }

    pub(crate) fn sweep(&self) -> usize {
        self.absolute.inner.set.sweep()
    }

    /// Health: syncs, failures, the last successful sync, reports waiting for Redis.
    pub fn status(&self) -> HybridStatus {
        let inner = &self.absolute.inner;
        inner.counters.status(&inner.ctx)
    }
}

/// The hybrid provider's absolute strategy; see [`HybridProvider`].
#[derive(Clone)]
pub struct HybridAbsolute {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HybridAbsolute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridAbsolute").finish_non_exhaustive()
    }
}

impl HybridAbsolute {
    /// Decides a request of weight `n` for `key` at `rate` and records it if admitted, from
    /// this instance's state only (never waits on Redis); see the [module docs](crate::hybrid)
    /// for the modes and the bound.
    ///
    /// `n = 0` is a free probe; a weight above `C` returns `Rejected` with
    /// `retry_after_ms == RETRY_NEVER`.
    pub fn inc(&self, key: &str, rate: &RateLimit, n: u64) -> RateLimitDecision {
        self.inc_stamped(key, rate, n).decision
    }

    /// [`inc`](Self::inc), with the time and the [`Source`](crate::Source) of the decision.
    pub fn inc_stamped(&self, key: &str, rate: &RateLimit, n: u64) -> Stamped {
        self.inner.set.inc(key, rate, n, true)
    }

    /// [`inc`](Self::inc) for async callers: never parks the runtime thread.
    pub fn inc_async<'a>(
        &'a self,
        key: &'a str,
        rate: &RateLimit,
        n: u64,
    ) -> impl Future<Output = RateLimitDecision> + Send + 'a {
        let f = self.inner.set.inc_async(key, rate, n, true);
        async move { f.await.decision }
    }

    /// What [`inc`](Self::inc) would answer now, recording nothing.
    pub fn is_allowed(&self, key: &str, rate: &RateLimit, n: u64) -> RateLimitDecision {
        self.inner.set.inc(key, rate, n, false).decision
    }

    /// Decides many keys in one call, each as [`inc`](Self::inc) would, in input order per key
    /// (grouped per shard, in parts of at most 64 keys per shard turn).
    pub fn inc_many<K: AsRef<str>>(
        &self,
        keys: &[K],
        rate: &RateLimit,
        n: u64,
    ) -> Vec<RateLimitDecision> {
        let mut out = Vec::with_capacity(keys.len());
        self.inner.set.inc_many_into(keys, rate, n, true, &mut out);
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
        self.inner.set.inc_many_into(keys, rate, n, true, out)
    }

    /// Forgets `key` on this instance now, and in Redis at the next sync (every instance's
    /// buckets and reserves of it). Returns whether this instance had state for it. Other
    /// instances keep their own recent admissions and report them at their next syncs; a
    /// reserve they hold is refused at their next sync.
    pub fn reset(&self, key: &str) -> bool {
        // queued first: a sync between the two steps must not carry new use of the key to
        // Redis ahead of its reset
        self.inner.ctx.queue_reset(key);
        self.inner.set.reset(key)
    }

    /// `(this instance's live admissions, everything live in Redis at the last sync)`.
    pub fn get(&self, key: &str) -> (u64, u64) {
        let s = self.inner.set.get(key);
        (s.own_live, s.global_live)
    }

    /// Number of keys this instance holds.
    pub fn len(&self) -> usize {
        self.inner.set.len()
    }

    /// Whether this instance holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything [`RateLimiter`](crate::RateLimiter) needs to start a hybrid provider.
pub(crate) fn build(
    shards: usize,
    shared: &Arc<crate::shard::Shared>,
    hasher: ahash::RandomState,
    policy: OutagePolicy,
) -> (Arc<ShardSet<HybridRules>>, Arc<HybridCtx>, Arc<Counters>) {
    let ctx = Arc::new(HybridCtx::new(policy, shared.window_ms));
    let set = Arc::new(ShardSet::with_ctx(
        shards,
        shared,
        hasher,
        |i| Box::new(crate::random::SplitMix64::new(i as u64)),
        ctx.clone(),
    ));
    (set, ctx, Arc::new(Counters::default()))
}

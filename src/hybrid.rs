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
//!   sync's work. With other instances live every key with news reports at every sync (their
//!   shares depend on what Redis knows). A key asks for a reserve once it is used in two
//!   intervals in a row, refused, or past a quarter of its limit; a key gone quiet reports
//!   again only to give its reserve back. A [`flush`](HybridProvider::flush) reports every
//!   key.
//! - A hot key of the absolute strategy gets leases, as on the local provider: units admitted
//!   at once in the mode of the call that found it hot (out of the reserve, the share, or the
//!   local limit), taken by callers without the shard's token while that mode and the bucket
//!   last, and taken back before every collect and settle.
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
//!   lifetime, the Redis deadline and one sync interval: the [`OutagePolicy`] decides. A sync
//!   that is only late (past half the reserve lifetime, within its deadline) is waited for:
//!   meanwhile calls are rejected with a retry hint to the next sync (`HybridReserve`), as
//!   when a reserve runs out, because the other instances may still be spending reserves
//!   Redis granted them (a sole instance keeps deciding alone). On a loaded machine a slow
//!   sync is common; deciding it by the outage policy passed the limit by 2–3 %. Admissions are still recorded and reported when
//!   Redis answers again, into the buckets they belong to. Meanwhile each key keeps one
//!   unsent report (later ones merge into it; deltas older than the window are dropped), and
//!   after a failed call the sync actor sends a PING before queueing script calls again.
//!
//! # The bound
//! With `N` live instances, steady traffic and Redis healthy, every admission on a key near its
//! limit comes out of a reserve, so the most admitted in any window of length `W` is `C`
//! (server time; each instance maps its clock to the server's from round trips shorter than
//! `G`, and the extra bucket Redis counts absorbs that error). A reserve its instance stops
//! refreshing (dead, or cut off) counts as admitted at its expiry, for a window, or until the
//! instance reports again: its reports then bring what it really spent, and the reserve comes
//! back out (so after a stall or a partition Redis holds exactly what was admitted). The excess
//! comes only from provisional shares (a key this instance holds no reserve for and Redis
//! last reported below half its limit, or never: up to `C / N` per instance before the key's
//! first sync, or a share of the room Redis reported), from instances joining (shares computed
//! with a stale `N`), and from outages under [`OutagePolicy::LocalShare`] or
//! [`OutagePolicy::FailOpen`]. Throughput: reserved units that are not spent are held until
//! given back (a key idle for 4 intervals gives its reserve back; a dead instance's reserve
//! counts for a window), and a spent unit counts up to one bucket `G` longer than it would
//! locally.
//!
//! # The suppressed strategy
//! [`HybridSuppressed`] runs the accepted weight through the same machinery at the hard limit
//! `H` (so the bound above holds for accepted weight with `H` in place of `C`), and decides
//! below it by the local suppressed rule over every instance's attempts: reports carry
//! declined weight too (by server bucket, as admissions), Redis answers with the accepted and
//! declined weight of all instances and the start of the oldest live bucket, and each instance
//! adds its own attempts since the last sync. All instances then shed the same fraction, and
//! together accept about `S` per window: in the tests, 4 instances at 2× and 4× load accept
//! within ±5 % of `S` in every window from the third on, and never more than `H` in any
//! sliding window. A sole instance decides exactly as the local provider does.
//!
//! # Redis state
//! A key's global window lives in `<prefix>:h:{<escaped key>}` (`:p:` for the suppressed
//! strategy; one string of packed doubles: buckets, reserves and per-instance sequence
//! numbers, read with one `GET` and written with one `SET` per sync) with a TTL past its last
//! bucket; a key longer than 512 bytes is stored under its SHA-256 digest instead
//! (`{\#<64 hex digits>}`, a name no escaped key can take), so keys of any length work.
//! On a Redis Cluster a sync makes one script call per hash slot (64 in flight; 4 on a single
//! server); with many keys, watch [`HybridStatus::last_sync_ms`] against 4 sync intervals. The
//! registry of live instances is `<prefix>:instances`. A restarted or failed-over server loses what it held:
//! reserves and buckets start again from what instances report next (up to a window's worth of
//! over-admission per key, as with the Redis provider).

mod state;
mod sync;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use state::OutagePolicy;
pub use sync::HybridStatus;

pub(crate) use state::HybridCtx;
#[cfg(any(eyelet_loom, test))]
pub(crate) use state::HybridRules;
#[cfg(eyelet_loom)]
pub(crate) use state::HybridSuppressedRules;
#[cfg(any(eyelet_loom, test))]
pub(crate) use state::{Answer, Collect, Settle};
pub(crate) use sync::{Counters, Sets, SyncConfig, SyncHandle};

use crate::config::RandomFactory;
use crate::decision::{RateLimitDecision, Stamped, SuppressedSnapshot};
use crate::rate::RateLimit;
use crate::redis::RedisError;
use crate::router::ShardSet;

/// Default sync interval of the hybrid provider.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(10);

/// What the hybrid handles share.
struct Inner {
    sets: Arc<Sets>,
    ctx: Arc<HybridCtx>,
    counters: Arc<Counters>,
    sync: Option<SyncHandle>,
}

/// The hybrid provider; get it with [`RateLimiter::hybrid`](crate::RateLimiter::hybrid).
///
/// Each strategy keeps its own state, on this instance and in Redis: the same key under
/// `absolute()` and `suppressed()` is two keys.
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
    suppressed: HybridSuppressed,
}

impl std::fmt::Debug for HybridProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridProvider")
            .field("connected", &self.inner().sync.is_some())
            .field("status", &self.status())
            .finish()
    }
}

impl HybridProvider {
    pub(crate) fn new(
        sets: Arc<Sets>,
        ctx: Arc<HybridCtx>,
        counters: Arc<Counters>,
        sync: Option<SyncHandle>,
    ) -> Self {
        let inner = Arc::new(Inner {
            sets,
            ctx,
            counters,
            sync,
        });
        Self {
            absolute: HybridAbsolute {
                inner: inner.clone(),
            },
            suppressed: HybridSuppressed { inner },
        }
    }

    fn inner(&self) -> &Inner {
        &self.absolute.inner
    }

    /// The absolute strategy: a sliding-window hard limit shared through Redis.
    ///
    /// The sync actor stays dormant (nothing written to Redis) until the provider is first
    /// used; the first use wakes it for an immediate sync, and decisions made before that sync
    /// answers follow the outage policy. Call [`flush`](Self::flush) at start-up to register
    /// the instance before the first decision.
    #[inline]
    pub fn absolute(&self) -> &HybridAbsolute {
        self.inner().ctx.activate_strategy(false);
        &self.absolute
    }

    /// The suppressed strategy: probabilistic shedding near the limit with a hard cutoff,
    /// shared through Redis (see [`HybridSuppressed`]). Wakes the sync actor as
    /// [`absolute`](Self::absolute) does.
    #[inline]
    pub fn suppressed(&self) -> &HybridSuppressed {
        self.inner().ctx.activate_strategy(true);
        &self.suppressed
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
        self.inner().ctx.activate();
        match &self.inner().sync {
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
        match &self.inner().sync {
            Some(s) => s.shutdown().await,
            None => Err(RedisError::NotConfigured),
        }
    }

    pub(crate) fn sweep(&self) -> usize {
        let sets = &self.inner().sets;
        sets.absolute.sweep() + sets.suppressed.sweep()
    }

    /// Health: syncs, failures, the last successful sync, reports waiting for Redis.
    pub fn status(&self) -> HybridStatus {
        let inner = self.inner();
        inner.counters.status(&inner.ctx)
    }
}

macro_rules! hybrid_handle {
    ($(#[$meta:meta])* $name:ident, $rules:ty, $set:ident, $suppressed:literal, $snapshot:ty, $get_doc:literal) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $name {
            inner: Arc<Inner>,
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl $name {
            #[inline(always)]
            fn set(&self) -> &ShardSet<$rules> {
                &self.inner.sets.$set
            }

            shard_handle_methods!(
                "Decides a request of weight `n` for `key` at `rate` and records it if admitted, \
                 from this instance's state only (never waits on Redis); see the \
                 [module docs](crate::hybrid) for the modes and the bound.\n\n\
                 `n = 0` is a free probe: the decision a unit request would get, nothing \
                 recorded.",
                $snapshot,
                $get_doc
            );

            /// Forgets `key` on this instance now, and in Redis at the next sync (every
            /// instance's buckets and reserves of it). Returns whether this instance had state
            /// for it. Other instances keep their own recent admissions and report them at
            /// their next syncs; a reserve they hold is refused at their next sync.
            pub fn reset(&self, key: &str) -> bool {
                // queued first: a sync between the two steps must not carry new use of the key
                // to Redis ahead of its reset
                self.inner.ctx.queue_reset($suppressed, key);
                self.set().reset(key)
            }

            /// Async [`reset`](Self::reset).
            pub fn reset_async<'a>(&'a self, key: &'a str) -> impl Future<Output = bool> + Send + 'a {
                self.inner.ctx.queue_reset($suppressed, key);
                self.set().reset_async(key)
            }
        }
    };
}

hybrid_handle!(
    /// The hybrid provider's absolute strategy; see [`HybridProvider`] and the
    /// [module docs](crate::hybrid). A weight above `C` returns `Rejected` with
    /// `retry_after_ms == RETRY_NEVER`; a call waiting for a reserve gets a retry hint to the
    /// next sync.
    HybridAbsolute,
    state::HybridRules,
    absolute,
    false,
    (u64, u64),
    "`(this instance's live admissions, everything live in Redis at the last sync)`."
);

hybrid_handle!(
    /// The hybrid provider's suppressed strategy: the local suppressed rule
    /// ([`LocalSuppressed`](crate::LocalSuppressed)) over every instance's attempts.
    ///
    /// Accepted weight goes through the absolute strategy's machinery at the hard limit `H`
    /// (reserves granted by Redis, shares, the outage policy), so the hard limit holds across
    /// instances within the absolute strategy's bound. Below it, the soft limit `S` and the
    /// suppression factor are computed from what all instances attempted: Redis's counts at
    /// the last sync plus this instance's own since, so every instance sheds the same fraction
    /// and together they accept about `S` per window. A sole instance decides exactly as the
    /// local provider does; so does an instance in an outage under
    /// [`OutagePolicy::FailOpen`], and under [`OutagePolicy::LocalShare`] at `S / N` and
    /// `H / N`. Decisions are `Allowed` or `Suppressed` (a call waiting for a reserve is
    /// `Suppressed { is_allowed: false, suppression_factor: 1.0 }`).
    HybridSuppressed,
    state::HybridSuppressedRules,
    suppressed,
    true,
    (SuppressedSnapshot, SuppressedSnapshot),
    "`(this instance's attempts, every instance's attempts as Redis counted them at the last sync)`; each with the suppression factor a request would see now from that view."
);

/// Everything [`RateLimiter`](crate::RateLimiter) needs to start a hybrid provider.
pub(crate) fn build(
    shards: usize,
    shared: &Arc<crate::shard::Shared>,
    hasher: ahash::RandomState,
    random: &RandomFactory,
    policy: OutagePolicy,
) -> (Arc<Sets>, Arc<HybridCtx>, Arc<Counters>) {
    let ctx = Arc::new(HybridCtx::new(policy, shared.window_ms));
    let absolute = ShardSet::with_ctx(
        shards,
        shared,
        hasher.clone(),
        |i| Box::new(crate::random::SplitMix64::new(i as u64)),
        ctx.clone(),
    );
    // the suppressed draws come from the builder's random source (seedable), streams apart
    // from the local and Redis providers'
    let suppressed = ShardSet::with_ctx(
        shards,
        shared,
        hasher,
        |i| random(i + 2 * shards + 1),
        ctx.clone(),
    );
    let sets = Arc::new(Sets {
        absolute,
        suppressed,
    });
    (sets, ctx, Arc::new(Counters::default()))
}

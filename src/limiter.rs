//! The public façade: one `RateLimiter` per process or purpose, shared as `Arc<RateLimiter>`.

use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::{
    ConfigError, RateLimiterBuilder, DEFAULT_STALE_AFTER_WINDOWS, MAX_HARD_LIMIT_FACTOR,
    MAX_SHARDS, MAX_WINDOW,
};
use crate::local::LocalProvider;
use crate::shard::Shared;
use crate::sweeper::Sweeper;
use crate::time::{ClockSource, SystemClock};

/// Default number of shards per strategy.
pub const DEFAULT_SHARDS: usize = 64;
/// Shortest default sweep interval.
const MIN_DEFAULT_SWEEP: Duration = Duration::from_millis(100);

/// What [`RateLimiter::validate`] derives from a builder.
struct Validated {
    shared: Arc<Shared>,
    sweep_interval: Duration,
    /// Shards per strategy, a power of two.
    shards: usize,
}

/// A per-key rate limiter: providers (`local()`), each with two strategies.
///
/// Create it with [`RateLimiter::builder`]; share the returned `Arc` across threads, tasks and
/// actors. Dropping the last `Arc` stops the background sweeper.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use eyelet::{RateLimit, RateLimitDecision, RateLimiter};
///
/// let rl: Arc<RateLimiter> = RateLimiter::builder()
///     .window(Duration::from_secs(1))
///     .bucket(Duration::from_millis(10))
///     .hard_limit_factor(1.5)
///     .build()
///     .unwrap();
/// let rate = RateLimit::try_from(10.0).unwrap();
/// match rl.local().absolute().inc("user_123", &rate, 1) {
///     RateLimitDecision::Allowed => { /* proceed */ }
///     RateLimitDecision::Rejected { retry_after_ms, .. } => eprintln!("retry in {retry_after_ms}ms"),
///     _ => {}
/// }
/// ```
pub struct RateLimiter {
    local: LocalProvider,
    #[cfg(feature = "redis")]
    redis: crate::redis::RedisProvider,
    #[cfg(feature = "redis")]
    hybrid: crate::hybrid::HybridProvider,
    shared: Arc<Shared>,
    sweeper: OnceLock<Sweeper>,
    /// What this limiter last added to the `eyelet_live_keys` gauges.
    #[cfg(feature = "metrics")]
    live_keys: crate::metrics::LiveKeys,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("window_ms", &self.shared.window_ms)
            .field("bucket_ms", &self.shared.bucket_ms)
            .field("hard_limit_factor", &self.shared.hard_limit_factor)
            .field("stale_after_ms", &self.shared.stale_after_ms)
            .field("clock", &self.shared.clock)
            .finish_non_exhaustive()
    }
}

fn whole_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RateLimiter {
    /// A builder with the documented defaults: 1 s window, 10 ms buckets, `h = 1.5`, keys
    /// evicted after 10 idle windows, 64 shards, no key cap, system clock, random seed.
    pub fn builder() -> RateLimiterBuilder {
        RateLimiterBuilder::default()
    }

    pub(crate) fn from_builder(b: RateLimiterBuilder) -> Result<Arc<Self>, ConfigError> {
        #[cfg(feature = "redis")]
        if b.redis.target.is_some() {
            // Not a limiter whose every Redis call would fail later.
            return Err(ConfigError::RedisNeedsConnect);
        }
        let valid = Self::validate(&b)?;
        Self::assemble(
            b,
            valid,
            #[cfg(feature = "redis")]
            None,
        )
    }

    /// [`RateLimiterBuilder::connect`]: validates, connects, then assembles.
    #[cfg(feature = "redis")]
    pub(crate) async fn connect(
        b: RateLimiterBuilder,
    ) -> Result<Arc<Self>, crate::redis::RedisError> {
        let valid = Self::validate(&b)?;
        if !crate::redis::valid_prefix(&b.redis.prefix) {
            return Err(ConfigError::InvalidPrefix(b.redis.prefix.clone()).into());
        }
        if whole_ms(b.redis.deadline) == 0 {
            return Err(ConfigError::ZeroRedisDeadline.into());
        }
        if whole_ms(b.redis.sync_interval) == 0 {
            return Err(ConfigError::ZeroSyncInterval.into());
        }
        if b.redis.clock_time && b.clock.is_none() {
            return Err(ConfigError::ClientClockWithoutCustomClock.into());
        }
        let target = b
            .redis
            .target
            .clone()
            .ok_or(crate::redis::RedisError::NotConfigured)?;
        // The Redis provider's draws come from the last stream of the factory (after the
        // local shards' ones), owned by its batcher actor.
        let random = b.random_factory()(2 * valid.shards);
        let (batcher, cluster, conn) = crate::redis::connect(
            &target,
            b.redis.deadline,
            valid.shared.clone(),
            b.redis.clock_time,
            random,
        )
        .await?;
        Ok(Self::assemble(b, valid, Some((batcher, cluster, conn)))?)
    }

    fn validate(b: &RateLimiterBuilder) -> Result<Validated, ConfigError> {
        let window_ms = whole_ms(b.window);
        let bucket_ms = whole_ms(b.bucket);
        if window_ms == 0 {
            return Err(ConfigError::ZeroWindow);
        }
        if b.window > MAX_WINDOW {
            return Err(ConfigError::WindowTooLong);
        }
        if bucket_ms == 0 {
            return Err(ConfigError::ZeroBucket);
        }
        if bucket_ms > window_ms {
            return Err(ConfigError::BucketLargerThanWindow);
        }
        let h = b.hard_limit_factor;
        if !(1.0..=MAX_HARD_LIMIT_FACTOR).contains(&h) {
            return Err(ConfigError::InvalidHardLimitFactor(h));
        }
        if !(0.0..=1.0).contains(&b.acquire_jitter) {
            return Err(ConfigError::InvalidAcquireJitter(b.acquire_jitter));
        }
        let shards = b.shards.unwrap_or(DEFAULT_SHARDS);
        if shards == 0 || shards > MAX_SHARDS {
            return Err(ConfigError::InvalidShardCount(shards));
        }
        let shards = shards.next_power_of_two();
        if b.max_keys == Some(0) {
            return Err(ConfigError::ZeroMaxKeys);
        }
        let sweep_interval = b
            .sweep_interval
            .unwrap_or_else(|| b.window.max(MIN_DEFAULT_SWEEP));
        if whole_ms(sweep_interval) == 0 {
            return Err(ConfigError::ZeroSweepInterval);
        }
        let stale_after_ms = b
            .stale_after
            .map(whole_ms)
            .unwrap_or_else(|| window_ms.saturating_mul(u64::from(DEFAULT_STALE_AFTER_WINDOWS)));
        let clock = match &b.clock {
            Some(c) => ClockSource::Custom(c.clone()),
            None => ClockSource::System(SystemClock::new()),
        };
        let shared = Arc::new(Shared {
            window_ms,
            bucket_ms,
            hard_limit_factor: h,
            stale_after_ms,
            max_keys: b.max_keys.unwrap_or(usize::MAX),
            acquire_jitter: b.acquire_jitter,
            live_keys: AtomicUsize::new(0),
            clock,
        });
        Ok(Validated {
            shared,
            sweep_interval,
            shards,
        })
    }

    fn assemble(
        b: RateLimiterBuilder,
        valid: Validated,
        #[cfg(feature = "redis")] redis: Option<(
            crate::redis::BatcherHandle,
            bool,
            crate::redis::Conn,
        )>,
    ) -> Result<Arc<Self>, ConfigError> {
        let Validated {
            shared,
            sweep_interval,
            shards,
        } = valid;
        let random = b.random_factory();
        let hasher = b.hasher();
        let local = LocalProvider::new(shards, &shared, hasher, &random);
        #[cfg(feature = "redis")]
        let (redis, hybrid) = {
            let (sets, ctx, counters) =
                crate::hybrid::build(shards, &shared, b.hasher(), &random, b.redis.outage_policy);
            let (batcher, cluster, sync) = match redis {
                Some((h, c, conn)) => {
                    let interval_ms = whole_ms(b.redis.sync_interval);
                    let config = crate::hybrid::SyncConfig {
                        interval: b.redis.sync_interval,
                        lease_ttl_ms: (8 * interval_ms).max(40),
                        deadline: b.redis.deadline,
                        instance: instance_id(),
                        prefix: b.redis.prefix.clone(),
                        registry_key: crate::redis::hybrid_registry(&b.redis.prefix),
                        bucket_ms: shared.bucket_ms,
                        window_ms: shared.window_ms,
                    };
                    let sync = crate::hybrid::SyncHandle::spawn(
                        sets.clone(),
                        ctx.clone(),
                        counters.clone(),
                        conn,
                        shared.clock.clone(),
                        config,
                    );
                    (Some(h), c, Some(sync))
                }
                None => (None, false, None),
            };
            (
                crate::redis::RedisProvider::new(
                    batcher,
                    shared.clone(),
                    b.redis.prefix.clone(),
                    cluster,
                ),
                crate::hybrid::HybridProvider::new(sets, ctx, counters, sync),
            )
        };
        let rl = Arc::new(RateLimiter {
            local,
            #[cfg(feature = "redis")]
            redis,
            #[cfg(feature = "redis")]
            hybrid,
            shared,
            sweeper: OnceLock::new(),
            #[cfg(feature = "metrics")]
            live_keys: crate::metrics::LiveKeys::default(),
        });
        if b.sweeper {
            let sweeper = Sweeper::spawn(Arc::downgrade(&rl), sweep_interval)
                .map_err(|e| ConfigError::SweeperSpawn(e.to_string()))?;
            let _ = rl.sweeper.set(sweeper);
        }
        Ok(rl)
    }

    /// The in-process provider: decisions in this process only, exact under any concurrency.
    pub fn local(&self) -> &LocalProvider {
        &self.local
    }

    /// The Redis provider (feature `redis`): limits shared by every process using the same
    /// Redis and prefix. On a limiter made with [`build`](RateLimiterBuilder::build) (no Redis)
    /// its calls return [`RedisError::NotConfigured`](crate::RedisError::NotConfigured).
    #[cfg(feature = "redis")]
    pub fn redis(&self) -> &crate::redis::RedisProvider {
        &self.redis
    }

    /// The hybrid provider (feature `redis`): local-speed decisions on limits shared through
    /// Redis by a sync actor (see [`hybrid`](crate::hybrid)). On a limiter made with
    /// [`build`](RateLimiterBuilder::build) (no Redis) it never syncs: it decides as the
    /// outage policy says, for one instance.
    #[cfg(feature = "redis")]
    pub fn hybrid(&self) -> &crate::hybrid::HybridProvider {
        &self.hybrid
    }

    /// Runs one cleanup pass now: evicts keys idle for `stale_after` whose buckets have all
    /// expired. Returns the number of keys evicted. The background sweeper calls this.
    pub fn sweep(&self) -> usize {
        #[cfg(feature = "redis")]
        let hybrid = self.hybrid.sweep();
        #[cfg(not(feature = "redis"))]
        let hybrid = 0;
        self.local.sweep() + hybrid
    }

    /// The window length `W`.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.shared.window_ms)
    }

    /// The bucket width `G`.
    pub fn bucket(&self) -> Duration {
        Duration::from_millis(self.shared.bucket_ms)
    }

    /// Current reading of the limiter's clock, in milliseconds (the time decisions use).
    pub fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    /// Moves the `eyelet_live_keys` gauges to this limiter's key counts (after a sweep).
    #[cfg(feature = "metrics")]
    pub(crate) fn publish_live_keys(&self) {
        #[cfg(feature = "redis")]
        let (ha, hs) = (self.hybrid.absolute().len(), self.hybrid.suppressed().len());
        #[cfg(not(feature = "redis"))]
        let (ha, hs) = (0, 0);
        let now = [
            self.local.absolute().len(),
            self.local.suppressed().len(),
            0, // the Redis provider holds no keys here
            0,
            ha,
            hs,
        ];
        crate::metrics::live_keys(&self.live_keys, now.map(|n| n as u64));
    }

    /// The suppressed strategy's hard-limit factor `h`.
    #[cfg(any(feature = "actix-web", feature = "tower"))]
    pub(crate) fn hard_limit_factor(&self) -> f64 {
        self.shared.hard_limit_factor
    }
}

impl Drop for RateLimiter {
    fn drop(&mut self) {
        if let Some(s) = self.sweeper.get() {
            s.stop();
        }
        #[cfg(feature = "metrics")]
        crate::metrics::live_keys(&self.live_keys, [0; 6]);
    }
}

/// A process-unique instance id for the hybrid registry: random, with the process id.
#[cfg(feature = "redis")]
fn instance_id() -> String {
    let r = ahash::RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{:x}-{:016x}", std::process::id(), r)
}

//! Limiter configuration: a builder with validated options.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::limiter::RateLimiter;
use crate::random::{RandomSource, SplitMix64};
use crate::time::Clock;

/// Default window `W`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
/// Default bucket width `G`.
pub const DEFAULT_BUCKET: Duration = Duration::from_millis(10);
/// Default hard-limit factor `h` of the suppressed strategy.
pub const DEFAULT_HARD_LIMIT_FACTOR: f64 = 1.5;
/// Default idle time after which a key is evicted, as a multiple of the window.
pub const DEFAULT_STALE_AFTER_WINDOWS: u32 = 10;
/// Longest accepted window (about 49.7 days: windows are kept in 32-bit milliseconds).
pub const MAX_WINDOW: Duration = Duration::from_millis(u32::MAX as u64);
/// Most shards a limiter may have.
pub const MAX_SHARDS: usize = 1 << 16;
/// Largest accepted hard-limit factor `h`, on every provider: beyond it the hard limit would be
/// one in name only (and `H` would leave what Redis counts exactly for ordinary rates).
pub const MAX_HARD_LIMIT_FACTOR: f64 = 1000.0;

/// Why a limiter configuration was refused.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The window is shorter than 1 ms (sub-millisecond parts are dropped).
    ZeroWindow,
    /// The window is longer than [`MAX_WINDOW`].
    WindowTooLong,
    /// The bucket width is shorter than 1 ms.
    ZeroBucket,
    /// The bucket width is longer than the window.
    BucketLargerThanWindow,
    /// The hard-limit factor is NaN, below 1 or above [`MAX_HARD_LIMIT_FACTOR`].
    InvalidHardLimitFactor(f64),
    /// Zero shards, or more than [`MAX_SHARDS`].
    InvalidShardCount(usize),
    /// A key cap of zero.
    ZeroMaxKeys,
    /// A sweep interval shorter than 1 ms.
    ZeroSweepInterval,
    /// The background sweeper thread could not be started.
    SweeperSpawn(String),
    /// The Redis key prefix is empty, longer than 128 bytes or contains a brace.
    InvalidPrefix(String),
    /// A Redis deadline shorter than 1 ms.
    ZeroRedisDeadline,
    /// A hybrid sync interval shorter than 1 ms.
    ZeroSyncInterval,
    /// A Redis server or cluster was configured, but the limiter was started with `build()`,
    /// which does not connect: use `connect().await`.
    RedisNeedsConnect,
    /// Scripts were told to take the time from the limiter's clock, but no clock was injected:
    /// that switch exists for tests driving Redis with a `ManualClock`; in production every
    /// process must share the server's time.
    ClientClockWithoutCustomClock,
    /// The `acquire` jitter is NaN or outside `0..=1`.
    InvalidAcquireJitter(f64),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroWindow => f.write_str("window must be at least 1 ms"),
            ConfigError::WindowTooLong => f.write_str("window must be at most 4294967295 ms"),
            ConfigError::ZeroBucket => f.write_str("bucket width must be at least 1 ms"),
            ConfigError::BucketLargerThanWindow => {
                f.write_str("bucket width must not exceed the window")
            }
            ConfigError::InvalidHardLimitFactor(h) => {
                write!(
                    f,
                    "hard limit factor must be within 1..={MAX_HARD_LIMIT_FACTOR}, got {h}"
                )
            }
            ConfigError::InvalidShardCount(n) => {
                write!(f, "shard count must be within 1..={MAX_SHARDS}, got {n}")
            }
            ConfigError::ZeroMaxKeys => f.write_str("maximum number of keys must be at least 1"),
            ConfigError::ZeroSweepInterval => f.write_str("sweep interval must be at least 1 ms"),
            ConfigError::SweeperSpawn(e) => write!(f, "could not start the sweeper thread: {e}"),
            ConfigError::InvalidPrefix(p) => write!(
                f,
                "redis prefix must be 1 to 128 bytes without braces, got {p:?}"
            ),
            ConfigError::ZeroRedisDeadline => f.write_str("redis deadline must be at least 1 ms"),
            ConfigError::ZeroSyncInterval => f.write_str("sync interval must be at least 1 ms"),
            ConfigError::RedisNeedsConnect => f.write_str(
                "a redis target is configured: start the limiter with connect().await, not build()",
            ),
            ConfigError::ClientClockWithoutCustomClock => f.write_str(
                "redis time from the limiter's clock needs an injected clock (a test switch)",
            ),
            ConfigError::InvalidAcquireJitter(j) => {
                write!(f, "acquire jitter must be within 0..=1, got {j}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Makes the random source of each shard (argument: shard index).
pub(crate) type RandomFactory = Arc<dyn Fn(usize) -> Box<dyn RandomSource> + Send + Sync>;

/// Builds a [`RateLimiter`]; see [`RateLimiter::builder`].
///
/// ```
/// use std::time::Duration;
/// use eyelet::RateLimiter;
///
/// let rl = RateLimiter::builder()
///     .window(Duration::from_secs(60))
///     .bucket(Duration::from_millis(100))
///     .hard_limit_factor(2.0)
///     .max_keys(1_000_000)
///     .stale_after(Duration::from_secs(600))
///     .build()
///     .unwrap();
/// # drop(rl);
/// ```
#[must_use]
#[derive(Clone)]
pub struct RateLimiterBuilder {
    pub(crate) window: Duration,
    pub(crate) bucket: Duration,
    pub(crate) hard_limit_factor: f64,
    pub(crate) stale_after: Option<Duration>,
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) sweeper: bool,
    pub(crate) max_keys: Option<usize>,
    pub(crate) shards: Option<usize>,
    pub(crate) clock: Option<Arc<dyn Clock>>,
    pub(crate) seed: Option<u64>,
    pub(crate) key_hash_seed: Option<u64>,
    pub(crate) random: Option<RandomFactory>,
    pub(crate) acquire_jitter: f64,
    #[cfg(feature = "redis")]
    pub(crate) redis: RedisOptions,
}

/// The Redis provider's options (feature `redis`).
#[cfg(feature = "redis")]
#[derive(Clone, Debug)]
pub(crate) struct RedisOptions {
    pub(crate) sync_interval: Duration,
    pub(crate) outage_policy: crate::hybrid::OutagePolicy,
    pub(crate) target: Option<crate::redis::Target>,
    pub(crate) prefix: String,
    pub(crate) deadline: Duration,
    pub(crate) clock_time: bool,
}

impl fmt::Debug for RateLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RateLimiterBuilder");
        d.field("window", &self.window)
            .field("bucket", &self.bucket)
            .field("hard_limit_factor", &self.hard_limit_factor)
            .field("stale_after", &self.stale_after)
            .field("sweep_interval", &self.sweep_interval)
            .field("sweeper", &self.sweeper)
            .field("max_keys", &self.max_keys)
            .field("shards", &self.shards)
            .field("custom_clock", &self.clock.is_some())
            .field("seed", &self.seed)
            .field("key_hash_seed", &self.key_hash_seed.is_some())
            .field("custom_random", &self.random.is_some())
            .field("acquire_jitter", &self.acquire_jitter);
        #[cfg(feature = "redis")]
        d.field("redis", &self.redis);
        d.finish()
    }
}

impl Default for RateLimiterBuilder {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            bucket: DEFAULT_BUCKET,
            hard_limit_factor: DEFAULT_HARD_LIMIT_FACTOR,
            stale_after: None,
            sweep_interval: None,
            sweeper: true,
            max_keys: None,
            shards: None,
            clock: None,
            seed: None,
            key_hash_seed: None,
            random: None,
            acquire_jitter: 0.0,
            #[cfg(feature = "redis")]
            redis: RedisOptions {
                sync_interval: crate::hybrid::DEFAULT_SYNC_INTERVAL,
                outage_policy: crate::hybrid::OutagePolicy::LocalShare,
                target: None,
                prefix: crate::redis::DEFAULT_PREFIX.to_string(),
                deadline: crate::redis::DEFAULT_REDIS_DEADLINE,
                clock_time: false,
            },
        }
    }
}

impl RateLimiterBuilder {
    /// Window length `W` (default 1 s; whole milliseconds).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Bucket width `G` (default 10 ms; whole milliseconds, at most the window). Requests within
    /// `G` of a key's newest bucket join it: the only imprecision the limiter allows.
    pub fn bucket(mut self, bucket: Duration) -> Self {
        self.bucket = bucket;
        self
    }

    /// The suppressed strategy's hard-limit factor `h` in `1..=`[`MAX_HARD_LIMIT_FACTOR`]
    /// (default 1.5): accepted weight per window never exceeds `floor(W_eff·r·h)`. The same
    /// bound holds for every provider.
    pub fn hard_limit_factor(mut self, h: f64) -> Self {
        self.hard_limit_factor = h;
        self
    }

    /// Idle time after which the sweeper evicts a key (default 10 × the window). A key is
    /// never evicted while any of its buckets still counts.
    pub fn stale_after(mut self, after: Duration) -> Self {
        self.stale_after = Some(after);
        self
    }

    /// How often the background sweeper runs (default: the window, at least 100 ms).
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = Some(every);
        self
    }

    /// Whether to run the background sweeper thread (default true). Without it, call
    /// [`RateLimiter::sweep`] yourself.
    pub fn sweeper(mut self, enabled: bool) -> Self {
        self.sweeper = enabled;
        self
    }

    /// Maximum number of live keys (both strategies together; default unlimited).
    ///
    /// At the cap, a new key replaces a key of the same shard whose buckets have all expired
    /// (such a key behaves exactly like a new one, so no decision changes); if a bounded scan
    /// finds none, the call returns [`RateLimitDecision::KeyCapacityExceeded`] and records
    /// nothing. Existing keys are always served.
    ///
    /// [`RateLimitDecision::KeyCapacityExceeded`]: crate::RateLimitDecision::KeyCapacityExceeded
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = Some(max);
        self
    }

    /// Number of shards per strategy, rounded up to a power of two (default 64).
    pub fn shards(mut self, count: usize) -> Self {
        self.shards = Some(count);
        self
    }

    /// The clock (default [`SystemClock`](crate::SystemClock)); inject a
    /// [`ManualClock`](crate::ManualClock) to drive time in tests.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Seeds the default random source (SplitMix64, one stream per shard and one for the
    /// Redis provider): the suppressed draws of a run are a fixed sequence per stream.
    ///
    /// Key hashing stays randomly keyed (HashDoS resistance: nobody can choose keys that pile
    /// up in one shard or one table bucket), so which shard's stream a key draws from changes
    /// between runs: suppressed decisions then agree in distribution, not call for call. To
    /// replay a run's decisions exactly, also set [`key_hash_seed`](Self::key_hash_seed) (and
    /// accept what it gives up).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Seeds the key hasher (which shard and table slot a key lands in), making placement
    /// reproducible across runs (default: random keys per limiter).
    ///
    /// This gives up HashDoS resistance unless the seed stays secret: whoever knows it can
    /// choose keys that all collide. Decisions never depend on placement, so tests rarely need
    /// it.
    pub fn key_hash_seed(mut self, seed: u64) -> Self {
        self.key_hash_seed = Some(seed);
        self
    }

    /// A custom random source: `make(i)` is called once per shard of each strategy, with
    /// `i` in `0..shards` for the absolute shards and `shards..2 × shards` for the suppressed
    /// ones (only the suppressed strategy draws), once with `i = 2 × shards` for the Redis
    /// provider, and with `i` in `2 × shards + 1 ..= 3 × shards` for the hybrid provider's
    /// suppressed shards (feature `redis`).
    pub fn random_source<F, R>(mut self, make: F) -> Self
    where
        F: Fn(usize) -> R + Send + Sync + 'static,
        R: RandomSource,
    {
        self.random = Some(Arc::new(move |i| {
            Box::new(make(i)) as Box<dyn RandomSource>
        }));
        self
    }

    /// Jitter for the `acquire` methods, a fraction in `0..=1` (default 0): each wait is
    /// stretched by a random part of up to this fraction of it, so waiters woken by the same
    /// retry hint do not all decide again at the same instant. Waits are never shortened (a
    /// retry before the hint would be rejected again).
    pub fn acquire_jitter(mut self, fraction: f64) -> Self {
        self.acquire_jitter = fraction;
        self
    }

    /// Validates the options and starts the limiter (and its sweeper thread).
    ///
    /// # Errors
    /// [`ConfigError`] for a zero or too long window, a zero bucket or one longer than the
    /// window, a hard-limit factor outside `1..=`[`MAX_HARD_LIMIT_FACTOR`], a bad shard count,
    /// a zero key cap or sweep interval, a sweeper thread that could not be spawned, or a Redis
    /// target ([`ConfigError::RedisNeedsConnect`]: a limiter with Redis starts with `connect`).
    pub fn build(self) -> Result<Arc<RateLimiter>, ConfigError> {
        RateLimiter::from_builder(self)
    }

    /// The Redis server for [`RateLimiter::redis`] (feature `redis`), e.g.
    /// `redis://127.0.0.1:6379/` or `redis://user:pass@host:6379/2`; start it with
    /// [`connect`](Self::connect).
    #[cfg(feature = "redis")]
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis.target = Some(crate::redis::Target::Single(url.into()));
        self
    }

    /// A Redis Cluster for [`RateLimiter::redis`] (feature `redis`), given some of its nodes;
    /// the client discovers the rest and follows slot moves.
    #[cfg(feature = "redis")]
    pub fn redis_cluster<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let nodes = nodes.into_iter().map(Into::into).collect();
        self.redis.target = Some(crate::redis::Target::Cluster(nodes));
        self
    }

    /// Prefix of every Redis key this limiter writes (default `eyelet`): limiters with the
    /// same prefix on the same Redis share their limits. 1 to 128 bytes, no braces.
    #[cfg(feature = "redis")]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis.prefix = prefix.into();
        self
    }

    /// How often the hybrid provider's sync actor writes this instance's deltas to Redis and
    /// refreshes its reserves (default 10 ms; at least 1 ms). Shorter: tighter sharing of a
    /// saturated key between instances, more Redis calls (one per interval, plus one per 256
    /// active keys).
    #[cfg(feature = "redis")]
    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.redis.sync_interval = interval;
        self
    }

    /// What the hybrid provider decides by while Redis is unreachable (default
    /// [`OutagePolicy::LocalShare`](crate::OutagePolicy::LocalShare)).
    #[cfg(feature = "redis")]
    pub fn outage_policy(mut self, policy: crate::OutagePolicy) -> Self {
        self.redis.outage_policy = policy;
        self
    }

    /// Deadline of every Redis call, from the call to its answer, queueing included
    /// (default 500 ms). Past it the call returns [`RedisError::Timeout`](crate::RedisError).
    #[cfg(feature = "redis")]
    pub fn redis_deadline(mut self, deadline: Duration) -> Self {
        self.redis.deadline = deadline;
        self
    }

    /// Test hook, not part of the supported API: the scripts take the time from this
    /// limiter's injected [`clock`](Self::clock) instead of Redis `TIME` (default false), so
    /// that a [`ManualClock`](crate::ManualClock) drives the Redis provider in tests.
    /// [`connect`](Self::connect) refuses it without an injected clock.
    #[cfg(feature = "redis")]
    #[doc(hidden)]
    pub fn redis_time_from_clock(mut self, enabled: bool) -> Self {
        self.redis.clock_time = enabled;
        self
    }

    /// Validates the options, connects to Redis and starts the limiter: its local provider,
    /// sweeper, and the Redis batcher (a task on the current tokio runtime, which must be
    /// running; actix runs on tokio).
    ///
    /// # Errors
    /// [`RedisError::Config`](crate::RedisError::Config) for invalid options (as
    /// [`build`](Self::build), plus the prefix and deadline), [`RedisError::NotConfigured`]
    /// without [`redis_url`](Self::redis_url) or [`redis_cluster`](Self::redis_cluster), and the
    /// connection errors of a server that cannot be reached within the deadline.
    ///
    /// [`RedisError::NotConfigured`]: crate::RedisError::NotConfigured
    #[cfg(feature = "redis")]
    pub async fn connect(self) -> Result<Arc<RateLimiter>, crate::RedisError> {
        RateLimiter::connect(self).await
    }

    /// The key hasher: seeded from [`key_hash_seed`](Self::key_hash_seed) if given, random
    /// otherwise.
    pub(crate) fn hasher(&self) -> ahash::RandomState {
        match self.key_hash_seed {
            Some(seed) => {
                let mut mix = SplitMix64::new(seed ^ 0x5EED_4A5B_D1E5_0000);
                ahash::RandomState::with_seeds(
                    mix.next_u64(),
                    mix.next_u64(),
                    mix.next_u64(),
                    mix.next_u64(),
                )
            }
            None => ahash::RandomState::new(),
        }
    }

    pub(crate) fn random_factory(&self) -> RandomFactory {
        if let Some(r) = &self.random {
            return r.clone();
        }
        let seed = self.seed.unwrap_or_else(|| {
            // Different per limiter unless seeded.
            ahash::RandomState::new().hash_one(std::time::SystemTime::now())
        });
        Arc::new(move |i| {
            let mut mix = SplitMix64::new(seed ^ (i as u64).wrapping_mul(0xA076_1D64_78BD_642F));
            Box::new(SplitMix64::new(mix.next_u64())) as Box<dyn RandomSource>
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `seed` makes draws reproducible without making key placement predictable (issue 7.10:
    /// it used to seed the key hasher too); `key_hash_seed` does that, on purpose.
    #[test]
    fn seed_keeps_the_key_hasher_random() {
        let a = RateLimiterBuilder::default().seed(7).hasher().hash_one("k");
        let b = RateLimiterBuilder::default().seed(7).hasher().hash_one("k");
        assert_ne!(
            a, b,
            "two limiters seeded alike hash keys with different secrets"
        );
        let mut ra = RateLimiterBuilder::default().seed(7).random_factory()(3);
        let mut rb = RateLimiterBuilder::default().seed(7).random_factory()(3);
        assert_eq!(ra.next_u64(), rb.next_u64(), "but draw alike");
        let c = RateLimiterBuilder::default()
            .key_hash_seed(7)
            .hasher()
            .hash_one("k");
        let d = RateLimiterBuilder::default()
            .key_hash_seed(7)
            .hasher()
            .hash_one("k");
        assert_eq!(c, d);
    }
}

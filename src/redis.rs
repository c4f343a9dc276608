//! The Redis provider: one limit per key shared by every process that uses the same Redis.
//!
//! Decisions follow the same contract as the local provider (same rules, written twice: in
//! `src/math/` and in `lua/decide.lua`; a shared conformance suite runs both). Time comes from
//! Redis (`TIME`, read once per script call), so app servers with skewed clocks agree.
//!
//! Calls go through a batcher actor (a tokio task owning a multiplexed connection): concurrent
//! calls are coalesced into script calls of about 64 operations (at most 256), each distinct key
//! read and written once per script call. Every call has a deadline
//! ([`RateLimiterBuilder::redis_deadline`](crate::RateLimiterBuilder::redis_deadline)); a dead or
//! stalled server yields a typed [`RedisError`], never a hang.
//!
//! Keys are `<prefix>:<a|s>:{<escaped user key>}`: injective for any UTF-8 key, glob-safe, and
//! each key owns one hash slot, so Redis Cluster works without `CROSSSLOT`. Every key has a TTL
//! that outlives its live buckets; idle keys expire on their own (no index, no sweeper).
//!
//! # Running Redis for a limiter
//! - **`maxmemory-policy noeviction`** (Redis's default). Every limiter key carries a TTL, so
//!   the `volatile-*` policies (and `allkeys-*`) evict live limiter state under memory
//!   pressure, and an evicted key admits again from zero: the limiter over-admits. With
//!   `noeviction` a full server refuses the write instead, and the call fails with
//!   [`RedisError::OutOfMemory`], applying nothing.
//! - **Failover loses recent counts.** Redis replicates asynchronously: after a failover the
//!   new primary may lack the last writes the old one acknowledged, so requests admitted just
//!   before it are forgotten and may be admitted again (up to one window's worth per key, in
//!   the worst case). `WAIT`-based durability is not used: it would put a replica round trip
//!   on every decision.
//! - A `Timeout` or `ConnectionLost` error means the call may have been applied (see
//!   [`RedisError::may_have_been_applied`]); the limiter never re-sends such a call itself.

mod batcher;
mod connection;
mod error;
mod keys;
mod script;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use batcher::BatcherHandle;
pub(crate) use connection::{Conn, Target};
pub use error::RedisError;
pub(crate) use keys::valid_prefix;
pub use keys::{MAX_KEY_LEN, MAX_PREFIX_LEN};
pub use script::MAX_EXACT;

use crate::decision::{RateLimitDecision, Stamped, SuppressedSnapshot};
use crate::random::RandomSource;
use crate::rate::{Limits, RateLimit};
use crate::shard::Shared;
use batcher::Answer;
use keys::Kind;
use script::{OpArgs, OpCode, OpReply};

/// The Redis key of hybrid key `key` under `prefix`, of the absolute or the suppressed strategy
/// (a key longer than [`MAX_KEY_LEN`] under its SHA-256 digest).
pub(crate) fn hybrid_key(prefix: &str, suppressed: bool, key: &str) -> Vec<u8> {
    let kind = if suppressed {
        Kind::HybridSuppressed
    } else {
        Kind::Hybrid
    };
    keys::encode_any_length(prefix, kind, key)
}

/// The hash slot of an encoded key.
pub(crate) fn hybrid_slot(redis_key: &[u8]) -> u16 {
    keys::slot(redis_key)
}

/// The hybrid instance registry of `prefix` (a sorted set; no braces, so its own slot).
pub(crate) fn hybrid_registry(prefix: &str) -> Vec<u8> {
    format!("{prefix}:instances").into_bytes()
}

/// Default per-call deadline of the Redis provider.
pub const DEFAULT_REDIS_DEADLINE: Duration = Duration::from_millis(500);

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "eyelet";

/// What both strategy handles share.
struct Inner {
    batcher: Option<BatcherHandle>,
    /// The runtime `connect` ran on (blocking `acquire` drives its calls there).
    runtime: Option<tokio::runtime::Handle>,
    shared: Arc<Shared>,
    prefix: String,
    cluster: bool,
}

impl Inner {
    fn batcher(&self) -> Result<&BatcherHandle, RedisError> {
        self.batcher.as_ref().ok_or(RedisError::NotConfigured)
    }

    /// Validates and encodes one key.
    fn key(&self, kind: Kind, key: &str) -> Result<(Vec<u8>, u16), RedisError> {
        if key.len() > MAX_KEY_LEN {
            return Err(RedisError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY_LEN,
            });
        }
        let k = keys::encode(&self.prefix, kind, key);
        let slot = if self.cluster { keys::slot(&k) } else { 0 };
        Ok((k, slot))
    }

    /// The arguments of a decision, validated against what Lua counts exactly.
    fn args(&self, code: OpCode, rate: &RateLimit, n: u64) -> Result<OpArgs, RedisError> {
        if n > MAX_EXACT {
            return Err(RedisError::WeightTooLarge { n, max: MAX_EXACT });
        }
        let limits = Limits::new(self.shared.window_ms, rate, self.shared.hard_limit_factor);
        // The absolute rules count up to C; the suppressed ones up to H (≥ C) and draw.
        let suppressed = matches!(code, OpCode::SuppressedInc | OpCode::SuppressedCheck);
        let limit = if suppressed {
            limits.hard
        } else {
            limits.capacity
        };
        if limit > MAX_EXACT {
            return Err(RedisError::RateTooHigh {
                limit,
                max: MAX_EXACT,
            });
        }
        Ok(OpArgs {
            code,
            window_ms: limits.window_ms,
            capacity: limits.capacity,
            hard: limits.hard,
            n,
            // drawn by the batcher actor, which owns the random source (no lock)
            draw: 0.0,
        })
    }

    fn plain(code: OpCode) -> OpArgs {
        OpArgs {
            code,
            window_ms: 0,
            capacity: 0,
            hard: 0,
            n: 0,
            draw: 0.0,
        }
    }

    async fn run(&self, kind: Kind, key: &str, args: OpArgs) -> Answer {
        let b = self.batcher()?;
        let (k, slot) = self.key(kind, key)?;
        b.call(k, slot, args).await
    }

    async fn decide(
        &self,
        kind: Kind,
        code: OpCode,
        key: &str,
        rate: &RateLimit,
        n: u64,
    ) -> Result<Stamped, RedisError> {
        let args = self.args(code, rate, n)?;
        match self.run(kind, key, args).await? {
            (at_ms, OpReply::Decision(decision)) => {
                counted(code, &decision);
                Ok(Stamped::new(
                    decision,
                    at_ms,
                    crate::decision::Source::Redis,
                ))
            }
            (_, r) => Err(unexpected(&r)),
        }
    }

    async fn decide_many<K: AsRef<str>>(
        &self,
        kind: Kind,
        code: OpCode,
        requests: impl ExactSizeIterator<Item = (K, u64)>,
        rate: &RateLimit,
    ) -> Result<Vec<RateLimitDecision>, RedisError> {
        let b = self.batcher()?;
        // Validate everything before sending anything.
        let mut prepared = Vec::with_capacity(requests.len());
        for (k, n) in requests {
            let (key, slot) = self.key(kind, k.as_ref())?;
            prepared.push((key, slot, self.args(code, rate, n)?));
        }
        let mut out = Vec::with_capacity(prepared.len());
        for answer in b.call_many(prepared).await? {
            match answer? {
                (_, OpReply::Decision(d)) => {
                    counted(code, &d);
                    out.push(d)
                }
                (_, r) => return Err(unexpected(&r)),
            }
        }
        Ok(out)
    }
}

/// Counts a recorded decision in the metrics (feature `metrics`; nothing otherwise).
fn counted(code: OpCode, d: &RateLimitDecision) {
    match code {
        OpCode::AbsoluteInc => crate::metrics::decision(crate::metrics::Series::RedisAbsolute, d),
        OpCode::SuppressedInc => {
            crate::metrics::decision(crate::metrics::Series::RedisSuppressed, d)
        }
        _ => {}
    }
}

fn unexpected(r: &OpReply) -> RedisError {
    RedisError::Protocol(format!("reply {r:?} does not fit the operation"))
}

/// The Redis provider: [`absolute`](Self::absolute) and [`suppressed`](Self::suppressed)
/// handles over one batcher. Get it with [`RateLimiter::redis`](crate::RateLimiter::redis).
pub struct RedisProvider {
    absolute: RedisAbsolute,
    suppressed: RedisSuppressed,
}

impl std::fmt::Debug for RedisProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisProvider")
            .field("connected", &self.absolute.inner.batcher.is_some())
            .field("cluster", &self.absolute.inner.cluster)
            .field("prefix", &self.absolute.inner.prefix)
            .finish()
    }
}

impl RedisProvider {
    pub(crate) fn new(
        batcher: Option<BatcherHandle>,
        shared: Arc<Shared>,
        prefix: String,
        cluster: bool,
    ) -> Self {
        let inner = Arc::new(Inner {
            runtime: batcher
                .as_ref()
                .and_then(|_| tokio::runtime::Handle::try_current().ok()),
            batcher,
            shared,
            prefix,
            cluster,
        });
        Self {
            absolute: RedisAbsolute {
                inner: inner.clone(),
            },
            suppressed: RedisSuppressed { inner },
        }
    }

    /// The absolute strategy: sliding-window hard limit with retry hints.
    pub fn absolute(&self) -> &RedisAbsolute {
        &self.absolute
    }

    /// The suppressed strategy: probabilistic shedding near the limit, hard cutoff at `H`.
    pub fn suppressed(&self) -> &RedisSuppressed {
        &self.suppressed
    }
}

macro_rules! redis_strategy {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:expr, $inc:expr, $check:expr, $get:expr, $snapshot:ty,
        $get_doc:literal, $from_get:expr
    ) => {
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
            /// Decides a request of weight `n` for `key` at `rate` and records it if admitted,
            /// atomically on the server: every process sharing the Redis sees one limit.
            ///
            /// `n = 0` is a free probe. A weight above what the key can ever take returns
            /// `Rejected` with `retry_after_ms == RETRY_NEVER`.
            ///
            /// # Errors
            /// Bad input ([`RedisError::KeyTooLong`], [`RedisError::WeightTooLarge`],
            /// [`RedisError::RateTooHigh`]) before anything is sent; otherwise transport and
            /// server failures ([`RedisError::Timeout`] after the deadline,
            /// [`RedisError::Connection`], [`RedisError::ReadOnly`], ...).
            ///
            /// # Cancel safety
            /// Dropping the future before the operation is sent withdraws it (it is never
            /// applied); after it was sent it is applied once or not at all, as the server
            /// decides, whether or not the caller is still there to hear it.
            pub async fn inc(
                &self,
                key: &str,
                rate: &RateLimit,
                n: u64,
            ) -> Result<RateLimitDecision, RedisError> {
                Ok(self.inc_stamped(key, rate, n).await?.decision)
            }

            /// [`inc`](Self::inc), also returning the Redis server time (ms since the Unix
            /// epoch, or the limiter's clock in tests) the decision was made at.
            ///
            /// # Errors
            /// As [`inc`](Self::inc).
            pub async fn inc_stamped(
                &self,
                key: &str,
                rate: &RateLimit,
                n: u64,
            ) -> Result<Stamped, RedisError> {
                self.inner.decide($kind, $inc, key, rate, n).await
            }

            /// The decision [`inc`](Self::inc) would return now, without recording anything.
            ///
            /// # Errors
            /// As [`inc`](Self::inc).
            pub async fn is_allowed(
                &self,
                key: &str,
                rate: &RateLimit,
                n: u64,
            ) -> Result<RateLimitDecision, RedisError> {
                Ok(self.inner.decide($kind, $check, key, rate, n).await?.decision)
            }

            /// Decides many keys at once, each as [`inc`](Self::inc) would, in input order per
            /// key; the batcher packs them into as few script calls as their slots allow (a
            /// key's operations always share one call).
            ///
            /// # Errors
            /// A bad key or weight fails the whole call before anything is sent. The whole call
            /// has one deadline ([`RateLimiterBuilder::redis_deadline`](crate::RateLimiterBuilder::redis_deadline)),
            /// so split very large batches. A transport failure or timeout returns the first
            /// error; decisions of the same call that reached Redis may have been applied.
            pub async fn inc_many<K: AsRef<str>>(
                &self,
                keys: &[K],
                rate: &RateLimit,
                n: u64,
            ) -> Result<Vec<RateLimitDecision>, RedisError> {
                self.inner
                    .decide_many($kind, $inc, keys.iter().map(|k| (k.as_ref(), n)), rate)
                    .await
            }

            /// [`inc_many`](Self::inc_many) with a weight per request: `(key, n)` pairs.
            ///
            /// # Errors
            /// As [`inc_many`](Self::inc_many).
            pub async fn inc_many_weighted<K: AsRef<str>>(
                &self,
                requests: &[(K, u64)],
                rate: &RateLimit,
            ) -> Result<Vec<RateLimitDecision>, RedisError> {
                self.inner
                    .decide_many($kind, $inc, requests.iter().map(|(k, n)| (k.as_ref(), *n)), rate)
                    .await
            }

            #[doc = $get_doc]
            /// An unknown key reads as zero and creates no state.
            ///
            /// # Errors
            /// As [`inc`](Self::inc).
            pub async fn get(&self, key: &str) -> Result<$snapshot, RedisError> {
                match self.inner.run($kind, key, Inner::plain($get)).await? {
                    (_, r) => ($from_get)(r),
                }
            }

            async_acquire_methods!(
                "try is in flight, that try is as [`inc`](Self::inc) describes.",
                "[`AcquireError::Redis`](crate::AcquireError::Redis) at once when a call fails \
                 (whether to retry is the caller's choice)."
            );

            pub(crate) async fn acquire_by(
                &self,
                key: &str,
                rate: &RateLimit,
                n: u64,
                deadline: Option<std::time::Instant>,
            ) -> Result<RateLimitDecision, crate::AcquireError> {
                crate::acquire::waiting(
                    self.pacing(),
                    deadline,
                    || self.inc(key, rate, n),
                    crate::AcquireError::Redis,
                )
                .await
            }

            /// Blocking [`acquire_until`](Self::acquire_until) (no deadline with `None`): each
            /// try runs as a task on the runtime the limiter connected on, and the calling
            /// thread sleeps between tries. For plain threads and `spawn_blocking`; from async
            /// code use [`acquire`](Self::acquire) (blocking a runtime thread could stall the
            /// very calls it waits for).
            ///
            /// # Errors
            /// As [`acquire_until`](Self::acquire_until);
            /// [`AcquireError::InsideRuntime`](crate::AcquireError::InsideRuntime) when called
            /// where a runtime is driving async code on this thread (`block_on`), and
            /// [`RedisError::Shutdown`] once that runtime is gone.
            pub fn acquire_blocking(
                &self,
                key: &str,
                rate: &RateLimit,
                n: u64,
                deadline: Option<std::time::Instant>,
            ) -> Result<RateLimitDecision, crate::AcquireError> {
                // inside `block_on` (a runtime, no task, no blocking pool thread)
                if tokio::runtime::Handle::try_current().is_ok() && tokio::task::try_id().is_none() {
                    return Err(crate::AcquireError::InsideRuntime);
                }
                let Some(runtime) = self.inner.runtime.clone() else {
                    return Err(crate::AcquireError::Redis(RedisError::NotConfigured));
                };
                crate::acquire::blocking(
                    self.pacing(),
                    deadline,
                    || {
                        let (tx, rx) = std::sync::mpsc::sync_channel(1);
                        let (this, key, rate) = (self.clone(), key.to_owned(), *rate);
                        runtime.spawn(async move {
                            let _ = tx.send(this.inc(&key, &rate, n).await);
                        });
                        // a runtime shut down drops the task, and the sender with it
                        rx.recv().unwrap_or(Err(RedisError::Shutdown))
                    },
                    crate::AcquireError::Redis,
                )
            }

            fn pacing(&self) -> crate::acquire::Pacing {
                crate::acquire::Pacing::of(&self.inner.shared)
            }

            /// Forgets `key`; returns whether it had state. The next call sees a new key.
            ///
            /// # Errors
            /// As [`inc`](Self::inc).
            pub async fn reset(&self, key: &str) -> Result<bool, RedisError> {
                match self.inner.run($kind, key, Inner::plain(OpCode::Reset)).await? {
                    (_, OpReply::Reset(had)) => Ok(had),
                    (_, r) => Err(unexpected(&r)),
                }
            }
        }
    };
}

redis_strategy!(
    /// The Redis provider's absolute strategy: `live + n ≤ C`, all or nothing, exact across
    /// every process sharing the server.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), eyelet::RedisError> {
    /// use std::time::Duration;
    /// use eyelet::{RateLimit, RateLimitDecision, RateLimiter};
    ///
    /// let rl = RateLimiter::builder()
    ///     .window(Duration::from_secs(1))
    ///     .redis_url("redis://127.0.0.1:6379/")
    ///     .prefix("checkout-svc")
    ///     .connect()
    ///     .await?;
    /// let rate = RateLimit::try_from(10.0).expect("valid rate");
    /// match rl.redis().absolute().inc("user_123", &rate, 1).await? {
    ///     RateLimitDecision::Allowed => { /* proceed */ }
    ///     RateLimitDecision::Rejected { retry_after_ms, .. } => eprintln!("retry in {retry_after_ms}ms"),
    ///     _ => {}
    /// }
    /// # Ok(()) }
    /// ```
    RedisAbsolute,
    Kind::Absolute,
    OpCode::AbsoluteInc,
    OpCode::AbsoluteCheck,
    OpCode::AbsoluteGet,
    u64,
    "The weight live in `key`'s window now (over the longest window it retains).",
    |r| match r {
        OpReply::Total(t) => Ok(t),
        r => Err(unexpected(&r)),
    }
);

redis_strategy!(
    /// The Redis provider's suppressed strategy: sheds with probability `sf` between the soft
    /// limit `C` and the hard limit `H`, from the attempted rate.
    ///
    /// The random draw is made by the batcher actor, which owns the limiter's Redis random
    /// source (no lock on the request path): one draw per suppressed `inc` or `is_allowed`,
    /// used or not, in the order the batcher takes them, and sent with the request; so a seeded
    /// limiter called in sequence replays the same decisions. The local provider draws per
    /// shard and only inside the band, so the two providers agree decision for decision when
    /// their draws agree (a constant source, as in the conformance suite); otherwise they agree
    /// in distribution.
    RedisSuppressed,
    Kind::Suppressed,
    OpCode::SuppressedInc,
    OpCode::SuppressedCheck,
    OpCode::SuppressedGet,
    SuppressedSnapshot,
    "Attempted and declined weight live in `key`'s window, and the suppression factor a request at the key's last rate would see now.",
    |r| match r {
        OpReply::Snapshot(s) => Ok(s),
        r => Err(unexpected(&r)),
    }
);

/// Connects to `target` and starts the batcher, which owns `random` (the suppressed draws).
pub(crate) async fn connect(
    target: &Target,
    deadline: Duration,
    shared: Arc<Shared>,
    clock_time: bool,
    random: Box<dyn RandomSource>,
) -> Result<(BatcherHandle, bool, Conn), RedisError> {
    let conn = Conn::open(target, deadline).await?;
    let cluster = conn.is_cluster();
    Ok((
        BatcherHandle::spawn(conn.clone(), shared, clock_time, deadline, random),
        cluster,
        conn,
    ))
}

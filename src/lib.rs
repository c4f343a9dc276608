//! # eyelet
//!
//! Exact per-key rate limiting on an actor runtime that needs no threads of its own.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use eyelet::{RateLimit, RateLimitDecision, RateLimiter};
//!
//! let rl: Arc<RateLimiter> = RateLimiter::builder()
//!     .window(Duration::from_secs(1))      // W
//!     .bucket(Duration::from_millis(10))   // G
//!     .hard_limit_factor(1.5)              // suppressed strategy's h
//!     .build()
//!     .unwrap();
//! let rate = RateLimit::try_from(10.0).unwrap(); // 10 req/s
//!
//! match rl.local().absolute().inc("user_123", &rate, 1) {
//!     RateLimitDecision::Allowed => { /* proceed */ }
//!     RateLimitDecision::Rejected { retry_after_ms, .. } => eprintln!("retry in {retry_after_ms}ms"),
//!     _ => {}
//! }
//! match rl.local().suppressed().inc("user_123", &rate, 1) {
//!     RateLimitDecision::Allowed => { /* proceed */ }
//!     RateLimitDecision::Suppressed { is_allowed, suppression_factor, .. } => { let _ = (is_allowed, suppression_factor); }
//!     _ => {}
//! }
//! ```
//!
//! ## How it works
//! - **Decisions** follow one contract for every provider: a sliding window of `W` made of
//!   buckets at most `G` wide; capacity `C = floor(W_eff·r)` with `W_eff` stretched for rates
//!   below one per window; absolute admits iff `live + n ≤ C`, all or nothing, with a tight
//!   `retry_after_ms`; suppressed sheds with probability `1 − R/P` from the attempted rate, never
//!   above `H = floor(W_eff·r·h)`. The rules are pure functions (state, time, request in;
//!   decision out).
//! - **Shards are actors**: keys are spread by ahash over shard actors, each owning the windows
//!   of its keys. An actor has no thread: the caller that finds it idle takes its run token,
//!   serves its own request and those queued meanwhile (a turn bounded in items), then releases
//!   the token or passes it to a waiting thread, never to a task, so no sync caller ever waits
//!   on a task's scheduling. Idle, a decision costs a few atomics; under contention one executor
//!   serves many requests with the state hot in its cache. The protocol is model-checked with
//!   loom (`loom-tests/`).
//! - **Reads never change an answer**: `is_allowed`, `get` and `n = 0` probes record nothing and
//!   never move a key's retained span, and a key dropped while idle (the sweeper, a Redis TTL)
//!   answers every later call as a key that was kept.
//! - **Async callers** get the same shards through futures that never park the runtime thread
//!   and are cancel-safe.
//! - **Cleanup**: a sweeper thread holding only a `Weak` reference evicts idle keys; an optional
//!   key cap bounds memory.
//! - **Redis** (feature `redis`): `rl.redis()` has the same handles, async, with limits shared by
//!   every process on the same Redis (6.2+, or a Redis Cluster). One Lua script
//!   (`lua/decide.lua`) mirrors the pure rules; a batcher actor (a tokio task owning a
//!   multiplexed connection) packs concurrent calls into script calls cut by operations
//!   (about 64, at most 256), each distinct key read once and written once. Time is Redis `TIME`. Every call has a
//!   deadline, and failures are a typed `RedisError` that says whether the call may have been
//!   applied (a call that may have run is never re-sent); the `redis` module has the details,
//!   and how to run Redis for a limiter (`maxmemory-policy noeviction`).
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn demo() -> Result<(), eyelet::RedisError> {
//! use std::{sync::Arc, time::Duration};
//! use eyelet::{RateLimit, RateLimitDecision, RateLimiter};
//!
//! let rl: Arc<RateLimiter> = RateLimiter::builder()
//!     .window(Duration::from_secs(1))
//!     .redis_url("redis://127.0.0.1:6379/")   // or .redis_cluster(["redis://127.0.0.1:7000/", ...])
//!     .prefix("checkout-svc")
//!     .connect()
//!     .await?;                                 // build() stays the entry for local-only limiters
//! let rate = RateLimit::try_from(10.0).expect("valid rate");
//! let d: RateLimitDecision = rl.redis().absolute().inc("user_123", &rate, 1).await?;
//! let d = rl.redis().suppressed().inc("user_123", &rate, 1).await?;
//! // rl.local() keeps working on the same limiter
//! # let _ = d; Ok(()) }
//! ```
//!
//! ## Features
//! - `redis`: the Redis and hybrid providers ([`redis`], [`hybrid`]).
//! - `tokio`: async `acquire` on the local handles (on with `redis` and `actix`).
//! - `actix`: [`actix::LimiterActor`], typed limiter messages for actix actors.
//! - `actix-web`: [`actix_web::RateLimiting`], HTTP middleware (429, `Retry-After`, the
//!   `RateLimit-Policy` / `RateLimit` fields; see [`http`]).
//! - `tower`: [`tower::RateLimitLayer`], the same middleware as a `tower::Layer` (axum, tonic).
//! - `metrics`: counters, gauges and histograms through the `metrics` facade ([`metrics`]).
//! - `tracing`: debug spans around Redis calls and hybrid syncs.

#![cfg_attr(docsrs, feature(doc_cfg))]

/// `$fut` inside a `tracing` span at debug level (feature `tracing`); `$fut` itself without.
#[cfg(feature = "tracing")]
#[allow(unused_macros)]
macro_rules! traced {
    ($fut:expr, $($span:tt)+) => {
        tracing::Instrument::instrument($fut, tracing::debug_span!($($span)+))
    };
}
#[cfg(not(feature = "tracing"))]
#[allow(unused_macros)]
macro_rules! traced {
    ($fut:expr, $($span:tt)+) => {
        $fut
    };
}

#[macro_use]
mod handle;

mod acquire;
#[cfg(feature = "actix")]
pub mod actix;
#[cfg(feature = "actix-web")]
pub mod actix_web;
mod config;
mod decision;
#[cfg(any(feature = "actix-web", feature = "tower"))]
pub mod http;
#[cfg(feature = "redis")]
pub mod hybrid;
mod limiter;
mod local;
mod math;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod owned;
mod random;
mod rate;
#[cfg(feature = "redis")]
pub mod redis;
mod router;
mod shard;
mod sweeper;
mod sync;
mod time;
#[cfg(feature = "tower")]
pub mod tower;

pub use acquire::AcquireError;
pub use config::{
    ConfigError, RateLimiterBuilder, DEFAULT_BUCKET, DEFAULT_HARD_LIMIT_FACTOR,
    DEFAULT_STALE_AFTER_WINDOWS, DEFAULT_WINDOW, MAX_HARD_LIMIT_FACTOR, MAX_SHARDS, MAX_WINDOW,
};
pub use decision::{RateLimitDecision, Source, Stamped, SuppressedSnapshot, RETRY_NEVER};
#[cfg(feature = "redis")]
pub use hybrid::{HybridAbsolute, HybridProvider, HybridStatus, HybridSuppressed, OutagePolicy};
pub use limiter::{RateLimiter, DEFAULT_SHARDS};
pub use local::{LocalAbsolute, LocalProvider, LocalSuppressed};
pub use owned::Owned;
pub use random::{RandomSource, SplitMix64};
pub use rate::{RateError, RateLimit, MAX_RATE_PER_SECOND, MIN_RATE_PER_SECOND};
#[cfg(feature = "redis")]
pub use redis::{RedisAbsolute, RedisError, RedisProvider, RedisSuppressed};
pub use time::{Clock, ManualClock, SystemClock};

/// The shard protocol, exposed only to the loom models in `loom-tests/`.
#[cfg(eyelet_loom)]
#[doc(hidden)]
pub mod loom_support;

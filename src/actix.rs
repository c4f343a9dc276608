//! An actix actor in front of a limiter (feature `actix`).
//!
//! [`LimiterActor`] wraps an `Arc<RateLimiter>` and answers typed messages ([`Inc`],
//! [`IsAllowed`], [`IncMany`], [`Get`], [`Reset`], [`Acquire`]), each naming its provider and
//! strategy with a [`Target`]. It decides through the limiter's own handles (the same shards,
//! never a second implementation) and never blocks its arbiter: a local or hybrid decision
//! whose shard is free is answered inline, in the same turn; one that has to wait for a busy
//! shard, and every Redis call, is answered as a future the arbiter polls.
//!
//! ```
//! use std::sync::Arc;
//! use actix::prelude::*;
//! use eyelet::actix::{Inc, LimiterActor, Target};
//! use eyelet::{RateLimit, RateLimiter};
//!
//! #[actix::main]
//! async fn main() {
//!     let limiter: Arc<RateLimiter> = RateLimiter::builder().build().unwrap();
//!     let addr = LimiterActor::new(limiter).start();
//!     let rate = RateLimit::try_from(2.0).unwrap(); // 2 per second
//!     let mut admitted = 0;
//!     for _ in 0..5 {
//!         let d = addr
//!             .send(Inc::new(Target::LocalAbsolute, "user_1", rate, 1))
//!             .await
//!             .unwrap()
//!             .unwrap();
//!         admitted += usize::from(d.is_allowed());
//!     }
//!     assert_eq!(admitted, 2);
//! }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use ::actix::prelude::*;

use crate::{AcquireError, RateLimit, RateLimitDecision, RateLimiter, SuppressedSnapshot};

/// The provider and strategy a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// [`RateLimiter::local`], absolute strategy.
    LocalAbsolute,
    /// [`RateLimiter::local`], suppressed strategy.
    LocalSuppressed,
    /// [`RateLimiter::redis`], absolute strategy (feature `redis`).
    #[cfg(feature = "redis")]
    RedisAbsolute,
    /// [`RateLimiter::redis`], suppressed strategy (feature `redis`).
    #[cfg(feature = "redis")]
    RedisSuppressed,
    /// [`RateLimiter::hybrid`], absolute strategy (feature `redis`).
    #[cfg(feature = "redis")]
    HybridAbsolute,
    /// [`RateLimiter::hybrid`], suppressed strategy (feature `redis`).
    #[cfg(feature = "redis")]
    HybridSuppressed,
}

/// Why a message was not answered with a decision.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ActorError {
    /// The Redis provider failed (feature `redis`); local and hybrid decisions never fail.
    #[cfg(feature = "redis")]
    Redis(crate::RedisError),
}

impl std::fmt::Display for ActorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let _ = &f; // no variant to print without `redis`
        match *self {
            #[cfg(feature = "redis")]
            ActorError::Redis(ref e) => write!(f, "redis: {e}"),
        }
    }
}

impl std::error::Error for ActorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match *self {
            #[cfg(feature = "redis")]
            ActorError::Redis(ref e) => Some(e),
        }
    }
}

#[cfg(feature = "redis")]
impl From<crate::RedisError> for ActorError {
    fn from(e: crate::RedisError) -> Self {
        ActorError::Redis(e)
    }
}

/// What [`Get`] reads: the shape of the target's `get`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reading {
    /// An absolute key's live total (local and Redis).
    Total(u64),
    /// A suppressed key's snapshot (local and Redis).
    Suppressed(SuppressedSnapshot),
    /// A hybrid absolute key: this instance's live admissions and everything live in Redis
    /// at the last sync.
    HybridTotal {
        /// This instance's live admissions.
        own: u64,
        /// Everything live in Redis at the last sync.
        global: u64,
    },
    /// A hybrid suppressed key: this instance's attempts and every instance's as Redis
    /// counted them at the last sync.
    HybridSuppressed {
        /// This instance's view.
        own: SuppressedSnapshot,
        /// Every instance's, at the last sync.
        global: SuppressedSnapshot,
    },
}

/// Decides a request of weight `n` for `key` at `rate` and records it if admitted (the
/// target's `inc`).
#[derive(Debug, Clone)]
pub struct Inc {
    /// Provider and strategy.
    pub target: Target,
    /// The key.
    pub key: String,
    /// The rate.
    pub rate: RateLimit,
    /// The weight.
    pub n: u64,
}

impl Inc {
    /// An `Inc` message.
    pub fn new(target: Target, key: impl Into<String>, rate: RateLimit, n: u64) -> Self {
        Self {
            target,
            key: key.into(),
            rate,
            n,
        }
    }
}

impl Message for Inc {
    type Result = Result<RateLimitDecision, ActorError>;
}

/// The decision [`Inc`] would get now, recording nothing (the target's `is_allowed`).
#[derive(Debug, Clone)]
pub struct IsAllowed(pub Inc);

impl Message for IsAllowed {
    type Result = Result<RateLimitDecision, ActorError>;
}

/// Decides many keys at one rate and weight (the target's `inc_many`), in input order.
#[derive(Debug, Clone)]
pub struct IncMany {
    /// Provider and strategy.
    pub target: Target,
    /// The keys.
    pub keys: Vec<String>,
    /// The rate.
    pub rate: RateLimit,
    /// The weight of each.
    pub n: u64,
}

impl Message for IncMany {
    type Result = Result<Vec<RateLimitDecision>, ActorError>;
}

/// Reads a key (the target's `get`).
#[derive(Debug, Clone)]
pub struct Get {
    /// Provider and strategy.
    pub target: Target,
    /// The key.
    pub key: String,
}

impl Message for Get {
    type Result = Result<Reading, ActorError>;
}

/// Forgets a key (the target's `reset`); answers whether it had state.
#[derive(Debug, Clone)]
pub struct Reset {
    /// Provider and strategy.
    pub target: Target,
    /// The key.
    pub key: String,
}

impl Message for Reset {
    type Result = Result<bool, ActorError>;
}

/// Waits until [`Inc`] is admitted (the target's `acquire_until`, or `acquire` without a
/// deadline); always answered as a future, so the actor goes on serving while it waits.
#[derive(Debug, Clone)]
pub struct Acquire {
    /// The request.
    pub inc: Inc,
    /// Give up at this instant.
    pub deadline: Option<Instant>,
}

impl Message for Acquire {
    type Result = Result<RateLimitDecision, AcquireError>;
}

/// An actor that answers limiter messages; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct LimiterActor {
    limiter: Arc<RateLimiter>,
}

impl LimiterActor {
    /// An actor over `limiter`; start it with [`Actor::start`] (several actors, on as many
    /// arbiters, can share one limiter: it is the limit, they are front doors).
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        Self { limiter }
    }

    /// The limiter it serves.
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }
}

impl Actor for LimiterActor {
    type Context = Context<Self>;
}

/// Answers with `fut`'s output at once if it is ready on a first poll (a free shard), else
/// as a future the arbiter polls.
fn answer<T: 'static>(fut: impl Future<Output = T> + 'static) -> Response<T> {
    let mut fut = Box::pin(fut);
    match fut
        .as_mut()
        .poll(&mut std::task::Context::from_waker(Waker::noop()))
    {
        Poll::Ready(v) => Response::reply(v),
        Poll::Pending => Response::fut(fut),
    }
}

async fn inc(rl: Arc<RateLimiter>, m: Inc, record: bool) -> Result<RateLimitDecision, ActorError> {
    let (key, rate, n) = (m.key.as_str(), &m.rate, m.n);
    Ok(match (m.target, record) {
        (Target::LocalAbsolute, true) => rl.local().absolute().inc_async(key, rate, n).await,
        (Target::LocalAbsolute, false) => {
            rl.local().absolute().is_allowed_async(key, rate, n).await
        }
        (Target::LocalSuppressed, true) => rl.local().suppressed().inc_async(key, rate, n).await,
        (Target::LocalSuppressed, false) => {
            rl.local().suppressed().is_allowed_async(key, rate, n).await
        }
        #[cfg(feature = "redis")]
        (Target::RedisAbsolute, true) => rl.redis().absolute().inc(key, rate, n).await?,
        #[cfg(feature = "redis")]
        (Target::RedisAbsolute, false) => rl.redis().absolute().is_allowed(key, rate, n).await?,
        #[cfg(feature = "redis")]
        (Target::RedisSuppressed, true) => rl.redis().suppressed().inc(key, rate, n).await?,
        #[cfg(feature = "redis")]
        (Target::RedisSuppressed, false) => {
            rl.redis().suppressed().is_allowed(key, rate, n).await?
        }
        #[cfg(feature = "redis")]
        (Target::HybridAbsolute, true) => rl.hybrid().absolute().inc_async(key, rate, n).await,
        #[cfg(feature = "redis")]
        (Target::HybridAbsolute, false) => {
            rl.hybrid().absolute().is_allowed_async(key, rate, n).await
        }
        #[cfg(feature = "redis")]
        (Target::HybridSuppressed, true) => rl.hybrid().suppressed().inc_async(key, rate, n).await,
        #[cfg(feature = "redis")]
        (Target::HybridSuppressed, false) => {
            rl.hybrid()
                .suppressed()
                .is_allowed_async(key, rate, n)
                .await
        }
    })
}

impl Handler<Inc> for LimiterActor {
    type Result = Response<Result<RateLimitDecision, ActorError>>;

    fn handle(&mut self, m: Inc, _: &mut Self::Context) -> Self::Result {
        answer(inc(self.limiter.clone(), m, true))
    }
}

impl Handler<IsAllowed> for LimiterActor {
    type Result = Response<Result<RateLimitDecision, ActorError>>;

    fn handle(&mut self, m: IsAllowed, _: &mut Self::Context) -> Self::Result {
        answer(inc(self.limiter.clone(), m.0, false))
    }
}

impl Handler<IncMany> for LimiterActor {
    type Result = Response<Result<Vec<RateLimitDecision>, ActorError>>;

    fn handle(&mut self, m: IncMany, _: &mut Self::Context) -> Self::Result {
        let rl = self.limiter.clone();
        answer(async move {
            let (keys, rate, n) = (m.keys.as_slice(), &m.rate, m.n);
            Ok(match m.target {
                Target::LocalAbsolute => rl.local().absolute().inc_many_async(keys, rate, n).await,
                Target::LocalSuppressed => {
                    rl.local().suppressed().inc_many_async(keys, rate, n).await
                }
                #[cfg(feature = "redis")]
                Target::RedisAbsolute => rl.redis().absolute().inc_many(keys, rate, n).await?,
                #[cfg(feature = "redis")]
                Target::RedisSuppressed => rl.redis().suppressed().inc_many(keys, rate, n).await?,
                #[cfg(feature = "redis")]
                Target::HybridAbsolute => {
                    rl.hybrid().absolute().inc_many_async(keys, rate, n).await
                }
                #[cfg(feature = "redis")]
                Target::HybridSuppressed => {
                    rl.hybrid().suppressed().inc_many_async(keys, rate, n).await
                }
            })
        })
    }
}

impl Handler<Get> for LimiterActor {
    type Result = Response<Result<Reading, ActorError>>;

    fn handle(&mut self, m: Get, _: &mut Self::Context) -> Self::Result {
        let rl = self.limiter.clone();
        answer(async move {
            let key = m.key.as_str();
            Ok(match m.target {
                Target::LocalAbsolute => Reading::Total(rl.local().absolute().get_async(key).await),
                Target::LocalSuppressed => {
                    Reading::Suppressed(rl.local().suppressed().get_async(key).await)
                }
                #[cfg(feature = "redis")]
                Target::RedisAbsolute => Reading::Total(rl.redis().absolute().get(key).await?),
                #[cfg(feature = "redis")]
                Target::RedisSuppressed => {
                    Reading::Suppressed(rl.redis().suppressed().get(key).await?)
                }
                #[cfg(feature = "redis")]
                Target::HybridAbsolute => {
                    let (own, global) = rl.hybrid().absolute().get_async(key).await;
                    Reading::HybridTotal { own, global }
                }
                #[cfg(feature = "redis")]
                Target::HybridSuppressed => {
                    let (own, global) = rl.hybrid().suppressed().get_async(key).await;
                    Reading::HybridSuppressed { own, global }
                }
            })
        })
    }
}

impl Handler<Reset> for LimiterActor {
    type Result = Response<Result<bool, ActorError>>;

    fn handle(&mut self, m: Reset, _: &mut Self::Context) -> Self::Result {
        let rl = self.limiter.clone();
        answer(async move {
            let key = m.key.as_str();
            Ok(match m.target {
                Target::LocalAbsolute => rl.local().absolute().reset_async(key).await,
                Target::LocalSuppressed => rl.local().suppressed().reset_async(key).await,
                #[cfg(feature = "redis")]
                Target::RedisAbsolute => rl.redis().absolute().reset(key).await?,
                #[cfg(feature = "redis")]
                Target::RedisSuppressed => rl.redis().suppressed().reset(key).await?,
                #[cfg(feature = "redis")]
                Target::HybridAbsolute => rl.hybrid().absolute().reset_async(key).await,
                #[cfg(feature = "redis")]
                Target::HybridSuppressed => rl.hybrid().suppressed().reset_async(key).await,
            })
        })
    }
}

impl Handler<Acquire> for LimiterActor {
    type Result = ResponseFuture<Result<RateLimitDecision, AcquireError>>;

    fn handle(&mut self, m: Acquire, _: &mut Self::Context) -> Self::Result {
        let rl = self.limiter.clone();
        Box::pin(async move {
            let Acquire { inc: m, deadline } = m;
            let (key, rate, n) = (m.key.as_str(), &m.rate, m.n);
            let dl = deadline;
            macro_rules! wait {
                ($h:expr) => {
                    match dl {
                        Some(d) => $h.acquire_until(key, rate, n, d).await,
                        None => $h.acquire(key, rate, n).await,
                    }
                };
            }
            match m.target {
                Target::LocalAbsolute => wait!(rl.local().absolute()),
                Target::LocalSuppressed => wait!(rl.local().suppressed()),
                #[cfg(feature = "redis")]
                Target::RedisAbsolute => wait!(rl.redis().absolute()),
                #[cfg(feature = "redis")]
                Target::RedisSuppressed => wait!(rl.redis().suppressed()),
                #[cfg(feature = "redis")]
                Target::HybridAbsolute => wait!(rl.hybrid().absolute()),
                #[cfg(feature = "redis")]
                Target::HybridSuppressed => wait!(rl.hybrid().suppressed()),
            }
        })
    }
}
